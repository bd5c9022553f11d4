"""One leaderboard of every technique's recorded accuracy, bytes and latency (no torch needed).

Each technique notebook records ``comparison`` (a ``measure.compare`` table: its baseline and its
optimized models, measured side by side in one run) and ``comparison_baseline`` (the baseline's
row name). This module gathers those tables across notebooks into one table and one picture.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping
from typing import Any

import pandas as pd

COLUMNS = [
    "notebook",
    "model",
    "is_baseline",
    "accuracy",
    "accuracy_low",
    "accuracy_high",
    "accuracy_delta_points",
    "delta_low_points",
    "delta_high_points",
    "p_mcnemar",
    "verdict",
    "params",
    "nonzero",
    "bytes",
    "size_ratio",
    "latency_ms_b1",
    "latency_ms_b256",
    "speedup_b1",
    "speedup_b256",
]


def build(records_by_notebook: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """Gather every notebook's ``comparison`` into one leaderboard.

    Ratios (``accuracy_delta_points``, ``size_ratio``, ``speedup_*``) are those against the baseline
    measured in the same notebook run, so speed figures always compare models timed side by side.

    Args:
        records_by_notebook: notebook stem -> its recorded values.

    Returns:
        One row per (notebook, model) with the ``COLUMNS``; empty when nothing recorded a
        comparison.
    """
    frames = []
    for stem, rec in sorted(records_by_notebook.items()):
        rows = rec.get("comparison")
        if not rows:
            continue
        df = pd.DataFrame(rows)
        base = rec.get("comparison_baseline")
        if base not in set(df["model"]):
            raise ValueError(f"{stem}: comparison_baseline {base!r} is not a row of its comparison")
        df.insert(0, "notebook", stem)
        df["is_baseline"] = df["model"] == base
        frames.append(df.reindex(columns=COLUMNS))
    if not frames:
        return pd.DataFrame(columns=COLUMNS)
    return pd.concat(frames, ignore_index=True)


def pareto_front(df: pd.DataFrame, x: str = "bytes", y: str = "accuracy") -> pd.DataFrame:
    """The rows no other row beats on both axes (smaller ``x`` and higher ``y``), sorted by ``x``.

    Args:
        df: the points.
        x: column to minimise.
        y: column to maximise.

    Returns:
        The non-dominated rows.
    """
    rows = df.sort_values([x, y], ascending=[True, False])
    best = -float("inf")
    keep = []
    for idx, v in zip(rows.index, rows[y]):
        if v > best:
            keep.append(idx)
            best = v
    return rows.loc[keep]


def figure(board: pd.DataFrame, title: str = "", front: bool = True):
    """Accuracy against bytes on disk for every row of the leaderboard (latency as marker size).

    Args:
        board: the table from ``build``.
        title: the title (a default one when empty).
        front: draw the Pareto front (smaller and more accurate is better).

    Returns:
        The matplotlib Figure.
    """
    import matplotlib.pyplot as plt  # headless processes fall back to the Agg backend by themselves
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(9, 5.5))
    data = board.assign(
        label=board["notebook"].str.replace(r"^\d+_", "", regex=True) + ": " + board["model"]
    )
    data["latency b256 (ms)"] = data["latency_ms_b256"].astype(float)
    sns.scatterplot(
        data=data,
        x="bytes",
        y="accuracy",
        hue="notebook",
        style="is_baseline",
        size="latency b256 (ms)",
        sizes=(30, 300),
        ax=ax,
    )
    _interval_bars(ax, data)
    pf = pareto_front(data) if len(data) > 1 else data
    named = data.loc[data.index.isin(pf.index) | data["is_baseline"].astype(bool)]
    for _, r in named.drop_duplicates(
        subset=["bytes", "accuracy"]
    ).iterrows():  # the rest: see the table
        ax.annotate(
            str(r["model"]),
            (r["bytes"], r["accuracy"]),
            fontsize=7,
            xytext=(4, 3),
            textcoords="offset points",
        )
    if front and len(data) > 1:
        ax.step(
            pf["bytes"],
            pf["accuracy"],
            where="post",
            color="grey",
            lw=1,
            ls="--",
            label="Pareto front",
        )
    ax.set_xscale("log")
    ax.set_xlabel("bytes on disk (log)")
    ax.set_ylabel("test accuracy (bars: 95% interval)")
    ax.set_title(
        title
        or "Every technique against its baseline: accuracy vs size (marker: latency at batch 256)"
    )
    ax.legend(fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
    fig.tight_layout()
    return fig


def _interval_bars(ax, data: pd.DataFrame) -> None:
    """Draw each accuracy's 95% Wilson interval as a grey vertical bar at its bytes."""
    ci = data.dropna(subset=["accuracy_low", "accuracy_high"])
    if not len(ci):
        return
    acc = ci["accuracy"].astype(float)
    ax.errorbar(
        ci["bytes"].astype(float),
        acc,
        fmt="none",
        ecolor="grey",
        elinewidth=1,
        alpha=0.7,
        yerr=[acc - ci["accuracy_low"].astype(float), ci["accuracy_high"].astype(float) - acc],
    )


