"""Batch normalization: a from-scratch layer, folding into the preceding layer, and training
diagnostics.

In training, a batch of pre-activations :math:`x` is normalized per feature (per channel for images)
with its own mean and variance, then scaled and shifted by learned :math:`\\gamma, \\beta`:
:math:`y = \\gamma (x - \\mu_B) / \\sqrt{\\sigma_B^2 + \\epsilon} + \\beta`. Running averages of
:math:`\\mu_B` and the unbiased :math:`\\sigma_B^2` replace them in evaluation, which makes
the layer an affine map that can be folded into the linear or convolutional layer before it.
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

from nbhelpers.core.params import ParameterError
from nbhelpers.core.train import module_device
from nbhelpers.measure import correct
from nbhelpers.measure.facts import fact_table
from nbhelpers.measure.stats import paired_difference, seed_interval, seed_summary, verdict
from nbhelpers.measure.targets import target

BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d)
#: Points below a model's own best mean validation accuracy that still count as near its best (the
#: robustness target's goal).
NEAR_BEST_POINTS = 1.0


class BatchNorm(nn.Module):
    """Batch normalization from scratch, for (N, C) and (N, C, ...) inputs (like
    ``nn.BatchNorm1d/2d``).

    The buffers have torch's names (``running_mean``, ``running_var``, ``num_batches_tracked``), so
    a ``state_dict`` moves between this layer and torch's in both directions.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
    ):
        super().__init__()
        self.num_features, self.eps, self.momentum, self.affine = (
            num_features,
            eps,
            momentum,
            affine,
        )
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
                raise ValueError(
                    f"batch norm needs more than 1 value per feature in training, got {m}"
                )
            xd = x.double()  # statistics accumulated in float64, as torch does on the CPU
            mean = xd.mean(dims)
            sq = ((xd - mean.reshape(shape)) ** 2).sum(dims)
            var = sq / m  # biased: normalizes this batch
            with torch.no_grad():
                self.num_batches_tracked += 1
                a = (
                    1.0 / float(self.num_batches_tracked)
                    if self.momentum is None
                    else self.momentum
                )
                self.running_mean.copy_(a * mean + (1 - a) * self.running_mean.double())
                self.running_var.copy_(
                    a * sq / (m - 1) + (1 - a) * self.running_var.double()
                )  # unbiased
            mean, var = mean.to(x.dtype), var.to(x.dtype)
        else:
            mean, var = self.running_mean, self.running_var
        x_hat = (x - mean.reshape(shape)) / torch.sqrt(var.reshape(shape) + self.eps)
        if self.affine:
            return self.weight.reshape(shape) * x_hat + self.bias.reshape(shape)
        return x_hat

    def extra_repr(self) -> str:
        """Shown by ``print(module)``."""
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}"
        )


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
    """A copy of a model whose ``nn.BatchNorm1d/2d`` layers are replaced by the from-scratch
    ``BatchNorm``.

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


def count_batchnorm(model: nn.Module) -> int:
    """Number of batch norm layers (torch's or from scratch) in a model."""
    return sum(isinstance(m, (BatchNorm, *BN_TYPES)) for m in model.modules())


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


def check_lrs(name: str, values: object, maximum: float = 10.0) -> list[float]:
    """Check a list of learning rates: non-empty, each a number in (0, ``maximum``], distinct.

    Args:
        name: parameter name.
        values: the given list.
        maximum: the largest rate allowed (10 for SGD with momentum 0.9; plain SGD on a sigmoid
            network takes larger ones).

    Returns:
        The learning rates, sorted ascending.
    """
    allowed = f"a non-empty list of distinct learning rates, each a number in (0, {maximum:g}]"
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) == 0:
        raise ParameterError(name, values, allowed)
    for v in values:
        if (
            isinstance(v, bool)
            or not isinstance(v, (int, float))
            or not math.isfinite(v)
            or not 0 < v <= maximum
        ):
            raise ParameterError(name, values, allowed + f" ({v!r} is not)")
    if len(set(values)) != len(values):
        raise ParameterError(name, values, allowed + " (repeated values)")
    return sorted(float(v) for v in values)


