"""A group's tail before the next group's start, for consumers that cut frames into segments.

Each group travels on its own QUIC stream, and a relay sends the newest group first; so on a
loaded link the last objects of group G (and its stream's FIN) can arrive after the first object
of G+1. ``subscribe_broadcast`` hands frames on as they arrive, and the edge's LL-HLS packager,
which has closed G's segment when G+1's keyframe came, has to drop that tail: a viewer misses a
frame at the end of a GoP (tests/test_edge_fetch.py caught one in 20-odd loaded runs).

Here a track's frames of a newer group wait while a stream of an older group of the track that
has begun is still open, until those streams end (FIN or reset) or ``wait`` seconds have passed;
a frame of an older group goes on at once (it is the tail waited for). rtmpq's relay ends a
group's stream when the next group begins, so the wait lasts until that FIN arrives: nothing on a
link where the streams keep their order. A relay that keeps old groups' streams open delays each
group's start by ``wait`` at most.

Sans-I/O: the caller says which older streams are open and passes the time, and calls ``due`` at
``next_due``.
"""

from ..media.frames import Frame

# Seconds a newer group's frames wait for an older group's stream of the same track to end: a
# frame interval or two of a stream's lag behind the next on a loaded link, short against an
# LL-HLS part target.
GROUP_TAIL_WAIT = 0.25


class GroupTails:
    """Frames of each track held while an older group of it is still arriving (see the module)."""

    def __init__(self, wait: float = GROUP_TAIL_WAIT) -> None:
        self.wait = wait
        self._held: dict[str, tuple[int, float, list[Frame]]] = {}  # track -> (group waiting, since, frames)

    def frame(self, frame: Frame, older_open: bool, now: float) -> list[Frame]:
        """A frame as it comes (``older_open``: a stream of an older group of its track has begun
        and not ended): the frames to hand on now."""
        held = self._held.get(frame.track)
        if held is not None:
            if frame.group < held[0]:
                return [frame]  # the tail waited for
            held[2].append(frame)
            return []
        if older_open and self.wait > 0:
            self._held[frame.track] = (frame.group, now, [frame])
            return []
        return [frame]

    def waiting(self, track: str) -> int | None:
        """The group whose frames wait on ``track`` (None: none)."""
        held = self._held.get(track)
        return None if held is None else held[0]

    def stream_ended(self, track: str, older_open: bool) -> list[Frame]:
        """A stream of ``track`` ended; ``older_open``: a stream older than the group waiting is
        still open. The frames that go on now."""
        if older_open or track not in self._held:
            return []
        return self._held.pop(track)[2]

    @property
    def next_due(self) -> float | None:
        """When ``due`` next has frames to let go (None: nothing is held)."""
        if not self._held:
            return None
        return min(since for _, since, _ in self._held.values()) + self.wait

    def due(self, now: float) -> list[Frame]:
        """The frames whose wait is over (their older group's tail is late: it is on its own)."""
        out = []
        for track in [t for t, (_, since, _) in self._held.items() if now >= since + self.wait]:
            out += self._held.pop(track)[2]
        return out

    def flush(self) -> list[Frame]:
        """Every frame held (the subscription ends)."""
        out = [f for _, _, frames in self._held.values() for f in frames]
        self._held.clear()
        return out

    def forget(self, track: str) -> None:
        """``track``'s subscription is let go: its held frames too (a new one sends them again)."""
        self._held.pop(track, None)
