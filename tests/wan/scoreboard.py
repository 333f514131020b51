"""WAN profiles through the impairment proxy, each judged object by object.

    python -m tests.wan.scoreboard [--backends aioquic,aiopquic] [--profiles a,b] [--seconds 20]
                                   [--layout apart|subscriber|in-process] [--cpu-burners N]
                                   [--write-docs docs/reliability.md]      (make wan)

A real 720p stream (x264, ~2.5 Mbit/s, 1 s GOPs, AAC) is encoded once to an FLV file, which is
also the reference: each profile publishes it in real time over RTMP to an in-process `rtmpq up`,
and one MoQ subscriber (same QUIC backend as the node) reads it through rtmpq.netem with the
profile's impairment and its delivery budget. As in production, the subscriber is not on the
relay's event loop: by default (``--layout apart``) the proxy and the subscriber each run in a
child process of their own and the subscriber sends what it got back as JSON on its stdout, so
the relay's loop is not shared with a pure-Python QUIC client and proxy (``--layout in-process``:
all on one loop, as before). The subscriber goes first and the publisher starts once its MoQ
session is up; a subscriber that never gets ready is a HARNESS FAILURE, no verdict on the profile
(exit code 2 when nothing else failed). The scoreboard checks every object the subscriber got
against the reference:

- complete: the object is a reference packet, same timestamps, keyframe flag and size;
- in order within its group: object ids arrive 0, 1, 2, ... per group;
- groups start on an IDR: object 0 of every video group is a keyframe;
- skipped groups signalled: any reference packet missing between the first and the last object
  received lies in a group the relay reset (the subscriber saw SkippedGroup), never silently;
- latency within budget: arrival minus ingest time at most budget + RTT + bottleneck queueing +
  0.3 s slack (tolerance: 1 % of objects, for a loaded machine);
- arrived share: delivered objects / reference objects from the subscriber's first group to the
  end, at least the profile's stated minimum (a subscriber that got nothing cannot pass).
"""

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from rtmpq.config import Config, HttpConfig, IngestConfig, MoqConfig, PublishConfig
from rtmpq.media.catalog import Catalog
from rtmpq.moq.client import SkippedGroup, subscribe_broadcast
from rtmpq.moq.transport import connect_moq
from rtmpq.netem import Impairment, ImpairmentProxy
from rtmpq.nodes.up import UpNode

ROOT = Path(__file__).resolve().parents[2]
# The publisher starts only once the subscriber's MoQ session is up (its child process says so):
# on a loaded machine (load >= 7) an interpreter started after the publisher could join after a
# short stream had ended. A subscriber not ready within this many seconds (QUIC's handshake through
# the profile's impairment included) is a failure of the harness, not of the profile.
SUBSCRIBER_READY_TIMEOUT = 60.0
# Seconds the ready subscriber waits for the broadcast to go live (ffmpeg's start-up and RTMP).
SUBSCRIBER_WAIT = 30.0


@dataclass
class Profile:
    name: str
    describe: str
    up: Impairment
    down: Impairment
    budget: float  # the subscriber's delivery timeout (s)
    min_share: float  # objects that must arrive, of those published after joining
    min_audio_share: float = 0.0
    blackhole: tuple[float, float] | None = None  # (at s, for s) after the subscriber's first object

    @property
    def rtt(self) -> float:
        return (self.up.delay_ms + self.down.delay_ms + self.up.jitter_ms + self.down.jitter_ms) / 1000

    @property
    def queueing(self) -> float:
        return self.down.queue_bytes * 8 / self.down.rate_bps if self.down.rate_bps else 0.0


def _both(**kw) -> tuple[Impairment, Impairment]:
    down = dict(kw)
    up = {k: v for k, v in kw.items() if k not in ("rate_bps", "queue_bytes")}
    return Impairment(**up), Impairment(**down)


