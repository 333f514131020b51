"""Many hosts on one directory (a real redis-server per test): origins register the broadcasts
they hold with a lease, a relay or an edge finds a broadcast's origin there and follows it when
the publisher moves to another ingest, and a dead origin's lease lapses within seconds."""

import asyncio
import json
import signal
import socket
import sys
import time

import pytest
import redis.asyncio

from rtmpq.netem import Impairment, ImpairmentProxy

from .conftest import RedisServer, free_port, http_get, need, wait_tcp
from .publishers import ffmpeg_publish_args, run_process
from .test_lifecycle import long_publish_args, spawn
from .test_restart import poll, start_node

TTL = "1.5"  # seconds: short, so a dead origin is forgotten quickly here


async def entry(r, name: str):
    raw = await r.get(f"rtmpq:broadcast:{name}")
    return None if raw is None else json.loads(raw)


async def until(condition, what: str, deadline: float = 20.0):
    end = time.monotonic() + deadline
    while True:
        value = await condition()
        if value:
            return value
        assert time.monotonic() < end, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def origin(tmp_path, label: str, directory: str, *, grace: float, backend: str = "aioquic",
                 pmoq: int | None = None, advertise: str = ""):
    """`rtmpq up` registering in ``directory``; returns (process, rtmp port, moq port)."""
    prtmp, pmoq = free_port(), pmoq or free_port(socket.SOCK_DGRAM)
    proc = await start_node("up", "--rtmp", f"127.0.0.1:{prtmp}", "--http", f"127.0.0.1:{free_port()}",
                            "--moq", f"127.0.0.1:{pmoq}", "--state-dir", str(tmp_path / label), "--quic-backend", backend,
                            "--directory", directory,
                            env={"RTMPQ_DIRECTORY_TTL": TTL, "RTMPQ_DIRECTORY_NODE_ID": label,
                                 "RTMPQ_PUBLISH_GRACE_PERIOD": str(grace), "RTMPQ_DIRECTORY_ADVERTISE": advertise})
    await wait_tcp(prtmp)
    return proc, prtmp, pmoq


async def stop_all(procs) -> None:
    for p in procs:
        if p.returncode is None:
            p.terminate()
    for p in procs:
        _, err = await p.communicate()
        print(err.decode(errors="replace"))  # shown when the test fails
        assert b"Traceback" not in err, err.decode()


async def test_an_origin_holds_a_lease_while_publishing_and_a_dead_one_is_forgotten_in_seconds(tmp_path, redis_server):
    need("ffmpeg")
    r = redis.asyncio.from_url(redis_server.url)
    node, prtmp, pmoq = await origin(tmp_path, "ingest-a", redis_server.url, grace=30)
    publisher = None
    try:
        publisher = await spawn(long_publish_args(f"rtmp://127.0.0.1:{prtmp}/live/lease", seconds=60))
        found = await until(lambda: entry(r, "live/lease"), "the origin to register")
        assert found["url"] == f"moqt://127.0.0.1:{pmoq}" and found["node"] == "ingest-a"
        assert len(found["fingerprint"]) == 64  # followers can pin the origin's self-signed certificate
        assert 0 < await r.pttl("rtmpq:broadcast:live/lease") <= 1500  # a lease, not a permanent entry
        await asyncio.sleep(2 * float(TTL))  # longer than the lease: it must have been renewed
        assert (await entry(r, "live/lease"))["version"] == found["version"]
        # the publisher leaves: the broadcast waits for it here (grace), but the entry goes at once,
        # since a returning publisher may come back anywhere
        publisher.kill()
        await publisher.wait()
        await until(lambda: _absent(r, "live/lease"), "the entry to be withdrawn", deadline=5)
        publisher = await spawn(long_publish_args(f"rtmp://127.0.0.1:{prtmp}/live/lease", seconds=60))
        again = await until(lambda: entry(r, "live/lease"), "the returning publisher to be registered")
        assert again["version"] > found["version"]
        # Redis restarts with nothing: the origin's next renewal finds its lease gone and claims again
        await r.aclose()
        await redis_server.stop()
        await redis_server.start()
        r = redis.asyncio.from_url(redis_server.url)
        back = await until(lambda: entry(r, "live/lease"), "the origin to claim again after Redis restarted",
                           deadline=10)
        assert back["node"] == "ingest-a"
        # the node dies without a word: its lease lapses within the TTL (plus one renewal period)
        node.send_signal(signal.SIGKILL)
        await node.wait()
        killed = time.monotonic()
        await until(lambda: _absent(r, "live/lease"), "the dead origin's lease to lapse", deadline=10)
        assert time.monotonic() - killed <= float(TTL) + 0.5
    finally:
        if publisher is not None and publisher.returncode is None:
            publisher.kill()
        if node.returncode is None:
            node.kill()
            await node.wait()
        await r.aclose()


