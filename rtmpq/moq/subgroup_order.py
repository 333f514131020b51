"""A group's frames in Object ID order when it comes in several subgroups (several QUIC streams).

A publisher may send a group in subgroups whose objects interleave (MoQT d16, "Subgroups":
temporal layers put objects 0, 3, 6 in one subgroup, 1, 4, 7 in another); each subgroup has its
own stream, so a subgroup can arrive whole before the next one begins (a relay sends the base
layer first). The consumers of ``subscribe_broadcast`` take a track's frames in decode order (the
edge's packager appends them to the part it is cutting), so within a group a frame is handed on
once the Object IDs before it have been: a frame after a gap waits for it to fill, at most
``REORDER_WAIT``, or until a newer group of its track begins, a subgroup of its group is reset (its
objects are likely what the gap waits for) or the subscription ends. rtmpq's own groups are one
subgroup with no gap: each frame goes on at once, as before.

MSF numbers a group's objects 0, 1, 2, ... ("Object Numbering"), so a gap is an object still on
its way on another subgroup, or one lost with a reset; a publisher that leaves gaps says so with
the Prior Object ID Gap extension (MoQT d16), and the gap it covers is not waited for. A
subgroup may not have been seen yet, so nothing here can tell a gap that will fill from one that
will not: the wait is the bound. A frame that comes after its place was passed (the gap let go)
is handed on still, late: nothing is lost, and a consumer that needs order drops it (the edge,
``in_order``).

Sans-I/O: the caller passes the time and calls ``due`` at ``next_due``.
"""

from ..media.frames import Frame

# Seconds a frame after a gap in its group's Object IDs waits for the gap to fill (another
# subgroup's stream on its way): longer than a loopback or LAN stream's lag behind another, short
# against a segment part, and only ever spent on a group that has a gap.
REORDER_WAIT = 0.5
# Groups per track whose next Object ID is remembered (a late tail of an older group is still
# matched to its place).
GROUPS_REMEMBERED = 8


class _Group:
    __slots__ = ("next", "held", "since", "absent")

    def __init__(self, next_id: int) -> None:
        self.next = next_id  # the Object ID to hand on next
        self.held: dict[int, Frame] = {}  # Object ID -> frame after a gap
        self.since = 0.0  # when the frames held began to wait
        self.absent: dict[int, int] = {}  # a held frame's Prior Object ID Gap: its first ID -> the frame's


class SubgroupOrder:
    """Frames of each group of each track in Object ID order across its subgroups (see the module)."""

    def __init__(self) -> None:
        self._tracks: dict[str, dict[int, _Group]] = {}
        self._holding: dict[tuple[str, int], _Group] = {}  # the groups with frames held

    def frame(self, frame: Frame, subgroup: int, now: float, prior_gap: int = 0) -> list[Frame]:
        """A frame that came on ``subgroup``'s stream: the frames to hand on now, in order.
        ``prior_gap``: its Prior Object ID Gap, the Object IDs just before it that do not exist."""
        groups = self._tracks.get(frame.track)
        g = None if groups is None else groups.get(frame.group)
        if g is None:
            return self._first(frame, subgroup, now, prior_gap)
        index = frame.index
        if prior_gap and index - prior_gap <= g.next < index:
            g.next = index
        if index == g.next:
            g.next = index + 1
            if not g.held:
                return [frame]
            out = [frame]
            while True:
                if g.next in g.absent:
                    g.next = g.absent.pop(g.next)
                if g.next not in g.held:
                    break
                out.append(g.held.pop(g.next))
                g.next += 1
            if g.held:
                g.since = now  # the gap before them moved: the other subgroups are flowing
            else:
                del self._holding[(frame.track, frame.group)]
            return out
        if index < g.next:
            return [frame]  # its place was passed (a gap let go): handed on late
        if not g.held:
            g.since = now
            self._holding[(frame.track, frame.group)] = g
        g.held[index] = frame
        if prior_gap:
            g.absent[index - prior_gap] = index
        return []

    def _first(self, frame: Frame, subgroup: int, now: float, prior_gap: int) -> list[Frame]:
        """The first frame of its group: a newer group lets the older ones' held frames go (the
        consumer moves on to it). Subgroup 0 starts the group where it is (a subscription may
        join mid-group); another subgroup's frame waits for the Object IDs below it."""
        track, group = frame.track, frame.group
        out = []
        for key in sorted(k for k in self._holding if k[0] == track and k[1] < group):
            out += self._let_go(key)
        groups = self._tracks.setdefault(track, {})
        groups[group] = _Group(frame.index if subgroup == 0 else 0)
        if len(groups) > GROUPS_REMEMBERED:
            oldest = next(iter(groups))
            if (track, oldest) in self._holding:
                out += self._let_go((track, oldest))
            del groups[oldest]
        return out + self.frame(frame, subgroup, now, prior_gap)

    def starts(self, track: str, group: int, object_id: int) -> None:
        """A subscription of ``track`` starts at this object (a FETCH carries the ones before)."""
        self._tracks.setdefault(track, {}).setdefault(group, _Group(object_id))

    def reset(self, track: str, group: int) -> list[Frame]:
        """A subgroup of ``group`` was reset: its held frames go on (the gap is likely its objects)."""
        return self._let_go((track, group)) if (track, group) in self._holding else []

    @property
    def holding(self) -> bool:
        """Whether frames wait for a gap (then ``due`` is to be called at ``next_due``)."""
        return bool(self._holding)

    @property
    def next_due(self) -> float | None:
        """When ``due`` next has frames to let go (None: nothing is held)."""
        if not self._holding:
            return None
        return min(g.since for g in self._holding.values()) + REORDER_WAIT

    def due(self, now: float) -> list[Frame]:
        """The held frames whose wait is over, each group's in Object ID order."""
        out = []
        for key in sorted(k for k, g in self._holding.items() if now >= g.since + REORDER_WAIT):
            out += self._let_go(key)
        return out

    def flush(self) -> list[Frame]:
        """Every frame held (the subscription ends)."""
        out = []
        for key in sorted(self._holding):
            out += self._let_go(key)
        return out

    def forget(self, track: str) -> None:
        """``track``'s subscription is let go: its held frames too (a new one sends them again)."""
        for key in [k for k in self._holding if k[0] == track]:
            del self._holding[key]
        self._tracks.pop(track, None)

    def _let_go(self, key: tuple[str, int]) -> list[Frame]:
        g = self._holding.pop(key)
        ids = sorted(g.held)
        g.next = ids[-1] + 1
        out = [g.held[i] for i in ids]
        g.held, g.absent = {}, {}
        return out
