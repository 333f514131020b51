"""State of what the relay takes from a publisher or an upstream relay: ``UpstreamTrack``, one
subscription there (or a track the peer PUBLISHed here) feeding a fan-out, with its group ids kept
rising across a new source session; ``FetchProxy``, a FETCH passed on there and answered back to
the requester. relay.py decides when they start, move and end.

The catalog is joined as every subscriber of rtmpq joins it (catalog_join.py: SUBSCRIBE at the
Largest Object, its current version by a Joining FETCH, unfiltered if that brings nothing), so the
relay's own cache holds it for subscribers that do not FETCH (relays below, the edge).
"""

from . import events as ev
from .catalog_join import CatalogJoin
from .fanout import TrackFanout
from .group_cache import CacheBounds
from .loc import CATALOG_TRACK
from .relay_sink import DEFAULT_URGENCY, URGENCY
from .transport import MoqConnection
from .wire import StreamResetCode


class UpstreamTrack:
    """One subscription to a publisher or an upstream relay, feeding a fan-out."""

    def __init__(self, conn: MoqConnection, namespace: tuple[str, ...], track: str, *,
                  pushed: tuple[int, int] | None = None, label: str = "",
                  bounds: CacheBounds = CacheBounds(), fanout: TrackFanout | None = None) -> None:
        """Subscribes upstream, or with ``pushed`` = (request id, alias) takes a track the peer
        PUBLISHed. ``label``: the broadcast's loggable name; ``bounds``: a media track's cache's;
        ``fanout``: an existing one to feed (the track published again), else a new one."""
        self.conn = conn
        self.namespace = namespace
        self.track = track
        if fanout is None:
            state = track == CATALOG_TRACK
            # groups end with their own streams
            fanout = TrackFanout(None if state else bounds.cache(), state=state, ends_groups_on_newer=False)
        self.fanout = fanout
        self.waiting: list[tuple[MoqConnection, ev.SubscribeRequested]] = []
        self.streams_done = 0  # subgroup streams of this track that ended (FIN or reset)
        # the subgroups of each group whose streams are open upstream: a group ends when the last
        # of its subgroups seen does (one that begins after that still passes: see TrackSubscription)
        self.open_subgroups: dict[int, set[int]] = {}
        self.streams_expected: int | None = None  # from the publisher's PUBLISH_DONE
        self.end_of_track: int | None = None  # the relay group of an End of Track object
        # continuity across a new source session: its group ids are shifted above the last one seen
        self.last_group = -1
        self.group_offset = 0
        self.check_offset = False
        self.orphaned_at: float | None = None  # the source session was lost at this time
        # a resubscription after a loss (``orphaned_at`` then): refused, the track waits on from there
        self.resumed_from: float | None = None
        self.resume_delay = 0.0  # before asking again after such a refusal (doubling)
        self.largest: tuple[int, int] | None = None  # the publisher's Largest Location in its SUBSCRIBE_OK
        # a PUBLISH with FORWARD=0 (a transcoder rung): objects flow only while someone subscribes
        self.on_demand = False
        self.forward = True
        # the catalog's: its join (the Joining FETCH, the fallback), and the relay group that FETCH fed
        self.catalog_join = CatalogJoin(label) if track == CATALOG_TRACK else None
        # a catalog track's newest object as its publisher sent it, before the tracks nodes added
        # here were listed in it (relay.py: re-issued from this when they change, or leave)
        self.own_catalog: bytes | None = None
        self.fetched_group: int | None = None
        self.pushed = pushed is not None  # PUBLISHed to us (its publisher may restart and PUBLISH it again)
        # after its PUBLISH_DONE, while its late streams come: the track published again (PUBLISH)
        # takes the relay group ids above ``ceiling``, and this one's late groups up to it; the
        # session that announced the namespace again (PUBLISH_NAMESPACE), subscribed at the end
        self.ceiling: int | None = None
        self.renewed_by: MoqConnection | None = None
        if pushed is not None:
            self.request_id, self.alias = pushed
        else:
            self.subscribe(conn)

    def subscribe(self, conn: MoqConnection) -> None:
        join = self.catalog_join
        if join is not None and conn is not self.conn:
            join.new_session()
        self.conn = conn
        self.alias = None
        self.new_session()
        self.request_id = conn.session.subscribe(self.namespace, self.track, priority=URGENCY.get(self.track, DEFAULT_URGENCY),
                                                 filter_type=None if join is None else join.filter_type)
        conn.flush()

    def new_session(self) -> None:
        """The track comes from a new source session (resubscribed, or PUBLISHed again): the old
        one's streams end no group here any more, and its PUBLISH_DONE counts only its own streams
        (counting the old session's too, it looked complete while its last group was on its way)."""
        self.open_subgroups.clear()
        self.streams_done = 0
        self.streams_expected = None

    def fetch_catalog(self, now: float) -> int:
        """Joining FETCH of the current catalog version (the subscription's Largest Location's group)."""
        self.fetched_group = None
        rid = self.conn.session.joining_fetch(self.request_id, 0, priority=0)
        self.catalog_join.fetching(rid, now)
        self.conn.flush()
        return rid

    def takes(self, group: int, object_id: int) -> bool:
        """Whether a catalog object (relay group ids) is new here: never a version older than the
        newest held (it would undo it for every subscriber), nor an object already held."""
        largest = self.fanout.cache.largest
        return largest is None or (group, object_id) > largest

    def ended(self) -> bool:
        """Whether the publisher said the track is over (PUBLISH_DONE or End of Track)."""
        return self.streams_expected is not None or self.end_of_track is not None

    def subgroup_seen(self, group: int, subgroup: int) -> None:
        """An object of ``subgroup`` of ``group`` (relay ids) came: its stream is open upstream."""
        subgroups = self.open_subgroups.get(group)
        if subgroups is None:
            self.open_subgroups[group] = {subgroup}
        else:
            subgroups.add(subgroup)

    def subgroup_ended(self, group: int, subgroup: int) -> bool:
        """A subgroup of ``group`` ended upstream (FIN, reset, End of Group object): whether none of
        the group's subgroups seen is open any more (the group is over)."""
        subgroups = self.open_subgroups.get(group)
        if subgroups is not None:
            subgroups.discard(subgroup)
            if subgroups:
                return False
            del self.open_subgroups[group]
        return True

    def unseen_streams(self) -> int:
        """Streams its PUBLISH_DONE counts that have not begun here yet (late-opening streams)."""
        if self.streams_expected is None:
            return 0
        still_open = sum(len(subgroups) for subgroups in self.open_subgroups.values())
        return max(self.streams_expected - self.streams_done - still_open, 0)

    def beyond_ceiling(self, source_group: int) -> bool:
        """Whether a group of this (superseded) subscription would take an id of its successor's."""
        return self.ceiling is not None and source_group + self.group_offset > self.ceiling

    def group(self, source_group: int) -> int:
        """The relay's group id for a group id of the current source session."""
        if self.check_offset:  # the first group of a new session: never at or below one we served
            self.check_offset = False
            if source_group + self.group_offset <= self.last_group:
                self.group_offset = self.last_group + 1 - source_group
        group = source_group + self.group_offset
        if group > self.last_group:
            self.last_group = group
        return group


