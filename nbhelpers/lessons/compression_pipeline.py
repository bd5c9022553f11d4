"""Notebook 10's lesson: the pipeline beside the other notebooks' models, the search's front beside
the hand-built artifact, and the facts its discussion names.

``executed_records`` reads the executed notebooks 04-07, ``pareto_board`` puts their comparisons
and the pipeline's stages on one leaderboard, ``published_frontier`` / ``record_targets`` /
``record_facts`` set the compression record against the published figures, ``front_table`` /
``front_target`` / ``plot_front`` set the multi-objective search against the hand-built final
artifact, and ``summary`` is the facts table. The pipeline itself is
``nbhelpers.techniques.compression``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from nbhelpers.measure.facts import fact_table


def executed_records(
    reports_dir: str | Path, pattern: str = "0[4-7]_*.ipynb"
) -> dict[str, dict[str, Any]]:
    """The records of the executed notebooks in a folder that recorded a ``comparison``.

    Args:
        reports_dir: folder of executed notebooks (a missing folder gives none).
        pattern: glob of the notebooks to read.

    Returns:
        Notebook stem -> its records (``nbhelpers.core.record.read``), in name order.
    """
    from nbhelpers.core.record import read

    out = {}
    for path in sorted(Path(reports_dir).glob(pattern)):
        recs = read(path)
        if recs.get("comparison"):
            out[path.stem] = recs
    return out


def pareto_board(
    others: Mapping[str, Mapping[str, Any]], stages: pd.DataFrame, notebook: str, baseline: str
) -> pd.DataFrame:
    """One leaderboard of other notebooks' comparisons and this pipeline's stages.

    Args:
        others: notebook stem -> records (``executed_records``), each with ``comparison`` and
            ``comparison_baseline``.
        stages: the pipeline's stage table (index: stage name).
        notebook: this notebook's stem, for its rows.
        baseline: the pipeline's baseline stage.

    Returns:
        ``leaderboard.COLUMNS`` rows that have both an accuracy and bytes, others first.
    """
    from nbhelpers.measure import leaderboard

    own = stages.rename_axis("model").reset_index()
    own = own.assign(notebook=notebook, is_baseline=own["model"] == baseline)
    parts = [leaderboard.build(others), own.reindex(columns=leaderboard.COLUMNS)]
    board = pd.concat([p for p in parts if len(p)], ignore_index=True)
    return board[board["accuracy"].notna() & board["bytes"].notna()].reset_index(drop=True)


def single_technique_points(board: pd.DataFrame, notebook: str) -> pd.DataFrame:
    """The optimized models of the other notebooks on a ``pareto_board`` (baselines excluded)."""
    return board[(board["notebook"] != notebook) & ~board["is_baseline"].astype(bool)]


def front_table(study: Any, final: Mapping[str, Any]) -> pd.DataFrame:
    """The Pareto front of a two-objective Optuna study beside the hand-built final artifact.

    Args:
        study: an Optuna study of (validation accuracy: maximise, bytes: minimise), each trial
            with the user attribute "test_accuracy".
        final: the hand-built pipeline's final row (``accuracy``, ``bytes``).

    Returns:
        One row per front trial, smallest first: its knobs, validation and test accuracy, bytes,
        and whether it is at least as small and at least as accurate on test as the final
        artifact (``dominates_final``).
    """
    rows = [
        {
            "trial": t.number,
            **t.params,
            "val_accuracy": t.values[0],
            "bytes": int(t.values[1]),
            "test_accuracy": t.user_attrs["test_accuracy"],
        }  # fmt: skip
        for t in study.best_trials
    ]
    out = pd.DataFrame(rows).sort_values("bytes").reset_index(drop=True)
    out["dominates_final"] = (out["bytes"] <= final["bytes"]) & (
        out["test_accuracy"] >= final["accuracy"]
    )
    return out


def plot_front(
    points: Mapping[int, Mapping[str, Any]],
    front: pd.DataFrame,
    final: Mapping[str, Any],
    name: str,
) -> Any:
    """Every trial of the search (test accuracy against bytes), its front, the hand-built artifact.

    Args:
        points: trial number -> ``pipeline_point`` result.
        front: ``front_table``.
        final: the hand-built final row (``accuracy``, ``bytes``).
        name: its stage name.

    Returns:
        The matplotlib Figure.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    on_front = set(front["trial"])
    trials = pd.DataFrame(
        [{"bytes": p["bytes"], "test accuracy": p["test_accuracy"], "on the front": n in on_front}
         for n, p in points.items()]
    )  # fmt: skip
    fig, ax = plt.subplots(figsize=(8, 4.5))
    sns.scatterplot(data=trials, x="bytes", y="test accuracy", hue="on the front", ax=ax)
    ax.scatter(final["bytes"], final["accuracy"], marker="*", s=250, color="tab:red",
               label=f"hand-built: {name}")  # fmt: skip
    ax.set(xscale="log", title="The search's trials (test accuracy) and the hand-built artifact")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def front_target(front: pd.DataFrame, final: Mapping[str, Any]) -> tuple[float, str]:
    """How far the front's best model no larger than the final artifact is from its accuracy.

    Args:
        front: ``front_table``.
        final: the hand-built final row (``accuracy``, ``bytes``).

    Returns:
        (test accuracy of the most accurate front model with at most the final's bytes minus the
        final's, in points; NaN when no front model is that small), and a note naming it.
    """
    small = front[front["bytes"] <= final["bytes"]]
    if small.empty:
        smallest = int(front["bytes"].min()) if len(front) else 0
        return math.nan, f"no front model within {int(final['bytes'])} B (smallest: {smallest} B)"
    best = small.loc[small["test_accuracy"].idxmax()]
    note = (
        f"trial {int(best['trial'])}: width {int(best['width'])}, sparsity "
        f"{best['sparsity']:.2f}, {int(best['bits'])} bits, {int(best['bytes'])} B"
    )
    return 100 * (float(best["test_accuracy"]) - float(final["accuracy"])), note


