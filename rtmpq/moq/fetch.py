"""What a FETCH gets from a relay's group cache (draft 16, "Fetch Handling").

The relay answers a FETCH from what it holds: the objects of the requested range that are in the
cache, in the requested group order, on one stream. It does not ask upstream for objects older
than its cache (a track it does not hold at all is another matter: relay.py passes that FETCH on
to the track's publisher or upstream relay).
Groups older than the cache are *unknown* to it (it may have joined the track late, or evicted
them), and so are groups it could not cache whole (truncated): those ranges are announced with an
End of Unknown Range marker rather than left as gaps, because a gap in a fetch means "does not
exist". Missing group ids between two cached groups never existed (the cache keeps a contiguous
window of the newest groups, truncated ones included).
Each object goes with its Subgroup ID and its subgroup's publisher priority (relay.py); Object
Status objects do not exist in a FETCH response (draft 16, "Object Status"): the end of a group
or of the track is not sent there as an object.
"""

from dataclasses import dataclass

from .group_cache import GroupCache
from .wire import LARGEST_VARINT

Location = tuple[int, int]

# Payload bytes one FETCH response may carry: a larger range is cut (ascending: FETCH_OK's End
# Location says where; descending: the oldest groups are left out), so that no peer can make the
# relay queue its whole cache per request. Ask again from where the response ended.
MAX_FETCH_BYTES = 8 * 1024 * 1024


class FetchRangeError(Exception):
    """The FETCH cannot be served (REQUEST_ERROR INVALID_RANGE)."""


@dataclass(frozen=True, slots=True)
class UnknownUntil:
    """Objects after the previous item up to this location, inclusive, are unknown here."""

    location: Location


@dataclass(frozen=True, slots=True)
class FetchPlan:
    end: Location  # FETCH_OK's End Location
    items: list  # (group id, CachedObject) and UnknownUntil, in sending order


def plan_fetch(cache: GroupCache, start: Location, end: Location, now: float, *, descending: bool = False,
               max_bytes: int = MAX_FETCH_BYTES) -> FetchPlan:
    """Objects of ``cache`` from ``start`` to ``end`` (exclusive; object 0 = all of the end group)
    that may be served at ``now``, at most ``max_bytes`` of payload (at least one object)."""
    largest = cache.largest_at(now)  # (and the groups past the track's MAX_CACHE_DURATION dropped)
    if largest is None:
        raise FetchRangeError("no objects have been published on this track")
    if start > largest:
        raise FetchRangeError(f"start {start} is after the largest object {largest}")
    last = (end[0], LARGEST_VARINT) if end[1] == 0 else (end[0], end[1] - 1)  # inclusive
    if last < start:
        raise FetchRangeError(f"end {end} is before start {start}")
    cached = cache.groups()
    groups = [g for g in cached if start[0] <= g.group_id <= last[0]]
    end_location = end
    if last >= largest:  # the range reaches past what has been published: it ends at the largest
        last = largest
        end_location = (largest[0], largest[1] + 1)

    blocks: list[list] = []  # per group: items in ascending object order
    oldest = cached[0].group_id
    if start[0] < oldest:  # older than anything cached
        blocks.append([UnknownUntil(min(last, (oldest - 1, LARGEST_VARINT)))])
    for group in groups:
        if group.truncated:
            blocks.append([UnknownUntil(min(last, (group.group_id, LARGEST_VARINT)))])
            continue
        # (in Object ID order, as the cache keeps a group whatever order its subgroups came in)
        # (a status object is not one: draft 16 has no Object Status in FETCH)
        objects = [(group.group_id, o) for o in group.objects
                   if not o.status and start <= (group.group_id, o.object_id) <= last]
        if objects:
            blocks.append(objects)
    if descending:
        # gaps mean "does not exist" only in ascending order: descending responses carry objects only
        blocks = [b for b in reversed(blocks) if not isinstance(b[0], UnknownUntil)]
    items: list = []
    size = 0
    last_sent: Location | None = None
    for item in (item for block in blocks for item in block):
        if isinstance(item, UnknownUntil):
            if items and isinstance(items[-1], UnknownUntil):
                items[-1] = item  # one marker covers adjacent unknown ranges
            else:
                items.append(item)
            continue
        group_id, obj = item
        if size + len(obj.payload) > max_bytes and last_sent is not None:
            if not descending:
                end_location = (last_sent[0], last_sent[1] + 1)
            break
        size += len(obj.payload)
        last_sent = (group_id, obj.object_id)
        items.append(item)
    return FetchPlan(end_location, items)