def speed_table(curves: pd.DataFrame, arch: str, epochs: int) -> pd.DataFrame:
    """Per learning rate: the epochs the BN model needs to reach the no-BN model's final accuracy.

    Args:
        curves: one row per (arch, bn, lr, seed, epoch) with ``val_accuracy`` (padded to
            ``epochs``).
        arch: the architecture.
        epochs: the epoch budget of both.

    Returns:
        One row per learning rate trained with and without BN: the no-BN final mean validation
        accuracy, the epochs the mean BN curve needs to reach it, and that as a fraction of the
        budget.
    """
    mean = curves[curves.arch == arch].groupby(["bn", "lr", "epoch"])["val_accuracy"].mean()
    rows = []
    for lr in sorted(curves.loc[curves.arch == arch, "lr"].unique()):
        if (False, lr) not in mean.index.droplevel("epoch") or (
            True,
            lr,
        ) not in mean.index.droplevel("epoch"):
            continue  # trained with one setting only
        plain, bn = mean.loc[(False, lr)].to_numpy(), mean.loc[(True, lr)].to_numpy()
        need = epochs_to_reach(bn, plain[-1])
        rows.append(
            {
                "lr": lr,
                "no_bn_final_val_accuracy": plain[-1],
                "bn_final_val_accuracy": bn[-1],
                "bn_epochs_to_no_bn_final": need,
                "fraction_of_budget": need / epochs,
            }
        )
    return pd.DataFrame(rows)


def speed_with_interval(curves: pd.DataFrame, arch: str, lr: float, epochs: int) -> dict:
    """The speed target at one learning rate, with a 95% interval from the seed spread.

    The measured figure is the share of the budget after which the mean (over seeds) BN validation
    curve first reaches the no-BN model's final mean validation accuracy. Its interval: the shares
    after which the BN curve reaches the low and the high end of the t interval (over seeds) of that
    no-BN final accuracy; an end the BN curve never reaches counts as ``epochs + 1`` epochs.

    Args:
        curves: one row per (arch, bn, lr, seed, epoch) with ``val_accuracy`` (padded to
            ``epochs``).
        arch: the architecture.
        lr: the learning rate (trained with and without BN).
        epochs: the budget of both.

    Returns:
        {"no_bn_final", "no_bn_low", "no_bn_high", "bn_epochs", "fraction", "low", "high",
        "bn_first_epoch", "no_bn_first_epoch"} (fraction NaN when the BN curve never gets there).
    """
    d = curves[(curves.arch == arch) & np.isclose(curves.lr, lr)]
    plain = d[~d.bn.astype(bool)]
    mean = d.groupby(["bn", "epoch"])["val_accuracy"].mean()
    bn_curve = mean.loc[True].reindex(range(1, epochs + 1)).to_numpy()
    final = plain.loc[plain.epoch == epochs, "val_accuracy"].to_numpy(dtype=float)
    level, (lo, hi) = float(final.mean()), seed_interval(final)
    need = epochs_to_reach(bn_curve, level)

    def share(x: float) -> float:
        e = epochs_to_reach(bn_curve, x)
        return (e if math.isfinite(e) else epochs + 1) / epochs

    return {
        "no_bn_final": level,
        "no_bn_low": lo,
        "no_bn_high": hi,
        "bn_epochs": need,
        "fraction": need / epochs,
        "low": share(lo) if math.isfinite(lo) else math.nan,
        "high": share(hi) if math.isfinite(hi) else math.nan,
        "bn_first_epoch": float(bn_curve[0]),
        "no_bn_first_epoch": float(mean.loc[(False, 1)]),
    }


