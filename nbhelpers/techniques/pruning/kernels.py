"""Sparse kernels: a weight in compressed sparse row form, a Linear layer computed with
``torch.sparse.mm`` on it, a copy of a Sequential with every Linear replaced by one, and the dense
and sparse kernels of one matrix timed side by side.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from nbhelpers.core.train import torch_threads
from nbhelpers.measure.timing import time_call

_CSR_BETA = "Sparse CSR tensor support is in beta"


def sparse_csr(t: torch.Tensor, compact: bool = False) -> torch.Tensor:
    """``t.to_sparse_csr()`` without torch's "beta" warning, optionally with compact storages.

    ``to_sparse_csr`` of a dense tensor returns ``col_indices()`` as a view into the int64 storage
    of 2 x nnz (the COO row and column indices it is built from), so ``torch.save`` writes
    16 bytes per column index. ``compact`` copies each array into a storage of its own size.

    Args:
        t: a 2-D tensor.
        compact: give the column indices (and the other arrays) storages of their own size.

    Returns:
        The same values in compressed sparse row format.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_CSR_BETA)
        csr = t.to_sparse_csr()
        if not compact:
            return csr
        return torch.sparse_csr_tensor(
            csr.crow_indices().clone(),
            csr.col_indices().clone(),
            csr.values().clone(),
            csr.shape,
            check_invariants=True,  # the arrays are torch's own: checking is cheap and silent
        )


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


def kernel_latency(
    weight: torch.Tensor,
    batch_sizes: Sequence[int] = (1, 256),
    threads: int = 1,
    repeats: int = 20,
    seed: int = 0,
) -> pd.DataFrame:
    """Median time of ``x @ W^T`` with the dense kernel and with the sparse CSR kernel, side by
    side.

    Both kernels run on the device of ``weight`` (CUDA timings wait for the device).

    Args:
        weight: the (out, in) weight matrix, with its zeros.
        batch_sizes: number of input rows ``x``.
        threads: ``torch.set_num_threads`` during the measurement (restored after).
        repeats: timing samples per kernel and batch size.
        seed: seed of the random inputs (drawn on the CPU: the same inputs on every device).

    Returns:
        One row per (kernel, batch_size): median_ms; with sparsity and the shape.
    """
    w = weight.detach().contiguous()
    csr = sparse_csr(w)
    gen = torch.Generator().manual_seed(seed)
    rows = []
    with torch_threads(threads):
        with torch.inference_mode():
            for bs in batch_sizes:
                x = torch.rand(bs, w.shape[1], generator=gen).to(w.device, w.dtype)
                xt = x.t().contiguous()
                for kernel, fn in [
                    ("dense", lambda: x @ w.t()),
                    ("sparse csr", lambda: torch.sparse.mm(csr, xt)),
                ]:
                    t = time_call(fn, warmup=3, repeats=repeats, device=w.device)
                    rows.append(
                        {"kernel": kernel, "batch_size": bs, "median_ms": float(np.median(t)) * 1e3}
                    )
    df = pd.DataFrame(rows)
    df["sparsity"] = float(1 - torch.count_nonzero(w) / w.numel())
    df["shape"] = "x".join(map(str, w.shape))
    return df
