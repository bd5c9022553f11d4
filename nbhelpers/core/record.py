"""Record named results into a notebook's outputs and read them back from an executed notebook.

``record(name, value)`` displays a custom MIME bundle (plus a readable text/plain line), so the
value travels inside the ``.ipynb`` itself; ``read(path)`` collects every recorded value.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

MIME_TYPE = "application/vnd.nbhelpers.core.record+json"
#: The type notebooks executed before the package's layers (record was ``nbhelpers.record``) carry;
#: ``read`` still reads them, so earlier reports and paper runs stay readable.
LEGACY_MIME_TYPES = ("application/vnd.nbhelpers.record+json",)


def to_jsonable(value: Any) -> Any:
    """Convert NumPy, pandas and torch values to plain JSON types (NaN becomes None).

    Args:
        value: a number, string, bool, None, list, tuple, dict, array, Series or DataFrame.

    Returns:
        The value made of dict, list, str, int, float, bool and None only.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return None if not math.isfinite(value) else value
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "to_dict") and hasattr(value, "columns"):  # DataFrame
        return to_jsonable(value.reset_index().to_dict(orient="records"))
    if hasattr(value, "to_dict"):  # Series
        return to_jsonable(value.to_dict())
    if hasattr(value, "tolist"):  # NumPy array or scalar, torch tensor
        return to_jsonable(value.tolist())
    if hasattr(value, "item"):
        return to_jsonable(value.item())
    raise TypeError(f"cannot record a value of type {type(value).__name__}: {value!r}")


def record(name: str, value: Any) -> Any:
    """Record a named value into the running notebook's outputs.

    Args:
        name: the key, e.g. "mlp_test_accuracy"; timings should end in ``_seconds`` or start with
            ``latency_`` so that reproducibility checks can tell them apart.
        value: anything ``to_jsonable`` accepts.

    Returns:
        The JSON form of the value that was recorded.
    """
    from IPython.display import display

    if not isinstance(name, str) or not name:
        raise ValueError(f"record name must be a non-empty string, got {name!r}")
    data = to_jsonable(value)
    text = json.dumps(data)
    if len(text) > 200:
        text = text[:197] + "..."
    display({MIME_TYPE: {"name": name, "value": data}, "text/plain": f"{name} = {text}"}, raw=True)
    return data


def read(path: str | Path) -> dict[str, Any]:
    """Every value recorded in a notebook file (a later record of a name wins).

    Args:
        path: an executed ``.ipynb``.

    Returns:
        name -> value.
    """
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    return read_notebook(nb)


def read_notebook(nb: Any) -> dict[str, Any]:
    """Every value recorded in an in-memory notebook node.

    Args:
        nb: a notebook as read by ``nbformat``.

    Returns:
        name -> value.
    """
    out: dict[str, Any] = {}
    for cell in nb.cells:
        for o in cell.get("outputs", []) if cell.get("cell_type") == "code" else []:
            data = o.get("data", {})
            kind = next((k for k in (MIME_TYPE, *LEGACY_MIME_TYPES) if k in data), None)
            if kind is not None:
                payload = data[kind]
                if isinstance(payload, str):
                    payload = json.loads(payload)
                out[payload["name"]] = payload["value"]
    return out


TIMING_MARKS = ("seconds", "latency", "speedup", "_ms")


def is_timing(name: str) -> bool:
    """Whether a recorded name holds a timing, which varies between runs of the same seed.

    Args:
        name: a recorded name; timings contain "seconds", "latency", "speedup" or "_ms".

    Returns:
        True for a timing.
    """
    return any(mark in name for mark in TIMING_MARKS)


def without_timings(records: Any) -> Any:
    """Recorded values with every timing removed, in nested dicts and lists too.

    Args:
        records: name -> value, as ``read`` returns.

    Returns:
        The same structure without the keys ``is_timing`` recognises, and without the fact-table
        rows (dicts with a ``fact`` key) that name a speed or timing or say they were timed.
    """
    if isinstance(records, dict):
        return {k: without_timings(v) for k, v in records.items() if not is_timing(str(k))}
    if isinstance(records, list):
        return [without_timings(v) for v in records if not _timed_row(v)]
    return records


def _timed_row(row: Any) -> bool:
    """Whether a table row (a dict in a recorded list) is a fact row holding a timing: its ``fact``
    names a speed or timing, or its ``context`` says it was timed."""
    if not isinstance(row, dict) or "fact" not in row:
        return False
    fact, context = str(row["fact"]).lower(), str(row.get("context", "")).lower()
    return is_timing(fact) or "speed" in fact or "timed" in context
