"""RTMP chunk stream reassembly (pure-Python reference of ext/chunk.pxi).

Bytes are received into blocks the reader owns (``get_buffer``/``buffer_updated``, the
asyncio.BufferedProtocol contract). A block is never resized or reused: when it is full, a fresh
block takes over the unparsed tail, so views handed out stay valid. While one chunk outgrows its
block (Set Chunk Size up to 0xFFFFFF) each fresh block doubles, so a chunk of n bytes is moved
O(n) bytes in all (``bytes_moved`` counts them); an oversized block is left as soon as the tail
fits a normal one. A message that fits in one chunk is returned as a view into its block when it
fills at least 1/MAX_PIN_FACTOR of it, else copied out (a small view would pin the whole block);
a message of several chunks is joined once from the views of its chunk payloads (no
preallocation by declared length). If those views, spread thin, would keep more than
MAX_PIN_FACTOR times their bytes alive in blocks the reader has left, they are first gathered
into one buffer of the message's own.

Choices where real clients and the spec differ (specs/rtmp-notes.md, specs/bad-inputs.md):
- fmt 1 on a csid never seen (librtmp) is accepted: the message stream id is taken from the most
  recent message of the connection. fmt 2 or 3 on a csid never seen carry no length, so nothing
  safe can be parsed: RemoteProtocolError.
- A header of fmt 0, 1 or 2 while a message is incomplete on that csid is refused (it would change
  the length of a message in flight: CVE-2016-10191).
- Extended timestamps: fmt-3 chunks of a csid whose header had one may or may not repeat the 4
  bytes (FFmpeg/OBS do, old librtmp does not). The reader peeks and consumes them only when they
  equal the extended value (as SRS does).
- After fmt 0, the "delta" a following fmt-3 message adds is the fmt-0 timestamp itself (what the
  spec's wording and FFmpeg's sender imply).

Two ways to read messages: ``next_message()`` returns one ``RtmpMessage`` at a time;
``read_messages()`` (one call per socket read, the ingest's fast path) returns every complete
message received so far as plain tuples ``(csid, stream_id, type_id, timestamp, body, codec,
frame_type, cts, header)``, with the FLV tag header of the common media messages already read and
split off: for a single-track coded frame of AVC/HEVC video (legacy or E-RTMP) or AAC/Opus audio,
``codec`` is its FourCC, ``frame_type`` the FLV frame type (0 for audio), ``cts`` the signed
composition offset (ms), ``header`` the bytes of the tag header and ``body`` the codec payload
alone (``header + body`` is the message), so the payload is the one copy (or view) made of those
bytes and a frame holds no view of its own on top; for every other message (commands, control,
data, sequence headers, other codecs, multitrack, truncated headers) ``body`` is the whole
message, ``codec`` and ``header`` are None and the rest 0: the caller parses those with
``parse_*_tag``, which raises on a bad header. A protocol error after some complete messages is
raised by the next call, so the messages before it are handled first. ``dispatch(sinks)`` (the
shared reader's fast path) reads the same tuples but hands each split media message of a stream
with a sink straight to it, returning the first other message; ``recv_from(fd)`` receives from a
socket into the buffer itself.
"""

import os

from ..errors import LimitExceeded, RemoteProtocolError
from .sentinel import NEED_DATA
from .types import RtmpMessage

__all__ = ["ChunkReader"]

_AVC, _HEVC, _AAC, _OPUS = "avc1", "hvc1", "mp4a", "Opus"
_VIDEO_FOURCC = {b"avc1": _AVC, b"hvc1": _HEVC}
_AUDIO_FOURCC = {b"mp4a": _AAC, b"Opus": _OPUS}


def _media_header(type_id: int, body, n: int) -> tuple | None:
    """(codec, frame_type, cts, payload_offset) of a single-track coded AVC/HEVC/AAC/Opus frame
    whose first ``n`` bytes are in ``body``, else None (the caller parses the tag itself). Agrees
    with parse_video_tag/parse_audio_tag."""
    if n < 2:
        return None
    b0 = body[0]
    if type_id == 9:
        frame_type = (b0 >> 4) & 0x07
        if frame_type == 5:
            return None
        if not b0 & 0x80:  # legacy: CodecID 7 (AVC) or 12 (HEVC), AVCPacketType 1
            codec_id = b0 & 0x0F
            if (codec_id != 7 and codec_id != 12) or n < 5 or body[1] != 1:
                return None
            cts = (body[2] << 16) | (body[3] << 8) | body[4]
            return (_AVC if codec_id == 7 else _HEVC), frame_type, cts - 0x1000000 if cts & 0x800000 else cts, 5
        packet_type = b0 & 0x0F
        if (packet_type != 1 and packet_type != 3) or n < 5:
            return None
        codec = _VIDEO_FOURCC.get(bytes(body[1:5]))
        if codec is None:
            return None
        if packet_type == 3:  # CodedFramesX: no composition offset
            return codec, frame_type, 0, 5
        if n < 8:
            return None
        cts = (body[5] << 16) | (body[6] << 8) | body[7]
        return codec, frame_type, cts - 0x1000000 if cts & 0x800000 else cts, 8
    if type_id == 8:
        sound_format = b0 >> 4
        if sound_format == 10:
            return (_AAC, 0, 0, 2) if body[1] == 1 else None
        if sound_format != 9 or b0 & 0x0F != 1 or n < 5:
            return None
        codec = _AUDIO_FOURCC.get(bytes(body[1:5]))
        return None if codec is None else (codec, 0, 0, 5)
    return None

