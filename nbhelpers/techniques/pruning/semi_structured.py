"""N:M semi-structured sparsity: in every group of ``m`` consecutive input weights of a row, keep
the ``n`` of largest magnitude (2:4 is the pattern NVIDIA's sparse tensor cores run).

A weight matrix (out_features, in_features) is cut along its input dimension into groups of ``m``
neighbours; each group keeps exactly ``n`` weights and zeroes the rest, so every layer is exactly
``1 - n / m`` sparse (2:4: one half) whatever its weights. Ties in magnitude keep the weight with
the lower column index (a stable sort), so the mask is deterministic.

``semi_structured_prune`` applies the masks through ``torch.nn.utils.prune`` like
``magnitude.magnitude_prune``: fine-tuning keeps them in force and ``make_permanent`` writes the
zeros. ``to_semi_structured`` converts a pruned model for the kernels that run the pattern:
``torch.sparse.to_sparse_semi_structured`` (CUDA only, NVIDIA Ampere or newer sparse tensor cores,
float16/bfloat16/int8); on a CPU the zeros cost as much as the weights and only the quality cost of
the pattern can be measured.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from nbhelpers.core.params import ParameterError, check_int
from nbhelpers.techniques.pruning.magnitude import apply_masks

#: Compute capability from which NVIDIA GPUs have sparse tensor cores (Ampere, sm_80).
MIN_CAPABILITY = (8, 0)


def check_n_m(n: object, m: object) -> tuple[int, int]:
    """Check an N:M pattern: ``m`` >= 2 weights per group, ``n`` kept, 1 <= n < m.

    Args:
        n: weights kept per group.
        m: group size.

    Returns:
        (n, m).
    """
    m = check_int("m", m, minimum=2)
    n = check_int("n", n, minimum=1, maximum=m - 1)
    return n, m


def _groups(weight: torch.Tensor, m: int) -> torch.Tensor:
    """A float matrix's groups of ``m`` consecutive input weights, one per row (checked)."""
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2 or not weight.is_floating_point():
        shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise ParameterError("weight", shape, "a float matrix (out_features, in_features)")
    if not bool(torch.isfinite(weight).all()):
        raise ParameterError("weight", tuple(weight.shape), "a matrix of finite weights")
    if weight.shape[1] % m:
        raise ParameterError(
            "m", m, f"a group size dividing the weight's input width {weight.shape[1]}"
        )
    return weight.detach().reshape(-1, m)


