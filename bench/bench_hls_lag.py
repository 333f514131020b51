"""Live-edge lag of HLS playlists: rtmpq LL-HLS vs nginx-rtmp HLS, the same publish (issue 12).

    .venv/bin/python -m pytest bench/bench_hls_lag.py --benchmark-only -s

One ffmpeg process replays a 12 s file (720p H.264 at 2 Mbit/s, 1 s GoP, AAC) in real time and
tees it, with `-c copy`, to both servers: `rtmpq up` (its own process) and nginx with
libnginx-mod-rtmp (HLS, `hls_fragment 1s`: one fragment per GoP). Both playlists are polled every
100 ms (rtmpq's over HTTP, nginx's file from disk, which only favours nginx); each part (rtmpq) or
fragment (nginx) is timed when it is first listed and read for the dts of its last video frame.
The live edge at a poll is the newest listed video frame; lag = poll time - the time ffmpeg sent
that frame (the publish clock: the same tee also writes FLV to a local TCP socket here, which
notes when each video tag leaves ffmpeg). So the lag is how far behind the publisher a player that
starts at the newest listed media is, with ffmpeg's own start-up left out for both servers.
Parts (0.1-0.3 s) and fragments (1-2 s) come at multiples of the 100 ms poll period, so the polls
of one run see each at only a few fixed phases, which differ from run to run: the p50 of one
run moves by up to a poll period (most with the shortest parts); the mean is printed too.

rtmpq's part target is its default unless given in the environment, which `rtmpq up` reads:

    RTMPQ_HTTP_PART_TARGET=0.1 .venv/bin/python -m pytest bench/bench_hls_lag.py --benchmark-only -s

Also printed: rtmpq's largest video.m3u8 (bytes) and parts per second of media (an LL-HLS player
makes about two requests per part and playlist: a blocking reload and the part).
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bench_edge import NGINX_CONF, free_port, percentile, video_sample_dts

SECONDS = 12
POLL = 0.1
FRAME_MS = 1000 / 30
RESULTS = {}


@pytest.fixture(scope="module", params=[2, 1], ids=["gop2s", "gop1s"])
def gop_file(tmp_path_factory, request) -> Path:
    path = tmp_path_factory.mktemp("lag") / f"gop{request.param}.flv"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30", "-f", "lavfi",
                    "-i", "sine", "-t", str(SECONDS), "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency",
                    "-b:v", "2M", "-g", str(30 * request.param), "-keyint_min", str(30 * request.param), "-c:a", "aac", "-f", "flv", str(path)], check=True)
    return path


def http_get(port: int, path: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(1 << 20):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(head[:60])
    return body


def ts_video_dts_ms(path: Path) -> list[float]:
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v", "-show_entries", "packet=dts",
                          "-of", "csv=p=0", str(path)], capture_output=True, text=True).stdout.split()
    return [int(x.strip(",")) / 90 for x in out]


class FlvClock(threading.Thread):
    """A third output of the same ffmpeg tee: the time each video tag leaves ffmpeg, by dts."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.sent: dict[int, float] = {}  # video dts (ms) -> monotonic time it arrived here

    def run(self) -> None:
        conn, _ = self.sock.accept()
        buf = b""
        pos = 13  # FLV header + PreviousTagSize0
        while chunk := conn.recv(1 << 16):
            now = time.monotonic()
            buf += chunk
            while len(buf) >= pos + 11:
                size = int.from_bytes(buf[pos + 1:pos + 4], "big")
                if len(buf) < pos + 11 + size + 4:
                    break
                if buf[pos] == 9:
                    dts = int.from_bytes(buf[pos + 4:pos + 7], "big") | buf[pos + 7] << 24
                    self.sent.setdefault(dts, now)
                pos += 11 + size + 4
            buf, pos = buf[pos:], 0


