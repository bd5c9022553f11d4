"""Targets from the issues, checked against measured figures and recorded for the benchmark."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from .params import check_choice

OPS = (">=", "<=")


def target(name: str, measured: float, op: str, threshold: float, unit: str = "", note: str = "") -> dict:
    """One target checked against its measured value.

    Args:
        name: what is measured, e.g. "int8 accuracy loss vs fp32".
        measured: the measured value.
        op: ">=" (at least ``threshold``) or "<=" (at most ``threshold``).
        threshold: the target value.
        unit: unit shown with the numbers, e.g. "points" or "x".
        note: where the target comes from or how it was measured.

    Returns:
        {"name", "measured", "op", "threshold", "unit", "met", "note"}; a NaN measurement is not met.
    """
    check_choice("op", op, OPS)
    value = float(measured)
    met = math.isfinite(value) and (value >= threshold if op == ">=" else value <= threshold)
    return {"name": name, "measured": value, "op": op, "threshold": float(threshold), "unit": unit,
            "met": bool(met), "note": note}


def targets_table(targets: Sequence[dict]) -> pd.DataFrame:
    """The targets as a table with a readable verdict per row.

    Args:
        targets: dicts made by ``target``.

    Returns:
        One row per target: name, measured, target, met.
    """
    rows = [{"target": t["name"], "measured": f"{t['measured']:.4g} {t['unit']}".strip(),
             "goal": f"{t['op']} {t['threshold']:.4g} {t['unit']}".strip(),
             "met": "yes" if t["met"] else "NO"} for t in targets]
    return pd.DataFrame(rows, columns=["target", "measured", "goal", "met"])
