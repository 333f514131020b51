"""Hostile inputs (specs/bad-inputs.md) close only the connection that sent them.

A real ffmpeg publish runs while raw TCP clients send bad bytes; each bad client is closed by the
server with the reason it logs (an exception escaping into asyncio closes a connection too, so
the closing alone proves nothing), and the good publish arrives frame-exact.
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

from rtmpq.media.broadcast import CatalogUpdate

from .conftest import need
from .rtmp_client import TcpPublisher
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
    # name: (bytes sent, the reason the server must log when it closes the connection)
    "bad version": (b"\x06" + bytes(HANDSHAKE_SIZE), "RTMP handshake: unsupported version byte 6"),
    "chunk size with the top bit": (after_connect((2, 0, 1, 0, (0x80000000).to_bytes(4, "big"))), "invalid chunk size 0x80000000"),
    "chunk size zero": (after_connect((2, 0, 1, 0, bytes(4))), "invalid chunk size 0x0"),
    "huge declared messages on many csids": (after_connect(
        # fmt 0 headers declaring 16 MiB video messages, each followed by one 128-byte chunk
        *[bytes([csid]) + bytes(3) + (0xFFFFFF).to_bytes(3, "big") + b"\x09" + b"\x01\x00\x00\x00" + bytes(128)
          for csid in range(4, 60)]), "max_message_size exceeded"),
    "messages just under the size limit on many csids": (after_connect(
        *[bytes([csid]) + bytes(3) + (8 * 1024 * 1024 - 1).to_bytes(3, "big") + b"\x09" + b"\x01\x00\x00\x00" + bytes(128)
          for csid in range(4, 60)]), "max_chunk_streams exceeded"),
    "amf nested 100k deep": (b"\x03" + make_client_c1(digest=False) + bytes(HANDSHAKE_SIZE)
        + ChunkWriter(128).write(3, 0, 20, 0, deep_amf(100_000)), "AMF0 nesting deeper than"),
    "fmt 3 on a csid never seen": (after_connect(bytes([0xC0 | 40]) + bytes(200)), "chunk of fmt 3 opens chunk stream 40"),
    "boolean stream name": (after_connect((8, 0, 20, 1, amf0_encode("publish", 3.0, None, True, "live"))), "publish: stream name is not a string"),
    "path traversal key": (after_connect((8, 0, 20, 1, amf0_encode("publish", 3.0, None, "../../etc/passwd", "live"))), "publish: invalid stream name"),
    # a name no player can ask for (it resolves /live/../ away, and the edge refuses it)
    "dot-dot key": (after_connect((8, 0, 20, 1, amf0_encode("publish", 3.0, None, "..", "live"))), "publish: invalid stream name"),
    # says nothing at all: closed at the handshake deadline
    "silent client": (b"", "no successful connect within 1.5 s"),
    # connects (no key needed) and never publishes: it would hold one of MAX_RTMP_CONNECTIONS for good
    "connected client that never publishes": (after_connect(), "no publish within 1.5 s"),
}


async def send_and_wait_close(port: int, payload: bytes, timeout: float = 10.0) -> tuple[bool, str]:
    """Send bytes; (whether the server closed the connection within the timeout, our address)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    host, local_port = writer.get_extra_info("sockname")[:2]
    try:
        writer.write(payload)
        await writer.drain()
        async with asyncio.timeout(timeout):
            while await reader.read(65536):
                pass
        return True, f"{host}:{local_port}"
    except (ConnectionResetError, BrokenPipeError):
        return True, f"{host}:{local_port}"
    except TimeoutError:
        return False, f"{host}:{local_port}"
    finally:
        writer.close()


def close_reason(caplog, peer: str) -> str | None:
    """The reason the server logged for closing the connection from ``peer``."""
    prefix = f"{peer}: closing connection: "
    for record in caplog.records:
        if record.getMessage().startswith(prefix):
            return record.getMessage()[len(prefix):]
    return None


@pytest.fixture
async def ingest(tmp_path):
    registry = BroadcastRegistry()
    limits = SessionLimits(handshake_timeout=1.5)
    server = IngestNode(registry, IngestConfig(host="127.0.0.1", port=0, limits=limits), PublishConfig(grace_period=0))
    await server.start()
    yield server
    await server.close()


