"""The shared reader of RTMP sockets (rtmpq/rtmp/reader.py): one epoll, many publishers.

Every connection of the ingest is read by the server's SharedReader, not by its transport; these
check that many publishers read this way get every frame in order, that a bad or broken one is
closed alone, and that the coalescing window holds: reads of a busy server wait for it, a quiet
server's first read does not.
"""

import asyncio
import fcntl
import select
import socket
import sys
import termios

import pytest

from rtmpq.codec import NEED_DATA
from rtmpq.config import ConfigError, IngestConfig, PublishConfig, load_config
from rtmpq.media.broadcast import BroadcastEnded, BroadcastRegistry, CatalogUpdate
from rtmpq.nodes.ingest import IngestNode
from rtmpq.rtmp.reader import INGEST_READ_COALESCE, SharedReader

from .rtmp_client import TcpPublisher

AAC_CONFIG = b"\xaf\x00\x12\x10"  # AAC LC, 44.1 kHz, stereo


def aac(ts: int, tag: int) -> bytes:
    return b"\xaf\x01" + tag.to_bytes(2, "big") + bytes([ts & 0xFF]) * 20


async def start_ingest(coalesce: float = INGEST_READ_COALESCE) -> IngestNode:
    node = IngestNode(BroadcastRegistry(), IngestConfig(host="127.0.0.1", port=0, read_coalesce=coalesce),
                      PublishConfig(grace_period=0))
    await node.start()
    return node


async def frames_of(registry: BroadcastRegistry, name: str, count: int, timeout: float = 10.0) -> list:
    out = []
    reader = (await registry.wait_for(name, timeout)).reader()
    async with asyncio.timeout(timeout):
        async for event in reader:
            if isinstance(event, BroadcastEnded):
                break
            if not isinstance(event, CatalogUpdate):
                out.append(event)
                if len(out) == count:
                    break
    return out


