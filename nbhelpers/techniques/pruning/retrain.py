"""Han et al.'s (2015) retraining of a pruned network: the L2 term (their section 3.1), dropout
scaled to the connections a layer keeps (section 3.2, ``D_r = D_o sqrt(C_ir / C_io)``), and
per-layer sparsities in fixed proportions (their Table 2 keeps 8%, 9% and 26% of LeNet-300-100's
three layers) at any overall sparsity.

Dropout is added by forward hooks on the activation after each hidden Linear layer, so the model's
layers, names and ``state_dict`` stay those of the network without dropout; its masks come from a
generator of its own, so that evaluating a model between steps (which draws from torch's global
generator) does not change the training run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import pandas as pd
import torch
from torch import nn

from nbhelpers.core.params import ParameterError, check_choice, check_float
from nbhelpers.techniques.pruning.magnitude import SCOPES, magnitude_prune, prunable

#: Activation modules after which a hidden layer's dropout acts.
ACTIVATIONS = (nn.ReLU, nn.Sigmoid, nn.Tanh)
#: Scopes of a pruning run: one global threshold, the same share per layer, or per-layer shares in
#: the proportions of a table (``proportional_sparsities``).
RUN_SCOPES = (*SCOPES, "table")


def l2_penalty(model: nn.Module, weight: float) -> torch.Tensor:
    """The L2 term ``(weight / 2) * sum_l ||W_l||^2`` over the prunable weights (as used).

    Its gradient is ``weight * W``, Caffe's ``weight_decay``; a pruned weight is zero in ``W``
    (``weight_orig * weight_mask``), so it adds nothing. Biases are not penalized.

    Args:
        model: the model (pruned or not).
        weight: the coefficient ``lambda`` (>= 0).

    Returns:
        A scalar tensor on the model's device, differentiable in the weights.
    """
    check_float("weight", weight, 0.0)
    layers = prunable(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no prunable layer")
    return 0.5 * weight * sum((m.weight**2).sum() for _, m in layers)


def scaled_dropout_rate(original: float, kept: int, total: int) -> float:
    """Han et al.'s dropout ratio during retraining, ``D_r = D_o * sqrt(C_ir / C_io)``.

    Dropout acts on units, and a layer's connections ``C_i = N_i N_{i-1}`` grow with the square of
    its units, so keeping a share ``C_ir / C_io`` of the connections is like keeping the square
    root of that share of the units.

    Args:
        original: ``D_o``, the dropout probability of the network before pruning, in [0, 1).
        kept: ``C_ir``, the layer's connections left (non-zero weights).
        total: ``C_io``, its connections before pruning.

    Returns:
        ``D_r``.
    """
    check_float("original", original, 0.0, 1.0, high_inclusive=False)
    if isinstance(total, bool) or int(total) != total or total < 1:
        raise ParameterError("total", total, "a positive number of connections")
    if isinstance(kept, bool) or int(kept) != kept or not 0 <= kept <= total:
        raise ParameterError("kept", kept, f"an integer number of connections in [0, {total}]")
    return original * math.sqrt(kept / total)


def hidden_activations(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The hidden Linear layers and the activation module that follows each, in order.

    A Linear layer followed (before the next Linear or Conv2d) by a ReLU, sigmoid or tanh module
    is hidden; the last Linear (the classifier) has no activation after it and is left out.

    Args:
        model: a model whose modules run in registration order (``nn.Sequential``).

    Returns:
        (the Linear layer's name, its activation module) pairs.
    """
    pairs, pending = [], None
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            pending = name
        elif isinstance(m, nn.Conv2d):
            pending = None
        elif isinstance(m, ACTIVATIONS) and pending is not None:
            pairs.append((pending, m))
            pending = None
    return pairs


def dropout_rates(model: nn.Module, original: float) -> dict[str, float]:
    """Han et al.'s retraining dropout after each hidden Linear layer of a (pruned) model,
    ``scaled_dropout_rate`` of its non-zero weights.

    Args:
        model: the model.
        original: ``D_o``, in [0, 1).

    Returns:
        Hidden layer name -> ``D_r``.
    """
    layers = dict(prunable(model))
    rates = {}
    for name, _ in hidden_activations(model):
        w = layers[name].weight
        rates[name] = scaled_dropout_rate(original, int(torch.count_nonzero(w)), w.numel())
    return rates


