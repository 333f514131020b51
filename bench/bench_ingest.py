"""Ingest CPU and memory per publisher: rtmpq (compiled, pure) vs nginx-rtmp vs pyrtmp (issue 12).

    make bench-deps   # nginx + libnginx-mod-rtmp
    .venv/bin/python -m pytest bench/bench_ingest.py --benchmark-only -s

N = 1, 10, 50 concurrent `ffmpeg -re -c copy` publishers of the same 6 s file (720p30 H.264 at
2.6 Mbit/s, 2 s GoP, AAC) into each server in turn, each in its own process, with and without
recording every publish to disk. CPU = the server process's user + system time from before the
first publisher starts until the last one exits, per publisher and per second of media (so 0.01 =
1% of a core for one publisher); RSS = the peak resident memory sampled every 50 ms minus the
server's RSS before the publishers, per publisher. rtmpq runs as `rtmpq up` (ingest + relay,
whose group caches hold each broadcast's last groups, + edge; nobody watches), so its RSS per
publisher includes the group cache, reported apart: the media bytes its caches hold (at most 8
groups per track: here the whole 6 s), the most its `rtmpq_group_cache_bytes` metric read (every
second until the first publisher exits; not for a baseline older than that metric), and "RSS less
cache", the most RSS held besides the caches, each cache reading paired with an RSS reading taken
just after it (so it is not the peak RSS less a cache read up to a second earlier). CPU is also
split into user and system time (the server's own code vs the kernel's reads and TCP). Publishers
that fail are counted; a run where any failed is reported as such, not hidden.

INGEST_BASELINE=<a checkout of an earlier rtmpq, its extension built in place> adds "rtmpq
baseline" (that code, compiled) to the same run, for a before/after measured back to back:

    git archive main | tar -x -C /tmp/rtmpq-main && (cd /tmp/rtmpq-main && python setup.py build_ext --inplace)
    INGEST_BASELINE=/tmp/rtmpq-main .venv/bin/python -m pytest bench/bench_ingest.py --benchmark-only -s

INGEST_COALESCE=0,0.02 adds "rtmpq compiled" runs with those [rtmp] read_coalesce windows (seconds;
the plain "rtmpq compiled" run has the default), for the CPU a window saves, in the same run.

INGEST_FLOOR=1 adds three live-only runs of rtmpq compiled cut short (bench/ingest_floor.py): "rtmpq
read only" drops every message once read, "rtmpq read+demux" demuxes it and drops the frame,
"rtmpq read+demux+hold" keeps the frames in a plain list per group: what the read path, the
demuxer, and the least holding of frames cost with nothing else downstream.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from bench_relay import PeakRss, cpu_seconds, free_port, rss_mb

SECONDS = int(os.environ.get("INGEST_SECONDS", "6"))  # the publish's length; longer ones show the steady state
RESULTS: dict[tuple[str, bool, int], dict] = {}
BENCH = Path(__file__).parent

NGINX_CONF = """
load_module /usr/lib/nginx/modules/ngx_rtmp_module.so;
daemon off; master_process off; worker_processes 1; pid {tmp}/nginx.pid; error_log {tmp}/error.log;
events {{ worker_connections 1024; }}
rtmp {{ server {{ listen 127.0.0.1:{port}; application live {{ live on; {record} }} }} }}
"""


def make_source(path: Path) -> Path:
    """The publish every ingest benchmark pushes: SECONDS of 720p30 H.264 at 2.6 Mbit/s (2 s GoP) + AAC."""
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30", "-f", "lavfi",
                    "-i", "sine", "-t", str(SECONDS), "-c:v", "libx264", "-preset", "ultrafast", "-b:v", "2600k",
                    "-maxrate", "2600k", "-bufsize", "1300k", "-g", "60", "-c:a", "aac", "-f", "flv", str(path)],
                   check=True)
    return path


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return make_source(tmp_path_factory.mktemp("ingest") / "source.flv")


def start_server(kind: str, port: int, tmp: Path, record: bool, http: int = 0) -> subprocess.Popen:
    rec = tmp / "rec"
    rec.mkdir(exist_ok=True)
    if kind == "nginx-rtmp":
        conf = tmp / "nginx.conf"
        conf.write_text(NGINX_CONF.format(tmp=tmp, port=port, record=f"record all; record_path {rec}; record_unique on;"
                                          if record else ""))
        return subprocess.Popen(["nginx", "-c", str(conf), "-p", str(tmp)], stderr=subprocess.DEVNULL)
    if kind == "pyrtmp":
        return subprocess.Popen([sys.executable, str(BENCH / "pyrtmp_server.py"), str(port), *([str(rec)] if record else [])])
    env = {**os.environ, "RTMPQ_PUBLISH_GRACE_PERIOD": "0"}
    env.pop("RTMPQ_PUREPYTHON", None)
    if kind == "rtmpq pure":
        env["RTMPQ_PUREPYTHON"] = "1"
    if kind.startswith("rtmpq coalesce "):
        env["RTMPQ_RTMP_READ_COALESCE"] = kind.split()[-1]
    if kind == "rtmpq baseline":  # run from elsewhere, so that checkout's rtmpq is the one imported
        env["PYTHONPATH"] = BASELINE
        env["RTMPQ_REQUIRE_COMPILED"] = "1"
    floor = {"rtmpq read only": "read", "rtmpq read+demux": "demux", "rtmpq read+demux+hold": "hold"}.get(kind)
    rtmpq = [str(BENCH / "ingest_floor.py"), floor] if floor else ["-m", "rtmpq"]
    return subprocess.Popen([sys.executable, *rtmpq, "--log-level", "WARNING", "up", "--rtmp", f"127.0.0.1:{port}",
                             "--moq", f"127.0.0.1:{free_port(socket.SOCK_DGRAM)}", "--http", f"127.0.0.1:{http or free_port(socket.SOCK_STREAM)}",
                             "--state-dir", str(tmp / "state"), *(["--record", str(rec)] if record else [])], env=env,
                            cwd=tmp)


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process so far: what nginx and rtmpq spend in their own code
    and in the kernel (reads, TCP) differ in kind, not only in size."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / 100, int(fields[12]) / 100


def minor_faults(pid: int) -> int:
    """Pages the process has faulted in so far without disk I/O: each first touch of memory (and
    each touch after the allocator gave it back) costs kernel time that is counted as system time."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[7])


