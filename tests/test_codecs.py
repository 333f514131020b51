"""HEVC, AV1 and Opus configuration records, and the demuxer around them: real encoder output
(PyAV's FFmpeg 8), codec strings, legacy HEVC, codecs that are not carried, hostile bytes."""

import logging
import subprocess
import sys

import av
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rtmpq.codec import parse_video_tag
from rtmpq.errors import RemoteProtocolError
from rtmpq.media.ac3 import Ac3Header, Eac3Header
from rtmpq.media.av1 import Av1Config, is_key_temporal_unit, parse_sequence_header
from rtmpq.media.catalog import Catalog
from rtmpq.media.demux import MAX_NOT_CARRIED_LOGGED, BroadcastDemuxer
from rtmpq.media.flv import read_flv_tags
from rtmpq.media.hevc import HevcConfig, parse_hevc_sps
from rtmpq.media.opus import OpusHead
from rtmpq.media.vp9 import Vp9Config, is_key_frame, key_frame_size

from .publishers import PYAV_PUBLISHER

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def encodes(tmp_path_factory):
    """Enhanced FLV files from PyAV's FFmpeg: (video encoder, size) -> path."""
    out = {}
    folder = tmp_path_factory.mktemp("enc")
    for video, audio, size in (("libx265", "aac", "1280x720"), ("libx265", "aac", "322x186"),
                               ("libsvtav1", "libopus", "640x360"), ("libsvtav1", "libopus", "322x186"),
                               ("libvpx-vp9", "libopus", "322x186")):
        path = folder / f"{video}-{size}.flv"
        subprocess.run([sys.executable, PYAV_PUBLISHER, "-", str(path), "--video", video, "--audio", audio,
                        "--seconds", "1.1", "--size", size], check=True, capture_output=True)
        out[video, size] = str(path)
    return out


def sequence_start(path: str, kind: int = 9) -> bytes:
    for tag_type, _, body in read_flv_tags(path):
        if tag_type == kind and body[0] & 0x8F == 0x80:
            tag = parse_video_tag(body) if kind == 9 else None
            return bytes(body[tag.payload_offset : tag.payload_end]) if tag else bytes(body[5:])
    raise AssertionError("no sequence start")


def stream_facts(path: str) -> dict:
    with av.open(path) as c:
        v = c.streams.video[0].codec_context
        return {"width": v.width, "height": v.height, "level": v.level, "frames": [
            p.is_keyframe for p in c.demux(video=0) if p.size]}


@pytest.mark.parametrize("size", ["1280x720", "322x186"])
def test_hvcc_and_sps_of_real_encodes_match_ffmpeg(encodes, size):
    path = encodes["libx265", size]
    facts = stream_facts(path)
    config = HevcConfig.parse(sequence_start(path))
    sps = parse_hevc_sps(config.sps[0])
    assert (sps.width, sps.height) == (facts["width"], facts["height"])  # 322x186: a conformance window
    assert config.codec_string == f"hvc1.1.6.L{facts['level']}.90"  # Main, compatible with Main/Main 10
    assert config.nal_length_size == 4 and len(config.vps) == len(config.pps) == 1
    demuxer = BroadcastDemuxer("live/x")
    out = [item for t, ts, b in read_flv_tags(path) for item in demuxer.message(t, ts, b)]
    video = [f for f in out if not isinstance(f, Catalog) and f.track == "video"]
    assert [f.keyframe for f in video] == facts["frames"]  # IRAP pictures open the groups
    assert [f.group for f in video if f.keyframe] == [0, 1]


