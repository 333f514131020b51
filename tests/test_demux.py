"""Recorded FLV tags through the session and the demuxer: groups, catalog, timestamp wrap."""

import logging
import subprocess

import pytest

from rtmpq.codec import amf0_encode
from rtmpq.media.catalog import Catalog
from rtmpq.media.demux import BroadcastDemuxer, TimestampUnwrapper
from rtmpq.media.flv import read_flv_tags
from rtmpq.rtmp.session import MediaMessage, RtmpServerSession

from .conftest import need
from .publishers import AUDIO_ENCODE, VIDEO_ENCODE, probe_packets
from .rtmp_client import InMemoryPublisher


@pytest.fixture(scope="module")
def sample_flv(tmp_path_factory):
    need("ffmpeg")
    path = tmp_path_factory.mktemp("flv") / "sample.flv"
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30",
         "-f", "lavfi", "-i", "sine", "-t", "4.5", *VIDEO_ENCODE, *AUDIO_ENCODE, "-f", "flv", str(path)],
        check=True,
    )
    return path


def publish_through_session(tags, offset: int, chunk_size: int, wrap: int = 2**32):
    """Publish the tags with every timestamp shifted by ``offset`` (mod ``wrap``); demux what arrives."""
    session = RtmpServerSession()
    client = InMemoryPublisher(session, chunk_size=chunk_size)
    stream_id = client.connect_and_publish("wrap")
    client.events()
    session.accept_publish(stream_id)
    demuxer = BroadcastDemuxer("live/wrap")
    out = []
    for tag_type, ts, body in tags:
        csid = {8: 4, 9: 6, 18: 5}[tag_type]
        client.send(csid, (ts + offset) % wrap, tag_type, stream_id, body)
        for ev in client.events():
            assert isinstance(ev, MediaMessage)
            out += demuxer.message(ev.type_id, ev.timestamp, ev.body)
    return demuxer, out


@pytest.mark.parametrize("offset,chunk_size", [
    (0, 128),
    (0xFFFFFF - 1500, 128),       # crosses the 24-bit field: extended timestamps from then on
    (2**32 - 1500, 4096),          # crosses 2**32: the 32-bit timestamp wraps
])
def test_frames_keep_their_timing_across_extended_and_wrapping_timestamps(sample_flv, offset, chunk_size):
    tags = list(read_flv_tags(str(sample_flv)))
    demuxer, out = publish_through_session(tags, offset, chunk_size)
    frames = [f for f in out if not isinstance(f, Catalog)]
    catalogs = [c for c in out if isinstance(c, Catalog)]
    reference = probe_packets(str(sample_flv))
    assert [(f.track, f.dts - offset, f.pts - offset, f.keyframe, f.size) for f in frames] == [
        (p.track, p.dts, p.pts, p.keyframe, p.size) for p in reference]
    assert [t.name for t in catalogs[-1].tracks] == ["video", "audio"]
    # GoP 2 s at 30 fps: groups 0, 1, 2 each open with a keyframe; audio shares the numbering
    video = [f for f in frames if f.track == "video"]
    assert [f.index for f in video if f.keyframe] == [0, 0, 0]
    assert sorted({f.group for f in frames}) == [0, 1, 2]
    for f in frames:
        if f.track == "audio":
            latest_video = max((v.group for v in video if v.dts <= f.dts), default=0)
            assert f.group == latest_video
    assert demuxer.stats.dropped == 0


def test_unwrapper_is_serial():
    u = TimestampUnwrapper()
    g = 2**30
    stamps = (2**32 - 20, 2**32 - 1, 5, 40, 30, g, 2 * g, 3 * g, 0, 100)
    assert [u.unwrap(t) for t in stamps] == [
        2**32 - 20, 2**32 - 1, 2**32 + 5, 2**32 + 40, 2**32 + 30,  # small step back: not a wrap
        2**32 + g, 2**32 + 2 * g, 2**32 + 3 * g, 2**33, 2**33 + 100]