def summary(
    stages: pd.DataFrame,
    targets: Sequence[Mapping[str, Any]],
    board: pd.DataFrame,
    *,
    notebook: str,
    reference: Mapping[str, Any] | None = None,
    reference_gap: Mapping[str, Any] | None = None,
    control: Mapping[str, Any] | None = None,
    search: list[tuple] | None = None,
    record: list[tuple] | None = None,
) -> pd.DataFrame:
    """This run's facts about the pipeline, from its stage table, targets and Pareto board.

    Args:
        stages: ``stage_steps`` of the stages (first row: the baseline; last: the final stage),
            with a ``macs`` column.
        targets: ``nbhelpers.measure.targets.target`` dicts.
        board: ``pareto_board``.
        notebook: this notebook's stem on the board.
        reference: the like-for-like row (``measure.compare`` against the same baseline, e.g.
            ``deep_compression_recipe`` of the baseline itself), or None.
        reference_gap: ``stats.paired_difference`` of the like-for-like model's hits against the
            final stage's on the same test images (final minus it), with ``reference``.
        control: the from-scratch control (``stats.seeds_paired_difference`` of the final stage
            against it, with ``seeds`` and ``epochs``), or None.
        search: ``search_diagnosis`` rows (None or empty: none).
        record: ``record_facts`` rows of the compression record (None or empty: none).

    Returns:
        A ``fact_table``: the final model against the baseline, each stage's size and speed step,
        the multiply-adds, the like-for-like row and what the full stack adds to it, the
        from-scratch control, each target's verdict and the Pareto picture's counts.
    """
    from nbhelpers.measure.leaderboard import pareto_front
    from nbhelpers.measure.targets import UNDECIDED, measured_text

    base, fin = stages.iloc[0], stages.iloc[-1]
    speed = [c for c in stages.columns if c.startswith("speedup_b")]
    big = max(speed, key=lambda c: int(c.removeprefix("speedup_b")))
    rows = [("final stage", str(stages.index[-1]), "", f"after {len(stages) - 1} stages")]
    rows += _vs_baseline_rows(
        "final", fin, speed, f"{int(base['bytes']):,} to {int(fin['bytes']):,} bytes"
    )
    rows.append(
        (
            "multiply-adds per image, baseline / final",
            round(base["macs"] / fin["macs"], 2),
            "x",
            f"{int(base['macs']):,} to {int(fin['macs']):,}",
        )
    )
    for name, r in stages.iloc[1:].iterrows():
        rows.append(
            (
                f"{name}: times smaller",
                round(float(r["smaller_than_previous"]), 2),
                "x",
                "than the stage before, bytes on disk",
            )
        )
    b = big.removeprefix("speedup_b")
    for name, r in stages.iloc[1:].iterrows():
        step = round(float(r[f"faster_than_previous_b{b}"]), 2)
        rows.append((f"{name}: times faster, b{b}", step, "x", f"than the stage before, batch {b}"))
    if reference is not None:
        rows += _reference_rows(reference, fin, reference_gap, speed)
    if control is not None:
        rows += _control_rows(control)
    rows += list(search or [])
    rows += list(record or [])
    rows += [
        (
            f"target met: {t['name']}",
            bool(t["met"]),
            "",
            measured_text(t) + (f" {UNDECIDED}" if t.get("decided") is False else ""),
        )
        for t in targets
    ]
    others = single_technique_points(board, notebook)
    front = pareto_front(board) if len(board) else board
    rows += [
        (
            "single-technique models on the picture",
            len(others),
            "models",
            f"from {others['notebook'].nunique()} notebooks",
        ),
        (
            "pipeline stages on the Pareto front",
            int((front["notebook"] == notebook).sum()),
            "points",
            f"of {len(front)} Pareto-optimal points",
        ),
    ]
    return fact_table(rows)


