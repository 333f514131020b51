"""A MoQ Transport (draft 16) session, sans-I/O, on top of a QUIC connection object.

Modelled on aioquic's H3Connection: the session writes to ``quic`` (any object with aioquic's
QuicConnection methods: get_next_available_stream_id, send_stream_data, reset_stream, stop_stream,
close) and turns QUIC events into MoQ events with ``handle_event``. It owns no socket and no clock.
A peer that breaks the protocol gets the session closed with the draft's error code; nothing is
raised to the caller.
"""

import logging
from dataclasses import dataclass, field
from collections import Counter, deque

from ..codec.sentinel import NEED_DATA
from . import events as ev
from . import wire
from .wire import MoqProtocolError, SessionError

log = logging.getLogger("rtmpq.moq")

# Requests a peer may have open at once: the MAX_REQUEST_ID we grant never lets the requests still
# open plus the ids not used yet exceed this; more are granted only as requests close (an answer
# that ends them, UNSUBSCRIBE, PUBLISH_DONE, FETCH_CANCEL or its stream's end). Default 1000;
# [moq] session_max_requests.
MAX_REQUESTS = 1000
# Bytes buffered on the control stream before a message completes (the draft caps messages at 64 KiB).
MAX_CONTROL_BUFFER = 2 * 0x10000
# Data streams a peer may have open towards us at once before we refuse new ones (and request
# streams, counted apart); [moq] session_max_streams.
MAX_INCOMING_DATA_STREAMS = 256
# Bytes a session buffers from the peer's streams before they parse (partial objects on data
# streams, partial requests on request streams), all streams together; past it the session is
# closed. At least one MAX_OBJECT_SIZE object must fit. Default 32 MiB; [moq] session_max_stream_buffer.
MAX_STREAM_BUFFER = 32 * 1024 * 1024
# Objects held while their track alias is not known yet (a data stream can overtake the
# SUBSCRIBE_OK that names its alias); beyond this the oldest held ones are dropped.
MAX_HELD_EVENTS = 2048
# Ended subgroup streams remembered so a delivery timeout can still reset them (a subscriber
# holds at most 4 groups per track in flight, so this covers 64 tracks per session).
MAX_ENDED_SUBGROUPS = 256
# Bytes of authorization tokens a peer may register under aliases, counted as the draft does
# (16 + the value's length each); advertised as MAX_AUTH_TOKEN_CACHE_SIZE. A registration past
# it closes the session with AUTH_TOKEN_CACHE_OVERFLOW (one in CLIENT_SETUP is used as a value).
MAX_AUTH_TOKEN_CACHE = 8192
# Aliases a peer may have registered at once: the most MAX_AUTH_TOKEN_CACHE admits (16 bytes
# each at least), so a peer within the advertised size never meets this cap.
MAX_AUTH_TOKEN_ALIASES = MAX_AUTH_TOKEN_CACHE // 16
# Bytes of live namespace suffixes remembered per SUBSCRIBE_NAMESPACE we sent (to refuse a
# NAMESPACE_DONE for one never announced, as the draft asks); past it the session closes.
MAX_NAMESPACE_SUFFIX_BYTES = 256 * 1024
# What one remembered suffix costs beyond its bytes (for MAX_NAMESPACE_SUFFIX_BYTES).
_SUFFIX_OVERHEAD = 16
# The same, in bytes of object payload held (the oldest go first). Default 8 MiB; [moq] session_max_held_bytes.
MAX_HELD_BYTES = 8 * 1024 * 1024
# Seconds an object may stay incomplete on an incoming data stream (its first bytes came, the rest
# does not): past it the stream is stopped (STOP_SENDING, DELIVERY_TIMEOUT) and its bytes freed;
# the session goes on. Above the QUIC idle timeout (10 s): a path that dies for that long ends the
# connection first, so this meets only a peer that keeps its connection alive and holds an object
# back. The relay's [moq] partial_object_timeout.
PARTIAL_OBJECT_TIMEOUT = 15.0
# Streams remembered as stopped by us, so bytes still on their way on them are dropped (not read
# as a new stream), per incoming stream allowed; the oldest are forgotten first.
STOPPED_STREAMS_PER_INCOMING = 4


@dataclass(frozen=True)
class SessionCaps:
    """The per-session caps an operator may tune ([moq] session_max_*; defaults above). A
    node's listener and its links to other nodes take the same."""

    max_requests: int = MAX_REQUESTS
    max_incoming_streams: int = MAX_INCOMING_DATA_STREAMS
    max_stream_buffer: int = MAX_STREAM_BUFFER
    max_held_bytes: int = MAX_HELD_BYTES


# What ``MoqSession.send_datagram`` did with an object.
DATAGRAM_SENT = "sent"
DATAGRAM_UNSUPPORTED = "unsupported"  # the peer did not negotiate QUIC datagrams
DATAGRAM_TOO_BIG = "too_big"  # larger than one QUIC datagram on the path
DATAGRAM_QUEUE_FULL = "queue_full"  # the connection's bounded datagram queue is full


class ReceivePool:
    """The bytes every session of one listener holds from its peers and has not handed on: partial
    objects and requests on their streams, objects held for a track alias not named yet. Sessions
    add and take; whoever owns the pool (the MoQ listener, [moq] max_partial_bytes) calls ``over``
    while ``held`` is above ``limit``, to close the session that holds the most."""

    __slots__ = ("held", "limit", "over")

    def __init__(self, limit: int, over=None) -> None:
        self.held = 0
        self.limit = limit
        self.over = over


_last_encoded: list = [None, None, -1, b"", None]  # payload, extensions, delta, bytes, max_write


def _encoded_object(delta: int, payload, extensions, max_write: int | None = None) -> bytes | tuple[bytes, ...]:
    """Object header + payload as one write. A relay sends the same object to every subscriber
    in a row, so the last encoding is kept (by identity of payload and extensions) and reused.
    With ``max_write`` (a backend that takes writes of bounded size: aiopquic's stream ring) a
    larger object is a tuple of writes of at most that size, cut while joining."""
    c = _last_encoded
    if c[0] is payload and c[1] is extensions and c[2] == delta and c[4] == max_write:
        return c[3]
    header = wire.encode_object(delta, payload, extensions, with_extensions=True)
    if max_write and len(header) + len(payload) > max_write:
        view, first = memoryview(payload), max_write - len(header)
        data = (b"".join((header, view[:first])),) + tuple(
            bytes(view[i:i + max_write]) for i in range(first, len(view), max_write))
    else:
        # one copy of the payload (a join takes the view as it is; bytes() + concatenation made two)
        data = b"".join((header, payload))
    c[0], c[1], c[2], c[3], c[4] = payload, extensions, delta, data, max_write
    return data


def _held_size(event) -> int:
    payload = getattr(event, "payload", None)
    return 0 if payload is None else len(payload)


def _text(parts) -> tuple[str, ...]:
    return tuple(p.decode("utf-8", "replace") for p in parts)


def _raw(parts) -> tuple[bytes, ...]:
    return tuple(p.encode() if isinstance(p, str) else bytes(p) for p in parts)


def _forward(params: dict, default: bool | None = True) -> bool | None:
    """A request's FORWARD parameter (the codec let only 0 or 1 through), ``default`` when absent."""
    forward = params.get(wire.PARAM_FORWARD)
    return default if forward is None else bool(forward)


def _largest(params: dict) -> tuple[int, int] | None:
    """A message's LARGEST_OBJECT parameter, None when absent (no objects published yet)."""
    value = params.get(wire.PARAM_LARGEST_OBJECT)
    return None if value is None else wire.decode_location_param(bytes(value))


def _filter(params: dict) -> tuple[int | None, tuple[int, int] | None, int | None]:
    """A request's SUBSCRIPTION_FILTER parameter as (filter type, start, end group); all None when
    absent. An unknown type or a length that does not match the filter closes the session."""
    value = params.get(wire.PARAM_SUBSCRIPTION_FILTER)
    return (None, None, None) if value is None else wire.decode_filter(bytes(value))


