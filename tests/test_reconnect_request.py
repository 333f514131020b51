"""Graceful stop with E-RTMP v2's Reconnect Request: a publisher that said in connect that it can
reconnect (capsEx Reconnect) is asked to ([rtmp] reconnect_url), its media taken until it leaves;
the others are stopped at once, as before, and read why. No client on this machine implements the request
(ffmpeg 5.1, GStreamer), so tests/rtmp_client.py's ReconnectingPublisher plays that client."""

import asyncio

import pytest

from rtmpq.config import IngestConfig, NodeConfig
from rtmpq.media.broadcast import BroadcastEnded, CatalogUpdate

from .conftest import need, start_up_node, until
from .publishers import drop_publish, ffmpeg_replay_args, run_process
from .rtmp_client import ReconnectingPublisher


def ingest(**settings) -> IngestConfig:
    return IngestConfig(host="127.0.0.1", port=0, **settings)


async def frames_of(registry, name: str) -> list:
    """Every frame of broadcast ``name`` from when it goes live until it ends."""
    broadcast = await registry.wait_for(name, 20)
    frames = []
    async for event in broadcast.reader():
        if isinstance(event, BroadcastEnded):
            return frames
        if not isinstance(event, CatalogUpdate):
            frames.append(event)


async def test_a_publisher_that_can_reconnect_moves_to_the_reconnect_url_and_no_frame_it_sent_is_lost(tmp_path, source_flv):
    b = await start_up_node(tmp_path / "b")
    b_port = b.rtmp.address[1]
    a = await start_up_node(tmp_path / "a", rtmp=ingest(reconnect_wait=20.0, reconnect_url=f"rtmp://127.0.0.1:{b_port}"),
                            node=NodeConfig(stop_timeout=30.0))
    closing = None
    try:
        on_a = asyncio.ensure_future(frames_of(a.registry, "live/cam"))
        on_b = asyncio.ensure_future(frames_of(b.registry, "live/cam"))
        client = ReconnectingPublisher(source_flv, "cam")
        publishing = asyncio.ensure_future(client.run(a.rtmp.address[1]))
        await until(lambda: client.sent and client.sent[0] >= 20, what="the publish on A")
        loop = asyncio.get_running_loop()
        stopping = loop.time()
        closing = asyncio.ensure_future(a.close())
        await asyncio.wait_for(closing, 15)
        stopped = loop.time()
        await asyncio.wait_for(publishing, 15)
        request = client.request
        assert request == {"level": "status", "code": "NetConnection.Connect.ReconnectRequest",
                           "description": "the server is stopping: please reconnect",
                           "tcUrl": f"rtmp://127.0.0.1:{b_port}/live"}  # the publisher's app appended
        [command] = [v for v in client.statuses if v[3] is request]
        assert command[1:3] == [0.0, None]  # transaction 0, no command object
        # A took every frame the client sent it; B got the rest, from a key frame
        frames_a, frames_b = await asyncio.wait_for(asyncio.gather(on_a, on_b), 10)
        assert len(client.sent) == 2 and len(frames_a) == client.sent[0] and len(frames_b) == client.sent[1] > 0
        assert [f for f in frames_b if f.track == "video"][0].keyframe
        # A's stop waited for the client to leave, not for reconnect_wait
        assert stopping < client.left[0] <= stopped and stopped - stopping < 10
    finally:
        await asyncio.gather(closing if closing is not None else a.close(), return_exceptions=True)
        await b.close()


async def test_an_ffmpeg_publisher_is_stopped_at_once_while_one_that_can_reconnect_is_asked(tmp_path, source_flv):
    need("ffmpeg")
    a = await start_up_node(tmp_path, rtmp=ingest(reconnect_wait=3.0))
    port = a.rtmp.address[1]
    ffmpeg = asyncio.ensure_future(run_process(ffmpeg_replay_args(f"rtmp://127.0.0.1:{port}/live/plain", str(source_flv), 20)))
    client = ReconnectingPublisher(source_flv, "cam", follow=False)
    publishing = asyncio.ensure_future(client.run(port))
    closing = None
    try:
        await until(lambda: client.sent and (plain := a.registry.get("live/plain")) and plain.catalog.tracks,
                    what="both publishes")
        plain = a.registry.get("live/plain")
        loop = asyncio.get_running_loop()
        stopping = loop.time()
        closing = asyncio.ensure_future(a.close())
        # ffmpeg (no capsEx) is stopped and its broadcast ended at once, while the one that said it
        # can reconnect is asked and still publishes (the stop waits for it)
        await until(lambda: not plain.live, 2.5, "ffmpeg's broadcast ended")
        assert client.request is not None and "live/cam" in a.rtmp.publishes and not closing.done()
        rc, output = await asyncio.wait_for(ffmpeg, 10)
        assert rc != 0 and "the server is stopping" in output, output  # its Server error names why
        await asyncio.wait_for(closing, 10)
        assert loop.time() - stopping >= 3.0  # it had reconnect_wait to leave
    finally:
        await drop_publish(ffmpeg)
        publishing.cancel()
        await asyncio.gather(closing if closing is not None else a.close(), return_exceptions=True)


@pytest.mark.parametrize("reconnect_wait, stop_timeout", [(1.0, 5.0), (30.0, 2.0)], ids=["reconnect_wait", "stop_timeout"])
async def test_a_publisher_that_never_leaves_is_stopped_when_reconnect_wait_passes(tmp_path, source_flv, reconnect_wait,
                                                                                   stop_timeout):
    """... or, sooner, 1 s before [node] stop_timeout (the rest of the stop keeps that second)."""
    a = await start_up_node(tmp_path, rtmp=ingest(reconnect_wait=reconnect_wait), node=NodeConfig(stop_timeout=stop_timeout))
    client = ReconnectingPublisher(source_flv, "cam", follow=False)
    publishing = asyncio.ensure_future(client.run(a.rtmp.address[1]))
    closing = None
    try:
        await until(lambda: client.sent and client.sent[0] >= 10, what="the publish")
        loop = asyncio.get_running_loop()
        stopping = loop.time()
        closing = asyncio.ensure_future(a.close())
        await asyncio.wait_for(closing, 10)
        await asyncio.wait_for(publishing, 10)  # the server closed its connection
        # asked, taken until reconnect_wait passed, then stopped as a publisher that cannot move
        codes = [v[3]["code"] for v in client.statuses]
        assert codes[-2:] == ["NetConnection.Connect.ReconnectRequest", "NetStream.Publish.Idle"], codes
        assert 1.0 <= client.left[0] - stopping < 3.0
    finally:
        publishing.cancel()
        await asyncio.gather(closing if closing is not None else a.close(), return_exceptions=True)


async def test_an_ffmpeg_publisher_reads_why_when_the_node_stops(tmp_path, source_flv):
    """With no publisher to wait for, the stop still lets ffmpeg read its onStatus before the
    connection closes (closed under it, its socket was reset: "Broken pipe", no reason)."""
    need("ffmpeg")
    a = await start_up_node(tmp_path, rtmp=ingest())
    ffmpeg = asyncio.ensure_future(run_process(ffmpeg_replay_args(
        f"rtmp://127.0.0.1:{a.rtmp.address[1]}/live/plain", str(source_flv), 20)))
    try:
        await until(lambda: (plain := a.registry.get("live/plain")) and plain.catalog.tracks, what="the publish")
        await a.close()
        rc, output = await asyncio.wait_for(ffmpeg, 10)
        assert rc != 0 and "the server is stopping" in output, output
    finally:
        await drop_publish(ffmpeg)
