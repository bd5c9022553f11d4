"""The compact artifact of a pruned model with shared weights: codebooks, coded positions, an
arithmetic-coded stream, and its exact decoder.

Each Linear/Conv2d weight is seen as a matrix (a Linear's ``(out, in)``; a convolution's
``(out * in, kh * kw)``: one row per filter and input channel, as Louizos et al.'s code reduces
it). The artifact stores, per layer:

* in the header (LEB128 integers): the weight's shape, its number of non-zero weights, its
  codebook size ``k`` and how many biases are stored;
* the codebook: the layer's ``k`` distinct non-zero weights as float16, sorted;
* the biases as float16, only those of units that feed the next layer (a unit whose outgoing
  weights are all zero cannot change the output: ``zero_dead_biases`` sets its bias to 0 first,
  and the decoder restores that 0);
* in one arithmetic-coded stream (``coder``): which rows and which columns hold any non-zero
  weight, the gaps between consecutive non-zero positions inside that submatrix (an Elias-gamma
  binarisation: the gap's bit length, then its lower bits, each with an adaptive model), and
  each non-zero weight's codebook index.

``encode`` writes it, ``decode`` gives back the model with exactly the same weights and biases,
``decode_arrays`` the arrays alone. The weights must already take few float16 values per layer
(``codebook.share_weights`` makes them so).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from nbhelpers.core.params import ParameterError
from nbhelpers.techniques import pruning
from nbhelpers.techniques.compression.coder import (
    Decoder,
    Encoder,
    Model,
    read_varint,
    write_varint,
)

#: First byte of every compact artifact (the format's version).
VERSION = 1
#: Most distinct non-zero values a layer's codebook may hold.
MAX_CODEBOOK = 4096
_GAP_BITS = 40  # bit lengths of gaps: 1 .. 40


def matrix_shape(shape: Sequence[int]) -> tuple[int, int]:
    """The matrix a weight is coded as: ``(out, in)`` for a Linear, ``(out * in, kh * kw)`` for a
    convolution.

    Args:
        shape: the weight's shape (2 or 4 dimensions).

    Returns:
        (rows, columns).
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) == 2:
        return shape
    if len(shape) == 4:
        return shape[0] * shape[1], shape[2] * shape[3]
    raise ParameterError("shape", shape, "a Linear (2-D) or Conv2d (4-D) weight shape")


def layer_arrays(model: nn.Module) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """(weight, bias) of every Linear/Conv2d layer as float32 arrays, in the model's order."""
    layers = pruning.prunable(model)
    if not layers:
        raise ParameterError("model", type(model).__name__, "a model with Linear/Conv2d layers")
    return [
        (
            m.weight.detach().cpu().float().numpy().copy(),
            None if m.bias is None else m.bias.detach().cpu().float().numpy().copy(),
        )
        for _, m in layers
    ]


def outgoing_alive(weights: Sequence[np.ndarray]) -> list[np.ndarray]:
    """For each layer, which of its output units have a non-zero weight in the next layer.

    A unit of a layer feeds the next layer's inputs of its group: a convolution's input channel,
    or for a Linear the ``in_features / units`` consecutive inputs a flattened ``(C, H, W)`` map
    gives each channel. Where the next layer's inputs do not divide into the units (or for the
    last layer), every unit counts as alive.

    Args:
        weights: the layers' weights in order.

    Returns:
        One boolean array per layer, of its output units.
    """
    out = []
    for w, nxt in zip(weights, [*weights[1:], None]):
        units = w.shape[0]
        alive = np.ones(units, dtype=bool)
        if nxt is not None and nxt.ndim == 4 and nxt.shape[1] == units:
            alive = (nxt != 0).any(axis=(0, 2, 3))
        elif nxt is not None and nxt.ndim == 2 and nxt.shape[1] % units == 0:
            alive = (nxt != 0).any(axis=0).reshape(units, -1).any(axis=1)
        out.append(alive)
    return out


def zero_dead_biases(model: nn.Module) -> tuple[nn.Module, int]:
    """A copy whose units without any non-zero outgoing weight have bias 0 (``outgoing_alive``).

    Such a unit's output is multiplied by zeros only, so the model's outputs do not change; the
    compact artifact then need not store those biases.

    Args:
        model: the model (not changed).

    Returns:
        (the copy, how many biases were set to 0).
    """
    out = copy.deepcopy(model)
    weights = [w for w, _ in layer_arrays(out)]
    zeroed = 0
    with torch.no_grad():
        for (_, m), alive in zip(pruning.prunable(out), outgoing_alive(weights)):
            if m.bias is not None:
                dead = torch.from_numpy(~alive).to(m.bias.device)
                zeroed += int(((m.bias != 0) & dead).sum())
                m.bias.masked_fill_(dead, 0.0)
    return out, zeroed


