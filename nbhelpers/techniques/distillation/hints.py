"""FitNets hints (Romero et al. 2015): a first stage that trains the student's hidden layers to
predict the teacher's, before ordinary distillation.
"""

from __future__ import annotations

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from nbhelpers.core.params import ParameterError
from nbhelpers.core.train import Device, fit, module_device
from nbhelpers.techniques.distillation.teacher import TeacherLogits


def penultimate(model: nn.Sequential) -> nn.Sequential:
    """The layers of a sequential classifier before its last ``Linear``: its last hidden
    representation.

    Args:
        model: an ``nn.Sequential`` ending in a ``Linear`` (the MLP, LeNet-5 and the CNN teacher).

    Returns:
        A Sequential sharing those layers (training it trains the model).
    """
    layers = list(model)
    last = max((i for i, m in enumerate(layers) if isinstance(m, nn.Linear)), default=-1)
    if last < 1:
        raise ParameterError(
            "model",
            type(model).__name__,
            "an nn.Sequential with hidden layers before a last Linear",
        )
    return nn.Sequential(*layers[:last])


def hint_stage(
    student: nn.Module,
    teacher: nn.Module,
    X: torch.Tensor,
    train_loader: DataLoader,
    epochs: int,
    lr: float = 1e-3,
    device: Device = "cpu",
) -> pd.DataFrame:
    """FitNets stage 1 (Romero et al. 2015): train the student's hidden layers to predict the
    teacher's.

    A linear regressor maps the student's last hidden layer to the teacher's; the student's layers
    below it and the regressor minimise ``MSE(regressor(h_s(x)), h_t(x))`` over ``epochs``. Stage 2
    is ordinary distillation of the whole student, starting from these layers.

    Args:
        student: the student (``nn.Sequential``), trained in place.
        teacher: the teacher (``nn.Sequential``, eval mode).
        X: every input of ``train_loader`` (the teacher's hidden outputs are computed once over
            them).
        train_loader: the training batches.
        epochs: passes of stage 1.
        lr: Adam learning rate.
        device: where to train.

    Returns:
        The history of stage 1 (its ``train_loss`` is the hint MSE).
    """
    trunk_t, trunk_s = penultimate(teacher), penultimate(student)
    hints = TeacherLogits(trunk_t, X, loader=train_loader)  # the teacher's hidden outputs, once
    with torch.no_grad():
        width_s = trunk_s(X[:1].to(module_device(student))).shape[1]
    regressor = nn.Linear(width_s, hints.logits.shape[1])
    model = nn.Sequential(trunk_s, regressor)

    def loss_fn(out: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(out, hints(x))

    return fit(
        model,
        train_loader,
        None,
        epochs=epochs,
        lr=lr,
        loss_fn=loss_fn,
        device=device,
        progress=False,
    )
