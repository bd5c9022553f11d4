"""Comparing search methods cheaply: an exhaustive grid kept as a lookup objective, search
histories on it (grid, random, GP, TPE), best-so-far curves, trials to a target, and plots.

Every method proposes points in the continuous space; ``LookupObjective`` scores a point by the
nearest cell of the exhaustive grid, so comparing methods over many seeds costs look-ups, not
training runs. The grid's results are cached on disk (``nbhelpers.core.cache.cached_json``), shared
by
notebooks 02 and 03.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from nbhelpers.core.cache import cached_json, runtime_key
from nbhelpers.techniques.hpo.space import (
    DEFAULTS,
    dim_values,
    friendly,
    to_distributions,
    to_grid,
    to_skopt,
)

#: Scores of one search, in trial order, for each seed: {method: [[score, ...], ...]}.
Histories = Mapping[str, Sequence[Sequence[float]]]


# ---------------------------------------------------------------------------------------------
# Best so far and trials to a target
# ---------------------------------------------------------------------------------------------


def best_so_far(scores: Sequence[float]) -> np.ndarray:
    """The running maximum of scores in trial order (what a search has found after k trials).

    Args:
        scores: one score per trial, higher is better.

    Returns:
        Array of the same length.
    """
    return np.maximum.accumulate(np.asarray(scores, dtype=float))


def trials_to_target(scores: Sequence[float], target: float) -> int | None:
    """The number of trials until a score first reaches ``target`` (1-based), or None if never.

    Args:
        scores: one score per trial, in the order tried.
        target: the score to reach (``>=``).

    Returns:
        The trial count, or None when no trial reaches it.
    """
    hits = np.flatnonzero(np.asarray(scores, dtype=float) >= target)
    return int(hits[0]) + 1 if len(hits) else None


def trials_to_target_table(
    histories: Histories, target: float, limits: Mapping[str, float] | None = None
) -> pd.DataFrame:
    """Trials each method needs to reach ``target``, over seeds.

    A seed that never reaches the target counts as its budget + 1 (so the mean is then a lower
    bound, flagged by ``reached < seeds``).

    Args:
        histories: {method: [scores of one seed, in trial order], ...}.
        target: the score to reach.
        limits: optional {method: the most trials allowed by a target}; adds ``limit`` and ``met``.

    Returns:
        One row per method: seeds, reached, mean, std, median, min, max trials, per-seed trials.
    """
    rows = []
    for method, runs in histories.items():
        counts = [trials_to_target(r, target) for r in runs]
        filled = np.array(
            [len(r) + 1 if c is None else c for c, r in zip(counts, runs)], dtype=float
        )
        row = {
            "method": method,
            "seeds": len(runs),
            "reached": sum(c is not None for c in counts),
            "mean_trials": filled.mean(),
            "std_trials": filled.std(ddof=1) if len(filled) > 1 else 0.0,
            "median_trials": float(np.median(filled)),
            "min_trials": filled.min(),
            "max_trials": filled.max(),
            "per_seed": counts,
        }
        if limits is not None and method in limits:
            row["limit"] = float(limits[method])
            within = row["mean_trials"] <= limits[method]
            row["met"] = bool(row["reached"] == row["seeds"] and within)
        rows.append(row)
    return pd.DataFrame(rows).set_index("method")


def budget_table(histories: Histories) -> pd.DataFrame:
    """The best score each method has found when its budget is spent: mean, min and max over seeds.

    Args:
        histories: {method: [scores of one seed, in trial order], ...}.

    Returns:
        One row per method, columns "best after budget (mean)", "(min)" and "(max)".
    """
    finals = {m: np.array([max(r) for r in runs], dtype=float) for m, runs in histories.items()}
    return pd.DataFrame(
        {
            "best after budget (mean)": {m: float(v.mean()) for m, v in finals.items()},
            "best after budget (min)": {m: float(v.min()) for m, v in finals.items()},
            "best after budget (max)": {m: float(v.max()) for m, v in finals.items()},
        }
    )


def curves_frame(histories: Histories) -> pd.DataFrame:
    """Best-so-far curves of several methods and seeds as one long table.

    Args:
        histories: {method: [scores of one seed, in trial order], ...}.

    Returns:
        Columns method, seed, trial (from 1), best.
    """
    rows = [
        {"method": m, "seed": s, "trial": t + 1, "best": b}
        for m, runs in histories.items()
        for s, r in enumerate(runs)
        for t, b in enumerate(best_so_far(r))
    ]
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# The lookup objective and the search methods on it
# ---------------------------------------------------------------------------------------------


class LookupObjective:
    """A precomputed objective: CV scores on a fine grid, looked up at the nearest grid cell.

    Searches over the continuous space are compared cheaply and fairly on it: every proposed
    point is snapped to the nearest evaluated configuration (nearest in log space on a log axis).
    """

    def __init__(self, space: Mapping[str, dict], axes: Mapping[str, Sequence], scores: np.ndarray):
        self.space = {k: space[k] for k in axes}
        self.axes = {k: np.asarray(v, dtype=float) for k, v in axes.items()}
        self.scores = np.asarray(scores, dtype=float)
        if self.scores.shape != tuple(len(v) for v in self.axes.values()):
            raise ValueError(f"scores of shape {self.scores.shape} do not match the axes")

    @classmethod
    def from_results(
        cls,
        space: Mapping[str, dict],
        axes: Mapping[str, Sequence],
        results: pd.DataFrame,
        value: str = "mean_cv",
    ) -> LookupObjective:
        """Build from a ``results_table`` of an exhaustive grid over ``axes``."""
        scores = np.full(tuple(len(v) for v in axes.values()), np.nan)
        for _, row in results.iterrows():
            idx = tuple(
                int(np.argmin(np.abs(np.asarray(v, dtype=float) - row[k]))) for k, v in axes.items()
            )
            scores[idx] = row[value]
        if np.isnan(scores).any():
            raise ValueError("the results do not cover every cell of the axes")
        return cls(space, axes, scores)

    def cell(self, point: Mapping[str, float]) -> tuple[int, ...]:
        """Index of the grid cell nearest to a point {hyperparameter: value}."""
        idx = []
        for k, vals in self.axes.items():
            f = np.log if self.space[k].get("log", False) else np.asarray
            idx.append(int(np.argmin(np.abs(f(vals) - f(float(point[k]))))))
        return tuple(idx)

    def __call__(self, point: Mapping[str, float]) -> float:
        """The score of the nearest evaluated configuration."""
        return float(self.scores[self.cell(point)])

    @property
    def size(self) -> int:
        """Number of configurations (the exhaustive grid's trials)."""
        return int(self.scores.size)

    @property
    def best(self) -> float:
        """The best score of the exhaustive grid."""
        return float(self.scores.max())


def random_history(obj: LookupObjective, trials: int, seed: int) -> tuple[list[float], list[dict]]:
    """Random search on a lookup objective: draws from ``to_distributions`` of its space.

    Args:
        obj: the objective.
        trials: number of trials.
        seed: seed of the draws.

    Returns:
        (scores, points) in trial order.
    """
    points = random_points(obj.space, trials, np.random.RandomState(seed))
    return [obj(p) for p in points], points


def random_points(
    space: Mapping[str, dict], n: int, rng: np.random.RandomState
) -> list[dict[str, Any]]:
    """``n`` points drawn from ``to_distributions`` of a space (random search's proposals).

    Args:
        space: the checked space.
        n: how many.
        rng: the random state (advanced by the draws).

    Returns:
        The points, {hyperparameter: value}.
    """
    dists = to_distributions(space, rename=False)
    return [
        {
            k: (d.rvs(random_state=rng) if hasattr(d, "rvs") else d[rng.randint(len(d))])
            for k, d in dists.items()
        }
        for _ in range(n)
    ]


def grid_history(
    obj: LookupObjective, points: int | Mapping[str, int], seed: int
) -> tuple[list[float], list[dict]]:
    """Grid search on a lookup objective: a coarse ``to_grid`` of its space, in a seeded order.

    Args:
        obj: the objective.
        points: values per dimension of the coarse grid.
        seed: seed of the order (a grid has no natural order; shuffling shows the spread).

    Returns:
        (scores, points) in trial order.
    """
    from sklearn.model_selection import ParameterGrid

    grid = list(ParameterGrid(to_grid(obj.space, points, rename=False)))
    order = np.random.RandomState(seed).permutation(len(grid))
    chosen = [grid[i] for i in order]
    return [obj(p) for p in chosen], chosen


def gp_history(
    obj: LookupObjective, trials: int, seed: int, initial: int = 5
) -> tuple[list[float], Any]:
    """Gaussian-process Bayesian optimisation (``skopt.gp_minimize``, EI) on a lookup objective.

    Args:
        obj: the objective.
        trials: number of evaluations.
        seed: seed of the initial points and the optimiser.
        initial: random initial points before the GP takes over.

    Returns:
        (scores, the ``OptimizeResult``).
    """
    from skopt import gp_minimize

    dims = list(to_skopt(obj.space, rename=False).values())
    names = list(obj.space)
    res = gp_minimize(
        lambda x: -obj(dict(zip(names, x))),
        dims,
        n_calls=trials,
        n_initial_points=min(initial, trials),
        acq_func="EI",
        random_state=seed,
    )
    return [-v for v in res.func_vals], res


def tpe_history(obj: LookupObjective, trials: int, seed: int, initial: int = 5) -> list[float]:
    """Optuna's TPE sampler on a lookup objective, over the same space.

    Args:
        obj: the objective.
        trials: number of evaluations.
        seed: seed of the sampler.
        initial: random start-up trials before TPE takes over.

    Returns:
        Scores in trial order.
    """
    import warnings

    with warnings.catch_warnings():  # optuna's tqdm import warns about ipywidgets in notebooks
        warnings.simplefilter("ignore")
        import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def objective(trial):
        point = {}
        for k, d in obj.space.items():
            if "values" in d:
                point[k] = trial.suggest_categorical(k, d["values"])
            elif d["int"]:
                point[k] = trial.suggest_int(k, d["low"], d["high"], log=d["log"])
            else:
                point[k] = trial.suggest_float(k, d["low"], d["high"], log=d["log"])
        return obj(point)

    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(initial, trials))
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.optimize(objective, n_trials=trials)
    return [t.value for t in study.trials]


