"""The artifact of a compressed model: every Linear/Conv2d layer as a bitmap of its non-zero
weights, the non-zero int8 values, one scale and the float bias, and the models it reads back into.

Linear layers are those of a ``torch.ao`` dynamic-int8 model (``int8_model``); convolutions are
quantized weight-only (``int8_conv_weights``: rounded to int8 with one scale per layer, still
computing in float). ``pack_int8_sparse`` makes the arrays, ``save_artifact`` writes them
(LZMA-coded on request), ``load_artifact`` reads them and ``unpack_int8`` / ``unpack_int8_mlp`` give
back the identical int8 model. Eager int8 runs on the CPU only: the arrays are read on the CPU and
the unpacked models are CPU models.
"""

from __future__ import annotations

import copy
import io
import lzma
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nbhelpers.core.models import MLP
from nbhelpers.core.params import ParameterError
from nbhelpers.techniques import pruning

#: The arrays stored per layer, as ``<layer name>.<field>``.
FIELDS = ("kind", "shape", "mask", "values", "scale", "bias")


def int8_linears(model: nn.Module) -> list[nn.Module]:
    """The dynamic-int8 Linear layers of a model, in order (ValueError when there are none)."""
    layers = [
        m
        for m in model.modules()
        if hasattr(m, "_packed_params") and callable(getattr(m, "weight", None))
    ]
    if not layers:
        raise ValueError("expected a dynamic-int8 model (torch.ao quantize_dynamic of an MLP)")
    return layers


def _on_grid(layer: nn.Module, bits: int) -> tuple[torch.Tensor, float]:
    """Put a layer's weight (in place, without gradients) on the symmetric ``bits``-bit grid.

    ``s = max|w| / (2^(bits-1) - 1)`` in float32 (1 for an all-zero weight), ``q = round(w / s)``
    clamped to the grid, and the weight becomes ``q * s`` exactly, so ``round(weight / s)`` gives
    ``q`` back. Zeros stay zero.

    Returns:
        (q as a float tensor, s as a Python float holding the float32 value).
    """
    qmax = 2 ** (bits - 1) - 1
    amax = float(layer.weight.abs().max())
    scale = torch.tensor(amax / qmax if amax > 0 else 1.0, dtype=torch.float32)
    q = torch.clamp(torch.round(layer.weight / scale), -qmax, qmax)
    layer.weight.copy_(q * scale)
    return q, float(scale)


def int8_conv_weights(model: nn.Module) -> nn.Module:
    """A copy whose ``Conv2d`` weights are rounded to int8 with one symmetric scale per layer.

    Weight-only quantization: ``q = round(w / s)`` with ``s = max|w| / 127`` (float32), the weight
    becomes ``q * s`` and the convolution still computes in float. Zeros stay zero. Each layer
    keeps its scale as the attribute ``int8_scale`` for ``pack_int8_sparse``.

    Args:
        model: the float model (not changed).

    Returns:
        The copy, on the CPU in eval mode (other layers unchanged).
    """
    out = copy.deepcopy(model).cpu().eval()
    with torch.no_grad():
        for m in out.modules():
            if isinstance(m, nn.Conv2d):
                q, scale = _on_grid(m, 8)
                m.int8_scale = scale
    return out


def int8_model(model: nn.Module, engine: str = "x86") -> nn.Module:
    """Stage 4 of the pipeline: dynamic int8 Linear layers, weight-only int8 convolutions.

    For a model without convolutions (the MLP) this is ``quantization.dynamic_int8``.

    Args:
        model: the float model (copied).
        engine: quantized engine.

    Returns:
        The quantized copy on the CPU.
    """
    from nbhelpers.techniques import quantization

    return quantization.dynamic_int8(int8_conv_weights(model), engine)


def weights_at_bits(model: nn.Module, bits: int) -> tuple[nn.Module, dict[str, np.ndarray]]:
    """Every Linear/Conv2d weight on a symmetric ``bits``-bit grid, and the artifact that stores it.

    One scale per layer, ``s = max|w| / (2^(bits-1) - 1)``; zeros stay zero, so a pruned layer
    keeps its sparsity. The artifact has ``pack_int8_sparse``'s layout (bitmap, non-zero integers
    in an int8 container, scale, float bias per layer); fewer bits leave fewer distinct values,
    which the entropy coder then squeezes.

    Args:
        model: the float model (left unchanged).
        bits: 2 to 8.

    Returns:
        (a float copy whose weights are the dequantized integers, the artifact arrays).
    """
    if not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ParameterError("bits", bits, "an integer from 2 to 8")
    out, arrays = copy.deepcopy(model).cpu().eval(), {}
    layers = pruning.prunable(out)
    with torch.no_grad():
        for name, m in layers:
            q, scale = _on_grid(m, bits)
            _pack(arrays, name, q.to(torch.int8).numpy(), scale, m.bias, _kind(m))
    return out, arrays


