"""Joining a broadcast with its recent past: the cached groups before the live edge, by FETCH.

A subscriber that starts packaging a broadcast (an edge's LL-HLS playlist window) wants the
whole groups the relay above still caches, not only what is published from now on. For each
media track it SUBSCRIBEs with the Largest Object filter and, once SUBSCRIBE_OK is in, sends a
relative joining FETCH ``groups`` back (MoQT draft 16, "Joining Fetch Range Calculation"): the
fetch carries groups largest-N up to the largest object, the subscription every object after
it, so the two are contiguous and do not overlap. A response cut at the relay's byte limit
(its FETCH_OK End Location falls short) is continued with a standalone FETCH from where it ended.

Until every track's fill has settled, live frames are held back; then the fetched frames go out
(the tracks merged by decode time, each in its own order), then the held live frames (any the
fetch already carried dropped), then live frames as they come. A track whose fetch is refused,
reset, or not done within ``FILL_TIMEOUT`` starts at the live edge instead: the caller
re-subscribes it as it would without the fill, and what was fetched or held for it is let go.
Objects the relay says it does not know (a range inside the fetch it could not cache) would
leave a hole: the fetched frames before such a range are let go too, so what is kept is one
contiguous run ending where the subscription starts.

Sans-I/O: no sockets and no clock. The caller sends the requests this class asks for, feeds it
the answers, and calls ``expire`` when ``FILL_TIMEOUT`` has passed since ``started``.
"""

import heapq
from collections.abc import Callable
from dataclasses import dataclass, field

from ..media.frames import Frame

Location = tuple[int, int]

# Seconds a fill may take (from the first track's SUBSCRIBE to the last fetch's end) before the
# tracks still fetching start at the live edge instead: the longest a first viewer waits for it.
FILL_TIMEOUT = 3.0
# Standalone FETCHes that may continue one track's cut response (each ends at most the relay's
# byte limit further on); a relay that keeps cutting after that is treated as refusing.
MAX_CONTINUATIONS = 8

_FETCHING, _DONE, _LIVE = "fetching", "done", "live"


@dataclass(slots=True)
class _Track:
    state: str = _FETCHING
    join_end: Location | None = None  # exclusive: the subscription's first object
    ok_end: Location | None = None  # FETCH_OK's End Location of the request in progress
    fetched: list[Frame] = field(default_factory=list)
    continuations: int = 0


@dataclass(frozen=True, slots=True)
class Continue:
    """Ask again: a standalone FETCH of ``track`` from ``start`` up to ``end`` (exclusive)."""

    track: str
    start: Location
    end: Location


