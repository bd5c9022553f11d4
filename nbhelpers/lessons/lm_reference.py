"""Notebook 12's reference: nanoGPT's ``model.py`` trained with the baseline's configuration and
steps, read from the file ``reporting.nanogpt_reference`` writes (``docs/nanogpt_reference.json``),
shown beside this run's baseline, and the baseline's two targets (at least as good as nanoGPT's
model; at most 10 minutes of training).

The reference is measured once, outside the notebook (it needs a nanoGPT checkout, which this
project never ships); it applies to this run only when the run has the reference's settings
(the model's shape, steps, seed and the whole test split), and the table says so when it does not.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from nbhelpers.core.paths import project_dir
from nbhelpers.measure.targets import target

#: Where ``reporting.nanogpt_reference`` writes the reference (relative to the project).
REFERENCE_FILE = Path("docs") / "nanogpt_reference.json"
#: The issue's training budget of the baseline, in seconds (10 minutes on 2 cores).
MAX_TRAIN_SECONDS = 600.0


def load_reference(path: str | Path | None = None) -> dict | None:
    """The recorded nanoGPT reference, or None when none was recorded.

    Args:
        path: the JSON file (None: ``REFERENCE_FILE`` in the project).

    Returns:
        The reference's figures and settings, as written by ``reporting.nanogpt_reference``.
    """
    file = Path(path) if path is not None else project_dir() / REFERENCE_FILE
    return json.loads(file.read_text()) if file.is_file() else None


def applies(ref: Mapping[str, Any], run: Mapping[str, Any]) -> bool:
    """Whether a reference was measured at this run's settings.

    Args:
        ref: the reference (``load_reference``).
        run: this run's ``context``, ``width``, ``depth``, ``heads``, ``steps``, ``batch_size``,
            ``lr``, ``warmup_steps``, ``seed`` and ``characters_scored``.

    Returns:
        True when every one matches the reference's.
    """
    shape = ref["shape"]
    theirs = {
        "context": shape["block_size"], "width": shape["n_embd"], "depth": shape["n_layer"],
        "heads": shape["n_head"], "steps": ref["steps"], "seed": ref["seed"],
        "characters_scored": ref["characters_scored"], "batch_size": ref.get("batch_size"),
        "lr": ref.get("lr"), "warmup_steps": ref.get("warmup_steps"),
    }  # fmt: skip
    return all(run.get(k) == v for k, v in theirs.items())


def reference_table(
    ref: Mapping[str, Any] | None, run: Mapping[str, Any], bpc: float
) -> pd.DataFrame:
    """This run's baseline beside nanoGPT's model trained at the same settings.

    Args:
        ref: the reference, or None when none was recorded.
        run: this run's settings (see ``applies``).
        bpc: this run's baseline test bits per character.

    Returns:
        One row per model: ``model``, ``test bits/char``, ``95% interval``, ``training seconds``,
        ``measured`` (with the reference's note on its timings, if any); or one row saying why
        there is no comparison.
    """
    if ref is None:
        return pd.DataFrame([{"model": "nanoGPT reference", "note": "not recorded"}])
    if not applies(ref, run):
        note = (
            f"recorded at other settings ({ref['steps']} steps, "
            f"{ref['characters_scored']} test characters): run 12 at its defaults to compare"
        )
        return pd.DataFrame([{"model": "nanoGPT reference", "note": note}])
    where = f"{ref['date']}, {ref['machine']}" + (
        f" ({ref['timing_note']})" if ref.get("timing_note") else ""
    )
    return pd.DataFrame([
        {"model": "this baseline (this run)", "test bits/char": bpc,
         "95% interval": "", "training seconds": run.get("train_seconds"), "measured": "this run"},
        {"model": "this baseline (at the reference run)", "test bits/char": ref["baseline_bpc"],
         "95% interval": _fmt(ref["baseline_interval"]),
         "training seconds": ref["baseline_train_seconds"], "measured": where},
        {"model": f"nanoGPT model.py @ {ref['nanogpt_commit'] or '?'}",
         "test bits/char": ref["nanogpt_bpc"], "95% interval": _fmt(ref["nanogpt_interval"]),
         "training seconds": ref["nanogpt_train_seconds"], "measured": where},
    ])  # fmt: skip


def _fmt(interval: list) -> str:
    return f"[{interval[0]:.4f}, {interval[1]:.4f}]"


def reference_targets(
    ref: Mapping[str, Any] | None, run: Mapping[str, Any], train_seconds: float
) -> list[dict]:
    """The baseline's targets: at least as good as nanoGPT's model (paired interval), trained
    in at most ``MAX_TRAIN_SECONDS``.

    Args:
        ref: the reference, or None.
        run: this run's settings (see ``applies``).
        train_seconds: the baseline's training seconds (when it was trained).

    Returns:
        The target rows (``measure.targets.target``); the first only when the reference applies.
    """
    rows = []
    if ref is not None and applies(ref, run):
        d = ref["baseline_minus_nanogpt"]
        rows.append(target(
            "baseline minus nanoGPT's model.py (same settings): test bits/char", d["difference"],
            "<=", 0.0, "bits/char", interval=(d["low"], d["high"]),
            note=f"paired block bootstrap; {ref['command']}; {ref['date']}",
        ))  # fmt: skip
    rows.append(target(
        "baseline training time", train_seconds, "<=", MAX_TRAIN_SECONDS, "s",
        note="when it was trained (a cached model keeps its training's seconds)",
    ))  # fmt: skip
    return rows
