"""The deployable artifact of a compressed MLP: sparse int8 weights, optionally entropy-coded.

Deep Compression (Han et al. 2016) stores a pruned, quantized network as its non-zero quantized
weights, their positions and one scale per layer, then entropy-codes the lot. Here the positions
are a bitmap (one bit per weight, cheaper than indices above about 6% density), the values are
the int8 weights of a ``torch.ao`` dynamic-int8 model, and the entropy coder is LZMA.

Eager int8 runs on the CPU only: the arrays are read on the CPU and the unpacked models are CPU
models.
"""

from __future__ import annotations

import heapq
import io
import lzma
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .models import MLP


def int8_linears(model: nn.Module) -> list[nn.Module]:
    """The dynamic-int8 Linear layers of a model, in order (ValueError when there are none)."""
    layers = [m for m in model.modules() if hasattr(m, "_packed_params") and callable(getattr(m, "weight", None))]
    if not layers:
        raise ValueError("expected a dynamic-int8 model (torch.ao quantize_dynamic of an MLP)")
    return layers


def pack_int8_sparse(qmodel: nn.Module) -> dict[str, np.ndarray]:
    """The arrays of the artifact: per layer a bitmap of non-zeros, the non-zero int8 values, scale, bias.

    Args:
        qmodel: a dynamic-int8 MLP (per-tensor symmetric int8 weights, as ``quantize_dynamic`` makes).

    Returns:
        Array name -> array, in layer order (``l0.mask``, ``l0.values``, ``l0.scale``, ``l0.bias``, ...).
    """
    out: dict[str, np.ndarray] = {}
    for i, m in enumerate(int8_linears(qmodel)):
        w = m.weight()
        if w.qscheme() != torch.per_tensor_affine or w.q_zero_point() != 0:
            raise ValueError("expected per-tensor symmetric int8 weights (zero point 0)")
        q = w.int_repr().cpu().numpy()
        nz = q != 0
        out[f"l{i}.shape"] = np.asarray(q.shape, dtype=np.int32)
        out[f"l{i}.mask"] = np.packbits(nz.ravel())
        out[f"l{i}.values"] = q[nz].astype(np.int8)
        out[f"l{i}.scale"] = np.asarray([w.q_scale()], dtype=np.float64)
        out[f"l{i}.bias"] = m.bias().detach().cpu().numpy().astype(np.float32)
    return out


def save_artifact(arrays: dict[str, np.ndarray], path: str | Path, entropy_coding: bool = False) -> int:
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
    Path(path).write_bytes(lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME) if entropy_coding else raw)
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
    n = len({k.split(".")[0] for k in arrays})
    shapes = [tuple(int(s) for s in arrays[f"l{i}.shape"]) for i in range(n)]
    model = MLP(shapes[0][1], hidden=[s[0] for s in shapes[:-1]], n_classes=shapes[-1][0]).eval()
    linears = [m for m in model if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for i, lin in enumerate(linears):
            mask = np.unpackbits(arrays[f"l{i}.mask"], count=int(np.prod(shapes[i]))).astype(bool)
            q = np.zeros(int(np.prod(shapes[i])), dtype=np.float64)
            q[mask] = arrays[f"l{i}.values"]
            w = q.reshape(shapes[i]) * float(arrays[f"l{i}.scale"][0])
            lin.weight.copy_(torch.from_numpy(w.astype(np.float32)))
            lin.bias.copy_(torch.from_numpy(arrays[f"l{i}.bias"]))
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
    from .quantization import dynamic_int8, quiet_ao

    qmodel = dynamic_int8(unpack_float_mlp(arrays), engine)
    with quiet_ao():
        _set_int8_weights(qmodel, arrays)
    return qmodel


def _set_int8_weights(qmodel: nn.Module, arrays: dict[str, np.ndarray]) -> None:
    for i, m in enumerate(int8_linears(qmodel)):
        shape = tuple(int(s) for s in arrays[f"l{i}.shape"])
        mask = np.unpackbits(arrays[f"l{i}.mask"], count=int(np.prod(shape))).astype(bool)
        q = np.zeros(int(np.prod(shape)), dtype=np.int8)
        q[mask] = arrays[f"l{i}.values"]
        qw = torch._make_per_tensor_quantized_tensor(torch.from_numpy(q.reshape(shape)),
                                                     float(arrays[f"l{i}.scale"][0]), 0)
        m.set_weight_bias(qw, torch.from_numpy(arrays[f"l{i}.bias"]))


def huffman_bits(symbols: np.ndarray) -> int:
    """Total bits of a Huffman code of the symbols (Deep Compression's entropy coder), tables excluded.

    Args:
        symbols: any 1-D array of hashable values.

    Returns:
        The number of bits of the encoded sequence (0 for fewer than two distinct symbols).
    """
    counts = Counter(symbols.tolist())
    if len(counts) < 2:
        return 0
    heap = [(c, i) for i, c in enumerate(counts.values())]
    heapq.heapify(heap)
    total, nxt = 0, len(heap)
    while len(heap) > 1:  # each merge adds one bit to every symbol below it
        a, _ = heapq.heappop(heap)
        b, _ = heapq.heappop(heap)
        total += a + b
        heapq.heappush(heap, (a + b, nxt))
        nxt += 1
    return total


def entropy_bits(symbols: np.ndarray) -> float:
    """Shannon entropy of the symbols times their count: the lower bound of any symbol-by-symbol code.

    Args:
        symbols: any 1-D array.

    Returns:
        Bits.
    """
    _, counts = np.unique(symbols, return_counts=True)
    p = counts / counts.sum()
    return float(-(counts * np.log2(p)).sum())
