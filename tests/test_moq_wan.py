"""MoQ over an impaired path: QUIC through the project's seeded UDP impairment proxy."""

import asyncio
import subprocess
import time

import pytest

from rtmpq.media.catalog import Catalog
from rtmpq.moq.client import SkippedGroup, subscribe_broadcast
from rtmpq.moq.fanout import DEFAULT_DELIVERY_TIMEOUT
from rtmpq.moq.transport import connect_moq
from rtmpq.netem import Impairment, ImpairmentProxy

from .conftest import need
from .publishers import as_packets, ffmpeg_publish_args, probe_packets, run_process
from .wan.scoreboard import SUBSCRIBER_READY_TIMEOUT, subscribe_in_child, subscriber_ready


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
        # reliability, not liveness: a budget well above the path (the default 2 s one resets a
        # group that a CPU-starved run delivers late; test_default_budget... covers the budget)
        frames, skipped, _, _ = await asyncio.wait_for(
            subscribe_through(proxy.port, "live/wan", 10_000, backend=node.moq_config.backend), 40)
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
    # audio goes first: a larger share of audio than of video arrives (audio fits the link on its
    # own), and fewer of its groups are skipped. Some are: an audio object can wait past the budget
    # behind video already in the bottleneck queue (or a retransmission), and on aiopquic the
    # relay's acknowledgement estimate calls audio late though it arrived (measured 2026-11-29: the
    # joined group's audio reached the subscriber within 0.3 s and was reset at 1.0 s, in every
    # run; in some runs one or two more, judged in doubt on this lossy queue: 1 to 3 of the 4
    # audio groups, 3 in one CI run). The subscriber still gets most of the audio.
    skipped_audio = {s.group for s in skipped if s.track == "audio"}
    skipped_video = {s.group for s in skipped if s.track == "video"}
    assert len(skipped_audio) < len(skipped_video), skipped
    reference = probe_packets(str(tmp_path / "r.flv"))
    share = {track: sum(f.track == track for f in frames) / sum(p.track == track for p in reference)
             for track in ("audio", "video")}
    assert share["audio"] > 0.6 and share["audio"] > share["video"], (share, skipped)
    # the relay holds no more than its send budget for this subscriber, however slow the link
    from rtmpq.moq.fanout import DEFAULT_SEND_BUDGET
    assert max(queued) <= DEFAULT_SEND_BUDGET


@pytest.fixture(scope="module")
def hd_source(tmp_path_factory) -> str:
    """12 s of 720p30 H.264 at 2.6 Mbit/s (2 s GoP) + AAC, encoded once and replayed with -c copy."""
    need("ffmpeg")
    path = str(tmp_path_factory.mktemp("hd") / "hd.flv")
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30", "-f", "lavfi",
                    "-i", "sine=sample_rate=44100", "-t", str(HD_SECONDS), "-c:v", "libx264", "-preset", "ultrafast",
                    "-b:v", "2600k", "-maxrate", "2600k", "-bufsize", "1300k", "-g", "60", "-keyint_min", "60",
                    "-sc_threshold", "0", "-c:a", "aac", "-f", "flv", path], check=True)
    return path


# Six groups: the floors below allow one skipped group. A connection's first group through 2% loss
# can miss its budget while the congestion window is still small (CI, pure-Python, aioquic: group 0
# skipped, 189 of 240 video objects with 8 s = four groups), which is the budget doing its job.
HD_SECONDS = 12


async def test_default_budget_keeps_a_lossy_720p_link_live(node, hd_source):
    """The relay's default delivery timeout (2 s) holds on both backends: a 2.6 Mbit/s 720p stream
    over 100 ms RTT and 2% loss either arrives, or its old groups are skipped and signalled, never
    seconds behind. (aioquic with its own NewReno carried ~0.8 Mbit/s at this loss, most of each
    video group skipped; with rtmpq's congestion controller, moq/congestion.py, all of it.)"""
    budget = DEFAULT_DELIVERY_TIMEOUT
    path = Impairment(delay_ms=50, jitter_ms=5, loss=0.02)
    # the subscriber and its impairment proxy in a child process, as a viewer on another machine:
    # on one event loop with the relay, a pure-Python QUIC client and proxy take the relay's CPU
    # and inflate the RTT on a loaded machine (docs/reliability.md, "WAN profiles"); whatever has
    # not arrived by the timeout is late anyway (and counted as missing)
    # (started first, and the publisher only once its session is up: it waits for the broadcast,
    # so its interpreter's start-up on a loaded machine does not delay its join)
    ready = asyncio.Event()
    subscriber = asyncio.create_task(subscribe_in_child(
        node.moq_address, "live/hd", path, path, backend=node.moq_config.backend, seed=42,
        timeout=HD_SECONDS + budget + 25, wait=20, on_ready=lambda now: ready.set()))
    why = await subscriber_ready(ready, subscriber, SUBSCRIBER_READY_TIMEOUT)
    if why is not None:
        subscriber.cancel()
        await asyncio.gather(subscriber, return_exceptions=True)
        pytest.fail(f"the subscriber never got ready ({why})")
    publisher = asyncio.create_task(run_process(
        ["ffmpeg", "-v", "error", "-nostdin", "-re", "-i", hd_source, "-c", "copy", "-f", "flv",
         f"rtmp://127.0.0.1:{node.rtmp.address[1]}/live/hd"]))
    out = await subscriber
    rc, output = await publisher
    assert rc == 0, output
    assert out["proxy"]["down"]["dropped_loss"] > 0
    assert not [e for e in out["errors"] if not e.startswith("TimeoutError")], out["errors"]
    frames = [f for _, _, f in out["got"]]
    lateness = [lat for _, lat, _ in out["got"]]
    skipped = [(s.track, s.group, s.code) for s in out["skipped"]]
    reference = probe_packets(hd_source)
    sizes = [0]  # video objects per group, from the file: a group starts at each key frame
    for p in (p for p in reference if p.track == "video"):
        if p.keyframe and sizes[-1]:
            sizes.append(0)
        sizes[-1] += 1
    video = [f for f in frames if f.track == "video"]
    got: dict[int, int] = {}
    for f in video:
        got[f.group] = got.get(f.group, 0) + 1
    skipped_video = {g for t, g, _ in skipped if t == "video"}
    assert {code for _, _, code in skipped} <= {0x2}  # DELIVERY_TIMEOUT
    # a group arrives whole, or the subscriber is told it was skipped: never cut silently
    for group, count in got.items():
        assert count == sizes[group] or group in skipped_video, (group, count, sizes, skipped)
    # what arrives is live: within the budget + the path (100 ms RTT, retransmissions) + slack
    lateness.sort()
    p99 = lateness[int(len(lateness) * 0.99)]
    assert p99 < budget + 0.5, (p99, lateness[-5:], skipped)
    # and it is not a subscriber that got nothing: a share of the stream arrives. aioquic: every
    # video object in our runs (18-30% before moq/congestion.py); aiopquic: 64-100% (one or two
    # groups skipped in some runs on a loaded machine)
    floor = 0.8 if node.moq_config.backend == "aioquic" else 0.1
    assert len(video) >= floor * sum(sizes), (len(video), sum(sizes), skipped)
    audio_published = sum(p.track == "audio" for p in reference)
    assert sum(f.track == "audio" for f in frames) >= 0.7 * audio_published
