"""What a hostile or stalled MoQ peer can make the relay hold, in time and in bytes, over real
QUIC on loopback (both relay backends), and the refusals counted in /metrics.

- A publisher that sends part of an object and stalls, keeping its connection alive: that stream
  is stopped after [moq] partial_object_timeout, its bytes freed; its session goes on.
- Sessions each within their own caps holding partial objects: all together never hold more than
  [moq] max_partial_bytes; the one holding the most is closed, the others and a real publisher's
  broadcast go on.
- The relay's own link to its upstream (`rtmpq relay --upstream`) counts in the same budget: an
  upstream that leaves big partial objects is closed when it holds the most, and the link
  reconnects; before, only partial_object_timeout bounded it.
- rtmpq_errors_total{protocol="moq"} counts each refusal by reason, without names or tokens.
"""

import asyncio
import logging
import socket
import time
from contextlib import asynccontextmanager

import httpx
import pytest
from aioquic.asyncio import connect

from rtmpq.config import AuthConfig
from rtmpq.moq import events as ev
from rtmpq.moq import wire
from rtmpq.moq.tls import ensure_self_signed
from rtmpq.moq.transport import MoqConnection, serve_moq
from rtmpq.nodes.remote import UpstreamLink
from rtmpq.nodes.up import UpNode
from rtmpq.redact import safe_name

from .conftest import EventRecorder, free_port, local_config, need, read_broadcast, start_up_node, until
from .publishers import LivePublish, ffmpeg_publish_args
from .test_moq_hostile import publish_and_watch, quic_client_config, relay_side_of, silent_peer, went_on
from .test_ops import samples

PARTIAL_TIMEOUT = 2.0
BUDGET = 3 * 1024 * 1024


@pytest.fixture(params=["aioquic", "aiopquic"])
def backend(request) -> str:
    return request.param


async def started(tmp_path, backend: str, **moq) -> UpNode:
    config = local_config(tmp_path, backend)
    for key, value in moq.items():
        setattr(config.moq, key, value)
    node = UpNode(config)
    await node.start()
    return node


class RawPeer(MoqConnection):
    """A MoQ client session (aioquic) that notes the STOP_SENDINGs it gets and how it ended."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, is_client=True, **kwargs)
        self.stopped: dict[int, int] = {}
        self.terminated: tuple[int, str] | None = None

    def quic_event_received(self, event) -> None:
        kind = type(event).__name__
        if kind == "StopSendingReceived":
            self.stopped[event.stream_id] = event.error_code
        elif kind == "ConnectionTerminated" and self.terminated is None:
            self.terminated = (event.error_code, event.reason_phrase)
        super().quic_event_received(event)


@asynccontextmanager
async def raw_peer(node):
    async with connect("127.0.0.1", node.moq_address[1], configuration=quic_client_config(), wait_connected=True,
                       create_protocol=RawPeer) as peer:
        await asyncio.wait_for(peer.ready, 10)
        yield peer


def held(session) -> int:
    """Bytes of its peer's a relay session holds: partial objects and requests, objects held for
    an unknown alias (what [moq] max_partial_bytes counts)."""
    return session._stream_buffer_bytes + session._held_bytes


def object_head(delta: int, size: int) -> bytes:
    """An object's header on a subgroup stream with extensions: id delta, no extensions, size."""
    return wire.encode_varint(delta) + wire.encode_varint(0) + wire.encode_varint(size)


def send_partial(peer: RawPeer, alias: int, group: int, declared: int, sent: int) -> int:
    """A subgroup stream whose first object says ``declared`` bytes and brings ``sent`` of them."""
    sid = peer.session.open_subgroup(alias, group)
    peer._quic.send_stream_data(sid, object_head(0, declared) + bytes(sent))
    peer.transmit()
    return sid


async def test_a_publisher_that_stalls_mid_object_loses_that_stream_and_keeps_its_session(tmp_path, backend, caplog):
    need("ffmpeg")
    caplog.set_level(logging.WARNING, "rtmpq.moq")
    node = await started(tmp_path, backend, partial_object_timeout=PARTIAL_TIMEOUT)
    try:
        watched = await publish_and_watch(node, tmp_path)
        async with raw_peer(node) as evil, raw_peer(node) as viewer:
            said = EventRecorder(evil)
            evil.session.publish(("live", "evil"), "video", 1)
            evil.flush()
            await until(lambda: any(isinstance(e, ev.PublishAccepted) for e in said.events), 10, "PUBLISH_OK")
            seen = EventRecorder(viewer)
            viewer.session.subscribe(("live", "evil"), "video")
            viewer.flush()
            await until(lambda: any(isinstance(e, ev.SubscribeAccepted) for e in seen.events), 10, "SUBSCRIBE_OK")

            # group 0: one whole object, then one cut short; the peer's connection stays alive (PINGs)
            sid = evil.session.open_subgroup(1, 0)
            evil.session.send_object(sid, 0, b"a whole object")
            evil.transmit()
            evil._quic.send_stream_data(sid, object_head(0, 200_000) + bytes(60_000))
            evil.transmit()
            relay_side = relay_side_of(node, evil)
            await until(lambda: held(relay_side.session) >= 60_000, 10, "the partial object at the relay")
            stalled_at = time.monotonic()
            await until(lambda: sid in evil.stopped, PARTIAL_TIMEOUT + 10, "STOP_SENDING")
            took = time.monotonic() - stalled_at
            # the timeout, plus at most a check interval (a quarter of it) and the relay's tick
            assert PARTIAL_TIMEOUT * 0.9 <= took <= PARTIAL_TIMEOUT * 1.25 + 1.5, took
            assert evil.stopped[sid] == wire.StreamResetCode.DELIVERY_TIMEOUT
            assert held(relay_side.session) == 0
            assert not relay_side.session.closed and evil.terminated is None
            [line] = [r.getMessage() for r in caplog.records if "partial_object_timeout" in r.getMessage()]
            assert relay_side.peer in line and f"{safe_name('live/evil')}/video group 0" in line, line

            # the viewer got the whole object and then learns the group ended short (never silently)
            await until(lambda: any(isinstance(e, ev.SubgroupReset) for e in seen.events), 10, "the group's reset")
            got = [e for e in seen.events if isinstance(e, (ev.ObjectReceived, ev.SubgroupReset))]
            assert isinstance(got[0], ev.ObjectReceived) and got[0].payload == b"a whole object"
            assert isinstance(got[1], ev.SubgroupReset) and got[1].code == wire.StreamResetCode.DELIVERY_TIMEOUT
            # the session goes on: its next group reaches the viewer whole
            payload = bytes(range(256)) * 120
            nxt = evil.session.open_subgroup(1, 1)
            evil.session.send_object(nxt, 0, payload)
            evil.session.end_subgroup(nxt)
            evil.transmit()
            await until(lambda: any(isinstance(e, ev.ObjectReceived) and e.payload == payload for e in seen.events),
                        10, "the next group at the viewer")
            assert not relay_side.session.closed
        await went_on(*watched)
    finally:
        await node.close()


@asynccontextmanager
async def moq_publisher_into(node, tmp_path):
    """`rtmpq ingest --upstream` the node: a node whose RTMP ingest publishes each broadcast into
    the node's relay over MoQ (its own session there). Yields the ingest's RTMP port."""
    below = await start_up_node(tmp_path / "below", node.moq_config.backend)
    link = UpstreamLink(below.moq, f"moqt://127.0.0.1:{node.moq_address[1]}", insecure=True,
                        backend=node.moq_config.backend, announce=True, use_for_unknown_tracks=False)
    link.start()
    try:
        await asyncio.wait_for(link.connected.wait(), 10)
        yield below.rtmp.address[1]
    finally:
        await link.close()
        await below.close()


async def test_sessions_within_their_own_caps_together_hold_at_most_max_partial_bytes(tmp_path, backend, caplog):
    need("ffmpeg")
    caplog.set_level(logging.WARNING, "rtmpq.moq")
    node = await started(tmp_path, backend, max_partial_bytes=BUDGET, partial_object_timeout=60.0)
    try:
        async with moq_publisher_into(node, tmp_path) as rtmp_port:
            publisher = LivePublish(ffmpeg_publish_args(  # (30 s at most: went_on ends it)
                f"rtmp://127.0.0.1:{rtmp_port}/live/cam", str(tmp_path / "ref.flv"), seconds=30))
            frames, skipped = [], []
            await until(lambda: "live/cam" in node.moq.published_names(), 15, "the MoQ publish at the relay")
            healthy = asyncio.create_task(read_broadcast(node.moq_address[1], backend, "live/cam", frames, skipped))
            await until(lambda: len(frames) >= 10, 20, "the subscriber's first frames")

            # each holds a partial object far below the per-session cap (MAX_STREAM_BUFFER, 32 MiB);
            # the fourth takes all four past the budget: the one holding the most (1.4 MB) is closed
            sizes = [1_000_000, 1_400_000, 600_000, 500_000]
            async with raw_peer(node) as a, raw_peer(node) as b, raw_peer(node) as c, raw_peer(node) as d:
                peers = [a, b, c, d]
                sides = [relay_side_of(node, p) for p in peers]
                addresses = [s.peer for s in sides]  # (picoquic forgets a closed connection's)
                def total() -> int:
                    return sum(held(c.session) for c in node.moq.connections)

                most = [total()]

                async def sample() -> None:
                    while True:
                        most[0] = max(most[0], total())
                        await asyncio.sleep(0.002)

                sampler = asyncio.create_task(sample())
                try:
                    for peer, side, size in zip(peers, sides, sizes):
                        send_partial(peer, 999, 0, 2_000_000, size)
                        await until(lambda: held(side.session) >= size or side.session.closed, 15,
                                    "the partial object at the relay")
                    await until(lambda: b.terminated is not None, 10, "the session holding the most closed")
                finally:
                    sampler.cancel()
                assert b.terminated[0] == wire.SessionError.INTERNAL_ERROR
                if backend == "aioquic":  # picoquic sends no reason phrase
                    assert "max_partial_bytes" in b.terminated[1]
                assert sides[1].session.closed and held(sides[1].session) == 0
                for peer, side, size in ((a, sides[0], sizes[0]), (c, sides[2], sizes[2]), (d, sides[3], sizes[3])):
                    assert not side.session.closed and peer.terminated is None
                    assert held(side.session) >= size
                assert sum(sizes) - sizes[1] <= total() <= BUDGET
                assert most[0] <= BUDGET + 64 * 1024, most[0]  # enforced as the bytes arrive, not later
                [line] = [r.getMessage() for r in caplog.records if "max_partial_bytes" in r.getMessage()]
                assert addresses[1] in line, line
            # the hostile peers gone, the listener's count is what the sessions left still hold
            pool = sides[0].session.pool
            await until(lambda: all(s.session.closed for s in sides), 10, "the hostile sessions closed")
            assert pool.held == sum(held(c.session) for c in node.moq.connections if not c.session.closed) < 64 * 1024
            await went_on(publisher, healthy, frames, skipped)
    finally:
        await node.close()


async def test_moq_refusals_are_counted_by_reason_in_metrics_without_names_or_tokens(tmp_path, backend):
    """One of each: a peer that never sends its setup, a SUBSCRIBE with a bad token, a stream
    stalled mid-object, a session over the byte budget, a protocol violation, a connection past
    the per-address cap. Each shows in /metrics as rtmpq_errors_total{protocol="moq", reason};
    the refused request's name and token show nowhere."""
    secret = "a-shared-secret-that-is-long-enough-for-hs256"
    config = local_config(tmp_path, backend, auth=AuthConfig(secret=secret, require_playback_token=True))
    config.moq.handshake_timeout = 1.5
    config.moq.max_connections_per_ip = 3
    config.moq.partial_object_timeout = 1.5
    config.moq.max_partial_bytes = 1024 * 1024
    node = UpNode(config)
    await node.start()
    token = "not-a-token-but-secret-looking-xyz"
    try:
        opened: asyncio.Queue = asyncio.Queue()
        await asyncio.wait_for(silent_peer(node.moq_address[1], opened), 10)  # closed at the setup deadline
        async with raw_peer(node) as a, raw_peer(node) as b:
            said = EventRecorder(a)
            a.session.subscribe(("live", "hidden-name"), "video", authorization=token)
            a.flush()
            await until(lambda: any(isinstance(e, ev.RequestFailed) for e in said.events), 10, "the refusal")
            sid = send_partial(b, 5, 0, 100_000, 10_000)
            await until(lambda: sid in b.stopped, 10, "STOP_SENDING")
            async with raw_peer(node) as c:
                send_partial(c, 5, 0, 2_000_000, 1_200_000)
                await until(lambda: c.terminated is not None, 10, "the session over the budget closed")
            async with raw_peer(node) as d:
                d.session._send_control(wire.ClientSetup({}))  # setup twice: a protocol violation
                d.flush()
                await until(lambda: d.terminated is not None, 10, "the protocol violation closed")
            async with raw_peer(node):
                try:  # a fourth from this address: closed during its handshake or just after
                    async with raw_peer(node) as f:
                        await until(lambda: f.terminated is not None, 5, "the connection past the cap closed")
                except ConnectionError:
                    pass
            async with httpx.AsyncClient(timeout=20) as client:
                page = (await client.get(f"http://127.0.0.1:{node.edge.address[1]}/metrics")).text
    finally:
        await node.close()
    counted = {dict(labels)["reason"]: value for (name, labels), value in samples(page).items()
               if name == "rtmpq_errors_total" and dict(labels).get("protocol") == "moq"}
    assert counted == {"handshake_timeout": 1, "auth_denied": 1, "partial_object_timeout": 1,
                       "max_partial_bytes": 1, "protocol_error": 1, "max_connections_per_ip": 1}, counted
    assert "hidden-name" not in page and token not in page


@asynccontextmanager
async def raw_upstream(tmp_path):
    """A raw MoQ node (aioquic) for a relay to take as its upstream: (its port, an EventRecorder of
    each session it accepted, in order). It answers nothing by itself."""
    cert, key = ensure_self_signed(tmp_path / "upstream-tls")
    port = free_port(socket.SOCK_DGRAM)
    sessions: list[EventRecorder] = []
    server = await serve_moq("127.0.0.1", port, certfile=cert, keyfile=key, backend="aioquic",
                             on_connection=lambda conn: sessions.append(EventRecorder(conn)))
    try:
        yield port, sessions
    finally:
        server.close()


async def answer_subscribe(upstream: EventRecorder, alias: int) -> None:
    """SUBSCRIBE_OK (``alias``) to the relay's SUBSCRIBE at ``upstream``, once it comes."""
    def request():
        return next((e for e in upstream.events if isinstance(e, ev.SubscribeRequested)), None)

    await until(lambda: request() is not None, 10, "the relay's SUBSCRIBE upstream")
    upstream.conn.session.subscribe_ok(request().request_id, alias)
    upstream.conn.flush()


async def test_the_relays_link_upstream_counts_in_max_partial_bytes(tmp_path, backend, caplog):
    """A relay with an upstream (a raw MoQ node here) that sends big partial objects on the track
    a viewer asked for: with a listener session's partial object, past [moq] max_partial_bytes;
    the link holds the most and is closed, the listener session and a real publish go on, and
    the link reconnects: the viewer's subscription gets the upstream's next group whole."""
    need("ffmpeg")
    caplog.set_level(logging.WARNING, "rtmpq.moq")
    node = await started(tmp_path, backend, max_partial_bytes=BUDGET, partial_object_timeout=60.0)
    node.moq.upstream_grace = 10.0  # the viewer's relayed track waits for the link to come back
    try:
        async with raw_upstream(tmp_path) as (up_port, upstream_sessions):
            link = UpstreamLink(node.moq, f"moqt://127.0.0.1:{up_port}", insecure=True, backend=backend)
            link.start()
            try:
                await asyncio.wait_for(link.connected.wait(), 10)
                watched = await publish_and_watch(node, tmp_path)
                async with raw_peer(node) as peer, raw_peer(node) as viewer:
                    side = relay_side_of(node, peer)
                    send_partial(peer, 999, 0, 2_000_000, 1_000_000)
                    await until(lambda: held(side.session) >= 1_000_000, 15, "the listener session's partial object")

                    seen = EventRecorder(viewer)
                    viewer.session.subscribe(("live", "far"), "video")  # not here: asked for upstream
                    viewer.flush()
                    hostile = upstream_sessions[0]
                    await answer_subscribe(hostile, 3)
                    await until(lambda: any(isinstance(e, ev.SubscribeAccepted) for e in seen.events), 10,
                                "SUBSCRIBE_OK at the viewer")
                    link_side = link.conn
                    # two streams of 1.2 MB (each within QUIC's stream window): with the listener
                    # session's 1 MB, past the 3 MiB budget; the link holds the most
                    for group in (0, 1):
                        send_partial(hostile.conn, 3, group, 2_000_000, 1_200_000)
                    await until(lambda: link_side.session.closed, 15, "the link's session closed")
                    assert node.moq.errors["max_partial_bytes"] == 1
                    [line] = [r.getMessage() for r in caplog.records if "max_partial_bytes" in r.getMessage()]
                    assert f"127.0.0.1:{up_port}" in line and "reconnects" in line, line
                    assert not side.session.closed and held(side.session) >= 1_000_000
                    assert held(link_side.session) == 0

                    # the link reconnects; the relay subscribes there again for its viewer
                    await until(lambda: len(upstream_sessions) == 2, 15, "the link's new session")
                    again = upstream_sessions[1]
                    await answer_subscribe(again, 4)
                    sid = again.conn.session.open_subgroup(4, 0)
                    for object_id in range(3):
                        again.conn.session.send_object(sid, object_id, b"whole %d" % object_id)
                    again.conn.session.end_subgroup(sid)
                    again.conn.flush()
                    await until(lambda: any(isinstance(e, ev.SubgroupEnded) for e in seen.events), 15,
                                "a group from the upstream again at the viewer")
                    got = [bytes(e.payload) for e in seen.events if isinstance(e, ev.ObjectReceived)]
                    assert got[-3:] == [b"whole 0", b"whole 1", b"whole 2"]
                    assert not side.session.closed
                await went_on(*watched)
            finally:
                await link.close()
    finally:
        await node.close()
