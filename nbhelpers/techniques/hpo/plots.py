"""Plots of a search: best-so-far curves of several methods over seeds, and a heatmap of a score
over two hyperparameters.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from nbhelpers.techniques.hpo.comparison import Histories, curves_frame


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