def _kind(m: nn.Module) -> str:
    return "conv" if isinstance(m, nn.Conv2d) else "linear"


def _no_batchnorm(model: nn.Module) -> None:
    """The artifact stores Linear and Conv2d layers only: batch norms must be folded into them."""
    norms = [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._NormBase)]
    if norms:
        raise ValueError(
            f"batch norm layers {norms[:4]} are not stored in the artifact: fold them first "
            "(normalization.fold_batchnorm), in the model that is packed and in the one unpacked"
        )


def layer_names(arrays: Mapping[str, np.ndarray]) -> list[str]:
    """The layers an artifact holds, by their names in the model (``named_modules``), in order."""
    return list(dict.fromkeys(k.rsplit(".", 1)[0] for k in arrays))


def _pack(
    out: dict[str, np.ndarray], key: str, q: np.ndarray, scale: float, bias: Any, kind: str
) -> None:
    nz = q != 0
    out[f"{key}.kind"] = np.asarray(kind)
    out[f"{key}.shape"] = np.asarray(q.shape, dtype=np.int32)
    out[f"{key}.mask"] = np.packbits(nz.ravel())
    out[f"{key}.values"] = q[nz].astype(np.int8)
    out[f"{key}.scale"] = np.asarray([scale], dtype=np.float64)
    out[f"{key}.bias"] = (
        np.zeros(0, np.float32) if bias is None else bias.detach().cpu().numpy().astype(np.float32)
    )


def _unpack(arrays: Mapping[str, np.ndarray], key: str, dtype: Any = np.int8) -> np.ndarray:
    shape = tuple(int(s) for s in arrays[f"{key}.shape"])
    mask = np.unpackbits(arrays[f"{key}.mask"], count=int(np.prod(shape))).astype(bool)
    q = np.zeros(int(np.prod(shape)), dtype=dtype)
    q[mask] = arrays[f"{key}.values"]
    return q.reshape(shape)


def pack_int8_sparse(qmodel: nn.Module) -> dict[str, np.ndarray]:
    """The arrays of the artifact: per layer a bitmap of non-zeros, the non-zero int8 values,
    scale, bias.

    Args:
        qmodel: a dynamic-int8 model (per-tensor symmetric int8 weights, as ``quantize_dynamic``
            makes), its convolutions rounded by ``int8_conv_weights`` (``int8_model`` does both).

    Returns:
        Array name -> array, keyed by each layer's name in the model (as in its ``state_dict``),
        in the model's order: ``<name>.kind`` ("linear" or "conv"), ``.shape``, ``.mask``,
        ``.values``, ``.scale``, ``.bias`` (e.g. ``1.values`` for the MLP's first Linear,
        ``layer1.conv1.values`` in a model with named blocks).
    """
    _no_batchnorm(qmodel)
    linears = {id(m) for m in int8_linears(qmodel)}
    out: dict[str, np.ndarray] = {}
    for name, m in qmodel.named_modules():
        if id(m) in linears:
            w = m.weight()
            if w.qscheme() != torch.per_tensor_affine or w.q_zero_point() != 0:
                raise ValueError("expected per-tensor symmetric int8 weights (zero point 0)")
            _pack(out, name, w.int_repr().cpu().numpy(), w.q_scale(), m.bias(), "linear")
        elif isinstance(m, nn.Conv2d):
            scale = getattr(m, "int8_scale", None)
            if scale is None:
                raise ValueError("a float convolution: quantize the model with int8_model first")
            q = torch.round(m.weight.detach() / torch.tensor(scale, dtype=torch.float32))
            _pack(out, name, q.to(torch.int8).cpu().numpy(), scale, m.bias, "conv")
    return out


def save_artifact(
    arrays: dict[str, np.ndarray], path: str | Path, entropy_coding: bool = False
) -> int:
    """Write the artifact as an ``.npz``, LZMA-compressed (``.xz`` content) when ``entropy_coding``.

    Args:
        arrays: from ``pack_int8_sparse``.
        path: the file.
        entropy_coding: compress with LZMA (preset 9, extreme).

    Returns:
        Bytes on disk.
    """
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    raw = buf.getvalue()
    Path(path).write_bytes(
        lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME) if entropy_coding else raw
    )
    return Path(path).stat().st_size


def load_artifact(path: str | Path) -> dict[str, np.ndarray]:
    """Read an artifact written by ``save_artifact`` (plain or LZMA-compressed).

    Args:
        path: the file.

    Returns:
        Array name -> array.
    """
    raw = Path(path).read_bytes()
    if raw[:6] == b"\xfd7zXZ\x00":
        raw = lzma.decompress(raw)
    with np.load(io.BytesIO(raw)) as f:
        return {k: f[k] for k in f.files}


