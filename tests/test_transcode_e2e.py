"""The ABR ladder end to end: ffmpeg publishes 720p30 (2 s GoP) into `rtmpq up --ladder 480p,360p`;
MoQ subscribers and LL-HLS players get every rendition, made group by group from the source's."""

import asyncio
import contextlib
import json
import os
import re
import socket
import subprocess
import sys

import pytest

from rtmpq.media.catalog import Catalog
from rtmpq.moq.client import SkippedGroup, subscribe_broadcast
from rtmpq.moq.transport import connect_moq
from rtmpq.nodes.up import UpNode
from rtmpq.transcode.coder import SourceDecoder
from rtmpq.transcode.ladder import parse_ladder
from rtmpq.config import TranscodeConfig

from .conftest import free_port, local_config, made_once, need, until, wait_tcp
from .publishers import AUDIO_ENCODE, VIDEO_ENCODE, drop_publish, end_live_publish, ffmpeg_publish_args, run_process
from .test_codecs_e2e import http_text

RUNGS = {"video-480p": (854, 480), "video-360p": (640, 360)}


@pytest.fixture
async def node(tmp_path):
    # a deep rung queue: CI hosts are shared, and a rung that falls behind skips groups (by design)
    # the broadcast outlives its publisher by 3 s: the rungs' last frames (queued on a busy host)
    # still reach the subscribers
    # the ladder on threads of this process (node.transcoder): [transcode] isolate = false
    n = UpNode(local_config(tmp_path, grace_period=3.0, transcode=TranscodeConfig(ladder="480p,360p", idle_stop=1.0,
                                                                isolate=False,
                                                                rung_queue_frames=120)))
    await n.start()
    yield n
    await n.close()


async def subscribe(node, name: str, track: str, out: dict) -> None:
    host, port = node.moq_address
    async with connect_moq(host, port, insecure=True, backend=node.moq_config.backend) as conn:
        # a generous latency budget: this test is about completeness, on a shared CI host
        async for item in subscribe_broadcast(conn, name, tracks=[track], wait=20, delivery_timeout_ms=15000):
            if isinstance(item, Catalog):
                out.setdefault("catalog", []).append(item)
            elif isinstance(item, SkippedGroup):
                out.setdefault("skipped", []).append(item)
            else:
                out.setdefault(item.track, []).append(item)


async def stop_nodes(procs, publisher=None) -> None:
    """Terminate node processes and check that none of them died of an exception; ``publisher``
    (an ffmpeg still publishing, if any) is killed first."""
    if publisher is not None and publisher.returncode is None:
        publisher.kill()
        await publisher.wait()
    for p in procs:
        if p.returncode is None:
            p.terminate()
    for p in procs:
        _, err = await p.communicate()
        assert b"Traceback" not in err, err.decode()[-3000:]


