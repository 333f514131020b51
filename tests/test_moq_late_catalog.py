"""Found by `make soak`: a MoQ subscriber that joins once the catalog is older than its delivery
budget (here: after a publisher reconnected with the same tracks, so the catalog did not change)
got no catalog, hence nothing at all, until its QUIC idle timeout."""

import asyncio

from rtmpq.media.catalog import Catalog
from rtmpq.moq.client import subscribe_broadcast
from rtmpq.moq.transport import connect_moq

from .conftest import need, start_up_node
from .publishers import end_live_publish, run_process


def publish(port: int, seconds: float) -> list[str]:
    return ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-re", "-f", "lavfi", "-i",
            "testsrc2=size=320x240:rate=30", "-t", str(seconds), "-c:v", "libx264", "-preset", "ultrafast",
            "-g", "30", "-f", "flv", f"rtmp://127.0.0.1:{port}/live/again"]


async def items(node, seconds: float) -> list:
    """What a subscriber of live/again gets until it has more than a second of frames (30), or in
    at most ``seconds``."""
    got = []
    try:
        async with connect_moq(*node.moq_address, insecure=True, timeout=20) as conn:
            async with asyncio.timeout(seconds):
                async for item in subscribe_broadcast(conn, "live/again", wait=10):
                    got.append(item)
                    if sum(not isinstance(i, Catalog) for i in got) > 30:
                        break
    except TimeoutError:
        pass
    return got


async def test_a_subscriber_after_a_publisher_reconnect_gets_the_catalog_and_frames(tmp_path):
    need("ffmpeg")
    node = await start_up_node(tmp_path, grace_period=10)
    try:
        port = node.rtmp.address[1]
        first = asyncio.create_task(run_process(publish(port, 6)))
        await node.registry.wait_for("live/again", 20)
        assert len(await items(node, 4)) > 30
        assert (await first)[0] == 0
        await asyncio.sleep(1)
        second = asyncio.create_task(run_process(publish(port, 12)))
        await asyncio.sleep(3)  # the same tracks again: the catalog is unchanged, and 5+ s old
        got = await items(node, 6)
        assert got and isinstance(got[0], Catalog) and got[0].track("video") is not None
        assert sum(not isinstance(i, Catalog) for i in got) > 30
        await end_live_publish(second)
    finally:
        await node.close()
