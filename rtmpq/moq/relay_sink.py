"""Delivery of one track to one subscriber: ``ConnectionSink`` is the GroupSink a ``TrackFanout``
(fanout.py) writes through onto a subscriber's MoQ connection (one stream per subgroup, newer
groups first, or older first for a subscriber that asked GROUP_ORDER Ascending), ``InProcessSink``
the one for a reader in the same process, ``Subscription`` what the relay remembers of a subscription. Kept apart from relay.py, which decides who subscribes to what, and
from fanout.py, which knows no connection.
"""

import logging
from collections import Counter

from ..media.broadcast import GroupSkipped
from ..media.frames import AUDIO, VIDEO
from .fanout import RESET_DELIVERY_TIMEOUT, TrackFanout, TrackSubscription
from .loc import CATALOG_TRACK, object_to_frame
from .session import DATAGRAM_SENT, DATAGRAM_TOO_BIG, DATAGRAM_UNSUPPORTED
from .transport import MoqConnection

log = logging.getLogger("rtmpq.moq")

# Send scheduler urgency per track kind: lower is sent first.
URGENCY = {CATALOG_TRACK: 0, AUDIO: 1, VIDEO: 2}
DEFAULT_URGENCY = 3


class ConnectionSink:
    """GroupSink over one MoQ connection for one subscription (one stream per subgroup)."""

    def __init__(self, conn: MoqConnection, track_alias: int, urgency: int, fanout: TrackFanout,
                 ascending: bool = False) -> None:
        self.conn = conn
        self.alias = track_alias
        self.urgency = urgency
        self.fanout = fanout
        self.streams_opened = 0
        # the newest group opened and its streams (one per subgroup)
        self.newest: tuple[int, list[int]] | None = None
        # GROUP_ORDER Ascending (the subscriber asked it): the oldest group still being sent goes
        # first and newer ones wait behind it. Its groups' streams not yet delivered, by group,
        # and the group put first
        self.ascending = ascending
        self._sending: dict[int, list[int]] = {}
        self._front: int | None = None
        # the relay's error counts (rtmpq_errors_total{protocol="moq"}): datagram objects that
        # could not be sent, by why (datagram_unsupported, datagram_too_big, datagram_queue_full)
        self.errors: Counter | None = None
        self.label = "-"  # the track's loggable name

    def open_group(self, group_id: int, subgroup: int = 0, priority: int | None = None,
                   end_of_group: bool = True) -> int:
        # a relayed track keeps its publisher's priority (its subgroup's); our own tracks carry their urgency
        if priority is None:
            priority = self.fanout.publisher_priority if self.fanout.publisher_priority is not None else self.urgency
        sid = self.conn.session.open_subgroup(self.alias, group_id, subgroup=subgroup, priority=priority,
                                              end_of_group=end_of_group)
        self.conn.set_priority(sid, self.urgency, group_id, subgroup, ascending=self.ascending)
        if self.ascending:
            self._sending.setdefault(group_id, []).append(sid)
            self._reorder((group_id, sid))
        # newer groups before older: the group that was newest steps back, all its streams (a group
        # opened late, the tail of a joined one, starts behind)
        elif self.newest is None or group_id > self.newest[0]:
            if self.newest is not None:
                for older in self.newest[1]:
                    self.conn.step_back(older, self.urgency)
            self.newest = (group_id, [sid])
        elif group_id == self.newest[0]:
            self.newest[1].append(sid)  # another subgroup of the newest group
        else:
            self.conn.step_back(sid, self.urgency)
        self.streams_opened += 1
        self.conn.flush()
        return sid

    def _reorder(self, opened: tuple[int, int] | None = None) -> None:
        """Ascending: forget the groups delivered; the oldest left goes first (steps forward if it
        waited; the one that went first, if still there, waits for it: an older group opened late);
        ``opened`` (group, stream) of a newer group waits for the older ones."""
        for group in [g for g, sids in self._sending.items() if all(self.conn.delivered(sid) for sid in sids)]:
            del self._sending[group]
        front = min(self._sending, default=None)
        if front != self._front:
            for sid in self._sending.get(front, ()):
                self.conn.step_forward(sid, self.urgency)
            for sid in self._sending.get(self._front, ()):
                self.conn.wait_for(sid, self._sending[front], self.urgency)
            self._front = front
        if opened is not None and opened[0] != front:
            older = [sid for g, sids in self._sending.items() if g < opened[0] for sid in sids]
            self.conn.wait_for(opened[1], older, self.urgency)

    def send_object(self, handle: int, object_id: int, payload, extensions, status: int = 0) -> None:
        self.fanout.bytes_sent += len(payload)
        self.conn.session.send_object(handle, object_id, payload, extensions, status=status)
        if len(self._sending) > 1:  # a group waits: its turn may have come
            self._reorder()
        self.conn.flush()

    def send_datagram(self, group_id: int, object_id: int, payload, extensions, priority: int | None = None,
                      status: int = 0, end_of_group: bool = False) -> None:
        """As an OBJECT_DATAGRAM, as it came (draft 16: its Forwarding Preference is not the
        relay's to change): one QUIC cannot take (a subscriber without datagrams, one larger than
        its path, a full queue) is dropped, counted, and said once per session and reason."""
        session = self.conn.session
        result = session.send_datagram(self.alias, group_id, object_id, payload, extensions, priority=priority,
                                       status=status, end_of_group=end_of_group)
        if result == DATAGRAM_SENT:
            self.fanout.bytes_sent += len(payload)
            self.conn.flush()
            return
        if self.errors is not None:
            self.errors[f"datagram_{result}"] += 1
        session.datagrams_not_sent[result] += 1
        if session.datagrams_not_sent[result] == 1:
            why = ("its session did not negotiate QUIC datagrams (max_datagram_frame_size)"
                   if result == DATAGRAM_UNSUPPORTED else
                   f"larger than one QUIC datagram to it ({session.datagram_room()} bytes)"
                   if result == DATAGRAM_TOO_BIG else "its datagram queue is full")
            log.warning("MoQ subscriber %s on %s: objects sent as datagrams (from group %d) are dropped: %s; said "
                        "once per session (rtmpq_errors_total{reason=\"datagram_%s\"} counts them)",
                        self.conn.peer, self.label, group_id, why, result)

    def end_group(self, handle: int) -> None:
        self.conn.session.end_subgroup(handle)
        self.conn.forget_stream(handle)
        self.conn.flush()

    def reset_group(self, handle: int, code: int) -> None:
        if code == RESET_DELIVERY_TIMEOUT:
            self.fanout.groups_dropped += 1
        self.conn.session.reset_subgroup(handle, code)
        self.conn.forget_stream(handle)
        if self.ascending:  # nothing more of it is sent: the next group's turn
            for group, sids in list(self._sending.items()):
                if handle in sids:
                    sids.remove(handle)
                    if not sids:
                        del self._sending[group]
            self._reorder()
        self.conn.flush()

    def buffered_bytes(self, handle: int) -> int:
        return self.conn.queued_bytes(handle)

    def total_buffered_bytes(self) -> int:
        return self.conn.total_queued_bytes()

    def confirmed(self, handle: int) -> bool:
        return self.conn.delivered(handle)

    def unsent_bytes(self, handle: int) -> int:
        return self.conn.unsent_bytes(handle)

    def ack_allowance(self) -> float:
        return self.conn.ack_allowance()

    def ack_doubt(self) -> bool:
        return self.conn.ack_doubt()

    def announced(self, handle: int) -> bool:
        return self.conn.announced(handle)