def mask_2_4(weight: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """The N:M mask of a weight matrix: in each group of ``m`` consecutive input weights of a row,
    1 for the ``n`` largest |w| and 0 for the rest (ties: the lower column wins).

    Args:
        weight: a float matrix (out_features, in_features), ``in_features`` a multiple of ``m``.
        n: weights kept per group, 1 <= n < m.
        m: group size (4 for 2:4).

    Returns:
        A 0/1 tensor of the weight's shape, dtype and device, with exactly ``n`` ones per group.
    """
    n, m = check_n_m(n, m)
    groups = _groups(weight, m).abs()
    order = groups.argsort(dim=1, descending=True, stable=True)  # ties: the lower index first
    mask = torch.zeros_like(groups).scatter_(1, order[:, :n], 1.0)
    return mask.reshape(weight.shape)


def is_n_m(weight: torch.Tensor, n: int = 2, m: int = 4) -> bool:
    """Whether every group of ``m`` consecutive input weights of a matrix has at most ``n``
    nonzeros (what the sparse kernels require).

    Args:
        weight: a matrix whose input width is a multiple of ``m``.
        n: nonzeros allowed per group.
        m: group size.

    Returns:
        True when the pattern holds.
    """
    n, m = check_n_m(n, m)
    return bool(((_groups(weight, m) != 0).sum(1) <= n).all())


def _linears(model: nn.Module, only: Sequence[str] | None) -> dict[str, nn.Linear]:
    linears = {k: v for k, v in model.named_modules() if isinstance(v, nn.Linear)}
    if only is None:
        return linears
    unknown = sorted(set(only) - set(linears))
    if unknown:
        raise ParameterError("only", unknown, "names of Linear layers: " + ", ".join(linears))
    return {k: linears[k] for k in only}


def semi_structured_masks(
    model: nn.Module, n: int = 2, m: int = 4, only: Sequence[str] | None = None
) -> dict[str, torch.Tensor]:
    """The N:M masks of a model's ``Linear`` weights (their current, effective weights).

    Args:
        model: any model.
        n: weights kept per group.
        m: group size; it must divide every chosen layer's input width.
        only: names of the Linear layers to mask (None: every Linear).

    Returns:
        Layer name -> 0/1 mask (``mask_2_4``); every width is checked before any mask is made.
    """
    n, m = check_n_m(n, m)
    layers = _linears(model, only)
    bad = {k: v.in_features for k, v in layers.items() if v.in_features % m}
    if bad:
        raise ParameterError("m", m, f"a group size dividing every layer's input width {bad}")
    return {k: mask_2_4(v.weight, n, m) for k, v in layers.items()}


def semi_structured_prune(
    model: nn.Module, n: int = 2, m: int = 4, only: Sequence[str] | None = None
) -> nn.Module:
    """Prune a model's ``Linear`` weights in place to the N:M pattern (``torch.nn.utils.prune``
    masks: they stay in force while fine-tuning; ``make_permanent`` writes the zeros).

    Args:
        model: the model, changed in place.
        n: weights kept per group of ``m``.
        m: group size.
        only: names of the Linear layers to prune (None: every Linear; keep a head tied to the
            embedding out, its weight is the embedding's).

    Returns:
        The model.
    """
    return apply_masks(model, semi_structured_masks(model, n, m, only))


def sparse_kernels_available() -> str | None:
    """Why this machine cannot run the 2:4 sparse kernels, or None when it can.

    Returns:
        None with a CUDA GPU of compute capability 8.0 or higher; otherwise the reason.
    """
    if not torch.cuda.is_available():
        return "no CUDA device"
    cap = torch.cuda.get_device_capability()
    if cap < MIN_CAPABILITY:
        return f"compute capability {cap[0]}.{cap[1]} < 8.0 (no sparse tensor cores)"
    return None


def to_semi_structured(
    model: nn.Module, only: Sequence[str], dtype: torch.dtype = torch.float16
) -> tuple[nn.Module, list[str]]:
    """A copy of a 2:4-pruned model on the GPU in ``dtype`` whose chosen ``Linear`` weights are
    ``torch.sparse.to_sparse_semi_structured`` tensors (NVIDIA sparse tensor cores).

    A layer whose shape the kernels do not take (e.g. float16 needs rows a multiple of 32 and
    columns of 64) stays dense and is left out of the returned names.

    Args:
        model: the pruned model (masks made permanent; every chosen weight 2:4).
        only: names of the Linear layers to convert.
        dtype: float16 or bfloat16.

    Returns:
        (the converted copy on "cuda", the names of the layers converted).

    Raises:
        RuntimeError: no CUDA GPU with sparse tensor cores (``sparse_kernels_available``).
    """
    why = sparse_kernels_available()
    if why is not None:
        raise RuntimeError(f"2:4 sparse kernels need an NVIDIA GPU (Ampere or newer): {why}")
    if dtype not in (torch.float16, torch.bfloat16):
        raise ParameterError("dtype", dtype, "torch.float16 or torch.bfloat16")
    from torch.sparse import to_sparse_semi_structured

    out = copy.deepcopy(model).to("cuda", dtype).eval()
    done = []
    for name, layer in _linears(out, only).items():
        if not is_n_m(layer.weight, 2, 4):
            raise ParameterError("model", name, "a model whose chosen layers are 2:4 sparse")
        try:
            sparse = to_sparse_semi_structured(layer.weight.detach())
        except RuntimeError:  # a shape the kernels do not take: the layer stays dense
            continue
        layer.weight = nn.Parameter(sparse, requires_grad=False)
        done.append(name)
    return out, done
