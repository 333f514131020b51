# Compiled twin of rtmpq/codec/chunk.py: same algorithm, same results, same exceptions.
# The reader works on raw pointers into bytearray blocks it owns and never resizes.

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_FromStringAndSize
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING
from libc.string cimport memcpy
from libc.errno cimport errno, EAGAIN, EINTR  # EWOULDBLOCK is EAGAIN on Linux
from posix.unistd cimport read as _read
from cpython.exc cimport PyErr_SetFromErrno
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from rtmpq.codec.types import RtmpMessage as _RtmpMessage
from rtmpq.errors import LimitExceeded as _LimitExceeded
from rtmpq.codec.chunk import (
    MAX_MESSAGE_SIZE as _MAX_MESSAGE_SIZE, MAX_PARTIAL_BYTES as _MAX_PARTIAL_BYTES,
    MAX_CHUNK_STREAMS as _MAX_CHUNK_STREAMS, MIN_CHUNK_SIZE as _MIN_CHUNK_SIZE,
    MAX_CHUNK_SIZE as _MAX_CHUNK_SIZE_PY, BLOCK_SIZE as _BLOCK_SIZE_PY, MIN_FREE as _MIN_FREE_PY,
    MAX_PIN_FACTOR as _MAX_PIN_FACTOR_PY,
)

cdef Py_ssize_t _BLOCK_SIZE = _BLOCK_SIZE_PY
cdef Py_ssize_t _MIN_FREE = _MIN_FREE_PY
cdef Py_ssize_t _MAX_PIN_FACTOR = _MAX_PIN_FACTOR_PY
cdef unsigned int _MAX_CHUNK_SIZE = _MAX_CHUNK_SIZE_PY
cdef object _NEED_DATA = NEED_DATA
cdef int[4] _HEADER_SIZES = [11, 7, 3, 0]


cdef bytearray _new_block(Py_ssize_t size):
    # uninitialized (the pure twin's bytearray(size) is zeroed): nothing before _end is ever read,
    # and pages recv has not written yet cost neither a memset nor resident memory
    return PyByteArray_FromStringAndSize(NULL, size)


cdef class _CChunkStream:
    cdef unsigned int timestamp, delta, length, type_id, stream_id, ext_value, received
    cdef bint extended
    cdef list parts  # None when no message is in progress
    cdef object block  # the block of the newest part
    cdef Py_ssize_t pinned  # bytes of blocks left behind that hold earlier parts


cdef void _gather(_CChunkStream st):
    cdef bytearray acc
    cdef list parts = st.parts
    if type(parts[0]) is bytearray:
        acc = parts[0]
        parts = parts[1:]
    else:
        acc = bytearray()
    for part in parts:
        acc += part
    st.parts = [acc]
    st.pinned = 0


cdef str _AVC = "avc1", _HEVC = "hvc1", _AAC = "mp4a", _OPUS = "Opus"
cdef tuple _NO_HEADER = (None, 0, 0, 0)


cdef inline bint _is4(const unsigned char* p, const char* s):
    return p[0] == <unsigned char>s[0] and p[1] == <unsigned char>s[1] and p[2] == <unsigned char>s[2] and p[3] == <unsigned char>s[3]


cdef tuple _media_header(unsigned int type_id, const unsigned char* b, Py_ssize_t n):
    """(codec, frame_type, cts, payload_offset) of a single-track coded AVC/HEVC/AAC/Opus frame,
    else _NO_HEADER (the caller parses the tag itself). Twin of chunk.py's _media_header."""
    cdef int b0, frame_type, codec_id, packet_type, sound_format
    cdef int cts
    cdef str codec
    if n < 2:
        return _NO_HEADER
    b0 = b[0]
    if type_id == 9:
        frame_type = (b0 >> 4) & 0x07
        if frame_type == 5:
            return _NO_HEADER
        if not b0 & 0x80:
            codec_id = b0 & 0x0F
            if (codec_id != 7 and codec_id != 12) or n < 5 or b[1] != 1:
                return _NO_HEADER
            cts = (b[2] << 16) | (b[3] << 8) | b[4]
            if cts & 0x800000:
                cts -= 0x1000000
            return (_AVC if codec_id == 7 else _HEVC), frame_type, cts, 5
        packet_type = b0 & 0x0F
        if (packet_type != 1 and packet_type != 3) or n < 5:
            return _NO_HEADER
        if _is4(b + 1, b"avc1"):
            codec = _AVC
        elif _is4(b + 1, b"hvc1"):
            codec = _HEVC
        else:
            return _NO_HEADER
        if packet_type == 3:
            return codec, frame_type, 0, 5
        if n < 8:
            return _NO_HEADER
        cts = (b[5] << 16) | (b[6] << 8) | b[7]
        if cts & 0x800000:
            cts -= 0x1000000
        return codec, frame_type, cts, 8
    if type_id == 8:
        sound_format = b0 >> 4
        if sound_format == 10:
            return (_AAC, 0, 0, 2) if b[1] == 1 else _NO_HEADER
        if sound_format != 9 or (b0 & 0x0F) != 1 or n < 5:
            return _NO_HEADER
        if _is4(b + 1, b"mp4a"):
            return _AAC, 0, 0, 5
        if _is4(b + 1, b"Opus"):
            return _OPUS, 0, 0, 5
    return _NO_HEADER


