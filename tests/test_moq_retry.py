"""`[moq] retry`: the MoQ listener validates each client's address with a QUIC Retry (RFC 9000 8.1).

Every peer reaches the node through a UDP forwarder (the impairment proxy, unimpaired) that
records the packets the server sends to each client address. With the setting on, the server's
first packet to each new client is a Retry (nothing of the handshake comes before it) and the
client still gets media: rtmpq's own `rtmpq sub`, a relay below (`--upstream`), aiomoqt and
moq-rs. Without it no Retry is sent.
"""

import asyncio
import json
import shutil
import socket
import sys
from contextlib import asynccontextmanager
from pathlib import Path

import moq
import pytest

from rtmpq.moq.transport import connect_moq
from rtmpq.netem.proxy import ImpairmentProxy
from rtmpq.nodes.up import UpNode

from .conftest import free_port, local_config, read_broadcast, until
from .publishers import ffmpeg_publish_only_args, run_process

QUIC_V2 = 0x6B3343CF  # RFC 9369: long header types are numbered differently
V1_TYPES = ("initial", "0rtt", "handshake", "retry")
V2_TYPES = ("retry", "initial", "0rtt", "handshake")


def packet_type(datagram: bytes) -> str:
    """The type of a datagram's first QUIC packet (RFC 9000 17.2, RFC 9369 3.2)."""
    if not datagram[0] & 0x80:
        return "1rtt"  # short header
    version = int.from_bytes(datagram[1:5], "big")
    if version == 0:
        return "version_negotiation"
    return (V2_TYPES if version == QUIC_V2 else V1_TYPES)[(datagram[0] >> 4) & 0x3]


class PacketObserver(ImpairmentProxy):
    """An unimpaired forwarder to the node that records, per client address, the type of each
    datagram the server sends."""

    def __init__(self, target: tuple[str, int]) -> None:
        super().__init__(target=target)
        self.sent: dict = {}  # client address -> [packet type, ...] in the order sent

    def send_to_client(self, data: bytes, addr) -> None:
        self.sent.setdefault(addr, []).append(packet_type(data))
        super().send_to_client(data, addr)

    def assert_retry_first(self) -> None:
        """Each client was sent a Retry before anything else, and none once its handshake began (a
        client whose ClientHello spans two Initials, as moq-rs's does, gets a Retry for each)."""
        assert self.sent, "the server sent nothing"
        for addr, types in self.sent.items():
            retries = types.index("initial") if "initial" in types else len(types)
            assert retries >= 1 and set(types[:retries]) == {"retry"} and "retry" not in types[retries:], \
                (addr, types[:6])

    def assert_no_retry(self) -> None:
        assert self.sent, "the server sent nothing"
        for addr, types in self.sent.items():
            assert "retry" not in types and types[0] == "initial", (addr, types[:6])

    def check(self, retry: bool) -> None:
        self.assert_retry_first() if retry else self.assert_no_retry()


@asynccontextmanager
async def node_behind_observer(tmp_path, backend: str, retry: bool):
    """`rtmpq up` with ``[moq] retry`` set so, and a PacketObserver in front of its MoQ port:
    yields (node, observer)."""
    config = local_config(tmp_path, backend)
    config.moq.retry = retry
    node = UpNode(config)
    await node.start()
    try:
        async with PacketObserver(node.moq_address) as observer:
            yield node, observer
    finally:
        await node.close()


async def publishing(node, name: str, seconds: float = 5.0) -> asyncio.Task:
    """ffmpeg publishing ``name`` into the node over RTMP, once the node has the broadcast."""
    task = asyncio.create_task(run_process(
        ffmpeg_publish_only_args(f"rtmp://127.0.0.1:{node.rtmp.address[1]}/{name}", seconds), seconds + 30))
    await node.registry.wait_for(name, 15)
    return task


async def finished(publisher: asyncio.Task) -> None:
    rc, output = await publisher
    assert rc == 0, output


@pytest.mark.parametrize("retry", [True, False], ids=["retry", "no-retry"])
@pytest.mark.parametrize("backend", ["aioquic", "aiopquic"])
async def test_rtmpq_sub_gets_media_and_the_server_sends_a_retry_only_when_set(tmp_path, backend, retry):
    async with node_behind_observer(tmp_path, backend, retry) as (node, observer):
        publisher = await publishing(node, "live/r")
        rc, out = await run_process(
            [sys.executable, "-m", "rtmpq", "sub", f"moqt://127.0.0.1:{observer.port}/live/r", "--insecure", "--json",
             "--quic-backend", backend, "--wait", "15", "--frames", "20"], 40)
        videos = [line for line in out.splitlines() if line.startswith("{") and json.loads(line).get("track") == "video"]
        assert rc == 0 and len(videos) >= 10, out
        observer.check(retry)
        await finished(publisher)


