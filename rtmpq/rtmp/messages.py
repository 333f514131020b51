"""RTMP message types and the bodies of protocol control messages (RTMP 1.0 sections 5.4, 6.2, 7.1)."""

import struct
from enum import IntEnum

from ..errors import RemoteProtocolError


class MessageType(IntEnum):
    SET_CHUNK_SIZE = 1
    ABORT = 2
    ACKNOWLEDGEMENT = 3
    USER_CONTROL = 4
    WINDOW_ACK_SIZE = 5
    SET_PEER_BANDWIDTH = 6
    AUDIO = 8
    VIDEO = 9
    DATA_AMF3 = 15
    SHARED_OBJECT_AMF3 = 16
    COMMAND_AMF3 = 17
    DATA_AMF0 = 18
    SHARED_OBJECT_AMF0 = 19
    COMMAND_AMF0 = 20
    AGGREGATE = 22


class UserControlEvent(IntEnum):
    STREAM_BEGIN = 0
    STREAM_EOF = 1
    STREAM_DRY = 2
    SET_BUFFER_LENGTH = 3
    STREAM_IS_RECORDED = 4
    PING_REQUEST = 6
    PING_RESPONSE = 7


class PeerBandwidthLimit(IntEnum):
    HARD = 0
    SOFT = 1
    DYNAMIC = 2


# Chunk stream ids the server sends on (the ones FFmpeg and nginx-rtmp use).
CSID_PROTOCOL = 2
CSID_COMMAND = 3
CSID_STREAM_COMMAND = 5


def u32(value: int) -> bytes:
    return struct.pack(">I", value & 0xFFFFFFFF)


def set_chunk_size_body(size: int) -> bytes:
    return struct.pack(">I", size & 0x7FFFFFFF)


def window_ack_size_body(size: int) -> bytes:
    return u32(size)


def set_peer_bandwidth_body(size: int, limit: PeerBandwidthLimit) -> bytes:
    return u32(size) + bytes((int(limit),))


def user_control_body(event: UserControlEvent, *args: int) -> bytes:
    return struct.pack(">H", int(event)) + b"".join(u32(a) for a in args)


def parse_u32(body, what: str) -> int:
    if len(body) < 4:
        raise RemoteProtocolError(f"{what}: body of {len(body)} bytes, need 4")
    return struct.unpack_from(">I", body)[0]


def parse_user_control(body) -> tuple[int, bytes]:
    """(event type, event data); unknown event types are returned as plain ints."""
    if len(body) < 2:
        raise RemoteProtocolError(f"user control message of {len(body)} bytes")
    return struct.unpack_from(">H", body)[0], bytes(body[2:])


def split_aggregate(body) -> list[tuple[int, int, memoryview]]:
    """Split an Aggregate message (a run of FLV tags) into (type, timestamp, body view) triples.

    Timestamps are those written inside the tags; the caller rebases them on the aggregate's own
    timestamp (the first tag's timestamp maps to the message timestamp).
    """
    view = memoryview(body)
    out = []
    pos = 0
    while pos < len(view):
        if len(view) - pos < 11:
            raise RemoteProtocolError("aggregate message: truncated tag header")
        tag_type = view[pos] & 0x1F
        size = int.from_bytes(view[pos + 1 : pos + 4], "big")
        ts = int.from_bytes(view[pos + 4 : pos + 7], "big") | (view[pos + 7] << 24)
        start = pos + 11
        end = start + size
        if end + 4 > len(view) and end != len(view):
            raise RemoteProtocolError("aggregate message: tag runs past the end")
        out.append((tag_type, ts, view[start:end]))
        pos = end + 4  # PreviousTagSize; the last one may be missing
    return out
