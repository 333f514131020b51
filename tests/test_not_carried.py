"""A publisher whose encoder sends codecs rtmpq does not carry (MP3, or H.264 with MP3): the
operator's status API and page say which tracks are dropped and why, the playlists answer with the
reason instead of waiting, and the player page shows it; what is carried plays. On `rtmpq up`, and
at an `rtmpq edge` fed over MoQ through an `rtmpq relay` from an `rtmpq ingest` (the broadcast's
catalog says what is not carried)."""

import asyncio
import json
import socket
import urllib.error
import urllib.request
from contextlib import asynccontextmanager

import pytest

from rtmpq.config import Config, HttpConfig, IngestConfig, MoqConfig, PublishConfig, UpstreamConfig
from rtmpq.edge.server import NOT_CARRIED_HEADER

from .conftest import PAGE_STATUS, chromium_devtools, free_port, http_get, need, need_hls_js, start_up_node, until, wait_tcp
from .publishers import drop_publish, end_live_publish, run_process

KEY = "sk-5e1d9c"  # the secret stream key of the public name "cam"
CARRIED_AUDIO = "AAC, Opus, AC-3, E-AC-3"


def mp3_publish_args(url: str, seconds: float, video: bool = False) -> list[str]:
    """A live publish of a sine in MP3 (ffmpeg's FLV default), with H.264 video when asked."""
    video_args = ["-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30"] if video else []
    video_codec = ["-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", "30",
                   "-pix_fmt", "yuv420p"] if video else []
    return ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-re", *video_args,
            "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100", "-t", str(seconds),
            *video_codec, "-c:a", "libmp3lame", "-f", "flv", url]


async def broadcast_item(base: str, name: str, ready, deadline: float = 20.0) -> dict:
    """The status API's entry for ``name`` once ``ready(entry)`` holds (polled)."""
    found: dict = {}

    async def check() -> bool:
        status, body = await http_get(f"{base}/api/v1/broadcasts")
        items = [i for i in json.loads(body)["items"] if i["name"] == name] if status == 200 else []
        if items and ready(items[0]):
            found.update(items[0])
        return bool(found)

    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while not await check():
        assert loop.time() < end, f"the status API never listed {name} as expected"
        await asyncio.sleep(0.2)
    return found


def get_with_headers(url: str) -> tuple[int, dict, bytes]:
    """GET ``url``: (status, headers, body), an error's too."""
    try:
        with urllib.request.urlopen(url, timeout=20) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


async def video_plays(base: str, name: str, seconds: int) -> None:
    """The multivariant of ``name`` at ``base`` lists H.264 video and no audio, and a player
    (ffprobe) decodes ``seconds`` of the video from it."""
    status, body = await http_get(f"{base}/{name}/index.m3u8", until_live=True)
    assert status == 200 and b"avc1." in body and b"TYPE=AUDIO" not in body, (status, body)
    rc, out = await run_process(["ffprobe", "-v", "error", "-count_frames", "-read_intervals", f"%+{seconds}",
                                 "-select_streams", "v", "-show_entries", "stream=codec_name,nb_read_frames",
                                 "-of", "json", f"{base}/{name}/index.m3u8"], timeout=40)
    assert rc == 0, out
    [stream] = json.loads(out)["streams"]
    assert stream["codec_name"] == "h264" and int(stream["nb_read_frames"]) >= 10 * seconds, stream


async def audio_listed_as_dropped(base: str, name: str, deadline: float = 20.0) -> None:
    """The status API at ``base`` lists the video of ``name`` as carried and its MP3 audio as dropped."""
    item = await broadcast_item(base, name, lambda i: i["tracks"] and i["not_carried"], deadline)
    assert [t["name"] for t in item["tracks"]] == ["video"], item
    assert [(d["kind"], d["codec"]) for d in item["not_carried"]] == [("audio", "MP3")], item


