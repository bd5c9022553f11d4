"""Notebook 12's lesson code: the rows of its bits-per-character tables (paired block-bootstrap
intervals against the baseline), the pruned and fine-tuned models (cached; magnitude pruning, and
structured pruning of attention heads and MLP units), speed-ups from a side-by-side latency table,
samples side by side, its targets and the facts table its Discussion points at.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from nbhelpers.core.cache import cached_model
from nbhelpers.core.lm_baseline import LMBaseline, lm_finetune
from nbhelpers.core.transformer import generate
from nbhelpers.measure.bpc import paired_bpc_difference
from nbhelpers.measure.facts import fact_table
from nbhelpers.measure.targets import target
from nbhelpers.techniques import neuron_pruning, pruning

#: The issue's targets: bits per character lost at most, Linear weights smaller at least, the
#: dynamic int8 model faster at batch 32 at least; the pruning loss that counts as "exceeds".
MAX_LOSS = {"dynamic int8": 0.02, "int4": 0.05, "pruning": 0.05, "structured": 0.05}
MIN_RATIO = {"dynamic int8": 3.5, "int4": 6.0}
MIN_SPEEDUP = 1.5
#: Heads and MLP units removed: at least this speed-up at batch 32 (at ``MAX_LOSS["structured"]``).
MIN_STRUCTURED_SPEEDUP = 1.3


def bpc_row(
    name: str, base_losses: np.ndarray, losses: np.ndarray, block: int, **extra: Any
) -> dict:
    """One model's bits per character and its paired change against the baseline.

    Args:
        name: the model's row name.
        base_losses: the baseline's per-character losses in bits.
        losses: the model's, on the same characters.
        block: the bootstrap's block length in characters.
        **extra: more columns (bytes, sparsity, ...).

    Returns:
        {"model", "bpc", "change", "low", "high", "verdict", **extra}: change = model - baseline
        in bits per character (positive: worse), with its paired 95% interval.
    """
    d = paired_bpc_difference(base_losses, losses, block_length=block)
    return {
        "model": name,
        "bpc": d["bpc_b"],
        "change": d["difference"],
        "low": d["low"],
        "high": d["high"],
        "verdict": d["verdict"],
        **extra,
    }


def prunable_linears(model: nn.Module) -> list[str]:
    """The names of the layers magnitude pruning may cut: every ``Linear`` but one tied to the
    token embedding (the head), whose weight is the embedding."""
    emb = {m.weight.data_ptr() for m in model.modules() if isinstance(m, nn.Embedding)}
    return [n for n, m in pruning.prunable(model) if m.weight.data_ptr() not in emb]


def masked_model(
    base: LMBaseline,
    prune: Callable[[nn.Module], nn.Module],
    key: Mapping[str, Any],
    steps: int,
    lr: float,
    seed: int = 0,
    device: str = "cpu",
) -> tuple[nn.Module, pd.DataFrame | None, bool]:
    """The baseline pruned with masks (``torch.nn.utils.prune``), fine-tuned with the masks in
    force and made permanent; cached under the baseline's settings, ``key`` and the fine-tuning's.

    Args:
        base: the shared baseline.
        prune: masks a copy of the baseline in place and returns it.
        key: what the masks depend on ("name", the pattern, the layers, a version), for the cache.
        steps: fine-tuning steps (0: one-shot, nothing trained and nothing cached).
        lr: the fine-tuning's starting learning rate.
        seed: seed of the fine-tuning batches.
        device: where to fine-tune on a cache miss.

    Returns:
        (model on the CPU in evaluation mode, fine-tuning history or None, from_cache).
    """

    def build() -> nn.Module:
        return copy.deepcopy(base.model)

    if steps == 0:
        return pruning.make_permanent(prune(build())).eval(), None, False

    def train(model: nn.Module) -> dict:
        prune(model)
        hist = lm_finetune(model, base.corpus, steps, base.config["batch_size"], lr, seed, device)
        pruning.make_permanent(model)
        return {"history": hist.to_dict(orient="list")}

    config = {**base.config, **key, "finetune_steps": steps, "finetune_lr": lr,
              "finetune_seed": seed}  # fmt: skip
    model, extras, hit = cached_model(config, build, train)
    return model.eval(), pd.DataFrame(extras["history"]), hit


def pruned_model(
    base: LMBaseline,
    sparsity: float,
    steps: int,
    lr: float,
    seed: int = 0,
    device: str = "cpu",
) -> tuple[nn.Module, pd.DataFrame | None, bool]:
    """The baseline pruned to a global magnitude ``sparsity`` over its Linear weights (head and
    embeddings kept), then fine-tuned with the masks in force and made permanent; cached
    (``masked_model``).

    Args:
        base: the shared baseline.
        sparsity: fraction of the prunable weights set to zero, in [0, 1).
        steps: fine-tuning steps (0: one-shot, nothing trained and nothing cached).
        lr: the fine-tuning's starting learning rate.
        seed: seed of the fine-tuning batches.
        device: where to fine-tune on a cache miss.

    Returns:
        (model on the CPU in evaluation mode, fine-tuning history or None, from_cache).
    """
    names = prunable_linears(base.model)
    key = {"name": "char-transformer-pruned", "prune_sparsity": sparsity, "prune_scope": "global",
           "prune_layers": names, "prune_version": 1}  # fmt: skip
    return masked_model(
        base, lambda m: pruning.magnitude_prune(m, sparsity, "global", only=names), key, steps,
        lr, seed, device,
    )  # fmt: skip


def structured_model(
    base: LMBaseline,
    heads: Mapping[int, Sequence[int]],
    units: Mapping[int, Sequence[int]],
    steps: int,
    lr: float,
    seed: int = 0,
    device: str = "cpu",
) -> tuple[nn.Module, pd.DataFrame | None, bool]:
    """The baseline without the given attention heads and MLP units (physically smaller:
    ``neuron_pruning.prune_heads`` and ``prune_mlp_units``), then fine-tuned; cached.

    Args:
        base: the shared baseline.
        heads: {block: head indices} to remove (``neuron_pruning.select_removal``).
        units: {block: MLP unit indices} to remove.
        steps: fine-tuning steps (0: one-shot, nothing trained and nothing cached).
        lr: the fine-tuning's starting learning rate.
        seed: seed of the fine-tuning batches.
        device: where to fine-tune on a cache miss.

    Returns:
        (model on the CPU in evaluation mode, fine-tuning history or None, from_cache).
    """

    def build() -> nn.Module:
        return neuron_pruning.prune_mlp_units(neuron_pruning.prune_heads(base.model, heads), units)

    if steps == 0:
        return build().eval(), None, False

    def train(model: nn.Module) -> dict:
        hist = lm_finetune(model, base.corpus, steps, base.config["batch_size"], lr, seed, device)
        return {"history": hist.to_dict(orient="list")}

    plan = {"heads": {str(b): sorted(map(int, v)) for b, v in heads.items()},
            "units": {str(b): sorted(map(int, v)) for b, v in units.items()}}  # fmt: skip
    config = {**base.config, "name": "char-transformer-structured", "structured_removed": plan,
              "finetune_steps": steps, "finetune_lr": lr, "finetune_seed": seed,
              "structured_version": 1}  # fmt: skip
    model, extras, hit = cached_model(config, build, train)
    return model.eval(), pd.DataFrame(extras["history"]), hit


def speedups(latency: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Median latency per batch size with each model's speed-up over a reference.

    Args:
        latency: ``measure.latency`` of several models in one call.
        reference: the model every other is compared with (e.g. the dense baseline).

    Returns:
        Index batch_size; one median-ms column per model (the reference first), then
        ``speedup <name>`` = reference median / model median for each other model.
    """
    wide = latency.pivot(index="batch_size", columns="model", values="median_ms")
    others = [m for m in latency.model.unique() if m != reference]
    wide = wide[[reference, *others]]
    for m in others:
        wide[f"speedup {m}"] = wide[reference] / wide[m]
    return wide