class JsonSubscriber:
    """`rtmpq sub --json` as a process, its objects read as it prints them (``lines``), for a test
    that ends it once it has what it checks instead of waiting for the broadcast's end."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[dict] = []
        self.raw: list[str] = []
        self.reader = asyncio.ensure_future(self._read())

    @classmethod
    async def start(cls, url: str, *args: str) -> "JsonSubscriber":
        return cls(await asyncio.create_subprocess_exec(
            sys.executable, "-m", "rtmpq", "sub", url, "--insecure", "--json", *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT))

    async def _read(self) -> None:
        while line := (await self.proc.stdout.readline()).decode(errors="replace"):
            self.raw.append(line)
            if line.startswith("{"):
                self.lines.append(json.loads(line))

    async def until(self, condition, deadline: float) -> None:
        """Until ``condition()`` holds or the subscriber has ended (read to its end), at most ``deadline`` s."""
        async with asyncio.timeout(deadline):
            while not condition() and not self.reader.done():
                await asyncio.sleep(0.05)

    def text(self) -> str:
        return "".join(self.raw)

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()
        await self.proc.wait()
        await self.reader


async def rung_leaves_when_stopped(transcoder, multivariant, publisher) -> None:
    """Stop the transcoder node: its rung leaves the multivariant while the source plays on."""
    transcoder.terminate()
    await transcoder.wait()
    async with asyncio.timeout(20):
        while "video-360p.m3u8" in (listing := await multivariant()):
            await asyncio.sleep(0.3)
    assert re.findall(r"RESOLUTION=(\d+x\d+)", listing) == ["1280x720"], listing
    assert publisher.returncode is None, "the publish ended before the rung was unlisted"


def first_nal_types(payload) -> list[int]:
    data, types, pos = bytes(payload), [], 0
    while pos + 4 <= len(data):
        n = int.from_bytes(data[pos:pos + 4], "big")
        types.append(data[pos + 4] & 0x1F)
        pos += 4 + n
    return types


def by_group(frames):
    groups: dict[int, list] = {}
    for f in frames:
        groups.setdefault(f.group, []).append(f)
    return groups


async def test_every_rendition_is_made_group_by_group_from_the_source(node, tmp_path):
    need("ffmpeg")
    rtmp_port = node.rtmp.address[1]
    url = f"rtmp://127.0.0.1:{rtmp_port}/live/ladder"
    received: dict[str, dict] = {t: {} for t in ("video", *RUNGS)}
    subscribers = [asyncio.create_task(subscribe(node, "live/ladder", t, received[t])) for t in received]
    publisher = asyncio.create_task(run_process(ffmpeg_publish_args(url, str(tmp_path / "ref.flv"), seconds=7,
                                                                    size="1280x720"), timeout=90))
    await node.registry.wait_for("live/ladder", 20)
    host, http_port = node.edge.address
    base = f"http://{host}:{http_port}/live/ladder"
    # the multivariant lists the rungs before anyone watched them (from the catalog)
    status, multivariant = await http_text(f"{base}/index.m3u8")
    assert status == 200, multivariant
    variants = re.findall(r"#EXT-X-STREAM-INF:(.*)\n(.*)", multivariant)
    assert [(re.search(r"RESOLUTION=(\d+x\d+)", a)[1], uri) for a, uri in variants] == [
        ("1280x720", "video.m3u8"), ("854x480", "video-480p.m3u8"), ("640x360", "video-360p.m3u8")]
    assert all(re.search(r"BANDWIDTH=\d+", a) and "FRAME-RATE=30.000" in a and "avc1." in a for a, _ in variants)
    # ffprobe plays each rung's playlist (the edge pulls a rung when its playlist is asked for;
    # like a player, ask again while it answers 503: no whole segment yet)
    from .test_nodes_cli import get_when_ready

    await asyncio.gather(*(get_when_ready(f"{base}/{track}.m3u8", 30) for track in RUNGS))
    probes = [asyncio.create_task(run_process(["ffprobe", "-v", "error", "-count_frames", "-show_entries",
                                               "stream=codec_type,width,height,nb_read_frames", "-of", "json",
                                               f"{base}/{track}.m3u8"], timeout=90)) for track in RUNGS]
    rc, out = await publisher
    assert rc == 0, out
    await asyncio.wait_for(asyncio.gather(*subscribers), 60)
    for (track, size), probe in zip(RUNGS.items(), probes):
        rc, out = await probe
        assert rc == 0, out
        video = [s for s in json.loads(out)["streams"] if s["codec_type"] == "video"]
        assert (video[0]["width"], video[0]["height"]) == size and int(video[0]["nb_read_frames"]) > 30

    catalog = received["video"]["catalog"][-1]
    source = by_group(received["video"]["video"])
    assert len(source) >= 3
    for track, size in RUNGS.items():
        info = catalog.track(track)
        assert (info.width, info.height, info.alt_group, info.render_group) == (*size, 1, 1)
        assert info.codec.startswith("avc1.") and info.bitrate == parse_ladder(track.split("-")[1])[0].bitrate
        frames = received[track].get(track, [])
        assert not received[track].get("skipped")
        groups = by_group(frames)
        assert groups and set(groups) <= set(source)
        # from its first group on, every source group has its rung group (the last may be cut short
        # by the end of the broadcast)
        assert sorted(groups) == [g for g in sorted(source) if g >= min(groups)]
        assert min(groups) <= min(source) + 1
        for g, fs in groups.items():
            assert [f.index for f in fs] == list(range(len(fs)))
            assert 5 in first_nal_types(fs[0].payload) and fs[0].keyframe  # an IDR starts every group
            assert fs[0].pts == min(f.pts for f in source[g])  # ... at the source group's first pts
            assert all(f.dts == f.pts for f in fs)
            if g != max(groups):
                assert len(fs) == len(source[g])
        decoder = SourceDecoder(info)
        pictures = []
        for f in sorted(frames, key=lambda f: (f.group, f.index)):  # groups arrive on their own streams
            pictures += decoder.decode(f.payload, f.pts, f.dts, f.keyframe)  # raises on a decode error
        pictures += decoder.flush()
        assert len(pictures) == len(frames)
        assert {(p.width, p.height) for p in pictures} == {size}


async def test_a_rung_nobody_watches_encodes_nothing_and_starts_at_the_current_group(node, tmp_path):
    need("ffmpeg")
    rtmp_port = node.rtmp.address[1]
    source: dict = {}
    watcher = asyncio.create_task(subscribe(node, "live/lazy", "video", source))
    publisher = asyncio.create_task(run_process(ffmpeg_publish_args(
        f"rtmp://127.0.0.1:{rtmp_port}/live/lazy", str(tmp_path / "ref.flv"), seconds=6, size="1280x720"), timeout=90))
    async with asyncio.timeout(30):
        while len(by_group(source.get("video", []))) < 2:  # into the second source group
            await asyncio.sleep(0.05)
    bt = node.transcoder.broadcasts["live/lazy"]
    assert set(bt.rung_source) == set(RUNGS)
    assert bt.frames_encoded("video-480p") == bt.frames_encoded("video-360p") == 0  # nobody watches
    late: dict = {}
    async with asyncio.timeout(30):  # mid-group: some frames into the group in progress
        while sum(f.group == max(g.group for g in source["video"]) for f in source["video"]) < 10:
            await asyncio.sleep(0.05)
    current = max(f.group for f in source["video"])
    await asyncio.wait_for(asyncio.gather(subscribe(node, "live/lazy", "video-360p", late), publisher), 60)
    await watcher
    frames = late["video-360p"]
    assert frames[0].group == current and frames[0].index == 0 and frames[0].keyframe
    assert frames[0].pts == min(f.pts for f in source["video"] if f.group == current)
    assert bt.frames_encoded("video-480p") == 0 and bt.frames_encoded("video-360p") > 0


async def test_separate_nodes_up_transcode_and_edge(tmp_path):
    """`rtmpq up` + `rtmpq transcode --upstream` + `rtmpq edge`, each its own process: the rungs
    are listed in the broadcast's catalog at the origin, a MoQ subscriber that knows only the
    broadcast's name gets a rung (`rtmpq sub --rendition 360p`), and the edge serves it as HLS."""
    need("ffmpeg")
    from .test_nodes_cli import get_when_ready, start

    prtmp, pmoq, phttp, pedge = free_port(), free_port(socket.SOCK_DGRAM), free_port(), free_port()
    # a deep rung queue: CI hosts are shared, and a rung that falls behind skips groups (by design)
    env = {**os.environ, "RTMPQ_PUBLISH_GRACE_PERIOD": "3", "RTMPQ_TRANSCODE_RUNG_QUEUE_FRAMES": "120"}
    procs = []
    try:
        procs.append(await start("up", "--rtmp", f"127.0.0.1:{prtmp}", "--moq", f"127.0.0.1:{pmoq}",
                                 "--http", f"127.0.0.1:{phttp}", "--state-dir", str(tmp_path / "s"), env=env))
        procs.append(await start("transcode", "--upstream", f"moqt://127.0.0.1:{pmoq}", "--insecure",
                                 "--ladder", "480p,360p", env=env))
        procs.append(await start("edge", "--http", f"127.0.0.1:{pedge}", "--upstream", f"moqt://127.0.0.1:{pmoq}",
                                 "--insecure", env=env))
        # the subscriber comes first and knows only the broadcast's name: it takes the source
        # rendition until the catalog lists the 360p rung, then that one
        sub = asyncio.create_task(run_process([sys.executable, "-m", "rtmpq", "sub",
                                               f"moqt://127.0.0.1:{pmoq}/live/apart", "--insecure", "--json",
                                               "--rendition", "360p", "--seconds", "30", "--delivery-timeout", "15"], timeout=60))
        await wait_tcp(prtmp)
        publisher = asyncio.create_task(run_process(ffmpeg_publish_args(
            f"rtmp://127.0.0.1:{prtmp}/live/apart", str(tmp_path / "ref.flv"), seconds=10, size="1280x720"), timeout=90))
        base = f"http://127.0.0.1:{pedge}/live/apart"
        async with asyncio.timeout(40):  # the rungs appear in the multivariant (from the catalog)
            while True:
                multivariant = (await get_when_ready(f"{base}/index.m3u8")).decode()
                if "video-360p.m3u8" in multivariant:
                    break
                await asyncio.sleep(0.3)
        assert re.findall(r"RESOLUTION=(\d+x\d+)", multivariant) == ["1280x720", "854x480", "640x360"]
        # asking for the rung's playlist starts it (the edge pulls it, the relay asks the transcoder);
        # like a player, ask again while it answers 503 (no whole segment yet)
        await get_when_ready(f"{base}/video-480p.m3u8", 30)
        probe = asyncio.create_task(run_process(["ffprobe", "-v", "error", "-count_frames", "-show_entries",
                                                 "stream=codec_type,width,height,nb_read_frames", "-of", "json",
                                                 f"{base}/video-480p.m3u8"], timeout=90))
        rc, out = await publisher
        assert rc == 0, out
        rc, out = await probe
        assert rc == 0, out
        video = [s for s in json.loads(out)["streams"] if s["codec_type"] == "video"]
        assert (video[0]["width"], video[0]["height"]) == (854, 480) and int(video[0]["nb_read_frames"]) > 30
        rc, out = await sub
        lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        catalog = [line["catalog"] for line in lines if "catalog" in line][-1]
        assert [t["name"] for t in catalog["tracks"]] == ["video", "video-480p", "video-360p", "audio"]
        objects = [line for line in lines if "track" in line]
        assert {"video-360p", "audio"} <= {o["track"] for o in objects} <= {"video", "video-360p", "audio"}, out[-3000:]
        firsts = [o for o in objects if o["track"] == "video-360p" and o["object"] == 0]
        assert len(firsts) >= 2 and all(o["keyframe"] for o in firsts)
    finally:
        await stop_nodes(procs)