@pytest.mark.parametrize("size", ["640x360", "322x186"])
def test_av1c_and_sequence_header_of_real_encodes_match_ffmpeg(encodes, size):
    path = encodes["libsvtav1", size]
    facts = stream_facts(path)
    config = Av1Config.parse(sequence_start(path))
    header = config.sequence_header
    assert (header.width, header.height) == (facts["width"], facts["height"])
    assert config.codec_string == f"av01.0.{facts['level']:02d}M.08"
    demuxer = BroadcastDemuxer("live/x")
    out = [item for t, ts, b in read_flv_tags(path) for item in demuxer.message(t, ts, b)]
    catalog = [c for c in out if isinstance(c, Catalog)][-1]
    assert catalog.track("audio").codec == "opus" and catalog.track("audio").sample_rate == 48000
    video = [f for f in out if not isinstance(f, Catalog) and f.track == "video"]
    assert [f.keyframe for f in video] == facts["frames"]
    # the bitstream alone tells key temporal units apart (without the FLV frame type)
    assert [is_key_temporal_unit(f.payload) for f in video] == facts["frames"]


def test_vp9_config_and_key_frames_of_a_real_encode(encodes):
    path = encodes["libvpx-vp9", "322x186"]
    facts = stream_facts(path)
    config = Vp9Config.parse(sequence_start(path))
    assert config.codec_string == "vp09.00.11.08"  # profile 0, level 1.1 (322x186 at 30 fps), 8 bit
    frames = [(tag, bytes(b[tag.payload_offset : tag.payload_end])) for t, _, b in read_flv_tags(path)
              if t == 9 and (tag := parse_video_tag(b)).packet_type == 1]
    assert [is_key_frame(data) for _, data in frames] == facts["frames"]
    assert key_frame_size(frames[0][1]) == (322, 186)
    with pytest.raises(RemoteProtocolError):
        key_frame_size(frames[1][1])  # an inter frame has no size
    demuxer = BroadcastDemuxer("live/x")  # without onMetaData, the size comes from the key frame
    out = [item for t, ts, b in read_flv_tags(path) if t != 18 for item in demuxer.message(t, ts, b)]
    catalog = [c for c in out if isinstance(c, Catalog)][-1]
    assert (catalog.track("video").width, catalog.track("video").height) == (322, 186)


def test_ac3_frame_header_and_dac3():
    # 48 kHz, 192 kbit/s (frmsizecod 20), bsid 8, 2/0 with dsurmod, no LFE: ATSC A/52 5.4.1
    frame = b"\x0b\x77" + b"\x00\x00" + bytes((0x00 << 6 | 20, 8 << 3 | 0, 2 << 5 | 0 << 3 | 0 << 2)) + bytes(8)
    header = Ac3Header.parse(frame)
    assert (header.sample_rate, header.channels, header.bsid) == (48000, 2, 8)
    assert header.dac3() == bytes.fromhex("101140") and Ac3Header.from_dac3(header.dac3()) == header
    five_one = b"\x0b\x77\x00\x00" + bytes((0x40 | 28, 6 << 3, 7 << 5 | 0b01011, 0b00000000)) + bytes(4)
    assert Ac3Header.parse(five_one).channels == 6 and Ac3Header.parse(five_one).sample_rate == 44100
    for bad in (b"", b"\x0b\x77\x00", b"\x0b\x78" + bytes(8), b"\x0b\x77\x00\x00\xc0" + bytes(4),
                b"\x0b\x77\x00\x00\x00\x80" + bytes(4)):  # no sync, reserved fscod, E-AC-3 bsid 16
        with pytest.raises(RemoteProtocolError):
            Ac3Header.parse(bad)


def test_eac3_frame_header_and_dec3():
    # from an FFmpeg E-AC-3 encode: independent substream 0, 768-byte frames of 6 blocks, 48 kHz, 2/0
    frame = bytes.fromhex("0b77017f3487c000") + bytes(760)
    header = Eac3Header.parse(frame)
    assert (header.sample_rate, header.channels, header.kbps, header.bsid) == (48000, 2, 192, 16)
    assert header.dec3() == bytes.fromhex("0600200400")  # 192 kbit/s, one substream: fscod 0, bsid 16, acmod 2
    assert Eac3Header.from_dec3(header.dec3()) == header
    for bad in (frame[:4], b"\x0b\x77\x41" + frame[3:],  # dependent substream first
                bytes.fromhex("0b77017ff487c000")):  # reduced sample rate
        with pytest.raises(RemoteProtocolError):
            Eac3Header.parse(bad)


