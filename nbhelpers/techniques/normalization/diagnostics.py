"""Training diagnostics of batch norm: activation percentiles over training, the spread of
activations and gradients around each batch norm, the scale invariance of the layer before it, and
the accuracy of a model wrongly left in training mode.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import pandas as pd
import torch
from torch import nn

from nbhelpers.core.train import module_device
from nbhelpers.techniques.normalization.batchnorm import BN_TYPES, BatchNorm


class ActivationStats:
    """Forward hooks that record percentiles of the input of each activation module during training.

    The hooked modules are those of the types in ``kinds`` (``nn.ReLU`` by default; ``nn.Sigmoid``
    for a sigmoid network), named by type and position: "relu 1", "relu 2", ... or "sigmoid 3".
    Only forward passes in training mode are recorded (the evaluation passes of ``fit`` are
    skipped), every ``every``-th step, on the device of the activations. Use ``frame()`` for the
    rows and ``remove()`` to detach the hooks.
    """

    def __init__(
        self,
        model: nn.Module,
        quantiles: Sequence[float] = (0.15, 0.5, 0.85),
        every: int = 1,
        kinds: tuple[type[nn.Module], ...] = (nn.ReLU,),
    ):
        self.quantiles, self.every, self.rows = list(quantiles), every, []
        self._step: dict[str, int] = {}
        acts = [m for m in model.modules() if isinstance(m, tuple(kinds))]
        self.handles = [
            m.register_forward_hook(self._hook(f"{type(m).__name__.lower()} {k + 1}"))
            for k, m in enumerate(acts)
        ]

    def _hook(self, layer: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if not module.training:
                return
            step = self._step.get(layer, 0)
            self._step[layer] = step + 1
            if step % self.every:
                return
            x = inputs[0].detach().flatten().float()
            levels = torch.tensor(self.quantiles, dtype=x.dtype, device=x.device)
            q = torch.quantile(x, levels).tolist()
            row = {"step": step, "layer": layer, "mean": float(x.mean()), "std": float(x.std())}
            row.update({f"q{round(100 * p)}": v for p, v in zip(self.quantiles, q)})
            self.rows.append(row)

        return hook

    def frame(self) -> pd.DataFrame:
        """One row per (recorded step, layer): step, layer, mean, std and the quantiles (q15, q50,
        ...)."""
        return pd.DataFrame(self.rows)

    def remove(self) -> None:
        """Detach every hook."""
        for h in self.handles:
            h.remove()


def bn_activation_and_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> pd.DataFrame:
    """Per batch-norm layer: spread of the normalized activations and of the gradients flowing
    through.

    Runs one training-mode forward and backward pass of cross-entropy on a copy of the model, on
    the model's device.

    Args:
        model: a model with batch norm layers (not changed).
        x: a batch of inputs (moved to the model's device).
        y: its labels.

    Returns:
        One row per batch norm: the mean over features of the per-feature mean and standard
        deviation of its input and output, and the RMS of the gradient with respect to its input and
        output.
    """
    model = copy.deepcopy(model).train()
    seen: list[tuple[str, torch.Tensor, torch.Tensor]] = []

    def keep(name):
        def hook(module, inputs, output):
            inputs[0].retain_grad()
            output.retain_grad()
            seen.append((name, inputs[0], output))

        return hook

    bns = [m for m in model.modules() if isinstance(m, (BatchNorm, *BN_TYPES))]
    handles = [m.register_forward_hook(keep(f"bn {k + 1}")) for k, m in enumerate(bns)]
    device = module_device(model)
    x = x.to(device).clone().requires_grad_(True)  # so that every BN input is part of the graph
    nn.functional.cross_entropy(model(x), y.to(device)).backward()
    for h in handles:
        h.remove()
    rows = []
    for name, a_in, a_out in seen:
        a_in, a_out, g_in, g_out = a_in.detach(), a_out.detach(), a_in.grad, a_out.grad
        dims = [0] + list(range(2, a_in.dim()))
        rows.append(
            {
                "layer": name,
                "input mean": float(a_in.mean(dims).mean()),
                "input std": float(a_in.std(dims).mean()),
                "output mean": float(a_out.mean(dims).mean()),
                "output std": float(a_out.std(dims).mean()),
                "grad in rms": float(g_in.pow(2).mean().sqrt()),
                "grad out rms": float(g_out.pow(2).mean().sqrt()),
            }
        )
    return pd.DataFrame(rows)


def scale_invariance(
    model: nn.Sequential,
    x: torch.Tensor,
    y: torch.Tensor,
    index: int,
    scales: Sequence[float] = (1.0, 3.0, 10.0),
) -> pd.DataFrame:
    """Scale the weights of layer ``index`` (followed by a batch norm) and see what changes.

    In training mode the batch norm cancels the scale (up to its small epsilon): outputs and loss
    stay the same, while the gradient with respect to the scaled weights shrinks as 1/scale.
    Normalized activations, not normalized gradients.

    Args:
        model: a sequential model whose layer ``index`` is a Linear or Conv2d followed by a batch
            norm.
        x: a batch of inputs (moved to the model's device).
        y: its labels.
        index: position of the layer to scale.
        scales: the factors tried.

    Returns:
        One row per scale: the loss, the largest change of the logits, and the norm of the gradient
        of the scaled weight (and that norm times the scale, which stays constant).
    """
    device = module_device(model)
    x, y = x.to(device), y.to(device)
    ref = None
    rows = []
    for c in scales:
        m = copy.deepcopy(model).train()
        with torch.no_grad():
            m[index].weight.mul_(c)
            if m[index].bias is not None:
                m[index].bias.mul_(c)
        logits = m(x)
        loss = nn.functional.cross_entropy(logits, y)
        loss.backward()
        ref = logits.detach() if ref is None else ref
        g = float(m[index].weight.grad.norm())
        rows.append(
            {
                "scale": c,
                "loss": loss.item(),
                "max |logits change|": float((logits.detach() - ref).abs().max()),
                "weight grad norm": g,
                "grad norm x scale": g * c,
            }
        )
    return pd.DataFrame(rows)


@torch.no_grad()
def train_mode_accuracy(
    model: nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    sort_by_label: bool = False,
    seed: int = 0,
) -> float:
    """Accuracy when a model is (wrongly) left in training mode, on a copy so the original is kept.

    Args:
        model: the trained model (not changed).
        X: inputs (moved to the model's device).
        y: labels.
        batch_size: evaluation batch size (at least 2).
        sort_by_label: batches of one class each (a non-shuffled, label-sorted stream), else
            shuffled.
        seed: seed of the shuffle (drawn on the CPU: the same order on every device).

    Returns:
        The accuracy in [0, 1] with batch statistics in place of the running averages.
    """
    m = copy.deepcopy(model).train()
    device = module_device(m)
    X, y = X.to(device), y.to(device)
    if sort_by_label:
        order = torch.argsort(y, stable=True)
    else:
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed)).to(device)
    correct = 0
    for idx in order.split(batch_size):
        if len(idx) < 2:
            continue  # a batch of one cannot be normalized by its own statistics
        correct += int((m(X[idx]).argmax(1) == y[idx]).sum())
    return correct / sum(len(i) for i in order.split(batch_size) if len(i) >= 2)
