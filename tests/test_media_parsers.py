"""AMF0, FLV tag headers, avcC/SPS and AAC configs: real encoder output and hostile bytes."""

import json
import subprocess

import pytest

from rtmpq.codec import amf0_decode, amf0_encode, find_annexb_units, parse_audio_tag, parse_video_tag, split_length_prefixed, unescape_rbsp
from rtmpq.codec.amf_types import UNDEFINED, EcmaArray
from rtmpq.codec.flv_types import PACKET_CODED_FRAMES, PACKET_SEQUENCE_START
from rtmpq.errors import RemoteProtocolError
from rtmpq.media.aac import AudioSpecificConfig
from rtmpq.media.avc import AvcConfig, parse_sps
from rtmpq.media.flv import read_flv_tags

from .conftest import need


# -- AMF0 -------------------------------------------------------------------------------------
def test_ffmpeg_connect_command_bytes():
    # written from the AMF0 spec: string "connect", number 1, object {app: "live"}
    data = (b"\x02\x00\x07connect" + b"\x00\x3f\xf0\x00\x00\x00\x00\x00\x00"
            + b"\x03\x00\x03app\x02\x00\x04live\x00\x04type\x02\x00\x0anonprivate\x00\x00\x09")
    assert amf0_decode(data) == ["connect", 1.0, {"app": "live", "type": "nonprivate"}]


def test_set_data_frame_with_ecma_array_and_amf3_switch():
    meta = amf0_encode("@setDataFrame", "onMetaData", EcmaArray(width=1280.0, encoder="obs"))
    values = amf0_decode(meta)
    assert values == ["@setDataFrame", "onMetaData", {"width": 1280.0, "encoder": "obs"}]
    assert type(values[2]) is EcmaArray
    # marker 0x11 then an AMF3 anonymous dynamic object {a: 5}, then an AMF3 string
    amf3 = b"\x11\x0a\x0b\x01\x03a\x04\x05\x01" + b"\x11\x06\x07abc"
    assert amf0_decode(amf3) == [{"a": 5.0}, "abc"]
    assert amf0_decode(b"\x06\x05") == [UNDEFINED, None]


@pytest.mark.parametrize("data", [
    b"\x02\xff\xff" + b"x" * 10,  # string longer than the bytes
    b"\x0a\xff\xff\xff\xff\x05",  # strict array of 4 billion elements
    b"\x0c\x7f\xff\xff\xff",  # long string past the end
    b"\x03" * 100_000,  # objects nested 100k deep
    b"\x0a\x00\x00\x00\x01" * 100_000,  # arrays nested 100k deep
    b"\x09", b"\xff",
])
def test_hostile_amf_is_a_protocol_error(data):
    with pytest.raises(RemoteProtocolError, match="AMF0"):
        amf0_decode(data)


def test_truncation_at_every_offset_is_a_protocol_error():
    data = amf0_encode("publish", 5.0, None, "key", {"a": [1.0, "b", {"c": True}]})
    for i in range(len(data)):
        try:
            amf0_decode(data[:i])
        except RemoteProtocolError:
            pass


# -- FLV tag headers ------------------------------------------------------------------------
def test_legacy_avc_and_aac_headers():
    tag = parse_video_tag(b"\x27\x01\xff\xff\xdf" + b"nal")  # inter frame, CTS -33
    assert (tag.codec, tag.frame_type, tag.packet_type, tag.cts, tag.payload_offset) == ("avc1", 2, 1, -33, 5)
    audio = parse_audio_tag(b"\xaf\x00\x12\x10")
    assert (audio.codec, audio.packet_type, audio.payload_offset, audio.stereo) == ("mp4a", 0, 2, True)


def test_enhanced_headers():
    seq = parse_video_tag(b"\x90hvc1" + b"config")  # key frame, SequenceStart
    assert (seq.codec, seq.enhanced, seq.packet_type, seq.payload_offset) == ("hvc1", True, PACKET_SEQUENCE_START, 5)
    coded = parse_video_tag(b"\x91avc1\x00\x00\x21" + b"data")  # CodedFrames with CTS 33
    assert (coded.cts, coded.payload_offset) == (33, 8)
    x = parse_video_tag(b"\xa3av01" + b"obu")  # inter, CodedFramesX: no CTS
    assert (x.codec, x.packet_type, x.cts, x.payload_offset) == ("av01", PACKET_CODED_FRAMES, 0, 5)
    opus = parse_audio_tag(b"\x91Opus" + b"pkt")
    assert (opus.codec, opus.packet_type, opus.payload_offset) == ("Opus", 1, 5)