async def test_the_rungs_of_a_transcoder_that_stops_leave_the_catalog(tmp_path):
    """`rtmpq up` + `rtmpq transcode --upstream` + `rtmpq edge`: once the transcoder node is gone,
    the broadcast's catalog is re-issued without its rungs, so players are no longer offered
    renditions nobody makes; the source rendition plays on."""
    need("ffmpeg")
    from .test_nodes_cli import get_when_ready, start

    prtmp, pmoq, phttp, pedge = free_port(), free_port(socket.SOCK_DGRAM), free_port(), free_port()
    env = {**os.environ, "RTMPQ_PUBLISH_GRACE_PERIOD": "3"}
    procs, publisher = [], None

    async def multivariant() -> str:
        return (await get_when_ready(f"http://127.0.0.1:{pedge}/live/rungs/index.m3u8")).decode()

    try:
        procs.append(await start("up", "--rtmp", f"127.0.0.1:{prtmp}", "--moq", f"127.0.0.1:{pmoq}",
                                 "--http", f"127.0.0.1:{phttp}", "--state-dir", str(tmp_path / "s"), env=env))
        transcoder = await start("transcode", "--upstream", f"moqt://127.0.0.1:{pmoq}", "--insecure",
                                 "--ladder", "360p", env=env)
        procs.append(transcoder)
        procs.append(await start("edge", "--http", f"127.0.0.1:{pedge}", "--upstream", f"moqt://127.0.0.1:{pmoq}",
                                 "--insecure", env=env))
        await wait_tcp(prtmp)
        publisher = await asyncio.create_subprocess_exec(*ffmpeg_publish_args(
            f"rtmp://127.0.0.1:{prtmp}/live/rungs", str(tmp_path / "ref.flv"), seconds=60, size="1280x720"),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        async with asyncio.timeout(40):
            while "video-360p.m3u8" not in await multivariant():
                await asyncio.sleep(0.3)
        await rung_leaves_when_stopped(transcoder, multivariant, publisher)
    finally:
        await stop_nodes(procs, publisher)


async def test_transcoder_adds_rungs_to_a_broadcast_an_ingest_publishes_into_a_relay(tmp_path):
    """`rtmpq ingest --upstream` -> `rtmpq relay` <- `rtmpq transcode --upstream`: the relay
    re-issues the relayed broadcast's catalog with the rung listed, and serves it on demand."""
    need("ffmpeg")
    from .test_nodes_cli import start

    prtmp, pmoq = free_port(), free_port(socket.SOCK_DGRAM)
    # a deep rung queue: CI hosts are shared, and a rung that falls behind skips groups (by design)
    env = {**os.environ, "RTMPQ_PUBLISH_GRACE_PERIOD": "3", "RTMPQ_TRANSCODE_RUNG_QUEUE_FRAMES": "120"}
    procs, sub, publisher = [], None, None
    try:
        procs.append(await start("relay", "--moq", f"127.0.0.1:{pmoq}", "--state-dir", str(tmp_path / "s"), env=env))
        procs.append(await start("ingest", "--rtmp", f"127.0.0.1:{prtmp}", "--upstream", f"moqt://127.0.0.1:{pmoq}",
                                 "--insecure", env=env))
        procs.append(await start("transcode", "--upstream", f"moqt://127.0.0.1:{pmoq}", "--insecure",
                                 "--ladder", "360p", env=env))
        sub = await JsonSubscriber.start(f"moqt://127.0.0.1:{pmoq}/live/relayed", "--rendition", "360p",
                                         "--seconds", "30", "--delivery-timeout", "15")
        await wait_tcp(prtmp)
        publisher = asyncio.create_task(run_process(ffmpeg_publish_args(
            f"rtmp://127.0.0.1:{prtmp}/live/relayed", str(tmp_path / "ref.flv"), seconds=12, size="1280x720"),
            timeout=90))
        rung = lambda: [o for o in sub.lines if o.get("track") == "video-360p"]  # noqa: E731
        # two rung groups, or the broadcast's end (the subscriber's): the rest of the publish is not needed
        await sub.until(lambda: len({o["group"] for o in rung()}) >= 2, 60)
        await end_live_publish(publisher)
        lines, out = sub.lines, sub.text()
        catalog = [line["catalog"] for line in lines if "catalog" in line][-1]
        assert [(t["name"], t.get("height")) for t in catalog["tracks"]] == [
            ("video", 720), ("video-360p", 360), ("audio", None)], out[-2000:]
        assert len({o["group"] for o in rung()}) >= 2 and all(o["keyframe"] for o in rung() if o["object"] == 0)
    finally:
        if sub is not None:
            await sub.stop()
        if publisher is not None:
            await drop_publish(publisher)
        await stop_nodes(procs)


async def test_the_rungs_of_a_transcoder_that_stops_leave_a_relayed_broadcasts_catalog(tmp_path):
    """`rtmpq ingest --upstream` -> `rtmpq relay` <- `rtmpq transcode --upstream`, the transcoder
    stopped: the relay re-issued the catalog from its newest cached one, which listed the rung
    already, so the rung stayed listed for good (and an `rtmpq edge` below answered 503 "no media
    yet" for the whole broadcast: it serves a multivariant once every listed rendition plays). Now
    the re-issue starts from the publisher's own catalog."""
    need("ffmpeg")
    from .test_nodes_cli import start

    prtmp, pmoq = free_port(), free_port(socket.SOCK_DGRAM)
    url = f"moqt://127.0.0.1:{pmoq}/live/relayed"
    procs, publisher = [], None

    async def catalog_tracks() -> list[str]:
        rc, out = await run_process([sys.executable, "-m", "rtmpq", "sub", url, "--insecure", "--json", "--frames", "1",
                                     "--wait", "10"], timeout=20)
        catalogs = [json.loads(line)["catalog"] for line in out.splitlines() if line.startswith('{"catalog"')]
        return [t["name"] for t in catalogs[-1]["tracks"]] if catalogs else []

    try:
        procs.append(await start("relay", "--moq", f"127.0.0.1:{pmoq}", "--state-dir", str(tmp_path / "s")))
        procs.append(await start("ingest", "--rtmp", f"127.0.0.1:{prtmp}", "--upstream", f"moqt://127.0.0.1:{pmoq}",
                                 "--insecure"))
        transcoder = await start("transcode", "--upstream", f"moqt://127.0.0.1:{pmoq}", "--insecure",
                                 "--ladder", "120p")
        procs.append(transcoder)
        await wait_tcp(prtmp)
        publisher = await asyncio.create_subprocess_exec(*ffmpeg_publish_args(
            f"rtmp://127.0.0.1:{prtmp}/live/relayed", str(tmp_path / "ref.flv"), seconds=60),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        async def listed(rung: bool) -> bool:
            tracks[:] = await catalog_tracks()
            return ("video-120p" in tracks) == rung

        tracks: list[str] = []
        # listed (made only when watched: nothing is encoded here)
        await until(lambda: listed(True), 20, "the rung in the relayed catalog", interval=0.3)
        transcoder.terminate()
        await transcoder.wait()
        await until(lambda: listed(False), 10, "the rung out of the relayed catalog", interval=0.3)
        assert sorted(tracks) == ["audio", "video"], tracks
    finally:
        await stop_nodes(procs, publisher)


def metric_values(text: str, name: str, broadcast: str = "live/behind") -> dict[str, float]:
    """{rendition: value} of one metric in a Prometheus text exposition."""
    out = {}
    for m in re.finditer(rf'^{name}\{{([^}}]*)\}} (\S+)$', text, re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m[1]))
        out[labels["rendition"]] = float(m[2])
        assert labels["broadcast"] == broadcast
    return out


@pytest.mark.parametrize("backend", ["aioquic", "aiopquic"])
async def test_a_rung_that_cannot_keep_up_skips_to_the_next_group_and_says_so(tmp_path, caplog, backend):
    """The 480p rung encodes with x264's slowest preset (far slower than 30 fps; a queue of 60
    frames, so the 360p rung rides out the CPU it takes on a shared host): it drops to the next
    group boundary, and a MoQ subscriber of it sees each group it
    cut short or skipped signalled (the group's stream reset with DELIVERY_TIMEOUT), never a
    group that does not start with an IDR; the 360p rung and the source go on group after group;
    /metrics counts the skips and the frames per rendition."""
    need("ffmpeg")
    caplog.set_level("WARNING", "rtmpq.transcode")
    node = UpNode(local_config(tmp_path, backend, grace_period=3.0, transcode=TranscodeConfig(
        ladder="480p,360p", presets={"480p": "placebo"}, rung_queue_frames=60, idle_stop=1.0, isolate=False)))
    await node.start()
    try:
        received: dict[str, dict] = {t: {} for t in ("video", *RUNGS)}
        subscribers = [asyncio.create_task(subscribe(node, "live/behind", t, received[t])) for t in received]
        rc, out = await run_process(ffmpeg_publish_args(f"rtmp://127.0.0.1:{node.rtmp.address[1]}/live/behind",
                                                        str(tmp_path / "ref.flv"), seconds=9, size="1280x720"),
                                    timeout=90)
        assert rc == 0, out
        host, http_port = node.edge.address
        status, metrics = await http_text(f"http://{host}:{http_port}/metrics")  # while the broadcast is kept
        assert status == 200
        await asyncio.wait_for(asyncio.gather(*subscribers), 60)
    finally:
        await node.close()

    source = by_group(received["video"]["video"])
    assert len(source) >= 4
    slow, fast = received["video-480p"], received["video-360p"]
    skipped = {s.group for s in slow.get("skipped", [])}
    assert skipped and {s.code for s in slow["skipped"]} == {0x2}  # DELIVERY_TIMEOUT
    for received_rung in (slow, fast):
        for g, fs in by_group(received_rung.get(next(t for t in RUNGS if t in received_rung), [])).items():
            assert fs[0].index == 0 and 5 in first_nal_types(fs[0].payload) and fs[0].keyframe  # IDR first
            assert fs[0].pts == min(f.pts for f in source[g])
            assert [f.index for f in fs] == list(range(len(fs)))
    # every group of the slow rung (but the last, cut by the broadcast's end) is whole or signalled
    slow_groups = by_group(slow.get("video-480p", []))
    first, last = min(slow_groups), max(source)
    for g in range(first, last):
        assert g in skipped or len(slow_groups.get(g, [])) == len(source[g]), (g, sorted(skipped))
    # the other rung and the source are not held back: each group whole, none skipped
    fast_groups = by_group(fast["video-360p"])
    assert not fast.get("skipped") and not received["video"].get("skipped")
    assert sorted(fast_groups) == [g for g in sorted(source) if g >= min(fast_groups)]
    assert all(len(fast_groups[g]) == len(source[g]) for g in fast_groups if g != max(fast_groups))
    # one log line per skip, naming the broadcast (as logs may: hashed on an open node) and the rung
    assert any(re.match(r"live/\S+ video-480p: the encoder fell behind; dropping to the next group", r.getMessage())
               for r in caplog.records)
    # the metrics say the same, per rendition
    skips = metric_values(metrics, "rtmpq_transcode_skipped_groups_total")
    assert skips["video-480p"] >= len(skipped) - 1 and skips["video-360p"] == 0
    encoded = metric_values(metrics, "rtmpq_transcode_frames_encoded_total")
    assert 0 < encoded["video-480p"] < encoded["video-360p"]
    lag = metric_values(metrics, "rtmpq_transcode_lag_seconds")
    assert set(lag) == set(RUNGS) and all(0 < v < 30 for v in lag.values())


async def test_a_transcoder_node_signals_a_skipped_rung_group_through_the_relay(tmp_path):
    """`rtmpq transcode --upstream` with a 480p rung far too slow for real time: the group it cut
    short or skipped reaches a subscriber of the relay (`rtmpq sub --rendition 480p`) as a reset
    group (DELIVERY_TIMEOUT), each group it does deliver starts with a key frame, and the
    transcoder's own /metrics (`--http`) counts the skips."""
    need("ffmpeg")
    from .test_nodes_cli import start

    prtmp, pmoq, phttp, pops = free_port(), free_port(socket.SOCK_DGRAM), free_port(), free_port()
    env = {**os.environ, "RTMPQ_PUBLISH_GRACE_PERIOD": "3", "RTMPQ_TRANSCODE_PRESETS": "480p=placebo"}
    procs = []
    try:
        procs.append(await start("up", "--rtmp", f"127.0.0.1:{prtmp}", "--moq", f"127.0.0.1:{pmoq}",
                                 "--http", f"127.0.0.1:{phttp}", "--state-dir", str(tmp_path / "s"), env=env))
        procs.append(await start("transcode", "--upstream", f"moqt://127.0.0.1:{pmoq}", "--insecure",
                                 "--ladder", "480p", "--http", f"127.0.0.1:{pops}", env=env))
        sub = asyncio.create_task(run_process([sys.executable, "-m", "rtmpq", "sub",
                                               f"moqt://127.0.0.1:{pmoq}/live/slow", "--insecure", "--json",
                                               "--rendition", "480p", "--seconds", "25", "--delivery-timeout", "15"],
                                              timeout=60))
        await wait_tcp(prtmp)
        await wait_tcp(pops)
        publisher = asyncio.create_task(run_process(ffmpeg_publish_args(
            f"rtmp://127.0.0.1:{prtmp}/live/slow", str(tmp_path / "ref.flv"), seconds=9, size="1280x720"), timeout=90))
        # the transcoder's /metrics count the rung's skips while the rung is there (its series
        # leave with it): read until one is counted or the subscriber is done. The group the rung
        # starts at waits for its encoder, so on a loaded host its first skip may come only after
        # the publish is over
        counted = 0.0
        while counted < 1:
            done = sub.done()
            status, metrics = await http_text(f"http://127.0.0.1:{pops}/metrics")
            assert status == 200
            counted = metric_values(metrics, "rtmpq_transcode_skipped_groups_total", "live/slow").get("video-480p", 0)
            if done:
                break
            await asyncio.sleep(0.2)
        rc, out = await publisher
        assert rc == 0, out
        rc, out = await sub
        lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        skipped = [line["skipped"] for line in lines if "skipped" in line]
        rung = [o for o in lines if o.get("track") == "video-480p"]
        assert any(s["code"] == 0x2 for s in skipped), out[-3000:]
        # besides, the rung group in progress when the publish ended and the transcoder's session
        # with it may be cut short there: reset (SESSION_CLOSED), never ended as if whole
        last = max((o["group"] for o in rung), default=None)
        assert all(s["track"] == "video-480p" and (s["code"] == 0x2 or (s["code"] == 0x3 and s["group"] == last))
                   for s in skipped), out[-3000:]
        firsts = {o["group"]: o for o in rung if o["object"] == 0}
        assert firsts and all(o["keyframe"] for o in firsts.values())
        assert {o["group"] for o in rung} <= set(firsts)  # no group without its key frame
        assert counted >= 1
    finally:
        await stop_nodes(procs)


RENDITION_IDLE = 2.0  # [http] rendition_idle for tests below (15 s by default)
# s from a returning track's rung in the catalog to the rung in the multivariant (rendition_idle: 15 s)
RUNG_BACK_WITHIN = 4.0


async def test_up_serves_as_hls_the_rungs_a_separate_transcoder_publishes_into_it(tmp_path):
    """`rtmpq up` + `rtmpq transcode --upstream` to it (a GPU box for the ladder): the HLS URL
    `rtmpq up` prints offers the rung as a variant, its playlist and segments play at the rung's
    size (the transcoder makes it only once a player asks for it, and stops once players left),
    and once the transcoder stops the variant leaves the multivariant while the source plays on."""
    need("ffmpeg")
    from .test_nodes_cli import get_when_ready, start

    prtmp, pmoq, phttp, pops = free_port(), free_port(socket.SOCK_DGRAM), free_port(), free_port()
    env = {**os.environ, "RTMPQ_PUBLISH_GRACE_PERIOD": "3", "RTMPQ_TRANSCODE_RUNG_QUEUE_FRAMES": "120",
           "RTMPQ_TRANSCODE_IDLE_STOP": "1", "RTMPQ_HTTP_RENDITION_IDLE": str(RENDITION_IDLE)}
    base = f"http://127.0.0.1:{phttp}/live/gpu"
    procs, publisher = [], None

    async def multivariant() -> str:
        return (await get_when_ready(f"{base}/index.m3u8")).decode()

    async def transcoder_metric(name: str) -> float | None:  # of the rung, None when not exposed
        status, metrics = await http_text(f"http://127.0.0.1:{pops}/metrics")
        assert status == 200, metrics
        return metric_values(metrics, name, "live/gpu").get("video-360p")

    async def encoded() -> float:  # frames the transcoder made of the rung so far
        return await transcoder_metric("rtmpq_transcode_frames_encoded_total") or 0

    async def up_subscribers() -> float:  # what up's own /metrics counts for the broadcast
        status, metrics = await http_text(f"http://127.0.0.1:{phttp}/metrics")
        assert status == 200, metrics
        return float(re.search(r'^rtmpq_broadcast_subscribers\{broadcast="live/gpu"\} (\S+)$', metrics, re.M)[1])

    try:
        procs.append(await start("up", "--rtmp", f"127.0.0.1:{prtmp}", "--moq", f"127.0.0.1:{pmoq}",
                                 "--http", f"127.0.0.1:{phttp}", "--state-dir", str(tmp_path / "s"), env=env))
        transcoder = await start("transcode", "--upstream", f"moqt://127.0.0.1:{pmoq}", "--insecure",
                                 "--ladder", "360p", "--http", f"127.0.0.1:{pops}", env=env)
        procs.append(transcoder)
        await wait_tcp(prtmp)
        publisher = await asyncio.create_subprocess_exec(*ffmpeg_publish_args(
            f"rtmp://127.0.0.1:{prtmp}/live/gpu", str(tmp_path / "ref.flv"), seconds=60, size="1280x720"),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        async with asyncio.timeout(40):  # the rung appears in up's own multivariant (from the catalog)
            while "video-360p.m3u8" not in (listing := await multivariant()):
                await asyncio.sleep(0.3)
        assert re.findall(r"RESOLUTION=(\d+x\d+)", listing) == ["1280x720", "640x360"], listing
        assert await encoded() == 0  # listed, not watched: not made
        assert await up_subscribers() == 1  # the transcoder node's session, for the source
        # asking for the rung's playlist pulls it (up's relay asks the transcoder for it); like a
        # player, ask again while it answers 503 (no whole segment yet)
        playlist = (await get_when_ready(f"{base}/video-360p.m3u8", 30)).decode()
        init = re.search(r'#EXT-X-MAP:URI="([^"]+)"', playlist)[1]
        segment = re.findall(r"#EXTINF:.*\n(.*)", playlist)[-1]
        data = await get_when_ready(f"{base}/{init}") + await get_when_ready(f"{base}/{segment}")
        (tmp_path / "rung.mp4").write_bytes(data)
        rc, out = await run_process(["ffprobe", "-v", "error", "-count_frames", "-show_entries",
                                     "stream=codec_type,width,height,nb_read_frames", "-of", "json",
                                     str(tmp_path / "rung.mp4")], timeout=60)
        assert rc == 0, out
        video = [s for s in json.loads(out)["streams"] if s["codec_type"] == "video"]
        assert (video[0]["width"], video[0]["height"]) == (640, 360) and int(video[0]["nb_read_frames"]) > 10
        assert await encoded() > 0
        # up's edge pulls the rung from up's relay in process: one more subscriber there
        assert await up_subscribers() == 2
        # nobody asks for the rung any more: the edge lets it go (after [http] rendition_idle),
        # and the transcoder stops encoding it (its lag is exposed only while it encodes)
        async with asyncio.timeout(RENDITION_IDLE + 10):  # well under the 15 s default
            while await transcoder_metric("rtmpq_transcode_lag_seconds") is not None:
                await asyncio.sleep(0.5)
        assert await up_subscribers() == 1  # the edge's pull left the count when it ended
        await rung_leaves_when_stopped(transcoder, multivariant, publisher)
    finally:
        await stop_nodes(procs, publisher)


@pytest.fixture(scope="session")
def multitrack_clips(tmp_path_factory):
    """E-RTMP HEVC+AAC files for push_flv, made once: 6 s with ``video`` 640x360 and ``video-1``
    320x240 (multitrack), and 4 s with ``video`` alone."""
    from .publishers import pyav_publish_args

    def encode(**settings):
        return lambda path: subprocess.run(pyav_publish_args("-", str(path), "libx265", "aac", size="640x360",
                                                             **settings), check=True, timeout=120)

    return (str(made_once(tmp_path_factory, "multitrack.flv", encode(seconds=6, multitrack="320x240"))),
            str(made_once(tmp_path_factory, "main.flv", encode(seconds=4))))


async def end_push(push: asyncio.Task) -> None:
    """A push_flv whose rest the test does not need: it ended well or is still pushing; it ends now."""
    if push.done():
        push.result()  # (raises what it failed of)
    push.cancel()
    await asyncio.gather(push, return_exceptions=True)


async def test_the_rungs_of_a_multitrack_video_track_leave_with_it(tmp_path, multitrack_clips):
    """`rtmpq up --ladder 180p` and an E-RTMP multitrack publisher (``video`` 640x360, ``video-1``
    320x240, audio) that comes back within the grace period with ``video`` and audio only: once
    the new publish's first group is over, ``video-1`` and its rung ``video-1-180p`` leave the
    catalog and the multivariant playlist, and the rung's media playlist ends; ``video-180p``
    stays. Before, the rung stayed listed with nothing feeding it. A third publish with both
    tracks lists the rung again, at once ([http] rendition_idle at its 15 s default: the edge's
    pull of the rung ended with it)."""
    from .publishers import push_flv
    from .test_nodes_cli import get_when_ready

    both, main = multitrack_clips
    # [http] rendition_idle at its 15 s default: the rung's pull ends with video-1, not then
    node = UpNode(local_config(tmp_path, grace_period=30.0, transcode=TranscodeConfig(ladder="180p", isolate=False)))
    await node.start()
    base = f"http://127.0.0.1:{node.edge.address[1]}/live/mt"

    async def multivariant() -> str:
        return (await get_when_ready(f"{base}/index.m3u8")).decode()

    async def play_to_the_end(playlist: str) -> str:  # a player on it: reloads it until it ends
        while "#EXT-X-ENDLIST" not in (text := (await get_when_ready(playlist)).decode()):
            await asyncio.sleep(0.5)
        return text

    player = None
    try:
        names = lambda: [t.name for t in node.registry.get("live/mt").catalog.tracks]  # noqa: E731
        first = asyncio.create_task(push_flv(node.rtmp.address[1], "mt", both))
        async with asyncio.timeout(20):
            while "video-1-180p.m3u8" not in await multivariant():
                await asyncio.sleep(0.2)
        broadcast = node.registry.get("live/mt")
        assert {"video-180p", "video-1-180p"} <= set(names()), names()
        # a player on the rung: it is made
        player = asyncio.create_task(play_to_the_end(f"{base}/video-1-180p.m3u8"))
        await first
        await push_flv(node.rtmp.address[1], "mt", main)  # back without video-1
        assert broadcast.publishes == 2 and names() == ["video", "video-180p", "audio"]
        async with asyncio.timeout(20):
            while re.search(r"video-1\.m3u8|video-1-180p", text := await multivariant()):
                await asyncio.sleep(0.2)
        assert "video-180p.m3u8" in text, text
        await asyncio.wait_for(player, 20)  # the rung's player got to its end
        for gone in ("video-1", "video-1-180p"):  # players on them stop waiting
            status, playlist = await http_text(f"{base}/{gone}.m3u8")
            assert status == 200 and "#EXT-X-ENDLIST" in playlist, (gone, playlist)
        third = asyncio.create_task(push_flv(node.rtmp.address[1], "mt", both))  # video-1 is back: its rung too
        async with asyncio.timeout(RUNG_BACK_WITHIN + 2):  # (the push starting, then video-1's first segment)
            while "video-1-180p.m3u8" not in await multivariant():
                await asyncio.sleep(0.2)
        assert names() == ["video", "video-1", "video-180p", "video-1-180p", "audio"]
        await end_push(third)
    finally:
        if player is not None:
            player.cancel()
        await node.close()


async def rung_subscription(pmoq: int, name: str, track: str) -> tuple[asyncio.Queue, object]:
    """A MoQ SUBSCRIBE to one rung on its own session: (the session's events, its request id)."""
    from contextlib import AsyncExitStack

    stack = AsyncExitStack()
    conn = await stack.enter_async_context(connect_moq("127.0.0.1", pmoq, insecure=True))
    events: asyncio.Queue = asyncio.Queue()
    conn.handler = lambda _c, event: events.put_nowait(event)
    request = conn.session.subscribe(tuple(name.split("/")), track)
    conn.flush()
    events.close = stack.aclose
    return events, request


async def next_event(events: asyncio.Queue, kind, what: str, request=None):
    async with asyncio.timeout(30):
        while True:
            event = await events.get()
            if isinstance(event, kind) and (request is None or event.request_id == request):
                return event
            assert type(event).__name__ not in ("SessionClosed", "RequestFailed"), (what, event)


async def test_the_rungs_a_transcoder_node_makes_of_a_track_that_left_end_with_it(tmp_path, multitrack_clips):
    """`rtmpq up` + `rtmpq transcode --upstream --ladder 180p`, an E-RTMP multitrack publisher back
    within the grace period without ``video-1``: the transcoder withdraws ``video-1-180p`` (its
    MoQ subscriber gets PUBLISH_DONE, TRACK_ENDED) and the rung leaves the multivariant;
    ``video-180p`` stays. When ``video-1`` comes back, its rung is listed and made again."""
    need("ffmpeg")
    from rtmpq.moq import events as ev
    from rtmpq.moq.wire import PublishDoneStatus

    from .publishers import push_flv
    from .test_nodes_cli import get_when_ready, start

    both, main = multitrack_clips
    prtmp, pmoq, phttp = free_port(), free_port(socket.SOCK_DGRAM), free_port()
    env = {**os.environ, "RTMPQ_PUBLISH_GRACE_PERIOD": "30"}
    procs, subs = [], []

    async def multivariant() -> str:
        return (await get_when_ready(f"http://127.0.0.1:{phttp}/live/mt/index.m3u8")).decode()

    async def listed(rung: bool) -> str:
        async with asyncio.timeout(30):
            while ("video-1-180p.m3u8" in (text := await multivariant())) != rung:
                await asyncio.sleep(0.2)
        return text

    try:
        procs.append(await start("up", "--rtmp", f"127.0.0.1:{prtmp}", "--moq", f"127.0.0.1:{pmoq}",
                                 "--http", f"127.0.0.1:{phttp}", "--state-dir", str(tmp_path / "s"), env=env))
        procs.append(await start("transcode", "--upstream", f"moqt://127.0.0.1:{pmoq}", "--insecure",
                                 "--ladder", "180p", env=env))
        await wait_tcp(prtmp)
        first = asyncio.create_task(push_flv(prtmp, "mt", both))
        await listed(True)
        events, request = await rung_subscription(pmoq, "live/mt", "video-1-180p")
        subs.append(events)
        await next_event(events, ev.ObjectReceived, "the rung's first object")
        await first
        await push_flv(prtmp, "mt", main)  # back without video-1
        done = await next_event(events, ev.PublishDoneReceived, "PUBLISH_DONE of the rung", request)
        assert done.status == PublishDoneStatus.TRACK_ENDED
        text = await listed(False)
        assert "video-180p.m3u8" in text and "video-1.m3u8" not in text, text
        third = asyncio.create_task(push_flv(prtmp, "mt", both))  # video-1 is back, and so is its rung
        await listed(True)
        events, _ = await rung_subscription(pmoq, "live/mt", "video-1-180p")
        subs.append(events)
        await next_event(events, ev.ObjectReceived, "the rung's first object after video-1 came back")
        await end_push(third)
    finally:
        for events in subs:
            await events.close()
        await stop_nodes(procs)


@pytest.mark.parametrize("video", ["libx265", "libsvtav1"])
async def test_hevc_and_av1_sources_are_transcoded(tmp_path, video):
    """An Enhanced RTMP publisher of HEVC or AV1 (PyAV's FFmpeg, as ffmpeg 7+ and OBS 30+ send
    them): every frame of the source comes out of the 180p rung, H.264, each group from an IDR.
    Before, an AV1 source was opened with FFmpeg's native ``av1`` decoder, which decodes only
    through a hardware accelerator: every group was logged as corrupt input and the rung listed
    in the multivariant never played."""
    from .publishers import pyav_packets, pyav_publish_args

    ref = str(tmp_path / "ref.flv")
    async with rung_watched(tmp_path, "180p", "modern", "video-180p") as (_, url, got):
        rc, out = await run_process(pyav_publish_args(url, ref, video, "aac", seconds=3, size="640x360"), timeout=120)
        assert rc == 0, out
    sent = [p for ps in pyav_packets(ref).values() for p in ps if p.track == "video"]
    frames = got.get("video-180p", [])
    assert not got.get("skipped") and len(frames) == len(sent), (len(frames), len(sent))
    info = got["catalog"][-1].track("video-180p")
    assert info.codec.startswith("avc1.") and (info.width, info.height) == (320, 180)
    for fs in by_group(frames).values():
        assert fs[0].index == 0 and fs[0].keyframe and 5 in first_nal_types(fs[0].payload)
    assert sizes(info, frames) == {(320, 180)}


async def test_a_publisher_back_at_another_size_gets_rungs_of_that_size(tmp_path):
    """The publisher comes back (within the grace period) at 320x240 where it was 640x360: the
    180p rung is made anew at 240x180 (4:3, a new avcC in the catalog) from the first group of the
    new publish, every frame of it, and the 240p rung, no longer smaller than the source, leaves
    the catalog and the multivariant. Before, the rungs kept their first sizes: the 240p rung
    upscaled the 320x240 picture to 426x240, the 180p one stretched it to 16:9, and the
    multivariant offered a "rendition" larger than the source."""
    async with rung_watched(tmp_path, "240p,180p", "resized", "video-180p") as (n, url, got):
        rc, out = await run_process(ffmpeg_publish_args(url, str(tmp_path / "1.flv"), seconds=2, size="640x360"), 60)
        assert rc == 0, out
        assert n.registry.get("live/resized").catalog.track("video-240p") is not None
        rc, out = await run_process(ffmpeg_publish_args(url, str(tmp_path / "2.flv"), seconds=3, size="320x240"), 60)
        assert rc == 0, out
        host, http_port = n.edge.address
        status, multivariant = await http_text(f"http://{host}:{http_port}/live/resized/index.m3u8")
        assert status == 200 and re.findall(r"RESOLUTION=(\d+x\d+)", multivariant) == ["320x240", "240x180"], \
            multivariant
    catalog = got["catalog"][-1]
    info = catalog.track("video-180p")
    assert (info.width, info.height) == (240, 180) and catalog.track("video-240p") is None
    old_info = next(c.track("video-180p") for c in got["catalog"] if c.track("video-180p"))
    assert (old_info.width, old_info.height) == (320, 180)
    groups = by_group(got["video-180p"])
    first = min(groups)
    # the first publish's one group is whole: the pictures its decoder held back went out with
    # the old size before the new catalog entry
    assert [f.index for f in groups[first]] == list(range(60)) and not got.get("skipped")
    assert sizes(old_info, groups[first]) == {(320, 180)}
    after = [f for f in got["video-180p"] if f.group > first]
    second = by_group(after)
    assert len(second) == 2 and all(fs[0].index == 0 and fs[0].keyframe for fs in second.values())
    assert len(second[min(second)]) == 60 and len(after) >= 85  # (the end of a broadcast may cut its last group)
    assert sizes(info, after) == {(240, 180)}


@contextlib.asynccontextmanager
async def rung_watched(tmp_path, ladder: str, name: str, track: str | None, grace_period: float = 3.0):
    """`rtmpq up --ladder LADDER` in this process (a broadcast outlives its publisher by
    ``grace_period``, 3 s) and a MoQ subscriber of the rung ``track`` of ``live/<name>`` from before the first publish:
    (node, the RTMP URL to publish to, what the subscriber got: by track, "catalog", "skipped"),
    all of it once the block is over and the broadcast ended. ``track`` None: no subscriber."""
    n = UpNode(local_config(tmp_path, grace_period=grace_period,
                            transcode=TranscodeConfig(ladder=ladder, idle_stop=1.0, rung_queue_frames=120,
                                                      isolate=False)))
    await n.start()
    got: dict = {}
    sub = asyncio.create_task(subscribe(n, f"live/{name}", track, got) if track else asyncio.sleep(0))
    try:
        yield n, f"rtmp://127.0.0.1:{n.rtmp.address[1]}/live/{name}", got
        await asyncio.wait_for(sub, 60)
    finally:
        sub.cancel()
        await n.close()


def sizes(info, frames) -> set[tuple[int, int]]:
    """The picture sizes ``frames`` of a rung decode to, each frame a picture."""
    decoder = SourceDecoder(info)
    pictures = []
    for f in sorted(frames, key=lambda f: (f.group, f.index)):
        pictures += decoder.decode(f.payload, f.pts, f.dts, f.keyframe)
    pictures += decoder.flush()
    assert len(pictures) == len(frames)
    return {(p.width, p.height) for p in pictures}


async def test_a_rung_playlist_asked_for_first_is_served(tmp_path):
    """A player whose first request is a rung's media playlist (a direct link to it), before the
    edge has opened the broadcast: the request waits for the catalog that names the rung and is served. Before, it
    was answered 404 "no such rendition" (hls.js gives up on a 404), though the rung was listed
    a moment later."""
    from .test_nodes_cli import get_when_ready

    async with rung_watched(tmp_path, "180p", "direct", None) as (n, url, _):
        publisher = asyncio.create_task(run_process(ffmpeg_publish_args(url, str(tmp_path / "ref.flv"), seconds=6,
                                                                        size="640x360"), 60))
        await n.registry.wait_for("live/direct", 20)
        host, http_port = n.edge.address
        rung = f"http://{host}:{http_port}/live/direct/video-180p.m3u8"
        status, body = await http_text(rung)
        assert status in (200, 503), (status, body)  # 503: no whole segment yet, as for any rendition
        assert b"#EXTINF" in await get_when_ready(rung, 30)
        rc, out = await publisher
        assert rc == 0, out


def video_sent(reference: str) -> int:
    """Video frames in an FLV file the publisher wrote alongside its publish."""
    from .publishers import pyav_packets

    return sum(1 for ps in pyav_packets(reference).values() for p in ps if p.track == "video")


async def test_a_rung_ends_with_the_source_s_last_frame_when_the_publisher_leaves(tmp_path):
    """ffmpeg (2 B-frames: the decoder holds two pictures back for reordering) publishes 3 s into
    `rtmpq up --ladder 180p`, then stops: the 180p rung has every source frame, its last group
    whole, over MoQ and over LL-HLS (ffprobe reads the rung's playlist to its ENDLIST). Before, the
    decoder gave its held-back pictures only at the broadcast's end, which takes no more frames:
    the rung was 2 frames short (88 of 90, HLS and MoQ alike)."""
    from .test_nodes_cli import get_when_ready

    ref = str(tmp_path / "ref.flv")
    async with rung_watched(tmp_path, "180p", "tail", "video-180p") as (n, url, got):
        publisher = asyncio.create_task(run_process(ffmpeg_publish_args(url, ref, seconds=3, size="640x360"), 60))
        await n.registry.wait_for("live/tail", 20)
        host, http_port = n.edge.address
        playlist = f"http://{host}:{http_port}/live/tail/video-180p.m3u8"
        await get_when_ready(playlist, 30)
        # from the playlist's first segment, wherever its live edge is by then (a busy host)
        probe = asyncio.create_task(run_process(["ffprobe", "-v", "error", "-live_start_index", "0", "-count_frames",
                                                 "-show_entries", "stream=nb_read_frames", "-of", "csv=p=0",
                                                 playlist], 60))
        rc, out = await publisher
        assert rc == 0, out
        rc, probed = await probe
        assert rc == 0, probed
    sent = video_sent(ref)
    frames = got.get("video-180p", [])
    assert not got.get("skipped") and min(f.group for f in frames) == 0
    assert len(frames) == sent, (len(frames), sent)
    # the edge pulls the rung from the group in progress at the playlist's first request (group 0,
    # or on a busy host group 1): whole groups to the source's last frame
    sizes = group_sizes(ref)
    assert int(probed.split()[0]) in {sum(sizes[i:]) for i in range(len(sizes))}, (probed, sizes)


async def test_with_no_grace_period_a_rung_still_ends_with_the_source_s_last_frame(tmp_path):
    """`[publish] grace_period = 0`: the broadcast ends with its publisher. Found by a colleague:
    it ended before the transcoder had encoded the pictures its decoder held back (2 with
    ffmpeg's -bf 2) and its rung had encoded what it was given, and the broadcast took no more
    rung frames: the 180p rung had 86 of the source's 90. Now the broadcast's end waits for the transcoder's flush (at most
    ``RENDITION_FLUSH_TIMEOUT``)."""
    ref = str(tmp_path / "ref.flv")
    async with rung_watched(tmp_path, "180p", "nograce", "video-180p", grace_period=0.0) as (n, url, got):
        rc, out = await run_process(ffmpeg_publish_args(url, ref, seconds=3, size="640x360"), 60)
        assert rc == 0, out
    frames = got.get("video-180p", [])
    assert not got.get("skipped") and min(f.group for f in frames) == 0
    assert len(frames) == video_sent(ref), (len(frames), video_sent(ref))
    assert [len(g) for _, g in sorted(by_group(frames).items())] == group_sizes(ref)


async def test_the_last_rung_group_before_a_publisher_s_gap_is_whole_before_it_returns(tmp_path):
    """A publisher leaves after one 2 s group and comes back within the grace period: the rung's
    group before the gap is whole as soon as the publisher left (not when it returns, nor never),
    and the returning publish's groups are whole too."""
    first, second = str(tmp_path / "1.flv"), str(tmp_path / "2.flv")
    async with rung_watched(tmp_path, "180p", "gap", "video-180p") as (n, url, got):
        rc, out = await run_process(ffmpeg_publish_args(url, first, seconds=2, size="640x360"), 60)
        assert rc == 0, out
        sent = video_sent(first)
        async with asyncio.timeout(2.0):  # well inside the grace period (3 s): no return yet
            while len(got.get("video-180p", [])) < sent:
                await asyncio.sleep(0.02)
        assert n.registry.get("live/gap").publishing is False
        rc, out = await run_process(ffmpeg_publish_args(url, second, seconds=2, size="640x360"), 60)
        assert rc == 0, out
        assert n.registry.get("live/gap").publishes == 2
    groups = by_group(got["video-180p"])
    assert not got.get("skipped")
    assert [len(groups[g]) for g in sorted(groups)] == [sent, video_sent(second)]


def group_sizes(reference: str) -> list[int]:
    """Frames per group (key frame to key frame) of the video in an FLV file."""
    from .publishers import pyav_packets

    sizes: list[int] = []
    for p in (p for ps in pyav_packets(reference).values() for p in ps if p.track == "video"):
        if p.keyframe or not sizes:
            sizes.append(0)
        sizes[-1] += 1
    return sizes


@pytest.mark.parametrize("topology", ["up", "ingest-relay"])
async def test_a_transcoder_node_ends_its_rungs_with_the_source_s_last_frame(tmp_path, topology):
    """`rtmpq transcode --upstream` (its own process) reading over MoQ from `rtmpq up`, or from a
    relay an `rtmpq ingest --upstream` publishes into: ffmpeg (2 B-frames) publishes 3 s and stops;
    `rtmpq sub --rendition 180p` gets the rung's last group whole. The relay ends the source's
    group in progress (its stream's FIN) when the publisher leaves, and the transcoder flushes its
    decoder on that end. Before, the transcoder learnt only the broadcast's end: the rung's last
    group was 2 frames short (28 of 30)."""
    need("ffmpeg")
    from .test_nodes_cli import start

    prtmp, pmoq = free_port(), free_port(socket.SOCK_DGRAM)
    # the broadcast outlives its publisher by 8 s: on a busy host the rung's last frames come well
    # after the publisher left, and nothing reaches the subscriber after the broadcast's end
    env = {**os.environ, "RTMPQ_PUBLISH_GRACE_PERIOD": "8", "RTMPQ_TRANSCODE_RUNG_QUEUE_FRAMES": "120"}
    procs, sub = [], None
    ref = str(tmp_path / "ref.flv")
    try:
        if topology == "up":
            procs.append(await start("up", "--rtmp", f"127.0.0.1:{prtmp}", "--moq", f"127.0.0.1:{pmoq}",
                                     "--http", f"127.0.0.1:{free_port()}", "--state-dir", str(tmp_path / "s"), env=env))
        else:
            procs.append(await start("relay", "--moq", f"127.0.0.1:{pmoq}", "--state-dir", str(tmp_path / "s"),
                                     env=env))
            procs.append(await start("ingest", "--rtmp", f"127.0.0.1:{prtmp}", "--upstream",
                                     f"moqt://127.0.0.1:{pmoq}", "--insecure", env=env))
        procs.append(await start("transcode", "--upstream", f"moqt://127.0.0.1:{pmoq}", "--insecure",
                                 "--ladder", "180p", env=env))
        sub = await JsonSubscriber.start(f"moqt://127.0.0.1:{pmoq}/live/tail", "--rendition", "180p", "--seconds",
                                         "40", "--delivery-timeout", "15")
        await wait_tcp(prtmp)
        rc, out = await run_process(ffmpeg_publish_args(f"rtmp://127.0.0.1:{prtmp}/live/tail", ref, seconds=3,
                                                        size="640x360"), timeout=60)
        assert rc == 0, out
        sizes = group_sizes(ref)

        def rung_frames() -> dict[int, int]:
            rung: dict[int, int] = {}
            for o in sub.lines:
                if o.get("track") == "video-180p":
                    rung[o["group"]] = rung.get(o["group"], 0) + 1
            return rung

        # the rung's last group whole, or the broadcast's end (the subscriber's): what follows is not needed
        await sub.until(lambda: rung_frames().get(len(sizes) - 1) == sizes[-1], 60)
        lines, out = sub.lines, sub.text()
    finally:
        if sub is not None:
            await sub.stop()
        await stop_nodes(procs)
    rung = rung_frames()
    assert not [line for line in lines if "skipped" in line], out[-2000:]
    assert rung and max(rung) == len(sizes) - 1, (rung, sizes)
    assert all(n == sizes[g] for g, n in rung.items()), (rung, sizes, out[-3000:])


def ffmpeg_live_args(url: str, seconds: float, video: bool = True) -> list[str]:
    """A live ffmpeg publish of 320x240 video in 1 s GoPs (``video``) and AAC audio."""
    encode = list(VIDEO_ENCODE)
    encode[encode.index("-g") + 1] = encode[encode.index("-keyint_min") + 1] = "30"
    return ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-re",
            *(["-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30"] if video else []),
            "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100", "-t", str(seconds),
            *(encode if video else ["-vn"]), *AUDIO_ENCODE, "-flags", "+global_header", "-f", "flv", url]


@pytest.mark.parametrize("isolate,backend", [(False, "aioquic"), (True, "aioquic"), (True, "aiopquic")],
                         ids=["threads", "child-aioquic", "child-aiopquic"])
async def test_a_rung_is_listed_again_as_soon_as_its_track_is_back(tmp_path, isolate, backend):
    """`rtmpq up --ladder 180p`, a player on the rung ``video-180p``; the ffmpeg publisher comes
    back (within the grace period) with audio only, so the video and its rung leave, then with
    video again: the rung is in the multivariant playlist again within a few seconds of the
    catalog listing it, and plays. Before, it was listed only once the edge let its old pull go,
    [http] rendition_idle (15 s by default, as here) after the player's last request."""
    need("ffmpeg")
    from .test_nodes_cli import get_when_ready

    config = local_config(tmp_path, backend, grace_period=30.0,
                          transcode=TranscodeConfig(ladder="180p", isolate=isolate, idle_stop=1.0))
    node = UpNode(config)
    await node.start()
    url = f"rtmp://127.0.0.1:{node.rtmp.address[1]}/live/back"
    base = f"http://127.0.0.1:{node.edge.address[1]}/live/back"

    def names() -> list[str]:  # the broadcast's tracks, with the rungs a child added through the relay
        return [t.name for t in (*node.registry.get("live/back").catalog.tracks, *node.moq.added_tracks("live/back"))]

    async def listed(rung: bool, deadline: float = 30) -> str:
        async with asyncio.timeout(deadline):
            while ("video-180p.m3u8" in (text := (await get_when_ready(f"{base}/index.m3u8")).decode())) != rung:
                await asyncio.sleep(0.1)
        return text

    publisher = None
    try:
        publisher = asyncio.create_task(run_process(ffmpeg_live_args(url, 20), timeout=60))
        await listed(True)
        await get_when_ready(f"{base}/video-180p.m3u8")  # a player on the rung: the edge pulls it
        await end_live_publish(publisher)
        publisher = asyncio.create_task(run_process(ffmpeg_live_args(url, 20, video=False), timeout=60))
        await listed(False)  # the video left, and its rung with it
        assert names() == ["audio"], names()
        await end_live_publish(publisher)
        publisher = asyncio.create_task(run_process(ffmpeg_live_args(url, 20), timeout=60))
        await until(lambda: "video-180p" in names(), 30, "the rung in the catalog again")
        # listed again well before rendition_idle (as a rung nobody pulled yet is), and pulled anew it plays
        await listed(True, deadline=RUNG_BACK_WITHIN)
        playlist = (await get_when_ready(f"{base}/video-180p.m3u8")).decode()
        assert "#EXTINF" in playlist, playlist
    finally:
        if publisher is not None:
            await drop_publish(publisher)
        await node.close()

