"""Scores of the units (higher means more important) and which units to keep.

* weight norms: :math:`s_j = \\lVert W_{j,:} \\rVert_p` (p = 1 or 2) of the unit's incoming
  weights;
* activations on training data, after the unit's ReLU: the mean activation, and
  :math:`1 - \\mathrm{APoZ}_j` where APoZ is the average percentage of zeros (Hu et al. 2016);
* the first-order Taylor estimate of the loss change when the unit is removed (Molchanov et al.
  2017): :math:`|\\frac{1}{M}\\sum_m a_{j,m}\\, \\partial L / \\partial a_{j,m}|` per example,
  averaged over the examples;
* random scores, the control.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from nbhelpers.core.params import check_choice
from nbhelpers.core.train import module_device
from nbhelpers.techniques.neuron_pruning.units import (
    CONTROLS,
    CRITERIA,
    SCOPES,
    WEIGHTED,
    check_prune_fraction,
    n_removed,
    prunable_layers,
    widths,
)


def weight_norm_scores(model: nn.Sequential, p: int = 1) -> dict[int, torch.Tensor]:
    """The p-norm of each unit's incoming weights (a Linear row, a Conv2d filter), per prunable
    layer.

    Args:
        model: the Sequential model.
        p: 1 for the L1 norm, 2 for the L2 norm.

    Returns:
        layer position -> scores (one per unit).
    """
    return {i: model[i].weight.detach().flatten(1).norm(p=p, dim=1) for i in prunable_layers(model)}


def _activation_of(model: nn.Sequential, i: int) -> int:
    """Position of the first ReLU after layer ``i`` (the unit's activation)."""
    for j in range(i + 1, len(model)):
        if isinstance(model[j], nn.ReLU):
            return j
        if isinstance(model[j], WEIGHTED):
            break
    raise ValueError(f"layer {i} is not followed by a ReLU before the next weighted layer")


@torch.no_grad()
def activation_stats(
    model: nn.Sequential, loader: DataLoader, max_batches: int | None = None
) -> dict[int, dict[str, torch.Tensor]]:
    """Mean activation and APoZ of every prunable unit, after its ReLU, over batches of data.

    For a channel both are taken over the samples and all spatial positions.

    Args:
        model: the Sequential model (run in eval mode, on its device).
        loader: yields (x, y) batches, e.g. training data (moved to the model's device).
        max_batches: use at most this many batches (None: all).

    Returns:
        layer position -> {"mean_activation": ..., "apoz": ...}, one value per unit, on the
        model's device.
    """
    model.eval()
    device = module_device(model)
    sums: dict[int, torch.Tensor] = {}
    zeros: dict[int, torch.Tensor] = {}
    counts: dict[int, int] = {}
    hooks = []

    def hook_for(i: int):
        def hook(_m, _inp, out):
            a = out.detach().transpose(0, 1).flatten(1)  # units x (samples * positions)
            sums[i] = sums.get(i, 0) + a.sum(1)
            zeros[i] = zeros.get(i, 0) + (a == 0).sum(1)
            counts[i] = counts.get(i, 0) + a.shape[1]

        return hook

    for i in prunable_layers(model):
        hooks.append(model[_activation_of(model, i)].register_forward_hook(hook_for(i)))
    try:
        for b, (x, _) in enumerate(loader):
            if max_batches is not None and b >= max_batches:
                break
            model(x.to(device))
    finally:
        for h in hooks:
            h.remove()
    return {
        i: {"mean_activation": sums[i] / counts[i], "apoz": zeros[i].float() / counts[i]}
        for i in sums
    }


def taylor_scores(
    model: nn.Sequential, loader: DataLoader, max_batches: int | None = None
) -> dict[int, torch.Tensor]:
    """First-order Taylor importance of every prunable unit (Molchanov et al. 2017).

    Removing unit ``j`` sets its activation ``a_j`` to zero; to first order the loss changes by
    ``a_j * dL/da_j``. Per example the score is ``|mean over positions m of a_{j,m} dL/da_{j,m}|``
    (one position for a neuron, H x W for a channel), averaged over the examples; ``L`` is the
    cross-entropy of each example (the batch mean times the batch size), taken after the unit's
    ReLU, in eval mode. The model's weights are not changed and its gradients are left as found.

    Args:
        model: the Sequential model (on its device).
        loader: yields (x, y) batches of training data.
        max_batches: use at most this many batches (None: all).

    Returns:
        layer position -> one non-negative score per unit, on the model's device.
    """
    model.eval()
    device = module_device(model)
    sums: dict[int, torch.Tensor] = {}
    counts: dict[int, int] = {}
    outs: dict[int, torch.Tensor] = {}

    def hook_for(i: int):
        def hook(_m, _inp, out):
            out.retain_grad()
            outs[i] = out

        return hook

    hooks = [
        model[_activation_of(model, i)].register_forward_hook(hook_for(i))
        for i in prunable_layers(model)
    ]
    saved = {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}
    try:
        for b, (x, y) in enumerate(loader):
            if max_batches is not None and b >= max_batches:
                break
            logits = model(x.to(device))
            loss = nn.functional.cross_entropy(logits, y.to(device), reduction="sum")
            loss.backward()
            for i, a in outs.items():
                per = (
                    (a.detach() * a.grad).flatten(2).mean(2) if a.dim() > 2 else a.detach() * a.grad
                )
                sums[i] = sums.get(i, 0) + per.abs().sum(0)
                counts[i] = counts.get(i, 0) + per.shape[0]
            outs.clear()
    finally:
        for h in hooks:
            h.remove()
        for n, p in model.named_parameters():
            p.grad = saved[n]
    return {i: sums[i] / counts[i] for i in sums}


def unit_scores(
    model: nn.Sequential,
    criterion: str,
    loader: DataLoader | None = None,
    max_batches: int | None = None,
    seed: int = 0,
) -> dict[int, torch.Tensor]:
    """Importance of every prunable unit by a criterion (higher: more important).

    Args:
        model: the Sequential model.
        criterion: one of ``CRITERIA``: "l1", "l2", "mean_activation", "apoz" (scored as 1 - APoZ),
            "taylor" (``taylor_scores``), "random", "inverted_l1" (minus the L1 norm: the units
            that matter most go first).
        loader: data for the activation and Taylor criteria.
        max_batches: batches of ``loader`` used.
        seed: seed of the random scores (drawn on the CPU: the same scores on every device).

    Returns:
        layer position -> scores, on the model's device.
    """
    check_choice("criterion", criterion, CRITERIA)
    if criterion in ("l1", "l2"):
        return weight_norm_scores(model, 1 if criterion == "l1" else 2)
    if criterion == "inverted_l1":  # the mistake: keep the least important units
        return {i: -s for i, s in weight_norm_scores(model, 1).items()}
    if criterion == "random":
        g, device = torch.Generator().manual_seed(seed), module_device(model)
        return {i: torch.rand(n, generator=g).to(device) for i, n in widths(model).items()}
    if loader is None:
        raise ValueError(f"criterion {criterion!r} needs a data loader")
    if criterion == "taylor":
        return taylor_scores(model, loader, max_batches)
    stats = activation_stats(model, loader, max_batches)
    if criterion == "mean_activation":
        return {i: s["mean_activation"] for i, s in stats.items()}
    return {i: 1.0 - s["apoz"] for i, s in stats.items()}


def select_keep(
    scores: Mapping[int, torch.Tensor], fraction: float, scope: str = "layer"
) -> dict[int, torch.Tensor]:
    """Which units to keep: drop the lowest-scored ones.

    ``"layer"`` removes ``n_removed(n, fraction)`` units of every layer. ``"global"`` ranks all
    units together, each score divided by its layer's mean score (layers differ in scale), removes
    the same total number, and always keeps each layer's best unit. Ties go to the lower index.

    Args:
        scores: layer position -> scores.
        fraction: fraction of units removed, strictly in (0, 1).
        scope: "layer" or "global".

    Returns:
        layer position -> sorted indices of the kept units, on the device of the scores.
    """
    check_choice("scope", scope, SCOPES)
    check_prune_fraction("fraction", fraction, {i: len(s) for i, s in scores.items()})
    if scope == "layer":
        keep = {}
        for i, s in scores.items():
            order = torch.sort(s.double(), descending=True, stable=True).indices
            keep[i] = order[: len(s) - n_removed(len(s), fraction)].sort().values
        return keep
    total = sum(n_removed(len(s), fraction) for s in scores.values())
    flat = []
    for i, s in scores.items():
        norm = s.double() / s.double().abs().mean().clamp_min(1e-12)
        norm[int(torch.argmax(s))] = math.inf  # a layer never loses all its units
        flat += [(float(v), i, j) for j, v in enumerate(norm)]
    flat.sort(key=lambda t: (t[0], -t[2]))  # lowest first; among ties the higher index goes first
    dropped: dict[int, set[int]] = {i: set() for i in scores}
    for _, i, j in flat[:total]:
        dropped[i].add(j)
    return {
        i: torch.tensor(
            [j for j in range(len(s)) if j not in dropped[i]], dtype=torch.long, device=s.device
        )
        for i, s in scores.items()
    }


def best_criterion(
    sweep: pd.DataFrame, fraction: float, controls: Sequence[str] = CONTROLS
) -> dict[str, str]:
    """Per model, the criterion with the highest validation accuracy at one fraction.

    A control is chosen only where there are only controls. Ties go to the first in the sweep.

    Args:
        sweep: rows with model, criterion, fraction and val_accuracy.
        fraction: the fraction removed.
        controls: the criteria that are only controls (random scores, the inverted comparison).

    Returns:
        model -> criterion, in the sweep's order of models.
    """
    out = {}
    for model, rows in sweep[sweep.fraction == fraction].groupby("model", sort=False):
        real = ~rows.criterion.isin(list(controls))
        cand = rows[real] if real.any() else rows
        out[model] = cand.sort_values(
            "val_accuracy", ascending=False, kind="stable"
        ).criterion.iloc[0]
    return out