def accuracy_gap(
    best: Sequence[np.ndarray], other: Sequence[np.ndarray]
) -> tuple[float, tuple[float, float]]:
    """Points by which ``other`` is below ``best``, pooled over seeds, with a paired 95% interval.

    Args:
        best: per seed, a boolean array (True where the model was right) on the evaluation images.
        other: the same for the other setting, seed by seed in the same order.

    Returns:
        (points below, (low, high)): Newcombe's paired interval over the pooled (seed, image) pairs;
        it covers the sampling of images, not the spread over seeds.
    """
    d = paired_difference(np.concatenate(list(best)), np.concatenate(list(other)))
    return -float(d["difference"]), (-float(d["high"]), -float(d["low"]))


def _grid_lr(lrs: Sequence[float], lr: float) -> float | None:
    """The rate of ``lrs`` equal to ``lr`` up to float rounding, or None."""
    hits = [float(x) for x in lrs if math.isclose(float(x), lr, rel_tol=1e-9)]
    return hits[0] if hits else None


def lr_range(
    final: pd.DataFrame,
    arch: str,
    stall: float,
    val_correct: dict,
    tolerance: float = NEAR_BEST_POINTS,
) -> dict:
    """How much of a learning-rate sweep BN opens: the rates that train and those near the best.

    Only rates trained both with and without BN count, so the two sides see the same sweep. A
    rate *trains* when the mean final validation accuracy over seeds is at least ``stall``; it is
    *near the best* when that mean is at most ``tolerance`` points below the model's own best
    mean over those rates.

    Args:
        final: one row per run: arch, bn, lr, seed, final_val_accuracy.
        arch: the architecture.
        stall: mean final validation accuracy below which a rate failed.
        val_correct: (arch, bn, lr) -> per-seed boolean arrays on the validation images.
        tolerance: points below the own best that still count as near it.

    Returns:
        ``rates`` (the common rates, ascending), ``tolerance``; per side ("bn", "no_bn"): the
        rates that train (``trains_*``), the rates near the best (``near_*``), the largest of
        them (``largest_near_*``, NaN when none) and its gap below the best in points with a
        paired 95% interval over the pooled seeds and validation images (``gap_*``, ``low_*``,
        ``high_*``); ``bn_only`` (rates where BN trains and no-BN fails) and ``near_extra``
        (rates near the best with BN minus those without).
    """
    val = final[final.arch == arch].groupby(["bn", "lr"])["final_val_accuracy"].mean()
    common = sorted(set(map(float, val.loc[False].index)) & set(map(float, val.loc[True].index)))
    out: dict = {"rates": common, "tolerance": float(tolerance)}
    for bn, side in ((True, "bn"), (False, "no_bn")):
        means = {lr: float(val.loc[(bn, lr)]) for lr in common}
        best_lr = max(means, key=means.get)
        near = [lr for lr in common if 100 * (means[best_lr] - means[lr]) <= tolerance + 1e-9]
        top = max(near)
        gap, (low, high) = accuracy_gap(
            val_correct[(arch, bn, best_lr)], val_correct[(arch, bn, top)]
        )
        out |= {
            f"trains_{side}": [lr for lr in common if means[lr] >= stall],
            f"near_{side}": near,
            f"largest_near_{side}": top,
            f"gap_{side}": gap,
            f"low_{side}": low,
            f"high_{side}": high,
        }
    out["bn_only"] = [lr for lr in out["trains_bn"] if lr not in out["trains_no_bn"]]
    out["near_extra"] = len(out["near_bn"]) - len(out["near_no_bn"])
    return out


