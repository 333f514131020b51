"""A configuration change carried only in-band: an MPEG-TS source restreamed with ``-c copy`` sends
its new SPS/PPS in the key frame's NAL units and no new sequence header. The track is reconfigured
as a sequence header with those parameter sets would (new init segment, catalog, multivariant,
API); parameter sets repeated unchanged at every key frame change nothing."""

import asyncio
import json
import logging
import subprocess
import sys

import pytest

from rtmpq.codec import parse_video_tag, split_length_prefixed
from rtmpq.media.avc import AvcConfig, avcc_from_parameter_sets
from rtmpq.media.broadcast import Broadcast
from rtmpq.media.catalog import Catalog
from rtmpq.media.demux import BroadcastDemuxer
from rtmpq.media.flv import read_flv_tags
from rtmpq.media.hevc import HevcConfig, hvcc_from_parameter_sets, is_irap
from rtmpq.moq.client import subscribe_broadcast
from rtmpq.moq.transport import connect_moq

from .conftest import need, start_up_node, until
from .publishers import AUDIO_ENCODE, PYAV_PUBLISHER, run_process
from .test_edge import decoded_video, http_get, media_sequence, playlist_shape, until_ended

CHANGED = "parameter sets changed in-band"
SIZES = ("320x240", "640x360")


@pytest.fixture
async def node(tmp_path):
    n = await start_up_node(tmp_path)
    yield n
    await n.close()


@pytest.fixture(scope="module")
def ts_clips(tmp_path_factory):
    """Two 2 s MPEG-TS clips (x264 High, a key frame every second with SPS/PPS before it, AAC), one
    per size in SIZES."""
    need("ffmpeg")
    folder = tmp_path_factory.mktemp("ts")
    paths = []
    for size in SIZES:
        path = folder / f"{size}.ts"
        subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=30",
                        "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100", "-t", "2", "-c:v", "libx264",
                        "-preset", "veryfast", "-g", "30", "-pix_fmt", "yuv420p", *AUDIO_ENCODE, "-f", "mpegts",
                        str(path)], check=True)
        paths.append(str(path))
    return paths


async def restream(node, key: str, clips: list[str], reference) -> tuple[asyncio.Task, Broadcast]:
    """ffmpeg restreams the clips, one after the other, with -c copy in real time; the same copy
    goes to the FLV file ``reference`` (as fast as it goes: ffmpeg's tee muxer refuses MPEG-TS
    codec tags). Returns (the publish, the broadcast) once the broadcast is live and the edge
    packages it."""
    source = ["-i", "concat:" + "|".join(clips), "-map", "0", "-c", "copy", "-f", "flv"]
    rc, out = await run_process(["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", *source, str(reference)])
    assert rc == 0, out
    publish = asyncio.create_task(run_process(["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-re",
                                               *source, f"rtmp://127.0.0.1:{node.rtmp.address[1]}/live/{key}"]))
    broadcast = await node.registry.wait_for(f"live/{key}", 10)
    host, http_port = node.edge.address
    assert (await http_get(f"http://{host}:{http_port}/live/{key}/index.m3u8"))[0] == 200  # packaged from the start
    return publish, broadcast


def video_tags(path) -> list[tuple[int, list[int]]]:
    """(AVC packet type, NAL unit types of a key frame) of each video tag of an FLV file."""
    tags = []
    for tag_type, _, body in read_flv_tags(str(path)):
        if tag_type == 9:
            units = split_length_prefixed(memoryview(body)[5:], 4) if body[0] >> 4 == 1 and body[1] == 1 else []
            tags.append((body[1], [u[0] & 0x1F for u in units]))
    return tags


async def moq_catalog_with(node, broadcast: str, width: int) -> Catalog:
    """The first catalog a MoQ subscriber of ``broadcast`` gets whose video track is ``width`` wide."""
    host, port = node.moq_address
    async with connect_moq(host, port, insecure=True, backend=node.moq_config.backend) as conn:
        async for item in subscribe_broadcast(conn, broadcast):
            if isinstance(item, Catalog) and item.track("video").width == width:
                return item
    raise AssertionError(f"{broadcast} ended without a catalog of a {width} wide video track")


async def listed_at(node, broadcast: str, size: str) -> bool:
    """Whether the API and the multivariant playlist both give ``broadcast`` video of ``size``."""
    host, http_port = node.edge.address
    api = json.loads((await http_get(f"http://{host}:{http_port}/api/v1/broadcasts"))[2])
    tracks = [t for b in api["items"] if b["name"] == broadcast for t in b["tracks"] if t["name"] == "video"]
    master = (await http_get(f"http://{host}:{http_port}/{broadcast}/index.m3u8"))[2].decode()
    return [f"{t['width']}x{t['height']}" for t in tracks] == [size] and f"RESOLUTION={size}," in master


