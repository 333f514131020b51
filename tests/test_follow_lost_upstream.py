"""An upstream that dies without a word (SIGKILL, a container or host gone) and comes back.

Found deploying nodes apart: the relay an edge subscribes through was killed and restarted 4 s
later, and the edge's playlists stopped for good. A killed node sends no CONNECTION_CLOSE, and
its successor cannot reset the old connection (a new stateless-reset secret), so the edge learns
of the loss only at QUIC's idle timeout (then 30 s, now 10 s), which was also `[upstream] wait` (30 s) by default.
``follow_broadcast`` counted the wait from the last media, so at the moment it learned of the
loss the wait was over: it gave up without one reconnection attempt ("lost and not back within
30 s"), however soon the upstream had come back. The wait for a lost upstream now runs from when
the loss is known."""

import asyncio

import pytest

from rtmpq.media.frames import Frame
from rtmpq.moq import transport
from rtmpq.moq.follow import follow_broadcast
from rtmpq.netem import ImpairmentProxy

from .conftest import need, start_up_node
from .publishers import end_live_publish, ffmpeg_publish_args, run_process

IDLE = 1.5  # QUIC idle timeout here (10 s in a node); the wait is the same, as by default


@pytest.mark.parametrize("backend", ["aioquic", "aiopquic"])
async def test_follow_reconnects_to_an_upstream_lost_without_a_word(tmp_path, monkeypatch, backend):
    need("ffmpeg")
    monkeypatch.setattr(transport, "IDLE_TIMEOUT", IDLE)  # (the follower's side)
    node = await start_up_node(tmp_path, backend, idle_timeout=IDLE)
    try:
        host, port = node.moq_address
        publisher = asyncio.create_task(run_process(ffmpeg_publish_args(
            f"rtmp://127.0.0.1:{node.rtmp.address[1]}/live/kill", str(tmp_path / "ref.flv"), seconds=12)))
        await node.registry.wait_for("live/kill", 10)
        async with ImpairmentProxy(target=(host, port)) as proxy:
            frames: list[Frame] = []
            lost_at: list[float] = []
            loop = asyncio.get_running_loop()

            async def follow():
                async for item in follow_broadcast("127.0.0.1", proxy.port, "live/kill", wait=IDLE, insecure=True,
                                                   backend=backend):
                    if isinstance(item, Frame):
                        frames.append(item)
                        if len(frames) == 60:
                            # the upstream goes dark (killed); it answers again (restarted) after
                            # the idle timeout has closed the session, well within the wait from then
                            proxy.blackhole(IDLE + 0.5)
                            lost_at.append(loop.time())

            follower = asyncio.create_task(follow())
            async with asyncio.timeout(30):
                while not (lost_at and len(frames) > 60 + 30) and not follower.done():
                    await asyncio.sleep(0.05)
            assert not follower.done(), follower.exception()
            assert frames[-1].group > frames[59].group  # media of later groups after the loss
        follower.cancel()
        await end_live_publish(publisher)
    finally:
        await node.close()
