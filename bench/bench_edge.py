"""LL-HLS: from a frame's arrival at ingest to the part holding it being fetchable; vs nginx-rtmp HLS.

    .venv/bin/python -m pytest bench/bench_edge.py --benchmark-only -s

The same file (720p H.264, 1 s GoP, AAC) is replayed in real time (`ffmpeg -re -c copy`) into:
- `rtmpq up` (in this process): a blocking LL-HLS client follows EXT-X-PRELOAD-HINT, fetching each
  part as soon as the server completes it; each video frame of the part is matched to the time the
  ingest received it (exact, same process).
- nginx with libnginx-mod-rtmp (Debian), HLS with 1 s fragments (its minimum useful setting): the
  playlist file is polled every 10 ms; a segment is fetchable when it is listed. nginx does not
  expose arrival times, so for both servers the "sent at" of a frame is also estimated as the
  publish start + its dts (ffmpeg -re paces by dts) and reported, to compare like with like.
- `rtmpq up` (ingest + relay) and `rtmpq edge --upstream` as two processes, a player on the edge:
  the CPU of each, so the edge's cost per broadcast is known apart from the ingest's.
"""

import asyncio
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rtmpq.config import Config, HttpConfig, IngestConfig, MoqConfig, PublishConfig
from rtmpq.media.broadcast import BroadcastEnded, CatalogUpdate
from rtmpq.nodes.up import UpNode

SECONDS = 12
RESULTS = {}
SPLIT = {}


def free_port(kind=socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks of 10 ms


@pytest.fixture(scope="module")
def source_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("edge") / "source.flv"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30", "-f", "lavfi",
                    "-i", "sine", "-t", str(SECONDS), "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency",
                    "-b:v", "2M", "-g", "30", "-keyint_min", "30", "-c:a", "aac", "-f", "flv", str(path)], check=True)
    return path


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))]


def video_sample_dts(part: bytes) -> list[int]:
    """dts of every video sample in a CMAF part (track 1 is video in rtmpq's init segment)."""
    out = []
    pos = 0
    while pos + 8 <= len(part):
        size = int.from_bytes(part[pos:pos + 4], "big")
        if part[pos + 4:pos + 8] == b"moof":
            moof = part[pos:pos + size]
            p = 8
            while p + 8 <= len(moof):
                bsize = int.from_bytes(moof[p:p + 4], "big")
                if moof[p + 4:p + 8] == b"traf":
                    traf = moof[p + 8:p + bsize]
                    track = tfdt = None
                    q = 0
                    while q + 8 <= len(traf):
                        n = int.from_bytes(traf[q:q + 4], "big")
                        kind = traf[q + 4:q + 8]
                        if kind == b"tfhd":
                            track = int.from_bytes(traf[q + 12:q + 16], "big")
                        elif kind == b"tfdt":
                            tfdt = int.from_bytes(traf[q + 12:q + 20], "big")
                        elif kind == b"trun" and track == 1:
                            count = int.from_bytes(traf[q + 12:q + 16], "big")
                            t = tfdt
                            for i in range(count):
                                out.append(t)
                                t += int.from_bytes(traf[q + 20 + 16 * i:q + 24 + 16 * i], "big")
                        q += n
                p += bsize
        pos += size
    return out


async def http_get(port: int, path: str) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(head[:40])
    return body


