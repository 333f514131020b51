"""Interoperability with moq-rs (`import moq`, Rust core) over MoQT draft 16 on loopback.

- moq-rs subscribes to a broadcast that ffmpeg publishes into `rtmpq up` over RTMP.
- a moq-rs publisher announces a broadcast to the rtmpq relay; a moq-rs subscriber gets it through
  the relay (the relay subscribes to the publisher on demand).
"""

import asyncio

import moq
import pytest

from rtmpq.media.flv import read_flv_tags

from .conftest import need, start_up_node, until
from .publishers import ffmpeg_publish_args, run_process


@pytest.fixture
async def node(tmp_path):
    n = await start_up_node(tmp_path)  # aioquic only: the peer under test is the other side
    yield n
    await n.close()


def client(node) -> moq.Client:
    host, port = node.moq_address
    return moq.Client(f"moqt://{host}:{port}", tls_verify=False, websocket_enabled=False, reconnect=False)


async def discover(c: moq.Client, path: str):
    """moq-rs learns routes from the relay's NAMESPACE messages: once the broadcast is announced,
    request_broadcast() resolves it (before that, moq-rs itself refuses an unroutable path)."""
    async def announced():
        async for event in c.announced(""):
            if event.active and event.prefix == path:
                return
    await asyncio.wait_for(announced(), 10)
    return await asyncio.wait_for(c.request_broadcast(path), 10)


async def test_moq_rs_subscribes_to_an_ffmpeg_publish(node, tmp_path):
    need("ffmpeg")
    ref = str(tmp_path / "ref.flv")
    publisher = asyncio.create_task(run_process(
        ffmpeg_publish_args(f"rtmp://127.0.0.1:{node.rtmp.address[1]}/live/rs", ref, seconds=5)))
    await node.registry.wait_for("live/rs", 10)
    groups: dict[int, list[bytes]] = {}
    async with client(node) as c:
        broadcast = await discover(c, "live/rs")
        track = await broadcast.subscribe_track("video")

        async def read():
            async for group in track:
                groups[group.sequence] = [bytes(f.payload) async for f in group]
                if len(groups) >= 2:
                    return

        await asyncio.wait_for(read(), 20)
    rc, output = await publisher
    assert rc == 0, output
    # every group moq-rs got is whole: its frames are exactly the encoder's frames of that GoP,
    # byte for byte (the AVC access units of the FLV tags, after their 5-byte tag header)
    gops: list[list[bytes]] = []
    for tag_type, _, body in read_flv_tags(ref):
        if tag_type == 9 and body[1] == 1:  # AVC NALU packets: the coded frames
            if body[0] >> 4 == 1:
                gops.append([])
            gops[-1].append(body[5:])
    assert len(groups) >= 2
    for seq, frames in groups.items():
        assert frames == gops[seq], seq


async def test_moq_rs_publisher_through_the_rtmpq_relay_to_a_moq_rs_subscriber(node):
    sent = {g: [f"group {g} frame {i}".encode() for i in range(5)] for g in range(3)}
    async with client(node) as pub:
        broadcast = pub.create_broadcast("interop/rs")
        track = broadcast.publish_track("data")
        broadcast.announce()
        await until(lambda: ("interop", "rs") in node.moq._published, what="PUBLISH_NAMESPACE at the relay")
        received: dict[int, list[bytes]] = {}
        async with client(node) as sub:
            consumer = await discover(sub, "interop/rs")
            stream = await consumer.subscribe_track("data")

            async def produce():
                upstream = lambda: node.moq._tracks.get((("interop", "rs"), "data"))  # noqa: E731
                await until(lambda: upstream() is not None and upstream().alias is not None,
                            what="the relay's subscription to the publisher")
                for frames in sent.values():
                    group = track.append_group()
                    for f in frames:
                        group.write_frame(f)
                    group.finish()
                    await asyncio.sleep(0.1)

            async def read():
                async for group in stream:
                    received[group.sequence] = [bytes(f.payload) async for f in group]
                    if len(received) == len(sent):
                        return

            producer = asyncio.create_task(produce())
            await asyncio.wait_for(read(), 15)
            await producer
    assert received == sent  # each group under its own sequence number, frames byte for byte


async def test_moq_rs_subscribes_through_a_relay_below(node, tmp_path):
    """ffmpeg -> `rtmpq up` (A) <- relay B (--upstream A) <- moq-rs. moq-rs subscribes only to a
    broadcast it has seen announced (SUBSCRIBE_NAMESPACE), and B listed only what was published
    into B itself: through a relay chain moq-rs found nothing to play (found deploying the nodes
    apart). B now lists what its upstream lists, and moq-rs plays through it."""
    from .test_moq_fetch import relay_below_node

    need("ffmpeg")
    ref = str(tmp_path / "ref.flv")
    publisher = asyncio.create_task(run_process(
        ffmpeg_publish_args(f"rtmp://127.0.0.1:{node.rtmp.address[1]}/live/below", ref, seconds=5)))
    await node.registry.wait_for("live/below", 10)
    groups: dict[int, int] = {}
    async with relay_below_node(node, tmp_path) as port_b:
        c = moq.Client(f"moqt://127.0.0.1:{port_b}", tls_verify=False, websocket_enabled=False, reconnect=False)
        async with c:
            broadcast = await discover(c, "live/below")
            track = await broadcast.subscribe_track("video")

            async def read():
                async for group in track:
                    groups[group.sequence] = len([f async for f in group])
                    if len(groups) >= 1:
                        return

            await asyncio.wait_for(read(), 20)
    rc, output = await publisher
    assert rc == 0, output
    assert groups and all(n > 0 for n in groups.values())
