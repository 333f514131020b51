"""State of what the relay takes from a publisher or an upstream relay: ``UpstreamTrack``, one
subscription there (or a track the peer PUBLISHed here) feeding a fan-out, with its group ids kept
rising across a new source session; ``FetchProxy``, a FETCH passed on there and answered back to
the requester. relay.py decides when they start, move and end.
"""

from . import events as ev
from .fanout import TrackFanout
from .loc import CATALOG_TRACK
from .relay_sink import DEFAULT_URGENCY, URGENCY
from .transport import MoqConnection
from .wire import StreamResetCode


class UpstreamTrack:
    """One subscription to a publisher or an upstream relay, feeding a fan-out."""

    def __init__(self, conn: MoqConnection, namespace: tuple[str, ...], track: str, *,
                  pushed: tuple[int, int] | None = None) -> None:
        """Subscribes upstream, or with ``pushed`` = (request id, alias) takes a track the peer PUBLISHed."""
        self.conn = conn
        self.namespace = namespace
        self.track = track
        # groups end with their own streams
        self.fanout = TrackFanout(state=track == CATALOG_TRACK, ends_groups_on_newer=False)
        self.waiting: list[tuple[MoqConnection, ev.SubscribeRequested]] = []
        self.streams_done = 0  # subgroup streams of this track that ended (FIN or reset)
        self.streams_expected: int | None = None  # from the publisher's PUBLISH_DONE
        # continuity across a new source session: its group ids are shifted above the last one seen
        self.last_group = -1
        self.group_offset = 0
        self.check_offset = False
        self.orphaned_at: float | None = None  # the source session was lost at this time
        self.largest: tuple[int, int] | None = None  # the publisher's Largest Location in its SUBSCRIBE_OK
        # a PUBLISH with FORWARD=0 (a transcoder rung): objects flow only while someone subscribes
        self.on_demand = False
        self.forward = True
        if pushed is not None:
            self.request_id, self.alias = pushed
        else:
            self.subscribe(conn)

    def subscribe(self, conn: MoqConnection) -> None:
        self.conn = conn
        self.alias = None
        self.request_id = conn.session.subscribe(self.namespace, self.track, priority=URGENCY.get(self.track, DEFAULT_URGENCY))
        conn.flush()

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

    def stream(self) -> int:
        if self.stream_id is None:
            self.stream_id = self.conn.session.open_fetch_stream(self.request_id)
        return self.stream_id

    def fail(self, code: int, reason: str) -> None:
        if self.conn.session.closed:
            return
        if self.stream_id is not None:
            self.conn.session.reset_fetch_stream(self.stream_id, StreamResetCode.INTERNAL_ERROR)
        self.conn.session.request_error(self.request_id, code, reason)
        self.conn.flush()

    def cancel_upstream(self) -> None:
        if not self.upstream.session.closed:
            self.upstream.session.fetch_cancel(self.upstream_request_id)
            self.upstream.flush()
