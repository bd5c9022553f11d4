"""Notebook 15's lesson code: the character transformer as a train-and-evaluate callable for
``techniques.hpo.optuna_search`` (``LMFit``), each search cached with the model of its best
complete trial, the winners scored on the test text with a paired block-bootstrap interval, how
well a rung ranks trials as the full run does, the target and the facts table.

A trial trains a fresh ``CharTransformer`` of the given size with AdamW (betas and gradient clip
of ``core.lm_baseline.LM_RECIPE``; the trial's weight decay on matrices only), a linear warm-up of
the trial's steps then a cosine to a tenth of its learning rate over the full ``steps``, and the
trial's dropout. The schedule spans the full run even when the pruner stops the trial early, so
the score at a rung is the score the full run has there.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from nbhelpers.core.cache import cached_model, runtime_key
from nbhelpers.core.lm_baseline import LM_RECIPE, corpus_key, schedule_factor
from nbhelpers.core.params import ParameterError
from nbhelpers.core.text import Corpus, eval_windows, random_windows
from nbhelpers.core.train import seed_everything
from nbhelpers.core.transformer import CharTransformer
from nbhelpers.measure.bpc import char_losses, paired_bpc_difference
from nbhelpers.measure.facts import fact_table
from nbhelpers.measure.targets import target
from nbhelpers.techniques.hpo import optuna_search

#: The hyperparameters searched, in the order a trial draws them.
SPACE_KEYS = ("lr", "warmup_steps", "weight_decay", "dropout")
#: The methods compared: random search trains every trial to the end; TPE with a pruner.
REFERENCE = "random"


def challenger_name(pruner: str) -> str:
    """The label of TPE with a pruner, e.g. "tpe+asha"."""
    return f"tpe+{pruner}"


def check_lm_space(name: str, space: Any, steps: int) -> dict[str, dict]:
    """Check the language model's search space: exactly ``SPACE_KEYS``, each within what a trial
    can train with.

    Args:
        name: the notebook parameter (named in errors).
        space: {"lr", "warmup_steps", "weight_decay", "dropout"} -> {"low", "high"[, "log"][,
            "int"]}.
        steps: steps of a full trial (the longest warm-up).

    Returns:
        The checked space (``optuna_search.check_space``).
    """
    space = optuna_search.check_space(name, space)
    if tuple(space) != SPACE_KEYS:
        raise ParameterError(name, list(space), f"exactly the keys {', '.join(SPACE_KEYS)}, in "
                                                "this order")  # fmt: skip
    rules = {
        "lr": ("a real range within (0, 1]", lambda d: d["low"] > 0 and d["high"] <= 1),
        "warmup_steps": (
            f"an integer range ('int': True) within [0, {steps}] (the steps of a trial)",
            lambda d: d["low"] >= 0 and d["high"] <= steps,
        ),
        "weight_decay": ("a real range within [0, 1]", lambda d: d["low"] >= 0 and d["high"] <= 1),
        "dropout": ("a real range within [0, 1)", lambda d: d["low"] >= 0 and d["high"] < 1),
    }
    for key, (allowed, ok) in rules.items():
        if not ok(space[key]) or space[key]["int"] != (key == "warmup_steps"):
            raise ParameterError(f"{name}[{key!r}]", space[key], allowed)
    return space


class LMFit:
    """The character transformer as a train-and-evaluate callable (``optuna_search.Fit``).

    Calling it with (params, seed, checkpoints) trains a fresh model and yields (step, validation
    bits per character) at each checkpoint (or (step, NaN) when the loss stops being finite).
    The model of the best trial that trained to ``steps`` is kept in ``best``.

    Args:
        corpus: the text; training windows from "train", scores on the first ``val_windows``
            windows of "validation".
        model_args: ``CharTransformer`` arguments besides the vocabulary and the dropout.
        steps: steps of a full trial (the schedule's length).
        batch_size: windows per step.
        val_windows: validation windows scored at each checkpoint.
        device: where to train.
    """

    def __init__(self, corpus: Corpus, model_args: Mapping[str, Any], steps: int,
                 batch_size: int, val_windows: int, device: str = "cpu"):  # fmt: skip
        self.vocab, self.args = corpus.vocab.size, dict(model_args)
        self.steps, self.batch_size, self.device = steps, batch_size, torch.device(device)
        self.ids = corpus.ids("train")
        context = int(self.args["context"])
        self.xv, self.yv = eval_windows(corpus.ids("validation"), context, val_windows)
        self.best: dict[str, Any] | None = None

    def score(self, model: nn.Module) -> float:
        """Validation bits per character of a model (evaluation mode, restored after)."""
        return float(char_losses(model, self.xv, self.yv, batch_size=64).mean())

    def __call__(self, params: Mapping[str, Any], seed: int, checkpoints: Sequence[int]
                 ) -> Iterator[tuple[int, float]]:  # fmt: skip
        """Train one trial; yield (step, validation bits/char) at each checkpoint."""
        seed_everything(seed)
        model = CharTransformer(self.vocab, **self.args, dropout=float(params["dropout"]))
        model.to(self.device).train()
        mats = [p for p in model.parameters() if p.ndim >= 2]
        rest = [p for p in model.parameters() if p.ndim < 2]
        opt = torch.optim.AdamW([{"params": mats, "weight_decay": params["weight_decay"]},
                                 {"params": rest, "weight_decay": 0.0}],
                                lr=params["lr"], betas=LM_RECIPE["betas"])  # fmt: skip
        warm, steps = int(params["warmup_steps"]), self.steps
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: schedule_factor(
            "cosine", min(s, steps - 1), steps, warm, LM_RECIPE["min_lr_ratio"]))  # fmt: skip
        gen, pending = torch.Generator().manual_seed(seed), list(checkpoints)
        for step in range(1, pending[-1] + 1):
            x, y = random_windows(self.ids, model.context, self.batch_size, gen)
            loss = F.cross_entropy(model(x.to(self.device)).flatten(0, 1),
                                   y.to(self.device).flatten())  # fmt: skip
            if not math.isfinite(float(loss.detach())):
                yield step, math.nan
                return
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), LM_RECIPE["grad_clip"])
            opt.step()
            sched.step()
            if step == pending[0]:
                pending.pop(0)
                value = self.score(model)
                if step == steps and (self.best is None or value < self.best["value"]):
                    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
                    self.best = {"value": value, "seed": seed, "params": dict(params),
                                 "state_dict": state}  # fmt: skip
                yield step, value


@dataclass
class SearchRun:
    """One search of one method and seed, with the model of its best complete trial.

    Attributes:
        method: "random" or ``challenger_name``.
        seed: the study's seed.
        trials: ``optuna_search.search``'s table.
        model: the best complete trial's model as trained (CPU, evaluation mode), or None when no
            trial completed.
        best: {"value", "seed", "params"} of that trial, or None.
        from_cache: whether it was loaded from the cache.
    """

    method: str
    seed: int
    trials: pd.DataFrame
    model: nn.Module | None
    best: dict | None
    from_cache: bool


def cached_search(corpus: Corpus, model_args: Mapping[str, Any], space: Mapping[str, dict],
                  steps: int, budget: int, batch_size: int, val_windows: int, sampler: str,
                  pruner: str, rungs: Sequence[int], eta: int, seed: int, startup: int,
                  device: str = "cpu") -> SearchRun:  # fmt: skip
    """Run one search on the character transformer (``optuna_search.search`` with ``LMFit``), or
    load it and its best model from the cache.

    Args:
        corpus: the text.
        model_args: ``CharTransformer`` arguments (context, width, depth, heads).
        space: the checked space (``check_lm_space``).
        steps: steps of a full trial.
        budget: training steps of the search.
        batch_size: windows per step.
        val_windows: validation windows a trial is scored on.
        sampler: "tpe" or "random".
        pruner: one of ``optuna_search.PRUNERS``.
        rungs: where trials report (``optuna_search.check_rungs``).
        eta: the pruner's reduction factor.
        seed: the study's seed.
        startup: TPE's random start-up trials.
        device: where to train on a cache miss.

    Returns:
        The ``SearchRun``.
    """
    import optuna

    config = {"name": "lm-search", "corpus": corpus_key(corpus), "model": dict(model_args),
              "space": dict(space), "steps": steps, "budget": budget, "batch_size": batch_size,
              "val_windows": val_windows, "sampler": sampler, "pruner": pruner,
              "rungs": list(rungs), "eta": eta, "seed": seed,
              "startup": startup if sampler == "tpe" else None,
              "recipe": LM_RECIPE, "optuna": optuna.__version__, "version": 1,
              **runtime_key(device)}  # fmt: skip
    fit = LMFit(corpus, model_args, steps, batch_size, val_windows, device)

    def build() -> nn.Module:
        return CharTransformer(corpus.vocab.size, **model_args)

    def train(model: nn.Module) -> dict:
        trials = optuna_search.search(fit, space, steps, budget, sampler, pruner, rungs, eta,
                                      seed, startup)  # fmt: skip
        best = None
        if fit.best is not None:
            model.load_state_dict(fit.best["state_dict"])
            best = {k: fit.best[k] for k in ("value", "seed", "params")}
        return {"trials": trials.to_dict(orient="list"), "best": best}

    model, extras, hit = cached_model(config, build, train)
    best = extras["best"]
    label = REFERENCE if sampler == "random" else challenger_name(pruner)
    return SearchRun(label, seed, pd.DataFrame(extras["trials"]),
                     model.eval() if best else None, best, hit)  # fmt: skip


def method_table(runs: Mapping[str, Sequence[SearchRun]]) -> pd.DataFrame:
    """What each method's searches did, summed over seeds.

    Args:
        runs: method -> its searches, one per seed.

    Returns:
        One row per method: seeds, trials, one column per state of ``optuna_search.STATES``,
        steps spent, mean steps per trial, mean and per-seed best validation bits/char.
    """
    rows = []
    for method, searches in runs.items():
        t = pd.concat([r.trials for r in searches])
        bests = [float(r.trials["value"].min()) for r in searches]
        rows.append({"method": method, "seeds": len(searches), "trials": len(t),
                     **{s: int((t.state == s).sum()) for s in optuna_search.STATES},
                     "steps_spent": int(t.steps.sum()), "steps_per_trial": float(t.steps.mean()),
                     "best_val_bpc": float(np.mean(bests)),
                     "best_val_seeds": [round(b, 4) for b in bests]})  # fmt: skip
    return pd.DataFrame(rows).set_index("method")


def winners(runs: Mapping[str, Sequence[SearchRun]], x: torch.Tensor, y: torch.Tensor
            ) -> tuple[pd.DataFrame, dict[str, np.ndarray | None]]:  # fmt: skip
    """Each search's best configuration and its model's test bits per character, as trained.

    Args:
        runs: method -> its searches, one per seed.
        x: test inputs, (windows, context).
        y: test targets.

    Returns:
        (one row per method and seed: method, seed, the hyperparameters, val_bpc, test_bpc;
        method -> per-character test losses averaged over its seeds' winners, None when a seed
        has no winner).
    """
    rows, pooled = [], {}
    for method, searches in runs.items():
        losses = []
        for r in searches:
            scored = None if r.model is None else char_losses(r.model, x, y, batch_size=64)
            losses.append(scored)
            params = r.best["params"] if r.best else dict.fromkeys(SPACE_KEYS, math.nan)
            rows.append(
                {
                    "method": method,
                    "seed": r.seed,
                    **params,
                    "val_bpc": r.best["value"] if r.best else math.nan,
                    "test_bpc": math.nan if scored is None else float(scored.mean()),
                }
            )
        ok = all(v is not None for v in losses)
        pooled[method] = np.mean(losses, axis=0) if ok else None  # fmt: skip
    return pd.DataFrame(rows), pooled


def compare_winners(pooled: Mapping[str, np.ndarray | None], reference: str, challenger: str,
                    block: int, seed: int = 0) -> dict[str, Any]:  # fmt: skip
    """Test bits/char of the challenger's winners minus the reference's, seeds pooled, with a
    paired moving-block bootstrap interval (``measure.bpc``).

    Args:
        pooled: ``winners``'s per-character losses per method.
        reference: e.g. "random".
        challenger: e.g. "tpe+asha".
        block: the bootstrap's block length in characters.
        seed: the bootstrap's seed.

    Returns:
        ``paired_bpc_difference``'s dict (negative: the challenger's winners are better), or
        NaNs and verdict "no winner" when a side has none.
    """
    a, b = pooled[reference], pooled[challenger]
    if a is None or b is None:
        nan = math.nan
        return {"difference": nan, "low": nan, "high": nan, "bpc_a": nan, "bpc_b": nan,
                "verdict": "no winner"}  # fmt: skip
    return paired_bpc_difference(a, b, block_length=block, seed=seed)


def rung_agreement(runs: Sequence[SearchRun], rungs: Sequence[int], eta: int) -> pd.DataFrame:
    """How well each rung ranks random search's trials as their full runs do: the pruner's bet.

    Random search trains every trial to the end and still reports at the rungs, so its trials
    give, per seed, Spearman's rank correlation between the score at a rung and at the end, and
    whether the trial best at the end was among the best ``ceil(n / eta)`` of the ``n`` at the
    rung (what a rung of successive halving over those trials would keep).

    Args:
        runs: random search's runs, one per seed.
        rungs: the rungs.
        eta: the pruner's reduction factor.

    Returns:
        One row per rung: rung, spearman (mean over seeds), spearman_seeds, best_kept (the seeds
        where it was kept), seeds.
    """
    from scipy.stats import spearmanr

    rows = []
    for r in rungs:
        rhos, kept = [], 0
        for run in runs:
            t = run.trials[run.trials.state == "complete"]
            at, end = t[f"rung_{r}"].to_numpy(float), t["value"].to_numpy(float)
            rhos.append(float(spearmanr(at, end).statistic) if len(t) > 2 else math.nan)
            rank = int((at < at[np.argmin(end)]).sum()) + 1 if len(t) else 0
            kept += bool(len(t)) and rank <= math.ceil(len(t) / eta)
        rows.append({"rung": r, "spearman": float(np.nanmean(rhos)) if any(
            np.isfinite(rhos)) else math.nan, "spearman_seeds": [round(v, 3) for v in rhos],
            "best_kept": kept, "seeds": len(runs)})  # fmt: skip
    return pd.DataFrame(rows)


def plot_trials(runs: Mapping[str, Sequence[SearchRun]], ylabel: str = "validation bits/char"
                ) -> Any:  # fmt: skip
    """Where each method sampled: every trial's learning rate against the last score it reached,
    by how it ended, one panel per method (all seeds).

    Args:
        runs: method -> its searches, one per seed.
        ylabel: the score axis's label.

    Returns:
        The figure.
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    marks = {"complete": ("o", "C0"), "pruned": ("x", "C3"), "cut": ("s", "grey"),
             "diverged": ("^", "k")}  # fmt: skip
    fig, axes = plt.subplots(1, len(runs), figsize=(4.2 * len(runs) + 0.4, 3.4), sharey=True,
                             squeeze=False)  # fmt: skip
    for ax, (method, searches) in zip(axes[0], runs.items()):
        t = pd.concat([r.trials for r in searches])
        for state, (m, c) in marks.items():
            part = t[t.state == state]
            if len(part):
                ax.scatter(part.lr, part["last"], marker=m, c=c, s=22, label=state)
        ax.set(xscale="log", xlabel="learning rate", title=method)
        ax.xaxis.set_minor_formatter(NullFormatter())  # no labels on the minor ticks
    axes[0][0].set_ylabel(f"{ylabel} (at the step it stopped)")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    return fig


