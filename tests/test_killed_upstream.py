"""An upstream node killed outright (SIGKILL: a crash, an OOM kill, a container restart).

A killed process sends no CONNECTION_CLOSE: the nodes below it learned of the loss only at QUIC's
idle timeout (10 s), and their viewers stalled that long before anything was tried. On a host or
a LAN the dead process's UDP port answers with ICMP port unreachable, which says so within a
packet's round trip. Here an origin (`rtmpq up`) is SIGKILLed under a relay chained to it
(`rtmpq relay --upstream`) and a subscriber (`rtmpq sub`) reading it directly: both must notice
well before the idle timeout, and when the origin comes back (after some seconds down) both get
media again within seconds: the attempts at the dead origin end at its port's refusal, and the next
comes soon."""

import asyncio
import errno
import json
import logging
import re
import socket
import time

import pytest

from rtmpq.moq.reachability import PEER_UNREACHABLE_GRACE, REFUSED_RECONNECT_MAX, SILENCE_PROBE_INTERVAL
from rtmpq.moq.transport import CONNECT_TIMEOUT, connect_moq
from rtmpq.netem import ImpairmentProxy

from .conftest import free_port, http_get, need, relay_node, serving_relay, start_up_node, until, wait_tcp
from .test_lifecycle import long_publish_args, spawn
from .test_restart import start_node

# Seconds within which a killed upstream must be noticed (the idle timeout is 10 s); a loaded CI
# machine gets room, the figure measured is printed.
NOTICE_BOUND = 5.0
# Seconds the killed origin stays down after the relay noticed, before it is restarted (a
# container's restart, say). When each attempt at the dead origin waited CONNECT_TIMEOUT (5 s) and
# the backoff grew between them, a 21 s outage ended while the relay was 4 s into a pause between
# two attempts. Now each refused attempt takes 1 to 1.6 s: in 10 s the relay's backoff (0.5, 1, 2,
# then 4 s) reaches [upstream] refused_reconnect_max (2 s), and the log shows the pause it capped.
OUTAGE = 10.0
# Seconds from the restarted origin taking the publish to media again below it (measured: 1.2 to
# 1.7 s; 3.6 to 4.6 s before): a pause of at most [upstream] refused_reconnect_max (2 s) plus an attempt
# that the port refused as it opened; a loaded CI machine gets room, the figures are printed.
BACK_BOUND = 4.0
# Seconds within which an attempt to connect to a closed port gives up (CONNECT_TIMEOUT is 5 s).
REFUSED_BOUND = 3.0


class LogWatch:
    """Reads a node's stderr as it comes, each line with the time it arrived."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.lines: list[tuple[float, str]] = []
        self.task = asyncio.ensure_future(self._read(proc.stderr))

    async def _read(self, stream) -> None:
        while line := await stream.readline():
            self.lines.append((time.monotonic(), line.decode(errors="replace")))

    def first(self, text: str, since: float) -> float | None:
        return next((t for t, line in self.lines if t >= since and text in line), None)

    def text(self) -> str:
        return "".join(line for _, line in self.lines)


class VideoWatch:
    """Counts the video objects ``rtmpq sub --json`` prints, with when the last came."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.times: list[float] = []
        self.task = asyncio.ensure_future(self._read(proc.stdout))

    async def _read(self, stream) -> None:
        while line := await stream.readline():
            if line.startswith(b"{") and json.loads(line).get("track") == "video":
                self.times.append(time.monotonic())

    def since(self, t: float) -> int:
        return sum(1 for x in self.times if x >= t)

    def first(self, since: float) -> float | None:
        return next((x for x in self.times if x >= since), None)


async def readyz(port: int) -> int:
    status, _ = await http_get(f"http://127.0.0.1:{port}/readyz")
    return status


