"""The FLV file format: a writer for recordings and a reader for tests and tools."""

import struct
from collections.abc import Iterator
from pathlib import Path

from ..errors import RemoteProtocolError

FLV_HEADER_SIZE = 9
TAG_HEADER_SIZE = 11


class FlvWriter:
    """Writes the FLV header, then each tag with its 11-byte header and PreviousTagSize."""

    def __init__(self, fileobj, *, has_audio: bool = True, has_video: bool = True) -> None:
        self._f = fileobj
        flags = (0x04 if has_audio else 0) | (0x01 if has_video else 0)
        fileobj.write(b"FLV\x01" + bytes((flags,)) + struct.pack(">I", FLV_HEADER_SIZE) + bytes(4))

    def write_tag(self, tag_type: int, timestamp: int, body, prefix: bytes = b"") -> None:
        for piece in tag_pieces(tag_type, timestamp, body, prefix):
            self._f.write(piece)


def tag_pieces(tag_type: int, timestamp: int, body, prefix: bytes = b"") -> tuple:
    """One FLV tag whose body is ``prefix + body``, as three pieces to write one after the other:
    its 11-byte header with ``prefix``, ``body`` itself (not copied), its PreviousTagSize. (The
    ingest hands over a media message's FLV tag header apart from its payload.)"""
    size = len(prefix) + len(body)
    if size > 0xFFFFFF:
        raise ValueError(f"FLV tag of {size} bytes does not fit the 24-bit size field")
    ts = timestamp & 0xFFFFFFFF
    header = bytes((tag_type,)) + size.to_bytes(3, "big") + (ts & 0xFFFFFF).to_bytes(3, "big") + bytes((ts >> 24,)) + bytes(3)
    return header + prefix, body, struct.pack(">I", TAG_HEADER_SIZE + size)


def read_flv_tags(source: str | Path | bytes) -> Iterator[tuple[int, int, bytes]]:
    """(tag type, 32-bit timestamp, body) of every tag of an FLV file or byte string."""
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    if data[:3] != b"FLV" or len(data) < FLV_HEADER_SIZE + 4:
        raise RemoteProtocolError("not an FLV file")
    pos = int.from_bytes(data[5:9], "big") + 4
    while pos + TAG_HEADER_SIZE <= len(data):
        tag_type = data[pos] & 0x1F
        size = int.from_bytes(data[pos + 1 : pos + 4], "big")
        ts = int.from_bytes(data[pos + 4 : pos + 7], "big") | (data[pos + 7] << 24)
        start = pos + TAG_HEADER_SIZE
        if start + size > len(data):
            raise RemoteProtocolError(f"FLV tag at byte {pos} runs past the end of the file")
        yield tag_type, ts, data[start : start + size]
        pos = start + size + 4
