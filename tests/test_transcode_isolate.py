"""`rtmpq up --ladder` with [transcode] isolate: the ladder runs in a child process per broadcast,
so a crash there (a decoder's SIGSEGV, an OOM kill) costs only that broadcast's rungs, and they
come back."""

import asyncio
import hashlib
import logging
import os
import re
import signal
import sys
import time

import pytest

from rtmpq.auth.tokens import mint_token
from rtmpq.config import AuthConfig, Config, TranscodeConfig, load_config
from rtmpq.moq.client import SkippedGroup, subscribe_broadcast
from rtmpq.moq.transport import connect_moq
from rtmpq.nodes import transcode_child
from rtmpq.nodes.transcode_child import TranscoderChild
from rtmpq.redact import safe_name

from .conftest import free_port, http_get, need, start_up_node, until
from .publishers import ffmpeg_clip_args, ffmpeg_publish_args, ffmpeg_replay_args, run_process, run_process_apart
from .test_codecs_e2e import http_text
from .test_llhls import first_tfdt

SECRET = "a-test-secret-of-at-least-32-bytes!!"
# Pictures of the rung a player decodes from the old child's newest whole segment on, through
# the child's restart: more than the two 2 s GoPs (30 fps) of the old child it may start with (the
# one before the cut and the cut one), so at least 30 of them are the new child's, however long
# the restart took (the held last picture of the cut group is no picture decoded).
PLAYED_PICTURES = 150
CHILD_STARTED = re.compile(r"transcoder: child process pid (\d+), ladder")
CHILD_PID = re.compile(r'^rtmpq_transcoder_child_pid\{broadcast="([^"]+)"\} (\S+)$', re.M)
SEGMENT_MSN = re.compile(r"seg(\d+)\.m4s$")
OPENED = re.compile(r"Opening '[^']*seg(\d+)\.m4s' for reading")  # ffmpeg -v verbose, a segment it reads
PLAYER_TIMEOUT = 60  # seconds


class ChildPids(logging.Handler):
    """The PIDs `up` logs for each transcoder child it starts, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.pids: list[int] = []

    def emit(self, record) -> None:
        m = CHILD_STARTED.match(record.getMessage())
        if m:
            self.pids.append(int(m.group(1)))

    async def wait(self, count: int, deadline: float) -> int:
        async with asyncio.timeout(deadline):
            while len(self.pids) < count:
                await asyncio.sleep(0.05)
        return self.pids[count - 1]


async def rung_frames_encoded(base: str, name: str, rung: str) -> float | None:
    """`up`'s /metrics reading of rtmpq_transcode_frames_encoded_total for one rung, or None."""
    _, metrics = await http_text(f"{base}/metrics")
    m = re.search(rf'^rtmpq_transcode_frames_encoded_total{{broadcast="{name}",rendition="{rung}"}} (\S+)$',
                  metrics, re.M)
    return None if m is None else float(m.group(1))


async def frames_encoded_grow(base: str, name: str, rung: str) -> None:
    """Until `up`'s /metrics shows the rung's frames encoded (the child's series) growing."""
    first = None
    while True:
        n = await rung_frames_encoded(base, name, rung)
        if n is not None and first is not None and n > first:
            return
        first = first if first is not None else n
        await asyncio.sleep(0.2)


async def child_pids(ops: str) -> dict[str, int]:
    """`up`'s /metrics reading of its running transcoder children: broadcast name -> PID."""
    _, metrics = await http_text(f"{ops}/metrics")
    return {name: int(float(pid)) for name, pid in CHILD_PID.findall(metrics)}


def segments(playlist: str) -> list[str]:
    return re.findall(r"^(?!#)(\S+)$", playlist, re.M)


def msn(uri: str) -> int:
    """A segment's media sequence number, from its URI."""
    return int(SEGMENT_MSN.search(uri).group(1))


