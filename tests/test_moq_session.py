"""The sans-I/O MoqSession driven in memory over a pair of aioquic connections (tests/moq_pair.py)."""

import pytest

from rtmpq.moq import events as ev
from rtmpq.moq import session as session_module
from rtmpq.moq import wire
from rtmpq.moq.session import ReceivePool, SessionCaps
from rtmpq.moq.wire import RequestError, SessionError

from .moq_pair import MoqPair, closed_with

NS = ("live", "cam")
NS_RAW = tuple(part.encode() for part in NS)


def requested(events) -> list[int]:
    return [e.request_id for e in events if hasattr(e, "request_id") and type(e).__name__.endswith(
        ("Requested", "Published", "TrackPublished"))]


def test_requests_beyond_max_requests_close_the_session_with_too_many_requests(tmp_path):
    pair = MoqPair(tmp_path, caps=SessionCaps(max_requests=4))
    pair.setup()
    rids = [pair.client.subscribe(NS, f"t{i}") for i in range(4)]
    _, server_events = pair.pump()
    assert requested(server_events) == rids and closed_with(server_events) is None
    # none of the four was answered: they are all still open, so a fifth is one too many (sent
    # raw: our own client holds it back, see the next test)
    pair.client._send_control(wire.Subscribe(pair.client._new_request_id(), NS_RAW, b"t4", {}))
    client_events, server_events = pair.pump()
    closed = closed_with(server_events)
    assert closed is not None and closed.code == SessionError.TOO_MANY_REQUESTS
    client_events, _ = pair.run_timers()
    assert closed_with(client_events).code == SessionError.TOO_MANY_REQUESTS


def test_a_request_beyond_the_peers_grant_waits_for_more_and_says_requests_blocked(tmp_path):
    """MoQT d16 MAX_REQUEST_ID / REQUESTS_BLOCKED: a client never sends a request id the peer has
    not granted (the peer would close the session); it says it is blocked, and sends the request
    as soon as the peer raises the bound."""
    pair = MoqPair(tmp_path, caps=SessionCaps(max_requests=4))
    pair.setup()
    rids = [pair.client.subscribe(NS, f"t{i}") for i in range(4)]
    pair.pump()
    fifth = pair.client.subscribe(NS, "t4")
    gone = pair.client.subscribe(NS, "t5")
    pair.client.unsubscribe(gone)  # given up while still held: goes out after it, not before
    blocked = []
    original = pair.server._on_message
    pair.server._on_message = lambda msg: (blocked.append(msg) if isinstance(msg, wire.RequestsBlocked) else None,
                                           original(msg))[1]
    _, server_events = pair.pump()
    assert closed_with(server_events) is None and fifth not in requested(server_events)
    assert len(blocked) == 1 and blocked[0].maximum_request_id == pair.client._peer_max_request_id
    for rid in rids:  # the four end: the server grants more
        pair.server.request_error(rid, RequestError.DOES_NOT_EXIST, "no")
    _, server_events = pair.pump()
    assert closed_with(server_events) is None
    assert requested(server_events) == [fifth, gone]
    assert [e.request_id for e in server_events if isinstance(e, ev.Unsubscribed)] == [gone]


def test_closed_requests_make_room_for_new_ones(tmp_path):
    """200 requests, never more than 4 open: ended by REQUEST_ERROR, UNSUBSCRIBE or PUBLISH_DONE."""
    pair = MoqPair(tmp_path, caps=SessionCaps(max_requests=4))
    pair.setup()
    for round_ in range(50):
        rids = [pair.client.subscribe(NS, f"t{i}") for i in range(4)]
        _, server_events = pair.pump()
        assert closed_with(server_events) is None, f"round {round_}"
        assert requested(server_events) == rids
        pair.server.request_error(rids[0], RequestError.DOES_NOT_EXIST, "no")
        pair.server.subscribe_ok(rids[1], 2 * round_)
        pair.server.publish_done(rids[1], wire.PublishDoneStatus.TRACK_ENDED, 0)
        pair.server.subscribe_ok(rids[2], 2 * round_ + 1)
        pair.client.unsubscribe(rids[2])
        pair.client.unsubscribe(rids[3])  # never answered, given up
        _, server_events = pair.pump()
        assert closed_with(server_events) is None
    assert not pair.server._open_requests


def _send_subscribe_namespace(pair) -> int:
    sid = pair.client_quic.get_next_available_stream_id(is_unidirectional=False)
    rid = pair.client._new_request_id()
    pair.client_quic.send_stream_data(sid, wire.encode_control_message(
        wire.SubscribeNamespace(rid, (b"live",), wire.NAMESPACE_OPTION_NAMESPACE)))
    return sid


# (how the client opens a request, how it ends on either side, whether it is still open after that)
def _fetch_served(pair, rid):
    pair.server.fetch_ok(rid, (1, 0))
    sid = pair.server.open_fetch_stream(rid)
    pair.server.end_fetch_stream(sid)


def _namespace_ended(pair, sid):
    pair.client_quic.send_stream_data(sid, b"", end_stream=True)


def _namespace_reset(pair, sid):
    pair.client_quic.reset_stream(sid, 0)


CASES = {
    "track status answered": (lambda p: p.client.track_status(NS, "video"), lambda p, r: p.server.request_ok(r), False),
    "namespace accepted": (lambda p: p.client.publish_namespace(NS), lambda p, r: p.server.request_ok(r), True),
    "namespace withdrawn": (lambda p: p.client.publish_namespace(NS),
                            lambda p, r: (p.server.request_ok(r), p.client.publish_namespace_done(r)), False),
    "publish accepted": (lambda p: p.client.publish(NS, "video", 7), lambda p, r: p.server.publish_ok(r), True),
    "publish done": (lambda p: p.client.publish(NS, "video", 7),
                     lambda p, r: (p.server.publish_ok(r),
                                   p.client.publish_done(r, wire.PublishDoneStatus.TRACK_ENDED, 0)), False),
    "fetch accepted": (lambda p: p.client.fetch(NS, "video", (0, 0), (1, 0)),
                       lambda p, r: p.server.fetch_ok(r, (1, 0)), True),
    "fetch served": (lambda p: p.client.fetch(NS, "video", (0, 0), (1, 0)), _fetch_served, False),
    "fetch cancelled": (lambda p: p.client.fetch(NS, "video", (0, 0), (1, 0)),
                        lambda p, r: p.client.fetch_cancel(r), False),
    "namespace subscription": (_send_subscribe_namespace, lambda p, sid: None, True),
    "namespace subscription ended": (_send_subscribe_namespace, _namespace_ended, False),
    "namespace subscription reset": (_send_subscribe_namespace, _namespace_reset, False),
}


@pytest.mark.parametrize("case", CASES)
def test_which_requests_stay_open(tmp_path, case):
    open_request, end, still_open = CASES[case]
    pair = MoqPair(tmp_path, caps=SessionCaps(max_requests=1))
    pair.setup()
    handle = open_request(pair)
    pair.pump()
    end(pair, handle)
    pair.pump()
    # raw: the server's count of open requests is under test, not the client's own hold-back
    pair.client._send_control(wire.Subscribe(pair.client._new_request_id(), NS_RAW, b"next", {}))
    _, server_events = pair.pump()
    closed = closed_with(server_events)
    if still_open:
        assert closed is not None and closed.code == SessionError.TOO_MANY_REQUESTS
    else:
        assert closed is None
        assert any(isinstance(e, ev.SubscribeRequested) for e in server_events)


def test_objects_held_for_an_unknown_alias_are_capped_in_bytes(tmp_path):
    """Objects may overtake the SUBSCRIBE_OK naming their alias; those held meanwhile are bounded
    in bytes (the oldest go first), not only in number."""
    pair = MoqPair(tmp_path, client_kwargs={"caps": SessionCaps(max_held_bytes=64 * 1024)})
    pair.setup()
    rid = pair.client.subscribe(NS, "video")
    pair.pump()
    sid = pair.server.open_subgroup(5, 0)
    for object_id in range(100):
        pair.server.send_object(sid, object_id, bytes([object_id]) * 4096)
    client_events, _ = pair.pump()
    assert not [e for e in client_events if isinstance(e, ev.ObjectReceived)]  # alias 5 not named yet
    pair.server.subscribe_ok(rid, 5)
    client_events, _ = pair.pump()
    objects = [e for e in client_events if isinstance(e, ev.ObjectReceived)]
    assert objects and sum(len(e.payload) for e in objects) <= 64 * 1024
    assert [e.object_id for e in objects] == list(range(100 - len(objects), 100))  # the newest kept
    pair.server.send_object(sid, 100, b"after")
    client_events, _ = pair.pump()
    assert [e.object_id for e in client_events if isinstance(e, ev.ObjectReceived)] == [100]


