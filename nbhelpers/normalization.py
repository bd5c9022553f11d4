"""Batch normalization: a from-scratch layer, folding into the preceding layer, and training diagnostics.

In training, a batch of pre-activations :math:`x` is normalized per feature (per channel for images)
with its own mean and variance, then scaled and shifted by learned :math:`\\gamma, \\beta`:
:math:`y = \\gamma (x - \\mu_B) / \\sqrt{\\sigma_B^2 + \\epsilon} + \\beta`. Running averages of
:math:`\\mu_B` and the unbiased :math:`\\sigma_B^2` replace them in evaluation, which makes the layer
an affine map that can be folded into the linear or convolutional layer before it.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.figure import Figure
from torch import nn

from .params import ParameterError
from .train import module_device

BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d)


class BatchNorm(nn.Module):
    """Batch normalization from scratch, for (N, C) and (N, C, ...) inputs (like ``nn.BatchNorm1d/2d``).

    The buffers have torch's names (``running_mean``, ``running_var``, ``num_batches_tracked``), so a
    ``state_dict`` moves between this layer and torch's in both directions.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True):
        super().__init__()
        self.num_features, self.eps, self.momentum, self.affine = num_features, eps, momentum, affine
        self.weight = nn.Parameter(torch.ones(num_features)) if affine else None  # gamma
        self.bias = nn.Parameter(torch.zeros(num_features)) if affine else None  # beta
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize with the batch statistics (training) or the running averages (evaluation)."""
        dims = [0] + list(range(2, x.dim()))  # every axis but the feature/channel axis
        shape = [1, -1] + [1] * (x.dim() - 2)
        if self.training:
            m = x.numel() // x.shape[1]  # values per feature: N (1d) or N*H*W (2d)
            if m < 2:
                raise ValueError(f"batch norm needs more than 1 value per feature in training, got {m}")
            xd = x.double()  # statistics accumulated in float64, as torch does on the CPU
            mean = xd.mean(dims)
            sq = ((xd - mean.reshape(shape)) ** 2).sum(dims)
            var = sq / m  # biased: normalizes this batch
            with torch.no_grad():
                self.num_batches_tracked += 1
                a = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.copy_(a * mean + (1 - a) * self.running_mean.double())
                self.running_var.copy_(a * sq / (m - 1) + (1 - a) * self.running_var.double())  # unbiased
            mean, var = mean.to(x.dtype), var.to(x.dtype)
        else:
            mean, var = self.running_mean, self.running_var
        x_hat = (x - mean.reshape(shape)) / torch.sqrt(var.reshape(shape) + self.eps)
        if self.affine:
            return self.weight.reshape(shape) * x_hat + self.bias.reshape(shape)
        return x_hat

    def extra_repr(self) -> str:
        """Shown by ``print(module)``."""
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}"


def from_torch(bn: nn.modules.batchnorm._BatchNorm) -> BatchNorm:
    """A from-scratch ``BatchNorm`` with the settings, parameters and running statistics of torch's.

    Args:
        bn: an ``nn.BatchNorm1d`` or ``nn.BatchNorm2d``.

    Returns:
        The equivalent ``BatchNorm`` (same mode: training or evaluation).
    """
    ours = BatchNorm(bn.num_features, bn.eps, bn.momentum, bn.affine)
    ours.load_state_dict(bn.state_dict())
    return ours.train(bn.training)


def swap_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of a model whose ``nn.BatchNorm1d/2d`` layers are replaced by the from-scratch ``BatchNorm``.

    Args:
        model: the model (not changed).

    Returns:
        The copy.
    """
    model = copy.deepcopy(model)
    for name, child in list(model.named_modules()):
        for cname, sub in list(child.named_children()):
            if isinstance(sub, BN_TYPES):
                setattr(child, cname, from_torch(sub))
    return model


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


def fold_batchnorm(model: nn.Sequential) -> nn.Sequential:
    """A copy of a sequential model with every batch norm folded into the layer before it and removed.

    Args:
        model: an ``nn.Sequential`` (e.g. the shared MLP or LeNet-5) in which each batch norm directly
            follows an ``nn.Linear`` or ``nn.Conv2d``.

    Returns:
        The folded copy (same class, in evaluation mode), with no batch norm layers left.
    """
    folded = copy.deepcopy(model).eval()
    for i in reversed(range(len(folded))):
        if isinstance(folded[i], (BatchNorm, *BN_TYPES)):
            if i == 0 or not isinstance(folded[i - 1], (nn.Linear, nn.Conv2d)):
                raise ValueError(f"layer {i} is a batch norm that does not follow a Linear or Conv2d")
            folded[i - 1] = fold_bn(folded[i - 1], folded[i])
            del folded[i]
    return folded


