"""MoQT AUTHORIZATION TOKEN: the session carries tokens from requests (and setup) into events,
keeps the draft's alias rules, and closes on a token too big; SUBSCRIBE_NAMESPACE from our side.

In memory (two aioquic QuicConnections, no sockets, no clock) and over real QUIC on loopback
with both backends."""

import asyncio
import socket
import ssl

import pytest
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from rtmpq.moq import events as ev
from rtmpq.moq import wire
from rtmpq.moq.client import FetchError, SubscribeError, fetch_track, subscribe_broadcast
from rtmpq.moq.session import MAX_AUTH_TOKEN_CACHE, MoqSession, SessionCaps
from rtmpq.moq.tls import ensure_self_signed
from rtmpq.moq.transport import connect_moq, serve_moq
from rtmpq.moq.wire import AuthAliasType, AuthToken, SessionError

from .conftest import free_port, serving_relay

CLIENT_ADDR, SERVER_ADDR = ("127.0.0.1", 40000), ("127.0.0.1", 4443)
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJsaXZlIiwiYWN0Ijoic3Vic2NyaWJlIn0.c2lnbmF0dXJl"


class InMemory:
    """A MoQ client and server session over aioquic connections that hand datagrams to each other."""

    def __init__(self, tls_dir, *, token: str | None = None, client_cls=MoqSession, **client_kwargs) -> None:
        cert, key = ensure_self_signed(tls_dir)
        client_config = QuicConfiguration(is_client=True, alpn_protocols=[wire.ALPN])
        client_config.verify_mode = ssl.CERT_NONE
        server_config = QuicConfiguration(is_client=False, alpn_protocols=[wire.ALPN])
        server_config.load_cert_chain(str(cert), str(key))
        self.now = 0.0
        self.cq = QuicConnection(configuration=client_config)
        self.cq.connect(SERVER_ADDR, now=self.now)
        self.sq = QuicConnection(configuration=server_config,
                                 original_destination_connection_id=self.cq._original_destination_connection_id)
        self.client = client_cls(self.cq, is_client=True, token=token, **client_kwargs)
        self.server = MoqSession(self.sq, is_client=False)
        self.client_events: list = []
        self.server_events: list = []
        self.pump()

    def pump(self) -> None:
        """Move datagrams and events until both sides are quiet (a simulated clock: aioquic paces)."""
        idle = 0
        for _ in range(1000):
            moved = False
            self.now += 0.005
            for quic in (self.cq, self.sq):
                timer = quic.get_timer()
                if timer is not None and timer <= self.now:
                    quic.handle_timer(now=self.now)
            for src, dst, addr in ((self.cq, self.sq, CLIENT_ADDR), (self.sq, self.cq, SERVER_ADDR)):
                for data, _ in src.datagrams_to_send(now=self.now):
                    dst.receive_datagram(data, addr, now=self.now)
                    moved = True
            for quic, session, out in ((self.cq, self.client, self.client_events),
                                       (self.sq, self.server, self.server_events)):
                while (event := quic.next_event()) is not None:
                    out += session.handle_event(event)
                    moved = True
            idle = 0 if moved else idle + 1
            if idle > 10:  # quiet: jump to a timer due soon (a closing connection's drain), else done
                timers = [t for t in (self.cq.get_timer(), self.sq.get_timer()) if t is not None]
                if not timers or min(timers) > self.now + 1.0:
                    return
                self.now = max(self.now, min(timers))
                idle = 0
        raise AssertionError("the connections never went quiet")

    def take(self, side: str, kind=None) -> list:
        events = self.client_events if side == "client" else self.server_events
        got = [e for e in events if kind is None or isinstance(e, kind)]
        events.clear()
        return got


@pytest.fixture
def pair(tmp_path):
    p = InMemory(tmp_path / "tls", token=JWT)
    assert p.client.setup_done and p.server.setup_done
    p.take("client"), p.take("server")
    return p


def closed(events) -> ev.SessionClosed:
    found = [e for e in events if isinstance(e, ev.SessionClosed)]
    assert found, events
    return found[0]


