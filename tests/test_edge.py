"""LL-HLS edge: ffmpeg publishes over RTMP into `rtmpq up`, ffmpeg/ffprobe play it back over HTTP."""

import asyncio
import functools
import json
import math
import re
import subprocess
import threading
import time
import urllib.request
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rtmpq.edge.llhls import sequence_base
from rtmpq.media.flv import FlvWriter, read_flv_tags

from .conftest import need, start_up_node, until
from .publishers import AUDIO_ENCODE, VIDEO_ENCODE, LivePublish, end_live_publish, ffmpeg_publish_args, probe_packets, run_process
from .rtmp_client import TcpPublisher


@pytest.fixture
async def node(tmp_path):
    n = await start_up_node(tmp_path)  # the edge works the same on either QUIC backend
    yield n
    await n.close()


def media_sequence(playlist: str) -> int:
    return int(re.search(r"^#EXT-X-MEDIA-SEQUENCE:(\d+)$", playlist, re.M)[1])


def playlist_shape(playlist: str) -> list[str]:
    """EXT-X-MAP, EXT-X-DISCONTINUITY and segment lines (not parts)."""
    return [line for line in playlist.splitlines() if line.startswith("#EXT-X-MAP") or line == "#EXT-X-DISCONTINUITY"
            or line.endswith("m4s") and "PART" not in line]


async def http_get(url: str, timeout: float = 15.0) -> tuple[int, dict, bytes]:
    def fetch():
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()
    return await asyncio.to_thread(fetch)


async def count_frames(url: str) -> dict[str, int]:
    rc, out = await run_process(["ffprobe", "-v", "error", "-count_frames", "-show_entries",
                                 "stream=codec_type,nb_read_frames", "-of", "json", url], timeout=60)
    assert rc == 0, out
    return {s["codec_type"]: int(s["nb_read_frames"]) for s in json.loads(out)["streams"]}


async def test_ffmpeg_plays_the_ll_hls_playlist_live_and_after_the_end(node, tmp_path):
    need("ffmpeg")
    ref = str(tmp_path / "ref.flv")
    rtmp_port = node.rtmp.address[1]
    host, http_port = node.edge.address
    base = f"http://{host}:{http_port}/live/show"
    # live until the live checks are done (ffmpeg has played 2 s of it, which takes from ~2.2 s after
    # the first segment to ~3 s when its playlist reload, every half target duration, just misses
    # segment 1), then ended (30 s at most)
    publisher = LivePublish(ffmpeg_publish_args(f"rtmp://127.0.0.1:{rtmp_port}/live/show", ref, seconds=30))
    await node.registry.wait_for("live/show", 10)
    # while live: the player decodes what is there without a single error
    status, headers, body = await http_get(f"{base}/index.m3u8")
    assert status == 200 and headers["Content-Type"] == "application/vnd.apple.mpegurl"
    assert headers["Access-Control-Allow-Origin"] == "*"
    text = body.decode()
    assert 'CODECS="avc1.' in text and "mp4a.40.2" in text and "RESOLUTION=320x240" in text
    assert 'FRAME-RATE=30.000' in text and 'AUDIO="audio"' in text
    assert '#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="audio"' in text and 'URI="audio.m3u8"' in text
    for _ in range(100):  # a plain HLS player starts once a whole segment exists (it ignores parts)
        if "#EXTINF" in (await http_get(f"{base}/video.m3u8"))[2].decode():
            break
        await asyncio.sleep(0.1)
    rc, out = await run_process(["ffmpeg", "-v", "error", "-xerror", "-i", f"{base}/index.m3u8", "-t", "2", "-f", "null", "-"], timeout=60)
    assert rc == 0 and out.strip() == "", out
    media = (await http_get(f"{base}/video.m3u8"))[2].decode()
    assert "#EXT-X-PART:" in media and "INDEPENDENT=YES" in media and "#EXT-X-PRELOAD-HINT:TYPE=PART" in media
    assert "CAN-BLOCK-RELOAD=YES" in media and "#EXT-X-PROGRAM-DATE-TIME:" in media
    await publisher.finish()
    await asyncio.sleep(0.5)
    for rendition in ("video", "audio"):
        media = (await http_get(f"{base}/{rendition}.m3u8"))[2].decode()
        assert media.rstrip().endswith("#EXT-X-ENDLIST")
    # after the end: every published frame is in the playlist and decodes
    reference = probe_packets(ref)
    counts = await count_frames(f"{base}/index.m3u8")
    assert counts["video"] == len([p for p in reference if p.track == "video"])
    assert counts["audio"] == len([p for p in reference if p.track == "audio"])


async def test_blocking_reload_returns_when_the_next_part_exists(node, tmp_path):
    need("ffmpeg")
    rtmp_port = node.rtmp.address[1]
    host, http_port = node.edge.address
    base = f"http://{host}:{http_port}/live/block"
    publisher = asyncio.create_task(run_process(ffmpeg_publish_args(f"rtmp://127.0.0.1:{rtmp_port}/live/block", str(tmp_path / "r.flv"), seconds=4)))
    await node.registry.wait_for("live/block", 10)
    media = (await http_get(f"{base}/video.m3u8"))[2].decode()
    hint = re.search(r'PRELOAD-HINT:TYPE=PART,URI="v-seg(\d+)\.(\d+)\.m4s"', media)
    msn, part = int(hint[1]), int(hint[2])
    assert f'URI="v-seg{msn}.{part}.m4s"' not in media.split("PRELOAD-HINT")[0]  # not there yet
    started = time.monotonic()
    status, _, body = await http_get(f"{base}/video.m3u8?_HLS_msn={msn}&_HLS_part={part + 30}")
    # at once: held, it would wait for the part (~6 s away) or the blocking limit (3 s)
    assert (status, time.monotonic() - started < 1.0) == (400, True), body
    status, _, body = await http_get(f"{base}/video.m3u8?_HLS_msn={msn + 1}&_HLS_part=30")
    assert status == 400, body
    status, _, body = await http_get(f"{base}/video.m3u8?_HLS_msn={msn}&_HLS_part={part}")
    assert status == 200
    assert f'URI="v-seg{msn}.{part}.m4s"' in body.decode().split("PRELOAD-HINT")[0]
    # the hinted part itself can be requested ahead: the response comes once it is complete
    hint = re.search(r'PRELOAD-HINT:TYPE=PART,URI="(v-seg\d+\.\d+\.m4s)"', body.decode())[1]
    status, headers, data = await http_get(f"{base}/{hint}")
    assert status == 200 and headers["Content-Type"] == "video/mp4" and data[4:8] == b"moof"
    # far-future requests are refused, not held (RFC 8216bis 6.2.5.2: more than two segments,
    # or more than the Part Limit of three parts, past the last in the playlist)
    status, _, _ = await http_get(f"{base}/video.m3u8?_HLS_msn={msn + 10}")
    assert status == 400
    rc, output = await publisher
    assert rc == 0, output


async def test_unknown_broadcast_and_bad_paths(node):
    host, port = node.edge.address
    status, headers, body = await http_get(f"http://{host}:{port}/live/nobody/index.m3u8")
    assert status == 404 and b"no such broadcast" in body
    status, _, _ = await http_get(f"http://{host}:{port}/../../etc/passwd")
    assert status == 404
    # the player page's address typed without its trailing slash: sent to the page, query and all
    status, headers, _ = await http_get(f"http://{host}:{port}/live/nobody?latency=2")
    assert status == 200 and headers["Content-Type"].startswith("text/html")


