"""Fit and evaluate models: seeding, device choice, progress bar, history as a DataFrame, hooks."""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from nbhelpers.core.params import ParameterError, check_choice
from nbhelpers.core.pooling import fast_max_pool

OPTIMIZERS = ("adam", "sgd", "adamw")
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
Device = str | torch.device


def module_device(model: nn.Module) -> torch.device:
    """The device of a module: that of its first parameter, else its first buffer, else the CPU.

    Modules without tensors (activations, eager int8 layers with packed weights) run on the CPU.

    Args:
        model: the module.

    Returns:
        The device its inputs should be on.
    """
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run a block with torch on ``threads`` CPU threads, restoring the previous count after.

    Float sums depend on how a kernel splits its work between threads, so the same seeded run
    gives slightly different weights at another thread count.

    Args:
        threads: ``torch.set_num_threads`` inside the block (at least 1).

    Yields:
        Nothing; the count is restored even when the block raises.
    """
    if int(threads) < 1:
        raise ValueError(f"threads must be an integer >= 1, got {threads!r}")
    old = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) and set the flags a repeatable GPU run needs.

    Always: ``torch.cuda.manual_seed_all``, ``cudnn.deterministic = True`` and
    ``cudnn.benchmark = False`` (no autotuned, run-dependent convolution algorithms); these change
    nothing on the CPU. When CUDA is available, also ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (unless
    already set; it must precede the first cuBLAS call) and
    ``torch.use_deterministic_algorithms(True, warn_only=True)``: deterministic kernels where torch
    has them, a warning where it has none (e.g. the max-pool backward). CPU-only machines skip
    these two: the switch would also make ``torch.empty`` fill new memory, a cost without a gain
    there. All of these are process-wide settings that stay after the call.

    Args:
        seed: the seed.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    if torch.cuda.is_available():
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)


def make_optimizer(
    model: nn.Module,
    name: str = "adam",
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
) -> torch.optim.Optimizer:
    """Build an optimizer by name.

    Args:
        model: the model whose parameters to optimise.
        name: "adam", "adamw" or "sgd" (with momentum).
        lr: learning rate.
        weight_decay: L2 penalty.
        momentum: momentum for SGD.

    Returns:
        The optimizer. Adam and AdamW use PyTorch's fused kernel (one pass over each parameter)
        where every parameter is a float tensor on the CPU or a CUDA device: the same update
        rule as the default for-loop kernel, rounded differently in the last bits, and about a third
        faster per step for the MLPs of 07 and 09 on one CPU thread.
    """
    check_choice("optimizer", name, OPTIMIZERS)
    params = [p for p in model.parameters() if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
    return cls(params, lr=lr, weight_decay=weight_decay, fused=can_fuse(params) or None)


def can_fuse(params: Sequence[torch.Tensor]) -> bool:
    """Whether PyTorch's fused Adam/AdamW kernel takes these parameters.

    Args:
        params: the parameters to optimise.

    Returns:
        True when there is at least one and each is a floating-point tensor on the CPU or CUDA.
    """
    return len(params) > 0 and all(
        p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params
    )


#: Learning rate over a run: "constant" or "cosine" (annealed to 0 over the run's epochs).
SCHEDULES = ("constant", "cosine")


def anneal(schedule: str, epochs: int) -> Callable[[torch.optim.Optimizer], object] | None:
    """The ``scheduler`` argument of ``fit`` for a named learning-rate shape over ``epochs``.

    Args:
        schedule: "constant" (None: the rate never changes) or "cosine" (``CosineAnnealingLR``
            from the start rate to 0 over ``epochs``, stepped once per epoch).
        epochs: the run's epochs.

    Returns:
        None or a function of the optimizer that makes the scheduler.
    """
    check_choice("schedule", schedule, SCHEDULES)
    if schedule == "constant":
        return None
    return lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, int(epochs)))


def cross_entropy(
    logits: torch.Tensor, y: torch.Tensor, x: torch.Tensor | None = None
) -> torch.Tensor:
    """Default loss: cross-entropy of the logits against the labels (``x`` is ignored)."""
    return F.cross_entropy(logits, y)


@torch.no_grad()
@fast_max_pool()  # PyTorch's results, faster on the CPU (nbhelpers.core.pooling)
def predict(
    model: nn.Module, loader: DataLoader, device: Device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels of a whole loader, in eval mode.

    Args:
        model: the model.
        loader: yields (x, y) batches.
        device: where to run (the model is moved there); None runs where the model is.

    Returns:
        (logits, labels) on the CPU.
    """
    device = _place(model, device)
    model.eval()
    outs, ys = [], []
    for x, y in loader:
        outs.append(model(x.to(device)).float().cpu())
        ys.append(y.cpu())
    return torch.cat(outs), torch.cat(ys)


def _place(model: nn.Module, device: Device | None) -> torch.device:
    """Move ``model`` to ``device`` when one is given; return the device it runs on."""
    if device is None:
        return module_device(model)
    model.to(device)
    return torch.device(device)