# Largest message we reassemble (a 4K IDR at high bitrate is ~2 MB; nginx caps at 1 MiB).
MAX_MESSAGE_SIZE = 8 * 1024 * 1024
# Bytes one connection may hold in incomplete messages across all its chunk streams.
MAX_PARTIAL_BYTES = 16 * 1024 * 1024
# Chunk streams (csids) one connection may use (nginx-rtmp's max_streams is 32).
MAX_CHUNK_STREAMS = 32
# Smallest Set Chunk Size accepted; smaller ones multiply per-chunk work (Red5#475, SRS#541).
MIN_CHUNK_SIZE = 128
# Chunk sizes above this are treated as this (the 24-bit message length bounds any message).
MAX_CHUNK_SIZE = 0xFFFFFF
# Receive block size, and the free space below which get_buffer starts a fresh block. Every
# connection holds one block, so this is most of a publisher's memory besides its cached media
# (docs/benchmarks.md: 256 KiB cost 0.2 MB per publisher); a burst larger than the free space
# takes several reads (rtmp/reader.py reads again at once while reads fill the buffer).
BLOCK_SIZE = 64 * 1024
MIN_FREE = 16 * 1024
# A single-chunk body smaller than 1/MAX_PIN_FACTOR of its receive block is copied out rather
# than handed on as a view, so a body held alive pins at most this many times its own size.
MAX_PIN_FACTOR = 4

_HEADER_SIZES = (11, 7, 3, 0)


class _ChunkStream:
    __slots__ = ("timestamp", "delta", "length", "type_id", "stream_id", "extended", "ext_value",
                 "parts", "received", "block", "pinned")

    def __init__(self) -> None:
        self.timestamp = 0
        self.delta = 0
        self.length = 0
        self.type_id = 0
        self.stream_id = 0
        self.extended = False
        self.ext_value = 0
        self.parts = None  # list of payload views while a message is incomplete, else None
        self.received = 0
        self.block = None  # the block of the newest part
        self.pinned = 0  # bytes of blocks left behind that hold earlier parts


