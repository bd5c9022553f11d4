"""Measure models honestly: accuracy, parameter and non-zero counts, bytes, latency, comparisons."""

from __future__ import annotations

import io
import statistics
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.ao.nn.quantized as nnq
from torch import nn
from torch.utils.data import DataLoader

from nbhelpers.core.pooling import fast_max_pool
from nbhelpers.core.train import Device, module_device, torch_threads
from nbhelpers.measure.stats import paired_table

Predictor = Callable[[torch.Tensor], object]


def _as_tensor(out: object) -> torch.Tensor:
    if isinstance(out, (list, tuple)):
        out = out[0]
    return out if isinstance(out, torch.Tensor) else torch.as_tensor(np.asarray(out))


def input_device(model: nn.Module | Predictor) -> torch.device:
    """Where a model's inputs go: a module's device (``module_device``), the CPU for a callable.

    Callables (ONNX Runtime sessions, NumPy functions) take CPU tensors.

    Args:
        model: a module or a callable.

    Returns:
        The device.
    """
    return module_device(model) if isinstance(model, nn.Module) else torch.device("cpu")


@fast_max_pool()  # PyTorch's results, faster on the CPU (nbhelpers.core.pooling)
def correct(
    model: nn.Module | Predictor, loader: DataLoader, device: Device | None = None
) -> np.ndarray:
    """Which samples a model classifies correctly, in the loader's order (for paired comparisons).

    Args:
        model: an ``nn.Module`` (run in eval mode without gradients) or a callable mapping a
            batch tensor to logits (a torch tensor or a NumPy array, e.g. ONNX Runtime), which
            gets CPU tensors.
        loader: yields (x, y) batches, in a fixed order (no shuffling).
        device: where to run a module (it is moved there); None runs it where it is.

    Returns:
        A boolean array, one entry per sample.
    """
    if isinstance(model, nn.Module):
        if device is not None:
            model.to(device)
        model.eval()
    device = input_device(model)
    hits = []
    with torch.inference_mode():
        for x, y in loader:
            pred = _as_tensor(model(x.to(device))).argmax(1).cpu()
            hits.append((pred == y.cpu()).numpy())
    return np.concatenate(hits).astype(bool)


def accuracy(
    model: nn.Module | Predictor, loader: DataLoader, device: Device | None = None
) -> float:
    """Fraction of correctly classified samples; works for modules and plain callables.

    Args:
        model: an ``nn.Module`` (run in eval mode without gradients) or a callable mapping a
            batch tensor to logits (a torch tensor or a NumPy array, e.g. ONNX Runtime), which
            gets CPU tensors.
        loader: yields (x, y) batches.
        device: where to run a module (it is moved there); None runs it where it is.

    Returns:
        The accuracy in [0, 1].
    """
    return float(correct(model, loader, device).mean())


#: The columns of ``prediction_shift``.
SHIFT_COLUMNS = (
    "accuracy",
    "agreement",
    "worst_class_accuracy",
    "top_class_share",
    "logit_scale",
    "logit_correlation",
)


def prediction_shift(
    logits: torch.Tensor, labels: torch.Tensor, reference: torch.Tensor
) -> dict[str, float]:
    """How a changed model's predictions differ from a reference model's on the same samples.

    Accuracy alone cannot tell a model that lost a little everywhere from one that sends most
    samples to a few classes; these measures can.

    Args:
        logits: (n, classes) logits of the changed model (e.g. right after pruning).
        labels: (n,) true classes.
        reference: (n, classes) logits of the reference model (e.g. the dense one), same samples.

    Returns:
        accuracy; agreement (share of samples whose predicted class is the reference's);
        worst_class_accuracy (the lowest accuracy over the classes present in ``labels``);
        top_class_share (share of samples given the single most predicted class: about 1/classes
        for balanced predictions, 1 when every sample gets one class); logit_scale (Frobenius norm
        of the logits over the reference's); logit_correlation (Pearson correlation of all logit
        entries with the reference's).
    """
    logits, reference = logits.detach().double().cpu(), reference.detach().double().cpu()
    labels = labels.cpu()
    if logits.shape != reference.shape or logits.ndim != 2 or len(labels) != len(logits):
        raise ValueError(
            f"logits {tuple(logits.shape)} and reference {tuple(reference.shape)} must be the same "
            f"(n, classes), with n = len(labels) = {len(labels)}"
        )
    pred, ref_pred = logits.argmax(1), reference.argmax(1)
    right = (pred == labels).double()
    per_class = [float(right[labels == c].mean()) for c in labels.unique()]
    flat, ref_flat = logits.flatten(), reference.flatten()
    return {
        "accuracy": float(right.mean()),
        "agreement": float((pred == ref_pred).double().mean()),
        "worst_class_accuracy": min(per_class),
        "top_class_share": float(torch.bincount(pred).max()) / len(pred),
        "logit_scale": float(flat.norm() / ref_flat.norm()),
        "logit_correlation": float(torch.corrcoef(torch.stack([flat, ref_flat]))[0, 1]),
    }


