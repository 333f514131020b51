"""A bounded big-endian bit reader with Exp-Golomb codes (pure-Python reference of ext/bits.pxi).

Reading past the end, or an Exp-Golomb code longer than 32 bits, raises RemoteProtocolError:
a hostile SPS can never make a parser loop or read outside its buffer.
"""

from ..errors import RemoteProtocolError

__all__ = ["BitReader"]


class BitReader:
    def __init__(self, data) -> None:
        self._data = bytes(data)
        self._pos = 0  # in bits
        self._size = len(self._data) * 8

    @property
    def bits_left(self) -> int:
        return self._size - self._pos

    def read_bits(self, n: int) -> int:
        if n < 0 or n > 32:
            raise RemoteProtocolError(f"bit reader: cannot read {n} bits at once")
        if n > self._size - self._pos:
            raise RemoteProtocolError(f"bit reader: read of {n} bits past the end at bit {self._pos}")
        value = 0
        pos = self._pos
        data = self._data
        for _ in range(n):
            value = (value << 1) | ((data[pos >> 3] >> (7 - (pos & 7))) & 1)
            pos += 1
        self._pos = pos
        return value

    def read_bit(self) -> int:
        return self.read_bits(1)

    def skip_bits(self, n: int) -> None:
        if n < 0 or n > self._size - self._pos:
            raise RemoteProtocolError(f"bit reader: skip of {n} bits past the end at bit {self._pos}")
        self._pos += n

    def read_ue(self) -> int:
        zeros = 0
        while self.read_bits(1) == 0:
            zeros += 1
            if zeros > 31:
                raise RemoteProtocolError("bit reader: Exp-Golomb code longer than 32 bits")
        return (1 << zeros) - 1 + self.read_bits(zeros)

    def read_se(self) -> int:
        k = self.read_ue()
        return (k + 1) >> 1 if k & 1 else -(k >> 1)
