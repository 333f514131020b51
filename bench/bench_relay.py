"""Relay egress and ingest-to-subscriber latency, with 1, 10 and 50 MoQ subscribers, on both QUIC backends.

    .venv/bin/python -m pytest bench/bench_relay.py --benchmark-only -s

A 3 Mbit/s H.264 + AAC file is encoded once, then replayed in real time into `rtmpq up` with
`ffmpeg -re -c copy` (no encoding during the run). `rtmpq up` runs in its own process; of the N
subscribers, N-1 run together in another and one (the probe) alone in a third (N=1: just the
probe). Egress per core = bytes the subscribers received / CPU seconds the relay process used.
Latency = subscriber receipt time - ingest arrival time (same machine clock), over every object
of every subscriber (p50, p99), and of the probe alone (probe p50, probe p99): the N-1 share one
Python process with 49 picoquic threads (one per client connection) on a machine whose two cores
also run the relay, and that process's own queueing is most of their tail
(bench/relay_latency.py breaks it down); the probe's figures are the relay's latency to a
subscriber whose process keeps up.
"""

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

SECONDS = 8
RESULTS = {}


def free_port(kind) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def encode_source(path: Path) -> None:
    """The 3 Mbit/s 720p30 H.264 (2 s GoP) + AAC file every relay benchmark replays."""
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30", "-f", "lavfi",
                    "-i", "sine", "-t", str(SECONDS), "-c:v", "libx264", "-preset", "ultrafast", "-b:v", "3M",
                    "-maxrate", "3M", "-bufsize", "1M", "-g", "60", "-c:a", "aac", "-f", "flv", str(path)], check=True)


@pytest.fixture(scope="module")
def source_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("relay") / "source.flv"
    encode_source(path)
    return path


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks of 10 ms


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class PeakRss(threading.Thread):
    """Samples a process's resident memory every 50 ms until stopped; keeps the peak."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.done = pid, 0.0, threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.05):
            self.peak = max(self.peak, rss_mb(self.pid))


def wait_listening(rtmp: int) -> None:
    """Until the node listens for RTMP (a loaded machine starts it slowly), and a little more: its
    MoQ listener starts right after the RTMP one."""
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", rtmp), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    time.sleep(0.5)


def latency_percentiles(latencies: list[float]) -> dict:
    lat = sorted(latencies)
    return {"latency_p50_ms": lat[len(lat) // 2] if lat else None,
            "latency_p99_ms": lat[int(len(lat) * 0.99)] if lat else None}


def run_once(source: Path, subscribers: int, tmp: Path, backend: str) -> dict:
    moq, rtmp, http = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_STREAM), free_port(socket.SOCK_STREAM)
    relay = subprocess.Popen([sys.executable, "-m", "rtmpq", "--log-level", "WARNING", "up", "--rtmp", f"127.0.0.1:{rtmp}",
                              "--moq", f"127.0.0.1:{moq}", "--http", f"127.0.0.1:{http}", "--state-dir", str(tmp),
                              "--quic-backend", backend])
    try:
        wait_listening(rtmp)
        publisher = subprocess.Popen(["ffmpeg", "-v", "error", "-re", "-i", str(source), "-c", "copy", "-f", "flv",
                                      f"rtmp://127.0.0.1:{rtmp}/live/bench"])
        time.sleep(0.5)
        cpu0 = cpu_seconds(relay.pid)
        rss0 = rss_mb(relay.pid)
        sampler = PeakRss(relay.pid)
        sampler.start()
        script = str(Path(__file__).with_name("relay_subscribers.py"))
        procs = [subprocess.Popen([sys.executable, script, str(moq), "live/bench", str(n), backend, "raw"],
                                  stdout=subprocess.PIPE, text=True) for n in (subscribers - 1, 1) if n]
        outs = [json.loads(p.communicate(timeout=120)[0].strip().splitlines()[-1]) for p in procs]
        cpu = cpu_seconds(relay.pid) - cpu0
        sampler.done.set()
        publisher.wait(timeout=30)
        stats = {k: sum(o[k] for o in outs) for k in ("bytes", "objects", "skipped")}
        stats.update(latency_percentiles(sum((o["latency_ms"] for o in outs), [])))
        stats.update({f"probe_{k}": v for k, v in latency_percentiles(outs[-1]["latency_ms"]).items()})
        stats["relay_cpu_s"] = cpu
        stats["egress_MB_per_cpu_s"] = round(stats["bytes"] / 1e6 / cpu, 2) if cpu else None
        # memory: the relay with the broadcast before anyone subscribes, and what each subscriber adds
        stats["relay_rss_MB_before"] = round(rss0, 1)
        stats["rss_MB_per_subscriber"] = round(max(sampler.peak - rss0, 0) / subscribers, 2)
        return stats
    finally:
        relay.terminate()
        relay.wait(timeout=10)


@pytest.mark.parametrize("backend", ["aioquic", "aiopquic"])
@pytest.mark.parametrize("subscribers", [1, 10, 50])
def test_relay_egress_and_latency(benchmark, source_file, tmp_path, subscribers, backend):
    stats = benchmark.pedantic(run_once, args=(source_file, subscribers, tmp_path, backend), rounds=1, iterations=1)
    assert stats["objects"] > 0
    benchmark.extra_info.update(stats)
    RESULTS[(backend, subscribers)] = stats


def teardown_module(module):
    if RESULTS:
        out = Path("var/bench")
        out.mkdir(parents=True, exist_ok=True)  # for bench/plots.py
        (out / "relay.json").write_text(json.dumps([{"backend": b, "subscribers": n, **s}
                                                    for (b, n), s in RESULTS.items()], indent=1))
    print("\n\nbackend   subscribers  objects  skipped  MB received  relay CPU s  MB/s per core  p50 ms  p99 ms"
          "  probe p50 ms  probe p99 ms  RSS MB before  RSS MB per subscriber")
    for (backend, n), s in sorted(RESULTS.items()):
        print(f"{backend:9} {n:11}  {s['objects']:7}  {s['skipped']:7}  {s['bytes'] / 1e6:11.1f}  {s['relay_cpu_s']:11.2f}  "
              f"{s['egress_MB_per_cpu_s']!s:>13}  {s['latency_p50_ms']:6.1f}  {s['latency_p99_ms']:6.1f}"
              f"  {s['probe_latency_p50_ms']:12.1f}  {s['probe_latency_p99_ms']:12.1f}"
              f"  {s['relay_rss_MB_before']:13.1f}  {s['rss_MB_per_subscriber']:21.2f}")