@pytest.mark.parametrize("backend", ["aioquic", "aiopquic"])
async def test_a_relay_below_connects_through_a_retry_and_passes_media_on(tmp_path, backend):
    """`rtmpq relay --upstream` the node, both listeners with [moq] retry on: the relay's session
    to the node passes the node's Retry, and a subscriber passes the relay's and gets the node's
    broadcast."""
    from rtmpq.config import MoqConfig
    from rtmpq.media.broadcast import BroadcastRegistry
    from rtmpq.moq.relay import MoqRelay
    from rtmpq.nodes.nodes import serve_relay
    from rtmpq.nodes.remote import UpstreamLink

    async with node_behind_observer(tmp_path, backend, True) as (node, observer_a):
        publisher = await publishing(node, "live/b")
        relay = MoqRelay(BroadcastRegistry())
        moq_b = MoqConfig(host="127.0.0.1", port=free_port(socket.SOCK_DGRAM), state_dir=tmp_path / "b",
                          backend=backend, retry=True)
        server_b = await serve_relay(relay, moq_b)
        link = UpstreamLink(relay, f"moqt://127.0.0.1:{observer_a.port}", insecure=True, backend=backend)
        link.start()
        frames: list = []
        try:
            await asyncio.wait_for(link.connected.wait(), 10)  # (as conftest.relay_below does)
            async with PacketObserver(("127.0.0.1", moq_b.port)) as observer_b:
                reader = asyncio.create_task(read_broadcast(observer_b.port, backend, "live/b", frames, []))
                try:
                    await until(lambda: len(frames) >= 20, 20, "frames through the relay below")
                finally:
                    reader.cancel()
        finally:
            await link.close()
            relay.stop()
            server_b.close()
        observer_a.assert_retry_first()
        observer_b.assert_retry_first()
        await finished(publisher)


@pytest.mark.parametrize("backend", ["aioquic", "aiopquic"])
async def test_aiomoqt_passes_a_retry_and_exchanges_objects(tmp_path, backend):
    """aiomoqt's interop client (on aiopquic, the client side) against a node with retry on: its
    publish-and-subscribe case delivers objects, every one of its connections past a Retry."""
    client = shutil.which("moq-interop-client") or str(Path(sys.executable).parent / "moq-interop-client")
    async with node_behind_observer(tmp_path, backend, True) as (node, observer):
        rc, out = await run_process([client, "--draft", "16", "-r", f"moqt://127.0.0.1:{observer.port}/",
                                     "--tls-disable-verify", "-t", "data-subgroup-basic"], 60)
        assert "ok 1 - data-subgroup-basic" in out.splitlines(), out
        observer.assert_retry_first()


@pytest.mark.parametrize("backend", ["aioquic", "aiopquic"])
async def test_moq_rs_passes_a_retry_and_gets_media(tmp_path, backend):
    """moq-rs (its Rust QUIC stack) subscribes to an ffmpeg publish on a node with retry on."""
    from .test_moq_rs_interop import discover

    async with node_behind_observer(tmp_path, backend, True) as (node, observer):
        publisher = await publishing(node, "live/rs")
        groups: list[int] = []
        c = moq.Client(f"moqt://127.0.0.1:{observer.port}", tls_verify=False, websocket_enabled=False, reconnect=False)
        async with c:
            track = await (await discover(c, "live/rs")).subscribe_track("video")

            async def read():
                async for group in track:
                    groups.append(len([f async for f in group]))
                    return

            await asyncio.wait_for(read(), 20)
        assert groups and groups[0] > 0
        observer.assert_retry_first()
        await finished(publisher)


def client_initial(addr: tuple[str, int]) -> bytes:
    """A real client's first datagram (an Initial with a ClientHello), from aioquic."""
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection

    from rtmpq.moq import wire

    quic = QuicConnection(configuration=QuicConfiguration(is_client=True, alpn_protocols=[wire.ALPN]))
    now = asyncio.get_running_loop().time()
    quic.connect(addr, now=now)
    return quic.datagrams_to_send(now=now)[0][0]


@pytest.mark.parametrize("backend", ["aioquic", "aiopquic"])
async def test_a_source_that_never_answers_the_retry_gets_one_packet_and_no_session(tmp_path, backend):
    """What a spoofed source gets: its Initial is answered by one Retry, smaller than the Initial
    (no amplification, no retransmission), and it leaves no session on the node. A real client
    after it gets its session."""
    async with node_behind_observer(tmp_path, backend, True) as (node, observer):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as spoofed:
            spoofed.bind(("127.0.0.1", 0))
            initial = client_initial(("127.0.0.1", observer.port))
            spoofed.sendto(initial, ("127.0.0.1", observer.port))
            answer_size = []
            spoofed.setblocking(False)
            loop = asyncio.get_running_loop()
            answer_size.append(len(await asyncio.wait_for(loop.sock_recv(spoofed, 65536), 10)))
            async with connect_moq("127.0.0.1", observer.port, insecure=True, backend=backend, timeout=10):
                await until(lambda: len(node.moq.connections) >= 1, 10, "the real client's session")
                assert len(node.moq.connections) == 1
            assert observer.sent[spoofed.getsockname()] == ["retry"]
            assert answer_size[0] < len(initial)


def test_retry_is_off_by_default_and_set_from_the_file_or_the_environment(tmp_path):
    from rtmpq.config import load_config

    assert load_config(env={}).moq.retry is False
    path = tmp_path / "rtmpq.toml"
    path.write_text("[moq]\nretry = true\n")
    assert load_config(path, env={}).moq.retry is True
    assert load_config(path, env={"RTMPQ_MOQ_RETRY": "false"}).moq.retry is False
