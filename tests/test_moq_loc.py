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
