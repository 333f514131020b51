"""A separate `rtmpq edge` asked for names nothing publishes: it opens a MoQ session upstream for
each name a player asks for and waits for it ([upstream] wait), and the relay above counts the
edge's sessions against its per-address limit. Requests for made-up names held that limit, and
real broadcasts could not be opened (503 for as long as they were held)."""

import asyncio
import socket

from rtmpq.config import Config, HttpConfig, UpstreamConfig
from rtmpq.nodes.nodes import run_edge
from rtmpq.nodes.up import UpNode

from .conftest import free_port, http_get, local_config, need, until, wait_tcp
from .test_lifecycle import long_publish_args, spawn


async def test_made_up_names_cannot_keep_a_separate_edge_from_opening_a_real_broadcast(tmp_path):
    need("ffmpeg")
    config = local_config(tmp_path)
    config.moq.max_connections_per_ip = 6  # the relay above: 256 by default, a few here
    node = UpNode(config)
    await node.start()
    host, port = node.moq_address
    edge = Config(http=HttpConfig(host="127.0.0.1", port=free_port(socket.SOCK_STREAM), max_pending_broadcasts=4),
                  upstream=UpstreamConfig(url=f"moqt://{host}:{port}", insecure=True, backend=config.moq.backend))
    stop = asyncio.Event()
    task = asyncio.create_task(run_edge(edge, stop))
    publisher = None
    try:
        await wait_tcp(edge.http.port)
        base = f"http://127.0.0.1:{edge.http.port}/live"
        publisher = await spawn(long_publish_args(f"rtmp://127.0.0.1:{node.rtmp.address[1]}/live/real", seconds=60))
        await node.registry.wait_for("live/real", 20)
        # 20 names nothing publishes, asked at once (were: 20 sessions held upstream for 30 s)
        answers = await asyncio.gather(*(http_get(f"{base}/fake{i}/index.m3u8", deadline=10) for i in range(20)))
        assert all(status in (404, 503) for status, _ in answers), answers
        # the real broadcast opens all the same: one of the made-up names upstream said it does
        # not have is let go for it
        async def plays() -> bool:
            status, _ = await http_get(f"{base}/real/index.m3u8", deadline=5)
            return status == 200

        await until(plays, 20, "the real broadcast's playlist at the edge")
        assert len(node.moq.connections) <= 4 + 1  # the edge's sessions upstream: the waited-for names and the real one
    finally:
        if publisher is not None and publisher.returncode is None:
            publisher.kill()
            await publisher.wait()
        stop.set()
        await task
        await node.close()
