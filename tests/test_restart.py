"""Nodes as processes that stop and restart: graceful SIGTERM, an edge riding through its origin's restart."""

import asyncio
import os
import signal
import socket
import sys
import time

from .conftest import http_get, free_port, need, node_listening, wait_tcp
from .publishers import count_decoded_frames, ffmpeg_publish_args, run_process
from .test_lifecycle import long_publish_args, spawn


async def start_node(*args: str, env: dict | None = None) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "rtmpq", *args, "--log-level", "INFO",
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                                                env={**os.environ, **(env or {})})
    await node_listening(proc, args)
    return proc


async def stop_all(procs) -> None:
    """SIGTERM every node still running; none may have logged a traceback."""
    for p in procs:
        if p.returncode is None:
            p.terminate()
    for p in procs:
        if p.returncode is None:
            _, err = await p.communicate()
            assert b"Traceback" not in err, err.decode()


async def poll(url: str, accept, deadline: float = 30.0) -> bytes:
    end = time.monotonic() + deadline
    while True:
        status, body = await http_get(url)
        if status == 200 and accept(body):
            return body
        assert time.monotonic() < end, (status, body.decode(errors="replace"))
        await asyncio.sleep(0.2)


async def test_sigterm_stops_publishers_finalizes_recordings_and_exits_in_time(tmp_path):
    need("ffmpeg")
    prtmp, phttp, pmoq = free_port(), free_port(), free_port(socket.SOCK_DGRAM)
    node = await start_node("up", "--rtmp", f"127.0.0.1:{prtmp}", "--http", f"127.0.0.1:{phttp}",
                            "--moq", f"127.0.0.1:{pmoq}", "--state-dir", str(tmp_path / "state"),
                            "--record", str(tmp_path / "rec"), env={"RTMPQ_NODE_STOP_TIMEOUT": "4"})
    publisher = None
    try:
        await wait_tcp(prtmp)
        publisher = await spawn(long_publish_args(f"rtmp://127.0.0.1:{prtmp}/live/stop", seconds=60))
        playlist = f"http://127.0.0.1:{phttp}/live/stop/video.m3u8"
        await poll(playlist, lambda body: b"#EXTINF" in body)
        player = asyncio.create_task(run_process(["ffmpeg", "-v", "error", "-nostdin", "-i", playlist, "-f", "null", "-"],
                                                 timeout=60))
        await asyncio.sleep(1)  # the player reads for a while (not an ordering wait)
        started = time.monotonic()
        node.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(node.communicate(), 15)
        assert time.monotonic() - started < 4 + 2, "the node did not stop within its stop timeout"
        assert node.returncode == 0, err.decode()
        assert b"Traceback" not in err, err.decode()
        # the log says the node was stopped, and that it got through (else a stop looks like a crash)
        assert b"SIGTERM: stopping (within [node] stop_timeout, 4 s)" in err and err.rstrip().endswith(b"stopped"), \
            err.decode()
        # the publisher was told and closed: ffmpeg ends on its own, long before its 60 s
        await asyncio.wait_for(publisher.wait(), 10)
        # the player saw the end of the playlist (or the server closing) and stopped by itself
        await asyncio.wait_for(player, 20)
        [recording] = list((tmp_path / "rec").rglob("*.flv"))
        assert count_decoded_frames(str(recording))["video"] > 30  # finalized and decodable
    finally:
        if publisher is not None and publisher.returncode is None:
            publisher.kill()
        if node.returncode is None:
            node.kill()
            await node.wait()


