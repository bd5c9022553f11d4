"""Structured (neuron and channel) pruning of ``nn.Sequential`` models: rank units, then cut them
out.

A *unit* is an output row of an ``nn.Linear`` (a hidden neuron) or an output channel of an
``nn.Conv2d`` (a filter). Every weighted layer except the last (the classifier) is prunable.
Scores follow one convention: **higher means more important**; the lowest-scored units go.

* weight norms: :math:`s_j = \\lVert W_{j,:} \\rVert_p` (p = 1 or 2) of the unit's incoming weights;
* activations on training data, after the unit's ReLU: the mean activation, and
  :math:`1 - \\mathrm{APoZ}_j` where APoZ is the average percentage of zeros (Hu et al. 2016);
* the first-order Taylor estimate of the loss change when the unit is removed (Molchanov et al.
  2017): :math:`|\\frac{1}{M}\\sum_m a_{j,m}\\, \\partial L / \\partial a_{j,m}|` per example,
  averaged over the examples;
* random scores, the control.

``remove_units`` builds the smaller model by hand: the pruned layer keeps the rows (filters) of the
kept units, a BatchNorm after it keeps their statistics, and the next weighted layer keeps only the
matching input columns (for a Linear after a Conv2d and a Flatten, each kept channel brings its
H x W block of flattened features).

For any other model (residual blocks, named submodules) ``prune_channels`` cuts the channels of
layers given by name through torch-pruning's dependency graph, which finds the layers whose channels
are coupled (both terms of a residual sum, the batch norms, the next layers' inputs).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.ao.nn.quantized as nnq
from torch import nn
from torch.utils.data import DataLoader

from nbhelpers.core.params import ParameterError, check_choice, check_choices, check_fraction
from nbhelpers.core.train import fit, module_device, seed_everything
from nbhelpers.measure import correct, count_macs
from nbhelpers.techniques import pruning

CRITERIA = ("l1", "l2", "mean_activation", "apoz", "taylor", "random", "inverted_l1")
#: Criteria that are controls, never chosen as "the best": random scores, and the common mistake of
#: an inverted comparison (``inverted_l1`` removes the units of *largest* L1 norm).
CONTROLS = ("random", "inverted_l1")
SCOPES = ("layer", "global")
WEIGHTED = (nn.Linear, nn.Conv2d)
_LINEAR = (nn.Linear, nnq.Linear)  # nnq.dynamic.Linear is a subclass of nnq.Linear
_CONV = (nn.Conv2d, nnq.Conv2d)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


def weighted_layers(model: nn.Sequential) -> list[int]:
    """Positions of the Linear and Conv2d layers in a Sequential, in order."""
    return [i for i, m in enumerate(model) if isinstance(m, WEIGHTED)]


def prunable_layers(model: nn.Sequential) -> list[int]:
    """Positions of the layers whose units may be removed: every weighted layer but the last."""
    return weighted_layers(model)[:-1]


def widths(model: nn.Sequential) -> dict[int, int]:
    """Number of units (output features or channels) of each prunable layer, by position."""
    return {i: n_units(model[i]) for i in prunable_layers(model)}


def n_units(m: nn.Module) -> int:
    """Number of units of one layer: output features of a Linear, output channels of a Conv2d.

    Args:
        m: a Linear or Conv2d layer (float or int8).

    Returns:
        The number of units.
    """
    return m.out_features if isinstance(m, _LINEAR) else m.out_channels


def n_removed(n: int, fraction: float) -> int:
    """Units removed from a layer of ``n`` units at ``fraction``: ``floor(fraction * n + 0.5)``."""
    return int(math.floor(fraction * n + 0.5))


def check_prune_fraction(
    name: str, fraction: object, layer_widths: Mapping[object, int] | Sequence[int]
) -> float:
    """Check a per-layer fraction: strictly in (0, 1) and leaving every layer at least one unit.

    Args:
        name: parameter name.
        fraction: the given value.
        layer_widths: units per prunable layer (a mapping layer -> width, or a list of widths).

    Returns:
        The fraction as a float.
    """
    f = check_fraction(name, fraction)
    items = layer_widths.items() if isinstance(layer_widths, Mapping) else enumerate(layer_widths)
    for layer, n in items:
        if n - n_removed(n, f) < 1:
            raise ParameterError(
                name,
                fraction,
                f"a fraction in (0, 1) that leaves every layer a unit "
                f"(layer {layer} has {n} units: {n_removed(n, f)} would go)",
            )
    return f


def check_criteria(name: str, values: object) -> list[str]:
    """Check a list of distinct criterion names from ``CRITERIA``."""
    out = check_choices(name, values, CRITERIA)
    if len(set(out)) != len(out):
        raise ParameterError(
            name, values, "distinct criteria, each one of " + ", ".join(map(repr, CRITERIA))
        )
    return out


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


def _resized(m: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    """A new Linear or Conv2d like ``m`` with the given (sliced) weight and bias, on its device."""
    like = {"device": weight.device, "dtype": weight.dtype}
    if isinstance(m, nn.Linear):
        new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, **like)
    else:
        if m.groups != 1:
            raise NotImplementedError("grouped convolutions are not supported")
        new = nn.Conv2d(
            weight.shape[1],
            weight.shape[0],
            m.kernel_size,
            m.stride,
            m.padding,
            m.dilation,
            bias=bias is not None,
            padding_mode=m.padding_mode,
            **like,
        )
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    return new


def _sliced_norm(bn: nn.Module, keep: torch.Tensor) -> nn.Module:
    """A BatchNorm like ``bn`` keeping only the features in ``keep``, on its device."""
    ref = next(iter(bn.parameters()), None)
    ref = ref if ref is not None else bn.running_mean
    like = {} if ref is None else {"device": ref.device, "dtype": ref.dtype}
    new = type(bn)(
        len(keep),
        eps=bn.eps,
        momentum=bn.momentum,
        affine=bn.affine,
        track_running_stats=bn.track_running_stats,
        **like,
    )
    keep = keep.to(ref.device) if ref is not None else keep
    with torch.no_grad():
        if bn.affine:
            new.weight.copy_(bn.weight[keep])
            new.bias.copy_(bn.bias[keep])
        if bn.track_running_stats:
            new.running_mean.copy_(bn.running_mean[keep])
            new.running_var.copy_(bn.running_var[keep])
            new.num_batches_tracked.copy_(bn.num_batches_tracked)
    return new


def remove_units(
    model: nn.Sequential, keep: Mapping[int, Sequence[int] | torch.Tensor]
) -> nn.Sequential:
    """A physically smaller copy of the model keeping only the given units (the original is
    untouched).

    Args:
        model: a Sequential of Linear/Conv2d layers with activations, pooling, BatchNorm, Flatten
            between.
        keep: layer position -> indices of the units kept (layers not listed keep all their units).

    Returns:
        The pruned copy, in the same mode (train/eval) as ``model``.
    """
    new = copy.deepcopy(model)
    layers = weighted_layers(new)
    if set(keep) - set(layers[:-1]):
        raise ValueError(f"only layers {layers[:-1]} can lose units, got {sorted(keep)}")
    kept_in: torch.Tensor | None = None  # units kept by the previous weighted layer (None: all)
    prev_units = None
    for pos, i in enumerate(layers):
        m = new[i]
        w, b = m.weight.detach(), (m.bias.detach() if m.bias is not None else None)
        if kept_in is not None:
            cols = kept_in
            if isinstance(m, nn.Linear) and w.shape[1] != prev_units:  # conv -> flatten -> linear
                per = w.shape[1] // prev_units  # H x W features per channel, channel-major
                cols = (kept_in[:, None] * per + torch.arange(per, device=w.device)).flatten()
            w = w[:, cols]
        kept_out = None
        if i in keep:
            kept_out = torch.as_tensor(keep[i], dtype=torch.long, device=w.device).sort().values
        if kept_out is not None:
            if len(kept_out) == 0 or len(set(kept_out.tolist())) != len(kept_out):
                raise ValueError(f"layer {i}: keep a non-empty set of distinct units")
            w, b = w[kept_out], (b[kept_out] if b is not None else None)
            end = layers[pos + 1] if pos + 1 < len(layers) else len(new)
            for j in range(i + 1, end):
                if isinstance(new[j], NORMS):
                    new[j] = _sliced_norm(new[j], kept_out)
        prev_units = n_units(m)
        new[i] = _resized(m, w.contiguous(), b)
        kept_in = kept_out
    return new.train(model.training)


def prune(
    model: nn.Sequential,
    criterion: str,
    fraction: float,
    scope: str = "layer",
    loader: DataLoader | None = None,
    max_batches: int | None = None,
    seed: int = 0,
) -> tuple[nn.Sequential, dict[int, torch.Tensor]]:
    """Rank units by a criterion and remove ``fraction`` of them (scores, selection, surgery).

    Args:
        model: the Sequential model.
        criterion: one of ``CRITERIA``.
        fraction: fraction removed, strictly in (0, 1).
        scope: "layer" or "global".
        loader: data for the activation criteria.
        max_batches: batches of ``loader`` used.
        seed: seed of the random criterion.

    Returns:
        (the smaller model, layer position -> kept unit indices).
    """
    keep = select_keep(unit_scores(model, criterion, loader, max_batches, seed), fraction, scope)
    return remove_units(model, keep), keep


def correct_over_seeds(
    model: nn.Sequential,
    criterion: str,
    scores: Mapping[int, torch.Tensor] | None,
    fraction: float,
    seeds: Sequence[int],
    loaders_for: Callable[[int], Mapping[str, DataLoader]],
    epochs: int,
    lr: float,
    scope: str = "layer",
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Per seed, cut a model by a criterion, fine-tune it, and mark which test images it gets right.

    A seed sets the fine-tuning (its shuffle and its torch seed) and, for ``"random"``, the scores;
    the other criteria keep their ``scores``. Rows of two criteria with the same seeds pair up for
    ``stats.seeds_paired_difference``.

    Args:
        model: the dense Sequential model (not changed).
        criterion: the criterion's name (``"random"`` draws new scores per seed).
        scores: the criterion's scores (``unit_scores``); ignored for ``"random"``.
        fraction: fraction of units removed per layer.
        seeds: the seeds.
        loaders_for: seed -> {"train", "val", "test"} loaders (training shuffled by that seed).
        epochs: fine-tuning epochs.
        lr: fine-tuning learning rate (Adam).
        scope: "layer" or "global" (``select_keep``).
        device: where fine-tuning runs.

    Returns:
        Boolean array (seeds, test images).
    """
    rows = []
    for s in seeds:
        sc = unit_scores(model, "random", seed=s) if criterion == "random" else scores
        small = remove_units(model, select_keep(sc, fraction, scope))
        dls = loaders_for(s)
        seed_everything(s)
        fit(small, dls["train"], epochs=epochs, lr=lr, device=device, progress=False)
        rows.append(correct(small.cpu().eval(), dls["test"]))
    return np.stack(rows)