def test_after_a_31_bit_wrap_a_small_step_back_is_a_step_back():
    """FFmpeg's FLV writer sends 31 bits: its time wraps at 2**31 ms. After that wrap a step back
    of 18 ms (its end-of-sequence tag behind the last audio, or audio behind video) was read as
    2**31 - 18 ms forward, in the live demuxer and the recording's length: a 40 s publish that
    started near 2**31 (-output_ts_offset 2147470) was recorded as 74 days long."""
    top = 2**31
    stamps = (top - 40, top - 10, 5, 30, 12, 50, top - 20, 60, 0)
    u = TimestampUnwrapper()
    assert [u.unwrap(t) for t in stamps] == [top - 40, top - 10, top + 5, top + 30, top + 12, top + 50,
                                            top - 20, top + 60, top]  # back across the wrap too
    # the live demuxer, both its ways in (media(): the chunk reader's, with the common case inline)
    for inline in (False, True):
        demuxer = BroadcastDemuxer("live/x")
        demuxer.message(8, top - 40, b"\xaf\x00\x12\x08")  # AAC-LC, 44.1 kHz, mono
        got = []
        for t in (top - 40, top - 17, 6, 29, 12, 52):
            frames = (demuxer.media(8, t, b"\x00" * 8, "mp4a", 0, 0, b"\xaf\x01") if inline
                      else demuxer.message(8, t, b"\xaf\x01" + b"\x00" * 8))
            got += [f.dts for f in frames if not isinstance(f, Catalog)]
        assert got == [top - 40, top - 17, top + 6, top + 29, top + 12, top + 52], inline


def test_an_empty_sequence_header_before_the_real_one_is_no_warning(caplog):
    """ffmpeg -c copy from MPEG-TS (ADTS audio) sends an empty AAC sequence header, then the real
    one: each such publish logged "mp4a sequence header of audio rejected: AudioSpecificConfig of
    0 bytes is too short"."""
    demuxer = BroadcastDemuxer("live/x", log_name="live/x")
    with caplog.at_level(logging.WARNING):
        assert demuxer.message(8, 0, b"\xaf\x00") == [] and demuxer.message(9, 0, b"\x17\x00\x00\x00\x00") == []
        out = demuxer.message(8, 0, b"\xaf\x00\x12\x08")  # AAC-LC, 44.1 kHz, mono
    assert [t.name for t in out[-1].tracks] == ["audio"] and not caplog.records, caplog.text
    with caplog.at_level(logging.WARNING):  # a header that is there and wrong is still said
        demuxer.message(8, 0, b"\xaf\x00\x12")
    assert "sequence header of audio rejected" in caplog.text


def test_bad_access_unit_is_dropped_until_the_next_keyframe(sample_flv):
    tags = list(read_flv_tags(str(sample_flv)))
    demuxer = BroadcastDemuxer("live/x")
    out = []
    broken_at = None
    for tag_type, ts, body in tags:
        if tag_type == 9 and body[1] == 1 and broken_at is None and ts > 500 and body[0] >> 4 == 2:
            body = body[:5] + b"\xff\xff\xff\xff" + body[9:]  # NAL length far past the end
            broken_at = ts
        out += demuxer.message(tag_type, ts, body)
    video = [f for f in out if not isinstance(f, Catalog) and f.track == "video"]
    keyframes = [p.dts for p in probe_packets(str(sample_flv)) if p.track == "video" and p.keyframe]
    assert demuxer.stats.bad_access_units == 1
    # nothing between the broken frame and the next keyframe was passed on, and all else was
    assert not [f for f in video if broken_at <= f.dts < keyframes[1]]
    assert [f.dts for f in video if f.keyframe] == keyframes
    assert len(video) == len([p for p in probe_packets(str(sample_flv)) if p.track == "video"]) - len(
        [t for t in tags if t[0] == 9 and t[2][1] == 1 and broken_at <= t[1] < keyframes[1]])


def data_message(text: str) -> bytes:
    return amf0_encode("onTextData", {"text": text})


def test_data_objects_are_numbered_from_zero_in_each_group(sample_flv):
    demuxer = BroadcastDemuxer("live/x")
    out = []
    for tag_type, ts, body in read_flv_tags(str(sample_flv)):
        out += demuxer.message(tag_type, ts, body)
        if tag_type == 9 and body[1] == 1:  # after each coded video frame
            out += demuxer.message(18, ts, data_message(f"at {ts}"))
    frames = [f for f in out if not isinstance(f, Catalog)]
    data = [f for f in frames if f.track == "data"]
    video = [f for f in frames if f.track == "video"]
    assert sorted({f.group for f in data}) == [0, 1, 2]
    for group in (0, 1, 2):
        # a data object belongs to the video group in progress, and ids restart at each group
        assert [f.index for f in data if f.group == group] == list(range(len([v for v in video if v.group == group])))
    assert [c for c in out if isinstance(c, Catalog)][-1].track("data").codec == "amf0"


