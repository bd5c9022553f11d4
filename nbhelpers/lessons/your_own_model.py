"""Notebook 11's lesson: the facts of the recipe (prune, distill, fold, int8) on a model of one's
own, and its accuracy loss in words.

An accuracy loss is read against zero (is it beyond noise?) and against its budget (is it within
it?) by ``loss_verdict``; ``summary`` is the facts table, with the speed split of
``nbhelpers.techniques.recipe.speed_split``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from nbhelpers.measure.facts import fact_table
from nbhelpers.techniques import recipe


def loss_verdict(loss: float, low: float, high: float, budget: float) -> str:
    """An accuracy loss in words, from its paired interval: against zero, then against the budget.

    Args:
        loss: points lost (positive: worse than the reference).
        low: lower end of its 95% interval (points lost).
        high: upper end.
        budget: the most points the target allows.

    Returns:
        E.g. "a loss beyond noise, within the 1-point budget" (the whole interval above zero and
        below the budget), "no change beyond noise, ..." (the interval contains zero) or, when
        the interval straddles the budget, "..., within the 1-point budget at its point value,
        its interval reaching past it".
    """
    if not low <= loss <= high:
        raise ValueError(f"the loss {loss} lies outside its interval [{low}, {high}]")
    noise = (
        "a loss beyond noise"
        if low > 0
        else "a gain beyond noise"
        if high < 0
        else "no change beyond noise"
    )
    b = f"the {budget:g}-point budget"
    if high <= budget:
        return f"{noise}, within {b}"
    if low > budget:
        return f"{noise}, beyond {b}"
    if loss <= budget:
        return f"{noise}, within {b} at its point value, its interval reaching past it"
    return f"{noise}, beyond {b} at its point value, its interval reaching back within it"


def summary(
    table: pd.DataFrame,
    paired: pd.DataFrame,
    pairs: Mapping[str, tuple[str, str]],
    names: Mapping[str, str],
    *,
    batch: int,
    one_shot: float,
    fold_change: Mapping[str, Any],
    reload_identical: bool,
    loss: tuple[float, tuple[float, float]],
    budget: float,
    targets: Sequence[Mapping[str, Any]],
    machine: Mapping[str, Any],
    threads: int,
) -> pd.DataFrame:
    """This run's facts: the cut, the controls, where the speed comes from, the loss, the CPU.

    Args:
        table: ``measure.compare`` with a ``macs`` column, one row per model of ``names``.
        paired: ``stats.paired_difference`` rows (index: the labels of ``pairs``).
        pairs: label -> (key of a, key of b), a - b.
        names: key -> row of ``table``; keys "dense", "dense_folded", "dense_int8", "plain",
            "distilled", "folded", "int8".
        batch: batch size of the speed facts.
        one_shot: validation accuracy right after the cut.
        fold_change: ``neuron_pruning.output_change`` of folding ("max |logit difference|").
        reload_identical: whether the saved int8 artifact reloads bit-identical.
        loss: (points lost, (low, high)) of the compressed model against dense fp32.
        budget: the accuracy target's budget in points.
        targets: the notebook's targets (each with "met").
        machine: ``machine.describe()`` of this run.
        threads: CPU threads while timing.

    Returns:
        A ``fact_table``.
    """
    row = table.loc
    col = f"speedup_b{batch}"
    diff = {ab: paired.loc[label, "difference"] for label, ab in pairs.items()}
    dense = recipe.speed_split(
        table, names["dense"], names["dense_folded"], names["dense_int8"], batch
    )
    pruned = recipe.speed_split(table, names["distilled"], names["folded"], names["int8"], batch)
    points, (low, high) = loss
    at = f"batch {batch}, side by side"
    return fact_table([
        ("dense: test accuracy", row[names["dense"], "accuracy"], "", "fp32"),
        ("cut: validation accuracy before fine-tuning", one_shot, "", "before fine-tuning"),
        ("pruned: parameters kept", row[names["distilled"], "params"]
         / row[names["dense"], "params"], "", "of the dense model's"),
        ("pruned: fewer MACs", row[names["dense"], "macs"] / row[names["distilled"], "macs"], "x",
         "per image"),
        ("distilled minus plain", diff[("distilled", "plain")], "points", "paired"),
        ("distilled minus from scratch", diff[("distilled", "scratch")], "points", "paired"),
        ("distilled minus dense + more", diff[("distilled", "dense_more")], "points", "paired"),
        ("BN folding: max |logit difference|", fold_change["max |logit difference|"], "", "fp32"),
        ("int8 minus fp32", diff[("int8", "distilled")], "points", "paired"),
        ("artifact reloads bit-identical", bool(reload_identical), "", "int8 state_dict"),
        ("dense: BN folding speedup", dense["folding"], "x", f"folded fp32 over fp32, {at}"),
        ("dense: int8 over folded fp32", dense["int8"], "x", f"int8 over folded fp32, {at}"),
        ("dense int8: speedup over dense fp32", dense["both"], "x", "folding and int8 together"),
        ("pruned: BN folding speedup", pruned["folding"], "x", f"folded over distilled, {at}"),
        ("pruned: int8 over folded fp32", pruned["int8"], "x", f"int8 over folded fp32, {at}"),
        ("compressed: speedup", float(row[names["int8"], col]), "x", "over dense fp32"),
        ("compressed: times smaller on disk", row[names["int8"], "size_ratio"], "x",
         "state_dict bytes"),
        ("compressed: accuracy lost", points, "points",
         f"paired 95% CI [{low:+.2f}, {high:+.2f}]"),
        ("compressed: loss verdict", loss_verdict(points, low, high, budget), "",
         "its interval against 0 and the budget"),
        ("targets met", sum(bool(t["met"]) for t in targets), f"of {len(targets)}", "section 3.3"),
        ("CPU: model", str(machine["cpu"]), "", "machine.describe"),
        ("CPU: VNNI", bool(machine["vnni"]), "", "AVX512-VNNI or AVX-VNNI, /proc/cpuinfo"),
        ("CPU: AMX int8", bool(machine["amx"]), "", "amx_int8, /proc/cpuinfo"),
        ("CPU: threads timed", int(threads), "", "torch threads while timing"),
    ], digits=4)  # fmt: skip