# -- ffmpeg's warnings on the multivariant playlist, against ffmpeg's own HLS muxer -----------------
def ffmpeg_warnings(output: str) -> list[str]:
    """ffmpeg's log lines without the context pointers, so two runs compare line by line."""
    return [re.sub(r" @ 0x[0-9a-f]+", "", line) for line in output.splitlines() if line.strip()]


def warning_kinds(output: str) -> set[str]:
    return {re.sub(r"\d+", "N", line) for line in ffmpeg_warnings(output)}


async def inside_group(broadcast, group: int, video_frames: int = 24) -> None:
    """Wait until the publish is ``video_frames`` frames into group ``group`` (or later)."""
    for _ in range(400):
        current = broadcast._current_group
        if current and current[0].group >= group and sum(f.track == "video" for f in current) >= video_frames:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the publish never got {video_frames} frames into group {group}")


async def assert_reads_every_frame(playlist_url: str, publisher, ref: str) -> None:
    """ffprobe reading ``playlist_url`` from its oldest listed segment until ENDLIST (after the
    ``publisher`` task ends) counts every video and audio frame of the reference file ``ref``."""
    reader = asyncio.create_task(run_process(
        ["ffprobe", "-v", "error", "-live_start_index", "0", "-count_frames", "-show_entries",
         "stream=codec_type,nb_read_frames", "-of", "json", playlist_url], timeout=60))
    rc, output = await publisher
    assert rc == 0, output
    rc, out = await reader
    assert rc == 0, out
    counts = {s["codec_type"]: int(s["nb_read_frames"]) for s in json.loads(out)["streams"]}
    reference = probe_packets(ref)
    assert counts["video"] == sum(p.track == "video" for p in reference)
    assert counts["audio"] == sum(p.track == "audio" for p in reference)


DTS_WARNING = "Application provided invalid, non monotonically increasing dts to muxer"
MOOV_WARNING = "Found duplicated MOOV Atom. Skipped it"


def cut_at_second_gop(source, path, audio_lead_ms: int) -> None:
    """The source from its second keyframe on (as an edge that joins there sees it), audio moved a
    few ms so its first frame comes ``audio_lead_ms`` before the first video presentation time."""
    tags = list(read_flv_tags(str(source)))
    keyframes = [ts for t, ts, body in tags if t == 9 and body[:2] == b"\x17\x01"]
    start = keyframes[1]
    idr = next(body for t, ts, body in tags if t == 9 and ts == start and body[:2] == b"\x17\x01")
    first_pts = start + int.from_bytes(idr[2:5], "big")
    first_audio = min(ts for t, ts, body in tags if t == 8 and body[1] == 1 and ts >= start)
    shift = first_pts - audio_lead_ms - first_audio
    with open(path, "wb") as f:
        w = FlvWriter(f)
        for t, ts, body in tags:
            if t == 18 or (t in (8, 9) and body[1] == 0):
                w.write_tag(t, 0, body)  # metadata (ffmpeg's HLS muxer wants its bitrates), sequence headers
            elif t == 9 and ts >= start:
                w.write_tag(t, ts, body)
            elif t == 8 and ts + shift >= start:
                w.write_tag(t, ts + shift, body)


async def read_with_ffmpeg(url: str, *extra: str) -> str:
    rc, out = await run_process(["ffmpeg", "-hide_banner", "-nostdin", "-v", "warning", "-i", url, *extra,
                                 "-f", "null", "-"], timeout=60)
    assert rc == 0, out
    return out


async def decoded_video(path, media: bytes) -> dict:
    """ffprobe's width, height and nb_read_frames of the video of ``media`` (an init segment and
    its segments), written to ``path``, once ffmpeg decoded all of it without an error."""
    path.write_bytes(media)
    rc, out = await run_process(["ffmpeg", "-v", "error", "-xerror", "-i", str(path), "-f", "null", "-"])
    assert rc == 0 and out == "", out
    rc, out = await run_process(["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v",
                                 "-show_entries", "stream=width,height,nb_read_frames", "-of", "json", str(path)])
    [stream] = json.loads(out)["streams"]
    return stream


async def until_ended(base: str) -> None:
    """Wait until the video and audio playlists under ``base`` end (EXT-X-ENDLIST)."""
    async with asyncio.timeout(15):
        for rendition in ("video", "audio"):
            while not (await http_get(f"{base}/{rendition}.m3u8"))[2].rstrip().endswith(b"#EXT-X-ENDLIST"):
                await asyncio.sleep(0.1)


async def publish_flv_and_end(node, key: str, path) -> None:
    """Publish every tag of an FLV at once, with the edge already packaging the broadcast; return
    once both renditions have ended."""
    host, http_port = node.edge.address
    base = f"http://{host}:{http_port}/live/{key}"
    publisher = await TcpPublisher.publish(node.rtmp.address[1], key)
    assert (await http_get(f"{base}/"))[0] == 200  # the edge opens the broadcast before any frame
    for tag_type, ts, body in read_flv_tags(str(path)):
        if tag_type in (8, 9):
            publisher.media(tag_type, ts, body)
    publisher.close()
    await until_ended(base)


def second_key_frame(tags) -> int:
    """Index of the second AVC key frame of FLV tags: where their second group begins."""
    return [i for i, (t, _, body) in enumerate(tags) if t == 9 and body[:2] == b"\x17\x01"][1]


def coded_frames(tags) -> dict[str, int]:
    """Video and audio frames of FLV tags (AVC/AAC; sequence headers not counted)."""
    return {"video": sum(t == 9 and body[1] == 1 for t, _, body in tags),
            "audio": sum(t == 8 and body[1] == 1 for t, _, body in tags)}


async def end_and_decode(publisher: TcpPublisher, rest, base: str, sent: dict[str, int]) -> None:
    """Send the rest of the tags and end the publish; a player of the HLS playlist under ``base``
    then decodes ``sent`` frames of each kind."""
    for tag_type, ts, body in rest:
        publisher.media(tag_type, ts, body)
    publisher.close()
    await until_ended(base)
    assert await count_frames(f"{base}/index.m3u8") == sent


async def test_a_publisher_that_sends_its_first_media_with_publish_plays_every_frame(node, source_flv):
    """An encoder that does not wait for NetStream.Publish.Start sends its metadata, its sequence
    headers (once) and its first group in the same write as ``publish``: the broadcast gets its
    video and audio from them, and a player of the HLS playlist decodes every frame sent."""
    need("ffprobe")
    set_data_frame = b"\x02\x00\x0d@setDataFrame"  # what an RTMP encoder puts before onMetaData
    tags = [(t, ts, set_data_frame + body if t == 18 else body)
            for t, ts, body in read_flv_tags(str(source_flv)) if t in (8, 9, 18) and ts < 4000]
    second_group = second_key_frame(tags)
    publisher = await TcpPublisher.publish(node.rtmp.address[1], "pipelined", pipelined=tags[:second_group])
    broadcast = await node.registry.wait_for("live/pipelined", 10)
    await until(lambda: broadcast.catalog.track("video") and broadcast.catalog.track("audio"), 10,
                "the catalog with the pipelined sequence headers' video and audio")
    base = "http://{}:{}/live/pipelined".format(*node.edge.address)
    assert (await http_get(f"{base}/"))[0] == 200
    await end_and_decode(publisher, tags[second_group:], base, coded_frames(tags))


