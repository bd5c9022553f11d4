"""Notebook 12's later compression parts: the 2:4 semi-structured model (cached, fine-tuned with
its masks like the magnitude-pruned ones), the 2:4 pattern against 50% unstructured pruning with
paired intervals, and ONNX Runtime's dynamic int8 set beside torch.ao's; their facts rows and the
rows that hold them to the existing targets, shown beside the targets and not counted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from nbhelpers.core.lm_baseline import LMBaseline
from nbhelpers.lessons.transformer_compression import (
    MAX_LOSS,
    MIN_RATIO,
    MIN_SPEEDUP,
    bpc_row,
    masked_model,
    prunable_linears,
)
from nbhelpers.measure.bpc import paired_bpc_difference
from nbhelpers.measure.targets import target
from nbhelpers.techniques import pruning

#: The two patterns at one half of the weights: their row names in ``pattern_table``.
PATTERNS = ("50% unstructured", "2:4")
STAGES = ("one-shot", "fine-tuned")


def semi_structured_model(
    base: LMBaseline,
    steps: int,
    lr: float,
    seed: int = 0,
    device: str = "cpu",
) -> tuple[nn.Module, pd.DataFrame | None, bool]:
    """The baseline with every prunable Linear (head and embeddings kept) pruned to 2:4, then
    fine-tuned with the masks in force as ``pruned_model`` does; cached (``masked_model``).

    Args:
        base: the shared baseline.
        steps: fine-tuning steps (0: one-shot, nothing trained and nothing cached).
        lr: the fine-tuning's starting learning rate.
        seed: seed of the fine-tuning batches.
        device: where to fine-tune on a cache miss.

    Returns:
        (model on the CPU in evaluation mode, fine-tuning history or None, from_cache).
    """
    names = prunable_linears(base.model)
    key = {"name": "char-transformer-2:4", "prune_pattern": "2:4", "prune_layers": names,
           "prune_version": 1}  # fmt: skip
    return masked_model(
        base, lambda m: pruning.semi_structured_prune(m, 2, 4, only=names), key, steps, lr,
        seed, device,
    )  # fmt: skip


def pattern_table(
    base_losses: np.ndarray, losses: Mapping[tuple[str, str], np.ndarray], block: int
) -> pd.DataFrame:
    """The two patterns at 50%, one-shot and fine-tuned: each against the dense baseline, and 2:4
    against 50% unstructured at the same stage, with paired block-bootstrap intervals.

    Args:
        base_losses: the dense baseline's per-character losses in bits.
        losses: (pattern, stage) -> per-character losses, for every pattern of ``PATTERNS`` and
            stage of ``STAGES``.
        block: the bootstrap's block length in characters.

    Returns:
        Index (pattern, stage); bpc, change, low, high, verdict (against dense); and for the 2:4
        rows vs_unstructured, vs_low, vs_high, vs_verdict (2:4 minus unstructured, positive: 2:4
        is worse), NaN/"" for the unstructured rows.
    """
    rows = []
    for stage in STAGES:
        for pattern in PATTERNS:
            r = bpc_row(pattern, base_losses, losses[(pattern, stage)], block, stage=stage)
            r.update(vs_unstructured=np.nan, vs_low=np.nan, vs_high=np.nan, vs_verdict="")
            if pattern == "2:4":
                d = paired_bpc_difference(losses[(PATTERNS[0], stage)], losses[(pattern, stage)],
                                          block_length=block)  # fmt: skip
                r.update(vs_unstructured=d["difference"], vs_low=d["low"], vs_high=d["high"],
                         vs_verdict=d["verdict"])  # fmt: skip
            rows.append(r)
    return pd.DataFrame(rows).rename(columns={"model": "pattern"}).set_index(["pattern", "stage"])


def _interval(r: Mapping[str, Any], lo: str = "low", hi: str = "high") -> str:
    """A row's interval as text."""
    return f"[{r[lo]:+.4f}, {r[hi]:+.4f}]"


