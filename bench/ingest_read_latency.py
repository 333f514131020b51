"""What the shared RTMP reader's coalescing window adds to a message's way in, and what it saves.

    .venv/bin/python bench/ingest_read_latency.py [--publishers 1 10 50] [--windows 0 0.01 0.02] [--seconds 6]

N publishers in a child process (tests/rtmp_client.TcpPublisher over loopback), each sending a
1 kB audio message every 23 ms (AAC at 44.1 kHz; the publishers are staggered), with the
wall-clock time of the send in the payload. An IngestNode in this process, with ``[rtmp]
read_coalesce`` set to each window in turn, stamps each frame when it reads it
(``Frame.received_ns``); delay = received_ns - sent. Also the node's CPU time (this process, the
child excluded) per publisher, and the reader's wakeups and reads.
"""

import argparse
import asyncio
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rtmpq.config import IngestConfig, PublishConfig  # noqa: E402
from rtmpq.media.broadcast import BroadcastRegistry  # noqa: E402
from rtmpq.media.frames import Frame  # noqa: E402
from rtmpq.nodes.ingest import IngestNode  # noqa: E402

INTERVAL = 0.023
AAC_CONFIG = b"\xaf\x00\x12\x10"

CHILD = r"""
import asyncio, sys, time
sys.path.insert(0, sys.argv[1])
from tests.rtmp_client import TcpPublisher
port, n, seconds, interval = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
async def one(i):
    p = await TcpPublisher.publish(port, f"p{i}")
    p.media(8, 0, b"\xaf\x00\x12\x10")
    await asyncio.sleep(interval * i / n)  # staggered
    start = time.monotonic()
    k = 0
    while (t := time.monotonic() - start) < seconds:
        p.media(8, int(t * 1000), b"\xaf\x01" + time.time_ns().to_bytes(8, "big") + bytes(1000))
        k += 1
        await asyncio.sleep(max(0.0, start + k * interval - time.monotonic()))
    await p.writer.drain()
    p.close()
async def main():
    await asyncio.gather(*(one(i) for i in range(n)))
asyncio.run(main())
"""


async def measure(publishers: int, window: float, seconds: float) -> dict:
    node = IngestNode(BroadcastRegistry(), IngestConfig(host="127.0.0.1", port=0, read_coalesce=window),
                      PublishConfig(grace_period=0))
    await node.start()
    delays: list[int] = []

    def listener(event) -> None:
        if type(event) is Frame and len(event.payload) > 8:
            delays.append(event.received_ns - int.from_bytes(event.payload[:8], "big"))

    async def watch(i: int) -> None:
        (await node.registry.wait_for(f"live/p{i}", 30)).listen(listener)

    watchers = [asyncio.create_task(watch(i)) for i in range(publishers)]
    t0 = os.times()
    child = await asyncio.create_subprocess_exec(sys.executable, "-c", CHILD, str(ROOT), str(node.address[1]),
                                                 str(publishers), str(seconds), str(INTERVAL))
    await child.wait()
    async with asyncio.timeout(10):
        while node.server.connections:
            await asyncio.sleep(0.05)
    t1 = os.times()
    await asyncio.gather(*watchers)
    reader = node.server.reader
    await node.close()
    delays.sort()
    ms = [d / 1e6 for d in delays]
    cpu = (t1.user - t0.user) + (t1.system - t0.system)
    return {"publishers": publishers, "window_ms": window * 1000, "frames": len(ms),
            "p50_ms": round(statistics.median(ms), 2), "p99_ms": round(ms[int(len(ms) * 0.99)], 2),
            "max_ms": round(ms[-1], 2), "cores_per_publisher": round(cpu / publishers / seconds, 4),
            "wakeups": reader.wakeups if reader is not None else None,
            "reads": reader.reads if reader is not None else None}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--publishers", type=int, nargs="+", default=[1, 10, 50])
    ap.add_argument("--windows", type=float, nargs="+", default=[0.0, 0.01, 0.02])
    ap.add_argument("--seconds", type=float, default=6.0)
    args = ap.parse_args()
    print(f"{'publishers':>10} {'window ms':>9} {'frames':>7} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} "
          f"{'cores/pub':>9} {'wakeups':>8} {'reads':>7}  load")
    for n in args.publishers:
        for w in args.windows:
            r = asyncio.run(measure(n, w, args.seconds))
            print(f"{n:>10} {r['window_ms']:>9g} {r['frames']:>7} {r['p50_ms']:>7} {r['p99_ms']:>7} {r['max_ms']:>7} "
                  f"{r['cores_per_publisher']:>9} {r['wakeups']!s:>8} {r['reads']!s:>7}  "
                  f"{' '.join(open('/proc/loadavg').read().split()[:3])}", flush=True)


if __name__ == "__main__":
    main()