def dead_units(model: nn.Sequential) -> dict[int, torch.Tensor]:
    """Units whose outgoing weights (their input columns in the next weighted layer) are all zero.

    Args:
        model: the Sequential model.

    Returns:
        layer position -> indices of the dead units (empty tensors where none).
    """
    layers = weighted_layers(model)
    out = {}
    for i, nxt in zip(layers[:-1], layers[1:]):
        n = n_units(model[i])
        w = model[nxt].weight.detach()
        alive = (
            w.reshape(w.shape[0], n, -1).ne(0).any(2).any(0)
        )  # Linear (incl. after Flatten) or Conv2d
        out[i] = torch.nonzero(~alive).flatten()
    return out


def torch_pruning_remove(
    model: nn.Module, example: torch.Tensor, keep: Mapping[int, Sequence[int] | torch.Tensor]
) -> nn.Module:
    """The same removal through torch-pruning's dependency graph (works for non-Sequential models
    too).

    Args:
        model: the model (a copy is pruned); ``keep`` positions refer to ``model[i]``.
        example: an input batch to trace the graph (moved to the model's device).
        keep: layer position -> indices of the kept units.

    Returns:
        The pruned copy.
    """
    import torch_pruning as tp

    new = copy.deepcopy(model).eval()
    example = example[:1].to(module_device(new))
    dg = tp.DependencyGraph().build_dependency(new, example_inputs=example)
    for i, kept in keep.items():
        m = new[i]
        kept_set = set(torch.as_tensor(kept).tolist())
        drop = [j for j in range(n_units(m)) if j not in kept_set]
        fn = (
            tp.prune_linear_out_channels if isinstance(m, nn.Linear) else tp.prune_conv_out_channels
        )
        group = dg.get_pruning_group(m, fn, idxs=drop)
        if drop and dg.check_pruning_group(group):
            group.prune()
    return new.train(model.training)