class FetchProxy:
    """A FETCH passed on to the publisher or upstream relay of a track this relay does not hold:
    its answer and objects go back to the requester as they come."""

    def __init__(self, conn: MoqConnection, request_id: int, upstream: MoqConnection, upstream_request_id: int) -> None:
        self.conn = conn
        self.request_id = request_id
        self.upstream = upstream
        self.upstream_request_id = upstream_request_id
        self.stream_id: int | None = None
        self.answered = False  # FETCH_OK passed on: no other answer may follow (draft 16: exactly one)
        self.ended = False  # the upstream's fetch stream is over (the answer may still come after it)

    def stream(self) -> int:
        if self.stream_id is None:
            self.stream_id = self.conn.session.open_fetch_stream(self.request_id)
        return self.stream_id

    def fail(self, code: int, reason: str) -> None:
        """The FETCH cannot be served: REQUEST_ERROR unless FETCH_OK was passed on already (then
        its stream, if still open, is reset: the FETCH has had its one answer)."""
        if self.conn.session.closed:
            return
        if self.stream_id is not None and not self.ended:
            self.conn.session.reset_fetch_stream(self.stream_id, StreamResetCode.INTERNAL_ERROR)
        if not self.answered:
            self.conn.session.request_error(self.request_id, code, reason)
        self.conn.flush()

    def cancel_upstream(self) -> None:
        if not self.upstream.session.closed:
            self.upstream.session.fetch_cancel(self.upstream_request_id)
            self.upstream.flush()
