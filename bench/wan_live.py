"""A 720p 2.6 Mbit/s publish to one MoQ subscriber through the impairment proxy (issue 12).

    .venv/bin/python bench/wan_live.py BACKEND LOSS ONE_WAY_DELAY_MS [SECONDS]

`rtmpq up --quic-backend BACKEND` in its own process, `ffmpeg -re -c copy` of an encoded 720p30
file (2 s GoP), and a subscriber on the same backend behind the proxy (both directions impaired,
seed 42) with the relay's default delivery timeout. Prints objects received, the groups skipped
(and their reset code) and the latency (subscriber receipt - ingest arrival) percentiles.
"""

import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rtmpq.media.catalog import Catalog
from rtmpq.moq.client import SkippedGroup, subscribe_broadcast
from rtmpq.moq.transport import connect_moq
from rtmpq.netem import Impairment, ImpairmentProxy


def free(kind) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def main(backend: str, loss: float, delay: float, seconds: int) -> None:
    tmp = Path(tempfile.mkdtemp())
    source = tmp / "src.flv"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30", "-f", "lavfi",
                    "-i", "sine", "-t", str(seconds), "-c:v", "libx264", "-preset", "ultrafast", "-b:v", "2600k",
                    "-maxrate", "2600k", "-bufsize", "1300k", "-g", "60", "-c:a", "aac", "-f", "flv", str(source)],
                   check=True)
    moq, rtmp, http = free(socket.SOCK_DGRAM), free(socket.SOCK_STREAM), free(socket.SOCK_STREAM)
    relay = subprocess.Popen([sys.executable, "-m", "rtmpq", "--log-level", "WARNING", "up", "--rtmp",
                              f"127.0.0.1:{rtmp}", "--moq", f"127.0.0.1:{moq}", "--http", f"127.0.0.1:{http}",
                              "--state-dir", str(tmp / "state"), "--quic-backend", backend],
                             env={**os.environ, "RTMPQ_PUBLISH_GRACE_PERIOD": "0"})
    await asyncio.sleep(2)
    pub = subprocess.Popen(["ffmpeg", "-v", "error", "-re", "-i", str(source), "-c", "copy", "-f", "flv",
                            f"rtmp://127.0.0.1:{rtmp}/live/wan"])
    await asyncio.sleep(0.5)
    path = Impairment(delay_ms=delay, jitter_ms=5, loss=loss)
    frames, skipped, late = [], [], []
    async with ImpairmentProxy(target=("127.0.0.1", moq), up=path, down=path, seed=42) as proxy:
        async with connect_moq("127.0.0.1", proxy.port, insecure=True, timeout=20, backend=backend) as conn:
            async def run():
                async for item in subscribe_broadcast(conn, "live/wan"):
                    if isinstance(item, SkippedGroup):
                        skipped.append(item)
                    elif not isinstance(item, Catalog):
                        frames.append(item)
                        late.append((time.time_ns() - item.received_ns) / 1e9)
            try:
                await asyncio.wait_for(run(), seconds + 20)
            except TimeoutError:
                print("(still receiving", seconds + 20, "s after the start: cut)")
    pub.wait()
    relay.terminate()
    relay.wait()
    late.sort()
    video = [f for f in frames if f.track == "video"]
    print(f"{backend} loss={loss} rtt={2 * delay:g}ms: video {len(video)} of {seconds * 30}, audio "
          f"{len(frames) - len(video)}, groups skipped {[(s.track, s.group, s.code) for s in skipped]}, "
          f"p50 {late[len(late) // 2] * 1000:.0f} ms p99 {late[int(len(late) * .99)] * 1000:.0f} ms "
          f"max {late[-1] * 1000:.0f} ms")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]) if len(sys.argv) > 4 else 15))
