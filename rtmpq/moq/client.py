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


async def subscribe_broadcast(conn: MoqConnection, broadcast: str, *, tracks: list[str] | None = None,
                              delivery_timeout_ms: int | None = None, wait: float = 0.0,
                              authorization: str | None = None) -> AsyncIterator[Catalog | Frame | SkippedGroup]:
    """The catalog, then frames of its tracks (all of them, or ``tracks``), until the broadcast
    ends. A broadcast that is not live yet is waited for up to ``wait`` seconds.
    ``authorization``: a token sent with every SUBSCRIBE (AUTHORIZATION TOKEN parameter)."""
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

    subscribe(CATALOG_TRACK)
    try:
        while open_tracks:
            try:
                # after PUBLISH_DONE, late streams get a grace period, then we stop waiting
                event = await asyncio.wait_for(queue.get(), LATE_STREAM_GRACE if expected else None)
            except TimeoutError:
                break
            if isinstance(event, ev.SubscribeAccepted):
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
            elif event is _RETRY or (isinstance(event, ev.NamespaceReceived) and event.request_id == watch
                                     and event.namespace == namespace):
                if _RETRY not in open_tracks:
                    continue  # a retry already went out
                open_tracks.discard(_RETRY)
                subscribe(CATALOG_TRACK)
            elif isinstance(event, ev.ObjectReceived):
                track = aliases.get(event.track_alias)
                if track == CATALOG_TRACK:
                    new = Catalog.from_json(event.payload)
                    subscribed = set(requests.values())
                    for info in new.tracks:  # tracks appear as their sequence headers arrive
                        if info.name not in subscribed and (tracks is None or info.name in tracks):
                            subscribe(info.name)
                    yield new
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