def same_publish(source: Path, tmp: Path) -> dict:
    rtmp, moq, http, nginx_port = free_port(), free_port(socket.SOCK_DGRAM), free_port(), free_port()
    up = subprocess.Popen([sys.executable, "-m", "rtmpq", "--log-level", "WARNING", "up", "--rtmp", f"127.0.0.1:{rtmp}",
                           "--moq", f"127.0.0.1:{moq}", "--http", f"127.0.0.1:{http}", "--state-dir", str(tmp / "st")])
    (tmp / "hls").mkdir(parents=True, exist_ok=True)
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, port=nginx_port).replace("hls_continuous on;", "hls_continuous on; hls_cleanup off;"))
    nginx = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(tmp)], stderr=subprocess.DEVNULL)
    try:
        for port in (rtmp, nginx_port, http):  # both servers listening before the publish starts
            deadline = time.monotonic() + 30
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
        clock = FlvClock()
        clock.start()
        publisher = subprocess.Popen(["ffmpeg", "-v", "error", "-re", "-i", str(source), "-map", "0", "-c", "copy",
                                      "-f", "tee", f"[f=flv]rtmp://127.0.0.1:{rtmp}/live/lag|"
                                      f"[f=flv]rtmp://127.0.0.1:{nginx_port}/live/lag|"
                                      f"[f=flv]tcp://127.0.0.1:{clock.port}"])
        seen = {"rtmpq": {}, "nginx": {}}  # name -> first listed (monotonic)
        polls = []
        edge_dts = {"rtmpq": {}, "nginx": {}}  # name -> end of its last video frame, ms
        playlist_bytes = 0
        nginx_playlist = tmp / "hls" / "lag.m3u8"
        next_poll = time.monotonic()
        while publisher.poll() is None:
            now = time.monotonic()
            try:
                text = http_get(http, "/live/lag/video.m3u8").decode()
            except (RuntimeError, OSError):
                text = ""
            playlist_bytes = max(playlist_bytes, len(text))
            for uri in re.findall(r'URI="(v-seg\d+\.\d+\.m4s)"', text):
                if uri not in seen["rtmpq"] and "PRELOAD-HINT" not in text.split(uri)[0].rsplit("\n", 1)[-1]:
                    seen["rtmpq"][uri] = now
                    dts = video_sample_dts(http_get(http, f"/live/lag/{uri}"))
                    if dts:
                        edge_dts["rtmpq"][uri] = max(dts)
            if nginx_playlist.exists():
                for name in re.findall(r"^(lag-\d+\.ts)$", nginx_playlist.read_text(), re.M):
                    seen["nginx"].setdefault(name, now)
            polls.append(now)
            next_poll += POLL
            time.sleep(max(0.0, next_poll - time.monotonic()))
        # nginx's MPEG-TS timestamps carry an offset: the first fragment starts at the publish's
        # first frame, which is dts 0 in the file (as rtmpq's timestamps are)
        first = min(ts_video_dts_ms(tmp / "hls" / min(seen["nginx"], key=lambda n: int(n[4:-3]))))
        for name in seen["nginx"]:
            edge_dts["nginx"][name] = round(max(ts_video_dts_ms(tmp / "hls" / name)) - first)
    finally:
        nginx.terminate()
        up.terminate()
        nginx.wait()
        up.wait()
    out = {}
    for server in ("rtmpq", "nginx"):
        lags = []
        for t in polls:
            listed = [edge_dts[server][n] for n, when in seen[server].items() if when <= t and n in edge_dts[server]]
            if listed and max(listed) in clock.sent:
                lags.append((t - clock.sent[max(listed)]) * 1000)
        out[server] = {"polls": len(lags), "p50_ms": round(percentile(lags, 0.5)), "p99_ms": round(percentile(lags, 0.99)),
                       "mean_ms": round(sum(lags) / len(lags)),
                       "items": len(seen[server])}
    out["rtmpq"]["playlist_bytes"] = playlist_bytes
    out["rtmpq"]["parts_per_s"] = round(len(seen["rtmpq"]) / max(polls[-1] - min(seen["rtmpq"].values()), 1e-9), 1)
    return out


def test_hls_live_edge_lag_same_publish(benchmark, gop_file, tmp_path):
    if not shutil.which("nginx") or not Path("/usr/lib/nginx/modules/ngx_rtmp_module.so").exists():
        pytest.fail("nginx with libnginx-mod-rtmp is not installed (make bench-deps)")
    stats = benchmark.pedantic(same_publish, args=(gop_file, tmp_path), rounds=1, iterations=1)
    # both servers were live through the publish, or the comparison means nothing
    assert stats["rtmpq"]["polls"] > SECONDS * 5 and stats["nginx"]["polls"] > SECONDS * 5, stats
    benchmark.extra_info.update({f"{s}_{k}": v for s, d in stats.items() for k, v in d.items()})
    part_target = os.environ.get("RTMPQ_HTTP_PART_TARGET", "default")
    stats["rtmpq"]["part_target"] = part_target
    RESULTS[gop_file.stem] = stats
    out = Path("var/bench")
    out.mkdir(parents=True, exist_ok=True)  # for bench/plots.py
    (out / "hls_lag.json").write_text(json.dumps(RESULTS, indent=1))
    print("\n\nserver  polls  listed  p50 lag ms  p99 lag ms  mean lag ms\n"
          + "\n".join(f"{s:6}  {d['polls']:5}  {d['items']:6}  {d['p50_ms']:10}  {d['p99_ms']:10}  {d['mean_ms']:11}"
                      for s, d in stats.items())
          + f"\nnginx p50 / rtmpq p50 = {stats['nginx']['p50_ms'] / max(stats['rtmpq']['p50_ms'], 1):.1f}x, "
            f"mean / mean = {stats['nginx']['mean_ms'] / max(stats['rtmpq']['mean_ms'], 1):.1f}x"
          + f"\nrtmpq part target {part_target}: video.m3u8 up to {stats['rtmpq']['playlist_bytes']} bytes, "
            f"{stats['rtmpq']['parts_per_s']} parts/s")