def pattern_facts(
    table: pd.DataFrame, layer_sparsity: pd.Series, gpu: Mapping[str, Any]
) -> list[tuple]:
    """The facts rows of the 2:4 comparison, for ``summary``'s ``extra``.

    Args:
        table: ``pattern_table``.
        layer_sparsity: the 2:4 model's fraction of zeros per pruned layer.
        gpu: {"status", "speedup_b32"}: the sparse kernels' timing on a GPU, or why it did not run.

    Returns:
        (fact, value, unit, context) rows.
    """
    rows = [("2:4: zeros per Linear weight", float(layer_sparsity.min()), "",
             f"min over {len(layer_sparsity)} layers; max {layer_sparsity.max():.4f}")]  # fmt: skip
    for stage in STAGES:
        r, u = table.loc[("2:4", stage)], table.loc[(PATTERNS[0], stage)]
        rows += [
            (f"2:4 {stage}: change vs dense", r["change"], "bits/char",
             f"{_interval(r)}, verdict {r['verdict']}"),
            (f"50% unstructured {stage}: change vs dense", u["change"], "bits/char",
             f"{_interval(u)}, verdict {u['verdict']}"),
            (f"2:4 minus 50% unstructured, {stage}", r["vs_unstructured"], "bits/char",
             f"{_interval(r, lo='vs_low', hi='vs_high')}, verdict {r['vs_verdict']}"),
        ]  # fmt: skip
    speed = gpu.get("speedup_b32")
    rows.append(("2:4 sparse kernels: speed-up at batch 32", gpu["status"] if speed is None
                 else float(speed), "" if speed is None else "x",
                 "fp16 on a GPU, against dense fp16"))  # fmt: skip
    return rows


def ort_facts(
    quality: pd.DataFrame, agreement: Mapping[str, float], speed: pd.DataFrame
) -> list[tuple]:
    """The facts rows of ONNX Runtime's dynamic int8 beside torch.ao's.

    Args:
        quality: index "ORT fp32" and "ORT dynamic int8"; change, low, high, verdict,
            weight_ratio.
        agreement: ``quantization.fp32_agreement`` of the fp32 ORT model.
        speed: median ms per batch size (index) with columns "fp32", "dynamic int8", "ORT fp32"
            and "ORT dynamic int8", timed side by side.

    Returns:
        (fact, value, unit, context) rows.
    """
    r = quality.loc["ORT dynamic int8"]
    rows = [
        ("ORT fp32: max |logit difference| vs torch", agreement["max_abs_diff"], "",
         f"tolerance {agreement['tolerance']:.3g} from torch's own float32 rounding"),
        ("ORT dynamic int8: bits/char change", r["change"], "bits/char",
         f"{_interval(r)}, verdict {r['verdict']}"),
        ("ORT dynamic int8: MatMul weights smaller", r["weight_ratio"], "x",
         "int8 codes + scales, the head's copy included"),
    ]  # fmt: skip
    for b in speed.index:
        s = speed.loc[b]
        rows += [
            (f"ORT dynamic int8: speed-up over torch fp32 at batch {b}",
             s["fp32"] / s["ORT dynamic int8"], "x", "timed side by side"),
            (f"ORT dynamic int8: speed-up over ORT fp32 at batch {b}",
             s["ORT fp32"] / s["ORT dynamic int8"], "x", "timed side by side"),
            (f"ORT dynamic int8 over torch.ao dynamic int8 at batch {b}",
             s["dynamic int8"] / s["ORT dynamic int8"], "x", "above 1: ORT is faster"),
        ]  # fmt: skip
    return rows


def beside_targets(
    ort: Mapping[str, Any], ort_speedup: float, batch: int, semi: Mapping[str, Any]
) -> list[dict]:
    """The existing targets applied to ONNX Runtime's dynamic int8 and to 2:4 after fine-tuning,
    shown beside the issue's targets (which are torch.ao's and 50% unstructured's), not counted.

    Args:
        ort: the "ORT dynamic int8" row (change, low, high, weight_ratio).
        ort_speedup: its speed-up over torch fp32 at ``batch``, timed side by side.
        batch: the batch size of the speed target.
        semi: the fine-tuned 2:4 row of ``pattern_table`` (change, low, high).

    Returns:
        Four ``measure.targets.target`` dicts.
    """
    return [
        target("ORT dynamic int8: bits/char lost", ort["change"], "<=", MAX_LOSS["dynamic int8"],
               "bits/char", "the dynamic int8 target, applied to ONNX Runtime",
               interval=(ort["low"], ort["high"])),
        target("ORT dynamic int8: MatMul weights smaller", ort["weight_ratio"], ">=",
               MIN_RATIO["dynamic int8"], "x", "int8 codes + scales, head included"),
        target(f"ORT dynamic int8: speed-up over torch fp32 at batch {batch}", ort_speedup, ">=",
               MIN_SPEEDUP, "x", "median latency, timed side by side"),
        target("2:4 + fine-tuned: interval's low end vs dense", semi["low"], "<=", 0.0,
               "bits/char", f"change {semi['change']:+.4f} {_interval(semi)}: the 50% target"),
    ]  # fmt: skip
