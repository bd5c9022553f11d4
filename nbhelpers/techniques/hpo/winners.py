"""What a search's winner is worth on the test split: the cell each search chose on the lookup
table, refitted once per distinct cell and scored on test images, for paired comparisons.

A lookup-table comparison (``comparison``) says which method found the higher *CV score*; a user
wants to know which one hands them the better *model*. The winners of both methods are refitted on
the same tuning data and scored on the same test images, so their difference gets a paired
interval (``stats.seeds_paired_difference``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.base import clone

from nbhelpers.techniques.hpo.comparison import LookupObjective
from nbhelpers.techniques.hpo.space import PARAM_NAMES


def winner_cell(
    obj: LookupObjective, scores: Sequence[float], points: Sequence[Mapping[str, float]]
) -> tuple[int, ...]:
    """The table cell a search chose: its best-scoring trial (the first one on a tie).

    Args:
        obj: the lookup objective the search ran on.
        scores: the search's scores, in trial order.
        points: its points, in the same order.

    Returns:
        The index of the chosen cell on the objective's axes.
    """
    if len(scores) != len(points) or not len(scores):
        raise ValueError(
            f"need as many scores as points, at least one: {len(scores)}, {len(points)}"
        )
    return obj.cell(points[int(np.argmax(scores))])


def cell_params(obj: LookupObjective, cell: Sequence[int]) -> dict[str, float]:
    """The estimator parameters of a table cell, e.g. {"lr": 0.01, "optimizer__weight_decay": 0}.

    Args:
        obj: the lookup objective.
        cell: an index on its axes.

    Returns:
        {estimator parameter name: value}.
    """
    params = {}
    for (k, axis), i in zip(obj.axes.items(), cell):
        dim, value = obj.space[k], float(axis[i])
        whole = dim.get("int") or all(float(c).is_integer() for c in dim.get("values", [0.5]))
        params[PARAM_NAMES.get(k, k)] = int(round(value)) if whole else value
    return params


def cell_test_hits(
    estimator: Any,
    X: np.ndarray,
    y: np.ndarray,
    X_test: np.ndarray,
    y_test: np.ndarray,
    obj: LookupObjective,
    cells: Sequence[Sequence[int]],
) -> dict[tuple[int, ...], np.ndarray]:
    """Each distinct cell's configuration refitted on the tuning data and scored on test images.

    Args:
        estimator: the (seeded) estimator the table was built with; its other hyperparameters
            stay as they are.
        X: tuning inputs.
        y: tuning labels.
        X_test: test inputs.
        y_test: test labels.
        obj: the lookup objective (its axes name the varied hyperparameters).
        cells: the cells to score (repeats are fitted once).

    Returns:
        {cell: boolean array over the test images, True where the refitted model is right}.
    """
    hits: dict[tuple[int, ...], np.ndarray] = {}
    for cell in map(tuple, cells):
        if cell not in hits:
            model = clone(estimator).set_params(**cell_params(obj, cell)).fit(X, y)
            hits[cell] = np.asarray(model.predict(X_test)) == np.asarray(y_test)
    return hits
