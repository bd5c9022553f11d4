"""Folding an evaluation-mode batch norm into the linear or convolutional layer before it.

In evaluation batch norm is a per-feature affine map, so it composes with the layer that feeds it
into one layer of the same type: the folded model has the architecture of the model without BN.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from nbhelpers.techniques.normalization.batchnorm import BN_TYPES, BatchNorm


@torch.no_grad()
def fold_bn(layer: nn.Linear | nn.Conv2d, bn: nn.Module) -> nn.Linear | nn.Conv2d:
    """Fold an evaluation-mode batch norm into the linear or convolutional layer that feeds it.

    With :math:`s = \\gamma / \\sqrt{\\sigma^2 + \\epsilon}` per output feature,
    :math:`W' = s \\odot W` (row- or filter-wise) and :math:`b' = s (b - \\mu) + \\beta`.

    Args:
        layer: the ``nn.Linear`` or ``nn.Conv2d`` before the batch norm.
        bn: the batch norm (torch's or ``BatchNorm``), using its running statistics.

    Returns:
        A new layer of the same type with a bias, equal to ``bn(layer(x))`` in evaluation.
    """
    if not isinstance(layer, (nn.Linear, nn.Conv2d)):
        raise TypeError(f"can only fold into nn.Linear or nn.Conv2d, not {type(layer).__name__}")
    gamma = bn.weight if bn.weight is not None else torch.ones_like(bn.running_mean)
    beta = bn.bias if bn.bias is not None else torch.zeros_like(bn.running_mean)
    s = gamma / torch.sqrt(bn.running_var + bn.eps)
    fused = copy.deepcopy(layer)
    if fused.bias is None:
        fused.bias = nn.Parameter(layer.weight.new_zeros(layer.weight.shape[0]))
    b = layer.bias if layer.bias is not None else torch.zeros_like(s)
    fused.weight.copy_(layer.weight * s.reshape(-1, *([1] * (layer.weight.dim() - 1))))
    fused.bias.copy_(s * (b - bn.running_mean) + beta)
    return fused


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of a model with every batch norm folded into the layer before it and removed.

    An ``nn.Sequential`` is folded layer by layer and stays a Sequential of the same class. Any
    other module is traced with ``torch.fx`` and folded by torch's own pass
    (``torch.fx.experimental.optimization.fuse``), which finds Conv-BN and Linear-BN pairs in the
    graph whatever the module names; the result is a ``torch.fx.GraphModule``.

    Args:
        model: the model; each batch norm must directly follow an ``nn.Linear`` or ``nn.Conv2d``
            whose output feeds nothing else.

    Returns:
        The folded copy, in evaluation mode, with no batch norm layers left.

    Raises:
        ValueError: a batch norm that cannot be folded (named), or a model ``torch.fx`` cannot
            trace (the tracer's reason).
    """
    if not isinstance(model, nn.Sequential):
        return _fold_traced(model)
    folded = copy.deepcopy(model).eval()
    for i in reversed(range(len(folded))):
        if isinstance(folded[i], (BatchNorm, *BN_TYPES)):
            if i == 0 or not isinstance(folded[i - 1], (nn.Linear, nn.Conv2d)):
                raise ValueError(
                    f"layer {i} is a batch norm that does not follow a Linear or Conv2d"
                )
            folded[i - 1] = fold_bn(folded[i - 1], folded[i])
            del folded[i]
    return folded


def _fold_traced(model: nn.Module) -> nn.Module:
    """``fold_batchnorm`` for a model that is not a Sequential, through ``torch.fx``."""
    from torch.fx.experimental.optimization import fuse

    own = [n for n, m in model.named_modules() if isinstance(m, BatchNorm)]
    if own:
        raise ValueError(f"fold the from-scratch BatchNorm layers {own} with a Sequential model")
    try:
        folded = fuse(copy.deepcopy(model).eval())
    except Exception as err:  # torch.fx's TraceError and the errors of the traced code
        raise ValueError(f"torch.fx cannot trace {type(model).__name__}: {err}") from err
    left = [n for n, m in folded.named_modules() if isinstance(m, BN_TYPES)]
    if left:
        raise ValueError(f"batch norm layers {left} do not directly follow a Linear or Conv2d")
    return folded.eval()
