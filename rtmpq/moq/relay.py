"""The MoQ relay: serves tracks to subscribers from local broadcasts or from upstream publishers.

Where a track comes from:
- a broadcast of the in-process registry (RTMP ingest in the same process): read once, its
  catalog becomes the ``catalog`` track (one group per catalog version), each media track a
  ``TrackFanout``;
- a publisher that sent PUBLISH_NAMESPACE on one of our sessions (an rtmpq ingest with
  ``--upstream``, moq-rs, aiomoqt): one SUBSCRIBE to that publisher per track, however many
  subscribers, started on demand;
- an upstream relay (``rtmpq relay --upstream``): the same, for anything not found here;
- a route from the directory (``route()``, many hosts): a session to the broadcast's origin.

Subscribers get one QUIC stream per group (per subgroup of it, for a publisher that sends groups
in several), newest and audio first, within their delivery timeout and send budget (fanout.py).
Filters: unfiltered starts at the newest cached group (from its first object: an IDR for video);
LargestObject and NextGroupStart start at the next group, since a group is only ever delivered
whole from its first object; AbsoluteStart and AbsoluteRange start at their
Start Location, from the cache if it holds it, but never before the newest cached group (where an
unfiltered one starts: draft 16 makes AbsoluteStart {0, 0} the same, and what came before is
FETCHed), and AbsoluteRange ends after its End Group with PUBLISH_DONE (SUBSCRIPTION_ENDED).
FORWARD=0 holds every object back until REQUEST_UPDATE sets 1; a REQUEST_UPDATE's filter replaces
the subscription's range (``_update_filter``).

This module is the router: MoQ session events, timers and which fan-out serves whom. What it ties
together lives apart: broadcast_source.py (local broadcasts into fan-outs), upstream.py (tracks and
FETCHes taken from a publisher or upstream relay), relay_sink.py (a fan-out onto one subscriber).
"""

import asyncio
import logging
import time
from collections import Counter
from dataclasses import replace

from ..auth.access import Access, AccessDenied
from ..config import MOQ_MAX_PARTIAL_BYTES
from ..media.broadcast import BroadcastRegistry
from ..media.catalog import RUNG_NAME, Catalog
from ..media.frames import Frame
from ..redact import safe_name
from . import events as ev
from .broadcast_source import BroadcastSource, with_added_tracks
from .catalog_join import CATALOG_FETCH_WAIT
from .fanout import DEFAULT_DELIVERY_TIMEOUT, DEFAULT_SEND_BUDGET, DEFAULT_STUCK_TIMEOUT, TrackFanout, TrackSubscription
from .fetch import MAX_FETCH_BYTES, FetchRangeError, UnknownUntil, plan_fetch
from .group_cache import CacheBounds
from .loc import CATALOG_TRACK, RENDITIONS_TRACK, object_to_frame
from .relay_sink import DEFAULT_URGENCY, URGENCY, ConnectionSink, Subscription, Subscriptions
from .session import PARTIAL_OBJECT_TIMEOUT
from .transport import MoqConnection, ReceiveBudget
from .upstream import FetchProxy, UpstreamTrack
from .waiting import MAX_WAITING_SUBSCRIBES, NEW_TRACK_WAIT, UPSTREAM_WAIT, WaitingSubscribes
from .wire import (
    DEFAULT_PUBLISHER_PRIORITY,
    EXT_DEFAULT_PUBLISHER_PRIORITY,
    FETCH_RELATIVE_JOINING,
    FETCH_STANDALONE,
    FILTER_ABSOLUTE_RANGE,
    FILTER_ABSOLUTE_START,
    FILTER_LARGEST_OBJECT,
    FILTER_NEXT_GROUP_START,
    GROUP_ORDER_ASCENDING,
    NAMESPACE_OPTION_BOTH,
    NAMESPACE_OPTION_NAMESPACE,
    NAMESPACE_OPTION_PUBLISH,
    PARAM_LARGEST_OBJECT,
    ObjectStatus,
    PublishDoneStatus,
    RequestError,
    SessionError,
    StreamResetCode,
    decode_location_param,
)

log = logging.getLogger("rtmpq.moq")

# How often budgets are enforced and caches expired (seconds) while anyone is subscribed here.
CHECK_INTERVAL = 0.05
# How often the same checks run while nobody is (cache ages, orphaned tracks, rung demand): an
# idle node wakes twice a second, not twenty times (each wakeup costs CPU; issue 12). A new
# subscription wakes the checks at once.
IDLE_CHECK_INTERVAL = 0.5
# Seconds to wait for a track's last streams after its publisher's PUBLISH_DONE.
LATE_STREAM_GRACE = 2.0
# The directory (Redis) can say that a broadcast's origin withdrew it before that origin's last
# objects and PUBLISH_DONE have come over QUIC: the relay keeps its subscriptions there this long
# (seconds) before it counts the source as lost, so a broadcast that ended there ends here whole.
ORIGIN_DRAIN = LATE_STREAM_GRACE + 1.0
# A track resubscribed after its source was lost, refused there (a restarted relay above whose
# publisher is not back yet), is asked for again after this long, doubling up to the maximum.
RESUME_RETRY_MIN = 0.5
RESUME_RETRY_MAX = 4.0
# Seconds a SUBSCRIBE or FETCH passed to a track's publisher (or the relay above) may wait for its
# answer; then the relay's subscribers are refused TIMEOUT and the request upstream is withdrawn
# (UNSUBSCRIBE, FETCH_CANCEL). Above what a relay above holds a SUBSCRIBE itself ([moq] upstream_wait, 12 s).
UPSTREAM_ANSWER_WAIT = 30.0
# Seconds a TRACK_STATUS passed to a track's publisher may wait for its answer; then the
# subscriber is answered TIMEOUT (a publisher that ignores TRACK_STATUS never leaves it waiting).
TRACK_STATUS_WAIT = 5.0
# REQUEST_ERROR's Retry Interval for a SUBSCRIBE of a broadcast that is not live here (seconds): it
# may go live at any time, so it may be asked again (0, the draft's "SHOULD NOT be retried", said otherwise)
NOT_LIVE_RETRY_AFTER = 1.0
# FETCHes of one subscriber passed upstream at once (each answer may be up to MAX_FETCH_BYTES).
MAX_FETCHES_PASSED_ON = 4
# A FETCH refused because this relay is busy (a full send budget, the fetches above) may be sent
# again after this many seconds (REQUEST_ERROR's Retry Interval; 0 there would mean "never").
RETRY_AFTER_BUSY = 0.25
# A relayed track whose publisher or upstream session is lost keeps its subscribers this long
# (seconds) for that source to come back (a restarted ingest, a relay above that restarted); the
# node's [publish] grace_period sets it.
DEFAULT_UPSTREAM_GRACE = 30.0
# A track the relay above said it does not have (a name not live there: a subscriber waiting for
# it asks again every second) is logged "subscribing upstream" once per this many seconds, the
# other tries at DEBUG; at most this many such tracks are remembered (the oldest forgotten).
UNKNOWN_UPSTREAM_LOG_INTERVAL = 60.0
MAX_UNKNOWN_UPSTREAM_REMEMBERED = 1024
# Longest between two looks for incoming objects left incomplete (seconds; a quarter of the
# timeout when that is shorter): a stalled stream goes between the timeout and this later.
PARTIAL_CHECK_INTERVAL = 1.0


def _range_refusal(request: ev.SubscribeRequested | ev.RequestUpdated, largest: tuple[int, int] | None) -> str | None:
    """Why an AbsoluteRange SUBSCRIBE gets INVALID_RANGE (draft 16: an End Group before the
    Start Location, or one entirely published already: those objects are FETCHed), or None.
    (``_update_filter`` passes no ``largest``: an update's End Group already over ends the range.)"""
    end = request.end_group
    if end is None:
        return None
    if end < request.start[0]:
        return "End Group before the Start Location"
    if largest is not None and end < largest[0]:
        return "the range is already over: FETCH it"
    return None


def _publisher_priority(upstream: UpstreamTrack, event: ev.ObjectReceived) -> int:
    """An object's Publisher Priority: its subgroup header's, or (a header without one) the
    subscription's: the track's DEFAULT_PUBLISHER_PRIORITY extension, else 128 (draft 16)."""
    if event.priority is not None:
        return event.priority
    return upstream.fanout.track_extensions.get(EXT_DEFAULT_PUBLISHER_PRIORITY, DEFAULT_PUBLISHER_PRIORITY)


def _label(namespace: tuple[str, ...], track: str = "") -> str:
    """A loggable name: the last namespace field is a stream key for RTMP broadcasts."""
    name = safe_name("/".join(namespace)) if namespace else "-"
    return f"{name}/{track}" if track else name


# What a refused request asked for, as the log line names it ("SUBSCRIBE to live/show refused").
_REQUEST_WORDS = {ev.SubscribeRequested: "SUBSCRIBE to", ev.FetchRequested: "FETCH of",
                  ev.NamespacePublished: "PUBLISH_NAMESPACE of", ev.TrackPublished: "PUBLISH of",
                  ev.NamespaceSubscribeRequested: "SUBSCRIBE_NAMESPACE of", ev.TrackStatusRequested: "TRACK_STATUS of"}