def lr_facts(
    final: pd.DataFrame,
    curves: pd.DataFrame,
    arch: str,
    epochs: int,
    stall: float,
    val_correct: dict,
    factor: float | None = None,
) -> dict:
    """Learning rates chosen on validation accuracy and the figures of both targets for one model.

    Args:
        final: one row per run: arch, bn, lr, seed, final_val_accuracy.
        curves: one row per (arch, bn, lr, seed, epoch) with ``val_accuracy``.
        arch: the architecture.
        epochs: its budget.
        stall: a no-BN rate whose mean final validation accuracy is below this fails.
        val_correct: (arch, bn, lr) -> per-seed boolean arrays on the validation images.
        factor: robustness at ``factor`` x the best no-BN rate; None: at the smallest failing rate.

    Returns:
        The chosen rates (``best_no_bn_lr``, ``bn_best_lr``), the speed figures of
        ``speed_with_interval`` at the best no-BN rate (``speed``), the failing rates, the rate of
        the robustness target (``robust_lr``, NaN when there is none), the BN model's gap there
        below its best (``bn_gap_points`` with ``gap_low`` and ``gap_high``) and how much of the
        sweep BN opens (``range``, ``lr_range``).
    """
    val = final[final.arch == arch].groupby(["bn", "lr"])["final_val_accuracy"].mean()
    plain, withbn = val.loc[False], val.loc[True]
    best_plain, best_bn = float(plain.idxmax()), float(withbn.idxmax())
    failing = [float(lr) for lr in plain.index if plain.loc[lr] < stall]
    if factor is None:
        robust = min(failing) if failing else None
    else:
        robust = _grid_lr(withbn.index, factor * best_plain)
    gap, (low, high) = (
        accuracy_gap(val_correct[(arch, True, best_bn)], val_correct[(arch, True, robust)])
        if robust is not None
        else (math.nan, (math.nan, math.nan))
    )
    return {
        "arch": arch,
        "epochs": epochs,
        "best_no_bn_lr": best_plain,
        "bn_best_lr": best_bn,
        "no_bn_best_val": float(plain.max()),
        "bn_best_val": float(withbn.max()),
        "speed": speed_with_interval(curves, arch, best_plain, epochs),
        "no_bn_failing_lrs": failing,
        "robust_lr": math.nan if robust is None else robust,
        "no_bn_val_at_robust_lr": float(plain.get(robust, math.nan))
        if robust is not None
        else math.nan,
        "bn_val_at_robust_lr": float(withbn.loc[robust]) if robust is not None else math.nan,
        "bn_gap_points": gap,
        "gap_low": low,
        "gap_high": high,
        "range": lr_range(final, arch, stall, val_correct),
    }


def chosen_test(final: pd.DataFrame, models: dict, test_loader) -> pd.DataFrame:
    """Test accuracy, measured once, of each model at its learning rate chosen on validation.

    Only the chosen models see the test images; the choice uses validation accuracy alone.

    Args:
        final: one row per run: arch, bn, lr, seed, final_val_accuracy.
        models: (arch, bn, lr, seed) -> the trained model.
        test_loader: the test images, in a fixed order.

    Returns:
        One row per (arch, bn): the chosen lr, mean validation and test accuracy over seeds, the
        test sd, and in the BN row the paired difference BN - no BN in points (pooled over seeds)
        with its 95% interval and verdict.
    """
    rows = []
    for arch in dict.fromkeys(final["arch"]):
        val = final[final.arch == arch].groupby(["bn", "lr"])["final_val_accuracy"].mean()
        pooled = {}
        for bn in (False, True):
            lr = float(val.loc[bn].idxmax())
            seeds = sorted(
                final.loc[
                    (final.arch == arch) & (final.bn == bn) & np.isclose(final.lr, lr), "seed"
                ]
            )
            hits = [correct(models[(arch, bn, lr, sd)], test_loader) for sd in seeds]
            s = seed_summary([float(h.mean()) for h in hits])
            pooled[bn] = np.concatenate(hits)
            rows.append(
                {
                    "arch": arch,
                    "bn": bn,
                    "lr": lr,
                    "val_mean": float(val.loc[(bn, lr)]),
                    "test_mean": s.mean,
                    "test_sd": s.std,
                    "seeds": s.n,
                }
            )
        d = paired_difference(pooled[False], pooled[True])
        rows[-1].update(
            bn_minus_no_bn_points=d["difference"],
            diff_low=d["low"],
            diff_high=d["high"],
            verdict=verdict(d["low"], d["high"]),
        )
    return pd.DataFrame(rows)