def search_diagnosis(
    point: Mapping[str, Any] | None, gap: Mapping[str, Any] | None, final: Mapping[str, Any]
) -> list[tuple]:
    """Fact rows of the search's pipeline run at the hand-built knobs, against the final artifact.

    Args:
        point: ``compression.pipeline_point`` at the hand-built knobs (None: not run).
        gap: ``stats.paired_difference`` of the final's test hits against the point's (the point
            minus the final, in points), or None.
        final: the final stage's ``measure.compare`` row (``bytes``).

    Returns:
        The point minus the final in points with its interval; its bytes over the final's; and
        whether the shortfall is the budget's (the point not worse beyond noise, the interval's
        high end at or above zero, at no more bytes); no rows when not run.
    """
    if point is None or gap is None:
        return []
    d, lo, hi = (float(gap[k]) for k in ("difference", "low", "high"))
    ratio = float(point["bytes"]) / float(final["bytes"])
    return [
        (
            "search pipeline at the hand-built knobs: minus the final",
            round(d, 2),
            "points",
            f"[{lo:.2f}, {hi:.2f}] paired over the test images",
        ),
        (
            "search pipeline at the hand-built knobs: bytes over the final's",
            round(ratio, 3),
            "x",
            f"{int(point['bytes']):,} against {int(final['bytes']):,} bytes",
        ),
        (
            "search shortfall: the budget",
            bool(hi >= 0 and ratio <= 1.0),
            "",
            "true: the space holds one as good; false: its pipeline is worse (accuracy or bytes)",
        ),
    ]


def _vs_baseline_rows(
    label: str, row: Mapping[str, Any], speed: list[str], size_context: str
) -> list[tuple]:
    """Fact rows of one ``measure.compare`` row against the baseline: times smaller, accuracy
    change with its paired interval, verdict, and speed at each timed batch size."""
    from nbhelpers.measure.verdicts import interval_text, verdict_reason

    rows = [
        (
            f"{label}: times smaller than the baseline",
            round(float(row["size_ratio"]), 2),
            "x",
            size_context,
        ),
        (
            f"{label}: accuracy change vs the baseline",
            round(float(row["accuracy_delta_points"]), 2),
            "points",
            interval_text(row),
        ),
        (f"{label}: verdict vs the baseline", str(row["verdict"]), "", verdict_reason(row)),
    ]
    return rows + [
        (
            f"{label}: speed vs the baseline, batch {c.removeprefix('speedup_b')}",
            round(float(row[c]), 2),
            "x",
            "above 1: faster",
        )
        for c in speed
    ]


