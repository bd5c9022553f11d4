"""The shared trained character language model of the transformer lessons, trained once and cached,
and the training loop it shares with fine-tuning after pruning.

``train_lm`` trains a ``CharTransformer`` on next-character prediction: random training windows
(``core.text.random_windows``, a seeded generator), AdamW with decoupled weight decay on the
matrices only (biases, norms' scales and shifts stay undecayed, as in nanoGPT), the learning rate
warmed up linearly over ``warmup_steps`` and annealed by a half cosine to ``min_lr_ratio`` of its
peak at the last step (``lr_factor``), and every step's gradient norm clipped to ``grad_clip``. It
returns a history: mean training loss in bits over each ``eval_every`` steps and the validation
bits per character on a fixed set of validation windows. Other schedules are a ``schedule`` name
away (``LM_SCHEDULES``: warm-up then constant, warm-up then a linear decay, one-cycle;
``schedule_factor``). A run whose loss becomes NaN or infinite stops there: its history ends in a
row with a non-finite ``train_bits`` (``diverged``).

``get_lm_baseline`` is the model every transformer lesson starts from: trained by ``train_lm`` at
``LM_RECIPE`` and cached by ``core.cache.cached_model`` under a key holding every setting (the
text's sha256 and vocabulary, the model's shape, steps, batch, learning rate, warm-up, seed, the
torch build and device type), so a second run loads it in a second. ``lm_finetune`` is the same
loop for a model that already learned (after pruning: ``torch.nn.utils.prune``'s masks stay in
force, since the loop only calls the model's forward).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from nbhelpers.core.cache import cached_model, runtime_key
from nbhelpers.core.params import (
    ParameterError,
    check_choice,
    check_float,
    check_int,
    check_seed,
)
from nbhelpers.core.text import Corpus, eval_windows, random_windows
from nbhelpers.core.train import seed_everything
from nbhelpers.core.transformer import CharTransformer

#: The training recipe of the shared language model, beyond what the notebook passes: AdamW's
#: betas and weight decay, the gradient-norm clip, the floor of the cosine (a fraction of the peak
#: rate), the validation windows scored in the history and how often.
LM_RECIPE = {
    "optimizer": "adamw",
    "betas": (0.9, 0.99),
    "weight_decay": 0.1,
    "grad_clip": 1.0,
    "min_lr_ratio": 0.1,
    "val_windows": 32,
    "eval_every": 100,
}
#: The defaults of the baseline: about 0.8M parameters, 1500 steps of 32 windows of 128 characters
#: (6.1M characters, 1.5 passes over the training plays), about 9 minutes on one CPU thread.
LM_DEFAULTS = {"steps": 1500, "batch_size": 32, "lr": 3e-3, "warmup_steps": 100}


def lr_factor(step: int, steps: int, warmup_steps: int, min_lr_ratio: float = 0.1) -> float:
    """The learning rate of a step as a fraction of the peak: linear warm-up, then half a cosine.

    ``(step + 1) / warmup_steps`` during the warm-up, then
    ``min_lr_ratio + (1 - min_lr_ratio) * (1 + cos(pi * p)) / 2`` with ``p`` going from 0 at the
    first step after the warm-up to 1 at the last step (a single step after it: 0).

    Args:
        step: the step, from 0 to ``steps - 1``.
        steps: all steps of the run, at least 1.
        warmup_steps: steps of the warm-up, from 0 to ``steps``.
        min_lr_ratio: the fraction of the peak reached at the last step, in [0, 1].

    Returns:
        The factor in [min_lr_ratio, 1] (or below it during the warm-up).
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    rest = steps - warmup_steps
    p = 0.0 if rest <= 1 else (step - warmup_steps) / (rest - 1)
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p))


#: Learning-rate schedules of ``train_lm``: each step's rate is the peak ``lr`` times
#: ``schedule_factor``. "cosine" (the default): linear warm-up, then half a cosine to
#: ``min_lr_ratio`` (``lr_factor``); "linear": linear warm-up, then a straight line to
#: ``min_lr_ratio``; "constant": linear warm-up, then the peak; "onecycle": torch's ``OneCycleLR``
#: rate at its defaults (``ONECYCLE``), which rises for its first 30% of steps (its own warm-up).
LM_SCHEDULES = ("cosine", "linear", "constant", "onecycle")
#: One-cycle's shape, ``OneCycleLR``'s defaults: the share of steps rising, the start at
#: peak / ``div_factor`` and the end at start / ``final_div_factor``, cosine annealing both ways.
ONECYCLE = {"pct_start": 0.3, "div_factor": 25.0, "final_div_factor": 1e4}


