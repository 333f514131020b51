"""Nodes that talk to another node over MoQ: a relay below a relay, an ingest or an edge apart.

- ``UpstreamLink``: keeps one client session to an upstream node open (reconnecting with
  backoff), with a MoqRelay handling its events. A relay asks it for tracks it does not have; an
  ingest announces its broadcasts on it (PUBLISH_NAMESPACE) and answers the upstream's SUBSCRIBEs.
- ``OriginLinks``: a relay that follows the directory (many hosts): one UpstreamLink per origin
  listed there, and each broadcast routed to its origin's session as entries move.
- ``moq_broadcast_source``: the edge's ``open_broadcast`` over MoQ (one session per broadcast), at
  a fixed upstream or at the origin the directory names (following it when it moves).
"""

import asyncio
import logging
from collections.abc import Callable

from ..media.broadcast import GroupSkipped
from ..media.catalog import Catalog
from ..media.frames import Frame, NotLive
from ..directory.core import Change, Entry
from ..moq import events as ev
from ..moq.client import SkippedGroup, TrackChoice
from ..moq.follow import BroadcastGone, follow_broadcast
from ..moq.reachability import REFUSED_RECONNECT_MAX, reconnect_delay
from ..moq.relay import ORIGIN_DRAIN, MoqRelay
from ..moq.session import SessionCaps
from ..moq.transport import DEFAULT_BACKEND, connect_moq, parse_moq_url, setup_path
from ..moq.wire import RequestError, SessionError
from ..redact import safe_name

log = logging.getLogger("rtmpq.nodes")

# Seconds between reconnection attempts to an upstream node (doubling up to the maximum; up to
# [upstream] refused_reconnect_max after an attempt its closed port refused).
RECONNECT_MIN = 0.5
RECONNECT_MAX = 10.0