async def test_a_publish_in_mp3_alone_says_why_nothing_plays(tmp_path):
    need("ffmpeg")
    node = await start_up_node(tmp_path, publish=PublishConfig(keys={KEY: "cam"}, grace_period=0))
    host, http_port = node.edge.address
    base = f"http://{host}:{http_port}"
    publisher = asyncio.create_task(run_process(
        mp3_publish_args(f"rtmp://127.0.0.1:{node.rtmp.address[1]}/live/{KEY}", seconds=8), timeout=60))
    try:
        # the operator reads which track is dropped, and why, as the log names the codec
        item = await broadcast_item(base, "live/cam", lambda i: i["not_carried"])
        assert item["tracks"] == [] and item["publishing"] is True, item
        [dropped] = item["not_carried"]
        assert (dropped["kind"], dropped["codec"], dropped["flv"], dropped["carried"]) == \
            ("audio", "MP3", ".mp3", CARRIED_AUDIO), dropped
        assert "-c:a aac" in dropped["reason"], dropped
        # a player is told at once (not after a blocking wait) why there is nothing to play
        loop = asyncio.get_running_loop()
        for playlist in ("index.m3u8", "video.m3u8", "audio.m3u8"):
            started = loop.time()
            status, headers, body = await asyncio.to_thread(get_with_headers, f"{base}/live/cam/{playlist}")
            assert status == 503 and loop.time() - started < 2.0, (playlist, status, body)
            text = body.decode()
            assert "live/cam is live" in text and "MP3 is not carried" in text and CARRIED_AUDIO in text, text
            assert headers.get(NOT_CARRIED_HEADER) == "audio=MP3", headers
        # the public name only: the secret key reaches neither the operator nor the viewer
        _, listing = await http_get(f"{base}/api/v1/broadcasts")
        assert KEY not in listing.decode() and KEY not in text
    finally:
        rc, output = await publisher
    assert rc == 0, output
    # it has ended: the playlists no longer claim it is live
    await until(lambda: node.registry.get("live/cam") is None, 10, "the broadcast to end")
    status, body = await http_get(f"{base}/live/cam/index.m3u8")
    assert status in (404, 503) and b"not carried" not in body, (status, body)
    await node.close()


async def test_h264_with_mp3_plays_its_video_and_the_status_says_the_audio_is_dropped(tmp_path):
    need("ffmpeg")
    node = await start_up_node(tmp_path)
    host, http_port = node.edge.address
    base = f"http://{host}:{http_port}"
    publisher = asyncio.create_task(run_process(
        mp3_publish_args(f"rtmp://127.0.0.1:{node.rtmp.address[1]}/live/mixed", seconds=12, video=True), timeout=60))
    try:
        await video_plays(base, "live/mixed", seconds=3)
        await audio_listed_as_dropped(base, "live/mixed")
        # the audio playlist a player might ask for says why it has nothing
        status, headers, text = await asyncio.to_thread(get_with_headers, f"{base}/live/mixed/audio.m3u8")
        assert status == 503 and headers.get(NOT_CARRIED_HEADER) == "audio=MP3", (status, text)
        assert b"MP3 is not carried" in text and b"its video plays" in text, text
        await end_live_publish(publisher)  # (still live: its rest is not needed)
    finally:
        await drop_publish(publisher)  # (a test that failed: its publish ends with it)
        await node.close()


async def test_the_player_and_status_pages_say_the_codec_is_not_carried(tmp_path):
    need("ffmpeg")
    need_hls_js()
    node = await start_up_node(tmp_path)
    host, http_port = node.edge.address
    publisher = asyncio.create_task(run_process(
        mp3_publish_args(f"rtmp://127.0.0.1:{node.rtmp.address[1]}/live/radio", seconds=20), timeout=60))
    try:
        await node.registry.wait_for("live/radio", 10)
        async with chromium_devtools(tmp_path, f"http://{host}:{http_port}/live/radio/") as devtools:
            # the viewer reads why nothing plays, not a page that waits without a word
            shown = await devtools.poll(f"(({PAGE_STATUS}) || '').includes('MP3 is not carried') && ({PAGE_STATUS})",
                                        deadline=20)
            assert shown and CARRIED_AUDIO in shown, await devtools.evaluate(PAGE_STATUS)
            # the operator's status page names the dropped track
            await devtools.evaluate("location.href = '/'")
            row = await devtools.poll("""(() => { const r = document.querySelector('tr[data-name="live/radio"]');
                return r && r.textContent.includes('MP3 dropped') ? r.textContent : null; })()""", deadline=20)
            assert row and "nothing to play" in row, await devtools.evaluate("document.body.innerText")
        await end_live_publish(publisher)  # (still live: its rest is not needed)
    finally:
        await drop_publish(publisher)  # (a test that failed: its publish ends with it)
        await node.close()