@pytest.mark.parametrize("backend", ["aioquic", "aiopquic"])
async def test_a_killed_upstream_is_noticed_at_once_and_its_return_brings_media_back(tmp_path, backend):
    need("ffmpeg")
    prtmp, pmoq = free_port(), free_port(socket.SOCK_DGRAM)
    prelay, phttp = free_port(socket.SOCK_DGRAM), free_port()
    # (its HTTP listener on a port of its own: the default, 8080, is the other backend's run's too)
    origin_args = ["up", "--rtmp", f"127.0.0.1:{prtmp}", "--moq", f"127.0.0.1:{pmoq}", "--quic-backend", backend,
                   "--http", f"127.0.0.1:{free_port()}", "--state-dir", str(tmp_path / "origin")]
    origin = await start_node(*origin_args)
    relay = await start_node("relay", "--moq", f"127.0.0.1:{prelay}", "--upstream", f"moqt://127.0.0.1:{pmoq}",
                             "--insecure", "--quic-backend", backend, "--state-dir", str(tmp_path / "relay"),
                             "--http", f"127.0.0.1:{phttp}")
    sub_args = ["sub", "--insecure", "--json", "--quic-backend", backend, "--wait", "30", "--seconds", "60"]
    below = await start_node(*sub_args, f"moqt://127.0.0.1:{prelay}/live/k")  # through the relay
    direct = await start_node(*sub_args, f"moqt://127.0.0.1:{pmoq}/live/k")  # straight from the origin
    procs = [origin, relay, below, direct]
    publishers = []
    watches = [LogWatch(origin), relay_log := LogWatch(relay), direct_log := LogWatch(direct), LogWatch(below)]
    video_below, video_direct = VideoWatch(below), VideoWatch(direct)
    try:
        await wait_tcp(prtmp)
        await wait_tcp(phttp)
        publishers.append(await spawn(long_publish_args(f"rtmp://127.0.0.1:{prtmp}/live/k")))
        await until(lambda: video_below.since(0) > 30 and video_direct.since(0) > 30, 30, "media at both subscribers")
        assert await readyz(phttp) == 200

        origin.kill()  # SIGKILL: no CONNECTION_CLOSE, no GOAWAY
        killed = time.monotonic()
        await origin.wait()
        publishers[0].kill()  # (its RTMP connection died with the origin)
        not_ready = []

        async def relay_noticed() -> None:
            while await readyz(phttp) == 200:
                await asyncio.sleep(0.02)
            not_ready.append(time.monotonic())

        await asyncio.wait_for(relay_noticed(), 20)
        await until(lambda: direct_log.first("lost", killed), 20, "the direct subscriber logs the loss")
        relay_took = not_ready[0] - killed
        direct_took = direct_log.first("lost", killed) - killed
        print(f"\n{backend}: killed upstream noticed by the relay in {relay_took:.2f} s, "
              f"by rtmpq sub in {direct_took:.2f} s")
        assert relay_took < NOTICE_BOUND, relay_log.text()
        assert direct_took < NOTICE_BOUND, direct_log.text()
        # the operator reads why: the upstream's port refused, and the relay reconnects
        assert relay_log.first("peer unreachable", killed) and relay_log.first("session ended; reconnecting", killed), \
            relay_log.text()

        # the origin stays down a while (a restart that takes some seconds: a container's, a service
        # manager's), the nodes below trying it again and again meanwhile; this is the scenario, not
        # a wait for something to happen
        await asyncio.sleep(max(not_ready[0] + OUTAGE - time.monotonic(), 0))
        # the origin comes back (restarted on the same port) and is published to again
        origin = await start_node(*origin_args)
        procs.append(origin)
        watches.append(origin_log := LogWatch(origin))
        back = time.monotonic()
        await wait_tcp(prtmp)
        publishers.append(await spawn(long_publish_args(f"rtmp://127.0.0.1:{prtmp}/live/k")))
        await until(lambda: video_below.since(back) > 30, 40, "media again through the relay")
        await until(lambda: video_direct.since(back) > 30, 40, "media again at the direct subscriber")
        published = origin_log.first("publishing", back)
        below_took, direct_took = video_below.first(back) - published, video_direct.first(back) - published
        print(f"{backend}: upstream restarted, publish taken {published - back:.2f} s later; media again "
              f"{below_took:.2f} s after that through the relay, {direct_took:.2f} s at rtmpq sub")
        # the attempts at the dead origin ended at its port's refusal (not at the connect timeout),
        # and were tried again soon
        assert relay_log.first("refused", killed) and direct_log.first("refused", killed), relay_log.text()
        # ... and the relay's pauses after them stayed within [upstream] refused_reconnect_max
        pauses = [float(m[1]) for m in re.finditer(r"refused.*; retrying in ([0-9.]+) s", relay_log.text())]
        assert len(pauses) >= 3 and max(pauses) <= REFUSED_RECONNECT_MAX, relay_log.text()
        assert below_took < BACK_BOUND, relay_log.text()
        assert direct_took < BACK_BOUND, direct_log.text()
        assert await readyz(phttp) == 200
    finally:
        for p in publishers:
            if p.returncode is None:
                p.kill()
        for p in procs:
            if p.returncode is None:
                p.terminate()
        for p in procs:
            await p.wait()
        for w in (*watches, video_below, video_direct):
            w.task.cancel()
    for w in watches:
        assert "Traceback" not in w.text(), w.text()