async def _absent(r, name: str) -> bool:
    return await r.get(f"rtmpq:broadcast:{name}") is None


async def test_a_broadcast_that_ends_at_its_origin_ends_whole_at_a_relay_that_hears_the_directory_first(
        tmp_path, redis_server):
    need("ffmpeg")
    # the relay reaches the origin over a slow path (0.2 s each way) and hears from the directory
    # (Redis) that the broadcast is gone before its last objects and PUBLISH_DONE come over QUIC;
    # it must still deliver them (before: it unsubscribed at once and the tail was lost)
    pmoq = free_port(socket.SOCK_DGRAM)
    slow = Impairment(delay_ms=200)
    async with ImpairmentProxy(target=("127.0.0.1", pmoq), up=slow, down=slow) as proxy:
        o, rtmp, _ = await origin(tmp_path, "ingest", redis_server.url, grace=0, pmoq=pmoq,
                                  advertise=f"moqt://127.0.0.1:{proxy.port}")
        prelay = free_port(socket.SOCK_DGRAM)
        relay = await start_node("relay", "--moq", f"127.0.0.1:{prelay}", "--state-dir", str(tmp_path / "relay"),
                                 "--directory", redis_server.url, "--insecure",
                                 env={"RTMPQ_DIRECTORY_TTL": TTL, "RTMPQ_PUBLISH_GRACE_PERIOD": "1"})
        sub = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "rtmpq", "sub", f"moqt://127.0.0.1:{prelay}/live/tail", "--insecure", "--json",
            "--wait", "30", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        procs = [o, relay, sub]
        try:
            rc, out = await run_process(ffmpeg_publish_args(f"rtmp://127.0.0.1:{rtmp}/live/tail",
                                                             str(tmp_path / "ref.flv"), seconds=8))
            assert rc == 0, out
            lines, _ = await asyncio.wait_for(sub.communicate(), 30)
            assert sub.returncode == 0
            video = [f for f in map(json.loads, (line for line in lines.splitlines() if line.startswith(b"{")))
                     if f.get("track") == "video"]
            assert video, "the subscriber got no video"
            assert max(f["dts"] for f in video) >= 7900, "the broadcast's last frames were lost at the relay"
        finally:
            await stop_all(procs)


