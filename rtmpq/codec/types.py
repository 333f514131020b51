"""Values shared by the compiled and the pure-Python codecs (both build these exact types)."""

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RtmpMessage:
    """One reassembled RTMP message."""

    csid: int  # chunk stream id it arrived on
    stream_id: int  # message stream id
    type_id: int  # message type id (see rtmpq.rtmp.messages.MessageType)
    timestamp: int  # absolute timestamp in ms, mod 2**32
    body: memoryview | bytes