class MoqRelay:
    """Answers MoQ requests on any number of sessions (subscribers, publishers, upstream)."""

    def __init__(self, registry: BroadcastRegistry | None = None, *, delivery_timeout: float = DEFAULT_DELIVERY_TIMEOUT,
                 send_budget: int = DEFAULT_SEND_BUDGET, access: Access | None = None,
                 upstream_grace: float = DEFAULT_UPSTREAM_GRACE, cache_local: bool = False,
                 stuck_timeout: float = DEFAULT_STUCK_TIMEOUT,
                 partial_object_timeout: float = PARTIAL_OBJECT_TIMEOUT,
                 max_partial_bytes: int = MOQ_MAX_PARTIAL_BYTES, upstream_wait: float = UPSTREAM_WAIT,
                 max_waiting_subscribes: int = MAX_WAITING_SUBSCRIBES,
                 cache_bounds: CacheBounds = CacheBounds(), max_fetch_bytes: int = MAX_FETCH_BYTES) -> None:
        self.registry = registry or BroadcastRegistry()
        # read every local broadcast into its group caches from its start, watched or not (the
        # edge of `rtmpq up` fills a first viewer's playlist window from them)
        self.cache_local = cache_local
        self.stuck_timeout = stuck_timeout
        self.partial_object_timeout = partial_object_timeout
        self._next_partial_check = 0.0
        # sessions and requests refused or closed by this relay and its listener, by reason
        # (rtmpq_errors_total{protocol="moq"}); never a name or a token
        self.errors: Counter[str] = Counter()
        self.access = access or Access()
        self.upstream_grace = upstream_grace
        self.delivery_timeout = delivery_timeout
        self.send_budget = send_budget
        self.cache_bounds = cache_bounds  # of each media track's group cache ([moq] group_cache_*)
        self.max_fetch_bytes = max_fetch_bytes  # of payload per FETCH answered from a cache
        self.upstream: MoqConnection | None = None  # relay chaining: ask here for unknown tracks
        # [moq] max_partial_bytes over its sessions: its links to other nodes (on_connection) and
        # those of the listener that serve_moq is given it for
        self.receive_budget = ReceiveBudget(max_partial_bytes, self.errors)
        # a link to an upstream relay will set ``upstream`` (UpstreamLink): SUBSCRIBEs to unknown
        # broadcasts wait for it meanwhile (``upstream_wait`` seconds), in ``_awaiting_upstream`` (at
        # most ``max_waiting_subscribes``, the bound also of each local broadcast's ``waiting``)
        self.upstream_wait = upstream_wait
        self.max_waiting_subscribes = max_waiting_subscribes
        self.upstream_expected = False
        self._awaiting_upstream = WaitingSubscribes(max_waiting_subscribes)
        self.fingerprint = ""  # of this relay's certificate, once it serves (registered in the directory)
        self.connections: set[MoqConnection] = set()
        self._sources: dict[str, BroadcastSource] = {}
        self._subs = Subscriptions()  # (id(conn), request id) -> Subscription
        self._aliases: dict[int, int] = {}  # id(conn) -> next track alias
        self._published: dict[tuple[str, ...], tuple[MoqConnection, int]] = {}  # remote PUBLISH_NAMESPACE
        self._routes: dict[tuple[str, ...], MoqConnection] = {}  # from the directory: the origin's session
        # listed in the directory at an origin whose session is not up yet: their SUBSCRIBEs wait too
        self._listed_unrouted: set[tuple[str, ...]] = set()
        # what the relay above lists (our SUBSCRIBE_NAMESPACE there: request id), listed here too
        self._upstream_listing: int | None = None
        self._upstream_namespaces: set[tuple[str, ...]] = set()
        self._tracks: dict[tuple[tuple[str, ...], str], UpstreamTrack] = {}
        self._by_request: dict[tuple[int, int], UpstreamTrack] = {}
        # (namespace, track) -> when its "subscribing upstream" was last logged at INFO, for tracks
        # the relay above said it does not have (UNKNOWN_UPSTREAM_LOG_INTERVAL)
        self._unknown_upstream: dict[tuple, float] = {}
        self._by_alias: dict[tuple[int, int], UpstreamTrack] = {}
        # (id(conn), stream id) -> (conn, prefix, wants NAMESPACE messages, wants PUBLISH of tracks)
        # (conn, prefix, wants NAMESPACE, wants PUBLISH, the FORWARD of those PUBLISHes)
        self._ns_subscribers: dict[tuple[int, int], tuple[MoqConnection, tuple[str, ...], bool, bool, bool]] = {}
        self._ns_told: dict[tuple[int, int], set] = {}  # the namespaces each of them was told (NAMESPACE, not done)
        self._listing_watchers: list = []  # () -> None, whenever what ``listed`` says may have changed
        # id(conn) -> {stream id: prefix} of those: a new one is checked against its session's alone
        self._ns_prefixes: dict[int, dict[int, tuple[str, ...]]] = {}
        self._fetch_streams: dict[tuple[int, int], tuple[MoqConnection, int]] = {}  # (id(conn), request id)
        # joining FETCHes of a SUBSCRIBE still waiting (for the track upstream, or a new local
        # track), served once it is accepted: (id(conn), joining request id) -> FETCHes
        self._held_fetches: dict[tuple[int, int], list[ev.FetchRequested]] = {}
        self._fetch_proxies: dict[tuple[int, int], FetchProxy] = {}  # (id(upstream), its request id)
        # TRACK_STATUS passed to a publisher: (id(publisher), its request id) -> (asker, its request id)
        self._status_proxies: dict[tuple[int, int], tuple[MoqConnection, int]] = {}
        # the relay's own Joining FETCHes of relayed catalogs: (id(upstream), its request id)
        self._catalog_fetches: dict[tuple[int, int], UpstreamTrack] = {}
        self._tasks: list[asyncio.Task] = []
        self._added: dict[tuple[str, ...], tuple] = {}  # namespace -> TrackInfo nodes added (rungs)
        # local broadcast name -> in-process readers told when the tracks added to it change (watch_added)
        self._added_watchers: dict[str, list] = {}
        # subscriptions of ended tracks whose last groups are still on their way: their budgets
        # hold until those are delivered or reset (an ended track must not drain seconds late)
        self._draining: set[Subscription] = set()
        # relayed subscriptions ended by PUBLISH_DONE whose track was published again before their
        # late streams came: they feed the track's fan-out until those end (``_publish_again``)
        self._tails: set[UpstreamTrack] = set()
        self._tick_waiter: asyncio.Future | None = None
        # pending call_later handles (ORIGIN_DRAIN, LATE_STREAM_GRACE, NEW_TRACK_WAIT): stop()
        # cancels them, so nothing of a stopped relay runs later (e.g. orphaning its tracks)
        self._timers: set[asyncio.TimerHandle] = set()
        # a deliberate stop: set by stop(), or earlier by a node closing its links first; the sources
        # it lets go then are not "lost" (an operator would read that log as a failure upstream)
        self.stopping = False

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._tick()), loop.create_task(self._watch_registry())]

    def stop(self) -> None:
        """Shut down: GOAWAY to every session (peers move elsewhere), then stop reading sources."""
        self.stopping = True
        for conn in list(self.connections):
            if not conn.session.closed and conn.session.setup_done:
                conn.session.goaway("")
                conn.flush()
        for task in self._tasks:
            task.cancel()
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        for source in list(self._sources.values()):
            source.close()

    def _call_later(self, delay: float, callback, *args) -> None:
        """``loop.call_later`` with the handle kept until it fires, for stop() to cancel."""
        def fire() -> None:
            self._timers.discard(handle)
            callback(*args)

        handle = asyncio.get_running_loop().call_later(delay, fire)
        self._timers.add(handle)

    def on_connection(self, conn: MoqConnection) -> None:
        conn.handler = self._on_event
        self.connections.add(conn)
        self.receive_budget.join(conn)  # (a listener's session is in its listener's budget already)

    def _busy(self) -> bool:
        """Whether something here needs its budgets checked every CHECK_INTERVAL."""
        return bool(self._subs or self._draining or self._fetch_streams or self._tracks)

    def _wake_tick(self) -> None:
        if self._tick_waiter is not None and not self._tick_waiter.done():
            self._tick_waiter.set_result(None)

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._tick_waiter = waiter = loop.create_future()
            timer = loop.call_later(CHECK_INTERVAL if self._busy() else IDLE_CHECK_INTERVAL, self._wake_tick)
            try:
                await waiter
            finally:
                timer.cancel()
                self._tick_waiter = None
            now = time.monotonic()
            # one track's failure is logged and must not stop budgets, timeouts and cache ages for all
            for label, fanout in self._all_fanouts():
                try:
                    fanout.check(now)
                except Exception:
                    log.exception("%s: fan-out check failed", label)
            try:
                for key, (conn, sid) in list(self._fetch_streams.items()):
                    if conn.session.closed or not conn.queued_bytes(sid):
                        del self._fetch_streams[key]  # all handed to QUIC: nothing left to cancel
            except Exception:
                log.exception("fetch stream check failed")
            try:
                self.expire_orphans(now)
            except Exception:
                log.exception("expiring relayed tracks failed")
            try:  # rungs made on demand follow who watches them
                for source in list(self._sources.values()):
                    source.update_demand()
                self._update_forward()
            except Exception:
                log.exception("updating demand for renditions failed")
            for s in list(self._draining):  # ended tracks' last groups: budgets hold until delivered or reset
                try:
                    if not s.conn.session.closed:
                        s.sub.check(now)
                except Exception as exc:  # noqa: BLE001 - its connection failed: it alone is dropped
                    s.sub.failed = f"{type(exc).__name__}: {exc}"
                    s.sub.in_flight.clear()
                if s.conn.session.closed or not s.sub.in_flight:
                    self._draining.discard(s)
            try:
                self.end_ranges()
                self.drop_stuck(now)
                self.drop_failed()
            except Exception:
                log.exception("dropping stuck or failed subscribers failed")
            if now >= self._next_partial_check:
                self._next_partial_check = now + min(PARTIAL_CHECK_INTERVAL, self.partial_object_timeout / 4)
                for conn in list(self.connections):
                    try:
                        conn.expire_partial_objects(now, self.partial_object_timeout)
                    except Exception:
                        log.exception("%s: expiring incomplete objects failed", conn.peer)

    def end_ranges(self) -> None:
        """PUBLISH_DONE (SUBSCRIPTION_ENDED) to each AbsoluteRange subscription whose End Group is
        over, once every group it has open is complete (draft 16: streams close before PUBLISH_DONE)."""
        for key, s in list(self._subs.items()):
            if s.sub.range_ended and all(g.complete for g in s.sub.in_flight.values()):
                del self._subs[key]
                s.fanout.subscribers.discard(s.sub)
                self._publish_done(s, PublishDoneStatus.SUBSCRIPTION_ENDED, "end of the requested range")

    def drop_stuck(self, now: float) -> None:
        """Close the session of a subscriber that acknowledged nothing it is owed for stuck_timeout
        (it stopped reading): its groups were being reset anyway, now its streams and state go."""
        for s in list(self._subs.values()):
            since = s.sub.stalled_since
            if since is None or now - since <= self.stuck_timeout or s.conn.session.closed:
                continue
            reason = f"subscriber stuck: nothing acknowledged for {now - since:.0f} s"
            log.warning("MoQ subscriber %s on %s: %s; closing its session", s.conn.peer, s.label, reason)
            self.errors["stuck_timeout"] += 1
            s.conn.close_session(SessionError.DATA_STREAM_TIMEOUT, reason)  # forgets it here too

    def drop_failed(self) -> None:
        """Close the session of a subscriber whose connection failed under a fan-out's call (the
        fan-out already let it go): whatever else it subscribed to goes with it."""
        for s in list(self._subs.values()):
            if s.sub.failed is None:
                continue
            log.warning("MoQ subscriber %s on %s: %s; closing its session", s.conn.peer, s.label, s.sub.failed)
            if s.conn.session.closed:  # closed without the relay hearing of it: forget it now
                self._on_SessionClosed(s.conn, ev.SessionClosed(int(SessionError.INTERNAL_ERROR), s.sub.failed))
            else:
                s.conn.close_session(SessionError.INTERNAL_ERROR, "delivery failed")
            self._subs.pop((id(s.conn), s.request_id), None)

    def _all_fanouts(self):
        """(loggable track name, fan-out) of every track held."""
        for name, source in list(self._sources.items()):
            for track, fanout in list(source.fanouts.items()):
                yield _label(tuple(name.split("/")), track), fanout
        for (namespace, track), upstream in list(self._tracks.items()):
            yield _label(namespace, track), upstream.fanout

    async def _watch_registry(self) -> None:
        async for broadcast in self.registry.announcements():
            namespace = tuple(broadcast.name.split("/"))
            if self.cache_local or any(wants_tracks and namespace[: len(prefix)] == prefix
                                       for _, prefix, _, wants_tracks, _ in self._ns_subscribers.values()):
                source = self._local_source(broadcast.name)
                if source is not None:
                    self._publish_local(source)
            self._announce(namespace)

    # -- namespaces -----------------------------------------------------------------------------
    def _announce(self, namespace: tuple[str, ...], done: bool = False) -> None:
        """NAMESPACE (or NAMESPACE_DONE) to every SUBSCRIBE_NAMESPACE whose prefix matches: once
        each (a namespace served two ways, a local broadcast a session also PUBLISH_NAMESPACEs, is
        announced once), and done only when nothing serves it any more (draft 16: "stop serving")."""
        for callback in list(self._listing_watchers):
            callback()
        if done and namespace in self._known_namespaces():
            return
        for key, (conn, prefix, wants_namespaces, _, _) in list(self._ns_subscribers.items()):
            if wants_namespaces and namespace[: len(prefix)] == prefix and not conn.session.closed:
                told = self._ns_told.setdefault(key, set())
                if (namespace in told) != done:
                    continue  # said already (or never said, for a done)
                suffix = namespace[len(prefix):]
                if done:
                    told.discard(namespace)
                    conn.session.send_namespace_done(key[1], suffix)
                else:
                    told.add(namespace)
                    conn.session.send_namespace(key[1], suffix)
                conn.flush()

    def _known_namespaces(self) -> list[tuple[str, ...]]:
        known = [tuple(n.split("/")) for n in self.registry.names() if self.registry.get(n).live] + list(
            self._published) + [ns for ns in self._routes if ns not in self._published]
        return known + [ns for ns in sorted(self._upstream_namespaces) if ns not in known]

    # -- what the relay above lists -----------------------------------------------------------------
    def _list_upstream(self, conn: MoqConnection) -> None:
        """SUBSCRIBE_NAMESPACE (every namespace) at the relay above: what it lists is listed here too,
        so a subscriber that plays only what it has seen announced (moq-rs) finds the broadcasts
        this relay serves from upstream. (Authorized by the node token of the session's setup.)"""
        self._forget_upstream_namespaces()
        self._upstream_listing = conn.session.subscribe_namespace(())
        conn.flush()

    def _forget_upstream_namespaces(self) -> None:
        gone, self._upstream_namespaces = self._upstream_namespaces, set()
        self._upstream_listing = None
        known = set(self._known_namespaces())  # (what _announce says changes none of it)
        for ns in gone - known:
            self._announce(ns, done=True)

    def _on_NamespaceReceived(self, conn: MoqConnection, event: ev.NamespaceReceived) -> None:
        if conn is self.upstream and event.request_id == self._upstream_listing \
                and event.namespace not in self._upstream_namespaces:
            known = event.namespace in self._known_namespaces()
            self._upstream_namespaces.add(event.namespace)
            if not known:
                self._announce(event.namespace)

    def _on_NamespaceDoneReceived(self, conn: MoqConnection, event: ev.NamespaceDoneReceived) -> None:
        if conn is self.upstream and event.request_id == self._upstream_listing \
                and event.namespace in self._upstream_namespaces:
            self._upstream_namespaces.discard(event.namespace)
            if event.namespace not in self._known_namespaces():
                self._announce(event.namespace, done=True)

    # -- access -----------------------------------------------------------------------------------
    def _denied(self, conn: MoqConnection, event, check, path: str) -> bool:
        """Runs an Access check with the request's token (or the one of the peer's CLIENT_SETUP);
        on refusal answers the request with UNAUTHORIZED and returns True."""
        token = event.authorization or conn.session.setup_authorization
        try:
            check(path, token, time.time())
        except AccessDenied as exc:
            # the operator reads which request of which broadcast, never the token
            log.warning("%s: %s %s refused: %s", conn.peer, _REQUEST_WORDS.get(type(event), "request for"),
                        safe_name(path) if path else "every broadcast", exc)
            self.errors["auth_denied"] += 1
            if isinstance(event, ev.NamespaceSubscribeRequested):
                conn.session.namespace_subscription_error(event.stream_id, event.request_id,
                                                          RequestError.UNAUTHORIZED, str(exc))
            else:
                conn.session.request_error(event.request_id, RequestError.UNAUTHORIZED, str(exc))
            return True
        return False

    # -- event dispatch -------------------------------------------------------------------------
    def _on_event(self, conn: MoqConnection, event) -> None:
        handler = getattr(self, "_on_" + type(event).__name__, None)
        if handler is not None:
            try:
                handler(conn, event)
            except Exception:  # a bug met on what this peer sent: its session alone ends, said
                # (it escaped into asyncio, the request never answered, the session left as it was);
                # the event's type only: its fields may hold a token
                log.error("%s: %s failed; closing its session", conn.peer, type(event).__name__, exc_info=True)
                self.errors["handler"] += 1
                if not conn.session.closed:
                    conn.close_session(SessionError.INTERNAL_ERROR, "internal error")
        conn.flush()

    def _on_SubscribeRequested(self, conn: MoqConnection, event: ev.SubscribeRequested) -> None:
        name = "/".join(event.namespace)
        if self._denied(conn, event, self.access.may_subscribe, name):
            return
        if self._subscribed(conn, event.namespace, event.track_name):
            # draft 16 "Subscriptions": one subscription per track and role on a session; a second
            # (its SUBSCRIBE still pending or accepted, or our PUBLISH of it) MUST be failed so
            conn.session.request_error(event.request_id, RequestError.DUPLICATE_SUBSCRIPTION,
                                       "this session already subscribes to the track")
            log.info("%s: second subscription to %s refused (DUPLICATE_SUBSCRIPTION)", conn.peer,
                     _label(event.namespace, event.track_name))
            return
        source = self._local_source(name)
        added = self._tracks.get((event.namespace, event.track_name))
        if source is not None and added is not None and added.alias is not None:
            self._accept(conn, event, added.fanout)  # a track a node added to this broadcast (a rung)
            return
        if source is not None:
            fanout = source.fanouts.get(event.track_name)
            wait = source.broadcast.started + NEW_TRACK_WAIT - time.monotonic()
            if fanout is not None:
                self._accept(conn, event, fanout)
            elif wait > 0 and len(source.waiting) < self.max_waiting_subscribes:
                source.waiting.append((conn, event))
                self._call_later(wait, self._expire_waiting, source, conn, event)
            else:
                conn.session.request_error(event.request_id, RequestError.DOES_NOT_EXIST, "no such track")
            return
        key = (event.namespace, event.track_name)
        upstream = self._tracks.get(key)
        if upstream is None:
            publisher = self._publisher_for(event.namespace)
            if publisher is None and self._session_expected(event.namespace) and self.upstream_wait > 0 \
                    and self._awaiting_upstream.add(conn, event):
                self._call_later(self.upstream_wait, self._expire_awaiting_upstream, conn, event)
                log.info("%s: %s waits for the session upstream", _label(event.namespace, event.track_name), conn.peer)
                return
            if publisher is None:
                conn.session.request_error(event.request_id, RequestError.DOES_NOT_EXIST, "no such broadcast",
                                           retry_after=NOT_LIVE_RETRY_AFTER)
                return
            upstream = self._tracks[key] = UpstreamTrack(publisher, event.namespace, event.track_name,
                                                         label=_label(event.namespace), bounds=self.cache_bounds)
            upstream.fanout.label = _label(event.namespace, event.track_name)
            self._by_request[(id(publisher), upstream.request_id)] = upstream
            self._call_later(UPSTREAM_ANSWER_WAIT, self._upstream_unanswered, upstream, publisher, upstream.request_id)
            now = time.monotonic()
            said = self._unknown_upstream.get(key)
            quiet = said is not None and now - said < UNKNOWN_UPSTREAM_LOG_INTERVAL
            if said is not None and not quiet:
                self._unknown_upstream[key] = now
            log.log(logging.DEBUG if quiet else logging.INFO, "%s: subscribing upstream (%s)%s",
                    _label(event.namespace, event.track_name), publisher.peer,
                    "" if said is None or quiet else f" (unknown there at the last try; such tries are logged "
                    f"once per {UNKNOWN_UPSTREAM_LOG_INTERVAL:g} s)")
        if upstream.alias is None:
            upstream.waiting.append((conn, event))
        else:
            self._accept(conn, event, upstream.fanout)

    def _on_new_tracks(self, source: BroadcastSource) -> None:
        self._publish_local(source)
        waiting, source.waiting = source.waiting, []
        for conn, event in waiting:
            fanout = source.fanouts.get(event.track_name)
            if fanout is None:
                source.waiting.append((conn, event))
            elif not conn.session.closed:
                self._accept(conn, event, fanout)
                conn.flush()

    def _expire_waiting(self, source: BroadcastSource, conn: MoqConnection, event: ev.SubscribeRequested) -> None:
        if (conn, event) in source.waiting:
            source.waiting.remove((conn, event))
            if not conn.session.closed:
                self._refuse_waiting(conn, event, RequestError.DOES_NOT_EXIST, "no such track")
                conn.flush()

    def _session_expected(self, namespace: tuple[str, ...]) -> bool:
        """Whether a session that serves ``namespace`` is on its way: the link upstream, or the one
        to the origin the directory lists it at (not up yet, or reconnecting)."""
        return self.upstream_expected or namespace in self._listed_unrouted or namespace in self._routes

    def _retry_awaiting_upstream(self, namespace: tuple[str, ...] | None = None) -> None:
        """The SUBSCRIBEs that came before the session (all, or ``namespace``'s): handled now, as if they came now."""
        for sub_conn, request in self._awaiting_upstream.take(namespace):
            if not sub_conn.session.closed:
                self._on_SubscribeRequested(sub_conn, request)
                sub_conn.flush()

    def _expire_awaiting_upstream(self, conn: MoqConnection, event: ev.SubscribeRequested) -> None:
        if self._awaiting_upstream.expire(conn, event):
            if not conn.session.closed:
                log.info("%s: no session upstream within %g s for %s", _label(event.namespace, event.track_name),
                         self.upstream_wait, conn.peer)
                self._refuse_waiting(conn, event, RequestError.DOES_NOT_EXIST, "no such broadcast", NOT_LIVE_RETRY_AFTER)
                conn.flush()

    def _refuse_awaiting_upstream(self, namespace: tuple[str, ...]) -> None:
        """No longer listed anywhere: its SUBSCRIBEs that wait for a session are refused now (unless
        the link upstream may still serve them)."""
        if self.upstream_expected:
            return
        for conn, event in self._awaiting_upstream.take(namespace):
            if not conn.session.closed:
                self._refuse_waiting(conn, event, RequestError.DOES_NOT_EXIST, "no such broadcast", NOT_LIVE_RETRY_AFTER)
                conn.flush()

    def _subscribed(self, conn: MoqConnection, namespace: tuple[str, ...], track: str) -> bool:
        """Whether ``conn`` has a subscription to that track here: accepted, waiting for the track
        (upstream or a new local one), or a PUBLISH of ours to it."""
        if self._subs.of_track(conn, namespace, track) is not None:
            return True
        upstream = self._tracks.get((namespace, track))
        source = self._sources.get("/".join(namespace))
        waiting = (*(upstream.waiting if upstream is not None else ()), *(source.waiting if source is not None else ()),
                   *self._awaiting_upstream)
        return any(c is conn and r.track_name == track and r.namespace == namespace for c, r in waiting)

    def _publisher_for(self, namespace: tuple[str, ...]) -> MoqConnection | None:
        for length in range(len(namespace), 0, -1):  # the longest published prefix wins
            entry = self._published.get(namespace[:length])
            if entry is not None and not entry[0].session.closed:
                return entry[0]
        route = self._routes.get(namespace)
        if route is not None and not route.session.closed:
            return route
        if self.upstream is not None and not self.upstream.session.closed:
            return self.upstream
        return None

    def _new_alias(self, conn: MoqConnection) -> int:
        alias = self._aliases.get(id(conn), 0)
        self._aliases[id(conn)] = alias + 1
        return alias

    def _accept(self, conn: MoqConnection, event: ev.SubscribeRequested, fanout: TrackFanout,
                upstream: UpstreamTrack | None = None) -> None:
        now = time.monotonic()
        largest = fanout.cache.largest_at(now)  # nothing past the track's MAX_CACHE_DURATION starts it
        # a track just subscribed upstream: nothing is here yet, but the publisher above said what
        # it has (a joining FETCH of this subscription is then passed up there)
        from_upstream = largest is None and upstream is not None and upstream.largest is not None
        if from_upstream:
            largest = upstream.largest
        start_group = None
        if event.filter_type in (FILTER_LARGEST_OBJECT, FILTER_NEXT_GROUP_START):
            start_group = largest[0] + 1 if largest else 0
        elif event.filter_type in (FILTER_ABSOLUTE_START, FILTER_ABSOLUTE_RANGE):
            refusal = _range_refusal(event, largest)
            if refusal:
                self._refuse_waiting(conn, event, RequestError.INVALID_RANGE, refusal)
                return
            start = fanout.live_start(event.start, now)  # older objects are FETCHed
            if start != event.start and event.end_group is None:
                # a start before the newest group: "equivalent to an unfiltered subscription"
                # (AbsoluteStart {0, 0}), so started as one, which skips a stale newest group
                event = replace(event, filter_type=None, start=None)
            else:
                event = replace(event, start=start)
                start_group = start[0]
        alias = self._new_alias(conn)
        timeout = fanout.delivery_timeout(event.delivery_timeout_ms / 1000 if event.delivery_timeout_ms
                                          else self.delivery_timeout)
        conn.session.subscribe_ok(event.request_id, alias, largest, extensions=fanout.track_extensions)
        s = self._attach(conn, event.request_id, alias, event.namespace, event.track_name, fanout, timeout,
                         start_group, event)
        s.largest = largest
        s.upstream = upstream if from_upstream else None
        for fetch in self._held_fetches.pop((id(conn), event.request_id), ()):
            self._on_FetchRequested(conn, fetch)

    def _attach(self, conn: MoqConnection, request_id: int, alias: int, namespace: tuple[str, ...], track: str,
                fanout: TrackFanout, timeout: float, start_group: int | None = None,
                request: ev.SubscribeRequested | None = None, *, forward: bool = True) -> Subscription:
        """Start delivering ``fanout`` to ``conn`` under ``alias`` (a SUBSCRIBE we accepted, whose
        filter and FORWARD ``request`` carries, or a PUBLISH we sent with FORWARD ``forward``)."""
        # GROUP_ORDER Ascending asked: older groups first (absent or Descending: the relay's newer first)
        ascending = request is not None and request.group_order == GROUP_ORDER_ASCENDING
        sink = ConnectionSink(conn, alias, URGENCY.get(track, DEFAULT_URGENCY), fanout, ascending=ascending)
        sub = TrackSubscription(sink, delivery_timeout=timeout, send_budget=self.send_budget, start_group=start_group)
        label = _label(namespace, track)
        sink.label, sink.errors = label, self.errors  # for datagram objects it cannot send
        s = self._subs[(id(conn), request_id)] = Subscription(conn, request_id, fanout, label, sub, sink,
                                                              (namespace, track))
        s.forward = forward
        if request is not None:
            s.filter_type, s.forward = request.filter_type, request.forward
            if request.start is not None:
                sub.start_object, sub.last_group = request.start[1], request.end_group
        self._wake_tick()  # from now on budgets are checked every CHECK_INTERVAL
        if fanout.ended:
            del self._subs[(id(conn), request_id)]  # over at once (a new SUBSCRIBE to the track is no duplicate)
            conn.session.publish_done(request_id, PublishDoneStatus.TRACK_ENDED, 0, "the track has ended")
            return s
        if s.forward:
            self._start_delivery(s)
        log.info("%s: subscribed to %s%s", conn.peer, label, "" if s.forward else " (FORWARD=0: nothing sent yet)")
        return s

    def _start_delivery(self, s: Subscription) -> None:
        """Begin sending ``s`` its objects, from where its filter starts."""
        now = time.monotonic()
        # an explicit Start Location, or one a joining FETCH moved back while FORWARD was 0
        if s.filter_type in (FILTER_ABSOLUTE_START, FILTER_ABSOLUTE_RANGE) or s.sub.start_object:
            s.fanout.subscribe_from(s.sub, now)
        elif s.sub.start_group is None:
            s.fanout.subscribe(s.sub, now)
        else:
            s.fanout.subscribe_next(s.sub)

    def _publish_to(self, conn: MoqConnection, namespace: tuple[str, ...], track: str, fanout: TrackFanout,
                    forward: bool) -> None:
        """PUBLISH a track (relayed or local) to a namespace subscriber that asked for tracks;
        ``forward``: the FORWARD its SUBSCRIBE_NAMESPACE set (0: no objects until its REQUEST_UPDATE).
        Not to a session that subscribes to the track already: it would be a second subscription (draft 16)."""
        if self._subscribed(conn, namespace, track):
            return
        alias = self._new_alias(conn)
        largest = fanout.cache.largest_at(time.monotonic())  # as a SUBSCRIBE_OK of it would say
        rid = conn.session.publish(namespace, track, alias, forward=forward, extensions=fanout.track_extensions,
                                   largest=largest)
        s = self._attach(conn, rid, alias, namespace, track, fanout, fanout.delivery_timeout(self.delivery_timeout),
                         forward=forward)
        s.largest = largest  # draft 16: saved, as a SUBSCRIBE_OK's is

    def _publish_local(self, source: BroadcastSource, subscribers=None) -> None:
        """PUBLISH a local broadcast's tracks to the SUBSCRIBE_NAMESPACEs (all, or ``subscribers``)
        that asked for tracks under its name: draft 16 sends matching PUBLISHes at once and as
        tracks come (a track PUBLISHed to a session already is not PUBLISHed again)."""
        namespace = tuple(source.broadcast.name.split("/"))
        for conn, prefix, _, wants_tracks, forward in list(subscribers or self._ns_subscribers.values()):
            if wants_tracks and namespace[: len(prefix)] == prefix and not conn.session.closed:
                for track, fanout in list(source.fanouts.items()):
                    self._publish_to(conn, namespace, track, fanout, forward)
                conn.flush()

    def _on_Unsubscribed(self, conn: MoqConnection, event: ev.Unsubscribed) -> None:
        s = self._subs.pop((id(conn), event.request_id), None)
        if s is not None:
            s.fanout.unsubscribe(s.sub)
            conn.session.publish_done(event.request_id, PublishDoneStatus.SUBSCRIPTION_ENDED, s.sink.streams_opened)
            return
        # a SUBSCRIBE still waiting (for its track upstream, or a new local one) is withdrawn: it is
        # not accepted later, and a new SUBSCRIBE of the track is no duplicate
        self._held_fetches.pop((id(conn), event.request_id), None)
        for holder in (*self._tracks.values(), *self._sources.values()):
            holder.waiting = [(c, r) for c, r in holder.waiting if c is not conn or r.request_id != event.request_id]
        self._awaiting_upstream.withdraw(conn, event.request_id)

    def _on_FetchRequested(self, conn: MoqConnection, event: ev.FetchRequested) -> None:
        """Serve a FETCH from the group cache (fetch.py says what is sent for what is not cached)."""
        if conn.total_queued_bytes() > self.send_budget:
            conn.session.request_error(event.request_id, RequestError.INTERNAL_ERROR, "send budget exhausted, retry later",
                                       retry_after=RETRY_AFTER_BUSY)
            return
        if event.fetch_type == FETCH_STANDALONE:
            if self._denied(conn, event, self.access.may_subscribe, "/".join(event.namespace)):
                return
            fanout = self._fanout(event.namespace, event.track_name)
            if fanout is None:
                self._fetch_upstream(conn, event)
                return
            start, end, label = event.start, event.end, _label(event.namespace, event.track_name)
            urgency = URGENCY.get(event.track_name, DEFAULT_URGENCY)
        else:
            s = self._subs.get((id(conn), event.joining_request_id))
            if s is None and self._subscribe_waiting(conn, event.joining_request_id):
                # draft 16 allows joining a subscription still pending (a subscriber may send
                # SUBSCRIBE and its joining FETCH together, as aiomoqt's join does)
                self._held_fetches.setdefault((id(conn), event.joining_request_id), []).append(event)
                return
            if s is None:
                conn.session.request_error(event.request_id, RequestError.INVALID_JOINING_REQUEST_ID,
                                           "no such subscription")
                return
            if s.filter_type != FILTER_LARGEST_OBJECT:
                self.errors["protocol_error"] += 1
                conn.close_session(SessionError.PROTOCOL_VIOLATION, "joining FETCH of a subscription not at the largest object")
                return
            if s.largest is None:
                conn.session.request_error(event.request_id, RequestError.INVALID_RANGE, "nothing was published before the subscription")
                return
            fanout, label, urgency = s.fanout, s.label, s.sink.urgency
            first = max(s.largest[0] - event.joining_start, 0) if event.fetch_type == FETCH_RELATIVE_JOINING else event.joining_start
            start, end = (first, 0), (s.largest[0], s.largest[1] + 1)
            if s.upstream is not None:  # what it joins is above: ask there for that range
                self._fetch_upstream(conn, replace(event, fetch_type=FETCH_STANDALONE, namespace=s.upstream.namespace,
                                                   track_name=s.upstream.track, start=start, end=end), s.upstream.conn)
                if s.sub.start_group == s.largest[0] + 1:
                    fanout.extend_back(s.sub, s.largest[0], s.largest[1] + 1, time.monotonic())
                return
        now = time.monotonic()
        source = self._tracks.get((event.namespace, event.track_name) if event.fetch_type == FETCH_STANDALONE else s.name)
        if fanout.cache.expired_in(start, end, now) and source is not None and source.fanout is fanout \
                and source.conn is not None and not source.conn.session.closed:
            # objects past the track's MAX_CACHE_DURATION, not served from here: "a relay that
            # handles a downstream request that includes those Objects re-requests them" (draft 16)
            self._fetch_upstream(conn, replace(event, fetch_type=FETCH_STANDALONE, namespace=source.namespace,
                                               track_name=source.track, start=start, end=end), source.conn)
            if event.fetch_type != FETCH_STANDALONE and s.sub.start_group == s.largest[0] + 1:
                fanout.extend_back(s.sub, s.largest[0], s.largest[1] + 1, time.monotonic())
            return
        try:
            plan = plan_fetch(fanout.cache, start, end, now, descending=event.descending, max_bytes=self.max_fetch_bytes)
        except FetchRangeError as exc:
            conn.session.request_error(event.request_id, RequestError.INVALID_RANGE, str(exc))
            return
        conn.session.fetch_ok(event.request_id, plan.end, end_of_track=fanout.ended, extensions=fanout.track_extensions)
        sid = conn.session.open_fetch_stream(event.request_id)
        # the priority its subscriptions carry (ConnectionSink): Publisher Priority is the object's
        priority = fanout.publisher_priority if fanout.publisher_priority is not None else urgency
        objects = 0
        for item in plan.items:
            if isinstance(item, UnknownUntil):
                conn.session.send_fetch_range_end(sid, *item.location, unknown=True)
            else:
                group_id, obj = item  # each object with its Subgroup ID and its subgroup's priority
                own = obj.priority
                if own is None and obj.datagram:  # one without: the track's (draft 16, DEFAULT_PRIORITY)
                    own = fanout.track_extensions.get(EXT_DEFAULT_PUBLISHER_PRIORITY, DEFAULT_PUBLISHER_PRIORITY)
                conn.session.send_fetch_object(sid, group_id, obj.object_id, obj.payload, obj.extensions,
                                               subgroup=obj.subgroup, priority=priority if own is None else own,
                                               datagram=obj.datagram)
                objects += 1
        conn.session.end_fetch_stream(sid)
        self._fetch_streams[(id(conn), event.request_id)] = (conn, sid)
        log.info("%s: fetch of %s from %s to %s: %d objects", conn.peer, label, start, plan.end, objects)
        if event.fetch_type != FETCH_STANDALONE and s.sub.start_group == s.largest[0] + 1:
            # the subscription began at the next group; from here on it also carries the rest of the
            # joined group, so fetch + subscription are contiguous
            fanout.extend_back(s.sub, s.largest[0], s.largest[1] + 1, time.monotonic())

    def _subscribe_waiting(self, conn: MoqConnection, request_id: int) -> bool:
        holders = [*self._tracks.values(), *self._sources.values()]
        return any(c is conn and r.request_id == request_id
                   for c, r in (*self._awaiting_upstream, *(w for h in holders for w in h.waiting)))

    def _refuse_waiting(self, conn: MoqConnection, request: ev.SubscribeRequested, code: int, reason: str,
                        retry_after: float | None = None) -> None:
        """Refuse a SUBSCRIBE that was waiting, and the joining FETCHes held for it."""
        conn.session.request_error(request.request_id, code, reason, retry_after=retry_after)
        for fetch in self._held_fetches.pop((id(conn), request.request_id), ()):
            conn.session.request_error(fetch.request_id, RequestError.INVALID_JOINING_REQUEST_ID,
                                       "the subscription it joins was refused")

    def _fetch_upstream(self, conn: MoqConnection, event: ev.FetchRequested, publisher: MoqConnection | None = None) -> None:
        """A track not held here: pass the FETCH to whoever publishes it (or the upstream relay)."""
        if publisher is None:
            publisher = None if self._local_source("/".join(event.namespace)) else self._publisher_for(event.namespace)
        if publisher is None:
            conn.session.request_error(event.request_id, RequestError.DOES_NOT_EXIST, "no such track")
            return
        if sum(p.conn is conn for p in self._fetch_proxies.values()) >= MAX_FETCHES_PASSED_ON:
            conn.session.request_error(event.request_id, RequestError.INTERNAL_ERROR,
                                       "too many fetches in progress upstream, retry later", retry_after=RETRY_AFTER_BUSY)
            return
        rid = publisher.session.fetch(event.namespace, event.track_name, event.start, event.end,
                                      descending=event.descending)
        publisher.flush()
        self._fetch_proxies[(id(publisher), rid)] = FetchProxy(conn, event.request_id, publisher, rid)
        self._call_later(UPSTREAM_ANSWER_WAIT, self._fetch_unanswered, (id(publisher), rid))
        log.info("%s: fetch of %s passed to %s", conn.peer, _label(event.namespace, event.track_name), publisher.peer)

    def _catalog_fetch(self, conn: MoqConnection, request_id: int, *, done: bool = False) -> UpstreamTrack | None:
        """The relayed catalog whose current Joining FETCH this is (``done``: it is over), or None."""
        key = (id(conn), request_id)
        upstream = self._catalog_fetches.pop(key, None) if done else self._catalog_fetches.get(key)
        if upstream is None or upstream.conn is not conn or not upstream.catalog_join.is_fetch(request_id):
            return None  # not ours, or one of a subscription since replaced
        if done:
            upstream.catalog_join.fetch_over()
        return upstream

    def _catalog_fetched(self, upstream: UpstreamTrack, code: int | None) -> None:
        """The catalog's Joining FETCH is over (ended, reset or refused): the group it fed ends."""
        group = upstream.fetched_group
        if group is not None:
            if code is None:
                upstream.fanout.end_group(group)
            else:
                upstream.fanout.reset_group(group, code)
        self._catalog_not_fetched(upstream)

    def _catalog_not_fetched(self, upstream: UpstreamTrack) -> None:
        """If the catalog's Joining FETCH brought no version in time, subscribe to it unfiltered
        instead (catalog_join.py)."""
        if (self._tracks.get((upstream.namespace, upstream.track)) is not upstream or upstream.conn is None
                or upstream.conn.session.closed):
            return  # the track ended, or its source is lost (a new one is subscribed as it was)
        held = upstream.fanout.cache.latest(time.monotonic()) is not None  # a version came, fetched or live
        if upstream.catalog_join.falls_back(asyncio.get_running_loop().time(), held):
            upstream.conn.session.unsubscribe(upstream.request_id)
            self._resume(upstream, upstream.conn)

    def _fetch_unanswered(self, key: tuple[int, int]) -> None:
        """A FETCH upstream still unanswered after UPSTREAM_ANSWER_WAIT: cancelled there, TIMEOUT here."""
        p = self._fetch_proxies.get(key)
        if p is not None and not p.answered:
            del self._fetch_proxies[key]
            p.cancel_upstream()
            p.fail(RequestError.TIMEOUT, "the publisher did not answer the fetch")

    def _on_FetchAccepted(self, conn: MoqConnection, event: ev.FetchAccepted) -> None:
        p = self._fetch_proxies.get((id(conn), event.request_id))
        if p is not None and not p.answered:
            p.answered = True
            if p.ended:  # its stream came and went before this answer
                del self._fetch_proxies[(id(conn), event.request_id)]
            if not p.conn.session.closed:
                p.conn.session.fetch_ok(p.request_id, event.end, end_of_track=event.end_of_track,
                                        extensions=event.extensions)
                p.conn.flush()

    def _on_FetchObjectReceived(self, conn: MoqConnection, event: ev.FetchObjectReceived) -> None:
        upstream = self._catalog_fetch(conn, event.request_id)
        if upstream is not None:
            group = upstream.group(event.group)
            if self._relay_catalog_object(upstream, group, event.object_id, event.payload, event.extensions,
                                          event.priority):
                upstream.fetched_group = group
            return
        p = self._fetch_proxies.get((id(conn), event.request_id))
        if p is not None and not p.conn.session.closed:
            p.conn.session.send_fetch_object(p.stream(), event.group, event.object_id, event.payload,
                                             event.extensions or None, subgroup=event.subgroup, priority=event.priority,
                                             datagram=event.datagram)
            p.conn.flush()

    def _on_FetchRangeUnavailable(self, conn: MoqConnection, event: ev.FetchRangeUnavailable) -> None:
        p = self._fetch_proxies.get((id(conn), event.request_id))
        if p is not None and not p.conn.session.closed:
            p.conn.session.send_fetch_range_end(p.stream(), event.group, event.object_id, unknown=event.unknown)
            p.conn.flush()

    def _on_FetchEnded(self, conn: MoqConnection, event: ev.FetchEnded) -> None:
        upstream = self._catalog_fetch(conn, event.request_id, done=True)
        if upstream is not None:
            self._catalog_fetched(upstream, event.code)
            return
        key = (id(conn), event.request_id)
        p = self._fetch_proxies.get(key)
        if p is None or p.ended:
            return
        p.ended = True
        if p.answered:
            del self._fetch_proxies[key]
        # (else kept: "The FETCH_OK or REQUEST_ERROR can come at any time relative to object delivery")
        if p.conn.session.closed:
            return
        if event.code is None:
            p.conn.session.end_fetch_stream(p.stream())
        elif p.stream_id is not None:
            p.conn.session.reset_fetch_stream(p.stream_id, event.code)
        p.conn.flush()

    def _on_FetchCancelled(self, conn: MoqConnection, event: ev.FetchCancelled) -> None:
        for key, p in list(self._fetch_proxies.items()):
            if p.conn is conn and p.request_id == event.request_id:
                del self._fetch_proxies[key]
                if p.stream_id is not None:
                    conn.session.reset_fetch_stream(p.stream_id, StreamResetCode.CANCELLED)
                p.cancel_upstream()
        entry = self._fetch_streams.pop((id(conn), event.request_id), None)
        if entry is not None and conn.queued_bytes(entry[1]):
            conn.session.reset_fetch_stream(entry[1], StreamResetCode.CANCELLED)
            conn.forget_stream(entry[1])

    def _fanout(self, namespace: tuple[str, ...], track: str) -> TrackFanout | None:
        """The fan-out of a track this relay holds now (a local broadcast's or a relayed one's)."""
        source = self._local_source("/".join(namespace))
        upstream = self._tracks.get((namespace, track))
        if source is not None and (upstream is None or track in source.fanouts):
            return source.fanouts.get(track)
        return upstream.fanout if upstream is not None else None

    def _on_TrackStatusRequested(self, conn: MoqConnection, event: ev.TrackStatusRequested) -> None:
        # draft 16: treated "identically as if it had received a SUBSCRIBE": authorized as one
        if self._denied(conn, event, self.access.may_subscribe, "/".join(event.namespace)):
            return
        fanout = self._fanout(event.namespace, event.track_name)
        if fanout is not None:
            conn.session.request_ok(event.request_id, fanout.cache.largest)
            return
        # not held here: asked of its publisher, as a SUBSCRIBE or FETCH of it would be (draft 16 MAY)
        publisher = None if self._local_source("/".join(event.namespace)) else self._publisher_for(event.namespace)
        if publisher is None:
            conn.session.request_error(event.request_id, RequestError.DOES_NOT_EXIST, "no such track")
            return
        key = (id(publisher), publisher.session.track_status(event.namespace, event.track_name))
        publisher.flush()
        self._status_proxies[key] = (conn, event.request_id)
        self._call_later(TRACK_STATUS_WAIT, self._status_answered, key, None)

    def _status_answered(self, key: tuple[int, int], answer) -> bool:
        """A TRACK_STATUS passed on is answered (RequestAccepted / RequestFailed of the publisher;
        None: it did not answer in time): its asker gets the same answer. False if it was not one."""
        asked = self._status_proxies.pop(key, None)
        if asked is None:
            return False
        conn, request_id = asked
        if conn.session.closed:
            return True
        if isinstance(answer, ev.RequestAccepted):
            largest = answer.params.get(PARAM_LARGEST_OBJECT)
            conn.session.request_ok(request_id, decode_location_param(bytes(largest)) if largest else None)
        elif isinstance(answer, ev.RequestFailed):
            conn.session.request_error(request_id, answer.error_code, answer.reason, retry_after=answer.retry_after)
        else:
            conn.session.request_error(request_id, RequestError.TIMEOUT, "the publisher did not answer")
        conn.flush()
        return True

    def _on_NamespacePublished(self, conn: MoqConnection, event: ev.NamespacePublished) -> None:
        path = "/".join(event.namespace)
        if self._denied(conn, event, self.access.may_publish_over_moq, path):
            return
        owner = self._published.get(event.namespace)
        if owner is not None and owner[0] is not conn and not owner[0].session.closed:
            # the newcomer is authorized for the namespace (checked above): it takes over, as an
            # RTMP publisher does, so a restarted ingest gets its names back at once
            log.warning("%s: namespace %s taken over by %s", owner[0].peer, _label(event.namespace), conn.peer)
            # draft 16: the one it was taken from is told no more SUBSCRIBEs for it come its way
            owner[0].session.publish_namespace_cancel(owner[1], RequestError.UNINTERESTED,
                                                      "the namespace is published by another session")
            owner[0].flush()
        self._published[event.namespace] = (conn, event.request_id)
        previous = owner[0] if owner is not None else None
        for upstream in list(self._tracks.values()):  # tracks waiting for this publisher, or taken over
            if upstream.namespace[: len(event.namespace)] != event.namespace:
                continue
            if upstream.conn is conn:
                if upstream.streams_expected is not None and upstream.orphaned_at is None:
                    upstream.renewed_by = conn  # after its PUBLISH_DONE: subscribed again once it ends (_renew)
                continue
            if upstream.orphaned_at is not None or (previous is not None and upstream.conn is previous):
                self._resume(upstream, conn)
        conn.session.request_ok(event.request_id)
        log.info("%s: publishes namespace %s", conn.peer, _label(event.namespace))
        self._announce(event.namespace)

    def _on_NamespaceDone(self, conn: MoqConnection, event: ev.NamespaceDone) -> None:
        for ns, (owner, rid) in list(self._published.items()):
            if owner is conn and rid == event.request_id:
                del self._published[ns]
                self._announce(ns, done=True)

    def _on_NamespaceSubscribeRequested(self, conn: MoqConnection, event: ev.NamespaceSubscribeRequested) -> None:
        if self._denied(conn, event, self.access.may_list, "/".join(event.prefix)):
            return
        prefixes = self._ns_prefixes.setdefault(id(conn), {})
        for prefix in prefixes.values():
            n = min(len(prefix), len(event.prefix))
            if prefix[:n] == event.prefix[:n]:
                # draft 16 SUBSCRIBE_NAMESPACE: a prefix that one of the session's begins with, or
                # that begins with one of them, MUST get PREFIX_OVERLAP (what they match overlaps)
                conn.session.namespace_subscription_error(event.stream_id, event.request_id, RequestError.PREFIX_OVERLAP,
                                                          f"overlaps the namespace subscription {_label(prefix)}")
                log.info("%s: SUBSCRIBE_NAMESPACE %s refused (PREFIX_OVERLAP with %s)", conn.peer,
                         _label(event.prefix), _label(prefix))
                return
        conn.session.namespace_subscription_ok(event.stream_id, event.request_id)
        wants_namespaces = event.options in (NAMESPACE_OPTION_NAMESPACE, NAMESPACE_OPTION_BOTH)
        wants_tracks = event.options in (NAMESPACE_OPTION_PUBLISH, NAMESPACE_OPTION_BOTH)
        prefixes[event.stream_id] = event.prefix
        self._ns_subscribers[(id(conn), event.stream_id)] = (conn, event.prefix, wants_namespaces, wants_tracks,
                                                             event.forward)
        if wants_namespaces:
            told = self._ns_told[(id(conn), event.stream_id)] = set()
            for ns in self._known_namespaces():
                if ns[: len(event.prefix)] == event.prefix and ns not in told:
                    told.add(ns)
                    conn.session.send_namespace(event.stream_id, ns[len(event.prefix):])
        if wants_tracks:
            for (namespace, track), upstream in list(self._tracks.items()):
                if namespace[: len(event.prefix)] == event.prefix and upstream.alias is not None:
                    self._publish_to(conn, namespace, track, upstream.fanout, event.forward)
            for name in self.registry.names():
                source = self._local_source(name) if tuple(name.split("/"))[: len(event.prefix)] == event.prefix else None
                if source is not None:
                    self._publish_local(source, [self._ns_subscribers[(id(conn), event.stream_id)]])

    def _on_NamespaceUnsubscribed(self, conn: MoqConnection, event: ev.NamespaceUnsubscribed) -> None:
        self._ns_subscribers.pop((id(conn), event.stream_id), None)
        self._ns_told.pop((id(conn), event.stream_id), None)
        self._ns_prefixes.get(id(conn), {}).pop(event.stream_id, None)

    # -- upstream answers -----------------------------------------------------------------------
    def _on_SubscribeAccepted(self, conn: MoqConnection, event: ev.SubscribeAccepted) -> None:
        upstream = self._by_request.get((id(conn), event.request_id))
        if upstream is None:
            return
        upstream.alias = event.track_alias
        self._unknown_upstream.pop((upstream.namespace, upstream.track), None)  # known there now
        upstream.fanout.track_extensions = event.extensions  # draft 16: the latest set replaces the cached one
        self._by_alias[(id(conn), event.track_alias)] = upstream
        if event.largest is not None and upstream.group_offset == 0:
            upstream.largest = event.largest
        if upstream.catalog_join is not None and upstream.catalog_join.wants_fetch(event.largest):
            # MSF: the SUBSCRIBE brings only later versions; the current one comes by a joining FETCH
            self._catalog_fetches[(id(conn), upstream.fetch_catalog(asyncio.get_running_loop().time()))] = upstream
            self._call_later(CATALOG_FETCH_WAIT, self._catalog_not_fetched, upstream)  # at its deadline
        self._accept_waiting(upstream, upstream)

    def _on_RequestFailed(self, conn: MoqConnection, event: ev.RequestFailed) -> None:
        if self._status_answered((id(conn), event.request_id), event):
            return
        if conn is self.upstream and event.request_id == self._upstream_listing:
            # subscribers here still find its broadcasts (they ask upstream for what is not here),
            # but later, at their retry, and one that plays only what is announced finds none
            self._upstream_listing = None
            log.warning("%s refused to list its broadcasts to this relay: %s (code %d); this relay presents "
                        "[auth] node_token (RTMPQ_AUTH_NODE_TOKEN)", conn.peer, event.reason, event.error_code)
            return
        catalog = self._catalog_fetch(conn, event.request_id, done=True)
        if catalog is not None:  # the publisher refused our catalog's joining FETCH
            self._catalog_fetched(catalog, None)
            return
        proxy = self._fetch_proxies.pop((id(conn), event.request_id), None)
        if proxy is not None:  # a FETCH we passed upstream was refused there
            proxy.fail(event.error_code, event.reason)
            return
        pushed = self._subs.pop((id(conn), event.request_id), None)
        if pushed is not None:  # the peer refused a track we PUBLISHed to it
            pushed.fanout.unsubscribe(pushed.sub)
            return
        upstream = self._by_request.pop((id(conn), event.request_id), None)
        if upstream is None:
            return
        if upstream.resumed_from is not None and event.error_code == RequestError.DOES_NOT_EXIST \
                and not self.stopping and self._tracks.get((upstream.namespace, upstream.track)) is upstream:
            # a resubscription after the source was lost, refused: a relay above that restarted
            # answers before its publisher is back (both reconnect at once). The subscribers stay
            # for the rest of the grace period (expire_orphans) and the relay asks again
            upstream.conn, upstream.alias, upstream.orphaned_at = None, None, upstream.resumed_from
            upstream.resume_delay = min(max(upstream.resume_delay * 2, RESUME_RETRY_MIN), RESUME_RETRY_MAX)
            self._call_later(upstream.resume_delay, self._resume_again, upstream)
            log.info("%s: not back at %s yet (%s); asking again in %g s", _label(upstream.namespace, upstream.track),
                     conn.peer, event.reason, upstream.resume_delay)
            return
        self._tracks.pop((upstream.namespace, upstream.track), None)
        key = (upstream.namespace, upstream.track)
        if event.error_code == RequestError.DOES_NOT_EXIST and key not in self._unknown_upstream:
            if len(self._unknown_upstream) >= MAX_UNKNOWN_UPSTREAM_REMEMBERED:
                del self._unknown_upstream[next(iter(self._unknown_upstream))]
            self._unknown_upstream[key] = time.monotonic()  # (its first try was said at INFO)
        elif event.error_code != RequestError.DOES_NOT_EXIST:
            self._unknown_upstream.pop(key, None)
        reason = event.reason
        if event.error_code in (RequestError.UNAUTHORIZED, RequestError.MALFORMED_AUTH_TOKEN,
                                RequestError.EXPIRED_AUTH_TOKEN):
            # refused to this relay, whatever its subscribers presented here: the operator of this
            # relay reads why (the one above logs only this relay's address), and its subscribers
            # read that it is this relay's token, not theirs
            log.warning("%s: %s refused this relay: %s; this relay presents [auth] node_token "
                        "(RTMPQ_AUTH_NODE_TOKEN), or one minted from its [auth] secret: it needs a node token "
                        "(rtmpq token --act relay) of the secret there", _label(upstream.namespace, upstream.track),
                        conn.peer, event.reason.replace("/".join(upstream.namespace), _label(upstream.namespace)))
            reason = f"the relay above refused this relay ({event.reason}): its node token is missing or not valid there"
        for sub_conn, request in upstream.waiting:
            if not sub_conn.session.closed:
                self._refuse_waiting(sub_conn, request, event.error_code, reason)
                sub_conn.flush()
        self._fanouts_ended([upstream.fanout])  # subscribers it had (a renewed one's, _renew): the track ended

    def _upstream_unanswered(self, upstream: UpstreamTrack, conn: MoqConnection, request_id: int) -> None:
        """A SUBSCRIBE upstream still unanswered after UPSTREAM_ANSWER_WAIT: withdrawn there, and
        its subscribers here refused TIMEOUT (draft 16: every SUBSCRIBE gets exactly one answer)."""
        if self._by_request.get((id(conn), request_id)) is not upstream or upstream.alias is not None \
                or conn.session.closed:
            return  # answered, or its session is gone (handled as a lost source)
        log.warning("%s: %s did not answer the subscription in %g s", _label(upstream.namespace, upstream.track),
                    conn.peer, UPSTREAM_ANSWER_WAIT)
        conn.session.unsubscribe(request_id)
        conn.flush()
        self._on_RequestFailed(conn, ev.RequestFailed(request_id, RequestError.TIMEOUT,
                                                      "the publisher did not answer the subscription"))

    def _on_TrackPublished(self, conn: MoqConnection, event: ev.TrackPublished) -> None:
        if self._denied(conn, event, self.access.may_publish_over_moq, "/".join(event.namespace)):
            return
        if self._rungs_made_here(event.namespace, event.track_name):
            # (another transcoder node's rungs are taken over instead: _take_over, and it gives way)
            log.warning("%s: %s offers the broadcast's renditions (%s); refused: this node makes them itself "
                        "([transcode] ladder, isolate = false)", _label(event.namespace), conn.peer, event.track_name)
            conn.session.request_error(event.request_id, RequestError.UNINTERESTED,
                                       "this node makes the broadcast's renditions itself")
            return
        key = (event.namespace, event.track_name)
        existing = self._tracks.get(key)
        if existing is not None and existing.orphaned_at is None and existing.streams_expected is not None:
            self._publish_again(existing, conn, event)
            return
        if existing is not None and existing.pushed and existing.orphaned_at is None and existing.conn is not conn:
            # PUBLISHed by another session, which may be dead without our knowing it yet (a
            # restarted transcoder PUBLISHes its rungs again at once, within the old session's
            # idle timeout): the newcomer is authorized for it (checked above) and takes it over,
            # as a namespace is taken over (_on_NamespacePublished)
            self._take_over(existing, conn)
        if existing is not None and existing.orphaned_at is not None:  # its publisher is back
            existing.conn, existing.orphaned_at, existing.check_offset = conn, None, True
            existing.request_id, existing.alias = event.request_id, event.track_alias
            existing.new_session()
            # what the new publisher was told (FORWARD=0: nothing until we ask, _update_forward)
            existing.on_demand, existing.forward = not event.forward, event.forward
            existing.fanout.track_extensions = event.extensions
            self._by_request[(id(conn), event.request_id)] = existing
            self._by_alias[(id(conn), event.track_alias)] = existing
            conn.session.publish_ok(event.request_id)
            self._update_forward()  # its subscribers are waiting: ask for objects now
            return
        if existing is not None and existing.conn is conn and not existing.pushed and existing.alias is None:
            self._take_crossing_publish(existing, conn, event)
            return
        if existing is not None and existing.conn is conn:
            # this session already publishes it to us, or we subscribed to it there: a second
            # subscription with the same role (draft 16 "Subscriptions")
            conn.session.request_error(event.request_id, RequestError.DUPLICATE_SUBSCRIPTION,
                                       "this session already has a subscription to the track")
            return
        local = self._local_source("/".join(event.namespace))
        if existing is not None or (local is not None and event.track_name in local.fanouts):
            conn.session.request_error(event.request_id, RequestError.INTERNAL_ERROR, "track already published")
            return
        upstream = UpstreamTrack(conn, event.namespace, event.track_name, pushed=(event.request_id, event.track_alias),
                                 bounds=self.cache_bounds)
        upstream.fanout.label = _label(event.namespace, event.track_name)
        upstream.on_demand, upstream.forward = not event.forward, event.forward
        upstream.fanout.track_extensions = event.extensions
        self._tracks[key] = upstream
        self._by_request[(id(conn), event.request_id)] = upstream
        self._by_alias[(id(conn), event.track_alias)] = upstream
        conn.session.publish_ok(event.request_id)
        log.info("%s: publishes track %s", conn.peer, _label(event.namespace, event.track_name))
        for other, prefix, _, wants_tracks, forward in list(self._ns_subscribers.values()):
            if wants_tracks and event.namespace[: len(prefix)] == prefix and not other.session.closed:
                self._publish_to(other, event.namespace, event.track_name, upstream.fanout, forward)
                other.flush()

    def _rungs_made_here(self, namespace: tuple[str, ...], track: str) -> bool:
        """Whether ``track`` PUBLISHed into ``namespace`` is a transcoder's rung (or its list) for a
        broadcast of this process whose catalog already lists rungs made here (``rtmpq up
        --ladder`` on threads): a second transcoder, whose list would have replaced this node's
        rungs' catalog entries and left their frames to this one."""
        if track != RENDITIONS_TRACK and not RUNG_NAME.search(track):
            return False
        broadcast = self.registry.get("/".join(namespace))
        return broadcast is not None and any(broadcast.catalog.is_rung(t.name) for t in broadcast.catalog.tracks)

    def _publish_again(self, old: UpstreamTrack, conn: MoqConnection, event: ev.TrackPublished) -> None:
        """A PUBLISH of a track whose subscription (ours, or one PUBLISHed to us) got PUBLISH_DONE and
        waits for its late streams: draft 16 "Subscriptions", the publisher terminated that one with
        PUBLISH_DONE, so this is a new subscription, not a duplicate. It feeds the same fan-out: the
        subscribers go on, its groups numbered above the old one's (leaving ids for the late streams
        not begun yet), and the old subscription's late streams end here as before."""
        key = (event.namespace, event.track_name)
        new = UpstreamTrack(conn, event.namespace, event.track_name, pushed=(event.request_id, event.track_alias),
                            fanout=old.fanout)
        new.group_offset, new.check_offset = old.group_offset, True
        new.last_group = old.ceiling = old.last_group + old.unseen_streams()
        new.on_demand, new.forward = not event.forward, event.forward
        new.fanout.track_extensions = event.extensions
        self._tails.add(old)
        self._tracks[key] = new
        self._by_request[(id(conn), event.request_id)] = new
        self._by_alias[(id(conn), event.track_alias)] = new
        conn.session.publish_ok(event.request_id)
        log.info("%s: publishes track %s again after its PUBLISH_DONE; its subscribers go on", conn.peer,
                 _label(event.namespace, event.track_name))
        self._accept_waiting(old, new)  # (SUBSCRIBEs still waiting for the old one's SUBSCRIBE_OK)
        self._update_forward()

    def _accept_waiting(self, held_by: UpstreamTrack, upstream: UpstreamTrack) -> None:
        """Accept the SUBSCRIBEs ``held_by`` holds (waiting for its track) onto ``upstream``, now up."""
        waiting, held_by.waiting = held_by.waiting, []
        for sub_conn, request in waiting:
            if not sub_conn.session.closed:
                self._accept(sub_conn, request, upstream.fanout, upstream)
                sub_conn.flush()

    def _finish_tail(self, old: UpstreamTrack) -> None:
        """The late streams of a subscription whose track was published again are over (all ended,
        its grace is over, or its session closed): what of them is still open is cut short."""
        self._tails.discard(old)
        if old.alias is not None:
            self._by_alias.pop((id(old.conn), old.alias), None)
        groups = list(old.open_subgroups)
        old.open_subgroups.clear()
        if old.fanout.state:
            for group in groups:
                old.fanout.end_group(group)
        else:
            old.fanout.cut_open_groups(StreamResetCode.SESSION_CLOSED, groups)

    def _take_crossing_publish(self, upstream: UpstreamTrack, conn: MoqConnection, event: ev.TrackPublished) -> None:
        """``conn`` PUBLISHes the track our SUBSCRIBE there still waits an answer for. Draft 16
        ("Subscriptions"): a subscriber that gets a PUBLISH for a track with a subscription in the
        Pending (Subscriber) state "MUST ensure the subscription it initiated transitions to the
        Terminated state before sending PUBLISH_OK": UNSUBSCRIBE ours, then take the PUBLISH (an
        answer to ours that crosses the UNSUBSCRIBE is then nobody's and ignored)."""
        self._by_request.pop((id(conn), upstream.request_id), None)
        conn.session.unsubscribe(upstream.request_id)
        upstream.pushed = True
        upstream.request_id, upstream.alias = event.request_id, event.track_alias
        upstream.on_demand, upstream.forward = not event.forward, event.forward
        upstream.fanout.track_extensions = event.extensions
        self._by_request[(id(conn), event.request_id)] = upstream
        self._by_alias[(id(conn), event.track_alias)] = upstream
        conn.session.publish_ok(event.request_id)
        log.info("%s: publishes track %s (our SUBSCRIBE there, unanswered, withdrawn)", conn.peer,
                 _label(event.namespace, event.track_name))
        self._accept_waiting(upstream, upstream)

    def _on_RequestUpdated(self, conn: MoqConnection, event: ev.RequestUpdated) -> None:
        """REQUEST_UPDATE of a subscription served here (a SUBSCRIBE, or a PUBLISH of ours): its
        filter (``_update_filter``), DELIVERY_TIMEOUT and FORWARD state. FORWARD=1 starts delivery
        as the filter says; FORWARD=0 stops it, resetting the groups in progress (the draft sends no
        objects in that state). REQUEST_OK carries the Largest Location: a subscriber whose range
        grew past a gap FETCHes what it missed."""
        s = self._subs.get((id(conn), event.existing_request_id))
        if s is None:  # it ended, its PUBLISH_DONE maybe still on its way (an id never used closed
            # the session in MoqSession); NOT_SUPPORTED read as "no REQUEST_UPDATE here"
            conn.session.request_error(event.request_id, RequestError.DOES_NOT_EXIST, "the subscription has ended")
            return
        if event.filter_type is not None and not self._update_filter(s, event):
            return
        if event.delivery_timeout_ms is not None:
            self._set_delivery_timeout(s, event.delivery_timeout_ms)
        if event.forward is not None:
            self._set_forward(s, event.forward)
        conn.session.request_ok(event.request_id, s.fanout.cache.largest or s.largest)
        if s.sub.range_ended:
            self.end_ranges()  # an End Group moved below what was sent: PUBLISH_DONE now, after REQUEST_OK

    def _set_forward(self, s: Subscription, forward: bool) -> None:
        """A subscriber's new Forward State (REQUEST_UPDATE, PUBLISH_OK): 1 starts delivery as the
        filter says; 0 stops it, resetting the groups in progress (no objects in that state)."""
        if forward == s.forward:
            return
        s.forward = forward
        if forward:
            self._start_delivery(s)
            self._wake_tick()  # an on-demand publisher is asked for objects at once
        else:
            s.fanout.unsubscribe(s.sub)
            s.sub.stalled_since = None  # nothing is owed to it now
        log.info("%s: %s FORWARD=%d", s.conn.peer, s.label, forward)

    def _set_delivery_timeout(self, s: Subscription, ms: int) -> None:
        """A subscriber's DELIVERY_TIMEOUT (REQUEST_UPDATE, PUBLISH_OK): the budget of what it is
        owed from now on, objects already in flight too; the track's, if smaller (draft 16)."""
        s.sub.set_delivery_timeout(s.fanout.delivery_timeout(ms / 1000))
        log.info("%s: %s delivery timeout %d ms (asked %d ms)", s.conn.peer, s.label,
                 round(s.sub.delivery_timeout * 1000), ms)

    def _on_PublishAccepted(self, conn: MoqConnection, event: ev.PublishAccepted) -> None:
        """PUBLISH_OK of a track we PUBLISHed: its DELIVERY_TIMEOUT is the subscription's, its
        FORWARD parameter sets the Forward State (draft 16)."""
        s = self._subs.get((id(conn), event.request_id))
        if s is None:
            return
        if event.delivery_timeout_ms is not None:
            self._set_delivery_timeout(s, event.delivery_timeout_ms)
        if event.forward is not None:
            self._set_forward(s, event.forward)

    def _update_filter(self, s: Subscription, event: ev.RequestUpdated) -> bool:
        """A REQUEST_UPDATE's SUBSCRIPTION_FILTER replaces ``s``'s filter (fanout ``set_range``). An
        AbsoluteRange ending before its start cannot be served: draft 16 answers REQUEST_ERROR and
        ends the subscription with PUBLISH_DONE (UPDATE_FAILED); returns False then."""
        refusal = _range_refusal(event, None)
        if refusal:
            s.conn.session.request_error(event.request_id, RequestError.INVALID_RANGE, refusal)
            del self._subs[(id(s.conn), s.request_id)]
            s.fanout.unsubscribe(s.sub)  # its streams are reset before PUBLISH_DONE
            self._publish_done(s, PublishDoneStatus.UPDATE_FAILED, f"REQUEST_UPDATE failed: {refusal}")
            return False
        largest = s.fanout.cache.largest or s.largest
        if event.filter_type == FILTER_LARGEST_OBJECT:
            start = (largest[0], largest[1] + 1) if largest else (0, 0)
        elif event.filter_type == FILTER_NEXT_GROUP_START:
            start = (largest[0] + 1, 0) if largest else (0, 0)
        else:
            start = event.start
        s.filter_type = event.filter_type
        s.fanout.set_range(s.sub, start, event.end_group, time.monotonic())
        log.info("%s: %s filter %d from %s to %s", s.conn.peer, s.label, event.filter_type, start,
                 "the end" if event.end_group is None else f"group {event.end_group}")
        return True

    def _on_RequestAccepted(self, conn: MoqConnection, event: ev.RequestAccepted) -> None:
        # a TRACK_STATUS passed on, or (nothing to do) a REQUEST_UPDATE of ours (FORWARD of an on-demand track)
        self._status_answered((id(conn), event.request_id), event)

    def _update_forward(self) -> None:
        """Ask an on-demand track's publisher for objects while it has subscribers (REQUEST_UPDATE
        FORWARD=1), and to stop when the last one left (FORWARD=0)."""
        for upstream in list(self._tracks.values()):
            if not upstream.on_demand or upstream.alias is None or upstream.conn is None:
                continue
            wanted = bool(upstream.fanout.subscribers)
            if wanted != upstream.forward and not upstream.conn.session.closed:
                upstream.forward = wanted
                upstream.conn.session.request_update(upstream.request_id, forward=wanted)
                upstream.conn.flush()
                log.info("%s: %s", _label(upstream.namespace, upstream.track),
                         "subscribed: asking its publisher for objects" if wanted else "no subscribers: objects paused")

    def _added_tracks(self, upstream: UpstreamTrack, payload) -> None:
        """A node's list of the tracks it adds to a broadcast (an MSF catalog on RENDITIONS_TRACK):
        the broadcast's catalog is re-issued with them."""
        try:
            added = Catalog.from_json(bytes(payload)).tracks
        except Exception as exc:  # noqa: BLE001 - a bad list costs only that list
            log.warning("%s: bad track list from %s: %s", _label(upstream.namespace), upstream.conn.peer, exc)
            return
        self._set_added(upstream.namespace, added)
        log.info("%s: tracks added by %s: %s", _label(upstream.namespace), upstream.conn.peer,
                 ", ".join(t.name for t in added))

    def _set_added(self, namespace: tuple[str, ...], added: tuple) -> None:
        """The tracks a node adds to a broadcast (() when it is gone): its catalog is re-issued with
        them listed, and in-process readers of a local broadcast are told (watch_added)."""
        if added:
            self._added[namespace] = added
        else:
            self._added.pop(namespace, None)
        name = "/".join(namespace)
        source = self._sources.get(name) if not added else self._local_source(name)
        if source is not None and not source.ended:
            source.set_added(added)
        else:
            self._reissue_relayed_catalog(namespace)
        for watcher in tuple(self._added_watchers.get(name, ())):
            try:
                watcher()
            except Exception:  # a reader's bug must not stop the relay's handling of the event
                log.exception("%s: an in-process reader failed", _label(namespace))

    def _reissue_relayed_catalog(self, namespace: tuple[str, ...]) -> None:
        """A relayed broadcast's last catalog again, as a new group, with the added tracks listed
        (its publisher sends a catalog only when its own tracks change). Its later groups are
        shifted above this one."""
        catalog = self._tracks.get((namespace, CATALOG_TRACK))
        latest = catalog.fanout.cache.latest(time.monotonic()) if catalog is not None else None
        if latest is None or not latest.objects or latest.objects[0].status:
            return
        first = latest.objects[0]
        try:  # from the publisher's own catalog: the cached one lists the tracks added before (was: a
            # rung whose node left stayed listed, and an edge below waited for it before serving anything)
            own = catalog.own_catalog if catalog.own_catalog is not None else bytes(first.payload)
            merged = with_added_tracks(Catalog.from_json(own), self._added.get(namespace, ()))
        except Exception:  # noqa: BLE001 - an unreadable catalog stays as it came
            return
        group = catalog.last_group + 1
        catalog.last_group = group
        catalog.group_offset += 1
        catalog.fanout.publish_object(group, 0, merged.to_json(), first.extensions, time.monotonic())
        catalog.fanout.end_group(group)

    def _on_ObjectReceived(self, conn: MoqConnection, event: ev.ObjectReceived) -> None:
        upstream = self._by_alias.get((id(conn), event.track_alias))
        if upstream is not None and upstream.beyond_ceiling(event.group):
            return  # a late group of a subscription since replaced, with no id left for it (_publish_again)
        if event.status != ObjectStatus.NORMAL:
            # End of Group / End of Track (the parser lets no other status through): an Object like
            # any other (draft 16: a relay forwards every object, its status unchanged, and caches
            # it), passed on as a status object on its subgroup's stream (never as an empty Normal
            # one); then the subgroup ends here for every subscriber, as its FIN would end it
            if upstream is None:
                return
            group = upstream.group(event.group)
            upstream.fanout.publish_object(group, event.object_id, b"", None, time.monotonic(), event.subgroup,
                                           _publisher_priority(upstream, event), event.end_of_group, event.status)
            self._subgroup_over(upstream, group, event.subgroup)
            if event.status == ObjectStatus.END_OF_TRACK and upstream.end_of_track is None:
                # the track is over even if no PUBLISH_DONE follows. End of Track says nothing of
                # the groups before it, whose streams may still be on their way (a relay above
                # sends the newest group first): the subscribers below have the End of Track
                # object, and the subscriptions end on the publisher's PUBLISH_DONE (its stream
                # count), or after the late-stream grace
                upstream.end_of_track = group
                self._call_later(LATE_STREAM_GRACE, self._end_upstream, upstream)
            return
        if upstream is not None and upstream.track == RENDITIONS_TRACK:
            newest = upstream.last_group
            if upstream.group(event.group) > newest:  # not an older version overtaken by a newer one
                self._added_tracks(upstream, event.payload)
            return
        if upstream is None:
            return
        priority = _publisher_priority(upstream, event)
        if upstream.track == CATALOG_TRACK:
            self._relay_catalog_object(upstream, upstream.group(event.group), event.object_id, event.payload,
                                       event.extensions, priority)
            return
        upstream.fanout.publisher_priority = priority
        group = upstream.group(event.group)
        upstream.subgroup_seen(group, event.subgroup)
        upstream.fanout.publish_object(group, event.object_id, event.payload, event.extensions or None,
                                       time.monotonic(), event.subgroup, priority, event.end_of_group)

    def _on_DatagramObjectReceived(self, conn: MoqConnection, event: ev.DatagramObjectReceived) -> None:
        """An object the publisher (or relay above) sent as an OBJECT_DATAGRAM: cached, and passed
        on to every subscriber as a datagram, its ids, extensions, status and END_OF_GROUP as they
        came (draft 16: a relay MUST NOT change an object's Forwarding Preference)."""
        upstream = self._by_alias.get((id(conn), event.track_alias))
        if upstream is None or upstream.track == RENDITIONS_TRACK:
            return  # (the renditions track is rtmpq's own, on streams)
        group = upstream.group(event.group)
        upstream.fanout.publish_datagram(group, event.object_id, event.payload, event.extensions or None,
                                         time.monotonic(), event.priority, event.status, event.end_of_group)
        if event.status == ObjectStatus.END_OF_TRACK and upstream.end_of_track is None:
            upstream.end_of_track = group  # as on a stream (_on_ObjectReceived)
            self._call_later(LATE_STREAM_GRACE, self._end_upstream, upstream)

    def _relay_catalog_object(self, upstream: UpstreamTrack, group: int, object_id: int, payload, extensions,
                              priority: int) -> bool:
        """A relayed catalog's object (live, or from its joining FETCH; ``group`` in relay ids) into
        its fan-out, unless it is older than what is held; False if it was not taken."""
        if not upstream.takes(group, object_id):
            return False
        if object_id == 0:  # (a later object of the group is a delta: the re-issue starts from the whole one)
            upstream.own_catalog = bytes(payload)
        if self._added.get(upstream.namespace):
            try:  # a relayed broadcast: its catalog lists the tracks nodes added here
                payload = with_added_tracks(Catalog.from_json(bytes(payload)), self._added[upstream.namespace]).to_json()
            except Exception:  # noqa: BLE001 - an unreadable catalog is passed on as it came
                pass
        upstream.fanout.publisher_priority = priority
        upstream.fanout.publish_object(group, object_id, payload, extensions or None, time.monotonic())
        return True

    def _on_SubgroupEnded(self, conn: MoqConnection, event: ev.SubgroupEnded) -> None:
        upstream = self._by_alias.get((id(conn), event.track_alias))
        if upstream is not None and upstream.beyond_ceiling(event.group):
            self._dropped_late_group(upstream, event.group)
        elif upstream is not None:
            self._subgroup_over(upstream, upstream.group(event.group), event.subgroup)
            self._stream_finished(upstream)

    def _on_SubgroupReset(self, conn: MoqConnection, event: ev.SubgroupReset) -> None:
        upstream = self._by_alias.get((id(conn), event.track_alias))
        if upstream is not None and upstream.beyond_ceiling(event.group):
            self._dropped_late_group(upstream, event.group)
        elif upstream is not None:
            group = upstream.group(event.group)
            upstream.fanout.reset_group(group, event.code, subgroup=event.subgroup)
            if upstream.subgroup_ended(group, event.subgroup):
                upstream.fanout.end_group(group)  # its other subgroups had ended: the group is over
            self._stream_finished(upstream)

    def _dropped_late_group(self, upstream: UpstreamTrack, source_group: int) -> None:
        """A late stream of a subscription replaced by a new publish (``_publish_again``) ended, its
        group not taken: its id would be one of the new publish's (a publisher that skips group ids)."""
        log.warning("%s: late group %d of the publish before PUBLISH_DONE dropped: the track was published again "
                    "and its groups take those ids", _label(upstream.namespace, upstream.track), source_group)
        self._stream_finished(upstream)

    def _on_PartialObjectExpired(self, conn: MoqConnection, event: ev.PartialObjectExpired) -> None:
        upstream = self._by_alias.get((id(conn), event.track_alias)) if event.track_alias is not None else None
        if upstream is not None:
            what = f"{_label(upstream.namespace, upstream.track)} group {event.group}"
        elif event.track_alias is not None:
            what = f"track alias {event.track_alias} (not a track it publishes here) group {event.group}"
        elif event.request_id is not None:
            what = f"fetch {event.request_id}"
        else:
            what = "a stream whose header never completed"
        self.errors["partial_object_timeout"] += 1
        log.warning("%s: stopping its stream %d of %s: an object incomplete for %.0f s (%d bytes held), longer "
                    "than [moq] partial_object_timeout (%g s); the session goes on", conn.peer, event.stream_id,
                    what, event.seconds, event.held_bytes, self.partial_object_timeout)

    @staticmethod
    def _subgroup_over(upstream: UpstreamTrack, group: int, subgroup: int) -> None:
        """A subgroup ended upstream (its FIN, or an End of Group / End of Track object on its
        stream, after which nothing more may come on it): its streams end downstream, and the
        group when no other subgroup of it is open upstream."""
        if upstream.subgroup_ended(group, subgroup):
            upstream.fanout.end_group(group)
        else:
            upstream.fanout.end_subgroup(group, subgroup)

    def _stream_finished(self, upstream: UpstreamTrack) -> None:
        upstream.streams_done += 1
        if upstream.streams_expected is not None and upstream.streams_done >= upstream.streams_expected:
            self._end_upstream(upstream)

    def _renew(self, upstream: UpstreamTrack) -> bool:
        """A track ended by PUBLISH_DONE whose session announced its namespace again since: its
        subscribers go on with a new SUBSCRIBE there, its groups above the last (True), instead of
        PUBLISH_DONE."""
        conn, upstream.renewed_by = upstream.renewed_by, None
        if conn is None or conn.session.closed or self.stopping or self._publisher_for(upstream.namespace) is not conn \
                or not any(s.fanout is upstream.fanout for s in self._subs.values()):
            return False
        self._cut_groups(upstream)  # late streams that never came
        upstream.end_of_track = None
        self._resume(upstream, conn)
        return True

    def _on_PublishDoneReceived(self, conn: MoqConnection, event: ev.PublishDoneReceived) -> None:
        upstream = self._by_request.pop((id(conn), event.request_id), None)
        if upstream is None:
            return
        if event.status == PublishDoneStatus.EXPIRED and not upstream.pushed:
            # only our subscription there reached its EXPIRES (draft 16), the track goes on: the
            # subscribers here continue with a new SUBSCRIBE (_renew), as after a namespace renewed
            upstream.renewed_by = conn
        # PUBLISH_DONE travels on the control stream and overtakes the last groups: end the track
        # downstream once all its streams have finished, or after a grace period
        upstream.streams_expected = event.stream_count
        if upstream.streams_done >= event.stream_count:
            self._end_upstream(upstream)
        else:
            self._call_later(LATE_STREAM_GRACE, self._end_upstream, upstream)

    def _end_upstream(self, upstream: UpstreamTrack) -> None:
        if upstream in self._tails:
            self._finish_tail(upstream)
            return
        if self._tracks.get((upstream.namespace, upstream.track)) is not upstream:
            return  # already ended
        if self._renew(upstream):
            return
        for tail in [t for t in self._tails if t.fanout is upstream.fanout]:
            self._finish_tail(tail)  # the track ends: late streams of a subscription before too
        self._tracks.pop((upstream.namespace, upstream.track), None)
        self._cut_groups(upstream)  # streams still open upstream (its late-stream grace is over)
        if upstream.alias is not None and upstream.conn is not None:
            self._by_alias.pop((id(upstream.conn), upstream.alias), None)
        self._fanouts_ended([upstream.fanout])
        for sub_conn, request in upstream.waiting:
            if not sub_conn.session.closed:
                self._refuse_waiting(sub_conn, request, RequestError.DOES_NOT_EXIST, "the publisher left")

    def _on_GoawayReceived(self, conn: MoqConnection, event: ev.GoawayReceived) -> None:
        # what it served is kept as for a lost source once it closes; the upstream link reconnects
        role = "upstream" if conn is self.upstream else "peer"
        log.info("MoQ %s %s is going away (GOAWAY%s)", role, conn.peer,
                 f", to {event.new_session_uri}" if event.new_session_uri else "")

    def _on_SessionClosed(self, conn: MoqConnection, event: ev.SessionClosed) -> None:
        self.connections.discard(conn)
        for key in [k for k in self._subs if k[0] == id(conn)]:
            s = self._subs.pop(key)
            s.fanout.subscribers.discard(s.sub)
        for stream_id in self._ns_prefixes.pop(id(conn), ()):
            self._ns_subscribers.pop((id(conn), stream_id), None)
            self._ns_told.pop((id(conn), stream_id), None)
        for key in [k for k in self._fetch_streams if k[0] == id(conn)]:
            del self._fetch_streams[key]
        for key in [k for k in self._held_fetches if k[0] == id(conn)]:
            del self._held_fetches[key]
        for key in [k for k in self._catalog_fetches if k[0] == id(conn)]:
            del self._catalog_fetches[key]
        for key, p in list(self._fetch_proxies.items()):
            if p.upstream is conn:  # the upstream went away mid-fetch
                del self._fetch_proxies[key]
                p.fail(RequestError.INTERNAL_ERROR, "the upstream session closed")
            elif p.conn is conn:
                del self._fetch_proxies[key]
                p.cancel_upstream()
        for ns, (owner, _) in list(self._published.items()):
            if owner is conn:
                del self._published[ns]
                self._announce(ns, done=True)
        for key, (asker, _) in list(self._status_proxies.items()):
            if key[0] == id(conn):  # its publisher went: no answer comes
                self._status_answered(key, ev.RequestFailed(key[1], RequestError.INTERNAL_ERROR, "the publisher left"))
            elif asker is conn:
                del self._status_proxies[key]
        for tail in [t for t in self._tails if t.conn is conn]:
            self._finish_tail(tail)
        for upstream in [t for t in self._tracks.values() if t.conn is conn]:
            self._by_request.pop((id(conn), upstream.request_id), None)
            if upstream.track == RENDITIONS_TRACK:  # the node that added tracks is gone: unlist them
                self._set_added(upstream.namespace, ())
            self._orphan(upstream, time.monotonic())
        if self.upstream is conn:
            self.upstream = None
            self._forget_upstream_namespaces()
        self._awaiting_upstream.withdraw(conn)
        self._aliases.pop(id(conn), None)

    # -- sources that come back ---------------------------------------------------------------------
    def _take_over(self, upstream: UpstreamTrack, conn: MoqConnection) -> None:
        """Another session PUBLISHes ``upstream``'s track: its old publisher is told UNSUBSCRIBE
        and forgotten, its groups in progress end, and the track waits for the new one (orphaned:
        ``_on_TrackPublished`` attaches it at once, its groups numbered above the last)."""
        old = upstream.conn
        log.warning("%s: track %s taken over by %s", old.peer, _label(upstream.namespace, upstream.track), conn.peer)
        self._by_request.pop((id(old), upstream.request_id), None)
        if upstream.alias is not None:
            self._by_alias.pop((id(old), upstream.alias), None)
        if not old.session.closed:
            old.session.unsubscribe(upstream.request_id)
            old.flush()
        upstream.conn, upstream.alias, upstream.orphaned_at = None, None, time.monotonic()
        self._cut_groups(upstream)

    def _orphan(self, upstream: UpstreamTrack, now: float) -> None:
        """The track's source session is gone: keep its subscribers for ``upstream_grace`` in case
        the source (a restarted ingest or relay above) comes back; the group in progress ends."""
        if upstream.alias is not None:
            self._by_alias.pop((id(upstream.conn), upstream.alias), None)
        if self.upstream_grace <= 0 or upstream.ended():
            self._end_upstream(upstream)  # no grace, or the publisher had already said it was done
            return
        upstream.conn, upstream.alias, upstream.orphaned_at = None, None, now
        self._cut_groups(upstream)
        for sub_conn, request in upstream.waiting:
            if not sub_conn.session.closed:
                self._refuse_waiting(sub_conn, request, RequestError.DOES_NOT_EXIST, "the publisher left")
                sub_conn.flush()
        upstream.waiting = []
        if not self.stopping:
            log.info("%s: source lost, kept %g s for it to return", _label(upstream.namespace, upstream.track),
                     self.upstream_grace)

    @staticmethod
    def _cut_groups(upstream: UpstreamTrack) -> None:
        """``upstream``'s source session is gone (lost, taken over, left for another): its groups
        in progress (a stream of them open there) are cut short, their streams here reset with
        SESSION_CLOSED (a FIN would say they are whole), and the cache no longer serves them
        (fanout ``cut_open_groups``). A catalog's group in progress ends as ever: its versions
        are whole objects, and a late joiner needs the current one."""
        groups = list(upstream.open_subgroups)
        upstream.open_subgroups.clear()
        fanout = upstream.fanout
        if not fanout.state:
            fanout.cut_open_groups(StreamResetCode.SESSION_CLOSED, groups)
            return
        if fanout.cache.largest is not None:
            fanout.end_group(fanout.cache.largest[0])
        fanout.end_open_groups()

    def _resume(self, upstream: UpstreamTrack, conn: MoqConnection) -> None:
        """Subscribe to ``upstream``'s track on a new source session; groups go on above the last."""
        if upstream.conn is not None and not upstream.conn.session.closed:
            self._by_request.pop((id(upstream.conn), upstream.request_id), None)
            if upstream.alias is not None:
                self._by_alias.pop((id(upstream.conn), upstream.alias), None)
        if upstream.conn is not None and upstream.conn is not conn:
            self._cut_groups(upstream)  # what the old session had in progress ends nowhere now
        upstream.resumed_from, upstream.orphaned_at = upstream.orphaned_at, None
        upstream.check_offset = True
        upstream.subscribe(conn)
        self._by_request[(id(conn), upstream.request_id)] = upstream
        log.info("%s: resubscribing at %s", _label(upstream.namespace, upstream.track), conn.peer)

    def _resume_again(self, upstream: UpstreamTrack) -> None:
        """Ask again for a track whose resubscription was refused, if it is still waiting."""
        if upstream.orphaned_at is None or self._tracks.get((upstream.namespace, upstream.track)) is not upstream:
            return  # back meanwhile (its publisher came here), or over
        conn = self._publisher_for(upstream.namespace)
        if conn is not None:
            self._resume(upstream, conn)

    def published_names(self) -> set[str]:
        """Broadcasts publishers announced here (what this relay is the origin of for others)."""
        return {"/".join(ns) for ns, (conn, _) in self._published.items() if not conn.session.closed}

    def route(self, namespace: tuple[str, ...], conn: MoqConnection | None, listed: bool = False) -> None:
        """The directory says ``namespace`` lives at the origin reached by ``conn`` (or nowhere now).
        Its tracks held here move there, their group ids going on above the last one served; with
        no origin (after ``ORIGIN_DRAIN``) they wait ``upstream_grace`` for one, as for a lost publisher.
        ``listed``: with no ``conn``, the directory lists it at an origin whose session is not up yet;
        SUBSCRIBEs to it wait for that session (``upstream_wait``) instead of being refused."""
        old = self._routes.get(namespace)
        if conn is None:
            if listed:
                self._listed_unrouted.add(namespace)
            else:
                self._listed_unrouted.discard(namespace)
                self._refuse_awaiting_upstream(namespace)
            if old is None:
                return
            del self._routes[namespace]
            self._call_later(ORIGIN_DRAIN, self._unroute, namespace, old)
            return
        self._listed_unrouted.discard(namespace)
        self._routes[namespace] = conn
        self._retry_awaiting_upstream(namespace)
        for upstream in list(self._tracks.values()):
            if upstream.namespace == namespace and upstream.conn is not conn:
                if upstream.conn is not None and not upstream.conn.session.closed:
                    upstream.conn.session.unsubscribe(upstream.request_id)
                    upstream.conn.flush()
                self._resume(upstream, conn)
        if old is None:
            self._announce(namespace)  # subscribers waiting for it retry now

    def _unroute(self, namespace: tuple[str, ...], old: MoqConnection) -> None:
        """``ORIGIN_DRAIN`` after the directory withdrew ``namespace`` from ``old``: its tracks still
        fed from there (not ended by their PUBLISH_DONE, not moved elsewhere) lose their source."""
        if self._routes.get(namespace) is old:
            return  # listed there again meanwhile
        now = time.monotonic()
        for upstream in list(self._tracks.values()):
            if upstream.namespace == namespace and upstream.conn is old:
                if not old.session.closed:
                    self._by_request.pop((id(old), upstream.request_id), None)
                    old.session.unsubscribe(upstream.request_id)
                    old.flush()
                self._orphan(upstream, now)

    def set_upstream(self, conn: MoqConnection | None) -> None:
        """The relay above (re)connected: tracks it fed that are waiting for it resubscribe there."""
        self.upstream = conn
        if conn is None:
            self._forget_upstream_namespaces()
            return
        if not conn.session.closed:
            self._list_upstream(conn)
        for upstream in list(self._tracks.values()):
            if upstream.orphaned_at is not None and self._publisher_for(upstream.namespace) is conn:
                self._resume(upstream, conn)
        self._retry_awaiting_upstream()  # asked for there now

    def expire_orphans(self, now: float) -> None:
        """End the relayed tracks whose source has not come back within the grace period."""
        for upstream in list(self._tracks.values()):
            if upstream.orphaned_at is not None and now - upstream.orphaned_at >= self.upstream_grace:
                log.info("%s: source did not return within %g s", _label(upstream.namespace, upstream.track),
                         self.upstream_grace)
                self._end_upstream(upstream)

    # -- local broadcasts -----------------------------------------------------------------------
    def _local_source(self, name: str) -> BroadcastSource | None:
        source = self._sources.get(name)
        if source is not None and not source.ended:
            return source
        broadcast = self.registry.get(name)
        if broadcast is None:
            return None
        source = self._sources[name] = BroadcastSource(broadcast, self._fanouts_ended, self._on_new_tracks,
                                                            self.cache_bounds)
        return source

    # -- in-process readers of what the relay lists (the transcoder children of `rtmpq up`) ----------
    def listed(self) -> list[str]:
        """The broadcasts a SUBSCRIBE_NAMESPACE of every namespace is told of now (``live/x``)."""
        return ["/".join(ns) for ns in self._known_namespaces() if ns]

    def watch_listing(self, callback, watching: bool = True) -> None:
        """``callback()`` whenever what ``listed`` says may have changed (called from the relay's
        handlers: it must not block); ``watching=False``: no more."""
        if watching:
            self._listing_watchers.append(callback)
        elif callback in self._listing_watchers:
            self._listing_watchers.remove(callback)

    # -- in-process readers of what nodes added to a local broadcast (the edge of `rtmpq up`) --------
    def added_tracks(self, name: str) -> tuple:
        """TrackInfo of the tracks other nodes added to broadcast ``name`` (a transcoder node's rungs)."""
        return self._added.get(tuple(name.split("/")), ())

    def watch_added(self, name: str, callback, watching: bool = True) -> None:
        """``callback()`` whenever the tracks nodes add to ``name`` change (``watching=False``: no more)."""
        watchers = self._added_watchers.setdefault(name, [])
        if watching:
            watchers.append(callback)
        else:
            if callback in watchers:
                watchers.remove(callback)
            if not watchers:
                del self._added_watchers[name]

    def added_fanout(self, name: str, track: str) -> TrackFanout | None:
        """The fan-out of a track a node added to ``name`` (None if it has none here now, or it ended)."""
        upstream = self._tracks.get((tuple(name.split("/")), track))
        return None if upstream is None or upstream.fanout.ended else upstream.fanout

    def subscribe_in_process(self, fanout: TrackFanout, sink) -> TrackSubscription:
        """Deliver ``fanout`` to a reader in this process (a GroupSink that takes objects at once).
        As any subscriber, it makes an on-demand track's publisher send objects (_update_forward);
        ``fanout.unsubscribe`` ends it."""
        sub = TrackSubscription(sink, delivery_timeout=self.delivery_timeout, send_budget=self.send_budget)
        fanout.subscribe(sub, time.monotonic())
        self._wake_tick()  # the publisher is asked for objects at the next check, not IDLE_CHECK_INTERVAL later
        return sub

    def cached_frames(self, name: str) -> list[Frame]:
        """The frames of local broadcast ``name`` that its group caches hold (whole groups from
        their first object), in dts order: what a new reader can start from instead of the
        current group alone."""
        source = self._sources.get(name)
        if source is None or source.ended:
            return []
        frames = []
        now = time.monotonic()
        for track, fanout in list(source.fanouts.items()):
            if track == CATALOG_TRACK:
                continue
            for group in fanout.cache.groups_from(0, now):
                if group.objects and group.objects[0].object_id == 0:
                    frames.extend(object_to_frame(track, group.group_id, o.object_id, o.payload, o.extensions or {})
                                  for o in group.objects)
        frames.sort(key=lambda f: f.dts)
        return frames

    def _fanouts_ended(self, fanouts) -> None:
        """Tell every subscriber of these fan-outs that the track ended (PUBLISH_DONE): GOING_AWAY
        when it ends because this relay stops (after its GOAWAY: the track may go on elsewhere)."""
        fanouts = {id(f) for f in fanouts}
        status, reason = ((PublishDoneStatus.GOING_AWAY, "the relay is stopping") if self.stopping
                          else (PublishDoneStatus.TRACK_ENDED, "the publisher stopped"))
        for key, s in list(self._subs.items()):
            if id(s.fanout) in fanouts:
                del self._subs[key]
                self._publish_done(s, status, reason)
        for name, source in list(self._sources.items()):
            if source.ended:
                del self._sources[name]
                self._announce(tuple(name.split("/")), done=True)

    def _publish_done(self, s: Subscription, status: int, reason: str) -> None:
        """End subscription ``s`` (already let go here): its open groups end, PUBLISH_DONE says why;
        its budgets hold until what is still on its way is delivered or reset."""
        for group in list(s.sub.in_flight):
            s.sub.end_group(group)
        if s.sub.in_flight:
            self._draining.add(s)
        if not s.conn.session.closed:
            s.conn.session.publish_done(s.request_id, status, s.sink.streams_opened, reason)
            s.conn.flush()


