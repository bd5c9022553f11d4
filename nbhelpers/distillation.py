"""Knowledge distillation: Hinton's soft-target loss, logit matching, and a teacher-logit cache.

Convention for ``alpha`` (both losses): the weight of the teacher term, so that
``loss = (1 - alpha) * CE(student, labels) + alpha * teacher_term``; ``alpha = 0`` is plain
cross-entropy (no teacher), ``alpha = 1`` learns from the teacher alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from .params import check_choice, check_float
from .train import Device, LossFn, fit, module_device, seed_everything

#: The distillation losses: Hinton et al. (2015) soft targets, Ba & Caruana (2014) logit matching.
LOSSES = ("hinton", "logits")


def check_temperature(name: str, value: Any) -> float:
    """Check a softmax temperature: a finite number greater than zero.

    Args:
        name: parameter name.
        value: the given value.

    Returns:
        The temperature as a float.
    """
    return check_float(name, value, 0.0, None, low_inclusive=False)


def check_alpha(name: str, value: Any) -> float:
    """Check a mixing weight ``alpha`` in [0, 1] (0: labels only, 1: teacher only).

    Args:
        name: parameter name.
        value: the given value.

    Returns:
        Alpha as a float.
    """
    return check_float(name, value, 0.0, 1.0)


def soft_targets(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Softmax of ``logits / temperature``: the softened class probabilities ("dark knowledge").

    Args:
        logits: (n, classes).
        temperature: T > 0; larger T spreads probability onto the wrong classes.

    Returns:
        (n, classes) probabilities, each row summing to 1.
    """
    return F.softmax(logits / check_temperature("temperature", temperature), dim=1)


def hinton_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    y: torch.Tensor,
    temperature: float = 4.0,
    alpha: float = 0.9,
) -> torch.Tensor:
    """Hinton et al. (2015): ``(1-alpha) CE(s, y) + alpha T^2 KL(softmax(t/T) || softmax(s/T))``.

    The KL divergence is summed over classes and averaged over the batch; ``T^2`` keeps the
    gradient of the soft term on the same scale for every temperature.

    Args:
        student_logits: (n, classes), with gradients.
        teacher_logits: (n, classes), constants.
        y: (n,) labels.
        temperature: T > 0.
        alpha: weight of the soft term in [0, 1].

    Returns:
        The scalar loss.
    """
    T = check_temperature("temperature", temperature)
    alpha = check_alpha("alpha", alpha)
    ce = F.cross_entropy(student_logits, y)
    if alpha == 0:
        return ce
    log_p_s = F.log_softmax(student_logits / T, dim=1)
    p_t = F.softmax(teacher_logits.detach() / T, dim=1)
    kl = F.kl_div(log_p_s, p_t, reduction="batchmean")
    return (1 - alpha) * ce + alpha * T * T * kl


def logit_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, y: torch.Tensor, alpha: float = 1.0
) -> torch.Tensor:
    """Ba & Caruana (2014) logit matching, mixed with labels: ``(1-alpha) CE + alpha MSE(s, t)``.

    The squared error is averaged over all batch entries and classes (``F.mse_loss``);
    ``alpha = 1`` is the original method (regression on the teacher's logits, no labels).

    Args:
        student_logits: (n, classes), with gradients.
        teacher_logits: (n, classes), constants.
        y: (n,) labels.
        alpha: weight of the logit term in [0, 1].

    Returns:
        The scalar loss.
    """
    alpha = check_alpha("alpha", alpha)
    ce = F.cross_entropy(student_logits, y)
    if alpha == 0:
        return ce
    return (1 - alpha) * ce + alpha * F.mse_loss(student_logits, teacher_logits.detach())


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    y: torch.Tensor,
    loss: str = "hinton",
    temperature: float = 4.0,
    alpha: float = 0.9,
) -> torch.Tensor:
    """The chosen distillation loss (``"hinton"`` or ``"logits"``; the latter ignores the temperature).

    Args:
        student_logits: (n, classes).
        teacher_logits: (n, classes).
        y: (n,) labels.
        loss: one of ``LOSSES``.
        temperature: T > 0 for ``"hinton"``.
        alpha: weight of the teacher term in [0, 1].

    Returns:
        The scalar loss.
    """
    check_choice("LOSS", loss, LOSSES)
    if loss == "hinton":
        return hinton_loss(student_logits, teacher_logits, y, temperature, alpha)
    return logit_loss(student_logits, teacher_logits, y, alpha)


