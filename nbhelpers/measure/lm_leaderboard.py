"""The transformer track's leaderboard: every compressed language model's bits per character, size
and speed against the baseline measured in the same run (no torch needed).

The MNIST leaderboard (``measure.leaderboard``) reads accuracy tables; the language-model lessons
record bits per character instead, each in its own tables. This module gathers them into one board:
notebook 12's quantized, pruned and head-pruned models against its fp32 baseline, and notebook 14's
students against their teacher. Every change comes with the paired block-bootstrap interval the
notebook computed over the same test text (fewer bits is better), every ratio is against the
baseline timed or sized in the same notebook run.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping
from typing import Any

import pandas as pd

from nbhelpers.measure.leaderboard import format_interval

COMPRESSION = "12_transformer_compression"
DISTILLATION = "14_transformer_distillation"

COLUMNS = [
    "notebook",
    "model",
    "is_baseline",
    "bpc",
    "bpc_low",
    "bpc_high",
    "change_bpc",
    "change_low",
    "change_high",
    "verdict",
    "size_basis",
    "bytes",
    "size_ratio",
    "weights_kept",
    "speedup_b1",
    "speedup_b32",
    "speedup_generation",
]


def _rows(records: Mapping[str, Any], name: str) -> pd.DataFrame:
    """A recorded table as a frame (empty when the notebook did not record it)."""
    value = records.get(name)
    return pd.DataFrame(value) if isinstance(value, list) and value else pd.DataFrame()


def speedups(latency: pd.DataFrame, model: str, reference: str) -> dict[str, float]:
    """The reference's median latency over the model's, at batch 1 and 32, from one timing table.

    Args:
        latency: rows with ``model``, ``batch_size`` and ``median_ms`` (a ``measure.timing`` table).
        model: the timed model's name.
        reference: the baseline's name in the same table.

    Returns:
        {"speedup_b1": x, "speedup_b32": x}; NaN where either was not timed at that batch size.
    """
    out = {}
    for batch in (1, 32):
        ms = {}
        for name in (model, reference):
            hit = (
                latency[(latency["model"] == name) & (latency["batch_size"] == batch)]
                if len(latency)
                else latency
            )
            ms[name] = float(hit["median_ms"].iloc[0]) if len(hit) else math.nan
        out[f"speedup_b{batch}"] = ms[reference] / ms[model]
    return out


def _change(row: Mapping[str, Any], column: str = "change") -> dict[str, Any]:
    """The bits-per-character change, its interval and verdict from a recorded row: ``change``,
    ``low``, ``high``, ``verdict``, or ``<column>``, ``<column>_low`` ... for another column."""
    stem = "" if column == "change" else f"{column}_"
    return {
        "change_bpc": row.get(column, math.nan),
        "change_low": row.get(f"{stem}low", math.nan),
        "change_high": row.get(f"{stem}high", math.nan),
        "verdict": row.get(f"{stem}verdict", ""),
    }


def _generation(rec: Mapping[str, Any]) -> dict[str, float]:
    """Characters generated per second by model name (empty when not recorded)."""
    gen = _rows(rec, "latency_generation")
    return gen.set_index("model")["chars_per_s"].astype(float).to_dict() if len(gen) else {}


def compression_rows(rec: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Notebook 12's models: the fp32 baseline, each quantization, ORT int8, the fine-tuned pruned
    models (magnitude, 2:4) and the head + MLP pruned ones.

    Args:
        rec: notebook 12's records.

    Returns:
        Board rows (``COLUMNS`` less ``notebook``); empty when it recorded no quantization table.
    """
    quant, speed = _rows(rec, "quantization"), _rows(rec, "latency_speed_ms")
    if quant.empty:
        return []
    gen = _generation(rec)
    fp32_bytes = float(quant["fp32_bytes"].iloc[0])
    low, high = (list(rec.get("baseline_bpc_interval") or []) + [math.nan, math.nan])[:2]
    rows = [
        {
            "model": "fp32 baseline",
            "is_baseline": True,
            "bpc": rec.get("baseline_bpc"),
            "bpc_low": low,
            "bpc_high": high,
            "size_basis": "Linear weights",
            "bytes": fp32_bytes,
            "size_ratio": 1.0,
            "weights_kept": 1.0,
            **speedups(speed, "fp32", "fp32"),
            "speedup_generation": 1.0 if gen else math.nan,
        }
    ]
    for _, q in quant.iterrows():
        rows.append(
            {
                "model": q["model"],
                "bpc": q["bpc"],
                **_change(q),
                "size_basis": "Linear weights",
                "bytes": q["bytes"],
                "size_ratio": q["ratio"],
                "weights_kept": 1.0,
                **speedups(speed, q["model"], "fp32"),
                "speedup_generation": gen.get(q["model"], math.nan) / gen.get("fp32", math.nan)
                if gen
                else math.nan,
            }
        )
    for _, o in _rows(rec, "ort_quantization").iterrows():
        if o["model"] == "ORT fp32":
            continue
        rows.append(
            {
                "model": o["model"],
                "bpc": o["bpc"],
                **_change(o),
                "size_basis": "Linear weights",
                "bytes": o["weight_bytes"],
                "size_ratio": o["weight_ratio"],
                "weights_kept": 1.0,
                **speedups(speed, o["model"], "fp32"),
            }
        )
    return rows + _pruned_rows(rec)