def bn_targets(f: dict) -> list[dict]:
    """The speed and robustness targets of one model from its ``lr_facts``, with their intervals.

    Args:
        f: ``lr_facts`` of the model.

    Returns:
        Two ``targets.target`` dicts: the BN share of the budget to reach the no-BN final validation
        accuracy (at most 1/3), and the BN validation accuracy at the robustness rate below its best
        (at most 1 point).
    """
    sp, a = f["speed"], f["arch"]

    def span(lo: float, hi: float) -> tuple[float, float] | None:
        return (lo, hi) if math.isfinite(lo) and math.isfinite(hi) else None

    return [
        target(
            f"{a}: BN epochs to the no-BN final val accuracy at lr {f['best_no_bn_lr']:g}, "
            "share of the budget",
            sp["fraction"],
            "<=",
            1 / 3,
            "",
            f"no-BN ends at {sp['no_bn_final']:.4f} after {f['epochs']} epochs",
            interval=span(sp["low"], sp["high"]),
        ),
        target(
            f"{a}: BN val accuracy below its best, at lr {f['robust_lr']:g}",
            f["bn_gap_points"],
            "<=",
            1.0,
            "points",
            "no robustness rate in the grid"
            if not math.isfinite(f["robust_lr"])
            else f"no-BN mean val {f['no_bn_val_at_robust_lr']:.3f} there",
            interval=span(f["gap_low"], f["gap_high"]),
        ),
    ]


def drift_table(act: pd.DataFrame) -> pd.DataFrame:
    """How far each layer's input distribution moves during training, per run.

    Args:
        act: rows of ``ActivationStats.frame()`` with a ``run`` column.

    Returns:
        One row per (run, layer): the range (max - min over the recorded steps) of the median and of
        the 15-85 spread, and the last spread.
    """
    return (
        act.assign(spread=act["q85"] - act["q15"])
        .groupby(["run", "layer"])
        .agg(
            median_range=("q50", lambda s: s.max() - s.min()),
            spread_range=("spread", lambda s: s.max() - s.min()),
            spread_last=("spread", "last"),
        )
        .reset_index()
    )


def compare_with_torch(kind: str, steps: int = 5, c: int = 8, seed: int = 0) -> dict:
    """Largest differences between torch's batch norm and ``BatchNorm`` over training steps, then
    in eval.

    Random batches (mean 1, sd 2) of 16 examples; the error of a value is |a - b| / (1 + |a|).

    Args:
        kind: "1d" or "2d" (6x6 feature maps).
        steps: training steps compared.
        c: features or channels.
        seed: seed of the parameters and batches.

    Returns:
        The largest error of the training output, input gradient, running mean, running variance
        and evaluation output, and the largest absolute difference of any of them.
    """
    torch.manual_seed(seed)
    ref = (nn.BatchNorm1d if kind == "1d" else nn.BatchNorm2d)(c)
    with torch.no_grad():
        ref.weight.uniform_(0.5, 2.0), ref.bias.normal_()
    ours = from_torch(ref)
    keys = ("train output", "input gradient", "running mean", "running var", "eval output")
    diff, absd = dict.fromkeys(keys, 0.0), dict.fromkeys(keys, 0.0)

    def err(a: torch.Tensor, b: torch.Tensor, key: str) -> None:
        a, b = a.detach(), b.detach()
        diff[key] = max(diff[key], float(((a - b).abs() / (1 + a.abs())).max()))
        absd[key] = max(absd[key], float((a - b).abs().max()))

    shape = [16, c] + ([] if kind == "1d" else [6, 6])
    for _ in range(steps):
        x = torch.randn(*shape) * 2 + 1
        xr, xo = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        yr, yo = ref(xr), ours(xo)
        yr.pow(2).sum().backward(), yo.pow(2).sum().backward()
        err(yr, yo, "train output"), err(xr.grad, xo.grad, "input gradient")
        err(ref.running_mean, ours.running_mean, "running mean")
        err(ref.running_var, ours.running_var, "running var")
    ref.eval(), ours.eval()
    x = torch.randn(*shape) * 2 + 1
    with torch.no_grad():
        err(ref(x), ours(x), "eval output")
    return {
        **{f"{k} error": v for k, v in diff.items()},
        "largest |difference|": max(absd.values()),
    }