async def rtmpq_run(source: Path, tmp: Path) -> dict:
    node = UpNode(Config(rtmp=IngestConfig(host="127.0.0.1", port=0), moq=MoqConfig(host="127.0.0.1", port=0, state_dir=tmp),
                         http=HttpConfig(host="127.0.0.1", port=0), publish=PublishConfig(grace_period=0)))
    await node.start()
    arrivals = {}  # video dts -> ingest arrival (ns)
    cpu0 = time.process_time()  # this process: ingest + edge + the measuring client (ffmpeg is apart)
    try:
        publisher = await asyncio.create_subprocess_exec(
            "ffmpeg", "-v", "error", "-re", "-i", str(source), "-c", "copy", "-f", "flv",
            f"rtmp://127.0.0.1:{node.rtmp.address[1]}/live/bench")
        started_ns = time.time_ns()
        broadcast = await node.registry.wait_for("live/bench", 10)

        async def record():
            async for ev in broadcast.reader():
                if isinstance(ev, BroadcastEnded):
                    return
                if not isinstance(ev, CatalogUpdate) and ev.track == "video":
                    arrivals[ev.dts] = ev.received_ns

        recorder = asyncio.create_task(record())
        port = node.edge.address[1]
        playlist = (await http_get(port, "/live/bench/video.m3u8")).decode()
        latencies, estimated = [], []
        first_dts = 0  # the source file's timestamps start at 0 (the player may join a GoP later)
        while True:
            hint = re.search(r'PRELOAD-HINT:TYPE=PART,URI="(v-seg\d+\.\d+\.m4s)"', playlist)
            if hint is None:
                break
            try:
                part = await http_get(port, f"/live/bench/{hint[1]}")
            except RuntimeError:
                break
            now = time.time_ns()
            for dts in video_sample_dts(part):
                if dts in arrivals:
                    latencies.append((now - arrivals[dts]) / 1e6)
                estimated.append((now - started_ns) / 1e6 - (dts - first_dts))
            msn, idx = map(int, re.match(r"v-seg(\d+)\.(\d+)", hint[1]).groups())
            try:
                playlist = (await http_get(port, f"/live/bench/video.m3u8?_HLS_msn={msn}&_HLS_part={idx}")).decode()
            except RuntimeError:
                break
        await publisher.wait()
        recorder.cancel()
    finally:
        await node.close()
    cpu_share = (time.process_time() - cpu0) / SECONDS
    return {"p50_ms": percentile(latencies, 0.5), "p99_ms": percentile(latencies, 0.99), "frames": len(latencies),
            "cpu_per_broadcast": round(cpu_share, 3),
            "est_p50_ms": percentile(estimated, 0.5), "est_p99_ms": percentile(estimated, 0.99)}


async def follow_parts(port: int, name: str) -> int:
    """A blocking LL-HLS player of the video rendition: fetches each part as it completes."""
    playlist = (await http_get(port, f"/{name}/video.m3u8")).decode()
    parts = 0
    while True:
        hint = re.search(r'PRELOAD-HINT:TYPE=PART,URI="(v-seg\d+\.\d+\.m4s)"', playlist)
        if hint is None:
            return parts
        try:
            await http_get(port, f"/{name}/{hint[1]}")
            msn, idx = map(int, re.match(r"v-seg(\d+)\.(\d+)", hint[1]).groups())
            playlist = (await http_get(port, f"/{name}/video.m3u8?_HLS_msn={msn}&_HLS_part={idx}")).decode()
        except RuntimeError:
            return parts
        parts += 1


async def split_run(source: Path, tmp: Path, backend: str) -> dict:
    """Origin (`rtmpq up`: ingest + relay) and edge in their own processes; CPU of each."""
    rtmp, moq, http, edge_http = free_port(), free_port(socket.SOCK_DGRAM), free_port(), free_port()
    rtmpq = [sys.executable, "-m", "rtmpq", "--log-level", "WARNING"]
    origin = subprocess.Popen([*rtmpq, "up", "--rtmp", f"127.0.0.1:{rtmp}", "--moq", f"127.0.0.1:{moq}",
                               "--http", f"127.0.0.1:{http}", "--state-dir", str(tmp / "origin"),
                               "--quic-backend", backend])
    edge = subprocess.Popen([*rtmpq, "edge", "--upstream", f"moqt://127.0.0.1:{moq}", "--insecure",
                             "--http", f"127.0.0.1:{edge_http}", "--quic-backend", backend])
    try:
        await asyncio.sleep(2.0)  # both start, the edge connects to the relay
        cpu0 = {p.pid: cpu_seconds(p.pid) for p in (origin, edge)}
        publisher = await asyncio.create_subprocess_exec(
            "ffmpeg", "-v", "error", "-re", "-i", str(source), "-c", "copy", "-f", "flv",
            f"rtmp://127.0.0.1:{rtmp}/live/split")
        await asyncio.sleep(1.0)  # live before the player asks (the edge subscribes on the first request)
        parts = await follow_parts(edge_http, "live/split")
        await publisher.wait()
        cpu = {p.pid: cpu_seconds(p.pid) - cpu0[p.pid] for p in (origin, edge)}
    finally:
        for p in (edge, origin):
            p.terminate()
            p.wait(timeout=10)
    return {"parts": parts, "edge_cores_per_broadcast": round(cpu[edge.pid] / SECONDS, 3),
            "origin_cores_per_broadcast": round(cpu[origin.pid] / SECONDS, 3)}


