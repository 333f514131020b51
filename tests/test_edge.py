"""LL-HLS edge: ffmpeg publishes over RTMP into `rtmpq up`, ffmpeg/ffprobe play it back over HTTP."""

import asyncio
import json
import re
import urllib.request

import pytest

from .conftest import need, start_up_node
from .publishers import ffmpeg_publish_args, probe_packets, run_process


@pytest.fixture
async def node(tmp_path):
    n = await start_up_node(tmp_path)  # the edge works the same on either QUIC backend
    yield n
    await n.close()


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
    publisher = asyncio.create_task(run_process(ffmpeg_publish_args(f"rtmp://127.0.0.1:{rtmp_port}/live/show", ref, seconds=5)))
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
    rc, output = await publisher
    assert rc == 0, output
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
    status, _, body = await http_get(f"{base}/video.m3u8?_HLS_msn={msn}&_HLS_part={part}")
    assert status == 200
    assert f'URI="v-seg{msn}.{part}.m4s"' in body.decode().split("PRELOAD-HINT")[0]
    # the hinted part itself can be requested ahead: the response comes once it is complete
    hint = re.search(r'PRELOAD-HINT:TYPE=PART,URI="(v-seg\d+\.\d+\.m4s)"', body.decode())[1]
    status, headers, data = await http_get(f"{base}/{hint}")
    assert status == 200 and headers["Content-Type"] == "video/mp4" and data[4:8] == b"moof"
    # far-future requests are refused, not held
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
    for _ in range(300):  # 2 s GoPs: group 2 begins at 4 s; arrive inside it, ~5 s in
        if broadcast._current_group and broadcast._current_group[0].group >= 2:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.8)
    status, _, body = await http_get(f"{base}/video.m3u8")  # the edge's first request for it
    first = body.decode()
    assert status == 200
    assert first.count("#EXTINF") >= 2, first  # groups 0 and 1, whole, in the very first answer
    assert "#EXT-X-MEDIA-SEQUENCE:0" in first
    # a player that starts at the oldest listed segment and reads to the end gets every frame
    reader = asyncio.create_task(run_process(
        ["ffprobe", "-v", "error", "-live_start_index", "0", "-count_frames", "-show_entries",
         "stream=codec_type,nb_read_frames", "-of", "json", f"{base}/index.m3u8"], timeout=60))
    rc, output = await publisher
    assert rc == 0, output
    rc, out = await reader
    assert rc == 0, out
    counts = {s["codec_type"]: int(s["nb_read_frames"]) for s in json.loads(out)["streams"]}
    reference = probe_packets(ref)
    assert counts["video"] == sum(p.track == "video" for p in reference)
    assert counts["audio"] == sum(p.track == "audio" for p in reference)
