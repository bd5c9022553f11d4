"""Sparse kernels: a Linear layer computed with ``torch.sparse.mm`` on a CSR weight, and a copy of
a Sequential with every Linear replaced by one.
"""

from __future__ import annotations

import torch
from torch import nn

from nbhelpers.measure import sparse_csr


class CSRLinear(nn.Module):
    """A Linear layer whose weight is a torch sparse CSR matrix: ``y = (W x^T)^T + b`` with
    ``torch.sparse.mm``."""

    def __init__(self, linear: nn.Linear):
        """Copy a (permanent, pruned) Linear layer into CSR form.

        Args:
            linear: the dense layer.
        """
        super().__init__()
        self.weight = sparse_csr(linear.weight.detach())
        self.bias = None if linear.bias is None else linear.bias.detach().clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the sparse layer to a batch (n, in_features)."""
        y = torch.sparse.mm(self.weight, x.t()).t()
        return y if self.bias is None else y + self.bias


def to_csr_model(model: nn.Sequential) -> nn.Sequential:
    """A copy of a Sequential with every ``nn.Linear`` replaced by a ``CSRLinear`` (same outputs).

    Args:
        model: a permanent pruned model (``make_permanent``).

    Returns:
        The sparse-kernel model, in eval mode.
    """
    layers = [CSRLinear(m) if isinstance(m, nn.Linear) else m for m in model]
    return nn.Sequential(*layers).eval()