def _onecycle(step: int, steps: int) -> float:
    """``OneCycleLR``'s rate over its peak (``anneal_strategy="cos"``, two phases), as torch
    computes it: phase ends at steps ``pct_start * steps - 1`` and ``steps - 1``."""
    start = 1.0 / ONECYCLE["div_factor"]
    phases = [(float(ONECYCLE["pct_start"] * steps) - 1, start, 1.0),
              (float(steps - 1), 1.0, start / ONECYCLE["final_div_factor"])]  # fmt: skip
    begin = 0.0
    for i, (end, a, b) in enumerate(phases):
        if step <= end or i == len(phases) - 1:
            pct = (step - begin) / (end - begin) if end > begin else 1.0
            return b + (a - b) / 2.0 * (math.cos(math.pi * pct) + 1)
        begin = end
    raise AssertionError("unreachable")


def check_schedule(name: str, schedule: str, warmup_steps: int) -> str:
    """Check a schedule name of ``LM_SCHEDULES`` and that one-cycle gets no separate warm-up.

    Args:
        name: the parameter named in errors.
        schedule: the given name.
        warmup_steps: the warm-up it is paired with.

    Returns:
        The name.
    """
    check_choice(name, schedule, LM_SCHEDULES)
    if schedule == "onecycle" and warmup_steps:
        raise ParameterError("warmup_steps", warmup_steps,
                             "0 with one-cycle: its rise over the first 30% of steps is its "
                             "warm-up")  # fmt: skip
    return schedule


def schedule_factor(
    schedule: str, step: int, steps: int, warmup_steps: int, min_lr_ratio: float = 0.1
) -> float:
    """The learning rate of a step as a fraction of the peak, for a schedule of ``LM_SCHEDULES``.

    Args:
        schedule: "cosine", "linear", "constant" or "onecycle".
        step: the step, from 0 to ``steps - 1``.
        steps: all steps of the run, at least 1.
        warmup_steps: steps of linear warm-up (``(step + 1) / warmup_steps``), from 0 to
            ``steps``; 0 for "onecycle".
        min_lr_ratio: "cosine" and "linear": the fraction of the peak at the last step.

    Returns:
        The factor: at most 1.
    """
    check_schedule("schedule", schedule, warmup_steps)
    if schedule == "onecycle":
        return _onecycle(step, steps)
    if schedule == "cosine":
        return lr_factor(step, steps, warmup_steps, min_lr_ratio)
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    rest = steps - warmup_steps
    p = 0.0 if rest <= 1 else (step - warmup_steps) / (rest - 1)
    return 1.0 - (1.0 - min_lr_ratio) * p


def diverged(history: pd.DataFrame) -> bool:
    """Whether a ``train_lm`` run stopped on a NaN or infinite loss.

    Args:
        history: its history.

    Returns:
        True when a ``train_bits`` or ``val_bits`` of it is not finite.
    """
    values = history[["train_bits", "val_bits"]].to_numpy(dtype=float)
    return bool(len(values) and not np.isfinite(values).all())


