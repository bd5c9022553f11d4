"""Parameter validation for notebooks: errors that name the parameter and what is allowed."""

from __future__ import annotations

import ast
import difflib
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any


class ParameterError(ValueError):
    """A notebook parameter has a value that is not allowed."""

    def __init__(self, name: str, value: Any, allowed: str):
        self.name, self.value, self.allowed = name, value, allowed
        super().__init__(f"parameter {name}={value!r} is not allowed: expected {allowed}")


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> Any:
    """Check that ``value`` is one of ``choices``.

    Args:
        name: parameter name, as in the notebook.
        value: the given value.
        choices: the allowed values.

    Returns:
        The value, unchanged.
    """
    choices = list(choices)
    if value not in choices:
        raise ParameterError(name, value, "one of " + ", ".join(repr(c) for c in choices))
    return value


def check_choices(name: str, values: Any, choices: Iterable[Any]) -> list:
    """Check that ``values`` is a non-empty list whose items are all in ``choices``.

    Args:
        name: parameter name.
        values: the given list.
        choices: the allowed items.

    Returns:
        The values as a list.
    """
    choices = list(choices)
    allowed = "a non-empty list of " + ", ".join(repr(c) for c in choices)
    if isinstance(values, str) or not isinstance(values, Sequence) or len(values) == 0:
        raise ParameterError(name, values, allowed)
    for v in values:
        if v not in choices:
            raise ParameterError(name, values, allowed + f" ({v!r} is not)")
    return list(values)