def test_multitrack_keeps_the_first_track():
    # Multitrack, ManyTracks of avc1 CodedFrames: track 1 (3+3 bytes), then track 2
    body = b"\x96" + b"\x11" + b"avc1" + b"\x01" + b"\x00\x00\x06" + b"\x00\x00\x00abc" + b"\x02\x00\x00\x02zz"
    tag = parse_video_tag(body)
    assert (tag.track_id, tag.codec, body[tag.payload_offset:tag.payload_end]) == (1, "avc1", b"abc")
    one = parse_video_tag(b"\x96\x01avc1\x00\x00\x00\x00xyz")  # OneTrack: track 0 to the end
    assert (one.track_id, b"\x96\x01avc1\x00\x00\x00\x00xyz"[one.payload_offset:]) == (0, b"xyz")
    with pytest.raises(RemoteProtocolError):
        parse_video_tag(b"\x96\x11avc1\x01\x00\x00\xff")  # track size past the end


def test_flv_header_truncation_at_every_offset():
    for body in (b"\x96\x11avc1\x01\x00\x00\x06\x00\x00\x00abc", b"\x17\x01\x00\x00\x00", b"\xaf\x01", b"\x97\x05\x00hvc1"):
        for i in range(len(body)):
            for fn in (parse_video_tag, parse_audio_tag):
                try:
                    fn(body[:i])
                except RemoteProtocolError:
                    pass


# -- NAL units ------------------------------------------------------------------------------
def test_nal_framing():
    au = b"\x00\x00\x00\x02\x09\xf0" + b"\x00\x00\x00\x03\x65\x88\x84"
    assert [bytes(u) for u in split_length_prefixed(au, 4)] == [b"\x09\xf0", b"\x65\x88\x84"]
    assert [bytes(u) for u in split_length_prefixed(b"\x02ab\x01c", 1)] == [b"ab", b"c"]
    for bad in (b"\x00\x00\x00\x00", b"\x00\x00\x00\x09abc", b"\x00\x00"):
        with pytest.raises(RemoteProtocolError):
            split_length_prefixed(bad, 4)
    stream = b"\x00\x00\x00\x01\x67abc\x00\x00\x01\x68de\x00\x00\x00\x01\x65f"
    assert [stream[s:e] for s, e in find_annexb_units(stream)] == [b"\x67abc", b"\x68de", b"\x65f"]
    assert unescape_rbsp(b"\x00\x00\x03\x01\x00\x00\x03\x00") == b"\x00\x00\x01\x00\x00\x00"


# -- AVC / AAC from a real encoder -----------------------------------------------------------
@pytest.mark.parametrize("size,rate,profile", [("640x360", 30, "high"), ("854x480", 25, "main"), ("1366x768", 50, "baseline")])
def test_avcc_and_sps_of_real_encodes_match_ffprobe(tmp_path, size, rate, profile):
    need("ffmpeg")
    path = tmp_path / "out.flv"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}", "-frames:v", "3",
                    "-c:v", "libx264", "-profile:v", profile, "-f", "flv", str(path)], check=True)
    probe = json.loads(subprocess.run(["ffprobe", "-v", "error", "-show_streams", "-of", "json", str(path)],
                                      check=True, capture_output=True, text=True).stdout)["streams"][0]
    seq = next(body for t, _, body in read_flv_tags(str(path)) if t == 9 and body[1] == 0)
    config = AvcConfig.parse(seq[5:])
    sps = parse_sps(config.sps[0])
    assert (sps.width, sps.height) == (probe["width"], probe["height"])
    assert sps.framerate == rate
    assert config.nal_length_size == 4
    assert config.codec_string == f"avc1.{config.profile:02x}{config.compatibility:02x}{probe['level']:02x}"
    assert {"high": 100, "main": 77, "baseline": 66}[profile] == config.profile == sps.profile_idc


def test_avcc_hostile():
    for bad in (b"\x01\x64\x00", b"\x01\x64\x00\x1f\xfe\xe1\x00\x05ab", b"\x01\x64\x00\x1f\xff\xe1\x00\x02\x67\x64\x01\x00\x09"):
        with pytest.raises(RemoteProtocolError):
            AvcConfig.parse(bad)
    for garbage in (b"\x67", b"\x67\x64\x00\x1f\xff\xff\xff\xff", b"\x67" + b"\x00" * 40, b"\x67\x64\x00\x1f" + b"\xff" * 40):
        with pytest.raises(RemoteProtocolError):
            parse_sps(garbage)


@pytest.mark.parametrize("asc,expected", [
    (b"\x12\x10", (2, 44100, 2, 1024)),
    (b"\x11\x90", (2, 48000, 2, 1024)),
    (b"\x11\x88", (2, 48000, 1, 1024)),
    (b"\x17\x80\x1f\x40\x10", (2, 16000, 2, 1024)),  # explicit 24-bit rate (escape index 15)
    (b"\x2b\x92\x08\x00", (5, 22050, 2, 1024)),
])
def test_audio_specific_config(asc, expected):
    c = AudioSpecificConfig.parse(asc)
    assert (c.object_type, c.sample_rate, c.channels, c.frame_length) == expected
    assert c.codec_string == f"mp4a.40.{expected[0]}"


@pytest.mark.parametrize("bad", [b"", b"\x12", b"\x07\x90", b"\x12\x78", b"\x16\x88"])
def test_audio_specific_config_hostile(bad):
    with pytest.raises(RemoteProtocolError):
        AudioSpecificConfig.parse(bad)