def _range_rows(arch: str, r: dict) -> list[tuple]:
    """The fact rows of one model's ``lr_range``: what the sweep shows BN opens."""
    tol = r["tolerance"]
    near = f"within {tol:g} point{'' if tol == 1 else 's'} of its best"
    listed = ", ".join(f"{x:g}" for x in r["bn_only"]) or "none"
    rows = [
        (
            f"{arch}: rates where BN trains and no-BN fails",
            len(r["bn_only"]),
            "rates",
            f"{listed}; of {len(r['rates'])} rates with both",
        ),
        (
            f"{arch}: rates {near}, BN minus no BN",
            r["near_extra"],
            "rates",
            f"BN {len(r['near_bn'])}, no BN {len(r['near_no_bn'])}; mean val",
        ),
    ]
    for side, label in (("bn", "BN"), ("no_bn", "no BN")):
        rows.append(
            (
                f"{arch}: largest lr {near}, {label}",
                r[f"largest_near_{side}"],
                "",
                f"{r[f'gap_{side}']:.2f} [{r[f'low_{side}']:.2f}, {r[f'high_{side}']:.2f}] "
                "points below",
            )
        )
    return rows


def summary(
    facts: Sequence[dict],
    chosen: pd.DataFrame,
    drift: pd.DataFrame,
    small: pd.DataFrame,
    forgot_drop_points: float,
    fold_max_diff: float,
    n_val: int,
    n_test: int,
    scratch_error: float | None = None,
    scale_grad_ratio: float | None = None,
) -> pd.DataFrame:
    """This run's facts for the discussion of notebook 08 to point at by name.

    Args:
        facts: ``lr_facts`` of each model (ReLU MLP, LeNet-5, sigmoid MLP).
        chosen: ``chosen_test``.
        drift: per run and layer of the sigmoid net: ``median_range``, ``spread_range``.
        small: the small-batch runs: batch, norm, val_accuracy.
        forgot_drop_points: eval-mode accuracy minus train-mode accuracy on label-sorted batches.
        fold_max_diff: largest logit difference between a BN model and its folded copy.
        n_val: validation images; n_test: test images.
        scratch_error: largest error of the from-scratch layer against torch's (None: no row).
        scale_grad_ratio: weight-gradient norm at scale 1 over that at the largest scale of
            ``scale_invariance`` (None: no row).

    Returns:
        A ``facts.fact_table`` (value, unit, context), 4 significant digits; per model also what
        the sweep shows BN opens (``lr_range``): the rates where BN trains and no-BN fails, the
        rates near the best with BN minus without, and the largest near-best rate of each.
    """
    rows = []
    for f in facts:
        a, sp = f["arch"], f["speed"]
        rows += [
            (
                f"{a}: best lr without BN",
                f["best_no_bn_lr"],
                "",
                "highest mean validation accuracy",
            ),
            (f"{a}: best lr with BN", f["bn_best_lr"], "", "highest mean validation accuracy"),
            (
                f"{a}: no-BN final val accuracy",
                sp["no_bn_final"],
                "",
                f"at lr {f['best_no_bn_lr']:g}, epoch {f['epochs']}",
            ),
            (f"{a}: val accuracy after epoch 1, no BN", sp["no_bn_first_epoch"], "", "same lr"),
            (f"{a}: val accuracy after epoch 1, BN", sp["bn_first_epoch"], "", "same lr"),
            (f"{a}: BN epochs to the no-BN final", sp["bn_epochs"], "epochs", f"of {f['epochs']}"),
            (
                f"{a}: share of the budget",
                sp["fraction"],
                "",
                f"95% interval [{sp['low']:.3g}, {sp['high']:.3g}]; goal <= 1/3",
            ),
            (
                f"{a}: rates where no-BN fails",
                ", ".join(f"{x:g}" for x in f["no_bn_failing_lrs"]) or "none",
                "",
                "mean final val accuracy below STALL_ACCURACY",
            ),
            (
                f"{a}: BN below its best at lr {f['robust_lr']:g}",
                f["bn_gap_points"],
                "points",
                f"95% interval [{f['gap_low']:.3g}, {f['gap_high']:.3g}]; goal <= 1",
            ),
        ]
        rows += _range_rows(a, f["range"])
        for _, r in chosen[(chosen.arch == a)].iterrows():
            rows.append(
                (
                    f"{a}: test accuracy, {'BN' if r.bn else 'no BN'}",
                    r.test_mean,
                    "",
                    f"lr {r.lr:g}, mean of {r.seeds} seeds",
                )
            )
        r = chosen[(chosen.arch == a) & chosen.bn.astype(bool)].iloc[0]
        rows.append(
            (
                f"{a}: test, BN minus no BN",
                r.bn_minus_no_bn_points,
                "points",
                f"[{r.diff_low:.3g}, {r.diff_high:.3g}]: {r.verdict}",
            )
        )
    for _, r in drift.iterrows():
        rows.append(
            (
                f"{r.layer} input, {r.run}: median moved",
                r.median_range,
                "",
                "max - min over training",
            )
        )
        rows.append(
            (
                f"{r.layer} input, {r.run}: 15-85 spread moved",
                r.spread_range,
                "",
                "max - min over training",
            )
        )
    for bs in (small["batch"].min(), small["batch"].max()):
        for _, r in small[small.batch == bs].iterrows():
            rows.append(
                (f"batch {bs}: val accuracy, {r.norm}", r.val_accuracy, "", "small-batch runs")
            )
    rows += [
        ("forgotten eval, label-sorted: drop", forgot_drop_points, "points", "smallest test batch"),
        ("folding: largest logit difference", fold_max_diff, "", "float rounding"),
        ("one validation image", 100 / n_val, "points", f"{n_val:,} validation images"),
        ("one test image", 100 / n_test, "points", f"{n_test:,} test images"),
    ]
    if scratch_error is not None:
        rows.append(
            (
                "from-scratch BN: largest error",
                scratch_error,
                "",
                "vs torch, train and eval; goal 1e-6",
            )
        )
    if scale_grad_ratio is not None:
        rows.append(
            (
                "weights scaled before BN: gradient shrink",
                scale_grad_ratio,
                "x",
                "gradient norm at scale 1 / at the largest scale",
            )
        )
    return fact_table(rows, digits=4)