def structured_targets(row: Mapping[str, Any], speedup: float, batch: int) -> list[dict]:
    """The issue's structured-pruning targets: the loss and the speed-up, each a target row.

    Args:
        row: the fine-tuned structured model's ``bpc_row`` (change, low, high).
        speedup: its speed-up over the dense baseline at ``batch``, timed side by side.
        batch: the batch size of the speed target.

    Returns:
        Two ``measure.targets.target`` dicts.
    """
    return [
        target("heads + MLP units pruned, fine-tuned: bits/char lost", row["change"], "<=",
               MAX_LOSS["structured"], "bits/char", "paired block bootstrap",
               interval=(row["low"], row["high"])),
        target(f"heads + MLP units pruned: speed-up at batch {batch}", speedup, ">=",
               MIN_STRUCTURED_SPEEDUP, "x", "median latency, timed side by side with dense"),
    ]  # fmt: skip


def structured_facts(
    heads: pd.DataFrame,
    removed: Mapping[str, int],
    table: pd.DataFrame,
    params: Mapping[str, int],
    speed: Mapping[str, float],
) -> list[tuple]:
    """The facts rows of the structured pruning, for ``summary``'s ``extra``.

    Args:
        heads: ``neuron_pruning.head_importance`` of the baseline.
        removed: {"heads", "heads_total", "units", "units_total"}: how many went, of how many.
        table: index "one-shot" and "fine-tuned"; change, low, high, verdict.
        params: {"dense", "pruned"}: parameter counts.
        speed: {"b1", "b32"}: speed-ups of the fine-tuned model over the dense one.

    Returns:
        (fact, value, unit, context) rows.
    """
    low = heads.loc[heads.normalized.idxmin()]
    where = f"block {int(low['block'])} head {int(low['head'])}"
    tuned, once = table.loc["fine-tuned"], table.loc["one-shot"]
    return [
        ("structured: heads removed", removed["heads"], "",
         f"of {removed['heads_total']}, the lowest normalized importance over all blocks"),
        ("structured: MLP units removed", removed["units"], "", f"of {removed['units_total']}"),
        ("structured: least important head", where, "",
         f"normalized importance {low.normalized:.3f}"),
        ("structured: parameters", int(params["pruned"]), "",
         f"dense {params['dense']}: {params['dense'] / params['pruned']:.2f}x fewer"),
        ("structured: one-shot change", once["change"], "bits/char", f"verdict {once['verdict']}"),
        ("structured: fine-tuned change", tuned["change"], "bits/char",
         f"[{tuned['low']:+.4f}, {tuned['high']:+.4f}], verdict {tuned['verdict']}"),
        ("structured: speed-up at batch 32", speed["b32"], "x", "timed side by side with dense"),
        ("structured: speed-up at batch 1", speed["b1"], "x", "timed side by side with dense"),
    ]  # fmt: skip


