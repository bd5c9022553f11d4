"""Unstructured (weight) magnitude pruning with ``torch.nn.utils.prune``, its schedules and storage.

A *prunable weight* is the ``weight`` of an ``nn.Linear`` or ``nn.Conv2d``; biases are kept.
Sparsity is always the **absolute** fraction of prunable weights that are zero, so that repeated
calls (iterative and gradual pruning) grow the existing masks up to the requested level:

* ``magnitude_prune(model, s, "global")`` removes the ``round(s * N)`` smallest |w| over all layers;
* ``magnitude_prune(model, s, "layer")`` removes ``round(s * N_l)`` in each layer;
* ``cubic_sparsity`` is the gradual schedule of Zhu and Gupta (2017), ``GradualPruner`` applies it
  from the ``after_step`` hook of ``nbhelpers.core.train.fit``;
* ``iterative_sparsities`` are the levels of Han et al.'s (2015) prune-and-retrain rounds.

Storage: ``save_sparse`` writes CSR arrays (fp32 values, uint16 column indices where they fit,
int32 row pointers) with NumPy, optionally deflate-compressed; ``save_torch_sparse`` writes torch's
sparse CSR tensors; both load back to the exact dense weights.
"""

from __future__ import annotations

import copy
import gzip
import io
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn.utils import prune

from nbhelpers.core.models import reinitialized
from nbhelpers.core.params import ParameterError, check_choice, check_float, check_int
from nbhelpers.core.train import evaluate, fit, seed_everything
from nbhelpers.measure import accuracy, file_bytes, sparse_csr
from nbhelpers.measure.stats import seeds_paired_difference

PRUNABLE = (nn.Linear, nn.Conv2d)

SCOPES = ("global", "layer")
METHODS = ("one-shot", "iterative", "gradual")


def prunable(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The (name, module) pairs whose ``weight`` may be pruned: every Linear and Conv2d, in
    order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, PRUNABLE)]


