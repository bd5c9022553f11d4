"""Learning-rate schedules from ``torch.optim.lr_scheduler``, built by name, and Smith's LR range
test.

``make_schedule(name, ...)`` returns ``{"scheduler": f(optimizer) -> scheduler, "scheduler_step":
"epoch" | "batch"}``, the two keyword arguments ``nbhelpers.core.train.fit`` takes, so a run reads
``fit(model, ..., **make_schedule("onecycle", ...))``. ``lr_sequence`` steps a schedule on a dummy
optimizer to list the learning rate of every optimizer step without training (the schedules here,
ReduceLROnPlateau aside, depend only on the step count). ``lr_range_test`` raises the learning rate
exponentially batch after batch and records the loss (Smith 2017). ``per_schedule`` and
``summary`` turn a run of notebook 09 into the tables its results and discussion refer to.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
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
from nbhelpers.core.plots import learning_curves
from nbhelpers.core.train import Device, make_optimizer, module_device
from nbhelpers.measure.facts import fact_table

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


#: The shapes ``trace_shape`` tells apart.
SHAPES = ("constant", "decays only", "rises only", "rises, then decays", "decays, then rises again")


def trace_shape(trace: Sequence[float], rel_tol: float = 1e-9) -> str:
    """What a learning-rate trace does over training: only a decay, or also a rise.

    Args:
        trace: the learning rate of every step (``lr_sequence``).
        rel_tol: changes smaller than this share of the largest rate count as none.

    Returns:
        One of ``SHAPES``: "constant"; "decays only" (never rises: step, exponential, plateau);
        "rises only"; "rises, then decays" (every rise before every fall: warm-up, one-cycle);
        "decays, then rises again" (a rise after a fall: warm restarts).
    """
    lr = np.asarray(trace, dtype=float)
    step = np.diff(lr)
    tol = rel_tol * float(np.abs(lr).max()) if len(lr) else 0.0
    rises, falls = np.flatnonzero(step > tol), np.flatnonzero(step < -tol)
    if not len(rises):
        return SHAPES[1] if len(falls) else SHAPES[0]
    if not len(falls):
        return SHAPES[2]
    return SHAPES[3] if rises.max() < falls.min() else SHAPES[4]


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


def plot_accuracy_spread(results: pd.DataFrame, column: str = "test_accuracy") -> Figure:
    """Final accuracy of every run (one dot per seed) with the mean and its spread per schedule.

    Args:
        results: one row per run with columns ``schedule`` and ``column``.
        column: the accuracy column.

    Returns:
        The figure.
    """
    fig, ax = plt.subplots(figsize=(8, 3.8))
    df = results.assign(percent=100 * results[column])
    sns.stripplot(data=df, x="schedule", y="percent", ax=ax, alpha=0.6, color="grey")
    sns.pointplot(
        data=df,
        x="schedule",
        y="percent",
        ax=ax,
        errorbar="sd",
        linestyle="none",
        color="C3",
        marker="D",
        capsize=0.2,
    )
    ax.set(
        ylabel=f"{column.replace('_', ' ')} (%)",
        xlabel="",
        title="Final accuracy per seed, mean ± sd",
    )
    fig.tight_layout()
    return fig


def final_epoch(history: pd.DataFrame) -> dict[str, float]:
    """What one training run ends with: validation accuracy, learning rate, training loss and time.

    Args:
        history: a ``train.fit`` history (one row per epoch).

    Returns:
        {"val_accuracy", "final_lr", "train_loss", "train_accuracy"} of the last epoch and
        "train_seconds" summed over the epochs.
    """
    last = history.iloc[-1]
    return {
        "val_accuracy": float(last["val_accuracy"]),
        "final_lr": float(last["lr"]),
        "train_loss": float(last["train_loss"]),
        "train_accuracy": float(last["train_accuracy"]),
        "train_seconds": float(history["epoch_seconds"].sum()),
    }


def per_schedule(results: pd.DataFrame) -> pd.DataFrame:
    """Runs aggregated per schedule (in order of appearance), with the gain over "constant".

    Args:
        results: one row per run: schedule, seed, test_accuracy and the ``final_epoch`` values.

    Returns:
        One row per schedule: test mean, sd, min, max; validation mean; training loss, accuracy
        and seconds (means); ``seeds`` (how many); ``gain_vs_constant_points``, 100 x (test mean
        - constant's).
    """
    table = results.groupby("schedule", sort=False).agg(
        test_mean=("test_accuracy", "mean"),
        test_sd=("test_accuracy", "std"),
        test_min=("test_accuracy", "min"),
        test_max=("test_accuracy", "max"),
        val_mean=("val_accuracy", "mean"),
        train_loss=("train_loss", "mean"),
        train_accuracy=("train_accuracy", "mean"),
        train_seconds=("train_seconds", "mean"),
        seeds=("seed", "nunique"),
    )
    constant = table.loc["constant", "test_mean"]
    table["gain_vs_constant_points"] = 100 * (table["test_mean"] - constant)
    return table


def versus_constant(
    results: pd.DataFrame, correct: Mapping[tuple[str, int], object], seeds: Sequence[int]
) -> pd.DataFrame:
    """``per_schedule`` plus each schedule's gain over "constant" with its paired interval.

    Args:
        results: one row per run (schedule, seed, test_accuracy, the ``final_epoch`` values);
            empty for no runs.
        correct: (schedule, seed) -> right or wrong on each test image.
        seeds: the seeds, in the same order for every schedule.

    Returns:
        One row per schedule: ``per_schedule``'s columns and ``gain_low``, ``gain_high`` (points,
        ``stats.seeds_paired_difference`` against "constant") and ``verdict``; empty when no run.
    """
    from nbhelpers.measure.stats import seeds_paired_difference

    if results.empty:
        return pd.DataFrame()
    table = per_schedule(results)
    base = np.stack([np.asarray(correct["constant", s], bool) for s in seeds])
    for name in table.index:
        runs = np.stack([np.asarray(correct[name, s], bool) for s in seeds])
        d = seeds_paired_difference(base, runs) if name != "constant" else {}
        table.loc[name, "gain_low"] = d.get("low", np.nan)
        table.loc[name, "gain_high"] = d.get("high", np.nan)
        table.loc[name, "verdict"] = d.get("verdict", "reference")
    return table


def scaling_table(
    results: pd.DataFrame,
    correct: Mapping[tuple[tuple[int, str], int], object],
    reference: Mapping[int, object],
    seeds: Sequence[int],
) -> pd.DataFrame:
    """The linear scaling rule's runs against the small-batch reference, over seeds.

    Args:
        results: one row per run: k, batch, rule, lr, seed, test_accuracy (empty: no runs).
        correct: ((k, rule), seed) -> right or wrong on each test image.
        reference: seed -> right or wrong on each test image of the reference run (the same
            schedule at the small batch); empty: no comparison.
        seeds: the seeds, in the same order everywhere.

    Returns:
        One row per (k, rule): batch, lr, seeds, test mean and sd, and against the reference the
        mean difference in points with its paired 95% interval and verdict (NaN without one).
    """
    from nbhelpers.measure.stats import seeds_paired_difference

    if results.empty:
        return pd.DataFrame()
    table = results.groupby(["k", "rule"], sort=False).agg(
        batch=("batch", "first"),
        lr=("lr", "first"),
        seeds=("seed", "nunique"),
        test_mean=("test_accuracy", "mean"),
        test_sd=("test_accuracy", "std"),
    )
    ref = np.stack([np.asarray(reference[s], bool) for s in seeds]) if reference else None
    for key in table.index:
        d = {}
        if ref is not None:
            runs = np.stack([np.asarray(correct[key, s], bool) for s in seeds])
            d = seeds_paired_difference(ref, runs)
        table.loc[key, "vs_reference_points"] = d.get("difference", np.nan)
        table.loc[key, "low"] = d.get("low", np.nan)
        table.loc[key, "high"] = d.get("high", np.nan)
        table.loc[key, "verdict"] = d.get("verdict", "no reference")
    return table


def plot_learning_curves(
    curves: Mapping[str, pd.DataFrame], accuracy_floor: float = 0.85
) -> Figure:
    """Training and validation curves per schedule: loss on a log scale, accuracy zoomed at the top.

    Args:
        curves: schedule -> the histories of all its seeds, concatenated.
        accuracy_floor: bottom of the accuracy axis, where the schedules differ.

    Returns:
        The figure (legend outside, right).
    """
    fig = learning_curves(curves)
    fig.axes[0].set_yscale("log")
    fig.axes[1].set_ylim(accuracy_floor, 1.001)
    fig.axes[0].get_legend().remove()
    fig.axes[1].legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=8)
    fig.tight_layout()
    return fig


def _epochs_before_cut(trace: Sequence[float], base_lr: float, steps_per_epoch: int) -> int:
    """Whole epochs a trace spends at ``base_lr`` or above before its first decrease below it."""
    below = np.flatnonzero(np.asarray(trace) < base_lr * (1 - 1e-9))
    return int(below[0] // steps_per_epoch) if len(below) else len(trace) // steps_per_epoch


def summary(
    table: pd.DataFrame,
    best: str,
    half: pd.DataFrame,
    sweep: pd.DataFrame,
    suggestion: Mapping[str, float],
    traces: Mapping[str, Sequence[float]],
    steps_per_epoch: int,
    base_lr: float,
    test_size: int,
    target_points: float = 1.0,
    adamw: pd.DataFrame | None = None,
    scaling: pd.DataFrame | None = None,
    sgd: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """The facts of one run of notebook 09, for its discussion to refer to by name.

    Args:
        table: ``per_schedule`` of the full-budget runs.
        best: the schedule chosen on validation accuracy.
        half: half-budget runs: schedule, seed, epochs, test_accuracy.
        sweep: constant-rate runs aggregated per learning rate (index lr, column ``mean``).
        suggestion: ``suggest_max_lr`` of the range test.
        traces: schedule -> learning rate of every step (``lr_sequence``).
        steps_per_epoch: batches per epoch.
        base_lr: the constant rate (``BASE_LR``).
        test_size: test images (one error is 100 / test_size points).
        target_points: the equal-budget target, in points.
        adamw: ``versus_constant`` of the AdamW runs (None or empty: no rows).
        scaling: ``scaling_table`` of the linear-scaling runs (None or empty: no rows).
        sgd: ``versus_constant`` of the SGD runs of ``table`` (None or empty: no rows).

    Returns:
        One row per fact: value and context. Besides the SGD comparison: how many rules only
        decay and how many raise the rate at some point (``trace_shape``), each SGD and AdamW
        schedule's gain over the same optimizer at a constant rate, and each larger batch against
        the small-batch reference, with paired intervals and verdicts.
    """
    gain = float(table.loc[best, "gain_vs_constant_points"])
    constant = float(table.loc["constant", "test_mean"])
    half_best = float(half.loc[half["schedule"] == best, "test_accuracy"].astype(float).mean())
    margin = 100 * (half_best - constant)
    sds = 100 * table.loc[[best, "constant"], "test_sd"].astype(float)
    peak, means = suggestion["max_lr"], sweep["mean"]
    at_peak = means[np.isclose(means.index.to_numpy(dtype=float), peak)]
    rows = [
        ("best schedule on validation", best, "highest mean validation accuracy; test not used"),
        (
            "gain over constant at equal budget",
            gain,
            f"points of mean test accuracy; target at least {target_points:+g}",
        ),
        ("equal-budget target met", bool(gain >= target_points), "either target suffices"),
        ("best at half budget minus constant at full", margin, "points; target at least 0"),
        ("half-budget target met", bool(margin >= 0), "either target suffices"),
        ("seed sd of the best schedule", float(sds.iloc[0]), "points of test accuracy"),
        ("seed sd of constant", float(sds.iloc[1]), "points of test accuracy"),
        ("gain beyond the seed spread", bool(gain > sds.max()), "gain larger than both seed sds"),
        ("one test error", 100 / test_size, f"points ({test_size} test images)"),
        ("range test: LR of least loss", suggestion["lr_min_loss"], "learning rate"),
        ("one-cycle peak / BASE_LR", peak / base_lr, "times"),
        (
            "constant at the peak minus constant at BASE_LR",
            100 * (float(at_peak.iloc[0]) - constant) if len(at_peak) else math.nan,
            "points of mean test accuracy (NaN: not trained)",
        ),
        ("best constant LR tried", float(means.idxmax()), f"of {len(means)} constant rates"),
        (
            "best minus the best constant",
            100 * (float(table.loc[best, "test_mean"]) - means.max()),
            "points of mean test accuracy",
        ),
        (
            "lowest final training accuracy",
            100 * float(table["train_accuracy"].min()),
            "% over schedules, mean over seeds",
        ),
        ("final training loss, lowest", float(table["train_loss"].min()), "mean over seeds"),
        ("final training loss, highest", float(table["train_loss"].max()), "mean over seeds"),
    ]
    rows += [
        (f"mean LR of {n} / BASE_LR", float(np.mean(traces[n])) / base_lr, "over all steps")
        for n in ("onecycle", "exponential")
        if n in traces
    ]
    if "plateau" in traces:
        rows.append(
            (
                "plateau: epochs before the first cut",
                _epochs_before_cut(traces["plateau"], base_lr, steps_per_epoch),
                "at BASE_LR, first seed (all epochs: never cut)",
            )
        )
    shapes = {n: trace_shape(t) for n, t in traces.items() if n != "constant"}
    decay = [n for n, sh in shapes.items() if sh == "decays only"]
    rise = [n for n, sh in shapes.items() if sh not in ("constant", "decays only")]
    rows += [
        ("rules that only decay", len(decay), ", ".join(decay) or "none"),
        ("rules that raise the rate at some point", len(rise), ", ".join(rise) or "none"),
    ]
    rows += _versus_rows(sgd, "SGD") + _versus_rows(adamw, "AdamW")
    return fact_table(rows + _scaling_rows(scaling), digits=4)


def _versus_rows(table: pd.DataFrame | None, optimizer: str) -> list:
    """Fact rows of a ``versus_constant`` table: each schedule's gain with interval and verdict."""
    if table is None or table.empty:
        return []
    return [
        (
            f"{optimizer} {name} minus {optimizer} constant",
            float(r["gain_vs_constant_points"]),
            f"points [{r['gain_low']:.3g}, {r['gain_high']:.3g}]: {r['verdict']}",
        )
        for name, r in table.drop(index="constant", errors="ignore").iterrows()
    ]


def _scaling_rows(scaling: pd.DataFrame | None) -> list:
    """Fact rows of a ``scaling_table``: each larger batch against the reference, with interval."""
    rows = []
    if scaling is not None and not scaling.empty:
        for (k, rule), r in scaling.iterrows():
            rows.append(
                (
                    f"batch x{k}, {rule}: minus the small batch",
                    float(r["vs_reference_points"]),
                    f"points [{r['low']:.3g}, {r['high']:.3g}]: {r['verdict']}",
                )
            )
    return rows
