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


# Seconds to wait for streams still in flight after the publisher said it is done.
LATE_STREAM_GRACE = 2.0


@dataclass(frozen=True, slots=True)
class SkippedGroup:
    """The relay dropped (the rest of) this group for us: it fell outside our budget."""

    track: str
    group: int
    code: int


class SubscribeError(ConnectionError):
    pass


async def subscribe_broadcast(conn: MoqConnection, broadcast: str, *, tracks: list[str] | None = None,
                              delivery_timeout_ms: int | None = None) -> AsyncIterator[Catalog | Frame | SkippedGroup]:
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

    def subscribe(track: str) -> None:
        rid = session.subscribe(namespace, track, delivery_timeout_ms=delivery_timeout_ms,
                                priority=0 if track == CATALOG_TRACK else 128)
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
            elif isinstance(event, ev.RequestFailed):
                track = requests.get(event.request_id, "?")
                raise SubscribeError(f"subscribe to {broadcast} {track} refused: {event.reason} (code {event.error_code})")
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
            elif isinstance(event, ev.SessionClosed):
                raise ConnectionError(f"MoQ session closed: {event.reason or event.code}")
    finally:
        conn.handler = None
