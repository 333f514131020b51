# Compiled twin of rtmpq/codec/bits.py.

cdef class BitReader:
    cdef bytes _data
    cdef const unsigned char* _p
    cdef unsigned long long _pos, _size

    def __init__(self, data):
        self._data = bytes(data)
        self._p = self._data
        self._pos = 0
        self._size = <unsigned long long>len(self._data) * 8

    @property
    def bits_left(self):
        return self._size - self._pos

    cpdef unsigned long long read_bits(self, int n) except? 0xFFFFFFFFFFFFFFFF:
        cdef unsigned long long value = 0, pos = self._pos
        cdef int i
        if n < 0 or n > 32:
            raise RemoteProtocolError(f"bit reader: cannot read {n} bits at once")
        if <unsigned long long>n > self._size - pos:
            raise RemoteProtocolError(f"bit reader: read of {n} bits past the end at bit {pos}")
        for i in range(n):
            value = (value << 1) | ((self._p[pos >> 3] >> (7 - (pos & 7))) & 1)
            pos += 1
        self._pos = pos
        return value

    def read_bit(self):
        return self.read_bits(1)

    def skip_bits(self, long long n):
        if n < 0 or <unsigned long long>n > self._size - self._pos:
            raise RemoteProtocolError(f"bit reader: skip of {n} bits past the end at bit {self._pos}")
        self._pos += n

    cpdef unsigned long long read_ue(self) except? 0xFFFFFFFFFFFFFFFF:
        cdef int zeros = 0
        while self.read_bits(1) == 0:
            zeros += 1
            if zeros > 31:
                raise RemoteProtocolError("bit reader: Exp-Golomb code longer than 32 bits")
        return (1ULL << zeros) - 1 + self.read_bits(zeros)

    def read_se(self):
        cdef long long k = self.read_ue()
        return (k + 1) >> 1 if k & 1 else -(k >> 1)