def _with_filter(params: dict, filter_type: int | None, start: tuple[int, int] | None,
                 end_group: int | None) -> dict:
    """Request parameters with a SUBSCRIPTION_FILTER, when ``filter_type`` is not None."""
    if filter_type is not None:
        params[wire.PARAM_SUBSCRIPTION_FILTER] = wire.encode_filter(filter_type, start, end_group)
    return params


def _with_token(params: dict, authorization: str | None) -> dict:
    """Request parameters with the token as an AUTHORIZATION TOKEN (USE_VALUE, type 0)."""
    if authorization is not None:
        params[wire.PARAM_AUTHORIZATION_TOKEN] = wire.auth_token_param(authorization)
    return params


@dataclass(slots=True)
class _NamespaceSubscription:
    """A SUBSCRIBE_NAMESPACE we sent, on its own bidirectional stream."""

    request_id: int
    prefix: tuple[str, ...]
    buf: bytearray = field(default_factory=bytearray)
    answered: bool = False
    live: set = field(default_factory=set)  # suffixes announced with NAMESPACE and not yet done
    live_bytes: int = 0


class MoqSession:
    def __init__(self, quic, *, is_client: bool, path: str = "", token: str | None = None, authority: str = "",
                 caps: SessionCaps | None = None) -> None:
        self.caps = caps = caps or SessionCaps()
        self.quic = quic
        self._max_write = getattr(quic, "max_write", None)  # largest write the backend takes at once
        self.is_client = is_client
        self.path = path
        self.authority = authority  # client: the moqt:// URI's host:port, sent as AUTHORITY
        # client: sent in CLIENT_SETUP (checked now, not when the handshake is done)
        self._setup_token = wire.auth_token_param(token) if token is not None else None
        self.setup_authorization: str | None = None  # the token the peer sent in its setup message
        self._peer_tokens: dict[int, wire.AuthToken] = {}  # alias -> token the peer registered
        self._peer_token_bytes = 0
        self._namespace_subscriptions: dict[int, _NamespaceSubscription] = {}  # stream id -> ours
        self.control_stream_id: int | None = None
        self.setup_done = False
        self.closed = False
        self._control_buf = bytearray()
        self._data_streams: dict[int, wire.SubgroupStreamParser | wire.FetchStreamParser] = {}
        self._stream_buffer_bytes = 0  # unparsed bytes of all the peer's streams (MAX_STREAM_BUFFER)
        self.pool: ReceivePool | None = None  # shared by the sessions of a listener: what they all hold
        # data streams holding an incomplete object: stream id -> since when (None: since before the
        # next expire_partial_objects, which notes its ``now``); the session keeps no clock
        self._partial: dict[int, float | None] = {}
        self._stopped: dict[int, None] = {}  # data streams we stopped: what still comes on them is dropped
        self._next_request_id = 0 if is_client else 1
        self._peer_max_request_id = 0  # we may send requests with ids below this
        self._goaway_received = False
        # requests (and what follows one of them) held until the peer's MAX_REQUEST_ID covers
        # them: (request id, send); and the bound we last said REQUESTS_BLOCKED for
        self._blocked: deque = deque()
        self._blocked_at: int | None = None
        self._max_requests = caps.max_requests
        self._granted = caps.max_requests * 2  # request ids below this are allowed for the peer
        self._expected_peer_request = 1 if is_client else 0  # the lowest request id the peer has not used
        # ids above it already used: a SUBSCRIBE_NAMESPACE on its own stream can overtake (or be
        # overtaken by) requests on the control stream; at most max_requests of them
        self._early_peer_requests: set[int] = set()
        self._open_requests: dict[int, int] = {}  # the peer's open requests: request id -> message type
        self._outgoing: dict[int, list] = {}  # stream id -> [alias, group, last object id]
        # subgroup streams whose FIN is written but maybe not delivered: a delivery timeout may
        # still reset them (a group ends when the next begins, long before a slow link drains it)
        self._ended: dict[int, None] = {}
        self._fetch_streams: dict[int, wire.FetchObjectEncoder] = {}  # fetch streams we serve
        self._fetch_stream_requests: dict[int, int] = {}  # their stream id -> the FETCH's request id
        self._known_aliases: set[int] = set()  # aliases the peer named in SUBSCRIBE_OK or PUBLISH
        # the tracks of our SUBSCRIBEs not answered yet (request id -> full track name), and the
        # aliases the peer named for subscriptions still established: alias -> (request id, track)
        self._subscribing: dict[int, tuple] = {}
        self._alias_tracks: dict[int, tuple[int, tuple]] = {}
        self._held: deque = deque()  # data events waiting for their alias
        self._held_bytes = 0  # payload bytes in _held
        self._request_streams: dict[int, bytearray] = {}  # peer request streams, request not parsed yet
        self._namespace_streams: dict[int, int] = {}  # peer SUBSCRIBE_NAMESPACE streams: id -> request id
        self.datagrams_received = 0  # OBJECT_DATAGRAMs received
        self._datagram_room: int | None = None  # largest OBJECT_DATAGRAM the peer takes (once known)
        self.datagrams_not_sent: Counter = Counter()  # objects send_datagram could not send, by why

    # -- connection lifecycle -------------------------------------------------------------------
    def connect(self) -> None:
        """Client: open the control stream and send CLIENT_SETUP (call after the QUIC handshake)."""
        self.control_stream_id = self.quic.get_next_available_stream_id(is_unidirectional=False)
        params = {wire.SETUP_MAX_REQUEST_ID: self._granted, wire.SETUP_IMPLEMENTATION: b"rtmpq",
                  wire.SETUP_MAX_AUTH_TOKEN_CACHE_SIZE: MAX_AUTH_TOKEN_CACHE}
        if self.path:
            params[wire.SETUP_PATH] = self.path.encode()
        if self.authority:  # draft 16: a client of a moqt:// URI MUST send its authority
            params[wire.SETUP_AUTHORITY] = self.authority.encode()
        if self._setup_token is not None:
            params[wire.SETUP_AUTHORIZATION_TOKEN] = self._setup_token
        self._send_control(wire.ClientSetup(params))

    def close(self, code: int = SessionError.NO_ERROR, reason: str = "") -> None:
        if not self.closed:
            self.closed = True
            self.quic.close(error_code=int(code), reason_phrase=reason[:200])
        self.release_buffers()

    @property
    def buffered_bytes(self) -> int:
        """Bytes of the peer's this session holds and has not handed on (see ReceivePool)."""
        return self._stream_buffer_bytes + self._held_bytes

    def release_buffers(self) -> None:
        """A closed session lets go of what its peer's streams left buffered (and of its share of
        the pool) at once, not when the connection object goes."""
        if self.pool is not None:
            self.pool.held -= self.buffered_bytes
        self._stream_buffer_bytes = self._held_bytes = 0
        self._data_streams.clear()
        self._request_streams.clear()
        self._held.clear()
        self._partial.clear()

    def handle_event(self, event) -> list:
        if self.closed:
            return []
        # events are matched by name: aioquic and aiopquic define the same ones (both backends)
        kind = type(event).__name__
        try:
            if kind == "StreamDataReceived":
                return self._on_stream_data(event.stream_id, bytes(event.data), event.end_stream)
            if kind == "StreamReset":
                return self._on_stream_reset(event.stream_id, event.error_code)
            if kind == "DatagramFrameReceived":
                return self._on_datagram(event.data)
            if kind == "ConnectionTerminated":
                self.closed = True
                self.release_buffers()
                return [ev.SessionClosed(event.error_code, event.reason_phrase)]
            if kind == "HandshakeCompleted" and self.is_client and self.control_stream_id is None:
                self.connect()
        except MoqProtocolError as exc:
            log.warning("closing MoQ session: %s", exc)
            self.close(exc.code, str(exc))
            return [ev.SessionClosed(exc.code, str(exc), by_us=True)]
        return []

    # -- requests we send -----------------------------------------------------------------------
    def _new_request_id(self) -> int:
        rid = self._next_request_id
        self._next_request_id += 2
        return rid

    def _request(self, rid: int, send) -> int:
        """Send a new request now, or hold it until the peer's Maximum Request ID covers it
        (saying REQUESTS_BLOCKED once per bound). Held requests go out in order."""
        if not self._blocked and rid < self._peer_max_request_id:
            send()
            return rid
        self._blocked.append((rid, send))
        if self.setup_done and self._blocked_at != self._peer_max_request_id:
            self._blocked_at = self._peer_max_request_id
            log.debug("request %d waits for the peer's MAX_REQUEST_ID (now %d)", rid, self._peer_max_request_id)
            self._send_control(wire.RequestsBlocked(self._peer_max_request_id))
        return rid

    def _after_request(self, rid: int, send) -> None:
        """Send what refers to request ``rid`` (a cancel) after it: at once unless it is held."""
        if any(held == rid for held, _ in self._blocked):
            self._blocked.append((rid, send))
        else:
            send()

    def _release_requests(self) -> None:
        while self._blocked and self._blocked[0][0] < self._peer_max_request_id and not self.closed:
            self._blocked.popleft()[1]()

    # ``authorization`` (every request): a token sent as the request's AUTHORIZATION TOKEN
    def subscribe(self, namespace, track_name: str, *, filter_type: int | None = None,
                  start: tuple[int, int] | None = None, end_group: int | None = None,
                  delivery_timeout_ms: int | None = None, priority: int = 128, authorization: str | None = None,
                  forward: bool = True, group_order: int | None = None) -> int:
        """SUBSCRIBE; ``end_group`` goes with an AbsoluteRange filter. With ``forward=False``
        (FORWARD=0) no objects come until ``request_update(..., forward=True)``. ``group_order``
        (wire.GROUP_ORDER_ASCENDING or _DESCENDING) asks that order of groups; None: the publisher's."""
        params: dict = _with_token({wire.PARAM_SUBSCRIBER_PRIORITY: priority}, authorization)
        rid = self._new_request_id()
        _with_filter(params, filter_type, start, end_group)
        if not forward:
            params[wire.PARAM_FORWARD] = 0
        if delivery_timeout_ms:
            params[wire.PARAM_DELIVERY_TIMEOUT] = delivery_timeout_ms
        if group_order is not None:
            params[wire.PARAM_GROUP_ORDER] = group_order
        msg = wire.Subscribe(rid, _raw(namespace), track_name.encode(), params)
        self._subscribing[rid] = (msg.namespace, msg.track_name)
        return self._request(rid, lambda: self._send_control(msg))

    def publish(self, namespace, track_name: str, track_alias: int, *, authorization: str | None = None,
                forward: bool = True, extensions: dict | None = None, largest: tuple[int, int] | None = None) -> int:
        """Push a track (PUBLISH); objects may follow at once under ``track_alias``. With
        ``forward=False`` (FORWARD=0) none are sent until the peer's REQUEST_UPDATE sets FORWARD=1.
        ``largest``: the track's Largest Location (draft 16: a MUST once it has objects)."""
        params = _with_token({}, authorization)
        if largest is not None:
            params[wire.PARAM_LARGEST_OBJECT] = wire.encode_location(*largest)
        if not forward:
            params[wire.PARAM_FORWARD] = 0
        rid = self._new_request_id()
        msg = wire.Publish(rid, _raw(namespace), track_name.encode(), track_alias, params, dict(extensions or {}))
        return self._request(rid, lambda: self._send_control(msg))

    def fetch(self, namespace, track_name: str, start: tuple[int, int], end: tuple[int, int], *,
              descending: bool = False, priority: int = 128, authorization: str | None = None) -> int:
        """Standalone FETCH of objects from ``start`` up to ``end`` (exclusive; object 0: whole group)."""
        params = self._fetch_params(descending, priority, authorization)
        rid = self._new_request_id()
        msg = wire.Fetch(rid, wire.FETCH_STANDALONE, _raw(namespace), track_name.encode(), start, end, params=params)
        return self._request(rid, lambda: self._send_control(msg))

    def joining_fetch(self, subscribe_request_id: int, joining_start: int, *, relative: bool = True,
                      descending: bool = False, priority: int = 128, authorization: str | None = None) -> int:
        """Joining FETCH: the groups before a subscription (``joining_start`` groups back, or from that group)."""
        params = self._fetch_params(descending, priority, authorization)
        rid = self._new_request_id()
        kind = wire.FETCH_RELATIVE_JOINING if relative else wire.FETCH_ABSOLUTE_JOINING
        msg = wire.Fetch(rid, kind, joining_request_id=subscribe_request_id, joining_start=joining_start, params=params)
        return self._request(rid, lambda: self._send_control(msg))

    @staticmethod
    def _fetch_params(descending: bool, priority: int, authorization: str | None) -> dict:
        order = wire.GROUP_ORDER_DESCENDING if descending else wire.GROUP_ORDER_ASCENDING
        return _with_token({wire.PARAM_SUBSCRIBER_PRIORITY: priority, wire.PARAM_GROUP_ORDER: order}, authorization)

    def fetch_cancel(self, request_id: int) -> None:
        self._after_request(request_id, lambda: self._send_control(wire.FetchCancel(request_id)))

    def request_update(self, existing_request_id: int, *, forward: bool | None = None,
                       filter_type: int | None = None, start: tuple[int, int] | None = None,
                       end_group: int | None = None, delivery_timeout_ms: int | None = None) -> int:
        """REQUEST_UPDATE of a subscription (ours, or one a peer's PUBLISH made): its FORWARD state,
        a new filter (``filter_type``, ``start``, ``end_group`` as in ``subscribe``) and/or a new
        DELIVERY_TIMEOUT. What is left None is not sent, so the peer keeps its value (draft 16)."""
        params = _with_filter({}, filter_type, start, end_group)
        if forward is not None:
            params[wire.PARAM_FORWARD] = int(forward)
        if delivery_timeout_ms:
            params[wire.PARAM_DELIVERY_TIMEOUT] = delivery_timeout_ms
        rid = self._new_request_id()
        msg = wire.RequestUpdate(rid, existing_request_id, params)
        return self._request(rid, lambda: self._send_control(msg))

    def unsubscribe(self, request_id: int) -> None:
        self._after_request(request_id, lambda: self._send_control(wire.Unsubscribe(request_id)))
        self._subscription_over(request_id)
        self._request_closed(request_id)  # a track the peer PUBLISHed to us

    def publish_namespace(self, namespace, *, authorization: str | None = None) -> int:
        params = _with_token({}, authorization)
        rid = self._new_request_id()
        msg = wire.PublishNamespace(rid, _raw(namespace), params)
        return self._request(rid, lambda: self._send_control(msg))

    def publish_namespace_done(self, request_id: int) -> None:
        self._after_request(request_id, lambda: self._send_control(wire.PublishNamespaceDone(request_id)))

    def publish_namespace_cancel(self, request_id: int, code: int, reason: str = "") -> None:
        """Tell the peer we send no more SUBSCRIBEs for the namespace its PUBLISH_NAMESPACE
        ``request_id`` gave us (draft 16 PUBLISH_NAMESPACE_CANCEL; ``code``: a REQUEST_ERROR code)."""
        self._send_control(wire.PublishNamespaceCancel(request_id, int(code), reason))
        self._request_closed(request_id)

    def track_status(self, namespace, track_name: str, *, authorization: str | None = None) -> int:
        params = _with_token({}, authorization)
        rid = self._new_request_id()
        msg = wire.TrackStatus(rid, _raw(namespace), track_name.encode(), params)
        return self._request(rid, lambda: self._send_control(msg))

    def subscribe_namespace(self, prefix, *, authorization: str | None = None,
                            options: int = wire.NAMESPACE_OPTION_NAMESPACE, forward: bool = True) -> int:
        """SUBSCRIBE_NAMESPACE on a stream of its own: the answer comes as RequestAccepted or
        RequestFailed, then NamespaceReceived / NamespaceDoneReceived for namespaces under
        ``prefix`` (and, with the PUBLISH option, TrackPublished on the control stream; with
        ``forward=False`` those PUBLISHes carry FORWARD=0)."""
        params = _with_token({}, authorization)
        if not forward:
            params[wire.PARAM_FORWARD] = 0
        rid = self._new_request_id()

        def send() -> None:
            sid = self.quic.get_next_available_stream_id(is_unidirectional=False)
            self.quic.send_stream_data(sid, wire.encode_control_message(wire.SubscribeNamespace(rid, _raw(prefix),
                                                                                                options, params)))
            self._namespace_subscriptions[sid] = _NamespaceSubscription(rid, _text(_raw(prefix)))
        return self._request(rid, send)

    def unsubscribe_namespace(self, request_id: int) -> None:
        """Cancel a SUBSCRIBE_NAMESPACE (FIN on its stream); what the peer still sends is dropped."""
        if any(held == request_id for held, _ in self._blocked):
            self._after_request(request_id, lambda: self.unsubscribe_namespace(request_id))
            return
        for sid, sub in list(self._namespace_subscriptions.items()):
            if sub.request_id == request_id:
                del self._namespace_subscriptions[sid]
                self.quic.send_stream_data(sid, b"", end_stream=True)

    def goaway(self, uri: str = "") -> None:
        self._send_control(wire.Goaway(uri))

    # -- answers --------------------------------------------------------------------------------
    def subscribe_ok(self, request_id: int, track_alias: int, largest: tuple[int, int] | None = None, *,
                     extensions: dict | None = None) -> None:
        """``extensions``: the track's Track Extensions (a relay's: its publisher's, unchanged)."""
        params = {wire.PARAM_LARGEST_OBJECT: wire.encode_location(*largest)} if largest else {}
        self._send_control(wire.SubscribeOk(request_id, track_alias, params, dict(extensions or {})))

    def publish_ok(self, request_id: int, *, forward: bool | None = None,
                   delivery_timeout_ms: int | None = None) -> None:
        """Take a track the peer PUBLISHed; ``forward=False``: FORWARD=0, no objects until our
        REQUEST_UPDATE sets it (None: the parameter is left out, the default 1);
        ``delivery_timeout_ms``: our DELIVERY_TIMEOUT for the subscription."""
        params = {} if forward is None else {wire.PARAM_FORWARD: int(forward)}
        if delivery_timeout_ms:
            params[wire.PARAM_DELIVERY_TIMEOUT] = delivery_timeout_ms
        self._send_control(wire.PublishOk(request_id, params))

    def fetch_ok(self, request_id: int, end: tuple[int, int], *, end_of_track: bool = False,
                 extensions: dict | None = None) -> None:
        self._send_control(wire.FetchOk(request_id, end_of_track, end, {}, dict(extensions or {})))

    def request_ok(self, request_id: int, largest: tuple[int, int] | None = None) -> None:
        params = {wire.PARAM_LARGEST_OBJECT: wire.encode_location(*largest)} if largest else {}
        self._send_control(wire.RequestOk(request_id, params))
        if self._open_requests.get(request_id) == wire.MessageType.TRACK_STATUS:
            self._request_closed(request_id)  # answered; a PUBLISH_NAMESPACE stays open until its DONE

    def request_error(self, request_id: int, code: int, reason: str = "", *, retry_after: float | None = None) -> None:
        """Refuse a request; ``retry_after``: the seconds after which it may be sent again (None:
        it should not be)."""
        self._send_control(wire.RequestErrorMessage(request_id, int(code), wire.retry_interval(retry_after), reason))
        self._request_closed(request_id)
        self._subscription_over(request_id)  # a PUBLISH refused: its alias names nothing

    # answers on a SUBSCRIBE_NAMESPACE stream
    def namespace_subscription_ok(self, stream_id: int, request_id: int) -> None:
        self.quic.send_stream_data(stream_id, wire.encode_control_message(wire.RequestOk(request_id)))

    def namespace_subscription_error(self, stream_id: int, request_id: int, code: int, reason: str = "") -> None:
        msg = wire.RequestErrorMessage(request_id, int(code), 0, reason)
        self.quic.send_stream_data(stream_id, wire.encode_control_message(msg), end_stream=True)
        self._namespace_streams.pop(stream_id, None)
        self._request_closed(request_id)

    def send_namespace(self, stream_id: int, suffix) -> None:
        self.quic.send_stream_data(stream_id, wire.encode_control_message(wire.Namespace(_raw(suffix))))

    def send_namespace_done(self, stream_id: int, suffix) -> None:
        self.quic.send_stream_data(stream_id, wire.encode_control_message(wire.NamespaceDoneMessage(_raw(suffix))))

    def publish_done(self, request_id: int, status: int, stream_count: int, reason: str = "") -> None:
        self._send_control(wire.PublishDone(request_id, int(status), stream_count, reason))
        self._request_closed(request_id)

    # -- objects --------------------------------------------------------------------------------
    def open_subgroup(self, track_alias: int, group: int, *, subgroup: int = 0, priority: int | None = 128,
                      end_of_group: bool = True) -> int:
        """A stream for one subgroup of ``group``; ``end_of_group``: it holds the group's last object."""
        sid = self.quic.get_next_available_stream_id(is_unidirectional=True)
        header = wire.SubgroupHeader(track_alias, group, subgroup, priority, extensions=True, end_of_group=end_of_group)
        self.quic.send_stream_data(sid, header.encode())
        self._outgoing[sid] = [track_alias, group, None]
        return sid

    def send_object(self, stream_id: int, object_id: int, payload, extensions: dict | None = None, *,
                    status: int = 0) -> None:
        """An object on a subgroup stream; ``status`` (End of Group, End of Track: draft 16 "Object
        Status") makes it a status object, empty and without extension headers."""
        state = self._outgoing[stream_id]
        last = state[2]
        delta = object_id if last is None else object_id - last - 1
        if delta < 0:
            raise ValueError("object ids must increase within a subgroup")
        state[2] = object_id
        if status:
            self.quic.send_stream_data(stream_id, wire.encode_object(delta, b"", None, with_extensions=True,
                                                                     status=status))
            return
        data = _encoded_object(delta, payload, extensions, self._max_write)
        if type(data) is tuple:
            for piece in data:
                self.quic.send_stream_data(stream_id, piece)
        else:
            self.quic.send_stream_data(stream_id, data)

    def end_subgroup(self, stream_id: int) -> None:
        if self._outgoing.pop(stream_id, None) is not None:
            self.quic.send_stream_data(stream_id, b"", end_stream=True)
            self._ended[stream_id] = None
            if len(self._ended) > MAX_ENDED_SUBGROUPS:
                del self._ended[next(iter(self._ended))]  # the oldest: long delivered or reset

    def reset_subgroup(self, stream_id: int, code: int) -> None:
        """Reset a subgroup stream, open or ended (FIN written, not all of it delivered yet)."""
        if self._outgoing.pop(stream_id, None) is not None:
            self.quic.reset_stream(stream_id, int(code))
        elif self._ended.pop(stream_id, 0) is None:
            try:
                self.quic.reset_stream(stream_id, int(code))
            except ValueError:
                pass  # aioquic: every byte and the FIN were acknowledged, the stream is gone

    # -- datagrams ------------------------------------------------------------------------------
    def datagram_room(self) -> int:
        """The largest OBJECT_DATAGRAM (bytes) the connection can send the peer in one QUIC
        datagram: 0 when the peer did not negotiate datagrams (max_datagram_frame_size)."""
        if self._datagram_room is None:
            room = getattr(self.quic, "datagram_room", None)
            if room is None:
                return 0  # a QUIC object without datagrams
            value = room()
            if not self.setup_done:
                return value  # (before setup the peer's transport parameters may not be read yet)
            self._datagram_room = value  # the transport parameters do not change after the handshake
        return self._datagram_room

    def send_datagram(self, track_alias: int, group: int, object_id: int, payload, extensions: dict | None = None,
                      *, priority: int | None = None, status: int = 0, end_of_group: bool = False) -> str:
        """An object as an OBJECT_DATAGRAM. What became of it: DATAGRAM_SENT (handed to QUIC, which
        may still lose it), DATAGRAM_UNSUPPORTED (the peer takes no datagrams), DATAGRAM_TOO_BIG
        (larger than one QUIC datagram on this path: "dropped without any explicit notification",
        draft 16) or DATAGRAM_QUEUE_FULL (the connection's datagram queue is full)."""
        room = self.datagram_room()
        if not room:
            return DATAGRAM_UNSUPPORTED
        data = wire.encode_object_datagram(track_alias, group, object_id, payload, extensions, priority=priority,
                                           status=status, end_of_group=end_of_group)
        if len(data) > room:
            return DATAGRAM_TOO_BIG
        return DATAGRAM_SENT if self.quic.send_datagram_frame(data) else DATAGRAM_QUEUE_FULL

    # -- fetch responses ------------------------------------------------------------------------
    def open_fetch_stream(self, request_id: int) -> int:
        sid = self.quic.get_next_available_stream_id(is_unidirectional=True)
        self.quic.send_stream_data(sid, wire.encode_fetch_header(request_id))
        self._fetch_streams[sid] = wire.FetchObjectEncoder()
        self._fetch_stream_requests[sid] = request_id
        return sid

    def send_fetch_object(self, stream_id: int, group: int, object_id: int, payload, extensions: dict | None = None,
                          *, subgroup: int = 0, priority: int = 128, datagram: bool = False) -> None:
        """An object on a fetch stream; ``datagram``: one of Forwarding Preference Datagram (a FETCH
        carries every object on its stream, flagged so)."""
        header = self._fetch_streams[stream_id].object_header(group, subgroup, object_id, priority, len(payload),
                                                              extensions, datagram=datagram)
        self.quic.send_stream_data(stream_id, header + bytes(payload))

    def send_fetch_range_end(self, stream_id: int, group: int, object_id: int, *, unknown: bool) -> None:
        self.quic.send_stream_data(stream_id, self._fetch_streams[stream_id].end_of_range(group, object_id,
                                                                                         unknown=unknown))

    def end_fetch_stream(self, stream_id: int) -> None:
        if self._fetch_streams.pop(stream_id, None) is not None:
            self.quic.send_stream_data(stream_id, b"", end_stream=True)
        self._fetch_done(stream_id)

    def reset_fetch_stream(self, stream_id: int, code: int) -> None:
        """Abandon a fetch stream (also one already ended with FIN whose bytes are still queued)."""
        self._fetch_streams.pop(stream_id, None)
        self.quic.reset_stream(stream_id, int(code))
        self._fetch_done(stream_id)

    def _fetch_done(self, stream_id: int) -> None:
        request_id = self._fetch_stream_requests.pop(stream_id, None)
        if request_id is not None:
            self._request_closed(request_id)

    # -- input ----------------------------------------------------------------------------------
    def _on_datagram(self, data: bytes) -> list:
        """An OBJECT_DATAGRAM (a malformed one closes the session, as draft 16 asks): its object,
        held like a stream's while its track alias is not known yet."""
        d = wire.decode_object_datagram(data)
        self.datagrams_received += 1
        return self._hold_unknown([ev.DatagramObjectReceived(d.track_alias, d.group_id, d.object_id, d.payload,
                                                             d.extensions, d.status, d.priority, d.end_of_group)])

    def _send_control(self, msg) -> None:
        if self.control_stream_id is None:
            raise RuntimeError("no control stream yet")
        self.quic.send_stream_data(self.control_stream_id, wire.encode_control_message(msg))

    def _on_stream_data(self, stream_id: int, data: bytes, end_stream: bool) -> list:
        uni = bool(stream_id & 0x2)
        if not uni:
            if self.control_stream_id is None and not self.is_client:
                self.control_stream_id = stream_id
            if stream_id != self.control_stream_id:
                sub = self._namespace_subscriptions.get(stream_id)
                if sub is not None:
                    return self._on_namespace_stream(stream_id, sub, data, end_stream)
                if (stream_id & 1) == (0 if self.is_client else 1):
                    return []  # a stream of ours we gave up (unsubscribe_namespace): drop what follows
                return self._on_request_stream(stream_id, data, end_stream)
            if end_stream:
                raise MoqProtocolError("the control stream was closed")
            return self._on_control(data)
        parser = self._data_streams.get(stream_id)
        if parser is None:
            if stream_id in self._stopped:  # bytes that were on their way when we stopped it
                if end_stream:
                    del self._stopped[stream_id]
                return []
            if not data:
                return []
            if len(self._data_streams) >= self.caps.max_incoming_streams:
                self._stop(stream_id, wire.StreamResetCode.CANCELLED)
                return []
            fetch = data[0] == wire.FETCH_HEADER  # both stream types are one-byte varints
            parser = wire.FetchStreamParser() if fetch else wire.SubgroupStreamParser()
            self._data_streams[stream_id] = parser
        if isinstance(parser, wire.FetchStreamParser):
            return self._on_fetch_stream(stream_id, parser, data, end_stream)
        out = []
        for item in self._feed(stream_id, parser, data):
            if isinstance(item, wire.SubgroupObject):
                h = parser.header
                out.append(ev.ObjectReceived(h.track_alias, h.group_id, h.subgroup_id, item.object_id,
                                             item.payload, item.extensions, item.status, h.priority,
                                             h.end_of_group))
        if end_stream:
            self._forget_data_stream(stream_id)
            if parser.header is not None:
                if parser.buffered:
                    raise MoqProtocolError("subgroup stream ended inside an object")
                h = parser.header
                out.append(ev.SubgroupEnded(h.track_alias, h.group_id, h.subgroup_id))
        return self._hold_unknown(out)

    def _on_fetch_stream(self, stream_id: int, parser: wire.FetchStreamParser, data: bytes, end_stream: bool) -> list:
        out = []
        for item in self._feed(stream_id, parser, data):
            if isinstance(item, wire.FetchObject):
                out.append(ev.FetchObjectReceived(parser.request_id, item.group_id, item.subgroup_id, item.object_id,
                                                  item.payload, item.extensions, item.priority, item.datagram))
            else:
                out.append(ev.FetchRangeUnavailable(parser.request_id, item.group_id, item.object_id, item.unknown))
        if end_stream:
            self._forget_data_stream(stream_id)
            if parser.request_id is None or parser.buffered:
                raise MoqProtocolError("fetch stream ended inside its header or an object")
            out.append(ev.FetchEnded(parser.request_id))
        return out

    def _feed(self, stream_id: int, parser, data: bytes) -> list:
        before = parser.buffered
        items = parser.feed(data)
        self._add_stream_buffer(parser.buffered - before)
        if not parser.buffered:
            self._partial.pop(stream_id, None)
        elif items or stream_id not in self._partial:  # a new incomplete object: its clock starts
            self._partial[stream_id] = None
        return items

    def _forget_data_stream(self, stream_id: int) -> None:
        parser = self._data_streams.pop(stream_id, None)
        self._partial.pop(stream_id, None)
        if parser is not None:
            self._add_stream_buffer(-parser.buffered)

    def _stop(self, stream_id: int, code: int) -> None:
        """STOP_SENDING on a peer's data stream; what is still on its way on it is dropped."""
        self.quic.stop_stream(stream_id, int(code))
        self._stopped[stream_id] = None
        if len(self._stopped) > STOPPED_STREAMS_PER_INCOMING * self.caps.max_incoming_streams:
            del self._stopped[next(iter(self._stopped))]  # the oldest: its peer long answered with a reset

    def expire_partial_objects(self, now: float, timeout: float) -> list:
        """Stop the data streams whose object has been incomplete for more than ``timeout``
        seconds (a stalled peer); ``now`` is the caller's clock. For each: a PartialObjectExpired
        event, then what the stream's end means (SubgroupReset, FetchEnded) with DELIVERY_TIMEOUT."""
        out: list = []
        if self.closed:
            return out
        for stream_id, since in list(self._partial.items()):
            if since is None:
                self._partial[stream_id] = now
                continue
            if now - since <= timeout:
                continue
            parser = self._data_streams.get(stream_id)
            held = parser.buffered if parser is not None else 0
            self._forget_data_stream(stream_id)
            self._stop(stream_id, wire.StreamResetCode.DELIVERY_TIMEOUT)
            if isinstance(parser, wire.FetchStreamParser):
                out.append(ev.PartialObjectExpired(stream_id, None, None, None, parser.request_id, held, now - since))
                if parser.request_id is not None:
                    out.append(ev.FetchEnded(parser.request_id, wire.StreamResetCode.DELIVERY_TIMEOUT))
            elif parser is not None:
                h = parser.header
                if h is None:
                    out.append(ev.PartialObjectExpired(stream_id, None, None, None, None, held, now - since))
                    continue
                out.append(ev.PartialObjectExpired(stream_id, h.track_alias, h.group_id, h.subgroup_id, None, held,
                                                   now - since))
                out += self._hold_unknown([ev.SubgroupReset(h.track_alias, h.group_id, h.subgroup_id,
                                                            wire.StreamResetCode.DELIVERY_TIMEOUT)])
        return out

    def _add_stream_buffer(self, n: int) -> None:
        self._stream_buffer_bytes += n
        if self.pool is not None:
            self.pool.held += n
        if n > 0 and self._stream_buffer_bytes > self.caps.max_stream_buffer:
            raise MoqProtocolError(f"MAX_STREAM_BUFFER ([moq] session_max_stream_buffer) exceeded: "
                                   f"{self._stream_buffer_bytes} > {self.caps.max_stream_buffer} "
                                   "bytes of unfinished objects and requests buffered from the peer's streams")

    def _on_stream_reset(self, stream_id: int, code: int) -> list:
        sub = self._namespace_subscriptions.pop(stream_id, None)
        if sub is not None:
            return [ev.NamespaceSubscriptionEnded(sub.request_id, code)]
        if not stream_id & 0x2:  # a request stream: the peer gave up its SUBSCRIBE_NAMESPACE
            self._add_stream_buffer(-len(self._request_streams.pop(stream_id, b"")))
            request_id = self._namespace_streams.pop(stream_id, None)
            if request_id is None:
                return []
            self._request_closed(request_id)
            return [ev.NamespaceUnsubscribed(stream_id)]
        parser = self._data_streams.get(stream_id)
        self._forget_data_stream(stream_id)
        self._stopped.pop(stream_id, None)  # the peer's answer to our STOP_SENDING
        if isinstance(parser, wire.FetchStreamParser):
            return [] if parser.request_id is None else [ev.FetchEnded(parser.request_id, code)]
        if parser is None or parser.header is None:
            return []
        h = parser.header
        return self._hold_unknown([ev.SubgroupReset(h.track_alias, h.group_id, h.subgroup_id, code)])

    def _hold_unknown(self, events: list) -> list:
        """Pass on data events of known aliases; hold the others until their alias is named."""
        out = []
        held = self._held
        for e in events:
            if e.track_alias in self._known_aliases:
                out.append(e)
            else:
                held.append(e)
                self._add_held(_held_size(e))
        while held and (len(held) > MAX_HELD_EVENTS or self._held_bytes > self.caps.max_held_bytes):
            self._add_held(-_held_size(held.popleft()))
        return out

    def _add_held(self, n: int) -> None:
        self._held_bytes += n
        if self.pool is not None:
            self.pool.held += n

    def _release(self, alias: int) -> list:
        self._known_aliases.add(alias)
        released = [e for e in self._held if e.track_alias == alias]
        if released:
            self._held = deque(e for e in self._held if e.track_alias != alias)
            self._add_held(-sum(map(_held_size, released)))
        return released

    def _on_namespace_stream(self, stream_id: int, sub: _NamespaceSubscription, data: bytes,
                             end_stream: bool) -> list:
        """The answer stream of a SUBSCRIBE_NAMESPACE we sent: REQUEST_OK or REQUEST_ERROR, then
        NAMESPACE and NAMESPACE_DONE messages."""
        sub.buf += data
        out = []
        pos = 0
        while True:
            r = wire.decode_control_message(sub.buf, pos)
            if r is NEED_DATA:
                break
            msg, pos = r
            if isinstance(msg, (wire.RequestOk, wire.RequestErrorMessage)):
                if sub.answered:
                    raise MoqProtocolError("a second answer to SUBSCRIBE_NAMESPACE")
                sub.answered = True
                if isinstance(msg, wire.RequestOk):
                    out.append(ev.RequestAccepted(sub.request_id, msg.params))
                else:
                    out.append(ev.RequestFailed(sub.request_id, msg.error_code, msg.reason, msg.retry_after))
            elif not sub.answered:
                raise MoqProtocolError(f"{type(msg).__name__} before the answer to SUBSCRIBE_NAMESPACE")
            elif isinstance(msg, wire.Namespace):
                if msg.suffix not in sub.live:
                    sub.live_bytes += sum(map(len, msg.suffix)) + _SUFFIX_OVERHEAD
                    if sub.live_bytes > MAX_NAMESPACE_SUFFIX_BYTES:
                        raise wire.MoqLimitExceeded("live namespaces announced", "MAX_NAMESPACE_SUFFIX_BYTES",
                                                    sub.live_bytes, MAX_NAMESPACE_SUFFIX_BYTES)
                    sub.live.add(msg.suffix)
                suffix = _text(msg.suffix)
                out.append(ev.NamespaceReceived(sub.request_id, suffix, sub.prefix + suffix))
            elif isinstance(msg, wire.NamespaceDoneMessage):
                if msg.suffix not in sub.live:
                    raise MoqProtocolError("NAMESPACE_DONE for a namespace never announced")
                sub.live.discard(msg.suffix)
                sub.live_bytes -= sum(map(len, msg.suffix)) + _SUFFIX_OVERHEAD
                suffix = _text(msg.suffix)
                out.append(ev.NamespaceDoneReceived(sub.request_id, suffix, sub.prefix + suffix))
            else:
                raise MoqProtocolError(f"{type(msg).__name__} on a SUBSCRIBE_NAMESPACE stream")
        del sub.buf[:pos]
        if len(sub.buf) > MAX_CONTROL_BUFFER:
            raise MoqProtocolError("control message larger than the draft allows")
        if end_stream:
            del self._namespace_subscriptions[stream_id]
            if sub.buf:
                raise MoqProtocolError("SUBSCRIBE_NAMESPACE stream ended inside a message")
            out.append(ev.NamespaceSubscriptionEnded(sub.request_id))
        return out

    def _on_request_stream(self, stream_id: int, data: bytes, end_stream: bool) -> list:
        """A bidirectional stream other than the control stream: it carries one SUBSCRIBE_NAMESPACE."""
        if not self.setup_done:
            raise MoqProtocolError("request stream before setup")
        out = []
        if stream_id not in self._namespace_streams:
            buf = self._request_streams.get(stream_id)
            if buf is None:
                if len(self._request_streams) + len(self._namespace_streams) >= self.caps.max_incoming_streams:
                    raise MoqProtocolError("too many request streams", SessionError.TOO_MANY_REQUESTS)
                buf = self._request_streams[stream_id] = bytearray()
            buf += data
            self._add_stream_buffer(len(data))
            r = wire.decode_control_message(buf, 0)
            if r is NEED_DATA:
                if len(buf) > MAX_CONTROL_BUFFER or end_stream:
                    raise MoqProtocolError("incomplete message on a request stream")
                return out
            msg, _ = r
            del self._request_streams[stream_id]
            self._add_stream_buffer(-len(buf))
            if not isinstance(msg, wire.SubscribeNamespace):
                raise MoqProtocolError(f"{type(msg).__name__} on a request stream")
            self._check_request_id(msg.request_id, wire.MessageType.SUBSCRIBE_NAMESPACE)
            authorization = self._authorization(msg.params)
            self._namespace_streams[stream_id] = msg.request_id
            out.append(ev.NamespaceSubscribeRequested(msg.request_id, _text(msg.namespace_prefix), stream_id, msg.options,
                                                      authorization, _forward(msg.params)))
        if end_stream:
            request_id = self._namespace_streams.pop(stream_id, None)
            if request_id is not None:
                self._request_closed(request_id)
            out.append(ev.NamespaceUnsubscribed(stream_id))
        return out

    def _on_control(self, data: bytes) -> list:
        self._control_buf += data
        if len(self._control_buf) > MAX_CONTROL_BUFFER:
            raise MoqProtocolError("control message larger than the draft allows")
        out = []
        pos = 0
        while True:
            r = wire.decode_control_message(self._control_buf, pos)
            if r is NEED_DATA:
                break
            msg, pos = r
            out += self._on_message(msg)
        del self._control_buf[:pos]
        return out

    def _check_request_id(self, rid: int, kind: int | None) -> None:
        """A new request from the peer; ``kind`` (its message type) is None for one answered at once.
        Ids may arrive out of order across streams, within the window we granted."""
        expected = self._expected_peer_request
        if rid < expected or (rid - expected) & 1 or rid in self._early_peer_requests:
            raise MoqProtocolError(f"request id {rid} (expected {expected})", SessionError.INVALID_REQUEST_ID)
        if rid >= self._granted:
            raise MoqProtocolError(f"request id {rid} beyond the MAX_REQUEST_ID granted ({self._granted}): "
                                   f"more than {self._max_requests} requests open", SessionError.TOO_MANY_REQUESTS)
        if rid == expected:
            expected += 2
            while expected in self._early_peer_requests:
                self._early_peer_requests.discard(expected)
                expected += 2
            self._expected_peer_request = expected
        elif len(self._early_peer_requests) >= self._max_requests:  # a gap that never fills: not reordering
            raise MoqProtocolError(f"request id {expected} never came", SessionError.INVALID_REQUEST_ID)
        else:
            self._early_peer_requests.add(rid)
        if kind is not None:
            self._open_requests[rid] = kind
        self._grant_more()

    def _ever_requested(self, rid: int) -> bool:
        """Whether ``rid`` is the id of a request either side has made in this session (a
        subscriber may update a subscription the publisher made with PUBLISH: one of our ids)."""
        if (rid - self._expected_peer_request) & 1:  # of our parity
            return rid < self._next_request_id
        return rid < self._expected_peer_request or rid in self._early_peer_requests

    def _claim_alias(self, alias: int, rid: int, track) -> None:
        """The peer names ``alias`` for ``track`` (SUBSCRIBE_OK, PUBLISH): one naming another track
        whose subscription is still established closes the session (draft 16 DUPLICATE_TRACK_ALIAS)."""
        held = self._alias_tracks.get(alias)
        if held is not None and held[0] != rid and None not in (held[1], track) and held[1] != track:
            raise MoqProtocolError(f"track alias {alias} already names another track (request {held[0]})",
                                   SessionError.DUPLICATE_TRACK_ALIAS)
        self._alias_tracks[alias] = (rid, track)

    def _subscription_over(self, rid: int) -> None:
        """A subscription ended (PUBLISH_DONE, our UNSUBSCRIBE or refusal): its alias is free again."""
        self._subscribing.pop(rid, None)
        for alias in [a for a, (r, _) in self._alias_tracks.items() if r == rid]:
            del self._alias_tracks[alias]

    def _request_closed(self, rid: int) -> None:
        if self._open_requests.pop(rid, None) is not None:
            self._grant_more()

    def _grant_more(self) -> None:
        """Raise MAX_REQUEST_ID so that open requests + ids still unused stay within max_requests;
        sent once half the window is used up (as QUIC does with MAX_STREAMS), not per request."""
        if self.closed or self.control_stream_id is None:
            return
        unused = (self._granted - self._expected_peer_request + 1) // 2  # ids of the peer's parity
        room = self._max_requests - len(self._open_requests) - unused
        if room > 0 and unused <= self._max_requests // 2:
            self._granted += 2 * room
            self._send_control(wire.MaxRequestId(self._granted))

    def _authorization(self, params: dict, *, setup: bool = False) -> str | None:
        """The token a message carries: the first AUTHORIZATION TOKEN of type 0 (out of band, as
        JWTs are sent), after the alias operations of every one of them; None if it has none."""
        found = None
        seen = set()
        for token in wire.auth_tokens(params, wire.SETUP_AUTHORIZATION_TOKEN if setup else wire.PARAM_AUTHORIZATION_TOKEN):
            kind = token.alias_type
            if kind == wire.AuthAliasType.USE_VALUE:
                resolved = (token.token_type, token.value)
            elif kind == wire.AuthAliasType.REGISTER:
                if token.alias in self._peer_tokens:
                    raise MoqProtocolError(f"authorization token alias {token.alias} registered twice",
                                           SessionError.DUPLICATE_AUTH_TOKEN_ALIAS)
                size = 16 + len(token.value)
                if (self._peer_token_bytes + size <= MAX_AUTH_TOKEN_CACHE
                        and len(self._peer_tokens) < MAX_AUTH_TOKEN_ALIASES):
                    self._peer_tokens[token.alias] = token
                    self._peer_token_bytes += size
                elif not setup:  # in setup the draft has it used as a value instead
                    raise wire.MoqLimitExceeded("registered authorization tokens", "MAX_AUTH_TOKEN_CACHE",
                                                self._peer_token_bytes + size, MAX_AUTH_TOKEN_CACHE,
                                                SessionError.AUTH_TOKEN_CACHE_OVERFLOW)
                resolved = (token.token_type, token.value)
            else:  # DELETE, USE_ALIAS: an alias registered before
                if setup:
                    raise MoqProtocolError("authorization token alias used in setup")
                known = self._peer_tokens.get(token.alias)
                if known is None:
                    raise MoqProtocolError(f"authorization token alias {token.alias} is not registered",
                                           SessionError.UNKNOWN_AUTH_TOKEN_ALIAS)
                if kind == wire.AuthAliasType.DELETE:
                    del self._peer_tokens[token.alias]
                    self._peer_token_bytes -= 16 + len(known.value)
                    continue
                resolved = (known.token_type, known.value)
            if resolved in seen:
                raise MoqProtocolError("the same authorization token twice in one message")
            seen.add(resolved)
            if found is None and resolved[0] == wire.TOKEN_TYPE_OUT_OF_BAND:
                found = resolved[1].decode("utf-8", "replace")
        return found

    def _on_message(self, msg) -> list:
        if not self.setup_done:
            if self.is_client and isinstance(msg, wire.ServerSetup):
                # draft 16: PATH and AUTHORITY are the client's; from a server they close the session
                if wire.SETUP_PATH in msg.params:
                    raise MoqProtocolError("PATH from the server", SessionError.INVALID_PATH)
                if wire.SETUP_AUTHORITY in msg.params:
                    raise MoqProtocolError("AUTHORITY from the server", SessionError.INVALID_AUTHORITY)
                self.setup_authorization = self._authorization(msg.params, setup=True)
                self.setup_done = True
                self._peer_max_request_id = int(msg.params.get(wire.SETUP_MAX_REQUEST_ID, 0))
                self._release_requests()
                return [ev.SetupComplete()]
            if not self.is_client and isinstance(msg, wire.ClientSetup):
                wire.check_setup_uri_parts(msg.params)
                self.setup_authorization = self._authorization(msg.params, setup=True)
                self.setup_done = True
                self._peer_max_request_id = int(msg.params.get(wire.SETUP_MAX_REQUEST_ID, 0))
                path = msg.params.get(wire.SETUP_PATH, b"")
                self._send_control(wire.ServerSetup({wire.SETUP_MAX_REQUEST_ID: self._granted,
                                                     wire.SETUP_IMPLEMENTATION: b"rtmpq",
                                                     wire.SETUP_MAX_AUTH_TOKEN_CACHE_SIZE: MAX_AUTH_TOKEN_CACHE}))
                self._release_requests()
                return [ev.SetupComplete(bytes(path).decode("utf-8", "replace") if isinstance(path, bytes) else "")]
            raise MoqProtocolError(f"{type(msg).__name__} before setup")
        if isinstance(msg, (wire.ClientSetup, wire.ServerSetup)):
            raise MoqProtocolError("setup sent twice")
        if isinstance(msg, wire.Subscribe):
            self._check_request_id(msg.request_id, wire.MessageType.SUBSCRIBE)
            ftype, start, end_group = _filter(msg.params)
            timeout = msg.params.get(wire.PARAM_DELIVERY_TIMEOUT)  # never 0 (the codec refused it)
            forward = _forward(msg.params)
            return [ev.SubscribeRequested(msg.request_id, _text(msg.namespace), msg.track_name.decode("utf-8", "replace"),
                                          ftype, start, timeout, int(msg.params.get(wire.PARAM_SUBSCRIBER_PRIORITY, 128)),
                                          self._authorization(msg.params), end_group=end_group, forward=forward,
                                          group_order=msg.params.get(wire.PARAM_GROUP_ORDER))]
        if isinstance(msg, wire.SubscribeOk):
            largest = _largest(msg.params)
            self._claim_alias(msg.track_alias, msg.request_id, self._subscribing.pop(msg.request_id, None))
            return [ev.SubscribeAccepted(msg.request_id, msg.track_alias, largest, msg.extensions),
                    *self._release(msg.track_alias)]
        if isinstance(msg, wire.RequestErrorMessage):
            self._subscribing.pop(msg.request_id, None)
            return [ev.RequestFailed(msg.request_id, msg.error_code, msg.reason, msg.retry_after)]
        if isinstance(msg, wire.RequestOk):
            return [ev.RequestAccepted(msg.request_id, msg.params)]
        if isinstance(msg, wire.PublishNamespace):
            self._check_request_id(msg.request_id, wire.MessageType.PUBLISH_NAMESPACE)
            return [ev.NamespacePublished(msg.request_id, _text(msg.namespace), self._authorization(msg.params))]
        if isinstance(msg, wire.PublishNamespaceDone):
            self._request_closed(msg.request_id)
            return [ev.NamespaceDone(msg.request_id)]
        if isinstance(msg, wire.PublishNamespaceCancel):
            return [ev.NamespaceCancelled(msg.request_id, msg.error_code, msg.reason)]
        if isinstance(msg, wire.SubscribeNamespace):
            raise MoqProtocolError("SUBSCRIBE_NAMESPACE belongs on a stream of its own")
        if isinstance(msg, wire.TrackStatus):
            self._check_request_id(msg.request_id, wire.MessageType.TRACK_STATUS)
            return [ev.TrackStatusRequested(msg.request_id, _text(msg.namespace), msg.track_name.decode("utf-8", "replace"),
                                            self._authorization(msg.params))]
        if isinstance(msg, wire.Publish):
            self._check_request_id(msg.request_id, wire.MessageType.PUBLISH)
            self._claim_alias(msg.track_alias, msg.request_id, (msg.namespace, msg.track_name))
            return [ev.TrackPublished(msg.request_id, _text(msg.namespace), msg.track_name.decode("utf-8", "replace"),
                                      msg.track_alias, self._authorization(msg.params), _forward(msg.params),
                                      msg.extensions, _largest(msg.params)),
                    *self._release(msg.track_alias)]
        if isinstance(msg, wire.RequestUpdate):
            if not self._ever_requested(msg.existing_request_id):
                # draft 16: an invalid Existing Request ID closes the session (one that existed but
                # has ended is a race the peer cannot avoid: that gets REQUEST_ERROR)
                raise MoqProtocolError(f"REQUEST_UPDATE of request {msg.existing_request_id}, never made")
            self._check_request_id(msg.request_id, None)  # answered at once
            ftype, start, end_group = _filter(msg.params)
            kind = self._open_requests.get(msg.existing_request_id)
            if ftype is not None and kind is not None and kind != wire.MessageType.SUBSCRIBE:
                # draft 16: parameters invalid for the type of request updated close the session;
                # a filter belongs to a subscription its sender subscribed with (SUBSCRIBE; a PUBLISH
                # of ours is one of our ids, not in this table)
                raise MoqProtocolError(f"SUBSCRIPTION_FILTER in a REQUEST_UPDATE of a {wire.MessageType(kind).name}")
            return [ev.RequestUpdated(msg.request_id, msg.existing_request_id, _forward(msg.params, None),
                                      ftype, start, end_group, msg.params.get(wire.PARAM_DELIVERY_TIMEOUT))]
        if isinstance(msg, wire.PublishOk):
            return [ev.PublishAccepted(msg.request_id, _forward(msg.params, None),
                                       msg.params.get(wire.PARAM_DELIVERY_TIMEOUT))]
        if isinstance(msg, wire.Unsubscribe):
            self._request_closed(msg.request_id)
            return [ev.Unsubscribed(msg.request_id)]
        if isinstance(msg, wire.PublishDone):
            self._request_closed(msg.request_id)  # a track the peer PUBLISHed has ended
            self._subscription_over(msg.request_id)
            return [ev.PublishDoneReceived(msg.request_id, msg.status, msg.stream_count, msg.reason)]
        if isinstance(msg, wire.Goaway):
            # draft 16: one GOAWAY per session, and a URI only from the server
            if self._goaway_received:
                raise MoqProtocolError("a second GOAWAY")
            if msg.new_session_uri and not self.is_client:
                raise MoqProtocolError("GOAWAY from a client with a New Session URI")
            self._goaway_received = True
            return [ev.GoawayReceived(msg.new_session_uri)]
        if isinstance(msg, wire.MaxRequestId):
            if msg.request_id <= self._peer_max_request_id:  # draft 16: it MUST only increase
                raise MoqProtocolError(f"MAX_REQUEST_ID {msg.request_id} does not raise {self._peer_max_request_id}")
            self._peer_max_request_id = msg.request_id
            self._release_requests()
            return []
        if isinstance(msg, wire.RequestsBlocked):
            self._grant_more()
            return []
        if isinstance(msg, wire.Fetch):
            self._check_request_id(msg.request_id, wire.MessageType.FETCH)
            descending = msg.params.get(wire.PARAM_GROUP_ORDER) == wire.GROUP_ORDER_DESCENDING
            return [ev.FetchRequested(msg.request_id, msg.fetch_type, _text(msg.namespace),
                                      msg.track_name.decode("utf-8", "replace"), msg.start, msg.end,
                                      msg.joining_request_id, msg.joining_start, descending,
                                      self._authorization(msg.params))]
        if isinstance(msg, wire.FetchOk):
            return [ev.FetchAccepted(msg.request_id, msg.end_of_track, msg.end, msg.extensions)]
        if isinstance(msg, wire.FetchCancel):
            self._request_closed(msg.request_id)
            return [ev.FetchCancelled(msg.request_id)]
        if isinstance(msg, wire.UnknownMessage):
            # a request we do not serve (REQUEST_UPDATE): its first field is the request id;
            # refuse it cleanly rather than tear the session down
            r = wire.decode_varint(msg.body, 0)
            if r is not NEED_DATA and msg.type == wire.MessageType.REQUEST_UPDATE:
                self._check_request_id(r[0], None)
                self.request_error(r[0], wire.RequestError.NOT_SUPPORTED, "not supported by this rtmpq node")
            return []
        return []
