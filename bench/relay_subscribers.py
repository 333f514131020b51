"""N MoQ subscribers in one process (run by bench_relay.py and relay_latency.py): prints bytes
received and latencies as JSON.

    relay_subscribers.py PORT BROADCAST N BACKEND [raw]

With ``raw`` the JSON also holds every latency (ms), the same objects' latency when this
process's Python first saw their bytes (``drain_ms``: when the MoQ session parsed them out of
aiopquic's stream event, before the subscriber's queue and task), and this process's event-loop
lag (``lag_ms``: how late a timer due every 5 ms fired)."""

import asyncio
import json
import resource
import sys
import time

from rtmpq.media.catalog import Catalog
from rtmpq.moq import events as ev
from rtmpq.moq.client import SkippedGroup, subscribe_broadcast
from rtmpq.moq.loc import EXT_RECEIVED_US
from rtmpq.moq.session import MoqSession
from rtmpq.moq.transport import connect_moq

RAW = len(sys.argv) > 5 and sys.argv[5] == "raw"
drain_ms: list[float] = []
lag_ms: list[float] = []


def stamp_drains() -> None:
    handle = MoqSession.handle_event
    first_group: dict[tuple[int, int], int] = {}  # (session, track alias) -> group at join: not counted

    def handle_event(self, event) -> list:
        t = time.time_ns()
        out = handle(self, event)
        for e in out:
            if type(e) is ev.ObjectReceived and first_group.setdefault((id(self), e.track_alias), e.group) != e.group:
                received_us = e.extensions.get(EXT_RECEIVED_US) if e.extensions else None
                if received_us:
                    drain_ms.append((t - int(received_us) * 1000) / 1e6)
        return out
    MoqSession.handle_event = handle_event


async def probe_lag(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        due = loop.time() + 0.005
        await asyncio.sleep(0.005)
        lag_ms.append((loop.time() - due) * 1e3)


async def one(port: int, broadcast: str, stats: dict, backend: str) -> None:
    first_group: dict[str, int] = {}  # the group cached at join time is old on arrival: not counted
    async with connect_moq("127.0.0.1", port, insecure=True, timeout=30, backend=backend) as conn:
        async for item in subscribe_broadcast(conn, broadcast):
            if isinstance(item, SkippedGroup):
                stats["skipped"] += 1
            elif not isinstance(item, Catalog):
                stats["bytes"] += item.size
                stats["objects"] += 1
                first_group.setdefault(item.track, item.group)
                if item.received_ns and item.group != first_group[item.track]:
                    stats["latency_ms"].append((time.time_ns() - item.received_ns) / 1e6)


async def main(port: int, broadcast: str, count: int, backend: str) -> None:
    stats = {"bytes": 0, "objects": 0, "skipped": 0, "latency_ms": []}
    stop = asyncio.Event()
    lag = asyncio.ensure_future(probe_lag(stop)) if RAW else None
    await asyncio.gather(*(one(port, broadcast, stats, backend) for _ in range(count)), return_exceptions=True)
    stop.set()
    if lag is not None:
        await lag
    lat = stats.pop("latency_ms")
    if RAW:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        stats.update(latency_ms=lat, drain_ms=drain_ms, lag_ms=lag_ms, cpu_s=usage.ru_utime + usage.ru_stime)
    lat = sorted(lat)
    stats["latency_p50_ms"] = lat[len(lat) // 2] if lat else None
    stats["latency_p99_ms"] = lat[int(len(lat) * 0.99)] if lat else None
    print(json.dumps(stats))


if __name__ == "__main__":
    if RAW:
        stamp_drains()
    asyncio.run(main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]))
