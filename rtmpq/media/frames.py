"""The unit everything downstream of ingest moves: one frame (MoQ object) of one track; and what a
subscription says of a broadcast that is not there (NotLive)."""

from dataclasses import dataclass

VIDEO = "video"
AUDIO = "audio"
DATA = "data"

# Timestamps of source tracks are integers in this timescale (RTMP carries milliseconds).
SOURCE_TIMESCALE = 1000


# Not frozen, though nothing may change a frame once made (every reader of a broadcast gets the
# same object): a frozen dataclass sets each field through object.__setattr__, which made building
# a frame a quarter of the ingest's per-frame work after the chunk reader (bench/frame_path.py).
@dataclass(slots=True)
class Frame:
    """One access unit of one track: never assigned to once made (readers share it).

    - ``group``: group sequence number (a GoP; video groups start at an IDR, audio groups follow
      video group boundaries). ``index``: object id inside the group, from 0.
    - ``dts``/``pts``: unwrapped 64-bit integers in the track's timescale (see the catalog),
      ``0 <= dts <= pts`` (the demuxer and MoQ's reading make it so: fMP4 and LOC carry no less).
    - ``payload``: AVC/HEVC: NAL units each prefixed by a big-endian length of the catalog's
      ``nal_length_size`` bytes (as in the FLV tag; not Annex-B); AV1: the OBUs of one temporal
      unit; AAC/Opus: one raw packet; data: the AMF0 bytes of the data message. Usually a memoryview into the message body: hold
      on to it, never write to it.
    - ``received_ns``: time.time_ns() when ingest received the message, for latency figures.
    """

    track: str
    group: int
    index: int
    dts: int
    pts: int
    keyframe: bool
    payload: memoryview | bytes
    received_ns: int = 0

    @property
    def size(self) -> int:
        return len(self.payload)


@dataclass(frozen=True, slots=True)
class NotLive:
    """The upstream said it has no broadcast of this name (a relay's DOES_NOT_EXIST to the
    catalog's SUBSCRIBE): it is not live (yet). The subscription goes on waiting for it. Handed
    on only to a consumer that asks for it (moq/client.py subscribe_broadcast's ``say_not_live``):
    the edge, which answers a player at once instead of holding its request for media that may
    never come."""

    broadcast: str