async def test_timestamps_below_zero_and_a_frame_shown_before_it_is_decoded_play_and_reach_moq(node, source_flv):
    """A publisher whose coded frames start 40 ms below its sequence headers' time 0 (sent as
    2**32 - 40: serial arithmetic reads a step back) and one of whose video frames has a negative
    composition offset (shown before it is decoded; FLV's CompositionTime is signed): a player of
    the HLS playlist decodes every frame sent, and a MoQ subscriber gets every frame, never one
    shown before its decode time or before 0. Before, the packager failed on a negative decode
    time (its parts ended there) and the MoQ object of the negative offset could not be encoded."""
    from rtmpq.media.catalog import Catalog
    from rtmpq.moq.client import SkippedGroup, subscribe_broadcast
    from rtmpq.moq.transport import connect_moq

    from .test_demux import stamped_early

    need("ffprobe")
    tags = stamped_early([tag for tag in read_flv_tags(str(source_flv)) if tag[0] in (8, 9) and tag[1] < 4000])
    frames = []

    async def subscriber():
        async with connect_moq(*node.moq_address, insecure=True, backend=node.moq_config.backend) as conn:
            async for item in subscribe_broadcast(conn, "live/early", wait=10):
                if not isinstance(item, (Catalog, SkippedGroup)):
                    frames.append(item)

    task = asyncio.create_task(subscriber())
    try:
        base = "http://{}:{}/live/early".format(*node.edge.address)
        publisher = await TcpPublisher.publish(node.rtmp.address[1], "early")
        assert (await http_get(f"{base}/"))[0] == 200  # the edge packages from the first frame
        second_group = second_key_frame(tags)
        for tag_type, ts, body in tags[:second_group]:
            publisher.media(tag_type, ts, body)
        await until(lambda: frames, 10, "the MoQ subscriber's first frame (it starts with the group in progress)")
        sent = coded_frames(tags)
        await end_and_decode(publisher, tags[second_group:], base, sent)
        await asyncio.wait_for(task, 10)
    finally:
        task.cancel()
    got = {kind: sum(f.track == kind for f in frames) for kind in ("video", "audio")}
    assert got == sent
    assert all(0 <= f.dts <= f.pts for f in frames), [(f.track, f.dts, f.pts) for f in frames if not 0 <= f.dts <= f.pts]


async def test_ffmpeg_reads_the_multivariant_playlist_as_it_reads_its_own_hls_output(node, tmp_path, source_flv):
    """ffmpeg decoding rtmpq's multivariant playlist (video + the audio rendition) to null prints
    exactly what it prints for the same stream packaged by its own HLS muxer (fMP4, separate audio
    rendition, the 1 ms clock of the FLV source): nothing when the audio starts some frames before
    the video, and the "non monotonically increasing dts" warning on every third frame when the
    first audio frame leads the first video picture by exactly 1.5 frame durations (50 ms at 30
    fps). That warning is ffmpeg 5.1's: it rounds video timestamps, taken from the earliest start
    of all streams, to a 1/30 s time base, and a half-frame offset makes two frames round alike."""
    need("ffmpeg")
    host, http_port = node.edge.address
    for key, lead, expect_dts_warnings in (("clean", 60, False), ("tie", 50, True)):
        flv = tmp_path / f"{key}.flv"
        cut_at_second_gop(source_flv, flv, lead)
        await publish_flv_and_end(node, key, flv)
        ours = await read_with_ffmpeg(f"http://{host}:{http_port}/live/{key}/index.m3u8")
        ref_dir = tmp_path / f"ref-{key}"
        ref_dir.mkdir()
        rc, out = await run_process([
            "ffmpeg", "-hide_banner", "-loglevel", "error", "-i", str(flv), "-map", "0:v", "-map", "0:a", "-c", "copy",
            "-f", "hls", "-hls_segment_type", "fmp4", "-hls_segment_options", "video_track_timescale=1000",
            "-hls_time", "2", "-hls_playlist_type", "vod", "-var_stream_map", "v:0,agroup:aud a:0,agroup:aud,default:yes",
            "-master_pl_name", "index.m3u8", "-hls_segment_filename", str(ref_dir / "seg_%v_%d.m4s"),
            "-hls_fmp4_init_filename", "init.mp4", str(ref_dir / "stream_%v.m3u8")])
        assert rc == 0, out
        reference = await read_with_ffmpeg(str(ref_dir / "index.m3u8"))
        assert ffmpeg_warnings(ours) == ffmpeg_warnings(reference), (key, ours, reference)
        if expect_dts_warnings:
            assert DTS_WARNING in reference and warning_kinds(reference) == {
                f"[null] {DTS_WARNING} in stream N: N >= N"}, reference
        else:
            assert ours == "", ours


async def test_ffmpeg_rereads_the_init_segment_of_any_live_fmp4_playlist(node, tmp_path):
    """ffmpeg 5.1 reading a live fMP4 playlist logs "Found duplicated MOOV Atom" after playlist
    reloads (its HLS demuxer makes a new EXT-X-MAP entry per reload and feeds the init segment to
    the MP4 demuxer again), for ffmpeg's own live HLS output as for rtmpq's. rtmpq's live
    playlist gives ffmpeg no warning of another kind."""
    need("ffmpeg")
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(ref_dir))
    handler.log_message = lambda *args: None
    reference_server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=reference_server.serve_forever, daemon=True).start()
    host, http_port = node.edge.address
    try:
        publish = asyncio.create_task(run_process([
            "ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-re", "-f", "lavfi",
            "-i", "testsrc2=size=320x240:rate=30", "-t", "12", "-map", "0:v", "-c:v", "libx264", "-preset", "veryfast",
            "-tune", "zerolatency", "-g", "30", "-pix_fmt", "yuv420p", "-b:v", "400k", "-flags", "+global_header",
            "-f", "tee",
            f"[f=flv]rtmp://127.0.0.1:{node.rtmp.address[1]}/live/moov|"
            f"[f=hls:hls_segment_type=fmp4:hls_time=1:hls_list_size=6]{ref_dir}/live.m3u8"]))
        await node.registry.wait_for("live/moov", 10)
        ours_url = f"http://{host}:{http_port}/live/moov/video.m3u8"
        ref_url = f"http://127.0.0.1:{reference_server.server_address[1]}/live.m3u8"
        async with asyncio.timeout(15):  # both players start once a few segments exist
            while (await http_get(ours_url))[2].count(b"#EXTINF") < 3 or \
                    not (ref_dir / "live.m3u8").exists() or (ref_dir / "live.m3u8").read_text().count("#EXTINF") < 3:
                await asyncio.sleep(0.1)
        ours, reference = await asyncio.gather(read_with_ffmpeg(ours_url, "-t", "4"),
                                               read_with_ffmpeg(ref_url, "-t", "4"))
        await end_live_publish(publish)
    finally:
        reference_server.shutdown()
    assert f"[mov,mp4,m4a,3gp,3g2,mj2] {MOOV_WARNING}" in ffmpeg_warnings(reference), reference
    assert warning_kinds(ours) <= warning_kinds(reference) | {"    Last message repeated N times"}, (ours, reference)