def shifted_grids(
    obj: LookupObjective, points: int, columns: Sequence[int], target: float
) -> pd.DataFrame:
    """A ``points``-value grid along the first axis placed at every offset (same spacing).

    The spacing is ``len(axis) // points`` cells; every placement that fits on the axis is scored
    by the best cell it contains, over the given cells of the second axis.

    Args:
        obj: the objective (its first axis is the one shifted).
        points: values of the grid along the first axis.
        columns: cells of the second axis the grid uses.
        target: the score a placement should reach.

    Returns:
        One row per offset: the values tried, the best score of the whole grid, whether it
        reaches ``target``.
    """
    name, axis = next(iter(obj.axes.items()))
    step = max(1, len(axis) // points)
    rows = []
    for offset in range(len(axis) - (points - 1) * step):
        cells = [offset + k * step for k in range(points)]
        best = float(obj.scores[np.ix_(cells, list(columns))].max())
        rows.append(
            {
                "offset": offset,
                f"{name} values": [float(f"{axis[c]:.3g}") for c in cells],
                "best after budget": best,
                "reaches target": bool(best >= target),
            }
        )
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# The exhaustive grid, cached (shared by notebooks 02 and 03)
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------


def plot_best_so_far(
    histories: Histories,
    target: float | None = None,
    title: str = "Best score so far",
    ylim: tuple[float, float] | None = None,
) -> Figure:
    """Mean best-so-far score against trials per method, shaded from the worst to the best seed.

    Args:
        histories: {method: [scores of one seed, in trial order], ...}.
        target: optional horizontal line (e.g. the grid's best minus 0.5 points).
        title: figure title.
        ylim: optional (bottom, top) of the score axis, to zoom on the best scores.

    Returns:
        The figure.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    df = curves_frame(histories)
    fig, ax = plt.subplots(figsize=(7, 4))
    sns.lineplot(
        df, x="trial", y="best", hue="method", errorbar=("pi", 100), estimator="mean", ax=ax
    )
    if target is not None:
        ax.axhline(target, color="k", ls="--", lw=1, label="target")
        ax.legend()
    ax.set(xlabel="trials", ylabel="best mean CV accuracy so far", title=title)
    if ylim is not None:
        ax.set_ylim(*ylim)
    fig.tight_layout()
    return fig


def heatmap(
    results: pd.DataFrame,
    x: str,
    y: str,
    value: str = "mean_cv",
    agg: str = "max",
    title: str | None = None,
) -> Figure:
    """Seaborn heatmap of a score over two hyperparameters (the others aggregated by ``agg``).

    Args:
        results: a ``results_table`` (friendly parameter columns plus ``value``).
        x: hyperparameter on the x axis.
        y: hyperparameter on the y axis.
        value: the score column.
        agg: how to combine the other hyperparameters ("max" or "mean").
        title: figure title.

    Returns:
        The figure.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    table = results.pivot_table(index=y, columns=x, values=value, aggfunc=agg)
    table = table.sort_index(ascending=False)

    def fmt(v: Any) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * table.shape[1], 1.0 + 0.5 * table.shape[0]))
    sns.heatmap(
        table,
        annot=True,
        fmt=".3f",
        cmap="viridis",
        ax=ax,
        xticklabels=[fmt(v) for v in table.columns],
        yticklabels=[fmt(v) for v in table.index],
        cbar_kws={"label": f"{value} ({agg} over the others)"},
    )
    ax.set_title(title or f"{value} over {x} and {y}")
    fig.tight_layout()
    return fig