def test_opus_head_and_dops():
    head = OpusHead.parse(b"OpusHead\x01\x02\x38\x01\x80\xbb\x00\x00\x00\x00\x00")
    assert (head.channels, head.pre_skip, head.input_sample_rate, head.mapping_family) == (2, 312, 48000, 0)
    assert head.dops() == b"\x00\x02\x01\x38\x00\x00\xbb\x80\x00\x00\x00"
    assert OpusHead.parse(head.to_bytes()) == head
    assert OpusHead.parse(b"").channels == 2  # E-RTMP: an empty sequence start is plain stereo
    surround = b"OpusHead\x01\x06\x38\x01\x80\xbb\x00\x00\x00\x00\x01" + b"\x04\x02" + bytes(range(6))
    assert OpusHead.parse(surround).mapping == b"\x04\x02" + bytes(range(6))


@pytest.mark.parametrize("codec_string,record", [
    # ISO/IEC 14496-15 Annex E examples: Main profile level 3.1, Main 10 tier High level 4
    ("hvc1.1.6.L93.B0", bytes.fromhex("01 01 60000000 b00000000000 5d".replace(" ", ""))),
    ("hvc1.2.4.H120.B0", bytes.fromhex("01 22 20000000 b00000000000 78".replace(" ", ""))),
    ("hvc1.A4.10.L120.98.08", bytes.fromhex("01 44 08000000 980800000000 78".replace(" ", ""))),
])
def test_hevc_codec_strings(codec_string, record):
    hvcc = record + bytes.fromhex("f000fcfdf8f800000f") + b"\x01" + b"\xa1\x00\x01\x00\x04\x42\x01\x01\x01"
    assert HevcConfig.parse(hvcc).codec_string == codec_string


def test_legacy_codec_id_12_hevc_is_carried(encodes):
    """Some encoders send HEVC before E-RTMP with CodecID 12 and the AVC packet layout."""
    demuxer = BroadcastDemuxer("live/x")
    out = []
    for tag_type, ts, body in read_flv_tags(encodes["libx265", "322x186"]):
        if tag_type == 9 and body[0] & 0x80:
            tag = parse_video_tag(body)
            if tag.packet_type not in (0, 1):
                continue
            body = bytes(((tag.frame_type << 4) | 12, tag.packet_type)) + (tag.cts & 0xFFFFFF).to_bytes(3, "big") \
                + bytes(body[tag.payload_offset : tag.payload_end])
        out += demuxer.message(tag_type, ts, body)
    catalog = [c for c in out if isinstance(c, Catalog)][-1]
    assert catalog.track("video").codec.startswith("hvc1.1.6.")
    assert demuxer.stats.frames["video"] == 33 and demuxer.stats.dropped == 0


def test_a_codec_not_carried_is_logged_once_with_its_fourcc(caplog):
    demuxer = BroadcastDemuxer("live/x", log_name="live/#x")
    vvc = lambda packet_type: bytes((0x90 | packet_type,)) + b"vvc1" + b"\x00" * 8  # noqa: E731
    with caplog.at_level(logging.WARNING, "rtmpq.media"):
        for i in range(5):
            assert demuxer.message(9, i * 33, vvc(0 if i == 0 else 1)) == []
            assert demuxer.message(8, i * 20, b"\x91fLaC" + b"\x00" * 4) == []
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["live/#x: video codec VVC (FLV 'vvc1') is not carried; its frames are dropped "
                     "(carried: H.264, HEVC, AV1, VP9; ffmpeg: -c:v libx264)",
                     "live/#x: audio codec FLAC (FLV 'fLaC') is not carried; its frames are dropped "
                     "(carried: AAC, Opus, AC-3, E-AC-3; ffmpeg: -c:a aac)"]
    assert demuxer.stats.unsupported == 10