def _weights_of(module: nn.Module) -> list[torch.Tensor]:
    """The effective weight tensors a module owns itself (pruning masks and int8 packing
    resolved)."""
    out = []
    if callable(getattr(module, "weight", None)) and hasattr(module, "_packed_params"):
        w = module.weight()
        out.append(w.int_repr() if w.is_quantized else w)
        b = module.bias()
        if b is not None:
            out.append(b)
        return out
    for name, p in module.named_parameters(recurse=False):
        if name.endswith("_orig"):  # torch.nn.utils.prune re-parametrisation: use the masked weight
            p = getattr(module, name[: -len("_orig")])
        out.append(p.detach())
    for name, b in module.named_buffers(recurse=False):
        if isinstance(b, torch.Tensor) and b.is_quantized:
            out.append(b.int_repr())
    return out


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Number of parameters and of non-zero parameters (after pruning masks, int8 included).

    Args:
        model: the model.

    Returns:
        {"params": total, "nonzero": non-zero count}.
    """
    total = nonzero = 0
    for m in model.modules():
        for t in _weights_of(m):
            total += t.numel()
            nonzero += int(torch.count_nonzero(t))
    return {"params": total, "nonzero": nonzero}


def serialized_bytes(model: nn.Module | Mapping, path: str | Path | None = None) -> int:
    """Bytes of the model's ``state_dict`` saved with ``torch.save`` (the deployable artifact).

    Tensors are saved from the CPU whatever their device (a CUDA tensor would record its device).

    Args:
        model: a module or a state dict.
        path: where to write the file; None measures an in-memory buffer of the same bytes.

    Returns:
        The number of bytes.
    """
    state = model.state_dict() if isinstance(model, nn.Module) else model
    # from the CPU, so that the bytes do not depend on where the model sits
    state = {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in state.items()}
    buf = io.BytesIO()
    torch.save(state, buf)  # through a buffer, so the file holds exactly these bytes
    if path is not None:
        Path(path).write_bytes(buf.getvalue())
        return file_bytes(path)
    return buf.getbuffer().nbytes


def file_bytes(path: str | Path) -> int:
    """Size of a file on disk, in bytes."""
    return Path(path).stat().st_size


def _as_predictor(model: nn.Module | Predictor) -> Predictor:
    if isinstance(model, nn.Module):
        model.eval()
    return model


def synchronizer(device: Device | None) -> Callable[[], None]:
    """A call that waits for the queued work of ``device``: ``torch.cuda.synchronize`` on CUDA.

    CUDA kernels run asynchronously: a clock read right after a call measures only the launch.
    Other devices (the CPU) return when the work is done, and get a call that does nothing.

    Args:
        device: the device the timed work runs on (None: the CPU).

    Returns:
        The synchronizing call, without arguments.
    """
    if device is not None and torch.device(device).type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def time_call(
    fn: Callable[[], object],
    warmup: int = 5,
    repeats: int = 30,
    min_sample_s: float = 2e-3,
    device: Device | None = None,
) -> list[float]:
    """Time a call: warm up, calibrate inner loops to ``min_sample_s``, return per-call seconds.

    Args:
        fn: the call to time, without arguments.
        warmup: calls made first and thrown away.
        repeats: number of timing samples.
        min_sample_s: each sample repeats the call until it lasts at least this long.
        device: where ``fn`` runs; on CUDA each sample waits for the device before the clock
            starts and before it stops (``synchronizer``).

    Returns:
        ``repeats`` per-call durations in seconds.
    """
    sync = synchronizer(device)
    for _ in range(warmup):
        fn()
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    once = max(time.perf_counter() - t0, 1e-7)
    inner = max(1, int(min_sample_s / once))
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        sync()
        samples.append((time.perf_counter() - t0) / inner)
    return samples


def latency(
    models: Mapping[str, nn.Module | Predictor],
    example: torch.Tensor,
    batch_sizes: Sequence[int] = (1, 256),
    threads: int = 1,
    warmup: int = 5,
    repeats: int = 30,
    rounds: int = 3,
) -> pd.DataFrame:
    """Median latency of several models side by side, in one run, with a fixed thread count.

    The models take turns (``rounds`` rounds of ``repeats`` samples each) so that a slow phase of
    the machine hits them all alike. Each module gets its batch on its own device (CUDA timings
    wait for the device, see ``time_call``); callables get CPU tensors.

    Args:
        models: name -> module or callable taking a batch tensor.
        example: real inputs (n, ...) to draw batches from; repeated when a batch is larger.
        batch_sizes: batch sizes to time.
        threads: ``torch.set_num_threads`` during the measurement (restored after).
        warmup: calls thrown away before each model's first sample.
        repeats: samples per model per round.
        rounds: rounds of alternation between the models.

    Returns:
        One row per (model, batch_size): median_ms, p25_ms, p75_ms, per_sample_us.
    """
    rows = []
    with torch_threads(threads):
        for bs in batch_sizes:
            idx = torch.arange(bs, device=example.device) % len(example)
            batch = example[idx].contiguous()
            on = {name: batch.to(input_device(m)) for name, m in models.items()}
            samples: dict[str, list[float]] = {name: [] for name in models}
            with torch.inference_mode():
                for r in range(rounds):
                    for name, m in models.items():
                        pred, x = _as_predictor(m), on[name]
                        n_warm = warmup if r == 0 else 1
                        samples[name] += time_call(
                            lambda: pred(x), n_warm, repeats, device=x.device
                        )
            for name, s in samples.items():
                q = np.percentile(s, [25, 50, 75]) * 1e3
                rows.append(
                    {
                        "model": name,
                        "batch_size": bs,
                        "median_ms": statistics.median(s) * 1e3,
                        "p25_ms": q[0],
                        "p75_ms": q[2],
                        "per_sample_us": statistics.median(s) * 1e6 / bs,
                    }
                )
    return pd.DataFrame(rows)


def compare(
    models: Mapping[str, nn.Module | Predictor],
    loader: DataLoader,
    baseline: str,
    batch_sizes: Sequence[int] = (1, 256),
    sizes: Mapping[str, int] | None = None,
    counts: Mapping[str, Mapping[str, int]] | None = None,
    threads: int = 1,
    repeats: int = 30,
    hits: Mapping[str, np.ndarray] | None = None,
) -> pd.DataFrame:
    """One table comparing models on accuracy, parameters, bytes and latency, with ratios to a
    baseline.

    Every module runs on its own device (accuracy and timing batches are moved there); callables
    get CPU tensors. All models are scored on the same test samples, so each is compared with the
    baseline by a paired 95% interval of the accuracy difference and McNemar's exact test
    (``nbhelpers.measure.stats``); the loader must not shuffle.

    Args:
        models: name -> module or callable (callables need their bytes in ``sizes``).
        loader: the test loader (accuracy, and the inputs used for timing).
        baseline: the name in ``models`` the ratios refer to.
        batch_sizes: batch sizes timed.
        sizes: name -> bytes on disk, overriding the serialized ``state_dict`` size.
        counts: name -> {"params", "nonzero"}, overriding the counted parameters.
        threads: threads used for timing.
        repeats: timing samples per round.
        hits: name -> which test samples the model gets right (``correct`` on this loader),
            already measured: used instead of running the model over the test set again.

    Returns:
        One row per model: accuracy with its Wilson 95% interval (accuracy_low, accuracy_high),
        params, nonzero, bytes, latency_ms_b<bs>, and against the baseline:
        accuracy_delta_points with its paired 95% interval (delta_low_points, delta_high_points),
        p_mcnemar, verdict ("better", "worse", "within noise"; "baseline" for the baseline),
        size_ratio (baseline bytes / bytes: "times smaller") and speedup_b<bs> (baseline latency
        / latency).
    """
    if baseline not in models:
        raise KeyError(f"baseline {baseline!r} is not among the models {list(models)}")
    if isinstance(getattr(loader, "sampler", None), torch.utils.data.RandomSampler):
        raise ValueError(
            "compare pairs the models image by image: give it a loader that does not shuffle"
        )
    sizes, counts, known = dict(sizes or {}), dict(counts or {}), dict(hits or {})
    n_test = sum(len(y) for _, y in loader)
    for name, h in known.items():
        if name not in models or np.shape(h) != (n_test,):
            raise ValueError(
                f"hits[{name!r}] must belong to a model in models and hold one entry per test "
                f"sample ({n_test}); got {np.shape(h)}"
            )
    example = torch.cat([x for x, _ in loader])[: max(batch_sizes)]
    lat = latency(models, example, batch_sizes, threads=threads, repeats=repeats)
    rows, hits = [], {}
    for name, m in models.items():
        c = counts.get(name) or (count_parameters(m) if isinstance(m, nn.Module) else {})
        if name not in sizes and not isinstance(m, nn.Module):
            raise KeyError(f"model {name!r} is a callable: give its bytes in sizes")
        hits[name] = np.asarray(known[name], bool) if name in known else correct(m, loader)
        row = {
            "model": name,
            "accuracy": float(hits[name].mean()),
            "params": c.get("params", np.nan),
            "nonzero": c.get("nonzero", np.nan),
            "bytes": sizes.get(name) if name in sizes else serialized_bytes(m),
        }
        for bs in batch_sizes:
            row[f"latency_ms_b{bs}"] = float(
                lat.query("model == @name and batch_size == @bs")["median_ms"].iloc[0]
            )
        rows.append(row)
    df = pd.DataFrame(rows).set_index("model")
    base = df.loc[baseline]
    df["accuracy_delta_points"] = (df["accuracy"] - base["accuracy"]) * 100
    paired = paired_table(hits, baseline).set_index("model").reindex(df.index)
    df.insert(df.columns.get_loc("accuracy") + 1, "accuracy_low", paired["acc_low"] / 100)
    df.insert(df.columns.get_loc("accuracy") + 2, "accuracy_high", paired["acc_high"] / 100)
    df["delta_low_points"], df["delta_high_points"] = paired["diff_low"], paired["diff_high"]
    df["p_mcnemar"], df["verdict"] = paired["p_mcnemar"], paired["verdict"]
    df["size_ratio"] = base["bytes"] / df["bytes"]
    for bs in batch_sizes:
        df[f"speedup_b{bs}"] = base[f"latency_ms_b{bs}"] / df[f"latency_ms_b{bs}"]
    return df


# ---------------------------------------------------------------- cost counters and kernel timings

_LINEAR = (nn.Linear, nnq.Linear)  # nnq.dynamic.Linear is a subclass of nnq.Linear
_CONV = (nn.Conv2d, nnq.Conv2d)
_CSR_BETA = "Sparse CSR tensor support is in beta"


def sparse_csr(t: torch.Tensor, compact: bool = False) -> torch.Tensor:
    """``t.to_sparse_csr()`` without torch's "beta" warning, optionally with compact storages.

    ``to_sparse_csr`` of a dense tensor returns ``col_indices()`` as a view into the int64 storage
    of 2 x nnz (the COO row and column indices it is built from), so ``torch.save`` writes
    16 bytes per column index. ``compact`` copies each array into a storage of its own size.

    Args:
        t: a 2-D tensor.
        compact: give the column indices (and the other arrays) storages of their own size.

    Returns:
        The same values in compressed sparse row format.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_CSR_BETA)
        csr = t.to_sparse_csr()
        if not compact:
            return csr
        return torch.sparse_csr_tensor(
            csr.crow_indices().clone(),
            csr.col_indices().clone(),
            csr.values().clone(),
            csr.shape,
            check_invariants=True,  # the arrays are torch's own: checking is cheap and silent
        )


