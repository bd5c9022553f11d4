"""The reference for the transformer lessons' baseline: nanoGPT's own ``model.py`` trained with the
baseline's configuration and step count on the same split, scored on the same test characters.

Usage (nanoGPT's code stays outside this project: point ``--nanogpt`` at a checkout of it)::

    git clone https://github.com/karpathy/nanoGPT /tmp/nanoGPT
    python -m nbhelpers.reporting.nanogpt_reference --nanogpt /tmp/nanoGPT \\
        --commit "$(git -C /tmp/nanoGPT rev-parse --short HEAD)"

It imports ``GPT`` and ``GPTConfig`` from ``<nanogpt>/model.py``, builds the baseline's shape
(4 layers, 4 heads, width 128, context 128, no dropout, biases as GPT-2), and trains it the way
nanoGPT's ``train.py`` does: ``GPT.configure_optimizers`` (AdamW, decay on matrices only), the
learning rate of ``train.py``'s ``get_lr`` (linear warm-up, then a cosine to ``min_lr`` at
``lr_decay_iters``), the gradient norm clipped to 1. The baseline's own settings fill nanoGPT's
knobs: peak rate 3e-3, ``min_lr`` a tenth of it, 100 warm-up steps, ``lr_decay_iters`` = the step
count, betas (0.9, 0.99), weight decay 0.1, 32 windows per step drawn by the same seeded generator
as the baseline's (the same batches, step by step). Both models are then scored on the whole test
split (``measure.bpc``), the baseline from the cache (``core.lm_baseline.get_lm_baseline``, trained
if missing), with a paired block-bootstrap interval on the difference. The result goes to
``docs/nanogpt_reference.json``, which notebook 12 reads (``lessons.lm_reference``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from nbhelpers.core.lm_baseline import LM_DEFAULTS, LM_RECIPE, get_lm_baseline
from nbhelpers.core.machine import cpu_model
from nbhelpers.core.params import ParameterError, check_int
from nbhelpers.core.paths import project_dir
from nbhelpers.core.text import Corpus, eval_windows, load_corpus, random_windows
from nbhelpers.measure.bpc import bits_per_char, bpc_interval, char_losses, paired_bpc_difference

#: The baseline's shape (notebook 12's defaults), in nanoGPT's ``GPTConfig`` names.
SHAPE = {"block_size": 128, "n_layer": 4, "n_head": 4, "n_embd": 128, "dropout": 0.0, "bias": True}
#: Where the result is written (and where ``lessons.lm_reference`` reads it).
RESULT_PATH = Path("docs") / "nanogpt_reference.json"


def load_nanogpt(nanogpt_dir: str | Path) -> ModuleType:
    """Import nanoGPT's ``model.py`` from a checkout, without putting the checkout on the path.

    Args:
        nanogpt_dir: a folder holding nanoGPT's ``model.py``.

    Returns:
        The imported module (with ``GPT`` and ``GPTConfig``).
    """
    path = Path(nanogpt_dir) / "model.py"
    if not path.is_file():
        raise ParameterError("--nanogpt", str(nanogpt_dir), "a nanoGPT checkout holding model.py")
    spec = importlib.util.spec_from_file_location("nanogpt_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name in ("GPT", "GPTConfig"):
        if not hasattr(module, name):
            raise ParameterError("--nanogpt", str(path), f"nanoGPT's model.py, defining {name}")
    return module


def nanogpt_lr(it: int, lr: float, warmup_iters: int, lr_decay_iters: int, min_lr: float) -> float:
    """The learning rate of nanoGPT's ``train.py`` (``get_lr``) at iteration ``it``.

    Args:
        it: the iteration, from 0.
        lr: the peak rate (``learning_rate``).
        warmup_iters: steps of linear warm-up.
        lr_decay_iters: the step where the cosine reaches ``min_lr``.
        min_lr: the floor.

    Returns:
        ``lr * (it + 1) / (warmup_iters + 1)`` during warm-up, then
        ``min_lr + 0.5 * (1 + cos(pi * r)) * (lr - min_lr)`` with ``r`` the fraction of the decay
        done, and ``min_lr`` after ``lr_decay_iters``.
    """
    if it < warmup_iters:
        return lr * (it + 1) / (warmup_iters + 1)
    if it > lr_decay_iters:
        return min_lr
    ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


class AllPositions(nn.Module):
    """nanoGPT's ``GPT`` as a (batch, tokens) -> (batch, tokens, vocab) model: its forward returns
    every position's logits only when given targets (the targets do not change the logits)."""

    def __init__(self, gpt: nn.Module, context: int):
        super().__init__()
        self.gpt, self.context = gpt, context

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Every position's logits."""
        idx = idx.contiguous()
        return self.gpt(idx, idx)[0]