PROFILES = {p.name: p for p in [
    Profile("15ms-10mbit", "15 ms RTT, 10 Mbit/s down", *_both(delay_ms=7.5, rate_bps=10e6, queue_bytes=64_000),
            budget=1.0, min_share=0.99),
    Profile("750ms-rtt", "750 ms RTT", *_both(delay_ms=375), budget=2.0, min_share=0.97),
    Profile("loss-2pct", "2 % random loss each way, 50 ms RTT", *_both(delay_ms=25, loss=0.02),
            budget=2.0, min_share=0.95),
    Profile("loss-30pct", "30 % random loss each way, 50 ms RTT", *_both(delay_ms=25, loss=0.30),
            budget=2.0, min_share=0.05),
    Profile("bursty", "Gilbert-Elliott loss (p=1 %, r=30 %: ~3 %, bursts of ~3), 50 ms RTT",
            *_both(delay_ms=25, burst_p=0.01, burst_r=0.3), budget=2.0, min_share=0.90),
    Profile("reorder", "5 % of packets 30 ms late, 50 ms RTT, 5 ms jitter",
            *_both(delay_ms=25, jitter_ms=5, reorder=0.05, reorder_ms=30), budget=1.0, min_share=0.98),
    Profile("blackhole-5s", "5 s blackhole both ways, then recovery; 50 ms RTT", *_both(delay_ms=25),
            budget=2.0, min_share=0.55, blackhole=(5.0, 5.0)),
    Profile("below-bitrate", "1.5 Mbit/s down for a ~2.6 Mbit/s stream, 32 kB queue, 50 ms RTT",
            *_both(delay_ms=25, rate_bps=1.5e6, queue_bytes=32_000), budget=1.0, min_share=0.3,
            min_audio_share=0.9),
]}


def encode_720p(path: Path, seconds: float) -> Path:
    """The reference: 1280x720 30 fps with noise (so it really is ~2.5 Mbit/s), 1 s GOPs, AAC."""
    if path.exists() and path.stat().st_mtime > 0 and path.with_suffix(".seconds").exists() \
            and float(path.with_suffix(".seconds").read_text()) == seconds:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([
        "ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
        "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30,noise=alls=12:allf=t",
        "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", str(seconds),
        "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-bf", "0", "-g", "30",
        "-keyint_min", "30", "-sc_threshold", "0", "-b:v", "2500k", "-maxrate", "2500k", "-bufsize", "1250k",
        "-c:a", "aac", "-b:a", "128k", "-ac", "2", "-f", "flv", str(path)], check=True)
    path.with_suffix(".seconds").write_text(str(seconds))
    return path


@dataclass
class Result:
    backend: str
    profile: Profile
    objects: int = 0
    reference: int = 0
    share: float = 0.0
    audio_share: float = 0.0
    video_share: float = 0.0
    skipped: int = 0
    incomplete: int = 0
    out_of_order: int = 0
    not_idr: int = 0
    unsignalled: int = 0
    late: int = 0
    p50: float = 0.0
    p99: float = 0.0
    worst: float = 0.0
    limit: float = 0.0
    after_blackhole: int = 0
    relay_cpu: float = 0.0  # share of a core the scoreboard's process (relay, ingest) used
    load: float = 0.0  # the machine's 1-minute load average at the profile's end
    errors: list = field(default_factory=list)
    # why the harness could not run the profile (its subscriber never got ready): no verdict on it
    harness: str = ""

    @property
    def passed(self) -> bool:
        p = self.profile
        return (not self.harness and not self.errors and self.objects > 0 and self.incomplete == 0 and self.out_of_order == 0
                and self.not_idr == 0 and self.unsignalled == 0 and self.late <= 0.01 * self.objects
                and self.share >= p.min_share and self.audio_share >= p.min_audio_share
                and (p.blackhole is None or self.after_blackhole > 0))


