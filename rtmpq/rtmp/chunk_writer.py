"""RTMP chunk stream writer: the server's sender, and the tests' stream synthesizer.

Header compression as real senders do it: fmt 0 for the first message of a chunk stream (and
whenever the message stream id changes or time goes backwards), fmt 1 when length or type change,
fmt 2 when only the delta changes, fmt 3 when the whole header repeats. Continuation chunks are
fmt 3; they repeat the 4-byte extended timestamp when ``repeat_extended_timestamp`` (FFmpeg, OBS)
and omit it otherwise (old librtmp, nginx-rtmp).
"""

import struct


class _Last:
    __slots__ = ("timestamp", "delta", "length", "type_id", "stream_id")

    def __init__(self, timestamp, delta, length, type_id, stream_id):
        self.timestamp = timestamp
        self.delta = delta
        self.length = length
        self.type_id = type_id
        self.stream_id = stream_id


def _basic_header(fmt: int, csid: int) -> bytes:
    if 2 <= csid <= 63:
        return bytes(((fmt << 6) | csid,))
    if 64 <= csid <= 319:
        return bytes((fmt << 6, csid - 64))
    if 64 <= csid <= 65599:
        v = csid - 64
        return bytes(((fmt << 6) | 1, v & 0xFF, v >> 8))
    raise ValueError(f"chunk stream id {csid} out of range 2..65599")


class ChunkWriter:
    def __init__(self, chunk_size: int = 128, *, repeat_extended_timestamp: bool = True) -> None:
        self.chunk_size = chunk_size
        self.repeat_extended_timestamp = repeat_extended_timestamp
        self._last: dict[int, _Last] = {}

    def write(self, csid: int, timestamp: int, type_id: int, stream_id: int, body, *, fmt: int | None = None) -> bytes:
        body = bytes(body)
        timestamp &= 0xFFFFFFFF
        length = len(body)
        last = self._last.get(csid)
        if fmt is None:
            if last is None or last.stream_id != stream_id or ((timestamp - last.timestamp) & 0xFFFFFFFF) >= 0x80000000:
                fmt = 0
            elif last.length != length or last.type_id != type_id:
                fmt = 1
            elif (timestamp - last.timestamp) & 0xFFFFFFFF != last.delta:
                fmt = 2
            else:
                fmt = 3
        if fmt == 0:
            field = timestamp
        else:
            field = (timestamp - (last.timestamp if last else 0)) & 0xFFFFFFFF
        if fmt == 3 and last is not None:
            field = last.delta
        extended = field >= 0xFFFFFF
        header_field = 0xFFFFFF if extended else field
        out = bytearray(_basic_header(fmt, csid))
        if fmt <= 2:
            out += header_field.to_bytes(3, "big")
        if fmt <= 1:
            out += length.to_bytes(3, "big") + bytes((type_id,))
        if fmt == 0:
            out += struct.pack("<I", stream_id)
        ext = field.to_bytes(4, "big") if extended else b""
        out += ext
        delta = field if fmt != 0 else timestamp
        self._last[csid] = _Last(timestamp, delta, length, type_id, stream_id)
        pos = 0
        first = True
        while first or pos < length:
            if not first:
                out += _basic_header(3, csid)
                if extended and self.repeat_extended_timestamp:
                    out += ext
            n = min(self.chunk_size, length - pos)
            out += body[pos : pos + n]
            pos += n
            first = False
        return bytes(out)