async def test_an_edge_keeps_serving_across_its_origins_restart(tmp_path):
    need("ffmpeg")
    prtmp, phttp_origin, phttp_edge, pmoq = free_port(), free_port(), free_port(), free_port(socket.SOCK_DGRAM)
    origin_args = ["up", "--rtmp", f"127.0.0.1:{prtmp}", "--http", f"127.0.0.1:{phttp_origin}",
                   "--moq", f"127.0.0.1:{pmoq}", "--state-dir", str(tmp_path / "state")]
    origin = await start_node(*origin_args)
    # the edge waits this long for its upstream (or the broadcast) to come back before it ends playlists
    edge = await start_node("edge", "--http", f"127.0.0.1:{phttp_edge}", "--upstream", f"moqt://127.0.0.1:{pmoq}",
                            "--insecure", env={"RTMPQ_UPSTREAM_WAIT": "10"})
    procs = [origin, edge]
    try:
        await wait_tcp(prtmp)
        first = asyncio.create_task(run_process(ffmpeg_publish_args(f"rtmp://127.0.0.1:{prtmp}/live/tv",
                                                                    str(tmp_path / "a.flv"), seconds=4)))
        playlist = f"http://127.0.0.1:{phttp_edge}/live/tv/video.m3u8"
        await poll(f"http://127.0.0.1:{phttp_edge}/live/tv/index.m3u8", lambda body: b"#EXT-X-STREAM-INF" in body)
        player = asyncio.create_task(run_process(
            ["ffmpeg", "-v", "error", "-nostdin", "-i", playlist, "-f", "framemd5", str(tmp_path / "played.md5")],
            timeout=90))
        rc, out = await first
        assert rc == 0, out
        origin.send_signal(signal.SIGTERM)  # the origin restarts (GOAWAY to the edge)
        await asyncio.wait_for(origin.communicate(), 15)
        _, body = await http_get(playlist)
        assert b"#EXT-X-ENDLIST" not in body
        before = body
        origin = await start_node(*origin_args)
        procs.append(origin)
        await wait_tcp(prtmp)
        second = asyncio.create_task(run_process(ffmpeg_publish_args(f"rtmp://127.0.0.1:{prtmp}/live/tv",
                                                                     str(tmp_path / "b.flv"), seconds=4)))
        after = await poll(playlist, lambda body: b"#EXT-X-DISCONTINUITY" in body)
        assert b"#EXT-X-ENDLIST" not in after

        def msn(text: bytes) -> int:
            return int(next(line for line in text.decode().splitlines() if line.startswith("#EXT-X-MEDIA-SEQUENCE:"))
                       .split(":")[1])

        assert msn(after) >= msn(before)  # the same playlist, going on
        rc, out = await second
        assert rc == 0, out
        origin.send_signal(signal.SIGTERM)  # now for good: the edge ends its playlists after its wait
        await asyncio.wait_for(origin.communicate(), 15)
        rc, out = await player
        assert rc == 0, out
        played = [line for line in (tmp_path / "played.md5").read_text().splitlines() if not line.startswith("#")]
        assert len(played) > 4 * 30  # frames of both publishes (4 s each): more than the first alone has
        edge.terminate()
        _, err = await edge.communicate()
        assert b"Traceback" not in err, err.decode()
        # the operator who read "upstream ... lost" also reads that it came back, and when
        assert b"upstream 127.0.0.1:%d back; media again" % pmoq in err, err.decode()
    finally:
        await stop_all(procs)


