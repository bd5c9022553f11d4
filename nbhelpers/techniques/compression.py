"""The deployable artifact of a compressed model: sparse int8 weights, optionally entropy-coded.

Deep Compression (Han et al. 2016) stores a pruned, quantized network as its non-zero quantized
weights, their positions and one scale per layer, then entropy-codes the lot. Here the positions
are a bitmap (one bit per weight, cheaper than indices above about 6% density), the values are
the int8 weights of a ``torch.ao`` dynamic-int8 model, and the entropy coder is LZMA.
Convolutions (Caffe's LeNet-5 of Deep Compression) are quantized weight-only: their weights are
rounded to int8 with one scale per layer and stored the same way; they still compute in float.

Eager int8 runs on the CPU only: the arrays are read on the CPU and the unpacked models are CPU
models."""

from __future__ import annotations

import copy
import heapq
import io
import lzma
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from nbhelpers.core.models import MLP
from nbhelpers.core.params import ParameterError, check_choice
from nbhelpers.techniques.pruning import prunable

#: Dense models the pipeline compresses: the shared MLP, or Caffe's LeNet-5 of Deep Compression.
PIPELINE_MODELS = ("mlp", "lenet5_caffe")


def check_pipeline(
    model: str, distill_epochs: int, struct_fraction: float, mo_trials: int = 0
) -> str:
    """Check the pipeline's model against the stages that need an MLP student.

    Args:
        model: the dense model compressed (``PIPELINE_MODELS``).
        distill_epochs: epochs of the distillation stage (0 skips it).
        struct_fraction: fraction of hidden units removed (0 skips the stage).
        mo_trials: trials of the multi-objective search over distilled MLP students (0: none).

    Returns:
        ``model``.

    Raises:
        ParameterError: an unknown model, or a convolutional model with distillation into an MLP
            student or with the MLP's structured pruning (both stages build MLPs).
    """
    check_choice("MODEL", model, PIPELINE_MODELS)
    if model != "mlp" and distill_epochs != 0:
        raise ParameterError(
            "DISTILL_EPOCHS",
            distill_epochs,
            f"0 when MODEL={model!r} "
            "(the student is an MLP; Deep Compression's LeNet-5 is not distilled)",
        )
    if model != "mlp" and struct_fraction != 0:
        raise ParameterError(
            "STRUCT_FRACTION",
            struct_fraction,
            f"0 when MODEL={model!r} (structured pruning removes the hidden units of an MLP)",
        )
    if not isinstance(mo_trials, int) or isinstance(mo_trials, bool) or mo_trials < 0:
        raise ParameterError("MO_TRIALS", mo_trials, "an integer >= 0")
    if mo_trials and (model != "mlp" or distill_epochs == 0):
        raise ParameterError(
            "MO_TRIALS",
            mo_trials,
            "0 unless MODEL='mlp' with DISTILL_EPOCHS > 0 (the search distils MLP students)",
        )
    return model


#: Knobs of the multi-objective search over the pipeline, and their kinds.
MO_KNOBS = {"width": int, "sparsity": float, "bits": int}


def check_mo_space(name: str, value: object) -> dict[str, list]:
    """Check the multi-objective search's ranges: {"width", "sparsity", "bits"} -> [lo, hi].

    Args:
        name: parameter name, e.g. "MO_SPACE".
        value: the given dict.

    Returns:
        The dict: integer widths 2 <= lo < hi, sparsities 0 <= lo < hi < 1, integer bits
        2 <= lo < hi <= 8.
    """
    allowed = (
        "a dict {'width': [lo, hi], 'sparsity': [lo, hi], 'bits': [lo, hi]} with lo < hi, "
        "integer widths >= 2, sparsities in [0, 1), integer bits from 2 to 8"
    )
    if not isinstance(value, Mapping) or set(value) != set(MO_KNOBS):
        raise ParameterError(name, value, allowed)
    for knob, kind in MO_KNOBS.items():
        r = value[knob]
        ok = isinstance(r, list | tuple) and len(r) == 2
        ok = ok and all(isinstance(v, int if kind is int else int | float) for v in r)
        ok = ok and not any(isinstance(v, bool) for v in r) and r[0] < r[1]
        if ok and knob == "width":
            ok = r[0] >= 2
        elif ok and knob == "sparsity":
            ok = r[0] >= 0 and r[1] < 1
        elif ok:
            ok = r[0] >= 2 and r[1] <= 8
        if not ok:
            raise ParameterError(f"{name}[{knob!r}]", r, allowed)
    return {k: list(value[k]) for k in MO_KNOBS}