class CacheReading(threading.Thread):
    """rtmpq's group caches (`rtmpq_group_cache_bytes` from its /metrics) read every ``interval``
    seconds until ``stop()``, each time with the server's RSS just after: ``peak`` is the most
    the caches held, ``rest_peak`` the most RSS held besides them at the same moment (RSS less
    the cache read with it: a cache read a second before the RSS peak would leave that second's
    media in "RSS less cache"). A few scrapes per run: a few ms of the measured CPU."""

    def __init__(self, http: int, pid: int, interval: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.http, self.pid, self.interval = http, pid, interval
        self.peak = self.rest_peak = 0.0
        self.readings = 0
        self.done = threading.Event()
        self.start()

    def run(self) -> None:
        while not self.done.wait(self.interval):
            body = urllib.request.urlopen(f"http://127.0.0.1:{self.http}/metrics", timeout=5).read().decode()
            value = next((float(line.split()[1]) for line in body.splitlines()
                          if line.startswith("rtmpq_group_cache_bytes ")), None)
            if value is None:  # code older than the metric (an INGEST_BASELINE)
                return
            rest = rss_mb(self.pid) - value / 1e6
            self.peak, self.rest_peak, self.readings = max(self.peak, value), max(self.rest_peak, rest), self.readings + 1

    def stop(self) -> tuple[float | None, float | None]:
        """(the most the caches held in bytes, the most RSS held besides them in MB); Nones for
        code without the metric."""
        self.done.set()
        self.join(10)
        return (self.peak, self.rest_peak) if self.readings else (None, None)


def wait_listening(port: int) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def run(kind: str, record: bool, publishers: int, source: Path) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="ingest-"))
    port, http = free_port(socket.SOCK_STREAM), free_port(socket.SOCK_STREAM)
    server = start_server(kind, port, tmp, record, http)
    try:
        wait_listening(port)
        time.sleep(1.0)  # settled (rtmpq: imports done, listeners up)
        rss0, cpu0, split0 = rss_mb(server.pid), cpu_seconds(server.pid), cpu_split(server.pid)
        faults0 = minor_faults(server.pid)
        sampler = PeakRss(server.pid)
        sampler.start()
        procs = [subprocess.Popen(["ffmpeg", "-v", "error", "-re", "-i", str(source), "-c", "copy", "-f", "flv",
                                   f"rtmp://127.0.0.1:{port}/live/p{i}"], stdin=subprocess.DEVNULL)
                 for i in range(publishers)]
        cache = CacheReading(http, server.pid) if kind.startswith("rtmpq") else None
        procs[0].wait(timeout=SECONDS * 10)  # a publish that ends ends its broadcast: its cache goes
        cache_bytes, rest_mb = (None, None) if cache is None else cache.stop()
        failed = sum(p.wait(timeout=SECONDS * 10) != 0 for p in procs)
        idle_since, last = time.monotonic(), cpu_seconds(server.pid)
        while time.monotonic() - idle_since < 1.0:  # a server behind its publishers catches up first
            time.sleep(0.2)
            if (now := cpu_seconds(server.pid)) > last + 0.02:
                idle_since, last = time.monotonic(), now
        cpu = cpu_seconds(server.pid) - cpu0
        user, system = (b - a for a, b in zip(split0, cpu_split(server.pid)))
        faults = minor_faults(server.pid) - faults0
        sampler.done.set()
        recorded = sum(f.stat().st_size for f in (tmp / "rec").rglob("*.flv"))
    finally:
        server.terminate()
        server.wait(timeout=15)
        shutil.rmtree(tmp, ignore_errors=True)
    return {"publishers": publishers, "failed": failed, "cpu_per_publisher_s": round(cpu / publishers, 4),
            "cores_per_publisher": round(cpu / publishers / SECONDS, 4),
            "user_s_per_publisher": round(user / publishers, 4), "system_s_per_publisher": round(system / publishers, 4),
            "faults_mb_per_publisher": round(faults * os.sysconf("SC_PAGESIZE") / 1e6 / publishers, 2),
            "cache_mb_per_publisher": None if cache_bytes is None else round(cache_bytes / 1e6 / publishers, 2),
            "rss_less_cache_mb_per_publisher": None if rest_mb is None else round((rest_mb - rss0) / publishers, 2),
            "rss_mb_per_publisher": round((sampler.peak - rss0) / publishers, 2), "recorded_mb": round(recorded / 1e6, 1)}


