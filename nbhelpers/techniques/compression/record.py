"""The compression record's stages: gradual pruning to a kept share per layer, the codebook stage
with its fine-tuning, and the bytes each component saves on the way to the compact artifact.

``prune_layers_gradually`` continues a (possibly already pruned) model to per-layer kept shares on
Zhu and Gupta's cubic schedule while training; ``tune_codebooks`` is Deep Compression's weight
sharing with fine-tuned centroids (``codebook``); ``size_stages`` lays out the chain of formats
from the dense float32 file to the compact artifact (``compact``), each a complete description
of the same weights, so that each component's factor is measured on its own;
``artifact_summary`` gives the artifact's factor and its test error with the Wilson interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from nbhelpers.core.params import ParameterError
from nbhelpers.measure.stats import wilson_interval
from nbhelpers.techniques import pruning
from nbhelpers.techniques.compression import codebook as cb
from nbhelpers.techniques.compression import compact


def check_keep(name: str, value: object, layers: int) -> list[float]:
    """Check per-layer kept shares: a list of one share in (0, 1] per Linear/Conv2d layer.

    Args:
        name: parameter name, e.g. "RECORD_KEEP".
        value: the given list.
        layers: the model's number of Linear/Conv2d layers.

    Returns:
        The shares as floats.
    """
    allowed = f"a list of {layers} kept shares in (0, 1], one per Linear/Conv2d layer"
    if not isinstance(value, list | tuple) or len(value) != layers:
        raise ParameterError(name, value, allowed)
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v <= 1:
            raise ParameterError(name, value, allowed)
    return [float(v) for v in value]


class LayerPruner:
    """An ``after_step`` hook of ``train.fit``: every ``every`` steps up to ``end``, prune each
    layer by magnitude to its share of the cubic schedule from its sparsity at the start to
    ``1 - keep``."""

    def __init__(self, model: nn.Module, keep: Sequence[float], end: int, every: int):
        """Read each layer's starting sparsity.

        Args:
            model: the model the hook will see (its current zeros are the starting sparsity).
            keep: the final kept share of each Linear/Conv2d layer.
            end: the step at which the final shares are reached.
            every: prune every this many steps (and at ``end``).
        """
        layers = pruning.prunable(model)
        self.names = [n for n, _ in layers]
        self.keep = check_keep("keep", keep, len(layers))
        self.start = [float((m.weight == 0).float().mean()) for _, m in layers]
        self.end, self.every, self.step = max(1, end), max(1, every), 0
        self.history: list[tuple[int, list[float]]] = []

    def __call__(self, model: nn.Module) -> None:
        """Count the step and prune when the schedule says so."""
        from nbhelpers.techniques.pruning.schedules import cubic_sparsity

        self.step += 1
        t = self.step
        if t <= self.end and (t % self.every == 0 or t == self.end):
            levels = []
            for name, keep, start in zip(self.names, self.keep, self.start):
                s = cubic_sparsity(t, 1.0 - keep, 0, self.end, min(start, 1.0 - keep))
                pruning.magnitude_prune(model, s, "layer", only=[name])
                levels.append(s)
            self.history.append((t, levels))


def prune_layers_gradually(
    model: nn.Module,
    train: Any,
    keep: Sequence[float],
    epochs: int,
    lr: float,
    loss_fn: Any = None,
    device: Any = "cpu",
) -> tuple[pd.DataFrame, LayerPruner]:
    """Prune to a kept share per layer while training, then make the zeros permanent.

    The cubic schedule runs over the first two thirds of the steps, the mask updated twice per
    epoch; Adam's rate anneals to 0 on a cosine over all epochs. The caller seeds.

    Args:
        model: the model, pruned in place (ends on the CPU in eval mode).
        train: the training loader.
        keep: the final kept share of each Linear/Conv2d layer.
        epochs: training epochs (>= 1).
        lr: Adam's initial learning rate.
        loss_fn: the training loss (None: cross-entropy on the labels).
        device: where to train.

    Returns:
        (the training history, the hook with its schedule in ``history``).
    """
    from nbhelpers.core.train import anneal, fit

    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ParameterError("epochs", epochs, "an integer >= 1")
    steps = epochs * len(train)
    pruner = LayerPruner(model, keep, (2 * steps) // 3, len(train) // 2)
    hist = fit(model, train, epochs=epochs, lr=lr, loss_fn=loss_fn, after_step=pruner,
               scheduler=anneal("cosine", epochs), device=device, progress=False)  # fmt: skip
    pruning.make_permanent(model.cpu().eval())
    return hist, pruner


def tune_codebooks(
    model: nn.Module,
    train: Any,
    bits: int | Sequence[int],
    epochs: int,
    lr: float,
    loss_fn: Any = None,
    seed: int = 0,
    device: Any = "cpu",
) -> tuple[nn.Module, pd.DataFrame]:
    """Deep Compression's trained weight sharing: k-means codebooks, centroids fine-tuned, then
    rounded to float16, and dead units' biases set to 0 (``compact.zero_dead_biases``).

    Args:
        model: the pruned float model (not changed).
        train: the training loader.
        bits: codebook index width per layer (an int for all, or one per layer).
        epochs: fine-tuning epochs of the centroids and biases (0: k-means only).
        lr: Adam's initial rate, annealed to 0 on a cosine.
        loss_fn: the training loss (None: cross-entropy).
        seed: seed of the k-means (the caller seeds the training).
        device: where to train.

    Returns:
        (the model ready for ``compact.encode``, on the CPU in eval mode; the codebook table of
        ``codebook.share_weights``).
    """
    from nbhelpers.core.train import anneal, fit

    tuned, table = cb.share_weights(model, bits, seed)
    if epochs:
        fit(tuned, train, epochs=epochs, lr=lr, loss_fn=loss_fn, scheduler=anneal("cosine", epochs),
            device=device, progress=False)  # fmt: skip
    baked = cb.bake(tuned.cpu().eval())
    return compact.zero_dead_biases(baked)[0].eval(), table


def _rice_bits(gaps: np.ndarray) -> int:
    """Bits of the best Rice code of the gaps (>= 1): ``q = (g - 1) >> r`` in unary plus ``r``
    bits, with the ``r`` from 0 to 24 that gives the fewest."""
    x = gaps.astype(np.int64) - 1
    return min(int(((x >> r) + 1 + r).sum()) for r in range(25))


def size_stages(model: nn.Module, dense_bytes: int) -> pd.DataFrame:
    """Bytes of the same weights in each format from the dense file to the compact artifact.

    Every format holds the compact artifact's header (shapes and counts) and, per layer:

    1. pruning: a bitmap of the non-zeros (1 bit per weight), the non-zero weights as float32,
       every bias as float32;
    2. codebook: the non-zero weights as fixed-width indices of ``ceil(log2 k)`` bits into a
       float16 codebook of the layer's ``k`` distinct values;
    3. biases: float16, only those of units that feed the next layer;
    4. position coding: the bitmap replaced by one flag per row and per column (whether it holds
       a non-zero) and the gaps between non-zeros inside those rows and columns, Rice-coded with
       the best parameter (one byte) per layer;
    5. entropy coder: the flags, gaps and indices arithmetic-coded with adaptive models: the
       compact artifact itself (``compact.encode``, which decodes to these weights).

    Args:
        model: a model ready for ``compact.encode`` (``tune_codebooks``).
        dense_bytes: bytes of the dense float32 model (the baseline's file).

    Returns:
        One row per format (the dense file first): bytes, times smaller than the row before,
        times smaller than the dense file, and the share of the whole factor's logarithm.
    """
    data = compact.encode(model)
    head = compact.read_header(data)[1]
    arrays = compact.layer_arrays(model)
    alive = compact.outgoing_alive([w for w, _ in arrays])
    sizes = {"dense float32": int(dense_bytes)}
    totals = np.zeros(4, dtype=np.int64)
    for (w, b), live in zip(arrays, alive):
        values, index = compact.codebook(w)
        nnz, k, nb = index.size, len(values), 0 if b is None else b.size
        idx_bits = nnz * max(1, math.ceil(math.log2(max(k, 1))))
        rows, cols, pos = compact.positions(w)
        gaps = np.diff(np.concatenate([[-1], pos]))
        nb16 = 0 if b is None else int(live.sum())
        bitmap, indices = math.ceil(w.size / 8), math.ceil(idx_bits / 8)
        coded = math.ceil((rows.size + cols.size + _rice_bits(gaps) + idx_bits) / 8) + 1
        totals += [
            bitmap + 4 * nnz + 4 * nb,
            bitmap + indices + 2 * k + 4 * nb,
            bitmap + indices + 2 * k + 2 * nb16,
            coded + 2 * k + 2 * nb16,
        ]
    names = ["pruning", "codebook", "biases float16", "position coding"]
    sizes.update({n: head + int(t) for n, t in zip(names, totals)})
    sizes["entropy coder"] = len(data)
    return stage_table(sizes)


def stage_table(sizes: dict[str, int]) -> pd.DataFrame:
    """Factors of a chain of sizes: each against the one before and against the first, and each
    factor's share of the whole factor's logarithm (the shares add up to 1).

    Args:
        sizes: format name -> bytes, the uncompressed one first.

    Returns:
        One row per format: bytes, smaller_than_previous, smaller_than_dense, share_of_factor.
    """
    out = pd.DataFrame({"bytes": pd.Series(sizes, dtype=float)})
    if (out["bytes"] <= 0).any():
        raise ParameterError("sizes", sizes, "positive byte counts")
    out["smaller_than_previous"] = out["bytes"].shift(1) / out["bytes"]
    out["smaller_than_dense"] = out["bytes"].iloc[0] / out["bytes"]
    total = math.log(out["smaller_than_dense"].iloc[-1])
    out["share_of_factor"] = np.log(out["smaller_than_previous"]) / total if total else math.nan
    out["bytes"] = out["bytes"].astype(int)
    return out.rename_axis("format")


def artifact_summary(
    hits: Any, artifact_bytes: int, dense_bytes: int, identical: bool, val_accuracy: float
) -> dict[str, Any]:
    """A compact artifact's factor on disk and its decoded model's test error with the Wilson 95%
    interval.

    Args:
        hits: right (1) or wrong (0) on each test image, of the model decoded from the artifact.
        artifact_bytes: bytes of the compact artifact.
        dense_bytes: bytes of the dense float32 baseline's file.
        identical: whether the decoded model gave the same outputs as the encoded one.
        val_accuracy: the decoded model's validation accuracy (what the recipe was chosen on).

    Returns:
        {"bytes", "dense_bytes", "times_smaller", "test_error_pct", "error_low", "error_high",
        "test_errors", "test_images", "val_error_pct", "identical_predictions"}.
    """
    n = len(hits)
    if n == 0:
        raise ParameterError("hits", "no test images", "one 0/1 entry per test image")
    for name, v in (("artifact_bytes", artifact_bytes), ("dense_bytes", dense_bytes)):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
            raise ParameterError(name, v, "a positive number of bytes")
    wrong = int(n - int(sum(int(h) for h in hits)))
    low, high = wilson_interval(wrong, n)
    return {
        "bytes": int(artifact_bytes),
        "dense_bytes": int(dense_bytes),
        "times_smaller": float(dense_bytes) / float(artifact_bytes),
        "test_error_pct": 100.0 * wrong / n,
        "error_low": 100.0 * low,
        "error_high": 100.0 * high,
        "test_errors": wrong,
        "test_images": n,
        "val_error_pct": 100.0 * (1.0 - float(val_accuracy)),
        "identical_predictions": bool(identical),
    }


#: The keys of notebook 10's RECORD parameter and what each holds.
RECORD_KEYS = {
    "keep": "kept share of each Linear/Conv2d layer, in (0, 1]",
    "epochs": "epochs pruning to those shares (>= 1)",
    "lr": "Adam's initial rate of the pruning (> 0); the codebooks tune at a tenth",
    "bits": "codebook index bits, [b] for every layer or one per layer (1 to 12)",
    "tune_epochs": "epochs fine-tuning the shared values and biases (>= 0)",
}


def check_record(name: str, value: object, layers: int) -> dict[str, Any]:
    """Check notebook 10's RECORD parameter: {} (no record) or every key of ``RECORD_KEYS``.

    Args:
        name: parameter name, e.g. "RECORD".
        value: the given dict.
        layers: the compressed model's number of Linear/Conv2d layers.

    Returns:
        The dict ({} when no record runs), shares and rate as floats.
    """
    from nbhelpers.core.params import check_int, check_positive

    if not isinstance(value, dict) or (value and set(value) != set(RECORD_KEYS)):
        raise ParameterError(name, value, "{} or a dict with the keys " + ", ".join(RECORD_KEYS))
    if not value:
        return {}
    keep = check_keep(f"{name}['keep']", value["keep"], layers)
    bits = value["bits"]
    allowed = f"a list of one codebook width (1 to 12) or of {layers}, one per layer"
    if not isinstance(bits, list | tuple) or len(bits) not in (1, layers):
        raise ParameterError(f"{name}['bits']", bits, allowed)
    if any(isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= 12 for b in bits):
        raise ParameterError(f"{name}['bits']", bits, allowed)
    return {
        "keep": keep,
        "epochs": check_int(f"{name}['epochs']", value["epochs"], minimum=1),
        "lr": float(check_positive(f"{name}['lr']", value["lr"])),
        "bits": list(bits) if len(bits) == layers else list(bits) * layers,
        "tune_epochs": check_int(f"{name}['tune_epochs']", value["tune_epochs"], minimum=0),
    }