async def play(url: str, pictures: int) -> tuple[int, str, str]:
    """ffmpeg decoding ``pictures`` pictures of the live playlist ``url`` from its newest whole
    segment (a player at the live edge): its exit status, its framecrc lines, and its log
    (verbose: the segments it opened, OPENED)."""
    return await run_process_apart(["ffmpeg", "-hide_banner", "-nostdin", "-nostats", "-v", "verbose",
                                    "-live_start_index", "-1", "-i", url, "-frames:v", str(pictures),
                                    "-f", "framecrc", "-"], timeout=PLAYER_TIMEOUT)


async def poll_playlist(url: str, seen: list[str], until, timeline: list | None = None) -> str:
    """GET ``url`` until ``until(playlist)``, adding each new segment to ``seen``; 404/503 is asked
    again. No playlist lists a segment or a part of no duration (players stall or skip on one).
    With ``timeline``, each new segment's (first decode time, after a discontinuity) is added."""
    while True:
        try:
            status, body = await http_text(url)
        except OSError:
            status, body = 0, ""
        if status == 200:
            assert not re.search(r"^#EXTINF:0\.000,|DURATION=0\.000,", body, re.M), body  # no empty segment or part
            if timeline is not None:
                await add_to_timeline(url.rsplit("/", 1)[0], body, seen, timeline)
            seen.extend(s for s in segments(body) if s not in seen)
            if until(body):
                return body
        await asyncio.sleep(0.2)


async def add_to_timeline(base: str, playlist: str, seen: list[str], timeline: list) -> None:
    discontinuity = False
    for line in playlist.splitlines():
        if line == "#EXT-X-DISCONTINUITY":
            discontinuity = True
        elif not line.startswith("#"):
            if line not in seen:
                status, data = await http_get(f"{base}/{line}")
                assert status == 200, (line, status)
                timeline.append((first_tfdt(data), discontinuity))
            discontinuity = False


def missing(frames) -> list:
    """Where a track's objects, put in (group, object) order, skip or repeat one: consecutive
    pairs that are not the next object or the next group's first. (Each group on its own QUIC
    stream, a group's tail may arrive after the next group's first objects on a loaded machine:
    subscribe_broadcast hands frames on as they come, its consumer orders them.)"""
    ordered = sorted(frames, key=lambda f: (f.group, f.index))
    return [(a, b) for a, b in zip(ordered, ordered[1:])
            if (b.group, b.index) not in ((a.group, a.index + 1), (a.group + 1, 0))]


def going_back(timeline: list) -> list:
    """Segments whose first decode time is not after the one before, with no discontinuity between."""
    return [(a, b) for a, b in zip(timeline, timeline[1:]) if b[0] <= a[0] and not b[1]]


# grace 0: the relay ends the rung tracks with the child's session, and the new child's are new
# tracks; grace 10: the relay keeps them, and the new child's groups go on in them. With [auth]
# secret the child presents a node token it mints from the secret up hands it.
@pytest.mark.parametrize("backend, sig, grace, secret", [
    pytest.param("aioquic", signal.SIGSEGV, 0.0, SECRET, id="aioquic-SIGSEGV-auth"),
    pytest.param("aiopquic", signal.SIGKILL, 10.0, "", id="aiopquic-SIGKILL-grace")])