def weights_at_bits(model: nn.Module, bits: int) -> tuple[nn.Module, dict[str, np.ndarray]]:
    """Every Linear/Conv2d weight on a symmetric ``bits``-bit grid, and the artifact that stores it.

    One scale per layer, ``s = max|w| / (2^(bits-1) - 1)``; zeros stay zero, so a pruned layer
    keeps its sparsity. The artifact has ``pack_int8_sparse``'s layout (bitmap, non-zero integers
    in an int8 container, scale, float bias per layer); fewer bits leave fewer distinct values,
    which the entropy coder then squeezes.

    Args:
        model: the float model (left unchanged).
        bits: 2 to 8.

    Returns:
        (a float copy whose weights are the dequantized integers, the artifact arrays).
    """
    if not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ParameterError("bits", bits, "an integer from 2 to 8")
    out, arrays = copy.deepcopy(model).cpu().eval(), {}
    layers = prunable(out)
    with torch.no_grad():
        for name, m in layers:
            q, scale = _on_grid(m, bits)
            _pack(arrays, name, q.to(torch.int8).numpy(), scale, m.bias, _kind(m))
    return out, arrays


def pipeline_point(
    knobs: Mapping[str, Any],
    loaders: Mapping[str, Any],
    n_in: int,
    loss_fn: Any,
    epochs: tuple[int, int],
    lr: float,
    seed: int,
    device: Any = "cpu",
) -> dict[str, Any]:
    """One point of the pipeline's design space: distil, prune, quantize, entropy-code, measure.

    A student MLP with one hidden layer of ``width`` units is distilled (``loss_fn``) for
    ``epochs[0]`` epochs, pruned gradually to ``sparsity`` over ``epochs[1]`` epochs (the cubic
    schedule on the first two thirds of the steps, as stage 3), its weights put on a ``bits``-bit
    grid (``weights_at_bits``; activations stay float) and the artifact LZMA-coded.

    Args:
        knobs: {"width", "sparsity", "bits"}.
        loaders: "train", "val" and "test" loaders (images; the MLP flattens them).
        n_in: inputs per image.
        loss_fn: the distillation loss (``distillation.make_loss_fn``).
        epochs: (distillation epochs, pruning epochs).
        lr: Adam learning rate.
        seed: seed of the student's initialisation and shuffles.
        device: where to train.

    Returns:
        {"model", "val_accuracy", "test_accuracy", "bytes", "correct"} (``correct``: right or
        wrong on each test image).
    """
    from nbhelpers.core.train import fit, seed_everything
    from nbhelpers.measure import accuracy, correct

    seed_everything(seed)
    student = MLP(n_in, hidden=[int(knobs["width"])])
    fit(student, loaders["train"], epochs=epochs[0], lr=lr, loss_fn=loss_fn, device=device,
        progress=False)  # fmt: skip
    prune_gradually(student, loaders["train"], float(knobs["sparsity"]), epochs[1], lr, loss_fn,
                    device=device)  # fmt: skip
    model, arrays = weights_at_bits(student, int(knobs["bits"]))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    size = len(lzma.compress(buf.getvalue(), preset=9 | lzma.PRESET_EXTREME))
    hits = correct(model, loaders["test"])
    return {"model": model, "val_accuracy": accuracy(model, loaders["val"]),
            "test_accuracy": float(hits.mean()), "bytes": size, "correct": hits}  # fmt: skip