@pytest.mark.parametrize("backend", ["aioquic", "aiopquic"])
async def test_an_attempt_at_a_closed_port_gives_up_at_its_refusal(backend):
    """An upstream restarting (its port closed a while): each attempt to connect ends when the port
    refuses, not at the connect timeout, so the reconnect loop's backoff decides the next."""
    port = free_port(socket.SOCK_DGRAM)  # (nothing listens there)
    started = time.monotonic()
    with pytest.raises(ConnectionRefusedError, match="refused"):
        async with connect_moq("127.0.0.1", port, insecure=True, backend=backend):
            pass
    took = time.monotonic() - started
    print(f"\n{backend}: an attempt at a closed port gave up in {took:.2f} s")
    assert took < REFUSED_BOUND < CONNECT_TIMEOUT


@pytest.mark.parametrize("backend", ["aioquic", "aiopquic"])
async def test_the_pause_after_a_refused_attempt_is_the_setting(tmp_path, backend, caplog):
    """[upstream] refused_reconnect_max (0.2 s here; 2 s by default): a relay node whose upstream's
    port refuses tries again after at most that long, where its backoff would pause 0.5 s, then
    1 s (the log says so for each attempt)."""
    caplog.set_level(logging.WARNING, logger="rtmpq.nodes")
    upstream = free_port(socket.SOCK_DGRAM)  # (nothing listens there)
    retries = re.compile(rf"upstream 127\.0\.0\.1:{upstream}: .*refused.*; retrying in ([0-9.]+) s")

    def pauses() -> list[float]:
        return [float(m.group(1)) for r in caplog.records if (m := retries.search(r.getMessage()))]

    async with relay_node(tmp_path, backend, {"RTMPQ_UPSTREAM_URL": f"moqt://127.0.0.1:{upstream}",
                                              "RTMPQ_UPSTREAM_INSECURE": "true",
                                              "RTMPQ_UPSTREAM_REFUSED_RECONNECT_MAX": "0.2"}):
        await until(lambda: len(pauses()) >= 2, 10, "two refused attempts")
    assert pauses()[:2] == [0.2, 0.2], caplog.text


@pytest.mark.parametrize("backend", ["aioquic", "aiopquic"])
async def test_a_stray_icmp_refusal_leaves_a_healthy_session_open(tmp_path, backend):
    """One ECONNREFUSED for a live peer (stray, forged, or from a middlebox for another flow): the
    peer answers the probe that follows, and the session goes on."""
    async with serving_relay(tmp_path, backend) as (_relay, port):
        async with connect_moq("127.0.0.1", port, insecure=True, backend=backend) as conn:
            refused_at = time.monotonic()
            conn.peer_refused(ConnectionRefusedError(errno.ECONNREFUSED, "stray"))
            received = conn._received_count()
            # past the grace and two checks, with something received from the peer since
            await until(lambda: time.monotonic() > refused_at + PEER_UNREACHABLE_GRACE + 3 * SILENCE_PROBE_INTERVAL
                        and conn._received_count() > received, 15, "the peer's next packet")
            assert not conn.session.closed


@pytest.mark.parametrize("backend", ["aioquic", "aiopquic"])
async def test_the_idle_timeout_setting_closes_a_silent_peer_in_time(tmp_path, backend):
    """[moq] idle_timeout: a node's sessions with a peer gone silent (no ICMP: a path gone dark)
    end that long after the last packet, however long the peer itself would wait."""
    node = await start_up_node(tmp_path, backend, idle_timeout=2.0)
    try:
        async with ImpairmentProxy(target=node.moq_address) as proxy:
            async with connect_moq("127.0.0.1", proxy.port, insecure=True, backend=backend, idle_timeout=60.0):
                await until(lambda: len(node.moq.connections) == 1, 5, "the session at the node")
                proxy.blackhole(600)
                dark = time.monotonic()
                await until(lambda: not node.moq.connections, 10, "the node to close the silent session")
                took = time.monotonic() - dark
                assert 1.0 < took < 2.0 + 2.5, took
    finally:
        await node.close()
