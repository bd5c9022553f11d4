"""Knowledge distillation of a character language model: Hinton et al.'s (2015) loss on every
position's next-character distribution, a student trained with a teacher through
``core.lm_baseline.train_lm``, and the share of the student-to-teacher gap it closes.

A batch of ``B`` windows of ``L`` characters is ``B * L`` classifications over the vocabulary:
position ``t`` of a window predicts character ``t + 1``. ``sequence_hinton_loss`` flattens the
(B, L, V) logits to (B * L, V) and applies ``losses.hinton_loss`` to them, so that per position
``alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) + (1 - alpha) * CE(y, z_s)``, the KL
divergence summed over the vocabulary and both terms averaged over the positions.

``train_distilled`` trains a student with ``train_lm`` and ``teacher_loss_fn`` as its loss: the
same random windows (a seeded generator), AdamW, warm-up and schedule and gradient clipping as
the student trained alone on cross-entropy with the same arguments, the teacher (in evaluation
mode, no gradients) run on each batch's inputs. Only the loss differs.

``gap_closed_interval`` measures ``(bpc_alone - bpc_distilled) / (bpc_alone - bpc_teacher)`` on
the same test characters, with a moving-block bootstrap interval in which each resample takes the
same blocks of characters for the three models (``measure.bpc``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from nbhelpers.core.lm_baseline import LM_DEFAULTS, train_lm
from nbhelpers.core.params import ParameterError, check_fraction, check_int, check_seed
from nbhelpers.core.text import Corpus
from nbhelpers.measure.bpc import BLOCK_LENGTH, METHOD, _as_losses, block_bootstrap_means
from nbhelpers.techniques.distillation.losses import check_alpha, check_temperature, hinton_loss

#: A training loss of ``train_lm``: (logits, inputs, targets) -> scalar.
SequenceLossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def sequence_hinton_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    y: torch.Tensor,
    temperature: float = 2.0,
    alpha: float = 0.5,
) -> torch.Tensor:
    """Hinton et al.'s loss averaged over every position of a batch of windows.

    Args:
        student_logits: (batch, tokens, vocab), with gradients.
        teacher_logits: (batch, tokens, vocab) of the same shape, constants.
        y: (batch, tokens) next-character indices.
        temperature: T > 0.
        alpha: weight of the teacher term in [0, 1] (0: cross-entropy alone).

    Returns:
        The scalar ``(1 - alpha) CE + alpha T^2 KL``, each averaged over the batch * tokens
        positions (``losses.hinton_loss`` on the flattened logits).
    """
    if teacher_logits.shape != student_logits.shape:
        raise ParameterError(
            "teacher",
            f"logits of shape {tuple(teacher_logits.shape)}",
            f"a model giving the student's logit shape {tuple(student_logits.shape)} "
            "(the same vocabulary)",
        )
    vocab = student_logits.shape[-1]
    return hinton_loss(
        student_logits.reshape(-1, vocab),
        teacher_logits.reshape(-1, vocab),
        y.reshape(-1),
        temperature,
        alpha,
    )


def teacher_loss_fn(teacher: nn.Module, temperature: float, alpha: float) -> SequenceLossFn:
    """A ``train_lm`` loss that runs the teacher on each batch and distills it into the student.

    Args:
        teacher: maps (batch, tokens) indices to logits; put in evaluation mode, run without
            gradients on the device of the batch (move it there first).
        temperature: T > 0.
        alpha: weight of the teacher term in [0, 1].

    Returns:
        ``loss_fn(student_logits, x, y)``: ``sequence_hinton_loss`` against ``teacher(x)``.
    """
    T, a = check_temperature("temperature", temperature), check_alpha("alpha", alpha)
    teacher.eval()

    def loss_fn(logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = teacher(x).float()
        return sequence_hinton_loss(logits.float(), target, y, T, a)

    return loss_fn


def train_distilled(
    student: nn.Module,
    teacher: nn.Module,
    corpus: Corpus,
    steps: int,
    temperature: float = 2.0,
    alpha: float = 0.5,
    batch_size: int = LM_DEFAULTS["batch_size"],
    lr: float = LM_DEFAULTS["lr"],
    warmup_steps: int = LM_DEFAULTS["warmup_steps"],
    seed: int = 0,
    device: str | torch.device = "cpu",
    schedule: str = "cosine",
) -> pd.DataFrame:
    """Train a student character model in place on the teacher's next-character distributions.

    ``train_lm`` with ``teacher_loss_fn`` as the loss: with the same arguments, the student sees
    the batches, rates and clipping of a run on cross-entropy alone.

    Args:
        student: a character model with a ``context`` attribute, trained in place on ``device``
            and left there in evaluation mode.
        teacher: a trained character model over the same vocabulary whose context is at least
            the student's; moved to ``device`` and left there in evaluation mode.
        corpus: the text (training windows from its "train" split).
        steps: optimizer steps, at least 1.
        temperature: T > 0.
        alpha: weight of the teacher term in [0, 1].
        batch_size: windows per step.
        lr: the peak learning rate.
        warmup_steps: steps of linear warm-up.
        seed: seed of the batches.
        device: where to train.
        schedule: the learning-rate schedule (``core.lm_baseline.LM_SCHEDULES``).

    Returns:
        ``train_lm``'s history; its ``train_bits`` is the distillation loss in bits, its
        ``val_bits`` the student's cross-entropy on the validation windows.
    """
    loss_fn = teacher_loss_fn(teacher, temperature, alpha)
    s_ctx, t_ctx = getattr(student, "context", None), getattr(teacher, "context", None)
    if s_ctx is not None and t_ctx is not None and t_ctx < s_ctx:
        raise ParameterError("teacher", f"context {t_ctx}",
                             f"a context of at least the student's {s_ctx}")  # fmt: skip
    teacher.to(device)
    return train_lm(student, corpus, steps, batch_size, lr, warmup_steps, seed, device,
                    schedule=schedule, loss_fn=loss_fn)  # fmt: skip


def gap_closed_interval(
    alone: Any,
    distilled: Any,
    teacher: Any,
    confidence: float = 0.95,
    block_length: int = BLOCK_LENGTH,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """The share of the student-to-teacher gap in bits per character that distillation closes,
    with a moving-block bootstrap percentile interval.

    ``(mean(alone) - mean(distilled)) / (mean(alone) - mean(teacher))``. Each resample draws one
    set of block starts and takes those blocks from all three loss series (the numerator's and
    the denominator's differences are resampled by ``measure.bpc.block_bootstrap_means`` with the
    same seed, length and block length, which draws the same starts), so the interval carries the
    uncertainty of the gap as well as of the gain.

    Args:
        alone: per-character losses in bits of the student trained alone, in text order.
        distilled: the distilled student's, on the same characters.
        teacher: the teacher's, on the same characters.
        confidence: the confidence level, strictly between 0 and 1.
        block_length: characters per block.
        n_boot: resamples, at least 100.
        seed: seed of the resampling.

    Returns:
        A dict with ``gap_closed``, ``low``, ``high`` (1: all of the gap, 0: none, negative: the
        distilled student is worse than alone), ``gap`` (bits per character, alone - teacher),
        ``gain`` (alone - distilled), ``n``, ``block_length``, ``method``, ``confidence`` and
        ``gap_resolved`` (whether the teacher is better than the student alone in every
        resample). ``gap_closed`` is NaN when the gap is not positive, ``low`` and ``high`` when
        it is not resolved (a share of a gap that may be zero is no number).
    """
    a, d = _as_losses("alone", alone), _as_losses("distilled", distilled)
    t = _as_losses("teacher", teacher)
    for name, v in (("distilled", d), ("teacher", t)):
        if len(v) != len(a):
            allowed = f"losses of the same {len(a)} test characters as alone"
            raise ParameterError(name, f"{len(v)} losses", allowed)
    confidence = check_fraction("confidence", confidence)
    n_boot = check_int("n_boot", n_boot, minimum=100)
    seed = check_seed("seed", seed)
    gains = block_bootstrap_means(a - d, block_length, n_boot, seed)
    gaps = block_bootstrap_means(a - t, block_length, n_boot, seed)  # the same blocks
    gap, gain = float(a.mean() - t.mean()), float(a.mean() - d.mean())
    resolved = bool(np.all(gaps > 0))
    low = high = float("nan")
    if resolved:
        q = (1 - confidence) / 2
        low, high = (float(v) for v in np.quantile(gains / gaps, [q, 1 - q]))
    return {
        "gap_closed": gain / gap if gap > 0 else float("nan"),
        "low": low,
        "high": high,
        "gap": gap,
        "gain": gain,
        "n": len(a),
        "block_length": block_length,
        "method": METHOD,
        "confidence": confidence,
        "gap_resolved": resolved,
    }