def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass per sample, over Linear and Conv2d layers.

    Linear: in x out; Conv2d: out_channels x (in_channels / groups) x kh x kw x output positions.
    Quantized (int8) Linear and Conv2d modules count like their float versions.

    Args:
        model: the model.
        example: one input batch (its first sample is used, on the model's device).

    Returns:
        MACs per sample.
    """
    total = 0

    def hook(m, _inp, out):
        nonlocal total
        if isinstance(m, _LINEAR):
            total += m.in_features * m.out_features
        else:
            kh, kw = m.kernel_size
            total += (
                m.out_channels
                * (m.in_channels // m.groups)
                * kh
                * kw
                * out.shape[-1]
                * out.shape[-2]
            )

    hooks = [
        m.register_forward_hook(hook) for m in model.modules() if isinstance(m, _LINEAR + _CONV)
    ]
    try:
        with torch.no_grad():
            model.eval()(example[:1].to(module_device(model)))
    finally:
        for h in hooks:
            h.remove()
    return total


@torch.no_grad()
def layer_times(
    model: nn.Sequential, x: torch.Tensor, repeats: int = 15, threads: int = 1
) -> pd.Series:
    """Median time of each layer of a Sequential on the input it really receives, in milliseconds.

    Layers run on the model's device (CUDA timings wait for the device).

    Args:
        model: the Sequential model (eval mode).
        x: the input batch (moved to the model's device).
        repeats: timing samples per layer.
        threads: ``torch.set_num_threads`` while timing (restored after).

    Returns:
        A Series indexed "position type" (e.g. "2 MaxPool2d") of median milliseconds.
    """
    out = {}
    with torch_threads(threads):
        model.eval()
        device = module_device(model)
        h = x.to(device)
        for i, layer in enumerate(model):
            s = sorted(time_call(lambda: layer(h), 2, repeats, device=device))
            out[f"{i} {type(layer).__name__}"] = s[len(s) // 2] * 1e3
            h = layer(h)
    return pd.Series(out, name="ms")


def kernel_latency(
    weight: torch.Tensor,
    batch_sizes: Sequence[int] = (1, 256),
    threads: int = 1,
    repeats: int = 20,
    seed: int = 0,
) -> pd.DataFrame:
    """Median time of ``x @ W^T`` with the dense kernel and with the sparse CSR kernel, side by
    side.

    Both kernels run on the device of ``weight`` (CUDA timings wait for the device).

    Args:
        weight: the (out, in) weight matrix, with its zeros.
        batch_sizes: number of input rows ``x``.
        threads: ``torch.set_num_threads`` during the measurement (restored after).
        repeats: timing samples per kernel and batch size.
        seed: seed of the random inputs (drawn on the CPU: the same inputs on every device).

    Returns:
        One row per (kernel, batch_size): median_ms; with sparsity and the shape.
    """
    w = weight.detach().contiguous()
    csr = sparse_csr(w)
    gen = torch.Generator().manual_seed(seed)
    rows = []
    with torch_threads(threads):
        with torch.inference_mode():
            for bs in batch_sizes:
                x = torch.rand(bs, w.shape[1], generator=gen).to(w.device, w.dtype)
                xt = x.t().contiguous()
                for kernel, fn in [
                    ("dense", lambda: x @ w.t()),
                    ("sparse csr", lambda: torch.sparse.mm(csr, xt)),
                ]:
                    t = time_call(fn, warmup=3, repeats=repeats, device=w.device)
                    rows.append(
                        {"kernel": kernel, "batch_size": bs, "median_ms": float(np.median(t)) * 1e3}
                    )
    df = pd.DataFrame(rows)
    df["sparsity"] = float(1 - torch.count_nonzero(w) / w.numel())
    df["shape"] = "x".join(map(str, w.shape))
    return df