def judge(result: Result, reference: list, got: list, skipped: list, blackhole_end: float | None) -> Result:
    """Fill ``result`` from the reference packets, the (arrival, lateness, Frame) list and skips."""
    from tests.publishers import Packet

    p = result.profile
    ref_by_track: dict[str, list] = {}
    for pk in reference:
        ref_by_track.setdefault(pk.track, []).append(pk)
    skipped_groups = {(s.track, s.group) for s in skipped}
    result.skipped = len(skipped_groups)
    result.limit = p.budget + p.rtt + p.queueing + 0.3
    lateness = sorted(lat for _, lat, _ in got)
    result.objects = len(got)
    if lateness:
        result.p50 = lateness[len(lateness) // 2]
        result.p99 = lateness[min(len(lateness) - 1, int(len(lateness) * 0.99))]
        result.worst = lateness[-1]
    result.late = sum(1 for lat in lateness if lat > result.limit)
    if blackhole_end is not None:
        result.after_blackhole = sum(1 for t, _, _ in got if t > blackhole_end)
    shares = {}
    total_ref = 0
    for track, refs in ref_by_track.items():
        mine = [f for _, _, f in got if f.track == track]
        ref_set = set(refs)
        for f in mine:
            if Packet(f.track, f.dts, f.pts, f.keyframe, f.size) not in ref_set:
                result.incomplete += 1
        groups: dict[int, list] = {}
        for f in mine:
            groups.setdefault(f.group, []).append(f)
        for g, frames in groups.items():
            if [f.index for f in frames] != list(range(len(frames))):
                result.out_of_order += 1
            if track == "video" and not frames[0].keyframe:
                result.not_idr += 1
        if not mine:
            continue
        # each reference packet from the subscriber's first one on: received, or inside a group the
        # relay said it skipped (between the groups of its received neighbours)
        by_dts = {f.dts: f for f in mine}
        first = min(by_dts)
        window = [pk for pk in refs if pk.dts >= first]
        total_ref += len(window)
        shares[track] = len(mine) / max(len(window), 1)
        prev = None
        missing_run = []
        for pk in window:
            f = by_dts.get(pk.dts)
            if f is None:
                missing_run.append(pk)
                continue
            if missing_run and prev is not None:
                covered = any((track, g) in skipped_groups for g in range(prev.group, f.group + 1))
                if prev.group == f.group or not covered:
                    result.unsignalled += len(missing_run)
            missing_run = []
            prev = f
        if missing_run and prev is not None and (track, prev.group) not in skipped_groups \
                and not any(g > prev.group for t, g in skipped_groups if t == track):
            # the tail after the last object: fine only if the stream really ended there (the relay
            # ends a broadcast's groups when the publisher leaves: at most the last group's tail)
            if len(missing_run) > 60:
                result.unsignalled += len(missing_run)
    result.reference = total_ref
    result.share = result.objects / max(total_ref, 1)
    result.video_share = shares.get("video", 0.0)
    result.audio_share = shares.get("audio", 0.0)
    return result


def node_config(tmp: Path, backend: str) -> Config:
    return Config(rtmp=IngestConfig(host="127.0.0.1", port=0),
                  moq=MoqConfig(host="127.0.0.1", port=0, state_dir=tmp / "state", backend=backend),
                  http=HttpConfig(host="127.0.0.1", port=0), publish=PublishConfig(grace_period=0))


LAYOUTS = {
    "apart": "relay and ingest in the scoreboard's process; the impairment proxy and the MoQ subscriber each in a child process",
    "subscriber": "relay and ingest in the scoreboard's process; the proxy and the subscriber together in one child process",
    "in-process": "relay, ingest, proxy and subscriber on one event loop in one process (the runs before 2026-11-28 09:00 UTC)",
}


def _frame_row(t: float, lateness: float, f) -> list:
    return [t, lateness, f.track, f.group, f.index, f.dts, f.pts, f.keyframe, f.size]


def _frame_from_row(row: list):
    from rtmpq.media.frames import Frame

    t, lateness, track, group, index, dts, pts, keyframe, size = row
    return t, lateness, Frame(track, group, index, dts, pts, keyframe, bytes(size))


async def subscribe_profile(port: int, name: str, profile: Profile, backend: str, on_first, *,
                            budget_ms: int | None = -1, timeout: float = 120, wait: float = 0.0,
                            on_ready=lambda now: None) -> dict:
    """One MoQ subscriber through the proxy on ``port``: every object as (arrival on the monotonic
    clock, which all processes of the machine share; lateness from ingest; the frame), the skips,
    and when the profile's blackhole ends. ``on_first(now)`` starts the blackhole; ``on_ready(now)``
    is called once the MoQ session is up, just before the SUBSCRIBE (a broadcast not live yet is
    waited for ``wait`` seconds). ``budget_ms``: the profile's budget unless given (None: the
    relay's default)."""
    if budget_ms == -1:
        budget_ms = int(profile.budget * 1000)
    out = {"got": [], "skipped": [], "blackhole_end": None, "errors": []}

    async def subscribe():
        async with connect_moq("127.0.0.1", port, insecure=True, timeout=30, backend=backend) as conn:
            on_ready(time.monotonic())
            async for item in subscribe_broadcast(conn, name, delivery_timeout_ms=budget_ms, wait=wait):
                now = time.monotonic()
                if isinstance(item, SkippedGroup):
                    out["skipped"].append(item)
                elif not isinstance(item, Catalog):
                    if not out["got"] and profile.blackhole:
                        at, seconds = profile.blackhole
                        on_first(now)
                        out["blackhole_end"] = now + at + seconds
                    out["got"].append((now, (time.time_ns() - item.received_ns) / 1e9, item))

    try:
        await asyncio.wait_for(subscribe(), timeout)
    except Exception as exc:  # noqa: BLE001 - a profile's failure is a scoreboard line, not a crash
        out["errors"].append(f"{type(exc).__name__}: {exc}")
    return out


def _child(*args: str, stdin: bool = False):
    return asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.wan.scoreboard", *args, cwd=ROOT, stdout=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL, limit=1 << 28)


async def _subscriber_child(args: list[str], on_line=lambda msg: None, timeout: float = 160) -> dict:
    """Run a --role subscriber child; its last line is the JSON result, earlier JSON lines events."""
    proc = await _child("--role", "subscriber", *args)
    result = None
    try:
        async with asyncio.timeout(timeout):
            async for line in proc.stdout:
                msg = json.loads(line)
                if "got" in msg:
                    result = msg
                else:
                    on_line(msg)
            await proc.wait()
    except TimeoutError:
        pass
    finally:  # (also when cancelled: a subscriber that never got ready)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if result is None:
        return {"got": [], "skipped": [], "blackhole_end": None,
                "errors": [f"the subscriber process exited {proc.returncode} without a result"]}
    result["got"] = [_frame_from_row(r) for r in result["got"]]
    result["skipped"] = [SkippedGroup(*s) for s in result["skipped"]]
    return result


async def subscribe_in_child(target: tuple[str, int], name: str, up: Impairment, down: Impairment, *,
                             backend: str, seed: int = 1, budget_ms: int | None = None,
                             timeout: float = 60, wait: float = 0.0, on_ready=lambda now: None) -> dict:
    """One subscriber behind its own impairment proxy, both in a child process (as a viewer on
    another machine would be): {"got": [(arrival, lateness, Frame)], "skipped": [SkippedGroup],
    "errors": [...], "proxy": {"up"/"down": DirectionStats fields}}. ``budget_ms`` None: the
    relay's default delivery timeout; ``wait``: seconds the broadcast may take to go live;
    ``on_ready(now)`` once its MoQ session is up (see subscriber_ready)."""
    from dataclasses import asdict

    def on_line(msg):
        if "ready" in msg:
            on_ready(msg["ready"])

    return await _subscriber_child(
        ["--target", f"{target[0]}:{target[1]}", "--with-proxy", "--name", name, "--backend", backend,
         "--seed", str(seed), "--impair", json.dumps({"up": asdict(up), "down": asdict(down)}),
         "--budget-ms", "default" if budget_ms is None else str(budget_ms), "--timeout", str(timeout), "--wait", str(wait)],
        on_line, timeout=timeout + 30)


async def subscriber_ready(ready: asyncio.Event, subscriber: asyncio.Future, timeout: float) -> str | None:
    """Wait until ``ready`` is set (the subscriber's MoQ session is up: the publisher may start) or
    the ``subscriber`` task ends, at most ``timeout`` seconds (SUBSCRIBER_READY_TIMEOUT): None once
    ready, else why it did not get ready."""
    readiness = asyncio.ensure_future(ready.wait())
    await asyncio.wait({readiness, subscriber}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    readiness.cancel()
    if ready.is_set():
        return None
    if not subscriber.done():
        return f"not within {timeout:g} s"
    if subscriber.exception() is not None:
        return repr(subscriber.exception())
    return "; ".join(subscriber.result()["errors"]) or "it ended"


async def run_profile(node: UpNode, profile: Profile, flv: Path, reference: list, *, seed: int = 1,
                      layout: str = "apart") -> Result:
    ready_timeout = SUBSCRIBER_READY_TIMEOUT
    result = Result(node.config.moq.backend, profile)
    backend = node.config.moq.backend
    name = f"live/wan-{profile.name}"
    loop = asyncio.get_running_loop()
    host, port = node.moq_address
    common = ["--name", name, "--profile", profile.name, "--backend", backend, "--seed", str(seed),
              "--wait", str(SUBSCRIBER_WAIT)]
    ready = asyncio.Event()
    proxy = blackhole = publisher = None
    finished = False

    def on_line(msg):
        if "ready" in msg:
            ready.set()
        elif "first" in msg and blackhole is not None:
            blackhole()

    async with contextlib.AsyncExitStack() as stack:
        # the subscriber first: the publisher starts once its session is up (SUBSCRIBER_READY_TIMEOUT)
        if layout == "in-process":
            in_process = await stack.enter_async_context(
                ImpairmentProxy(target=node.moq_address, up=profile.up, down=profile.down, seed=seed))
            subscriber = asyncio.ensure_future(subscribe_profile(
                in_process.port, name, profile, backend,
                lambda now: loop.call_later(profile.blackhole[0], in_process.blackhole, profile.blackhole[1]),
                wait=SUBSCRIBER_WAIT, on_ready=lambda now: ready.set()))
        elif layout == "subscriber":
            subscriber = asyncio.ensure_future(_subscriber_child(
                ["--target", f"{host}:{port}", "--with-proxy", *common], on_line))
        else:
            proxy = await _child("--role", "proxy", "--target", f"{host}:{port}", *common, stdin=True)
            stack.push_async_callback(_stop_proxy, proxy)
            proxy_port = json.loads(await proxy.stdout.readline())["port"]
            if profile.blackhole:  # the subscriber's first object: the blackhole starts `at` seconds later
                at, seconds = profile.blackhole
                blackhole = lambda: loop.call_later(at, proxy.stdin.write, f"blackhole {seconds}\n".encode())  # noqa: E731
            subscriber = asyncio.ensure_future(_subscriber_child(["--target", f"127.0.0.1:{proxy_port}", *common],
                                                                 on_line))
        try:
            why = await subscriber_ready(ready, subscriber, ready_timeout)
            if why is not None:
                result.harness = f"the subscriber never got ready ({why})"
                result.load = os.getloadavg()[0]
                return result
            publisher = await asyncio.create_subprocess_exec(
                "ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-re", "-i", str(flv), "-c", "copy",
                "-f", "flv", f"rtmp://127.0.0.1:{node.rtmp.address[1]}/{name}",
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
            await node.registry.wait_for(name, 15)
            cpu0, wall0 = time.process_time(), time.monotonic()
            out = await subscriber
            result.relay_cpu = (time.process_time() - cpu0) / max(time.monotonic() - wall0, 1e-3)
            finished = True
        finally:
            if not subscriber.done():
                subscriber.cancel()
                await asyncio.gather(subscriber, return_exceptions=True)
            if publisher is not None and not finished and publisher.returncode is None:
                publisher.kill()
                await publisher.wait()
    result.load = os.getloadavg()[0]
    result.errors += out["errors"]
    _, err = await publisher.communicate()
    if publisher.returncode != 0:
        result.errors.append(f"publisher exited {publisher.returncode}: {err.decode()[-300:]}")
    return judge(result, reference, out["got"], out["skipped"], out["blackhole_end"])


async def _stop_proxy(proxy) -> None:
    """A --role proxy child ends when its stdin closes."""
    proxy.stdin.close()
    try:
        async with asyncio.timeout(10):
            await proxy.wait()
    except TimeoutError:
        proxy.kill()
        await proxy.wait()


async def child_main(args) -> int:
    """--role proxy: the profile's impairment proxy in front of --target; prints {"port": N}, then
    obeys "blackhole SECONDS" lines on stdin until it closes. --role subscriber: one subscriber
    through --target (with --with-proxy: through its own proxy in front of --target); prints
    {"first": t} at the first object, then the result as one JSON line."""
    if args.impair:  # a path of the caller's (tests/test_moq_wan.py), not one of the profiles
        both = json.loads(args.impair)
        profile = Profile("custom", "", Impairment(**both["up"]), Impairment(**both["down"]), budget=0, min_share=0)
    else:
        profile = PROFILES[args.profile]
    budget = {"budget_ms": None if args.budget_ms == "default" else int(args.budget_ms)} if args.budget_ms else {}
    budget["timeout"], budget["wait"] = args.timeout, args.wait
    host, port = args.target.rsplit(":", 1)
    target = (host, int(port))
    loop = asyncio.get_running_loop()
    if args.role == "proxy":
        async with ImpairmentProxy(target=target, up=profile.up, down=profile.down, seed=args.seed) as proxy:
            print(json.dumps({"port": proxy.port}), flush=True)
            reader = asyncio.StreamReader()
            await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
            async for line in reader:
                cmd, _, value = line.decode().partition(" ")
                if cmd == "blackhole":
                    proxy.blackhole(float(value))
        return 0

    def ready(now):
        print(json.dumps({"ready": now}), flush=True)

    def first(now, proxy=None):
        print(json.dumps({"first": now}), flush=True)
        if proxy is not None:
            loop.call_later(profile.blackhole[0], proxy.blackhole, profile.blackhole[1])

    if args.with_proxy:
        async with ImpairmentProxy(target=target, up=profile.up, down=profile.down, seed=args.seed) as proxy:
            out = await subscribe_profile(proxy.port, args.name, profile, args.backend, lambda now: first(now, proxy),
                                          on_ready=ready, **budget)
            out["proxy"] = {d: vars(st) for d, st in proxy.stats.items()}
    else:
        out = await subscribe_profile(target[1], args.name, profile, args.backend, first, on_ready=ready, **budget)
    out["got"] = [_frame_row(*g) for g in out["got"]]
    out["skipped"] = [[s.track, s.group, s.code] for s in out["skipped"]]
    print(json.dumps(out), flush=True)
    return 0


# A CPU burner (--cpu-burners) gives up on its own after this long, should its parent die unseen.
BURNER_MAX_SECONDS = 3600.0


def burn(max_seconds: float = BURNER_MAX_SECONDS) -> int:
    """--role burner: spin one core until the parent goes (or ``max_seconds``): a busy host."""
    parent, end = os.getppid(), time.monotonic() + max_seconds
    while time.monotonic() < end and os.getppid() == parent:
        for _ in range(200_000):
            pass
    return 0


def start_burners(n: int) -> list[subprocess.Popen]:
    """``n`` child processes that each keep one core busy (at most one per core of the machine)."""
    n = max(0, min(n, os.cpu_count() or 1))
    return [subprocess.Popen([sys.executable, "-m", "tests.wan.scoreboard", "--role", "burner"], cwd=ROOT,
                             stdin=subprocess.DEVNULL) for _ in range(n)]


def stop_burners(burners: list[subprocess.Popen]) -> None:
    for b in burners:
        b.kill()
    for b in burners:
        b.wait()


def verdict(r: Result) -> str:
    if r.harness:
        return f"HARNESS FAILURE (no verdict on the profile): {r.harness}"
    return 'pass' if r.passed else 'FAIL' + (': ' + '; '.join(r.errors) if r.errors else '')


def table(results: list[Result]) -> str:
    lines = [
        "| backend | profile | budget | arrived (min) | video / audio | skipped groups | p50 / p99 / max latency (limit) | incomplete, out of order, not IDR, unsignalled, late | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        p = r.profile
        lines.append(
            f"| {r.backend} | {p.name}: {p.describe} | {p.budget:g} s | {r.share:.1%} ({p.min_share:.0%}) "
            f"| {r.video_share:.1%} / {r.audio_share:.1%} | {r.skipped} | {r.p50:.2f} / {r.p99:.2f} / {r.worst:.2f} s "
            f"({r.limit:.2f}) | {r.incomplete}, {r.out_of_order}, {r.not_idr}, {r.unsignalled}, {r.late} "
            f"| {verdict(r)} |")
    return "\n".join(lines)


async def run_all(backends: list[str], profiles: list[str], seconds: float, tmp: Path,
                  layout: str = "apart", cpu_burners: int = 0) -> list[Result]:
    from tests.publishers import probe_packets

    flv = encode_720p(ROOT / "var/wan/720p.flv", seconds)
    reference = probe_packets(str(flv))
    results = []
    burners = start_burners(cpu_burners)
    try:
        await _run_profiles(backends, profiles, flv, reference, tmp, layout, results)
    finally:
        stop_burners(burners)
    return results


async def _run_profiles(backends, profiles, flv, reference, tmp, layout, results) -> None:
    for backend in backends:
        for name in profiles:
            node = UpNode(node_config(tmp / backend / name, backend))
            await node.start()
            try:
                r = await run_profile(node, PROFILES[name], flv, reference, layout=layout)
            finally:
                await node.close()
            print(table([r]).splitlines()[-1], f"(load {r.load:.1f}, relay process {r.relay_cpu:.0%} of a core)",
                  flush=True)
            results.append(r)


def write_docs(path: Path, results: list[Result], command: str, seconds: float, layout: str,
               cpu_burners: int = 0) -> None:
    text = path.read_text() if path.exists() else "# Reliability\n"
    start, end = "<!-- wan-scoreboard:start -->", "<!-- wan-scoreboard:end -->"
    bitrate = os.path.getsize(ROOT / "var/wan/720p.flv") * 8 / seconds / 1e6
    loads = [r.load for r in results]
    block = (f"{start}\nMeasured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} with `{command}`: "
             f"a {seconds:g} s 1280x720 30 fps stream at {bitrate:.1f} Mbit/s (video + audio), one "
             f"subscriber per profile; {LAYOUTS[layout]}"
             f"{f'; {cpu_burners} CPU burner(s) spinning a core each' if cpu_burners else ''}; load average {min(loads):.1f}–{max(loads):.1f}."
             f"\n\n{table(results)}\n{end}")
    if start in text:
        text = text[:text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text += "\n" + block + "\n"
    path.write_text(text)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backends", default="aioquic,aiopquic")
    ap.add_argument("--profiles", default=",".join(PROFILES))
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--layout", choices=list(LAYOUTS), default="apart",
                    help="; ".join(f"{k}: {v}" for k, v in LAYOUTS.items()))
    ap.add_argument("--cpu-burners", type=int, default=0,
                    help="child processes that each spin one core for the whole run (a busy host; "
                         "at most one per core)")
    ap.add_argument("--write-docs", help="put the scoreboard table into this Markdown file")
    ap.add_argument("--role", choices=["all", "proxy", "subscriber", "burner"], default="all", help=argparse.SUPPRESS)
    for hidden in ("--target", "--name", "--profile", "--backend"):
        ap.add_argument(hidden, help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--with-proxy", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--impair", help=argparse.SUPPRESS)  # JSON {"up": {...}, "down": {...}}
    ap.add_argument("--budget-ms", help=argparse.SUPPRESS)  # N, or "default"
    ap.add_argument("--timeout", type=float, default=120, help=argparse.SUPPRESS)
    ap.add_argument("--wait", type=float, default=0.0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role == "burner":
        return burn()
    if args.role != "all":
        return asyncio.run(child_main(args))
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        results = asyncio.run(run_all(args.backends.split(","), args.profiles.split(","), args.seconds, Path(tmp),
                                      args.layout, args.cpu_burners))
    print(table(results))
    harness = [r for r in results if r.harness]
    if harness:
        print(f"{len(harness)} profile run(s) not judged: the harness failed ({harness[0].harness})", file=sys.stderr)
    if args.write_docs:
        write_docs(Path(args.write_docs), results, "make wan", args.seconds, args.layout, args.cpu_burners)
    # 1: a profile failed; 2: none failed, but the harness could not run some
    return 1 if any(not r.passed and not r.harness for r in results) else 2 if harness else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