async def test_a_transcoder_child_that_dies_costs_only_the_rungs_and_they_come_back(tmp_path, caplog, backend, sig,
                                                                                     grace, secret):
    """`up --ladder 180p`, isolated: the child is killed (SIGSEGV as a decoder crash would, or
    SIGKILL as the OOM killer does) during a publish. The source's MoQ subscriber and its HLS
    playlist go on without a gap, the publish goes on, `up` logs the death and starts a new
    child, and the rung's playlist (asked for by a player all along) gets new segments again.
    `up`'s /metrics has the child's rtmpq_transcode_* series of the watched rung, before and
    after the restart."""
    need("ffmpeg")
    pids = ChildPids()
    caplog.set_level(logging.INFO, "rtmpq.transcode")
    logging.getLogger("rtmpq.transcode").addHandler(pids)
    node = await start_up_node(tmp_path, backend, grace_period=grace, auth=AuthConfig(secret=secret),
                               transcode=TranscodeConfig(ladder="180p", isolate=True, restart_min=0.2,
                                                         rung_queue_frames=120))
    name = "live/iso"
    ops = f"http://127.0.0.1:{node.edge.address[1]}"
    base = f"{ops}/{name}"
    frames, skipped = [], []

    async def subscribe() -> None:
        host, port = node.moq_address
        async with connect_moq(host, port, insecure=True, backend=backend) as conn:
            async for item in subscribe_broadcast(conn, name, tracks=["video"], wait=20, delivery_timeout_ms=15000):
                if isinstance(item, SkippedGroup):
                    skipped.append(item)
                elif getattr(item, "track", None) == "video":
                    frames.append(item)

    publisher = asyncio.create_task(run_process(ffmpeg_publish_args(
        f"rtmp://127.0.0.1:{node.rtmp.address[1]}/{name}" + (
            f"?token={mint_token(secret, name, 'publish', 60, now=time.time())}" if secret else ""),
        str(tmp_path / "ref.flv"), seconds=30), timeout=60))
    subscriber = asyncio.create_task(subscribe())
    player = None
    try:
        first = await pids.wait(1, 20)
        source_seen, rung_seen, rung_timeline = [], [], []
        # a player of the rung: its playlist is asked for (so the rung is made) until it has segments
        async with asyncio.timeout(30):
            await poll_playlist(f"{base}/video-180p.m3u8", rung_seen, lambda p: len(segments(p)) >= 1, rung_timeline)
            await poll_playlist(f"{base}/video.m3u8", source_seen, lambda p: len(segments(p)) >= 1)
            await frames_encoded_grow(ops, name, "video-180p")
        frames_before = len(frames)
        os.kill(first, sig)
        # the rung's segments as the old child left them (none of the new child's can be whole yet)
        await poll_playlist(f"{base}/video-180p.m3u8", rung_seen, lambda p: True, rung_timeline)
        rung_before_restart = list(rung_seen)
        second = await pids.wait(2, 20)
        assert second != first
        # a player of the rung from here, at its live edge: its newest whole segment is the old
        # child's (the group cut by the death stays open until the new child's first group), so
        # it decodes the old child's pictures, then on through the restart the new child's. (A
        # player started before the kill, from the first of the listed segments as ffmpeg does by
        # default, for a fixed span of media, could reach its end before the new child's first
        # picture on a loaded machine.)
        player = asyncio.create_task(play(f"{base}/video-180p.m3u8", PLAYED_PICTURES))
        async with asyncio.timeout(30):  # the rung's playlist, asked for all along, gets new segments
            await poll_playlist(f"{base}/video-180p.m3u8", rung_seen,
                                lambda p: len(set(segments(p)) - set(rung_before_restart)) >= 2, rung_timeline)
        # the group the new child began again is not listed over the rung's delivered time
        assert not going_back(rung_timeline), rung_timeline
        async with asyncio.timeout(10):  # the new child's series, in up's /metrics again
            await frames_encoded_grow(ops, name, "video-180p")
        rc, out, err = await player
        assert rc == 0, err[-2000:]
        # it read the old child's media, then the new child's (past the group the death cut)
        opened = [int(n) for n in OPENED.findall(err)]
        last_before = max(msn(s) for s in rung_before_restart)
        assert opened and opened[0] <= last_before + 1 and opened[-1] >= last_before + 2, (last_before, opened)
        played = [int(line.split(",")[1]) for line in out.splitlines() if line.startswith("0,")]  # dts, 1/30 s
        # every picture (the playlist did not end, nor fail it), on through the cut group, whose
        # last picture is shown until the new child's first
        assert len(played) == PLAYED_PICTURES, out[-2000:]
        # the source went on meanwhile: new HLS segments, no gap marked, and every MoQ object (none
        # missing, none twice)
        source = await poll_playlist(f"{base}/video.m3u8", source_seen, lambda p: True)
        assert "#EXT-X-GAP" not in source and "#EXT-X-DISCONTINUITY" not in source, source
        assert len(frames) > frames_before and not skipped and not missing(frames), missing(frames)
        assert publisher.done() is False, "the publish ended"
        status, metrics = await http_text(f"{ops}/metrics")
        assert f'rtmpq_transcoder_child_pid{{broadcast="{name}"}} {float(second)}' in metrics, metrics  # serves on
        assert "rtmpq_transcoder_child_deaths_total 1.0" in metrics
    finally:
        logging.getLogger("rtmpq.transcode").removeHandler(pids)
        tasks = [t for t in (subscriber, publisher, player) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        child = node.transcoder_children.children[name].process
        await node.close()
    if child is not None:  # the node's stop stopped its child
        assert child.returncode is not None


@pytest.mark.parametrize("backend", ["aioquic", "aiopquic"])
async def test_a_crash_in_one_broadcasts_transcoder_leaves_the_others_rungs_alone(tmp_path, caplog, backend):
    """`up --ladder 180p` with two publishes, a MoQ subscriber of each one's rung: the transcoder
    child of live/a dies of SIGSEGV (a decoder crash). live/b's rung goes on without a gap (no
    object missing, no skipped group) from its own child, which is not restarted; live/a's child
    is started again and its rung gets new groups. /metrics gives each broadcast's child PID; the
    log line of the death names the broadcast (as logs name it: hashed on this open node)."""
    need("ffmpeg")
    caplog.set_level(logging.INFO, "rtmpq.transcode")
    clip = str(tmp_path / "clip.flv")
    rc, out = await run_process(ffmpeg_clip_args(clip, seconds=2), timeout=60)
    assert rc == 0, out
    node = await start_up_node(tmp_path, backend, grace_period=10.0,
                               transcode=TranscodeConfig(ladder="180p", isolate=True, restart_min=0.2,
                                                         rung_queue_frames=120))
    ops = f"http://127.0.0.1:{node.edge.address[1]}"
    names = ("live/a", "live/b")
    rung, skipped = {n: [] for n in names}, {n: [] for n in names}

    async def subscribe(name: str) -> None:
        host, port = node.moq_address
        async with connect_moq(host, port, insecure=True, backend=backend) as conn:
            async for item in subscribe_broadcast(conn, name, tracks=["video-180p"], wait=20,
                                                  delivery_timeout_ms=15000):
                if isinstance(item, SkippedGroup):
                    skipped[name].append(item)
                elif getattr(item, "track", None) == "video-180p":
                    rung[name].append(item)

    async def until(condition, seconds: float = 30) -> None:
        async with asyncio.timeout(seconds):
            while not await condition():
                await asyncio.sleep(0.05)

    async def both_children_and_rungs():
        return rung["live/a"] and rung["live/b"] and len(await child_pids(ops)) == 2

    tasks = [asyncio.create_task(subscribe(n)) for n in names] + [asyncio.create_task(run_process(
        ffmpeg_replay_args(f"rtmp://127.0.0.1:{node.rtmp.address[1]}/{n}", clip, seconds=30), timeout=60))
        for n in names]
    try:
        await until(both_children_and_rungs)
        before = await child_pids(ops)
        a_group = rung["live/a"][-1].group
        os.kill(before["live/a"], signal.SIGSEGV)

        async def a_restarted():
            return (await child_pids(ops)).get("live/a") not in (None, before["live/a"])

        await until(a_restarted)
        a_seen, b_seen = len(rung["live/a"]), len(rung["live/b"])

        async def a_back_and_b_on():  # new groups of a's rung, and a new group of b's since a's restart
            return any(f.group > a_group for f in rung["live/a"][a_seen:]) and \
                any(f.group > rung["live/b"][b_seen - 1].group for f in rung["live/b"][b_seen:])

        await until(a_back_and_b_on)
        after = await child_pids(ops)
        assert after["live/b"] == before["live/b"], (before, after)  # b's child was left alone
        death = f"child process pid {before['live/a']} of {safe_name('live/a')} was killed by SIGSEGV"
        assert any(death in r.getMessage() for r in caplog.records), caplog.text
        assert not skipped["live/b"] and not missing(rung["live/b"]), (skipped["live/b"], missing(rung["live/b"]))
        _, metrics = await http_text(f"{ops}/metrics")
        assert "rtmpq_transcoder_child_deaths_total 1.0" in metrics
        for name in names:  # each child's series, one family for both
            assert re.search(rf'^rtmpq_transcode_frames_encoded_total{{broadcast="{name}",rendition="video-180p"}} ',
                             metrics, re.M), metrics
        assert metrics.count("# TYPE rtmpq_transcode_frames_encoded_total counter") == 1, metrics
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await node.close()


async def test_a_broadcasts_transcoder_child_stops_when_the_broadcast_is_gone(tmp_path, monkeypatch):
    """A publish with no grace period: its transcoder child starts with it and, once it ended,
    stops (SIGTERM, after CHILD_LINGER, shortened here) and leaves /metrics; no death counted."""
    need("ffmpeg")
    monkeypatch.setattr(transcode_child, "CHILD_LINGER", 0.3)
    clip = str(tmp_path / "clip.flv")
    rc, out = await run_process(ffmpeg_clip_args(clip, seconds=2), timeout=60)
    assert rc == 0, out
    node = await start_up_node(tmp_path, "aioquic", grace_period=0.0,
                               transcode=TranscodeConfig(ladder="180p", isolate=True))
    ops = f"http://127.0.0.1:{node.edge.address[1]}"
    publisher = asyncio.create_task(run_process(
        ffmpeg_replay_args(f"rtmp://127.0.0.1:{node.rtmp.address[1]}/live/gone", clip, seconds=2), timeout=60))
    try:
        async with asyncio.timeout(20):
            while not (pids := await child_pids(ops)):
                await asyncio.sleep(0.05)
        assert list(pids) == ["live/gone"]
        rc, out = await publisher
        assert rc == 0, out
        async with asyncio.timeout(20):
            while await child_pids(ops) or os.path.exists(f"/proc/{pids['live/gone']}"):
                await asyncio.sleep(0.05)
        _, metrics = await http_text(f"{ops}/metrics")
        assert "rtmpq_transcoder_child_deaths_total 0.0" in metrics
    finally:
        publisher.cancel()
        await asyncio.gather(publisher, return_exceptions=True)
        await node.close()


@pytest.mark.parametrize("keys", [False, True], ids=["open", "keys"])
async def test_up_stops_its_transcoder_child_when_terminated(tmp_path, keys):
    """`rtmpq up --ladder 180p` (isolated by default) started as a process, a publish started (its
    transcoder child starts), and up SIGTERMed: the child is gone too, no orphan. The child's log
    lines, on up's stderr, say they are the transcoder child's, and name the broadcast as up's do:
    hashed on an open node, by its public name where keys are mapped (they named it hashed)."""
    need("ffmpeg")
    rtmp = free_port()
    env = {**os.environ, "RTMPQ_PUBLISH_KEYS": "sk-stop=stop"} if keys else None
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rtmpq", "up", "--ladder", "180p", "--rtmp", f"127.0.0.1:{rtmp}",
        "--moq", "127.0.0.1:0", "--http", f"127.0.0.1:{free_port()}", "--state-dir", str(tmp_path / "s"),
        "--quic-backend", "aioquic", stderr=asyncio.subprocess.PIPE, env=env)
    child = publisher = None
    try:
        async with asyncio.timeout(20):
            while "certificate sha256" not in (line := (await proc.stderr.readline()).decode()):
                assert line, "up exited"
        publisher = asyncio.create_task(run_process(ffmpeg_publish_args(
            f"rtmp://127.0.0.1:{rtmp}/live/{'sk-stop' if keys else 'stop'}", str(tmp_path / "ref.flv"), seconds=20),
            timeout=60))
        async with asyncio.timeout(20):
            while child is None:
                line = (await proc.stderr.readline()).decode()
                assert line, "up exited"
                m = CHILD_STARTED.search(line)
                child = int(m.group(1)) if m else None
        assert os.path.exists(f"/proc/{child}")
        async with asyncio.timeout(20):  # the child's first line of its own, on up's stderr
            while "following live/" not in (line := (await proc.stderr.readline()).decode()):
                assert line, "up exited"
        assert f"INFO [transcoder child {child}] rtmpq.transcode: transcoder: ladder 180p" in line, line
        hashed = "live/#" + hashlib.sha256(b"stop").hexdigest()[:8]  # (safe_name's, whatever this process set)
        assert f"following {'live/stop' if keys else hashed} at" in line, line
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode == 0 and b"Traceback" not in err, err.decode()[-2000:]
        # the child's lines (on up's stderr) say they are the child's; up's own do not
        lines = err.decode().splitlines()
        assert any(f"INFO [transcoder child {child}] rtmpq.nodes: SIGTERM: stopping" in line for line in lines), lines
        assert any(re.search(r"INFO rtmpq\.nodes: SIGTERM: stopping", line) for line in lines), lines
        async with asyncio.timeout(5):  # reaped by up, so gone from /proc
            while os.path.exists(f"/proc/{child}"):
                await asyncio.sleep(0.05)
    finally:
        if publisher is not None:
            publisher.cancel()
            await asyncio.gather(publisher, return_exceptions=True)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_the_child_gets_the_ladder_and_auth_settings_of_up_and_no_others(monkeypatch):
    """The child's environment holds up's [transcode] and [auth] settings as load_config reads
    them back, and none of the operator's other RTMPQ_<SECTION>_ variables (an HTTP listener of
    its own would take up's port)."""
    monkeypatch.setenv("RTMPQ_HTTP_PORT", "8080")
    monkeypatch.setenv("RTMPQ_PUREPYTHON", "1")  # not a setting: passed on
    config = Config(transcode=TranscodeConfig(ladder="480p,360p", bitrates={"480p": "900", "360p": "500"},
                                              presets={"360p": "fast"}, idle_stop=2.0),
                    auth=AuthConfig(secret=SECRET, node_token=(nt := mint_token(SECRET, "", "relay", 60, now=time.time()))))
    child = TranscoderChild(config, "live/x")
    env = child.environment()
    assert child.command("127.0.0.1", 4443)[-2:] == ["--broadcast", "live/x"]
    assert "RTMPQ_HTTP_PORT" not in env and env["RTMPQ_PUREPYTHON"] == "1" and env["RTMPQ_HTTP_ENABLED"] == "false"
    child = load_config(env=env)
    assert (child.transcode.ladder, child.transcode.bitrates, child.transcode.presets, child.transcode.idle_stop) == (
        "480p,360p", {"480p": "900", "360p": "500"}, {"360p": "fast"}, 2.0)
    assert (child.auth.secret, child.auth.node_token) == (SECRET, nt)