@pytest.mark.parametrize("backend", ["aioquic", "aiopquic"])
async def test_a_relay_finds_the_origin_in_the_directory_and_follows_the_publisher_to_another_ingest(
        tmp_path, redis_server, backend):
    need("ffmpeg")
    # ingest A keeps a broadcast whose publisher left (its grace): the directory, not an end, moves
    # the relay; ingest B ends it when its publisher stops, which ends the subscription
    a, rtmp_a, _ = await origin(tmp_path, "ingest-a", redis_server.url, grace=30, backend=backend)
    b, rtmp_b, _ = await origin(tmp_path, "ingest-b", redis_server.url, grace=0, backend=backend)
    pmoq = free_port(socket.SOCK_DGRAM)
    relay = await start_node("relay", "--moq", f"127.0.0.1:{pmoq}", "--state-dir", str(tmp_path / "relay"),
                             "--quic-backend", backend, "--directory", redis_server.url, "--insecure",
                             env={"RTMPQ_DIRECTORY_TTL": TTL})
    procs = [a, b, relay]
    publisher = None
    try:
        # the subscriber comes first: the relay has no --upstream, only the directory
        sub = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "rtmpq", "sub", f"moqt://127.0.0.1:{pmoq}/live/move", "--insecure", "--json",
            "--wait", "30", "--quic-backend", backend, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        procs.append(sub)
        video = []
        enough = asyncio.Event()

        async def read_frames():
            async for line in sub.stdout:
                if line.startswith(b"{"):
                    frame = json.loads(line)
                    if frame.get("track") == "video":
                        video.append(frame)
                        if len(video) >= 45:
                            enough.set()

        reading = asyncio.create_task(read_frames())
        publisher = await spawn(long_publish_args(f"rtmp://127.0.0.1:{rtmp_a}/live/move", seconds=60))
        await asyncio.wait_for(enough.wait(), 40)  # A's frames reach the subscriber through the relay
        publisher.kill()  # the encoder moves to ingest B (as after a failover of its DNS name)
        await publisher.wait()
        rc, out = await run_process(ffmpeg_publish_args(f"rtmp://127.0.0.1:{rtmp_b}/live/move", str(tmp_path / "b.flv"),
                                                        seconds=4))
        assert rc == 0, out
        await asyncio.wait_for(reading, 30)  # ends with B's broadcast (PUBLISH_DONE through the relay)
        assert await sub.wait() == 0
        # groups travel on parallel streams (newest first), so arrival order is not group order;
        # in group order, ids never repeat and the timestamps restart once: where B took over
        video.sort(key=lambda f: (f["group"], f["object"]))
        assert len({(f["group"], f["object"]) for f in video}) == len(video), "a group id was reused across the move"
        seams = [i for i in range(1, len(video)) if video[i]["dts"] < video[i - 1]["dts"]]
        assert len(seams) == 1, f"not one seam: {[(f['group'], f['dts']) for f in video][::15]}"
        from_a, from_b = video[:seams[0]], video[seams[0]:]
        # B's from the group the relay joined at (2 s groups: at least the last one of 4 s), whole
        assert len(from_a) >= 45 and len(from_b) >= 2 * 30, (len(from_a), len(from_b))
        assert from_a[0]["keyframe"] and from_b[0]["keyframe"]
        assert video[-1]["dts"] >= 3900  # B's to its end
    finally:
        if publisher is not None and publisher.returncode is None:
            publisher.kill()
        await stop_all(procs)


async def test_an_edge_with_only_a_directory_plays_across_a_move(tmp_path, redis_server):
    need("ffmpeg")
    a, rtmp_a, _ = await origin(tmp_path, "ingest-a", redis_server.url, grace=30)
    b, rtmp_b, _ = await origin(tmp_path, "ingest-b", redis_server.url, grace=0)
    phttp = free_port()
    edge = await start_node("edge", "--http", f"127.0.0.1:{phttp}", "--directory", redis_server.url, "--insecure",
                            env={"RTMPQ_DIRECTORY_TTL": TTL, "RTMPQ_UPSTREAM_WAIT": "10"})
    procs = [a, b, edge]
    publisher = None
    try:
        await wait_tcp(phttp)
        publisher = await spawn(long_publish_args(f"rtmp://127.0.0.1:{rtmp_a}/live/hop", seconds=60))
        playlist = f"http://127.0.0.1:{phttp}/live/hop/video.m3u8"
        await poll(f"http://127.0.0.1:{phttp}/live/hop/index.m3u8", lambda body: b"#EXT-X-STREAM-INF" in body)
        player = asyncio.create_task(run_process(
            ["ffmpeg", "-v", "error", "-nostdin", "-i", playlist, "-f", "framemd5", str(tmp_path / "played.md5")],
            timeout=60))
        await poll(playlist, lambda body: body.count(b"#EXTINF") >= 2)  # A's segments are out
        publisher.kill()  # the encoder moves to ingest B
        await publisher.wait()
        rc, out = await run_process(ffmpeg_publish_args(f"rtmp://127.0.0.1:{rtmp_b}/live/hop", str(tmp_path / "b.flv"),
                                                        seconds=5))
        assert rc == 0, out
        body = await poll(playlist, lambda body: b"#EXT-X-ENDLIST" in body)  # B's end is the playlist's end
        assert b"#EXT-X-DISCONTINUITY" in body  # the move is a seam in one playlist
        rc, out = await player
        assert rc == 0, out
        played = [line for line in (tmp_path / "played.md5").read_text().splitlines() if not line.startswith("#")]
        assert len(played) > 4 * 30 + 2 * 30, len(played)  # frames of both publishes, decoded
    finally:
        if publisher is not None and publisher.returncode is None:
            publisher.kill()
        await stop_all(procs)


