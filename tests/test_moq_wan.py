"""MoQ over an impaired path: QUIC through the project's seeded UDP impairment proxy."""

import asyncio
import time

from rtmpq.media.catalog import Catalog
from rtmpq.moq.client import SkippedGroup, subscribe_broadcast
from rtmpq.moq.transport import connect_moq
from rtmpq.netem import Impairment, ImpairmentProxy

from .conftest import need
from .publishers import as_packets, ffmpeg_publish_args, probe_packets, run_process


async def subscribe_through(proxy_port: int, broadcast: str, delivery_timeout_ms=None, backend="aioquic"):
    frames, skipped, lateness = [], [], []
    async with connect_moq("127.0.0.1", proxy_port, insecure=True, timeout=20, backend=backend) as conn:
        async for item in subscribe_broadcast(conn, broadcast, delivery_timeout_ms=delivery_timeout_ms):
            if isinstance(item, SkippedGroup):
                skipped.append(item)
            elif not isinstance(item, Catalog):
                frames.append(item)
                lateness.append((time.time_ns() - item.received_ns) / 1e9)
    return frames, skipped, lateness, conn


async def test_100ms_rtt_and_2_percent_loss_deliver_every_object_in_order(node, tmp_path):
    need("ffmpeg")
    ref = str(tmp_path / "ref.flv")
    path = Impairment(delay_ms=50, jitter_ms=5, loss=0.02)
    async with ImpairmentProxy(target=node.moq_address, up=path, down=path, seed=42) as proxy:
        publisher = asyncio.create_task(run_process(
            ffmpeg_publish_args(f"rtmp://127.0.0.1:{node.rtmp.address[1]}/live/wan", ref, seconds=4)))
        await node.registry.wait_for("live/wan", 10)
        frames, skipped, _, _ = await asyncio.wait_for(subscribe_through(proxy.port, "live/wan", backend=node.moq_config.backend), 40)
        rc, output = await publisher
        assert rc == 0, output
        assert proxy.stats["down"].dropped_loss > 0  # the loss really happened
    assert not skipped
    reference = probe_packets(ref)
    for track in ("video", "audio"):
        mine = [f for f in frames if f.track == track]
        # each group on its own stream: in order within a group; a newer group may overtake an older
        for group in {f.group for f in mine}:
            indexes = [f.index for f in mine if f.group == group]
            assert indexes == list(range(len(indexes)))
        mine.sort(key=lambda f: (f.group, f.index))
        assert as_packets(mine) == [p for p in reference if p.track == track]


async def test_a_link_slower_than_the_stream_skips_old_groups_and_stays_within_budget(node, tmp_path):
    need("ffmpeg")
    # The stream is ~470 kbit/s; the link gives 200 kbit/s behind a 10 kB drop-tail queue (400 ms
    # of queueing). Bytes a bottleneck queue already holds cannot be called back, so what the
    # subscriber sees is bounded by its budget plus that queueing delay and the path.
    budget, rate, queue = 1.0, 200_000, 10_000
    down = Impairment(delay_ms=20, rate_bps=rate, queue_bytes=queue)
    async with ImpairmentProxy(target=node.moq_address, up=Impairment(delay_ms=20), down=down, seed=5) as proxy:
        publisher = asyncio.create_task(run_process(
            ffmpeg_publish_args(f"rtmp://127.0.0.1:{node.rtmp.address[1]}/live/slow", str(tmp_path / "r.flv"), seconds=8)))
        await node.registry.wait_for("live/slow", 10)
        queued = []

        async def watch_relay_memory():
            while True:
                queued.append(sum(c.total_queued_bytes() for c in node.moq.connections))
                await asyncio.sleep(0.2)

        watcher = asyncio.create_task(watch_relay_memory())
        frames, skipped, lateness, _ = await asyncio.wait_for(
            subscribe_through(proxy.port, "live/slow", int(budget * 1000), backend=node.moq_config.backend), 60)
        watcher.cancel()
        rc, output = await publisher
        assert rc == 0, output
    assert skipped and {s.track for s in skipped} <= {"video", "audio"}
    assert {s.code for s in skipped} == {0x2}  # DELIVERY_TIMEOUT, as the draft names it
    assert any(f.track == "video" and f.keyframe for f in frames)
    # whatever arrives is recent: the budget, the bottleneck's queueing delay, the path and slack
    lateness.sort()
    assert lateness[int(len(lateness) * 0.95)] < budget + queue * 8 / rate + 0.6, lateness[-10:]
    # audio goes first: the groups skipped are video's (audio fits the link on its own)
    assert sum(f.track == "audio" for f in frames) > 0.8 * sum(p.track == "audio" for p in probe_packets(str(tmp_path / "r.flv")))
    # the relay holds no more than its send budget for this subscriber, however slow the link
    from rtmpq.moq.fanout import DEFAULT_SEND_BUDGET
    assert max(queued) <= DEFAULT_SEND_BUDGET
