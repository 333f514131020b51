"""What `[moq] retry` costs a subscriber: time from connect to its first media object, retry off
and on, each QUIC backend, on loopback and through rtmpq.netem's proxy at 20 ms RTT
(docs/operations.md, "Validating MoQ clients' addresses").

    .venv/bin/python bench/retry_cost.py [CONNECTIONS]

`rtmpq up` in this process with a live ffmpeg publish (tests/publishers.py); CONNECTIONS (20)
sessions in turn per case, each connecting, subscribing and closing at its first media object.
"""

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from rtmpq.media.frames import Frame  # noqa: E402
from rtmpq.moq.client import subscribe_broadcast  # noqa: E402
from rtmpq.moq.transport import connect_moq  # noqa: E402
from rtmpq.netem.proxy import Impairment, ImpairmentProxy  # noqa: E402
from rtmpq.nodes.up import UpNode  # noqa: E402
from tests.conftest import local_config  # noqa: E402
from tests.publishers import ffmpeg_publish_only_args  # noqa: E402

ONE_WAY_DELAYS_MS = (0, 10)  # 0: straight to the node on loopback


async def first_object(port: int, backend: str) -> tuple[float, float]:
    """Seconds from connect to the session being up, and to the first media object."""
    start = time.perf_counter()
    async with connect_moq("127.0.0.1", port, insecure=True, backend=backend, timeout=10) as conn:
        connected = time.perf_counter() - start
        async for item in subscribe_broadcast(conn, "live/m"):
            if isinstance(item, Frame):
                return connected, time.perf_counter() - start
    raise RuntimeError("the broadcast ended before a media object came")


async def main(connections: int) -> None:
    for backend in ("aioquic", "aiopquic"):
        for retry in (False, True):
            config = local_config(Path(tempfile.mkdtemp()), backend)
            config.moq.retry = retry
            node = UpNode(config)
            await node.start()
            publisher = await asyncio.create_subprocess_exec(
                *ffmpeg_publish_only_args(f"rtmp://127.0.0.1:{node.rtmp.address[1]}/live/m", 600),
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
            try:
                await node.registry.wait_for("live/m", 15)
                for delay in ONE_WAY_DELAYS_MS:
                    link = Impairment(delay_ms=delay)
                    async with ImpairmentProxy(target=node.moq_address, up=link, down=link) as proxy:
                        port = proxy.port if delay else node.moq_address[1]
                        times = [await first_object(port, backend) for _ in range(connections)]
                    up = [c * 1000 for c, _ in times]
                    first = [f * 1000 for _, f in times]
                    print(f"{backend:8} retry={'on ' if retry else 'off'} RTT {2 * delay:2} ms: connected "
                          f"{statistics.median(up):6.1f} ms (min {min(up):6.1f}), first object "
                          f"{statistics.median(first):6.1f} ms (min {min(first):6.1f})", flush=True)
            finally:
                publisher.kill()
                await publisher.wait()
                await node.close()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 20))