async def test_a_publisher_back_with_a_carried_codec_is_no_longer_listed_as_dropped(tmp_path):
    """Within the grace period the same broadcast goes on: the dropped MP3 of the first publish is
    not reported against the second, which sends AAC."""
    need("ffmpeg")
    node = await start_up_node(tmp_path, grace_period=30.0)
    host, http_port = node.edge.address
    base = f"http://{host}:{http_port}"
    url = f"rtmp://127.0.0.1:{node.rtmp.address[1]}/live/fixed"
    publisher = None
    try:
        rc, output = await run_process(mp3_publish_args(url, seconds=2), timeout=30)
        assert rc == 0, output
        item = await broadcast_item(base, "live/fixed", lambda i: i["not_carried"] and i["publishing"] is False)
        assert [d["codec"] for d in item["not_carried"]] == ["MP3"], item
        aac = [a if a != "libmp3lame" else "aac" for a in mp3_publish_args(url, seconds=4)]
        publisher = asyncio.create_task(run_process(aac, timeout=30))
        item = await broadcast_item(base, "live/fixed", lambda i: i["tracks"] and i["publishing"])
        assert item["not_carried"] == [] and [t["codec"] for t in item["tracks"]] == ["mp4a.40.2"], item
        await end_live_publish(publisher)  # (still live: its rest is not needed)
    finally:
        if publisher is not None:
            await drop_publish(publisher)  # (a test that failed: its publish ends with it)
        await node.close()



# -- ingest -> relay -> edge, each a node of its own ------------------------------------------------


@asynccontextmanager
async def ingest_relay_edge(tmp_path, backend: str):
    """`rtmpq ingest --upstream` -> `rtmpq relay --http` -> `rtmpq edge --upstream`, each run as its
    command runs it (in this process), on ``backend``: yields (the RTMP URL for ``live/<key>``,
    the relay's HTTP base, the edge's HTTP base). Keys: KEY publishes "cam"."""
    from rtmpq.nodes.nodes import run_edge, run_ingest_node, run_relay

    relay_moq = free_port(socket.SOCK_DGRAM)
    upstream = UpstreamConfig(url=f"moqt://127.0.0.1:{relay_moq}", insecure=True, backend=backend)
    relay = Config(moq=MoqConfig(host="127.0.0.1", port=relay_moq, state_dir=tmp_path / "relay", backend=backend),
                   http=HttpConfig(host="127.0.0.1", port=free_port(), enabled=True))
    ingest = Config(rtmp=IngestConfig(host="127.0.0.1", port=free_port()), moq=MoqConfig(state_dir=tmp_path / "ingest"),
                    publish=PublishConfig(keys={KEY: "cam"}, grace_period=0), upstream=upstream)
    edge = Config(http=HttpConfig(host="127.0.0.1", port=free_port()), upstream=upstream)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(run(config, stop)) for run, config in
             ((run_relay, relay), (run_ingest_node, ingest), (run_edge, edge))]
    try:
        for port in (relay.http.port, ingest.rtmp.port, edge.http.port):
            await wait_tcp(port)
        yield (f"rtmp://127.0.0.1:{ingest.rtmp.port}/live/", f"http://127.0.0.1:{relay.http.port}",
               f"http://127.0.0.1:{edge.http.port}")
    finally:
        stop.set()
        await asyncio.gather(*tasks)