def evaluate(
    model: nn.Module, loader: DataLoader, device: Device | None = None
) -> dict[str, float]:
    """Mean cross-entropy and accuracy of a model on a loader.

    Args:
        model: the model.
        loader: yields (x, y) batches.
        device: where to run (the model is moved there); None runs where the model is.

    Returns:
        {"loss": ..., "accuracy": ...} with accuracy a fraction in [0, 1].
    """
    logits, y = predict(model, loader, device)
    return {
        "loss": float(F.cross_entropy(logits, y)),
        "accuracy": float((logits.argmax(1) == y).float().mean()),
    }


def fit(
    model: nn.Module,
    train_loader: DataLoader,
    val_loader: DataLoader | None = None,
    epochs: int = 10,
    lr: float = 1e-3,
    optimizer: str | torch.optim.Optimizer = "adam",
    weight_decay: float = 0.0,
    scheduler: Callable[[torch.optim.Optimizer], object] | None = None,
    scheduler_step: str = "epoch",
    loss_fn: LossFn | None = None,
    extra_loss: Callable[[nn.Module], torch.Tensor] | None = None,
    after_step: Callable[[nn.Module], None] | None = None,
    device: Device | None = None,
    progress: bool = True,
    desc: str = "train",
    stop_on_nan: bool = True,
    validate: str = "every",
) -> pd.DataFrame:
    """Train a model and return its per-epoch history.

    Args:
        model: the model, trained in place.
        train_loader: yields (x, y) training batches.
        val_loader: optional validation loader, evaluated after every epoch.
        epochs: number of passes over the training data.
        lr: learning rate (ignored when ``optimizer`` is an optimizer instance).
        optimizer: "adam", "adamw", "sgd", or a ready optimizer.
        weight_decay: L2 penalty for a named optimizer.
        scheduler: ``f(optimizer) -> scheduler``; ReduceLROnPlateau steps on the validation loss.
        scheduler_step: "epoch" or "batch" (one-cycle and warm-up schedules step per batch).
        loss_fn: ``f(logits, y, x) -> loss``; cross-entropy by default (distillation swaps it).
        extra_loss: ``f(model) -> tensor`` added to every batch's loss (regularisers, penalties).
        after_step: ``f(model)`` called after every optimizer step (masks, constraints).
        device: where to train (the model is moved there); None trains where the model is.
        progress: show a tqdm bar over epochs.
        desc: label of the progress bar.
        stop_on_nan: stop when the training loss becomes NaN or infinite (divergence).
        validate: "every" scores ``val_loader`` after every epoch (learning curves); "last" only
            after the last one (or the one that diverged), when only the final score is read: a
            pass over the validation set can cost as much as a training epoch. The weights are
            the same either way unless iterating ``val_loader`` draws from torch's global
            generator (any DataLoader without a generator of its own draws a seed) while the model
            uses it (dropout): then each extra pass shifts the dropout masks.

    Returns:
        A DataFrame with one row per epoch: epoch, lr, train_loss, train_accuracy, val_loss,
        val_accuracy (NaN without a validation loader, and before the last epoch with
        ``validate="last"``) and epoch_seconds.
    """
    check_choice("scheduler_step", scheduler_step, ("epoch", "batch"))
    check_choice("validate", validate, ("every", "last"))
    device = _place(model, device)
    opt = (
        optimizer
        if isinstance(optimizer, torch.optim.Optimizer)
        else make_optimizer(model, optimizer, lr, weight_decay)
    )
    sched = scheduler(opt) if scheduler is not None else None
    plateau = isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau)
    if plateau and val_loader is not None and validate == "last":
        allowed = "'every' with ReduceLROnPlateau (it steps on every epoch's val loss)"
        raise ParameterError("validate", validate, allowed)
    loss_fn = loss_fn or cross_entropy
    rows = []
    bar = tqdm(range(1, epochs + 1), desc=desc, disable=not progress, leave=False, mininterval=1.0)
    for epoch in bar:
        t0 = time.perf_counter()
        lr_now = opt.param_groups[0]["lr"]
        model.train()
        total, correct, loss_sum = 0, 0, 0.0
        for x, y in train_loader:
            x, y = x.to(device), y.to(device)
            logits = model(x)
            loss = loss_fn(logits, y, x)
            if extra_loss is not None:
                loss = loss + extra_loss(model)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if after_step is not None:
                after_step(model)
            if sched is not None and scheduler_step == "batch" and not plateau:
                sched.step()
            loss_sum += loss.item() * len(y)
            correct += int((logits.argmax(1) == y).sum())
            total += len(y)
        row = {
            "epoch": epoch,
            "lr": lr_now,
            "train_loss": loss_sum / total,
            "train_accuracy": correct / total,
            "val_loss": math.nan,
            "val_accuracy": math.nan,
        }
        diverged = stop_on_nan and not math.isfinite(row["train_loss"])
        if val_loader is not None and (validate == "every" or epoch == epochs or diverged):
            ev = evaluate(model, val_loader, device)
            row["val_loss"], row["val_accuracy"] = ev["loss"], ev["accuracy"]
        if sched is not None:
            if plateau:
                sched.step(row["val_loss"] if val_loader is not None else row["train_loss"])
            elif scheduler_step == "epoch":
                sched.step()
        row["epoch_seconds"] = time.perf_counter() - t0
        rows.append(row)
        bar.set_postfix(loss=f"{row['train_loss']:.3f}", val_acc=f"{row['val_accuracy']:.3f}")
        if diverged:
            break
    return pd.DataFrame(rows)
