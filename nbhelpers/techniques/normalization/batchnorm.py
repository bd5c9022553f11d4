"""Batch normalization written from scratch, interchangeable with torch's layer.

In training, a batch of pre-activations :math:`x` is normalized per feature (per channel for images)
with its own mean and variance, then scaled and shifted by learned :math:`\\gamma, \\beta`:
:math:`y = \\gamma (x - \\mu_B) / \\sqrt{\\sigma_B^2 + \\epsilon} + \\beta`. Running averages of
:math:`\\mu_B` and the unbiased :math:`\\sigma_B^2` replace them in evaluation.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d)


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


def count_batchnorm(model: nn.Module) -> int:
    """Number of batch norm layers (torch's or from scratch) in a model."""
    return sum(isinstance(m, (BatchNorm, *BN_TYPES)) for m in model.modules())
