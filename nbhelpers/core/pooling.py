"""A faster 2x2 max pooling for CPU inference, with PyTorch's results.

PyTorch's CPU kernel for ``max_pool2d`` on contiguous (NCHW) tensors visits one output at a time:
at one thread it is most of a LeNet-5 forward pass. For the common 2x2 window with stride 2 the
output is the maximum of four strided views of the input, which vectorises (7 to 9 times faster
for LeNet-5's feature maps at one thread on an AMD EPYC with AVX-512). ``fast_max_pool()`` routes
``nn.MaxPool2d`` modules through it while active, where no gradient is needed:

- every output compares equal to PyTorch's, and every non-zero output is the same bits (the
  maximum of the same four numbers; a NaN if any is one). Only where a window ties 0.0 with -0.0
  may the zero's sign differ (PyTorch keeps the first), and a NaN's payload; neither changes a
  logit, a prediction or an accuracy;
- anything else (gradients needed, other windows, padding, dilation, ``ceil_mode``, indices asked
  for, channels-last or non-float tensors, other devices, tracing, scripting or compiling) takes
  PyTorch's path unchanged, so training steps and their gradients are PyTorch's own.

Module hooks still run (only ``forward`` is replaced). The evaluation helpers (``train.predict``,
``measure.correct``) and ``distillation.TeacherLogits`` use it; latency measurements do not, so
timing tables show PyTorch's own kernels.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["fast_max_pool"]

_ORIGINAL_FORWARD = nn.MaxPool2d.forward


def _max_of_quarters(x: torch.Tensor) -> torch.Tensor:
    """The 2x2 stride-2 maximum (floor mode) of ``x`` (N, C, H, W) from four strided views."""
    x = x[..., : x.shape[-2] // 2 * 2, : x.shape[-1] // 2 * 2]  # drop an odd last row, column
    a, b = x[..., 0::2, 0::2], x[..., 0::2, 1::2]
    c, d = x[..., 1::2, 0::2], x[..., 1::2, 1::2]
    return torch.maximum(torch.maximum(a, b), torch.maximum(c, d))


def _is_2x2(value: int | tuple) -> bool:
    """Whether a kernel or stride argument means 2 in both directions."""
    return value == 2 if isinstance(value, int) else tuple(value) == (2, 2)


def _eligible(module: nn.MaxPool2d, x: object) -> bool:
    """Whether ``module(x)`` can take the strided-view path and give PyTorch's result."""
    stride = module.stride if module.stride is not None else module.kernel_size
    return (
        type(x) is torch.Tensor
        and not (x.requires_grad and torch.is_grad_enabled())
        and x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.float64)
        and x.dim() == 4
        and x.is_contiguous()
        and min(x.shape[-2:]) >= 2
        and _is_2x2(module.kernel_size)
        and _is_2x2(stride)
        and module.padding in (0, (0, 0))
        and module.dilation in (1, (1, 1))
        and not module.ceil_mode
        and not module.return_indices
        and not torch.jit.is_tracing()
        and not torch.jit.is_scripting()
        and not torch.compiler.is_compiling()
    )


def _fast_forward(self: nn.MaxPool2d, x: torch.Tensor) -> torch.Tensor:
    """``nn.MaxPool2d.forward`` by strided views where that gives PyTorch's result."""
    if _eligible(self, x):
        return _max_of_quarters(x)
    return _ORIGINAL_FORWARD(self, x)


@contextlib.contextmanager
def fast_max_pool() -> Iterator[None]:
    """Inside the block, every ``nn.MaxPool2d`` takes the strided-view path where it is exact.

    Nested blocks are fine; PyTorch's forward is back when the outermost one ends. Usable as a
    decorator.

    Yields:
        Nothing.
    """
    if nn.MaxPool2d.forward is _fast_forward:  # already inside a block
        yield
        return
    nn.MaxPool2d.forward = _fast_forward
    try:
        yield
    finally:
        nn.MaxPool2d.forward = _ORIGINAL_FORWARD
