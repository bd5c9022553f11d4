"""Magnitude masks: which weights are prunable, global and layer-wise L1 pruning to an absolute
sparsity, the naive fixed threshold, sparsity per layer, and masks saved and applied.

A *prunable weight* is the ``weight`` of an ``nn.Linear`` or ``nn.Conv2d``; biases are kept.
Sparsity is always the **absolute** fraction of prunable weights that are zero, so that repeated
calls (iterative and gradual pruning) grow the existing masks up to the requested level.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
import torch
from torch import nn
from torch.nn.utils import prune

from nbhelpers.core.params import ParameterError, check_choice, check_float

PRUNABLE = (nn.Linear, nn.Conv2d)

SCOPES = ("global", "layer")

METHODS = ("one-shot", "iterative", "gradual")


def prunable(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The (name, module) pairs whose ``weight`` may be pruned: every Linear and Conv2d, in
    order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, PRUNABLE)]


def largest_linear(model: nn.Module) -> str:
    """The name of the ``nn.Linear`` with the most weights (the layer sparse kernels matter for).

    Args:
        model: any model with at least one Linear layer.

    Returns:
        Its name in ``model.named_modules()`` ("1" for the MLP, "5" for Caffe's LeNet-5).
    """
    linears = [(m.weight.numel(), n) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer")
    return max(linears, key=lambda t: t[0])[1]


def _masked(m: nn.Module) -> int:
    """Weights a module's pruning mask already removes (0 without a mask)."""
    mask = getattr(m, "weight_mask", None)
    return 0 if mask is None else int((mask == 0).sum())


def check_run(name: str, value: object, scopes: Sequence[str] = SCOPES) -> tuple[str, str]:
    """Check a "method/scope" string such as "gradual/global" and split it.

    Args:
        name: parameter name.
        value: "<method>/<scope>" with method in ``METHODS`` and scope in ``scopes``.
        scopes: the allowed scopes (``retrain.RUN_SCOPES`` adds Han et al.'s "table").

    Returns:
        (method, scope).
    """
    allowed = (
        "'<method>/<scope>' with method in "
        + ", ".join(map(repr, METHODS))
        + " and scope in "
        + ", ".join(map(repr, scopes))
    )
    if not isinstance(value, str) or value.count("/") != 1:
        raise ParameterError(name, value, allowed)
    method, scope = value.split("/")
    if method not in METHODS or scope not in scopes:
        raise ParameterError(name, value, allowed)
    return method, scope


def magnitude_prune(
    model: nn.Module, sparsity: float, scope: str = "global", only: Sequence[str] | None = None
) -> nn.Module:
    """Prune the smallest-magnitude weights (L1 criterion) until ``sparsity`` of them are masked.

    Masks only grow: weights already masked stay masked, and the new ones are the smallest among
    those remaining (``torch.nn.utils.prune`` combines the masks in a ``PruningContainer``).

    Args:
        model: the model, pruned in place (``weight`` becomes ``weight_orig * weight_mask``).
        sparsity: target fraction of masked weights in [0, 1), absolute, not relative.
        scope: "global" (one threshold over all layers) or "layer" (the fraction in every layer).
        only: names of the layers to prune (default: every prunable layer).

    Returns:
        The model.
    """
    check_float("sparsity", sparsity, 0.0, 1.0, high_inclusive=False)
    check_choice("scope", scope, SCOPES)
    layers = [(n, m) for n, m in prunable(model) if only is None or n in only]
    if only is not None and len(layers) != len(set(only)):
        raise ParameterError(
            "only",
            list(only),
            "names of prunable layers: " + ", ".join(n for n, _ in prunable(model)),
        )
    if scope == "global":
        total = sum(m.weight.numel() for _, m in layers)
        extra = max(0, round(sparsity * total) - sum(_masked(m) for _, m in layers))
        prune.global_unstructured(
            [(m, "weight") for _, m in layers], prune.L1Unstructured, amount=extra
        )
    else:
        for _, m in layers:
            extra = max(0, round(sparsity * m.weight.numel()) - _masked(m))
            prune.l1_unstructured(m, "weight", amount=extra)
    return model


def global_threshold(model: nn.Module, sparsity: float) -> float:
    """The magnitude ``tau`` such that ``|w| <= tau`` holds for ``round(sparsity * N)`` prunable
    weights.

    Args:
        model: the model.
        sparsity: fraction in (0, 1).

    Returns:
        The threshold (the k-th smallest |w| over every prunable weight).
    """
    check_float("sparsity", sparsity, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
    w = torch.cat([m.weight.detach().abs().flatten() for _, m in prunable(model)])
    k = max(1, round(sparsity * w.numel()))
    return float(w.kthvalue(k).values)


@torch.no_grad()
def threshold_prune(model: nn.Module, threshold: float) -> nn.Module:
    """The naive method: zero every prunable weight with ``|w| <= threshold`` in place (no mask, no
    retraining).

    Args:
        model: the model, changed in place.
        threshold: the fixed magnitude threshold.

    Returns:
        The model.
    """
    for _, m in prunable(model):
        m.weight[m.weight.abs() <= threshold] = 0.0
    return model


def layer_sparsity(model: nn.Module) -> pd.DataFrame:
    """Zeros per prunable layer, counted on the effective (masked) weights.

    Args:
        model: the model, pruned or not.

    Returns:
        One row per layer (index: name): shape, weights, nonzero, sparsity; plus a "total" row.
    """
    rows = []
    for n, m in prunable(model):
        w = m.weight.detach()
        nz = int(torch.count_nonzero(w))
        rows.append(
            {"layer": n, "shape": "x".join(map(str, w.shape)), "weights": w.numel(), "nonzero": nz}
        )
    df = pd.DataFrame(rows)
    df.loc[len(df)] = {
        "layer": "total",
        "shape": "",
        "weights": df.weights.sum(),
        "nonzero": df.nonzero.sum(),
    }
    df["sparsity"] = 1 - df.nonzero / df.weights
    return df.set_index("layer")


def sparsity(model: nn.Module) -> float:
    """Fraction of all prunable weights that are zero."""
    return float(layer_sparsity(model).loc["total", "sparsity"])


def is_pruned(model: nn.Module) -> bool:
    """Whether any layer still carries a ``torch.nn.utils.prune`` re-parametrisation."""
    return any(prune.is_pruned(m) for _, m in prunable(model))


def make_permanent(model: nn.Module) -> nn.Module:
    """``prune.remove`` on every pruned layer: ``weight`` becomes a plain parameter holding the
    zeros.

    Args:
        model: the model, changed in place.

    Returns:
        The model (its ``state_dict`` has no ``weight_orig``/``weight_mask`` any more).
    """
    for _, m in prunable(model):
        if prune.is_pruned(m):
            prune.remove(m, "weight")
    return model


def masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """The pruning masks of a pruned model: layer name -> a copy of its ``weight_mask``."""
    return {
        n: m.weight_mask.detach().clone() for n, m in prunable(model) if hasattr(m, "weight_mask")
    }


def apply_masks(model: nn.Module, layer_masks: Mapping[str, torch.Tensor]) -> nn.Module:
    """Prune a model in place with given masks (``torch.nn.utils.prune.custom_from_mask``).

    Args:
        model: the model; its layers named in ``layer_masks`` get ``weight_orig * weight_mask``.
        layer_masks: layer name -> 0/1 tensor of the weight's shape.

    Returns:
        The model.
    """
    layers = dict(prunable(model))
    unknown = sorted(set(layer_masks) - set(layers))
    if unknown:
        raise ParameterError(
            "layer_masks", unknown, "names of prunable layers: " + ", ".join(layers)
        )
    for n, mask in layer_masks.items():
        prune.custom_from_mask(layers[n], "weight", mask.to(layers[n].weight.device))
    return model
