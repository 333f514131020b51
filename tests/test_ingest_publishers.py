"""Real publishers (ffmpeg, GStreamer) into the RTMP ingest: frames, timestamps, recording."""

import asyncio
import re
from pathlib import Path

import pytest

from rtmpq.config import IngestConfig, PublishConfig
from rtmpq.media.broadcast import BroadcastRegistry
from rtmpq.nodes.ingest import IngestNode

from .conftest import need
from .publishers import (
    as_packets,
    collect_broadcast,
    count_decoded_frames,
    ffmpeg_publish_args,
    probe_packets,
    run_process,
)


@pytest.fixture
async def ingest(tmp_path):
    registry = BroadcastRegistry()
    server = IngestNode(registry, IngestConfig(host="127.0.0.1", port=0, record_dir=tmp_path / "rec"), PublishConfig(grace_period=0))
    await server.start()
    server.port = server.address[1]
    yield server
    await server.close()


def recordings(root: Path, key: str) -> list[Path]:
    return sorted((root / "live").glob(f"{key}-*.flv"))


async def test_two_ffmpeg_publishers_arrive_frame_exact_and_are_recorded(ingest, tmp_path):
    need("ffmpeg")
    keys = ["cam1", "cam2"]
    refs = {k: str(tmp_path / f"{k}-reference.flv") for k in keys}
    collectors = {k: asyncio.create_task(collect_broadcast(ingest.registry, f"live/{k}")) for k in keys}
    results = await asyncio.gather(*(
        run_process(ffmpeg_publish_args(f"rtmp://127.0.0.1:{ingest.port}/live/{k}", refs[k])) for k in keys
    ))
    for rc, output in results:
        assert rc == 0, output
    for key in keys:
        catalogs, frames = await collectors[key]
        reference = probe_packets(refs[key])
        assert len(reference) > 100
        # every frame arrived, in order, with the encoder's dts, pts, keyframe flag and size
        assert as_packets(frames) == reference
        video = [f for f in frames if f.track == "video"]
        assert any(f.pts != f.dts for f in video), "B-frames expected"
        # one group per GoP: each video group opens with its keyframe, audio follows the groups
        assert [f.group for f in video if f.keyframe] == list(range(len({f.group for f in video})))
        assert all(f.keyframe == (f.index == 0) for f in video)
        catalog = catalogs[-1]
        v, a = catalog.track("video"), catalog.track("audio")
        assert v.codec.startswith("avc1.64") and (v.width, v.height) == (320, 240)
        assert a.codec == "mp4a.40.2" and a.sample_rate == 44100 and a.channels == 2
        # the recording is an exact remux: same packets, decodes with the same frame count
        [recording] = recordings(tmp_path / "rec", key)
        assert probe_packets(str(recording)) == reference
        assert count_decoded_frames(str(recording)) == count_decoded_frames(refs[key])


async def test_gstreamer_publisher_with_4096_byte_chunks(ingest, tmp_path):
    need("gst-launch-1.0")
    url = f"rtmp://127.0.0.1:{ingest.port}/live/gst"
    collector = asyncio.create_task(collect_broadcast(ingest.registry, "live/gst"))
    pipeline = (
        "videotestsrc num-buffers=90 ! video/x-raw,width=320,height=240,framerate=30/1 "
        "! x264enc key-int-max=60 bframes=2 tune=zerolatency ! h264parse ! tee name=v "
        "audiotestsrc num-buffers=130 samplesperbuffer=1024 ! audio/x-raw,rate=44100,channels=2 "
        "! avenc_aac ! aacparse ! tee name=a "
        f"flvmux name=live streamable=true ! rtmp2sink location={url} chunk-size=4096 "
        f"flvmux name=file streamable=true ! filesink location={tmp_path / 'gst-reference.flv'} "
        "v. ! queue ! live.  a. ! queue ! live.  v. ! queue ! file.  a. ! queue ! file."
    )
    rc, output = await run_process(["gst-launch-1.0", "-q", "-e", *pipeline.split()], timeout=40)
    assert rc == 0, output
    catalogs, frames = await collector
    reference = probe_packets(str(tmp_path / "gst-reference.flv"))
    received = as_packets(frames)
    # two live flvmux instances interleave the tracks and derive dts each their own way (from
    # their own running time): compare track by track, presentation times relative to the first
    def relative(packets, track):
        packets = [p for p in packets if p.track == track]
        t0 = packets[0].pts
        return [(p.pts - t0, p.keyframe, p.size) for p in packets]

    for track in ("video", "audio"):
        assert relative(received, track) == relative(reference, track), track
    assert len([p for p in reference if p.track == "video"]) == 90
    [recording] = recordings(tmp_path / "rec", "gst")
    # the recording holds exactly what arrived (GStreamer also repeats onMetaData mid-stream,
    # which ffprobe lists as a data stream: those tags are kept too, but are not frames)
    assert [p for p in probe_packets(str(recording)) if p.track in ("audio", "video")] == received


