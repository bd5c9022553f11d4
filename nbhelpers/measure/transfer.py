"""Does it transfer? Each technique's MNIST verdict beside its transformer verdict, read from the
notebooks' recorded results (no torch needed).

Every row of ``TECHNIQUES`` names, for each side, the records that decide it: a notebook, a
recorded table (``comparison`` rows of an MNIST lesson, a transformer lesson's rows of bits per
character, or ``targets``) and a pattern that picks rows by name. Each picked row is written as its
change with its 95% interval and verdict: MNIST in accuracy points (paired over the same test
images), the language model in bits per character (paired block bootstrap over the same test text;
fewer bits is better), a target as its measured value and whether it was met. A notebook that has
not run yet leaves its cell saying so, so the table is never filled from an older run's prose.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd


@dataclass(frozen=True)
class Pick:
    """Rows of one notebook's recorded table, chosen by a pattern on their name.

    Attributes:
        stem: the notebook, e.g. "04_weight_pruning".
        table: the record holding the rows ("comparison", "targets", or a transformer lesson's
            table such as "pruning").
        pattern: a regular expression searched in each row's name (``model``, ``name``,
            ``schedule`` or ``config``, the first present; else "<pattern>, <stage>" or
            "<sparsity>% sparsity").
        kind: "points" (an accuracy change), "bits" (a bits-per-character change), "target" or
            "speedup" (a comparison row's ``speedup_b*`` column).
    """

    stem: str
    table: str
    pattern: str
    kind: str


@dataclass(frozen=True)
class Technique:
    """One row of the transfer table: a technique and the picks that decide each side."""

    technique: str
    mnist: Sequence[Pick] = field(default_factory=tuple)
    transformer: Sequence[Pick] = field(default_factory=tuple)


C12, C13 = "12_transformer_compression", "13_transformer_training"
#: The techniques, MNIST lesson beside transformer lesson.
TECHNIQUES: tuple[Technique, ...] = (
    Technique(
        "weight pruning: global magnitude, fine-tuned",
        (Pick("04_weight_pruning", "comparison", r"^mlp pruned \d+%$", "points"),),
        (Pick(C12, "pruning", r".", "bits"),),
    ),
    Technique(
        "2:4 semi-structured sparsity (quality only on a CPU)",
        (),
        (Pick(C12, "semi_structured", r".", "bits"),),
    ),
    Technique(
        "structured pruning: neurons / attention heads and MLP units, fine-tuned",
        (
            Pick("05_neuron_pruning", "comparison", r"structured", "points"),
            Pick("05_neuron_pruning", "targets", r"speedup", "target"),
        ),
        (
            Pick(C12, "structured", r"fine-tuned", "bits"),
            Pick(C12, "targets_structured", r"speed-up", "target"),
        ),
    ),
    Technique(
        "dynamic int8 of the Linear layers",
        (
            Pick("06_quantization", "comparison", r"^mlp int8 (ort )?dynamic$", "points"),
            Pick("06_quantization", "targets_speedup", r"^speedup \(mlp int8 dynamic\)$", "target"),
        ),
        (
            Pick(C12, "quantization", r"^dynamic int8$", "bits"),
            Pick(C12, "ort_quantization", r"int8", "bits"),
            Pick(C12, "targets_speedup", r"dynamic int8", "target"),
        ),
    ),  # fmt: skip
    Technique(
        "4-bit weights (per channel / per group)",
        (Pick("06_quantization", "targets", r"^4-bit per-channel drop \(mlp", "target"),),
        (Pick(C12, "quantization", r"^int4", "bits"),),
    ),
    Technique(
        "knowledge distillation: gap to the teacher closed",
        (Pick("07_knowledge_distillation", "targets", r"gap closed", "target"),),
        (Pick("14_transformer_distillation", "targets", r"gap", "target"),),
    ),
    Technique(
        "normalization: batch norm (MNIST) / LayerNorm, RMSNorm, BatchNorm, none (LM)",
        (Pick("08_batch_normalization", "comparison", r"^mlp bn \(", "points"),),
        (Pick(C13, "norms", r"^(?!layernorm$)", "bits"),),
    ),
    Technique(
        "warm-up: post-LN without warm-up against pre-LN",
        (),
        (Pick(C13, "targets", r"post-LN", "target"),),
    ),
    Technique(
        "learning-rate schedules against a constant rate",
        (Pick("09_learning_rate_schedules", "comparison", r"^mlp sgd (?!constant)", "points"),),
        (Pick(C13, "schedules_table", r"^(?!constant$)", "bits"),),
    ),
    Technique(
        "hyperparameter search: random / Bayesian against the grid, TPE + pruner against random",
        (
            Pick("02_random_search", "targets", r".", "target"),
            Pick("03_bayesian_optimization", "targets", r".", "target"),
        ),
        (Pick("15_transformer_search", "targets", r".", "target"),),
    ),  # fmt: skip
    Technique(
        "torch.compile and fused attention",
        (),
        (Pick("16_transformer_speed", "targets", r".", "target"),),
    ),
)

_NAME_KEYS = ("model", "name", "schedule", "config")


def _name(row: Mapping[str, Any]) -> str:
    for key in _NAME_KEYS:
        if row.get(key) is not None:
            return str(row[key])
    if row.get("pattern") is not None:
        return f"{row['pattern']}, {row.get('stage', '')}".rstrip(", ")
    if row.get("sparsity") is not None:
        return f"{_num(row['sparsity']):.0%} sparsity"
    return "?"


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _interval(low: Any, high: Any, fmt: str) -> str:
    lo, hi = _num(low), _num(high)
    return f" [{lo:{fmt}}, {hi:{fmt}}]" if math.isfinite(lo) and math.isfinite(hi) else ""


def describe(row: Mapping[str, Any], kind: str) -> str:
    """One picked row in words: its name, change and 95% interval, and its verdict.

    Args:
        row: a recorded row (a comparison row, a bits-per-character row or a target).
        kind: "points", "bits", "target" or "speedup" (see ``Pick``).

    Returns:
        For example "mlp pruned 90%: -0.31 points [-0.52, -0.10], worse".
    """
    name = _name(row)
    if kind == "points":
        d = _num(row.get("accuracy_delta_points"))
        ci = _interval(row.get("delta_low_points"), row.get("delta_high_points"), "+.2f")
        return f"{name}: {d:+.2f} points{ci}, {row.get('verdict', '?')}"
    if kind == "bits":
        d = _num(row.get("change"))
        ci = _interval(row.get("low"), row.get("high"), "+.4f")
        return f"{name}: {d:+.4f} bits/char{ci}, {row.get('verdict', '?')}"
    if kind == "target":
        m = _num(row.get("measured"))
        ci = _interval(row.get("low"), row.get("high"), ".3g")
        met = "met" if row.get("met") else "missed"
        goal = f"{row.get('op', '')} {_num(row.get('threshold')):.3g}"
        return f"{name}: {m:.3g} {row.get('unit', '')}{ci} (target {goal}: {met})"
    if kind == "speedup":
        cols = sorted(k for k in row if str(k).startswith("speedup_b"))
        return f"{name}: " + ", ".join(f"{_num(row[c]):.2f}x at b{c[9:]}" for c in cols)
    raise ValueError(f"kind must be one of points, bits, target, speedup; got {kind!r}")


def read(records_by_notebook: Mapping[str, Mapping[str, Any]], picks: Sequence[Pick]) -> str:
    """The cell of one side of the table: every picked row in words, one per line.

    Args:
        records_by_notebook: notebook stem -> its recorded values.
        picks: the rows to read.

    Returns:
        The rows in words joined by newlines; "not measured" when there are no picks, and
        "<stem>: not run" or "<stem>: no <table> recorded" when a notebook has not recorded them.
    """
    if not picks:
        return "not measured"
    lines = []
    for p in picks:
        rec = records_by_notebook.get(p.stem)
        if not rec:
            lines.append(f"{p.stem}: not run")
            continue
        rows = rec.get(p.table)
        if not rows:
            lines.append(f"{p.stem}: no {p.table} recorded")
            continue
        rows = [r for r in rows if r.get("verdict") != "baseline"]
        hit = [r for r in rows if re.search(p.pattern, _name(r))]
        lines += [describe(r, p.kind) for r in hit] or [f"{p.stem}: no row matches {p.pattern}"]
    return "\n".join(lines)


def build(records_by_notebook: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """The transfer table: each technique's MNIST verdict beside its transformer verdict.

    Args:
        records_by_notebook: notebook stem -> its recorded values (for example the last good run
            of each notebook in ``reports/runs.json``).

    Returns:
        Columns ``technique``, ``MNIST (MLP, LeNet-5)``, ``transformer LM``, one row per
        ``TECHNIQUES`` entry.
    """
    return pd.DataFrame(
        [
            {
                "technique": t.technique,
                "MNIST (MLP, LeNet-5)": read(records_by_notebook, t.mnist),
                "transformer LM": read(records_by_notebook, t.transformer),
            }
            for t in TECHNIQUES
        ]
    )


def html_section(records_by_notebook: Mapping[str, Mapping[str, Any]]) -> str:
    """The transfer table as an HTML section for the report's index.

    Args:
        records_by_notebook: notebook stem -> its recorded values.

    Returns:
        An HTML fragment (a note instead of a table if the records are malformed).
    """
    head = (
        "<h2>Does it transfer? MNIST beside a transformer language model</h2><p>Each technique's "
        "verdict in the MNIST lessons (accuracy change in points, paired 95% interval over the "
        "same test images) beside the transformer lessons' (bits per character, paired block "
        "bootstrap over the same test text: negative is better). Read from each notebook's last "
        "good run; a technique one side does not measure says so.</p>"
    )
    try:
        df = build(records_by_notebook)
    except Exception as exc:  # noqa: BLE001 - the index must still be written
        return head + f'<p class="err">could not build the table: {html.escape(str(exc))}</p>'
    cells = df.map(lambda s: html.escape(str(s)).replace("\n", "<br/>"))
    return (
        head
        + f'<div style="overflow-x:auto">{cells.to_html(index=False, escape=False, border=0)}</div>'
    )


def markdown(records_by_notebook: Mapping[str, Mapping[str, Any]]) -> str:
    """The transfer table in Markdown (for docs/benchmarks.md).

    Args:
        records_by_notebook: notebook stem -> its recorded values.

    Returns:
        A Markdown table, rows of several picks joined by "<br>".
    """
    df = build(records_by_notebook)
    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(str(v).replace("\n", "<br>") for v in row) + " |")
    return "\n".join(lines)