# ---------------------------------------------------------------- checks and this run's facts


def complement(
    units: Mapping[int, Sequence[int] | torch.Tensor], layer_widths: Mapping[int, int]
) -> dict[int, torch.Tensor]:
    """The other units of each layer: from the kept units to the removed ones, and back.

    Args:
        units: layer position -> indices of some of its units (a layer not listed: none).
        layer_widths: layer position -> number of units (``widths``).

    Returns:
        layer position -> sorted indices (CPU long tensor) of the units not in ``units``.
    """
    out = {}
    for i, n in layer_widths.items():
        mask = torch.ones(n, dtype=torch.bool)
        mask[torch.as_tensor(units.get(i, []), dtype=torch.long).cpu()] = False
        out[i] = torch.nonzero(mask).flatten()
    return out


def zero_outgoing(
    model: nn.Sequential, units: Mapping[int, Sequence[int] | torch.Tensor]
) -> nn.Sequential:
    """A copy whose given units have all-zero outgoing weights (their columns in the next layer).

    For a channel that feeds a Linear through a Flatten, its whole H x W block of columns is zeroed.

    Args:
        model: the Sequential model (left unchanged).
        units: prunable layer position -> indices of the units to silence.

    Returns:
        The copy, in which ``dead_units`` finds exactly these units (if no others were dead).
    """
    new = copy.deepcopy(model)
    layers = weighted_layers(new)
    with torch.no_grad():
        for i, nxt in zip(layers[:-1], layers[1:]):
            if i in units:
                w = new[nxt].weight
                idx = torch.as_tensor(units[i], dtype=torch.long, device=w.device)
                w.view(w.shape[0], n_units(new[i]), -1)[:, idx] = 0
    return new


