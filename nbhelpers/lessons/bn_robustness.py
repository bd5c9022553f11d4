"""Notebook 08's diagnosis of its robustness miss: BN at the rate where no-BN fails, trained again
with a linear warm-up and, separately, without momentum, each against BN's best rate.

Ioffe and Szegedy (2015, section 3.3) say BN "enables higher learning rates". The lesson's target
asks the BN model at the smallest rate where the network without BN fails to stay within 1 point of
its best; with SGD and momentum 0.9 at that rate it does not. Two causes can be told apart by
measurement: the first steps, before the batch statistics and the weights' scale settle (what a
gradual warm-up, Goyal et al. 2017, repairs), or a step too large throughout (momentum 0.9 makes the
effective step ten times the rate; without momentum it is the rate).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from nbhelpers.measure.facts import fact_table
from nbhelpers.techniques.normalization.lr_sweep import accuracy_gap

#: Epochs of linear warm-up of the "warm-up" run (Goyal et al. warm up 5 of 90 epochs; the grid's
#: runs here last 6 to 12 epochs, so one).
WARMUP_EPOCHS = 1

#: The runs at the robustness rate: (name, SGD momentum, warm-up epochs). The first is the sweep's.
VARIANTS: tuple[tuple[str, float, int], ...] = (
    ("as in the sweep", 0.9, 0),
    ("with warm-up", 0.9, WARMUP_EPOCHS),
    ("without momentum", 0.0, 0),
)


def linear_warmup(steps: int) -> Callable[[torch.optim.Optimizer], object]:
    """A scheduler factory for ``core.train.fit`` (per batch): step ``t`` (from 0) runs at
    ``min(1, (t + 1) / steps)`` of the rate, a linear rise over the first ``steps`` steps.

    Args:
        steps: warm-up steps, at least 1.

    Returns:
        ``f(optimizer) -> torch.optim.lr_scheduler.LambdaLR``.

    Raises:
        ValueError: ``steps`` below 1.
    """
    if steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    return lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda t: min(1.0, (t + 1) / steps))


def table(
    facts: Mapping[str, dict],
    val_correct: Mapping[tuple, Sequence[np.ndarray]],
    extra: Mapping[tuple[str, str], Sequence[np.ndarray]],
) -> pd.DataFrame:
    """BN's validation accuracy below its best at the robustness rate, for each variant.

    Args:
        facts: ``lr_facts`` per model (``bn_best_lr``, ``robust_lr``).
        val_correct: the sweep's (arch, bn, lr) -> per-seed validation hits.
        extra: (arch, variant name) -> per-seed validation hits of the runs beyond the sweep, seed
            by seed in the sweep's order.

    Returns:
        One row per (arch, variant) with a robustness rate: ``lr``, ``momentum``,
        ``warmup_epochs``, mean ``val_accuracy``, ``below_best_points`` with its paired 95%
        interval (``low``, ``high``, pooled over seeds) and ``within_1_point`` (the target's goal).
    """
    rows = []
    for arch, f in facts.items():
        lr = f.get("robust_lr", math.nan)
        if not math.isfinite(lr):
            continue
        best = val_correct[(arch, True, f["bn_best_lr"])]
        for name, momentum, warm in VARIANTS:
            sweep = name == VARIANTS[0][0]
            hits = val_correct[(arch, True, lr)] if sweep else extra.get((arch, name))
            if not hits:
                continue
            gap, (low, high) = accuracy_gap(best, hits)
            rows.append(
                {
                    "arch": arch,
                    "variant": name,
                    "lr": lr,
                    "momentum": momentum,
                    "warmup_epochs": warm,
                    "val_accuracy": float(np.mean([h.mean() for h in hits])),
                    "below_best_points": gap,
                    "low": low,
                    "high": high,
                    "within_1_point": gap <= 1.0,
                }
            )
    return pd.DataFrame(rows)


def summary(robust: pd.DataFrame) -> pd.DataFrame:
    """The facts of ``table`` for the Discussion: per model and variant, the points below BN's
    best at the robustness rate, and how many of those points each change recovers.

    Args:
        robust: ``table``'s rows.

    Returns:
        A ``facts.fact_table`` (4 significant digits); empty when no model had a robustness rate.
    """
    rows = []
    for arch, g in robust.groupby("arch", sort=False) if len(robust) else []:
        g = g.set_index("variant")
        base = g.loc[VARIANTS[0][0], "below_best_points"] if VARIANTS[0][0] in g.index else None
        for name, r in g.iterrows():
            context = f"lr {r['lr']:g}, momentum {r['momentum']:g}, warm-up {r['warmup_epochs']} "
            context += f"epoch(s); paired 95% interval [{r['low']:.2f}, {r['high']:.2f}]"
            rows.append(
                (
                    f"{arch}: BN below its best at the robustness rate, {name}",
                    r["below_best_points"],
                    "points",
                    context,
                )
            )
            if base is not None and name != VARIANTS[0][0]:
                rows.append(
                    (
                        f"{arch}: points recovered {name}",
                        base - r["below_best_points"],
                        "points",
                        f"of {base:.3g} below its best in the sweep",
                    )
                )
    return fact_table(rows, digits=4)
