"""Frames as MoQ objects, in the manner of LOC (specs/draft-ietf-moq-loc.md).

One codec frame per object; the payload is the frame exactly as the catalog describes it and as
the publisher sent it (AVC and HEVC: NAL units with the length prefix the avcC/hvcC declares; AV1:
the temporal unit's OBUs, low-overhead format, as av1C describes; AAC and Opus: one raw packet).
The decoder configuration is in the catalog (``initDataList``), never repeated in objects. Timing
travels in object extension headers:

- LOC Timestamp (0x10): the presentation time, in units of LOC Timescale (0x08) per second. We send
  the track's own timescale (1000 for RTMP sources), so no rounding ever happens. An object with no
  Timescale has its Timestamp in microseconds (LOC: wall-clock time since the Unix epoch).
- rtmpq private extensions (unknown extension types are ignored by other peers), numbered from
  16384 up, the range MoQT draft 16 (IANA, "MOQ Extension Headers") leaves to first-come use
  (below it is for standards, LOC's among them): ``EXT_DTS_OFFSET`` (pts - dts, >= 0; B-frames), ``EXT_FLAGS`` (bit 0: keyframe),
  ``EXT_RECEIVED_US`` (when ingest received the frame, microseconds since the epoch, for latency).
"""

from ..media.frames import Frame

EXT_TIMESCALE = 0x08
EXT_TIMESTAMP = 0x10
EXT_DTS_OFFSET = 0x47A0  # even types: varint values
EXT_FLAGS = 0x47A2
EXT_RECEIVED_US = 0x47A4
FLAG_KEYFRAME = 0x1
NO_TIMESCALE_UNITS = 1_000_000  # LOC: Timestamp units per second of an object without Timescale

CATALOG_TRACK = "catalog"
# A node's (a transcoder's) list of the tracks it adds to a broadcast: an MSF catalog of those tracks
# alone, which a relay merges into the broadcast's catalog (rtmpq's own; not listed in catalogs).
RENDITIONS_TRACK = "rtmpq.renditions"


def frame_extensions(frame: Frame, timescale: int) -> dict[int, int]:
    pts = frame.pts
    ext = {
        EXT_TIMESTAMP: pts if pts > 0 else 0,  # not max(): a builtin call per frame (issue 12)
        EXT_TIMESCALE: timescale,
        EXT_FLAGS: FLAG_KEYFRAME if frame.keyframe else 0,
    }
    if pts != frame.dts:
        ext[EXT_DTS_OFFSET] = pts - frame.dts
    if frame.received_ns:
        ext[EXT_RECEIVED_US] = frame.received_ns // 1000
    return ext


def object_to_frame(track: str, group: int, object_id: int, payload, extensions: dict,
                    timescale: int | None = None) -> Frame:
    """The frame in an object, its dts/pts in ``timescale`` (the catalog's, for the track) units per
    second; with None, in the object's own units."""
    pts = int(extensions.get(EXT_TIMESTAMP, 0))
    dts = pts - int(extensions.get(EXT_DTS_OFFSET, 0))  # rtmpq's offset: in the Timestamp's units
    if dts < 0:  # an offset larger than the time it is taken from: no frame is before 0
        dts = 0
    if timescale is not None:
        units = int(extensions.get(EXT_TIMESCALE, NO_TIMESCALE_UNITS))
        if units > 0 and units != timescale:  # 0 is meaningless: taken as already in track units
            pts, dts = pts * timescale // units, dts * timescale // units
    keyframe = bool(int(extensions.get(EXT_FLAGS, 1 if object_id == 0 else 0)) & FLAG_KEYFRAME)
    received_ns = int(extensions.get(EXT_RECEIVED_US, 0)) * 1000
    return Frame(track, group, object_id, dts, pts, keyframe, payload, received_ns)