def train_nanogpt(module: ModuleType, corpus: Corpus, steps: int, seed: int = 0) -> tuple:
    """Train nanoGPT's GPT at the baseline's configuration (see the module docstring).

    Args:
        module: nanoGPT's ``model.py`` (``load_nanogpt``).
        corpus: the text; training windows from its "train" split.
        steps: optimizer steps (also ``lr_decay_iters``).
        seed: seed of the initialisation and of the batches (the baseline's).

    Returns:
        (the model wrapped by ``AllPositions``, in evaluation mode; training seconds).
    """
    steps = check_int("steps", steps, minimum=LM_DEFAULTS["warmup_steps"] + 1)
    torch.manual_seed(seed)
    gpt = module.GPT(module.GPTConfig(vocab_size=corpus.vocab.size, **SHAPE))
    lr, warmup = LM_DEFAULTS["lr"], LM_DEFAULTS["warmup_steps"]
    opt = gpt.configure_optimizers(LM_RECIPE["weight_decay"], lr, LM_RECIPE["betas"], "cpu")
    gen, ids = torch.Generator().manual_seed(seed), corpus.ids("train")
    gpt.train()
    t0 = time.perf_counter()
    for it in range(steps):
        for group in opt.param_groups:
            group["lr"] = nanogpt_lr(it, lr, warmup, steps, lr * LM_RECIPE["min_lr_ratio"])
        x, y = random_windows(ids, SHAPE["block_size"], LM_DEFAULTS["batch_size"], gen)
        _, loss = gpt(x.contiguous(), y.contiguous())  # nanoGPT views its targets
        loss.backward()
        nn.utils.clip_grad_norm_(gpt.parameters(), LM_RECIPE["grad_clip"])
        opt.step()
        opt.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - t0
    return AllPositions(gpt, SHAPE["block_size"]).eval(), seconds


def _interval(losses: Any) -> list[float]:
    """The 95% block-bootstrap interval of a model's test bits per character, as [low, high]."""
    ci = bpc_interval(losses)
    return [float(ci["low"]), float(ci["high"])]


def reference(nanogpt_dir: str | Path, steps: int, seed: int = 0, threads: int = 1) -> dict:
    """Train nanoGPT's model and score it beside the cached baseline on the whole test split.

    Args:
        nanogpt_dir: a nanoGPT checkout.
        steps: optimizer steps of both models (the baseline's cache key holds its own).
        seed: the baseline's seed.
        threads: CPU threads for training and scoring (the baseline trained on 1).

    Returns:
        The figures: each model's test bits per character and 95% interval, the baseline minus
        nanoGPT with its paired interval, training seconds of each, and the settings.
    """
    module = load_nanogpt(nanogpt_dir)  # a wrong folder stops here, before any training
    threads = check_int("threads", threads, minimum=1)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        corpus = load_corpus(None, SHAPE["block_size"])
        args = {"context": 128, "width": 128, "depth": 4, "heads": 4}
        base = get_lm_baseline(corpus, seed, args, steps=steps)
        model, seconds = train_nanogpt(module, corpus, steps, seed)
        x, y = eval_windows(corpus.ids("test"), SHAPE["block_size"])
        ours, theirs = char_losses(base.model, x, y), char_losses(model, x, y)
    finally:
        torch.set_num_threads(previous)
    diff = paired_bpc_difference(theirs, ours)
    return {
        "steps": steps, "seed": seed, "threads": threads, "shape": SHAPE,
        "batch_size": LM_DEFAULTS["batch_size"], "lr": LM_DEFAULTS["lr"],
        "warmup_steps": LM_DEFAULTS["warmup_steps"],
        "characters_scored": int(x.numel()),
        "nanogpt_bpc": bits_per_char(theirs), "nanogpt_interval": _interval(theirs),
        "baseline_bpc": bits_per_char(ours), "baseline_interval": _interval(ours),
        "baseline_minus_nanogpt": diff,
        "nanogpt_train_seconds": seconds,
        "baseline_train_seconds": float(base.history["seconds"].iloc[-1]),
        "baseline_from_cache": bool(base.from_cache),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Command line: run the reference and write ``docs/nanogpt_reference.json``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nanogpt", required=True, help="a nanoGPT checkout (holding model.py)")
    ap.add_argument("--commit", default="", help="the checkout's commit, recorded with the result")
    ap.add_argument("--steps", type=int, default=LM_DEFAULTS["steps"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(project_dir() / RESULT_PATH))
    a = ap.parse_args(argv)
    try:
        result = reference(a.nanogpt, a.steps, threads=a.threads)
    except ParameterError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    result.update({
        "nanogpt_commit": a.commit,
        "command": "python -m nbhelpers.reporting.nanogpt_reference " + " ".join(
            sys.argv[1:] if argv is None else argv),
        "machine": f"{cpu_model()}, {torch.get_num_threads()} threads available, "
                   f"torch {torch.__version__}, Python {platform.python_version()}",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
    })  # fmt: skip
    Path(a.out).write_text(json.dumps(result, indent=1, default=float) + "\n")
    print(json.dumps({k: result[k] for k in ("nanogpt_bpc", "baseline_bpc")}, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
