"""Notebook 13's lesson code: train-and-score runs of the small character transformer (each cached
by ``core.lm_baseline.get_lm_baseline``), their status (trained, failed, diverged), tables of
bits per character with paired block-bootstrap intervals over the seeds, the pre-LN against
post-LN heatmap and target, the LR range test on a language model, and the facts table.

Seeds are pooled per configuration: a configuration's loss on each test character is the mean of
its seeds' losses, so a paired difference of two configurations compares the same characters and
averages over the seeds' initialisations and batch orders (the per-seed values are shown beside
it). A run **diverged** when its training loss became NaN or infinite; it **failed** when its test
bits per character are no better than ``unigram_bits``, what a model that knows only how often
each character occurs achieves.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from torch import nn

from nbhelpers.core.cache import cached_json
from nbhelpers.core.lm_baseline import corpus_key, diverged, get_lm_baseline, schedule_factor
from nbhelpers.core.text import Corpus, random_windows
from nbhelpers.core.train import seed_everything
from nbhelpers.measure.bpc import char_losses, paired_bpc_difference
from nbhelpers.measure.facts import fact_table
from nbhelpers.measure.targets import target
from nbhelpers.techniques import schedules

#: A run's or configuration's status, from worst to best.
STATUSES = ("diverged", "failed", "trained")
#: How the schedules read in tables; those that run without a separate warm-up.
SCHEDULE_LABELS = {"constant": "constant", "cosine": "warm-up + cosine",
                   "linear": "warm-up + linear", "onecycle": "one-cycle"}  # fmt: skip
NO_WARMUP = ("constant", "onecycle")


@dataclass
class Run:
    """One trained configuration and seed, scored on the test windows.

    Attributes:
        seed: its seed.
        model: the trained model (CPU, evaluation mode).
        history: ``train_lm``'s history.
        losses: per-character test losses in bits, or None when the run diverged or scored a
            non-finite loss.
        from_cache: whether it was loaded from the cache.
    """

    seed: int
    model: nn.Module
    history: pd.DataFrame
    losses: np.ndarray | None
    from_cache: bool

    @property
    def bpc(self) -> float:
        """Test bits per character (NaN when diverged)."""
        return math.nan if self.losses is None else float(self.losses.mean())


def train_and_score(
    corpus: Corpus,
    seed: int,
    model_args: Mapping[str, Any],
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int,
    batch_size: int,
    lr: float,
    warmup_steps: int,
    schedule: str = "cosine",
    device: str = "cpu",
) -> Run:
    """Train one configuration for one seed (or load it from the cache) and score it on the test
    windows.

    Args:
        corpus: the text.
        seed: the seed of the initialisation and the batches.
        model_args: ``CharTransformer`` arguments (context, width, depth, heads, norm, placement).
        x: test inputs, (windows, context).
        y: test targets.
        steps: optimizer steps.
        batch_size: windows per step.
        lr: the peak learning rate.
        warmup_steps: steps of linear warm-up (0 for "onecycle").
        schedule: one of ``core.lm_baseline.LM_SCHEDULES``.
        device: where to train on a cache miss.

    Returns:
        The ``Run``.
    """
    base = get_lm_baseline(
        corpus, seed, dict(model_args), steps, batch_size, lr, warmup_steps, device, schedule
    )
    model = base.model.cpu().eval()
    losses = None
    if not diverged(base.history):
        scored = char_losses(model, x, y, batch_size=64)
        losses = scored if np.isfinite(scored).all() else None
    return Run(seed, model, base.history, losses, base.from_cache)


def unigram_bits(corpus: Corpus, y: torch.Tensor) -> float:
    """Bits per character of the test targets under the training text's character frequencies
    (add-one smoothed): what a model that learned nothing but those frequencies scores.

    Args:
        corpus: the text (its vocabulary and training split).
        y: the scored test targets.

    Returns:
        Bits per character.
    """
    counts = torch.bincount(corpus.ids("train"), minlength=corpus.vocab.size).double() + 1
    p = counts / counts.sum()
    return float(-torch.log2(p[y.flatten()]).mean())


def status(runs: Sequence[Run], unigram: float) -> str:
    """A configuration's status over its seeds: "diverged" when a seed diverged, "failed" when the
    seeds' mean bits/char is no better than ``unigram``, else "trained".

    Args:
        runs: its runs, one per seed.
        unigram: ``unigram_bits``.

    Returns:
        One of ``STATUSES``.
    """
    if any(r.losses is None for r in runs):
        return "diverged"
    return "failed" if np.mean([r.bpc for r in runs]) >= unigram else "trained"


def pooled(runs: Sequence[Run]) -> np.ndarray | None:
    """Per-character losses averaged over the seeds (None when a seed diverged)."""
    if any(r.losses is None for r in runs):
        return None
    return np.mean([r.losses for r in runs], axis=0)


def config_row(runs: Sequence[Run], unigram: float) -> dict:
    """Status, mean and per-seed test bits/char and last validation bits/char of a configuration.

    Args:
        runs: its runs, one per seed.
        unigram: ``unigram_bits``.

    Returns:
        {"status", "bpc", "bpc_seeds", "val_bits", "diverged_seeds", "from_cache"}.
    """
    val = [float(r.history["val_bits"].iloc[-1]) for r in runs]
    return {
        "status": status(runs, unigram),
        "bpc": float(np.mean([r.bpc for r in runs])),
        "bpc_seeds": [round(r.bpc, 4) for r in runs],
        "val_bits": float(np.mean(val)),
        "diverged_seeds": sum(r.losses is None for r in runs),
        "from_cache": all(r.from_cache for r in runs),
    }


def compare(
    groups: Mapping[str, Sequence[Run]],
    reference: str,
    unigram: float,
    block: int,
    seed: int = 0,
) -> pd.DataFrame:
    """Each configuration against a reference: bits/char and the paired change with its 95%
    interval (moving block bootstrap over the test characters, seeds pooled).

    Args:
        groups: label -> runs (one per seed); ``reference`` among them.
        reference: the label every other row is compared with.
        unigram: ``unigram_bits``.
        block: the bootstrap's block length in characters.
        seed: the bootstrap's seed.

    Returns:
        Index: label; ``config_row``'s columns and ``change``, ``low``, ``high``, ``verdict``
        (NaN and "diverged" when either side diverged).
    """
    ref = pooled(groups[reference])
    rows = []
    for label, runs in groups.items():
        row = {"config": label, **config_row(runs, unigram)}
        mine = pooled(runs)
        if ref is None or mine is None:
            row.update(change=math.nan, low=math.nan, high=math.nan, verdict="diverged")
        else:
            d = paired_bpc_difference(ref, mine, block_length=block, seed=seed)
            row.update(change=d["difference"], low=d["low"], high=d["high"], verdict=d["verdict"])
        rows.append(row)
    return pd.DataFrame(rows).set_index("config")


def sweep_table(
    cells: Mapping[tuple[str, bool, float], Sequence[Run]], unigram: float
) -> pd.DataFrame:
    """The placement x warm-up x learning-rate sweep, one row per cell.

    Args:
        cells: (placement, warm-up or not, lr) -> runs.
        unigram: ``unigram_bits``.

    Returns:
        Columns placement, warmup, lr and ``config_row``'s.
    """
    return pd.DataFrame([{"placement": p, "warmup": w, "lr": lr, **config_row(runs, unigram)}
                         for (p, w, lr), runs in cells.items()])  # fmt: skip


def sweep_heatmap(sweep: pd.DataFrame, unigram: float) -> Figure:
    """Mean test bits/char per placement, warm-up and learning rate; diverged cells say so and
    failed cells (no better than the unigram model) are marked.

    Args:
        sweep: ``sweep_table``.
        unigram: ``unigram_bits``, the top of the colour scale.

    Returns:
        The figure.
    """
    sweep = sweep.assign(row=[f"{p}-LN, {'warm-up' if w else 'no warm-up'}"
                              for p, w in zip(sweep.placement, sweep.warmup)])  # fmt: skip
    values = sweep.pivot(index="row", columns="lr", values="bpc")
    text = ["diverged" if s == "diverged" else f"{b:.3f}" + ("\nfailed" if s == "failed" else "")
            for s, b in zip(sweep.status, sweep.bpc)]  # fmt: skip
    labels = sweep.assign(text=text).pivot(index="row", columns="lr", values="text")
    fig, ax = plt.subplots(figsize=(1.6 * values.shape[1] + 3, 0.7 * values.shape[0] + 1.5))
    low = np.nanmin(values.to_numpy()) if np.isfinite(values.to_numpy()).any() else 0.0
    im = ax.imshow(values.to_numpy(dtype=float), cmap="viridis_r", vmin=low, vmax=unigram,
                   aspect="auto")  # fmt: skip
    ax.set_facecolor("lightgrey")  # a diverged cell (NaN) shows the background
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            ax.text(j, i, labels.iloc[i, j], ha="center", va="center", fontsize=8, color="black",
                    bbox={"facecolor": "white", "alpha": 0.6, "lw": 0})  # fmt: skip
    ax.set_xticks(range(values.shape[1]), [f"{lr:g}" for lr in values.columns])
    ax.set_yticks(range(values.shape[0]), values.index)
    ax.set(xlabel="peak learning rate", title="mean test bits/char over seeds (lower is better)")
    fig.colorbar(im, ax=ax, label="bits/char (top: unigram model)")
    fig.tight_layout()
    return fig


def placement_rows(
    cells: Mapping[tuple[str, bool, float], Sequence[Run]],
    lrs: Sequence[float],
    unigram: float,
    block: int,
    seed: int = 0,
) -> pd.DataFrame:
    """Post-LN without warm-up against pre-LN without warm-up at each learning rate.

    A diverged post-LN run is scored as the uniform guess, ``log2(vocabulary)`` bits on every
    character, before its seeds are pooled for the paired difference (its real loss is undefined;
    a model that learned anything does better).

    Args:
        cells: the sweep's runs, (placement, warm-up, lr) -> runs.
        lrs: the learning rates.
        unigram: ``unigram_bits``.
        block: the bootstrap's block length.
        seed: the bootstrap's seed.

    Returns:
        One row per lr: pre_status, post_status, pre_bpc, post_bpc, change (post - pre), low,
        high, verdict, separated (every post-LN seed above every pre-LN seed), outcome ("fails",
        "worse", "not worse", or "pre-LN does not train").
    """
    rows = []
    for lr in lrs:
        pre, post = cells["pre", False, lr], cells["post", False, lr]
        s_pre, s_post = status(pre, unigram), status(post, unigram)
        row = {"lr": lr, "pre_status": s_pre, "post_status": s_post,
               "pre_bpc": float(np.mean([r.bpc for r in pre])),
               "post_bpc": float(np.mean([r.bpc for r in post]))}  # fmt: skip
        a = pooled(pre)
        if a is not None:
            uniform = np.full_like(a, math.log2(post[0].model.config["vocab_size"]))
            b = np.mean([uniform if r.losses is None else r.losses for r in post], axis=0)
            d = paired_bpc_difference(a, b, block_length=block, seed=seed)
            sep = min(r.bpc if r.losses is not None else math.inf for r in post) > max(
                r.bpc for r in pre
            )
            row.update(change=d["difference"], low=d["low"], high=d["high"],
                       verdict=d["verdict"], separated=bool(sep))  # fmt: skip
        else:
            row.update(change=math.nan, low=math.nan, high=math.nan, verdict="diverged",
                       separated=False)  # fmt: skip
        if s_pre != "trained":
            row["outcome"] = "pre-LN does not train"
        elif s_post != "trained":
            row["outcome"] = "fails"
        else:
            row["outcome"] = "worse" if row["verdict"] == "worse" else "not worse"
        rows.append(row)
    return pd.DataFrame(rows)


def placement_target(rows: pd.DataFrame) -> tuple[dict, float]:
    """The issue's target: post-LN without warm-up fails, or is measurably worse, at a learning
    rate where pre-LN trains.

    The learning rate judged is the one with the strongest evidence among those where pre-LN
    trains: a post-LN failure first, else the largest low end of the paired interval. The target
    is met when that low end is at least 0 (the whole interval above zero; a diverged post-LN
    model is scored as the uniform guess, ``placement_rows``).

    Args:
        rows: ``placement_rows``.

    Returns:
        (a ``measure.targets.target`` dict whose name gives the learning rate, or says that
        pre-LN trained at none of them; that learning rate, NaN for none).
    """
    ok = rows[rows.outcome != "pre-LN does not train"]
    name = "post-LN, no warm-up, minus pre-LN: interval's low end"
    if ok.empty:
        why = "missed: pre-LN without warm-up trained at none of the rates"
        return target(f"{name} (pre-LN at no lr)", math.nan, ">=", 0.0, "bits/char", why), math.nan
    strength = {i: (o == "fails", lo) for i, o, lo in zip(ok.index, ok.outcome, ok.low)}
    r = ok.loc[max(strength, key=strength.get)]
    note = (f"lr {r.lr:g}: post-LN {r.post_status} ({r.post_bpc:.3f}), pre-LN {r.pre_bpc:.3f}; "
            f"change {r.change:+.3f} [{r.low:+.3f}, {r.high:+.3f}], seeds "
            f"{'separated' if r.separated else 'overlap'}")  # fmt: skip
    return target(f"{name} at lr {r.lr:g}", r.low, ">=", 0.0, "bits/char", note,
                  interval=(r.low, r.high)), float(r.lr)  # fmt: skip


def schedule_traces(names: Sequence[str], steps: int, warmup_steps: int) -> pd.DataFrame:
    """The learning-rate factor of every step of each schedule, as ``train_lm`` applies it.

    Args:
        names: schedule names; those of ``NO_WARMUP`` without warm-up, the others with
            ``warmup_steps``.
        steps: steps of the run.
        warmup_steps: the warm-up of "cosine" and "linear".

    Returns:
        Long table: schedule, step, factor.
    """
    return pd.DataFrame([
        {"schedule": SCHEDULE_LABELS[n], "step": s,
         "factor": schedule_factor(n, s, steps, 0 if n in NO_WARMUP else warmup_steps)}
        for n in names for s in range(steps)
    ])  # fmt: skip


class _TokensAsClasses(nn.Module):
    """A character model whose logits come out (batch, vocabulary, tokens), the shape
    ``F.cross_entropy`` takes with (batch, tokens) targets."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, tokens) indices to (batch, vocabulary, tokens) logits."""
        return self.model(x).transpose(1, 2)


