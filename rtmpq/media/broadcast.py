"""In-process broadcasts: what ingest produces and what the MoQ publisher, the recorder and tests read.

A ``Broadcast`` holds the catalog and the frames of the group in progress (so a late reader starts
on the newest keyframe at once); each ``BroadcastReader`` gets its own bounded queue. A reader that
falls more than ``max_buffered_bytes`` behind drops whole old groups, never part of one, and counts
what it skipped.
"""

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

from ..errors import StreamNameInUse
from ..redact import safe_name
from .catalog import Catalog
from .frames import VIDEO, Frame

log = logging.getLogger("rtmpq.media")

# Default bound on the bytes a reader may have queued before it starts skipping old groups.
READER_MAX_BUFFERED_BYTES = 32 * 1024 * 1024
# Bound on the bytes of the group in progress kept for late joiners (one GoP of a 20 Mbit/s stream
# with 4 s GoPs is 10 MB).
BROADCAST_MAX_GROUP_BYTES = 24 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class CatalogUpdate:
    catalog: Catalog


@dataclass(frozen=True, slots=True)
class BroadcastEnded:
    name: str


BroadcastEvent = CatalogUpdate | Frame | BroadcastEnded


class BroadcastReader:
    """Async iterator over one broadcast: CatalogUpdate first, then frames, then the end."""

    def __init__(self, broadcast: "Broadcast", max_buffered_bytes: int) -> None:
        self.broadcast = broadcast
        self.max_buffered_bytes = max_buffered_bytes
        self.skipped_groups: set[tuple[str, int]] = set()
        self._queue: deque[BroadcastEvent] = deque()
        self._bytes = 0
        self._wakeup = asyncio.Event()
        self._closed = False

    def _put(self, event: BroadcastEvent) -> None:
        if self._closed:
            return
        self._queue.append(event)
        if isinstance(event, Frame):
            self._bytes += len(event.payload)
            if self._bytes > self.max_buffered_bytes:
                self._skip_old_groups()
        self._wakeup.set()

    def _skip_old_groups(self) -> None:
        """Drop queued frames of every group older than the newest one of the same track."""
        newest: dict[str, int] = {}
        for ev in self._queue:
            if isinstance(ev, Frame):
                newest[ev.track] = max(newest.get(ev.track, ev.group), ev.group)
        kept: deque[BroadcastEvent] = deque()
        for ev in self._queue:
            if isinstance(ev, Frame) and ev.group < newest[ev.track]:
                self._bytes -= len(ev.payload)
                self.skipped_groups.add((ev.track, ev.group))
            else:
                kept.append(ev)
        self._queue = kept

    def close(self) -> None:
        self._closed = True
        self._queue.clear()
        self.broadcast._readers.discard(self)

    def __aiter__(self) -> AsyncIterator[BroadcastEvent]:
        return self

    async def __anext__(self) -> BroadcastEvent:
        while not self._queue:
            if self._closed:
                raise StopAsyncIteration
            self._wakeup.clear()
            await self._wakeup.wait()
        event = self._queue.popleft()
        if isinstance(event, Frame):
            self._bytes -= len(event.payload)
        elif isinstance(event, BroadcastEnded):
            self._closed = True
        return event


class Broadcast:
    """One live stream (``live/<key>``) with its catalog and tracks."""

    def __init__(self, name: str, registry: "BroadcastRegistry | None" = None) -> None:
        self.name = name
        self.catalog = Catalog(broadcast=name)
        self.live = True
        self.started = time.monotonic()
        self._registry = registry
        self._readers: set[BroadcastReader] = set()
        self._current_group: list[Frame] = []  # frames since the newest video keyframe
        self._current_group_bytes = 0
        self._ended = asyncio.Event()

    # -- publisher side -------------------------------------------------------------------------
    def set_catalog(self, catalog: Catalog) -> None:
        self.catalog = catalog
        for reader in tuple(self._readers):
            reader._put(CatalogUpdate(catalog))

    def push(self, frame: Frame) -> None:
        if frame.track == VIDEO and frame.index == 0:
            self._current_group.clear()
            self._current_group_bytes = 0
        if self._current_group_bytes + len(frame.payload) <= BROADCAST_MAX_GROUP_BYTES:
            self._current_group.append(frame)
            self._current_group_bytes += len(frame.payload)
        for reader in tuple(self._readers):
            reader._put(frame)

    def end(self) -> None:
        if not self.live:
            return
        self.live = False
        for reader in tuple(self._readers):
            reader._put(BroadcastEnded(self.name))
        self._current_group.clear()
        self._ended.set()
        if self._registry is not None:
            self._registry._remove(self)

    async def wait_ended(self) -> None:
        await self._ended.wait()

    # -- reader side ----------------------------------------------------------------------------
    def reader(self, max_buffered_bytes: int = READER_MAX_BUFFERED_BYTES) -> BroadcastReader:
        """A new reader: the catalog, then the group in progress from its keyframe, then live."""
        r = BroadcastReader(self, max_buffered_bytes)
        if self.catalog.tracks:
            r._put(CatalogUpdate(self.catalog))
        for frame in self._current_group:
            r._put(frame)
        if self.live:
            self._readers.add(r)
        else:
            r._put(BroadcastEnded(self.name))
        return r


class BroadcastRegistry:
    """The live broadcasts of one process, by name."""

    def __init__(self) -> None:
        self._live: dict[str, Broadcast] = {}
        self._waiters: dict[str, list[asyncio.Future]] = {}
        self._watchers: set[asyncio.Queue] = set()

    def publish(self, name: str) -> Broadcast:
        if name in self._live:
            raise StreamNameInUse(f"broadcast {safe_name(name)} is already live")
        b = Broadcast(name, self)
        self._live[name] = b
        for fut in self._waiters.pop(name, ()):
            if not fut.done():
                fut.set_result(b)
        for q in self._watchers:
            q.put_nowait(b)
        log.info("broadcast %s is live", safe_name(name))
        return b

    def get(self, name: str) -> Broadcast | None:
        return self._live.get(name)

    def names(self) -> list[str]:
        return sorted(self._live)

    async def wait_for(self, name: str, timeout: float | None = None) -> Broadcast:
        """The broadcast ``name``, waiting until someone publishes it."""
        if name in self._live:
            return self._live[name]
        fut = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(name, []).append(fut)
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            waiters = self._waiters.get(name)
            if waiters and fut in waiters:
                waiters.remove(fut)

    async def announcements(self) -> AsyncIterator[Broadcast]:
        """Every broadcast live now, then each new one as it starts."""
        q: asyncio.Queue = asyncio.Queue()
        for b in self._live.values():
            q.put_nowait(b)
        self._watchers.add(q)
        try:
            while True:
                yield await q.get()
        finally:
            self._watchers.discard(q)

    def _remove(self, b: Broadcast) -> None:
        if self._live.get(b.name) is b:
            del self._live[b.name]
            log.info("broadcast %s ended", safe_name(b.name))
