"""Deep Compression's trained weight sharing on a pruned model: a k-means codebook per layer over
its non-zero weights, the centroids fine-tuned by gradient descent, then rounded to float16.

Han et al. (2016, section 3) cluster each layer's weights with k-means (linear initialisation) and
store a ``bits``-bit index per weight plus one table of shared values; fine-tuning then updates
each shared value with the sum of the gradients of the weights that use it. Here the weights of a
layer become ``centroids[index]`` through a ``torch.nn.utils.parametrize`` parametrization
(``SharedWeights``), so that ordinary training (``train.fit``) computes exactly that summed
gradient; pruned weights (index -1) stay exactly zero. ``bake`` rounds the centroids to float16
(what the compact artifact stores) and makes the weights plain parameters again.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn.utils import parametrize

from nbhelpers.core.params import ParameterError
from nbhelpers.techniques import pruning
from nbhelpers.techniques.quantization.kmeans import linear_kmeans


class SharedWeights(nn.Module):
    """A weight made of shared values: ``centroids[index]``, and 0 where ``index`` is -1.

    Args:
        centroids: the layer's shared values (trained).
        index: the centroid of every weight, -1 for a pruned weight (same shape as the weight).
    """

    def __init__(self, centroids: torch.Tensor, index: torch.Tensor):
        super().__init__()
        self.centroids = nn.Parameter(centroids.detach().clone().float())
        self.register_buffer("index", index.detach().clone().long())

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        """The shared weight (the original tensor is ignored: it only gives the shape)."""
        kept = self.index >= 0
        shared = self.centroids[self.index.clamp(min=0)]
        return torch.where(kept, shared, torch.zeros((), dtype=shared.dtype, device=shared.device))


def _layer_bits(bits: int | Sequence[int], n: int) -> list[int]:
    """One bit width per layer, from an int or a list of ``n`` ints (each 1 to 12)."""
    allowed = f"an integer from 1 to 12, or a list of {n} of them (one per Linear/Conv2d layer)"
    widths = [bits] * n if isinstance(bits, int) and not isinstance(bits, bool) else bits
    if not isinstance(widths, list | tuple) or len(widths) != n:
        raise ParameterError("bits", bits, allowed)
    for b in widths:
        if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= 12:
            raise ParameterError("bits", bits, allowed)
    return list(widths)


def share_weights(
    model: nn.Module, bits: int | Sequence[int], seed: int = 0
) -> tuple[nn.Module, pd.DataFrame]:
    """Cluster each layer's non-zero weights into ``2**bits`` shared values (k-means, Han et al.'s
    linear initialisation) and make the weights ``SharedWeights`` of a copy.

    Args:
        model: the pruned float model (not changed; zeros are pruned weights and stay zero).
        bits: index width per Linear/Conv2d layer (an int for all, or a list, 1 to 12).
        seed: seed of the k-means.

    Returns:
        (the copy, whose weights are parametrized; one row per layer: layer, non-zero weights,
        shared values, mse of the non-zero weights against their centroids).
    """
    out = copy.deepcopy(model)
    layers = pruning.prunable(out)
    rows = []
    for (name, m), b in zip(layers, _layer_bits(bits, len(layers))):
        w = m.weight.detach().cpu().double().numpy()
        nz = w != 0
        if not nz.any():
            raise ParameterError("model", f"layer {name!r} has no non-zero weight", "some")
        centroids, labels = linear_kmeans(w[nz], 2**b, seed)
        index = np.full(w.shape, -1, dtype=np.int64)
        index[nz] = labels
        parametrize.register_parametrization(
            m, "weight", SharedWeights(torch.from_numpy(centroids), torch.from_numpy(index))
        )
        mse = float(((centroids[labels] - w[nz]) ** 2).mean())
        rows.append({"layer": name, "non-zero weights": int(nz.sum()),
                     "shared values": len(centroids), "mse": mse})  # fmt: skip
    return out, pd.DataFrame(rows)


def shared(model: nn.Module) -> list[tuple[str, SharedWeights]]:
    """The (layer name, ``SharedWeights``) of a model's parametrized layers, in order."""
    return [
        (name, m.parametrizations["weight"][0])
        for name, m in pruning.prunable(model)
        if parametrize.is_parametrized(m, "weight")
    ]


def bake(model: nn.Module, dtype: torch.dtype = torch.float16) -> nn.Module:
    """Round the centroids and the biases to ``dtype``; every shared weight becomes a plain
    parameter again.

    Args:
        model: a model from ``share_weights`` (changed in place).
        dtype: the precision the centroids are stored in (the weights stay float32, holding the
            rounded values exactly).

    Returns:
        The model, whose weights now take at most ``2**bits`` distinct non-zero values per layer
        and whose Linear/Conv2d biases are ``dtype`` numbers.
    """
    pairs = shared(model)
    if not pairs:
        raise ParameterError("model", type(model).__name__, "a model from share_weights")
    with torch.no_grad():
        for _, p in pairs:
            p.centroids.copy_(p.centroids.to(dtype).float())
        for _, m in pruning.prunable(model):
            if parametrize.is_parametrized(m, "weight"):
                parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
            if m.bias is not None:
                m.bias.copy_(m.bias.to(dtype).float())
    return model
