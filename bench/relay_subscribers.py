"""N MoQ subscribers in one process (run by bench_relay.py): prints bytes received and latencies as JSON."""

import asyncio
import json
import sys
import time

from rtmpq.media.catalog import Catalog
from rtmpq.moq.client import SkippedGroup, subscribe_broadcast
from rtmpq.moq.transport import connect_moq


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
    await asyncio.gather(*(one(port, broadcast, stats, backend) for _ in range(count)), return_exceptions=True)
    lat = sorted(stats.pop("latency_ms"))
    stats["latency_p50_ms"] = lat[len(lat) // 2] if lat else None
    stats["latency_p99_ms"] = lat[int(len(lat) * 0.99)] if lat else None
    print(json.dumps(stats))


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]))