def count_batchnorm(model: nn.Module) -> int:
    """Number of batch norm layers (torch's or from scratch) in a model."""
    return sum(isinstance(m, (BatchNorm, *BN_TYPES)) for m in model.modules())


class ActivationStats:
    """Forward hooks that record percentiles of each layer's input to its ReLU during training.

    Only forward passes in training mode are recorded (the evaluation passes of ``fit`` are skipped),
    every ``every``-th step, on the device of the activations. Use ``frame()`` for the rows and
    ``remove()`` to detach the hooks.
    """

    def __init__(self, model: nn.Module, quantiles: Sequence[float] = (0.15, 0.5, 0.85), every: int = 1):
        self.quantiles, self.every, self.rows = list(quantiles), every, []
        self._step: dict[str, int] = {}
        relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
        self.handles = [m.register_forward_hook(self._hook(f"relu {k + 1}")) for k, m in enumerate(relus)]

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
        """One row per (recorded step, layer): step, layer, mean, std and the quantiles (q15, q50, ...)."""
        return pd.DataFrame(self.rows)

    def remove(self) -> None:
        """Detach every hook."""
        for h in self.handles:
            h.remove()


def bn_activation_and_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> pd.DataFrame:
    """Per batch-norm layer: spread of the normalized activations and of the gradients flowing through.

    Runs one training-mode forward and backward pass of cross-entropy on a copy of the model, on
    the model's device.

    Args:
        model: a model with batch norm layers (not changed).
        x: a batch of inputs (moved to the model's device).
        y: its labels.

    Returns:
        One row per batch norm: the mean over features of the per-feature mean and standard deviation
        of its input and output, and the RMS of the gradient with respect to its input and output.
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
        rows.append({
            "layer": name,
            "input mean": float(a_in.mean(dims).mean()), "input std": float(a_in.std(dims).mean()),
            "output mean": float(a_out.mean(dims).mean()), "output std": float(a_out.std(dims).mean()),
            "grad in rms": float(g_in.pow(2).mean().sqrt()),
            "grad out rms": float(g_out.pow(2).mean().sqrt()),
        })
    return pd.DataFrame(rows)


def scale_invariance(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, index: int,
                     scales: Sequence[float] = (1.0, 3.0, 10.0)) -> pd.DataFrame:
    """Scale the weights of layer ``index`` (followed by a batch norm) and see what changes.

    In training mode the batch norm cancels the scale (up to its small epsilon): outputs and loss stay
    the same, while the gradient with respect to the scaled weights shrinks as 1/scale. Normalized
    activations, not normalized gradients.

    Args:
        model: a sequential model whose layer ``index`` is a Linear or Conv2d followed by a batch norm.
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
        rows.append({"scale": c, "loss": loss.item(), "max |logits change|": float((logits.detach() - ref).abs().max()),
                     "weight grad norm": g, "grad norm x scale": g * c})
    return pd.DataFrame(rows)