class UpstreamLink:
    def __init__(self, relay: MoqRelay, url: str, *, insecure: bool = False, cafile: str | None = None,
                 fingerprint: str | None = None, backend: str = DEFAULT_BACKEND, announce: bool = False,
                 use_for_unknown_tracks: bool = True, token=lambda: None,
                 on_connect: Callable | None = None, idle_timeout: float | None = None,
                 refused_reconnect_max: float = REFUSED_RECONNECT_MAX, session_caps: SessionCaps | None = None) -> None:
        self.relay = relay
        self.refused_reconnect_max = refused_reconnect_max
        self.host, self.port, _ = parse_moq_url(url)
        self.path = setup_path(url)  # (its query too)
        self.tls = dict(insecure=insecure, cafile=cafile, fingerprint=fingerprint, backend=backend,
                        idle_timeout=idle_timeout, session_caps=session_caps)
        self.announce = announce
        self.use_for_unknown_tracks = use_for_unknown_tracks
        self.token = token  # () -> the node token to present, or None
        self.on_connect = on_connect  # called with each new session, once set up
        self.conn = None  # the session while connected
        self.connected = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._announcing: dict[int, str] = {}  # PUBLISH_NAMESPACE request id -> broadcast, until answered

    def start(self) -> None:
        if self.use_for_unknown_tracks:  # the relay holds SUBSCRIBEs it cannot place until the session is up
            self.relay.upstream_expected = True
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        delay = RECONNECT_MIN
        while True:
            try:
                async with connect_moq(self.host, self.port, path=self.path, **self.tls, token=self.token()) as conn:
                    delay = RECONNECT_MIN
                    self.relay.on_connection(conn)
                    if self.use_for_unknown_tracks:
                        self.relay.set_upstream(conn)
                    log.info("connected to upstream %s:%d", self.host, self.port)
                    self.conn = conn
                    self.connected.set()
                    if self.on_connect is not None:
                        self.on_connect(conn)
                    closed = asyncio.get_running_loop().create_future()
                    original = conn.handler

                    self._announcing = {}  # (request ids are the session's)

                    def handler(c, event, _orig=original, _closed=closed):
                        _orig(c, event)
                        if self._announcing and isinstance(event, (ev.RequestAccepted, ev.RequestFailed)):
                            self._answered(event)
                        if isinstance(event, ev.NamespaceCancelled):
                            # (not its reason: the upstream's words may name a stream key)
                            log.warning("upstream %s:%d no longer takes a broadcast announced to it "
                                        "(PUBLISH_NAMESPACE_CANCEL, code %d)", self.host, self.port, event.error_code)
                        if type(event).__name__ == "SessionClosed" and not _closed.done():
                            _closed.set_result(None)

                    conn.handler = handler
                    announcer = asyncio.ensure_future(self._announce(conn)) if self.announce else None
                    if announcer is not None:
                        announcer.add_done_callback(lambda task, _conn=conn: self._announcer_done(task, _conn))
                    try:
                        await closed
                    finally:
                        if announcer is not None:
                            announcer.cancel()
                    # (not the close's reason: the upstream's words may name a stream key)
                    log.warning("upstream %s:%d: session ended; reconnecting in %.1f s", self.host, self.port, delay)
            except (ConnectionError, OSError, TimeoutError) as exc:
                delay = reconnect_delay(delay, exc, self.refused_reconnect_max)
                log.warning("upstream %s:%d: %s; retrying in %.1f s", self.host, self.port, exc, delay)
            except Exception:  # a bug here must not end the link for good (nothing would say so)
                log.exception("upstream %s:%d: the link failed; reconnecting in %.1f s", self.host, self.port, delay)
            self.conn = None
            self.connected.clear()
            if self.relay.upstream is not None and self.relay.upstream.session.closed:
                self.relay.set_upstream(None)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX)

    def _announcer_done(self, task: asyncio.Task, conn) -> None:
        """The announcer ends only when cancelled; one that failed would leave every broadcast
        started after it unannounced on a session that looks fine: logged, and the session closed,
        so the link reconnects and announces again."""
        if task.cancelled() or task.exception() is None:
            return
        log.error("upstream %s:%d: announcing broadcasts failed; reconnecting", self.host, self.port,
                  exc_info=task.exception())
        conn.close_session(SessionError.INTERNAL_ERROR, "announcing failed")

    async def _announce(self, conn) -> None:
        """PUBLISH_NAMESPACE every local broadcast, now and as they start; withdraw them as they end."""
        announced: dict[str, int] = {}
        async for broadcast in self.relay.registry.announcements():
            namespace = tuple(broadcast.name.split("/"))
            rid = announced[broadcast.name] = conn.session.publish_namespace(namespace, authorization=self.token())
            self._announcing[rid] = broadcast.name
            conn.flush()
            asyncio.ensure_future(self._withdraw_when_done(conn, broadcast, announced))

    def _answered(self, event) -> None:
        """The upstream's answer to a PUBLISH_NAMESPACE: a refusal is said, with what to check (the
        broadcast is not reachable through that relay; before, the log said "announced" either way)."""
        name = self._announcing.pop(event.request_id, None)
        if name is None:
            return
        if isinstance(event, ev.RequestAccepted):
            log.info("announced %s upstream", safe_name(name))
            return
        hint = ""
        if event.error_code in (RequestError.UNAUTHORIZED, RequestError.MALFORMED_AUTH_TOKEN,
                                RequestError.EXPIRED_AUTH_TOKEN):
            hint = ("; this node presents [auth] node_token (RTMPQ_AUTH_NODE_TOKEN), or one minted from its "
                    "[auth] secret: give it a token from `rtmpq token --act relay` signed with the upstream's secret"
                    if self.token() else
                    "; this node has no token to present: set [auth] node_token (RTMPQ_AUTH_NODE_TOKEN) to one from "
                    "`rtmpq token --act relay` signed with the upstream's secret, or the same [auth] secret")
        # (the upstream's words name the broadcast: on an open node its name is the stream key)
        log.warning("upstream %s:%d refused to take %s: %s (code %d)%s", self.host, self.port, safe_name(name),
                    event.reason.replace(name, safe_name(name)), event.error_code, hint)

    async def _withdraw_when_done(self, conn, broadcast, announced) -> None:
        await broadcast.wait_ended()
        rid = announced.pop(broadcast.name, None)
        if rid is not None and not conn.session.closed:
            conn.session.publish_namespace_done(rid)
            conn.flush()