async def told_not_carried(url: str, deadline: float = 15.0) -> tuple[dict, bytes]:
    """The headers and body of ``url``'s 503 that names what is not carried, asked again (as a
    player does) while the broadcast has not reached the edge yet."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while True:
        status, headers, body = await asyncio.to_thread(get_with_headers, url)
        if status == 503 and NOT_CARRIED_HEADER in headers:
            return headers, body
        assert loop.time() < end and status in (404, 503), (status, body)
        await asyncio.sleep(0.2)


async def stopped(publisher: asyncio.Task) -> None:
    """The publish is cut short once the test has what it needs (ffmpeg is killed)."""
    publisher.cancel()
    try:
        await publisher
    except asyncio.CancelledError:
        pass


@pytest.mark.parametrize("backend", ["aioquic", "aiopquic"])
async def test_a_separate_edge_says_why_an_mp3_publish_has_nothing_to_play(tmp_path, backend):
    need("ffmpeg")
    async with ingest_relay_edge(tmp_path, backend) as (rtmp, relay, edge):
        publisher = asyncio.create_task(run_process(mp3_publish_args(rtmp + KEY, seconds=30), timeout=60))
        try:
            # the player at the edge is told why, as on `rtmpq up`, not made to wait for tracks that never come
            headers, body = await told_not_carried(f"{edge}/live/cam/index.m3u8")
            text = body.decode()
            assert headers[NOT_CARRIED_HEADER] == "audio=MP3", headers
            assert "live/cam is live" in text and "MP3 is not carried" in text and CARRIED_AUDIO in text, text
            headers, _ = await told_not_carried(f"{edge}/live/cam/audio.m3u8", deadline=2)
            assert headers[NOT_CARRIED_HEADER] == "audio=MP3", headers
            # the edge's and the relay's status list the dropped track, by the public name only
            for base in (edge, relay):
                item = await broadcast_item(base, "live/cam", lambda i: i["not_carried"], deadline=5)
                assert item["tracks"] == [], item
                assert [(d["kind"], d["codec"], d["flv"]) for d in item["not_carried"]] == [("audio", "MP3", ".mp3")]
                assert "-c:a aac" in item["not_carried"][0]["reason"], item
                _, listing = await http_get(f"{base}/api/v1/broadcasts")
                assert KEY not in listing.decode()
            assert KEY not in text
        finally:
            await stopped(publisher)


@pytest.mark.parametrize("backend", ["aioquic", "aiopquic"])
async def test_h264_with_mp3_plays_its_video_at_a_separate_edge_which_says_the_audio_is_dropped(tmp_path, backend):
    need("ffmpeg")
    async with ingest_relay_edge(tmp_path, backend) as (rtmp, relay, edge):
        publisher = asyncio.create_task(run_process(mp3_publish_args(rtmp + KEY, seconds=30, video=True), timeout=60))
        try:
            await video_plays(edge, "live/cam", seconds=1)
            # the audio playlist says why it has nothing; the status lists the video, and the audio as dropped
            headers, body = await told_not_carried(f"{edge}/live/cam/audio.m3u8", deadline=2)
            assert headers[NOT_CARRIED_HEADER] == "audio=MP3" and b"its video plays" in body, (headers, body)
            for base in (edge, relay):
                await audio_listed_as_dropped(base, "live/cam", deadline=5)
        finally:
            await stopped(publisher)


async def test_the_player_page_of_a_separate_edge_says_the_codec_is_not_carried(tmp_path):
    need("ffmpeg")
    need_hls_js()
    async with ingest_relay_edge(tmp_path, "aiopquic") as (rtmp, _relay, edge):
        publisher = asyncio.create_task(run_process(mp3_publish_args(rtmp + KEY, seconds=30), timeout=60))
        try:
            async with chromium_devtools(tmp_path, f"{edge}/live/cam/") as devtools:
                shown = await devtools.poll(f"(({PAGE_STATUS}) || '').includes('MP3 is not carried') && ({PAGE_STATUS})",
                                            deadline=20)
                assert shown and CARRIED_AUDIO in shown, await devtools.evaluate(PAGE_STATUS)
        finally:
            await stopped(publisher)
