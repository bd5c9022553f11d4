"""Verdicts: the one word for an interval of a difference (``verdict``), and a ``measure.compare``
row's verdict in words: its paired interval, where the interval lies, whether it beats guessing."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: The words ``verdict`` gives an interval of B - A.
VERDICTS = ("better", "worse", "within noise")
#: Where the interval lies, for each word: the reason ``verdict_reason`` gives.
_WHERE = {"better": "lies above zero", "worse": "lies below zero", "within noise": "contains zero"}


def interval_text(row: Mapping[str, Any]) -> str:
    """The paired 95% interval and McNemar p of a ``measure.compare`` row, as table context.

    Args:
        row: the model's row (delta_low_points, delta_high_points, p_mcnemar).

    Returns:
        e.g. "95% CI [-0.51, +0.18], McNemar p = 0.36" (paired; at most 50 characters, the
        width pandas shows).
    """
    low, high = float(row["delta_low_points"]), float(row["delta_high_points"])
    return f"95% CI [{low:+.2f}, {high:+.2f}], McNemar p = {float(row['p_mcnemar']):.2g}"


def verdict_reason(row: Mapping[str, Any]) -> str:
    """Where a ``measure.compare`` row's paired 95% interval lies, the reason for its verdict.

    Args:
        row: the model's row (delta_low_points, delta_high_points).

    Returns:
        "the paired 95% interval lies above zero", "... below zero" or "... contains zero".
    """
    word = verdict(float(row["delta_low_points"]), float(row["delta_high_points"]))
    return f"the paired 95% interval {_WHERE[word]}"


def above_chance(row: Mapping[str, Any], n_classes: int = 10) -> bool:
    """Whether an accuracy beats guessing beyond noise: its 95% interval starts above 1/classes.

    Args:
        row: a ``measure.compare`` row (accuracy_low).
        n_classes: number of classes (guessing scores 1 / n_classes).

    Returns:
        True when the lower end of the Wilson interval exceeds 1 / n_classes.
    """
    return bool(float(row["accuracy_low"]) > 1.0 / n_classes)


def verdict(low: float, high: float) -> str:
    """The word for an interval of a difference: "better", "worse" or "within noise".

    Args:
        low: lower end of the interval of B - A.
        high: upper end.

    Returns:
        "better" if the whole interval is above zero, "worse" if below, else "within noise".
    """
    if low > 0:
        return "better"
    if high < 0:
        return "worse"
    return "within noise"