async def test_a_directory_that_refuses_the_node_stops_it_at_start(tmp_path, redis_server):
    # a database Redis does not have: retrying cannot mend it, so the node says so and exits
    url = redis_server.url.replace("redis://", "redis://:sekrit@").rsplit("/", 1)[0] + "/99"
    rc, out = await run_process([sys.executable, "-m", "rtmpq", "relay", "--moq", f"127.0.0.1:{free_port(socket.SOCK_DGRAM)}",
                                 "--state-dir", str(tmp_path / "s"), "--directory", url])
    assert rc == 1
    assert f"directory redis://:********@127.0.0.1:{redis_server.port}/99" in out and "sekrit" not in out, out


async def test_a_node_started_before_redis_is_not_ready_until_redis_answers_then_registers(tmp_path):
    """A pod or compose service started before Redis: the node starts (it used to exit 1, and was
    restarted with growing back-off), says once that Redis does not answer, and /readyz is 503 until
    Redis answers; then what is published there is in the directory."""
    need("ffmpeg")
    redis_server = RedisServer(tmp_path)  # its port chosen, nothing listening there yet
    prtmp, phttp = free_port(), free_port()
    node = await start_node("up", "--rtmp", f"127.0.0.1:{prtmp}", "--http", f"127.0.0.1:{phttp}",
                            "--moq", f"127.0.0.1:{free_port(socket.SOCK_DGRAM)}", "--state-dir", str(tmp_path / "s"),
                            "--directory", redis_server.url, env={"RTMPQ_DIRECTORY_TTL": TTL})
    publisher = r = None
    try:
        await wait_tcp(phttp)
        status, body = await http_get(f"http://127.0.0.1:{phttp}/readyz")
        assert status == 503 and b"has not answered" in body, (status, body)
        publisher = await spawn(long_publish_args(f"rtmp://127.0.0.1:{prtmp}/live/early", seconds=60))
        await redis_server.start()
        r = redis.asyncio.from_url(redis_server.url)
        await until(lambda: entry(r, "live/early"), "the broadcast to be registered once Redis answers")
        status, _ = await http_get(f"http://127.0.0.1:{phttp}/readyz")
        assert status == 200
    finally:
        if publisher is not None and publisher.returncode is None:
            publisher.kill()
        if r is not None:
            await r.aclose()
        node.terminate()
        _, err = await node.communicate()
        await redis_server.stop()
    log = err.decode(errors="replace")
    assert node.returncode == 0 and "Traceback" not in log, log
    assert log.count("does not answer") == 1, log  # said once, not at every retry
    assert "answers again" in log, log


