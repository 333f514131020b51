# Compiled twin of rtmpq.codec.amf0.amf0_decode: same values, same errors. AMF3 values (marker
# 0x11, rare) are handed to the reference decoder at the same offset.

from libc.string cimport memcpy
from rtmpq.codec.amf_types import UNDEFINED as _AMF_UNDEFINED, AmfDate as _AmfDate, EcmaArray as _EcmaArray
from rtmpq.codec import amf0 as _amf0_ref

cdef int _AMF_MAX_DEPTH = _amf0_ref.AMF_MAX_DEPTH
cdef int _AMF_MAX_NODES = _amf0_ref.AMF_MAX_NODES


cdef inline double _be_double(const unsigned char* p) noexcept:
    cdef unsigned long long bits = 0
    cdef int i
    cdef double out
    for i in range(8):
        bits = (bits << 8) | p[i]
    memcpy(&out, &bits, 8)
    return out


cdef class _AmfReader:
    cdef object data
    cdef const unsigned char[:] view
    cdef Py_ssize_t pos, end
    cdef int nodes, max_depth, max_nodes
    cdef object amf3  # the reference decoder, created on first AMF3 value (it keeps the string table)

    cdef inline Py_ssize_t need(self, Py_ssize_t n) except -1:
        cdef Py_ssize_t pos = self.pos
        if self.end - pos < n:
            raise RemoteProtocolError(f"AMF0 truncated: need {n} bytes at offset {pos}, {self.end - pos} left")
        self.pos = pos + n
        return pos

    cdef str text(self, Py_ssize_t n):
        cdef Py_ssize_t p = self.need(n)
        try:
            return bytes(self.view[p:p + n]).decode("utf-8")
        except UnicodeDecodeError:
            raise RemoteProtocolError(f"AMF0 string at offset {p} is not UTF-8") from None

    cdef inline unsigned int u16(self) except? 0xFFFFFFFF:
        cdef Py_ssize_t p = self.need(2)
        return (self.view[p] << 8) | self.view[p + 1]

    cdef inline unsigned int u32(self) except? 0xFFFFFFFF:
        cdef Py_ssize_t p = self.need(4)
        return (<unsigned int>self.view[p] << 24) | (<unsigned int>self.view[p + 1] << 16) | \
               (<unsigned int>self.view[p + 2] << 8) | self.view[p + 3]

    cdef object value(self, int depth):
        cdef unsigned char marker
        cdef Py_ssize_t p
        cdef unsigned int count, tz, i
        cdef list items
        self.nodes += 1
        if self.nodes > self.max_nodes:
            raise RemoteProtocolError(f"AMF0 message holds more than {self.max_nodes} values")
        marker = self.view[self.need(1)]
        if marker == 0:
            p = self.need(8)
            return _be_double(&self.view[p])
        if marker == 1:
            return self.view[self.need(1)] != 0
        if marker == 2:
            return self.text(self.u16())
        if marker == 12:
            return self.text(self.u32())
        if marker == 5:
            return None
        if marker == 6 or marker == 13:
            return _AMF_UNDEFINED
        if marker == 3:
            return self.properties({}, depth + 1)
        if marker == 8:
            self.need(4)
            return self.properties(_EcmaArray(), depth + 1)
        if marker == 16:
            self.text(self.u16())
            return self.properties({}, depth + 1)
        if marker == 10:
            count = self.u32()
            if count > self.end - self.pos:
                raise RemoteProtocolError(f"AMF0 strict array of {count} elements in {self.end - self.pos} bytes")
            if depth + 1 > self.max_depth:
                raise RemoteProtocolError(f"AMF0 nesting deeper than {self.max_depth}")
            items = []
            for i in range(count):
                items.append(self.value(depth + 1))
            return items
        if marker == 11:
            p = self.need(8)
            ms = _be_double(&self.view[p])
            tz = self.u16()
            return _AmfDate(ms, <int>tz - 0x10000 if tz & 0x8000 else <int>tz)
        if marker == 15:
            return self.text(self.u32())
        if marker == 17:
            if self.amf3 is None:
                self.amf3 = _amf0_ref._Decoder(self.data, self.max_depth, self.max_nodes)
            self.amf3.pos = self.pos
            self.amf3.nodes = self.nodes
            result = self.amf3.amf3_value(depth + 1)
            self.pos = self.amf3.pos
            self.nodes = self.amf3.nodes
            return result
        if marker == 9:
            raise RemoteProtocolError(f"AMF0 unexpected object end at offset {self.pos - 1}")
        raise RemoteProtocolError(f"AMF0 unsupported marker {marker:#x} at offset {self.pos - 1}")

    cdef object properties(self, object out, int depth):
        cdef str key
        if depth > self.max_depth:
            raise RemoteProtocolError(f"AMF0 nesting deeper than {self.max_depth}")
        while True:
            key = self.text(self.u16())
            if not key and self.end - self.pos >= 1 and self.view[self.pos] == 9:
                self.pos += 1
                return out
            out[key] = self.value(depth)


def amf0_decode(data, *, max_depth=_AMF_MAX_DEPTH, max_nodes=_AMF_MAX_NODES):
    cdef _AmfReader r = _AmfReader.__new__(_AmfReader)
    cdef list out = []
    r.data = data if isinstance(data, bytes) else memoryview(data).cast("B")
    r.view = r.data
    r.pos = 0
    r.end = len(r.view)
    r.nodes = 0
    r.max_depth = max_depth
    r.max_nodes = max_nodes
    r.amf3 = None
    while r.pos < r.end:
        out.append(r.value(0))
    return out