@torch.no_grad()
def output_change(before: nn.Module, after: nn.Module, x: torch.Tensor) -> dict[str, float | bool]:
    """How far one model's logits are from another's on the same inputs.

    Args:
        before: the reference model (eval mode, any device).
        after: the changed model (eval mode, any device).
        x: the input batch (moved to each model's device).

    Returns:
        {"max |logit difference|": float, "bit-identical": bool, "same predictions": bool}.
    """
    a = before(x.to(module_device(before))).cpu()
    b = after(x.to(module_device(after))).cpu()
    return {
        "max |logit difference|": float((a - b).abs().max()),
        "bit-identical": bool(torch.equal(a, b)),
        "same predictions": bool(torch.equal(a.argmax(1), b.argmax(1))),
    }


def shrinkage(
    dense: nn.Sequential, small: nn.Sequential, example: torch.Tensor
) -> dict[str, float]:
    """What removing units saved: the fraction of units gone, the parameters left, fewer MACs.

    Args:
        dense: the model before pruning.
        small: the pruned model.
        example: an input batch for counting MACs (its first sample is used).

    Returns:
        {"units_removed": fraction of prunable units removed, "params": parameters of ``small``,
        "macs_ratio": MACs of ``dense`` / MACs of ``small``}.
    """
    from nbhelpers.measure import count_parameters

    return {
        "units_removed": 1 - sum(widths(small).values()) / sum(widths(dense).values()),
        "params": count_parameters(small)["params"],
        "macs_ratio": count_macs(dense, example) / count_macs(small, example),
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


def time_by_type(per_layer: pd.DataFrame) -> pd.DataFrame:
    """Per-layer times summed by layer type, with the dense model's share and the speedup.

    Args:
        per_layer: index "position type" (``layer_times``), columns "dense ms" and "structured ms".

    Returns:
        Index: layer type in order of first appearance; columns "dense ms", "structured ms",
        "dense share" (of the dense model's summed time) and "speedup" (dense / structured).
    """
    out = per_layer.groupby(per_layer.index.str.split().str[1], sort=False)[
        ["dense ms", "structured ms"]
    ].sum()
    out["dense share"] = out["dense ms"] / out["dense ms"].sum()
    out["speedup"] = out["dense ms"] / out["structured ms"]
    return out


def _spread(acc: pd.Series) -> float:
    """Max - min of accuracies, in points, rounded to 0.01."""
    return round(100 * float(acc.max() - acc.min()), 2)


def _criteria_facts(sweep: pd.DataFrame, fraction: float, control: str = "random") -> list[tuple]:
    """Facts about the criteria per model: one-shot range, spread after fine-tuning, the control."""
    rows = []
    best = best_criterion(sweep, fraction)
    top = sweep.fraction.max()
    for arch, s in sweep.groupby("model", sort=False):
        at, at_top = s[s.fraction == fraction].set_index("criterion"), s[s.fraction == top]
        rows += [
            (
                f"{arch}: best criterion",
                best[arch],
                "",
                f"highest validation accuracy at fraction {fraction:g}",
            ),
            (
                f"{arch}: one-shot accuracy, lowest",
                round(float(at.one_shot_accuracy.min()), 4),
                "accuracy",
                f"{at.one_shot_accuracy.idxmin()}, fraction {fraction:g}, before fine-tuning",
            ),
            (
                f"{arch}: one-shot accuracy, highest",
                round(float(at.one_shot_accuracy.max()), 4),
                "accuracy",
                f"{at.one_shot_accuracy.idxmax()}, fraction {fraction:g}, before fine-tuning",
            ),
            (
                f"{arch}: fine-tuned spread of the criteria",
                _spread(at.accuracy),
                "points",
                f"max - min test accuracy at fraction {fraction:g}",
            ),
            (
                f"{arch}: fine-tuned spread, largest fraction",
                _spread(at_top.accuracy),
                "points",
                f"max - min test accuracy at fraction {top:g}",
            ),
        ]
        if "one_shot_top_class_share" in at.columns:  # measure.prediction_shift right after the cut
            share = at.one_shot_top_class_share
            rows.append(
                (
                    f"{arch}: one-shot, share of the most predicted class, highest",
                    round(float(share.max()), 4),
                    "share of test images",
                    f"{share.idxmax()}, fraction {fraction:g}, before fine-tuning",
                )
            )
            if control in at.index:
                ref = at.loc[control]
                rows += [
                    (
                        f"{arch}: one-shot, {control}: share of the most predicted class",
                        round(float(ref.one_shot_top_class_share), 4),
                        "share of test images",
                        f"fraction {fraction:g}, before fine-tuning",
                    ),
                    (
                        f"{arch}: one-shot, {control}: logit scale",
                        round(float(ref.one_shot_logit_scale), 4),
                        "x the dense logits",
                        f"fraction {fraction:g}; the lowest over the criteria is "
                        f"{float(at.one_shot_logit_scale.min()):.4f}",
                    ),
                ]
        if "inverted_l1" in at.index and control in at.index:
            inv, ref = at.loc["inverted_l1"], at.loc[control]
            one_shot = 100 * float(inv.one_shot_accuracy - ref.one_shot_accuracy)
            rows.append(
                (
                    f"{arch}: inverted_l1 minus {control}",
                    round(100 * float(inv.accuracy - ref.accuracy), 2),
                    "points",
                    f"fine-tuned, fraction {fraction:g}; before fine-tuning {one_shot:+.2f}",
                )
            )
        if control in at.index and len(at.index.difference(CONTROLS)) > 0:
            gain = 100 * float(
                at.accuracy.drop(list(CONTROLS), errors="ignore").max() - at.accuracy[control]
            )
            rows.append(
                (
                    f"{arch}: best criterion minus {control}",
                    round(gain, 2),
                    "points",
                    f"fine-tuned test accuracy at fraction {fraction:g}",
                )
            )
    return rows


def _removal_facts(dead_check: pd.DataFrame, tp_check: pd.DataFrame) -> list[tuple]:
    """Facts on exact removal of dead units, and on torch-pruning against the hand surgery."""
    rows = [
        (
            "dead units: max |logit difference|",
            float(dead_check["max |logit difference|"].max()),
            "logit",
            "after removing units whose outgoing weights are zero, whole test split",
        ),
        (
            "dead units: bit-identical logits",
            bool(dead_check["bit-identical"].all()),
            "",
            "every model",
        ),
        (
            "dead units: same predictions",
            bool(dead_check["same predictions"].all()),
            "",
            "every test image",
        ),
    ]
    if len(tp_check):
        rows.append(
            (
                "torch-pruning: max |logit difference|",
                float(tp_check["max |logit difference|"].max()),
                "logit",
                "against the hand surgery, same kept units",
            )
        )
    return rows


def _speed_facts(table: pd.DataFrame, names: Mapping[str, str], arch: str) -> list[tuple]:
    """Facts about one family's structured and unstructured models against its dense baseline."""
    d, s, u = (table.loc[names[k]] for k in ("dense", "structured", "unstructured"))
    cols = sorted((c for c in table.columns if c.startswith("speedup_b")), key=lambda c: int(c[9:]))
    small_bs, big_bs = cols[0][9:], cols[-1][9:]
    macs = float(d["macs"] / s["macs"])
    rows = [
        (
            f"{arch} structured: fewer MACs",
            round(macs, 2),
            "x",
            f"{int(d['macs']):,} -> {int(s['macs']):,}",
        ),
        (
            f"{arch} structured: speedup, largest batch",
            round(float(s[cols[-1]]), 2),
            "x",
            f"batch {big_bs}",
        ),
        (
            f"{arch} structured: speedup, smallest batch",
            round(float(s[cols[0]]), 2),
            "x",
            f"batch {small_bs}",
        ),
        (
            f"{arch} structured: speedup below MAC reduction",
            bool(s[cols[-1]] < macs),
            "",
            f"batch {big_bs}",
        ),
        (
            f"{arch} structured: times smaller on disk",
            round(float(s["size_ratio"]), 2),
            "x",
            f"{int(s['bytes']):,} bytes",
        ),
        (
            f"{arch} unstructured: speedup, largest batch",
            round(float(u[cols[-1]]), 2),
            "x",
            f"batch {big_bs}, same parameter count as structured",
        ),
        (
            f"{arch}: unstructured minus structured accuracy",
            round(float(u["accuracy_delta_points"] - s["accuracy_delta_points"]), 2),
            "points",
            "test accuracy, same parameter count, same fine-tuning",
        ),
        (
            f"{arch}: unstructured keeps accuracy at least as well",
            bool(u["accuracy_delta_points"] >= s["accuracy_delta_points"]),
            "",
            "same parameter count",
        ),
    ]
    return rows


def _layer_facts(
    per_layer: pd.DataFrame,
    arch: str = "lenet5",
    types: Sequence[str] = ("Conv2d", "MaxPool2d"),
) -> list[tuple]:
    """Facts about where a model's time goes, by layer type and in its first layer."""
    by_type = time_by_type(per_layer)
    rows = []
    for t in [t for t in types if t in by_type.index]:
        rows += [
            (
                f"{arch} {t}: share of dense time",
                round(float(by_type.loc[t, "dense share"]), 3),
                "fraction",
                "summed over the layers of this type",
            ),
            (
                f"{arch} {t}: speedup",
                round(float(by_type.loc[t, "speedup"]), 2),
                "x",
                "dense / structured",
            ),
        ]
    first = per_layer.iloc[0]
    rows.append(
        (
            f"{arch} first layer: speedup",
            round(float(first["dense ms"] / first["structured ms"]), 2),
            "x",
            f"{per_layer.index[0]}: {first['dense ms']:.3g} -> {first['structured ms']:.3g} ms",
        )
    )
    return rows


def summary(
    sweep: pd.DataFrame,
    tables: Mapping[str, pd.DataFrame],
    names: Mapping[str, Mapping[str, str]],
    dead_check: pd.DataFrame,
    tp_check: pd.DataFrame,
    per_layer: pd.DataFrame,
    *,
    fraction: float,
    n_test: int,
    targets: Sequence[Mapping] = (),
) -> pd.DataFrame:
    """This run's facts about neuron pruning, from the notebook's tables.

    Args:
        sweep: one row per model, criterion and fraction (accuracy, one_shot_accuracy,
            val_accuracy; optionally the other ``measure.prediction_shift`` columns, prefixed
            ``one_shot_``).
        tables: family -> ``measure.compare`` table with a "macs" column.
        names: family -> {"dense", "structured", "unstructured"} -> row name in its table.
        dead_check: per family, the ``output_change`` of removing dead units.
        tp_check: per family, "max |logit difference|" of torch-pruning against the hand surgery
            (may be empty).
        per_layer: LeNet-5's per-layer times, "dense ms" and "structured ms" (``layer_times``).
        fraction: ``PRUNE_FRACTION``, the fraction of the main pruned models.
        n_test: number of test images.
        targets: the notebook's ``targets.target`` dicts (counted as met / all).

    Returns:
        A ``baseline.fact_table``: index ``fact``, columns value, unit, context.
    """
    from nbhelpers.measure.facts import fact_table

    rows = _criteria_facts(sweep, fraction) + _removal_facts(dead_check, tp_check)
    for arch, table in tables.items():
        rows += _speed_facts(table, names[arch], arch)
    rows += _layer_facts(per_layer)
    first = next(iter(tables))
    acc = float(tables[first].loc[names[first]["dense"], "accuracy"])
    rows += [
        ("one test image", round(100 / n_test, 4), "points", f"{n_test:,} test images"),
        (
            f"standard error of {first}'s accuracy",
            round(100 * math.sqrt(acc * (1 - acc) / n_test), 2),
            "points",
            f"sqrt(p (1 - p) / n) at p = {acc:.4f}, the dense model",
        ),
    ]
    if targets:
        rows.append(
            (
                "targets met",
                f"{sum(bool(t['met']) for t in targets)} of {len(targets)}",
                "",
                "see the targets table",
            )
        )
    return fact_table(rows)


# ------------------------------------------------------------ any nn.Module: layers by name


#: torch-pruning importance per criterion name for ``prune_channels`` (higher: kept).
GRAPH_CRITERIA = ("l1", "l2", "random")


def _importance(criterion: str):
    import torch_pruning as tp

    if criterion == "random":
        return tp.importance.RandomImportance()
    return tp.importance.MagnitudeImportance(p=1 if criterion == "l1" else 2)


@torch.no_grad()
def output_layer(model: nn.Module, example: torch.Tensor) -> str:
    """The name of the weighted layer that runs last in a forward pass (the classifier).

    Args:
        model: any model with at least one Linear or Conv2d layer.
        example: an input batch (moved to the model's device).

    Returns:
        The layer's name.
    """
    order: list[str] = []
    handles = [
        m.register_forward_hook(lambda mod, i, o, n=n: order.append(n))
        for n, m in model.named_modules()
        if isinstance(m, WEIGHTED)
    ]
    was_training = model.training
    try:
        model.eval()(example[:1].to(module_device(model)))
    except Exception as err:  # the model's own forward: say which input it refused
        raise ValueError(
            f"{type(model).__name__} fails on the example of shape {tuple(example.shape)}: {err}"
        ) from err
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if not order:
        raise ValueError(f"{type(model).__name__} ran no nn.Linear or nn.Conv2d layer")
    return order[-1]


def check_prune_layers(
    name: str, layers: Sequence[str] | None, model: nn.Module, example: torch.Tensor
) -> list[str]:
    """Check the names of the layers ``prune_channels`` should cut (one forward pass, no tracing).

    Args:
        name: parameter name, e.g. "PRUNE_LAYERS".
        layers: names of Linear/Conv2d layers, or None for every one but the classifier.
        model: a model of the architecture (an untrained one will do).
        example: an input batch the model accepts.

    Returns:
        The names (every prunable layer for None).

    Raises:
        ParameterError: an unknown name, the classifier, or an empty list.
    """
    out_name = output_layer(model, example)
    prunable = [n for n, _ in pruning.prunable(model) if n != out_name]
    chosen = prunable if layers is None else list(layers)
    bad = [n for n in chosen if n not in prunable]
    if bad or not chosen:
        raise ParameterError(
            name,
            bad or chosen,
            f"names of Linear/Conv2d layers of {type(model).__name__} "
            f"except its classifier {out_name!r}: " + ", ".join(prunable),
        )
    return chosen


def prune_channels(
    model: nn.Module,
    example: torch.Tensor,
    fraction: float,
    layers: Sequence[str] | None = None,
    criterion: str = "l1",
) -> tuple[nn.Module, pd.DataFrame]:
    """Remove a fraction of the output channels (units) of named layers of any model.

    torch-pruning's dependency graph finds every layer whose channels are coupled to a named
    one (the layers added by a residual connection must keep the same channels; a batch norm and
    the next layer's inputs follow), and cuts them together, scored as a group by ``criterion``.
    The classifier (``output_layer``) is never cut.

    Args:
        model: the trained model (a copy is pruned).
        example: an input batch, to trace the graph.
        fraction: fraction of each group's channels removed, in (0, 1).
        layers: names of the Linear/Conv2d layers to cut (None: every one but the classifier);
            the layers coupled to them are cut too and listed in the table.
        criterion: one of ``GRAPH_CRITERIA`` (L1 or L2 norm of the group's weights, or random).

    Returns:
        (the pruned copy, a table per weighted layer: type, units before and after, named).

    Raises:
        ParameterError: a name that is not a prunable layer, a bad fraction or criterion.
        ValueError: the model cannot be traced on ``example``, a named layer is coupled to the
            classifier, or the cut model no longer runs (a dependency the graph missed).
    """
    import torch_pruning as tp

    check_choice("CRITERION", criterion, GRAPH_CRITERIA)
    check_fraction("PRUNE_FRACTION", fraction)
    layers = check_prune_layers("LAYERS", layers, model, example)
    out_name = output_layer(model, example)
    new = copy.deepcopy(model).eval()
    modules = dict(new.named_modules())
    try:
        dg = tp.DependencyGraph().build_dependency(
            new, example_inputs=example[:1].to(module_device(new))
        )
    except Exception as err:  # torch-pruning raises many kinds; name the model and the cause
        raise ValueError(f"torch-pruning cannot trace {type(model).__name__}: {err}") from err
    names = {m: n for n, m in modules.items()}
    cut: set[str] = set()
    for n in layers:
        m = modules[n]
        fn = (
            tp.prune_linear_out_channels if isinstance(m, nn.Linear) else tp.prune_conv_out_channels
        )
        if m not in dg.module2node:
            raise ValueError(
                f"torch-pruning's graph of {type(model).__name__} does not reach layer {n!r}: its "
                "output reaches the logits through no differentiable path (a detach or .data?)"
            )
        for dep, _ in dg.get_pruning_group(m, fn, idxs=[0]):
            if dg.is_out_channel_pruning_fn(dep.handler) and dep.target.module in names:
                cut.add(names[dep.target.module])
    if out_name in cut:
        raise ValueError(f"the channels of {layers} are coupled to the classifier {out_name!r}")
    weighted = [n for n, _ in pruning.prunable(new)]
    before = {n: n_units(modules[n]) for n in weighted}
    tp.pruner.MetaPruner(
        new,
        example[:1].to(module_device(new)),
        importance=_importance(criterion),
        pruning_ratio=fraction,
        ignored_layers=[modules[n] for n in weighted if n not in cut],
    ).step()
    try:
        with torch.no_grad():
            new(example[:1].to(module_device(new)))
    except Exception as err:  # a dependency the graph did not see: the shapes no longer fit
        raise ValueError(
            f"torch-pruning did not see every dependency of {type(model).__name__} (a detach, "
            f"a .data or a non-differentiable op between layers?); the cut model fails: {err}"
        ) from err
    table = pd.DataFrame(
        [
            {
                "layer": n,
                "type": type(modules[n]).__name__,
                "units before": before[n],
                "units after": n_units(modules[n]),
                "named": n in layers,
                "cut": n in cut,
            }
            for n in weighted
        ]
    ).set_index("layer")
    return new.train(model.training), table
