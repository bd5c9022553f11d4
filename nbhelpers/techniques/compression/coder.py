"""An adaptive arithmetic coder: the entropy coder of the compact artifact (``compact``).

Arithmetic coding (Witten, Neal and Cleary 1987) codes a sequence of symbols in about
``-log2 p(symbol)`` bits each, without the whole-bit rounding of a Huffman code, and an *adaptive*
model learns each symbol's frequency as it goes, so no table is stored: encoder and decoder update
the same counts after every symbol. Integers only (a 32-bit interval, E3 "pending bit" scaling), so
decoding gives back exactly the symbols encoded on every machine.

``Model`` is one adaptive frequency table, ``Encoder`` and ``Decoder`` code symbols with such
models; ``write_varint`` / ``read_varint`` are the LEB128 integers of the artifact's header.
"""

from __future__ import annotations

import numpy as np

from nbhelpers.core.params import ParameterError

_BITS = 32
_FULL = 1 << _BITS
_HALF = _FULL >> 1
_QUARTER = _FULL >> 2
_MASK = _FULL - 1
#: Largest total count of a model: far below a quarter of the interval, so no symbol's share of the
#: interval can round to zero.
MAX_TOTAL = 1 << 16


class Model:
    """An adaptive frequency table over the symbols ``0 .. size - 1``.

    Every count starts at 1; coding a symbol adds ``increment`` to its count, and when the total
    would pass ``MAX_TOTAL`` all counts are halved (rounding up, so none becomes 0). The encoder
    and the decoder make the same updates, so they always hold the same table.

    Args:
        size: number of symbols, 1 to 4096.
        increment: count added per coded symbol, 1 to 1024 (larger adapts faster).
    """

    def __init__(self, size: int, increment: int = 24):
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= 4096:
            raise ParameterError("size", size, "an integer from 1 to 4096")
        if isinstance(increment, bool) or not isinstance(increment, int):
            raise ParameterError("increment", increment, "an integer from 1 to 1024")
        if not 1 <= increment <= 1024:
            raise ParameterError("increment", increment, "an integer from 1 to 1024")
        self.size, self.increment = size, increment
        self.freq = [1] * size
        self.total = size

    def interval(self, symbol: int) -> tuple[int, int]:
        """(cumulative count below ``symbol``, cumulative count up to and including it)."""
        if not 0 <= symbol < self.size:
            raise ParameterError("symbol", symbol, f"an integer from 0 to {self.size - 1}")
        low = sum(self.freq[:symbol])
        return low, low + self.freq[symbol]

    def find(self, target: int) -> tuple[int, int, int]:
        """The symbol whose interval holds the cumulative count ``target``, and that interval."""
        low = 0
        for s, f in enumerate(self.freq):
            if target < low + f:
                return s, low, low + f
            low += f
        raise ValueError("target beyond the total count: corrupt data")

    def update(self, symbol: int) -> None:
        """Count one more ``symbol`` (halving every count when the total would pass MAX_TOTAL)."""
        self.freq[symbol] += self.increment
        self.total += self.increment
        if self.total > MAX_TOTAL:
            self.freq = [(f + 1) // 2 for f in self.freq]
            self.total = sum(self.freq)


class Encoder:
    """Arithmetic encoder: ``encode`` symbols with their models, then ``finish`` for the bytes."""

    def __init__(self) -> None:
        self.low, self.high, self.pending = 0, _MASK, 0
        self.bits: list[int] = []

    def _emit(self, bit: int) -> None:
        self.bits.append(bit)
        self.bits.extend([1 - bit] * self.pending)
        self.pending = 0

    def encode(self, model: Model, symbol: int) -> None:
        """Narrow the interval to ``symbol``'s share under ``model``, then update the model."""
        lo, hi = model.interval(symbol)
        span = self.high - self.low + 1
        self.high = self.low + span * hi // model.total - 1
        self.low = self.low + span * lo // model.total
        while True:
            if self.high < _HALF:
                self._emit(0)
            elif self.low >= _HALF:
                self._emit(1)
                self.low -= _HALF
                self.high -= _HALF
            elif self.low >= _QUARTER and self.high < _HALF + _QUARTER:
                self.pending += 1
                self.low -= _QUARTER
                self.high -= _QUARTER
            else:
                break
            self.low, self.high = 2 * self.low, 2 * self.high + 1
        model.update(symbol)

    def finish(self) -> bytes:
        """Two more bits that fix a point inside the final interval; the bits packed into bytes
        (the last byte padded with zeros, which the decoder also reads past the end)."""
        self.pending += 1
        self._emit(0 if self.low < _QUARTER else 1)
        return np.packbits(np.asarray(self.bits, dtype=np.uint8)).tobytes()


class Decoder:
    """Arithmetic decoder of an ``Encoder``'s bytes: ``decode`` with the same models in the same
    order gives back the symbols."""

    def __init__(self, data: bytes):
        self.bits = np.unpackbits(np.frombuffer(bytes(data), dtype=np.uint8)).tolist()
        self.pos, self.low, self.high, self.code = 0, 0, _MASK, 0
        for _ in range(_BITS):
            self.code = 2 * self.code + self._next()

    def _next(self) -> int:
        bit = self.bits[self.pos] if self.pos < len(self.bits) else 0
        self.pos += 1
        return bit

    def decode(self, model: Model) -> int:
        """The next symbol under ``model`` (which is then updated as the encoder's was)."""
        span = self.high - self.low + 1
        target = ((self.code - self.low + 1) * model.total - 1) // span
        symbol, lo, hi = model.find(target)
        self.high = self.low + span * hi // model.total - 1
        self.low = self.low + span * lo // model.total
        while True:
            if self.high < _HALF:
                pass
            elif self.low >= _HALF:
                self.low -= _HALF
                self.high -= _HALF
                self.code -= _HALF
            elif self.low >= _QUARTER and self.high < _HALF + _QUARTER:
                self.low -= _QUARTER
                self.high -= _QUARTER
                self.code -= _QUARTER
            else:
                break
            self.low, self.high = 2 * self.low, 2 * self.high + 1
            self.code = 2 * self.code + self._next()
        model.update(symbol)
        return symbol


def write_varint(out: bytearray, value: int) -> None:
    """Append a non-negative integer as LEB128 (7 bits a byte, the high bit set on all but the
    last)."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise ParameterError("value", value, "a non-negative integer")
    value = int(value)
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """Read a LEB128 integer at ``pos``; returns (value, position after it)."""
    value, shift = 0, 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint: corrupt data")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos
