"""The QUIC rows of specs/bad-inputs.md at the application level, over real QUIC on loopback.

A real ffmpeg publish runs and a real MoQ subscriber reads it while hostile QUIC peers connect:
peers that finish the QUIC handshake and never send a MoQ setup (slowloris) are closed at
[moq] handshake_timeout; peers past [moq] max_connections_per_ip are closed at once. The subscriber
gets every object, in order, and a peer that comes once the slots are free is served.
"""

import asyncio
import logging
import time

import pytest
from aioquic.asyncio import QuicConnectionProtocol, connect
from aioquic.quic.configuration import QuicConfiguration

from rtmpq.moq import wire
from rtmpq.nodes.up import UpNode

from .conftest import local_config, need, read_broadcast, until
from .publishers import LivePublish, ffmpeg_publish_args

SETUP_TIMEOUT = 2.0
PER_IP = 4


@pytest.fixture(params=["aioquic", "aiopquic"])
async def node(tmp_path, request):
    config = local_config(tmp_path, request.param)
    config.moq.handshake_timeout = SETUP_TIMEOUT
    config.moq.max_connections_per_ip = PER_IP
    n = UpNode(config)
    await n.start()
    yield n
    await n.close()


class SilentPeer(QuicConnectionProtocol):
    """Completes the QUIC handshake (ALPN moqt-16) and never says a MoQ word; notes how it ended."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.ended = asyncio.get_running_loop().create_future()

    def quic_event_received(self, event) -> None:
        if type(event).__name__ == "ConnectionTerminated" and not self.ended.done():
            self.ended.set_result((time.monotonic(), event.error_code))


def quic_client_config() -> QuicConfiguration:
    config = QuicConfiguration(is_client=True, alpn_protocols=[wire.ALPN], server_name="127.0.0.1")
    config.verify_mode = False
    return config


async def silent_peer(port: int, opened: asyncio.Queue) -> None:
    """One silent peer, held open until the server ends it (or the test is cancelled)."""
    async with connect("127.0.0.1", port, configuration=quic_client_config(), create_protocol=SilentPeer,
                       wait_connected=True) as peer:
        await opened.put(peer)
        await peer.ended


async def publish_and_watch(node, tmp_path) -> tuple[LivePublish, asyncio.Task, list, list]:
    """A real ffmpeg publish of live/cam (30 s at most: went_on ends it) and a real MoQ subscriber
    reading it: (publisher, subscriber task, its frames, its skipped groups), once the subscriber
    has its first frames."""
    publisher = LivePublish(ffmpeg_publish_args(
        f"rtmp://127.0.0.1:{node.rtmp.address[1]}/live/cam", str(tmp_path / "ref.flv"), seconds=30))
    await node.registry.wait_for("live/cam", 10)
    frames, skipped = [], []
    healthy = asyncio.create_task(read_broadcast(node.moq_address[1], node.moq_config.backend, "live/cam", frames, skipped))
    await until(lambda: len(frames) >= 10, what="the subscriber's first frames")
    return publisher, healthy, frames, skipped


async def went_on(publisher: LivePublish, healthy: asyncio.Task, frames: list, skipped: list) -> None:
    """The subscriber gets a group begun after what the test did (the publish goes on); the publish,
    ended then, ended well; and the subscriber got every object of each group it saw, in order."""
    def newest() -> int:
        return max(f.group for f in frames if f.track == "video")

    before = newest()
    await until(lambda: newest() > before, 10, "a group begun after the test's doings at the subscriber")
    await publisher.finish()
    await asyncio.wait_for(healthy, 30)
    assert not skipped
    for track in ("video", "audio"):
        mine = [f for f in frames if f.track == track]
        groups = sorted({f.group for f in mine})
        assert groups == list(range(groups[0], groups[-1] + 1))
        for group in groups:
            assert [f.index for f in mine if f.group == group] == list(range(len([f for f in mine if f.group == group])))


def relay_side_of(node, peer):
    """The relay's connection of a raw aioquic client ``peer``."""
    [conn] = [c for c in node.moq.connections if c.peer.endswith(f":{peer._transport.get_extra_info('sockname')[1]}")]
    return conn


async def test_silent_peers_are_closed_at_the_setup_deadline_and_peers_past_the_per_ip_cap_at_once(node, tmp_path, caplog):
    need("ffmpeg")
    caplog.set_level(logging.WARNING, "rtmpq.moq")
    port = node.moq_address[1]
    backend = node.moq_config.backend
    watched = await publish_and_watch(node, tmp_path)

    # PER_IP - 1 silent peers fill this address's slots beside the subscriber
    opened: asyncio.Queue = asyncio.Queue()
    started = time.monotonic()
    silent = [asyncio.create_task(silent_peer(port, opened)) for _ in range(PER_IP - 1)]
    peers = [await asyncio.wait_for(opened.get(), 10) for _ in silent]
    # one more is closed at once: during its handshake (ConnectionError) or just after it
    refused_at = time.monotonic()
    extra = asyncio.create_task(silent_peer(port, opened))
    try:
        async with asyncio.timeout(SETUP_TIMEOUT / 2):
            extra_peer = await opened.get()
            await extra_peer.ended
    except ConnectionError:
        pass
    assert time.monotonic() - refused_at < SETUP_TIMEOUT / 2
    await asyncio.gather(extra, return_exceptions=True)
    assert any("too many connections" in r.getMessage() or "(max_connections_per_ip)" in r.getMessage()
               for r in caplog.records), caplog.text

    # the silent ones are closed at the setup deadline, with CONTROL_MESSAGE_TIMEOUT
    ends = await asyncio.wait_for(asyncio.gather(*(p.ended for p in peers)), SETUP_TIMEOUT + 10)
    for when, code in ends:
        assert SETUP_TIMEOUT * 0.9 <= when - started <= SETUP_TIMEOUT + 3, when - started
        assert code == wire.SessionError.CONTROL_MESSAGE_TIMEOUT
    assert sum("no MoQ setup within" in r.getMessage() for r in caplog.records) == PER_IP - 1
    await asyncio.gather(*silent)

    # their slots are free again: a second subscriber is served
    late, late_skipped = [], []
    second = asyncio.create_task(read_broadcast(port, backend, "live/cam", late, late_skipped))
    await until(lambda: late, 10, "the second subscriber's first frames")
    await went_on(*watched)
    await asyncio.wait_for(second, 30)
    assert late and not late_skipped, "the subscriber after the silent ones was not served"


def jump_and_send(quic, stream_id: int, offset: int) -> None:
    """Send one byte at ``offset`` of a stream of ours, as if all before it had been sent: the
    receiver must keep the gap (aioquic zero-fills it) until the bytes before come."""
    sender = quic._get_or_create_stream_for_send(stream_id).sender
    sender._buffer_start = sender._buffer_stop = sender.highest_offset = offset
    sender.write(b"x")


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        return int(f.read().split("VmRSS:")[1].split()[0]) * 1024


async def test_stream_frames_at_the_edge_of_the_window_do_not_grow_the_relays_buffers(node, tmp_path):
    """bad-inputs.md, QUIC: aioquic doubles a receive limit whenever half of it is *received*
    (out-of-order bytes included) and zero-fills gaps, so a peer sending one byte at the end of
    each window on new streams makes the relay allocate ever more. The windows slide with the bytes
    delivered instead: what the peer makes the relay hold stays within AIOQUIC_MAX_DATA, while a
    real publish and subscriber go on. picoquic (aiopquic) grants the credit but keeps no gaps:
    the process grows by a small part of what the peer was let send."""
    from rtmpq.moq.transport import AIOQUIC_MAX_DATA, AIOQUIC_MAX_STREAM_DATA, MoqConnection

    need("ffmpeg")
    port = node.moq_address[1]
    backend = node.moq_config.backend
    watched = await publish_and_watch(node, tmp_path)
    rss_before = rss_bytes()
    async with connect("127.0.0.1", port, configuration=quic_client_config(), wait_connected=True,
                       create_protocol=lambda *a, **k: MoqConnection(*a, is_client=True, **k)) as peer:
        await peer.ready  # a set-up session: not closed for silence
        relay_side = relay_side_of(node, peer)
        quic, held, sent = peer._quic, [], 0
        for _ in range(40):  # more than enough to reach 100 MiB if the windows double
            deadline = time.monotonic() + 1.0  # the relay's credit, if it grants more
            while quic._remote_max_data - sent < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            room = quic._remote_max_data - sent
            if room < 2:
                break  # no more credit: the relay holds what it allowed and nothing more
            stream_id = quic.get_next_available_stream_id(is_unidirectional=True)
            offset = min(AIOQUIC_MAX_STREAM_DATA, room) - 1
            jump_and_send(quic, stream_id, offset)
            sent += offset + 1
            peer.transmit()
            await asyncio.sleep(0.02)
            if backend == "aioquic":
                held.append(sum(len(s.receiver._buffer) for s in relay_side._quic._streams.values()))
        if backend == "aioquic":
            assert max(held) <= AIOQUIC_MAX_DATA + AIOQUIC_MAX_STREAM_DATA, (max(held), sent)
            assert relay_side._quic._local_max_data.value <= 2 * AIOQUIC_MAX_DATA
        else:
            grew = rss_bytes() - rss_before
            assert grew < 4 * AIOQUIC_MAX_DATA, (grew, sent)
    await went_on(*watched)


async def test_a_subscriber_that_opens_data_streams_of_its_own_is_held_to_the_session_caps(node, tmp_path):
    """Streams a subscriber opens towards the relay (300 subgroup streams of a track alias the relay
    never gave, each a 60 KB object, left open): the session takes at most MAX_INCOMING_DATA_STREAMS
    of them (the rest are stopped; aioquic's own limit of 128 comes first) and holds at most MAX_HELD_BYTES of their objects, while a real
    publish and subscriber go on."""
    from rtmpq.moq import session as moq_session
    from rtmpq.moq.transport import MoqConnection

    need("ffmpeg")
    port = node.moq_address[1]
    backend = node.moq_config.backend
    watched = await publish_and_watch(node, tmp_path)
    streams, payload = 300, bytes(60_000)
    async with connect("127.0.0.1", port, configuration=quic_client_config(), wait_connected=True,
                       create_protocol=lambda *a, **k: MoqConnection(*a, is_client=True, **k)) as peer:
        await peer.ready
        session = relay_side_of(node, peer).session
        most_streams = most_held = 0
        for group in range(streams):
            sid = peer.session.open_subgroup(999, group)
            peer.session.send_object(sid, 0, payload)
            peer.transmit()
            await asyncio.sleep(0.005)
            most_streams = max(most_streams, len(session._data_streams))
            most_held = max(most_held, session._held_bytes)
        seen = []
        async with asyncio.timeout(10):  # until the relay has taken in what it will
            while len(seen) < 3 or len(set(seen[-3:])) > 1:
                seen.append(len(session._data_streams))
                most_held = max(most_held, session._held_bytes)
                await asyncio.sleep(0.2)
        most_streams = max(most_streams, *seen)
        # aioquic grants 128 streams at once (not configurable), picoquic more: the session's cap bites
        assert most_streams == (128 if backend == "aioquic" else moq_session.MAX_INCOMING_DATA_STREAMS), most_streams
        assert 0 < most_held <= moq_session.MAX_HELD_BYTES, most_held
        assert not session.closed
    await went_on(*watched)
