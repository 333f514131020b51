"""Subscribe to a broadcast over MoQ: the catalog first, then frames of every track.

    async with connect_moq(host, port, insecure=True) as conn:
        async for item in subscribe_broadcast(conn, "live/cam1"):
            ...  # Catalog, Frame, SkippedGroup, or the end (iteration stops)

Frames come as they arrive, so the tail of a group can follow frames of the next one (each group
has its own stream); ``in_order=True`` hands frames of a track on in group order instead: the rest
of a group that arrives after a frame of a newer group of its track is dropped, and the group
reported as a SkippedGroup (``LATE_GROUP``, or the relay's reset code when it cut the group short
too). Within a group, frames come in Object ID order even when the group comes in several
subgroups, each on its own stream (subgroup_order.py). Objects that come as OBJECT_DATAGRAMs are
frames of their group too, handed on as they come, never waited for (datagram_order.py).
"""

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from ..media.catalog import Catalog
from ..media.frames import Frame, NotLive
from ..redact import safe_name
from . import events as ev
from .catalog_join import CATALOG_FETCH_WAIT, CatalogJoin
from .catalog_track import CatalogTrack
from .datagram_order import DatagramOrder
from .loc import CATALOG_TRACK, object_to_frame
from .subgroup_order import SubgroupOrder
from .transport import MoqConnection
from .group_tails import GroupTails
from .window_fill import FILL_TIMEOUT, MAX_CONTINUATIONS, WindowFill
from .wire import EXT_PRIOR_OBJECT_ID_GAP, FILTER_LARGEST_OBJECT, ObjectStatus, RequestError

log = logging.getLogger("rtmpq.moq")

_RETRY = object()  # queue marker: time to ask for a broadcast that was not live again
_CHOICE = object()  # queue marker: the TrackChoice changed
_FILL_EXPIRED = object()  # queue marker: the window fill took FILL_TIMEOUT
_CATALOG_FETCH_LATE = object()  # queue marker: the catalog's joining FETCH's wait is over (catalog_join.py)
_END_OF_TRACK_LATE = object()  # queue marker: an End of Track's LATE_STREAM_GRACE is over
_REORDER_DUE = object()  # queue marker: frames held for a gap in their group's Object IDs may be due
_TAILS_DUE = object()  # queue marker: frames held for an older group's tail may be due (group_tails.py)
# Upstreams already said (once each) not to serve the window fill; at most this many remembered.
_FILL_REFUSED_BY: set[str] = set()
MAX_FILL_REFUSALS_REMEMBERED = 256


# Seconds to wait for streams still in flight after the publisher said a track is done: its
# PUBLISH_DONE (no event for this long), or its End of Track (the older groups seen begun and not
# ended yet are waited for this long at most; see EndOfTrack).
LATE_STREAM_GRACE = 2.0
# While waiting for a broadcast that is not live yet, the client holds a SUBSCRIBE_NAMESPACE on its
# name (the relay says NAMESPACE when it goes live) and also retries the catalog SUBSCRIBE this
# often (seconds): a relay may know the broadcast only through its own upstream.
WAIT_RETRY_INTERVAL = 1.0
# A group is reported skipped once: a relay announces a dropped group again on a new stream of its
# header alone, reset, when the first reset may have lost the header (fanout.py, ``_drop``), so the
# same group can be reset twice. The newest this many groups reported are remembered per track.
SKIPS_REMEMBERED = 64
# The subgroup streams ended of this many newest groups (all tracks) are remembered, to tell a group
# of one subgroup from one of several when its last stream ends (GroupOrder): the groups of a few
# seconds of every track, longer than a group's streams take to end one after another.
GROUP_ENDS_REMEMBERED = 256


# EndOfTrack's subgroup for an End of Track that came in a datagram (no stream; Subgroup IDs are
# never negative).
DATAGRAM_SUBGROUP = -1


# SkippedGroup.code when the client dropped (the rest of) a group itself: it came after a frame of
# a newer group of its track (each group has its own QUIC stream, and a relay sends the newest
# first), too late to be handed on in order. Not a MoQT code: those are never negative.
LATE_GROUP = -1