async def test_an_audio_only_publish_starts_no_transcoder_child_until_video_comes(tmp_path):
    """`rtmpq up --ladder 180p` (isolated): an ffmpeg publish of audio alone has nothing to
    transcode, and no child process is started for it while it plays; the publisher back (within
    the grace period) with video gets its child. Before, every listed broadcast got a child at
    once, audio-only ones too: a process (PyAV, a MoQ session) with nothing to do."""
    need("ffmpeg")
    from .test_nodes_cli import get_when_ready
    from .test_transcode_e2e import ffmpeg_live_args
    from .publishers import end_live_publish

    node = await start_up_node(tmp_path, "aioquic", grace_period=10.0,
                               transcode=TranscodeConfig(ladder="180p", isolate=True))
    ops = f"http://127.0.0.1:{node.edge.address[1]}"
    url = f"rtmp://127.0.0.1:{node.rtmp.address[1]}/live/sound"
    publisher = asyncio.create_task(run_process(ffmpeg_live_args(url, 20, video=False), timeout=60))
    try:
        assert b"#EXTINF" in await get_when_ready(f"{ops}/live/sound/audio.m3u8", 20)  # it plays
        assert node.transcoder_children.children == {} and await child_pids(ops) == {}
        await end_live_publish(publisher)
        publisher = asyncio.create_task(run_process(ffmpeg_live_args(url, 20), timeout=60))
        await until(lambda: child_pids(ops), 20, "a transcoder child once video comes")
        assert list(await child_pids(ops)) == ["live/sound"]
    finally:
        publisher.cancel()
        await asyncio.gather(publisher, return_exceptions=True)
        await node.close()