def codebook(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A layer's codebook and the index of each non-zero weight in it.

    Args:
        weight: float32 weights whose non-zero values are float16 numbers.

    Returns:
        (the sorted distinct non-zero values as float16, the index of every non-zero weight in
        row-major order).

    Raises:
        ParameterError: a non-zero weight is not a float16 number, or the layer has more than
            ``MAX_CODEBOOK`` distinct non-zero values.
    """
    nz = weight[weight != 0]
    if not np.array_equal(nz.astype(np.float16).astype(np.float32), nz):
        raise ParameterError(
            "weight", f"{nz.size} non-zero values", "float16 numbers (round the codebooks first)"
        )
    values, index = np.unique(nz.astype(np.float16), return_inverse=True)
    if len(values) > MAX_CODEBOOK:
        raise ParameterError(
            "weight", f"{len(values)} distinct values", f"at most {MAX_CODEBOOK} per layer"
        )
    return values, index.reshape(-1)


def positions(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where a weight's non-zeros are, as the artifact codes it.

    Args:
        weight: a Linear or Conv2d weight.

    Returns:
        (which rows of its matrix (``matrix_shape``) hold a non-zero, which columns do, the flat
        row-major positions of the non-zeros inside the submatrix of those rows and columns).
    """
    mat = (weight != 0).reshape(matrix_shape(weight.shape))
    rows, cols = mat.any(axis=1), mat.any(axis=0)
    sub = mat[rows][:, cols]
    return rows, cols, np.flatnonzero(sub)


def _context(n: int, i: int) -> tuple[int, int]:
    """The model of bit ``i`` of a gap of bit length ``n``: the two bits below the leading one
    have one model each per length, the lower bits share one per length."""
    return (n, i) if n - 2 - i < 2 else (n, -1)


def _encode_gaps(enc: Encoder, positions: np.ndarray) -> None:
    """Elias-gamma binarisation of the gaps (first position + 1, then differences), each part
    with an adaptive model: the bit length, then the bits below the leading one."""
    length = Model(_GAP_BITS)
    bit_models: dict[tuple[int, int], Model] = {}
    prev = -1
    for p in positions.tolist():
        gap = p - prev
        prev = p
        n = gap.bit_length()
        enc.encode(length, n - 1)
        for i in range(n - 2, -1, -1):
            enc.encode(bit_models.setdefault(_context(n, i), Model(2)), (gap >> i) & 1)


def _decode_gaps(dec: Decoder, count: int) -> np.ndarray:
    """The positions of ``_encode_gaps``."""
    length = Model(_GAP_BITS)
    bit_models: dict[tuple[int, int], Model] = {}
    out, prev = [], -1
    for _ in range(count):
        n = dec.decode(length) + 1
        gap = 1
        for i in range(n - 2, -1, -1):
            gap = 2 * gap + dec.decode(bit_models.setdefault(_context(n, i), Model(2)))
        prev += gap
        out.append(prev)
    return np.asarray(out, dtype=np.int64)


def _encode_flags(enc: Encoder, flags: np.ndarray) -> None:
    model = Model(2)
    for f in flags.tolist():
        enc.encode(model, int(f))


def _decode_flags(dec: Decoder, count: int) -> np.ndarray:
    model = Model(2)
    return np.asarray([dec.decode(model) for _ in range(count)], dtype=bool)


def encode(model: nn.Module) -> bytes:
    """The compact artifact of a model (see the module's docstring for the layout).

    Args:
        model: a model whose Linear/Conv2d weights each take at most ``MAX_CODEBOOK`` distinct
            non-zero float16 values, whose biases are float16 numbers (``codebook.bake`` makes
            both so) and whose dead units' biases are 0 (``zero_dead_biases``).

    Returns:
        The bytes.

    Raises:
        ParameterError: a weight is not on a float16 codebook, a bias is not a float16 number, or
            a dead unit has a non-zero bias.
    """
    arrays = layer_arrays(model)
    alive = outgoing_alive([w for w, _ in arrays])
    head, enc = bytearray([VERSION]), Encoder()
    write_varint(head, len(arrays))
    tables = bytearray()
    for (w, b), live in zip(arrays, alive):
        values, index = codebook(w)
        if b is not None and np.any(b[~live] != 0):
            raise ParameterError("model", "non-zero biases of dead units", "zero_dead_biases first")
        if b is not None and not np.array_equal(b.astype(np.float16).astype(np.float32), b):
            raise ParameterError("model", "float32 biases", "float16 numbers (codebook.bake)")
        write_varint(head, w.ndim)
        for s in w.shape:
            write_varint(head, s)
        write_varint(head, index.size)
        write_varint(head, len(values))
        write_varint(head, 0 if b is None else int(live.sum()) + 1)
        tables += values.astype("<f2").tobytes()
        if b is not None:
            tables += b[live].astype("<f2").tobytes()
        rows, cols, pos = positions(w)
        _encode_flags(enc, rows)
        _encode_flags(enc, cols)
        _encode_gaps(enc, pos)
        symbols = Model(max(1, len(values)))
        for i in index.tolist():
            enc.encode(symbols, i)
    return bytes(head + tables + enc.finish())


def read_header(data: bytes) -> tuple[list[dict], int]:
    """The header of a compact artifact.

    Args:
        data: bytes from ``encode``.

    Returns:
        (one dict per layer: shape, nnz, k, biases (-1: the layer has none); the position of the
        first byte after the header).
    """
    if not data or data[0] != VERSION:
        raise ValueError(f"not a compact artifact of version {VERSION}")
    n, pos = read_varint(data, 1)
    layers = []
    for _ in range(n):
        ndim, pos = read_varint(data, pos)
        shape = []
        for _ in range(ndim):
            s, pos = read_varint(data, pos)
            shape.append(s)
        nnz, pos = read_varint(data, pos)
        k, pos = read_varint(data, pos)
        nb, pos = read_varint(data, pos)
        layers.append({"shape": tuple(shape), "nnz": nnz, "k": k, "biases": nb - 1})
    return layers, pos


def decode_arrays(data: bytes) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """(weight, bias) float32 arrays of every layer of a compact artifact, in order.

    Args:
        data: bytes from ``encode``.

    Returns:
        The arrays (a bias is None where the layer had none).
    """
    layers, pos = read_header(data)
    for layer in layers:
        k, nb = layer["k"], max(layer["biases"], 0)
        layer["values"] = np.frombuffer(data, "<f2", k, pos).astype(np.float32)
        layer["stored_bias"] = np.frombuffer(data, "<f2", nb, pos + 2 * k).astype(np.float32)
        pos += 2 * (k + nb)
    dec, weights = Decoder(data[pos:]), []
    for layer in layers:
        r, c = matrix_shape(layer["shape"])
        rows, cols = _decode_flags(dec, r), _decode_flags(dec, c)
        sub = np.zeros(int(rows.sum()) * int(cols.sum()), dtype=np.float32)
        where = _decode_gaps(dec, layer["nnz"])
        symbols = Model(max(1, layer["k"]))
        sub[where] = layer["values"][[dec.decode(symbols) for _ in range(layer["nnz"])]]
        mat = np.zeros((r, c), dtype=np.float32)
        mat[np.ix_(rows, cols)] = sub.reshape(int(rows.sum()), int(cols.sum()))
        weights.append(mat.reshape(layer["shape"]))
    out = []
    for layer, w, live in zip(layers, weights, outgoing_alive(weights)):
        bias = None
        if layer["biases"] >= 0:
            if int(live.sum()) != layer["biases"]:
                raise ValueError("stored biases do not match the units alive: corrupt data")
            bias = np.zeros(layer["shape"][0], dtype=np.float32)
            bias[live] = layer["stored_bias"]
        out.append((w, bias))
    return out


def decode(data: bytes, model: nn.Module) -> nn.Module:
    """The model of a compact artifact on a given architecture.

    Args:
        data: bytes from ``encode``.
        model: a model of the same architecture (its Linear/Conv2d weights and biases are
            replaced in a copy; it is not changed).

    Returns:
        The copy, in eval mode, with exactly the stored weights and biases.

    Raises:
        ValueError: the artifact's layers do not match the model's (shapes named).
    """
    arrays = decode_arrays(data)
    out = copy.deepcopy(model).eval()
    layers = pruning.prunable(out)
    shapes = [tuple(m.weight.shape) for _, m in layers]
    if [w.shape for w, _ in arrays] != shapes:
        raise ValueError(f"artifact layers {[w.shape for w, _ in arrays]}, model layers {shapes}")
    with torch.no_grad():
        for (_, m), (w, b) in zip(layers, arrays):
            m.weight.copy_(torch.from_numpy(w))
            if b is not None and m.bias is not None:
                m.bias.copy_(torch.from_numpy(b))
    return out