def _pruned_rows(rec: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Notebook 12's fine-tuned pruned models: magnitude at each sparsity, 2:4, heads + MLP."""
    rows = []
    for _, p in _rows(rec, "pruning").iterrows():
        rows.append(
            {
                "model": f"magnitude {p['sparsity']:.0%}, fine-tuned",
                "bpc": p["bpc"],
                **_change(p),
                "size_basis": "",
                "weights_kept": 1 - p["measured_sparsity"],
            }
        )
    semi = _rows(rec, "semi_structured")
    if len(semi):
        semi = semi[(semi["pattern"] == "2:4") & (semi["stage"] == "fine-tuned")]
    for _, s in semi.iterrows():
        rows.append(
            {
                "model": "2:4, fine-tuned",
                "bpc": s["bpc"],
                **_change(s),
                "size_basis": "",
                "weights_kept": 0.5,
            }
        )
    slim, total = _rows(rec, "latency_structured_ms"), rec.get("parameters")
    for _, s in _rows(rec, "structured").iterrows():
        rows.append(
            {
                "model": f"heads + MLP pruned, {s['model']}",
                "bpc": s["bpc"],
                **_change(s),
                "size_basis": "all parameters",
                "size_ratio": total / s["parameters"] if total else math.nan,
                "weights_kept": s["parameters"] / total if total else math.nan,
                **speedups(slim, "heads + MLP pruned", "dense"),
            }
        )
    return rows


def distillation_rows(rec: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Notebook 14's teacher, the student trained alone and the student distilled at the chosen
    temperature, each student against the teacher.

    Args:
        rec: notebook 14's records.

    Returns:
        Board rows (``COLUMNS`` less ``notebook``); empty when it recorded no bits table.
    """
    bits, comp = _rows(rec, "bits"), _rows(rec, "distillation_comparisons")
    if bits.empty or comp.empty:
        return []
    bits, comp = bits.set_index("model"), comp.set_index("model")
    chosen = rec.get("chosen_temperature")
    gen = _generation(rec)
    ratio = 1 / rec["parameter_share"] if rec.get("parameter_share") else math.nan
    rows = [
        {
            "model": "teacher",
            "is_baseline": True,
            "bpc": bits.loc["teacher", "bpc"],
            "bpc_low": bits.loc["teacher", "low"],
            "bpc_high": bits.loc["teacher", "high"],
            "size_basis": "all parameters",
            "size_ratio": 1.0,
            "weights_kept": 1.0,
            "speedup_generation": 1.0 if gen else math.nan,
        }
    ]
    names = ["student alone"] + ([f"distilled T={chosen:g}"] if chosen is not None else [])
    for name in [n for n in names if n in bits.index and n in comp.index]:
        rows.append(
            {
                "model": name,
                "bpc": bits.loc[name, "bpc"],
                "bpc_low": bits.loc[name, "low"],
                "bpc_high": bits.loc[name, "high"],
                **_change(comp.loc[name].to_dict(), "vs_teacher"),
                "size_basis": "all parameters",
                "size_ratio": ratio,
                "weights_kept": rec.get("parameter_share", math.nan),
                "speedup_generation": gen.get(name, math.nan) / gen.get("teacher", math.nan)
                if gen
                else math.nan,
            }
        )
    return rows


def build(records_by_notebook: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """Gather notebooks 12's and 14's language models into one board.

    Args:
        records_by_notebook: notebook stem -> its recorded values.

    Returns:
        One row per (notebook, model) with the ``COLUMNS``; empty when neither notebook has run.
    """
    frames = []
    for stem, rows_of in ((COMPRESSION, compression_rows), (DISTILLATION, distillation_rows)):
        rows = rows_of(records_by_notebook.get(stem) or {})
        if rows:
            frames.append(pd.DataFrame(rows).assign(notebook=stem).reindex(columns=COLUMNS))
    if not frames:
        return pd.DataFrame(columns=COLUMNS)
    board = pd.concat(frames, ignore_index=True)
    board["is_baseline"] = board["is_baseline"].fillna(False).astype(bool)
    return board


def _fmt(v: Any, fmt: str) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)


def readable(board: pd.DataFrame) -> pd.DataFrame:
    """The board formatted for people: intervals beside their values, units, rounding.

    Args:
        board: the table from ``build``.

    Returns:
        String columns: notebook, model, bits/char [95% CI], change [95% CI], verdict, size basis,
        bytes, times smaller, weights kept, speed-up at batch 1 and 32 and in generation.
    """
    b = board.reindex(columns=COLUMNS)
    interval = format_interval
    col = lambda name, fmt: [_fmt(v, fmt) for v in b[name]]  # noqa: E731
    return pd.DataFrame(
        {
            "notebook": b["notebook"],
            "model": b["model"],
            "bits/char [95% CI]": [
                interval(*r, "{:.4f}") for r in zip(b["bpc"], b["bpc_low"], b["bpc_high"])
            ],
            "change, bits/char [95% CI]": [
                interval(*r, "{:+.4f}")
                for r in zip(b["change_bpc"], b["change_low"], b["change_high"])
            ],
            "verdict": b["verdict"].fillna(""),
            "size of": b["size_basis"].fillna(""),
            "bytes": col("bytes", "{:,.0f}"),
            "times smaller": col("size_ratio", "{:.2f}x"),
            "weights kept": col("weights_kept", "{:.0%}"),
            "speed-up b1": col("speedup_b1", "{:.2f}x"),
            "speed-up b32": col("speedup_b32", "{:.2f}x"),
            "generation speed-up": col("speedup_generation", "{:.2f}x"),
        }
    )


INTRO = (
    "Notebook 12's compressed models against its fp32 baseline and notebook 14's students against "
    "their teacher, from each notebook's last good run. Bits per character on the test plays "
    "(fewer is better); the change has the paired block-bootstrap 95% interval over the same test "
    "text, so a negative change is better. Sizes are those of the Linear weights (quantization) or "
    "of all parameters (smaller models); pruned weights stored dense leave the bytes unchanged, so "
    "their share kept is shown instead. Speed-ups are forward passes over the full context timed "
    "side by side with the baseline in the same run, and generated characters per second; a blank "
    "cell was not measured."
)


def html_section(records_by_notebook: Mapping[str, Mapping[str, Any]]) -> str:
    """The board as an HTML section for the report's index (a note when it cannot be built).

    Args:
        records_by_notebook: notebook stem -> its recorded values.

    Returns:
        An HTML fragment.
    """
    head = f"<h2>Leaderboard: the transformer language model</h2><p>{html.escape(INTRO)}</p>"
    try:
        board = build(records_by_notebook)
    except Exception as exc:  # noqa: BLE001 - the index must still be written
        return head + f'<p class="err">could not build the board: {html.escape(str(exc))}</p>'
    if board.empty:
        return head + "<p>Notebooks 12 and 14 have not run yet.</p>"
    table = readable(board).to_html(index=False, escape=True, classes="board", border=0)
    return head + f'<div style="overflow-x:auto">{table}</div>'