def first_over(sweep: pd.DataFrame, column: str, threshold: float) -> float | None:
    """The lowest sparsity whose change exceeds a threshold.

    Args:
        sweep: rows with ``sparsity`` and ``column``.
        column: the change column (bits per character, positive is worse).
        threshold: the loss that counts.

    Returns:
        That sparsity, or None when none exceeds it.
    """
    over = sweep[sweep[column] > threshold].sparsity
    return float(over.min()) if len(over) else None


def samples(
    models: Mapping[str, nn.Module], vocab: Any, prompt: str, n: int, seed: int
) -> pd.DataFrame:
    """Text sampled from each model after the same prompt with the same seed.

    Args:
        models: name -> character model.
        vocab: the corpus's ``Vocab``.
        prompt: the prompt text.
        n: characters to sample.
        seed: the sampler's seed (the same for every model).

    Returns:
        One row per model: ``model``, ``text`` (the prompt and the sample).
    """
    ids = vocab.encode(prompt)
    rows = []
    for name, m in models.items():
        out = generate(m, ids, n, 1.0, torch.Generator().manual_seed(seed))
        rows.append({"model": name, "text": vocab.decode(out)})
    return pd.DataFrame(rows).set_index("model")


def targets(
    quality: pd.DataFrame,
    dynamic: str,
    int4: Sequence[str],
    speedup: float,
    batch: int,
    pruned_at_half: Mapping[str, Any] | None,
) -> tuple[list[dict], list[dict]]:
    """The issue's targets for quantization and pruning, each against its measured value.

    Args:
        quality: the quantization table (index: model; change, low, high, ratio).
        dynamic: the dynamic int8 model's row.
        int4: the int4 per-group rows.
        speedup: the dynamic int8 model's speed-up at ``batch`` (fp32 median / int8 median).
        batch: the batch size of the speed target.
        pruned_at_half: the 50%-sparsity fine-tuned row (change, low, high, verdict); None when
            the sweep has no 50% level.

    Returns:
        (targets, speed targets) as ``measure.targets.target`` dicts; the speed target apart,
        because timings vary between runs.
    """
    row = quality.loc[dynamic]
    out = [
        target("dynamic int8: bits/char lost", row["change"], "<=", MAX_LOSS["dynamic int8"],
               "bits/char", "paired block bootstrap", interval=(row["low"], row["high"])),
        target("dynamic int8: Linear weights smaller", row["ratio"], ">=",
               MIN_RATIO["dynamic int8"], "x", "block Linear layers, int8 codes + scales"),
    ]  # fmt: skip
    speed = [target(f"dynamic int8: speedup at batch {batch}", speedup, ">=", MIN_SPEEDUP, "x",
                    "median latency, timed side by side with fp32")]  # fmt: skip
    for name in int4:
        r = quality.loc[name]
        out += [
            target(f"{name}: bits/char lost", r["change"], "<=", MAX_LOSS["int4"], "bits/char",
                   "paired block bootstrap", interval=(r["low"], r["high"])),
            target(f"{name}: Linear weights smaller", r["ratio"], ">=", MIN_RATIO["int4"], "x",
                   "uint4 codes + fp16 scale + uint4 zero per group"),
        ]  # fmt: skip
    if pruned_at_half is not None:
        r = pruned_at_half
        out.append(target("50% pruned + fine-tuned: interval's low end vs dense", r["low"], "<=",
                          0.0, "bits/char", f"change {r['change']:+.4f} [{r['low']:+.4f}, "
                          f"{r['high']:+.4f}]: <= 0 is within noise or better"))  # fmt: skip
    return out, speed


