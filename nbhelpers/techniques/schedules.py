"""Learning-rate schedules from ``torch.optim.lr_scheduler``, built by name, and Smith's LR range
test.

``make_schedule(name, ...)`` returns ``{"scheduler": f(optimizer) -> scheduler, "scheduler_step":
"epoch" | "batch"}``, the two keyword arguments ``nbhelpers.core.train.fit`` takes, so a run reads
``fit(model, ..., **make_schedule("onecycle", ...))``. ``lr_sequence`` steps a schedule on a dummy
optimizer to list the learning rate of every optimizer step without training (the schedules here,
ReduceLROnPlateau aside, depend only on the step count). ``lr_range_test`` raises the learning rate
exponentially batch after batch and records the loss (Smith 2017). Notebook 09's tables and facts
are in ``nbhelpers.lessons.lr_schedules``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from torch import nn
from torch.optim import lr_scheduler as lrs
from torch.utils.data import DataLoader

from nbhelpers.core.params import (
    ParameterError,
    check_choices,
    check_float,
    check_int,
    check_positive,
)
from nbhelpers.core.train import Device, make_optimizer, module_device

#: Schedule names the factory knows, with the torch classes behind them.
SCHEDULE_NAMES = (
    "constant",
    "step",
    "exponential",
    "cosine_warmup",
    "cosine_restarts",
    "onecycle",
    "plateau",
)


CLASSES = {
    "constant": "LambdaLR (factor 1)",
    "step": "StepLR",
    "exponential": "ExponentialLR",
    "cosine_warmup": "LinearLR then CosineAnnealingLR (SequentialLR)",
    "cosine_restarts": "CosineAnnealingWarmRestarts (T_mult 2)",
    "onecycle": "OneCycleLR",
    "plateau": "ReduceLROnPlateau (validation loss)",
}


#: Keys of the range test's parameter and of AdamW's.
RANGE_TEST_KEYS = ("steps", "lr_min", "lr_max", "divisor")


ADAMW_KEYS = ("lr", "weight_decay", "schedules")


#: Whether each schedule steps after every epoch or after every batch in ``train.fit``.
STEP_UNIT = {
    "constant": "epoch",
    "step": "epoch",
    "exponential": "epoch",
    "cosine_warmup": "batch",
    "cosine_restarts": "batch",
    "onecycle": "batch",
    "plateau": "epoch",
}


def check_schedules(name: str, values: object) -> list[str]:
    """Check a non-empty list of schedule names.

    Args:
        name: parameter name, e.g. "SCHEDULES".
        values: the given list.

    Returns:
        The names as a list.
    """
    names = check_choices(name, values, SCHEDULE_NAMES)
    if len(set(names)) != len(names):
        allowed = "distinct schedule names from " + ", ".join(map(repr, SCHEDULE_NAMES))
        raise ParameterError(name, values, allowed)
    return names


def check_warmup(name: str, warmup_epochs: object, epochs: int) -> int:
    """Check a warm-up length in epochs: from 0 to ``epochs - 1`` (something must follow it).

    Args:
        name: parameter name, e.g. "WARMUP_EPOCHS".
        warmup_epochs: the given value.
        epochs: the training length in epochs.

    Returns:
        The warm-up length.
    """
    value = check_int(name, warmup_epochs, minimum=0)
    if value >= epochs:
        raise ParameterError(
            name,
            warmup_epochs,
            f"fewer epochs than the training ({epochs}): a warm-up "
            "as long as training leaves nothing to anneal",
        )
    return value


def _check_keys(name: str, value: object, keys: Sequence[str]) -> dict:
    if not isinstance(value, Mapping) or set(value) != set(keys):
        raise ParameterError(name, value, "a dict with exactly the keys " + ", ".join(keys))
    return dict(value)


def check_range_test(name: str, value: object) -> dict:
    """Check the LR range test's parameter: {"steps", "lr_min", "lr_max", "divisor"}.

    Args:
        name: parameter name, e.g. "RANGE_TEST".
        value: the given dict.

    Returns:
        The dict: steps >= 10, 0 < lr_min < lr_max, divisor >= 1.
    """
    out = _check_keys(name, value, RANGE_TEST_KEYS)
    check_int(f'{name}["steps"]', out["steps"], minimum=10)
    check_positive(f'{name}["lr_min"]', out["lr_min"])
    check_float(f'{name}["lr_max"]', out["lr_max"], out["lr_min"], None, low_inclusive=False)
    check_float(f'{name}["divisor"]', out["divisor"], 1.0, None)
    return out


def check_adamw(name: str, value: object) -> dict:
    """Check AdamW's parameter: {"lr", "weight_decay", "schedules"}.

    Args:
        name: parameter name, e.g. "ADAMW".
        value: the given dict.

    Returns:
        The dict: lr > 0, weight_decay >= 0, schedules distinct names of ``SCHEDULE_NAMES``
        (empty: no AdamW runs; "constant" is added first when missing: it is the reference).
    """
    out = _check_keys(name, value, ADAMW_KEYS)
    check_positive(f'{name}["lr"]', out["lr"])
    check_float(f'{name}["weight_decay"]', out["weight_decay"], 0.0, None)
    names = out["schedules"]
    if names:
        names = check_schedules(f'{name}["schedules"]', names)
        names = ["constant"] + [n for n in names if n != "constant"]
    out["schedules"] = list(names)
    return out


def make_schedule(
    name: str,
    epochs: int,
    steps_per_epoch: int,
    base_lr: float,
    warmup_epochs: int = 1,
    step_size: int = 5,
    gamma: float = 0.1,
    exp_gamma: float = 0.8,
    max_lr: float | None = None,
    pct_start: float = 0.3,
    plateau_factor: float = 0.1,
    plateau_patience: int = 2,
    cycles: int = 2,
) -> dict[str, Callable[[torch.optim.Optimizer], object] | str]:
    """Build a schedule by name for ``train.fit``.

    Args:
        name: one of ``SCHEDULE_NAMES``.
        epochs: training length in epochs.
        steps_per_epoch: batches per epoch (per-batch schedules count steps).
        base_lr: the optimizer's learning rate (the start of every schedule but one-cycle).
        warmup_epochs: "cosine_warmup": epochs of linear warm-up from ``base_lr / 10``.
        step_size: "step": epochs between two decays.
        gamma: "step": factor of each decay.
        exp_gamma: "exponential": factor applied after every epoch.
        max_lr: "onecycle": the peak learning rate (default ``base_lr``).
        pct_start: "onecycle": share of the steps spent rising to ``max_lr``.
        plateau_factor: "plateau": factor applied when the validation loss stalls.
        plateau_patience: "plateau": epochs without improvement before a decay.
        cycles: "cosine_restarts": cosine cycles in the budget, each twice as long as the one
            before (SGDR with ``T_mult = 2``): the first lasts ``ceil(T / (2^cycles - 1))`` steps,
            so the last ends at (or a few steps after) the end of training, never restarting.

    Returns:
        {"scheduler": f(optimizer) -> scheduler, "scheduler_step": "epoch" or "batch"}.
    """
    check_schedules("schedule", [name])
    check_int("epochs", epochs, minimum=1)
    check_int("steps_per_epoch", steps_per_epoch, minimum=1)
    check_positive("base_lr", base_lr)
    total = epochs * steps_per_epoch
    if name == "constant":

        def build(opt):
            return lrs.LambdaLR(opt, lambda _: 1.0)
    elif name == "step":
        check_int("step_size", step_size, minimum=1)
        check_positive("gamma", gamma)

        def build(opt):
            return lrs.StepLR(opt, step_size=step_size, gamma=gamma)
    elif name == "exponential":
        check_positive("exp_gamma", exp_gamma)

        def build(opt):
            return lrs.ExponentialLR(opt, gamma=exp_gamma)
    elif name == "cosine_warmup":
        warm = check_warmup("warmup_epochs", warmup_epochs, epochs) * steps_per_epoch

        def build(opt):
            cosine = lrs.CosineAnnealingLR(opt, T_max=total - warm)
            if warm == 0:
                return cosine
            warmup = lrs.LinearLR(opt, start_factor=0.1, end_factor=1.0, total_iters=warm)
            return lrs.SequentialLR(opt, [warmup, cosine], milestones=[warm])
    elif name == "cosine_restarts":
        n = check_int("cycles", cycles, minimum=1)
        first = max(1, math.ceil(total / (2**n - 1)))

        def build(opt):
            return lrs.CosineAnnealingWarmRestarts(opt, T_0=first, T_mult=2)
    elif name == "onecycle":
        peak = check_positive("max_lr", base_lr if max_lr is None else max_lr)
        check_float("pct_start", pct_start, 0.0, 1.0, low_inclusive=False, high_inclusive=False)

        def build(opt):
            return lrs.OneCycleLR(opt, max_lr=peak, total_steps=total, pct_start=pct_start)
    else:  # plateau
        check_positive("plateau_factor", plateau_factor)
        check_int("plateau_patience", plateau_patience, minimum=0)

        def build(opt):
            return lrs.ReduceLROnPlateau(
                opt, mode="min", factor=plateau_factor, patience=plateau_patience
            )

    return {"scheduler": build, "scheduler_step": STEP_UNIT[name]}


def lr_sequence(
    schedule: dict,
    epochs: int,
    steps_per_epoch: int,
    base_lr: float,
    metrics: Sequence[float] | None = None,
) -> list[float]:
    """The learning rate of every optimizer step of a schedule, stepped as ``train.fit`` steps it.

    Args:
        schedule: a ``make_schedule`` result.
        epochs: epochs to trace.
        steps_per_epoch: batches per epoch.
        base_lr: the optimizer's learning rate.
        metrics: ReduceLROnPlateau only: the validation loss after each epoch.

    Returns:
        ``epochs * steps_per_epoch`` learning rates, the one used by each optimizer step.
    """
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=base_lr, momentum=0.9)
    sched = schedule["scheduler"](opt)
    plateau = isinstance(sched, lrs.ReduceLROnPlateau)
    if plateau and (metrics is None or len(metrics) < epochs):
        raise ParameterError(
            "metrics", metrics, f"one validation loss per epoch ({epochs}) for ReduceLROnPlateau"
        )
    out = []
    for epoch in range(epochs):
        for _ in range(steps_per_epoch):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            if schedule["scheduler_step"] == "batch" and not plateau:
                sched.step()
        if plateau:
            sched.step(metrics[epoch])
        elif schedule["scheduler_step"] == "epoch":
            sched.step()
    return out


def lr_range_test(
    model: nn.Module,
    loader: DataLoader,
    lr_min: float = 1e-4,
    lr_max: float = 10.0,
    steps: int = 100,
    momentum: float = 0.9,
    smoothing: float = 0.9,
    stop_factor: float = 4.0,
    device: Device | None = None,
    optimizer: str = "sgd",
    weight_decay: float = 0.0,
) -> pd.DataFrame:
    """Smith's LR range test: raise the learning rate exponentially each batch and record the loss.

    The model is trained on a copy (the given one is left unchanged) with SGD or AdamW; the rate of
    step ``i`` is ``lr_min * (lr_max / lr_min) ** (i / (steps - 1))`` (an ``ExponentialLR`` stepped
    per batch). The test stops early when the smoothed loss exceeds ``stop_factor`` times its
    minimum.

    Args:
        model: the freshly initialised model.
        loader: training batches (cycled when shorter than ``steps``).
        lr_min: first learning rate.
        lr_max: last learning rate.
        steps: number of batches.
        momentum: SGD momentum.
        smoothing: factor of the exponential moving average of the loss (bias-corrected).
        stop_factor: stop when the smoothed loss exceeds this multiple of its minimum.
        device: where to train the copy; None trains it where the model is. Batches are moved there.
        optimizer: a name ``train.make_optimizer`` knows: "sgd" (with ``momentum``), "adamw" or
            "adam".
        weight_decay: AdamW's decoupled weight decay.

    Returns:
        One row per step: step, lr, loss, smoothed_loss.
    """
    check_positive("lr_min", lr_min)
    check_float("lr_max", lr_max, lr_min, None, low_inclusive=False)
    check_int("steps", steps, minimum=2)
    net = copy.deepcopy(model).train()
    device = module_device(net) if device is None else torch.device(device)
    net.to(device)
    opt = make_optimizer(net, optimizer, lr_min, weight_decay, momentum)
    sched = lrs.ExponentialLR(opt, gamma=(lr_max / lr_min) ** (1.0 / (steps - 1)))
    rows, avg, best = [], 0.0, math.inf
    batches = iter(())
    for i in range(steps):
        try:
            x, y = next(batches)
        except StopIteration:
            batches = iter(loader)
            x, y = next(batches)
        lr = opt.param_groups[0]["lr"]
        loss = nn.functional.cross_entropy(net(x.to(device)), y.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        value = loss.item()
        avg = smoothing * avg + (1 - smoothing) * value
        smooth = avg / (1 - smoothing ** (i + 1))
        rows.append({"step": i, "lr": lr, "loss": value, "smoothed_loss": smooth})
        if not math.isfinite(smooth) or smooth > stop_factor * best:
            break
        best = min(best, smooth)
    return pd.DataFrame(rows)


def suggest_max_lr(test: pd.DataFrame, divisor: float = 10.0) -> dict[str, float]:
    """Pick one-cycle's peak learning rate from a range test: the LR of least smoothed loss /
    divisor.

    Args:
        test: a ``lr_range_test`` result.
        divisor: how far below the loss minimum to stay (the minimum is already at the edge of
            divergence; Smith and fastai step back by a factor of about 3 to 10).

    Returns:
        {"lr_min_loss": LR at the least smoothed loss, "steepest_lr": LR of the steepest descent
        of the smoothed loss per log-LR, "max_lr": lr_min_loss / divisor}.
    """
    check_positive("divisor", divisor)
    finite = test[np.isfinite(test["smoothed_loss"])]
    i_min = int(finite["smoothed_loss"].idxmin())
    lr_min_loss = float(finite.loc[i_min, "lr"])
    upto = finite.loc[:i_min]
    loss, log_lr = upto["smoothed_loss"].to_numpy(), np.log(upto["lr"].to_numpy())
    slope = np.gradient(loss, log_lr) if len(upto) > 1 else np.zeros(1)
    steepest = float(upto["lr"].iloc[int(np.argmin(slope))])
    return {"lr_min_loss": lr_min_loss, "steepest_lr": steepest, "max_lr": lr_min_loss / divisor}


def plot_lr_traces(traces: dict[str, Sequence[float]], steps_per_epoch: int) -> Figure:
    """The learning rate of every optimizer step, one line per schedule, against epochs.

    Args:
        traces: schedule name -> learning rate per step (``lr_sequence``).
        steps_per_epoch: batches per epoch (to put epochs on the x axis).

    Returns:
        The figure (linear and log scale side by side).
    """
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    for name, lrs_ in traces.items():
        x = np.arange(len(lrs_)) / steps_per_epoch
        for ax in axes:
            ax.plot(x, lrs_, label=name)
    axes[1].set_yscale("log")
    for ax, scale in zip(axes, ("linear", "log")):
        ax.set(
            xlabel="epoch", ylabel="learning rate", title=f"Learning rate per step ({scale} scale)"
        )
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_range_test(test: pd.DataFrame, suggestion: dict[str, float]) -> Figure:
    """Loss against learning rate (log scale) of a range test, with the chosen peak marked.

    Args:
        test: a ``lr_range_test`` result.
        suggestion: a ``suggest_max_lr`` result.

    Returns:
        The figure.
    """
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(test["lr"], test["loss"], alpha=0.3, label="batch loss")
    ax.plot(test["lr"], test["smoothed_loss"], label="smoothed loss")
    ax.axvline(
        suggestion["lr_min_loss"],
        color="grey",
        ls="--",
        label=f"least loss: {suggestion['lr_min_loss']:.3g}",
    )
    ax.axvline(
        suggestion["max_lr"],
        color="green",
        ls="-",
        label=f"one-cycle max LR: {suggestion['max_lr']:.3g}",
    )
    top = float(test["smoothed_loss"].iloc[0]) * 1.5
    ax.set(
        xscale="log",
        xlabel="learning rate",
        ylabel="training loss",
        ylim=(0, top),
        title="LR range test (Smith)",
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
