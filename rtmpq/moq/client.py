"""Subscribe to a broadcast over MoQ: the catalog first, then frames of every track.

    async with connect_moq(host, port, insecure=True) as conn:
        async for item in subscribe_broadcast(conn, "live/cam1"):
            ...  # Catalog, Frame, SkippedGroup, or the end (iteration stops)
"""

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from ..media.catalog import Catalog
from ..media.frames import Frame
from . import events as ev
from .loc import CATALOG_TRACK, object_to_frame
from .transport import MoqConnection
from .wire import RequestError

_RETRY = object()  # queue marker: time to ask for a broadcast that was not live again
_CHOICE = object()  # queue marker: the TrackChoice changed


# Seconds to wait for streams still in flight after the publisher said it is done.
LATE_STREAM_GRACE = 2.0
# While waiting for a broadcast that is not live yet, the client holds a SUBSCRIBE_NAMESPACE on its
# name (the relay says NAMESPACE when it goes live) and also retries the catalog SUBSCRIBE this
# often (seconds): a relay may know the broadcast only through its own upstream.
WAIT_RETRY_INTERVAL = 1.0


@dataclass(frozen=True, slots=True)
class SkippedGroup:
    """The relay dropped (the rest of) this group for us: it fell outside our budget."""

    track: str
    group: int
    code: int


class SubscribeError(ConnectionError):
    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class TrackChoice:
    """Which tracks of a broadcast a subscription takes. By default one per MSF altGroup (the
    first the catalog lists: the source rendition; with ``rendition``, e.g. "480p", the member
    named ``...-480p``) and every track outside an altGroup; with ``tracks``, exactly those.
    ``want(track)`` adds (or with False drops) one while the subscription runs."""

    def __init__(self, tracks: list[str] | None = None, rendition: str | None = None, *,
                 all_but_rungs: bool = False) -> None:
        self.tracks = None if tracks is None else set(tracks)
        self.rendition = rendition
        self.all_but_rungs = all_but_rungs  # every track but transcoder rungs (the edge: rungs on demand)
        self.extra: set[str] = set()
        self._wake = None

    def names(self, catalog: Catalog) -> set[str]:
        if self.tracks is not None:
            base = set(self.tracks)
        elif self.all_but_rungs:
            base = {t.name for t in catalog.tracks if not catalog.is_rung(t.name)}
        else:
            base = set(catalog.default_tracks(self.rendition))
        return base | self.extra

    def want(self, track: str, wanted: bool = True) -> None:
        (self.extra.add if wanted else self.extra.discard)(track)
        if self._wake is not None:
            self._wake()