class InProcessSink:
    """GroupSink for a reader in the same process (the edge of ``rtmpq up``): each object is handed
    to ``deliver`` as a Frame at once (nothing is ever buffered), a group cut short as GroupSkipped."""

    def __init__(self, track: str, deliver) -> None:
        self.track = track
        self.deliver = deliver
        # who reads, for counting subscribers: the object a bound ``deliver`` belongs to (one
        # reader pulling several tracks is one subscriber, as one MoQ session is)
        self.reader = getattr(deliver, "__self__", deliver)

    def open_group(self, group_id: int, subgroup: int = 0, priority: int | None = None,
                   end_of_group: bool = True) -> int:
        return group_id  # (a frame says its group; its subgroup means nothing to the reader)

    def send_object(self, handle: int, object_id: int, payload, extensions, status: int = 0) -> None:
        if status:
            return  # End of Group / End of Track: no frame (the group's and track's ends say it)
        self.deliver(object_to_frame(self.track, handle, object_id, payload, extensions or {}))

    def send_datagram(self, group_id: int, object_id: int, payload, extensions, priority: int | None = None,
                      status: int = 0, end_of_group: bool = False) -> None:
        self.send_object(group_id, object_id, payload, extensions, status)  # a frame is a frame here

    def end_group(self, handle: int) -> None:
        pass

    def reset_group(self, handle: int, code: int) -> None:
        self.deliver(GroupSkipped(self.track, handle))

    def buffered_bytes(self, handle: int) -> int:
        return 0

    def total_buffered_bytes(self) -> int:
        return 0

    def confirmed(self, handle: int) -> bool:
        return True

    def unsent_bytes(self, handle: int) -> int:
        return 0

    def ack_allowance(self) -> float:
        return 0.0

    def ack_doubt(self) -> bool:
        return False

    def announced(self, handle: int) -> bool:
        return True