NGINX_CONF = """
load_module /usr/lib/nginx/modules/ngx_rtmp_module.so;
daemon off; master_process off; worker_processes 1; pid {tmp}/nginx.pid; error_log {tmp}/error.log;
events {{ worker_connections 64; }}
rtmp {{ server {{ listen 127.0.0.1:{port}; application live {{ live on;
  hls on; hls_path {tmp}/hls; hls_fragment 1s; hls_playlist_length 6s; hls_continuous on; }} }} }}
"""


def nginx_run(source: Path, tmp: Path) -> dict:
    port = free_port()
    (tmp / "hls").mkdir(parents=True, exist_ok=True)
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, port=port))
    nginx = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(tmp)], stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        publisher = subprocess.Popen(["ffmpeg", "-v", "error", "-re", "-i", str(source), "-c", "copy", "-f", "flv",
                                      f"rtmp://127.0.0.1:{port}/live/bench"])
        started_ns = time.time_ns()
        seen = {}
        playlist = tmp / "hls" / "bench.m3u8"
        while publisher.poll() is None or len(seen) < 2:
            if playlist.exists():
                for name in re.findall(r"^(bench-\d+\.ts)$", playlist.read_text(), re.M):
                    seen.setdefault(name, time.time_ns())
            time.sleep(0.01)
            if time.time_ns() - started_ns > (SECONDS + 10) * 1e9:
                break
        estimated = []
        first = None
        for name, when in sorted(seen.items(), key=lambda kv: kv[1]):
            out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v", "-show_entries", "packet=dts",
                                  "-of", "csv=p=0", str(tmp / "hls" / name)], capture_output=True, text=True).stdout
            for line in out.split():
                dts_ms = int(line.strip(",")) / 90
                if first is None:
                    first = dts_ms
                estimated.append((when - started_ns) / 1e6 - (dts_ms - first))
    finally:
        nginx.terminate()
        nginx.wait()
    return {"est_p50_ms": percentile(estimated, 0.5), "est_p99_ms": percentile(estimated, 0.99), "frames": len(estimated)}


def test_rtmpq_ll_hls_part_latency(benchmark, source_file, tmp_path):
    stats = benchmark.pedantic(lambda: asyncio.run(rtmpq_run(source_file, tmp_path)), rounds=1, iterations=1)
    benchmark.extra_info.update(stats)
    RESULTS["rtmpq LL-HLS (parts of 0.3 s)"] = stats


@pytest.mark.parametrize("backend", ["aioquic", "aiopquic"])
def test_edge_cpu_apart_from_ingest(benchmark, source_file, tmp_path, backend):
    stats = benchmark.pedantic(lambda: asyncio.run(split_run(source_file, tmp_path, backend)), rounds=1, iterations=1)
    assert stats["parts"] > 0
    benchmark.extra_info.update(stats)
    SPLIT[backend] = stats


def test_nginx_rtmp_hls_segment_latency(benchmark, source_file, tmp_path):
    if not shutil.which("nginx") or not Path("/usr/lib/nginx/modules/ngx_rtmp_module.so").exists():
        pytest.fail("nginx with libnginx-mod-rtmp is not installed (apt-get install nginx libnginx-mod-rtmp)")
    stats = benchmark.pedantic(nginx_run, args=(source_file, tmp_path), rounds=1, iterations=1)
    benchmark.extra_info.update(stats)
    RESULTS["nginx-rtmp HLS (1 s fragments)"] = stats


def teardown_module(module):
    if "rtmpq LL-HLS (parts of 0.3 s)" in RESULTS:
        print("\nrtmpq process CPU per broadcast (ingest + edge + client):",
              RESULTS["rtmpq LL-HLS (parts of 0.3 s)"]["cpu_per_broadcast"], "cores")
    for backend, split in SPLIT.items():
        print(f"{backend}: edge process alone {split['edge_cores_per_broadcast']} cores per broadcast; origin "
              f"(ingest + relay serving the edge) {split['origin_cores_per_broadcast']} ({split['parts']} parts fetched)")
    print("\n\nserver                          frames  p50 ms  p99 ms  est. p50 ms  est. p99 ms")
    for name, s in RESULTS.items():
        print(f"{name:30}  {s['frames']:6}  {s.get('p50_ms', float('nan')):6.0f}  {s.get('p99_ms', float('nan')):6.0f}"
              f"  {s['est_p50_ms']:11.0f}  {s['est_p99_ms']:11.0f}")