async def test_a_size_change_carried_only_in_band_gets_a_new_init_catalog_and_playlist(node, ts_clips, tmp_path, caplog):
    """320x240 then 640x360 restreamed from MPEG-TS: one sequence header (the first clip's), the
    second clip's SPS/PPS only in its key frames. After the switch the video playlist has
    EXT-X-DISCONTINUITY and a new EXT-X-MAP whose init decodes the following segments at 640x360;
    the multivariant playlist, the API and the MoQ catalog say 640x360; one log line."""
    ref = tmp_path / "ref.flv"
    host, http_port = node.edge.address
    base = f"http://{host}:{http_port}/live/inband"
    with caplog.at_level(logging.INFO, "rtmpq.media"):
        publish, _ = await restream(node, "inband", ts_clips, ref)
        catalog = asyncio.create_task(moq_catalog_with(node, "live/inband", 640))
        # while it is live: the API lists live broadcasts
        await until(lambda: listed_at(node, "live/inband", "640x360"), 10, "the API at 640x360", interval=0.1)
        rc, out = await publish
        assert rc == 0, out
        await until_ended(base)
        video = (await asyncio.wait_for(catalog, 15)).track("video")
    tags = video_tags(ref)
    assert [t for t, _ in tags].count(0) == 1 and all(t == 1 or t == 2 for t, _ in tags[1:])  # no second header
    assert len([units for _, units in tags if 7 in units]) == 4  # each key frame carries its SPS
    assert (video.width, video.height, video.codec) == (640, 360, "avc1.64001e")
    playlist = (await http_get(f"{base}/video.m3u8"))[2].decode()
    n = media_sequence(playlist)
    assert playlist_shape(playlist) == [
        f'#EXT-X-MAP:URI="v-init-{n}.mp4"', f"v-seg{n}.m4s", f"v-seg{n + 1}.m4s", "#EXT-X-DISCONTINUITY",
        f'#EXT-X-MAP:URI="v-init-{n + 1}.mp4"', f"v-seg{n + 2}.m4s", f"v-seg{n + 3}.m4s"], playlist
    audio = (await http_get(f"{base}/audio.m3u8"))[2].decode()  # the video's discontinuity, its own init
    assert playlist_shape(audio) == [
        f'#EXT-X-MAP:URI="a-init-{n}.mp4"', f"a-seg{n}.m4s", f"a-seg{n + 1}.m4s", "#EXT-X-DISCONTINUITY",
        f'#EXT-X-MAP:URI="a-init-{n}.mp4"', f"a-seg{n + 2}.m4s", f"a-seg{n + 3}.m4s"], audio
    for version, size in enumerate(SIZES):
        segments = [(await http_get(f"{base}/v-seg{n + 2 * version + i}.m4s"))[2] for i in (0, 1)]
        init = (await http_get(f"{base}/v-init-{n + version}.mp4"))[2]
        stream = await decoded_video(tmp_path / f"v{version}.mp4", init + b"".join(segments))
        assert f"{stream['width']}x{stream['height']}" == size and int(stream["nb_read_frames"]) == 60
    [line] = [r.getMessage() for r in caplog.records if CHANGED in r.getMessage()]
    assert "320x240 -> 640x360" in line and "live/#" in line and "inband" not in line, line


async def test_parameter_sets_repeated_at_every_key_frame_change_nothing(node, ts_clips, tmp_path, caplog):
    """The usual MPEG-TS restream: the same SPS/PPS before every key frame. One init segment, no
    discontinuity, the sequence header's configuration, no log line."""
    ref = tmp_path / "ref.flv"
    host, http_port = node.edge.address
    base = f"http://{host}:{http_port}/live/same"
    with caplog.at_level(logging.INFO, "rtmpq.media"):
        publish, broadcast = await restream(node, "same", ts_clips[:1], ref)
        rc, out = await publish
        assert rc == 0, out
        await until_ended(base)
    assert len([units for _, units in video_tags(ref) if 7 in units and 8 in units]) == 2  # both key frames
    playlist = (await http_get(f"{base}/video.m3u8"))[2].decode()
    n = media_sequence(playlist)
    assert playlist_shape(playlist) == [f'#EXT-X-MAP:URI="v-init-{n}.mp4"', f"v-seg{n}.m4s", f"v-seg{n + 1}.m4s"]
    header = next(body[5:] for tag_type, _, body in read_flv_tags(str(ref)) if tag_type == 9 and body[1] == 0)
    assert broadcast.catalog.track("video").init_data == bytes(header)
    assert not [r for r in caplog.records if CHANGED in r.getMessage()]


# -- the sans-I/O demuxer, with real encoder output -------------------------------------------------


def test_the_avcc_made_of_parameter_sets_is_the_one_ffmpeg_writes(ts_clips, tmp_path):
    """High profile: the 4 bytes of chroma format and bit depths after the PPS too (14496-15)."""
    flv = tmp_path / "a.flv"
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-i", ts_clips[0], "-c", "copy", str(flv)], check=True)
    header = next(body[5:] for tag_type, _, body in read_flv_tags(str(flv)) if tag_type == 9 and body[1] == 0)
    config = AvcConfig.parse(header)
    assert avcc_from_parameter_sets(config.sps, config.pps, config.nal_length_size) == bytes(header)


