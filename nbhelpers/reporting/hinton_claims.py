"""Hinton, Vinyals and Dean's MNIST figures (section 3) in docs/papers.md: test errors of notebook
07's teacher and students with their Wilson intervals, the issue's absolute targets on them, the
gap-closed target and how the teacher's validation error fell with its epochs. ``claims`` uses it
for the rows and targets. No torch."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from nbhelpers.measure.stats import wilson_interval
from nbhelpers.measure.targets import target

Figure = tuple[float, float, float]  # (value, low, high); low/high NaN without an interval


def accuracy_errors(rec: Mapping[str, Any], accuracy: float) -> Figure:
    """Test errors (a count of the test images) of an accuracy, with the Wilson 95% interval.

    Args:
        rec: the notebook's records (``split_sizes`` gives the number of test images).
        accuracy: the model's test accuracy (for several seeds, their mean).

    Returns:
        (errors, low, high).
    """
    n = int(rec["split_sizes"]["test"])
    wrong = int(round((1 - accuracy) * n))
    lo, hi = wilson_interval(wrong, n)
    return float(wrong), n * lo, n * hi


def student_errors(rec: Mapping[str, Any], student: str) -> Figure:
    """Test errors of a student of notebook 07 (``main_summary``: mean over its seeds)."""
    rows = {r["student"]: r for r in rec["main_summary"]}
    return accuracy_errors(rec, float(rows[student]["mean"]))


def hinton_gap_target(gap: Mapping[str, Any]) -> dict:
    """Hinton et al.'s gap target from notebook 07's own gap-closed target row."""
    interval = (
        None
        if gap.get("low") is None or not math.isfinite(gap["low"])
        else (gap["low"], gap["high"])
    )
    return target(
        "Hinton: the distilled 800-800 student closes half the plain-to-teacher gap",
        gap["measured"],
        ">=",
        0.5,
        "",
        "Hinton et al. closed (146 - 74) / (146 - 67) = 0.91",
        interval=interval,
    )


def teacher_curve_note(rec: Mapping[str, Any], points: int = 4) -> str:
    """How the teacher's validation error fell with its epochs (notebook 07's ``learning_curves``).

    Args:
        rec: notebook 07's records.
        points: epochs shown, evenly spaced, the last one included.

    Returns:
        E.g. "validation error (%) after epochs 40/80/120/160: 1.2/1.0/0.9/0.8; lowest at epoch
        158 of 160", or "" when the run recorded no teacher curve.
    """
    rows = [r for r in rec.get("learning_curves") or [] if r.get("model") == "teacher"]
    curve = {int(r["epoch"]): float(r["val_error"]) for r in rows if r.get("val_error") is not None}
    curve = {e: v for e, v in curve.items() if math.isfinite(v)}
    if not curve:
        return ""
    epochs = sorted(curve)
    shown = sorted(
        {epochs[max(0, round(len(epochs) * k / points) - 1)] for k in range(1, points + 1)}
    )
    best = min(epochs, key=lambda e: (curve[e], e))
    return (
        f"validation error (%) after epochs {'/'.join(map(str, shown))}: "
        f"{'/'.join(f'{curve[e]:.2f}' for e in shown)}; lowest at epoch {best} of {epochs[-1]}"
    )


def hinton_error_targets(rec: Mapping[str, Any]) -> list[dict]:
    """Hinton et al.'s figures as absolute targets (issue 31): teacher <= 80 test errors,
    distilled 800-800 student <= 90, plain 800-800 student within 30 of the paper's 146.

    Args:
        rec: notebook 07's records (``teacher_test_accuracy``, ``main_summary``, ``split_sizes``
            and, for the teacher's note, ``learning_curves``).

    Returns:
        Three ``target`` dicts, each with its Wilson 95% interval in test errors; the plain
        student's measure is its distance from 146, the interval the distances its interval spans.
    """
    teacher = accuracy_errors(rec, float(rec["teacher_test_accuracy"]))
    distilled, plain = student_errors(rec, "distilled"), student_errors(rec, "plain")
    lo, hi = plain[1] - 146, plain[2] - 146
    near = 0.0 if lo <= 0 <= hi else min(abs(lo), abs(hi))
    curve = teacher_curve_note(rec)
    return [
        target("Hinton: 1200-1200 teacher, test errors", teacher[0], "<=", 80, "errors",
               "the paper: 67" + (f"; {curve}" if curve else ""), interval=teacher[1:]),
        target("Hinton: distilled 800-800 student, test errors", distilled[0], "<=", 90,
               "errors", "the paper: 74", interval=distilled[1:]),
        target("Hinton: plain 800-800 student, distance from the paper's 146 test errors",
               abs(plain[0] - 146), "<=", 30, "errors", f"ours: {plain[0]:.0f}",
               interval=(near, max(abs(lo), abs(hi)))),
    ]  # fmt: skip
