"""What [transcode] isolate costs: `rtmpq up --ladder 480p,360p` with the ladder on threads of the
node's process, and in a child process (`rtmpq transcode` over the node's own MoQ listener), in
one run.

    .venv/bin/python -m pytest bench/bench_transcode_isolate.py -s -k cost
    .venv/bin/python -m pytest bench/bench_transcode_isolate.py -s -k latency   # BENCH_ISOLATE_RUNS=3

test_isolate_cost, CPU and memory:

Per mode: a fresh `rtmpq up` process; a 720p30 H.264 file (bench_transcode.make_source, 20 s)
replayed in real time over RTMP (`ffmpeg -re -c copy`); one `rtmpq sub --rendition` per rung over
MoQ, so both rungs are made for the whole publish. CPU is the user + system time of `up` and of
every process it started and reaped (its transcoder child), from wait4 on `up`: start-up,
the publish, the stop; the subscribers and the publisher are not counted. Peak RSS is the largest
of `up` and its child (ru_maxrss of each, read from /proc while the publish goes on).

test_isolate_latency, what the child's hop adds to the rungs: per mode a fresh `up` (the default
settings but a 2 s publish grace period), the same file without and with B-frames replayed the
same way; one MoQ session in this process subscribed to the source video and to both rungs. For
each rung frame: its arrival minus the arrival of the source frame with the same pts (the LOC
timestamp); the rung's first group left out, as in bench_transcode.py. The modes alternate (and
which goes first), BENCH_ISOLATE_RUNS runs of each; the load average (1 min) before and after each.
"""

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bench_transcode import LADDER, SECONDS, make_source, pct

PORTS = {"rtmp": 45001, "moq": 45002, "http": 45003}  # the range this bench may use
LATENCY_PORTS = {"rtmp": 48601, "moq": 48602, "http": 48603}  # test_isolate_latency's (another range)
RUNGS = ("video-480p", "video-360p")
LATENCY_RUNS = int(os.environ.get("BENCH_ISOLATE_RUNS", "3"))  # per mode and source
GRACE_PERIOD = "2"  # s: the broadcast (and the subscription) ends soon after the publisher
SUBSCRIBER_END_WAIT = 30.0  # s after the publisher: the subscription ends by then (grace periods)
BROADCAST_WAIT = 20.0  # s the subscriber waits for the broadcast to go live


def vm_hwm_kib(pid: int) -> int:
    try:
        return int(re.search(r"VmHWM:\s+(\d+)", Path(f"/proc/{pid}/status").read_text()).group(1))
    except (OSError, AttributeError):
        return 0


def start_up(isolate: bool, state: Path, ports: dict, env: dict | None = None) -> tuple:
    """A fresh `rtmpq up --ladder 480p,360p` on ``ports``, returned once it listens: (the process,
    the PIDs of the transcoder children it starts (isolated: one per broadcast, started with its
    publish; filled in as they start), the thread that drains its stderr)."""
    env = {**os.environ, "RTMPQ_TRANSCODE_ISOLATE": "true" if isolate else "false", **(env or {})}
    up = subprocess.Popen([sys.executable, "-m", "rtmpq", "up", "--ladder", LADDER,
                           "--rtmp", f"127.0.0.1:{ports['rtmp']}", "--moq", f"127.0.0.1:{ports['moq']}",
                           "--http", f"127.0.0.1:{ports['http']}", "--state-dir", str(state)],
                          env=env, stderr=subprocess.PIPE, text=True)
    for line in up.stderr:
        if "certificate sha256" in line:
            break
    children: list[int] = []

    def read() -> None:  # (a full pipe would stop the node's logging)
        for line in up.stderr:
            m = re.search(r"transcoder: child process pid (\d+)", line)
            if m:
                children.append(int(m.group(1)))

    drain = threading.Thread(target=read)
    drain.start()
    return up, children, drain


def stop_up(up: subprocess.Popen, drain: threading.Thread):
    """SIGTERM, then the rusage of `up` and of every process it reaped (wait4)."""
    up.send_signal(signal.SIGTERM)
    drain.join()
    _, status, usage = os.wait4(up.pid, 0)
    up.returncode = os.waitstatus_to_exitcode(status)
    return usage