def test_a_publisher_naming_a_new_codec_in_every_message_gets_a_bounded_number_of_log_lines(caplog):
    """Each FourCC not carried is remembered (so it is logged once) and listed in the catalog: a
    publisher that names a new one in every message must not make that grow with the publish."""
    noted = []
    demuxer = BroadcastDemuxer("live/x", log_name="live/#x", not_carried=noted.append)
    with caplog.at_level(logging.WARNING, "rtmpq.media"):
        for i in range(2000):
            fourcc = i.to_bytes(4, "big").replace(b"\x00", b"z")
            assert demuxer.message(9, i, bytes((0x91,)) + fourcc + b"\x00" * 8) == []
    assert len(caplog.records) == MAX_NOT_CARRIED_LOGGED + 1, [r.getMessage() for r in caplog.records][-3:]
    assert "others are dropped" in caplog.records[-1].getMessage()
    assert len(noted) == MAX_NOT_CARRIED_LOGGED and len(demuxer._not_carried) == MAX_NOT_CARRIED_LOGGED + 1
    assert demuxer.stats.unsupported == 2000


# -- hostile bytes ---------------------------------------------------------------------------
def _only_protocol_errors(parse, data) -> None:
    try:
        parse(data)
    except RemoteProtocolError:
        pass


def test_truncated_records_at_every_length_are_protocol_errors(encodes):
    for parse, record in ((HevcConfig.parse, sequence_start(encodes["libx265", "322x186"])),
                          (Av1Config.parse, sequence_start(encodes["libsvtav1", "322x186"]))):
        parse(record)
        for n in range(len(record)):
            with pytest.raises(RemoteProtocolError):
                config = parse(record[:n])
                if isinstance(config, HevcConfig):  # the record may end early and still frame
                    parse_hevc_sps(config.sps[0])
    head = b"OpusHead\x01\x06\x38\x01\x80\xbb\x00\x00\x00\x00\x01\x04\x02" + bytes(range(6))
    for n in range(1, len(head)):
        with pytest.raises(RemoteProtocolError):
            OpusHead.parse(head[:n])


@FUZZ
@given(st.binary(max_size=120))
def test_random_bytes_raise_only_protocol_errors(data):
    for parse in (HevcConfig.parse, parse_hevc_sps, Av1Config.parse, parse_sequence_header, OpusHead.parse,
                  is_key_temporal_unit, Ac3Header.parse, Eac3Header.parse, Vp9Config.parse, is_key_frame, key_frame_size):
        _only_protocol_errors(parse, data)
    _only_protocol_errors(parse_hevc_sps, b"\x42\x01" + data)


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 4000), st.integers(0, 255)), min_size=1, max_size=6))
def test_damaged_real_records_raise_only_protocol_errors(encodes, damage):
    for video, size in (("libx265", "322x186"), ("libsvtav1", "322x186")):
        data = bytearray(sequence_start(encodes[video, size]))
        for pos, value in damage:
            data[pos % len(data)] = value
        parse = Av1Config.parse if video == "libsvtav1" else lambda d: parse_hevc_sps(HevcConfig.parse(d).sps[0])
        _only_protocol_errors(parse, bytes(data))


def test_tracks_per_publish_are_bounded(encodes, caplog):
    """A publisher naming 200 E-RTMP track ids gets MAX_TRACKS_PER_KIND tracks and one log line."""
    from rtmpq.media.demux import MAX_TRACKS_PER_KIND

    record = sequence_start(encodes["libx265", "322x186"])
    demuxer = BroadcastDemuxer("live/x")
    with caplog.at_level(logging.WARNING, "rtmpq.media"):
        for track_id in range(200):
            demuxer.message(9, 0, bytes((0x96, 0x00)) + b"hvc1" + bytes((track_id,)) + record)
    assert [t.name for t in demuxer.catalog.tracks] == ["video"] + [f"video-{i}" for i in range(1, MAX_TRACKS_PER_KIND)]
    assert len([r for r in caplog.records if "MAX_TRACKS_PER_KIND" in r.getMessage()]) == 1