def lm_range_test(
    model: nn.Module,
    corpus: Corpus,
    batch_size: int,
    test: Mapping[str, float],
    weight_decay: float,
    seed: int = 0,
    device: str = "cpu",
) -> tuple[pd.DataFrame, dict[str, float], bool]:
    """Smith's LR range test on a character model with AdamW (``techniques.schedules``), cached.

    Args:
        model: the freshly initialised model (left unchanged; a copy trains).
        corpus: the text (random training windows, seeded).
        batch_size: windows per step.
        test: {"steps", "lr_min", "lr_max", "divisor"} (``schedules.check_range_test``).
        weight_decay: AdamW's weight decay.
        seed: seed of the windows and of torch.
        device: where to train the copy.

    Returns:
        (the test: step, lr, loss, smoothed_loss in bits per character; ``suggest_max_lr``'s
        suggestion; from_cache).
    """
    config = {"name": "lm-range-test", "corpus": corpus_key(corpus),
              "model": getattr(model, "config", repr(model)), "batch_size": batch_size,
              "test": dict(test), "weight_decay": weight_decay, "seed": seed, "version": 1,
              "torch": torch.__version__}  # fmt: skip

    def compute() -> list[dict]:
        gen = torch.Generator().manual_seed(seed)
        ids = corpus.ids("train")
        n = int(test["steps"])
        batches = [random_windows(ids, model.context, batch_size, gen) for _ in range(n)]
        seed_everything(seed)
        out = schedules.lr_range_test(_TokensAsClasses(model), batches, test["lr_min"],
                                      test["lr_max"], int(test["steps"]), device=device,
                                      optimizer="adamw", weight_decay=weight_decay)  # fmt: skip
        out[["loss", "smoothed_loss"]] /= math.log(2)  # nats to bits
        return out.to_dict(orient="records")

    rows, hit = cached_json(config, compute)
    frame = pd.DataFrame(rows)
    return frame, schedules.suggest_max_lr(frame, test["divisor"]), hit


