"""The exhaustive grid of notebooks 02 and 03, fitted once and cached: every configuration on
every fold with its held-out accuracy after every epoch (``fold_curves``), the ``GridSearchCV``
scores taken from it (``fold_results``) and the grid kept as a ``LookupObjective`` (``grid_table``).

The results are cached on disk (``nbhelpers.core.cache.cached_json``) under ``table_config``, the
key notebooks 02 and 03 share.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from nbhelpers.core.cache import cached_json, runtime_key
from nbhelpers.techniques.hpo.comparison import LookupObjective
from nbhelpers.techniques.hpo.space import DEFAULTS, dim_values, friendly, to_grid


def table_config(
    dataset: str, seed: int, subset: int, epochs: int, folds: int, device: str
) -> dict[str, Any]:
    """What the exhaustive grid's scores depend on (the cache key notebooks 02 and 03 share).

    Args:
        dataset: the ``DATASET`` parameter.
        seed: the ``SEED`` parameter.
        subset: tuning samples (``SUBSET``).
        epochs: epochs of every fit.
        folds: cross-validation folds.
        device: where the fits run.

    Returns:
        The configuration (the grid and the runtime are added by ``grid_table``).
    """
    return {
        "dataset": dataset,
        "seed": seed,
        "subset": subset,
        "epochs": epochs,
        "folds": folds,
        "device": device,
        "defaults": DEFAULTS,
        "version": 1,
    }


def cached_results(
    config: Mapping[str, Any], compute: Callable[[], pd.DataFrame]
) -> tuple[pd.DataFrame, bool]:
    """A results table from the cache for this configuration, or ``compute()`` and store it.

    Args:
        config: everything the results depend on (JSON-able).
        compute: ``() -> DataFrame`` run on a cache miss (once, however many notebooks ask).

    Returns:
        (results, from_cache); the table reads back from JSON either way.
    """
    columns, hit = cached_json({"name": "hpo", **config}, lambda: compute().to_dict(orient="list"))
    return pd.DataFrame(columns), hit


def _fold_curve(
    estimator: Any, params: Mapping[str, Any], X: np.ndarray, y: np.ndarray, train: Any, held: Any
) -> tuple[list[float], float]:
    """Fit one configuration on one fold's training part: held-out accuracy after each epoch.

    The held-out passes use their own ``torch.Generator``, so they draw nothing from torch's
    global random state and the training (seeded by the estimator) is the one a plain fit makes.

    Returns:
        (held-out accuracy after each epoch, seconds of the fit including those passes).
    """
    import time

    import torch
    from sklearn.base import clone
    from skorch.dataset import Dataset
    from skorch.helper import predefined_split

    net = clone(estimator).set_params(
        **params,
        train_split=predefined_split(Dataset(X[held], y[held])),
        iterator_valid__generator=torch.Generator(),
    )
    t0 = time.perf_counter()
    net.fit(X[train], y[train])
    return [float(a) for a in net.history[:, "valid_acc"]], time.perf_counter() - t0


def fold_curves(
    estimator: Any,
    X: np.ndarray,
    y: np.ndarray,
    grid: Mapping[str, Sequence],
    cv: Any,
    cache_config: Mapping[str, Any] | None = None,
) -> tuple[pd.DataFrame, bool]:
    """Every configuration of a grid fitted on every fold, held-out accuracy after every epoch.

    One set of fits serves both the exhaustive grid (``grid_table``: the last epoch, as
    ``GridSearchCV`` scores it) and the learning curves (``curve_table``), so 03 trains the grid
    once, not twice. The fits run on the active joblib backend (``hpo.backend``).

    Args:
        estimator: the skorch estimator (``make_estimator``; its ``max_epochs`` is the budget).
        X: tuning inputs.
        y: tuning labels.
        grid: scikit-learn parameter grid ({estimator parameter: values}).
        cv: the cross-validation splitter.
        cache_config: everything the scores depend on; given, the table is cached on disk.

    Returns:
        (one row per configuration, fold and epoch: trial, the friendly hyperparameters, fold,
        epoch, held_out_accuracy, fit_seconds; whether it came from the cache).
    """
    from joblib import Parallel, delayed
    from sklearn.model_selection import ParameterGrid

    def compute() -> pd.DataFrame:
        configs, folds = list(ParameterGrid(grid)), list(cv.split(X, y))
        jobs = [(p, tr, he) for p in configs for tr, he in folds]
        fits = Parallel()(delayed(_fold_curve)(estimator, p, X, y, tr, he) for p, tr, he in jobs)
        rows = []
        for i, ((p, _, _), (accs, seconds)) in enumerate(zip(jobs, fits)):
            trial, fold = divmod(i, len(folds))
            for e, acc in enumerate(accs, 1):
                rows.append(
                    {
                        "trial": trial + 1,
                        **friendly(p),
                        "fold": fold,
                        "epoch": e,
                        "held_out_accuracy": acc,
                        "fit_seconds": seconds,
                    }
                )
        return pd.DataFrame(rows)

    if cache_config is None:
        return compute(), False
    runtime = runtime_key(getattr(estimator, "device", "cpu") or "cpu")
    return cached_results({**cache_config, "kind": "fold_curves", "grid": grid, **runtime}, compute)


#: The columns of a ``fold_curves`` table that are not hyperparameters.
FOLD_COLUMNS = ("trial", "fold", "epoch", "held_out_accuracy", "fit_seconds")


def fold_params(curves: pd.DataFrame) -> list[str]:
    """The hyperparameter columns of a ``fold_curves`` table, in its order.

    Args:
        curves: the table of ``fold_curves``.

    Returns:
        Column names.
    """
    return [c for c in curves.columns if c not in FOLD_COLUMNS]


def fold_results(curves: pd.DataFrame) -> pd.DataFrame:
    """A ``results_table`` from ``fold_curves``: each configuration's last-epoch CV score.

    Args:
        curves: the table of ``fold_curves``.

    Returns:
        One row per configuration in trial order: trial, hyperparameters, mean_cv, std_cv (over
        folds, as scikit-learn computes them) and fit_seconds (mean per fold).
    """
    last = curves[curves["epoch"] == curves["epoch"].max()]
    scores = last.pivot(index="trial", columns="fold", values="held_out_accuracy").sort_index()
    out = pd.DataFrame(  # numpy's mean and std over folds, as GridSearchCV takes them
        {
            "mean_cv": np.mean(scores.to_numpy(), axis=1),
            "std_cv": np.std(scores.to_numpy(), axis=1),
            "fit_seconds": last.groupby("trial", sort=True)["fit_seconds"].mean().to_numpy(),
        },
        index=scores.index,
    )
    params = last.drop_duplicates("trial").set_index("trial")[fold_params(curves)]
    return params.join(out).reset_index()


def grid_table(
    estimator: Any,
    X: np.ndarray,
    y: np.ndarray,
    space: Mapping[str, dict],
    points: Mapping[str, int],
    cv: Any,
    cache_config: Mapping[str, Any] | None = None,
) -> tuple[pd.DataFrame, LookupObjective, bool]:
    """An exhaustive grid search over some dimensions of a space, kept as a ``LookupObjective``.

    The scores are those of ``GridSearchCV`` (held-out accuracy after the last epoch, mean over
    folds), taken from ``fold_curves``, whose fits the learning curves of ``curve_table`` share.

    Args:
        estimator: the estimator (its other hyperparameters stay fixed).
        X: tuning inputs.
        y: tuning labels.
        space: a checked space.
        points: {hyperparameter: values on its axis}, e.g. {"lr": 16, "weight_decay": 7}.
        cv: the cross-validation splitter.
        cache_config: everything the scores depend on; given, the results are cached on disk.

    Returns:
        (``results_table`` of the grid, the lookup objective, whether it came from the cache).
    """
    sub = {k: space[k] for k in points}
    curves, hit = fold_curves(estimator, X, y, to_grid(sub, points), cv, cache_config)
    results = fold_results(curves)
    axes = {k: dim_values(sub[k], n) for k, n in points.items()}
    return results, LookupObjective.from_results(sub, axes, results), hit
