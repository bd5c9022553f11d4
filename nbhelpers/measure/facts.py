"""A run's facts as a small table, the shape every technique's ``summary(...)`` returns.

A notebook's Discussion is markdown that explains in words and points at rows of this table by
name, so no prose carries a number of a past run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

#: Columns of every fact table: the fact's value, its unit and where it comes from.
FACT_COLUMNS = ["value", "unit", "context"]
#: Widest context pandas shows in full (``display.max_colwidth``); summaries keep within it.
CONTEXT_WIDTH = 50


def readable(value: Any, digits: int | None = None) -> Any:
    """A fact's value for reading: NumPy scalars as Python ones, floats optionally rounded.

    Args:
        value: a number, bool, string or NumPy scalar.
        digits: significant digits of a finite float (None keeps it whole).

    Returns:
        The plain value.
    """
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if digits is not None and isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.{digits}g}")
    return value


def fact_table(rows: Sequence[tuple], digits: int | None = None) -> pd.DataFrame:
    """A table of one run's facts, one row each, for a notebook's Discussion to point at.

    Args:
        rows: (fact, value, unit, context) or (fact, value, context) tuples (no unit); fact
            names must be unique.
        digits: round float values to this many significant digits (None keeps them whole).

    Returns:
        Index ``fact``; columns ``value`` (object: numbers, booleans or text), ``unit``,
        ``context``.
    """
    full = [r if len(r) == 4 else (r[0], r[1], "", r[2]) for r in rows]
    if any(len(r) != 4 for r in full):
        raise ValueError("each fact is (fact, value, unit, context) or (fact, value, context)")
    names = [r[0] for r in full]
    if len(set(names)) != len(names):
        raise ValueError(f"fact names must be unique: {names}")
    index = pd.Index(names, name="fact")
    df = pd.DataFrame([r[1:] for r in full], columns=FACT_COLUMNS, index=index)
    df["value"] = pd.Series([readable(r[1], digits) for r in full], index=index, dtype=object)
    return df