async def test_a_new_avcc_mid_broadcast_gets_a_new_init_segment_uri_and_a_discontinuity(node, tmp_path):
    """The publisher's encoder restarts at another resolution: the segments after the change name
    a new init segment (a URI of its own, so a cached old one cannot be applied to them) behind
    EXT-X-DISCONTINUITY, and each init segment with its own segments decodes every frame."""
    need("ffmpeg")
    host, http_port = node.edge.address
    base = f"http://{host}:{http_port}/live/restart"
    encodes = []
    for size in ("320x240", "640x360"):
        path = tmp_path / f"{size}.flv"
        subprocess.run(
            ["ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=30",
             "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100", "-t", "2", "-c:v", "libx264",
             "-preset", "veryfast", "-bf", "2", "-g", "30", "-pix_fmt", "yuv420p", "-b:v", "400k", *AUDIO_ENCODE,
             "-f", "flv", str(path)], check=True)
        encodes.append([tag for tag in read_flv_tags(str(path)) if tag[0] in (8, 9)])
    publisher = await TcpPublisher.publish(node.rtmp.address[1], "restart")
    assert (await http_get(f"{base}/"))[0] == 200  # the edge packages it from the first frame
    offset = 0
    for tags in encodes:
        for tag_type, ts, body in tags:
            publisher.media(tag_type, offset + ts, body)
        offset += 2000
    publisher.close()
    await until_ended(base)
    playlist = (await http_get(f"{base}/video.m3u8"))[2].decode()
    tags = playlist_shape(playlist)
    n = media_sequence(playlist)  # the broadcast's first segment and init version (sequence_base)
    assert tags == [f'#EXT-X-MAP:URI="v-init-{n}.mp4"', f"v-seg{n}.m4s", f"v-seg{n + 1}.m4s", "#EXT-X-DISCONTINUITY",
                    f'#EXT-X-MAP:URI="v-init-{n + 1}.mp4"', f"v-seg{n + 2}.m4s", f"v-seg{n + 3}.m4s"], playlist
    audio = (await http_get(f"{base}/audio.m3u8"))[2].decode()
    # its own config did not change (one init), but it counts the video's discontinuity at the same
    # segment (players map audio timestamps by the discontinuity sequence: tests/test_browser.py)
    assert playlist_shape(audio) == [
        f'#EXT-X-MAP:URI="a-init-{n}.mp4"', f"a-seg{n}.m4s", f"a-seg{n + 1}.m4s", "#EXT-X-DISCONTINUITY",
        f'#EXT-X-MAP:URI="a-init-{n}.mp4"', f"a-seg{n + 2}.m4s", f"a-seg{n + 3}.m4s"], audio
    for version, (segments, size) in enumerate(((["v-seg%d.m4s" % n, "v-seg%d.m4s" % (n + 1)], (320, 240)),
                                                 (["v-seg%d.m4s" % (n + 2), "v-seg%d.m4s" % (n + 3)], (640, 360)))):
        status, headers, init = await http_get(f"{base}/v-init-{n + version}.mp4")
        assert status == 200 and headers["Cache-Control"] == "max-age=60"
        media = init + b"".join([(await http_get(f"{base}/{name}"))[2] for name in segments])
        stream = await decoded_video(tmp_path / f"version{version}.mp4", media)
        sent = len([t for t in encodes[version] if t[0] == 9 and t[2][1] == 1])
        assert (stream["width"], stream["height"], int(stream["nb_read_frames"])) == (*size, sent)


async def test_a_new_broadcast_of_the_same_name_never_reuses_an_earlier_ones_uris(node, tmp_path, monkeypatch):
    """Segments and init segments are served with max-age=60: a publisher back after its grace
    period (or a restarted node) must not make a URI a player or cache holds name other bytes."""
    from rtmpq.edge import server as edge_server

    monkeypatch.setattr(edge_server, "ENDED_PLAYLIST_KEEP", 0.2)  # the ended one is forgotten at once
    base = "http://{}:{}/live/again".format(*node.edge.address)
    served = []
    for size in ("320x240", "640x360"):
        path = tmp_path / f"{size}.flv"
        subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=30",
                        "-t", "2", "-c:v", "libx264", "-preset", "veryfast", "-g", "30", "-f", "flv", str(path)], check=True)
        publisher = await TcpPublisher.publish(node.rtmp.address[1], "again")
        assert (await http_get(f"{base}/"))[0] == 200  # the edge packages it from the first frame
        for tag_type, ts, body in read_flv_tags(str(path)):
            if tag_type == 9:
                publisher.media(tag_type, ts, body)
        publisher.close()
        async with asyncio.timeout(15):
            while not (playlist := (await http_get(f"{base}/video.m3u8"))[2].decode()).rstrip().endswith("#EXT-X-ENDLIST"):
                await asyncio.sleep(0.1)
        served.append(set(re.findall(r'(v-(?:seg|init-)[\d.]+\.m(?:4s|p4))', playlist)))
        async with asyncio.timeout(15):  # ended and forgotten: the next publish is a new broadcast
            while (await http_get(f"{base}/video.m3u8"))[0] == 200:
                await asyncio.sleep(0.1)
    assert all(served) and not served[0] & served[1], served


# How soon (seconds) after a new publish's first frame the edge serves it in place of the ended one
# under the same name (its first segment must be complete: PART_TARGET, loopback, a loaded host).
NEW_PUBLISH_SHOWN = 1.5


async def test_a_new_publish_replaces_the_ended_playlist_at_once_and_its_readers_finish_it(node, tmp_path, source_flv):
    """The publisher ends and publishes the same name again (grace 0: the broadcast ended) well
    within ENDED_PLAYLIST_KEEP: a player opening the name, or the page asking whether it is live
    again, gets the new publish as soon as it is playable, not once the ended playlist is let go
    (10 s). A player still reading the ended one finishes it: its blocking reload and a plain
    reload from a player that had not yet seen the end get the ended playlist (ENDLIST), and
    every segment that playlist lists still plays, decoding every frame that was sent."""
    await new_publish_replaces_the_ended_one(node, "http://{}:{}/live/back".format(*node.edge.address), tmp_path,
                                             source_flv)


@pytest.mark.parametrize("backend", ["aioquic", "aiopquic"])
async def test_an_edge_fed_over_moq_serves_a_new_publish_at_once_too(tmp_path, source_flv, backend):
    """The same with the edge on its own node, subscribed to the broadcast over MoQ as `rtmpq edge`
    is (starting with the relay's cached groups: the publisher sends its groups at once)."""
    from rtmpq.config import EDGE_FILL_GROUPS, HttpConfig
    from rtmpq.edge.server import EdgeServer
    from rtmpq.nodes.remote import moq_broadcast_source

    node = await start_up_node(tmp_path, backend)
    source = moq_broadcast_source(f"moqt://127.0.0.1:{node.moq_address[1]}", wait=10, insecure=True, backend=backend,
                                  fill_groups=EDGE_FILL_GROUPS)
    edge = EdgeServer(source, http=HttpConfig(host="127.0.0.1", port=0))
    await edge.start()
    try:
        await new_publish_replaces_the_ended_one(node, "http://{}:{}/live/back".format(*edge.address), tmp_path,
                                                 source_flv)
    finally:
        await edge.close()
        await node.close()