def _adamw(model: nn.Module, lr: float, weight_decay: float, betas: tuple) -> torch.optim.AdamW:
    """AdamW with weight decay on parameters of two or more dimensions only."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas))


@torch.no_grad()
def _val_bits(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> float:
    model.eval()
    logits = model(x.to(device)).float()
    nats = F.cross_entropy(logits.flatten(0, 1), y.to(device).flatten())
    model.train()
    return float(nats) / math.log(2)


def train_lm(
    model: nn.Module,
    corpus: Corpus,
    steps: int,
    batch_size: int = LM_DEFAULTS["batch_size"],
    lr: float = LM_DEFAULTS["lr"],
    warmup_steps: int = LM_DEFAULTS["warmup_steps"],
    seed: int = 0,
    device: str | torch.device = "cpu",
    min_lr_ratio: float = LM_RECIPE["min_lr_ratio"],
    schedule: str = "cosine",
    loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> pd.DataFrame:
    """Train a character model in place on the corpus's training text (see the module docstring).

    Args:
        model: maps (batch, context) indices to logits and has a ``context`` attribute; trained in
            place on ``device`` and left there, in evaluation mode.
        corpus: the text; training windows come from its "train" split, the history's validation
            windows are the first ``LM_RECIPE["val_windows"]`` of "validation".
        steps: optimizer steps, at least 1.
        batch_size: windows per step, at least 1.
        lr: the peak learning rate, in (0, 1].
        warmup_steps: steps of linear warm-up, from 0 to ``steps``.
        seed: seed of the batches (and of torch's global generator, for dropout).
        device: where to train.
        min_lr_ratio: the cosine's (or the linear decay's) floor as a fraction of ``lr`` (0:
            annealed to zero).
        schedule: one of ``LM_SCHEDULES`` (``schedule_factor``); "onecycle" needs
            ``warmup_steps`` 0.
        loss_fn: the training loss of a batch, ``loss_fn(logits, x, y)`` with the model's
            (batch, context, vocab) logits and the (batch, context) inputs and targets on
            ``device`` (e.g. distillation from a teacher run on ``x``); None: cross-entropy.

    Returns:
        The history: one row per ``LM_RECIPE["eval_every"]`` steps (and the last) with ``step``,
        ``lr``, ``train_bits`` (mean training loss in bits since the previous row: ``loss_fn``'s
        when given),
        ``val_bits`` and ``seconds`` since the start. A NaN or infinite loss ends the run at once
        with a row of that step whose ``train_bits`` and ``val_bits`` are NaN (``diverged``).
    """
    steps = check_int("steps", steps, minimum=1)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    lr = check_float("lr", lr, 0.0, 1.0, low_inclusive=False)
    warmup_steps = check_int("warmup_steps", warmup_steps, minimum=0, maximum=steps)
    min_lr_ratio = check_float("min_lr_ratio", min_lr_ratio, 0.0, 1.0)
    check_schedule("schedule", schedule, warmup_steps)
    seed_everything(check_seed("seed", seed))
    device = torch.device(device)
    model.to(device).train()
    ids, context = corpus.ids("train"), model.context
    xv, yv = eval_windows(corpus.ids("validation"), context, LM_RECIPE["val_windows"])
    opt = _adamw(model, lr, LM_RECIPE["weight_decay"], LM_RECIPE["betas"])
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: schedule_factor(schedule, min(s, steps - 1), steps, warmup_steps, min_lr_ratio),
    )
    gen = torch.Generator().manual_seed(seed)
    rows, running, t0 = [], [], time.perf_counter()
    for step in range(steps):
        x, y = (t.to(device) for t in random_windows(ids, context, batch_size, gen))
        logits = model(x)
        if loss_fn is None:
            loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        else:
            loss = loss_fn(logits, x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), LM_RECIPE["grad_clip"])
        rate = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
        running.append(float(loss.detach()))
        if not math.isfinite(running[-1]):  # diverged: the weights are lost, stop here
            nan = float("nan")
            rows.append({"step": step + 1, "lr": rate, "train_bits": nan, "val_bits": nan,
                         "seconds": time.perf_counter() - t0})  # fmt: skip
            break
        if (step + 1) % LM_RECIPE["eval_every"] == 0 or step + 1 == steps:
            rows.append(
                {
                    "step": step + 1,
                    "lr": rate,
                    "train_bits": sum(running) / len(running) / math.log(2),
                    "val_bits": _val_bits(model, xv, yv, device),
                    "seconds": time.perf_counter() - t0,
                }
            )
            running = []
    model.eval()
    return pd.DataFrame(rows)


def lm_finetune(
    model: nn.Module,
    corpus: Corpus,
    steps: int,
    batch_size: int = LM_DEFAULTS["batch_size"],
    lr: float = 3e-4,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> pd.DataFrame:
    """Fine-tune a trained character model in place: ``train_lm`` without warm-up, the rate
    annealed from ``lr`` to a tenth of it. Pruning masks (``torch.nn.utils.prune``) stay in force:
    the masked weights get no update and stay zero.

    Args:
        model: the model (pruned or not), changed in place, left in evaluation mode.
        corpus: the text (training windows from its "train" split).
        steps: optimizer steps, at least 1.
        batch_size: windows per step.
        lr: the starting learning rate.
        seed: seed of the batches.
        device: where to train.

    Returns:
        ``train_lm``'s history.
    """
    return train_lm(model, corpus, steps, batch_size, lr, 0, seed, device)


def corpus_key(corpus: Corpus) -> dict[str, Any]:
    """What a model trained on a corpus depends on: the sha256 of each split's text, its works and
    its vocabulary.

    Args:
        corpus: the corpus.

    Returns:
        A JSON-able dict for a cache key.
    """
    digest = {
        s: hashlib.sha256(t.encode("utf-8")).hexdigest()[:16] for s, t in corpus.texts.items()
    }
    return {"texts": digest, "works": {s: list(w) for s, w in corpus.works.items()},
            "vocab": "".join(corpus.vocab.chars)}  # fmt: skip


@dataclass
class LMBaseline:
    """The shared trained character model with its corpus and training history."""

    model: CharTransformer
    corpus: Corpus
    history: pd.DataFrame
    config: dict
    from_cache: bool

    @property
    def train_seconds(self) -> float:
        """Seconds the training took (when it was trained, even if loaded from the cache now)."""
        return float(self.history["seconds"].iloc[-1]) if len(self.history) else 0.0


def get_lm_baseline(
    corpus: Corpus,
    seed: int = 0,
    model_args: dict[str, Any] | None = None,
    steps: int = LM_DEFAULTS["steps"],
    batch_size: int = LM_DEFAULTS["batch_size"],
    lr: float = LM_DEFAULTS["lr"],
    warmup_steps: int = LM_DEFAULTS["warmup_steps"],
    device: str = "cpu",
    schedule: str = "cosine",
) -> LMBaseline:
    """The shared character model for these settings, from the cache or trained now.

    Args:
        corpus: the text (``core.text.load_corpus``); its vocabulary sets the model's.
        seed: seed of the initialisation and of the batches.
        model_args: ``CharTransformer`` arguments besides the vocabulary size (context, width,
            depth, heads, mlp_ratio, dropout, norm, placement); None: its defaults.
        steps: optimizer steps.
        batch_size: windows per step.
        lr: the peak learning rate.
        warmup_steps: steps of linear warm-up before the cosine.
        device: where to train on a cache miss.
        schedule: the learning-rate schedule (``LM_SCHEDULES``); one other than "cosine" is
            part of the cache key (the default's key is the one it always had).

    Returns:
        The ``LMBaseline`` (model on the CPU, in evaluation mode; its weights are NaN when the
        run diverged: ``diverged(base.history)``).
    """
    args = dict(model_args or {})
    seed = check_seed("seed", seed)

    def build() -> nn.Module:
        torch.manual_seed(seed)
        return CharTransformer(corpus.vocab.size, **args)

    probe = build()  # checks the model arguments before anything is trained
    config = {
        "name": "char-transformer",
        "corpus": corpus_key(corpus),
        "model": probe.config,
        "seed": seed,
        "steps": check_int("steps", steps, minimum=1),
        "batch_size": check_int("batch_size", batch_size, minimum=1),
        "lr": check_float("lr", lr, 0.0, 1.0, low_inclusive=False),
        "warmup_steps": check_int("warmup_steps", warmup_steps, minimum=0, maximum=steps),
        **LM_RECIPE,
        "version": 1,
        **runtime_key(device),
    }
    if check_schedule("schedule", schedule, warmup_steps) != "cosine":
        config["schedule"] = schedule

    def train(model: nn.Module) -> dict:
        hist = train_lm(
            model, corpus, steps, batch_size, lr, warmup_steps, seed, device, schedule=schedule
        )
        return {"history": hist.to_dict(orient="list")}

    model, extras, hit = cached_model(config, build, train)
    return LMBaseline(model.eval(), corpus, pd.DataFrame(extras["history"]), config, hit)