class WindowFill:
    """The fill of one subscription to a broadcast (see the module docstring)."""

    def __init__(self, groups: int) -> None:
        self.groups = groups
        self.released = False
        self.started = False  # the first track was subscribed: the caller starts its timer
        self._tracks: dict[str, _Track] = {}
        self._fetches: dict[int, str] = {}  # request id -> track
        self._fetched_to: dict[str, Location] = {}  # track -> the newest location handed out from the fetch
        self._held: list[Frame] = []  # live frames of the fill's tracks, in the order they came

    # -- what to ask for ------------------------------------------------------------------------
    def wants(self, track: str) -> bool:
        """Whether ``track`` is subscribed for the fill (Largest Object filter + joining FETCH):
        the tracks the subscription starts with, not those added once the fill is out."""
        return not self.released and track not in self._tracks

    def subscribing(self, track: str) -> None:
        self._tracks[track] = _Track()
        self.started = True

    def accepted(self, track: str, largest: Location | None) -> bool:
        """SUBSCRIBE_OK of a fill subscription; True: send the joining FETCH now (then ``fetching``).
        With no largest object nothing was published before the subscription: nothing to fetch."""
        t = self._tracks.get(track)
        if t is None or t.state != _FETCHING:
            return False
        if largest is None:
            t.state = _DONE
            return False
        t.join_end = (largest[0], largest[1] + 1)
        return True

    def fetching(self, request_id: int, track: str) -> None:
        self._fetches[request_id] = track

    def is_fetch(self, request_id: int) -> bool:
        return request_id in self._fetches

    def track_of(self, request_id: int) -> str | None:
        return self._fetches.get(request_id)

    # -- answers --------------------------------------------------------------------------------
    def fetch_ok(self, request_id: int, end: Location) -> None:
        t = self._track_of(request_id)
        if t is not None:
            t.ok_end = end

    def fetched(self, request_id: int, frame: Frame) -> None:
        t = self._track_of(request_id)
        if t is not None and (not t.fetched or (frame.group, frame.index) > _loc(t.fetched[-1])):
            t.fetched.append(frame)

    def unknown(self, request_id: int, until: Location) -> None:
        """Objects up to ``until`` (inclusive) are unknown to the relay: nothing before it is kept."""
        t = self._track_of(request_id)
        if t is not None:
            t.fetched = [f for f in t.fetched if _loc(f) > until]

    def fetch_ended(self, request_id: int) -> Continue | str | None:
        """The fetch stream ended cleanly. A response that stopped short of the subscription's
        start returns the standalone FETCH to send next (then ``fetching`` with its id); after
        ``MAX_CONTINUATIONS`` the track's name: it starts at the live edge (as after ``failed``)."""
        track = self._fetches.pop(request_id, None)
        t = self._tracks.get(track)
        if t is None or t.state != _FETCHING:
            return None
        if t.ok_end is not None and t.join_end is not None and t.ok_end < t.join_end:
            if t.continuations < MAX_CONTINUATIONS:
                t.continuations += 1
                start, t.ok_end = t.ok_end, None
                return Continue(track, start, t.join_end)
            self._go_live(t)
            return track
        t.state = _DONE
        return None

    def failed(self, request_id: int) -> str | None:
        """A fetch was refused or reset: its track starts at the live edge; returns its name (the
        caller re-subscribes it without the Largest Object filter)."""
        track = self._fetches.pop(request_id, None)
        t = self._tracks.get(track)
        if t is None or t.state != _FETCHING:
            return None
        self._go_live(t)
        return track

    def expire(self) -> list[tuple[str, list[int]]]:
        """``FILL_TIMEOUT`` passed: every track still fetching starts at the live edge. Returns
        (track, fetch request ids to cancel) for each."""
        out = []
        for name, t in self._tracks.items():
            if t.state == _FETCHING:
                self._go_live(t)
                ids = [rid for rid, n in self._fetches.items() if n == name]
                for rid in ids:
                    del self._fetches[rid]
                out.append((name, ids))
        return out

    def _go_live(self, t: _Track) -> None:
        t.state, t.fetched = _LIVE, []
        name = next(n for n, x in self._tracks.items() if x is t)
        self._held = [f for f in self._held if f.track != name]  # its new subscription sends them again

    def _track_of(self, request_id: int) -> _Track | None:
        t = self._tracks.get(self._fetches.get(request_id))
        return t if t is not None and t.state == _FETCHING else None

    # -- frames out -----------------------------------------------------------------------------
    def live(self, frame: Frame) -> list[Frame]:
        """A frame from a subscription: the frames to hand on now (none while the fill is out)."""
        if not self.released:
            t = self._tracks.get(frame.track)
            if t is not None:
                self._held.append(frame)
                return []
            return [frame]  # a track outside the fill
        newest = self._fetched_to.get(frame.track)
        if newest is not None and _loc(frame) <= newest:
            return []  # the fetch carried it already
        return [frame]

    @property
    def ready(self) -> bool:
        """Every track of the fill has settled: ``release`` hands everything on."""
        return not self.released and self.started and all(t.state != _FETCHING for t in self._tracks.values())

    def release(self, timescale: Callable[[str], int]) -> list[Frame]:
        """The fetched frames of every track merged by decode time (``timescale(track)`` ticks a
        second), then the frames held back, in the order they came. Ends the fill."""
        self.released = True
        runs = []
        for name, t in self._tracks.items():
            if t.fetched:
                self._fetched_to[name] = _loc(t.fetched[-1])
                scale = timescale(name) or 1
                runs.append([(f.dts / scale, i, f) for i, f in enumerate(t.fetched)])
        out = [f for _, _, f in heapq.merge(*runs, key=lambda x: x[0])]
        out += [f for f in self._held if _loc(f) > self._fetched_to.get(f.track, (-1, -1))]
        self._tracks.clear()
        self._fetches.clear()
        self._held = []
        return out

    @property
    def fetched_any(self) -> bool:
        return any(t.fetched for t in self._tracks.values())

    def summary(self) -> str:
        """What the fill holds, per track (for a log line before ``release``)."""
        return ", ".join(f"{name} groups {t.fetched[0].group}-{t.fetched[-1].group}" if t.fetched
                         else f"{name} from the live edge"
                         for name, t in self._tracks.items())


def _loc(frame: Frame) -> Location:
    return (frame.group, frame.index)
