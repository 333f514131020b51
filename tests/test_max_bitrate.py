"""MSF's ``bitrate`` (the track's maximum, a MUST for audio and video): the bounds each codec
configuration implies, checked against the spec tables, and the demuxer giving every track one
when the publisher's onMetaData does not (its own rate still wins when it does)."""

import json
import subprocess
import sys

import pytest

from rtmpq.codec import amf0_encode
from rtmpq.edge.llhls import LlHlsStream, multivariant_playlist
from rtmpq.media.aac import AudioSpecificConfig
from rtmpq.media.ac3 import Ac3Header, Eac3Header
from rtmpq.media.av1 import Av1Config
from rtmpq.media.avc import AvcConfig
from rtmpq.media.catalog import Catalog, TrackInfo
from rtmpq.media.demux import BroadcastDemuxer
from rtmpq.media.flv import read_flv_tags
from rtmpq.media.frames import AUDIO, VIDEO
from rtmpq.media.hevc import HevcConfig
from rtmpq.media.opus import OpusHead
from rtmpq.media.vp9 import Vp9Config

from .conftest import need
from .publishers import AUDIO_ENCODE, PYAV_PUBLISHER, VIDEO_ENCODE


def avc(profile: int, constraints: int, level: int) -> AvcConfig:
    return AvcConfig(profile, constraints, level, 4, (b"\x67",), ())


@pytest.mark.parametrize("config,expected", [
    (avc(66, 0xC0, 30), 10_000 * 1200),       # Baseline 3: Table A-1 MaxBR 10000, cpbBrNalFactor 1200
    (avc(66, 0xD0, 11), 128 * 1200),          # constraint_set3_flag: level 1b, not 1.1
    (avc(77, 0x40, 11), 192 * 1200),          # Main 1.1
    (avc(100, 0x00, 31), 14_000 * 1500),      # High 3.1 (x264's 720p30): 21 Mbit/s
    (avc(100, 0x00, 51), 240_000 * 1500),
    (avc(110, 0x00, 40), 20_000 * 3600),      # High 10
    (avc(122, 0x00, 42), 50_000 * 4800),      # High 4:2:2
])
def test_avc_bound_is_table_a1_maxbr_times_the_profile_factor(config, expected):
    assert config.max_bitrate() == expected


def hevc(profile: int, tier: int, level: int) -> HevcConfig:
    return HevcConfig(0, tier, profile, 0, bytes(6), level, 1, 8, 4, (), (b"\x42\x01",), ())


@pytest.mark.parametrize("config,expected", [
    (hevc(1, 0, 93), 10_000 * 1100),          # Main, level 3.1: Table A.8 MaxBR 10000, CpbNalFactor 1100
    (hevc(2, 0, 123), 20_000 * 1100),         # Main 10, 4.1 Main tier
    (hevc(1, 1, 153), 160_000 * 1100),        # 5.1 High tier
    (hevc(4, 0, 120), 12_000 * 1100 * 8),     # a range extension profile: the largest factor
])
def test_hevc_bound_is_table_a8_maxbr_by_tier(config, expected):
    assert config.max_bitrate() == expected


def av1(profile: int, level: int, tier: int) -> Av1Config:
    return Av1Config(profile, level, tier, 8, False, None)


@pytest.mark.parametrize("config,expected", [
    (av1(0, 8, 0), 12_000_000),               # level 4.0 MainMbps 12
    (av1(0, 8, 1), 30_000_000),               # level 4.0 HighMbps 30
    (av1(0, 0, 0), 1_500_000),                # level 2.0
    (av1(1, 13, 0), 40_000_000 * 2),          # 5.1, High profile: BitrateProfileFactor 2
])
def test_av1_bound_is_annex_a_max_bitrate(config, expected):
    assert config.max_bitrate() == expected


@pytest.mark.parametrize("level,expected", [(11, 800_000), (31, 12_000_000), (41, 30_000_000), (0, 480_000_000)])
def test_vp9_bound_is_the_level_tables_max_bitrate(level, expected):
    assert Vp9Config(0, level, 8).max_bitrate() == expected


