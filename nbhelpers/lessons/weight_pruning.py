"""Notebook 04's lesson code: the sweep's rows, the demonstrations of ``torch.nn.utils.prune``'s
re-parametrisation, the storage tables (measured and predicted bytes), the sparse-kernel crossover
and the facts table with its wording.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn.utils import prune

from nbhelpers.core.models import build_model
from nbhelpers.core.params import ParameterError, check_float, check_list
from nbhelpers.core.train import evaluate
from nbhelpers.measure import accuracy
from nbhelpers.techniques.pruning import (
    RUN_SCOPES,
    dropout_rates,
    is_weight_matrix,
    kept_shares,
    layer_sparsity,
    magnitude,
    magnitude_prune,
    predicted_bytes,
    prunable,
    sparsity,
)

#: Run names of the two methods without fine-tuning in the sweep.
NAIVE_RUN = "naive threshold (no fine-tune)"

LAYER_NO_FINETUNE_RUN = "layer, no fine-tune"


def check_run(name: str, value: object) -> tuple[str, str]:
    """Check one of ``SWEEP_RUNS``: "<method>/<scope>" with scope "global", "layer" or "table".

    Args:
        name: parameter name.
        value: e.g. "iterative/table".

    Returns:
        (method, scope).
    """
    return magnitude.check_run(name, value, RUN_SCOPES)


def check_retraining(
    l2: object, dropout: object, keep: object, runs: Sequence[tuple[str, str]], model: str
) -> list[float]:
    """Check Han et al.'s retraining parameters of notebook 04 before any work.

    Args:
        l2: ``FINETUNE_L2``, a number >= 0.
        dropout: ``FINETUNE_DROPOUT``, in [0, 1).
        keep: ``LAYER_KEEP``, kept shares in (0, 1]; one per prunable layer of ``model`` when a
            run of ``runs`` has the scope "table".
        runs: the checked (method, scope) pairs of ``SWEEP_RUNS``.
        model: ``MODEL`` (its prunable layers are counted on a fresh copy).

    Returns:
        ``keep`` as a list.
    """
    check_float("FINETUNE_L2", l2, 0.0, 1.0)
    check_float("FINETUNE_DROPOUT", dropout, 0.0, 1.0, high_inclusive=False)
    keep = check_list(
        "LAYER_KEEP", keep, lambda n, v: check_float(n, v, 0.0, 1.0, low_inclusive=False), 0
    )
    layers = [n for n, _ in prunable(build_model(model))]
    if any(scope == "table" for _, scope in runs) and len(keep) != len(layers):
        raise ParameterError(
            "LAYER_KEEP",
            keep,
            f"{len(layers)} kept shares (layers {', '.join(layers)} of "
            f"{model}) for a 'table' run of SWEEP_RUNS",
        )
    return keep


def retraining_facts(
    l2: float, dropout: float, model: nn.Module, keep: Sequence[float], dense_extra: Mapping
) -> list[tuple]:
    """Fact rows of Han et al.'s retraining: its L2 weight and dropout, the dropout each hidden
    layer of the chosen model ends with, its kept shares beside ``keep`` and Liu et al.'s control.

    Args:
        l2: ``FINETUNE_L2``.
        dropout: ``FINETUNE_DROPOUT`` (``D_o``).
        model: the chosen pruned model.
        keep: ``LAYER_KEEP`` (shown when it has one share per prunable layer).
        dense_extra: the notebook's control: "pruned minus it (points)", low, high, verdict.

    Returns:
        (fact, value, unit, context) rows.
    """
    rows = [("fine-tuning L2 weight", float(l2), "lambda", "(lambda / 2) sum ||W||^2; 0: none"),
            ("fine-tuning dropout D_o", float(dropout), "probability", "0: none")]  # fmt: skip
    for name, rate in dropout_rates(model, dropout).items():
        rows.append((f"dropout after layer {name}, chosen model", round(rate, 4), "probability",
                     "D_o sqrt(C_ir / C_io)"))  # fmt: skip
    shares = kept_shares(layer_sparsity(model), keep)
    for name, r in shares.iterrows():
        table = f"table {r['kept share, table']:.4f}" if "kept share, table" in r else "no table"
        label = "all layers" if name == "total" else f"layer {name}"
        rows.append((f"{label}: kept share, chosen model", round(float(
            r["kept share, this model"]), 4), "fraction", table))  # fmt: skip
    d, diff = dense_extra, round(float(dense_extra["pruned minus it (points)"]), 2)
    rows.append(("chosen run minus dense + extra epochs", diff, "points",
                 f"[{d['low']:+.2f}, {d['high']:+.2f}], {d['verdict']}"))  # fmt: skip
    return rows


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
        nnz = sum(int((v != 0).sum()) for k, v in state.items() if is_weight_matrix(k, v))
        rows.append({"format": fmt, "layout": layout, **p, "measured": measured,
                     "prediction error %": 100 * (p["predicted"] - measured) / measured,
                     "textbook error %": 100 * (p["textbook"] - measured) / measured,
                     "bytes per non-zero weight": measured / nnz,
                     "times smaller, textbook": base / p["textbook"],
                     "times smaller, predicted": base / p["predicted"],
                     "times smaller, measured": base / measured})  # fmt: skip
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
    retraining: Sequence[tuple] = (),
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
        retraining: rows of ``retraining_facts`` (Han et al.'s recipe), placed after the chosen
            run's rows.

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
    rows += list(retraining)
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
