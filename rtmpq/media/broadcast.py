"""In-process broadcasts: what ingest produces and what the MoQ publisher, the recorder and tests read.

A ``Broadcast`` holds the catalog and the frames of the group in progress (so a late reader starts
on the newest keyframe at once); each ``BroadcastReader`` gets its own bounded queue. A reader that
falls more than ``max_buffered_bytes`` behind drops whole old groups, never part of one, and counts
what it skipped. A listener (``listen``) is the synchronous alternative for in-process consumers
that never wait (the relay's group caches): it is called with each event as it happens, with no
queue and no task wakeup per frame (issue 12).
"""

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

from ..errors import StreamNameInUse
from ..redact import safe_name
from .catalog import Catalog
from .frames import DATA, SOURCE_TIMESCALE, VIDEO, Frame

log = logging.getLogger("rtmpq.media")

# Default bound on the bytes a reader may have queued before it starts skipping old groups
# ([publish] reader_max_buffered_bytes).
READER_MAX_BUFFERED_BYTES = 32 * 1024 * 1024
# Bound on the bytes of the group in progress kept for late joiners (one GoP of a 20 Mbit/s stream
# with 4 s GoPs is 10 MB; [publish] max_group_bytes).
BROADCAST_MAX_GROUP_BYTES = 24 * 1024 * 1024
# At a publisher's return, timestamps go on at least this far (ms) after the last one, so the seam
# is a visible gap (players mark a discontinuity) and no frame of the new publish sorts before an
# old one whatever its tracks' first timestamps.
SEAM_MIN_GAP_MS = 1000
# Seconds a broadcast whose publisher left with no grace period still takes the last frames of the
# tracks a transcoder makes from it (the pictures its decoders held back), at most: it ends as
# soon as the transcoder says they are out (``renditions_flushed``).
RENDITION_FLUSH_TIMEOUT = 2.0


@dataclass(frozen=True, slots=True)
class CatalogUpdate:
    catalog: Catalog


@dataclass(frozen=True, slots=True)
class BroadcastEnded:
    name: str


@dataclass(frozen=True, slots=True)
class GroupSkipped:
    """A track made here (a transcoder rung) dropped (the rest of) this group: it fell behind.
    Comes after whatever frames of the group were pushed; no more of them follow."""

    track: str
    group: int


@dataclass(frozen=True, slots=True)
class PublisherLeft:
    """The publisher went away: no more of the group in progress of any track comes (a returning
    publisher starts a new group). ``lost``: without ending its publish (its connection dropped,
    or it was closed: silent, taken over, the node stopping), so those groups are cut short;
    else they are complete. Only readers that ask get it (``reader(publisher_events=True)``: the
    transcoder, whose decoder holds a group's last pictures back until it knows) and listeners
    (the relay: it ends those groups for its subscribers, or resets them when cut short), before
    the broadcast waits for the return or ends."""

    name: str
    lost: bool = False


BroadcastEvent = CatalogUpdate | Frame | GroupSkipped | PublisherLeft | BroadcastEnded