async def test_a_relay_keeps_its_subscribers_across_an_ingest_restart(tmp_path):
    need("ffmpeg")
    import json

    prtmp, pmoq = free_port(), free_port(socket.SOCK_DGRAM)
    relay = await start_node("relay", "--moq", f"127.0.0.1:{pmoq}", "--state-dir", str(tmp_path / "relay"))
    phttp = free_port()
    ingest_args = ["ingest", "--rtmp", f"127.0.0.1:{prtmp}", "--upstream", f"moqt://127.0.0.1:{pmoq}", "--insecure",
                   "--http", f"127.0.0.1:{phttp}"]
    ingest = await start_node(*ingest_args)
    procs, sub = [relay, ingest], None
    try:
        sub = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "rtmpq", "sub", f"moqt://127.0.0.1:{pmoq}/live/cam", "--insecure", "--json",
            "--seconds", "45", "--wait", "20", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        printed = asyncio.create_task(sub.stdout.read())
        await wait_tcp(prtmp)
        rc, out = await run_process(ffmpeg_publish_args(f"rtmp://127.0.0.1:{prtmp}/live/cam", str(tmp_path / "a.flv"),
                                                        seconds=4))
        assert rc == 0, out
        ingest.send_signal(signal.SIGTERM)  # restarted, e.g. for an upgrade
        await asyncio.wait_for(ingest.communicate(), 15)
        ingest = await start_node(*ingest_args)
        procs.append(ingest)
        await wait_tcp(prtmp)
        second = asyncio.create_task(run_process(ffmpeg_publish_args(f"rtmp://127.0.0.1:{prtmp}/live/cam",
                                                                      str(tmp_path / "b.flv"), seconds=4)))
        await poll(f"http://127.0.0.1:{phttp}/api/v1/broadcasts", lambda body: b'"name":"video"' in body)
        # the new ingest stalls across its first GoP boundary, as a starved process on a loaded machine
        # does: what it read meanwhile goes out at once, the newest group first (the CI failure's shape)
        for _ in range(4):  # each well below the 2 s delivery timeout (longer drops groups), together over the boundary
            ingest.send_signal(signal.SIGSTOP)
            try:
                await asyncio.sleep(0.8)  # the stall (not an ordering wait)
            finally:
                ingest.send_signal(signal.SIGCONT)  # a stopped process would not take stop_all's SIGTERM
            await asyncio.sleep(0.3)
        rc, out = await second
        assert rc == 0, out
        relay.send_signal(signal.SIGTERM)  # ends the subscription (GOAWAY, and the relay is gone)
        _, err = await asyncio.wait_for(relay.communicate(), 15)
        assert b"Traceback" not in err, err.decode()
        # the subscriber has read all the relay sent once it says the session is lost; it would go
        # on trying the relay until its --seconds
        async with asyncio.timeout(20):
            while b"upstream 127.0.0.1:%d lost" % pmoq not in (line := await sub.stderr.readline()):
                assert line, "rtmpq sub ended before it said the relay was lost"
        sub.terminate()
        out = (await printed).decode()
        lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        video = [line for line in lines if line.get("track") == "video"]
        # What a subscriber is promised across the restart: the new session's groups go on above the
        # old ones, no group id reused. Not that frames arrive in group order: each group is its own
        # stream and the relay sends the newest first, so under load the last frames of a group can
        # come after the next group's keyframe, and `rtmpq sub` prints frames as they arrive (README).
        firsts = list(dict.fromkeys(f["group"] for f in video))
        assert firsts == sorted(firsts), f"a group began after a newer one: {firsts}"
        for group in firsts:  # each group one GoP of one session: no object twice, one keyframe, first
            frames = sorted((f["object"], f["keyframe"]) for f in video if f["group"] == group)
            objects = [o for o, _ in frames]
            assert len(objects) == len(set(objects)) <= 2 * 30, (group, objects)
            assert [k for _, k in frames].count(True) <= 1 and (frames[0][1] or group == firsts[0]), (group, frames)
        # both publishes arrived on the one subscription (4 s + 4 s at 30 fps, the first joined early)
        assert len(video) > 4 * 30 + 60, len(video)
        assert len(firsts) >= 4
    finally:
        if sub is not None and sub.returncode is None:
            sub.kill()
            await sub.wait()
        await stop_all(procs)


async def first_video_line(sub: asyncio.subprocess.Process, deadline: float = 30.0) -> None:
    """Read ``rtmpq sub --json`` output until its first video object (the track is relayed, live)."""
    async with asyncio.timeout(deadline):
        while b'"track": "video"' not in await sub.stdout.readline():
            if sub.stdout.at_eof():  # say why it ended (it logs a few lines at most)
                raise AssertionError(f"the subscriber ended: {(await sub.stderr.read()).decode(errors='replace')}")


