"""Units and their layers in an ``nn.Sequential``: a *unit* is an output row of an ``nn.Linear`` (a
hidden neuron) or an output channel of an ``nn.Conv2d`` (a filter); every weighted layer except the
last (the classifier) is prunable. The names of the criteria and scopes, and the checks of a
fraction and of a list of criteria.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch.ao.nn.quantized as nnq
from torch import nn

from nbhelpers.core.params import ParameterError, check_choices, check_fraction

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
