"""The distillation losses: Hinton et al.'s (2015) soft targets and Ba & Caruana's (2014) logit
matching, each mixed with the labels, and ``make_loss_fn``, which hands one to ``train.fit``.

Convention for ``alpha`` (both losses): the weight of the teacher term, so that
``loss = (1 - alpha) * CE(student, labels) + alpha * teacher_term``; ``alpha = 0`` is plain
cross-entropy (no teacher), ``alpha = 1`` learns from the teacher alone.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nbhelpers.core.params import check_choice, check_float
from nbhelpers.core.train import LossFn, module_device
from nbhelpers.techniques.distillation.teacher import TeacherLogits

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
    """The chosen distillation loss (``"hinton"`` or ``"logits"``; the latter ignores the
    temperature).

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


def make_loss_fn(
    teacher_logits: TeacherLogits | nn.Module,
    loss: str = "hinton",
    temperature: float = 4.0,
    alpha: float = 0.9,
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
