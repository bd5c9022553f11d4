"""Cutting units out of an ``nn.Sequential`` by hand: the pruned layer keeps the rows (filters) of
the kept units, a BatchNorm after it keeps their statistics, and the next weighted layer keeps only
the matching input columns (for a Linear after a Conv2d and a Flatten, each kept channel brings its
H x W block of flattened features). Also: the same cut through torch-pruning, dead units (all-zero
outgoing weights) made and found, how far the logits moved, what the cut saved, and a criterion's
fine-tuned result over seeds.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from nbhelpers.core.train import fit, module_device, seed_everything
from nbhelpers.measure import correct, count_macs
from nbhelpers.techniques.neuron_pruning.criteria import select_keep, unit_scores
from nbhelpers.techniques.neuron_pruning.units import NORMS, n_units, weighted_layers, widths


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
