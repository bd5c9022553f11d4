"""Notebook 05's lesson code: time by layer type, and the facts table with its wording (the
criteria compared, exact removal of dead units, torch-pruning against the hand surgery, speed
against MACs, where LeNet-5's time goes).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import pandas as pd

from nbhelpers.techniques.neuron_pruning import CONTROLS, best_criterion


def time_by_type(per_layer: pd.DataFrame) -> pd.DataFrame:
    """Per-layer times summed by layer type, with the dense model's share and the speedup.

    Args:
        per_layer: index "position type" (``layer_times``), columns "dense ms" and "structured ms".

    Returns:
        Index: layer type in order of first appearance; columns "dense ms", "structured ms",
        "dense share" (of the dense model's summed time) and "speedup" (dense / structured).
    """
    out = per_layer.groupby(per_layer.index.str.split().str[1], sort=False)[
        ["dense ms", "structured ms"]
    ].sum()
    out["dense share"] = out["dense ms"] / out["dense ms"].sum()
    out["speedup"] = out["dense ms"] / out["structured ms"]
    return out


def _spread(acc: pd.Series) -> float:
    """Max - min of accuracies, in points, rounded to 0.01."""
    return round(100 * float(acc.max() - acc.min()), 2)


def _criteria_facts(sweep: pd.DataFrame, fraction: float, control: str = "random") -> list[tuple]:
    """Facts about the criteria per model: one-shot range, spread after fine-tuning, the control."""
    rows = []
    best = best_criterion(sweep, fraction)
    top = sweep.fraction.max()
    for arch, s in sweep.groupby("model", sort=False):
        at, at_top = s[s.fraction == fraction].set_index("criterion"), s[s.fraction == top]
        rows += [
            (
                f"{arch}: best criterion",
                best[arch],
                "",
                f"highest validation accuracy at fraction {fraction:g}",
            ),
            (
                f"{arch}: one-shot accuracy, lowest",
                round(float(at.one_shot_accuracy.min()), 4),
                "accuracy",
                f"{at.one_shot_accuracy.idxmin()}, fraction {fraction:g}, before fine-tuning",
            ),
            (
                f"{arch}: one-shot accuracy, highest",
                round(float(at.one_shot_accuracy.max()), 4),
                "accuracy",
                f"{at.one_shot_accuracy.idxmax()}, fraction {fraction:g}, before fine-tuning",
            ),
            (
                f"{arch}: fine-tuned spread of the criteria",
                _spread(at.accuracy),
                "points",
                f"max - min test accuracy at fraction {fraction:g}",
            ),
            (
                f"{arch}: fine-tuned spread, largest fraction",
                _spread(at_top.accuracy),
                "points",
                f"max - min test accuracy at fraction {top:g}",
            ),
        ]
        if "one_shot_top_class_share" in at.columns:  # measure.prediction_shift right after the cut
            share = at.one_shot_top_class_share
            rows.append(
                (
                    f"{arch}: one-shot, share of the most predicted class, highest",
                    round(float(share.max()), 4),
                    "share of test images",
                    f"{share.idxmax()}, fraction {fraction:g}, before fine-tuning",
                )
            )
            if control in at.index:
                ref = at.loc[control]
                rows += [
                    (
                        f"{arch}: one-shot, {control}: share of the most predicted class",
                        round(float(ref.one_shot_top_class_share), 4),
                        "share of test images",
                        f"fraction {fraction:g}, before fine-tuning",
                    ),
                    (
                        f"{arch}: one-shot, {control}: logit scale",
                        round(float(ref.one_shot_logit_scale), 4),
                        "x the dense logits",
                        f"fraction {fraction:g}; the lowest over the criteria is "
                        f"{float(at.one_shot_logit_scale.min()):.4f}",
                    ),
                ]
        if "inverted_l1" in at.index and control in at.index:
            inv, ref = at.loc["inverted_l1"], at.loc[control]
            one_shot = 100 * float(inv.one_shot_accuracy - ref.one_shot_accuracy)
            rows.append(
                (
                    f"{arch}: inverted_l1 minus {control}",
                    round(100 * float(inv.accuracy - ref.accuracy), 2),
                    "points",
                    f"fine-tuned, fraction {fraction:g}; before fine-tuning {one_shot:+.2f}",
                )
            )
        if control in at.index and len(at.index.difference(CONTROLS)) > 0:
            gain = 100 * float(
                at.accuracy.drop(list(CONTROLS), errors="ignore").max() - at.accuracy[control]
            )
            rows.append(
                (
                    f"{arch}: best criterion minus {control}",
                    round(gain, 2),
                    "points",
                    f"fine-tuned test accuracy at fraction {fraction:g}",
                )
            )
    return rows


def _removal_facts(dead_check: pd.DataFrame, tp_check: pd.DataFrame) -> list[tuple]:
    """Facts on exact removal of dead units, and on torch-pruning against the hand surgery."""
    rows = [
        (
            "dead units: max |logit difference|",
            float(dead_check["max |logit difference|"].max()),
            "logit",
            "after removing units whose outgoing weights are zero, whole test split",
        ),
        (
            "dead units: bit-identical logits",
            bool(dead_check["bit-identical"].all()),
            "",
            "every model",
        ),
        (
            "dead units: same predictions",
            bool(dead_check["same predictions"].all()),
            "",
            "every test image",
        ),
    ]
    if len(tp_check):
        rows.append(
            (
                "torch-pruning: max |logit difference|",
                float(tp_check["max |logit difference|"].max()),
                "logit",
                "against the hand surgery, same kept units",
            )
        )
    return rows


def _speed_facts(table: pd.DataFrame, names: Mapping[str, str], arch: str) -> list[tuple]:
    """Facts about one family's structured and unstructured models against its dense baseline."""
    d, s, u = (table.loc[names[k]] for k in ("dense", "structured", "unstructured"))
    cols = sorted((c for c in table.columns if c.startswith("speedup_b")), key=lambda c: int(c[9:]))
    small_bs, big_bs = cols[0][9:], cols[-1][9:]
    macs = float(d["macs"] / s["macs"])
    rows = [
        (
            f"{arch} structured: fewer MACs",
            round(macs, 2),
            "x",
            f"{int(d['macs']):,} -> {int(s['macs']):,}",
        ),
        (
            f"{arch} structured: speedup, largest batch",
            round(float(s[cols[-1]]), 2),
            "x",
            f"batch {big_bs}",
        ),
        (
            f"{arch} structured: speedup, smallest batch",
            round(float(s[cols[0]]), 2),
            "x",
            f"batch {small_bs}",
        ),
        (
            f"{arch} structured: speedup below MAC reduction",
            bool(s[cols[-1]] < macs),
            "",
            f"batch {big_bs}",
        ),
        (
            f"{arch} structured: times smaller on disk",
            round(float(s["size_ratio"]), 2),
            "x",
            f"{int(s['bytes']):,} bytes",
        ),
        (
            f"{arch} unstructured: speedup, largest batch",
            round(float(u[cols[-1]]), 2),
            "x",
            f"batch {big_bs}, same parameter count as structured",
        ),
        (
            f"{arch}: unstructured minus structured accuracy",
            round(float(u["accuracy_delta_points"] - s["accuracy_delta_points"]), 2),
            "points",
            "test accuracy, same parameter count, same fine-tuning",
        ),
        (
            f"{arch}: unstructured keeps accuracy at least as well",
            bool(u["accuracy_delta_points"] >= s["accuracy_delta_points"]),
            "",
            "same parameter count",
        ),
    ]
    return rows


def _layer_facts(
    per_layer: pd.DataFrame,
    arch: str = "lenet5",
    types: Sequence[str] = ("Conv2d", "MaxPool2d"),
) -> list[tuple]:
    """Facts about where a model's time goes, by layer type and in its first layer."""
    by_type = time_by_type(per_layer)
    rows = []
    for t in [t for t in types if t in by_type.index]:
        rows += [
            (
                f"{arch} {t}: share of dense time",
                round(float(by_type.loc[t, "dense share"]), 3),
                "fraction",
                "summed over the layers of this type",
            ),
            (
                f"{arch} {t}: speedup",
                round(float(by_type.loc[t, "speedup"]), 2),
                "x",
                "dense / structured",
            ),
        ]
    first = per_layer.iloc[0]
    rows.append(
        (
            f"{arch} first layer: speedup",
            round(float(first["dense ms"] / first["structured ms"]), 2),
            "x",
            f"{per_layer.index[0]}: {first['dense ms']:.3g} -> {first['structured ms']:.3g} ms",
        )
    )
    return rows


def summary(
    sweep: pd.DataFrame,
    tables: Mapping[str, pd.DataFrame],
    names: Mapping[str, Mapping[str, str]],
    dead_check: pd.DataFrame,
    tp_check: pd.DataFrame,
    per_layer: pd.DataFrame,
    *,
    fraction: float,
    n_test: int,
    targets: Sequence[Mapping] = (),
) -> pd.DataFrame:
    """This run's facts about neuron pruning, from the notebook's tables.

    Args:
        sweep: one row per model, criterion and fraction (accuracy, one_shot_accuracy,
            val_accuracy; optionally the other ``measure.prediction_shift`` columns, prefixed
            ``one_shot_``).
        tables: family -> ``measure.compare`` table with a "macs" column.
        names: family -> {"dense", "structured", "unstructured"} -> row name in its table.
        dead_check: per family, the ``output_change`` of removing dead units.
        tp_check: per family, "max |logit difference|" of torch-pruning against the hand surgery
            (may be empty).
        per_layer: LeNet-5's per-layer times, "dense ms" and "structured ms" (``layer_times``).
        fraction: ``PRUNE_FRACTION``, the fraction of the main pruned models.
        n_test: number of test images.
        targets: the notebook's ``targets.target`` dicts (counted as met / all).

    Returns:
        A ``baseline.fact_table``: index ``fact``, columns value, unit, context.
    """
    from nbhelpers.measure.facts import fact_table

    rows = _criteria_facts(sweep, fraction) + _removal_facts(dead_check, tp_check)
    for arch, table in tables.items():
        rows += _speed_facts(table, names[arch], arch)
    rows += _layer_facts(per_layer)
    first = next(iter(tables))
    acc = float(tables[first].loc[names[first]["dense"], "accuracy"])
    rows += [
        ("one test image", round(100 / n_test, 4), "points", f"{n_test:,} test images"),
        (
            f"standard error of {first}'s accuracy",
            round(100 * math.sqrt(acc * (1 - acc) / n_test), 2),
            "points",
            f"sqrt(p (1 - p) / n) at p = {acc:.4f}, the dense model",
        ),
    ]
    if targets:
        rows.append(
            (
                "targets met",
                f"{sum(bool(t['met']) for t in targets)} of {len(targets)}",
                "",
                "see the targets table",
            )
        )
    return fact_table(rows)
