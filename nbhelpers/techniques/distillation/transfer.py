"""Transfer sets, the inputs a student learns the teacher's outputs on: the training images with
randomly shifted copies, or images of random pixels that look nothing like the task.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def shifted_copies(X: torch.Tensor, copies: int, max_shift: int = 2, seed: int = 0) -> torch.Tensor:
    """Images followed by ``copies`` randomly shifted copies (zero fill), a transfer set for
    distillation.

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


def random_images(n: int, shape: Sequence[int], seed: int = 0) -> torch.Tensor:
    """Images of independent uniform pixels in [0, 1]: inputs that look nothing like the task.

    Args:
        n: how many.
        shape: (C, H, W) of one image.
        seed: seed of the pixels (drawn on the CPU).

    Returns:
        (n, C, H, W) float32.
    """
    return torch.rand((n, *shape), generator=torch.Generator().manual_seed(seed))