def check_int(name: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    """Check that ``value`` is an integer (not a bool) within ``[minimum, maximum]``.

    Args:
        name: parameter name.
        value: the given value.
        minimum: smallest allowed value, or None.
        maximum: largest allowed value, or None.

    Returns:
        The value as an int.
    """
    allowed = "an integer" + _range_text(minimum, maximum, True, True)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ParameterError(name, value, allowed)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ParameterError(name, value, allowed)
    return int(value)


def check_float(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> float:
    """Check that ``value`` is a finite real number within the given bounds.

    Args:
        name: parameter name.
        value: the given value.
        low: lower bound, or None.
        high: upper bound, or None.
        low_inclusive: whether ``low`` itself is allowed.
        high_inclusive: whether ``high`` itself is allowed.

    Returns:
        The value as a float.
    """
    allowed = "a number" + _range_text(low, high, low_inclusive, high_inclusive)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ParameterError(name, value, allowed)
    too_low = low is not None and (value < low or (value == low and not low_inclusive))
    too_high = high is not None and (value > high or (value == high and not high_inclusive))
    if too_low or too_high:
        raise ParameterError(name, value, allowed)
    return float(value)


def check_bool(name: str, value: Any) -> bool:
    """Check that ``value`` is True or False.

    Args:
        name: parameter name.
        value: the given value.

    Returns:
        The value.
    """
    if not isinstance(value, bool):
        raise ParameterError(name, value, "True or False")
    return value


def check_fraction(name: str, value: Any) -> float:
    """Check that ``value`` is a fraction strictly between 0 and 1.

    Args:
        name: parameter name.
        value: the given value.

    Returns:
        The value as a float.
    """
    return check_float(name, value, 0.0, 1.0, low_inclusive=False, high_inclusive=False)


def check_positive(name: str, value: Any) -> float:
    """Check that ``value`` is a number greater than zero.

    Args:
        name: parameter name.
        value: the given value.

    Returns:
        The value as a float.
    """
    return check_float(name, value, 0.0, None, low_inclusive=False)


def check_list(name: str, values: Any, item_check, min_len: int = 1) -> list:
    """Check a list parameter item by item with ``item_check(name, item)``.

    Args:
        name: parameter name.
        values: the given list.
        item_check: a function like ``check_int`` taking (name, value) and returning the value.
        min_len: fewest items allowed.

    Returns:
        The checked items as a list.
    """
    if (
        isinstance(values, (str, bytes))
        or not isinstance(values, Sequence)
        or len(values) < min_len
    ):
        raise ParameterError(name, values, f"a list of at least {min_len} item(s)")
    return [item_check(f"{name}[{i}]", v) for i, v in enumerate(values)]


def check_seed(name: str, value: Any) -> int:
    """Check that ``value`` is a non-negative integer seed.

    Args:
        name: parameter name.
        value: the given value.

    Returns:
        The seed as an int.
    """
    return check_int(name, value, minimum=0, maximum=2**32 - 1)


def check_device(name: str, value: Any) -> str:
    """Check a device choice and resolve ``"auto"`` to ``"cuda"`` when present, else ``"cpu"``.

    Args:
        name: parameter name.
        value: one of "auto", "cpu", "cuda".

    Returns:
        The resolved device, "cpu" or "cuda".
    """
    import torch

    check_choice(name, value, ("auto", "cpu", "cuda"))
    if value == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if value == "cuda" and not torch.cuda.is_available():
        raise ParameterError(name, value, "'auto' or 'cpu' (CUDA is not available on this machine)")
    return value


def _range_text(low, high, low_inc: bool, high_inc: bool) -> str:
    if low is None and high is None:
        return ""
    if high is None:
        return f" {'>=' if low_inc else '>'} {low}"
    if low is None:
        return f" {'<=' if high_inc else '<'} {high}"
    return f" in {'[' if low_inc else '('}{low}, {high}{']' if high_inc else ')'}"


class UnknownParameterError(ParameterError):
    """A parameter name the notebook does not have (a typo, or one the notebook dropped)."""

    def __init__(self, name: str, known: Iterable[str], where: str):
        known = sorted(known)
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        self.closest = close[0] if close else None
        hint = f"did you mean {self.closest}? " if close else ""
        allowed = f"a parameter of {where}: {hint}its parameters are " + ", ".join(known)
        ValueError.__init__(self, f"unknown parameter {name!r}: not {allowed}")
        self.name, self.value, self.allowed = name, name, allowed


def check_names(given: Iterable[str], known: Iterable[str], where: str) -> None:
    """Refuse parameter names that are not among a notebook's parameters, before any work.

    Args:
        given: the names about to be injected (e.g. the keys of a parameters file).
        known: the notebook's parameter names.
        where: the notebook, for the message (e.g. "04_weight_pruning").

    Raises:
        UnknownParameterError: naming the first unknown name, the closest known one and every
            known name.
    """
    known = list(known)
    for name in given:
        if name not in known:
            raise UnknownParameterError(str(name), known, where)


def notebook_parameters(path: str | Path) -> list[str]:
    """The parameter names of a notebook: the annotated names of its cell tagged ``parameters``.

    Args:
        path: the ``.ipynb`` file.

    Returns:
        The names, in the cell's order.

    Raises:
        ValueError: when the notebook has no cell tagged ``parameters``.
    """
    import json

    cells = json.loads(Path(path).read_text(encoding="utf-8"))["cells"]
    for cell in cells:
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            tree = ast.parse("".join(cell["source"]))
            return [
                s.target.id
                for s in tree.body
                if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)
            ]
    raise ValueError(f"{path} has no cell tagged 'parameters'")


#: The first line of the cell papermill injects (``papermill.translators``' comment "Parameters").
INJECTED_MARK = "# Parameters"


def _assigned_names(source: str) -> list[str] | None:
    """The names papermill's injected cell assigns: a cell whose first line is ``# Parameters``
    and which holds nothing but plain assignments; None for any other cell."""
    if source.lstrip().split("\n", 1)[0].strip() != INJECTED_MARK:
        return None
    try:
        body = ast.parse(source).body
    except SyntaxError:
        return None
    if not body or not all(isinstance(s, ast.Assign) for s in body):
        return None
    return [t.id for s in body for t in s.targets if isinstance(t, ast.Name)]


def check_injected(namespace: Mapping[str, Any], where: str = "this notebook") -> None:
    """In a notebook's validation cell: refuse a parameter papermill injected that the notebook
    does not have.

    papermill writes overrides as plain assignments in a cell headed ``# Parameters`` after the
    one tagged ``parameters``, whose names carry type hints and so are listed in
    ``__annotations__``. Every such cell run since the parameters cell is checked: a name it
    assigns that has no annotation is refused. Outside IPython (no ``In`` history) nothing is
    checked.

    Args:
        namespace: the notebook's ``globals()``.
        where: the notebook, for the message.

    Raises:
        UnknownParameterError: naming the unknown name, the closest parameter and all of them.
    """
    known = list(namespace.get("__annotations__", {}))
    history = list(namespace.get("In") or [])
    if not known or not history:
        return
    starts = [i for i, src in enumerate(history) if _defines_parameters(src, known)]
    for src in history[starts[-1] + 1 if starts else 0 :]:
        check_names(_assigned_names(src) or [], known, where)


def _defines_parameters(source: str, known: list[str]) -> bool:
    """Whether a cell is the parameters cell: it annotates one of the known names."""
    try:
        body = ast.parse(source).body
    except SyntaxError:
        return False
    return any(
        isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name) and s.target.id in known
        for s in body
    )