def test_data_objects_of_an_audio_only_broadcast_follow_the_audio_groups():
    demuxer = BroadcastDemuxer("live/radio")
    out = demuxer.message(8, 0, b"\xaf\x00\x12\x10")  # AAC LC 44.1 kHz stereo
    for ts in range(0, 5000, 100):
        out += demuxer.message(8, ts, b"\xaf\x01" + bytes(10))
        out += demuxer.message(18, ts, data_message(f"at {ts}"))
    frames = [f for f in out if not isinstance(f, Catalog)]
    audio = [(f.group, f.dts) for f in frames if f.track == "audio"]
    data = [f for f in frames if f.track == "data"]
    assert [(f.group, f.dts) for f in data] == audio
    assert [f.index for f in data] == [f.index for f in frames if f.track == "audio"]
    assert {f.group for f in data} == {0, 1, 2}


def publish_through_media_sink(tags, offset: int, chunk_size: int, wrap: int = 2**32):
    """As publish_through_session, with the fast path: a media sink that calls demuxer.media."""
    session = RtmpServerSession()
    client = InMemoryPublisher(session, chunk_size=chunk_size)
    stream_id = client.connect_and_publish("wrap")
    client.events()
    demuxer = BroadcastDemuxer("live/wrap")
    out = []
    session.accept_publish(stream_id, lambda *msg: out.extend(demuxer.media(*msg)))
    for tag_type, ts, body in tags:
        client.send({8: 4, 9: 6, 18: 5}[tag_type], (ts + offset) % wrap, tag_type, stream_id, body)
        assert not [ev for ev in client.events() if isinstance(ev, MediaMessage)]
    return demuxer, out


def _broken(tags):
    """Every 7th video frame's NAL length runs past its end; every 11th frame comes twice."""
    out = []
    for i, (tag_type, ts, body) in enumerate(tags):
        if tag_type == 9 and i % 7 == 3 and len(body) > 9 and body[1] == 1:
            body = body[:5] + b"\x7f\xff\xff\xff" + body[9:]
        out.append((tag_type, ts, body))
        if i % 11 == 5:
            out.append((tag_type, ts, body))
    return out


@pytest.mark.parametrize("offset,chunk_size,broken", [(0, 4096, False), (2**32 - 1500, 128, False), (0, 4096, True)])
def test_the_media_sink_fast_path_gives_what_the_events_give(sample_flv, offset, chunk_size, broken):
    """Frames, catalogs and counters are the same whether media come as MediaMessage events through
    demuxer.message or straight to a media sink through demuxer.media (read_messages' headers)."""
    tags = list(read_flv_tags(str(sample_flv)))
    if broken:
        tags = _broken(tags)
    slow, slow_out = publish_through_session(tags, offset, chunk_size)
    fast, fast_out = publish_through_media_sink(tags, offset, chunk_size)
    def key(item):
        if isinstance(item, Catalog):
            return item.to_json()
        return (item.track, item.group, item.index, item.dts, item.pts, item.keyframe, bytes(item.payload))
    assert [key(i) for i in fast_out] == [key(i) for i in slow_out]
    assert len([i for i in fast_out if not isinstance(i, Catalog)]) > 100
    assert fast.stats == slow.stats
    assert (fast.stats.bad_access_units > 0) == broken


@pytest.mark.parametrize("publish", [publish_through_session, publish_through_media_sink])
def test_timestamps_that_wrap_at_2_31_as_ffmpeg_and_obs_send_them_go_on(sample_flv, publish):
    """FFmpeg's and OBS's FLV writers keep 31 bits of a timestamp (``(ts >> 24) & 0x7F``), so
    their timestamps wrap at 2**31 ms (24.8 days into a publish, or at once after -copyts or
    -output_ts_offset): a step from near 2**31 to near 0 is time going on, not 24.8 days back."""
    tags = list(read_flv_tags(str(sample_flv)))
    offset = 2**31 - 1500
    _, out = publish(tags, offset, 4096, wrap=2**31)
    frames = [f for f in out if not isinstance(f, Catalog)]
    assert [(f.track, f.dts - offset, f.pts - offset) for f in frames] == [
        (p.track, p.dts, p.pts) for p in probe_packets(str(sample_flv))]