@dataclass(frozen=True, slots=True)
class SkippedGroup:
    """(The rest of) this group is not handed on: the relay dropped it for us, outside our budget
    (``code``: its stream reset code), or it came late, after a newer group (``LATE_GROUP``).
    ``subgroup``: of a group seen in several subgroups, the one reset; the rest of that subgroup
    alone is missing, the other subgroups' frames were handed on (None: the group's one stream)."""

    track: str
    group: int
    code: int
    subgroup: int | None = None


class SkipMemory:
    """The groups already reported skipped, per track (the newest ``SKIPS_REMEMBERED`` of each)."""

    def __init__(self) -> None:
        self._groups: dict[str, dict[int, None]] = {}

    def first(self, track: str, group: int | tuple[int, int]) -> bool:
        """True the first time ``group`` (or (group, subgroup)) of ``track`` is reported; it is
        remembered from then on."""
        groups = self._groups.setdefault(track, {})
        if group in groups:
            return False
        groups[group] = None
        if len(groups) > SKIPS_REMEMBERED:
            del groups[next(iter(groups))]  # the oldest reported
        return True


class GroupOrder:
    """Hands frames on in group order per track: once a frame of group G of a track has been handed
    on, a frame of an older group of that track is dropped, and so is one of G below an Object ID
    handed on (a subgroup's frame whose place SubgroupOrder let go). A decoder fed the tail of a
    group after the next group's keyframe gets timestamps going backwards and references to frames
    it dropped.

    A group is over once every stream of it seen (one per subgroup) has ended (FIN or reset); then
    a group with frames dropped is reported skipped once (through ``skips``), with the relay's
    reset code if the relay cut it short too, else ``LATE_GROUP``. Of a group seen in several
    subgroups, a reset subgroup is reported alone (``SkippedGroup.subgroup``): the others' frames
    were handed on, and a frame of one layer does not make the rest of the group unusable (temporal
    layers reference the base layer only); a subgroup reset before any other of its group was seen
    counts as the whole group."""

    def __init__(self, skips: SkipMemory, drop_late: bool = True) -> None:
        self.skips = skips
        self.drop_late = drop_late  # False: every frame is handed on; only the relay's resets are skips
        self._newest: dict[str, tuple[int, int]] = {}  # track -> newest (group, Object ID) handed on
        self._late: dict[tuple[str, int], None] = {}  # groups with frames dropped, not reported yet
        self._ended: dict[tuple[str, int], dict[int, int | None]] = {}  # (track, group) -> subgroup ended: its reset code

    def admit(self, frame: Frame) -> Frame | None:
        """``frame`` to hand it on, or None: it came after a newer frame of its track."""
        if not self.drop_late:
            return frame
        newest = self._newest.get(frame.track)
        here = (frame.group, frame.index)
        if newest is not None and here < newest:
            self._late[(frame.track, frame.group)] = None
            return None
        self._newest[frame.track] = here
        return frame

    def stream_ended(self, track: str, group: int, subgroup: int, reset_code: int | None,
                     others_open: bool = False) -> list[SkippedGroup]:
        """A stream of ``group`` ended (FIN, or a reset with ``reset_code``): the skips to report.
        ``others_open``: a stream of another subgroup of the group is still on its way (the
        caller knows its open streams: EndOfTrack)."""
        key = (track, group)
        ended = self._ended.get(key)
        if ended is None:
            ended = self._ended[key] = {}
            if len(self._ended) > GROUP_ENDS_REMEMBERED:
                del self._ended[next(iter(self._ended))]  # the oldest
        if ended.get(subgroup) is None:
            ended[subgroup] = reset_code
        if others_open:
            return []  # the group is not over yet
        late = key in self._late
        self._late.pop(key, None)
        if len(ended) == 1:  # the group's one stream (subgroup): the whole group, as ever
            code = ended[subgroup]
            if (late or code is not None) and self.skips.first(track, group):
                return [SkippedGroup(track, group, LATE_GROUP if code is None else code)]
            return []
        resets = {s: code for s, code in ended.items() if code is not None}
        out = [SkippedGroup(track, group, LATE_GROUP)] if late and self.skips.first(track, group) else []
        return out + [SkippedGroup(track, group, code, s) for s, code in sorted(resets.items())
                      if self.skips.first(track, (group, s))]

    def unreported(self) -> list[SkippedGroup]:
        """The groups with frames dropped whose stream never ended (the subscription did first)."""
        late, self._late = self._late, {}
        return [SkippedGroup(t, g, LATE_GROUP) for t, g in late if self.skips.first(t, g)]