async def relayed_live_track(tmp_path, *, below: bool):
    """An ingest publishing into a relay, ffmpeg publishing live/cam into it, a subscriber on the
    relay (and with ``below``, a second relay below it with a subscriber of its own): the
    processes, once video reaches every subscriber.

    The nodes start together, each a process; on a loaded machine a relay can still be starting
    when the ingest already takes RTMP. ``rtmpq sub`` reports a first connection that finds
    nothing listening after 5 s (a wrong address is not waited for), so the publisher and the
    subscribers start once every node says it is ready (/readyz: listening, its upstream link up)."""
    need("ffmpeg")
    for _ in range(3):
        prtmp, pmoq, pmoq2 = free_port(), free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_DGRAM)
        http = [free_port() for _ in range(3 if below else 2)]  # each node's /readyz
        procs = [await start_node("relay", "--moq", f"127.0.0.1:{pmoq}", "--state-dir", str(tmp_path / "relay"),
                                  "--http", f"127.0.0.1:{http[0]}")]
        if below:
            procs.append(await start_node("relay", "--moq", f"127.0.0.1:{pmoq2}", "--state-dir",
                                          str(tmp_path / "relay2"), "--upstream", f"moqt://127.0.0.1:{pmoq}",
                                          "--insecure", "--http", f"127.0.0.1:{http[1]}"))
        procs.append(await start_node("ingest", "--rtmp", f"127.0.0.1:{prtmp}", "--upstream",
                                      f"moqt://127.0.0.1:{pmoq}", "--insecure", "--http", f"127.0.0.1:{http[-1]}"))
        others = []
        try:
            for port, node in zip(http, procs):
                await node_ready(port, node)
            others.append(await spawn(long_publish_args(f"rtmp://127.0.0.1:{prtmp}/live/cam")))
            for port in [pmoq, pmoq2] if below else [pmoq]:
                sub = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "rtmpq", "sub", f"moqt://127.0.0.1:{port}/live/cam", "--insecure",
                    "--json", "--wait", "20", "--seconds", "60",
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
                others.append(sub)
                await first_video_line(sub)
            return procs, others
        # the caller never gets them to stop: stop them here (a failed run left them running)
        except PortTaken:  # another process bound a port free_port() gave before the node did: new ones
            await stop_others(procs)
        except Exception as exc:
            await stop_others(others + procs)
            raise AssertionError(f"{exc}\n{await node_logs(procs)}") from exc  # and what the nodes logged
        except BaseException:
            await stop_others(others + procs)
            raise
    raise AssertionError("three tries, each with a port taken before a node bound it")


class PortTaken(Exception):
    """A node could not bind the port it was given."""


async def node_ready(port: int, node: asyncio.subprocess.Process, deadline: float = 30.0) -> None:
    """Wait for a node's /readyz (its HTTP listener on ``port``) to answer 200: listening, and
    its upstream link (if it has one) connected. Raises PortTaken if the node exited because one
    of its ports was in use."""
    end = time.monotonic() + deadline
    while True:
        status, body = await http_get(f"http://127.0.0.1:{port}/readyz")
        if status == 200:
            return
        if node.returncode is not None:
            err = await node.stderr.read()
            if b"Address already in use" in err:
                raise PortTaken(err.decode(errors="replace"))
            raise AssertionError(f"a node exited at start: {err.decode(errors='replace')}")
        assert time.monotonic() < end, (status, body.decode(errors="replace"))
        await asyncio.sleep(0.1)


async def node_logs(procs) -> str:
    """The end of each stopped node's log."""
    logs = []
    for p in procs:
        err = await p.stderr.read()
        logs.append(f"--- node {p.pid} (exit {p.returncode}):\n{err[-3000:].decode(errors='replace')}")
    return "\n".join(logs)


async def stop_others(procs) -> None:
    for p in procs:
        if p.returncode is None:
            p.kill()
        await p.wait()


async def test_a_relay_stopped_on_purpose_does_not_say_it_lost_its_sources(tmp_path):
    """SIGTERM of a relay (one relaying what an ingest publishes into it, one below it relaying
    from its upstream) logged "source lost, kept N s for it to return" for every track it held:
    an operator read a failure upstream into a deliberate stop."""
    procs, others = await relayed_live_track(tmp_path, below=True)
    relay, relay_below = procs[0], procs[1]
    try:
        for node in (relay_below, relay):
            node.send_signal(signal.SIGTERM)
            _, err = await asyncio.wait_for(node.communicate(), 20)
            assert node.returncode == 0, err.decode()
            assert b"source lost" not in err, err.decode()
    finally:
        await stop_others(others)
        await stop_all(procs)


async def test_a_relay_still_says_so_when_its_source_goes(tmp_path):
    procs, others = await relayed_live_track(tmp_path, below=False)
    relay, ingest = procs[0], procs[1]
    try:
        ingest.send_signal(signal.SIGTERM)  # the publisher's session to the relay closes
        async with asyncio.timeout(20):
            while b"source lost, kept" not in (line := await relay.stderr.readline()):
                assert line, "the relay ended"
    finally:
        await stop_others(others)
        await stop_all(procs)