class OriginLinks:
    """A relay that finds broadcasts through the directory: a session to every origin listed
    (excluding this node), and ``relay.route`` kept pointing each broadcast at its origin's session.
    ``tls``: each UpstreamLink's (connect_moq's settings and refused_reconnect_max)."""

    def __init__(self, relay: MoqRelay, directory, *, token=lambda: None, **tls) -> None:
        self.relay = relay
        self.directory = directory
        self.token = token
        self.tls = tls
        self.links: dict[str, UpstreamLink] = {}  # origin URL -> link
        # origin URL -> a link no broadcast is listed at any more, closed ORIGIN_DRAIN later (its
        # last objects may still be on their way)
        self._draining: dict[str, UpstreamLink] = {}
        self._names: dict[str, Entry] = {}  # broadcast -> its origin entry (other nodes only)

    def start(self) -> None:
        self.directory.listen(self._on_changes)
        self._on_changes([Change(e.name, None, e) for e in list(self.directory.mirror.entries.values())])

    async def close(self) -> None:
        for link in [*self.links.values(), *self._draining.values()]:
            await link.close()
        self.links.clear()
        self._draining.clear()

    def _on_changes(self, changes: list[Change]) -> None:
        for change in changes:
            namespace = tuple(change.name.split("/"))
            new = change.new if change.new is not None and change.new.node != self.directory.node else None
            if new is None:
                self._names.pop(change.name, None)
                self.relay.route(namespace, None)
                continue
            self._names[change.name] = new
            link = self._link(new)
            # until the new origin's session is up, the broadcast has none (its tracks and SUBSCRIBEs wait)
            up = link.conn is not None and not link.conn.session.closed
            self.relay.route(namespace, link.conn if up else None, listed=True)
        for url in [u for u in self.links if not any(e.url == u for e in self._names.values())]:
            link = self._draining[url] = self.links.pop(url)  # no broadcast there any more
            asyncio.get_running_loop().call_later(ORIGIN_DRAIN, self._close_drained, url, link)

    def _close_drained(self, url: str, link: UpstreamLink) -> None:
        if self._draining.get(url) is link:  # (not needed again meanwhile)
            del self._draining[url]
            asyncio.ensure_future(link.close())

    def _link(self, entry: Entry) -> UpstreamLink:
        link = self.links.get(entry.url) or self._draining.pop(entry.url, None)
        if link is not None:
            self.links[entry.url] = link
        else:
            link = self.links[entry.url] = UpstreamLink(
                self.relay, entry.url, use_for_unknown_tracks=False, token=self.token,
                on_connect=lambda conn, url=entry.url: self._connected(url, conn), **_origin_tls(self.tls, entry))
            link.start()
        return link

    def _connected(self, url: str, conn) -> None:
        for name, entry in list(self._names.items()):
            if entry.url == url:
                self.relay.route(tuple(name.split("/")), conn)


def _origin_tls(tls: dict, entry: Entry) -> dict:
    """With no way of its own to check the origin's certificate, pin the one it registered."""
    tls = dict(tls)
    if not (tls.get("insecure") or tls.get("cafile") or tls.get("fingerprint")) and entry.fingerprint:
        tls["fingerprint"] = entry.fingerprint
    return tls


