"""The search space of notebooks 01-03, written once, and the forms the three searches need.

A space is a dict of plain dicts, one per hyperparameter:
``{"low": 1e-4, "high": 0.1, "log": True}`` (a real range; add ``"int": True`` for integers) or
``{"values": [32, 128]}`` (a categorical choice). ``to_grid``, ``to_distributions`` and
``to_skopt`` turn that one definition into what ``GridSearchCV``, ``RandomizedSearchCV`` and
``BayesSearchCV`` expect, keyed by the estimator's parameter names (``PARAM_NAMES``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from nbhelpers.core.params import ParameterError, check_choice, check_int, check_list

#: Friendly hyperparameter name -> parameter name of the skorch estimator.
PARAM_NAMES = {
    "lr": "lr",
    "hidden": "module__width",
    "dropout": "module__dropout",
    "weight_decay": "optimizer__weight_decay",
    "batch_size": "batch_size",
    "epochs": "max_epochs",
}

#: The one search space of notebooks 01-03 (learning rate and weight decay on a log scale).
MLP_SPACE: dict[str, dict] = {
    "lr": {"low": 1e-4, "high": 0.1, "log": True},
    "hidden": {"low": 32, "high": 512, "log": True, "int": True},
    "weight_decay": {"low": 1e-6, "high": 1e-2, "log": True},
    "batch_size": {"values": [32, 128]},
}

#: Values of the hyperparameters a search leaves out (the shared baseline's recipe).
DEFAULTS = {"lr": 1e-3, "hidden": 300, "dropout": 0.0, "weight_decay": 0.0, "batch_size": 64}

_ALLOWED = (
    "a non-empty dict {hyperparameter: {'low': a, 'high': b, 'log': bool, 'int': bool} or "
    "{'values': [...]}} with hyperparameters among " + ", ".join(PARAM_NAMES)
)


def _check_values(name: str, space: Any, dim: Mapping, where: str) -> dict:
    """Check a categorical dimension ``{"values": [...]}``; return it with a list of values."""
    values = dim["values"]
    is_list = isinstance(values, Sequence) and not isinstance(values, str)
    if set(dim) != {"values"} or not is_list or not values:
        raise ParameterError(name, space, where + ": 'values' must be a non-empty list and alone")
    return {"values": list(values)}


def _check_range(name: str, space: Any, dim: Mapping, where: str) -> dict:
    """Check a numeric dimension ``{"low", "high"[, "log"][, "int"]}``; return it with all four."""
    if not {"low", "high"} <= set(dim) or not set(dim) <= {"low", "high", "log", "int"}:
        raise ParameterError(
            name, space, where + ": give 'low' and 'high' (and optionally 'log', 'int')"
        )
    low, high = dim["low"], dim["high"]
    log, is_int = bool(dim.get("log", False)), bool(dim.get("int", False))
    numbers = all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        for v in (low, high)
    )
    if not numbers or not low < high or (log and low <= 0):
        raise ParameterError(
            name, space, where + ": need numbers low < high (low > 0 on a log scale)"
        )
    if is_int and not (float(low).is_integer() and float(high).is_integer()):
        raise ParameterError(name, space, where + ": integer bounds for 'int'")
    cast = int if is_int else float
    return {"low": cast(low), "high": cast(high), "log": log, "int": is_int}


def check_space(name: str, space: Any) -> dict[str, dict]:
    """Check a search space and return it normalised (every numeric dim with ``log`` and ``int``).

    Args:
        name: the notebook parameter holding the space (named in errors).
        space: {hyperparameter: {"low", "high"[, "log"][, "int"]} or {"values": [...]}}.

    Returns:
        The checked space (a new dict).
    """
    if not isinstance(space, Mapping) or not space:
        raise ParameterError(name, space, _ALLOWED)
    out = {}
    for key, dim in space.items():
        where = f"{_ALLOWED}; problem with {key!r}"
        if key not in PARAM_NAMES or not isinstance(dim, Mapping):
            raise ParameterError(name, space, where)
        check = _check_values if "values" in dim else _check_range
        out[key] = check(name, space, dim, where)
    return out


def merge_space(
    base: Mapping[str, dict], overrides: Mapping[str, Any], name: str = "SPACE"
) -> dict[str, dict]:
    """A space with some dimensions replaced, added, or removed (an override of ``None`` removes).

    Args:
        base: the space to start from, e.g. ``MLP_SPACE``.
        overrides: {hyperparameter: dimension or None}.
        name: parameter named in errors.

    Returns:
        The checked, merged space.
    """
    if not isinstance(overrides, Mapping):
        raise ParameterError(
            name, overrides, "a dict of dimensions to replace, add, or remove (None)"
        )
    merged = {**base, **overrides}
    return check_space(name, {k: v for k, v in merged.items() if v is not None})


def dim_values(dim: Mapping, points: int) -> list:
    """``points`` evenly spaced values of one dimension (log-spaced when ``log``), ends included.

    Args:
        dim: a checked dimension.
        points: how many values for a numeric range (categorical dims give all their values).

    Returns:
        The values (integers rounded and de-duplicated).
    """
    if "values" in dim:
        return list(dim["values"])
    check_int("points", points, minimum=2)
    f = np.geomspace if dim["log"] else np.linspace
    vals = f(dim["low"], dim["high"], points)
    if dim["int"]:
        return sorted({int(round(v)) for v in vals})
    return [float(v) for v in vals]


def _key(name: str, rename: bool) -> str:
    """The estimator's parameter name of a hyperparameter when ``rename``, else the name itself."""
    return PARAM_NAMES.get(name, name) if rename else name