@pytest.mark.parametrize("second", ["SUBSCRIBE_OK", "PUBLISH"])
def test_a_track_alias_already_naming_another_established_track_closes_the_session(tmp_path, second):
    """Draft 16 SUBSCRIBE_OK / PUBLISH Track Alias: "If a subscriber receives a SUBSCRIBE_OK [a
    PUBLISH] that uses the same Track Alias as a different track with an Established subscription,
    it MUST close the session with error DUPLICATE_TRACK_ALIAS". rtmpq took it and mixed the two
    tracks' objects under one alias."""
    pair = MoqPair(tmp_path)
    pair.setup()
    rid = pair.client.subscribe(NS, "video")
    pair.pump()
    pair.server.subscribe_ok(rid, 5)
    if second == "SUBSCRIBE_OK":
        other = pair.client.subscribe(NS, "audio")
        pair.pump()
        pair.server.subscribe_ok(other, 5)
    else:
        pair.server.publish(NS, "audio", 5)
    client_events, _ = pair.pump()
    closed = closed_with(client_events)
    assert closed is not None and closed.code == SessionError.DUPLICATE_TRACK_ALIAS, client_events


def test_a_track_alias_is_free_again_once_its_subscription_ended(tmp_path):
    """The same alias for another track after the first subscription ended (PUBLISH_DONE, or our
    UNSUBSCRIBE) is no duplicate; nor is the same track's alias given again."""
    pair = MoqPair(tmp_path)
    pair.setup()
    video = pair.client.subscribe(NS, "video")
    pair.pump()
    pair.server.subscribe_ok(video, 5)
    pair.pump()
    pair.server.publish_done(video, wire.PublishDoneStatus.TRACK_ENDED, 0)
    audio = pair.client.subscribe(NS, "audio")
    pair.pump()
    pair.server.subscribe_ok(audio, 5)
    pair.pump()
    pair.client.unsubscribe(audio)
    data = pair.client.subscribe(NS, "data")
    again = pair.client.subscribe(NS, "data")  # (a duplicate subscription the peer may well refuse)
    pair.pump()
    pair.server.subscribe_ok(data, 5)
    pair.server.subscribe_ok(again, 5)
    client_events, _ = pair.pump()
    assert closed_with(client_events) is None, client_events


def _partial_object_stream(alias: int, group: int, size: int, sent: int) -> bytes:
    """A subgroup stream's header and the start of one object: ``sent`` of its ``size`` bytes."""
    header = wire.SubgroupHeader(alias, group, 0, 128, extensions=False, end_of_group=True).encode()
    return header + wire.encode_varint(0) + wire.encode_varint(size) + b"x" * sent


def test_stream_data_buffered_by_a_session_is_capped_in_bytes(tmp_path):
    """Partial objects on many streams at once: past MAX_STREAM_BUFFER the session is closed."""
    pair = MoqPair(tmp_path, caps=SessionCaps(max_stream_buffer=256 * 1024))
    pair.setup()
    for group in range(10):  # 10 objects of 100 KB, each half sent and never finished: 500 KB
        sid = pair.client_quic.get_next_available_stream_id(is_unidirectional=True)
        pair.client_quic.send_stream_data(sid, _partial_object_stream(1, group, 100_000, 50_000))
    client_events, server_events = pair.pump()
    closed = closed_with(server_events)
    assert closed is not None and closed.code == SessionError.PROTOCOL_VIOLATION
    assert "MAX_STREAM_BUFFER" in closed.reason


def test_complete_objects_do_not_count_against_the_stream_buffer(tmp_path):
    pair = MoqPair(tmp_path, client_kwargs={"caps": SessionCaps(max_stream_buffer=256 * 1024)})
    pair.setup()
    rid = pair.client.subscribe(NS, "video")
    pair.pump()
    pair.server.subscribe_ok(rid, 1)
    # 5 streams at once, 2 MB in all, in 30 KB objects: at most 5 partial objects are buffered
    sids = [pair.server.open_subgroup(1, group) for group in range(5)]
    for object_id in range(14):
        for sid in sids:
            pair.server.send_object(sid, object_id, b"y" * 30_000)
    for sid in sids:
        pair.server.end_subgroup(sid)
    client_events, _ = pair.pump()
    assert closed_with(client_events) is None
    assert sum(isinstance(e, ev.ObjectReceived) for e in client_events) == 70
    assert sum(isinstance(e, ev.SubgroupEnded) for e in client_events) == 5
    assert pair.client._stream_buffer_bytes == 0


@pytest.mark.parametrize(("status", "extensions", "reason"), [
    (0x2, None, "object status"), (wire.ObjectStatus.END_OF_GROUP, {0x3C: 1}, "extension headers")])
def test_a_bad_object_status_closes_the_session_with_protocol_violation(tmp_path, status, extensions, reason):
    """Draft 16: an unknown Object Status SHOULD, extension headers on an object whose status is not
    Normal MUST close the session with PROTOCOL_VIOLATION."""
    pair = MoqPair(tmp_path)
    pair.setup()
    rid = pair.client.subscribe(NS, "video")
    pair.pump()
    pair.server.subscribe_ok(rid, 1)
    sid = pair.server.open_subgroup(1, 0)
    pair.server.send_object(sid, 0, b"frame")
    client_events, _ = pair.pump()
    assert [bytes(e.payload) for e in client_events if isinstance(e, ev.ObjectReceived)] == [b"frame"]
    pair.server_quic.send_stream_data(sid, wire.encode_object(0, b"", extensions, with_extensions=True, status=status))
    client_events, _ = pair.pump()
    closed = closed_with(client_events)
    assert closed is not None and closed.code == SessionError.PROTOCOL_VIOLATION and reason in closed.reason


def test_a_refusal_says_when_the_request_may_be_sent_again(tmp_path):
    # REQUEST_ERROR's Retry Interval: milliseconds + 1, and 0 means "SHOULD NOT be retried" (draft 16)
    pair = MoqPair(tmp_path)
    pair.setup()
    busy, gone = pair.client.fetch(NS, "video", (0, 0), (1, 0)), pair.client.subscribe(NS, "nothing")
    _, server_events = pair.pump()
    assert requested(server_events) == [busy, gone]
    pair.server.request_error(busy, RequestError.INTERNAL_ERROR, "busy, retry later", retry_after=0.25)
    pair.server.request_error(gone, RequestError.DOES_NOT_EXIST, "no such track")
    client_events, _ = pair.pump()
    failed = {e.request_id: e.retry_after for e in client_events if isinstance(e, ev.RequestFailed)}
    assert failed == {busy: 0.25, gone: None}
    assert wire.retry_interval(0.25) == 251 and wire.retry_interval(None) == 0 and wire.retry_interval(0) == 1


@pytest.mark.parametrize("case", ["max request id not raised", "second goaway", "goaway with a uri to a server"])
def test_what_draft_16_forbids_of_max_request_id_and_goaway_closes_the_session(tmp_path, case):
    pair = MoqPair(tmp_path)
    pair.setup()
    if case == "max request id not raised":
        sender, receiver = pair.server, 0
        sender._send_control(wire.MaxRequestId(pair.client._peer_max_request_id))  # equal: MUST only increase
    elif case == "second goaway":
        sender, receiver = pair.server, 0
        sender._send_control(wire.Goaway("moqt://other:4443/"))
        sender._send_control(wire.Goaway(""))
    else:
        sender, receiver = pair.client, 1
        sender._send_control(wire.Goaway("moqt://other:4443/"))  # only a server may name a new session
    events = pair.pump()[receiver]
    closed = closed_with(events)
    assert closed is not None and closed.code == SessionError.PROTOCOL_VIOLATION, events


def test_a_raised_max_request_id_and_one_goaway_are_taken(tmp_path):
    pair = MoqPair(tmp_path)
    pair.setup()
    before = pair.client._peer_max_request_id
    pair.server._send_control(wire.MaxRequestId(before + 10))
    pair.server._send_control(wire.Goaway("moqt://other:4443/"))
    client_events, _ = pair.pump()
    assert closed_with(client_events) is None and pair.client._peer_max_request_id == before + 10
    assert ev.GoawayReceived("moqt://other:4443/") in client_events


@pytest.mark.parametrize("existing", ["never made by the client", "never made by the server"])
def test_a_request_update_of_a_request_never_made_closes_the_session(tmp_path, existing):
    """Draft 16 REQUEST_UPDATE: an invalid Existing Request ID MUST close the session with
    PROTOCOL_VIOLATION (not a REQUEST_ERROR, as for a request that existed and has ended)."""
    pair = MoqPair(tmp_path)
    pair.setup()
    pair.client.subscribe(NS, "video")  # the client's id 0 exists: ids from 2 on were never used
    pair.pump()
    unused = 2 if existing == "never made by the client" else 1  # the server made no request
    pair.client._send_control(wire.RequestUpdate(pair.client._new_request_id(), unused, {wire.PARAM_FORWARD: 0}))
    _, server_events = pair.pump()
    closed = closed_with(server_events)
    assert closed is not None and closed.code == SessionError.PROTOCOL_VIOLATION, server_events


@pytest.mark.parametrize("existing", ["ended subscribe", "the peer's publish"])
def test_a_request_update_of_a_request_once_made_is_passed_on(tmp_path, existing):
    """A request that has ended (its refusal crossed the update) or a PUBLISH of the peer's is no
    protocol violation: the session stays, and the update is for the application to answer."""
    pair = MoqPair(tmp_path)
    pair.setup()
    if existing == "ended subscribe":
        rid = pair.client.subscribe(NS, "video")
        pair.pump()
        pair.server.request_error(rid, RequestError.DOES_NOT_EXIST, "no such track")
    else:
        rid = pair.server.publish(NS, "video", 1)
    pair.pump()
    update = pair.client.request_update(rid, forward=False)
    _, server_events = pair.pump()
    assert closed_with(server_events) is None
    assert ev.RequestUpdated(update, rid, False) in server_events


def test_a_request_update_carries_a_new_subscription_filter(tmp_path):
    """Draft 16: SUBSCRIPTION_FILTER may appear in a REQUEST_UPDATE of a subscription; what the
    update leaves out keeps its value (no FORWARD here: ``forward`` is None)."""
    pair = MoqPair(tmp_path)
    pair.setup()
    rid = pair.client.subscribe(NS, "video", filter_type=wire.FILTER_ABSOLUTE_RANGE, start=(2, 0), end_group=5)
    pair.pump()
    update = pair.client.request_update(rid, filter_type=wire.FILTER_ABSOLUTE_RANGE, start=(2, 1), end_group=9)
    _, server_events = pair.pump()
    assert closed_with(server_events) is None
    assert ev.RequestUpdated(update, rid, None, wire.FILTER_ABSOLUTE_RANGE, (2, 1), 9) in server_events


@pytest.mark.parametrize("existing", ["fetch", "namespace"])
def test_a_filter_in_a_request_update_of_no_subscription_closes_the_session(tmp_path, existing):
    """Draft 16: parameters in a REQUEST_UPDATE invalid for the type of request being modified close
    the session with PROTOCOL_VIOLATION; a filter is for a subscription, not a FETCH or a
    PUBLISH_NAMESPACE."""
    pair = MoqPair(tmp_path)
    pair.setup()
    rid = pair.client.fetch(NS, "video", (0, 0), (1, 0)) if existing == "fetch" else pair.client.publish_namespace(NS)
    pair.pump()
    pair.client.request_update(rid, filter_type=wire.FILTER_LARGEST_OBJECT)
    _, server_events = pair.pump()
    closed = closed_with(server_events)
    assert closed is not None and closed.code == SessionError.PROTOCOL_VIOLATION, server_events


@pytest.mark.parametrize("value", [wire.encode_filter(wire.FILTER_ABSOLUTE_START, (1, 0)) + b"\x00", b"\x09"],
                         ids=["length does not match", "unknown filter type"])
def test_a_malformed_filter_in_a_request_update_closes_the_session(tmp_path, value):
    """Draft 16: a Subscription Filter whose length does not match the parameter's, or of an
    unknown type, closes the session with PROTOCOL_VIOLATION, in a REQUEST_UPDATE as in a SUBSCRIBE."""
    pair = MoqPair(tmp_path)
    pair.setup()
    rid = pair.client.subscribe(NS, "video")
    pair.pump()
    pair.client._send_control(wire.RequestUpdate(pair.client._new_request_id(), rid,
                                                 {wire.PARAM_SUBSCRIPTION_FILTER: value}))
    _, server_events = pair.pump()
    closed = closed_with(server_events)
    assert closed is not None and closed.code == SessionError.PROTOCOL_VIOLATION, server_events


def test_publish_namespace_cancel_reaches_the_publisher(tmp_path):
    """Draft 16 PUBLISH_NAMESPACE_CANCEL: the receiver of a PUBLISH_NAMESPACE says it will send no
    more SUBSCRIBEs for it. The session dropped it as an unknown message (draft 16 audit)."""
    pair = MoqPair(tmp_path)
    pair.setup()
    rid = pair.client.publish_namespace(NS)
    pair.pump()
    pair.server._send_control(wire.PublishNamespaceCancel(rid, RequestError.UNINTERESTED, "not here"))
    client_events, _ = pair.pump()
    assert closed_with(client_events) is None
    assert ev.NamespaceCancelled(rid, RequestError.UNINTERESTED, "not here") in client_events


class RecordingQuic:
    """Just enough of a QUIC connection for a session driven by hand: what it writes and how it closes."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, bytes]] = []
        self.closed_with: tuple[int, str] | None = None

    def get_next_available_stream_id(self, is_unidirectional: bool = False) -> int:
        return 2 if is_unidirectional else 0

    def send_stream_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        self.sent.append((stream_id, bytes(data)))

    def close(self, error_code: int = 0, reason_phrase: str = "") -> None:
        self.closed_with = (error_code, reason_phrase)


class StreamDataReceived:  # matched by name, as the session matches aioquic's and aiopquic's events
    def __init__(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        self.stream_id, self.data, self.end_stream = stream_id, data, end_stream


def test_a_client_names_the_authority_it_connects_to():
    """Draft 16 AUTHORITY (setup parameter 0x05): a client connecting to a moqt:// URI MUST set it
    to the URI's authority; rtmpq's client never sent it (draft 16 audit)."""
    quic = RecordingQuic()
    MoqSession = session_module.MoqSession
    MoqSession(quic, is_client=True, authority="relay.example:4443").connect()
    (sid, data), = quic.sent
    setup, _ = wire.decode_control_message(data)
    assert sid == 0 and isinstance(setup, wire.ClientSetup)
    assert setup.params[wire.SETUP_AUTHORITY] == b"relay.example:4443"
    assert wire.SETUP_PATH not in setup.params  # no path: nothing to say


@pytest.mark.parametrize(("param", "code"), [(wire.SETUP_PATH, SessionError.INVALID_PATH),
                                             (wire.SETUP_AUTHORITY, SessionError.INVALID_AUTHORITY)])
def test_path_or_authority_from_a_server_closes_the_session(param, code):
    """Draft 16: PATH and AUTHORITY "MUST NOT be used by the server"; a client that receives one
    MUST close the session with INVALID_PATH / INVALID_AUTHORITY. rtmpq's client took them."""
    quic = RecordingQuic()
    client = session_module.MoqSession(quic, is_client=True)
    client.connect()
    setup = wire.encode_control_message(wire.ServerSetup({wire.SETUP_MAX_REQUEST_ID: 10, param: b"/x"}))
    events = client.handle_event(StreamDataReceived(0, setup))
    assert quic.closed_with is not None and quic.closed_with[0] == code, events
    assert not any(isinstance(e, ev.SetupComplete) for e in events)


@pytest.mark.parametrize(("param", "value", "code"), [
    (wire.SETUP_PATH, b"live/x", SessionError.MALFORMED_PATH),  # path-abempty: empty or from "/"
    (wire.SETUP_PATH, b"/live x", SessionError.MALFORMED_PATH),  # a space is no pchar
    (wire.SETUP_PATH, b"/a%zz", SessionError.MALFORMED_PATH),  # a broken percent-encoding
    (wire.SETUP_PATH, b"/a\xc3\xa9", SessionError.MALFORMED_PATH),  # not ASCII
    (wire.SETUP_AUTHORITY, b"relay example:4443", SessionError.MALFORMED_AUTHORITY),
    (wire.SETUP_AUTHORITY, b"relay.example:44a3", SessionError.MALFORMED_AUTHORITY),  # port: digits
    (wire.SETUP_AUTHORITY, b"relay.example/live", SessionError.MALFORMED_AUTHORITY),
    (wire.SETUP_AUTHORITY, b"[::1", SessionError.MALFORMED_AUTHORITY),
])
def test_a_malformed_path_or_authority_from_a_client_closes_the_session(param, value, code):
    """Draft 16 PATH / AUTHORITY follow RFC 3986: "If a PATH does not conform to these rules, the
    session MUST be closed with MALFORMED_PATH" (and MALFORMED_AUTHORITY). rtmpq's server took any."""
    quic = RecordingQuic()
    server = session_module.MoqSession(quic, is_client=False)
    setup = wire.encode_control_message(wire.ClientSetup({wire.SETUP_MAX_REQUEST_ID: 10, param: value}))
    events = server.handle_event(StreamDataReceived(0, setup))
    assert quic.closed_with is not None and quic.closed_with[0] == code, events
    assert not any(isinstance(e, ev.SetupComplete) for e in events)


@pytest.mark.parametrize(("param", "value"), [
    (wire.SETUP_PATH, b""), (wire.SETUP_PATH, b"/"), (wire.SETUP_PATH, b"/live/x%20y;v=1:@!"),
    (wire.SETUP_PATH, b"/live?token=a/b?c"), (wire.SETUP_PATH, b"?q"),
    (wire.SETUP_AUTHORITY, b"relay.example:4443"), (wire.SETUP_AUTHORITY, b"127.0.0.1"),
    (wire.SETUP_AUTHORITY, b"[::1]:4443"), (wire.SETUP_AUTHORITY, b"user:pw@host:"),
])
def test_a_well_formed_path_or_authority_is_taken(param, value):
    quic = RecordingQuic()
    server = session_module.MoqSession(quic, is_client=False)
    setup = wire.encode_control_message(wire.ClientSetup({wire.SETUP_MAX_REQUEST_ID: 10, param: value}))
    events = server.handle_event(StreamDataReceived(0, setup))
    assert quic.closed_with is None and any(isinstance(e, ev.SetupComplete) for e in events), events


class DatagramFrameReceived:  # matched by name, as StreamDataReceived above
    def __init__(self, data: bytes) -> None:
        self.data = data


def test_object_datagrams_are_objects_of_their_track_held_until_its_alias_is_known():
    """Draft 16: an unknown datagram type MUST close the session; a datagram whose Track Alias is
    not known yet MAY be held "for a brief period to handle reordering with the control message
    that establishes the Track Alias". rtmpq dropped every datagram object with a warning; now
    each is a DatagramObjectReceived, held like a stream's object until SUBSCRIBE_OK names it."""
    quic = RecordingQuic()
    client = session_module.MoqSession(quic, is_client=True)
    client.connect()
    client.handle_event(StreamDataReceived(0, wire.encode_control_message(
        wire.ServerSetup({wire.SETUP_MAX_REQUEST_ID: 10}))))
    assert client.handle_event(DatagramFrameReceived(b"\x0c\x02\x05abcd")) == []  # alias 2: not known yet
    ok = wire.encode_control_message(wire.SubscribeOk(0, 2, {}, {}))
    events = client.handle_event(StreamDataReceived(0, ok))
    assert events[1:] == [ev.DatagramObjectReceived(2, 5, 0, b"abcd", {}, wire.ObjectStatus.NORMAL, None, False)]
    assert client.handle_event(DatagramFrameReceived(b"\x03\x02\x05\x03\x07\x02\x10\x28ab")) == [
        ev.DatagramObjectReceived(2, 5, 3, b"ab", {0x10: 40}, wire.ObjectStatus.NORMAL, 7, True)]
    assert quic.closed_with is None and client.datagrams_received == 2
    events = client.handle_event(DatagramFrameReceived(b"\x23\x02\x05\x03"))  # STATUS with END_OF_GROUP
    assert quic.closed_with is not None and quic.closed_with[0] == SessionError.PROTOCOL_VIOLATION, events


class DatagramQuic(RecordingQuic):
    """A QUIC connection that takes datagrams of up to ``room`` bytes, ``queue`` of them."""

    def __init__(self, room: int, queue: int) -> None:
        super().__init__()
        self.room, self.queue, self.datagrams = room, queue, []

    def datagram_room(self) -> int:
        return self.room

    def send_datagram_frame(self, data: bytes) -> bool:
        if len(self.datagrams) >= self.queue:
            return False
        self.datagrams.append(bytes(data))
        return True


def test_send_datagram_says_what_became_of_each_object():
    """An object sent as a datagram goes as an OBJECT_DATAGRAM (which reads back as it was sent),
    or the caller learns why not: the peer takes no datagrams, it is larger than one, the queue
    is full (draft 16: a datagram too big for the session "will be dropped without any explicit
    notification"; the relay counts each)."""
    unsupported = session_module.MoqSession(RecordingQuic(), is_client=True)
    assert unsupported.send_datagram(1, 0, 0, b"x") == session_module.DATAGRAM_UNSUPPORTED
    quic = DatagramQuic(room=20, queue=2)
    session = session_module.MoqSession(quic, is_client=True)
    assert session.send_datagram(1, 4, 2, b"abc", {0x10: 40}, priority=9, end_of_group=True) == "sent"
    assert session.send_datagram(1, 4, 3, b"", status=wire.ObjectStatus.END_OF_GROUP) == "sent"
    assert session.send_datagram(1, 4, 4, b"x" * 20) == session_module.DATAGRAM_TOO_BIG
    assert session.send_datagram(1, 5, 0, b"y") == session_module.DATAGRAM_QUEUE_FULL
    assert [wire.decode_object_datagram(d) for d in quic.datagrams] == [
        wire.ObjectDatagram(1, 4, 2, 9, {0x10: 40}, b"abc", wire.ObjectStatus.NORMAL, True),
        wire.ObjectDatagram(1, 4, 3, None, {}, b"", wire.ObjectStatus.END_OF_GROUP, False)]


