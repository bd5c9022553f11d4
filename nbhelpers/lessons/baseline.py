"""Notebook 00's facts: the two shared baselines against each other."""

from __future__ import annotations

import math
from collections.abc import Mapping

import pandas as pd

from nbhelpers.measure.facts import fact_table
from nbhelpers.measure.verdicts import above_chance, interval_text, verdict_reason


def summary(
    table: pd.DataFrame,
    macs: Mapping[str, int],
    n_test: int,
    baseline: str = "mlp",
    other: str = "lenet5",
) -> pd.DataFrame:
    """This run's facts about the two baselines, from their ``measure.compare`` table.

    Args:
        table: ``measure.compare`` of the two models (index: model name), ``baseline`` its baseline.
        macs: model name -> multiply-adds per image (``measure.count_macs``).
        n_test: number of test images.
        baseline: the row the other is compared with (the MLP).
        other: the other model (LeNet-5).

    Returns:
        A ``fact_table``: parameter, multiply-add and byte ratios, the accuracy change with its
        paired interval and verdict, the speed ratio per batch size, whether each model beats
        chance, and what one test image and one standard error weigh in points.
    """
    b, o = table.loc[baseline], table.loc[other]
    acc = float(b["accuracy"])
    rows = [
        (
            f"parameters, {baseline} / {other}",
            round(float(b["params"] / o["params"]), 2),
            "x",
            f"{int(b['params']):,} vs {int(o['params']):,}",
        ),
        (
            f"multiply-adds per image, {other} / {baseline}",
            round(macs[other] / macs[baseline], 2),
            "x",
            f"{macs[other]:,} vs {macs[baseline]:,}",
        ),
        (
            f"bytes on disk, {baseline} / {other}",
            round(float(o["size_ratio"]), 2),
            "x",
            f"{int(b['bytes']):,} vs {int(o['bytes']):,}",
        ),
        (
            f"accuracy change, {other} vs {baseline}",
            round(float(o["accuracy_delta_points"]), 2),
            "points",
            interval_text(o),
        ),
        (f"verdict, {other} vs {baseline}", str(o["verdict"]), "", verdict_reason(o)),
    ]
    for col in [c for c in table.columns if c.startswith("speedup_b")]:
        bs = col.removeprefix("speedup_b")
        rows.append(
            (
                f"speed of {other} / {baseline}, batch {bs}",
                round(float(o[col]), 2),
                "x",
                "above 1: faster; timed side by side",
            )
        )
    for name in (baseline, other):
        r = table.loc[name]
        low, high = float(r["accuracy_low"]), float(r["accuracy_high"])
        rows.append(
            (
                f"{name} above chance",
                above_chance(r),
                "",
                f"95% interval [{low:.4f}, {high:.4f}] vs 0.1",
            )
        )
    rows += [
        ("one test image", round(100 / n_test, 4), "points", f"{n_test:,} test images"),
        (
            f"standard error of {baseline}'s accuracy",
            round(100 * math.sqrt(acc * (1 - acc) / n_test), 2),
            "points",
            f"sqrt(p (1 - p) / n) at p = {acc:.4f}",
        ),
    ]
    return fact_table(rows)