async def test_a_publish_without_media_leaves_no_recording_and_a_short_one_does(ingest, tmp_path):
    """connect + publish + deleteStream with no audio or video left a 13-byte FLV (its header
    alone) in the recording directory; a short ffmpeg publish still leaves its file."""
    from .conftest import until
    from .rtmp_client import TcpPublisher

    publisher = await TcpPublisher.publish(ingest.port, "empty")
    await until(lambda: list((tmp_path / "rec").rglob("empty-*.flv")), 10, "the recording opened")
    publisher.command(0, "deleteStream", 4.0, None, float(publisher.stream_id))
    await until(lambda: not ingest.publishes and not ingest._finalizing, 10, "the recording closed")
    publisher.close()
    assert recordings(tmp_path / "rec", "empty") == []

    need("ffmpeg")
    ref = str(tmp_path / "short.flv")
    rc, output = await run_process(ffmpeg_publish_args(f"rtmp://127.0.0.1:{ingest.port}/live/short", ref, seconds=1))
    assert rc == 0, output
    await until(lambda: not ingest.publishes and not ingest._finalizing, 10, "the recording closed")
    [recording] = recordings(tmp_path / "rec", "short")
    assert probe_packets(str(recording)) == probe_packets(ref)


async def test_an_encoder_cut_off_early_leaves_a_recording_that_says_how_long_it_is(ingest, tmp_path):
    """ffmpeg puts the length it means to send in onMetaData (`-t 30`, or the length of a file
    it restreams); an encoder that died 2 s in left a recording whose duration said 30 s, so
    players showed a 30 s file and seeked into nothing. Closing the recording writes the length
    it holds, as ffmpeg's own FLV writer does at its end."""
    import json
    import os
    import signal

    from .conftest import until
    from .test_lifecycle import long_publish_args, spawn

    need("ffmpeg")
    encoder = await spawn(long_publish_args(f"rtmp://127.0.0.1:{ingest.port}/live/cut", seconds=30))
    try:
        await until(lambda: "live/cut" in ingest.publishes
                    and ingest.publishes["live/cut"].demuxer.stats.frames["video"] > 60, what="2 s of the publish")
    finally:
        os.kill(encoder.pid, signal.SIGKILL)  # the encoder dies: no FCUnpublish, no trailer
        await encoder.wait()
    await until(lambda: not ingest.publishes and not ingest._finalizing, 10, "the recording closed")
    [recording] = recordings(tmp_path / "rec", "cut")
    rc, out = await run_process(["ffprobe", "-v", "error", "-show_entries", "format=duration,size",
                                 "-of", "json", str(recording)])
    assert rc == 0, out
    duration = float(json.loads(out)["format"]["duration"])
    packets = probe_packets(str(recording))
    held = (max(p.pts for p in packets) - min(p.pts for p in packets)) / 1000
    assert 1.9 < held and abs(duration - held) < 0.1, (duration, held)  # within a few frames


async def test_a_codec_that_is_not_carried_is_named_for_the_streamer(ingest, tmp_path, caplog):
    """ffmpeg's FLV defaults are Sorenson H.263 and MP3 (a publish without -c:v/-c:a): the log
    said "video codec 'legacy-2'" and "audio codec '.mp3'", which tells a streamer nothing. It
    names the codec, what is carried instead and the ffmpeg option that sends it, and which
    publisher sent it (the line named the broadcast alone)."""
    need("ffmpeg")
    rc, output = await run_process([
        "ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-re", "-f", "lavfi", "-i",
        "testsrc2=size=320x240:rate=30", "-f", "lavfi", "-i", "sine", "-t", "1", "-f", "flv",
        f"rtmp://127.0.0.1:{ingest.port}/live/defaults"])
    assert rc == 0, output
    # the publisher's address, and (an open node: the key is the name) a hash for the broadcast
    lines = [r.getMessage() for r in caplog.records if "not carried" in r.getMessage()]
    assert all(re.match(r"127\.0\.0\.1:\d+: live/#[0-9a-f]{8}: ", line) for line in lines), lines
    lines = [line.split(": ", 2)[2] for line in lines]
    assert lines == [
        "audio codec MP3 (FLV '.mp3') is not carried; its frames are dropped "
        "(carried: AAC, Opus, AC-3, E-AC-3; ffmpeg: -c:a aac)",
        "video codec Sorenson H.263 (FLV 'legacy-2') is not carried; its frames are dropped "
        "(carried: H.264, HEVC, AV1, VP9; ffmpeg: -c:v libx264)",
    ], lines


async def test_a_player_asking_for_rtmp_playback_is_told_where_to_watch(ingest):
    """ffplay/ffprobe rtmp://HOST/live/NAME read "Server error: unknown command 'play'"."""
    need("ffprobe")
    rc, output = await run_process(["ffprobe", "-hide_banner", "-v", "error", "-rw_timeout", "5000000",
                                    f"rtmp://127.0.0.1:{ingest.port}/live/cam"], timeout=15)
    assert rc != 0 and "RTMP playback is not offered" in output and "LL-HLS" in output, output