async def test_a_relay_that_an_ingest_publishes_into_is_the_origin_other_relays_find(tmp_path, redis_server):
    need("ffmpeg")
    r = redis.asyncio.from_url(redis_server.url)
    origin_moq, edge_moq, prtmp = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_DGRAM), free_port()
    relays = [await start_node("relay", "--moq", f"127.0.0.1:{port}", "--state-dir", str(tmp_path / label),
                               "--directory", redis_server.url, "--insecure",
                               env={"RTMPQ_DIRECTORY_TTL": TTL, "RTMPQ_DIRECTORY_NODE_ID": label})
              for label, port in (("relay-origin", origin_moq), ("relay-edge", edge_moq))]
    ingest = await start_node("ingest", "--rtmp", f"127.0.0.1:{prtmp}", "--upstream", f"moqt://127.0.0.1:{origin_moq}",
                              "--insecure", "--directory", redis_server.url)  # accepted: its relay registers
    procs = [*relays, ingest]
    publisher = None
    try:
        await wait_tcp(prtmp)
        publisher = await spawn(long_publish_args(f"rtmp://127.0.0.1:{prtmp}/live/chain", seconds=60))
        found = await until(lambda: entry(r, "live/chain"), "the relay to register what the ingest publishes")
        assert found["url"] == f"moqt://127.0.0.1:{origin_moq}" and found["node"] == "relay-origin"
        # a subscriber at the other relay, which has no --upstream: the directory leads it there
        rc, out = await run_process([sys.executable, "-m", "rtmpq", "sub", f"moqt://127.0.0.1:{edge_moq}/live/chain",
                                     "--insecure", "--json", "--frames", "60", "--wait", "20"], timeout=45)
        assert rc == 0, out
        video = [json.loads(line) for line in out.splitlines() if line.startswith('{"track": "video"')
                 or (line.startswith("{") and json.loads(line).get("track") == "video")]
        assert len(video) >= 50 and video[0]["keyframe"]
        # the relay holds the broadcast while the ingest announces it (through the ingest's grace
        # period too); the ingest stopping withdraws the namespace, and the entry goes with it
        ingest.send_signal(signal.SIGTERM)
        await until(lambda: _absent(r, "live/chain"), "the entry to be withdrawn", deadline=10)
    finally:
        if publisher is not None and publisher.returncode is None:
            publisher.kill()
        await stop_all(procs)
        await r.aclose()


def _ignored(metrics: bytes) -> float:
    """rtmpq_directory_ignored_entries_total in a /metrics body (-1 while it is not there)."""
    for line in metrics.decode().splitlines():
        if line.startswith("rtmpq_directory_ignored_entries_total "):
            return float(line.split()[1])
    return -1


@pytest.mark.parametrize("kind", ["relay", "edge"])
async def test_a_node_past_its_directory_max_entries_counts_what_it_ignores_in_metrics(tmp_path, redis_server, kind):
    """[directory] max_entries 1 and two broadcasts in the directory: a node following it ignores
    one, and an operator sees that in /metrics (the log says it only once per fill-up)."""
    from rtmpq.directory.redis_directory import RedisDirectory

    origin = RedisDirectory(redis_server.url, node="origin", ttl=5)
    await origin.start()
    phttp = free_port()
    moq = ["--moq", f"127.0.0.1:{free_port(socket.SOCK_DGRAM)}", "--state-dir", str(tmp_path / "s")] \
        if kind == "relay" else []
    node = await start_node(kind, *moq, "--http", f"127.0.0.1:{phttp}", "--directory", redis_server.url, "--insecure",
                            env={"RTMPQ_DIRECTORY_TTL": TTL, "RTMPQ_DIRECTORY_MAX_ENTRIES": "1"})
    try:
        # (nothing listens at the origin's URL: a relay's link there retries, not tested here)
        origin.register(lambda: {"live/a", "live/b"}, f"moqt://127.0.0.1:{free_port(socket.SOCK_DGRAM)}")
        await wait_tcp(phttp)
        await poll(f"http://127.0.0.1:{phttp}/metrics", lambda body: _ignored(body) >= 1, deadline=15)
    finally:
        await stop_all([node])
        await origin.close()