def _reference_rows(
    ref: Mapping[str, Any], fin: Mapping[str, Any], gap: Mapping[str, Any] | None, speed: list[str]
) -> list[tuple]:
    """Fact rows of the like-for-like model against the baseline, and of the full stack against
    it (size and speed ratios above 1: the full stack is smaller, faster)."""
    if gap is None:
        raise ValueError("give reference_gap (final minus the like-for-like model) with reference")
    size = f"{int(ref['bytes']):,} bytes; no distillation or slimming"
    rows = _vs_baseline_rows("like-for-like", ref, speed, size)
    rows += [
        (
            "stack over like-for-like: size ratio",
            round(float(ref["bytes"]) / float(fin["bytes"]), 2),
            "x",
            "above 1: the full stack is smaller",
        ),
        (
            "stack minus like-for-like: accuracy change",
            round(float(gap["difference"]), 2),
            "points",
            f"paired 95% CI [{gap['low']:+.2f}, {gap['high']:+.2f}]",
        ),
        ("stack vs like-for-like: verdict", str(gap["verdict"]), "", "paired, same test images"),
    ]
    rows += [
        (
            f"stack over like-for-like: speed, batch {c.removeprefix('speedup_b')}",
            round(float(fin[c]) / float(ref[c]), 2),
            "x",
            "above 1: the full stack is faster",
        )
        for c in speed
    ]
    return rows


def _control_rows(control: Mapping[str, Any]) -> list[tuple]:
    """Fact rows of the final stage against the from-scratch control (Liu et al. 2019)."""
    seeds = int(control["seeds"])
    return [
        (
            "from-scratch control: final minus it",
            round(float(control["final stage minus it (points)"]), 2),
            "points",
            f"95% CI [{control['low']:+.2f}, {control['high']:+.2f}], {seeds} seeds",
        ),
        (
            "from-scratch control: verdict",
            str(control["verdict"]),
            "",
            f"over seeds: {control['seed_verdict']}",
        ),
        (
            "from-scratch control: seed_std",
            round(float(control["seed_std"]), 2),
            "points",
            "spread of one control seed's difference",
        ),
    ]


#: The record's goals per MODEL, (times smaller on disk, highest test error in %): beyond soft
#: weight-sharing's figures as issue 31 quotes them (Ullrich et al. 2017: LeNet-300-100 64x,
#: LeNet-5-Caffe 162x), at the errors the issue sets.
RECORD_GOALS = {"mlp": (64.0, 1.8), "lenet5_caffe": (162.0, 1.0)}

_SWS = "Ullrich, Meeds, Welling 2017 (soft weight-sharing)"
_BC = "Louizos, Ullrich, Welling 2017 (Bayesian compression)"
_README = "README of the authors' code release (KarenUllrich/Tutorial_BayesianCompressionForDL)"
_UNCHECKED = "as issue 31 quotes it; the paper's table not checked against a text copy"
_PRECISION = "weights' bits in the architecture left by pruning, no positions or biases"
#: Published MNIST compression figures: (model, method, paper, test error %, times smaller,
#: what the factor counts, where the figure was read).
PUBLISHED = [
    ("mlp", "Deep Compression", "Han, Mao, Dally 2016", 1.58, 40.0, "bytes of the model",
     "Table 1 of arXiv:1510.00149v5, checked"),
    ("mlp", "soft weight-sharing", _SWS, 1.9, 64.0, "bits of the model", _UNCHECKED),
    ("lenet5_caffe", "Deep Compression", "Han, Mao, Dally 2016", 0.74, 39.0,
     "bytes of the model", "Table 1 of arXiv:1510.00149v5, checked"),
    ("lenet5_caffe", "soft weight-sharing", _SWS, 1.0, 162.0, "bits of the model", _UNCHECKED),
    ("lenet5_caffe", "sparse variational dropout", "Molchanov et al. 2017, as " + _BC, 1.0, 228.0,
     _PRECISION, _README + ", checked"),
    ("lenet5_caffe", "BC-GNJ", _BC, 1.0, 361.0, _PRECISION, _README + ", checked"),
    ("lenet5_caffe", "BC-GHS", _BC, 1.0, 419.0, _PRECISION, _README + ", checked"),
]  # fmt: skip


