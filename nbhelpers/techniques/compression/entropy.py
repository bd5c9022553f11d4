"""What entropy coding can gain on an artifact: Huffman's bits, Shannon's bound, and the table of
what each way of coding it costs."""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Mapping

import numpy as np
import pandas as pd


def huffman_bits(symbols: np.ndarray) -> int:
    """Total bits of a Huffman code of the symbols (Deep Compression's entropy coder), tables
    excluded.

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
    """Shannon entropy of the symbols times their count: the lower bound of any symbol-by-symbol
    code.

    Args:
        symbols: any 1-D array.

    Returns:
        Bits.
    """
    _, counts = np.unique(symbols, return_counts=True)
    p = counts / counts.sum()
    return float(-(counts * np.log2(p)).sum())


def nonzero_values(arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    """Every layer's non-zero int8 weights of an artifact, concatenated in layer order."""
    return np.concatenate([arrays[k] for k in arrays if k.endswith(".values")])


def coding_table(
    arrays: Mapping[str, np.ndarray], plain_bytes: int, coded_bytes: int | None, identical: bool
) -> pd.Series:
    """What the artifact holds and what each way of coding it costs, in bytes.

    Args:
        arrays: from ``pack_int8_sparse``.
        plain_bytes: bytes of the plain artifact.
        coded_bytes: bytes of the LZMA-coded artifact (None when not written).
        identical: whether the artifact read back gave the identical int8 model.

    Returns:
        Non-zero and distinct int8 weights, the plain and LZMA bytes, the Huffman estimate and the
        Shannon bound of the values plus the 1-bit-per-weight bitmaps, and the round-trip check.
    """
    values = nonzero_values(arrays)
    bitmap_bits = sum(int(np.prod(arrays[k])) for k in arrays if k.endswith(".shape"))
    return pd.Series(
        {
            "non-zero int8 weights": len(values),
            "distinct int8 values": len(np.unique(values)),
            "plain artifact (bytes)": plain_bytes,
            "LZMA-coded artifact (bytes)": coded_bytes,
            "Huffman-coded values + bitmap, estimate (bytes)": (huffman_bits(values) + bitmap_bits)
            / 8,
            "Shannon bound of values + bitmap (bytes)": (entropy_bits(values) + bitmap_bits) / 8,
            "artifact gives back the identical int8 model": bool(identical),
        },
        dtype=object,
    )