@torch.no_grad()
def train_mode_accuracy(model: nn.Module, X: torch.Tensor, y: torch.Tensor, batch_size: int,
                        sort_by_label: bool = False, seed: int = 0) -> float:
    """Accuracy when a model is (wrongly) left in training mode, on a copy so the original is kept.

    Args:
        model: the trained model (not changed).
        X: inputs (moved to the model's device).
        y: labels.
        batch_size: evaluation batch size (at least 2).
        sort_by_label: batches of one class each (a non-shuffled, label-sorted stream), else shuffled.
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


def padded(history: pd.DataFrame, epochs: int, column: str = "val_accuracy") -> np.ndarray:
    """A history column over epochs 1..``epochs``, the last value carried on after an early stop.

    Args:
        history: from ``train.fit`` (shorter when it stopped on divergence).
        epochs: the epoch budget.
        column: the column.

    Returns:
        An array of length ``epochs``.
    """
    s = history.set_index("epoch")[column].reindex(range(1, epochs + 1)).ffill()
    return s.fillna(0.0 if "accuracy" in column else math.inf).to_numpy(dtype=float)


def epochs_to_reach(curve: Sequence[float], level: float) -> float:
    """The first epoch (1-based) at which a curve reaches ``level``; NaN if it never does.

    Args:
        curve: one value per epoch (e.g. mean validation accuracy).
        level: the level to reach.

    Returns:
        The epoch number, or NaN.
    """
    hits = np.flatnonzero(np.asarray(curve, dtype=float) >= level - 1e-12)
    return float(hits[0] + 1) if len(hits) else math.nan


def check_lrs(name: str, values: object) -> list[float]:
    """Check a list of learning rates: non-empty, each a number in (0, 10], distinct.

    Args:
        name: parameter name.
        values: the given list.

    Returns:
        The learning rates, sorted ascending.
    """
    allowed = "a non-empty list of distinct learning rates, each a number in (0, 10]"
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) == 0:
        raise ParameterError(name, values, allowed)
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 < v <= 10:
            raise ParameterError(name, values, allowed + f" ({v!r} is not)")
    if len(set(values)) != len(values):
        raise ParameterError(name, values, allowed + " (repeated values)")
    return sorted(float(v) for v in values)


def speed_table(curves: pd.DataFrame, arch: str, epochs: int) -> pd.DataFrame:
    """Per learning rate: the epochs the BN model needs to reach the no-BN model's final accuracy.

    Args:
        curves: one row per (arch, bn, lr, seed, epoch) with ``val_accuracy`` (padded to ``epochs``).
        arch: the architecture.
        epochs: the epoch budget of both.

    Returns:
        One row per learning rate: the no-BN final mean validation accuracy, the epochs the mean BN
        curve needs to reach it, and that as a fraction of the budget.
    """
    mean = curves[curves.arch == arch].groupby(["bn", "lr", "epoch"])["val_accuracy"].mean()
    rows = []
    for lr in sorted(curves.loc[curves.arch == arch, "lr"].unique()):
        plain, bn = mean.loc[(False, lr)].to_numpy(), mean.loc[(True, lr)].to_numpy()
        need = epochs_to_reach(bn, plain[-1])
        rows.append({"lr": lr, "no_bn_final_val_accuracy": plain[-1], "bn_final_val_accuracy": bn[-1],
                     "bn_epochs_to_no_bn_final": need, "fraction_of_budget": need / epochs})
    return pd.DataFrame(rows)


def percentile_bands(stats: pd.DataFrame, title: str = "") -> Figure:
    """The 15th/50th/85th percentiles of each ReLU input over training, one panel per (run, layer).

    Args:
        stats: rows from ``ActivationStats.frame()`` with an added ``run`` column.
        title: the figure title.

    Returns:
        The figure.
    """
    runs, layers = list(dict.fromkeys(stats["run"])), list(dict.fromkeys(stats["layer"]))
    fig, axes = plt.subplots(len(runs), len(layers), figsize=(4.2 * len(layers), 2.8 * len(runs)),
                             squeeze=False, sharex=True)
    for r, run in enumerate(runs):
        for c, layer in enumerate(layers):
            d, ax = stats[(stats.run == run) & (stats.layer == layer)], axes[r, c]
            ax.fill_between(d["step"], d["q15"], d["q85"], alpha=0.3, label="15-85th percentile")
            ax.plot(d["step"], d["q50"], label="median")
            ax.axhline(0, color="gray", lw=0.6)
            ax.set_title(f"{run}: {layer} input", fontsize=9)
            ax.set_xlabel("training step" if r == len(runs) - 1 else "")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def accuracy_heatmap(final: pd.DataFrame, value: str = "test_accuracy", title: str = "") -> Figure:
    """Heatmap of the mean (over seeds) of ``value`` by architecture and BN (rows) and learning rate.

    Args:
        final: one row per run with columns arch, bn, lr and ``value``.
        value: the column averaged.
        title: the title.

    Returns:
        The figure.
    """
    d = final.assign(model=final["arch"] + np.where(final["bn"], " + BN", " no BN"))
    table = d.pivot_table(index="model", columns="lr", values=value, aggfunc="mean")
    fig, ax = plt.subplots(figsize=(1.3 * table.shape[1] + 2.5, 0.6 * table.shape[0] + 1.5))
    sns.heatmap(table, annot=True, fmt=".3f", cmap="viridis", vmin=0, vmax=1, ax=ax,
                cbar_kws={"label": f"mean {value}"})
    ax.set_xlabel("learning rate (SGD, momentum 0.9)")
    ax.set_ylabel("")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def curves_figure(curves: pd.DataFrame, arch: str, metric: str = "val_accuracy", logy: bool = False) -> Figure:
    """Mean (band: standard deviation over seeds) of a metric per epoch, one panel per learning rate.

    Args:
        curves: one row per (arch, bn, lr, seed, epoch) with the metric.
        arch: the architecture shown.
        metric: the column plotted.
        logy: log-scale y axis (for losses).

    Returns:
        The figure.
    """
    d = curves[curves.arch == arch].assign(BN=lambda f: np.where(f["bn"], "with BN", "without BN"))
    lrs = sorted(d["lr"].unique())
    fig, axes = plt.subplots(1, len(lrs), figsize=(3.2 * len(lrs), 3.2), sharey=True, squeeze=False)
    for ax, lr in zip(axes[0], lrs):
        sns.lineplot(data=d[d.lr == lr], x="epoch", y=metric, hue="BN", hue_order=["without BN", "with BN"],
                     errorbar="sd", ax=ax, legend=ax is axes[0, 0])
        ax.set_title(f"lr = {lr:g}")
        if logy:
            ax.set_yscale("log")
    fig.suptitle(f"{arch}: {metric} (mean and sd over seeds)")
    fig.tight_layout()
    return fig
