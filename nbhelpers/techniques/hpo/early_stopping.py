"""Searches that stop bad trials early, compared at equal compute on cached learning curves.

``curve_table`` reads the held-out accuracy after *each* epoch of every configuration of an
exhaustive grid on every cross-validation fold (``fold_curves``: the same fits whose last epoch is
``grid_table``'s score), so a search that gives a configuration ``r`` epochs can be scored exactly
by looking up epoch ``r``. On that ``CurveObjective``:

* ``halving_history``: successive halving (Jamieson and Talwalkar 2016), ``n`` random
  configurations trained ``r_min`` epochs, the best ``1/eta`` continue for ``eta`` times longer,
  until the full budget;
* ``hyperband_history``: Hyperband (Li et al. 2018), brackets of successive halving from many
  configurations at few epochs to few at the full budget;
* ``full_budget_history``: random search, every trial at the full budget.

Each history is a list of (epochs spent, quality of the incumbent): the incumbent is the
configuration with the best observed score at the highest number of epochs reached so far, and
its quality is its score after the full budget (what the search would deliver if it stopped
there). Epochs spent count a configuration continued from ``r`` to ``r'`` epochs as ``r' - r``
more (the run resumes, as ASHA's workers do). All costs are per fold, the same for every method.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from nbhelpers.core.params import ParameterError, check_int
from nbhelpers.techniques.hpo.comparison import LookupObjective, random_points
from nbhelpers.techniques.hpo.exhaustive import fold_curves, fold_params
from nbhelpers.techniques.hpo.space import dim_values, to_grid

History = list[tuple[int, float]]


class CurveObjective:
    """Mean held-out accuracy of every grid cell after every epoch, looked up at the nearest cell.

    Args:
        space: the checked space of the axes.
        axes: hyperparameter -> the grid's values along it.
        curves: scores of shape ``(*axis lengths, epochs)``.
    """

    def __init__(self, space: Mapping[str, dict], axes: Mapping[str, Sequence], curves: Any):
        self.space = {k: space[k] for k in axes}
        self.axes = {k: np.asarray(v, dtype=float) for k, v in axes.items()}
        self.curves = np.asarray(curves, dtype=float)
        if self.curves.shape[:-1] != tuple(len(v) for v in self.axes.values()):
            raise ValueError(f"curves of shape {self.curves.shape} do not match the axes")

    @property
    def epochs(self) -> int:
        """The full budget: epochs of every curve."""
        return int(self.curves.shape[-1])

    @property
    def best(self) -> float:
        """The best score after the full budget (the exhaustive grid's best)."""
        return float(self.curves[..., -1].max())

    @property
    def size(self) -> int:
        """Configurations in the grid."""
        return int(np.prod(self.curves.shape[:-1]))

    cell = LookupObjective.cell  # the nearest grid cell, in log space on a log axis

    def at(self, cell: tuple[int, ...], epochs: int | None = None) -> float:
        """The score of a cell after ``epochs`` epochs (default: the full budget)."""
        e = self.epochs if epochs is None else int(epochs)
        if not 1 <= e <= self.epochs:
            raise ValueError(f"epochs must be in 1..{self.epochs}, got {epochs}")
        return float(self.curves[(*cell, e - 1)])


def curve_table(
    estimator: Any,
    X: np.ndarray,
    y: np.ndarray,
    space: Mapping[str, dict],
    points: Mapping[str, int],
    cv: Any,
    cache_config: Mapping[str, Any] | None = None,
) -> tuple[pd.DataFrame, CurveObjective, bool]:
    """Learning curves of an exhaustive grid: held-out accuracy after every epoch, every fold.

    The fits are ``fold_curves``'s: each configuration trains on each fold's training part and is
    scored on the held-out part after each epoch; the mean over folds is the curve. Its last epoch
    is the cross-validation score of ``grid_table``, from the same fits (one cache entry serves
    both).

    Args:
        estimator: the skorch estimator (``make_estimator``; its ``max_epochs`` is the budget).
        X: tuning inputs.
        y: tuning labels.
        space: a checked space.
        points: {hyperparameter: values on its axis}.
        cv: the cross-validation splitter.
        cache_config: everything the curves depend on; given, they are cached on disk.

    Returns:
        (one row per configuration and epoch: the hyperparameters, epoch, mean_val; the
        ``CurveObjective``; whether from the cache).
    """
    sub = {k: space[k] for k in points}
    folds, hit = fold_curves(estimator, X, y, to_grid(sub, points), cv, cache_config)
    keys = fold_params(folds)
    table = (  # numpy's mean over folds, the last epoch's as in grid_table
        folds.groupby(["trial", "epoch"], sort=True)
        .agg(
            **{k: (k, "first") for k in keys},
            mean_val=("held_out_accuracy", lambda v: float(np.mean(v.to_numpy()))),
        )
        .reset_index()
        .drop(columns="trial")[[*keys, "epoch", "mean_val"]]
    )
    axes = {k: dim_values(sub[k], n) for k, n in points.items()}
    epochs = int(table["epoch"].max())
    curves = np.full((*[len(v) for v in axes.values()], epochs), np.nan)
    for _, row in table.iterrows():
        idx = tuple(int(np.argmin(np.abs(np.asarray(v, float) - row[k]))) for k, v in axes.items())
        curves[(*idx, int(row["epoch"]) - 1)] = row["mean_val"]
    if np.isnan(curves).any():
        raise ValueError("the curves do not cover every cell and epoch of the grid")
    return table, CurveObjective(sub, axes, curves), hit


def _draw(obj: CurveObjective, n: int, rng: np.random.RandomState) -> list[tuple[int, ...]]:
    """``n`` random configurations from the space's distributions, as grid cells."""
    return [obj.cell(p) for p in random_points(obj.space, n, rng)]


def check_halving(eta: Any, r_min: Any, epochs: int) -> tuple[int, int]:
    """Check successive halving's knobs: ``eta`` >= 2, ``r_min`` from 1 to ``epochs``.

    Args:
        eta: the halving rate (``HALVING_ETA``).
        r_min: epochs of the first rung (``HALVING_MIN_EPOCHS``).
        epochs: the full budget.

    Returns:
        (eta, r_min).
    """
    eta = check_int("HALVING_ETA", eta, minimum=2)
    r_min = check_int("HALVING_MIN_EPOCHS", r_min, minimum=1)
    if r_min > epochs:
        raise ParameterError("HALVING_MIN_EPOCHS", r_min, f"an integer from 1 to EPOCHS ({epochs})")
    return eta, r_min


class _Run:
    """The state of one early-stopping search: epochs spent, what was observed, the history.

    A configuration is a trial: (trial number, grid cell). Two trials may share a cell (random
    draws snap to the nearest one) and are still trained, and paid for, separately.
    """

    def __init__(self, obj: CurveObjective):
        self.obj, self.spent, self.history, self.count = obj, 0, [], 0
        self.trained: dict[int, int] = {}
        self.seen: dict[tuple[int, tuple[int, ...]], tuple[int, float]] = {}

    def new(self, cells: Sequence[tuple[int, ...]]) -> list[tuple[int, tuple[int, ...]]]:
        """Number fresh trials of these cells."""
        out = [(self.count + i, c) for i, c in enumerate(cells)]
        self.count += len(cells)
        return out

    def rung(self, trials: Sequence[tuple[int, tuple[int, ...]]], r: int) -> list:
        """Train ``trials`` to ``r`` epochs; return them best first; log the incumbent."""
        for t in trials:
            self.spent += max(0, r - self.trained.get(t[0], 0))
            self.trained[t[0]] = max(r, self.trained.get(t[0], 0))
            self.seen[t] = max(self.seen.get(t, (0, -math.inf)), (r, self.obj.at(t[1], r)))
        incumbent = max(self.seen, key=lambda t: self.seen[t])
        self.history.append((self.spent, self.obj.at(incumbent[1])))
        return sorted(trials, key=lambda t: -self.obj.at(t[1], r))

    def halving(self, cells: Sequence[tuple[int, ...]], r_min: int, eta: int) -> None:
        """One successive-halving bracket of fresh trials of ``cells`` from ``r_min`` epochs."""
        trials, r, full = self.new(cells), r_min, self.obj.epochs
        while True:
            ranked = self.rung(trials, min(r, full))
            if r >= full or len(trials) == 1:
                return
            trials, r = ranked[: max(1, len(trials) // eta)], r * eta


def rung_ranking(obj: CurveObjective, r_min: int, eta: int) -> pd.DataFrame:
    """How well each rung of successive halving ranks the configurations, against the full budget.

    Halving saves compute only when the first epochs already order the configurations as the full
    budget does. For each rung epoch ``r_min * eta**k`` (below the full budget) over every cell of
    the grid: Spearman's rank correlation between the scores at that epoch and at the full budget,
    the rank at that epoch of the full-budget best cell (1 is first), and whether that cell is among
    the ``1/eta`` that a rung over the whole grid would keep.

    Args:
        obj: the learning curves of every cell.
        r_min: epochs of the first rung.
        eta: the halving factor.

    Returns:
        One row per rung: epochs, spearman, best_cell_rank, kept (the number a rung over the grid
        keeps, ceil(size / eta)), best_cell_kept.
    """
    from scipy.stats import rankdata, spearmanr

    eta, r_min = check_halving(eta, r_min, obj.epochs)
    flat = obj.curves.reshape(-1, obj.epochs)
    final, best = flat[:, -1], int(np.argmax(flat[:, -1]))
    kept = math.ceil(len(flat) / eta)
    rows, r = [], r_min
    while r < obj.epochs:
        at = flat[:, r - 1]
        rank = int(rankdata(-at, method="max")[best])  # ties count against the best cell
        rho = float(spearmanr(at, final).statistic) if np.ptp(at) > 0 else float("nan")
        rows.append({"epochs": r, "spearman": rho, "best_cell_rank": rank, "kept": kept,
                     "best_cell_kept": rank <= kept})  # fmt: skip
        r *= eta
    return pd.DataFrame(rows, columns=["epochs", "spearman", "best_cell_rank", "kept",
                                       "best_cell_kept"])  # fmt: skip


def halving_history(
    obj: CurveObjective, n: int, r_min: int, eta: int, seed: int, budget: int | None = None
) -> History:
    """Successive halving: ``n`` random configurations, the best ``1/eta`` continue ``eta``-fold.

    Args:
        obj: the curves.
        n: configurations of the first rung.
        r_min: their epochs.
        eta: the halving rate.
        seed: seed of the draws.
        budget: repeat brackets of fresh configurations until this many epochs are spent
            (None: one bracket).

    Returns:
        (epochs spent, full-budget score of the incumbent) after each rung.
    """
    rng, run = np.random.RandomState(seed), _Run(obj)
    while True:
        run.halving(_draw(obj, n, rng), r_min, eta)
        if budget is None or run.spent >= budget:
            return run.history


def hyperband_history(
    obj: CurveObjective, r_min: int, eta: int, seed: int, budget: int | None = None
) -> History:
    """Hyperband: successive-halving brackets from aggressive (many configurations, ``r_min``
    epochs) to none (few configurations at the full budget).

    With ``R = epochs / r_min`` and ``s_max = floor(log_eta R)``, bracket ``s`` starts
    ``ceil((s_max + 1) / (s + 1) * eta**s)`` configurations at ``epochs * eta**-s`` epochs
    (at least ``r_min``), for ``s = s_max, ..., 0`` (Li et al. 2018, Algorithm 1).

    Args:
        obj: the curves.
        r_min: the fewest epochs a configuration gets.
        eta: the halving rate.
        seed: seed of the draws.
        budget: repeat the whole set of brackets until this many epochs are spent (None: once).

    Returns:
        (epochs spent, full-budget score of the incumbent) after each rung of each bracket.
    """
    rng, run = np.random.RandomState(seed), _Run(obj)
    s_max = int(math.floor(math.log(obj.epochs / r_min, eta) + 1e-9))
    while True:
        for s in range(s_max, -1, -1):
            n = math.ceil((s_max + 1) / (s + 1) * eta**s)
            r = max(r_min, int(round(obj.epochs * eta ** (-s))))
            run.halving(_draw(obj, n, rng), r, eta)
        if budget is None or run.spent >= budget:
            return run.history


def full_budget_history(obj: CurveObjective, trials: int, seed: int) -> History:
    """Random search with every trial at the full budget, on the same curves.

    Args:
        obj: the curves.
        trials: configurations.
        seed: seed of the draws.

    Returns:
        (epochs spent, best full-budget score so far) after each trial.
    """
    run = _Run(obj)
    for t in run.new(_draw(obj, trials, np.random.RandomState(seed))):
        run.rung([t], obj.epochs)
    return run.history


def epochs_to_target(history: History, target: float) -> int | None:
    """Epochs spent when the incumbent first reaches ``target`` (None: never)."""
    return next((spent for spent, q in history if q >= target), None)


def epochs_table(histories: Mapping[str, Sequence[History]], target: float) -> pd.DataFrame:
    """Epochs each method spent until its incumbent was within reach of the target, over seeds.

    Args:
        histories: method -> one history per seed.
        target: the score to reach.

    Returns:
        One row per method: seeds, seeds that reached, mean and sd of the epochs to the target
        (over the seeds that reached it), the mean final quality and the epochs spent in all.
    """
    rows = []
    for name, runs in histories.items():
        hits = [epochs_to_target(h, target) for h in runs]
        got = [h for h in hits if h is not None]
        rows.append({
            "method": name, "seeds": len(runs), "reached": len(got),
            "mean_epochs": float(np.mean(got)) if got else math.nan,
            "sd_epochs": float(np.std(got, ddof=1)) if len(got) > 1 else math.nan,
            "final_quality": float(np.mean([h[-1][1] for h in runs])),
            "epochs_spent": float(np.mean([h[-1][0] for h in runs])),
        })  # fmt: skip
    return pd.DataFrame(rows).set_index("method")


def curves_at_budget(
    histories: Mapping[str, Sequence[History]], budgets: Sequence[int]
) -> pd.DataFrame:
    """Quality of each method's incumbent at each epoch budget, mean and range over seeds.

    Args:
        histories: method -> one history per seed.
        budgets: epochs spent at which to read each history (its last point at or below).

    Returns:
        Long rows: method, epochs, mean, low, high (NaN before a method's first point).
    """
    rows = []
    for name, runs in histories.items():
        for b in budgets:
            vals = [([q for s, q in h if s <= b] or [math.nan])[-1] for h in runs]
            vals = [v for v in vals if not math.isnan(v)]
            rows.append({
                "method": name, "epochs": b,
                "mean": float(np.mean(vals)) if vals else math.nan,
                "low": float(np.min(vals)) if vals else math.nan,
                "high": float(np.max(vals)) if vals else math.nan,
            })  # fmt: skip
    return pd.DataFrame(rows)


def plot_epochs(
    histories: Mapping[str, Sequence[History]], target: float, budget: int, title: str = ""
) -> Any:
    """The incumbent's full-budget score against epochs spent: mean over seeds, min-max band.

    Args:
        histories: method -> one history per seed.
        target: drawn as a dashed line.
        budget: the largest number of epochs on the axis.
        title: the title.

    Returns:
        The matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    budgets = np.unique(np.linspace(1, budget, 200).astype(int))
    at = curves_at_budget(histories, budgets)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, part in at.groupby("method", sort=False):
        ax.plot(part["epochs"], part["mean"], label=name)
        ax.fill_between(part["epochs"], part["low"], part["high"], alpha=0.15)
    ax.axhline(target, color="grey", ls="--", lw=1, label="target")
    ax.set(xlabel="epochs spent (per fold)", ylabel="full-budget CV accuracy of the incumbent",
           xscale="log", title=title)  # fmt: skip
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