@pytest.mark.parametrize("backend", ["aioquic", "aiopquic"])
async def test_an_edge_fed_over_moq_says_at_once_that_nothing_publishes_a_name_and_plays_it_once_live(
        tmp_path, source_flv, backend):
    """A separate edge asked for a name its upstream does not have held the request 3 target
    durations (6 s) before its 503 "not live (yet)", where `rtmpq up` answers 404 at once: a
    player's retry loop waited 6 s per try. Now it answers as `up` does as soon as the relay above
    has said it does not know the name (its DOES_NOT_EXIST to the catalog's SUBSCRIBE), and goes
    on waiting for it upstream: a player asking again once the publisher has started plays it."""
    from rtmpq.config import EDGE_FILL_GROUPS, HttpConfig
    from rtmpq.edge.server import EdgeServer
    from rtmpq.nodes.remote import moq_broadcast_source

    node = await start_up_node(tmp_path, backend)
    source = moq_broadcast_source(f"moqt://127.0.0.1:{node.moq_address[1]}", wait=10, insecure=True, backend=backend,
                                  fill_groups=EDGE_FILL_GROUPS)  # as `rtmpq edge`: the groups sent at once
    edge = EdgeServer(source, http=HttpConfig(host="127.0.0.1", port=0))
    await edge.start()
    publisher = None
    try:
        base = "http://{}:{}/live/later".format(*edge.address)
        up = await http_get("http://{}:{}/live/later/index.m3u8".format(*node.edge.address))
        assert (up[0], up[2]) == (404, b"no such broadcast\n")
        loop = asyncio.get_running_loop()
        for file in ("index.m3u8", "video.m3u8", "audio.m3u8", "v-init.mp4", "index.m3u8"):
            asked = loop.time()
            status, _, body = await http_get(f"{base}/{file}")
            assert (status, body) == (up[0], up[2]), (file, status, body)
            assert loop.time() - asked < 2.0, f"{file}: answered after {loop.time() - asked:.1f} s"
        publisher = await TcpPublisher.publish(node.rtmp.address[1], "later")
        for tag_type, ts, body in read_flv_tags(str(source_flv)):  # two groups (2 s GoPs) at once
            if ts < 4100:
                publisher.media(tag_type, ts, body)

        async def playable() -> bool:
            return (await http_get(f"{base}/index.m3u8"))[0] == 200
        await until(playable, 15, "the multivariant playlist once the name is live")
        status, _, playlist = await http_get(f"{base}/video.m3u8")
        assert status == 200 and re.search(rb"v-seg\d+\.m4s", playlist), playlist
    finally:
        if publisher is not None:
            publisher.close()
        await edge.close()
        await node.close()


async def new_publish_replaces_the_ended_one(node, base: str, tmp_path, source_flv) -> None:
    need("ffmpeg")
    live_reader = "a live reader"  # told apart from the other requests' by its user agent
    publisher = await TcpPublisher.publish(node.rtmp.address[1], "back")
    assert (await http_get(f"{base}/"))[0] == 200  # the edge packages it from the first frame
    sent = 0
    for tag_type, ts, body in read_flv_tags(str(source_flv)):
        if tag_type == 9 and ts < 4000:
            publisher.media(tag_type, ts, body)
            sent += body[1] == 1  # a picture (not the sequence header)
    async with asyncio.timeout(15):  # a reader of the live playlist, before the end
        while (live := await http_get_with(f"{base}/video.m3u8", User_Agent=live_reader))[0] != 200:
            await asyncio.sleep(0.1)
    assert b"#EXT-X-ENDLIST" not in live[2]
    publisher.close()
    async with asyncio.timeout(15):
        while not (ended := (await http_get(f"{base}/video.m3u8"))[2].decode()).rstrip().endswith("#EXT-X-ENDLIST"):
            await asyncio.sleep(0.1)
    last = max(int(n) for n in re.findall(r"v-seg(\d+)\.m4s", ended))
    second = await TcpPublisher.publish(node.rtmp.address[1], "back")
    loop = asyncio.get_running_loop()
    first_frame = loop.time()
    for tag_type, ts, body in read_flv_tags(str(source_flv)):  # its first two groups (2 s GoPs) at once
        if tag_type == 9 and ts < 2100:
            second.media(tag_type, ts, body)
    deadline = first_frame + NEW_PUBLISH_SHOWN
    while "#EXT-X-ENDLIST" in (now := (await http_get(f"{base}/video.m3u8"))[2].decode()):
        assert loop.time() < deadline, f"the ended playlist was served {loop.time() - first_frame:.1f} s after the " \
                                       f"new publish's first frame:\n{now}"
        await asyncio.sleep(0.05)
    print(f"the new publish is served {loop.time() - first_frame:.2f} s after its first frame")
    assert media_sequence(now) > media_sequence(ended), now
    status, _, _ = await http_get(f"{base}/index.m3u8")  # the multivariant answers at once
    assert status == 200 and "#EXT-X-ENDLIST" not in (await http_get(f"{base}/video.m3u8"))[2].decode()
    # the ended playlist's readers: a blocking reload for the segment after its last, and a plain
    # reload from the reader that had a live one before the end, get it as it ended
    status, _, reload = await http_get(f"{base}/video.m3u8?_HLS_msn={last + 1}&_HLS_part=0")
    assert status == 200 and reload.decode() == ended, reload.decode()
    status, _, reload = await http_get_with(f"{base}/video.m3u8", User_Agent=live_reader)
    assert status == 200 and reload.decode() == ended, reload.decode()
    # ... and every segment it lists, with its init segment, plays every frame sent
    [init] = re.findall(r'#EXT-X-MAP:URI="([^"]+)"', ended)
    parts = [(await http_get(f"{base}/{uri}")) for uri in [init] + re.findall(r"^(v-seg\d+\.m4s)$", ended, re.M)]
    assert all(status == 200 for status, _, _ in parts), [status for status, _, _ in parts]
    path = tmp_path / "ended.mp4"
    path.write_bytes(b"".join(body for _, _, body in parts))
    rc, out = await run_process(["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v",
                                 "-show_entries", "stream=nb_read_frames", "-of", "json", str(path)])
    assert rc == 0 and int(json.loads(out)["streams"][0]["nb_read_frames"]) == sent, out
    second.close()


async def test_a_viewer_arriving_5s_in_gets_whole_segments_at_once_and_every_frame(node, tmp_path):
    """Instant start: the edge fills a first viewer's playlist window from the relay's group cache,
    so its first playlist lists the segments already published and a player that reads from
    there to the end decodes every frame of the publish."""
    need("ffmpeg")
    ref = str(tmp_path / "ref.flv")
    base = "http://{}:{}/live/late".format(*node.edge.address)
    publisher = asyncio.create_task(run_process(
        ffmpeg_publish_args(f"rtmp://127.0.0.1:{node.rtmp.address[1]}/live/late", ref, seconds=9)))
    broadcast = await node.registry.wait_for("live/late", 10)
    await inside_group(broadcast, 2)  # 2 s GoPs: group 2 begins at 4 s; arrive inside it, ~5 s in
    opened = sequence_base(time.time())
    status, _, body = await http_get(f"{base}/video.m3u8")  # the edge's first request for it
    first = body.decode()
    assert status == 200
    assert first.count("#EXTINF") >= 2, first  # groups 0 and 1, whole, in the very first answer
    # numbered from the broadcast's start on this edge: the window begins at its first group
    assert opened <= media_sequence(first) <= sequence_base(time.time()), first
    # a player that starts at the oldest listed segment and reads to the end gets every frame
    await assert_reads_every_frame(f"{base}/index.m3u8", publisher, ref)


