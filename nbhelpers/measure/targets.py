"""Targets: a goal per measured figure, checked against the figure and its interval."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import pandas as pd

from nbhelpers.core.params import check_choice

OPS = (">=", "<=")


def target(
    name: str,
    measured: float,
    op: str,
    threshold: float,
    unit: str = "",
    note: str = "",
    interval: tuple[float, float] | None = None,
    reached: int | None = None,
    seeds: int | None = None,
    cap: int | None = None,
) -> dict:
    """One target checked against its measured value, and against its 95% interval when it has one.

    A count over seeds of something each seed may never reach (trials or epochs to a goal) is
    censored: a seed that does not reach the goal within ``cap`` has no count, and a mean that
    fills it in with ``cap + 1`` is only a lower bound. Such a target is met only when every seed
    reached the goal within the same cap *and* the mean meets the threshold; the row says "k/n
    seeds reached within cap" and marks a censored mean as a lower bound.

    Args:
        name: what is measured, e.g. "int8 accuracy loss vs fp32".
        measured: the measured value.
        op: ">=" (at least ``threshold``) or "<=" (at most ``threshold``).
        threshold: the target value.
        unit: unit shown with the numbers, e.g. "points" or "x".
        note: where the target comes from or how it was measured.
        interval: (low, high), the 95% interval of the measurement (e.g. the paired interval of
            an accuracy difference, in the same unit); None when it has none.
        reached: seeds that reached the goal within ``cap`` (a censored count); give it with
            ``seeds`` and ``cap``, or none of the three.
        seeds: seeds run.
        cap: the most trials (or epochs) each seed had, the same for every seed.

    Returns:
        {"name", "measured", "op", "threshold", "unit", "met", "note", "low", "high",
        "decided"}; a NaN measurement is not met. ``decided`` says whether the whole interval lies
        on one side of the threshold ("met" or "missed" beyond noise); None without an interval.
        With ``reached``: also "reached", "seeds", "cap" and "censored" (some seed did not
        reach); ``met`` is False whenever a seed is censored, and ``note`` starts with "k/n seeds
        reached within <cap>".
    """
    check_choice("op", op, OPS)
    value = float(measured)
    met = math.isfinite(value) and (value >= threshold if op == ">=" else value <= threshold)
    counted = (reached, seeds, cap)
    if any(v is not None for v in counted) and any(v is None for v in counted):
        raise ValueError(f"target {name!r}: give reached, seeds and cap together, got {counted}")
    censoring: dict = {}
    if reached is not None:
        reached, seeds, cap = int(reached), int(seeds), int(cap)
        if not (seeds >= 1 and 0 <= reached <= seeds and cap >= 1):
            raise ValueError(
                f"target {name!r}: need seeds >= 1, 0 <= reached <= seeds and cap >= 1, "
                f"got reached={reached}, seeds={seeds}, cap={cap}"
            )
        censoring = {"reached": reached, "seeds": seeds, "cap": cap, "censored": reached < seeds}
        met = met and reached == seeds
        reach = f"{reached}/{seeds} seeds reached within {cap}"
        note = f"{reach}; {note}" if note else reach
    low, high = (
        (math.nan, math.nan) if interval is None else (float(interval[0]), float(interval[1]))
    )
    if interval is not None and not low <= high:
        raise ValueError(f"target {name!r}: interval ({low}, {high}) is not ordered low <= high")
    decided = (
        None
        if interval is None
        else bool(threshold <= low or high <= threshold)
        if op == ">="
        else bool(high <= threshold or threshold <= low)
    )
    return {
        "name": name,
        "measured": value,
        "op": op,
        "threshold": float(threshold),
        "unit": unit,
        "met": bool(met),
        "note": note,
        "low": low,
        "high": high,
        "decided": decided,
        **censoring,
    }


def points_lost(row: Mapping) -> tuple[float, tuple[float, float]]:
    """Accuracy points lost by a model and their paired 95% interval, from a ``measure.compare``
    row.

    Args:
        row: the model's row (accuracy_delta_points, delta_low_points, delta_high_points).

    Returns:
        (loss, (low, high)) with loss = -accuracy_delta_points (positive: the model is worse).
    """
    return -float(row["accuracy_delta_points"]), (
        -float(row["delta_high_points"]),
        -float(row["delta_low_points"]),
    )


def measured_text(t: dict) -> str:
    """A target's measurement with its interval, e.g. "0.12 [-0.05, 0.31] points"; a censored
    mean is a bound, e.g. ">= 18.4 trials" (a seed that never reached counts as cap + 1)."""
    text = f"{t['measured'] + 0.0:.4g}"  # + 0.0: no "-0"
    if t.get("censored"):
        text = f"{'>=' if t['op'] == '<=' else '<='} {text}"
    low = t.get("low")
    if low is not None and math.isfinite(low):  # a recorded NaN comes back from JSON as None
        text += f" [{low + 0.0:.4g}, {t['high'] + 0.0:.4g}]"
    return f"{text} {t['unit']}".strip()


#: What a target row adds when the measurement's 95% interval reaches across the goal: the verdict
#: then rests on the point estimate. (Not "within noise", which the comparison tables use for a
#: difference whose interval contains zero.)
UNDECIDED = "(goal in the interval)"


def verdict_text(t: dict) -> str:
    """ "yes"/"NO", ``UNDECIDED`` when the 95% interval reaches across the threshold, and
    "(k/n seeds reached)" when a censored count missed for that reason."""
    word = "yes" if t["met"] else "NO"
    if t.get("censored"):
        word += f" ({t['reached']}/{t['seeds']} seeds reached)"
    return word + (f" {UNDECIDED}" if t.get("decided") is False else "")


def targets_table(targets: Sequence[dict]) -> pd.DataFrame:
    """The targets as a table with a readable verdict per row.

    Args:
        targets: dicts made by ``target``.

    Returns:
        One row per target: name, measured (with its 95% interval, if any), goal, met ("yes" or
        "NO", plus ``UNDECIDED`` when the interval reaches across the goal).
    """
    rows = [
        {
            "target": t["name"],
            "measured": measured_text(t),
            "goal": f"{t['op']} {t['threshold']:.4g} {t['unit']}".strip(),
            "met": verdict_text(t),
        }
        for t in targets
    ]
    return pd.DataFrame(rows, columns=["target", "measured", "goal", "met"])
