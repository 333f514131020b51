"""Headless Chromium plays the edge's player page (hls.js, LL-HLS) while ffmpeg publishes."""

import asyncio
import functools
import json
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from .conftest import PAGE_STATUS, VIDEO_TIME, chromium_devtools, need, need_hls_js, start_up_node, until
from .publishers import (audio_switch_flv, drop_publish, end_live_publish, ffmpeg_clip_args, ffmpeg_publish_args,
                         ffmpeg_replay_args, run_process)


@pytest.fixture
async def node(tmp_path):
    need_hls_js()
    n = await start_up_node(tmp_path)
    yield n
    await n.close()


async def test_hls_js_in_chromium_plays_live_and_reports_latency(node, tmp_path, record_property):
    need("ffmpeg")
    rtmp_port = node.rtmp.address[1]
    host, http_port = node.edge.address
    publisher = asyncio.create_task(run_process(
        ffmpeg_publish_args(f"rtmp://127.0.0.1:{rtmp_port}/live/web", str(tmp_path / "ref.flv"), seconds=10), timeout=60))
    await node.registry.wait_for("live/web", 10)
    try:
        async with chromium_devtools(tmp_path, f"http://{host}:{http_port}/live/web/") as devtools:
            first = await devtools.playback_started()
            assert first, (await devtools.evaluate(PAGE_STATUS), await devtools.errors())
            later = first
            for _ in range(150):  # the video plays on (a loaded machine may stall it a moment)
                later = await devtools.evaluate(VIDEO_TIME)
                if later > first + 1.0:
                    break
                await asyncio.sleep(0.1)
            samples = []  # hls.js's own estimate: live edge - playhead, every 0.5 s for 4 s
            for _ in range(8):
                await asyncio.sleep(0.5)
                samples.append(await devtools.evaluate("window.rtmpqHls.latency"))
        assert later > first + 1.0  # the video plays
        assert all(s is not None and s > 0 for s in samples), samples
        latency = sorted(samples)[len(samples) // 2]
        record_property("hlsjs_live_latency_s", round(latency, 3))
        print(f"hls.js live latency: median {latency:.3f} s of {[round(s, 2) for s in samples]}")
        # the player page sits half a second behind the live edge (edge/server.py PLAYER_PAGE)
        assert latency < 1.0, samples
        await end_live_publish(publisher)  # (still live: its rest is not needed)
    finally:
        await drop_publish(publisher)  # (a test that failed: its publish ends with it)


# What hls.js did, for a failure message: level switches and loads, fragments and parts buffered
# (level, sn, part, start, duration), errors, each with the playhead and the buffered ranges. An
# exception in an ERROR handler is a fatal error to hls.js (internalException): a bufferSeekOverHole
# names a part without its fragment, which the log took for granted and so ended playback.
HLS_EVENT_LOG = """
window.hlsLog = [];
const note = (what) => { const v = document.getElementById('video');
  const b = Array.from({length: v.buffered.length}, (_, i) => v.buffered.start(i).toFixed(2) + '-' + v.buffered.end(i).toFixed(2));
  window.hlsLog.push(performance.now().toFixed(0) + ' t=' + v.currentTime.toFixed(2) + ' [' + b.join(' ') + '] ' + what); };
const frag = (d) => { const f = d.part || d.frag, whole = d.frag || (d.part && d.part.fragment);
  return f && whole ? (whole.type + ' L' + whole.level + ' sn' + whole.sn + (d.part ? '.' + d.part.index : '') + ' '
    + f.start.toFixed(3) + '+' + f.duration.toFixed(3)) : ''; };
rtmpqHls.on(Hls.Events.LEVEL_SWITCHING, (e, d) => note('switching L' + d.level));
rtmpqHls.on(Hls.Events.LEVEL_SWITCHED, (e, d) => note('switched L' + d.level));
rtmpqHls.on(Hls.Events.LEVEL_LOADED, (e, d) => { const f = d.details.fragments, p = d.details.partList;
  note('level L' + d.level + ' sn' + f[0].sn + '..' + f[f.length - 1].sn + ' ' + f[0].start.toFixed(3) + '-'
       + d.details.edge.toFixed(3) + (p && p.length ? ' lastpart ' + p[p.length - 1].start.toFixed(3) : '')); });
rtmpqHls.on(Hls.Events.FRAG_LOADING, (e, d) => note('loading ' + frag(d)));
rtmpqHls.on(Hls.Events.FRAG_BUFFERED, (e, d) => note('buffered ' + frag(d)));
rtmpqHls.on(Hls.Events.BUFFER_FLUSHING, (e, d) => note('flushing ' + d.type + ' ' + d.startOffset.toFixed(2) + '-' + d.endOffset));
rtmpqHls.on(Hls.Events.ERROR, (e, d) => { try { note('ERROR ' + d.details + (d.fatal ? ' fatal ' : ' ') + frag(d)
  + (d.buffer !== undefined ? ' buffer ' + d.buffer : '')); } catch (x) { note('ERROR ' + d.details + ' (' + x + ')'); } });
true
"""


async def test_hls_js_switches_between_transcoded_renditions(tmp_path):
    """`rtmpq up --ladder 480p,360p`: hls.js sees three levels and switches to a rung it had not
    watched; the rung starts on demand, the new level loads and playback goes on without a stall."""
    from rtmpq.config import TranscodeConfig

    need("ffmpeg")
    need_hls_js()
    node = await start_up_node(tmp_path, transcode=TranscodeConfig(ladder="480p,360p", rung_queue_frames=120,
                                                                   isolate=False))
    rtmp_port = node.rtmp.address[1]
    host, http_port = node.edge.address
    # the publisher replays a clip encoded beforehand: a live 720p encode competes for the CPU with
    # the transcoder and Chromium, and on a busy host fell behind real time (the source's live edge
    # then advanced slower than the player played, eating its buffer)
    clip = str(tmp_path / "clip.flv")
    rc, out = await run_process(ffmpeg_clip_args(clip, seconds=4, size="1280x720"), timeout=90)
    assert rc == 0, out
    publisher = asyncio.create_task(run_process(ffmpeg_replay_args(
        f"rtmp://127.0.0.1:{rtmp_port}/live/abr", clip, seconds=60), timeout=90))  # ends with the node
    try:
        await node.registry.wait_for("live/abr", 10)
        # the page asked to play 1.5 s behind the live edge, not its low-latency default (0.5 s,
        # which test_hls_js_in_chromium_plays_live_and_reports_latency holds to its promise): with
        # under half a second of buffer, a host busy with a 720p decode, a 360p encode and
        # Chromium's own decoding stalls now and then whatever level plays; this test is about
        # the switch
        async with chromium_devtools(tmp_path, f"http://{host}:{http_port}/live/abr/?latency=1.5") as devtools:
            now = VIDEO_TIME
            async with asyncio.timeout(30):  # until playback starts
                while not await devtools.evaluate(f"window.rtmpqHls && {now} > 0"):
                    await asyncio.sleep(0.2)
            assert await devtools.evaluate("rtmpqHls.config.liveSyncDuration") == 1.5
            await devtools.evaluate(HLS_EVENT_LOG)
            heights = await devtools.evaluate("rtmpqHls.levels.map(l => l.height)")
            # another player already watches the 360p rung: it starts on demand at the current
            # group's IDR, and the edge answers its first playlist request once it has caught up
            # with the source (edge/server.py RUNG_LIVE_LAG; tests/test_transcode_e2e.py covers
            # the start)
            warm = f"http://{host}:{http_port}/live/abr/video-360p.m3u8"
            from .test_nodes_cli import get_when_ready

            await get_when_ready(warm, 30)
            assert sorted(heights) == [360, 480, 720]
            target = heights.index(360)
            assert await devtools.evaluate("rtmpqHls.currentLevel") != target
            errors_before = len(await devtools.evaluate("window.rtmpqErrors"))
            await devtools.evaluate("window.switched = null; rtmpqHls.on(Hls.Events.LEVEL_SWITCHED, "
                                    "(e, d) => { window.switched = d.level; });"
                                    f"rtmpqHls.currentLevel = {target}; true")
            stage, before, after = "the new level to load", 0.0, 0.0
            try:
                async with asyncio.timeout(30):  # the new level loads
                    while await devtools.evaluate("window.switched") != target:
                        await asyncio.sleep(0.2)
                stage = "its pictures to show"
                async with asyncio.timeout(20):
                    while await devtools.evaluate("document.getElementById('video').videoHeight") != 360:
                        await asyncio.sleep(0.2)
                # hls.currentLevel is an immediate switch: hls.js flushes the whole buffer first, so on
                # a loaded host the refill itself may be reported as a stall; from the new level's
                # first pictures on, playback must go on without one
                errors_before = len(await devtools.evaluate("window.rtmpqErrors"))
                stage = "two more seconds of the new level"
                before = after = await devtools.evaluate(now)
                async with asyncio.timeout(20):
                    while after <= before + 2.0:
                        await asyncio.sleep(0.2)
                        after = await devtools.evaluate(now)
            except TimeoutError:
                pass  # said below, with what hls.js did
            errors = (await devtools.evaluate("window.rtmpqErrors"))[errors_before:]  # since the switch
            debug = "\n".join(await devtools.evaluate("window.hlsLog"))
        stats = node.transcoder.broadcasts["live/abr"].transcoders["video"].stats if "live/abr" in \
            node.transcoder.broadcasts else "gone (the publish ended)"
        assert after > before + 2.0, f"timed out waiting for {stage} (at {after} s): {errors}, rung {stats}\n{debug}"
        assert not [e for e in errors if "bufferStalledError" in e or "fatal" in e], \
            f"{errors} after the switch, rung {stats}\n{debug}"
        assert node.transcoder.broadcasts["live/abr"].frames_encoded("video-480p") == 0  # never watched
    finally:
        await node.close()
        await publisher  # ffmpeg ends when the node closes its connection


async def test_the_player_page_plays_on_when_the_publisher_comes_back_without_audio(tmp_path):
    """ffmpeg publishes audio and video, then comes back within the grace period with `-an`. A
    media element plays only what every MSE buffer holds, so hls.js with an audio rendition that
    stops stalls. The edge keeps the audio playlist going as silence for the players on it, so
    hls.js plays on as it is: the page never needs to start over (as it does for audio it cannot
    fill, seeing the audio playlist end while the multivariant no longer lists audio)."""
    from rtmpq.config import PublishConfig

    from .test_lifecycle import long_publish_args, spawn

    need("ffmpeg")
    need_hls_js()
    node = await start_up_node(tmp_path, publish=PublishConfig(grace_period=30.0))
    second = None
    url = f"rtmp://127.0.0.1:{node.rtmp.address[1]}/live/an"
    host, http_port = node.edge.address
    frames = "document.getElementById('video').getVideoPlaybackQuality().totalVideoFrames"
    try:
        first = asyncio.create_task(run_process(ffmpeg_publish_args(url, str(tmp_path / "ref.flv"), seconds=8),
                                                timeout=60))
        await node.registry.wait_for("live/an", 10)
        async with chromium_devtools(tmp_path, f"http://{host}:{http_port}/live/an/") as devtools:
            assert await devtools.playback_started(), await devtools.errors()
            rc, out = await first
            assert rc == 0, out
            broadcast = node.registry.get("live/an")
            await until(lambda: not broadcast.publishing, what="the publisher to leave")
            # the page says why nothing moves (it showed the last latency, frozen)
            async def says_away() -> bool:
                return "the publisher may be away" in await devtools.evaluate(PAGE_STATUS)

            await until(says_away, 15, "the page to say the publisher may be away", interval=0.2)
            second = await spawn(long_publish_args(url, seconds=40))
            await until(lambda: broadcast.catalog.track("audio") is None, what="the audio to leave the catalog")
            before = await devtools.evaluate(frames)
            loop = asyncio.get_running_loop()
            end = loop.time() + 25
            while (now := await devtools.evaluate(frames)) < before + 3 * 30:  # 3 s of video after the seam
                assert loop.time() < end, (now, before, await devtools.errors())
                await asyncio.sleep(0.2)
            assert await devtools.evaluate("window.rtmpqRestarts") == 0  # the same hls.js, untouched
            status = await devtools.evaluate(PAGE_STATUS)
            assert status.startswith("latency"), status  # playing again, and saying so
    finally:
        if second is not None and second.returncode is None:
            second.kill()
            await second.wait()
        await node.close()


async def test_hls_js_plays_through_audio_that_stops_while_the_video_goes_on(node, tmp_path, source_flv):
    """A publisher's audio stops for 3 s and comes back while its video goes on (a phone call
    took a mobile encoder's microphone): hls.js plays on through the gap, on the silence the edge
    lists for it, with no restart of the page's player. Without it the audio buffer ran dry at
    the gap and the video stopped there."""
    from .test_edge import publish_in_real_time

    host, http_port = node.edge.address
    async with chromium_devtools(tmp_path, f"http://{host}:{http_port}/live/gap/") as devtools:
        publishing = asyncio.create_task(
            publish_in_real_time(node, "gap", source_flv, keep_audio=lambda ts: not 2500 <= ts < 5500))
        start = await devtools.playback_started()
        assert start and start < 2.5, start  # playing before the gap (the audio stops at 2.5 s)
        frames = "document.getElementById('video').getVideoPlaybackQuality().totalVideoFrames"
        position = VIDEO_TIME
        # frames shown and the position read together: on a loaded machine the page may have
        # played on by the time a second read comes back
        shown, since = json.loads(await devtools.evaluate(f"JSON.stringify([{frames}, {position}])"))
        loop = asyncio.get_running_loop()
        end = loop.time() + 20
        while (now := await devtools.evaluate(position)) < 7.0:  # past the gap, near the end (8 s)
            assert loop.time() < end, (now, await devtools.errors())
            await asyncio.sleep(0.2)
        await publishing
        # the frames from there were shown (30 fps), none skipped by a jump over the 3 s hole in
        # the audio: such a jump leaves under half of them (2.6 s of 5.5 s of frames); a loaded
        # machine's headless Chromium decodes as few as 0.8 of them (CI with other work beside it)
        shown = await devtools.evaluate(frames) - shown
        assert shown > 0.6 * 30 * (now - since), (shown, start, since, now)
        assert await devtools.evaluate("window.rtmpqRestarts") == 0


async def test_the_player_page_plays_on_past_its_tokens_expiry(tmp_path):
    """A page whose token expires a few seconds in (a page minting one-hour tokens, an hour in)
    plays on: hls.js reloads by the URIs the edge gave it, which carry its session token."""
    import time

    from rtmpq.auth.tokens import CLOCK_SKEW_LEEWAY, mint_token
    from rtmpq.config import AuthConfig, PublishConfig

    need("ffmpeg")
    secret = "0123456789abcdef0123456789abcdef"
    n = await start_up_node(tmp_path, auth=AuthConfig(secret=secret, require_playback_token=True),
                            publish=PublishConfig(keys={"sk-secret1": "studio"}, grace_period=0))
    publisher = asyncio.create_task(run_process(ffmpeg_publish_args(
        f"rtmp://127.0.0.1:{n.rtmp.address[1]}/live/sk-secret1", str(tmp_path / "ref.flv"), seconds=25), timeout=60))
    try:
        await n.registry.wait_for("live/studio", 10)
        token = mint_token(secret, "live/studio", "subscribe", 3, now=time.time())
        expired = int(time.time() + 3) + CLOCK_SKEW_LEEWAY
        host, http_port = n.edge.address
        async with chromium_devtools(tmp_path, f"http://{host}:{http_port}/live/studio/?token={token}") as devtools:
            assert await devtools.playback_started(), await devtools.errors()
            while time.time() < expired + 2:  # past the expiry, with a margin
                await asyncio.sleep(0.2)
            past = await devtools.evaluate(VIDEO_TIME)
            later = past
            for _ in range(100):  # the video plays on, on reloads made after the expiry
                later = await devtools.evaluate(VIDEO_TIME)
                if later > past + 2.0:
                    break
                await asyncio.sleep(0.1)
            errors = await devtools.errors()
        assert later > past + 2.0, errors
        assert "fatal" not in errors, errors
        await end_live_publish(publisher)
    finally:
        await drop_publish(publisher)  # (a test that failed: its publish ends with it)
        await n.close()


async def test_a_player_page_opened_before_the_broadcast_starts_plays_once_it_does(node, tmp_path):
    need("ffmpeg")
    host, http_port = node.edge.address
    publisher = None
    try:
        async with chromium_devtools(tmp_path, f"http://{host}:{http_port}/live/soon/") as devtools:
            shown = set()  # what the page said while there was nothing to play
            for _ in range(200):  # the page asked and was told there is no such broadcast (404)
                shown.add(await devtools.evaluate("document.getElementById('status')?.textContent") or "")
                if "(fatal)" in (await devtools.evaluate("JSON.stringify(window.rtmpqErrors || [])") or "") \
                        and any("not live" in s for s in shown):
                    break
                await asyncio.sleep(0.1)
            publisher = asyncio.create_task(run_process(ffmpeg_publish_args(
                f"rtmp://127.0.0.1:{node.rtmp.address[1]}/live/soon", str(tmp_path / "ref.flv"), seconds=10), timeout=60))
            # the viewer does nothing: the page plays once the broadcast is live
            assert await devtools.playback_started(tries=200), await devtools.errors()
            assert any("not live" in s for s in shown), shown  # the viewer was told, not left at "loading…"
        await end_live_publish(publisher)  # (still live: its rest is not needed)
    finally:
        if publisher is not None:
            await drop_publish(publisher)  # (a test that failed: its publish ends with it)


async def test_the_player_page_of_a_separate_edge_says_a_broadcast_is_not_live(node, tmp_path):
    """An `rtmpq edge` held a playlist request for a broadcast its upstream does not have up to 3
    target durations (6 s) before its 503, longer than the page waits before it tries again: the
    page's "is it not carried?" answer came after that restart and was dropped, so the viewer
    read "latency 0.00 s" for good (and hls.js asked twice first: 13 s). Now it reads "loading…",
    then "not live (yet)" with the first answer: a 404 as soon as the relay above has said it
    does not have the name, as `rtmpq up` answers (a 503 when upstream has not answered yet)."""
    from rtmpq.config import Config, HttpConfig, UpstreamConfig
    from rtmpq.nodes.nodes import run_edge

    from .conftest import free_port, http_get, wait_tcp

    host, port = node.moq_address
    edge = Config(http=HttpConfig(host="127.0.0.1", port=free_port()),
                  upstream=UpstreamConfig(url=f"moqt://{host}:{port}", insecure=True, backend=node.moq_config.backend))
    stop = asyncio.Event()
    task = asyncio.create_task(run_edge(edge, stop))
    try:
        await wait_tcp(edge.http.port)
        # and a player's request is told the same (was: "the broadcast has no media yet")
        asked = asyncio.create_task(http_get(f"http://127.0.0.1:{edge.http.port}/live/none/index.m3u8"))
        async with chromium_devtools(tmp_path, f"http://127.0.0.1:{edge.http.port}/live/nobody/") as devtools:
            shown = set()
            loop = asyncio.get_running_loop()
            end = loop.time() + 12
            while not any("not live" in s for s in shown) and loop.time() < end:
                shown.add(await devtools.evaluate(PAGE_STATUS) or "")
                await asyncio.sleep(0.2)
            assert any("not live (yet)" in s for s in shown), (shown, await devtools.errors())
            assert not any("latency" in s for s in shown), shown  # nothing played: no latency to show
        assert await asked == (404, b"no such broadcast\n")
    finally:
        stop.set()
        await task


async def test_a_page_on_another_origin_sees_the_edges_answers_to_requests_with_headers_of_its_own(node, tmp_path):
    """A web developer's page (another origin) whose hls.js adds a header (an Authorization in
    xhrSetup) makes the browser ask first (a CORS preflight, OPTIONS): the edge allows it, so the
    page gets the edge's answers, an error's status too, not an opaque network error."""
    host, http_port = node.edge.address
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text(f"""<!doctype html><script>
    window.answers = [];
    for (const path of ["/live/nobody/index.m3u8", "/hls.min.js"])
      fetch("http://{host}:{http_port}" + path, {{headers: {{Authorization: "Bearer example"}}}})
        .then((r) => window.answers.push(path + " " + r.status), (e) => window.answers.push(path + " " + e));
    </script>""")
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(SimpleHTTPRequestHandler, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        async with chromium_devtools(tmp_path, f"http://127.0.0.1:{server.server_address[1]}/index.html") as devtools:
            await devtools.poll("window.answers.length === 2", deadline=10)
            answers = await devtools.evaluate("window.answers") or []
        assert sorted(answers) == ["/hls.min.js 200", "/live/nobody/index.m3u8 404"], answers
    finally:
        server.shutdown()
        server.server_close()


async def test_a_player_page_without_a_token_says_it_may_not_play(tmp_path):
    """A node that wants a playback token: its page opened without one says so (403), not
    "loading…" nor "not live", and does not ask again and again."""
    from rtmpq.config import AuthConfig

    n = await start_up_node(tmp_path, auth=AuthConfig(secret="0123456789abcdef0123456789abcdef",
                                                      require_playback_token=True))
    host, http_port = n.edge.address
    try:
        async with chromium_devtools(tmp_path, f"http://{host}:{http_port}/live/studio/") as devtools:
            status = "document.getElementById('status')?.textContent || ''"
            await devtools.poll(f"({status}).includes('403')", deadline=10)
            shown = await devtools.evaluate(status)
            assert "not allowed" in shown, shown
            assert await devtools.evaluate("window.rtmpqRestarts") == 0
    finally:
        await n.close()


# The page that played the name's ended broadcast plays a new publish of the name within this
# many seconds (hls.js starting: about 0.3 s here, 1.2 s seen at load average 8) of the edge
# serving it, which it does once its first segment is whole (one group of ffmpeg_publish_args:
# 2 s) plus EDGE_SERVES_SLACK. Before, the ended playlist (kept ENDED_PLAYLIST_KEEP, 10 s) hid the
# new publish and the page asked every PLAYER_RETRY (2 s).
PAGE_RESTART = 2.0
EDGE_SERVES_SLACK = 1.0


async def test_a_player_page_that_played_to_the_end_plays_the_next_publish_of_its_name(node, tmp_path):
    """The publisher stops (ENDLIST: the page plays to the end and says so), then publishes the
    same name again at once: the page notices, by itself, and plays the new broadcast as soon as
    the edge serves it, which it does from its first segment on, though the ended broadcast's
    playlists are still served to their readers (ENDED_PLAYLIST_KEEP)."""
    from .test_edge import http_get

    need("ffmpeg")
    host, http_port = node.edge.address
    url = f"rtmp://127.0.0.1:{node.rtmp.address[1]}/live/again"
    publisher = asyncio.create_task(run_process(ffmpeg_publish_args(url, str(tmp_path / "1.flv"), seconds=4),
                                                timeout=60))
    await node.registry.wait_for("live/again", 10)
    loop = asyncio.get_running_loop()
    serving = None

    async def served():  # when a player opening the name would first get the new publish
        while True:
            status, _, body = await http_get(f"http://{host}:{http_port}/live/again/video.m3u8")
            if status == 200 and b"#EXT-X-ENDLIST" not in body:
                return loop.time()
            await asyncio.sleep(0.05)

    try:
        async with chromium_devtools(tmp_path, f"http://{host}:{http_port}/live/again/") as devtools:
            assert await devtools.playback_started(), await devtools.errors()
            rc, output = await publisher
            assert rc == 0, output
            assert await devtools.poll(f"{PAGE_STATUS}.includes('ended')", 30), \
                await devtools.evaluate(PAGE_STATUS)
            restarts = await devtools.evaluate("window.rtmpqRestarts")
            publisher = asyncio.create_task(run_process(ffmpeg_publish_args(url, str(tmp_path / "2.flv"), seconds=12),
                                                        timeout=60))
            broadcast = await node.registry.wait_for("live/again", 10)
            await until(lambda: broadcast.frames_in > 0, what="the new publish's first frame")
            first_frame = loop.time()
            serving = asyncio.create_task(served())
            # the viewer does nothing: the page plays the new publish
            playing_again = f"window.rtmpqRestarts > {restarts} && {VIDEO_TIME} > 0"
            assert await devtools.poll(playing_again, 30), \
                (await devtools.evaluate(PAGE_STATUS),
                 await devtools.errors())
            playing = loop.time()
            at = await asyncio.wait_for(serving, 10)
            print(f"the edge serves the new publish {at - first_frame:.2f} s after its first frame; the page plays "
                  f"it {playing - at:.2f} s later")
            assert at - first_frame < 2.0 + EDGE_SERVES_SLACK, at - first_frame
            assert playing - at < PAGE_RESTART, (playing - at, at - first_frame)
            assert await devtools.poll(f"{VIDEO_TIME} > 0.5", 15)
            position = await devtools.evaluate(VIDEO_TIME)
            assert await devtools.poll(f"{VIDEO_TIME} > {position} + 1", 15)
            assert "latency" in await devtools.evaluate(PAGE_STATUS)
        await end_live_publish(publisher)  # (the second publish, still live: its rest is not needed)
    finally:
        if serving is not None:
            serving.cancel()
        await drop_publish(publisher)  # (a test that failed: its publish ends with it)


# -- a size change mid-stream, carried only in-band (an MPEG-TS source restreamed with -c copy) ----

VIDEO_SIZE = "[document.getElementById('video').videoWidth, document.getElementById('video').videoHeight]"
# The longest time (ms) the page's playhead stood still, watched every 50 ms from now on.
STALL_WATCH = """
window.stall = {longest: 0, since: performance.now(), at: document.getElementById('video').currentTime};
setInterval(() => { const v = document.getElementById('video'), now = performance.now();
  if (v.currentTime !== stall.at) { stall.at = v.currentTime; stall.since = now; }
  else stall.longest = Math.max(stall.longest, now - stall.since); }, 50);
true
"""
# A stall a viewer notices (hls.js itself reports one after 1 s without progress).
LONGEST_STALL_MS = 1000


@pytest.mark.parametrize("first, second", [
    (("640x360", "high", "avc1.64001e"), ("1280x720", "high", "avc1.64001f")),
    (("1280x720", "high", "avc1.64001f"), ("640x360", "main", "avc1.4d401e")),  # another profile too
], ids=["360p-720p", "720p-360p-main"])
async def test_hls_js_plays_through_a_size_change_carried_only_in_band(node, tmp_path, switch_clips, first, second):
    """An MPEG-TS source restreamed with -c copy changes size and codec string 4 s in, its new
    SPS/PPS only in its key frames: the edge lists a new init segment behind EXT-X-DISCONTINUITY
    (tests/test_inband_parameter_sets.py). hls.js in Chromium plays through the change: the
    picture takes the new size from the change's key frame on, and the playhead goes 1.5 s past
    it with no fatal error and never stands still for a second. The page plays 1.5 s behind the
    live edge: at its 0.5 s default, hls.js on this host (busy with two ffmpeg, the node, Chromium
    and others' work) reported a stall now and then with or without a change (two clips of one
    size: one run in 5)."""
    from .test_inband_parameter_sets import restream

    size = lambda text: [int(n) for n in text.split("x")]  # noqa: E731
    host, http_port = node.edge.address
    publish = None
    # the browser starts first: on a loaded host its start took seconds, and the page then began
    # after the change
    async with chromium_devtools(tmp_path, "about:blank") as devtools:
        try:
            publish, broadcast = await restream(node, "switch", [switch_clips(*first[:2]), switch_clips(*second[:2])],
                                                tmp_path / "ref.flv")
            assert broadcast.catalog.track("video").codec == first[2]
            await devtools.call("Page.navigate", url=f"http://{host}:{http_port}/live/switch/?latency=1.5")
            start = await devtools.playback_started()
            assert start, await devtools.errors()
            await devtools.evaluate(HLS_EVENT_LOG + STALL_WATCH)
            shown_before = await devtools.evaluate(VIDEO_SIZE)
            # the playhead once the new size shows (the change is at 4 s; a picture's size changes
            # when it is shown), then 1.5 s further on
            changed = await devtools.poll(f"{VIDEO_SIZE}[0] === {size(second[0])[0]} && {VIDEO_TIME}", 15)
            played_on = changed and await devtools.poll(f"{VIDEO_TIME} > {changed} + 1.5", 10)
            longest_stall = await devtools.evaluate("stall.longest")
            shown_after, errors = await devtools.evaluate(VIDEO_SIZE), await devtools.errors()
            debug = "\n".join(await devtools.evaluate("window.hlsLog"))
            print(f"{first[0]} -> {second[0]}: the new size shows at {changed} s; longest stall {longest_stall:.0f} ms")
            assert shown_before == size(first[0]), f"{shown_before}: playing from {start} s"
            assert changed and played_on, f"{shown_after} {errors}\n{debug}"
            assert changed < 5.0, f"{changed}\n{debug}"  # from the change's key frame (4 s) on, not the next one
            assert shown_after == size(second[0])
            assert broadcast.catalog.track("video").codec == second[2]
            assert "fatal" not in errors, f"{errors}\n{debug}"
            assert longest_stall < LONGEST_STALL_MS, f"{errors}\n{debug}"
            await end_live_publish(publish)
        finally:
            if publish is not None:
                await drop_publish(publish)


async def past_a_discontinuity(url: str) -> bool:
    """Whether the media playlist at ``url`` lists a whole segment after an EXT-X-DISCONTINUITY."""
    from .test_edge import http_get

    playlist = (await http_get(url))[2].decode()
    return "#EXT-X-DISCONTINUITY" in playlist and playlist.split("#EXT-X-DISCONTINUITY")[-1].count("#EXTINF") >= 1


async def test_the_player_page_opened_after_an_in_band_size_change_plays(node, tmp_path, switch_clips):
    """A viewer who opens the page after the change: every video segment hls.js loads is past the
    video playlist's discontinuity. It plays, at the new size. Before, the audio playlist had no
    discontinuity there, and hls.js waited for ever for video of the audio's discontinuity
    sequence to map the audio's timestamps by: the page never played."""
    from .test_inband_parameter_sets import restream

    host, http_port = node.edge.address
    publish = None
    async with chromium_devtools(tmp_path, "about:blank") as devtools:  # (started first: see above)
        try:
            publish, _ = await restream(node, "late", [switch_clips("640x360", "high"), switch_clips("1280x720", "high")],
                                        tmp_path / "ref.flv")

            # a whole segment after the discontinuity: the live edge is 1 s past it
            await until(lambda: past_a_discontinuity(f"http://{host}:{http_port}/live/late/video.m3u8"), 15,
                        "a whole segment past the change", interval=0.1)
            await devtools.call("Page.navigate", url=f"http://{host}:{http_port}/live/late/")
            start = await devtools.playback_started(tries=50)
            assert start, await devtools.errors()
            assert await devtools.poll(f"{VIDEO_TIME} > {start} + 1", 10), await devtools.errors()
            assert await devtools.evaluate(VIDEO_SIZE) == [1280, 720]
            errors = await devtools.errors()
            assert "fatal" not in errors, errors
            await end_live_publish(publish)
        finally:
            if publish is not None:
                await drop_publish(publish)


async def test_the_player_page_opened_after_an_audio_format_change_plays_video_and_audio(node, tmp_path):
    """The audio changes format with no gap in the timeline (48 kHz mono after 44.1 kHz stereo, the
    video the same): a viewer who opens the page after the change gets audio segments past the
    audio playlist's discontinuity. Before, the video playlist had none there, and hls.js waited
    for ever for video of the audio's discontinuity sequence to map the audio's timestamps by.
    Now it plays: the picture moves, and audio parts go on being buffered."""
    from .test_edge import publish_in_real_time

    need("ffmpeg")
    flv = await audio_switch_flv(tmp_path, after=6.0)
    host, http_port = node.edge.address
    base = f"http://{host}:{http_port}/live/mono"
    async with chromium_devtools(tmp_path, "about:blank") as devtools:  # (started first: see above)
        # the change (4 s) and a whole group past it at once, then live
        publishing = asyncio.create_task(publish_in_real_time(node, "mono", flv, lambda ts: True, head_start=6.1))
        try:
            await until(lambda: past_a_discontinuity(f"{base}/audio.m3u8"), 15, "a whole audio segment past the change",
                        interval=0.1)
            await devtools.call("Page.navigate", url=f"{base}/")
            start = await devtools.playback_started(tries=50)
            assert start > 4.0, (start, await devtools.errors())  # (joined after the change)
            # audio parts buffered from now on (a media element plays only what every buffer holds)
            await devtools.evaluate("window.audioParts = 0; window.rtmpqHls.on(Hls.Events.FRAG_BUFFERED, "
                                    "(event, data) => { if (data.frag.type === 'audio') window.audioParts += 1; }); true")
            assert await devtools.poll(f"{VIDEO_TIME} > {start} + 1", 10), await devtools.errors()
            assert await devtools.poll("window.audioParts >= 3", 5), await devtools.errors()
            assert "fatal" not in await devtools.errors()
            await publishing
        finally:
            publishing.cancel()  # (a test that failed)