async def subscribe_broadcast(conn: MoqConnection, broadcast: str, *, tracks: list[str] | None = None,
                              delivery_timeout_ms: int | None = None, wait: float = 0.0,
                              authorization: str | None = None, choice: TrackChoice | None = None,
                              ) -> AsyncIterator[Catalog | Frame | SkippedGroup]:
    """The catalog, then frames of its tracks until the broadcast ends: by default one rendition
    per altGroup (see TrackChoice), or ``tracks``. A broadcast that is not live yet is waited for
    up to ``wait`` seconds. ``authorization``: a token sent with every SUBSCRIBE."""
    choice = choice or TrackChoice(tracks)
    namespace = tuple(broadcast.split("/"))
    queue: asyncio.Queue = asyncio.Queue()
    conn.handler = lambda _conn, event: queue.put_nowait(event)
    session = conn.session
    requests: dict[int, str] = {}  # request id -> track name
    aliases: dict[int, str] = {}  # track alias -> track name
    open_tracks: set[str] = set()
    streams_done: dict[str, int] = {}  # track -> subgroup streams finished (FIN or reset)
    expected: dict[str, int] = {}  # track -> streams the publisher said it opened (PUBLISH_DONE)

    def finish_complete_tracks() -> None:
        for track, count in expected.items():
            if streams_done.get(track, 0) >= count:
                open_tracks.discard(track)

    loop = asyncio.get_running_loop()
    wait_until = loop.time() + wait
    watch: int | None = None  # our SUBSCRIBE_NAMESPACE on the broadcast while it is not live

    def subscribe(track: str) -> None:
        rid = session.subscribe(namespace, track, delivery_timeout_ms=delivery_timeout_ms,
                                priority=0 if track == CATALOG_TRACK else 128, authorization=authorization)
        requests[rid] = track
        open_tracks.add(track)
        conn.flush()

    catalog: Catalog | None = None
    catalog_group: int | None = None

    def update_tracks() -> None:
        """SUBSCRIBE to the chosen tracks not subscribed yet; UNSUBSCRIBE from those let go."""
        if catalog is None or not catalog.live:  # an ended broadcast's last catalog: nothing to add
            return
        chosen = choice.names(catalog) & {t.name for t in catalog.tracks}
        subscribed = {name: rid for rid, name in requests.items()}
        for name in sorted(chosen - set(subscribed)):
            subscribe(name)
        for name, rid in subscribed.items():
            if name != CATALOG_TRACK and name not in chosen:
                session.unsubscribe(rid)
                del requests[rid]
                open_tracks.discard(name)
                for alias, n in list(aliases.items()):
                    if n == name:
                        del aliases[alias]
                conn.flush()

    choice._wake = lambda: queue.put_nowait(_CHOICE)
    subscribe(CATALOG_TRACK)
    try:
        while open_tracks:
            try:
                # after PUBLISH_DONE, late streams get a grace period, then we stop waiting
                event = await asyncio.wait_for(queue.get(), LATE_STREAM_GRACE if expected else None)
            except TimeoutError:
                break
            if isinstance(event, ev.SubscribeAccepted):
                if event.request_id not in requests:
                    continue  # the answer to a subscription already let go of
                aliases[event.track_alias] = requests[event.request_id]
                if watch is not None:  # live: no more need to watch for it
                    session.unsubscribe_namespace(watch)
                    watch = None
            elif isinstance(event, ev.RequestFailed):
                if event.request_id == watch:
                    continue  # the relay will not tell us; the retries still ask
                track = requests.pop(event.request_id, "?")
                not_live = track == CATALOG_TRACK and event.error_code == RequestError.DOES_NOT_EXIST
                if not_live and loop.time() < wait_until:
                    open_tracks.discard(CATALOG_TRACK)
                    if watch is None:
                        watch = session.subscribe_namespace(namespace, authorization=authorization)
                        conn.flush()
                    loop.call_later(WAIT_RETRY_INTERVAL, queue.put_nowait, _RETRY)
                    open_tracks.add(_RETRY)
                    continue
                raise SubscribeError(f"subscribe to {broadcast} {track} refused: {event.reason} (code {event.error_code})",
                                     event.error_code)
            elif event is _CHOICE:
                update_tracks()
            elif event is _RETRY or (isinstance(event, ev.NamespaceReceived) and event.request_id == watch
                                     and event.namespace == namespace):
                if _RETRY not in open_tracks:
                    continue  # a retry already went out
                open_tracks.discard(_RETRY)
                subscribe(CATALOG_TRACK)
            elif isinstance(event, ev.ObjectReceived):
                track = aliases.get(event.track_alias)
                if track == CATALOG_TRACK:
                    # each catalog version is a group on its own stream: an older one can arrive
                    # after a newer one (newest first), and must not undo it
                    if catalog_group is not None and event.group < catalog_group:
                        continue
                    catalog_group = event.group
                    catalog = Catalog.from_json(event.payload)
                    update_tracks()  # tracks appear as their sequence headers arrive
                    yield catalog
                elif track is not None:
                    yield object_to_frame(track, event.group, event.object_id, event.payload, event.extensions)
            elif isinstance(event, (ev.SubgroupEnded, ev.SubgroupReset)):
                track = aliases.get(event.track_alias)
                if track is not None:
                    streams_done[track] = streams_done.get(track, 0) + 1
                    if isinstance(event, ev.SubgroupReset):
                        yield SkippedGroup(track, event.group, event.code)
                    finish_complete_tracks()
            elif isinstance(event, ev.PublishDoneReceived):
                track = requests.get(event.request_id)
                if track is not None:
                    expected[track] = event.stream_count
                    finish_complete_tracks()
            elif isinstance(event, ev.GoawayReceived):
                # the node is going away: what it served goes on elsewhere or after its restart
                raise ConnectionError("the relay is going away (GOAWAY)")
            elif isinstance(event, ev.SessionClosed):
                raise ConnectionError(f"MoQ session closed: {event.reason or event.code}")
    finally:
        conn.handler = None
        choice._wake = None


class FetchError(ConnectionError):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


@dataclass(slots=True)
class FetchResult:
    frames: list[Frame]  # in the order the publisher sent them (its group order)
    end: tuple[int, int]  # FETCH_OK's End Location: the range covered ends just before it
    end_of_track: bool
    unknown: list[tuple[int, int]]  # the publisher does not know the objects before these locations


async def fetch_track(conn: MoqConnection, broadcast: str, track: str, start: tuple[int, int], end: tuple[int, int],
                      *, descending: bool = False, authorization: str | None = None) -> FetchResult:
    """FETCH objects of one track already published: ``start`` up to ``end`` (exclusive; an end
    object of 0 means the whole end group). Returns once the publisher closed the fetch stream.
    Takes the connection's events while it runs: not alongside a subscribe_broadcast on ``conn``.
    ``authorization``: a token sent with the FETCH (AUTHORIZATION TOKEN parameter)."""
    queue: asyncio.Queue = asyncio.Queue()
    conn.handler = lambda _conn, event: queue.put_nowait(event)
    rid = conn.session.fetch(tuple(broadcast.split("/")), track, start, end, descending=descending,
                             authorization=authorization)
    conn.flush()
    result = FetchResult([], start, False, [])
    accepted = ended = False
    try:
        while not (accepted and ended):
            event = await queue.get()
            if getattr(event, "request_id", None) != rid and not isinstance(event, ev.SessionClosed):
                continue
            if isinstance(event, ev.FetchAccepted):
                accepted = True
                result.end, result.end_of_track = event.end, event.end_of_track
            elif isinstance(event, ev.RequestFailed):
                raise FetchError(f"fetch of {broadcast} {track} refused: {event.reason} (code {event.error_code})",
                                 event.error_code)
            elif isinstance(event, ev.FetchObjectReceived):
                result.frames.append(object_to_frame(track, event.group, event.object_id, event.payload,
                                                     event.extensions))
            elif isinstance(event, ev.FetchRangeUnavailable) and event.unknown:
                result.unknown.append((event.group, event.object_id))
            elif isinstance(event, ev.FetchEnded):
                if event.code is not None:
                    raise FetchError(f"fetch of {broadcast} {track} was reset (code {event.code})", event.code)
                ended = True
            elif isinstance(event, ev.SessionClosed):
                raise ConnectionError(f"MoQ session closed: {event.reason or event.code}")
    finally:
        conn.handler = None
    return result
