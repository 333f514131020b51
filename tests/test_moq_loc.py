"""LOC timestamps (draft-ietf-moq-loc, "Timestamp", "Timescale"): the Timestamp property is in
units of the object's Timescale property, or microseconds when it has none; a frame carries its
timestamps in its track's timescale (the catalog's), whatever units the publisher chose."""

from rtmpq.media.frames import Frame
from rtmpq.moq.loc import EXT_DTS_OFFSET, EXT_TIMESCALE, EXT_TIMESTAMP, frame_extensions, object_to_frame


def test_a_timestamp_in_the_objects_timescale_is_read_in_the_tracks():
    ext = {EXT_TIMESCALE: 90000, EXT_TIMESTAMP: 180000, EXT_DTS_OFFSET: 9000}  # pts 2 s, dts 1.9 s
    frame = object_to_frame("video", 0, 0, b"x", ext, 1000)
    assert (frame.dts, frame.pts) == (1900, 2000)


def test_a_timestamp_without_timescale_is_microseconds():
    frame = object_to_frame("audio", 0, 0, b"x", {EXT_TIMESTAMP: 1_700_000_000_123_456}, 1000)
    assert frame.pts == frame.dts == 1_700_000_000_123


def test_what_rtmpq_writes_reads_back_the_same():
    for timescale in (1000, 48000, 90000):
        sent = Frame("video", 3, 1, dts=123456, pts=126456, keyframe=False, payload=b"x", received_ns=5_000_000)
        got = object_to_frame("video", 3, 1, b"x", frame_extensions(sent, timescale), timescale)
        assert got == sent


def test_rtmpq_private_properties_are_in_the_first_come_first_served_range_written_by_hand():
    """MoQT draft 16 (IANA, "MOQ Extension Headers") keeps types below 16384 for standards; LOC
    registers its properties there. rtmpq's own (dts offset, flags, ingest time) used 0x7A0..0x7A4,
    in the standards range (found by the draft 16 audit). A keyframe at pts 40 ms, dts 0, timescale
    1000, received at 5 us: Timescale 0x08 = 1000, Timestamp 0x10 = 40, then the private types,
    delta-encoded from 0x10 (a 4-byte varint for the first)."""
    from rtmpq.moq import wire
    from rtmpq.moq.loc import EXT_FLAGS, EXT_RECEIVED_US

    frame = Frame("video", 0, 0, dts=0, pts=40, keyframe=True, payload=b"x", received_ns=5_000)
    block = wire.encode_kvps(frame_extensions(frame, 1000), with_count=False)
    assert block == (b"\x08\x43\xe8" + b"\x08\x28"  # Timescale 1000, Timestamp 40
                     + b"\x80\x00\x47\x90" + b"\x28"  # 0x47A0 (pts - dts) = 40
                     + b"\x02\x01"  # 0x47A2 (flags) = keyframe
                     + b"\x02\x05")  # 0x47A4 (received, us) = 5
    assert all(t >= 0x4000 and t % 2 == 0 for t in (EXT_DTS_OFFSET, EXT_FLAGS, EXT_RECEIVED_US))