def largest_linear(model: nn.Module) -> str:
    """The name of the ``nn.Linear`` with the most weights (the layer sparse kernels matter for).

    Args:
        model: any model with at least one Linear layer.

    Returns:
        Its name in ``model.named_modules()`` ("1" for the MLP, "5" for Caffe's LeNet-5).
    """
    linears = [(m.weight.numel(), n) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer")
    return max(linears, key=lambda t: t[0])[1]


def _masked(m: nn.Module) -> int:
    """Weights a module's pruning mask already removes (0 without a mask)."""
    mask = getattr(m, "weight_mask", None)
    return 0 if mask is None else int((mask == 0).sum())


def check_run(name: str, value: object) -> tuple[str, str]:
    """Check a "method/scope" string such as "gradual/global" and split it.

    Args:
        name: parameter name.
        value: "<method>/<scope>" with method in ``METHODS`` and scope in ``SCOPES``.

    Returns:
        (method, scope).
    """
    allowed = (
        "'<method>/<scope>' with method in "
        + ", ".join(map(repr, METHODS))
        + " and scope in "
        + ", ".join(map(repr, SCOPES))
    )
    if not isinstance(value, str) or value.count("/") != 1:
        raise ParameterError(name, value, allowed)
    method, scope = value.split("/")
    if method not in METHODS or scope not in SCOPES:
        raise ParameterError(name, value, allowed)
    return method, scope


def magnitude_prune(
    model: nn.Module, sparsity: float, scope: str = "global", only: Sequence[str] | None = None
) -> nn.Module:
    """Prune the smallest-magnitude weights (L1 criterion) until ``sparsity`` of them are masked.

    Masks only grow: weights already masked stay masked, and the new ones are the smallest among
    those remaining (``torch.nn.utils.prune`` combines the masks in a ``PruningContainer``).

    Args:
        model: the model, pruned in place (``weight`` becomes ``weight_orig * weight_mask``).
        sparsity: target fraction of masked weights in [0, 1), absolute, not relative.
        scope: "global" (one threshold over all layers) or "layer" (the fraction in every layer).
        only: names of the layers to prune (default: every prunable layer).

    Returns:
        The model.
    """
    check_float("sparsity", sparsity, 0.0, 1.0, high_inclusive=False)
    check_choice("scope", scope, SCOPES)
    layers = [(n, m) for n, m in prunable(model) if only is None or n in only]
    if only is not None and len(layers) != len(set(only)):
        raise ParameterError(
            "only",
            list(only),
            "names of prunable layers: " + ", ".join(n for n, _ in prunable(model)),
        )
    if scope == "global":
        total = sum(m.weight.numel() for _, m in layers)
        extra = max(0, round(sparsity * total) - sum(_masked(m) for _, m in layers))
        prune.global_unstructured(
            [(m, "weight") for _, m in layers], prune.L1Unstructured, amount=extra
        )
    else:
        for _, m in layers:
            extra = max(0, round(sparsity * m.weight.numel()) - _masked(m))
            prune.l1_unstructured(m, "weight", amount=extra)
    return model


def global_threshold(model: nn.Module, sparsity: float) -> float:
    """The magnitude ``tau`` such that ``|w| <= tau`` holds for ``round(sparsity * N)`` prunable
    weights.

    Args:
        model: the model.
        sparsity: fraction in (0, 1).

    Returns:
        The threshold (the k-th smallest |w| over every prunable weight).
    """
    check_float("sparsity", sparsity, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
    w = torch.cat([m.weight.detach().abs().flatten() for _, m in prunable(model)])
    k = max(1, round(sparsity * w.numel()))
    return float(w.kthvalue(k).values)


@torch.no_grad()
def threshold_prune(model: nn.Module, threshold: float) -> nn.Module:
    """The naive method: zero every prunable weight with ``|w| <= threshold`` in place (no mask, no
    retraining).

    Args:
        model: the model, changed in place.
        threshold: the fixed magnitude threshold.

    Returns:
        The model.
    """
    for _, m in prunable(model):
        m.weight[m.weight.abs() <= threshold] = 0.0
    return model


def layer_sparsity(model: nn.Module) -> pd.DataFrame:
    """Zeros per prunable layer, counted on the effective (masked) weights.

    Args:
        model: the model, pruned or not.

    Returns:
        One row per layer (index: name): shape, weights, nonzero, sparsity; plus a "total" row.
    """
    rows = []
    for n, m in prunable(model):
        w = m.weight.detach()
        nz = int(torch.count_nonzero(w))
        rows.append(
            {"layer": n, "shape": "x".join(map(str, w.shape)), "weights": w.numel(), "nonzero": nz}
        )
    df = pd.DataFrame(rows)
    df.loc[len(df)] = {
        "layer": "total",
        "shape": "",
        "weights": df.weights.sum(),
        "nonzero": df.nonzero.sum(),
    }
    df["sparsity"] = 1 - df.nonzero / df.weights
    return df.set_index("layer")


def sparsity(model: nn.Module) -> float:
    """Fraction of all prunable weights that are zero."""
    return float(layer_sparsity(model).loc["total", "sparsity"])


def is_pruned(model: nn.Module) -> bool:
    """Whether any layer still carries a ``torch.nn.utils.prune`` re-parametrisation."""
    return any(prune.is_pruned(m) for _, m in prunable(model))


def make_permanent(model: nn.Module) -> nn.Module:
    """``prune.remove`` on every pruned layer: ``weight`` becomes a plain parameter holding the
    zeros.

    Args:
        model: the model, changed in place.

    Returns:
        The model (its ``state_dict`` has no ``weight_orig``/``weight_mask`` any more).
    """
    for _, m in prunable(model):
        if prune.is_pruned(m):
            prune.remove(m, "weight")
    return model


def cubic_sparsity(step: int, final: float, begin: int, end: int, initial: float = 0.0) -> float:
    """Zhu and Gupta's (2017) gradual schedule ``s_t = s_f + (s_i - s_f) (1 - (t - t_0)/(t_n -
    t_0))^3``.

    Args:
        step: the training step ``t``.
        final: the final sparsity ``s_f``.
        begin: the step ``t_0`` where pruning starts (``s_i`` before it).
        end: the step ``t_n`` where ``s_f`` is reached (and kept after it).
        initial: the initial sparsity ``s_i``.

    Returns:
        The sparsity at ``step``.
    """
    if end <= begin:
        return final if step >= begin else initial
    progress = min(max((step - begin) / (end - begin), 0.0), 1.0)
    return final + (initial - final) * (1.0 - progress) ** 3


def iterative_sparsities(final: float, rounds: int) -> list[float]:
    """Han et al.'s prune-and-retrain levels ``s_k = 1 - (1 - s_f)^{k/K}``: each round keeps the
    same fraction.

    Args:
        final: sparsity after the last round.
        rounds: number of rounds ``K``.

    Returns:
        The ``K`` increasing sparsities, the last one equal to ``final``.
    """
    return [1.0 - (1.0 - final) ** (k / rounds) for k in range(1, rounds + 1)]


class GradualPruner:
    """An ``after_step`` hook for ``train.fit``: every ``every`` steps, prune to
    ``cubic_sparsity(step)``."""

    def __init__(
        self,
        final: float,
        begin: int,
        end: int,
        every: int = 10,
        scope: str = "global",
        initial: float = 0.0,
    ):
        """Set up the schedule (steps count optimizer steps, from 1).

        Args:
            final: final sparsity.
            begin: step where pruning starts.
            end: step where ``final`` is reached.
            every: prune every this many steps (``Delta t``), and at ``end``.
            scope: "global" or "layer".
            initial: sparsity at ``begin``.
        """
        self.final, self.begin, self.end, self.every = final, begin, end, max(1, every)
        self.scope, self.initial, self.step = check_choice("scope", scope, SCOPES), initial, 0
        self.history: list[tuple[int, float]] = []

    def __call__(self, model: nn.Module) -> None:
        """Count the step and prune when the schedule says so."""
        self.step += 1
        t = self.step
        if self.begin <= t <= self.end and ((t - self.begin) % self.every == 0 or t == self.end):
            s = cubic_sparsity(t, self.final, self.begin, self.end, self.initial)
            magnitude_prune(model, s, self.scope)
            self.history.append((t, s))


# ---------------------------------------------------------------- lottery tickets


def masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """The pruning masks of a pruned model: layer name -> a copy of its ``weight_mask``."""
    return {
        n: m.weight_mask.detach().clone() for n, m in prunable(model) if hasattr(m, "weight_mask")
    }


def apply_masks(model: nn.Module, layer_masks: Mapping[str, torch.Tensor]) -> nn.Module:
    """Prune a model in place with given masks (``torch.nn.utils.prune.custom_from_mask``).

    Args:
        model: the model; its layers named in ``layer_masks`` get ``weight_orig * weight_mask``.
        layer_masks: layer name -> 0/1 tensor of the weight's shape.

    Returns:
        The model.
    """
    layers = dict(prunable(model))
    unknown = sorted(set(layer_masks) - set(layers))
    if unknown:
        raise ParameterError(
            "layer_masks", unknown, "names of prunable layers: " + ", ".join(layers)
        )
    for n, mask in layer_masks.items():
        prune.custom_from_mask(layers[n], "weight", mask.to(layers[n].weight.device))
    return model


def train_with_snapshots(
    model: nn.Module,
    train_loader: Any,
    epochs: int,
    at: Sequence[int],
    lr: float = 1e-3,
    device: Any = "cpu",
) -> dict[int, dict[str, torch.Tensor]]:
    """Train (Adam, in place) and keep copies of the weights after the epochs in ``at``.

    Args:
        model: the model, trained in place.
        train_loader: training batches.
        epochs: epochs to train.
        at: epochs after which to copy the state (0: before training).
        lr: Adam learning rate.
        device: where to train.

    Returns:
        epoch -> a CPU copy of the ``state_dict`` then (epoch 0 always included).
    """
    snaps = {0: {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
    steps, done = max(1, len(train_loader)), [0]

    def keep_snapshot(m: nn.Module) -> None:
        done[0] += 1
        if done[0] % steps == 0 and done[0] // steps in at:
            snaps[done[0] // steps] = {
                k: v.detach().cpu().clone() for k, v in m.state_dict().items()
            }

    fit(model, train_loader, epochs=epochs, lr=lr, after_step=keep_snapshot, device=device,
        progress=False)  # fmt: skip
    return snaps


def rewound_ticket(
    build: Callable[[], nn.Module],
    state: Mapping[str, torch.Tensor],
    layer_masks: Mapping[str, torch.Tensor],
) -> nn.Module:
    """A ticket before its training: a new model holding ``state`` under ``layer_masks``.

    Args:
        build: makes a model of the architecture.
        state: the saved weights to rewind to (a ``state_dict``).
        layer_masks: layer name -> mask (``masks``).

    Returns:
        The pruned model: each masked layer's ``weight_orig`` is the saved weight and its
        ``weight`` the saved weight times the mask.
    """
    model = build()
    model.load_state_dict(state)
    return apply_masks(model, layer_masks)


def lottery_ticket(
    build: Callable[[], nn.Module],
    train_loader: Any,
    epochs: int,
    sparsity: float,
    rewind: Sequence[int],
    seed: int,
    lr: float = 1e-3,
    device: Any = "cpu",
) -> dict[str, nn.Module]:
    """Frankle and Carbin's experiment for one seed: a dense run, its tickets, a fresh control.

    The dense model trains ``epochs`` epochs (Adam at ``lr``) from its initialisation, keeping its
    weights after each epoch in ``rewind`` (0: the initialisation itself). One global magnitude
    threshold on the *trained* weights gives the mask. A ticket rewound to epoch ``k`` is the mask
    on the weights of epoch ``k``, trained ``epochs - k`` more epochs (Frankle et al. 2020 rewind to
    an early epoch; Frankle and Carbin 2019 to the initialisation); the control is the same mask
    on fresh weights (``models.reinitialized`` with ``seed + 1``), trained all ``epochs``.

    Args:
        build: makes the untrained model (called after ``seed_everything(seed)``).
        train_loader: training batches (its shuffle continues from run to run).
        epochs: epochs of the dense run.
        sparsity: fraction of the prunable weights removed, in (0, 1).
        rewind: epochs to rewind to, each in ``[0, epochs)``.
        seed: seed of the initialisation and of every run.
        lr: Adam learning rate of every run.
        device: where to train.

    Returns:
        {"dense": ..., "rewound to epoch k": ... for each k, "fresh weights": ...}: models on the
        CPU in eval mode, the pruned ones made permanent.
    """
    check_int("epochs", epochs, minimum=1)
    check_float("sparsity", sparsity, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
    bad = [k for k in rewind if not isinstance(k, int) or not 0 <= k < epochs]
    if bad or not rewind:
        raise ParameterError("rewind", list(rewind), f"epochs from 0 to {epochs - 1}")
    seed_everything(seed)
    dense = build()
    snaps = train_with_snapshots(dense, train_loader, epochs, rewind, lr, device)
    mask = masks(magnitude_prune(copy.deepcopy(dense), sparsity, "global"))
    out = {"dense": dense.cpu().eval()}
    starts = {f"rewound to epoch {k}": (snaps[k], epochs - k) for k in sorted(set(rewind))}
    starts["fresh weights"] = (reinitialized(build(), seed + 1).state_dict(), epochs)
    for name, (state, n_epochs) in starts.items():
        model = rewound_ticket(build, state, mask)
        seed_everything(seed)
        fit(model, train_loader, epochs=n_epochs, lr=lr, device=device, progress=False)
        out[name] = make_permanent(model.cpu().eval())
    return out


def lottery_table(
    correct: Mapping[str, Sequence[Any]], control: str = "fresh weights"
) -> pd.DataFrame:
    """Tickets against the fresh-weights control, over seeds, on the same test images.

    Args:
        correct: run name -> one boolean vector per seed (right or wrong on each test image), the
            seeds in the same order for every run.
        control: the run every other run is compared with.

    Returns:
        One row per run: seeds, mean and sd of the test accuracy, and the mean difference from the
        control in points with its paired 95% interval and verdict
        (``stats.seeds_paired_difference``).
    """
    base = np.stack([np.asarray(c, bool) for c in correct[control]])
    rows = []
    for name, runs in correct.items():
        acc = np.stack([np.asarray(c, bool) for c in runs])
        d = seeds_paired_difference(base, acc) if name != control else {}
        per_seed = acc.mean(1)
        rows.append({
            "run": name, "seeds": len(acc), "test_mean": float(per_seed.mean()),
            "test_sd": float(per_seed.std(ddof=1)) if len(acc) > 1 else float("nan"),
            f"vs {control} (points)": d.get("difference", 0.0),
            "low": d.get("low", float("nan")), "high": d.get("high", float("nan")),
            "verdict": d.get("verdict", "control"),
        })  # fmt: skip
    return pd.DataFrame(rows).set_index("run")


# ---------------------------------------------------------------- storage


def _is_matrix(key: str, v: torch.Tensor) -> bool:
    return key.endswith("weight") and v.dim() >= 2


def sparse_arrays(state: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """CSR arrays of every weight matrix of a (permanent) state dict; other tensors stay dense.

    A weight of shape (out, ...) is stored as a CSR matrix (out, prod(...)): ``values`` (float32),
    ``indices`` (column of each value: uint16 when the row has at most 65,536 columns, else int32),
    ``indptr`` (int32, where each row starts) and ``shape``.

    Args:
        state: name -> tensor, without pruning masks (call ``make_permanent`` first).

    Returns:
        Array name -> array, ready for ``np.savez``.
    """
    out: dict[str, np.ndarray] = {}
    for k, v in state.items():
        if k.endswith(("_orig", "_mask")):
            raise ValueError(f"{k}: make the pruning permanent (prune.remove) before saving")
        a = v.detach().cpu().numpy()
        if not _is_matrix(k, v):
            out[f"{k}.dense"] = a
            continue
        m = a.reshape(a.shape[0], -1)
        rows, cols = np.nonzero(m)
        out[f"{k}.values"] = m[rows, cols].astype(np.float32)
        out[f"{k}.indices"] = cols.astype(np.uint16 if m.shape[1] <= 65536 else np.int32)
        out[f"{k}.indptr"] = np.concatenate(
            [[0], np.cumsum(np.bincount(rows, minlength=m.shape[0]))]
        ).astype(np.int32)
        out[f"{k}.shape"] = np.asarray(a.shape, dtype=np.int64)
    return out


def dense_state(arrays: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """The dense state dict back from ``sparse_arrays`` (the inverse, exactly).

    Args:
        arrays: array name -> array.

    Returns:
        Name -> tensor.
    """
    state: dict[str, torch.Tensor] = {}
    for key in arrays:
        name, kind = key.rsplit(".", 1)
        if kind == "dense":
            state[name] = torch.from_numpy(np.array(arrays[key]))
        elif kind == "values":
            shape = tuple(int(s) for s in arrays[f"{name}.shape"])
            indptr = arrays[f"{name}.indptr"].astype(np.int64)
            m = np.zeros((shape[0], int(np.prod(shape[1:]))), dtype=np.float32)
            rows = np.repeat(np.arange(shape[0]), np.diff(indptr))
            m[rows, arrays[f"{name}.indices"].astype(np.int64)] = arrays[key]
            state[name] = torch.from_numpy(m.reshape(shape))
    return state


def save_sparse(state: Mapping[str, torch.Tensor], path: str | Path, compress: bool = False) -> int:
    """Write the CSR arrays of a state dict to an ``.npz`` file (deflate-compressed if asked).

    Args:
        state: permanent state dict.
        path: file to write (should end in ``.npz``).
        compress: use ``np.savez_compressed``.

    Returns:
        Bytes on disk.
    """
    (np.savez_compressed if compress else np.savez)(Path(path), **sparse_arrays(state))
    return file_bytes(path)


def load_sparse(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a file written by ``save_sparse`` back to a dense state dict."""
    with np.load(Path(path)) as f:
        return dense_state({k: f[k] for k in f.files})


def torch_sparse_state(
    state: Mapping[str, torch.Tensor], compact: bool = False
) -> dict[str, torch.Tensor | dict[str, Any]]:
    """What ``save_torch_sparse`` writes: every weight matrix as a CSR tensor, the rest as is.

    Args:
        state: permanent state dict (conv weights are flattened to (out, -1); the shape is kept).
        compact: CSR arrays in storages of their own size (``measure.sparse_csr``).

    Returns:
        Name -> tensor, or {"csr": sparse CSR tensor, "shape": the weight's shape}; on the CPU.
    """
    out: dict[str, torch.Tensor | dict[str, Any]] = {}
    for k, v in state.items():
        v = v.detach().cpu()  # the artifact does not depend on (or record) the model's device
        if _is_matrix(k, v):
            csr = sparse_csr(v.reshape(v.shape[0], -1), compact=compact)
            out[k] = {"csr": csr, "shape": tuple(v.shape)}
        else:
            out[k] = v
    return out


def save_torch_sparse(
    state: Mapping[str, torch.Tensor], path: str | Path, compact: bool = False
) -> int:
    """``torch.save`` with every weight matrix as a torch sparse CSR tensor (int64 indices).

    Tensors are saved from the CPU, whatever their device. By default the column indices are
    torch's view into the COO index storage (16 bytes each on disk); ``compact`` writes 8.

    Args:
        state: permanent state dict (conv weights are flattened to (out, -1); the shape is kept).
        path: file to write.
        compact: give the CSR arrays storages of their own size.

    Returns:
        Bytes on disk.
    """
    torch.save(torch_sparse_state(state, compact), Path(path))
    return file_bytes(path)


def load_torch_sparse(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a file written by ``save_torch_sparse`` back to a dense state dict (on the CPU)."""
    raw = torch.load(Path(path), map_location="cpu", weights_only=True)
    return {
        k: v["csr"].to_dense().reshape(v["shape"]) if isinstance(v, dict) else v
        for k, v in raw.items()
    }


def gzip_file(path: str | Path) -> int:
    """Compress a file with gzip (level 9) next to it (``<path>.gz``).

    Args:
        path: the file.

    Returns:
        Bytes of the compressed file.
    """
    out = Path(f"{path}.gz")
    with open(path, "rb") as src, gzip.open(out, "wb", compresslevel=9) as dst:
        shutil.copyfileobj(src, dst)
    return file_bytes(out)


# ---------------------------------------------------------------- predicted bytes

#: Ways ``storage_prediction`` can predict a file: torch.save of the dense state dict, torch.save
#: of torch's CSR tensors (as ``to_sparse_csr`` returns them, or compact), NumPy CSR arrays.
LAYOUTS = ("torch dense", "torch csr", "torch csr compact", "npz csr")
#: torch.save's zip records around the tensors' storages (name, bytes), in the order written.
_TORCH_HEAD = (("data.pkl", 0), (".format_version", 1), (".storage_alignment", 2), ("byteorder", 6))
_TORCH_TAIL = (("version", 2), (".data/serialization_id", 40))


def torch_zip_bytes(storages: Sequence[int], archive: str, pickle: int = 0) -> int:
    """Bytes of a ``torch.save`` file holding these storages and a pickle of ``pickle`` bytes.

    The file is a zip: each record is a local header (30 bytes and its name), an extra field
    (at least 4 bytes) that starts the data on a 64-byte boundary, the data and a 16-byte data
    descriptor; then one central directory entry per record (46 bytes and the name), a zip64 end
    record and locator (76) and the end record (22).

    Args:
        storages: bytes of each tensor storage, in the order written.
        archive: the zip's folder name (torch uses the file name without its suffix).
        pickle: bytes of the pickle that describes the tensors (0: not known; it is a few hundred
            bytes to a few kB and shifts the padding of the records after it).

    Returns:
        Predicted bytes.
    """
    head = (("data.pkl", pickle), *_TORCH_HEAD[1:])
    records = [*head, *((f"data/{i}", n) for i, n in enumerate(storages)), *_TORCH_TAIL]
    offset = central = 0
    for name, size in records:
        header = 30 + len(f"{archive}/{name}")
        pad = -(offset + header) % 64  # an extra field of 4 bytes at least: 0 to 3 take 64 more
        offset += header + pad + (64 if pad < 4 else 0) + size + 16
        central += 46 + len(f"{archive}/{name}")
    return offset + central + 76 + 22


def npz_bytes(arrays: Mapping[str, np.ndarray]) -> int:
    """Bytes of ``np.savez`` (uncompressed) of these arrays.

    Each array is a zip record: local header (30 bytes, the name ``<key>.npy``, a 20-byte zip64
    field), the ``.npy`` header (padded to a multiple of 64 bytes) and the data; then one central
    directory entry (46 bytes and the name) per array and the end record (22).

    Args:
        arrays: name -> array.

    Returns:
        Predicted bytes on disk.
    """
    total = 22
    for key, a in arrays.items():
        head = io.BytesIO()
        np.lib.format.write_array_header_1_0(head, np.lib.format.header_data_from_array_1_0(a))
        total += 30 + 20 + 46 + 2 * len(f"{key}.npy") + len(head.getvalue()) + a.nbytes
    return total


def predicted_bytes(
    state: Mapping[str, torch.Tensor], layout: str, archive: str = "model", pickle: int = 0
) -> dict[str, int]:
    """Bytes a file should take, from the arrays it stores, their dtypes and the container.

    Args:
        state: permanent state dict.
        layout: one of ``LAYOUTS``.
        archive: for torch.save, the file name without its suffix (it names the zip's records).
        pickle: for torch.save, the pickle's bytes if known (0: the prediction leaves it out).

    Returns:
        {"textbook", "values", "column indices", "row pointers", "other", "container",
        "predicted"}: "textbook" is values and column indices alone (4 bytes per value, plus the
        index dtype's width), "other" the biases (and npz's shapes), "container" the zip and
        ``.npy`` headers and padding (and ``pickle``), "predicted" the sum.
    """
    check_choice("layout", layout, LAYOUTS)
    parts = dict.fromkeys(["values", "column indices", "row pointers", "other"], 0)
    if layout == "npz csr":
        arrays = sparse_arrays(state)
        for k, a in arrays.items():
            kind = k.rsplit(".", 1)[1]
            part = {"values": "values", "indices": "column indices", "indptr": "row pointers"}
            parts[part.get(kind, "other")] += a.nbytes
        container = npz_bytes(arrays) - sum(parts.values())
        textbook = sum(a.nbytes + arrays[k.replace(".values", ".indices")].nbytes
                       for k, a in arrays.items() if k.endswith(".values"))  # fmt: skip
    else:
        storages = []
        saved = torch_sparse_state(state, layout == "torch csr compact")
        textbook = 0
        for k, v in saved.items():
            if isinstance(v, dict) and layout != "torch dense":
                csr = v["csr"]
                named = zip(("row pointers", "column indices", "values"),
                            (csr.crow_indices(), csr.col_indices(), csr.values()))  # fmt: skip
                for part, t in named:
                    storages.append(t.untyped_storage().nbytes())
                    parts[part] += storages[-1]
                textbook += csr.values().numel() * (4 + csr.col_indices().element_size())
            else:
                t = state[k].detach()
                storages.append(t.numel() * t.element_size())
                parts["values" if _is_matrix(k, t) else "other"] += storages[-1]
                textbook += storages[-1] if _is_matrix(k, t) else 0
        container = torch_zip_bytes(storages, archive, pickle) - sum(storages)
    total = sum(parts.values()) + container
    return {"textbook": int(textbook), **parts, "container": int(container), "predicted": total}


def storage_prediction(
    layouts: Mapping[str, tuple[str, Mapping[str, torch.Tensor], str]], storage: pd.DataFrame
) -> pd.DataFrame:
    """Predicted against measured bytes of each stored file.

    Args:
        layouts: format (a row of ``storage``) -> (layout of ``LAYOUTS``, the state dict stored,
            the zip's folder name for torch.save: the file's stem, or "archive" when the file
            was written from an in-memory buffer as ``measure.serialized_bytes`` does).
        storage: ``storage_table`` (index: format; columns file, bytes).

    Returns:
        Index ``format``; the columns of ``predicted_bytes``, "measured", "prediction error %"
        (predicted minus measured, over measured), "textbook error %", "bytes per non-zero
        weight" (measured over the non-zero weights of the state's matrices) and "times smaller"
        by the textbook, the prediction and the file (the first row of ``storage`` over each).
    """
    base = int(storage["bytes"].iloc[0])
    rows = []
    for fmt, (layout, state, archive) in layouts.items():
        measured = int(storage.loc[fmt, "bytes"])
        p = predicted_bytes(state, layout, archive)
        nnz = sum(int((v != 0).sum()) for k, v in state.items() if _is_matrix(k, v))
        rows.append({"format": fmt, "layout": layout, **p, "measured": measured,
                     "prediction error %": 100 * (p["predicted"] - measured) / measured,
                     "textbook error %": 100 * (p["textbook"] - measured) / measured,
                     "bytes per non-zero weight": measured / nnz,
                     "times smaller, textbook": base / p["textbook"],
                     "times smaller, predicted": base / p["predicted"],
                     "times smaller, measured": base / measured})  # fmt: skip
    return pd.DataFrame(rows).set_index("format")


# ---------------------------------------------------------------- sparse kernels


class CSRLinear(nn.Module):
    """A Linear layer whose weight is a torch sparse CSR matrix: ``y = (W x^T)^T + b`` with
    ``torch.sparse.mm``."""

    def __init__(self, linear: nn.Linear):
        """Copy a (permanent, pruned) Linear layer into CSR form.

        Args:
            linear: the dense layer.
        """
        super().__init__()
        self.weight = sparse_csr(linear.weight.detach())
        self.bias = None if linear.bias is None else linear.bias.detach().clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the sparse layer to a batch (n, in_features)."""
        y = torch.sparse.mm(self.weight, x.t()).t()
        return y if self.bias is None else y + self.bias


def to_csr_model(model: nn.Sequential) -> nn.Sequential:
    """A copy of a Sequential with every ``nn.Linear`` replaced by a ``CSRLinear`` (same outputs).

    Args:
        model: a permanent pruned model (``make_permanent``).

    Returns:
        The sparse-kernel model, in eval mode.
    """
    layers = [CSRLinear(m) if isinstance(m, nn.Linear) else m for m in model]
    return nn.Sequential(*layers).eval()


# ---------------------------------------------------------------- the notebook's tables and facts

#: Run names of the two methods without fine-tuning in the sweep.
NAIVE_RUN = "naive threshold (no fine-tune)"
LAYER_NO_FINETUNE_RUN = "layer, no fine-tune"


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    """Whether two models' prunable layers hold identical effective weights, layer by layer.

    Args:
        a: one model.
        b: the other (same architecture).

    Returns:
        True when every pair of weights is equal (``torch.equal``).
    """
    pa, pb = prunable(a), prunable(b)
    return len(pa) == len(pb) and all(
        torch.equal(x.weight, y.weight) for (_, x), (_, y) in zip(pa, pb)
    )


def reparametrisation(layer: nn.Module) -> dict[str, Any]:
    """What ``torch.nn.utils.prune`` left on a layer: parameters, buffers, hooks, the identity.

    Args:
        layer: a Linear or Conv2d layer (pruned or not).

    Returns:
        {"parameters", "buffers", "forward_pre_hooks"} as comma-separated names, and
        "weight == weight_orig * weight_mask" (False when the layer carries no mask).
    """
    pruned = prune.is_pruned(layer)
    return {
        "parameters": ", ".join(n for n, _ in layer.named_parameters()),
        "buffers": ", ".join(n for n, _ in layer.named_buffers()),
        "forward_pre_hooks": ", ".join(type(h).__name__ for h in layer._forward_pre_hooks.values()),
        "weight == weight_orig * weight_mask": pruned
        and bool(torch.equal(layer.weight, layer.weight_orig * layer.weight_mask)),
    }


def accuracy_row(
    model: nn.Module,
    run: str,
    requested: float,
    val_loader: Any,
    test_loader: Any,
    seconds: float = 0.0,
) -> dict[str, Any]:
    """One row of the sparsity sweep: the requested and measured sparsity and both accuracies.

    Args:
        model: the pruned (and maybe fine-tuned) model.
        run: the run's name, e.g. "gradual/global".
        requested: the sparsity the run asked for.
        val_loader: validation loader (choices are made on it).
        test_loader: test loader (the reported accuracy).
        seconds: training time of the run.

    Returns:
        {"run", "sparsity", "measured_sparsity", "val_accuracy", "test_accuracy", "train_seconds"}.
    """
    return {
        "run": run,
        "sparsity": requested,
        "measured_sparsity": sparsity(model),
        "val_accuracy": evaluate(model, val_loader)["accuracy"],
        "test_accuracy": accuracy(model, test_loader),
        "train_seconds": seconds,
    }


def global_layer_sparsity(model: nn.Module, levels: Sequence[float]) -> pd.DataFrame:
    """The sparsity one global threshold gives each layer, for every requested global level.

    Args:
        model: the dense model (left untouched: each level prunes a copy).
        levels: global sparsities.

    Returns:
        One row per layer plus "total" (index: layer), one column per level (named ``f"{s:g}"``).
    """

    def at(level: float) -> pd.Series:
        return layer_sparsity(magnitude_prune(copy.deepcopy(model), level, "global")).sparsity

    return pd.DataFrame({f"{s:g}": at(s) for s in levels})


def storage_table(
    files: Mapping[str, tuple[Path, int, Any]], state: Mapping[str, torch.Tensor], baseline: str
) -> pd.DataFrame:
    """Bytes on disk of every stored format against the baseline's; whether each reads back exactly.

    Args:
        files: format -> (path, bytes, loader); the loader reads the file back to a state dict
            (None: not checked, e.g. the baseline or a gzip file).
        state: the state dict every checked file must give back exactly.
        baseline: the format the ratios refer to.

    Returns:
        Index ``format``; columns file, bytes, "times smaller", "round-trips exactly" (None when
        not checked).
    """
    base = files[baseline][1]
    rows = []
    for fmt, (path, nbytes, load) in files.items():
        back = None if load is None else load(path)
        exact = (
            None
            if back is None
            else (
                set(back) == set(state) and all(torch.equal(back[n], v) for n, v in state.items())
            )
        )
        rows.append(
            {
                "format": fmt,
                "file": Path(path).name,
                "bytes": int(nbytes),
                "times smaller": base / nbytes,
                "round-trips exactly": exact,
            }
        )
    return pd.DataFrame(rows).set_index("format")


def sparse_kernel_wins(kernels: pd.DataFrame) -> pd.Series:
    """Per batch size, the lowest timed sparsity at which the sparse CSR kernel beat the dense one.

    Args:
        kernels: rows of ``kernel_latency`` (kernel, batch_size, sparsity, median_ms), several
            sparsities concatenated.

    Returns:
        batch_size -> sparsity (NaN where the sparse kernel never won).
    """
    cross = kernels.pivot_table(
        index=["batch_size", "sparsity"], columns="kernel", values="median_ms"
    )
    won = cross["sparse csr"] < cross["dense"]
    sizes = sorted(kernels.batch_size.unique())
    return pd.Series(
        {
            bs: (won.loc[bs][won.loc[bs]].index.min() if won.loc[bs].any() else np.nan)
            for bs in sizes
        },
        name="sparsity",
        dtype=float,
    )


def summary(
    at_target: pd.DataFrame,
    comparison: pd.DataFrame,
    storage: pd.DataFrame,
    kernels: pd.DataFrame,
    layers: pd.Series,
    *,
    pruned: str,
    csr: str,
    best_run: str,
    naive_equals_global: bool,
    prediction: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """This run's facts about weight pruning, from the notebook's tables.

    Args:
        at_target: the sweep's rows at the target sparsity (index: run; test_accuracy, sparsity),
            with ``NAIVE_RUN`` and ``LAYER_NO_FINETUNE_RUN`` beside the fine-tuned runs.
        comparison: ``measure.compare`` of the dense baseline, ``pruned`` and ``csr``.
        storage: ``storage_table`` (index: format; "times smaller"); its first row is the baseline.
        kernels: ``kernel_latency`` rows of the one-matrix timing.
        layers: per-layer sparsity under one global threshold at the target (index: layer).
        pruned: the pruned model's row in ``comparison`` (dense kernels).
        csr: the same weights' row with sparse CSR kernels.
        best_run: the fine-tuned run chosen on validation.
        naive_equals_global: whether the naive threshold's weights equal global one-shot pruning's.
        prediction: ``storage_prediction`` of the files (None: no rows about predicted bytes).

    Returns:
        A ``fact_table``.
    """
    from nbhelpers.measure.facts import fact_table
    from nbhelpers.measure.verdicts import interval_text, verdict_reason

    s = float(at_target["sparsity"].iloc[0])
    acc = at_target["test_accuracy"]
    tuned = acc.drop([NAIVE_RUN, LAYER_NO_FINETUNE_RUN], errors="ignore")
    gain = 100 * (tuned.max() - acc[NAIVE_RUN])
    rows = [
        (
            "naive threshold: test accuracy",
            round(float(acc[NAIVE_RUN]), 4),
            "accuracy",
            f"sparsity {s:g}, no fine-tuning",
        ),
        (
            "best fine-tuned run: test accuracy",
            round(float(tuned.max()), 4),
            "accuracy",
            f"{tuned.idxmax()}, sparsity {s:g}",
        ),
        (
            "fine-tuning beats the naive threshold",
            bool(gain > 0),
            "",
            f"{gain:+.2f} points, best fine-tuned minus naive",
        ),
        (
            "naive mask identical to global one-shot",
            bool(naive_equals_global),
            "",
            "same weights, before fine-tuning",
        ),
    ]
    rows += [
        (
            f"layer {name}: sparsity under one global threshold",
            round(float(v), 4),
            "fraction",
            f"global sparsity {s:g}",
        )
        for name, v in layers.drop("total", errors="ignore").items()
    ]
    pairs = [
        ("no fine-tuning", NAIVE_RUN, LAYER_NO_FINETUNE_RUN),
        ("one-shot", "one-shot/global", "one-shot/layer"),
    ]
    rows += [
        (
            f"{label}: global minus layer-wise",
            round(100 * float(acc[g] - acc[lw]), 2),
            "points",
            "test accuracy",
        )
        for label, g, lw in pairs
        if {g, lw} <= set(acc.index)
    ]
    glob = tuned[[r.endswith("/global") for r in tuned.index]]
    if len(glob) > 1:
        rows.append(
            (
                "spread of the fine-tuned global runs",
                round(100 * float(glob.max() - glob.min()), 2),
                "points",
                ", ".join(glob.index),
            )
        )
    p = comparison.loc[pruned]
    rows += [
        ("run chosen on validation", best_run, "", "highest validation accuracy at the target"),
        (
            "chosen run: accuracy change vs dense",
            round(float(p["accuracy_delta_points"]), 2),
            "points",
            interval_text(p),
        ),
        ("chosen run: verdict vs dense", str(p["verdict"]), "", verdict_reason(p)),
        ("non-zero weights", int(p["nonzero"]), "weights", f"of {int(p['params']):,} parameters"),
    ]
    rows += [
        (
            f"times smaller: {fmt}",
            round(float(r["times smaller"]), 2),
            "x",
            f"{int(r['bytes']):,} bytes on disk",
        )
        for fmt, r in storage.iloc[1:].iterrows()
    ]
    rows += [] if prediction is None else storage_facts(prediction)
    for col in [c for c in comparison.columns if c.startswith("speedup_b")]:
        bs = col.removeprefix("speedup_b")
        rows += [
            (
                f"pruned, dense kernels: speed vs dense, batch {bs}",
                round(float(p[col]), 2),
                "x",
                "above 1: faster",
            ),
            (
                f"pruned, CSR kernels: speed vs dense, batch {bs}",
                round(float(comparison.loc[csr, col]), 2),
                "x",
                "above 1: faster",
            ),
            (
                f"CSR-kernel model faster than dense, batch {bs}",
                bool(comparison.loc[csr, col] > 1),
                "",
                "whole model, measured side by side",
            ),
        ]
    shape = kernels["shape"].iloc[0] if "shape" in kernels else ""
    levels = sorted(kernels["sparsity"].unique())
    for bs, first in sparse_kernel_wins(kernels).items():
        rows.append(
            (
                f"one matrix: sparse kernel first faster, batch {bs}",
                "never" if np.isnan(first) else float(first),
                "sparsity",
                f"W {shape}, timed from {levels[0]:g} to {levels[-1]:g}",
            )
        )
    return fact_table(rows)


def storage_facts(prediction: pd.DataFrame) -> list[tuple]:
    """Fact rows of ``storage_prediction``: how far the prediction and the textbook missed.

    Args:
        prediction: ``storage_prediction`` (index: format).

    Returns:
        (fact, value, unit, context) rows: "prediction error: <format>" for every file,
        "textbook error: <format>" for the sparse ones and, when torch's CSR file is in the
        table, "torch CSR: bytes per column index on disk".
    """
    rows: list[tuple] = []
    for fmt, r in prediction.iterrows():
        rows.append((f"prediction error: {fmt}", round(float(r["prediction error %"]), 2), "%",
                     f"{int(r['predicted']):,} B predicted, {int(r['measured']):,} B"))  # fmt: skip
        if r["layout"] != "torch dense":
            rows.append((f"textbook error: {fmt}", round(float(r["textbook error %"]), 1), "%",
                         f"{int(r['textbook']):,} B: values and column indices"))  # fmt: skip
    torch_csr = prediction[prediction["layout"] == "torch csr"]
    if len(torch_csr):
        r = torch_csr.iloc[0]
        nnz = r["values"] / 4  # float32 values
        rows.append(("torch CSR: bytes per column index on disk",
                     round(float(r["column indices"] / nnz), 2), "bytes",
                     "int64, in the storage torch.save writes"))  # fmt: skip
    return rows