# -- in memory ------------------------------------------------------------------------------------
def test_the_setup_token_reaches_the_server(tmp_path, pair):
    assert pair.server.setup_authorization == JWT
    assert pair.client.setup_authorization is None  # the server sent none
    plain = InMemory(tmp_path / "tls")
    assert plain.server.setup_done and plain.server.setup_authorization is None


def test_every_request_carries_its_token_into_its_event(pair):
    c = pair.client
    c.subscribe(("live", "cam"), "video", authorization="t-subscribe")
    c.fetch(("live", "cam"), "video", (0, 0), (1, 0), authorization="t-fetch")
    c.publish_namespace(("live", "cam"), authorization="t-publish-namespace")
    c.publish(("live", "cam"), "video", 5, authorization="t-publish")
    c.track_status(("live", "cam"), "video", authorization="t-track-status")
    c.subscribe_namespace(("live",), authorization="t-subscribe-namespace")
    sub = c.subscribe(("live", "cam"), "audio")
    c.joining_fetch(sub, 1, authorization="t-joining-fetch")
    c.subscribe(("live", "cam"), "data", authorization=JWT)
    pair.pump()
    events = pair.take("server")
    got = [(type(e).__name__, e.authorization) for e in events if hasattr(e, "authorization")]
    assert got == [("SubscribeRequested", "t-subscribe"), ("FetchRequested", "t-fetch"),
                   ("NamespacePublished", "t-publish-namespace"), ("TrackPublished", "t-publish"),
                   ("TrackStatusRequested", "t-track-status"),
                   ("SubscribeRequested", None), ("FetchRequested", "t-joining-fetch"), ("SubscribeRequested", JWT),
                   ("NamespaceSubscribeRequested", "t-subscribe-namespace")]  # its own stream: read last here
    assert not any("t-" in repr(e) or JWT in repr(e) for e in events)  # tokens stay out of reprs


def test_tokens_do_not_show_in_event_reprs(pair):
    pair.client.subscribe(("live", "cam"), "video", authorization=JWT)
    pair.pump()
    (event,) = pair.take("server", ev.SubscribeRequested)
    assert event.authorization == JWT and JWT not in repr(event) and "eyJ" not in str(event)


def test_the_server_side_can_send_tokens_too(pair):
    # a relay subscribes to what a connected publisher offers (the server's requests)
    pair.server.subscribe(("live", "cam"), "video", authorization="node-token")
    pair.pump()
    (event,) = pair.take("client", ev.SubscribeRequested)
    assert event.authorization == "node-token"


def test_requests_on_their_own_streams_may_overtake_the_control_stream(tmp_path):
    """SUBSCRIBE_NAMESPACE has a stream of its own, so its request id can arrive after later ones
    sent on the control stream: that is reordering, not a bad id. A reused or never-filled id is."""
    p = InMemory(tmp_path / "tls", caps=SessionCaps(max_requests=4))
    p.take("server")
    c = p.client
    first = c._new_request_id()  # sent last, on its own stream
    later = [c.subscribe(("live",), f"t{i}") for i in range(3)]
    p.pump()
    sid = c.quic.get_next_available_stream_id(is_unidirectional=False)
    c.quic.send_stream_data(sid, wire.encode_control_message(wire.SubscribeNamespace(first, (b"live",))))
    p.pump()
    got = [e.request_id for e in p.take("server")]
    assert got == later + [first] and not p.server.closed
    c._send_control(wire.Subscribe(later[0], (b"live",), b"again"))  # an id used already
    p.pump()
    assert closed(p.take("server")).code == SessionError.INVALID_REQUEST_ID


def test_a_request_id_gap_that_never_fills_is_bounded(tmp_path):
    p = InMemory(tmp_path / "tls")
    p.take("server")
    p.server._max_requests = 3  # our side bounds held-open gaps by the window it grants
    p.client._new_request_id()  # id 0 is never sent
    for i in range(3):
        p.client.subscribe(("live",), f"t{i}")
    p.pump()
    assert [type(e).__name__ for e in p.take("server")] == ["SubscribeRequested"] * 3
    p.client.subscribe(("live",), "one more")
    p.pump()
    assert "request id 0 never came" in closed(p.take("server")).reason


def test_a_token_of_another_type_is_not_ours(pair):
    other = AuthToken(AuthAliasType.USE_VALUE, None, 7, b"not-a-jwt").encode()
    ours = wire.auth_token_param(JWT)
    for tokens, expected in (((other,), None), ((other, ours), JWT)):
        rid = pair.client._new_request_id()
        pair.client._send_control(wire.Subscribe(rid, (b"live",), b"video", {wire.PARAM_AUTHORIZATION_TOKEN: tokens}))
        pair.pump()
        (event,) = pair.take("server", ev.SubscribeRequested)
        assert event.authorization == expected


def raw_subscribe(pair, *tokens: AuthToken) -> list:
    rid = pair.client._new_request_id()
    params = {wire.PARAM_AUTHORIZATION_TOKEN: tuple(t.encode() for t in tokens)}
    pair.client._send_control(wire.Subscribe(rid, (b"live",), b"video", params))
    pair.pump()
    return pair.take("server")


def test_registered_aliases_are_used_deleted_and_then_unknown(pair):
    (e,) = raw_subscribe(pair, AuthToken(AuthAliasType.REGISTER, 1, 0, b"token-one"))
    assert e.authorization == "token-one"
    (e,) = raw_subscribe(pair, AuthToken(AuthAliasType.USE_ALIAS, 1))
    assert e.authorization == "token-one"
    # DELETE retires the alias; the message may carry another token meanwhile
    (e,) = raw_subscribe(pair, AuthToken(AuthAliasType.DELETE, 1), AuthToken(AuthAliasType.USE_VALUE, None, 0, b"two"))
    assert e.authorization == "two"
    assert pair.server._peer_token_bytes == 0
    (e,) = raw_subscribe(pair, AuthToken(AuthAliasType.REGISTER, 1, 0, b"again"))  # a retired alias may come back
    assert e.authorization == "again"
    events = raw_subscribe(pair, AuthToken(AuthAliasType.USE_ALIAS, 9))
    assert closed(events).code == SessionError.UNKNOWN_AUTH_TOKEN_ALIAS
    assert closed(pair.take("client")).code == SessionError.UNKNOWN_AUTH_TOKEN_ALIAS


def test_registering_an_alias_twice_closes_the_session(pair):
    raw_subscribe(pair, AuthToken(AuthAliasType.REGISTER, 3, 0, b"a"))
    events = raw_subscribe(pair, AuthToken(AuthAliasType.REGISTER, 3, 0, b"b"))
    assert closed(events).code == SessionError.DUPLICATE_AUTH_TOKEN_ALIAS


def test_registrations_past_the_advertised_cache_close_the_session(pair):
    size = 4000
    fits = MAX_AUTH_TOKEN_CACHE // (16 + size)
    for alias in range(fits):
        (e,) = raw_subscribe(pair, AuthToken(AuthAliasType.REGISTER, alias, 0, b"x" * size))
    events = raw_subscribe(pair, AuthToken(AuthAliasType.REGISTER, 99, 0, b"x" * size))
    assert closed(events).code == SessionError.AUTH_TOKEN_CACHE_OVERFLOW
    assert "MAX_AUTH_TOKEN_CACHE" in closed(pair.take("client")).reason


def test_a_token_over_the_byte_limit_closes_the_session_clearly(pair):
    big = "x" * (wire.MAX_AUTH_TOKEN_BYTES + 1)
    with pytest.raises(ValueError, match="MAX_AUTH_TOKEN_BYTES"):  # ours: refused before anything is sent
        pair.client.subscribe(("live",), "video", authorization=big)
    (e,) = raw_subscribe(pair, AuthToken(AuthAliasType.USE_VALUE, None, 0, b"ok"))  # no request id was used up
    assert e.authorization == "ok"
    events = raw_subscribe(pair, AuthToken(AuthAliasType.USE_VALUE, None, 0, big.encode()))
    assert closed(events).code == SessionError.MALFORMED_AUTH_TOKEN
    reason = closed(pair.take("client")).reason
    assert "MAX_AUTH_TOKEN_BYTES" in reason and "xxxx" not in reason


def test_an_undecodable_token_closes_the_session(pair):
    rid = pair.client._new_request_id()
    pair.client._send_control(wire.Subscribe(rid, (b"live",), b"video", {wire.PARAM_AUTHORIZATION_TOKEN: b"\x09"}))
    pair.pump()
    assert closed(pair.take("server")).code == SessionError.KEY_VALUE_FORMATTING_ERROR


class RawSetupClient(MoqSession):
    """Sends the CLIENT_SETUP parameters it is given."""

    def __init__(self, *args, setup_params: dict, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._setup_params = setup_params

    def connect(self) -> None:
        self.control_stream_id = self.quic.get_next_available_stream_id(is_unidirectional=False)
        self._send_control(wire.ClientSetup({wire.SETUP_MAX_REQUEST_ID: 100, **self._setup_params}))


def test_setup_tokens_follow_the_drafts_rules(tmp_path):
    # registrations in CLIENT_SETUP that do not fit the cache are used as values, not refused
    size = 4000
    tokens = tuple(AuthToken(AuthAliasType.REGISTER, alias, 0, bytes([65 + alias]) * size).encode() for alias in range(3))
    p = InMemory(tmp_path / "tls", client_cls=RawSetupClient,
                 setup_params={wire.SETUP_AUTHORIZATION_TOKEN: tokens})
    assert p.server.setup_done and p.server.setup_authorization == "A" * size
    assert sorted(p.server._peer_tokens) == [0, 1]  # the third did not fit
    p.take("server")
    (e,) = raw_subscribe(p, AuthToken(AuthAliasType.USE_ALIAS, 1))
    assert e.authorization == "B" * size
    # an alias used (or deleted) in setup refers to nothing: a protocol violation
    for kind in (AuthAliasType.USE_ALIAS, AuthAliasType.DELETE):
        p = InMemory(tmp_path / "tls", client_cls=RawSetupClient,
                     setup_params={wire.SETUP_AUTHORIZATION_TOKEN: AuthToken(kind, 1).encode()})
        assert not p.server.setup_done
        assert closed(p.take("client")).code == SessionError.PROTOCOL_VIOLATION
    # a setup token over the byte limit closes the session at once
    big = AuthToken(AuthAliasType.USE_VALUE, None, 0, b"y" * (wire.MAX_AUTH_TOKEN_BYTES + 1)).encode()
    p = InMemory(tmp_path / "tls", client_cls=RawSetupClient, setup_params={wire.SETUP_AUTHORIZATION_TOKEN: big})
    assert closed(p.take("client")).code == SessionError.MALFORMED_AUTH_TOKEN


def test_our_namespace_subscription_receives_namespaces(pair):
    rid = pair.client.subscribe_namespace(("live",), authorization="viewer")
    pair.pump()
    (req,) = pair.take("server", ev.NamespaceSubscribeRequested)
    assert (req.request_id, req.prefix, req.options, req.authorization) == (rid, ("live",), wire.NAMESPACE_OPTION_NAMESPACE,
                                                                             "viewer")
    s = pair.server
    s.namespace_subscription_ok(req.stream_id, rid)
    s.send_namespace(req.stream_id, ("cam1",))
    s.send_namespace(req.stream_id, ())  # the prefix itself is published
    s.send_namespace_done(req.stream_id, ("cam1",))
    pair.pump()
    assert pair.take("client") == [ev.RequestAccepted(rid, {}),
                                   ev.NamespaceReceived(rid, ("cam1",), ("live", "cam1")),
                                   ev.NamespaceReceived(rid, (), ("live",)),
                                   ev.NamespaceDoneReceived(rid, ("cam1",), ("live", "cam1"))]
    pair.client.unsubscribe_namespace(rid)
    pair.pump()
    assert pair.take("server") == [ev.NamespaceUnsubscribed(req.stream_id)]
    s.send_namespace(req.stream_id, ("late",))  # crossed our FIN: dropped, the session stays up
    pair.pump()
    assert pair.take("client") == [] and not pair.client.closed


def test_a_refused_namespace_subscription_ends(pair):
    rid = pair.client.subscribe_namespace((), authorization="viewer")
    pair.pump()
    (req,) = pair.take("server", ev.NamespaceSubscribeRequested)
    assert req.prefix == ()
    pair.server.namespace_subscription_error(req.stream_id, rid, wire.RequestError.UNAUTHORIZED, "a node token is needed")
    pair.pump()
    assert pair.take("client") == [ev.RequestFailed(rid, wire.RequestError.UNAUTHORIZED, "a node token is needed"),
                                   ev.NamespaceSubscriptionEnded(rid)]
    assert not pair.client.closed


def test_namespace_done_for_a_namespace_never_announced_closes_the_session(pair):
    rid = pair.client.subscribe_namespace(("live",))
    pair.pump()
    (req,) = pair.take("server", ev.NamespaceSubscribeRequested)
    pair.server.namespace_subscription_ok(req.stream_id, rid)
    pair.server.send_namespace_done(req.stream_id, ("ghost",))
    pair.pump()
    assert closed(pair.take("client")).code == SessionError.PROTOCOL_VIOLATION


def test_namespaces_remembered_for_a_subscription_are_bounded_in_bytes(pair, monkeypatch):
    from rtmpq.moq import session

    monkeypatch.setattr(session, "MAX_NAMESPACE_SUFFIX_BYTES", 100)  # 56 bytes each below
    rid = pair.client.subscribe_namespace(("live",))
    pair.pump()
    (req,) = pair.take("server", ev.NamespaceSubscribeRequested)
    pair.server.namespace_subscription_ok(req.stream_id, rid)
    for name in ("a", "b", "c"):  # one at a time: withdrawn ones are forgotten
        pair.server.send_namespace(req.stream_id, (name * 40,))
        pair.server.send_namespace_done(req.stream_id, (name * 40,))
    pair.server.send_namespace(req.stream_id, ("d" * 40,))
    pair.server.send_namespace(req.stream_id, ("d" * 40,))  # the same one again costs nothing
    pair.pump()
    assert len(pair.take("client", ev.NamespaceReceived)) == 5 and not pair.client.closed
    pair.server.send_namespace(req.stream_id, ("e" * 40,))
    pair.pump()
    assert "MAX_NAMESPACE_SUFFIX_BYTES" in closed(pair.take("client")).reason


def test_a_namespace_before_the_answer_closes_the_session(pair):
    pair.client.subscribe_namespace(("live",))
    pair.pump()
    (req,) = pair.take("server", ev.NamespaceSubscribeRequested)
    pair.server.send_namespace(req.stream_id, ("cam",))
    pair.pump()
    assert "before the answer" in closed(pair.take("client")).reason


# -- over real QUIC on loopback, both backends ----------------------------------------------------
@pytest.fixture(params=["aioquic", "aiopquic"])
async def recorder(tmp_path, request):
    """A MoQ server that records what each session receives and refuses every request, except
    SUBSCRIBE_NAMESPACE: accepted, with the namespaces ``live/cam1`` and ``live`` (an empty suffix)."""
    cert, key = ensure_self_signed(tmp_path / "tls")
    port = free_port(socket.SOCK_DGRAM)
    seen: list = []
    sessions: list = []

    def on_event(conn, event) -> None:
        seen.append(event)
        s = conn.session
        if isinstance(event, (ev.SubscribeRequested, ev.FetchRequested, ev.TrackStatusRequested)):
            s.request_error(event.request_id, wire.RequestError.UNAUTHORIZED, "refused by the recorder")
        elif isinstance(event, ev.NamespaceSubscribeRequested):
            s.namespace_subscription_ok(event.stream_id, event.request_id)
            s.send_namespace(event.stream_id, ("cam1",))
            s.send_namespace(event.stream_id, ())

    def on_connection(conn) -> None:
        sessions.append(conn.session)
        conn.handler = on_event

    server = await serve_moq("127.0.0.1", port, certfile=cert, keyfile=key, on_connection=on_connection,
                             backend=request.param)
    yield request.param, port, seen, sessions
    server.close()


async def events_until(queue: asyncio.Queue, kind, count: int = 1) -> list:
    """The first ``count`` events of ``kind`` in ``queue`` (an item may be (tag, event): kept whole)."""
    got = []
    async with asyncio.timeout(10):
        while len(got) < count:
            item = await queue.get()
            event = item[1] if isinstance(item, tuple) else item
            if isinstance(event, kind):
                got.append(item)
            elif isinstance(event, ev.SessionClosed):
                raise AssertionError(f"session closed: {event}")
    return got


async def test_tokens_cross_a_real_connection(recorder):
    backend, port, seen, sessions = recorder
    async with connect_moq("127.0.0.1", port, insecure=True, backend=backend, token=JWT) as conn:
        assert sessions[0].setup_authorization == JWT
        with pytest.raises(SubscribeError, match="refused by the recorder"):
            async for _ in subscribe_broadcast(conn, "live/cam1", authorization="viewer-token"):
                pass
        with pytest.raises(FetchError, match="refused by the recorder"):
            await fetch_track(conn, "live/cam1", "video", (0, 0), (1, 0), authorization="fetch-token")
        queue: asyncio.Queue = asyncio.Queue()
        conn.handler = lambda _c, e: queue.put_nowait(e)
        rid = conn.session.subscribe_namespace(("live",), authorization="ns-token")
        conn.flush()
        got = await events_until(queue, ev.NamespaceReceived, 2)
        assert [(e.request_id, e.namespace) for e in got] == [(rid, ("live", "cam1")), (rid, ("live",))]
    requests = [(type(e).__name__, e.authorization) for e in seen if hasattr(e, "authorization")]
    assert requests == [("SubscribeRequested", "viewer-token"), ("FetchRequested", "fetch-token"),
                        ("NamespaceSubscribeRequested", "ns-token")]


async def test_a_token_too_big_closes_a_real_session(recorder):
    backend, port, seen, sessions = recorder
    with pytest.raises(ValueError, match="MAX_AUTH_TOKEN_BYTES"):
        connect_moq("127.0.0.1", port, insecure=True, backend=backend, token="x" * (wire.MAX_AUTH_TOKEN_BYTES + 1))
    async with connect_moq("127.0.0.1", port, insecure=True, backend=backend) as conn:
        queue: asyncio.Queue = asyncio.Queue()
        conn.handler = lambda _c, e: queue.put_nowait(e)
        big = AuthToken(AuthAliasType.USE_VALUE, None, 0, b"x" * (wire.MAX_AUTH_TOKEN_BYTES + 1)).encode()
        rid = conn.session._new_request_id()
        conn.session._send_control(wire.Subscribe(rid, (b"live",), b"video", {wire.PARAM_AUTHORIZATION_TOKEN: big}))
        conn.flush()
        async with asyncio.timeout(10):
            event = await queue.get()
        assert isinstance(event, ev.SessionClosed) and event.code == SessionError.MALFORMED_AUTH_TOKEN
        if backend == "aioquic":  # aiopquic sends no reason phrase with a close (picoquic takes a code only)
            assert "MAX_AUTH_TOKEN_BYTES" in event.reason
    assert sessions[0].closed
    assert not any(isinstance(e, ev.SubscribeRequested) for e in seen)


async def test_the_relay_announces_namespaces_to_our_subscription(tmp_path):
    """The relay's NAMESPACE messages (a namespace under the prefix, and the prefix itself) reach
    a namespace subscription of ours; a withdrawn one comes as NAMESPACE_DONE. (One prefix per
    session: two that overlap on one session get PREFIX_OVERLAP, draft 16.)"""
    for backend in ("aioquic", "aiopquic"):
        async with serving_relay(tmp_path, backend) as (relay, port):
            async with (connect_moq("127.0.0.1", port, insecure=True, backend=backend) as publisher,
                        connect_moq("127.0.0.1", port, insecure=True, backend=backend) as viewer,
                        connect_moq("127.0.0.1", port, insecure=True, backend=backend) as exact_viewer):
                pq: asyncio.Queue = asyncio.Queue()
                publisher.handler = lambda _c, e: pq.put_nowait(e)
                announced = publisher.session.publish_namespace(("live", "cam1"), authorization=JWT)
                publisher.flush()
                assert (await events_until(pq, ev.RequestAccepted))[0].request_id == announced
                vq: asyncio.Queue = asyncio.Queue()
                viewer.handler = exact_viewer.handler = lambda c, e: vq.put_nowait((c is viewer, e))
                wide = viewer.session.subscribe_namespace(("live",))
                exact = exact_viewer.session.subscribe_namespace(("live", "cam1"))
                viewer.flush()
                exact_viewer.flush()
                got = await events_until(vq, ev.NamespaceReceived, 2)
                assert sorted((wide_one, e.request_id, e.suffix, e.namespace) for wide_one, e in got) == sorted(
                    [(True, wide, ("cam1",), ("live", "cam1")), (False, exact, (), ("live", "cam1"))])
                publisher.session.publish_namespace_done(announced)
                publisher.flush()
                done = await events_until(vq, ev.NamespaceDoneReceived, 2)
                assert {e.namespace for _, e in done} == {("live", "cam1")}


async def test_a_moq_subscription_goes_on_past_its_tokens_expiry_and_a_session_token_is_no_moq_token(tmp_path):
    """Checked when playback starts, as on HLS: the SUBSCRIBE's token is checked once, and the
    subscriber keeps receiving well past its expiry. An HLS session token subscribes to nothing."""
    import time

    from rtmpq.auth.tokens import CLOCK_SKEW_LEEWAY, mint_session_token, mint_token
    from rtmpq.config import AuthConfig, PublishConfig
    from rtmpq.media.catalog import Catalog
    from rtmpq.moq.wire import RequestError

    from .conftest import need, start_up_node
    from .publishers import end_live_publish, ffmpeg_publish_only_args, run_process

    need("ffmpeg")
    secret = "0123456789abcdef0123456789abcdef"
    node = await start_up_node(tmp_path, auth=AuthConfig(secret=secret, require_playback_token=True),
                               publish=PublishConfig(keys={"sk-secret1": "studio"}, grace_period=0))
    try:
        publish = asyncio.create_task(run_process(ffmpeg_publish_only_args(
            f"rtmp://127.0.0.1:{node.rtmp.address[1]}/live/sk-secret1", seconds=20), timeout=60))
        host, port = node.moq_address
        await node.registry.wait_for("live/studio", 10)
        # a token at its expiry, accepted for the clock-skew leeway more: the subscription starts
        # within that and must go on past it
        now = time.time()
        expired = int(now) + CLOCK_SKEW_LEEWAY
        async with connect_moq(host, port, insecure=True) as conn:
            with pytest.raises(SubscribeError) as info:
                session = mint_session_token(secret, "live/studio", 600, now=now)
                async for _ in subscribe_broadcast(conn, "live/studio", wait=20, authorization=session):
                    pass
            assert info.value.code == RequestError.UNAUTHORIZED
        frames_past = 0
        async with connect_moq(host, port, insecure=True) as conn, asyncio.timeout(expired + 20 - now):
            token = mint_token(secret, "live/studio", "subscribe", CLOCK_SKEW_LEEWAY, now=now - CLOCK_SKEW_LEEWAY)
            async for item in subscribe_broadcast(conn, "live/studio", wait=20, authorization=token):
                if not isinstance(item, Catalog) and time.time() > expired + 2:
                    frames_past += 1
                    if frames_past >= 60:  # two seconds of video, well past the expiry
                        break
        assert frames_past >= 60
        await end_live_publish(publish)
    finally:
        await node.close()