def run_mode(isolate: bool, source: Path, state: Path) -> dict:
    up, children, drain = start_up(isolate, state, PORTS, {"RTMPQ_TRANSCODE_RUNG_QUEUE_FRAMES": "120"})
    subs = [subprocess.Popen([sys.executable, "-m", "rtmpq", "sub", f"moqt://127.0.0.1:{PORTS['moq']}/live/bench",
                              "--insecure", "--json", "--rendition", rung, "--seconds", str(SECONDS + 15)],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for rung in ("480p", "360p")]
    time.sleep(1.0)  # the subscribers wait for the broadcast
    publisher = subprocess.Popen(["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-re", "-i", str(source),
                                  "-c", "copy", "-f", "flv", f"rtmp://127.0.0.1:{PORTS['rtmp']}/live/bench"])
    rss = 0
    while publisher.poll() is None:
        rss = max(rss, vm_hwm_kib(up.pid) + sum(vm_hwm_kib(child) for child in children))
        time.sleep(0.5)
    rung_frames = {}
    for rung, sub in zip(("480p", "360p"), subs):
        out, _ = sub.communicate()
        rung_frames[rung] = len(re.findall(rf'"track": ?"video-{rung}"', out))
    usage = stop_up(up, drain)
    return {"cpu": usage.ru_utime + usage.ru_stime, "rss_mib": rss / 1024, "frames": rung_frames}


@pytest.mark.skipif(sys.platform != "linux", reason="wait4 and /proc")
def test_isolate_cost(tmp_path):
    source = make_source(tmp_path / "source.mp4")
    results = {}
    for isolate in (False, True):
        results["child process" if isolate else "in process"] = run_mode(isolate, source, tmp_path / "state")
    print(f"\n`rtmpq up --ladder 480p,360p`, {SECONDS} s of 720p30 replayed, both rungs watched:")
    for mode, r in results.items():
        print(f"  {mode:14s} CPU {r['cpu']:6.2f} s ({100 * r['cpu'] / SECONDS:5.1f} % of a core over the publish), "
              f"peak RSS {r['rss_mib']:6.0f} MiB, rung frames received {r['frames']}")
    base, iso = results["in process"]["cpu"], results["child process"]["cpu"]
    print(f"  isolate costs {iso - base:+.2f} s CPU ({100 * (iso - base) / base:+.0f} %)")


async def watch_rungs(stamps: dict) -> None:
    """One MoQ session subscribed to the source video and to every rung; each frame's arrival
    (monotonic ns) by track and pts, and the groups skipped (a rung that fell behind drops to its
    next group and says so), until the broadcast ends."""
    from rtmpq.media.frames import Frame
    from rtmpq.moq.client import SkippedGroup, subscribe_broadcast
    from rtmpq.moq.transport import connect_moq

    async with connect_moq("127.0.0.1", LATENCY_PORTS["moq"], insecure=True) as conn:
        async for item in subscribe_broadcast(conn, "live/bench", tracks=["video", *RUNGS], wait=BROADCAST_WAIT):
            if isinstance(item, Frame):
                stamps.setdefault(item.track, []).append((time.monotonic_ns(), item.group, item.pts))
            elif isinstance(item, SkippedGroup):
                stamps.setdefault(item.track + " skipped", []).append(item.group)


def rung_latency(isolate: bool, source: Path, state: Path) -> dict:
    """Per rung, each frame's arrival at the subscriber minus its source frame's (same pts), ms;
    the rung's first group left out (made from the past: the group in progress when it was asked
    for, decoded again from its IDR)."""
    up, _, drain = start_up(isolate, state, LATENCY_PORTS, {"RTMPQ_PUBLISH_GRACE_PERIOD": GRACE_PERIOD})
    stamps: dict[str, list] = {}

    async def run() -> None:
        sub = asyncio.create_task(watch_rungs(stamps))
        await asyncio.sleep(1.0)  # the subscriber waits for the broadcast
        pub = await asyncio.create_subprocess_exec(
            "ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-re", "-i", str(source), "-c", "copy",
            "-f", "flv", f"rtmp://127.0.0.1:{LATENCY_PORTS['rtmp']}/live/bench")
        await pub.wait()
        try:
            await asyncio.wait_for(sub, SUBSCRIBER_END_WAIT)
        except TimeoutError:
            pass  # what arrived is measured

    try:
        asyncio.run(run())
    finally:
        stop_up(up, drain)
    source_at = {pts: t for t, _, pts in stamps.get("video", [])}
    out = {}
    for rung in RUNGS:
        frames = stamps.get(rung, [])
        first = frames[0][1] if frames else None
        out[rung] = [(t - source_at[pts]) / 1e6 for t, group, pts in frames if group != first and pts in source_at]
        out[rung + " unmatched"] = sum(1 for _, group, pts in frames if group != first and pts not in source_at)
        out[rung + " skipped"] = len(stamps.get(rung + " skipped", []))
        out[rung + " first"] = "-" if first is None else first  # above 0: the rung started late
    return out


@pytest.mark.timeout(1200)
@pytest.mark.parametrize("bframes", [2, 0])
def test_isolate_latency(tmp_path, bframes):
    """The hop to the child and back (the source over loopback MoQ to `rtmpq transcode`, its rungs
    PUBLISHed back): what it adds to a rung at a MoQ subscriber, against the ladder on threads."""
    source = make_source(tmp_path / "source.mp4", bframes)
    rows = []
    for run in range(LATENCY_RUNS):
        for isolate in ((False, True) if run % 2 == 0 else (True, False)):  # alternately, the order too
            load_before = os.getloadavg()[0]
            result = rung_latency(isolate, source, tmp_path / "state")
            rows.append((run + 1, "child process" if isolate else "in process", result,
                         f"{load_before:.2f}-{os.getloadavg()[0]:.2f}"))
    print(f"\nrung frame arrival - source frame arrival (same pts) at one MoQ subscriber, ms; `rtmpq up --ladder "
          f"{LADDER}`, {SECONDS} s of 720p30 replayed in real time, source with {bframes} B-frames")
    print(f"{'run':<5}{'mode':<15}{'rung':<12}{'frames':>7}{'unmatched':>10}{'skipped':>8}{'first':>6}"
          f"{'p50':>9}{'p99':>9}{'max':>9}  load (1 min)")
    for run, mode, result, load in rows:
        for rung in RUNGS:
            ms = result[rung]
            figures = f"{pct(ms, .5):>9.1f}{pct(ms, .99):>9.1f}{max(ms):>9.1f}" if ms else f"{'-':>9}" * 3
            print(f"{run:<5}{mode:<15}{rung:<12}{len(ms):>7}{result[rung + ' unmatched']:>10}"
                  f"{result[rung + ' skipped']:>8}{result[rung + ' first']:>6}{figures}  {load}")