class EndOfTrack:
    """When an End of Track object (draft 16: no object at or after its location exists) ends its
    track for the client: once every stream of the track seen begun with objects before that
    location has ended (FIN or reset), or ``LATE_STREAM_GRACE`` after it came. Each group has its
    own stream, so the tail of an older group can still be on its way; ending the track at once
    dropped it when that track was the last one open. Time is an argument."""

    def __init__(self) -> None:
        self._open: set[tuple[str, int, int]] = set()  # (track, group, subgroup): objects seen, not ended
        self._ending: dict[str, tuple[int, int, float]] = {}  # track -> its End of Track's stream, the grace's end

    def begun(self, track: str, group: int, subgroup: int) -> None:
        """An object of ``track`` came on this stream."""
        self._open.add((track, group, subgroup))

    def stream_ended(self, track: str, group: int, subgroup: int) -> bool:
        """A stream of ``track`` ended (FIN or reset): whether the track is over now."""
        self._open.discard((track, group, subgroup))
        return track in self._ending and self._over(track)

    def older_open(self, track: str, group: int) -> bool:
        """Whether a stream of an older group than ``group`` seen begun has not ended."""
        return any(t == track and g < group for t, g, _ in self._open)

    def group_open(self, track: str, group: int) -> bool:
        """Whether a stream of this group seen begun has not ended (another of its subgroups)."""
        return any(t == track and g == group for t, g, _ in self._open)

    def end_of_track(self, track: str, group: int, subgroup: int, now: float) -> bool:
        """An End of Track object on this stream: whether the track is over at once (nothing older
        is open); if not, ask ``overdue`` again ``LATE_STREAM_GRACE`` from now."""
        self._ending.setdefault(track, (group, subgroup, now + LATE_STREAM_GRACE))
        return self._over(track)

    def overdue(self, now: float) -> list[str]:
        """The tracks whose grace has passed: over now, whatever is still open."""
        late = [track for track, (_, _, end) in self._ending.items() if now >= end]
        for track in late:
            self.forget(track)
        return late

    def forget(self, track: str) -> None:
        self._ending.pop(track, None)
        self._open = {key for key in self._open if key[0] != track}

    def _over(self, track: str) -> bool:
        group, subgroup, _ = self._ending[track]
        if any(t == track and (g < group or (g == group and s != subgroup)) for t, g, s in self._open):
            return False
        self.forget(track)
        return True


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


def broadcast_namespace(broadcast: str) -> tuple[str, ...]:
    """The Track Namespace of ``broadcast`` ("live/show" -> ("live", "show")). An empty part
    ("live/", "a//b") is refused here: draft 16 closes the session of one who sends it."""
    namespace = tuple(broadcast.split("/"))
    if not all(namespace):
        raise ValueError(f"{broadcast!r} is no broadcast name: it has an empty part")
    return namespace