async def test_hostile_clients_are_closed_with_a_logged_reason_while_a_real_publish_goes_on(ingest, tmp_path, caplog):
    need("ffmpeg")
    port = ingest.address[1]
    ref = str(tmp_path / "good.flv")
    collector = asyncio.create_task(collect_broadcast(ingest.registry, "live/good"))
    good = asyncio.create_task(run_process(ffmpeg_publish_args(f"rtmp://127.0.0.1:{port}/live/good", ref, seconds=3)))
    await ingest.registry.wait_for("live/good", 10)
    results = await asyncio.gather(*(send_and_wait_close(port, payload) for payload, _ in HOSTILE.values()))
    # each one closed, for its own reason (an exception escaping the session would close it too)
    got = {name: (closed, close_reason(caplog, peer)) for name, (closed, peer) in zip(HOSTILE, results, strict=True)}
    assert {name: (closed, reason and reason.startswith(HOSTILE[name][1])) for name, (closed, reason) in got.items()} \
        == {name: (True, True) for name in HOSTILE}, got
    assert not [r for r in caplog.records if r.name == "asyncio"], caplog.text
    rc, output = await good
    assert rc == 0, output
    _, frames = await collector
    assert as_packets(frames) == probe_packets(ref)
    # ffmpeg's EOF may come a read window (rtmpq/rtmp/reader.py) after its deleteStream ended the publish
    async with asyncio.timeout(5):
        while ingest.server.connections:
            await asyncio.sleep(0.01)


async def test_a_client_that_unpublishes_and_stays_connected_is_closed_at_the_deadline(ingest, caplog):
    """It would hold one of MAX_RTMP_CONNECTIONS for good: after its publish ends it has the
    handshake deadline to publish again, as after connect."""
    client = await TcpPublisher.publish(ingest.address[1], "quits")
    peer = "%s:%d" % client.writer.get_extra_info("sockname")[:2]
    client.command(0, "deleteStream", 4.0, None, float(client.stream_id))
    assert await client.closed(timeout=10)
    assert close_reason(caplog, peer) == "no publish within 1.5 s"


AAC_CONFIG = b"\xaf\x00\x12\x10"  # AAC LC, 44.1 kHz, stereo
BAD_AFTER_PUBLISH = {
    # (message type, body) sent on the publishing stream, and the reason the log must give
    "truncated video tag": ((9, b"\x17\x01"), "FLV video tag truncated at byte 1"),
    "truncated audio tag": ((8, b"\xaf"), "FLV audio tag truncated at byte 1"),
    "E-RTMP multitrack inside multitrack": ((9, b"\x96\x06avc1\x00"), "FLV video multitrack header is invalid"),
    "deleteStream NaN": ((20, amf0_encode("deleteStream", 4.0, None, float("nan"))), "deleteStream: stream id nan"),
    "deleteStream infinity": ((20, amf0_encode("deleteStream", 4.0, None, float("inf"))), "deleteStream: stream id inf"),
}


@pytest.mark.parametrize("case", BAD_AFTER_PUBLISH)
async def test_bad_bytes_after_publish_close_only_that_publisher_with_a_logged_reason(ingest, caplog, case):
    (type_id, body), reason = BAD_AFTER_PUBLISH[case]
    port = ingest.address[1]
    good = await TcpPublisher.publish(port, "good")
    bad = await TcpPublisher.publish(port, "bad")
    reader = (await ingest.registry.wait_for("live/good", 5)).reader()
    good.media(8, 0, AAC_CONFIG)
    bad.media(8, 0, AAC_CONFIG)
    bad.media(8, 0, b"\xaf\x01" + bytes(10))
    bad.media(8, 0, b"")  # an empty media message (Wowza sends them) is skipped, not an error
    if type_id == 20:
        bad.send(3, 0, 20, 0, body)
    else:
        bad.media(type_id, 23, body)
    assert await bad.closed()
    # the good publisher goes on: its frames after the bad one closed still arrive
    for ts in range(0, 230, 23):
        good.media(8, ts, b"\xaf\x01" + bytes([ts]) * 10)
    got = []
    async with asyncio.timeout(5):
        async for event in reader:
            if not isinstance(event, CatalogUpdate):
                got.append(event.dts)
                if len(got) == 10:
                    break
    assert got == list(range(0, 230, 23))
    bad_peer = bad.local_address
    closes = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"{bad_peer}: closing connection")]
    assert closes and reason in closes[0], caplog.text
    # a logged protocol error, not an exception escaping into asyncio
    assert not [r for r in caplog.records if r.name == "asyncio"], caplog.text
    good.close()
    bad.close()
