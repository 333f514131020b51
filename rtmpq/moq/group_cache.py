"""The relay's memory of a track: the newest groups, bounded by bytes and by age.

A new subscriber starts at the newest group that has begun (for video its first object is the
IDR), so it needs that group from object 0 even while the group is still in progress. Older
complete groups are kept while the bounds allow, for subscribers that ask from an earlier group
(FETCH, or a relay below that catches up). The bounds are hard: when a group in progress alone
outgrows ``max_bytes`` it stops being cached (subscribers still get its objects live) rather than
let one publisher's huge GoP take the relay's memory.

A relayed group may come in several subgroups (MoQT d16, "Subgroups": one stream each upstream and
downstream): each object keeps its Subgroup ID, its subgroup's publisher priority and END_OF_GROUP
flag (a cache MUST store all properties of an object), and the group which of its subgroups ended,
so a late subscriber or a FETCH gets them as they came. An in-process broadcast's groups are one
subgroup, 0: its frames carry nothing more per frame for that (issue 12).

A relayed track's MAX_CACHE_DURATION (draft 16, a Track Extension: "the relay MUST NOT start
forwarding any individual Object ... after the specified number of milliseconds has elapsed since
the beginning of the Object was received") is ``max_object_age``: a group whose first object
came longer ago than that is no longer served, as one too big to cache; its state is unknown, and
a FETCH of it goes to the track's source (relay.py). The serving reads (``latest``, ``groups_from``,
``largest_at``, ``expired_in``) take the time and apply it themselves (``expire``), so no caller
serves an object past it by forgetting to expire first; ``expire`` alone is for a timer.
"""

import bisect
from collections import OrderedDict
from dataclasses import dataclass, field

from ..media.frames import Frame
from .loc import frame_extensions

# The defaults of a relay's [moq] group_cache_max_bytes, _max_age, _max_groups (CacheBounds).
# At most this many bytes of objects per track (the newest group always counts first).
GROUP_CACHE_MAX_BYTES = 32 * 1024 * 1024
# Complete groups older than this (seconds since their first object) are evicted.
GROUP_CACHE_MAX_AGE = 30.0
# Never keep more groups than this per track, however small.
GROUP_CACHE_MAX_GROUPS = 8


@dataclass(slots=True)
class CachedObject:
    object_id: int
    payload: bytes | memoryview
    extensions: dict | None = None
    subgroup: int = 0
    priority: int | None = None  # its subgroup's publisher priority (None: the track's)
    end_of_group: bool = True  # its subgroup holds the group's last object (the header's END_OF_GROUP)
    # its Object Status (draft 16): End of Group / End of Track objects are cached and forwarded as
    # they came (empty, never as Normal ones); a FETCH answer leaves them out (FETCH has no status)
    status: int = 0
    # Forwarding Preference Datagram: it came (and goes to subscribers) as an OBJECT_DATAGRAM, in
    # no subgroup; a FETCH carries it on its stream, flagged so (draft 16). ``end_of_group`` is
    # then its own END_OF_GROUP bit
    datagram: bool = False


class CachedFrame:
    """A frame of an in-process broadcast, cached as it came: its LOC extensions are built when a
    late subscriber or a FETCH reads them, not for every frame (most frames of an ingest nobody
    watches are never read), and the frame costs less memory than a dict of them (issue 12)."""

    __slots__ = ("frame", "timescale")
    # an in-process broadcast sends each group as one subgroup (class attributes: nothing per frame)
    subgroup = 0
    priority = None
    end_of_group = True
    status = 0
    datagram = False

    def __init__(self, frame: Frame, timescale: int) -> None:
        self.frame = frame
        self.timescale = timescale

    @property
    def object_id(self) -> int:
        return self.frame.index

    @property
    def payload(self):
        return self.frame.payload

    @property
    def extensions(self) -> dict:
        return frame_extensions(self.frame, self.timescale)


@dataclass(slots=True)
class CachedGroup:
    group_id: int
    started: float  # time of its first object
    objects: list[CachedObject | CachedFrame] = field(default_factory=list)
    size: int = 0
    complete: bool = False  # every subgroup of it ended (or, from a local source, a newer group began)
    truncated: bool = False  # objects were not all cached (too big): cannot serve from object 0
    ended: set[int] | None = None  # subgroups whose stream ended while the group goes on (End of Group, FIN)
    subgroups: bool = False  # objects of a subgroup other than 0 came (see ``GroupCache.add``)
    expired: bool = False  # dropped for the track's MAX_CACHE_DURATION (truncated too)
    last_ids: dict[int, int] = field(default_factory=dict)  # subgroup -> its largest Object ID on a stream