def record_layers(model: str, student_hidden: Sequence[int], distill_epochs: int) -> int:
    """Linear/Conv2d layers of the model the record compresses: the student's (distilled MLP),
    or the dense MODEL's (LeNet-300-100: 3, Caffe's LeNet-5: 4)."""
    if model == "mlp" and distill_epochs:
        return len(student_hidden) + 1
    return {"mlp": 3, "lenet5_caffe": 4}.get(model, 0)


def published_frontier(model: str) -> pd.DataFrame:
    """The published compression figures for one of the record's models, highest factor last.

    Args:
        model: "mlp" (LeNet-300-100) or "lenet5_caffe".

    Returns:
        One row per figure: method, paper, test error (%), times smaller, what the factor counts,
        and where the figure was read (checked against a text, or not).
    """
    from nbhelpers.core.params import check_choice

    check_choice("MODEL", model, tuple(RECORD_GOALS))
    cols = ["method", "paper", "test error (%)", "times smaller", "counts", "read in"]
    rows = [r[1:] for r in PUBLISHED if r[0] == model]
    return pd.DataFrame(rows, columns=cols).sort_values("times smaller", ignore_index=True)


def record_targets(rec: Mapping[str, Any], model: str) -> list[dict]:
    """The record's targets: beyond the goal's factor, at most its error, decoded identically.

    Args:
        rec: ``compression.artifact_summary`` of the record.
        model: the compressed MODEL (its ``RECORD_GOALS``).

    Returns:
        ``nbhelpers.measure.targets.target`` dicts.
    """
    from nbhelpers.measure.targets import target

    ratio, error = RECORD_GOALS[model]
    return [
        target("record: times smaller on disk than the dense file", rec["times_smaller"], ">=",
               ratio, "x", f"{rec['bytes']:,} bytes; soft weight-sharing: {ratio:g}x"),
        target("record: test error of the decoded artifact", rec["test_error_pct"], "<=", error,
               "%", f"{rec['test_errors']} of {rec['test_images']:,} images, Wilson 95%",
               interval=(rec["error_low"], rec["error_high"])),
        target("record: decoded artifact gives the same outputs",
               float(rec["identical_predictions"]), ">=", 1.0, "", "every test image"),
    ]  # fmt: skip


def record_facts(rec: Mapping[str, Any], shares: pd.DataFrame) -> list[tuple]:
    """Fact rows of the record: factor, error, round trip, and each component's factor and share.

    Args:
        rec: ``compression.artifact_summary`` of the record.
        shares: ``compression.size_stages`` of the record's model.

    Returns:
        Rows for ``summary(record=...)``.
    """
    rows = [
        ("record: times smaller than the dense file", round(rec["times_smaller"], 1), "x",
         f"{rec['dense_bytes']:,} to {rec['bytes']:,} bytes"),
        ("record: test error", round(rec["test_error_pct"], 2), "%",
         f"Wilson 95% [{rec['error_low']:.2f}, {rec['error_high']:.2f}]"),
        ("record: decoded artifact gives the same outputs", rec["identical_predictions"], "",
         "every test image"),
    ]  # fmt: skip
    for name, r in shares.iloc[1:].iterrows():
        rows.append((f"record component: {name}", round(float(r["smaller_than_previous"]), 2),
                     "x", f"{r['share_of_factor']:.0%} of the factor's logarithm"))  # fmt: skip
    return rows
