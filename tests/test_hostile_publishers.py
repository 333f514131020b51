"""Hostile inputs (specs/bad-inputs.md) close only the connection that sent them.

A real ffmpeg publish runs while raw TCP clients send bad bytes; each bad client is closed by the
server, and the good publish arrives frame-exact.
"""

import asyncio

import pytest

from rtmpq.codec import amf0_encode
from rtmpq.config import IngestConfig, PublishConfig
from rtmpq.media.broadcast import BroadcastRegistry
from rtmpq.rtmp.chunk_writer import ChunkWriter
from rtmpq.rtmp.handshake import HANDSHAKE_SIZE, make_client_c1
from rtmpq.rtmp.session import SessionLimits
from rtmpq.nodes.ingest import IngestNode

from .conftest import need
from .publishers import as_packets, collect_broadcast, ffmpeg_publish_args, probe_packets, run_process


def after_connect(*messages: tuple) -> bytes:
    """Handshake + connect + createStream, then the given raw messages."""
    w = ChunkWriter(128)
    out = b"\x03" + make_client_c1(digest=False) + bytes(HANDSHAKE_SIZE)
    out += w.write(3, 0, 20, 0, amf0_encode("connect", 1.0, {"app": "live"}))
    out += w.write(3, 0, 20, 0, amf0_encode("createStream", 2.0, None))
    for m in messages:
        if isinstance(m, bytes):
            out += m
        else:
            out += w.write(*m)
    return out


def deep_amf(depth: int) -> bytes:
    return amf0_encode("connect", 1.0) + b"\x03\x00\x01a" * depth  # objects nested in objects


HOSTILE = {
    "bad version": b"\x06" + bytes(HANDSHAKE_SIZE),
    "chunk size with the top bit": after_connect((2, 0, 1, 0, (0x80000000).to_bytes(4, "big"))),
    "chunk size zero": after_connect((2, 0, 1, 0, bytes(4))),
    "huge declared messages on many csids": after_connect(
        # fmt 0 headers declaring 16 MiB video messages, each followed by one 128-byte chunk
        *[bytes([csid]) + bytes(3) + (0xFFFFFF).to_bytes(3, "big") + b"\x09" + b"\x01\x00\x00\x00" + bytes(128)
          for csid in range(4, 60)]),
    "amf nested 100k deep": b"\x03" + make_client_c1(digest=False) + bytes(HANDSHAKE_SIZE)
        + ChunkWriter(128).write(3, 0, 20, 0, deep_amf(100_000)),
    "fmt 3 on a csid never seen": after_connect(bytes([0xC0 | 40]) + bytes(200)),
    "boolean stream name": after_connect((8, 0, 20, 1, amf0_encode("publish", 3.0, None, True, "live"))),
    "path traversal key": after_connect((8, 0, 20, 1, amf0_encode("publish", 3.0, None, "../../etc/passwd", "live"))),
}


async def send_and_wait_close(port: int, payload: bytes, timeout: float = 10.0) -> bool:
    """Send bytes; True when the server closes the connection (EOF or reset) within the timeout."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        await writer.drain()
        async with asyncio.timeout(timeout):
            while await reader.read(65536):
                pass
        return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    finally:
        writer.close()


@pytest.fixture
async def ingest(tmp_path):
    registry = BroadcastRegistry()
    limits = SessionLimits(handshake_timeout=1.5)
    server = IngestNode(registry, IngestConfig(host="127.0.0.1", port=0, limits=limits), PublishConfig(grace_period=0))
    await server.start()
    yield server
    await server.close()


async def test_hostile_clients_are_closed_while_a_real_publish_goes_on(ingest, tmp_path):
    need("ffmpeg")
    port = ingest.address[1]
    ref = str(tmp_path / "good.flv")
    collector = asyncio.create_task(collect_broadcast(ingest.registry, "live/good"))
    good = asyncio.create_task(run_process(ffmpeg_publish_args(f"rtmp://127.0.0.1:{port}/live/good", ref, seconds=3)))
    await ingest.registry.wait_for("live/good", 10)
    closed = await asyncio.gather(*(send_and_wait_close(port, payload) for payload in HOSTILE.values()))
    assert dict(zip(HOSTILE, closed, strict=True)) == {name: True for name in HOSTILE}
    # a client that connects and says nothing is closed at the handshake deadline
    assert await send_and_wait_close(port, b"", timeout=5.0)
    rc, output = await good
    assert rc == 0, output
    _, frames = await collector
    assert as_packets(frames) == probe_packets(ref)
    assert len(ingest.server.connections) == 0