def pooled_subscription(tmp_path) -> tuple[MoqPair, ReceivePool]:
    """A pair whose client subscribed to NS/video (alias 1) and shares a listener's pool."""
    pair = MoqPair(tmp_path)
    pair.setup()
    pool = pair.client.pool = ReceivePool(1 << 30)
    rid = pair.client.subscribe(NS, "video")
    pair.pump()
    pair.server.subscribe_ok(rid, 1)
    return pair, pool


def test_an_object_left_incomplete_is_stopped_after_the_timeout_and_the_session_goes_on(tmp_path):
    """A publisher that sends part of an object and stalls: once the object has been incomplete
    longer than the timeout its stream is stopped (DELIVERY_TIMEOUT), its bytes let go (in the
    listener's pool too), the subscriber is told the subgroup ended short, bytes still on their
    way on that stream are dropped, and the next group is read as usual. A stream whose objects
    keep completing is never stopped, however long it stays open."""
    pair, pool = pooled_subscription(tmp_path)
    steady = pair.server.open_subgroup(1, 0, end_of_group=False)
    pair.server.send_object(steady, 0, b"complete")
    stalled = pair.server.open_subgroup(1, 1)
    pair.server.send_object(stalled, 0, b"complete too")
    whole = wire.encode_object(0, b"z" * 50_000, None, with_extensions=True) + b"z" * 50_000
    pair.server_quic.send_stream_data(stalled, whole[:20_000])
    client_events, _ = pair.pump()
    assert sum(isinstance(e, ev.ObjectReceived) for e in client_events) == 2
    assert pair.client.buffered_bytes == pool.held == 20_000  # the object header with it

    assert pair.client.expire_partial_objects(100.0, 5.0) == []  # first seen incomplete now
    assert pair.client.expire_partial_objects(105.0, 5.0) == []  # not longer than the timeout yet
    pair.server.send_object(steady, 1, b"the steady stream goes on")
    pair.pump()
    expired = pair.client.expire_partial_objects(105.5, 5.0)
    assert [type(e).__name__ for e in expired] == ["PartialObjectExpired", "SubgroupReset"]
    assert (expired[0].track_alias, expired[0].group, expired[0].held_bytes) == (1, 1, 20_000)
    assert expired[1] == ev.SubgroupReset(1, 1, 0, wire.StreamResetCode.DELIVERY_TIMEOUT)
    assert pair.client.buffered_bytes == pool.held == 0
    # the rest of that object, already on its way, is dropped; the publisher's QUIC sees STOP_SENDING
    pair.server_quic.send_stream_data(stalled, whole[20_000:], end_stream=True)
    client_events, _ = pair.pump()
    assert closed_with(client_events) is None and not pair.client.closed
    assert not any(isinstance(e, ev.ObjectReceived) for e in client_events)
    nxt = pair.server.open_subgroup(1, 2)
    pair.server.send_object(nxt, 0, b"next group")
    pair.server.end_subgroup(nxt)
    client_events, _ = pair.pump()
    assert [e.payload for e in client_events if isinstance(e, ev.ObjectReceived)] == [b"next group"]
    assert pair.client.expire_partial_objects(200.0, 5.0) == []  # the steady stream holds nothing partial


def test_a_closed_session_lets_go_of_its_share_of_the_pool(tmp_path):
    """Its partial objects and the objects it held for an unknown alias, at once."""
    pair, pool = pooled_subscription(tmp_path)
    sid = pair.server.open_subgroup(1, 0)
    pair.server_quic.send_stream_data(sid, (wire.encode_object(0, b"z" * 50_000, None, with_extensions=True)
                                            + b"z" * 30_000))
    held_unknown = pair.server.open_subgroup(7, 0)  # an alias never named: the object is held
    pair.server.send_object(held_unknown, 0, b"h" * 1000)
    pair.pump()
    assert pool.held == pair.client.buffered_bytes > 30_000
    pair.client.close()
    assert pool.held == pair.client.buffered_bytes == 0
