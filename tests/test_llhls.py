"""The LL-HLS packager in memory: init segment versions and discontinuities."""

import re

from rtmpq.edge.llhls import LlHlsStream
from rtmpq.media.catalog import Catalog, TrackInfo
from rtmpq.media.frames import AUDIO, VIDEO, Frame


def video_catalog(avcc: bytes, width: int) -> Catalog:
    return Catalog("live/x").with_track(TrackInfo(VIDEO, VIDEO, "avc1.64001e", avcc, 1000, width, 240,
                                                  nal_length_size=4))


def push_group(stream: LlHlsStream, group: int, frames: int = 10) -> None:
    for i in range(frames):
        ts = (group * frames + i) * 100
        stream.push(Frame(VIDEO, group, i, ts, ts, i == 0, b"\x00\x00\x00\x01\x65" if i == 0 else b"\x00\x00\x00\x01\x41", 1))


def maps_and_discontinuities(playlist: str) -> list[str]:
    return [line for line in playlist.splitlines()
            if line.startswith("#EXT-X-MAP") or line == "#EXT-X-DISCONTINUITY"
            or line.endswith(".m4s") and "PART" not in line]


def test_a_new_avcc_gets_its_own_init_uri_and_a_discontinuity():
    stream = LlHlsStream(tracks={VIDEO}, prefix="v-", window=4)
    first, second = b"\x01\x64\x00\x1eAAAA", b"\x01\x64\x00\x1fBBBB"
    stream.set_catalog(video_catalog(first, 320))
    push_group(stream, 0)
    push_group(stream, 1)
    stream.set_catalog(video_catalog(first, 320))  # a repeated sequence header changes nothing
    stream.set_catalog(video_catalog(second, 640))  # the publisher's encoder restarts: new SPS/PPS
    push_group(stream, 2)
    push_group(stream, 3)
    stream.end()
    assert maps_and_discontinuities(stream.media_playlist()) == [
        '#EXT-X-MAP:URI="v-init-0.mp4"', "v-seg0.m4s", "v-seg1.m4s",
        "#EXT-X-DISCONTINUITY", '#EXT-X-MAP:URI="v-init-1.mp4"', "v-seg2.m4s", "v-seg3.m4s"]
    # each URI keeps its bytes (players cache them): the old init is still served as it was
    assert first in stream.init_version_data(0) and second in stream.init_version_data(1)
    assert stream.init_version_data(1) == stream.init
    assert [(s.msn, s.init_version, s.discontinuity) for s in stream.segments] == [
        (0, 0, False), (1, 0, False), (2, 1, True), (3, 1, False)]


def test_discontinuity_sequence_counts_the_discontinuities_that_left_the_window():
    stream = LlHlsStream(tracks={VIDEO}, prefix="v-", window=2)
    stream.set_catalog(video_catalog(b"\x01\x64\x00\x1eAAAA", 320))
    push_group(stream, 0)
    stream.set_catalog(video_catalog(b"\x01\x64\x00\x1eBBBB", 320))
    push_group(stream, 1)
    push_group(stream, 2)
    push_group(stream, 3)
    stream.end()
    playlist = stream.media_playlist()
    # segment 1 (the discontinuity) has left the two-segment window: its count stays
    assert "#EXT-X-DISCONTINUITY-SEQUENCE:1" in playlist
    assert maps_and_discontinuities(playlist) == ['#EXT-X-MAP:URI="v-init-1.mp4"', "v-seg2.m4s", "v-seg3.m4s"]
    assert stream.init_version_data(0) is None  # no segment in the window needs it any more


def test_an_unchanged_rendition_has_no_discontinuity_when_another_track_changes():
    stream = LlHlsStream(tracks={AUDIO}, prefix="a-")
    audio = TrackInfo(AUDIO, AUDIO, "mp4a.40.2", b"\x12\x10", 1000, sample_rate=44100, channels=2)
    catalog = video_catalog(b"\x01\x64\x00\x1eAAAA", 320).with_track(audio)
    stream.set_catalog(catalog)
    stream.set_catalog(catalog.with_track(video_catalog(b"\x01\x64\x00\x1eBBBB", 640).tracks[0]))
    playlist = stream.media_playlist()
    assert re.findall(r"#EXT-X-(MAP|DISCONTINUITY)\S*", playlist) == ["MAP"] and 'a-init-0.mp4' in playlist