def _pct(x: float) -> str:
    return f"{100 * x:g}%"


def summary(
    baseline: Mapping[str, Any],
    quality: pd.DataFrame,
    outliers: pd.DataFrame,
    speed: Mapping[str, float],
    sweep: pd.DataFrame,
    names: Mapping[str, str],
    targets_: Sequence[Mapping[str, Any]],
    extra: Sequence[tuple] = (),
) -> pd.DataFrame:
    """This run's facts for the Discussion.

    Args:
        baseline: {"bpc", "low", "high", "params"}.
        quality: the quantization table (index: model; bpc, change, low, high, verdict, ratio).
        outliers: ``quantization.outlier_table`` of the baseline.
        speed: {"speedup_b1", "speedup_b<batch>", "batch", "gen_fp32", "gen_int8"}.
        sweep: the pruning table (sparsity; one_shot_change, change, low, high, verdict).
        names: {"dynamic", "per_channel", "per_tensor", "int4_best", "int4_worst",
            "int4_per_channel"}: rows of ``quality``.
        targets_: the targets (each with "name" and "met").
        extra: more (fact, value, unit, context) rows (``structured_facts``), before the count
            of targets met.

    Returns:
        A ``fact_table``.
    """
    q, b = quality.loc, speed["batch"]
    over = first_over(sweep, "change", MAX_LOSS["pruning"])
    over1 = first_over(sweep, "one_shot_change", MAX_LOSS["pruning"])
    top = sweep.iloc[-1]
    rows = [
        ("baseline: test bits/char", baseline["bpc"], "bits/char",
         f"95% interval [{baseline['low']:.3f}, {baseline['high']:.3f}]"),
        ("baseline: parameters", int(baseline["params"]), "", "head tied to the embedding"),
        ("dynamic int8: bits/char change", q[names["dynamic"]]["change"], "bits/char",
         f"verdict {q[names['dynamic']]['verdict']}"),
        ("dynamic int8: Linear weights smaller", q[names["dynamic"]]["ratio"], "x", "int8 codes"),
        (f"dynamic int8: speed-up at batch {b}", speed[f"speedup_b{b}"], "x", "timed side by side"),
        ("dynamic int8: speed-up at batch 1", speed["speedup_b1"], "x", "timed side by side"),
        ("dynamic int8: generation speed-up", speed["gen_int8"] / speed["gen_fp32"], "x",
         "characters per second, timed side by side"),
        ("int8 per-channel: bits/char change", q[names["per_channel"]]["change"], "bits/char",
         f"verdict {q[names['per_channel']]['verdict']}"),
        ("int8 per-tensor: bits/char change", q[names["per_tensor"]]["change"], "bits/char",
         f"verdict {q[names['per_tensor']]['verdict']}"),
        ("largest max/mean |w| of a layer", float(outliers.max_over_mean.max()), "",
         str(outliers.max_over_mean.idxmax())),
        ("per-tensor int8 error over per-channel, worst layer",
         float((outliers.rel_error_per_tensor / outliers.rel_error_per_channel).max()), "x",
         "relative weight error ratio"),
        ("int4 per-channel: bits/char change", q[names["int4_per_channel"]]["change"],
         "bits/char", "one scale per output row"),
        ("int4: smallest loss", q[names["int4_best"]]["change"], "bits/char", names["int4_best"]),
        ("int4: largest loss", q[names["int4_worst"]]["change"], "bits/char", names["int4_worst"]),
        ("pruning: first sparsity over 0.05 bits/char, fine-tuned",
         "none" if over is None else _pct(over), "", "lowest level of the sweep"),
        ("pruning: first sparsity over 0.05 bits/char, one-shot",
         "none" if over1 is None else _pct(over1), "", "lowest level of the sweep"),
        (f"pruning {_pct(top.sparsity)}: one-shot change", top["one_shot_change"], "bits/char",
         "no fine-tuning"),
        (f"pruning {_pct(top.sparsity)}: fine-tuned change", top["change"], "bits/char",
         f"verdict {top['verdict']}"),
        *extra,
        ("targets met", sum(bool(t["met"]) for t in targets_), "",
         f"of {len(targets_)}, the timed speed targets included"),
    ]  # fmt: skip
    return fact_table(rows, digits=4)