class Subscription:
    def __init__(self, conn: MoqConnection, request_id: int, fanout: TrackFanout, label: str,
                 sub: TrackSubscription, sink: ConnectionSink, name: tuple = ((), "")) -> None:
        self.conn = conn
        self.request_id = request_id
        self.name = name  # (namespace, track)
        self.fanout = fanout
        self.label = label
        self.sub = sub
        self.sink = sink
        # for a SUBSCRIBE (not a PUBLISH of ours): its filter, and the Largest Location told in
        # SUBSCRIBE_OK, where a joining FETCH ends
        self.filter_type: int | None = None
        self.forward = True  # FORWARD: objects are sent (0 until a REQUEST_UPDATE sets it: none)
        self.largest: tuple[int, int] | None = None
        self.upstream = None  # the UpstreamTrack whose publisher told that Largest Location (nothing was here yet)


class Subscriptions(dict):
    """The relay's subscriptions by (id(conn), request id), SUBSCRIBEs it accepted and PUBLISHes it
    sent alike, and which tracks each session has one of: draft 16 ("Subscriptions") allows one
    subscription per track and role on a session, a second is refused with DUPLICATE_SUBSCRIPTION.
    Kept by ``[]=``, ``del`` and ``pop``, the only ways the relay changes it."""

    def __init__(self) -> None:
        super().__init__()
        self._tracks: dict[tuple, int] = {}  # (id(conn), namespace, track) -> request id

    def __setitem__(self, key: tuple[int, int], s: Subscription) -> None:
        super().__setitem__(key, s)
        self._tracks[(key[0], *s.name)] = key[1]

    def __delitem__(self, key: tuple[int, int]) -> None:
        self._forget(key, self[key])
        super().__delitem__(key)

    def pop(self, key: tuple[int, int], *default):
        if key in self:
            self._forget(key, self[key])
        return super().pop(key, *default)

    def _forget(self, key: tuple[int, int], s: Subscription) -> None:
        name = (key[0], *s.name)
        if self._tracks.get(name) == key[1]:
            del self._tracks[name]

    def of_track(self, conn: MoqConnection, namespace: tuple[str, ...], track: str) -> int | None:
        """The request id of ``conn``'s subscription to that track here, or None."""
        return self._tracks.get((id(conn), namespace, track))