def html_section(board: pd.DataFrame) -> str:
    """The leaderboard as an HTML section: the picture (embedded PNG) and the table.

    Args:
        board: the table from ``build``.

    Returns:
        An HTML fragment; a short note when the board is empty.
    """
    if board.empty:
        return "<h2>Leaderboard</h2><p>No notebook has recorded a comparison yet.</p>"
    import matplotlib.pyplot as plt

    fig = figure(board)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    img = base64.b64encode(buf.getvalue()).decode()
    table = (
        readable(board)
        .drop(columns=["params", "ms b1", "ms b256"])
        .to_html(index=False, escape=True, classes="board", border=0)
    )
    return (
        "<h2>Leaderboard</h2><p>Each notebook's optimized models against the baseline it measured "
        "in the same run; ratios are against that baseline (size_ratio: times smaller; speedup: "
        "times faster). The accuracy change has its paired 95% interval over the same test images "
        'and McNemar\'s exact p; "within noise" means the interval contains zero. '
        "Labels name the baselines and the Pareto front; every point is a row of the table.</p>"
        f'<img alt="leaderboard" style="max-width:100%" src="data:image/png;base64,{img}"/>'
        f'<div style="overflow-x:auto">{table}</div>'
    )


def headline(records: Mapping[str, Any]) -> str:
    """One line that says what a notebook found: targets met and its most compressed model.

    Args:
        records: the notebook's recorded values.

    Returns:
        e.g. "3 of 4 targets met; int8 dynamic: 3.9x smaller, 1.4x faster at batch 256, accuracy
        -0.12 points [-0.31, +0.07] (within noise)"; without either, its best hyperparameters
        and their test accuracy (``best_params``, ``test_accuracy``); "" when it recorded none.
    """
    parts = []
    targets = [
        t for k, v in records.items() if k == "targets" or k.startswith("targets_") for t in v or []
    ]
    if targets:
        parts.append(f"{sum(bool(t.get('met')) for t in targets)} of {len(targets)} targets met")
    rows = records.get("comparison")
    if rows:
        df = pd.DataFrame(rows)
        df = df[df["model"] != records.get("comparison_baseline")]
        if len(df) and "size_ratio" in df:
            r = df.loc[df["size_ratio"].astype(float).idxmax()]
            text = f"{r['model']}: {float(r['size_ratio']):.1f}x smaller"
            if pd.notna(r.get("speedup_b256")):
                text += f", {float(r['speedup_b256']):.2f}x as fast at batch 256"
            change = format_interval(
                r.get("accuracy_delta_points", float("nan")),
                r.get("delta_low_points", float("nan")),
                r.get("delta_high_points", float("nan")),
                "{:+.2f}",
            )
            if change:
                text += f", accuracy {change} points" + (
                    f" ({r['verdict']})" if pd.notna(r.get("verdict")) else ""
                )
            parts.append(text)
    best, acc = records.get("best_params"), records.get("test_accuracy")
    if not parts and isinstance(best, Mapping) and isinstance(acc, (int, float)):
        setting = ", ".join(
            f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in best.items()
        )
        parts.append(f"best setting {setting}: test accuracy {acc:.4f}")
    return "; ".join(parts)


def format_interval(v: float, lo: float, hi: float, fmt: str) -> str:
    """``fmt`` of v with " [lo, hi]" when both ends are known; "" when v is missing."""
    if v is None or pd.isna(v):
        return ""
    text = fmt.format(v)
    return (
        text
        if lo is None or hi is None or pd.isna(lo) or pd.isna(hi)
        else f"{text} [{fmt.format(lo)}, {fmt.format(hi)}]"
    )


def readable(board: pd.DataFrame) -> pd.DataFrame:
    """The leaderboard formatted for people: intervals beside their values, units, rounding.

    Args:
        board: the table from ``build``.

    Returns:
        String columns: notebook, model, accuracy [95% CI], change (points) [95% CI], verdict,
        McNemar p, params, non-zero, bytes, times smaller, latency and speed-up at batch 1 and 256.
    """
    b = board.reindex(columns=COLUMNS)
    num = lambda col, f: [("" if pd.isna(v) else f.format(v)) for v in b[col]]  # noqa: E731
    return pd.DataFrame(
        {
            "notebook": b["notebook"],
            "model": b["model"],
            "accuracy [95% CI]": [
                format_interval(v, lo, hi, "{:.4f}")
                for v, lo, hi in zip(b["accuracy"], b["accuracy_low"], b["accuracy_high"])
            ],
            "change, points [95% CI]": [
                "" if base else format_interval(v, lo, hi, "{:+.2f}")
                for v, lo, hi, base in zip(
                    b["accuracy_delta_points"],
                    b["delta_low_points"],
                    b["delta_high_points"],
                    b["is_baseline"],
                )
            ],
            "verdict": b["verdict"].fillna(""),
            "McNemar p": num("p_mcnemar", "{:.3g}"),
            "params": num("params", "{:,.0f}"),
            "non-zero": num("nonzero", "{:,.0f}"),
            "bytes": num("bytes", "{:,.0f}"),
            "times smaller": num("size_ratio", "{:.2f}x"),
            "ms b1": num("latency_ms_b1", "{:.3f}"),
            "speed-up b1": num("speedup_b1", "{:.2f}x"),
            "ms b256": num("latency_ms_b256", "{:.3f}"),
            "speed-up b256": num("speedup_b256", "{:.2f}x"),
        }
    )


def safe_html_section(records_by_notebook: Mapping[str, Mapping[str, Any]]) -> str:
    """``html_section(build(...))`` that reports a malformed comparison instead of raising.

    Args:
        records_by_notebook: notebook stem -> its recorded values.

    Returns:
        An HTML fragment.
    """
    try:
        return html_section(build(records_by_notebook))
    except Exception as exc:  # noqa: BLE001 - the index must still be written
        reason = html.escape(str(exc))
        return f'<h2>Leaderboard</h2><p class="err">could not build the leaderboard: {reason}</p>'