async def follow_via_directory(directory, name: str, *, wait: float, token: str | None = None, choice=None,
                               fill_groups: int = 0, tail_wait: float = 0.0, say_not_live: bool = False, **tls):
    """Catalog / Frame items of ``name`` from the origin the directory names, moving with it: when
    its entry moves (the publisher went to another ingest) or lapses (the origin died), the
    subscription there ends and one starts at the new origin, as long as one appears within ``wait``.
    ``fill_groups``: the first origin's subscription starts with its cached groups; ``tail_wait``:
    follow_broadcast's. ``say_not_live``: follow_broadcast's, at the origin the directory names (a
    name the directory does not list says nothing: a mirror just started, or Redis away, lists none)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        entry = directory.lookup(name)
        while entry is None or entry.node == directory.node:
            if loop.time() >= deadline:
                raise BroadcastGone(f"{safe_name(name)}: not in the directory within {wait:g} s")
            try:
                await asyncio.wait_for(directory.changed(), deadline - loop.time())
            except TimeoutError:
                pass
            entry = directory.lookup(name)
        host, port, _ = parse_moq_url(entry.url)
        log.info("%s: following its origin %s", safe_name(name), entry.url)
        items = follow_broadcast(host, port, name, wait=wait, token=token, choice=choice, fill_groups=fill_groups,
                                 tail_wait=tail_wait, say_not_live=say_not_live,
                                 **_origin_tls(tls, entry)).__aiter__()
        moved = False
        watch = asyncio.ensure_future(_moved(directory, name, entry))
        try:
            while True:
                nxt = asyncio.ensure_future(items.__anext__())
                done, _ = await asyncio.wait({nxt, watch}, return_when=asyncio.FIRST_COMPLETED)
                if nxt not in done:
                    nxt.cancel()
                    try:
                        await nxt
                    except (asyncio.CancelledError, Exception):  # noqa: BLE001 - leaving this origin
                        pass
                    moved = True
                    break
                try:
                    item = nxt.result()
                except StopAsyncIteration:
                    return  # the broadcast ended at its origin
                except (ConnectionError, OSError) as exc:
                    # the origin is unreachable; its entry lapses within the TTL if it died
                    log.warning("%s: origin %s: %s; waiting for the directory", safe_name(name), entry.url, exc)
                    break
                if not isinstance(item, NotLive):  # (still not live: the wait goes on)
                    deadline = loop.time() + wait
                    say_not_live = False  # live once: a move is no news for a player
                if isinstance(item, Frame):
                    fill_groups = 0  # a move continues what was handed on
                yield item
        finally:
            watch.cancel()
            await items.aclose()
        if not moved:
            try:
                await asyncio.wait_for(_moved(directory, name, entry), max(deadline - loop.time(), 0.0))
            except TimeoutError:
                raise BroadcastGone(f"{safe_name(name)}: origin {entry.url} lost and no other within {wait:g} s") \
                    from None


async def _moved(directory, name: str, entry: Entry) -> None:
    """Returns once ``name`` is no longer at ``entry``'s origin."""
    while True:
        now = directory.lookup(name)
        if now is None or (now.url, now.node) != (entry.url, entry.node):
            return
        await directory.changed()


def moq_broadcast_source(url: str, *, wait: float, token: str | None = None, directory=None, fill_groups: int = 0,
                         tail_wait: float = 0.0, **tls):
    """open_broadcast for an edge fed over MoQ: subscribes when a player first asks for a broadcast,
    waits up to ``wait`` for one that is not live yet, and follows it through upstream restarts.
    With no ``url`` and a ``directory``, it subscribes at the broadcast's origin and follows moves.
    ``fill_groups``: a broadcast starts with up to this many whole groups before the live edge,
    fetched from the relay's cache (the first playlist lists them as segments at once).
    ``tail_wait``: a newer group's frames wait that long for an older group's tail (group_tails.py).

    ``tls`` takes connect_moq's insecure / cafile / fingerprint / backend / idle_timeout / session_caps, and
    follow_broadcast's refused_reconnect_max.
    """
    if url:
        host, port, _ = parse_moq_url(url)
        tls["path"] = setup_path(url)

    def open_broadcast(name: str):
        return MoqFeed(host if url else None, port if url else None, name, directory=directory, wait=wait,
                       token=token, fill_groups=fill_groups, tail_wait=tail_wait, **tls)

    return open_broadcast


class MoqFeed:
    """A broadcast followed over MoQ as Catalog and Frame items for the edge: every track but the
    transcoder rungs, and the rungs that ``want`` asks for while players watch them; a GroupSkipped
    for a group (or its rest) that will not come (a rung's transcoder skipped it: its playlist lists
    the gap at once); and a NotLive item when upstream has no such broadcast (yet): the edge answers
    players at once (it goes on waiting for the broadcast all the same)."""

    def __init__(self, host: str | None, port: int | None, name: str, *, directory=None, **options) -> None:
        """From ``host:port``, or with no host from the broadcast's origin in ``directory``."""
        self.host, self.port, self.name, self.directory, self.options = host, port, name, directory, options
        self.choice = TrackChoice(all_but_rungs=True)

    def want(self, track: str, wanted: bool = True) -> None:
        self.choice.want(track, wanted)

    async def __aiter__(self):
        if self.host is not None:
            source = follow_broadcast(self.host, self.port, self.name, choice=self.choice, say_not_live=True,
                                      **self.options)
        else:
            source = follow_via_directory(self.directory, self.name, choice=self.choice, say_not_live=True,
                                          **self.options)
        async for item in source:
            if isinstance(item, (Catalog, Frame, NotLive)):
                yield item
            elif isinstance(item, SkippedGroup):
                yield GroupSkipped(item.track, item.group)