def plot_grid_cost(trials: pd.DataFrame, seconds_per_trial: float) -> Figure:
    """Wall time of a grid against its number of hyperparameters, one line per values per axis.

    Args:
        trials: index = hyperparameters d, one column per values per axis n (``n^d`` trials).
        seconds_per_trial: the measured cost of one trial.

    Returns:
        The figure (log scale, with a one-hour line).
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for column in trials.columns:
        ax.plot(trials.index, trials[column] * seconds_per_trial, marker="o", label=column)
    ax.axhline(3600, color="k", ls=":", lw=1)
    ax.text(trials.index[0], 3600 * 1.3, "1 hour", fontsize=8)
    ax.set(
        yscale="log",
        xlabel="hyperparameters d",
        ylabel="seconds (measured cost per trial)",
        title="Grid cost grows exponentially with the dimensions",
    )
    ax.legend(loc="lower right", title="values per axis")
    fig.tight_layout()
    return fig


def plot_surrogate(
    x: np.ndarray,
    loss: np.ndarray,
    seen: Sequence[int],
    fine: np.ndarray,
    mu: np.ndarray,
    sigma: np.ndarray,
    ei: np.ndarray,
    xlabel: str,
) -> Figure:
    """A GP surrogate on a 1-D slice (mean, band, trials) above its expected improvement.

    Args:
        x: the slice's grid positions.
        loss: the loss at every grid position (what the GP has not seen, for reference).
        seen: indices of the positions tried so far.
        fine: where the GP and EI were evaluated.
        mu: the GP mean on ``fine``.
        sigma: the GP standard deviation on ``fine``.
        ei: the expected improvement on ``fine``.
        xlabel: label of the x axis.

    Returns:
        The figure.
    """
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7, 5), sharex=True, height_ratios=[2, 1])
    ax1.plot(x, loss, "k.:", lw=1, label="grid (not seen by the GP)")
    ax1.plot(fine, mu, label="GP mean $\\mu_n$")
    ax1.fill_between(
        fine, mu - 2 * sigma, mu + 2 * sigma, alpha=0.25, label="$\\mu_n \\pm 2\\sigma_n$"
    )
    ax1.plot(x[list(seen)], loss[list(seen)], "ro", label="trials so far")
    ax1.set(
        ylabel="loss = - mean CV accuracy",
        title=f"Gaussian-process surrogate after {len(seen)} trials",
    )
    ax1.legend(fontsize=8)
    ax2.plot(fine, ei, color="C2")
    ax2.axvline(fine[int(np.argmax(ei))], color="C2", ls="--", lw=1)
    ax2.set(xlabel=xlabel, ylabel="EI", title="expected improvement: the next trial is its maximum")
    fig.tight_layout()
    return fig