class ChunkReader:
    def __init__(self, *, max_message_size: int = MAX_MESSAGE_SIZE, max_partial_bytes: int = MAX_PARTIAL_BYTES,
                 max_chunk_streams: int = MAX_CHUNK_STREAMS, min_chunk_size: int = MIN_CHUNK_SIZE) -> None:
        self.max_message_size = max_message_size
        self.max_partial_bytes = max_partial_bytes
        self.max_chunk_streams = max_chunk_streams
        self.min_chunk_size = min_chunk_size
        self.chunk_size = 128
        self.bytes_received = 0
        self.chunks_parsed = 0
        self.bytes_moved = 0  # unparsed bytes copied from a full block into a fresh one
        self._block = bytearray(BLOCK_SIZE)
        self._start = 0  # first unparsed byte
        self._end = 0  # end of received bytes
        self._streams: dict[int, _ChunkStream] = {}
        self._partial_bytes = 0
        self._last_stream_id = 0
        self._error = None  # raised again by read_messages once it was deferred
        self._media = None  # (codec, frame_type, cts, header bytes) of the message split last
        # the header of the message _next_chunk returned last
        self._csid = self._type_id = self._timestamp = 0

    # -- receiving ------------------------------------------------------------------------------
    def get_buffer(self, sizehint: int = -1) -> memoryview:
        size = len(self._block)
        tail = self._end - self._start
        if size - self._end < MIN_FREE or (size > BLOCK_SIZE and 2 * tail + MIN_FREE <= BLOCK_SIZE):
            # a fresh block takes the unparsed tail: twice the tail while one chunk outgrows its
            # block (moves stay linear), back to BLOCK_SIZE once the tail is small
            block = bytearray(max(BLOCK_SIZE, 2 * tail + MIN_FREE))
            block[:tail] = memoryview(self._block)[self._start : self._end]
            self.bytes_moved += tail
            self._block = block
            self._start, self._end = 0, tail
        return memoryview(self._block)[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        self._end += nbytes
        self.bytes_received += nbytes

    def recv_from(self, fd: int, max_reads: int = 1) -> int:
        """Receive from the non-blocking socket ``fd`` into the buffer, reading again (up to
        ``max_reads`` reads) while each read fills the free space. The bytes received; 0 when the
        peer closed before any byte came, -1 when there was nothing to read. Other errors of the
        read are raised (OSError). One call per ready socket instead of get_buffer, recv_into and
        buffer_updated: the shared reader's fast path (rtmpq/rtmp/reader.py)."""
        total = 0
        for _ in range(max_reads):
            buf = self.get_buffer(-1)
            try:
                n = os.readv(fd, [buf])
            except (BlockingIOError, InterruptedError):
                break
            if not n:
                return total  # 0: the peer closed; after bytes, the next call sees the EOF
            self.buffer_updated(n)
            total += n
            if n < len(buf):
                break
        return total if total else -1

    def receive_data(self, data) -> None:
        data = memoryview(data)
        while len(data):
            buf = self.get_buffer(len(data))
            n = min(len(buf), len(data))
            buf[:n] = data[:n]
            self.buffer_updated(n)
            data = data[n:]

    # -- parsing --------------------------------------------------------------------------------
    def next_message(self):
        while True:
            body = self._next_chunk(False)
            if body is NEED_DATA:
                return body
            if body is not None:
                return RtmpMessage(self._csid, self._last_stream_id, self._type_id, self._timestamp, body)

    def read_messages(self) -> list:
        """Every complete message received so far, as tuples (see the module docstring)."""
        if self._error is not None:
            raise self._error
        out = []
        try:
            while True:
                body = self._next_chunk(True)
                if body is NEED_DATA:
                    return out
                if body is not None:
                    media = self._media
                    if media is None:
                        out.append((self._csid, self._last_stream_id, self._type_id, self._timestamp, body, None, 0, 0,
                                    None))
                    else:
                        out.append((self._csid, self._last_stream_id, self._type_id, self._timestamp, body, *media))
        except RemoteProtocolError as exc:
            if not out:
                raise
            self._error = exc
            return out

    def dispatch(self, sinks: dict):
        """Hand the media messages received so far to their stream's sink, up to the first
        message that is not one: that message is returned (a ``read_messages`` tuple; the bytes
        after it stay unparsed), None when every complete message was handed on. A media message
        is one ``read_messages`` splits (``codec`` not None) whose stream id has a sink in
        ``sinks``; it is handed as ``sink(type_id, timestamp, body, codec, frame_type, cts,
        header)``. Stopping at the first other message keeps every message of a connection in
        order (a command that ends a publish is handled before the media after it). A protocol
        error is raised when it is found, after the media before it were handed on, and by every
        call after."""
        if self._error is not None:
            raise self._error
        while True:
            try:
                body = self._next_chunk(True)
            except RemoteProtocolError as exc:
                self._error = exc  # the stream is broken from here on: every later call says so
                raise
            if body is NEED_DATA:
                return None
            if body is None:
                continue
            media = self._media
            if media is not None:
                sink = sinks.get(self._last_stream_id)
                if sink is not None:
                    sink(self._type_id, self._timestamp, body, *media)
                    continue
                return (self._csid, self._last_stream_id, self._type_id, self._timestamp, body, *media)
            return (self._csid, self._last_stream_id, self._type_id, self._timestamp, body, None, 0, 0, None)

    def _next_chunk(self, split: bool):
        """Parse one chunk; returns a message body (its header in _csid, _last_stream_id, _type_id,
        _timestamp), NEED_DATA, or None (chunk consumed, no message yet). With ``split``, a common
        media message's FLV tag header is split off (read_messages): the body is its payload and
        _media holds the header."""
        buf = self._block
        pos = self._start
        avail = self._end - pos
        if avail < 1:
            return NEED_DATA
        b0 = buf[pos]
        fmt = b0 >> 6
        csid = b0 & 0x3F
        hdr = 1
        if csid == 0:
            if avail < 2:
                return NEED_DATA
            csid = buf[pos + 1] + 64
            hdr = 2
        elif csid == 1:
            if avail < 3:
                return NEED_DATA
            csid = buf[pos + 1] + (buf[pos + 2] << 8) + 64
            hdr = 3
        mh = _HEADER_SIZES[fmt]
        if avail < hdr + mh:
            return NEED_DATA
        st = self._streams.get(csid)
        if st is None:
            if fmt >= 2:
                raise RemoteProtocolError(f"chunk of fmt {fmt} opens chunk stream {csid} (no header to reuse)")
            if len(self._streams) >= self.max_chunk_streams:
                raise LimitExceeded("max_chunk_streams", len(self._streams) + 1, self.max_chunk_streams)
            st = _ChunkStream()
            st.stream_id = self._last_stream_id
            new_stream = True
        else:
            new_stream = False
        if fmt != 3 and st.parts is not None:
            raise RemoteProtocolError(f"fmt {fmt} header on chunk stream {csid} while a message is incomplete")
        p = pos + hdr
        # header fields, committed to ``st`` only once the whole chunk is here
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
                    stream_id = buf[p + 7] | (buf[p + 8] << 8) | (buf[p + 9] << 16) | (buf[p + 10] << 24)
            p += mh
            extended = field == 0xFFFFFF
            if extended:
                if self._end - p < 4:
                    return NEED_DATA
                field = (buf[p] << 24) | (buf[p + 1] << 16) | (buf[p + 2] << 8) | buf[p + 3]
                ext_value = field
                p += 4
            if fmt == 0:
                timestamp = field
            else:
                timestamp = (timestamp + field) & 0xFFFFFFFF
            delta = field
        else:
            if extended and self._end - p >= 4:
                peek = (buf[p] << 24) | (buf[p + 1] << 16) | (buf[p + 2] << 8) | buf[p + 3]
                if peek == ext_value:
                    p += 4
            elif extended:
                return NEED_DATA  # cannot tell yet whether the 4 bytes are repeated
            if st.parts is None:  # fmt 3 starting a new message: same header, same delta again
                timestamp = (timestamp + delta) & 0xFFFFFFFF
        received = st.received if st.parts is not None else 0
        if fmt <= 1 and length > self.max_message_size:
            raise LimitExceeded("max_message_size", length, self.max_message_size)
        n = min(self.chunk_size, length - received)
        if self._end - p < n:
            return NEED_DATA
        # the whole chunk is here: commit
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
        payload = memoryview(buf)[p : p + n]
        if received + n < length:
            if st.parts is None:
                st.parts = [payload]
                st.block = buf
                st.pinned = 0
            else:
                if st.block is not buf:  # earlier parts stay in a block the reader has left
                    st.pinned += len(st.block)
                    st.block = buf
                    if st.pinned > MAX_PIN_FACTOR * received:
                        _gather(st)
                st.parts.append(payload)
            st.received = received + n
            self._partial_bytes += n
            if self._partial_bytes > self.max_partial_bytes:
                raise LimitExceeded("max_partial_bytes", self._partial_bytes, self.max_partial_bytes)
            return None
        media = None
        if st.parts is None:
            if split and (type_id == 8 or type_id == 9):
                media = _media_header(type_id, payload, n)
            if media is not None:
                off = media[3]
                media = (media[0], media[1], media[2], bytes(payload[:off]))
                payload = payload[off:]
            body = payload if n * MAX_PIN_FACTOR >= len(buf) else bytes(payload)
        else:
            parts = st.parts
            parts.append(payload)
            if split and (type_id == 8 or type_id == 9):
                first = parts[0]
                media = _media_header(type_id, first, min(length, len(first)))
                if media is not None:
                    off = media[3]
                    media = (media[0], media[1], media[2], bytes(first[:off]))
                    parts[0] = memoryview(first)[off:]
            body = b"".join(parts)
            self._partial_bytes -= received
            st.parts = st.block = None
            st.received = 0
        self._media = media
        self._last_stream_id = stream_id
        if type_id == 1 or type_id == 2:
            self._control(type_id, body)
        self._csid = csid
        self._type_id = type_id
        self._timestamp = timestamp
        return body

    def _control(self, type_id: int, body) -> None:
        if len(body) < 4:
            raise RemoteProtocolError(f"control message {type_id} of {len(body)} bytes, need 4")
        value = (body[0] << 24) | (body[1] << 16) | (body[2] << 8) | body[3]
        if type_id == 1:
            if value == 0 or value & 0x80000000:
                raise RemoteProtocolError(f"invalid chunk size {value:#x}")
            if value < self.min_chunk_size:
                raise RemoteProtocolError(f"chunk size {value} is below min_chunk_size {self.min_chunk_size}")
            self.chunk_size = min(value, MAX_CHUNK_SIZE)
        else:
            st = self._streams.get(value)
            if st is not None and st.parts is not None:
                self._partial_bytes -= st.received
                st.parts = st.block = None
                st.received = 0


def _gather(st: _ChunkStream) -> None:
    """Copy the parts of an incomplete message into one buffer of its own (appended to, so each
    byte is gathered once), freeing the blocks they pinned."""
    parts = st.parts
    if type(parts[0]) is bytearray:
        acc = parts[0]
        parts = parts[1:]
    else:
        acc = bytearray()
    for part in parts:
        acc += part
    st.parts = [acc]
    st.pinned = 0