@pytest.mark.parametrize("asc,expected", [
    (bytes.fromhex("1190"), 6144 * 2 * 48000 // 1024),  # AAC LC, 48 kHz stereo: 576 kbit/s
    (bytes.fromhex("1208"), 6144 * 1 * 44100 // 1024),  # 44.1 kHz mono
    (bytes.fromhex("11b8"), 6144 * 8 * 48000 // 1024),  # channel configuration 7 is 7.1: 8 channels
])
def test_aac_bound_is_6144_bits_per_channel_per_frame(asc, expected):
    assert AudioSpecificConfig.parse(asc).max_bitrate() == expected


def test_opus_bound_is_510_kbits_per_stream():
    stereo = OpusHead.parse(b"OpusHead\x01\x02\x38\x01\x80\xbb\x00\x00\x00\x00\x00")
    assert stereo.max_bitrate() == 510_000  # mapping family 0: one stream
    five_one = OpusHead(6, 312, 48000, 0, 1, bytes((4, 2, 0, 4, 1, 2, 3, 5)))
    assert five_one.max_bitrate() == 4 * 510_000


def test_ac3_and_eac3_bitrates_are_their_frames_own():
    # frmsizecod 20 -> Table 5.18 row 10: 192 kbit/s
    ac3 = Ac3Header.parse(b"\x0b\x77\x00\x00" + bytes((20, 8 << 3, 2 << 5, 0)) + bytes(8))
    assert ac3.max_bitrate() == 192_000
    eac3 = Eac3Header.parse(bytes.fromhex("0b77017f3487c000") + bytes(760))  # 768-byte frames of 1536 samples
    assert eac3.max_bitrate() == 192_000
    assert eac3.max_bitrate(768 + 512) == 320_000  # with a dependent substream (7.1)


# -- the demuxer ----------------------------------------------------------------------------------

def demux(tags) -> Catalog:
    demuxer = BroadcastDemuxer("live/x")
    for tag_type, ts, body in tags:
        demuxer.message(tag_type, ts, body)
    return demuxer.catalog


def media_tracks(catalog: Catalog) -> list[TrackInfo]:
    return [t for t in catalog.tracks if t.kind in (VIDEO, AUDIO)]


@pytest.fixture(scope="module")
def no_metadata_flv(tmp_path_factory):
    """ffmpeg's FLV with ``-flvflags no_metadata``: no onMetaData at all."""
    need("ffmpeg")
    path = tmp_path_factory.mktemp("flv") / "no-metadata.flv"
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30",
         "-f", "lavfi", "-i", "sine", "-t", "1", *VIDEO_ENCODE, *AUDIO_ENCODE, "-flvflags", "no_metadata",
         "-f", "flv", str(path)], check=True)
    return str(path)


def test_without_onmetadata_every_track_carries_its_codecs_bound(no_metadata_flv):
    tags = list(read_flv_tags(no_metadata_flv))
    assert not [t for t in tags if t[0] == 18]
    catalog = demux(tags)
    video, audio = catalog.track(VIDEO), catalog.track(AUDIO)
    assert video.bitrate == AvcConfig.parse(video.init_data).max_bitrate() and video.bitrate_is_bound
    assert audio.bitrate == AudioSpecificConfig.parse(audio.init_data).max_bitrate() == 6144 * 2 * 44100 // 1024
    # a subscriber reading the catalog sees bitrate on every track, and the mark survives the trip
    for obj in json.loads(catalog.to_json())["tracks"]:
        if obj["role"] in (VIDEO, AUDIO):
            assert isinstance(obj["bitrate"], int) and obj["bitrate"] > 0
    assert Catalog.from_json(catalog.to_json()).track(VIDEO).bitrate_is_bound


@pytest.mark.parametrize("video,audio,multitrack", [
    ("libx265", "aac", ""), ("libsvtav1", "libopus", ""), ("libvpx-vp9", "libopus", ""),
    ("libx265", "aac", "320x180"),  # E-RTMP multitrack: track 1 has no metadata of its own
])
def test_modern_codecs_without_metadata_bitrates_carry_their_bounds(tmp_path, video, audio, multitrack):
    path = tmp_path / "enc.flv"
    extra = ["--multitrack", multitrack] if multitrack else []
    subprocess.run([sys.executable, PYAV_PUBLISHER, "-", str(path), "--video", video, "--audio", audio,
                    "--seconds", "1.1", "--size", "322x186", *extra], check=True, capture_output=True)
    tags = list(read_flv_tags(str(path)))
    if not multitrack:
        tags = [t for t in tags if t[0] != 18]  # GStreamer's flvmux-like: no datarates
    catalog = demux(tags)
    tracks = media_tracks(catalog)
    assert len(tracks) == (3 if multitrack else 2)
    assert all(t.bitrate and t.bitrate > 0 for t in tracks), tracks
    if multitrack:
        assert catalog.track("video-1").bitrate_is_bound


def test_onmetadata_rates_win_even_when_they_come_after_the_sequence_headers(no_metadata_flv):
    tags = list(read_flv_tags(no_metadata_flv))
    meta = amf0_encode("onMetaData", {"videodatarate": 400.0, "audiodatarate": 64.0})
    before = demux([(18, 0, meta), *tags])
    late = demux([*tags[:4], (18, 0, meta), *tags[4:]])
    for catalog in (before, late):
        assert (catalog.track(VIDEO).bitrate, catalog.track(AUDIO).bitrate) == (400_000, 64_000)
        assert not catalog.track(VIDEO).bitrate_is_bound and not catalog.track(AUDIO).bitrate_is_bound
        assert b"rtmpq.bitrateBound" not in catalog.to_json()


def test_hls_bandwidth_before_any_measure_does_not_take_the_level_bound():
    """A variant is listed before a segment is measured; a level's bound (21 Mbit/s for High 3.1) is
    no estimate of what a player will pull, so BANDWIDTH stays as it was without metadata."""
    avcc = bytes.fromhex("0164001fffe1000467640 01f01000468ee3c80".replace(" ", ""))
    for bound, expected in ((True, "BANDWIDTH=1,"), (False, "BANDWIDTH=21000000,")):
        stream = LlHlsStream(tracks={VIDEO}, prefix="v-")
        stream.set_catalog(Catalog("live/x").with_track(TrackInfo(
            VIDEO, VIDEO, "avc1.64001f", avcc, width=1280, height=720, bitrate=21_000_000,
            bitrate_is_bound=bound, nal_length_size=4)))
        audio = LlHlsStream(tracks={AUDIO}, prefix="a-")
        assert expected in multivariant_playlist([(stream, "v.m3u8")], audio, "a.m3u8")


def test_the_status_api_shows_the_measured_rate_not_the_level_bound(monkeypatch):
    from rtmpq.ops.view import BroadcastStats, NodeView

    view = NodeView("up")
    stats = BroadcastStats("live/x")
    for bound, expected in ((True, 400_000), (False, 21_000_000)):
        stats.catalog = Catalog("live/x").with_track(TrackInfo(
            VIDEO, VIDEO, "avc1.64001f", width=1280, height=720, bitrate=21_000_000, bitrate_is_bound=bound))
        stats.track_bitrates = {VIDEO: 400_000.0}
        monkeypatch.setattr(view, "broadcasts", lambda: [stats])
        assert view.api_broadcasts()["items"][0]["tracks"][0]["bitrate"] == expected
