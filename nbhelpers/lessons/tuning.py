"""The facts of one run of notebooks 01-03, as small tables their discussions refer to by name,
and the lesson-only tables and plots of those notebooks.

Each ``*_summary`` function takes tables the notebook already has and returns one row per fact:
the index is the fact's name, ``value`` its value in this run (floats to four significant
digits), ``context`` its unit and what it counts. The discussion is markdown that explains what
either outcome of a fact means; the numbers stay in the table.

Lesson-only: ``plot_grid_cost`` (01, the curse of dimensionality), ``shifted_grids`` (02, the same
grid placed at every offset) and ``plot_surrogate`` (03, a GP surrogate and its expected
improvement on a 1-D slice).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from nbhelpers.measure.facts import fact_table
from nbhelpers.techniques.hpo.comparison import Histories, LookupObjective


def facts_of(rows: list[tuple[str, Any, str]]) -> pd.DataFrame:
    """``nbhelpers.measure.facts.fact_table`` with values to four significant digits."""
    return fact_table(rows, digits=4)


def target_cells(obj: LookupObjective, target: float) -> list[tuple[str, Any, str]]:
    """Facts on how large the good region is: cells of the exhaustive grid that reach ``target``.

    Args:
        obj: the lookup objective (the exhaustive grid).
        target: the score to reach.

    Returns:
        Rows for ``fact_table``: the count, their share, and 1 / share.
    """
    within = int((obj.scores >= target).sum())
    share = within / obj.size
    return [
        ("cells within the target", within, f"of {obj.size} cells of the exhaustive grid"),
        (
            "share of cells within the target",
            share,
            "what one draw spread evenly over the cells hits",
        ),
        (
            "expected trials at that share",
            1 / share if share else math.inf,
            "1 / share: mean draws until the first hit",
        ),
    ]


def grid_summary(
    results: pd.DataFrame,
    test_accuracy: float,
    importance: pd.Series,
    seconds_per_trial: float,
    folds: int,
) -> pd.DataFrame:
    """The facts of a grid search (notebook 01).

    Args:
        results: the search's ``results_table`` (trial order).
        test_accuracy: the refit winner's accuracy on the test split.
        importance: {hyperparameter: range of the best mean CV accuracy over its values}.
        seconds_per_trial: measured wall time per configuration.
        folds: cross-validation folds.

    Returns:
        The fact table.
    """
    order = results.sort_values("mean_cv", ascending=False, kind="stable")
    best, std = float(order["mean_cv"].iloc[0]), float(order["std_cv"].iloc[0])
    gap = best - float(order["mean_cv"].iloc[1]) if len(order) > 1 else math.nan
    top, low = importance.idxmax(), importance.idxmin()
    n = len(results)
    return facts_of(
        [
            ("configurations", n, f"trials, each cross-validated in {folds} folds"),
            ("fits", n * folds + 1, f"{folds} per trial, plus the refit of the winner"),
            ("winner's CV accuracy", best, "mean over the folds"),
            ("winner's fold std", 100 * std, "points"),
            ("gap to the runner-up", 100 * gap, "points of mean CV accuracy"),
            (
                "tied with the winner",
                int((results["mean_cv"] >= best - std).sum()),
                "within one fold std of the winner, itself too",
            ),
            (
                "test minus CV accuracy",
                100 * (test_accuracy - best),
                "points: the refit's test accuracy minus CV mean",
            ),
            ("most important", top, "hyperparameter with the largest range"),
            ("range of the most important", 100 * float(importance[top]), "points"),
            ("least important", low, "hyperparameter with the smallest range"),
            ("range of the least important", 100 * float(importance[low]), "points"),
            (
                "values of the most important",
                int(results[top].nunique()),
                f"distinct values in {n} trials",
            ),
            (
                "seconds per trial",
                seconds_per_trial,
                f"measured: {folds} fits on the tuning subset",
            ),
            (
                "a grid of 10^6 trials",
                1e6 * seconds_per_trial / 86400,
                "days at this cost: 6 hyperparameters x 10 values",
            ),
        ]
    )


def random_summary(
    obj: LookupObjective,
    target: float,
    grid_runs: Sequence[Sequence[float]],
    random_runs: Sequence[Sequence[float]],
    placements: pd.DataFrame,
    ttt: pd.DataFrame,
    spread: pd.Series,
    met: bool,
    test: Mapping[str, Any] | None = None,
    distinct: Mapping[str, float] | None = None,
    shares: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """The facts of the random-against-grid comparison (notebook 02).

    Args:
        obj: the lookup objective (the exhaustive grid).
        target: the score "matching the grid" means.
        grid_runs: the equal-budget grid's scores per seed, in trial order.
        random_runs: random search's scores per seed at the same budget.
        placements: ``shifted_grids`` of the same grid.
        ttt: ``trials_to_target_table`` with a ``random`` row (and its limit).
        spread: {important, unimportant hyperparameter: score range along it}.
        met: whether the notebook's target is met.
        test: ``stats.seeds_paired_difference`` of the two winners' test hits (grid as A, random
            as B), or None.
        distinct: {"grid", "random": mean distinct values of the important hyperparameter
            tried}, or None.
        shares: ``hpo.variance_shares`` of the table (index: the axes and "interactions"), or None.

    Returns:
        The fact table.
    """
    (imp, r_imp), (unimp, r_unimp) = list(spread.items())
    extra: list[tuple[str, Any, str]] = []
    if shares is not None:
        extra += [
            (f"variance explained by {k}" if k != "interactions" else "variance in interactions",
             float(v), "share of the table's score variance (analysis of variance)")
            for k, v in shares["share"].items()
        ]  # fmt: skip
    if distinct is not None:
        extra += [
            (
                f"{m}: distinct {imp} values tried",
                float(distinct[m]),
                "table cells, mean over seeds",
            )
            for m in ("grid", "random")
        ]
    if test is not None:
        extra += [
            (
                "test: random winner minus grid winner",
                test["difference"],
                "points, seed mean, refitted winners, same images",
            ),
            ("test: image interval, low", test["low"], "points, 95%, bootstrap over images"),
            ("test: image interval, high", test["high"], "points, 95%, seeds held fixed"),
            ("test: verdict over images", test["verdict"], "random against grid, these seeds"),
            (
                "test: verdict over seeds",
                test["seed_verdict"],
                f"Student-t over {test['seeds']} seeds' differences",
            ),
        ]
    grid_best = float(np.mean([max(r) for r in grid_runs]))
    random_best = float(np.mean([max(r) for r in random_runs]))
    row, seeds = ttt.loc["random"], len(random_runs)
    return facts_of(
        [
            *target_cells(obj, target),
            (f"range along {imp}", 100 * r_imp, "points: best score per value, max minus min"),
            (f"range along {unimp}", 100 * r_unimp, f"points, at the best {imp}"),
            ("equal budget", len(random_runs[0]), "trials per method and seed"),
            ("grid: best after the budget", grid_best, "mean CV accuracy, mean over seeds"),
            ("random: best after the budget", random_best, "mean CV accuracy, mean over seeds"),
            ("grid minus random after the budget", 100 * (grid_best - random_best), "points"),
            (
                "grid contains the table's best cell",
                bool(np.isclose(grid_best, obj.best)),
                "its values happen to include a best-scoring cell",
            ),
            (
                "grid placements reaching the target",
                int(placements["reaches target"].sum()),
                f"of {len(placements)} equally spaced placements of the same grid",
            ),
            (
                "random seeds reaching the target in the budget",
                sum(max(r) >= target for r in random_runs),
                f"of {seeds} seeds",
            ),
            (
                "random: mean trials to the target",
                row["mean_trials"],
                "never reached: counted as budget + 1",
            ),
            ("random: median trials to the target", row["median_trials"], "trials"),
            ("random: worst seed", row["max_trials"], "trials"),
            (
                "random: seeds reaching the target",
                int(row["reached"]),
                f"of {seeds}, within {obj.size} trials",
            ),
            ("target: at most", row["limit"], "mean trials, a quarter of the exhaustive grid"),
            ("target met", bool(met), "all of >= 5 seeds reach it, mean within limit"),
            *extra,
        ]
    )


def bayes_summary(
    obj: LookupObjective,
    target: float,
    runs: Histories,
    ttt: pd.DataFrame,
    seconds: Mapping[str, float],
    results: pd.DataFrame,
    met: Mapping[str, bool],
    model: str,
    baseline: str = "random",
    early: pd.DataFrame | None = None,
    early_baseline: str = "random (full budget)",
    rungs: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """The facts of the Bayesian-optimization comparison (notebook 03).

    Args:
        obj: the lookup objective (the exhaustive grid).
        target: the score "matching the grid" means.
        runs: {method: scores per seed at the common budget}.
        ttt: ``trials_to_target_table`` with rows ``model`` and ``baseline``.
        seconds: {method: wall seconds per trial (proposal and look-up)}.
        results: the ``BayesSearchCV`` ``results_table``.
        met: {method: whether its target is met}.
        model: the model-based method compared, e.g. "GP (gp_minimize)".
        baseline: the method it is compared with.
        early: ``epochs_table`` of the methods that stop trials early, with an ``early_baseline``
            row, or None.
        early_baseline: the full-budget method the others are compared with.
        rungs: ``hpo.rung_ranking`` of the curves (how each rung ranks the grid), or None.

    Returns:
        The fact table.
    """
    m, b = ttt.loc[model], ttt.loc[baseline]
    winner = results.sort_values("mean_cv", ascending=False, kind="stable").iloc[0]
    margin = obj.best - target
    rows = [
        *target_cells(obj, target),
        (
            f"{model} needs fewer trials than {baseline}",
            bool(m["mean_trials"] < b["mean_trials"]),
            "mean trials to the target over seeds",
        ),
        (f"{model} minus {baseline}: mean trials", m["mean_trials"] - b["mean_trials"], "trials"),
        (
            f"{model} minus {baseline}: median trials",
            m["median_trials"] - b["median_trials"],
            "trials",
        ),
        (f"{model} minus {baseline}: worst seed", m["max_trials"] - b["max_trials"], "trials"),
    ]
    rows += [
        (
            f"{k}: best after the budget",
            float(np.mean([max(r) for r in v])),
            "mean CV accuracy, mean over seeds",
        )
        for k, v in runs.items()
    ]
    rows += [
        (f"{k}: seconds per trial", v, "proposing a point and looking it up")
        for k, v in seconds.items()
    ]
    rows += [
        (
            f"{k}: target met",
            bool(v),
            f"mean trials at most {ttt.loc[k, 'limit']:.4g}, every seed reached",
        )
        for k, v in met.items()
    ]
    rows += [
        ("BayesSearchCV winner's fold std", 100 * float(winner["std_cv"]), "points"),
        (
            "fold std above the target margin",
            bool(winner["std_cv"] > margin),
            f"the margin is {100 * margin:.4g} points",
        ),
    ]
    if early is not None:
        base = early.loc[early_baseline, "mean_epochs"]
        for k, e in early.iterrows():
            rows += [
                (f"{k}: seeds reaching the target", int(e["reached"]), f"of {int(e['seeds'])}"),
                (
                    f"{k}: mean epochs to the target",
                    e["mean_epochs"],
                    "over the seeds that reached",
                ),
                (f"{k}: final quality", e["final_quality"], "full-budget CV accuracy, seed mean"),
            ]
            if k != early_baseline:
                rows.append(
                    (f"{k}: epochs vs {early_baseline}", e["mean_epochs"] / base, "x, mean epochs")
                )
    if rungs is not None and len(rungs):
        first = rungs.iloc[0]
        rows += [
            (
                "first rung: rank correlation with the full budget",
                first["spearman"],
                f"Spearman over the grid's cells, epoch {int(first['epochs'])} against the last",
            ),
            (
                "first rung: rank of the full budget's best cell",
                int(first["best_cell_rank"]),
                f"of {obj.size}; a rung over the grid keeps {int(first['kept'])}",
            ),
            (
                "first rung keeps the full budget's best cell",
                bool(first["best_cell_kept"]),
                f"epoch {int(first['epochs'])}",
            ),
        ]
    return facts_of(rows)


# ---------------------------------------------------------------------------------------------
# Lesson-only tables and plots
# ---------------------------------------------------------------------------------------------


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