async def subscribe_broadcast(conn: MoqConnection, broadcast: str, *, tracks: list[str] | None = None,
                              delivery_timeout_ms: int | None = None, wait: float = 0.0,
                              authorization: str | None = None, choice: TrackChoice | None = None,
                              fill_groups: int = 0, skips: SkipMemory | None = None, in_order: bool = False,
                              tail_wait: float = 0.0, datagrams: DatagramOrder | None = None,
                              say_not_live: bool = False) -> AsyncIterator[Catalog | Frame | SkippedGroup | NotLive]:
    """The catalog, then frames of its tracks until the broadcast ends: by default one rendition
    per altGroup (see TrackChoice), or ``tracks``. A broadcast that is not live yet is waited for
    up to ``wait`` seconds. ``authorization``: a token sent with every SUBSCRIBE and FETCH.

    ``fill_groups``: start with the past too: the tracks the subscription starts with first get
    up to this many whole groups before the live edge from the relay's cache (joining FETCH,
    window_fill.py), then go on live with no gap and no duplicate. A relay that refuses or does
    not answer the FETCH in time means starting at the live edge, as with 0 (logged once).

    Frames come as they arrive. Each group on its own QUIC stream, the relay sending the newest
    first, the tail of a group can arrive after frames of the next one (under load, or after a
    relay's restart); every frame is handed on, and a consumer may order them by (group, index).
    A group sent in several subgroups (several streams) is put back in Object ID order first
    (SubgroupOrder); a reset of one of them is a SkippedGroup naming that subgroup.
    ``in_order=True`` is for a consumer that decodes as it reads: frames of each track then come
    in group order, a late tail is dropped (a decoder would go back in time) and its group is
    reported as a SkippedGroup when its stream ends (code ``LATE_GROUP``, or the relay's reset
    code when the relay also cut it short). On a loaded machine that drops data even on
    loopback (the relay favours the newest group), hence not the default.
    ``tail_wait``: a track's frames of a newer group wait up to this many seconds while a stream of
    an older group of it is still open, so that the older group's tail goes first (group_tails.py;
    the edge's packager, which cannot take a frame of a group whose segment it closed).

    Objects a publisher sent as OBJECT_DATAGRAMs are frames of their group as stream objects are,
    handed on as they come: a lost one is not waited for, and one of an older group than the one
    being delivered, a duplicate, or one overtaken by a later object of its group is dropped
    (datagram_order.py; counted in ``datagrams.dropped``: pass one to read it).

    Each skipped group is yielded once (``skips``: the memory of those yielded, to share it with
    an earlier subscription to the same broadcast, as follow_broadcast does across reconnections).
    ``say_not_live``: a NotLive item first when the upstream says it has no such broadcast and the
    wait for it starts (the relay answers that at once; the wait can be long)."""
    choice = choice or TrackChoice(tracks)
    skips = skips if skips is not None else SkipMemory()
    if datagrams is None:
        datagrams = DatagramOrder(safe_name(broadcast))
    datagrams.restart()  # a new subscription's groups may start anywhere (a publisher back from 0)
    order = GroupOrder(skips, drop_late=in_order)
    # a group in several subgroups comes on several streams: its frames are put back in Object ID
    # order (the edge's packager and a decoder take a track's frames in decode order); a group of
    # one subgroup, as rtmpq sends, goes straight through (subgroup_order.py)
    merge = SubgroupOrder()
    reorder_timer: asyncio.TimerHandle | None = None
    tails = GroupTails(tail_wait)
    tails_timer: asyncio.TimerHandle | None = None
    namespace = broadcast_namespace(broadcast)
    queue: asyncio.Queue = asyncio.Queue()
    conn.handler = lambda _conn, event: queue.put_nowait(event)
    session = conn.session
    requests: dict[int, str] = {}  # request id -> track name
    aliases: dict[int, str] = {}  # track alias -> track name
    open_tracks: set[str] = set()
    streams_done: dict[str, int] = {}  # track -> subgroup streams finished (FIN or reset)
    expected: dict[str, int] = {}  # track -> streams the publisher said it opened (PUBLISH_DONE)
    ends = EndOfTrack()

    def finish_complete_tracks() -> None:
        for track, count in expected.items():
            if streams_done.get(track, 0) >= count:
                open_tracks.discard(track)

    loop = asyncio.get_running_loop()
    wait_until = loop.time() + wait
    watch: int | None = None  # our SUBSCRIBE_NAMESPACE on the broadcast while it is not live

    fill = WindowFill(fill_groups) if fill_groups > 0 else None
    fill_subscriptions: set[int] = set()  # subscriptions at the largest object, joined by a FETCH

    def handed_on(frames: list[Frame]) -> list[Frame]:
        """Live frames SubgroupOrder let go (received in order, or a gap's wait is over): what goes
        on now (an older group's tail may hold them, then the window fill)."""
        nonlocal reorder_timer, tails_timer
        now = loop.time()
        if tails.wait > 0:  # (no scan of the open streams per frame when no tail wait was asked for)
            frames = [f for frame in frames for f in tails.frame(frame, ends.older_open(frame.track, frame.group), now)]
        if reorder_timer is None and (due := merge.next_due) is not None:
            reorder_timer = loop.call_later(max(due - now, 0.0), queue.put_nowait, _REORDER_DUE)
        if tails_timer is None and (due := tails.next_due) is not None:
            tails_timer = loop.call_later(max(due - now, 0.0), queue.put_nowait, _TAILS_DUE)
        return onward(frames)

    def onward(frames: list[Frame]) -> list[Frame]:
        """Live frames in the order they go on: the window fill may hold them; GroupOrder may drop them."""
        out = [f for frame in frames for f in ([frame] if fill is None else fill.live(frame))]
        return [f for f in out if order.admit(f) is not None]

    def subscribe(track: str) -> None:
        join = fill is not None and track != CATALOG_TRACK and fill.wants(track)
        if join and not fill.started:
            loop.call_later(FILL_TIMEOUT, queue.put_nowait, _FILL_EXPIRED)
        if track == CATALOG_TRACK:
            filter_type = catalog_join.filter_type  # the Largest Object, which its joining FETCH needs
        else:
            filter_type = FILTER_LARGEST_OBJECT if join else None
        rid = session.subscribe(namespace, track, delivery_timeout_ms=delivery_timeout_ms, filter_type=filter_type,
                                priority=0 if track == CATALOG_TRACK else 128, authorization=authorization)
        requests[rid] = track
        open_tracks.add(track)
        if join:
            fill.subscribing(track)
            fill_subscriptions.add(rid)
        conn.flush()

    def drop_subscription(rid: int) -> None:
        name = requests.pop(rid)
        session.unsubscribe(rid)
        fill_subscriptions.discard(rid)
        open_tracks.discard(name)
        streams_done.pop(name, None)  # a later subscription of the track counts its own streams
        expected.pop(name, None)
        ends.forget(name)
        merge.forget(name)
        tails.forget(name)
        datagrams.forget(name)
        for alias, n in list(aliases.items()):
            if n == name:
                del aliases[alias]
        conn.flush()

    def start_live(track: str, why: str) -> None:
        """The fill of ``track`` failed: subscribe it afresh from the live edge (as without the fill)."""
        peer = getattr(conn, "peer", "?")
        if peer not in _FILL_REFUSED_BY:
            if len(_FILL_REFUSED_BY) >= MAX_FILL_REFUSALS_REMEMBERED:
                _FILL_REFUSED_BY.clear()
            _FILL_REFUSED_BY.add(peer)
            log.warning("%s: upstream %s did not fill the playlist window with a FETCH (%s): starting at the "
                        "live edge (said once per upstream)", safe_name(broadcast), peer, why)
        for rid, name in list(requests.items()):
            if name == track:
                drop_subscription(rid)
        subscribe(track)

    def end_of_track(track: str, group: int, subgroup: int) -> None:
        """An End of Track object: no newer object of the track exists; once older groups on their
        way have come, it no longer holds the subscription open (as after its PUBLISH_DONE)."""
        if ends.end_of_track(track, group, subgroup, loop.time()):
            open_tracks.discard(track)
        else:
            loop.call_later(LATE_STREAM_GRACE, queue.put_nowait, _END_OF_TRACK_LATE)

    def timescale(track: str) -> int | None:
        """The catalog's timescale of ``track``: frames carry their timestamps in it."""
        info = catalog.track(track) if catalog is not None else None
        return info.timescale if info is not None else None

    catalog: Catalog | None = None
    said_absent: set[str] = set()  # tracks asked for by name that the catalog lacked, logged once
    catalog_track = CatalogTrack(safe_name(broadcast))
    catalog_join = CatalogJoin(safe_name(broadcast))

    def catalog_not_fetched() -> None:
        """If the joining FETCH brought no catalog in time, SUBSCRIBE to it unfiltered instead (catalog_join.py)."""
        if not catalog_join.falls_back(loop.time(), catalog_track.catalog is not None):
            return
        for rid, name in list(requests.items()):
            if name == CATALOG_TRACK:
                drop_subscription(rid)
        subscribe(CATALOG_TRACK)

    def newer_catalogs(group: int, object_id: int, payload) -> list[Catalog]:
        """The catalogs this object makes (catalog_track.py: a group's independent catalog, then its
        deltas in order); none when it is older than those applied: a SUBSCRIBE's objects and its
        joining FETCH's can both come (a relay may replay on SUBSCRIBE), each group on its own
        stream, so an older version can arrive after a newer one and must not undo it."""
        nonlocal catalog
        made = catalog_track.read(group, object_id, payload)
        if made:
            catalog = made[-1]
            update_tracks()  # tracks appear as their sequence headers arrive
        return made

    def update_tracks() -> None:
        """SUBSCRIBE to the chosen tracks not subscribed yet; UNSUBSCRIBE from those let go."""
        if catalog is None or not catalog.live:  # an ended broadcast's last catalog: nothing to add
            return
        listed = {t.name for t in catalog.tracks}
        absent = sorted((choice.tracks or set()) - listed - said_absent)
        if absent:  # a track named that the catalog lacks is waited for: say so (was: silence, forever)
            said_absent.update(absent)
            log.warning("%s has no track %s (its catalog lists %s): waiting for it", safe_name(broadcast),
                        ", ".join(absent), ", ".join(sorted(listed)) or "none")
        chosen = choice.names(catalog) & listed
        subscribed = {name: rid for rid, name in requests.items()}
        for name in sorted(chosen - set(subscribed)):
            subscribe(name)
        for name, rid in subscribed.items():
            if name != CATALOG_TRACK and name not in chosen:
                drop_subscription(rid)

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
                track = aliases[event.track_alias] = requests[event.request_id]
                if watch is not None:  # live: no more need to watch for it
                    session.unsubscribe_namespace(watch)
                    watch = None
                if track == CATALOG_TRACK and catalog_join.wants_fetch(event.largest):
                    # MSF: the SUBSCRIBE brings only later versions; the current one by a joining FETCH
                    catalog_join.fetching(session.joining_fetch(event.request_id, 0, priority=0,
                                                                authorization=authorization), loop.time())
                    loop.call_later(CATALOG_FETCH_WAIT, queue.put_nowait, _CATALOG_FETCH_LATE)  # at its deadline
                    conn.flush()
                if event.request_id in fill_subscriptions and fill.accepted(track, event.largest):
                    merge.starts(track, event.largest[0], event.largest[1] + 1)  # the FETCH has what is before
                    fill.fetching(session.joining_fetch(event.request_id, fill.groups, authorization=authorization),
                                  track)
                    conn.flush()
            elif catalog_join.is_fetch(getattr(event, "request_id", None)):
                if isinstance(event, ev.FetchObjectReceived):
                    for newer in newer_catalogs(event.group, event.object_id, event.payload):
                        yield newer
                elif isinstance(event, (ev.FetchEnded, ev.RequestFailed)):
                    catalog_join.fetch_over()
                    catalog_not_fetched()
            elif event is _CATALOG_FETCH_LATE:
                catalog_not_fetched()  # a late answer to the FETCH still counts if it is newer
            elif fill is not None and fill.is_fetch(getattr(event, "request_id", None)):
                rid = event.request_id
                if isinstance(event, ev.FetchAccepted):
                    fill.fetch_ok(rid, event.end)
                elif isinstance(event, ev.FetchObjectReceived):
                    track = fill.track_of(rid)
                    fill.fetched(rid, object_to_frame(track, event.group, event.object_id, event.payload,
                                                      event.extensions, timescale(track)))
                elif isinstance(event, ev.FetchRangeUnavailable):
                    if event.unknown:
                        fill.unknown(rid, (event.group, event.object_id))
                elif isinstance(event, ev.FetchEnded) and event.code is None:
                    more = fill.fetch_ended(rid)
                    if isinstance(more, str):
                        start_live(more, f"still cut short after {MAX_CONTINUATIONS} more fetches")
                    elif more is not None:
                        fill.fetching(session.fetch(namespace, more.track, more.start, more.end,
                                                    authorization=authorization), more.track)
                        conn.flush()
                elif isinstance(event, (ev.FetchEnded, ev.RequestFailed)):
                    reason = (f"{event.reason} (code {event.error_code})" if isinstance(event, ev.RequestFailed)
                              else f"fetch stream reset (code {event.code})")
                    track = fill.failed(rid)
                    if track is not None:
                        start_live(track, reason)
            elif event is _FILL_EXPIRED:
                if fill is not None and not fill.released:
                    for track, fetches in fill.expire():
                        for rid in fetches:
                            session.fetch_cancel(rid)
                        start_live(track, f"no answer within {FILL_TIMEOUT:g} s")
            elif isinstance(event, ev.RequestFailed):
                if event.request_id == watch:
                    continue  # the relay will not tell us; the retries still ask
                track = requests.pop(event.request_id, "?")
                not_live = track == CATALOG_TRACK and event.error_code == RequestError.DOES_NOT_EXIST
                if not_live and loop.time() < wait_until:
                    open_tracks.discard(CATALOG_TRACK)
                    if watch is None:
                        log.info("%s is not live yet: waiting up to %.0f s for it", safe_name(broadcast),
                                 wait_until - loop.time())
                        watch = session.subscribe_namespace(namespace, authorization=authorization)
                        conn.flush()
                        if say_not_live and catalog is None:
                            yield NotLive(broadcast)
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
            elif isinstance(event, (ev.ObjectReceived, ev.DatagramObjectReceived)):
                track = aliases.get(event.track_alias)
                datagram = type(event) is ev.DatagramObjectReceived
                if track is None:
                    pass
                elif event.status != ObjectStatus.NORMAL:
                    # End of Group / End of Track: no frame, no catalog. End of Group on a stream
                    # needs nothing more (the stream's FIN follows); in a datagram it ends its group
                    if event.status == ObjectStatus.END_OF_TRACK:
                        end_of_track(track, event.group, DATAGRAM_SUBGROUP if datagram else event.subgroup)
                    elif datagram:
                        datagrams.end_group(track, event.group, event.object_id)
                elif datagram and not datagrams.admit(track, event.group, event.object_id, event.end_of_group):
                    pass  # lost its place (datagram_order.py): dropped, counted
                else:
                    if not datagram:
                        ends.begun(track, event.group, event.subgroup)
                    if track == CATALOG_TRACK:
                        for newer in newer_catalogs(event.group, event.object_id, event.payload):
                            yield newer
                    else:
                        frame = object_to_frame(track, event.group, event.object_id, event.payload,
                                                event.extensions, timescale(track))
                        if datagram:  # no subgroup, never waited for: on as it comes
                            frames = [frame]
                        else:
                            gap = event.extensions.get(EXT_PRIOR_OBJECT_ID_GAP, 0) if event.extensions else 0
                            frames = merge.frame(frame, event.subgroup, loop.time(), gap)
                        for frame in handed_on(frames):
                            yield frame
            elif isinstance(event, (ev.SubgroupEnded, ev.SubgroupReset)):
                track = aliases.get(event.track_alias)
                if track is not None:
                    streams_done[track] = streams_done.get(track, 0) + 1
                    code = event.code if isinstance(event, ev.SubgroupReset) else None
                    if code is not None:
                        for frame in handed_on(merge.reset(track, event.group)):
                            yield frame
                    track_over = ends.stream_ended(track, event.group, event.subgroup)
                    for skipped in order.stream_ended(track, event.group, event.subgroup, code,
                                                      ends.group_open(track, event.group)):
                        yield skipped
                    if (waiting := tails.waiting(track)) is not None:  # the older group's tail may be in
                        for frame in onward(tails.stream_ended(track, ends.older_open(track, waiting))):
                            yield frame
                    if track_over:
                        open_tracks.discard(track)
                    finish_complete_tracks()
            elif event is _REORDER_DUE:
                reorder_timer = None
                for frame in handed_on(merge.due(loop.time())):
                    yield frame
            elif event is _TAILS_DUE:
                tails_timer = None
                for frame in onward(tails.due(loop.time())):
                    yield frame
                if (due := tails.next_due) is not None:
                    tails_timer = loop.call_later(max(due - loop.time(), 0.0), queue.put_nowait, _TAILS_DUE)
            elif event is _END_OF_TRACK_LATE:
                for track in ends.overdue(loop.time()):
                    open_tracks.discard(track)
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
            if fill is not None and fill.ready:
                if fill.fetched_any:
                    log.info("%s: starts with the past from upstream: %s", safe_name(broadcast), fill.summary())
                for frame in fill.release(timescale):
                    if (frame := order.admit(frame)) is not None:
                        yield frame
        for frame in handed_on(merge.flush()):  # frames still waiting for a gap: it will not fill now
            yield frame
        for frame in onward(tails.flush()):  # and for an older group's tail
            yield frame
        if fill is not None and not fill.released:  # the broadcast ended while filling: what there is
            for frame in fill.release(timescale):
                if (frame := order.admit(frame)) is not None:
                    yield frame
        for skipped in order.unreported():
            yield skipped
    finally:
        conn.handler = None
        choice._wake = None
        for timer in (reorder_timer, tails_timer):
            if timer is not None:
                timer.cancel()


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
    namespace = broadcast_namespace(broadcast)
    queue: asyncio.Queue = asyncio.Queue()
    conn.handler = lambda _conn, event: queue.put_nowait(event)
    rid = conn.session.fetch(namespace, track, start, end, descending=descending,
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
