"""Subscribers whose connection is gone cost only themselves.

While a healthy subscriber reads a live publish, two others go away: one vanishes behind a
blackhole (its packets stop both ways; the relay's QUIC connection idles out), and one whose
session the relay itself closes for a protocol violation (a joining FETCH on a subscription that
is not at the largest object). The healthy one must get every frame of the publish, and the relay
must forget both dead connections. Before the fix, on aiopquic the relay kept the second one's
subscription after its QUIC connection closed; the next group opened for it raised
``set_stream_priority: cnx not open`` inside the task reading the broadcast, which stopped every
subscriber's delivery.
"""

import asyncio
import logging

import pytest

from rtmpq.moq import events as ev
from rtmpq.moq import transport
from rtmpq.moq.transport import connect_moq
from rtmpq.netem import ImpairmentProxy
from rtmpq.nodes.up import UpNode

from .conftest import local_config, need, read_broadcast
from .publishers import LivePublish, as_packets, ffmpeg_publish_args, probe_packets

IDLE = 3.0  # the relay's QUIC idle timeout here: a vanished subscriber is noticed within the publish


@pytest.fixture(params=["aioquic", "aiopquic"])
async def node(tmp_path, request, monkeypatch):
    monkeypatch.setattr(transport, "IDLE_TIMEOUT", IDLE)  # (the subscribers' side)
    n = UpNode(local_config(tmp_path, request.param, idle_timeout=IDLE))
    await n.start()
    yield n
    await n.close()


async def read_all(port: int, backend: str, frames: list, skipped: list) -> None:
    await read_broadcast(port, backend, "live/gone", frames, skipped)


async def until(condition, seconds: float) -> None:
    async with asyncio.timeout(seconds):
        while not condition():
            await asyncio.sleep(0.05)


async def test_subscribers_that_vanish_cost_the_others_nothing(node, tmp_path, caplog):
    need("ffmpeg")
    caplog.set_level(logging.WARNING)
    backend, port = node.moq_config.backend, node.moq_address[1]
    ref = str(tmp_path / "ref.flv")
    # (30 s at most: it is ended once both are gone and every check is done; the healthy one reads it to its end)
    publisher = LivePublish(ffmpeg_publish_args(
        f"rtmp://127.0.0.1:{node.rtmp.address[1]}/live/gone", ref, seconds=30, size="640x360"))
    await node.registry.wait_for("live/gone", 10)
    frames, skipped = [], []
    healthy = asyncio.create_task(read_all(port, backend, frames, skipped))
    await until(lambda: len(frames) > 30, 15)

    # one vanishes: every packet of its connection is dropped from now on, it never says goodbye
    async with ImpairmentProxy(target=("127.0.0.1", port)) as proxy:
        vanishing_frames: list = []
        vanishing = asyncio.create_task(read_all(proxy.port, backend, vanishing_frames, []))
        await until(lambda: len(vanishing_frames) > 30, 15)
        [side] = proxy._sides.values()  # the proxy's one client: its socket towards the relay
        [vanished] = [c for c in node.moq.connections if c.peer.endswith(f":{side.transport.get_extra_info('sockname')[1]}")]
        proxy.blackhole(600)

        # one is closed by the relay (protocol violation) while subscribed to the video
        async with connect_moq("127.0.0.1", port, insecure=True, backend=backend) as bad:
            got = asyncio.Event()
            bad.handler = lambda _c, e: isinstance(e, ev.ObjectReceived) and got.set()
            rid = bad.session.subscribe(("live", "gone"), "video")
            bad.flush()
            await asyncio.wait_for(got.wait(), 10)
            [closed] = [c for c in node.moq.connections if c is not vanished and c.peer.endswith(
                f":{bad._quic.local_address()[1] if backend == 'aiopquic' else bad._transport.get_extra_info('sockname')[1]}")]
            bad.session.joining_fetch(rid, 1)
            bad.flush()
            await until(lambda: closed not in node.moq.connections, 10)
            assert not [k for k in node.moq._subs if k[0] == id(closed)]
            # new groups begin while its QUIC connection is closed (before the fix: the reader died here)
            newest = max(f.group for f in frames if f.track == "video")
            await until(lambda: max(f.group for f in frames if f.track == "video") > newest, 10)
        # the relay's connection to the vanished one idles out and is forgotten with its subscriptions
        await until(lambda: vanished not in node.moq.connections, IDLE + 10)
        assert not [k for k in node.moq._subs if k[0] == id(vanished)]
        vanishing.cancel()
        await asyncio.gather(vanishing, return_exceptions=True)

    await publisher.finish()
    await asyncio.wait_for(healthy, 20)
    reference = probe_packets(ref)
    assert not skipped
    for track in ("video", "audio"):
        got = as_packets(sorted((f for f in frames if f.track == track), key=lambda f: (f.group, f.index)))
        assert got == [p for p in reference if p.track == track], track
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]