def _object_id(obj) -> int:
    return obj.object_id


@dataclass(frozen=True, slots=True)
class CacheBounds:
    """A relay's bounds of each media track's cache ([moq] group_cache_max_bytes, _max_age,
    _max_groups); ``cache()`` makes one. A catalog (state) track keeps the defaults: one small group."""

    max_bytes: int = GROUP_CACHE_MAX_BYTES
    max_age: float = GROUP_CACHE_MAX_AGE
    max_groups: int = GROUP_CACHE_MAX_GROUPS

    def cache(self) -> "GroupCache":
        return GroupCache(max_bytes=self.max_bytes, max_age=self.max_age, max_groups=self.max_groups)


class GroupCache:
    def __init__(self, *, max_bytes: int = GROUP_CACHE_MAX_BYTES, max_age: float = GROUP_CACHE_MAX_AGE,
                 max_groups: int = GROUP_CACHE_MAX_GROUPS) -> None:
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.max_groups = max_groups
        # seconds an object may be served for after it came (the track's MAX_CACHE_DURATION), or None
        self.max_object_age: float | None = None
        self._groups: OrderedDict[int, CachedGroup] = OrderedDict()
        self.size = 0
        # start time of the oldest group while another is held (else None): what ``add`` checks
        # to skip ``_evict`` for the common object that can evict nothing (issue 12)
        self._oldest_started: float | None = None
        self._newest: CachedGroup | None = None  # the last group of _groups: most objects are its

    def __len__(self) -> int:
        return len(self._groups)

    def add(self, group_id: int, object_id: int, payload, extensions: dict | None, now: float,
            subgroup: int = 0, priority: int | None = None, end_of_group: bool = True, status: int = 0,
            datagram: bool = False) -> bool:
        """Cache an object; False for one that came on a stream with an Object ID not above the
        last of its subgroup in its group: an object sent again (a subgroup on a second stream).
        It is neither cached nor to be passed on: draft 16 ("Multiple Publishers") has relays
        deduplicate, and a subscriber's subgroup stream cannot go back in Object IDs."""
        group = self._newest
        if group is None or group.group_id != group_id:
            group = self._groups.get(group_id)
        if group is not None and not datagram:
            last = group.last_ids.get(subgroup)
            if last is not None and object_id <= last:
                return False
        obj = CachedObject(object_id, payload, extensions, subgroup, priority, end_of_group, status, datagram)
        kept = self._add(group_id, obj, len(payload), now)
        # only a group in several subgroups (several streams), or of datagrams (each on its own),
        # can come out of Object ID order
        if kept is not None and (subgroup or datagram or kept.subgroups):
            kept.subgroups = True
            objects = kept.objects
            if len(objects) > 1 and object_id < objects[-2].object_id:
                # another subgroup's stream came ahead of this one: a group is kept in Object ID
                # order (its largest object, a FETCH's order), each subgroup's objects still in theirs
                objects.pop()
                bisect.insort(objects, obj, key=_object_id)
        held = kept or group or self._groups.get(group_id)  # (a truncated group still knows its IDs)
        if held is not None and not datagram:
            held.last_ids[subgroup] = object_id
        return True

    def add_frame(self, frame: Frame, timescale: int, now: float) -> None:
        """``add`` for a frame of an in-process broadcast (see CachedFrame)."""
        self._add(frame.group, CachedFrame(frame, timescale), len(frame.payload), now)

    def _add(self, group_id: int, obj, n: int, now: float) -> CachedGroup | None:
        """Cache ``obj`` (``n`` payload bytes); the group it went to, if it was kept."""
        group = self._newest
        if group is None or group.group_id != group_id:
            group = self._groups.get(group_id)
        new = group is None
        if new:
            if self._groups and group_id < next(reversed(self._groups)):
                return None  # a late object of an old group: not worth caching
            group = self._newest = CachedGroup(group_id, now)
            self._groups[group_id] = group
            for older in self._groups.values():
                if older is not group:
                    older.complete = True  # a newer group began: the older one is over
        if group.truncated:
            return None
        group.objects.append(obj)
        group.size += n
        self.size += n
        # only a new group, the byte bound or the oldest group's age can evict: else (most
        # objects) the groups held are the same as before this one, and _evict would find nothing
        oldest = self._oldest_started
        if new or self.size > self.max_bytes or (oldest is not None and now - oldest > self.max_age):
            self._evict(now)
        if self.size > self.max_bytes:  # only the newest group is left and it is too big
            group.truncated = True
            self.size -= group.size
            group.objects.clear()
            group.size = 0
        return group

    def end_group(self, group_id: int) -> None:
        group = self._groups.get(group_id)
        if group is not None:
            group.complete = True

    def end_subgroup(self, group_id: int, subgroup: int) -> None:
        """One subgroup of ``group_id`` ended (its stream's FIN, or an End of Group object on it)."""
        group = self._groups.get(group_id)
        if group is not None and not group.complete:
            if group.ended is None:
                group.ended = set()
            group.ended.add(subgroup)

    def _evict(self, now: float) -> None:
        while len(self._groups) > 1:
            oldest = next(iter(self._groups.values()))
            too_old = now - oldest.started > self.max_age
            if self.size > self.max_bytes or len(self._groups) > self.max_groups or too_old:
                self._groups.popitem(last=False)
                self.size -= oldest.size
            else:
                break
        self._oldest_started = next(iter(self._groups.values())).started if len(self._groups) > 1 else None

    def has_objects(self, group_id: int) -> bool:
        """Whether some object of ``group_id`` arrived (and is still held or was dropped since)."""
        group = self._groups.get(group_id)
        return group is not None and (bool(group.objects) or group.truncated)

    def drop(self, group_id: int) -> None:
        """Forget a group that can no longer be served whole."""
        group = self._groups.get(group_id)
        if group is not None:
            group.truncated = True
            self.size -= group.size
            group.objects.clear()
            group.size = 0

    def expire(self, now: float) -> None:
        """Evict by age (call from a timer: a stalled track must not hold memory forever), and
        stop serving the groups past ``max_object_age`` (the serving reads call it too: the
        draft's MUST NOT holds between two timer calls)."""
        self._evict(now)
        limit = self.max_object_age
        if limit is not None:
            for group in self._groups.values():
                if now - group.started <= limit:
                    break  # newer groups began later still
                if not group.expired:
                    # its first object is past the limit; the group is only served from object 0
                    # (a FETCH would have a hole): all of it goes, later objects are not cached
                    self.drop(group.group_id)
                    group.expired = True

    def expired_in(self, start: tuple[int, int], end: tuple[int, int], now: float) -> bool:
        """Whether a group from ``start`` to ``end`` (exclusive; object 0: all of the end group)
        was dropped for ``max_object_age`` (by ``now``) and is still remembered here."""
        self.expire(now)
        return any(g.expired for g in self._groups.values() if start[0] <= g.group_id <= end[0])

    def latest(self, now: float) -> CachedGroup | None:
        """The newest group that can be served from its first object at ``now``, or None."""
        self.expire(now)
        for group in reversed(self._groups.values()):
            if not group.truncated and group.objects and group.objects[0].object_id == 0:
                return group
        return None

    def groups(self) -> list[CachedGroup]:
        """Every group held, oldest first (truncated ones included: their objects are gone); to
        serve from them, ``largest_at(now)`` first."""
        return list(self._groups.values())

    def groups_from(self, group_id: int, now: float) -> list[CachedGroup]:
        """The groups from ``group_id`` on that can be served at ``now``, oldest first."""
        self.expire(now)
        return [g for g in self._groups.values() if g.group_id >= group_id and not g.truncated]

    def largest_at(self, now: float) -> tuple[int, int] | None:
        """``largest`` of what may be served at ``now`` (SUBSCRIBE_OK's Largest Location, a FETCH)."""
        self.expire(now)
        return self.largest

    @property
    def largest(self) -> tuple[int, int] | None:
        """(group, object) of the newest object cached: a Normal one (a status object says where
        objects stop, not that one is there to FETCH)."""
        for group in reversed(self._groups.values()):
            for obj in reversed(group.objects):
                if not obj.status:
                    return group.group_id, obj.object_id
        return None