BASELINE = os.environ.get("INGEST_BASELINE", "")
COALESCE = [w for w in os.environ.get("INGEST_COALESCE", "").split(",") if w]
FLOOR = ["rtmpq read only", "rtmpq read+demux", "rtmpq read+demux+hold"] if os.environ.get("INGEST_FLOOR") else []
KINDS = [*(["rtmpq baseline"] if BASELINE else []), "rtmpq compiled", *(f"rtmpq coalesce {w}" for w in COALESCE),
         *FLOOR, "rtmpq pure", "nginx-rtmp", "pyrtmp"]
RUNS = [pytest.param(kind, record, n, id=f"{kind}-{'record' if record else 'live'}-{n}")
        for kind in KINDS for record in (False, True) for n in (1, 10, 50)
        if not (record and kind in FLOOR)]  # a cut-short ingest writes no recording


@pytest.mark.parametrize("kind, record, publishers", RUNS)
def test_ingest_cpu_per_publisher(benchmark, source, kind, record, publishers):
    if kind == "nginx-rtmp" and not Path("/usr/lib/nginx/modules/ngx_rtmp_module.so").exists():
        pytest.fail("nginx with libnginx-mod-rtmp is not installed (make bench-deps)")
    stats = benchmark.pedantic(run, args=(kind, record, publishers, source), rounds=1, iterations=1)
    if record and not stats["failed"]:  # each recorded what it was sent (within 10%: FLV framing differs)
        assert stats["recorded_mb"] > 0.9 * publishers * source.stat().st_size / 1e6, stats
    benchmark.extra_info.update(stats)
    RESULTS[(kind, record, publishers)] = stats


def teardown_module(module):
    if not RESULTS:
        return
    out = Path("var/bench")
    out.mkdir(parents=True, exist_ok=True)  # for bench/plots.py
    (out / "ingest.json").write_text(json.dumps([{"server": k, "record": r, **s} for (k, r, _), s in RESULTS.items()], indent=1))
    print("\n\nserver               record  publishers  failed  cores/publisher  user s/pub  system s/pub  faulted MB/pub  "
          "RSS MB/publisher  of it cache MB  RSS less cache MB  recorded MB")
    for (kind, record, n), s in sorted(RESULTS.items(), key=lambda kv: (kv[0][1], kv[0][2], KINDS.index(kv[0][0]))):
        cache = "" if s["cache_mb_per_publisher"] is None else f"{s['cache_mb_per_publisher']:.2f}"
        rest = "" if s.get("rss_less_cache_mb_per_publisher") is None else f"{s['rss_less_cache_mb_per_publisher']:.2f}"
        print(f"{kind:20} {'yes' if record else 'no':6}  {n:10}  {s['failed']:6}  {s['cores_per_publisher']:15.4f}  "
              f"{s['user_s_per_publisher']:10.4f}  {s['system_s_per_publisher']:12.4f}  {s['faults_mb_per_publisher']:14.2f}  "
              f"{s['rss_mb_per_publisher']:16.2f}  {cache:>14}  {rest:>17}  {s['recorded_mb']:11}")