def search_target(reach: pd.DataFrame, challenger: str, cap: int) -> dict:
    """The issue's target: TPE with the pruner reaches random search's best in at most half the
    training steps random search needed to find it, over seeds.

    The measured value is the mean over seeds of ``optuna_search.reach_table``'s ratio; a seed
    whose challenger never reached counts as its budget + 1 steps (a lower bound, and the target
    is then missed: ``measure.targets``' censored rule).

    Args:
        reach: ``optuna_search.reach_table`` (reference random search).
        challenger: the challenger's label.
        cap: the steps each challenger search had (the budget).

    Returns:
        A ``measure.targets.target`` dict.
    """
    per_seed = ", ".join("never" if not r.reached else f"{r.ratio:.2f}"
                         for r in reach.itertuples())  # fmt: skip
    return target(f"{challenger}: steps to random search's best / random search's steps to it",
                  float(reach.ratio.mean()), "<=", 0.5, "x", f"per seed: {per_seed}",
                  reached=int(reach.reached.sum()), seeds=len(reach), cap=cap)  # fmt: skip


def summary(methods: pd.DataFrame, reach: pd.DataFrame, goal: Mapping[str, Any],
            rungs: pd.DataFrame, win: pd.DataFrame, change: Mapping[str, Any],
            challenger: str) -> pd.DataFrame:  # fmt: skip
    """This run's facts for the Discussion.

    Args:
        methods: ``method_table``.
        reach: ``optuna_search.reach_table`` (reference random search).
        goal: ``search_target``.
        rungs: ``rung_agreement``.
        win: ``winners``'s table.
        change: ``compare_winners``.
        challenger: the challenger's label.

    Returns:
        A ``fact_table``.
    """
    ref, ch, got = methods.loc[REFERENCE], methods.loc[challenger], reach[reach.reached]
    first = rungs.iloc[0]
    test = win.groupby("method").test_bpc.mean()
    rows = [
        ("random: trials per seed", ref.trials / ref.seeds, "trials", "every one to the end"),
        ("TPE + pruner: trials per seed", ch.trials / ch.seeds, "trials",
         f"{challenger}, same budget"),
        ("TPE + pruner: share of trials pruned", ch.pruned / ch.trials, "",
         f"mean {ch.steps_per_trial:.0f} steps a trial"),
        ("random: best validation bits/char", ref.best_val_bpc, "bits/char", "mean over seeds"),
        ("TPE + pruner: best validation bits/char", ch.best_val_bpc, "bits/char",
         "mean over seeds"),
        ("random: steps to its best", float(reach.reference_steps.mean()), "steps",
         "mean over seeds"),
        ("TPE + pruner: seeds reaching random's best", int(reach.reached.sum()), "seeds",
         f"of {len(reach)}"),
        ("TPE + pruner: steps to random's best", float(got.challenger_steps.mean())
         if len(got) else math.nan, "steps", "mean over the seeds that reached"),
        ("TPE + pruner: steps ratio", goal["measured"], "x",
         "lower bound" if goal.get("censored") else "mean over seeds"),
        ("target met", goal["met"], "", "mean ratio <= 0.5, every seed reached"),
        ("first rung: Spearman with the end", first.spearman, "",
         f"at {int(first.rung)} steps, random search's trials"),
        ("first rung: seeds whose best trial it keeps", int(first.best_kept), "seeds",
         f"of {int(first.seeds)}"),
        ("random: winners' test bits/char", float(test.get(REFERENCE, math.nan)), "bits/char",
         "mean over seeds"),
        ("TPE + pruner: winners' test bits/char", float(test.get(challenger, math.nan)),
         "bits/char", "mean over seeds"),
        ("TPE + pruner minus random: winners' test bits/char", change["difference"],
         "bits/char", f"[{change['low']:+.3f}, {change['high']:+.3f}], {change['verdict']}"),
    ]  # fmt: skip
    return fact_table(rows, digits=4)
