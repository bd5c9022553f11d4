"""Ioffe and Szegedy's Figure 1(a) in docs/papers.md: the share of the curve at which the sigmoid
network with batch norm is above the one without, read from notebook 08's records. ``claims`` uses
it for the figure's row and target. No torch."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pandas as pd


def bn_above_share(rec: Mapping[str, Any]) -> tuple[float, float, float]:
    """Share of Figure 1(a)'s points at which the sigmoid net with BN is above the one without
    (notebook 08), both at the best learning rate of the network without BN (chosen on validation).

    The paper's figure is test accuracy against training steps: a run that recorded ``figure1``
    (the test images scored every ``SIG_EVAL_EVERY`` steps, mean over seeds) is read there; an
    older run, from the mean validation accuracy at the end of each epoch (``sigmoid_curves``).
    """
    if _figure1(rec):
        return float(rec["figure1"]["share_above"]), math.nan, math.nan
    curves = pd.DataFrame(rec["sigmoid_curves"])
    lr = float(rec["facts_sigmoid"]["best_no_bn_lr"])
    at = curves[curves["lr"].astype(float) == lr].pivot(
        index="epoch", columns="bn", values="val_accuracy"
    )
    above = at[True] > at[False]
    return float(above.mean()), math.nan, math.nan


def figure1_context(rec: Mapping[str, Any]) -> str:
    """Where Figure 1(a)'s share was read, and the first step at which BN was not above."""
    if not _figure1(rec):
        return "share of the epochs (validation), sigmoid net, same rate"
    f, first = rec["figure1"], rec["figure1"].get("first_step_not_above")
    return (
        f"share of {f.get('points')} test scorings to step {f.get('last_step')}, mean over seeds, "
        f"lr {f.get('lr'):g}; first step BN not above: {'never' if first is None else first}"
    )


def _figure1(rec: Mapping[str, Any]) -> bool:
    fig1 = rec.get("figure1")
    return isinstance(fig1, Mapping) and fig1.get("share_above") is not None
