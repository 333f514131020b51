"""Where an LL-HLS part's live-edge lag goes, by timestamps (issue 12).

    .venv/bin/python bench/hls_lag_trace.py [--part-target 0.2] [--next-frame]

`rtmpq up` in this process; `ffmpeg -re -c copy` replays a 12 s 720p30 H.264 + AAC file with a
1 s GoP, teed to rtmpq and to a local TCP socket that notes when each video tag leaves ffmpeg
(bench_hls_lag's publish clock, here on the wall clock). A client follows video.m3u8 with
blocking reloads (_HLS_msn/_HLS_part from the preload hint). For each part, the time from ffmpeg
sending the part's last video frame to: B its RTMP arrival (Frame.received_ns), C the edge's
packager getting it, D the part closed, E the blocking reload returning with the part listed.
``--next-frame`` closes parts the way they were closed before (when the next frame arrives).
"""

import argparse
import asyncio
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import bench_hls_lag  # noqa: E402
from bench_edge import free_port  # noqa: E402

from rtmpq.config import Config, HttpConfig, IngestConfig, MoqConfig  # noqa: E402
from rtmpq.edge import llhls  # noqa: E402
from rtmpq.media.frames import VIDEO  # noqa: E402
from rtmpq.nodes.up import UpNode  # noqa: E402

bench_hls_lag.time.monotonic = time.time  # the publish clock on the wall clock, like received_ns
pushes: dict[int, tuple[float, float]] = {}  # video dts -> (edge got it, RTMP arrival)
closes: dict[tuple[int, int], tuple[float, int]] = {}  # (msn, part) -> (closed, last video dts)


def instrument(next_frame: bool) -> None:
    push, close = llhls.LlHlsStream.push, llhls.LlHlsStream._close_part

    def timed_push(self, frame):
        if frame.track == VIDEO and self.only == {VIDEO}:
            pushes.setdefault(frame.dts, (time.time(), frame.received_ns / 1e9))
        push(self, frame)

    def timed_close(self, **kw):
        last = self._pending.get(VIDEO, [])
        n = len(self.segments[-1].parts) if self.segments else 0
        close(self, **kw)
        if self.only == {VIDEO} and last and self.segments and len(self.segments[-1].parts) > n:
            closes[(self.segments[-1].msn, n)] = (time.time(), last[-1].dts)

    llhls.LlHlsStream.push, llhls.LlHlsStream._close_part = timed_push, timed_close
    if next_frame:
        llhls.LlHlsStream._part_full = lambda self: None


async def main(source: Path, part_target: float, label: str) -> None:
    rtmp, http = free_port(), free_port()
    state = Path(tempfile.mkdtemp())
    node = UpNode(Config(rtmp=IngestConfig("127.0.0.1", rtmp),
                         moq=MoqConfig("127.0.0.1", free_port(socket.SOCK_DGRAM), state_dir=state),
                         http=HttpConfig("127.0.0.1", http, part_target=part_target)))
    await node.start()
    clock = bench_hls_lag.FlvClock()
    clock.start()
    publisher = subprocess.Popen(["ffmpeg", "-v", "error", "-re", "-i", str(source), "-map", "0", "-c", "copy", "-f", "tee",
                                  f"[f=flv]rtmp://127.0.0.1:{rtmp}/live/lag|[f=flv]tcp://127.0.0.1:{clock.port}"])
    listed: dict[tuple[int, int], float] = {}

    async def get(path: str) -> str:
        reader, writer = await asyncio.open_connection("127.0.0.1", http)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = await reader.read()
        writer.close()
        return data.decode(errors="replace")

    hint = None
    while publisher.poll() is None:
        text = await get("/live/lag/video.m3u8" + (f"?_HLS_msn={hint[0]}&_HLS_part={hint[1]}" if hint else ""))
        now = time.time()
        for msn, part in re.findall(r'URI="v-seg(\d+)\.(\d+)\.m4s"', text.split("PRELOAD-HINT")[0]):
            listed.setdefault((int(msn), int(part)), now)
        m = re.search(r'PRELOAD-HINT:TYPE=PART,URI="v-seg(\d+)\.(\d+)\.m4s"', text)
        hint = (int(m[1]), int(m[2])) if m else None
        if hint is None:
            await asyncio.sleep(0.1)
    await node.close()
    rows = []
    for key, (closed, dts) in sorted(closes.items()):
        if dts in clock.sent and key in listed:
            sent = clock.sent[dts]
            got, arrived = pushes[dts]
            rows.append(((arrived - sent) * 1e3, (got - sent) * 1e3, (closed - sent) * 1e3, (listed[key] - sent) * 1e3))
    print(f"{label}, part target {part_target} s: {len(rows)} parts; ms after ffmpeg sent a part's last video frame")
    print(f"  {'':22} {'p50':>6} {'p90':>6}")
    for i, name in enumerate(["B RTMP arrival", "C edge packager", "D part closed", "E listed (client)"]):
        values = sorted(r[i] for r in rows)
        print(f"  {name:22} {statistics.median(values):6.1f} {values[int(len(values) * 0.9)]:6.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part-target", type=float, default=llhls.PART_TARGET)
    parser.add_argument("--next-frame", action="store_true", help="close parts when the next frame arrives (before)")
    args = parser.parse_args()
    source = Path(tempfile.mkdtemp()) / "gop1.flv"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30", "-f", "lavfi", "-i", "sine",
                    "-t", "12", "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-b:v", "2M", "-g", "30",
                    "-keyint_min", "30", "-c:a", "aac", "-f", "flv", str(source)], check=True)
    instrument(args.next_frame)
    asyncio.run(main(source, args.part_target, "closed when the next frame arrives" if args.next_frame else "closed at its last frame"))