@pytest.fixture(scope="module")
def hevc_encodes(tmp_path_factory):
    """E-RTMP FLV files of libx265 (PyAV's FFmpeg), one per size in SIZES, a key frame every 10 frames."""
    folder = tmp_path_factory.mktemp("hevc")
    paths = []
    for size in SIZES:
        path = folder / f"{size}.flv"
        subprocess.run([sys.executable, PYAV_PUBLISHER, "-", str(path), "--video", "libx265", "--audio", "",
                        "--seconds", "0.7", "--size", size, "--gop", "10"], check=True, capture_output=True)
        paths.append(str(path))
    return paths


def hevc_record_and_frames(path) -> tuple[bytes, list[tuple[int, bytes]]]:
    """The hvcC of an E-RTMP FLV file and its coded frames (frame type, payload)."""
    record, frames = None, []
    for tag_type, _, body in read_flv_tags(path):
        if tag_type == 9:
            tag = parse_video_tag(body)
            payload = bytes(body[tag.payload_offset : tag.payload_end])
            if tag.packet_type == 0:
                record = payload
            elif tag.packet_type in (1, 3) and payload:
                frames.append((tag.frame_type, payload))
    return record, frames


def test_the_hvcc_made_of_parameter_sets_is_the_one_ffmpeg_writes(hevc_encodes):
    """The 320x240 encode's record with the 640x360 encode's VPS/SPS/PPS: the 640x360 record, but
    for the arrays that are not parameter sets (SEI)."""
    (small, _), (large, _) = (hevc_record_and_frames(p) for p in hevc_encodes)
    want = HevcConfig.parse(large)
    made = hvcc_from_parameter_sets(small, want.vps, want.sps, want.pps)
    assert HevcConfig.parse(made) == want and made[:22] == large[:22]


def test_an_hevc_size_change_in_band_reconfigures_the_track_before_its_key_frame(hevc_encodes, caplog):
    """libx265 at 320x240 (with its sequence header), then at 640x360 with its VPS/SPS/PPS in each
    key frame, as an MPEG-TS source carries them: the catalog changes right before the first
    640x360 key frame, once; the 320x240 ones with the same units in-band change nothing."""
    (small, small_frames), (large, large_frames) = (hevc_record_and_frames(p) for p in hevc_encodes)

    def in_band(record, frames):
        config = HevcConfig.parse(record)
        units = b"".join(len(u).to_bytes(4, "big") + u for u in (*config.vps, *config.sps, *config.pps))
        return [(kind, units + payload if is_irap(split_length_prefixed(payload, 4)) else payload)
                for kind, payload in frames]

    demuxer = BroadcastDemuxer("live/x", log_name="live/#x")
    out = demuxer.message(9, 0, b"\x90hvc1" + small)
    frames = in_band(small, small_frames) + in_band(large, large_frames)
    with caplog.at_level(logging.INFO, "rtmpq.media"):
        for i, (kind, payload) in enumerate(frames):
            out += demuxer.message(9, i * 33, bytes((0x91 | kind << 4,)) + b"hvc1\x00\x00\x00" + payload)
    catalogs = [i for i, item in enumerate(out) if isinstance(item, Catalog)]
    assert catalogs == [0, 1 + len(small_frames)], catalogs
    change = out[catalogs[1]].track("video")
    assert (change.width, change.height) == (640, 360) and out[catalogs[1] + 1].keyframe
    assert HevcConfig.parse(change.init_data) == HevcConfig.parse(large)
    assert demuxer.stats.frames["video"] == len(frames) and demuxer.stats.dropped == 0
    [line] = [r.getMessage() for r in caplog.records if CHANGED in r.getMessage()]
    assert "live/#x: video" in line and "320x240 -> 640x360" in line


def test_bad_in_band_parameter_sets_keep_the_configuration_and_are_logged_once(ts_clips, tmp_path, caplog):
    """Key frames whose in-band SPS does not parse: the track keeps its configuration and every
    frame, and one warning however many key frames repeat it."""
    flv = tmp_path / "a.flv"
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-i", ts_clips[0], "-an", "-c", "copy", str(flv)],
                   check=True)
    bad_sps = b"\x67\x64\x00\x1e" + bytes(12)  # seq_parameter_set_id: an exp-Golomb code that never ends
    demuxer = BroadcastDemuxer("live/x", log_name="live/#x")
    out = []
    with caplog.at_level(logging.INFO, "rtmpq.media"):
        for tag_type, ts, body in read_flv_tags(str(flv)):
            if tag_type == 9 and body[1] == 1 and body[0] >> 4 == 1:
                units = [bad_sps if u[0] & 0x1F == 7 else bytes(u) for u in split_length_prefixed(memoryview(body)[5:], 4)]
                body = bytes(body[:5]) + b"".join(len(u).to_bytes(4, "big") + u for u in units)
            out += demuxer.message(tag_type, ts, body)
    assert [type(item) for item in out].count(Catalog) == 1 and demuxer.stats.frames["video"] == 60
    assert demuxer.catalog.track("video").width == 320 and demuxer.stats.dropped == 0
    warnings = [r.getMessage() for r in caplog.records if "in-band parameter sets of video rejected" in r.getMessage()]
    assert len(warnings) == 1 and "live/#x" in warnings[0], caplog.text