async def test_an_audio_rendition_that_leaves_and_comes_back(tmp_path, source_flv):
    """A publisher back without audio: the multivariant stops listing the audio rendition, and its
    playlist goes on (silence for the players on it) with its discontinuities where the video's
    are; back with audio again, the multivariant lists it again and the same playlist goes on,
    with the same init segment (the same bytes, the same URI)."""
    from .test_lifecycle import discontinuities, first_msn

    from rtmpq.config import PublishConfig

    node = await start_up_node(tmp_path, publish=PublishConfig(grace_period=30.0))
    try:
        host, http_port = node.edge.address
        base = f"http://{host}:{http_port}/live/back"
        tags = [(t, ts, body) for t, ts, body in read_flv_tags(str(source_flv)) if t in (8, 9) and ts < 4100]

        async def publish(audio: bool) -> None:
            broadcast = node.registry.get("live/back")
            publisher = await TcpPublisher.publish(node.rtmp.address[1], "back")
            if broadcast is None:
                assert (await http_get(f"{base}/"))[0] == 200  # the edge opens the broadcast first
            for tag_type, ts, body in tags:
                if audio or tag_type == 9:
                    publisher.media(tag_type, ts, body)
            publisher.close()
            broadcast = node.registry.get("live/back")
            await until(lambda: not broadcast.publishing, what="the publisher to leave")

        async def multivariant() -> str:
            status, _, body = await http_get(f"{base}/index.m3u8")
            assert status == 200, body
            return body.decode()

        await publish(audio=True)
        assert 'TYPE=AUDIO' in await multivariant()
        _, _, audio = await http_get(f"{base}/audio.m3u8")
        first_init = re.search(rb'#EXT-X-MAP:URI="([^"]+)"', audio)[1]
        await publish(audio=False)
        async with asyncio.timeout(15):
            while "TYPE=AUDIO" in (listing := await multivariant()):
                await asyncio.sleep(0.1)
        assert "mp4a" not in listing and "video.m3u8" in listing
        _, _, audio = await http_get(f"{base}/audio.m3u8")
        assert b"#EXT-X-ENDLIST" not in audio, audio.decode()
        _, _, video = await http_get(f"{base}/video.m3u8")
        assert b"#EXT-X-ENDLIST" not in video
        await publish(audio=True)
        async with asyncio.timeout(15):
            while "TYPE=AUDIO" not in (listing := await multivariant()):
                await asyncio.sleep(0.1)
        assert 'CODECS="avc1.64000d,mp4a.40.2"' in listing, listing
        _, _, audio = await http_get(f"{base}/audio.m3u8")
        _, _, video = await http_get(f"{base}/video.m3u8")
        assert b"#EXT-X-ENDLIST" not in audio and b"#EXTINF" in audio, audio.decode()
        assert discontinuities(audio) and discontinuities(audio) == {
            msn: d for msn, d in discontinuities(video).items() if msn >= first_msn(audio)}, (audio.decode(), video.decode())
        init = re.search(rb'#EXT-X-MAP:URI="([^"]+)"', audio)[1]
        assert init == first_init
        status, _, data = await http_get(f"{base}/{init.decode()}")
        assert status == 200 and b"mp4a" in data
    finally:
        await node.close()


async def publish_in_real_time(node, key: str, path, keep_audio, head_start: float = 0.0) -> None:
    """A publisher that sends each tag of an FLV when it is due (its own clock, as a live encoder
    whose audio and video are captured apart does), leaving out the audio tags for which
    ``keep_audio(ts)`` is false; the edge packages the broadcast from before the first frame.
    ``head_start``: the tags of the first that many seconds go at once (a publisher live that long)."""
    host, http_port = node.edge.address
    publisher = await TcpPublisher.publish(node.rtmp.address[1], key)
    assert (await http_get(f"http://{host}:{http_port}/live/{key}/"))[0] == 200
    loop = asyncio.get_running_loop()
    start = loop.time() - head_start
    for tag_type, ts, body in read_flv_tags(str(path)):
        if tag_type == 9 or (tag_type == 8 and (body[1] == 0 or keep_audio(ts))):
            if (due := start + ts / 1000 - loop.time()) > 0:
                await asyncio.sleep(due)  # the publisher's pace, not a wait for the server
            publisher.media(tag_type, ts, body)
            await publisher.writer.drain()
    publisher.close()


async def audio_samples(url: str) -> list[tuple[float, float]]:
    """(presentation time, peak amplitude) of every audio frame the playlist at ``url`` decodes to."""
    from array import array

    import av

    def decode():
        out = []
        with av.open(url) as container:
            for frame in container.decode(audio=0):
                assert frame.format.name == "fltp"  # what FFmpeg's AAC decoder gives: a float plane per channel
                samples = [array("f", bytes(plane))[:frame.samples] for plane in frame.planes]
                out.append((float(frame.time), max(abs(v) for plane in samples for v in plane)))
        return out
    return await asyncio.to_thread(decode)


async def test_audio_that_stops_while_the_video_goes_on_is_filled_with_silence(tmp_path, source_flv):
    """A publisher whose audio stops for a while (a phone call takes a mobile encoder's
    microphone) and comes back, while its video goes on: the HLS audio playlist goes on with
    silence through the gap, so players keep playing, and the audio after it is the publisher's
    again, with no frame twice; without the fill the audio playlist stopped growing at the gap
    and every player stalled there."""
    need("ffmpeg")
    node = await start_up_node(tmp_path)
    try:
        host, http_port = node.edge.address
        base = f"http://{host}:{http_port}/live/gap"
        publish = asyncio.create_task(publish_in_real_time(node, "gap", source_flv, keep_audio=lambda ts: not 2500 <= ts < 5500))
        # operators see it: the silence made, about the 3 s gap (read while the broadcast is on)
        from .test_ops import samples

        silence, key = 0.0, ("rtmpq_broadcast_silent_audio_seconds_total", (("broadcast", "live/gap"),))
        while not publish.done():
            _, _, page = await http_get(f"http://{host}:{http_port}/metrics")
            silence = samples(page.decode()).get(key, silence)
            await asyncio.sleep(0.2)  # a poll step: the publish goes on in real time meanwhile
        await publish
        assert 2.7 < silence < 3.3, silence
        await until_ended(base)
        _, _, audio = await http_get(f"{base}/audio.m3u8")
        _, _, video = await http_get(f"{base}/video.m3u8")
        durations = {name: sum(float(d) for d in re.findall(rb"#EXTINF:([0-9.]+)", playlist))
                     for name, playlist in (("audio", audio), ("video", video))}
        assert durations["audio"] > durations["video"] - 0.5, durations
        frames = await audio_samples(f"{base}/audio.m3u8")
        times = [t for t, _ in frames]
        assert times == sorted(set(times)), "an audio frame twice or out of order"
        assert max(b - a for a, b in zip(times, times[1:])) < 0.05  # no hole: one frame follows another
        # the sine before and after the gap, silence inside it (the encoder's edges aside)
        assert all(peak > 0.05 for t, peak in frames if 0.5 < t < 2.3 or 6.0 < t < 7.5), [(round(t, 2), round(p, 3)) for t, p in frames][::8]
        assert all(peak < 0.001 for t, peak in frames if 3.0 < t < 5.2), [(round(t, 2), round(p, 3)) for t, p in frames][::8]
        assert sum(1 for t, _ in frames if 2.5 < t < 5.5) > 100  # ~129 frames of 23 ms
    finally:
        await node.close()