class BroadcastReader:
    """Async iterator over one broadcast: CatalogUpdate first, then frames, then the end."""

    def __init__(self, broadcast: "Broadcast", max_buffered_bytes: int, publisher_events: bool = False) -> None:
        self.broadcast = broadcast
        self.max_buffered_bytes = max_buffered_bytes
        self.publisher_events = publisher_events  # PublisherLeft too
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
                if (ev.track, ev.group) not in self.skipped_groups:
                    self.broadcast.skipped_groups += 1
                self.skipped_groups.add((ev.track, ev.group))
            else:
                kept.append(ev)
        self._queue = kept

    def add(self, event: BroadcastEvent) -> None:
        """An event from elsewhere in the process, in line with the broadcast's own (the edge of
        `rtmpq up` gets the tracks another node added to the broadcast through its relay)."""
        self._put(event)

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
    """One stream (``live/<name>``) with its catalog and tracks.

    A broadcast outlives its publisher's connection: when the publisher leaves, it is kept for the
    registry's grace period; a new publish under the same name within it continues the same
    broadcast. Readers never see the seam except as new groups: group ids go on above the last
    one, and timestamps are shifted so they go on too, by the wall-clock time the broadcast had no
    publisher (a gap of at least ``SEAM_MIN_GAP_MS``), which players see as a discontinuity.

    The broadcast follows the returning publisher's track set: its tracks count as known once its
    first group is over (its first frame of a later group: the second keyframe, or the second
    ``AUDIO_ONLY_GROUP_MS`` group of an audio-only publish), since encoders send every sequence
    header before their first frames and AC-3 tracks show in their first frame. Then the tracks of
    the earlier publishes it has not declared leave the catalog (a catalog update without them),
    except tracks made here on demand (transcoder rungs, which leave only with the track they are
    made from) and the data track (data messages come when they come, not in every group). A
    return with the same tracks changes nothing; a publish that leaves before its first frame
    settles nothing (the next one with frames does).
    """

    def __init__(self, name: str, registry: "BroadcastRegistry | None" = None) -> None:
        self.name = name
        self.catalog = Catalog(broadcast=name)
        self.live = True  # until it ends (its publisher gone for longer than the grace period)
        self.publishing = True  # a publisher is attached now
        self.publishes = 1  # publish sessions so far (reconnects + 1)
        self.started = time.monotonic()  # of the current publish
        self.created = time.time()  # wall clock of the first publish (the API's "started")
        # counters read by metrics at scrape time: an integer add per frame, a little per group
        self.frames_in = 0
        self.bytes_in: dict[str, int] = {}  # by track
        self.groups = 0
        self.keyframe_interval_ms = 0  # between the starts of the last two groups
        self.skipped_groups = 0  # whole groups readers dropped for falling behind
        self._group_dts: int | None = None
        self._registry = registry
        # the registry's bounds: of the group in progress kept for new readers, of a reader's queue
        self.max_group_bytes = BROADCAST_MAX_GROUP_BYTES if registry is None else registry.max_group_bytes
        self.reader_max_buffered_bytes = READER_MAX_BUFFERED_BYTES if registry is None \
            else registry.reader_max_buffered_bytes
        self._readers: set[BroadcastReader] = set()
        self._listeners: list = []  # callables given every event at once (listen)
        self._current_group: list[Frame] = []  # frames since the newest video keyframe
        self._current_group_bytes = 0
        self._ended = asyncio.Event()
        # continuity across publishes: what the next publish's groups and timestamps are shifted by
        self._shift = False
        self._group_base = 0
        self._ts_offset: int | None = 0
        self._last_group = -1
        self._last_dts: int | None = None
        self._left_at: float | None = None  # monotonic time the publisher left
        # a returning publish's tracks (the names its catalogs gave) until its first group is over,
        # and that group (see the class docstring); None: the track set is known
        self._carried: set[str] | None = None
        self._first_group: int | None = None
        self.expires_at: float | None = None  # ends then unless a publisher returns (registry.expire)
        self._end_when_flushed = False  # no grace period: it ends once the transcoder's last frames are in
        # tracks made on demand (transcoder rungs): who watches each, and who to tell
        self.demand: dict[str, int] = {}
        self._demand_watchers: list = []
        self._catalog_watchers: list = []  # () -> None, whenever the catalog changes (watch_catalog)

    # -- renditions made on demand ------------------------------------------------------------------
    def want(self, track: str, wanted: bool = True) -> None:
        """A reader (the relay for its MoQ subscribers, the edge for its players) starts or stops
        needing ``track``; the transcoder makes a rung only while someone needs it."""
        before = self.demand.get(track, 0)
        after = max(before + (1 if wanted else -1), 0)
        self.demand[track] = after
        if (before == 0) != (after == 0):
            for watcher in tuple(self._demand_watchers):
                watcher(track, after > 0)

    def watch_demand(self, callback) -> None:
        """``callback(track, wanted)`` whenever a track goes from unwatched to watched or back."""
        self._demand_watchers.append(callback)

    def push_rendition(self, frame: Frame) -> None:
        """A frame of a track made here from this broadcast's own frames (a transcoder rung): its
        groups and timestamps are the source's already, so no seam shift applies."""
        if self.live:
            for reader in tuple(self._readers):
                reader._put(frame)
            if self._listeners:
                self._tell(frame)

    def skip_rendition_group(self, track: str, group: int) -> None:
        """A track made here dropped (the rest of) ``group``: readers pass the skip on."""
        if self.live:
            event = GroupSkipped(track, group)
            for reader in tuple(self._readers):
                reader._put(event)
            if self._listeners:
                self._tell(event)

    def remove_renditions(self, tracks) -> None:
        """Tracks made here that are made no more (transcoder rungs of a source that left, or that
        is now no larger than they are) leave the catalog."""
        gone = {track for track in tracks if self.catalog.track(track) is not None}
        if gone:
            self._new_catalog(self.catalog.without_tracks(gone))

    # -- publisher side -------------------------------------------------------------------------
    def set_catalog(self, catalog: Catalog) -> None:
        """Merge a publisher's catalog: tracks it describes are added or replaced, others stay (a
        returning publisher's catalog grows track by track; viewers keep what they had meanwhile,
        until its first group is over: see the class docstring)."""
        if self._carried is not None:
            self._carried.update(info.name for info in catalog.tracks)
        merged = self.catalog
        for info in catalog.tracks:
            if merged.track(info.name) != info:
                merged = merged.with_track(info, generated_at=catalog.generated_at)
        if merged is not self.catalog:
            self._new_catalog(merged)

    @property
    def not_carried(self) -> tuple:
        """Tracks of the current publish whose codec is not carried (catalog.NotCarried, in the
        order the publisher sent them): the status page and the player page say why nothing
        plays. In the catalog, so nodes that get the broadcast over MoQ say it too."""
        return self.catalog.not_carried

    def add_not_carried(self, dropped) -> None:
        """The publisher sends a track in a codec that is not carried (the demuxer's callback)."""
        catalog = self.catalog.with_not_carried(dropped, generated_at=time.time_ns() // 1_000_000)
        if catalog is not self.catalog:
            self._new_catalog(catalog)

    def watch_catalog(self, callback) -> None:
        """``callback()`` whenever the catalog changes (from inside the publisher's calls: it must
        not block)."""
        self._catalog_watchers.append(callback)

    def _new_catalog(self, catalog: Catalog) -> None:
        self.catalog = catalog
        for watcher in tuple(self._catalog_watchers):
            watcher()
        update = CatalogUpdate(catalog)
        for reader in tuple(self._readers):
            reader._put(update)
        if self._listeners:
            self._tell(update)

    def push(self, frame: Frame) -> None:
        if self._shift:
            frame = self._continue(frame)
        if self._carried is not None:
            self._track_set_known(frame)
        self.frames_in += 1
        size = len(frame.payload)
        try:
            self.bytes_in[frame.track] += size
        except KeyError:  # the track's first frame
            self.bytes_in[frame.track] = size
        if frame.group > self._last_group:
            self._last_group = frame.group
            self.groups += 1
            if self._group_dts is not None and frame.dts > self._group_dts:
                self.keyframe_interval_ms = frame.dts - self._group_dts
            self._group_dts = frame.dts
        if self._last_dts is None or frame.dts > self._last_dts:
            self._last_dts = frame.dts
        if frame.track == VIDEO and frame.index == 0:
            self._current_group.clear()
            self._current_group_bytes = 0
        if self._current_group_bytes + size <= self.max_group_bytes:
            self._current_group.append(frame)
            self._current_group_bytes += size
        if self._readers:
            for reader in tuple(self._readers):
                reader._put(frame)
        if self._listeners:  # _tell, inline: one Python call fewer per frame (issue 12)
            for listener in tuple(self._listeners):
                try:
                    listener(frame)
                except Exception:  # a consumer's bug must not reach the publisher's connection
                    log.exception("broadcast %s: a listener failed; it is detached", safe_name(self.name))
                    self.unlisten(listener)

    def _tell(self, event: BroadcastEvent) -> None:
        for listener in tuple(self._listeners):
            try:
                listener(event)
            except Exception:  # a consumer's bug must not reach the publisher's connection
                log.exception("broadcast %s: a listener failed; it is detached", safe_name(self.name))
                self.unlisten(listener)

    def _continue(self, frame: Frame) -> Frame:
        """A frame of a publish after the first, on the broadcast's group and time lines."""
        if self._ts_offset is None:  # the first frame of this publish fixes the shift
            gap = int((time.monotonic() - self._left_at) * SOURCE_TIMESCALE) if self._left_at is not None else 0
            self._ts_offset = (self._last_dts or 0) + max(gap, SEAM_MIN_GAP_MS) - frame.dts
        off = self._ts_offset
        return Frame(frame.track, frame.group + self._group_base, frame.index, frame.dts + off, frame.pts + off,
                     frame.keyframe, frame.payload, frame.received_ns)

    def _track_set_known(self, frame: Frame) -> None:
        """A returning publish's frame: at its first frame of a group after its first, the tracks
        it has not declared leave the catalog (see the class docstring)."""
        if self._first_group is None:
            self._first_group = frame.group
            return
        if frame.group <= self._first_group:
            return
        carried, self._carried = self._carried, None
        left = {t.name for t in self.catalog.tracks
                if t.name not in carried and t.kind != DATA and not self.catalog.is_rung(t.name)}
        # and the rungs made from them: nothing feeds them any more
        gone = [t.name for t in self.catalog.tracks if t.name in left or t.source in left]
        if not gone:
            return
        log.info("broadcast %s: the publisher came back without %s; removed from the catalog",
                 safe_name(self.name), ", ".join(gone))
        # a late reader must not start on frames of a track the catalog no longer has
        self._current_group = [f for f in self._current_group if f.track not in gone]
        self._current_group_bytes = sum(len(f.payload) for f in self._current_group)
        generated = frame.received_ns // 1_000_000 if frame.received_ns else None
        self._new_catalog(self.catalog.without_tracks(set(gone), generated_at=generated))

    def publisher_left(self, grace_period: float, now: float, lost: bool = False) -> None:
        """The publisher went away at ``now`` (monotonic): end now, or wait ``grace_period`` seconds
        for it to return (the registry's ``expire(now)`` ends it after that). ``lost``: without
        ending its publish (see PublisherLeft); its groups in progress are cut short first."""
        if not self.live or not self.publishing:
            return
        if lost:
            # a late reader or listener must not start on the cut group as if it went on
            self._current_group.clear()
            self._current_group_bytes = 0
        left = PublisherLeft(self.name, lost)
        for reader in tuple(self._readers):
            if reader.publisher_events:
                reader._put(left)
        if self._listeners:  # the relay: it ends (or, cut short, resets) the groups in progress
            self._tell(left)
        if grace_period <= 0:
            if not any(reader.publisher_events for reader in self._readers):
                self.end()
                return
            # a transcoder reads it: its rungs' last frames (the pictures its decoders held back)
            # come after this, and the broadcast must still take them (renditions_flushed)
            self._end_when_flushed = True
            grace_period = RENDITION_FLUSH_TIMEOUT
        self.publishing = False
        self._left_at = now
        self.expires_at = now + grace_period
        if not self._end_when_flushed and not (self._registry is not None and self._registry.stopping):
            log.info("broadcast %s: publisher left, kept for %g s", safe_name(self.name), grace_period)

    def renditions_flushed(self) -> None:
        """The transcoder has passed on the last frames its rungs made after the publisher left:
        a broadcast with no grace period ends now."""
        if self._end_when_flushed and not self.publishing:
            self.end()

    def _resume(self) -> None:
        """A new publish continues this broadcast (see the class docstring)."""
        self.expires_at = None
        if self._last_dts is not None:  # something was published before: shift what comes
            self._shift = True
            self._group_base = self._last_group + 1
            self._ts_offset = None
        # even after a publish of headers alone (no frame): this one's frames settle the track set
        self._carried, self._first_group = set(), None
        if self.catalog.not_carried:  # this publish says again what it sends
            self._new_catalog(replace(self.catalog, not_carried=(), version=self.catalog.version + 1))
        self.publishing = True
        self.publishes += 1
        self.started = time.monotonic()

    def end(self) -> None:
        if not self.live:
            return
        self.live = False
        self.publishing = False
        self.expires_at = None
        ended = BroadcastEnded(self.name)
        for reader in tuple(self._readers):
            reader._put(ended)
        if self._listeners:
            self._tell(ended)
            self._listeners.clear()
        self._current_group.clear()
        self._ended.set()
        if self._registry is not None:
            self._registry._remove(self)

    @property
    def readers(self) -> int:
        return len(self._readers)

    async def wait_ended(self) -> None:
        await self._ended.wait()

    # -- reader side ----------------------------------------------------------------------------
    def listen(self, listener) -> None:
        """Call ``listener(event)`` with what a new reader would get first (the catalog, the group
        in progress), then with every CatalogUpdate, Frame, GroupSkipped, PublisherLeft and the
        BroadcastEnded as they happen,
        from inside the publisher's calls: it must not block (nor raise: it would be detached)."""
        if not self.catalog.empty:
            listener(CatalogUpdate(self.catalog))
        for frame in tuple(self._current_group):
            listener(frame)
        if self.live:
            self._listeners.append(listener)
        else:
            listener(BroadcastEnded(self.name))

    def unlisten(self, listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def reader(self, max_buffered_bytes: int | None = None,
               publisher_events: bool = False) -> BroadcastReader:
        """A new reader: the catalog, then the group in progress from its keyframe, then live
        (``publisher_events``: with PublisherLeft when the publisher goes; ``max_buffered_bytes``
        None: the broadcast's ``reader_max_buffered_bytes``)."""
        r = BroadcastReader(self, self.reader_max_buffered_bytes if max_buffered_bytes is None else max_buffered_bytes,
                            publisher_events)
        if not self.catalog.empty:
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

    def __init__(self, *, max_group_bytes: int = BROADCAST_MAX_GROUP_BYTES,
                 reader_max_buffered_bytes: int = READER_MAX_BUFFERED_BYTES) -> None:
        self.max_group_bytes = max_group_bytes  # each broadcast's (see Broadcast)
        self.reader_max_buffered_bytes = reader_max_buffered_bytes
        self._live: dict[str, Broadcast] = {}
        self._waiters: dict[str, list[asyncio.Future]] = {}
        self._watchers: set[asyncio.Queue] = set()
        # the node is stopping (set by the ingest when its graceful stop begins): its broadcasts end
        # with it, so a publisher leaving now is not said to be waited for (the grace period)
        self.stopping = False

    def publish(self, name: str) -> Broadcast:
        """A new broadcast, or the same one again when its publisher left less than the grace
        period ago. Raises StreamNameInUse while a publisher is attached (a takeover ends that
        publish first)."""
        b = self._live.get(name)
        if b is not None and b._end_when_flushed and not b.publishing:
            b.end()  # no grace period: a new publish is a new broadcast, even while the old one's rungs end
            b = None
        if b is not None:
            if b.publishing:
                raise StreamNameInUse(f"broadcast {safe_name(name)} is already live")
            b._resume()
            log.info("broadcast %s: publisher is back (publish %d)", safe_name(name), b.publishes)
            return b
        b = Broadcast(name, self)
        self._live[name] = b
        for fut in self._waiters.pop(name, ()):
            if not fut.done():
                fut.set_result(b)
        for q in self._watchers:
            q.put_nowait(b)
        log.info("broadcast %s is live", safe_name(name))
        return b

    def expire(self, now: float) -> None:
        """End the broadcasts whose publisher has not returned within the grace period."""
        for b in list(self._live.values()):
            if b.expires_at is not None and now >= b.expires_at:
                log.info("broadcast %s: no publisher came back", safe_name(b.name))
                b.end()

    def end_all(self) -> None:
        """End every broadcast now (the node is stopping: players get their ENDLIST)."""
        for b in list(self._live.values()):
            b.end()

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
            log.info("broadcast %s ended%s", safe_name(b.name), ": the node is stopping" if self.stopping else "")