async def wait_until(cond, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("coalesce", [0.002, 0.02])
async def test_many_publishers_are_read_by_one_reader_every_frame_in_order(coalesce):
    node = await start_ingest(coalesce)
    try:
        server = node.server
        port = node.address[1]
        pubs = await asyncio.gather(*(TcpPublisher.publish(port, f"p{i}") for i in range(20)))
        # their sockets are the reader's, not their transports'
        assert len(server.reader) == 20
        assert not any(c.transport.is_reading() for c in server.connections)
        n = 60
        collectors = [asyncio.create_task(frames_of(node.registry, f"live/p{i}", n)) for i in range(20)]
        for p in pubs:
            p.media(8, 0, AAC_CONFIG)
        for k in range(n):  # interleaved across publishers, a few messages at a time
            for i, p in enumerate(pubs):
                p.media(8, 23 * k, aac(23 * k, i))
            if k % 5 == 4:
                await asyncio.gather(*(p.writer.drain() for p in pubs))
                await asyncio.sleep(0)
        got = await asyncio.gather(*collectors)
        for i, frames in enumerate(got):
            assert [f.dts for f in frames] == [23 * k for k in range(n)], i
            assert {bytes(f.payload[:2]) for f in frames} == {i.to_bytes(2, "big")}, i
        assert server.reader.reads > 0
        for p in pubs:
            p.close()
        await wait_until(lambda: not server.connections)
        assert len(server.reader) == 0
    finally:
        await node.close()


async def test_a_publisher_sending_garbage_is_closed_alone(caplog):
    node = await start_ingest(0.01)
    try:
        port = node.address[1]
        goods = [await TcpPublisher.publish(port, f"good{i}") for i in range(3)]
        bad = await TcpPublisher.publish(port, "bad")
        collectors = [asyncio.create_task(frames_of(node.registry, f"live/good{i}", 20)) for i in range(3)]
        for g in goods:
            g.media(8, 0, AAC_CONFIG)
        bad.writer.write(bytes([0xC0 | 40]) + b"\xff" * 300)  # fmt 3 on a chunk stream never opened
        assert await bad.closed()
        for k in range(20):
            for i, g in enumerate(goods):
                g.media(8, 23 * k, aac(23 * k, i))
        for frames in await asyncio.gather(*collectors):
            assert [f.dts for f in frames] == [23 * k for k in range(20)]
        reasons = [r.getMessage() for r in caplog.records
                   if r.getMessage().startswith(f"{bad.local_address}: closing connection: ")]
        assert reasons and "fmt 3 opens chunk stream 40" in reasons[0], caplog.text
        assert not [r for r in caplog.records if r.name == "asyncio"], caplog.text
        await wait_until(lambda: len(node.server.connections) == 3)
        assert len(node.server.reader) == 3
        for g in goods:
            g.close()
    finally:
        await node.close()


async def test_eof_in_the_middle_of_a_message_ends_the_publish(caplog):
    node = await start_ingest()
    try:
        pub = await TcpPublisher.publish(node.address[1], "cut")
        collector = asyncio.create_task(frames_of(node.registry, "live/cut", 100))
        pub.media(8, 0, AAC_CONFIG)
        pub.media(8, 0, aac(0, 1))
        whole = pub.chunks.write(4, 23, 8, pub.stream_id, aac(23, 1) + bytes(400))  # 4 chunks of 128
        pub.writer.write(whole[: len(whole) // 2])
        await pub.writer.drain()
        pub.close()
        frames = await collector  # ends: the broadcast ended, with the one whole frame
        assert [f.dts for f in frames] == [0]
        await wait_until(lambda: not node.server.connections)
        assert len(node.server.reader) == 0
        assert not [r for r in caplog.records if r.name == "asyncio"], caplog.text
    finally:
        await node.close()


class Recorder:
    """A stand-in connection: records when each read arrived."""

    def __init__(self, loop, size: int = 65536) -> None:
        self.loop = loop
        self.buf = bytearray(size)
        self.reads: list[tuple[float, bytes]] = []
        self.eof = False

    def get_buffer(self, sizehint):
        return memoryview(self.buf)

    def buffer_updated(self, n):
        self.reads.append((self.loop.time(), bytes(self.buf[:n])))

    def read_eof(self):
        self.eof = True

    def read_failed(self, exc):
        raise AssertionError(exc)


async def reader_pair(coalesce: float, *, buffer: int = 65536, pending: bytes = b""):
    """A SharedReader reading one end of a TCP connection (the other end is returned); ``pending``
    is sent and waiting in the kernel before the reader takes the socket."""
    loop = asyncio.get_running_loop()
    rec = Recorder(loop, buffer)
    srv = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(srv.getsockname())
    conn, _ = srv.accept()
    srv.close()
    conn.setblocking(False)
    client.sendall(pending)
    await wait_until(lambda: fcntl.ioctl(conn.fileno(), termios.FIONREAD, b"\0\0\0\0") == len(pending).to_bytes(4, sys.byteorder))
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, conn)
    reader = SharedReader(loop, coalesce)
    assert reader.add(rec, transport)
    return reader, rec, client, transport


@pytest.mark.parametrize("window", [1.0, 0.0])
async def test_coalescing_window_is_respected(window):
    reader, rec, client, transport = await reader_pair(window)
    try:
        client.sendall(b"a")
        await wait_until(lambda: len(rec.reads) == 1)
        client.sendall(b"b")  # within the window of the last read: read at once, then busy
        await wait_until(lambda: len(rec.reads) == 2)
        client.sendall(b"c")  # busy: waits for the window
        await wait_until(lambda: len(rec.reads) == 3)
        (t_a, _), (t_b, _), (t_c, c) = rec.reads
        assert c == b"c"
        if window:
            assert t_b - t_a < window / 2  # a quiet reader reads at once
            assert t_c - t_b >= window - 0.01
            # the next round finds nothing, and the reader watches again: a read comes at once
            await wait_until(lambda: reader._watching)
            client.sendall(b"d")
            await wait_until(lambda: len(rec.reads) == 4)
            assert rec.reads[3][0] - reader._last_wakeup < window / 2
        else:
            assert t_c - t_b < 0.5
            assert reader._rearm is None
        client.close()
        await wait_until(lambda: rec.eof)
        assert len(reader) == 0
    finally:
        reader.close()
        transport.close()


async def test_a_burst_larger_than_the_buffer_is_read_in_one_round():
    """A key frame bigger than the receive buffer's free space is read on in the same round, not
    one round per buffer (each round of a busy server is ``coalesce`` later)."""
    burst = bytes(range(256)) * 80  # 20 KiB: five reads of a 4 KiB buffer
    reader, rec, client, transport = await reader_pair(1.0, buffer=4096, pending=burst)
    try:
        await wait_until(lambda: sum(len(data) for _, data in rec.reads) == len(burst))
        assert reader.wakeups == 1 and len(rec.reads) == 5
        assert b"".join(data for _, data in rec.reads) == burst
    finally:
        client.close()
        reader.close()
        transport.close()


@pytest.mark.parametrize("no_epoll", [True, False])
async def test_without_epoll_or_without_a_window_the_transports_read(monkeypatch, no_epoll):
    if no_epoll:
        monkeypatch.delattr(select, "epoll")
    node = await start_ingest(INGEST_READ_COALESCE if no_epoll else 0.0)
    try:
        assert node.server.reader is None
        pub = await TcpPublisher.publish(node.address[1], "plain")
        collector = asyncio.create_task(frames_of(node.registry, "live/plain", 5))
        pub.media(8, 0, AAC_CONFIG)
        for k in range(5):
            pub.media(8, 23 * k, aac(23 * k, 7))
        assert [f.dts for f in await collector] == [23 * k for k in range(5)]
        pub.close()
    finally:
        await node.close()


def test_read_coalesce_setting():
    assert load_config(env={"RTMPQ_RTMP_READ_COALESCE": "0.002"}).rtmp.read_coalesce == 0.002
    assert load_config(env={}).rtmp.read_coalesce == INGEST_READ_COALESCE
    with pytest.raises(ConfigError, match="rtmp.read_coalesce"):
        load_config(env={"RTMPQ_RTMP_READ_COALESCE": "-1"})


@pytest.mark.parametrize("coalesce", [0, INGEST_READ_COALESCE])
async def test_acknowledgements_follow_the_publishers_window_and_every_byte_is_counted(coalesce):
    """A publisher that asks for acknowledgements (Window Acknowledgement Size) gets them as its
    bytes arrive, whether its socket is read by asyncio or by the shared reader's fast path (where
    media go to the publish without the connection), and the ingest's byte count (the
    rtmpq_received_bytes metric) holds every byte it sent."""
    node = await start_ingest(coalesce)
    try:
        pub = await TcpPublisher.publish(node.address[1], "acked")
        pub.send(2, 0, 5, 0, (64 * 1024).to_bytes(4, "big"))  # acknowledge every 64 KiB
        collector = asyncio.create_task(frames_of(node.registry, "live/acked", 100))
        pub.media(8, 0, AAC_CONFIG)
        for k in range(100):
            pub.media(8, 23 * k, aac(23 * k, 1) + bytes(3000))
        acks = []
        async with asyncio.timeout(10):
            # ~308 kB sent: one ACK per read that completes a window, the last within a window of the end
            while True:
                while (msg := pub.replies.next_message()) is not NEED_DATA:
                    if msg.type_id == 3:
                        acks.append(int.from_bytes(bytes(msg.body), "big"))
                if acks and acks[-1] >= 308_000 - 64 * 1024:
                    break
                pub.replies.receive_data(await pub.reader.read(65536))
        assert len(await collector) == 100
        assert all(b - a >= 64 * 1024 for a, b in zip([0, *acks], acks)), acks
        assert 308_000 <= node.server.bytes_in < 310_000
        if coalesce:
            assert node.server.reader.bytes > acks[-1] - 64 * 1024  # read on the fast path
        pub.close()
    finally:
        await node.close()