def prune_gradually(
    model: nn.Module,
    train: Any,
    sparsity: float,
    epochs: int,
    lr: float,
    loss_fn: Any = None,
    val: Any = None,
    device: Any = "cpu",
) -> tuple[list, Any]:
    """Stage 3: gradual magnitude pruning with fine-tuning, the zeros then made permanent.

    Zhu and Gupta's cubic schedule over the first two thirds of the steps, global magnitude
    ranking, the mask updated twice per epoch. The caller seeds (``train.seed_everything``).

    Args:
        model: the model, pruned in place (it ends on the CPU in eval mode).
        train: the training loader.
        sparsity: the final fraction of zero weights, in (0, 1).
        epochs: fine-tuning epochs.
        lr: Adam learning rate.
        loss_fn: the training loss (None: cross-entropy on the labels).
        val: a validation loader for the history (None: no validation).
        device: where to train.

    Returns:
        (the training history, the ``pruning.GradualPruner`` with its schedule in ``history``).
    """
    from nbhelpers.core.train import fit
    from nbhelpers.techniques.pruning import GradualPruner, make_permanent

    steps = epochs * len(train)
    pruner = GradualPruner(final=sparsity, begin=1, end=max(1, (2 * steps) // 3),
                           every=max(1, len(train) // 2), scope="global")  # fmt: skip
    hist = fit(model, train, val, epochs=epochs, lr=lr, loss_fn=loss_fn, after_step=pruner,
               device=device, progress=False)  # fmt: skip
    make_permanent(model.cpu().eval())
    return hist, pruner


def deep_compression_recipe(
    model: nn.Module,
    train: Any,
    sparsity: float,
    epochs: int,
    lr: float,
    seed: int,
    engine: str = "x86",
    device: Any = "cpu",
) -> nn.Module:
    """Deep Compression's recipe on a model itself: prune with fine-tuning on the labels, int8.

    The like-for-like row of the pipeline (Han et al. 2016 compress LeNet-300-100 itself): no
    distillation and no structured pruning, only the pipeline's stages 3 and 4 with the same
    helpers (``prune_gradually`` with cross-entropy on the labels, then ``int8_model``); its
    artifact is written with ``pack_int8_sparse`` and ``save_artifact`` like the pipeline's.

    Args:
        model: the dense float model (not changed).
        train: the training loader.
        sparsity: the final fraction of zero weights (0: no pruning).
        epochs: fine-tuning epochs of the pruning.
        lr: Adam learning rate.
        seed: seed of the shuffles.
        engine: quantized engine of the int8 model.
        device: where to train.

    Returns:
        The pruned int8 model on the CPU.
    """
    from nbhelpers.core.train import seed_everything

    pruned = copy.deepcopy(model)
    seed_everything(seed)
    if sparsity > 0:
        prune_gradually(pruned, train, sparsity, epochs, lr, device=device)
    return int8_model(pruned.cpu().eval(), engine)


def front_table(study: Any, final: Mapping[str, Any]) -> pd.DataFrame:
    """The Pareto front of a two-objective Optuna study beside the hand-built final artifact.

    Args:
        study: an Optuna study of (validation accuracy: maximise, bytes: minimise), each trial
            with the user attribute "test_accuracy".
        final: the hand-built pipeline's final row (``accuracy``, ``bytes``).

    Returns:
        One row per front trial, smallest first: its knobs, validation and test accuracy, bytes,
        and whether it is at least as small and at least as accurate on test as the final
        artifact (``dominates_final``).
    """
    rows = [
        {
            "trial": t.number,
            **t.params,
            "val_accuracy": t.values[0],
            "bytes": int(t.values[1]),
            "test_accuracy": t.user_attrs["test_accuracy"],
        }  # fmt: skip
        for t in study.best_trials
    ]
    out = pd.DataFrame(rows).sort_values("bytes").reset_index(drop=True)
    out["dominates_final"] = (out["bytes"] <= final["bytes"]) & (
        out["test_accuracy"] >= final["accuracy"]
    )
    return out


def plot_front(
    points: Mapping[int, Mapping[str, Any]],
    front: pd.DataFrame,
    final: Mapping[str, Any],
    name: str,
) -> Any:
    """Every trial of the search (test accuracy against bytes), its front, the hand-built artifact.

    Args:
        points: trial number -> ``pipeline_point`` result.
        front: ``front_table``.
        final: the hand-built final row (``accuracy``, ``bytes``).
        name: its stage name.

    Returns:
        The matplotlib Figure.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    on_front = set(front["trial"])
    trials = pd.DataFrame(
        [{"bytes": p["bytes"], "test accuracy": p["test_accuracy"], "on the front": n in on_front}
         for n, p in points.items()]
    )  # fmt: skip
    fig, ax = plt.subplots(figsize=(8, 4.5))
    sns.scatterplot(data=trials, x="bytes", y="test accuracy", hue="on the front", ax=ax)
    ax.scatter(final["bytes"], final["accuracy"], marker="*", s=250, color="tab:red",
               label=f"hand-built: {name}")  # fmt: skip
    ax.set(xscale="log", title="The search's trials (test accuracy) and the hand-built artifact")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def front_target(front: pd.DataFrame, final: Mapping[str, Any]) -> tuple[float, str]:
    """How far the front's best model no larger than the final artifact is from its accuracy.

    Args:
        front: ``front_table``.
        final: the hand-built final row (``accuracy``, ``bytes``).

    Returns:
        (test accuracy of the most accurate front model with at most the final's bytes minus the
        final's, in points; NaN when no front model is that small), and a note naming it.
    """
    small = front[front["bytes"] <= final["bytes"]]
    if small.empty:
        smallest = int(front["bytes"].min()) if len(front) else 0
        return math.nan, f"no front model within {int(final['bytes'])} B (smallest: {smallest} B)"
    best = small.loc[small["test_accuracy"].idxmax()]
    note = (
        f"trial {int(best['trial'])}: width {int(best['width'])}, sparsity "
        f"{best['sparsity']:.2f}, {int(best['bits'])} bits, {int(best['bytes'])} B"
    )
    return 100 * (float(best["test_accuracy"]) - float(final["accuracy"])), note


def int8_linears(model: nn.Module) -> list[nn.Module]:
    """The dynamic-int8 Linear layers of a model, in order (ValueError when there are none)."""
    layers = [
        m
        for m in model.modules()
        if hasattr(m, "_packed_params") and callable(getattr(m, "weight", None))
    ]
    if not layers:
        raise ValueError("expected a dynamic-int8 model (torch.ao quantize_dynamic of an MLP)")
    return layers


def _on_grid(layer: nn.Module, bits: int) -> tuple[torch.Tensor, float]:
    """Put a layer's weight (in place, without gradients) on the symmetric ``bits``-bit grid.

    ``s = max|w| / (2^(bits-1) - 1)`` in float32 (1 for an all-zero weight), ``q = round(w / s)``
    clamped to the grid, and the weight becomes ``q * s`` exactly, so ``round(weight / s)`` gives
    ``q`` back. Zeros stay zero.

    Returns:
        (q as a float tensor, s as a Python float holding the float32 value).
    """
    qmax = 2 ** (bits - 1) - 1
    amax = float(layer.weight.abs().max())
    scale = torch.tensor(amax / qmax if amax > 0 else 1.0, dtype=torch.float32)
    q = torch.clamp(torch.round(layer.weight / scale), -qmax, qmax)
    layer.weight.copy_(q * scale)
    return q, float(scale)


def int8_conv_weights(model: nn.Module) -> nn.Module:
    """A copy whose ``Conv2d`` weights are rounded to int8 with one symmetric scale per layer.

    Weight-only quantization: ``q = round(w / s)`` with ``s = max|w| / 127`` (float32), the weight
    becomes ``q * s`` and the convolution still computes in float. Zeros stay zero. Each layer
    keeps its scale as the attribute ``int8_scale`` for ``pack_int8_sparse``.

    Args:
        model: the float model (not changed).

    Returns:
        The copy, on the CPU in eval mode (other layers unchanged).
    """
    out = copy.deepcopy(model).cpu().eval()
    with torch.no_grad():
        for m in out.modules():
            if isinstance(m, nn.Conv2d):
                q, scale = _on_grid(m, 8)
                m.int8_scale = scale
    return out


def int8_model(model: nn.Module, engine: str = "x86") -> nn.Module:
    """Stage 4 of the pipeline: dynamic int8 Linear layers, weight-only int8 convolutions.

    For a model without convolutions (the MLP) this is ``quantization.dynamic_int8``.

    Args:
        model: the float model (copied).
        engine: quantized engine.

    Returns:
        The quantized copy on the CPU.
    """
    from nbhelpers.techniques.quantization import dynamic_int8

    return dynamic_int8(int8_conv_weights(model), engine)


#: The arrays stored per layer, as ``<layer name>.<field>``.
FIELDS = ("kind", "shape", "mask", "values", "scale", "bias")


def _kind(m: nn.Module) -> str:
    return "conv" if isinstance(m, nn.Conv2d) else "linear"


def _no_batchnorm(model: nn.Module) -> None:
    """The artifact stores Linear and Conv2d layers only: batch norms must be folded into them."""
    norms = [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._NormBase)]
    if norms:
        raise ValueError(
            f"batch norm layers {norms[:4]} are not stored in the artifact: fold them first "
            "(normalization.fold_batchnorm), in the model that is packed and in the one unpacked"
        )


def layer_names(arrays: Mapping[str, np.ndarray]) -> list[str]:
    """The layers an artifact holds, by their names in the model (``named_modules``), in order."""
    return list(dict.fromkeys(k.rsplit(".", 1)[0] for k in arrays))


def _pack(
    out: dict[str, np.ndarray], key: str, q: np.ndarray, scale: float, bias: Any, kind: str
) -> None:
    nz = q != 0
    out[f"{key}.kind"] = np.asarray(kind)
    out[f"{key}.shape"] = np.asarray(q.shape, dtype=np.int32)
    out[f"{key}.mask"] = np.packbits(nz.ravel())
    out[f"{key}.values"] = q[nz].astype(np.int8)
    out[f"{key}.scale"] = np.asarray([scale], dtype=np.float64)
    out[f"{key}.bias"] = (
        np.zeros(0, np.float32) if bias is None else bias.detach().cpu().numpy().astype(np.float32)
    )


def _unpack(arrays: Mapping[str, np.ndarray], key: str, dtype: Any = np.int8) -> np.ndarray:
    shape = tuple(int(s) for s in arrays[f"{key}.shape"])
    mask = np.unpackbits(arrays[f"{key}.mask"], count=int(np.prod(shape))).astype(bool)
    q = np.zeros(int(np.prod(shape)), dtype=dtype)
    q[mask] = arrays[f"{key}.values"]
    return q.reshape(shape)


def pack_int8_sparse(qmodel: nn.Module) -> dict[str, np.ndarray]:
    """The arrays of the artifact: per layer a bitmap of non-zeros, the non-zero int8 values,
    scale, bias.

    Args:
        qmodel: a dynamic-int8 model (per-tensor symmetric int8 weights, as ``quantize_dynamic``
            makes), its convolutions rounded by ``int8_conv_weights`` (``int8_model`` does both).

    Returns:
        Array name -> array, keyed by each layer's name in the model (as in its ``state_dict``),
        in the model's order: ``<name>.kind`` ("linear" or "conv"), ``.shape``, ``.mask``,
        ``.values``, ``.scale``, ``.bias`` (e.g. ``1.values`` for the MLP's first Linear,
        ``layer1.conv1.values`` in a model with named blocks).
    """
    _no_batchnorm(qmodel)
    linears = {id(m) for m in int8_linears(qmodel)}
    out: dict[str, np.ndarray] = {}
    for name, m in qmodel.named_modules():
        if id(m) in linears:
            w = m.weight()
            if w.qscheme() != torch.per_tensor_affine or w.q_zero_point() != 0:
                raise ValueError("expected per-tensor symmetric int8 weights (zero point 0)")
            _pack(out, name, w.int_repr().cpu().numpy(), w.q_scale(), m.bias(), "linear")
        elif isinstance(m, nn.Conv2d):
            scale = getattr(m, "int8_scale", None)
            if scale is None:
                raise ValueError("a float convolution: quantize the model with int8_model first")
            q = torch.round(m.weight.detach() / torch.tensor(scale, dtype=torch.float32))
            _pack(out, name, q.to(torch.int8).cpu().numpy(), scale, m.bias, "conv")
    return out


def save_artifact(
    arrays: dict[str, np.ndarray], path: str | Path, entropy_coding: bool = False
) -> int:
    """Write the artifact as an ``.npz``, LZMA-compressed (``.xz`` content) when ``entropy_coding``.

    Args:
        arrays: from ``pack_int8_sparse``.
        path: the file.
        entropy_coding: compress with LZMA (preset 9, extreme).

    Returns:
        Bytes on disk.
    """
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    raw = buf.getvalue()
    Path(path).write_bytes(
        lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME) if entropy_coding else raw
    )
    return Path(path).stat().st_size


def load_artifact(path: str | Path) -> dict[str, np.ndarray]:
    """Read an artifact written by ``save_artifact`` (plain or LZMA-compressed).

    Args:
        path: the file.

    Returns:
        Array name -> array.
    """
    raw = Path(path).read_bytes()
    if raw[:6] == b"\xfd7zXZ\x00":
        raw = lzma.decompress(raw)
    with np.load(io.BytesIO(raw)) as f:
        return {k: f[k] for k in f.files}


def unpack_float_mlp(arrays: dict[str, np.ndarray]) -> MLP:
    """A float MLP whose weights are the artifact's dequantized int8 weights (``q * scale``).

    Args:
        arrays: from ``load_artifact``.

    Returns:
        The MLP on the CPU in eval mode (float weights equal to the int8 ones times their scale).
    """
    names = layer_names(arrays)
    if any(str(arrays[f"{n}.kind"]) == "conv" for n in names):
        raise ValueError("the artifact holds convolutions: read it with unpack_int8(arrays, model)")
    shapes = [tuple(int(s) for s in arrays[f"{n}.shape"]) for n in names]
    model = MLP(shapes[0][1], hidden=[s[0] for s in shapes[:-1]], n_classes=shapes[-1][0]).eval()
    linears = [m for m in model if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for name, lin in zip(names, linears):
            q = _unpack(arrays, name, np.float64) * float(arrays[f"{name}.scale"][0])
            lin.weight.copy_(torch.from_numpy(q.astype(np.float32)))
            lin.bias.copy_(torch.from_numpy(arrays[f"{name}.bias"]))
    return model


def unpack_int8_mlp(arrays: dict[str, np.ndarray], engine: str = "x86") -> nn.Module:
    """The dynamic-int8 MLP of an artifact, with exactly the stored int8 weights and scales.

    Args:
        arrays: from ``load_artifact``.
        engine: quantized engine of the model.

    Returns:
        The int8 model on the CPU (``quantize_dynamic`` of the float MLP, weights replaced by the
        stored ones).
    """
    from nbhelpers.techniques.quantization import dynamic_int8, quiet_ao

    qmodel = dynamic_int8(unpack_float_mlp(arrays), engine)
    with quiet_ao():
        _set_int8_weights(qmodel, arrays)
    return qmodel


def _set_int8_weights(qmodel: nn.Module, arrays: dict[str, np.ndarray]) -> None:
    """The artifact's Linear layers, in order, into the int8 Linear layers of ``qmodel``."""
    names = [n for n in layer_names(arrays) if str(arrays[f"{n}.kind"]) == "linear"]
    for name, m in zip(names, int8_linears(qmodel), strict=True):
        qw = torch._make_per_tensor_quantized_tensor(
            torch.from_numpy(_unpack(arrays, name)), float(arrays[f"{name}.scale"][0]), 0
        )
        m.set_weight_bias(qw, torch.from_numpy(arrays[f"{name}.bias"]))


def unpack_int8(arrays: dict[str, np.ndarray], model: nn.Module, engine: str = "x86") -> nn.Module:
    """The int8 model of an artifact on a given architecture, with exactly the stored weights.

    Args:
        arrays: from ``load_artifact``.
        model: a model of the same architecture (an untrained one will do: every weight and
            bias it has in its Linear and Conv2d layers is replaced; it is not changed).
        engine: quantized engine of the model.

    Returns:
        ``int8_model`` of the architecture with the stored int8 weights, scales and biases.

    Raises:
        ValueError: the model's Linear/Conv2d layers are not the artifact's (names listed), or a
            layer's kind or shape differs (named).
    """
    _no_batchnorm(model)
    names = layer_names(arrays)
    weighted = [n for n, _ in prunable(model)]
    if names != weighted:
        raise ValueError(
            f"the artifact holds layers {names}; the model's Linear/Conv2d layers are {weighted}"
        )
    float_model = copy.deepcopy(model).cpu().eval()
    modules = dict(float_model.named_modules())
    with torch.no_grad():
        for name in names:
            m, stored = modules[name], tuple(int(v) for v in arrays[f"{name}.shape"])
            if str(arrays[f"{name}.kind"]) != _kind(m) or stored != tuple(m.weight.shape):
                raise ValueError(
                    f"layer {name!r}: artifact {arrays[f'{name}.kind']} {stored}, model "
                    f"{_kind(m)} {tuple(m.weight.shape)}"
                )
            if isinstance(m, nn.Conv2d):
                scale = torch.tensor(float(arrays[f"{name}.scale"][0]), dtype=torch.float32)
                m.weight.copy_(torch.from_numpy(_unpack(arrays, name)).float() * scale)
                if m.bias is not None:
                    m.bias.copy_(torch.from_numpy(arrays[f"{name}.bias"]))
                m.int8_scale = float(scale)
    from nbhelpers.techniques.quantization import dynamic_int8, quiet_ao

    qmodel = dynamic_int8(float_model, engine)
    with quiet_ao():
        _set_int8_weights(qmodel, arrays)
    return qmodel


def huffman_bits(symbols: np.ndarray) -> int:
    """Total bits of a Huffman code of the symbols (Deep Compression's entropy coder), tables
    excluded.

    Args:
        symbols: any 1-D array of hashable values.

    Returns:
        The number of bits of the encoded sequence (0 for fewer than two distinct symbols).
    """
    counts = Counter(symbols.tolist())
    if len(counts) < 2:
        return 0
    heap = [(c, i) for i, c in enumerate(counts.values())]
    heapq.heapify(heap)
    total, nxt = 0, len(heap)
    while len(heap) > 1:  # each merge adds one bit to every symbol below it
        a, _ = heapq.heappop(heap)
        b, _ = heapq.heappop(heap)
        total += a + b
        heapq.heappush(heap, (a + b, nxt))
        nxt += 1
    return total


def entropy_bits(symbols: np.ndarray) -> float:
    """Shannon entropy of the symbols times their count: the lower bound of any symbol-by-symbol
    code.

    Args:
        symbols: any 1-D array.

    Returns:
        Bits.
    """
    _, counts = np.unique(symbols, return_counts=True)
    p = counts / counts.sum()
    return float(-(counts * np.log2(p)).sum())


# ---------------------------------------------------------------- the pipeline's tables and facts


def coding_table(
    arrays: Mapping[str, np.ndarray], plain_bytes: int, coded_bytes: int | None, identical: bool
) -> pd.Series:
    """What the artifact holds and what each way of coding it costs, in bytes.

    Args:
        arrays: from ``pack_int8_sparse``.
        plain_bytes: bytes of the plain artifact.
        coded_bytes: bytes of the LZMA-coded artifact (None when not written).
        identical: whether the artifact read back gave the identical int8 model.

    Returns:
        Non-zero and distinct int8 weights, the plain and LZMA bytes, the Huffman estimate and the
        Shannon bound of the values plus the 1-bit-per-weight bitmaps, and the round-trip check.
    """
    values = nonzero_values(arrays)
    bitmap_bits = sum(int(np.prod(arrays[k])) for k in arrays if k.endswith(".shape"))
    return pd.Series(
        {
            "non-zero int8 weights": len(values),
            "distinct int8 values": len(np.unique(values)),
            "plain artifact (bytes)": plain_bytes,
            "LZMA-coded artifact (bytes)": coded_bytes,
            "Huffman-coded values + bitmap, estimate (bytes)": (huffman_bits(values) + bitmap_bits)
            / 8,
            "Shannon bound of values + bitmap (bytes)": (entropy_bits(values) + bitmap_bits) / 8,
            "artifact gives back the identical int8 model": bool(identical),
        },
        dtype=object,
    )


def nonzero_values(arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    """Every layer's non-zero int8 weights of an artifact, concatenated in layer order."""
    return np.concatenate([arrays[k] for k in arrays if k.endswith(".values")])


def with_entropy_stage(
    table: pd.DataFrame, coded_bytes: int, name: str = "5 + entropy coding"
) -> pd.DataFrame:
    """The stage table plus the entropy-coded stage: the last stage's model with the coded bytes.

    The coded artifact decodes to the same int8 model, so accuracy and latency are the last
    stage's; only the bytes and the size ratio (against the first row, the baseline) change.

    Args:
        table: ``measure.compare`` of the stages, the baseline first.
        coded_bytes: bytes of the LZMA-coded artifact.
        name: the new row's name.

    Returns:
        A new table with the extra row.
    """
    out = table.copy()
    last = out.iloc[-1].copy()
    last["bytes"] = coded_bytes
    last["size_ratio"] = out["bytes"].iloc[0] / coded_bytes
    out.loc[name] = last
    return out


def stage_steps(table: pd.DataFrame, batch_sizes: Sequence[int]) -> pd.DataFrame:
    """Each stage against the one before it: accuracy points, times smaller, times faster.

    Args:
        table: the stages in pipeline order (accuracy, bytes, latency_ms_b<bs>).
        batch_sizes: the timed batch sizes.

    Returns:
        A copy with accuracy_vs_previous_points, smaller_than_previous and
        faster_than_previous_b<bs> (NaN on the first row).
    """
    out = table.copy()
    prev = table.shift(1)
    out["accuracy_vs_previous_points"] = (table["accuracy"] - prev["accuracy"]) * 100
    out["smaller_than_previous"] = prev["bytes"] / table["bytes"]
    for bs in batch_sizes:
        out[f"faster_than_previous_b{bs}"] = prev[f"latency_ms_b{bs}"] / table[f"latency_ms_b{bs}"]
    return out


def executed_records(
    reports_dir: str | Path, pattern: str = "0[4-7]_*.ipynb"
) -> dict[str, dict[str, Any]]:
    """The records of the executed notebooks in a folder that recorded a ``comparison``.

    Args:
        reports_dir: folder of executed notebooks (a missing folder gives none).
        pattern: glob of the notebooks to read.

    Returns:
        Notebook stem -> its records (``nbhelpers.core.record.read``), in name order.
    """
    from nbhelpers.core.record import read

    out = {}
    for path in sorted(Path(reports_dir).glob(pattern)):
        recs = read(path)
        if recs.get("comparison"):
            out[path.stem] = recs
    return out


def pareto_board(
    others: Mapping[str, Mapping[str, Any]], stages: pd.DataFrame, notebook: str, baseline: str
) -> pd.DataFrame:
    """One leaderboard of other notebooks' comparisons and this pipeline's stages.

    Args:
        others: notebook stem -> records (``executed_records``), each with ``comparison`` and
            ``comparison_baseline``.
        stages: the pipeline's stage table (index: stage name).
        notebook: this notebook's stem, for its rows.
        baseline: the pipeline's baseline stage.

    Returns:
        ``leaderboard.COLUMNS`` rows that have both an accuracy and bytes, others first.
    """
    from nbhelpers.measure import leaderboard

    own = stages.rename_axis("model").reset_index()
    own = own.assign(notebook=notebook, is_baseline=own["model"] == baseline)
    parts = [leaderboard.build(others), own.reindex(columns=leaderboard.COLUMNS)]
    board = pd.concat([p for p in parts if len(p)], ignore_index=True)
    return board[board["accuracy"].notna() & board["bytes"].notna()].reset_index(drop=True)


def single_technique_points(board: pd.DataFrame, notebook: str) -> pd.DataFrame:
    """The optimized models of the other notebooks on a ``pareto_board`` (baselines excluded)."""
    return board[(board["notebook"] != notebook) & ~board["is_baseline"].astype(bool)]


def summary(
    stages: pd.DataFrame,
    targets: Sequence[Mapping[str, Any]],
    board: pd.DataFrame,
    *,
    notebook: str,
    reference: Mapping[str, Any] | None = None,
    reference_gap: Mapping[str, Any] | None = None,
    control: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """This run's facts about the pipeline, from its stage table, targets and Pareto board.

    Args:
        stages: ``stage_steps`` of the stages (first row: the baseline; last: the final stage),
            with a ``macs`` column.
        targets: ``nbhelpers.measure.targets.target`` dicts.
        board: ``pareto_board``.
        notebook: this notebook's stem on the board.
        reference: the like-for-like row (``measure.compare`` against the same baseline, e.g.
            ``deep_compression_recipe`` of the baseline itself), or None.
        reference_gap: ``stats.paired_difference`` of the like-for-like model's hits against the
            final stage's on the same test images (final minus it), with ``reference``.
        control: the from-scratch control (``stats.seeds_paired_difference`` of the final stage
            against it, with ``seeds`` and ``epochs``), or None.

    Returns:
        A ``fact_table``: the final model against the baseline, each stage's size and speed step,
        the multiply-adds, the like-for-like row and what the full stack adds to it, the
        from-scratch control, each target's verdict and the Pareto picture's counts.
    """
    from nbhelpers.measure.facts import fact_table
    from nbhelpers.measure.leaderboard import pareto_front
    from nbhelpers.measure.targets import measured_text

    base, fin = stages.iloc[0], stages.iloc[-1]
    speed = [c for c in stages.columns if c.startswith("speedup_b")]
    big = max(speed, key=lambda c: int(c.removeprefix("speedup_b")))
    rows = [("final stage", str(stages.index[-1]), "", f"after {len(stages) - 1} stages")]
    rows += _vs_baseline_rows(
        "final", fin, speed, f"{int(base['bytes']):,} to {int(fin['bytes']):,} bytes"
    )
    rows.append(
        (
            "multiply-adds per image, baseline / final",
            round(base["macs"] / fin["macs"], 2),
            "x",
            f"{int(base['macs']):,} to {int(fin['macs']):,}",
        )
    )
    for name, r in stages.iloc[1:].iterrows():
        rows.append(
            (
                f"{name}: times smaller",
                round(float(r["smaller_than_previous"]), 2),
                "x",
                "than the stage before, bytes on disk",
            )
        )
    b = big.removeprefix("speedup_b")
    for name, r in stages.iloc[1:].iterrows():
        step = round(float(r[f"faster_than_previous_b{b}"]), 2)
        rows.append((f"{name}: times faster, b{b}", step, "x", f"than the stage before, batch {b}"))
    if reference is not None:
        rows += _reference_rows(reference, fin, reference_gap, speed)
    if control is not None:
        rows += _control_rows(control)
    rows += [
        (
            f"target met: {t['name']}",
            bool(t["met"]),
            "",
            measured_text(t) + (" (within noise)" if t.get("decided") is False else ""),
        )
        for t in targets
    ]
    others = single_technique_points(board, notebook)
    front = pareto_front(board) if len(board) else board
    rows += [
        (
            "single-technique models on the picture",
            len(others),
            "models",
            f"from {others['notebook'].nunique()} notebooks",
        ),
        (
            "pipeline stages on the Pareto front",
            int((front["notebook"] == notebook).sum()),
            "points",
            f"of {len(front)} Pareto-optimal points",
        ),
    ]
    return fact_table(rows)


def _vs_baseline_rows(
    label: str, row: Mapping[str, Any], speed: list[str], size_context: str
) -> list[tuple]:
    """Fact rows of one ``measure.compare`` row against the baseline: times smaller, accuracy
    change with its paired interval, verdict, and speed at each timed batch size."""
    from nbhelpers.measure.verdicts import interval_text, verdict_reason

    rows = [
        (
            f"{label}: times smaller than the baseline",
            round(float(row["size_ratio"]), 2),
            "x",
            size_context,
        ),
        (
            f"{label}: accuracy change vs the baseline",
            round(float(row["accuracy_delta_points"]), 2),
            "points",
            interval_text(row),
        ),
        (f"{label}: verdict vs the baseline", str(row["verdict"]), "", verdict_reason(row)),
    ]
    return rows + [
        (
            f"{label}: speed vs the baseline, batch {c.removeprefix('speedup_b')}",
            round(float(row[c]), 2),
            "x",
            "above 1: faster",
        )
        for c in speed
    ]


def _reference_rows(
    ref: Mapping[str, Any], fin: Mapping[str, Any], gap: Mapping[str, Any] | None, speed: list[str]
) -> list[tuple]:
    """Fact rows of the like-for-like model against the baseline, and of the full stack against
    it (size and speed ratios above 1: the full stack is smaller, faster)."""
    if gap is None:
        raise ValueError("give reference_gap (final minus the like-for-like model) with reference")
    size = f"{int(ref['bytes']):,} bytes; no distillation or slimming"
    rows = _vs_baseline_rows("like-for-like", ref, speed, size)
    rows += [
        (
            "stack over like-for-like: size ratio",
            round(float(ref["bytes"]) / float(fin["bytes"]), 2),
            "x",
            "above 1: the full stack is smaller",
        ),
        (
            "stack minus like-for-like: accuracy change",
            round(float(gap["difference"]), 2),
            "points",
            f"paired 95% CI [{gap['low']:+.2f}, {gap['high']:+.2f}]",
        ),
        ("stack vs like-for-like: verdict", str(gap["verdict"]), "", "paired, same test images"),
    ]
    rows += [
        (
            f"stack over like-for-like: speed, batch {c.removeprefix('speedup_b')}",
            round(float(fin[c]) / float(ref[c]), 2),
            "x",
            "above 1: the full stack is faster",
        )
        for c in speed
    ]
    return rows


def _control_rows(control: Mapping[str, Any]) -> list[tuple]:
    """Fact rows of the final stage against the from-scratch control (Liu et al. 2019)."""
    seeds = int(control["seeds"])
    return [
        (
            "from-scratch control: final minus it",
            round(float(control["final stage minus it (points)"]), 2),
            "points",
            f"95% CI [{control['low']:+.2f}, {control['high']:+.2f}], {seeds} seeds",
        ),
        (
            "from-scratch control: verdict",
            str(control["verdict"]),
            "",
            f"over seeds: {control['seed_verdict']}",
        ),
        (
            "from-scratch control: seed_std",
            round(float(control["seed_std"]), 2),
            "points",
            "spread of one control seed's difference",
        ),
    ]
