"""Comparing search methods cheaply: a lookup objective, search histories on it (grid, random,
GP, TPE), best-so-far curves and trials to a target.

Every method proposes points in the continuous space; ``LookupObjective`` scores a point by the
nearest cell of an exhaustive grid (``nbhelpers.techniques.hpo.exhaustive``), so comparing methods
over many seeds costs look-ups, not training runs. The plots of these histories are in
``nbhelpers.techniques.hpo.plots``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from nbhelpers.techniques.hpo.space import to_distributions, to_grid, to_skopt

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


def variance_shares(obj: LookupObjective) -> pd.DataFrame:
    """How much of the grid's score variance each hyperparameter explains on its own.

    On a full grid the scores split exactly (a two-way, or n-way, analysis of variance): each axis's
    main effect is the variance of the scores averaged over the other axes, and what is left is the
    axes' interactions. Bergstra and Bengio (2012) found that few hyperparameters matter on most
    problems (a low effective dimensionality), which is when random search beats a grid: the shares
    say whether that holds on this grid.

    Args:
        obj: the lookup objective (its full grid of scores).

    Returns:
        One row per axis, then "interactions": share (of the total variance, summing to 1) and
        score_range (max minus min of that axis's averaged scores; NaN for interactions).
    """
    s = obj.scores
    total = float(s.var())
    rows = []
    for k, name in enumerate(obj.axes):
        others = tuple(i for i in range(s.ndim) if i != k)
        marginal = s.mean(axis=others) if others else s
        share = float(marginal.var()) / total if total > 0 else float("nan")
        rows.append({"effect": name, "share": share, "score_range": float(np.ptp(marginal))})
    main = sum(r["share"] for r in rows)
    rows.append({"effect": "interactions", "share": 1.0 - main if total > 0 else float("nan"),
                 "score_range": float("nan")})  # fmt: skip
    return pd.DataFrame(rows).set_index("effect")


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
