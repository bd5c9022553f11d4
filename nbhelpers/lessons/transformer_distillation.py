"""Notebook 14's lesson code: the distilled students (cached, one per temperature, trained exactly
as the student alone but for the loss), the size table of teacher and student, the bits/char
table and the paired comparisons (distilled against alone, each student against the teacher, the
share of the gap closed), the temperature chosen on validation text, the target and the facts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from nbhelpers.core.cache import cached_model, config_key
from nbhelpers.core.lm_baseline import LMBaseline
from nbhelpers.core.transformer import CharTransformer, parameter_count
from nbhelpers.measure.bpc import bpc_interval, char_losses, paired_bpc_difference
from nbhelpers.measure.facts import fact_table
from nbhelpers.measure.targets import target
from nbhelpers.techniques.distillation import gap_closed_interval, train_distilled

#: The issue's target: distillation closes at least this share of the student-to-teacher gap.
MIN_GAP_CLOSED = 0.5


def distilled_name(temperature: float) -> str:
    """The row name of the student distilled at a temperature, e.g. "distilled T=2"."""
    return f"distilled T={temperature:g}"


def distilled_student(
    alone: LMBaseline,
    teacher: LMBaseline,
    temperature: float,
    alpha: float,
    device: str = "cpu",
) -> tuple[nn.Module, pd.DataFrame, bool]:
    """The student distilled from the teacher: the student alone's initialisation, batches, steps
    and schedule (its config), the loss ``alpha T^2 KL + (1 - alpha) CE``; cached.

    Args:
        alone: the student trained alone (``get_lm_baseline`` at the student's size).
        teacher: the teacher (the shared baseline) on the same corpus.
        temperature: T > 0.
        alpha: weight of the teacher term in [0, 1].
        device: where to train on a cache miss.

    Returns:
        (model on the CPU in evaluation mode, training history, from_cache).
    """
    cfg = alone.config

    def build() -> nn.Module:  # as get_lm_baseline builds the student alone: the same weights
        torch.manual_seed(cfg["seed"])
        return CharTransformer(**cfg["model"])

    def train(model: nn.Module) -> dict:
        hist = train_distilled(model, teacher.model, alone.corpus, cfg["steps"], temperature,
                               alpha, cfg["batch_size"], cfg["lr"], cfg["warmup_steps"],
                               cfg["seed"], device, cfg.get("schedule", "cosine"))  # fmt: skip
        teacher.model.cpu()
        return {"history": hist.to_dict(orient="list")}

    config = {**cfg, "name": "char-transformer-distilled", "teacher": config_key(teacher.config),
              "temperature": float(temperature), "alpha": float(alpha),
              "distill_version": 1}  # fmt: skip
    model, extras, hit = cached_model(config, build, train)
    return model.eval(), pd.DataFrame(extras["history"]), hit


def size_table(models: Mapping[str, nn.Module], reference: str) -> pd.DataFrame:
    """Shape and parameter count of each character model, and its share of the reference's.

    Args:
        models: name -> ``CharTransformer``.
        reference: the row every share is of (the teacher).

    Returns:
        Index model; context, width, depth, heads, parameters, share (of the reference's).
    """
    rows = []
    for name, m in models.items():
        c = m.config
        rows.append({"model": name, "context": c["context"], "width": c["width"],
                     "depth": c["depth"], "heads": c["heads"],
                     "parameters": parameter_count(m)})  # fmt: skip
    table = pd.DataFrame(rows).set_index("model")
    table["share"] = table.parameters / table.loc[reference, "parameters"]
    return table


def choose_temperature(scores: Mapping[float, float]) -> float:
    """The temperature whose student has the fewest validation bits per character (ties: the
    lowest temperature).

    Args:
        scores: temperature -> the distilled student's bits/char on validation windows.

    Returns:
        That temperature.
    """
    return min(sorted(scores), key=lambda t: scores[t])


def val_bits_at(history: pd.DataFrame, step: int) -> tuple[int, float]:
    """A ``train_lm`` history's validation bits per character at its last row at or before a step.

    Args:
        history: the history (``step``, ``val_bits``), in step order.
        step: the step.

    Returns:
        (that row's step, its ``val_bits``); (0, NaN) when the history has no row that early.
    """
    rows = history[history.step <= step]
    return (int(rows.step.iloc[-1]), float(rows.val_bits.iloc[-1])) if len(rows) else (0, np.nan)


def validation_bits(models: Mapping[Any, nn.Module], x: torch.Tensor, y: torch.Tensor) -> dict:
    """Each model's bits per character on validation windows (to choose by, never the test).

    Args:
        models: key -> character model.
        x: (windows, context) validation inputs (``core.text.eval_windows``).
        y: the targets.

    Returns:
        key -> bits per character.
    """
    return {k: float(np.mean(char_losses(m, x, y, 32))) for k, m in models.items()}


def bpc_table(losses: Mapping[str, np.ndarray], block: int, seed: int) -> pd.DataFrame:
    """Each model's test bits per character with its block-bootstrap interval.

    Args:
        losses: name -> per-character test losses in bits (the same characters for all).
        block: the bootstrap's block length in characters.
        seed: seed of the resampling.

    Returns:
        Index model; bpc, low, high.
    """
    rows = []
    for name, v in losses.items():
        ci = bpc_interval(v, block_length=block, seed=seed)
        rows.append({"model": name, "bpc": ci["bpc"], "low": ci["low"], "high": ci["high"]})
    return pd.DataFrame(rows).set_index("model")


def comparisons(
    losses: Mapping[str, np.ndarray],
    teacher: str,
    alone: str,
    distilled: Sequence[str],
    block: int,
    seed: int,
) -> pd.DataFrame:
    """Paired comparisons: each distilled student against the student alone and against the
    teacher, the student alone against the teacher, and the share of the gap each closes.

    Args:
        losses: name -> per-character test losses in bits, the same characters for all.
        teacher: the teacher's name.
        alone: the student alone's name.
        distilled: the distilled students' names.
        block: the bootstrap's block length in characters.
        seed: seed of the resampling (the same blocks for every interval).

    Returns:
        Index model (the student alone first); ``vs_alone``, its ``_low``, ``_high`` and
        ``_verdict`` (model - alone, bits/char: negative is better; NaN and "" for the student
        alone), the same ``vs_teacher`` (model - teacher), and ``gap_closed`` with ``gap_low``
        and ``gap_high`` (NaN for the student alone).
    """
    rows = []
    for name in [alone, *distilled]:
        row: dict[str, Any] = {"model": name}
        for ref, col in ((alone, "vs_alone"), (teacher, "vs_teacher")):
            if ref == name:  # the student alone against itself: no comparison
                row.update({col: np.nan, f"{col}_low": np.nan, f"{col}_high": np.nan,
                            f"{col}_verdict": ""})  # fmt: skip
                continue
            d = paired_bpc_difference(losses[ref], losses[name], block_length=block, seed=seed)
            row.update({col: d["difference"], f"{col}_low": d["low"], f"{col}_high": d["high"],
                        f"{col}_verdict": d["verdict"]})  # fmt: skip
        g = {"gap_closed": np.nan, "low": np.nan, "high": np.nan}
        if name != alone:
            g = gap_closed_interval(losses[alone], losses[name], losses[teacher],
                                    block_length=block, seed=seed)  # fmt: skip
        row.update({"gap_closed": g["gap_closed"], "gap_low": g["low"], "gap_high": g["high"]})
        rows.append(row)
    return pd.DataFrame(rows).set_index("model")


def targets(comparison: pd.DataFrame, chosen: str) -> list[dict]:
    """The issue's target for the student distilled at the temperature chosen on validation.

    Args:
        comparison: ``comparisons``' table.
        chosen: the row of that student.

    Returns:
        One ``measure.targets.target`` dict.
    """
    r = comparison.loc[chosen]
    return [target(f"{chosen}: share of the student-to-teacher gap closed", r["gap_closed"],
                   ">=", MIN_GAP_CLOSED, "", "(alone - distilled) / (alone - teacher) bits/char; "
                   "block bootstrap, the same blocks for the three models",
                   interval=(r["gap_low"], r["gap_high"]))]  # fmt: skip


def _ci(low: float, high: float) -> str:
    return f"[{low:+.4f}, {high:+.4f}]"


def summary(
    sizes: pd.DataFrame,
    bits: pd.DataFrame,
    comparison: pd.DataFrame,
    names: Mapping[str, str],
    run: Mapping[str, Any],
    targets_: Sequence[Mapping[str, Any]],
) -> pd.DataFrame:
    """This run's facts for the Discussion.

    Args:
        sizes: ``size_table`` of the teacher (row ``names["teacher"]``) and the student (the
            other row).
        bits: ``bpc_table``.
        comparison: ``comparisons``.
        names: {"teacher", "alone", "chosen"}: row names; "chosen" is the distilled student of
            the temperature chosen on validation.
        run: {"teacher_steps", "student_steps", "alpha", "val_bits", "generation_speedup",
            "teacher_val_early", "teacher_val_step", "alone_val"}: ``val_bits`` {temperature:
            validation bits/char on the selection windows}, ``generation_speedup`` the student's
            characters per second over the teacher's (timed side by side), ``teacher_val_early``
            the teacher's history's validation bits/char at step ``teacher_val_step`` (the last
            at or before the students' step count, ``val_bits_at``) and ``alone_val`` the student
            alone's at the end of its run, on the same windows.
        targets_: the targets (each with "name" and "met").

    Returns:
        A ``fact_table``.
    """
    t, a, c = names["teacher"], names["alone"], names["chosen"]
    gap, best = comparison.loc[a], comparison.loc[c]
    student = sizes.drop(index=t).iloc[0]
    distilled = [n for n in comparison.index if n != a]
    rows = [
        ("teacher: test bits/char", bits.loc[t, "bpc"], "bits/char",
         f"95% interval [{bits.loc[t, 'low']:.3f}, {bits.loc[t, 'high']:.3f}]"),
        ("teacher: parameters", int(sizes.loc[t, "parameters"]), "",
         f"{run['teacher_steps']} training steps"),
        ("student: parameters", int(student["parameters"]), "",
         f"{student['share']:.2f} of the teacher's"),
        ("student: training steps", int(run["student_steps"]), "",
         f"the teacher's: {run['teacher_steps']}"),
        ("student alone: test bits/char", bits.loc[a, "bpc"], "bits/char",
         f"95% interval [{bits.loc[a, 'low']:.3f}, {bits.loc[a, 'high']:.3f}]"),
        ("student-to-teacher gap", gap["vs_teacher"], "bits/char",
         f"alone - teacher {_ci(gap['vs_teacher_low'], gap['vs_teacher_high'])}"),
        ("student alone: final validation bits/char", run["alone_val"], "bits/char",
         f"history's validation windows, step {run['student_steps']}"),
        ("teacher at the students' step count: validation bits/char", run["teacher_val_early"],
         "bits/char", f"step {run['teacher_val_step']} of its {run['teacher_steps']}, same "
         "windows"),
        *[(f"{n}: change vs alone", comparison.loc[n, "vs_alone"], "bits/char",
           f"{_ci(comparison.loc[n, 'vs_alone_low'], comparison.loc[n, 'vs_alone_high'])} "
           f"{comparison.loc[n, 'vs_alone_verdict']}") for n in distilled],
        ("temperature chosen on validation", c, "",
         "fewest validation bits/char: " + ", ".join(
             f"T={k:g} {v:.3f}" for k, v in sorted(run["val_bits"].items()))),
        ("chosen: share of the gap closed", best["gap_closed"], "",
         f"95% interval [{best['gap_low']:.2f}, {best['gap_high']:.2f}]"),
        ("chosen: change vs teacher", best["vs_teacher"], "bits/char",
         f"{_ci(best['vs_teacher_low'], best['vs_teacher_high'])} {best['vs_teacher_verdict']}"),
        ("alpha", float(run["alpha"]), "", "weight of the teacher term"),
        ("student: generation speed-up over the teacher", run["generation_speedup"], "x",
         "characters per second, timed side by side"),
        ("targets met", sum(bool(x["met"]) for x in targets_), "", f"of {len(targets_)}"),
    ]  # fmt: skip
    return fact_table(rows, digits=4)