def percentile_bands(stats: pd.DataFrame, title: str = "") -> Figure:
    """The 15th/50th/85th percentiles of each activation's input over training, one panel per (run,
    layer).

    Args:
        stats: rows from ``ActivationStats.frame()`` with an added ``run`` column.
        title: the figure title.

    Returns:
        The figure.
    """
    runs, layers = list(dict.fromkeys(stats["run"])), list(dict.fromkeys(stats["layer"]))
    fig, axes = plt.subplots(
        len(runs),
        len(layers),
        figsize=(4.2 * len(layers), 2.8 * len(runs)),
        squeeze=False,
        sharex=True,
    )
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
    """Heatmap of the mean (over seeds) of ``value`` by architecture and BN (rows) and learning
    rate.

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
    sns.heatmap(
        table,
        annot=True,
        fmt=".3f",
        cmap="viridis",
        vmin=0,
        vmax=1,
        ax=ax,
        cbar_kws={"label": f"mean {value}"},
    )
    ax.set_xlabel("learning rate (SGD, momentum 0.9)")
    ax.set_ylabel("")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def curves_figure(
    curves: pd.DataFrame, arch: str, metric: str = "val_accuracy", logy: bool = False
) -> Figure:
    """Mean (band: standard deviation over seeds) of a metric per epoch, one panel per learning
    rate.

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
        sns.lineplot(
            data=d[d.lr == lr],
            x="epoch",
            y=metric,
            hue="BN",
            hue_order=["without BN", "with BN"],
            errorbar="sd",
            ax=ax,
            legend=ax is axes[0, 0],
        )
        ax.set_title(f"lr = {lr:g}")
        if logy:
            ax.set_yscale("log")
    fig.suptitle(f"{arch}: {metric} (mean and sd over seeds)")
    fig.tight_layout()
    return fig
