"""How big a model is: parameters and non-zeros, multiply-adds, bytes on disk, CSR storage."""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
import torch.ao.nn.quantized as nnq
from torch import nn

from nbhelpers.core.train import module_device

Predictor = Callable[[torch.Tensor], object]


def _weights_of(module: nn.Module) -> list[torch.Tensor]:
    """The effective weight tensors a module owns itself (pruning masks and int8 packing
    resolved)."""
    out = []
    if callable(getattr(module, "weight", None)) and hasattr(module, "_packed_params"):
        w = module.weight()
        out.append(w.int_repr() if w.is_quantized else w)
        b = module.bias()
        if b is not None:
            out.append(b)
        return out
    for name, p in module.named_parameters(recurse=False):
        if name.endswith("_orig"):  # torch.nn.utils.prune re-parametrisation: use the masked weight
            p = getattr(module, name[: -len("_orig")])
        out.append(p.detach())
    for name, b in module.named_buffers(recurse=False):
        if isinstance(b, torch.Tensor) and b.is_quantized:
            out.append(b.int_repr())
    return out


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Number of parameters and of non-zero parameters (after pruning masks, int8 included).

    Args:
        model: the model.

    Returns:
        {"params": total, "nonzero": non-zero count}.
    """
    total = nonzero = 0
    for m in model.modules():
        for t in _weights_of(m):
            total += t.numel()
            nonzero += int(torch.count_nonzero(t))
    return {"params": total, "nonzero": nonzero}


def serialized_bytes(model: nn.Module | Mapping, path: str | Path | None = None) -> int:
    """Bytes of the model's ``state_dict`` saved with ``torch.save`` (the deployable artifact).

    Tensors are saved from the CPU whatever their device (a CUDA tensor would record its device).

    Args:
        model: a module or a state dict.
        path: where to write the file; None measures an in-memory buffer of the same bytes.

    Returns:
        The number of bytes.
    """
    state = model.state_dict() if isinstance(model, nn.Module) else model
    # from the CPU, so that the bytes do not depend on where the model sits
    state = {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in state.items()}
    buf = io.BytesIO()
    torch.save(state, buf)  # through a buffer, so the file holds exactly these bytes
    if path is not None:
        Path(path).write_bytes(buf.getvalue())
        return file_bytes(path)
    return buf.getbuffer().nbytes


def file_bytes(path: str | Path) -> int:
    """Size of a file on disk, in bytes."""
    return Path(path).stat().st_size


_LINEAR = (nn.Linear, nnq.Linear)  # nnq.dynamic.Linear is a subclass of nnq.Linear


_CONV = (nn.Conv2d, nnq.Conv2d)


def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass per sample, over Linear and Conv2d layers.

    Linear: in x out; Conv2d: out_channels x (in_channels / groups) x kh x kw x output positions.
    Quantized (int8) Linear and Conv2d modules count like their float versions.

    Args:
        model: the model.
        example: one input batch (its first sample is used, on the model's device).

    Returns:
        MACs per sample.
    """
    total = 0

    def hook(m, _inp, out):
        nonlocal total
        if isinstance(m, _LINEAR):
            total += m.in_features * m.out_features
        else:
            kh, kw = m.kernel_size
            total += (
                m.out_channels
                * (m.in_channels // m.groups)
                * kh
                * kw
                * out.shape[-1]
                * out.shape[-2]
            )

    hooks = [
        m.register_forward_hook(hook) for m in model.modules() if isinstance(m, _LINEAR + _CONV)
    ]
    try:
        with torch.no_grad():
            model.eval()(example[:1].to(module_device(model)))
    finally:
        for h in hooks:
            h.remove()
    return total