class ScaledDropout:
    """Dropout after each hidden Linear layer at ``D_o sqrt(C_ir / C_io)`` of that layer.

    ``update()`` recomputes the rates from the layers' current non-zero weights (call it after
    every pruning step); ``remove()`` (or leaving a ``with`` block) detaches the hooks. The
    dropout is inverted (survivors scaled by ``1 / (1 - p)``) and acts in training mode only,
    as ``nn.Dropout``.

    Args:
        model: the model, e.g. the shared MLP (a Linear, its activation, the next Linear, ...).
        original: ``D_o``, in [0, 1).
        seed: seed of the dropout masks' own generator.
    """

    def __init__(self, model: nn.Module, original: float, seed: int = 0):
        self.original = check_float("original", original, 0.0, 1.0, high_inclusive=False)
        self.model, self.seed = model, int(seed)
        self._generators: dict[torch.device, torch.Generator] = {}
        pairs = hidden_activations(model)
        if not pairs:
            raise ValueError(f"{type(model).__name__} has no hidden Linear layer to drop out")
        self.rates = {name: self.original for name, _ in pairs}
        self.handles = [act.register_forward_hook(self._hook(name)) for name, act in pairs]
        self.update()

    def _generator(self, device: torch.device) -> torch.Generator:
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[device]

    def _hook(self, name: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
            p = self.rates[name]
            if not module.training or p == 0.0:
                return output
            keep = torch.rand(
                output.shape, generator=self._generator(output.device), device=output.device
            )
            return output * (keep >= p).to(output.dtype) / (1.0 - p)

        return hook

    def update(self) -> dict[str, float]:
        """Set each layer's rate from its current non-zero weights.

        Returns:
            Layer name -> its dropout rate ``D_r``.
        """
        self.rates = dropout_rates(self.model, self.original)
        return dict(self.rates)

    def remove(self) -> None:
        """Detach the hooks: the model runs without dropout again."""
        for h in self.handles:
            h.remove()
        self.handles = []

    def __enter__(self) -> ScaledDropout:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def proportional_sparsities(
    model: nn.Module, sparsity: float, keep: Sequence[float]
) -> dict[str, float]:
    """Per-layer sparsities whose kept shares are proportional to ``keep`` (clipped at 1), with
    ``sparsity`` of all the prunable weights removed.

    At the overall sparsity of ``keep`` itself the layers keep exactly ``keep``: with Han et
    al.'s Table 2 for LeNet-300-100 (``[0.08, 0.09, 0.26]``) that is 91.82% of the weights.

    Args:
        model: the model (its prunable layers, in order, match ``keep``).
        sparsity: overall fraction of the prunable weights to remove, in [0, 1).
        keep: one kept share per prunable layer, each in (0, 1].

    Returns:
        Layer name -> its sparsity.
    """
    check_float("sparsity", sparsity, 0.0, 1.0, high_inclusive=False)
    layers = prunable(model)
    if len(keep) != len(layers) or any(
        isinstance(k, bool) or not isinstance(k, int | float) or not 0.0 < k <= 1.0 for k in keep
    ):
        raise ParameterError(
            "keep", list(keep), f"{len(layers)} kept shares in (0, 1], one per prunable layer"
        )
    sizes = [m.weight.numel() for _, m in layers]
    target = (1.0 - sparsity) * sum(sizes)
    low, high = 0.0, 1.0 / min(keep)  # the scale c of the shares, kept(c) = min(1, c k_l)
    for _ in range(200):  # bisection: kept weights grow with c
        mid = (low + high) / 2
        if sum(min(1.0, mid * k) * n for k, n in zip(keep, sizes)) < target:
            low = mid
        else:
            high = mid
    return {name: 1.0 - min(1.0, high * k) for (name, _), k in zip(layers, keep)}


def prune_layers(model: nn.Module, sparsities: Mapping[str, float]) -> nn.Module:
    """Magnitude-prune each named layer to its own sparsity (masks only grow, as
    ``magnitude_prune``).

    Args:
        model: the model, pruned in place.
        sparsities: layer name -> the fraction of its weights to remove, in [0, 1).

    Returns:
        The model.
    """
    for name, s in sparsities.items():
        magnitude_prune(model, s, "layer", only=[name])
    return model


def prune_scope(
    model: nn.Module, sparsity: float, scope: str, keep: Sequence[float] | None = None
) -> nn.Module:
    """Prune to an overall ``sparsity`` in one of ``RUN_SCOPES``: "global" and "layer" as
    ``magnitude_prune``, "table" with per-layer shares proportional to ``keep``.

    Args:
        model: the model, pruned in place (masks only grow).
        sparsity: overall fraction of the prunable weights to remove, in [0, 1).
        scope: "global", "layer" or "table".
        keep: the kept share of each prunable layer, for "table" (e.g. Han et al.'s Table 2).

    Returns:
        The model.
    """
    check_choice("scope", scope, RUN_SCOPES)
    if scope != "table":
        return magnitude_prune(model, sparsity, scope)
    if keep is None:
        raise ParameterError("keep", keep, "one kept share per prunable layer for scope 'table'")
    return prune_layers(model, proportional_sparsities(model, sparsity, keep))


def kept_shares(chosen: pd.DataFrame, keep: Sequence[float]) -> pd.DataFrame:
    """The kept share of each layer of a pruned model beside a table of shares (Han et al.'s
    Table 2 for LeNet-300-100).

    Args:
        chosen: ``layer_sparsity`` of the model (index: layer, with "total").
        keep: one share per layer (another length, e.g. an empty list: no table column).

    Returns:
        Index: layer (and "total"); columns "kept share, this model", "weights", and
        "kept share, table" when ``keep`` has one value per layer.
    """
    out = pd.DataFrame(
        {"weights": chosen["weights"], "kept share, this model": 1.0 - chosen["sparsity"]}
    )
    layers = chosen.index.drop("total", errors="ignore")
    if len(keep) == len(layers):
        table = pd.Series(list(keep), index=layers, dtype=float)
        kept = float((table * chosen.loc[layers, "weights"]).sum())
        table["total"] = kept / float(chosen.loc[layers, "weights"].sum())
        out["kept share, table"] = table
    return out