cdef class ChunkReader:
    cdef bytearray _block
    cdef unsigned char* _buf
    cdef Py_ssize_t _start, _end, _size
    cdef dict _streams
    cdef Py_ssize_t _partial_bytes
    cdef unsigned int _last_stream_id
    cdef object _error  # raised again by read_messages once it was deferred
    # the header of the message _next_chunk returned last
    cdef unsigned int _csid, _type_id, _timestamp
    cdef object _media  # (codec, frame_type, cts, header bytes) of the message split last, or None
    cdef public Py_ssize_t max_message_size, max_partial_bytes, max_chunk_streams, min_chunk_size
    cdef readonly unsigned int chunk_size
    cdef readonly unsigned long long bytes_received, chunks_parsed, bytes_moved

    def __init__(self, *, max_message_size=_MAX_MESSAGE_SIZE, max_partial_bytes=_MAX_PARTIAL_BYTES,
                 max_chunk_streams=_MAX_CHUNK_STREAMS, min_chunk_size=_MIN_CHUNK_SIZE):
        self.max_message_size = max_message_size
        self.max_partial_bytes = max_partial_bytes
        self.max_chunk_streams = max_chunk_streams
        self.min_chunk_size = min_chunk_size
        self.chunk_size = 128
        self.bytes_received = 0
        self.chunks_parsed = 0
        self.bytes_moved = 0
        self._set_block(_new_block(_BLOCK_SIZE))
        self._start = 0
        self._end = 0
        self._streams = {}
        self._partial_bytes = 0
        self._last_stream_id = 0
        self._error = None
        self._media = None

    cdef void _set_block(self, bytearray block):
        self._block = block
        self._buf = <unsigned char*>PyByteArray_AS_STRING(block)
        self._size = len(block)

    cdef int _make_room(self) except -1:
        cdef bytearray fresh
        cdef Py_ssize_t tail
        tail = self._end - self._start
        if self._size - self._end < _MIN_FREE or (self._size > _BLOCK_SIZE and 2 * tail + _MIN_FREE <= _BLOCK_SIZE):
            fresh = _new_block(max(_BLOCK_SIZE, 2 * tail + _MIN_FREE))
            memcpy(PyByteArray_AS_STRING(fresh), self._buf + self._start, tail)
            self.bytes_moved += tail
            self._set_block(fresh)
            self._start = 0
            self._end = tail
        return 0

    def get_buffer(self, Py_ssize_t sizehint=-1):
        self._make_room()
        return memoryview(self._block)[self._end:]

    def buffer_updated(self, Py_ssize_t nbytes):
        self._end += nbytes
        self.bytes_received += nbytes

    def recv_from(self, int fd, int max_reads=1):
        """See rtmpq/codec/chunk.py."""
        cdef Py_ssize_t total = 0, n, free
        cdef int i
        for i in range(max_reads):
            self._make_room()
            free = self._size - self._end
            n = _read(fd, self._buf + self._end, free)
            if n < 0:
                if errno == EAGAIN or errno == EINTR:
                    break
                PyErr_SetFromErrno(OSError)
            if n == 0:
                return total
            self._end += n
            self.bytes_received += n
            total += n
            if n < free:
                break
        return total if total else -1

    def receive_data(self, data):
        cdef const unsigned char[:] src = data
        cdef Py_ssize_t off = 0, n, total = src.shape[0]
        while off < total:
            buf = self.get_buffer(total - off)
            n = min(len(buf), total - off)
            buf[:n] = src[off:off + n]
            self.buffer_updated(n)
            off += n

    def next_message(self):
        cdef object body
        while True:
            body = self._next_chunk(False)
            if body is _NEED_DATA:
                return body
            if body is not None:
                return _RtmpMessage(self._csid, self._last_stream_id, self._type_id, self._timestamp, body)

    def read_messages(self):
        """Every complete message received so far, as tuples (see rtmpq/codec/chunk.py)."""
        cdef object body, media
        cdef list out = []
        if self._error is not None:
            raise self._error
        try:
            while True:
                body = self._next_chunk(True)
                if body is _NEED_DATA:
                    return out
                if body is not None:
                    media = self._media
                    if media is None:
                        out.append((self._csid, self._last_stream_id, self._type_id, self._timestamp, body,
                                    None, 0, 0, None))
                    else:
                        out.append((self._csid, self._last_stream_id, self._type_id, self._timestamp, body,
                                    (<tuple>media)[0], (<tuple>media)[1], (<tuple>media)[2], (<tuple>media)[3]))
        except RemoteProtocolError as exc:
            if not out:
                raise
            self._error = exc
            return out

    def dispatch(self, dict sinks):
        """See rtmpq/codec/chunk.py."""
        cdef object body, media, sink
        if self._error is not None:
            raise self._error
        while True:
            try:
                body = self._next_chunk(True)
            except RemoteProtocolError as exc:
                self._error = exc
                raise
            if body is _NEED_DATA:
                return None
            if body is None:
                continue
            media = self._media
            if media is not None:
                sink = sinks.get(self._last_stream_id)
                if sink is not None:
                    sink(self._type_id, self._timestamp, body, (<tuple>media)[0], (<tuple>media)[1],
                         (<tuple>media)[2], (<tuple>media)[3])
                    continue
                return (self._csid, self._last_stream_id, self._type_id, self._timestamp, body,
                        (<tuple>media)[0], (<tuple>media)[1], (<tuple>media)[2], (<tuple>media)[3])
            return (self._csid, self._last_stream_id, self._type_id, self._timestamp, body, None, 0, 0, None)

    cdef object _next_chunk(self, bint split):
        cdef unsigned char* buf = self._buf
        cdef Py_ssize_t pos = self._start, p, n
        cdef Py_ssize_t avail = self._end - pos
        cdef unsigned int b0, fmt, csid, hdr, mh
        cdef unsigned int timestamp, delta, length, type_id, stream_id, ext_value, field, peek, received
        cdef bint extended, new_stream
        cdef _CChunkStream st
        cdef Py_ssize_t off
        cdef tuple h
        cdef list parts
        cdef object media, first_obj
        cdef Py_buffer first
        if avail < 1:
            return _NEED_DATA
        b0 = buf[pos]
        fmt = b0 >> 6
        csid = b0 & 0x3F
        hdr = 1
        if csid == 0:
            if avail < 2:
                return _NEED_DATA
            csid = buf[pos + 1] + 64
            hdr = 2
        elif csid == 1:
            if avail < 3:
                return _NEED_DATA
            csid = buf[pos + 1] + (buf[pos + 2] << 8) + 64
            hdr = 3
        mh = _HEADER_SIZES[fmt]
        if avail < hdr + mh:
            return _NEED_DATA
        st = <_CChunkStream?>self._streams.get(csid) if csid in self._streams else None
        if st is None:
            if fmt >= 2:
                raise RemoteProtocolError(f"chunk of fmt {fmt} opens chunk stream {csid} (no header to reuse)")
            if len(self._streams) >= self.max_chunk_streams:
                raise _LimitExceeded("max_chunk_streams", len(self._streams) + 1, self.max_chunk_streams)
            st = _CChunkStream()
            st.stream_id = self._last_stream_id
            st.parts = None
            new_stream = True
        else:
            new_stream = False
        if fmt != 3 and st.parts is not None:
            raise RemoteProtocolError(f"fmt {fmt} header on chunk stream {csid} while a message is incomplete")
        p = pos + hdr
        timestamp = st.timestamp
        delta = st.delta
        length = st.length
        type_id = st.type_id
        stream_id = st.stream_id
        extended = st.extended
        ext_value = st.ext_value
        if fmt <= 2:
            field = (buf[p] << 16) | (buf[p + 1] << 8) | buf[p + 2]
            if fmt <= 1:
                length = (buf[p + 3] << 16) | (buf[p + 4] << 8) | buf[p + 5]
                type_id = buf[p + 6]
                if fmt == 0:
                    stream_id = (<unsigned int>buf[p + 7]) | (<unsigned int>buf[p + 8] << 8) | \
                                (<unsigned int>buf[p + 9] << 16) | (<unsigned int>buf[p + 10] << 24)
            p += mh
            extended = field == 0xFFFFFF
            if extended:
                if self._end - p < 4:
                    return _NEED_DATA
                field = (<unsigned int>buf[p] << 24) | (<unsigned int>buf[p + 1] << 16) | \
                        (<unsigned int>buf[p + 2] << 8) | buf[p + 3]
                ext_value = field
                p += 4
            if fmt == 0:
                timestamp = field
            else:
                timestamp = timestamp + field  # unsigned int: wraps mod 2**32
            delta = field
        else:
            if extended and self._end - p >= 4:
                peek = (<unsigned int>buf[p] << 24) | (<unsigned int>buf[p + 1] << 16) | \
                       (<unsigned int>buf[p + 2] << 8) | buf[p + 3]
                if peek == ext_value:
                    p += 4
            elif extended:
                return _NEED_DATA
            if st.parts is None:
                timestamp = timestamp + delta
        received = st.received if st.parts is not None else 0
        if fmt <= 1 and length > self.max_message_size:
            raise _LimitExceeded("max_message_size", length, self.max_message_size)
        n = min(self.chunk_size, length - received)
        if self._end - p < n:
            return _NEED_DATA
        if new_stream:
            self._streams[csid] = st
        st.timestamp = timestamp
        st.delta = delta
        st.length = length
        st.type_id = type_id
        st.stream_id = stream_id
        st.extended = extended
        st.ext_value = ext_value
        self._start = p + n
        self.chunks_parsed += 1
        if received + n < length:
            payload = memoryview(self._block)[p:p + n]
            if st.parts is None:
                st.parts = [payload]
                st.block = self._block
                st.pinned = 0
            else:
                if st.block is not self._block:
                    st.pinned += len(st.block)
                    st.block = self._block
                    if st.pinned > _MAX_PIN_FACTOR * received:
                        _gather(st)
                st.parts.append(payload)
            st.received = received + n
            self._partial_bytes += n
            if self._partial_bytes > self.max_partial_bytes:
                raise _LimitExceeded("max_partial_bytes", self._partial_bytes, self.max_partial_bytes)
            return None
        media = None
        if st.parts is None:
            off = 0
            if split and (type_id == 8 or type_id == 9):
                h = _media_header(type_id, buf + p, n)
                if h is not _NO_HEADER:
                    off = h[3]
                    media = (h[0], h[1], h[2], PyBytes_FromStringAndSize(<char*>buf + p, off))
            if n * _MAX_PIN_FACTOR >= self._size:
                body = memoryview(self._block)[p + off:p + n]
            else:  # small: a copy, not a view that would pin the whole block
                body = PyBytes_FromStringAndSize(<char*>buf + p + off, n - off)
        else:
            parts = st.parts
            parts.append(memoryview(self._block)[p:p + n])
            if split and (type_id == 8 or type_id == 9):
                first_obj = parts[0]
                PyObject_GetBuffer(first_obj, &first, PyBUF_SIMPLE)
                try:
                    h = _media_header(type_id, <const unsigned char*>first.buf, min(<Py_ssize_t>length, first.len))
                    if h is not _NO_HEADER:
                        off = h[3]
                        media = (h[0], h[1], h[2], PyBytes_FromStringAndSize(<char*>first.buf, off))
                        parts[0] = memoryview(first_obj)[off:]
                finally:
                    PyBuffer_Release(&first)
            body = b"".join(parts)
            self._partial_bytes -= received
            st.parts = None
            st.block = None
            st.received = 0
        self._media = media
        self._last_stream_id = stream_id
        if type_id == 1 or type_id == 2:
            self._control(type_id, body)
        self._csid = csid
        self._type_id = type_id
        self._timestamp = timestamp
        return body

    cdef _control(self, unsigned int type_id, body):
        cdef unsigned int value
        cdef _CChunkStream st
        if len(body) < 4:
            raise RemoteProtocolError(f"control message {type_id} of {len(body)} bytes, need 4")
        value = (<unsigned int>body[0] << 24) | (<unsigned int>body[1] << 16) | (<unsigned int>body[2] << 8) | body[3]
        if type_id == 1:
            if value == 0 or value & 0x80000000:
                raise RemoteProtocolError(f"invalid chunk size {value:#x}")
            if value < self.min_chunk_size:
                raise RemoteProtocolError(f"chunk size {value} is below min_chunk_size {self.min_chunk_size}")
            self.chunk_size = min(value, _MAX_CHUNK_SIZE)
        else:
            if value in self._streams:
                st = self._streams[value]
                if st.parts is not None:
                    self._partial_bytes -= st.received
                    st.parts = None
                    st.block = None
                    st.received = 0