class TeacherLogits:
    """The teacher's logits on a fixed set of inputs, computed once and looked up per batch.

    A batch is matched to the stored inputs by a random projection (a hash of each row), then
    checked for exact equality; rows not found are run through the teacher, so the result always
    equals ``teacher(x)`` in eval mode without gradients.

    The cache lives on the device of ``X``; the teacher runs on its own device, and each lookup
    returns the logits on the device of its batch.
    """

    def __init__(self, teacher: nn.Module, X: torch.Tensor, batch_size: int = 1000, seed: int = 0):
        """Run the teacher once over ``X`` (n, ...) and index the rows.

        Args:
            teacher: the trained teacher, on any device (put in eval mode).
            X: every input the student will train on; the cache is kept on its device.
            batch_size: rows per teacher call while precomputing.
            seed: seed of the projection (drawn on the CPU: the same on every device).
        """
        self.teacher = teacher.eval()
        self.X = X.reshape(len(X), -1).contiguous()
        self.logits = torch.cat([self._run(X[i : i + batch_size]) for i in range(0, len(X), batch_size)])
        gen = torch.Generator().manual_seed(seed)
        self.proj = torch.randn(self.X.shape[1], generator=gen, dtype=torch.float64).to(X.device)
        keys = self.X.double() @ self.proj
        self.keys, self.order = torch.sort(keys)
        self.hits = self.misses = 0

    @torch.no_grad()
    def _run(self, x: torch.Tensor) -> torch.Tensor:
        """The teacher's logits of ``x``, computed on its device, returned on the cache's device."""
        return self.teacher(x.to(module_device(self.teacher))).float().to(self.X.device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Teacher logits of a batch ``x`` (n, ...), from the cache where the rows match exactly."""
        device, x = x.device, x.to(self.X.device)
        flat = x.reshape(len(x), -1)
        keys = flat.double() @ self.proj
        pos = torch.searchsorted(self.keys, keys).clamp(max=len(self.keys) - 1)
        lower = (pos - 1).clamp(min=0)
        pos = torch.where((self.keys[lower] - keys).abs() < (self.keys[pos] - keys).abs(), lower, pos)
        idx = self.order[pos]
        ok = (self.X[idx] == flat).all(dim=1)
        out = self.logits[idx].clone()
        if not bool(ok.all()):
            out[~ok] = self._run(x[~ok])
        self.hits += int(ok.sum())
        self.misses += int((~ok).sum())
        return out.to(device)


def make_loss_fn(
    teacher_logits: TeacherLogits | nn.Module, loss: str = "hinton", temperature: float = 4.0, alpha: float = 0.9
) -> LossFn:
    """A ``loss_fn(logits, y, x)`` for ``train.fit`` that distills from a teacher.

    Args:
        teacher_logits: a ``TeacherLogits`` cache, or the teacher module itself (run under
            no_grad on its own device; its logits come back on the device of the batch).
        loss: one of ``LOSSES``.
        temperature: T > 0 (Hinton's loss).
        alpha: weight of the teacher term in [0, 1].

    Returns:
        The loss function.
    """
    check_choice("LOSS", loss, LOSSES)
    check_temperature("TEMPERATURE", temperature)
    check_alpha("ALPHA", alpha)
    if isinstance(teacher_logits, nn.Module):
        teacher = teacher_logits.eval()

        def lookup(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return teacher(x.to(module_device(teacher))).to(x.device)
    else:
        lookup = teacher_logits

    def loss_fn(logits: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return distillation_loss(logits, lookup(x), y, loss, temperature, alpha)

    return loss_fn


def train_student(
    build,
    seed: int,
    train_loader: DataLoader,
    val_loader: DataLoader | None,
    epochs: int,
    loss_fn: LossFn | None = None,
    lr: float = 1e-3,
    device: Device = "cpu",
) -> tuple[nn.Module, pd.DataFrame]:
    """Seed, build and train one student with ``train.fit`` (cross-entropy when ``loss_fn`` is None).

    Args:
        build: makes the untrained student.
        seed: seeds the initialisation and the shuffle order (through the loader's generator).
        train_loader: training batches (reseeded with ``seed``).
        val_loader: validation batches, or None.
        epochs: training epochs.
        loss_fn: ``f(logits, y, x)``; None is plain cross-entropy.
        lr: Adam learning rate.
        device: where to train.

    Returns:
        (trained student on the CPU in eval mode, its history).
    """
    seed_everything(seed)
    model = build()
    if getattr(train_loader, "generator", None) is not None:
        train_loader.generator.manual_seed(seed)
    hist = fit(model, train_loader, val_loader, epochs=epochs, lr=lr, loss_fn=loss_fn, device=device,
               progress=False)
    return model.cpu().eval(), hist


def shifted_copies(X: torch.Tensor, copies: int, max_shift: int = 2, seed: int = 0) -> torch.Tensor:
    """Images followed by ``copies`` randomly shifted copies (zero fill), a transfer set for distillation.

    Args:
        X: images (n, C, H, W).
        copies: shifted copies to append (0 returns ``X``).
        max_shift: largest shift in pixels along each axis.
        seed: seed of the shifts (drawn on the CPU: the same shifts on every device).

    Returns:
        ((copies + 1) * n, C, H, W) on the device of ``X``: the originals first, then each copy.
    """
    g = torch.Generator().manual_seed(seed)
    n, _, H, W = X.shape
    m = max_shift
    padded = F.pad(X, (m, m, m, m))
    out = [X]
    for _ in range(copies):
        dy = torch.randint(-m, m + 1, (n,), generator=g).to(X.device)
        dx = torch.randint(-m, m + 1, (n,), generator=g).to(X.device)
        copy = torch.empty_like(X)
        for sy in range(-m, m + 1):
            for sx in range(-m, m + 1):
                sel = (dy == sy) & (dx == sx)
                copy[sel] = padded[sel, :, m - sy : m - sy + H, m - sx : m - sx + W]
        out.append(copy)
    return torch.cat(out)


def gap_closed(scratch: float, distilled: float, teacher: float) -> float:
    """Share of the accuracy gap between a from-scratch student and the teacher that distillation closes.

    Args:
        scratch: accuracy of the student trained on labels only.
        distilled: accuracy of the distilled student.
        teacher: accuracy of the teacher.

    Returns:
        ``(distilled - scratch) / (teacher - scratch)``; NaN when the teacher is not better.
    """
    gap = teacher - scratch
    return (distilled - scratch) / gap if gap > 0 else float("nan")


def summarize(runs: pd.DataFrame, by: Sequence[str], value: str = "test_accuracy") -> pd.DataFrame:
    """Mean, standard deviation, min, max and count of ``value`` over seeds, per setting.

    Args:
        runs: one row per (setting, seed).
        by: the columns that define a setting.
        value: the measured column.

    Returns:
        One row per setting with mean, std, min, max, n.
    """
    g = runs.groupby(list(by), sort=True)[value]
    return g.agg(["mean", "std", "min", "max", "count"]).rename(columns={"count": "n"}).reset_index()


def teacher_table(logits: torch.Tensor, y: torch.Tensor, temperatures: Sequence[float]) -> pd.DataFrame:
    """The teacher's soft targets of a few samples at several temperatures, one row per (sample, T).

    Args:
        logits: (k, classes) teacher logits of the chosen samples.
        y: (k,) their labels.
        temperatures: the temperatures to show.

    Returns:
        Columns sample, label, T and one column per class (probabilities).
    """
    rows = []
    for i in range(len(y)):
        for T in temperatures:
            p = soft_targets(logits[i : i + 1], T)[0]
            rows.append({"sample": i, "label": int(y[i]), "T": T, **{str(c): float(v) for c, v in enumerate(p)}})
    return pd.DataFrame(rows)