def to_grid(
    space: Mapping[str, dict], points: int | Mapping[str, int] = 3, rename: bool = True
) -> dict[str, list]:
    """The space as a ``GridSearchCV`` parameter grid.

    Args:
        space: a checked space.
        points: values per numeric dimension (one number, or {hyperparameter: number}).
        rename: key by estimator parameter names (``PARAM_NAMES``) rather than friendly names.

    Returns:
        {parameter: list of values}.
    """
    per = points if isinstance(points, Mapping) else {k: points for k in space}
    return {_key(k, rename): dim_values(d, per.get(k, 3)) for k, d in space.items()}


class IntLogUniform:
    """Integers in [low, high] drawn log-uniformly (``rvs`` like a scipy distribution)."""

    def __init__(self, low: int, high: int):
        from scipy.stats import loguniform

        self.low, self.high = int(low), int(high)
        self._real = loguniform(self.low, self.high + 1)

    def rvs(self, size=None, random_state=None):
        """Draw integers; ``random_state`` as in scipy."""
        x = np.floor(self._real.rvs(size=size, random_state=random_state)).astype(int)
        x = np.clip(x, self.low, self.high)
        return int(x) if size is None else x

    def __repr__(self) -> str:
        return f"IntLogUniform({self.low}, {self.high})"


def to_distributions(space: Mapping[str, dict], rename: bool = True) -> dict[str, Any]:
    """The space as ``RandomizedSearchCV`` distributions (log-uniform where ``log``).

    Args:
        space: a checked space.
        rename: key by estimator parameter names.

    Returns:
        {parameter: scipy distribution, ``IntLogUniform`` or list of values}.
    """
    from scipy.stats import loguniform, randint, uniform

    out = {}
    for k, d in space.items():
        if "values" in d:
            dist: Any = list(d["values"])
        elif d["int"]:
            low, high = d["low"], d["high"]
            dist = IntLogUniform(low, high) if d["log"] else randint(low, high + 1)
        else:
            low, high = d["low"], d["high"]
            dist = loguniform(low, high) if d["log"] else uniform(low, high - low)
        out[_key(k, rename)] = dist
    return out


def to_skopt(space: Mapping[str, dict], rename: bool = True) -> dict[str, Any]:
    """The space as scikit-optimize dimensions (``BayesSearchCV`` search space).

    Args:
        space: a checked space.
        rename: key (and name) by estimator parameter names.

    Returns:
        {parameter: ``Real``, ``Integer`` or ``Categorical``}.
    """
    from skopt.space import Categorical, Integer, Real

    out = {}
    for k, d in space.items():
        key = _key(k, rename)
        if "values" in d:
            out[key] = Categorical(list(d["values"]), name=key)
        else:
            cls = Integer if d["int"] else Real
            prior = "log-uniform" if d["log"] else "uniform"
            out[key] = cls(d["low"], d["high"], prior=prior, name=key)
    return out


def friendly(params: Mapping[str, Any]) -> dict[str, Any]:
    """Estimator parameter names back to the friendly names of the space.

    Args:
        params: e.g. ``search.best_params_``.

    Returns:
        The same values keyed like ``MLP_SPACE`` (numbers as plain Python types).
    """
    inverse = {v: k for k, v in PARAM_NAMES.items()}
    return {inverse.get(k, k): (v.item() if hasattr(v, "item") else v) for k, v in params.items()}


def describe_space(space: Mapping[str, dict]) -> pd.DataFrame:
    """One row per hyperparameter: its range or values, scale, and estimator parameter.

    Args:
        space: a checked space.

    Returns:
        The table.
    """
    rows = []
    for k, d in space.items():
        if "values" in d:
            rows.append({"hyperparameter": k, "range": str(d["values"]), "scale": "categorical"})
        else:
            kind = ("log " if d["log"] else "linear ") + ("integer" if d["int"] else "real")
            span = f"[{d['low']:g}, {d['high']:g}]"
            rows.append({"hyperparameter": k, "range": span, "scale": kind})
        rows[-1]["estimator parameter"] = PARAM_NAMES[k]
    return pd.DataFrame(rows).set_index("hyperparameter")


def check_table(dims: Any, points: Any, space: Mapping[str, dict]) -> tuple[list[str], list[int]]:
    """Check ``TABLE_DIMS`` (two different numeric dimensions of ``space``) and ``TABLE_POINTS``.

    Args:
        dims: the two hyperparameters of the lookup table.
        points: grid points along each of them (integers >= 2).
        space: the search space.

    Returns:
        (dims, points) as lists.
    """
    numeric = [k for k, d in space.items() if "values" not in d]
    check_list("TABLE_DIMS", dims, lambda n, v: check_choice(n, v, numeric), min_len=2)
    if len(dims) != 2 or dims[0] == dims[1]:
        raise ParameterError(
            "TABLE_DIMS", dims, "two different numeric hyperparameters of the space"
        )
    check_list("TABLE_POINTS", points, lambda n, v: check_int(n, v, minimum=2), min_len=2)
    if len(points) != 2:
        raise ParameterError("TABLE_POINTS", points, "two integers >= 2, one per TABLE_DIMS axis")
    return list(dims), list(points)