def unpack_float_mlp(arrays: dict[str, np.ndarray]) -> MLP:
    """A float MLP whose weights are the artifact's dequantized int8 weights (``q * scale``).

    Args:
        arrays: from ``load_artifact``.

    Returns:
        The MLP on the CPU in eval mode (float weights equal to the int8 ones times their scale).
    """
    names = layer_names(arrays)
    if any(str(arrays[f"{n}.kind"]) == "conv" for n in names):
        raise ValueError("the artifact holds convolutions: read it with unpack_int8(arrays, model)")
    shapes = [tuple(int(s) for s in arrays[f"{n}.shape"]) for n in names]
    model = MLP(shapes[0][1], hidden=[s[0] for s in shapes[:-1]], n_classes=shapes[-1][0]).eval()
    linears = [m for m in model if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for name, lin in zip(names, linears):
            q = _unpack(arrays, name, np.float64) * float(arrays[f"{name}.scale"][0])
            lin.weight.copy_(torch.from_numpy(q.astype(np.float32)))
            lin.bias.copy_(torch.from_numpy(arrays[f"{name}.bias"]))
    return model


def unpack_int8_mlp(arrays: dict[str, np.ndarray], engine: str = "x86") -> nn.Module:
    """The dynamic-int8 MLP of an artifact, with exactly the stored int8 weights and scales.

    Args:
        arrays: from ``load_artifact``.
        engine: quantized engine of the model.

    Returns:
        The int8 model on the CPU (``quantize_dynamic`` of the float MLP, weights replaced by the
        stored ones).
    """
    from nbhelpers.techniques import quantization

    qmodel = quantization.dynamic_int8(unpack_float_mlp(arrays), engine)
    with quantization.quiet_ao():
        _set_int8_weights(qmodel, arrays)
    return qmodel


def _set_int8_weights(qmodel: nn.Module, arrays: dict[str, np.ndarray]) -> None:
    """The artifact's Linear layers, in order, into the int8 Linear layers of ``qmodel``."""
    names = [n for n in layer_names(arrays) if str(arrays[f"{n}.kind"]) == "linear"]
    for name, m in zip(names, int8_linears(qmodel), strict=True):
        qw = torch._make_per_tensor_quantized_tensor(
            torch.from_numpy(_unpack(arrays, name)), float(arrays[f"{name}.scale"][0]), 0
        )
        m.set_weight_bias(qw, torch.from_numpy(arrays[f"{name}.bias"]))


def unpack_int8(arrays: dict[str, np.ndarray], model: nn.Module, engine: str = "x86") -> nn.Module:
    """The int8 model of an artifact on a given architecture, with exactly the stored weights.

    Args:
        arrays: from ``load_artifact``.
        model: a model of the same architecture (an untrained one will do: every weight and
            bias it has in its Linear and Conv2d layers is replaced; it is not changed).
        engine: quantized engine of the model.

    Returns:
        ``int8_model`` of the architecture with the stored int8 weights, scales and biases.

    Raises:
        ValueError: the model's Linear/Conv2d layers are not the artifact's (names listed), or a
            layer's kind or shape differs (named).
    """
    _no_batchnorm(model)
    names = layer_names(arrays)
    weighted = [n for n, _ in pruning.prunable(model)]
    if names != weighted:
        raise ValueError(
            f"the artifact holds layers {names}; the model's Linear/Conv2d layers are {weighted}"
        )
    float_model = copy.deepcopy(model).cpu().eval()
    modules = dict(float_model.named_modules())
    with torch.no_grad():
        for name in names:
            m, stored = modules[name], tuple(int(v) for v in arrays[f"{name}.shape"])
            if str(arrays[f"{name}.kind"]) != _kind(m) or stored != tuple(m.weight.shape):
                raise ValueError(
                    f"layer {name!r}: artifact {arrays[f'{name}.kind']} {stored}, model "
                    f"{_kind(m)} {tuple(m.weight.shape)}"
                )
            if isinstance(m, nn.Conv2d):
                scale = torch.tensor(float(arrays[f"{name}.scale"][0]), dtype=torch.float32)
                m.weight.copy_(torch.from_numpy(_unpack(arrays, name)).float() * scale)
                if m.bias is not None:
                    m.bias.copy_(torch.from_numpy(arrays[f"{name}.bias"]))
                m.int8_scale = float(scale)
    from nbhelpers.techniques import quantization

    qmodel = quantization.dynamic_int8(float_model, engine)
    with quantization.quiet_ao():
        _set_int8_weights(qmodel, arrays)
    return qmodel