def best_trained(sweep: pd.DataFrame, placement: str, warmup: bool) -> pd.Series | None:
    """The sweep's trained cell of least mean test bits/char for one placement and warm-up (None
    when none trained)."""
    part = sweep[(sweep.placement == placement) & (sweep.warmup == warmup)]
    part = part[part.status == "trained"]
    return None if part.empty else part.loc[part.bpc.idxmin()]


def summary(
    unigram: float,
    norms: pd.DataFrame,
    sweep: pd.DataFrame,
    target_row: Mapping[str, Any],
    target_lr: float,
    scheds: pd.DataFrame,
    range_suggestion: Mapping[str, float],
    runs_total: int,
    runs_cached: int,
) -> pd.DataFrame:
    """This run's facts for the Discussion.

    Args:
        unigram: ``unigram_bits``.
        norms: ``compare`` of the norms (reference "layernorm").
        sweep: ``sweep_table``.
        target_row: ``placement_target``'s target.
        target_lr: ``placement_target``'s learning rate (NaN: none).
        scheds: ``compare`` of the schedules (reference "constant").
        range_suggestion: ``suggest_max_lr``'s result.
        runs_total: distinct runs (configurations x seeds).
        runs_cached: of them, loaded from the cache.

    Returns:
        A ``fact_table``.
    """
    rows: list[tuple] = [("unigram model: test bits/char", unigram, "bits/char",
                          "the line between trained and failed")]  # fmt: skip
    for name, r in norms.iterrows():
        value = "diverged" if r.status == "diverged" else r.bpc
        rows.append((f"{name}: test bits/char", value, "bits/char", f"status {r.status}"))
        if name != "layernorm":
            rows.append((f"{name}: change vs layernorm", r.change, "bits/char",
                         f"[{r.low:+.3f}, {r.high:+.3f}], {r.verdict}"))  # fmt: skip
    for p in ("pre", "post"):
        for w in (False, True):
            best = best_trained(sweep, p, w)
            part = sweep[(sweep.placement == p) & (sweep.warmup == w)]
            label = f"{p}-LN {'with' if w else 'without'} warm-up"
            top = part[part.status == "trained"].lr.max() if best is not None else "none"
            rows.append((f"{label}: largest lr that trains", top, "", "of the swept rates"))
            where = "none trained" if best is None else f"at lr {best.lr:g}"
            value = math.nan if best is None else best.bpc
            rows.append((f"{label}: best bits/char", value, "bits/char", where))
            rows.append((f"{label}: runs diverged", int(part.diverged_seeds.sum()), "",
                         f"of {int(len(part) * len(part.bpc_seeds.iloc[0]))}"))  # fmt: skip
    rows.append(("post-LN without warm-up vs pre-LN: target", "met" if target_row["met"] else
                 "missed", "", f"judged at lr {target_lr:g}"))  # fmt: skip
    rows.append(("post-LN without warm-up vs pre-LN: low end", target_row["low"], "bits/char",
                 "paired 95% interval, seeds pooled"))  # fmt: skip
    for name, r in scheds.iterrows():
        if name != "constant":
            rows.append((f"{name}: change vs constant", r.change, "bits/char",
                         f"[{r.low:+.3f}, {r.high:+.3f}], {r.verdict}"))  # fmt: skip
    trained = scheds[scheds.status == "trained"]
    rows.append(("best schedule", trained.bpc.idxmin() if len(trained) else "none", "",
                 "least mean test bits/char"))  # fmt: skip
    rows.append(("range test: suggested peak lr", range_suggestion["max_lr"], "",
                 "least smoothed loss / divisor"))  # fmt: skip
    rows.append(("range test: lr of least loss", range_suggestion["lr_min_loss"], "", "AdamW"))
    best = best_trained(sweep, "pre", True)
    rows.append(("sweep: best lr, pre-LN with warm-up", math.nan if best is None else best.lr,
                 "", "least mean test bits/char"))  # fmt: skip
    rows.append(("runs trained now", runs_total - runs_cached, "", f"of {runs_total}"))
    return fact_table(rows, digits=4)