@pytest.mark.parametrize("chunk_size", [128, 4096])
def test_fast_path_frames_hold_the_readers_copy_and_no_view_over_it(sample_flv, chunk_size):
    """A frame the fast path makes holds the one copy the chunk reader made of its payload (the
    FLV tag header split off), not a view over a copy of the whole tag: each cached frame would
    otherwise keep a view and its buffer record alive beside it (docs/benchmarks.md, ingest RSS)."""
    tags = list(read_flv_tags(str(sample_flv)))
    _, out = publish_through_media_sink(tags, 0, chunk_size)
    frames = [i for i in out if not isinstance(i, Catalog)]
    assert len(frames) > 100
    assert {type(f.payload) for f in frames} == {bytes}


@pytest.mark.parametrize("publish", [publish_through_session, publish_through_media_sink])
def test_a_clock_that_jumps_back_mid_group_goes_on_from_where_it_was(sample_flv, publish, caplog):
    """An encoder's clock jumps back 3 s between two frames of a GoP (a reset, a source that
    restarted its timeline): every frame still comes, each track's time going on from its last
    frame, so audio and video stay together. Passed on as sent, time went back inside a group,
    and the HLS player that read it played the audio 3 s off the video."""
    tags = [(kind, ts - 3000 if ts >= 3500 else ts, body) for kind, ts, body in read_flv_tags(str(sample_flv))]
    demuxer, out = publish(tags, 0, 4096)
    frames = [f for f in out if not isinstance(f, Catalog)]
    reference = probe_packets(str(sample_flv))
    for track in ("video", "audio"):
        got = [(f.dts, f.pts - f.dts) for f in frames if f.track == track]
        sent = [(p.dts, p.pts - p.dts) for p in reference if p.track == track]
        assert len(got) == len(sent) and [c for _, c in got] == [c for _, c in sent], track
        assert all(b > a for (a, _), (b, _) in zip(got, got[1:])), track
        # on the encoder's own timeline again, within a frame's rounding
        assert max(abs(g - s) for (g, _), (s, _) in zip(got, sent)) <= 2, track
    assert demuxer.stats.clock_jumps == 2 and demuxer.stats.dropped == 0
    assert caplog.text.count("stepped back") == 1


def stamped_early(tags) -> list:
    """FLV tags with their coded frames (not the sequence headers) stamped 40 ms before time 0
    and on (sent as 2**32 - 40 ..., serial arithmetic), and the third coded video frame given a
    composition offset of -33 ms (shown before it is decoded)."""
    out, coded = [], 0
    for kind, ts, body in tags:
        if kind in (8, 9) and body[1] == 1:
            ts -= 40
            if kind == 9 and (coded := coded + 1) == 3:
                body = body[:2] + (-33 & 0xFFFFFF).to_bytes(3, "big") + body[5:]
        out.append((kind, ts & 0xFFFFFFFF, body))
    return out


@pytest.mark.parametrize("publish", [publish_through_session, publish_through_media_sink])
def test_no_frame_is_before_0_or_shown_before_it_is_decoded(sample_flv, publish, caplog):
    """Coded frames sent 40 ms before the sequence headers' time 0 (2**32 - 40 by serial
    arithmetic): the publish's time goes on from 0 there, every track alike, so each frame is
    where the encoder put it relative to the others; a video frame with a negative composition
    offset (FLV's CompositionTime is signed) is shown at its decode time. The packager (fMP4's
    decode time) and MoQ (LOC's timestamp offset) can carry neither."""
    demuxer, out = publish(stamped_early(read_flv_tags(str(sample_flv))), 0, 4096)
    frames = [f for f in out if not isinstance(f, Catalog)]
    reference = probe_packets(str(sample_flv))
    for track in ("video", "audio"):
        assert [f.dts for f in frames if f.track == track] == [p.dts for p in reference if p.track == track], track
    assert all(0 <= f.dts <= f.pts for f in frames)
    assert [f.pts - f.dts for f in frames if f.track == "video"][2] == 0
    assert demuxer.stats.shown_before_decoded == 1 and demuxer.stats.below_zero == 1
    assert demuxer.stats.dropped == demuxer.stats.clock_jumps == 0
    assert "stepped back 40 ms below the publish's time 0" in caplog.text
    assert "shown 33 ms before it is decoded" in caplog.text