async def test_an_irregular_gop_publish_keeps_one_target_duration_that_bounds_every_segment(node, tmp_path):
    """RFC 8216 4.4.3.1 / 6.2.1: every EXTINF rounded to the nearest integer is at most
    EXT-X-TARGETDURATION, and the target never changes in the playlist's life. A publisher whose
    keyframes come at irregular times (an encoder forcing them at 0, 1, 5, 6 and 7 s: groups of
    1, 4, 1, 1 and 1 s) into the edge, its video playlist read as a live player reloads it."""
    need("ffmpeg")
    base = "http://{}:{}/live/irregular".format(*node.edge.address)
    encode = [a for a in VIDEO_ENCODE]
    encode[encode.index("-g") + 1] = encode[encode.index("-keyint_min") + 1] = "600"  # no cadence of its own
    publisher = asyncio.create_task(run_process([
        "ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-re",
        "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30", "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100",
        "-t", "9", *encode, "-force_key_frames", "0,1,5,6,7", *AUDIO_ENCODE,
        "-map", "0:v", "-map", "1:a", "-f", "flv", f"rtmp://127.0.0.1:{node.rtmp.address[1]}/live/irregular"]))
    await node.registry.wait_for("live/irregular", 10)
    targets, seen = set(), {}  # segment URI -> EXTINF
    loop = asyncio.get_running_loop()
    end = loop.time() + 40
    while True:
        status, _, body = await http_get(f"{base}/video.m3u8")
        playlist = body.decode()
        if status == 200:
            target = int(re.search(r"^#EXT-X-TARGETDURATION:(\d+)$", playlist, re.M)[1])
            targets.add(target)
            for d, uri in re.findall(r"^#EXTINF:([\d.]+),\n(.*)$", playlist, re.M):
                seen[uri] = float(d)
                assert math.floor(float(d) + 0.5) <= target, playlist
        if "#EXT-X-ENDLIST" in playlist or loop.time() > end:
            break
        await asyncio.sleep(0.1)
    assert "#EXT-X-ENDLIST" in playlist, playlist
    rc, output = await publisher
    assert rc == 0, output
    assert len(targets) == 1, f"EXT-X-TARGETDURATION changed between reloads: {sorted(targets)}"
    assert sum(seen.values()) == pytest.approx(9, abs=0.5), seen  # every second of the publish was listed
    # the first group (1 s) fixed the target at 1 s; the 4 s group went on in more segments
    assert targets == {1} and len(seen) > 6, seen
    # a player reading the ended playlist from its first listed segment (one that goes on with a
    # group, no keyframe: it waits for the next) decodes what it plays without an error
    rc, out = await run_process(["ffmpeg", "-v", "error", "-xerror", "-i", f"{base}/index.m3u8", "-f", "null", "-"],
                                timeout=60)
    assert rc == 0 and out.strip() == "", out


async def test_a_clock_that_jumps_back_mid_gop_plays_with_audio_and_video_together(node, source_flv, tmp_path):
    """An encoder's clock jumps back 3 s between two frames of a GoP: a player of the HLS
    playlist gets every frame, audio and video ending together. Before, the group holding the
    jump had time going back inside its segment, and ffmpeg played the audio 3 s off the video
    and lost frames."""
    need("ffmpeg")
    jumped = tmp_path / "jumped.flv"
    with open(jumped, "wb") as f:
        writer = FlvWriter(f)
        for tag_type, ts, body in read_flv_tags(str(source_flv)):
            if tag_type in (8, 9):
                writer.write_tag(tag_type, ts - 3000 if ts >= 3500 else ts, body)
    await publish_flv_and_end(node, "jumped", jumped)
    base = "http://{}:{}/live/jumped".format(*node.edge.address)
    played = tmp_path / "played.md5"
    rc, out = await run_process(["ffmpeg", "-hide_banner", "-v", "error", "-nostdin", "-i", f"{base}/index.m3u8",
                                 "-map", "0:v", "-map", "0:a", "-f", "framemd5", str(played)], timeout=60)
    assert rc == 0, out
    rows = [line.split(",") for line in played.read_text().splitlines() if not line.startswith("#")]
    rates = {int(i): int(rate) for i, rate in re.findall(r"^#tb (\d+): 1/(\d+)$", played.read_text(), re.M)}
    ends = {}
    for stream in (0, 1):
        pts = [int(r[2]) / rates[stream] for r in rows if int(r[0]) == stream]
        assert all(b > a for a, b in zip(pts, pts[1:])), stream
        ends[stream] = pts[-1]
    sent = probe_packets(str(source_flv))
    assert [len([r for r in rows if int(r[0]) == s]) for s in (0, 1)] == \
        [len([p for p in sent if p.track == kind]) for kind in ("video", "audio")]
    assert abs(ends[0] - ends[1]) < 0.1, ends  # together, as sent (3 s apart before)


# -- paths as players write them: percent-encoding (RFC 3986) ---------------------------------------
async def publishing(node, tmp_path, name: str, seconds: float) -> asyncio.Task:
    """ffmpeg publishing ``name`` for ``seconds``, once the node has it live: the task's result is
    ffmpeg's (exit status, output)."""
    publisher = asyncio.create_task(run_process(ffmpeg_publish_args(
        f"rtmp://127.0.0.1:{node.rtmp.address[1]}/{name}", str(tmp_path / "r.flv"), seconds=seconds)))
    await node.registry.wait_for(name, 10)
    return publisher


async def test_a_percent_encoded_name_is_the_same_name_and_encoded_slashes_or_dots_are_no_name(node, tmp_path):
    """A name is app/name of letters, digits and _.~- (what a publisher can have); %7E is ~ (RFC
    3986 2.3), so a client that escapes it plays. What decodes to no name is not found, and an
    encoded slash never splits a path (RFC 3986 2.2): /live%2Fcam~1/ is not /live/cam~1/."""
    need("ffmpeg")
    publisher = await publishing(node, tmp_path, "live/cam~1", 5)
    host, port = node.edge.address
    root = f"http://{host}:{port}"
    def uris(playlist: bytes) -> list[str]:  # (its BANDWIDTH is measured, and changes)
        return re.findall(r'^[^#].*$|URI="[^"]*"', playlist.decode(), re.M)

    status, _, plain = await http_get(f"{root}/live/cam~1/index.m3u8")
    assert status == 200, plain
    for escaped in ("live/cam%7E1", "live/cam%7e1", "%6Cive/c%61m~1"):
        status, _, body = await http_get(f"{root}/{escaped}/index.m3u8")
        assert (status, uris(body)) == (200, uris(plain)), escaped
    # a real player follows the escaped address all the way (its playlists' URIs are relative)
    counts = await count_frames(f"{root}/live/cam%7E1/index.m3u8")
    assert counts["video"] > 0 and counts["audio"] > 0
    for refused in ("live%2Fcam~1", "live/cam~1%2Findex.m3u8%2F..", "live/my%20cam", "live/caf%C3%A9", "live/%2E%2E",
                    "live/%2e"):
        status, _, body = await http_get(f"{root}/{refused}/index.m3u8")
        assert status == 404 and b"letters, digits and _.~-" in body, (refused, status, body)
    for malformed in ("live/cam%7/index.m3u8", "live/cam%zz1/index.m3u8", "live/%FF/index.m3u8"):
        status, _, body = await http_get(f"{root}/{malformed}")
        assert status == 400 and body.startswith(b"bad path"), (malformed, status, body)
    rc, output = await publisher
    assert rc == 0, output


# -- single byte ranges (RFC 9110 14) ---------------------------------------------------------------
async def http_get_with(url: str, method: str = "GET", **headers) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url, method=method, headers={k.replace("_", "-"): v for k, v in headers.items()})
    return await http_get(request)


