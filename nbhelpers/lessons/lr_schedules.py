"""Notebook 09's lesson: the schedules compared over seeds, and the facts its discussion names.

``final_epoch`` reads what one run ends with, ``per_schedule`` and ``versus_constant`` aggregate
the runs per schedule against a constant rate (paired intervals over seeds), ``scaling_table``
holds the linear scaling rule's runs, ``trace_shape`` says in words what a learning-rate trace
does, and ``summary`` is the facts table. The schedules themselves are
``nbhelpers.techniques.schedules``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from nbhelpers.core.plots import learning_curves
from nbhelpers.measure.facts import fact_table

#: The shapes ``trace_shape`` tells apart.
SHAPES = ("constant", "decays only", "rises only", "rises, then decays", "decays, then rises again")


def trace_shape(trace: Sequence[float], rel_tol: float = 1e-9) -> str:
    """What a learning-rate trace does over training: only a decay, or also a rise.

    Args:
        trace: the learning rate of every step (``lr_sequence``).
        rel_tol: changes smaller than this share of the largest rate count as none.

    Returns:
        One of ``SHAPES``: "constant"; "decays only" (never rises: step, exponential, plateau);
        "rises only"; "rises, then decays" (every rise before every fall: warm-up, one-cycle);
        "decays, then rises again" (a rise after a fall: warm restarts).
    """
    lr = np.asarray(trace, dtype=float)
    step = np.diff(lr)
    tol = rel_tol * float(np.abs(lr).max()) if len(lr) else 0.0
    rises, falls = np.flatnonzero(step > tol), np.flatnonzero(step < -tol)
    if not len(rises):
        return SHAPES[1] if len(falls) else SHAPES[0]
    if not len(falls):
        return SHAPES[2]
    return SHAPES[3] if rises.max() < falls.min() else SHAPES[4]


def final_epoch(history: pd.DataFrame) -> dict[str, float]:
    """What one training run ends with: validation accuracy, learning rate, training loss and time.

    Args:
        history: a ``train.fit`` history (one row per epoch).

    Returns:
        {"val_accuracy", "final_lr", "train_loss", "train_accuracy"} of the last epoch and
        "train_seconds" summed over the epochs.
    """
    last = history.iloc[-1]
    return {
        "val_accuracy": float(last["val_accuracy"]),
        "final_lr": float(last["lr"]),
        "train_loss": float(last["train_loss"]),
        "train_accuracy": float(last["train_accuracy"]),
        "train_seconds": float(history["epoch_seconds"].sum()),
    }


def per_schedule(results: pd.DataFrame) -> pd.DataFrame:
    """Runs aggregated per schedule (in order of appearance), with the gain over "constant".

    Args:
        results: one row per run: schedule, seed, test_accuracy and the ``final_epoch`` values.

    Returns:
        One row per schedule: test mean, sd, min, max; validation mean; training loss, accuracy
        and seconds (means); ``seeds`` (how many); ``gain_vs_constant_points``, 100 x (test mean
        - constant's).
    """
    table = results.groupby("schedule", sort=False).agg(
        test_mean=("test_accuracy", "mean"),
        test_sd=("test_accuracy", "std"),
        test_min=("test_accuracy", "min"),
        test_max=("test_accuracy", "max"),
        val_mean=("val_accuracy", "mean"),
        train_loss=("train_loss", "mean"),
        train_accuracy=("train_accuracy", "mean"),
        train_seconds=("train_seconds", "mean"),
        seeds=("seed", "nunique"),
    )
    constant = table.loc["constant", "test_mean"]
    table["gain_vs_constant_points"] = 100 * (table["test_mean"] - constant)
    return table


def versus_constant(
    results: pd.DataFrame, correct: Mapping[tuple[str, int], object], seeds: Sequence[int]
) -> pd.DataFrame:
    """``per_schedule`` plus each schedule's gain over "constant" with its paired interval.

    Args:
        results: one row per run (schedule, seed, test_accuracy, the ``final_epoch`` values);
            empty for no runs.
        correct: (schedule, seed) -> right or wrong on each test image.
        seeds: the seeds, in the same order for every schedule.

    Returns:
        One row per schedule: ``per_schedule``'s columns and ``gain_low``, ``gain_high`` (points,
        ``stats.seeds_paired_difference`` against "constant") and ``verdict``; empty when no run.
    """
    from nbhelpers.measure.stats import seeds_paired_difference

    if results.empty:
        return pd.DataFrame()
    table = per_schedule(results)
    base = np.stack([np.asarray(correct["constant", s], bool) for s in seeds])
    for name in table.index:
        runs = np.stack([np.asarray(correct[name, s], bool) for s in seeds])
        d = seeds_paired_difference(base, runs) if name != "constant" else {}
        table.loc[name, "gain_low"] = d.get("low", np.nan)
        table.loc[name, "gain_high"] = d.get("high", np.nan)
        table.loc[name, "verdict"] = d.get("verdict", "reference")
    return table


def scaling_table(
    results: pd.DataFrame,
    correct: Mapping[tuple[tuple[int, str], int], object],
    reference: Mapping[int, object],
    seeds: Sequence[int],
) -> pd.DataFrame:
    """The linear scaling rule's runs against the small-batch reference, over seeds.

    Args:
        results: one row per run: k, batch, rule, lr, seed, test_accuracy (empty: no runs).
        correct: ((k, rule), seed) -> right or wrong on each test image.
        reference: seed -> right or wrong on each test image of the reference run (the same
            schedule at the small batch); empty: no comparison.
        seeds: the seeds, in the same order everywhere.

    Returns:
        One row per (k, rule): batch, lr, seeds, test mean and sd, and against the reference the
        mean difference in points with its paired 95% interval and verdict (NaN without one).
    """
    from nbhelpers.measure.stats import seeds_paired_difference

    if results.empty:
        return pd.DataFrame()
    table = results.groupby(["k", "rule"], sort=False).agg(
        batch=("batch", "first"),
        lr=("lr", "first"),
        seeds=("seed", "nunique"),
        test_mean=("test_accuracy", "mean"),
        test_sd=("test_accuracy", "std"),
    )
    ref = np.stack([np.asarray(reference[s], bool) for s in seeds]) if reference else None
    for key in table.index:
        d = {}
        if ref is not None:
            runs = np.stack([np.asarray(correct[key, s], bool) for s in seeds])
            d = seeds_paired_difference(ref, runs)
        table.loc[key, "vs_reference_points"] = d.get("difference", np.nan)
        table.loc[key, "low"] = d.get("low", np.nan)
        table.loc[key, "high"] = d.get("high", np.nan)
        table.loc[key, "verdict"] = d.get("verdict", "no reference")
    return table


def plot_learning_curves(
    curves: Mapping[str, pd.DataFrame], accuracy_floor: float = 0.85
) -> Figure:
    """Training and validation curves per schedule: loss on a log scale, accuracy zoomed at the top.

    Args:
        curves: schedule -> the histories of all its seeds, concatenated.
        accuracy_floor: bottom of the accuracy axis, where the schedules differ.

    Returns:
        The figure (legend outside, right).
    """
    fig = learning_curves(curves)
    fig.axes[0].set_yscale("log")
    fig.axes[1].set_ylim(accuracy_floor, 1.001)
    fig.axes[0].get_legend().remove()
    fig.axes[1].legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=8)
    fig.tight_layout()
    return fig


def plot_accuracy_spread(results: pd.DataFrame, column: str = "test_accuracy") -> Figure:
    """Final accuracy of every run (one dot per seed) with the mean and its spread per schedule.

    Args:
        results: one row per run with columns ``schedule`` and ``column``.
        column: the accuracy column.

    Returns:
        The figure.
    """
    fig, ax = plt.subplots(figsize=(8, 3.8))
    df = results.assign(percent=100 * results[column])
    sns.stripplot(data=df, x="schedule", y="percent", ax=ax, alpha=0.6, color="grey")
    sns.pointplot(
        data=df,
        x="schedule",
        y="percent",
        ax=ax,
        errorbar="sd",
        linestyle="none",
        color="C3",
        marker="D",
        capsize=0.2,
    )
    ax.set(
        ylabel=f"{column.replace('_', ' ')} (%)",
        xlabel="",
        title="Final accuracy per seed, mean ± sd",
    )
    fig.tight_layout()
    return fig


def _epochs_before_cut(trace: Sequence[float], base_lr: float, steps_per_epoch: int) -> int:
    """Whole epochs a trace spends at ``base_lr`` or above before its first decrease below it."""
    below = np.flatnonzero(np.asarray(trace) < base_lr * (1 - 1e-9))
    return int(below[0] // steps_per_epoch) if len(below) else len(trace) // steps_per_epoch


def summary(
    table: pd.DataFrame,
    best: str,
    half: pd.DataFrame,
    sweep: pd.DataFrame,
    suggestion: Mapping[str, float],
    traces: Mapping[str, Sequence[float]],
    steps_per_epoch: int,
    base_lr: float,
    test_size: int,
    target_points: float = 1.0,
    adamw: pd.DataFrame | None = None,
    scaling: pd.DataFrame | None = None,
    sgd: pd.DataFrame | None = None,
    headroom: Mapping[str, float] | None = None,
) -> pd.DataFrame:
    """The facts of one run of notebook 09, for its discussion to refer to by name.

    Args:
        table: ``per_schedule`` of the full-budget runs.
        best: the schedule chosen on validation accuracy.
        half: half-budget runs: schedule, seed, epochs, test_accuracy.
        sweep: constant-rate runs aggregated per learning rate (index lr, column ``mean``).
        suggestion: ``suggest_max_lr`` of the range test.
        traces: schedule -> learning rate of every step (``lr_sequence``).
        steps_per_epoch: batches per epoch.
        base_lr: the constant rate (``BASE_LR``).
        test_size: test images (one error is 100 / test_size points).
        target_points: the equal-budget target, in points.
        adamw: ``versus_constant`` of the AdamW runs (None or empty: no rows).
        scaling: ``scaling_table`` of the linear-scaling runs (None or empty: no rows).
        sgd: ``versus_constant`` of the SGD runs of ``table`` (None or empty: no rows).
        headroom: the best schedule at ``factor`` times the epochs minus constant at the equal
            budget, in points (``difference``, ``low``, ``high``, ``factor``; None or a NaN
            difference: no rows).

    Returns:
        One row per fact: value and context. Besides the SGD comparison: how many rules only
        decay and how many raise the rate at some point (``trace_shape``), each SGD and AdamW
        schedule's gain over the same optimizer at a constant rate, and each larger batch against
        the small-batch reference, with paired intervals and verdicts.
    """
    gain = float(table.loc[best, "gain_vs_constant_points"])
    constant = float(table.loc["constant", "test_mean"])
    half_best = float(half.loc[half["schedule"] == best, "test_accuracy"].astype(float).mean())
    margin = 100 * (half_best - constant)
    sds = 100 * table.loc[[best, "constant"], "test_sd"].astype(float)
    peak, means = suggestion["max_lr"], sweep["mean"]
    at_peak = means[np.isclose(means.index.to_numpy(dtype=float), peak)]
    rows = [
        ("best schedule on validation", best, "highest mean validation accuracy; test not used"),
        (
            "gain over constant at equal budget",
            gain,
            f"points of mean test accuracy; target at least {target_points:+g}",
        ),
        ("equal-budget target met", bool(gain >= target_points), "either target suffices"),
        ("best at half budget minus constant at full", margin, "points; target at least 0"),
        ("half-budget target met", bool(margin >= 0), "either target suffices"),
        ("seed sd of the best schedule", float(sds.iloc[0]), "points of test accuracy"),
        ("seed sd of constant", float(sds.iloc[1]), "points of test accuracy"),
        ("gain beyond the seed spread", bool(gain > sds.max()), "gain larger than both seed sds"),
        ("one test error", 100 / test_size, f"points ({test_size} test images)"),
        ("range test: LR of least loss", suggestion["lr_min_loss"], "learning rate"),
        ("one-cycle peak / BASE_LR", peak / base_lr, "times"),
        (
            "constant at the peak minus constant at BASE_LR",
            100 * (float(at_peak.iloc[0]) - constant) if len(at_peak) else math.nan,
            "points of mean test accuracy (NaN: not trained)",
        ),
        ("best constant LR tried", float(means.idxmax()), f"of {len(means)} constant rates"),
        (
            "best minus the best constant",
            100 * (float(table.loc[best, "test_mean"]) - means.max()),
            "points of mean test accuracy",
        ),
        (
            "lowest final training accuracy",
            100 * float(table["train_accuracy"].min()),
            "% over schedules, mean over seeds",
        ),
        ("final training loss, lowest", float(table["train_loss"].min()), "mean over seeds"),
        ("final training loss, highest", float(table["train_loss"].max()), "mean over seeds"),
    ]
    rows += [
        (f"mean LR of {n} / BASE_LR", float(np.mean(traces[n])) / base_lr, "over all steps")
        for n in ("onecycle", "exponential")
        if n in traces
    ]
    if "plateau" in traces:
        rows.append(
            (
                "plateau: epochs before the first cut",
                _epochs_before_cut(traces["plateau"], base_lr, steps_per_epoch),
                "at BASE_LR, first seed (all epochs: never cut)",
            )
        )
    shapes = {n: trace_shape(t) for n, t in traces.items() if n != "constant"}
    decay = [n for n, sh in shapes.items() if sh == "decays only"]
    rise = [n for n, sh in shapes.items() if sh not in ("constant", "decays only")]
    rows += [
        ("rules that only decay", len(decay), ", ".join(decay) or "none"),
        ("rules that raise the rate at some point", len(rise), ", ".join(rise) or "none"),
    ]
    rows += _headroom_rows(headroom, target_points)
    rows += _versus_rows(sgd, "SGD") + _versus_rows(adamw, "AdamW")
    return fact_table(rows + _scaling_rows(scaling), digits=4)


def _headroom_rows(headroom: Mapping[str, float] | None, target_points: float) -> list:
    """Fact rows of the headroom run: its gain over constant and whether the target is reachable
    (the interval's high end at or above the target)."""
    if not headroom or not math.isfinite(float(headroom["difference"])):
        return []
    k, high = headroom["factor"], float(headroom["high"])
    return [
        (
            "headroom: best at k x EPOCHS minus constant",
            float(headroom["difference"]),
            f"points [{headroom['low']:.3g}, {high:.3g}], k = {k}",
        ),
        (
            "target reachable with more epochs",
            bool(high >= target_points),
            f"the interval's high end >= {target_points:g} points at {k} x EPOCHS",
        ),
    ]


def _versus_rows(table: pd.DataFrame | None, optimizer: str) -> list:
    """Fact rows of a ``versus_constant`` table: each schedule's gain with interval and verdict."""
    if table is None or table.empty:
        return []
    return [
        (
            f"{optimizer} {name} minus {optimizer} constant",
            float(r["gain_vs_constant_points"]),
            f"points [{r['gain_low']:.3g}, {r['gain_high']:.3g}]: {r['verdict']}",
        )
        for name, r in table.drop(index="constant", errors="ignore").iterrows()
    ]


def _scaling_rows(scaling: pd.DataFrame | None) -> list:
    """Fact rows of a ``scaling_table``: each larger batch against the reference, with interval."""
    rows = []
    if scaling is not None and not scaling.empty:
        for (k, rule), r in scaling.iterrows():
            rows.append(
                (
                    f"batch x{k}, {rule}: minus the small batch",
                    float(r["vs_reference_points"]),
                    f"points [{r['low']:.3g}, {r['high']:.3g}]: {r['verdict']}",
                )
            )
    return rows
