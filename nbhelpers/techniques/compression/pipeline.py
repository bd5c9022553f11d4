"""The compression pipeline's stages and checks: gradual pruning with fine-tuning (stage 3), Deep
Compression's recipe on a model itself, one point of the pipeline's design space for a
multi-objective search, and the stage table's rows (each stage against the one before it, the
entropy-coded stage)."""

from __future__ import annotations

import copy
import io
import lzma
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from nbhelpers.core.models import MLP
from nbhelpers.core.params import ParameterError, check_choice
from nbhelpers.techniques import pruning
from nbhelpers.techniques.compression.artifact import int8_model, weights_at_bits

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

    steps = epochs * len(train)
    pruner = pruning.GradualPruner(final=sparsity, begin=1, end=max(1, (2 * steps) // 3),
                                   every=max(1, len(train) // 2), scope="global")  # fmt: skip
    hist = fit(model, train, val, epochs=epochs, lr=lr, loss_fn=loss_fn, after_step=pruner,
               device=device, progress=False)  # fmt: skip
    pruning.make_permanent(model.cpu().eval())
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