async def test_init_segments_and_parts_answer_a_single_byte_range(node, tmp_path):
    need("ffmpeg")
    publisher = await publishing(node, tmp_path, "live/ranges", 5)
    host, port = node.edge.address
    base = f"http://{host}:{port}/live/ranges"
    playlist = (await http_get(f"{base}/video.m3u8"))[2].decode()
    for _ in range(100):  # a whole segment listed
        if "#EXTINF" in playlist:
            break
        await asyncio.sleep(0.1)
        playlist = (await http_get(f"{base}/video.m3u8"))[2].decode()
    segment = re.search(r"^(v-seg\d+\.m4s)$", playlist, re.M)[1]
    part = re.search(r'#EXT-X-PART:.*URI="(v-seg\d+\.\d+\.m4s)"', playlist)[1]
    for file in ("v-init.mp4", "a-init.mp4", segment, part):
        status, headers, whole = await http_get(f"{base}/{file}")
        n = len(whole)
        assert status == 200 and headers["Accept-Ranges"] == "bytes", file
        for spec, first, last in (("bytes=0-99", 0, 99), ("bytes=10-", 10, n - 1), ("bytes=-50", n - 50, n - 1),
                                  (f"bytes=5-{n + 1000}", 5, n - 1), (f"bytes=0-{n - 1}", 0, n - 1)):
            status, headers, body = await http_get_with(f"{base}/{file}", Range=spec)
            assert status == 206, (file, spec, status)
            assert headers["Content-Range"] == f"bytes {first}-{last}/{n}", (file, spec)
            assert body == whole[first:last + 1] and int(headers["Content-Length"]) == len(body), (file, spec)
        status, headers, _ = await http_get_with(f"{base}/{file}", Range=f"bytes={n}-")
        assert (status, headers["Content-Range"]) == (416, f"bytes */{n}"), file
        # several ranges, a range that does not parse, an If-Range (no validator of ours matches):
        # the whole body, 200, as RFC 9110 allows
        for extra in ({"Range": "bytes=0-1,5-9"}, {"Range": "bytes=9-5"}, {"Range": "items=0-1"},
                      {"Range": "bytes=0-1", "If_Range": "Sun, 29 Nov 2026 00:00:00 GMT"}):
            status, _, body = await http_get_with(f"{base}/{file}", **extra)
            assert (status, body) == (200, whole), (file, extra)
        status, headers, body = await http_get_with(f"{base}/{file}", "HEAD", Range="bytes=0-1")
        assert (status, headers["Content-Length"], body) == (200, str(n), b""), file
    # playlists are not ranged: a reload is a new document
    status, headers, _ = await http_get_with(f"{base}/video.m3u8", Range="bytes=0-9")
    assert status == 200 and "Accept-Ranges" not in headers
    rc, output = await publisher
    assert rc == 0, output


async def test_a_broadcast_published_under_a_two_part_app_plays(node, tmp_path):
    """rtmp://HOST/live/studio/cam (an app of two parts, as RTMP allows) publishes live/studio/cam:
    its viewers play /live/studio/cam/index.m3u8 (it was a broadcast no HLS viewer could reach)."""
    need("ffmpeg")
    publisher = await publishing(node, tmp_path, "live/studio/cam", 4)
    base = "http://{}:{}/live/studio/cam".format(*node.edge.address)
    status, headers, _ = await http_get(f"{base}/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    rc, output = await publisher
    assert rc == 0, output
    await until_ended(base)
    reference = probe_packets(str(tmp_path / "r.flv"))
    counts = await count_frames(f"{base}/index.m3u8")
    assert counts["video"] == len([p for p in reference if p.track == "video"])
    status, _, body = await http_get("http://{}:{}/live/studio/../index.m3u8".format(*node.edge.address))
    assert status == 404, body


async def test_a_blocking_reload_a_segment_ahead_is_held_not_refused(node, tmp_path):
    """hls.js with lowLatencyMode off (as players that want no part loading set it) asks for the
    segment after the one in progress, at the part index last listed (_HLS_msn=N+1&_HLS_part=P):
    a segment of parts ahead. It was refused with 400 on every reload of the audio playlist, whose
    short parts make P 4 or 5; it is held until that part exists, as a nearer one is."""
    publisher = await publishing(node, tmp_path, "live/ahead", 12)
    base = "http://{}:{}/live/ahead".format(*node.edge.address)
    for rendition in ("audio", "video"):
        for _ in range(100):  # a segment in progress with five parts listed or more
            media = (await http_get(f"{base}/{rendition}.m3u8"))[2].decode()
            hint = re.search(r'PRELOAD-HINT:TYPE=PART,URI="[av]-seg(\d+)\.(\d+)\.m4s"', media)
            if hint and int(hint[2]) >= 5:
                break
            await asyncio.sleep(0.05)
        msn, part = int(hint[1]), int(hint[2]) - 1
        status, _, body = await http_get(f"{base}/{rendition}.m3u8?_HLS_msn={msn + 1}&_HLS_part={part}")
        assert status == 200, (rendition, status, body)
        assert re.search(rf'URI="[av]-seg{msn + 1}\.{part}\.m4s"', body.decode()), rendition
    # far ahead is still refused at once
    status, _, _ = await http_get(f"{base}/video.m3u8?_HLS_msn={msn + 1}&_HLS_part=40")
    assert status == 400
    await end_live_publish(publisher)


# -- what RFC 8216bis asks of a low-latency server -------------------------------------------------
def last_listed_part(playlist: str) -> tuple[int, int]:
    return max((int(m), int(p)) for m, p in re.findall(r'#EXT-X-PART:.*URI="[av]\d*-seg(\d+)\.(\d+)\.m4s"', playlist))


async def test_media_playlists_report_the_other_renditions_and_refuse_negative_delivery_directives(node, tmp_path):
    """EXT-X-RENDITION-REPORT (RFC 8216bis 4.4.5.4) for every other rendition of the multivariant
    playlist, with the last part that rendition's own playlist lists: AVPlayer, ExoPlayer and
    Shaka switch renditions by it (a blocking reload of the new one's next part at once). A
    negative Delivery Directive was answered as if it were none."""
    need("ffmpeg")
    publisher = await publishing(node, tmp_path, "live/reports", 3)
    base = "http://{}:{}/live/reports".format(*node.edge.address)
    for mine, other in (("video", "audio"), ("audio", "video")):
        before = last_listed_part((await http_get(f"{base}/{other}.m3u8"))[2].decode())
        playlist = (await http_get(f"{base}/{mine}.m3u8"))[2].decode()
        reports = re.findall(r'^#EXT-X-RENDITION-REPORT:URI="([^"]+)",LAST-MSN=(\d+),LAST-PART=(\d+)$', playlist, re.M)
        assert [uri for uri, _, _ in reports] == [f"{other}.m3u8"], playlist
        reported = (int(reports[0][1]), int(reports[0][2]))
        assert reported >= before  # as up to date as the playlist that carries it
        status, _, body = await http_get(f"{base}/{other}.m3u8?_HLS_msn={reported[0]}&_HLS_part={reported[1]}")
        assert status == 200 and last_listed_part(body.decode()) >= reported
    # a Delivery Directive is a decimal-integer (RFC 8216bis 4.2, 6.2.5): a negative one is refused
    for query in ("_HLS_msn=-1", f"_HLS_msn={reported[0]}&_HLS_part=-1"):
        status, _, body = await http_get(f"{base}/video.m3u8?{query}")
        assert status == 400, (query, status, body)
    rc, output = await publisher
    assert rc == 0, output
