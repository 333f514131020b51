"""One track's fan-out: the group cache plus every subscriber's delivery state and budgets.

Transport-neutral: a subscriber is a ``GroupSink`` (the MoQ session glue implements it with one
unidirectional QUIC stream per subgroup). Rules, from DESIGN.md and MoQT draft 16 section "Delivery
Timeout":

- A new subscriber starts with the newest group in the cache, from its first object.
- Each group goes on its own stream; a newer group never waits for an older one (the sink gives
  newer groups and audio higher priority). A group in several subgroups (a relayed publisher's
  temporal layers) goes on one stream per subgroup, each with its Subgroup ID, publisher priority
  and END_OF_GROUP flag (MoQT d16, "Subgroups": never two subgroups on one stream, nor one on two).
  An in-process broadcast's groups are all subgroup 0: one stream each.
- Latency budget (the subscription's DELIVERY_TIMEOUT): an object not delivered that long after
  the relay received it gets its subgroup stream reset with DELIVERY_TIMEOUT (0x2); the group's
  other subgroups go on (a group of that one stream is dropped whole). No new stream is opened
  for the rest of what was dropped (only one of the header alone, reset, when the reset took the
  header with it: ``_reset``); the subscriber sees the reset and knows it skipped it. Delivered
  means acknowledged, and an acknowledgement takes a round trip to come back: an object sent
  within the budget is given the sink's ``ack_allowance`` (aioquic: its smoothed RTT) more for
  its acknowledgement; one not even sent when the budget ends is dropped then. (At
  750 ms RTT, judging by acknowledgement alone left 1.25 s of a 2 s budget to send in.)
  Where acknowledgements are estimated and the path is lossy (``ack_doubt``), an object the
  estimate calls delivered is still in doubt: its group must be confirmed by the transport
  (every byte and the end acknowledged) within that object's budget, or it is dropped then.
  And a media group that ends while in doubt keeps its end (FIN) back until the doubt is gone:
  picoquic refuses to reset a stream whose FIN it has sent before every byte is acknowledged,
  and then delivers the rest however late (8 s at 30 % loss); without the FIN the reset holds.
- Send budget: bytes queued for one subscriber are capped; over it, the oldest groups in flight are
  reset first (all their subgroups). At most ``MAX_GROUPS_IN_FLIGHT`` groups are open per
  subscriber and track, each on at most ``MAX_SUBGROUPS_PER_GROUP`` streams.
So the memory a subscriber can hold in the relay is bounded whatever it does.
- Stuck subscriber: one that acknowledges nothing for a while (it stopped reading: its QUIC
  flow-control window stays full) only has its groups reset, over and over. ``stalled_since``
  says since when no byte owed to it was acknowledged; the relay closes its session after
  ``stuck_timeout``. A slow subscriber keeps acknowledging something and is not stuck.
"""

import logging
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from ..media.frames import Frame
from .group_cache import GroupCache
from .loc import frame_extensions
from .wire import EXT_DEFAULT_PUBLISHER_GROUP_ORDER, EXT_DELIVERY_TIMEOUT, EXT_MAX_CACHE_DURATION, GROUP_ORDER_DESCENDING

log = logging.getLogger("rtmpq.moq")

# Seconds an object may wait in the relay before its group is dropped, unless a subscriber asks
# ([moq] delivery_timeout).
DEFAULT_DELIVERY_TIMEOUT = 2.0
# Bytes queued for one subscriber (all its tracks) before its oldest groups are dropped ([moq] send_budget).
DEFAULT_SEND_BUDGET = 4 * 1024 * 1024
# Groups open at once per subscriber and track (stream count costs memory: bad-inputs.md).
MAX_GROUPS_IN_FLIGHT = 4
# Subgroup streams one group may have per subscriber (a publisher's temporal layers are a few):
# a further subgroup is skipped (a stream of its header alone, reset), so no publisher can make
# the relay open streams without bound.
MAX_SUBGROUPS_PER_GROUP = 8
# Seconds a subscriber may acknowledge nothing of what it is owed before its session is closed.
DEFAULT_STUCK_TIMEOUT = 30.0
# Longest a subscriber that keeps up goes between two counts of what its transport acknowledged
# (the relay checks every 50 ms, and counting is most of a relay's CPU at 50 subscribers): only
# while no deadline of its groups falls within it, it holds under half its send budget and has
# been written less than an eighth of it since.
QUIET_COUNT_INTERVAL = 0.25

RESET_CANCELLED = 0x1
RESET_DELIVERY_TIMEOUT = 0x2


class GroupSink(Protocol):
    def open_group(self, group_id: int, subgroup: int = 0, priority: int | None = None,
                   end_of_group: bool = True) -> object:
        """A stream for one subgroup of ``group_id`` (``priority`` None: the track's)."""
    def send_object(self, handle: object, object_id: int, payload, extensions: dict | None,
                    status: int = 0) -> None:
        """An object on the stream; a status object (End of Group / End of Track) comes with its
        ``status`` and an empty payload."""
    def send_datagram(self, group_id: int, object_id: int, payload, extensions: dict | None,
                      priority: int | None = None, status: int = 0, end_of_group: bool = False) -> None:
        """An object of Forwarding Preference Datagram, as an OBJECT_DATAGRAM (no stream)."""
    def end_group(self, handle: object) -> None: ...
    def reset_group(self, handle: object, code: int) -> None: ...
    def buffered_bytes(self, handle: object) -> int: ...
    def total_buffered_bytes(self) -> int: ...
    def confirmed(self, handle: object) -> bool:
        """Every byte of the group and its end reached the subscriber, by the transport's own
        word (``buffered_bytes`` may be an estimate)."""
    def unsent_bytes(self, handle: object) -> int:
        """Bytes of the group not yet sent even once (``buffered_bytes`` counts those and the ones
        in flight)."""
    def ack_allowance(self) -> float:
        """Seconds an acknowledgement of bytes sent takes to come back (0: judge by
        ``buffered_bytes`` alone)."""
    def ack_doubt(self) -> bool:
        """``buffered_bytes`` is an estimate that cannot be trusted now (a lossy path: bytes it
        counts as delivered may still be missing at the subscriber, their copies lost again)."""
    def announced(self, handle: object) -> bool:
        """The group's stream header reached the subscriber (or never can): a reset of the
        stream now tells it which group it skipped."""


@dataclass(slots=True)
class _StreamInFlight:
    """One subgroup stream of a group in flight."""

    subgroup: int
    handle: object
    written: int = 0
    complete: bool = False
    # (bytes written up to and including this object, time the relay received the object)
    pending: deque = field(default_factory=deque)
    last_received: float = 0.0  # when the relay received the stream's newest object
    # when the relay received the oldest object an estimate in doubt called delivered (None: none):
    # the stream must be confirmed within that object's budget
    doubted: float | None = None
    fin_held: bool = False  # ended, its FIN not written yet (in doubt: see the module docstring)
    # cut short (its source gone mid-subgroup): reset with this code once what was written to it
    # is delivered, or its objects' budget ends (None: not cut)
    cut: int | None = None


@dataclass(slots=True)
class _GroupInFlight:
    group_id: int
    streams: dict[int, _StreamInFlight] = field(default_factory=dict)  # by Subgroup ID
    closed: set[int] = field(default_factory=set)  # subgroups done with here (delivered, dropped): never reopened
    complete: bool = False  # the group ended: no stream of it is open
    # the subscriber has had every object of the group the relay got since it joined: any subgroup
    # of it may open. False: a group begun before the subscriber came, joined at its object 0:
    # only that object's subgroup is whole here (objects of others may have gone by)
    whole: bool = True


class TrackSubscription:
    """One subscriber of one track."""

    def __init__(self, sink: GroupSink, *, delivery_timeout: float = DEFAULT_DELIVERY_TIMEOUT,
                 send_budget: int = DEFAULT_SEND_BUDGET, start_group: int | None = None) -> None:
        self.sink = sink
        self.delivery_timeout = delivery_timeout
        self.send_budget = send_budget
        self.start_group = start_group
        self.start_object = 0  # objects of ``start_group`` before this one are not delivered
        # an AbsoluteRange filter's End Group: no later group is delivered; ``range_ended`` says
        # the range is over (that group ended, was dropped or was passed by a newer one)
        self.last_group: int | None = None
        self.range_ended = False
        # groups come in order (a local source): one past the end group means that one is over
        # even if it never began; a relayed track's groups can overtake each other, so it waits
        self.groups_in_order = True
        # groups from this one on began after delivery to the subscriber began: any object of one
        # may open its stream (a relayed group's subgroup may come before its object 0). None:
        # only an object 0 opens a group (set by TrackFanout when delivery begins)
        self.live_from: int | None = None
        self.replaying: int | None = None  # a group handed over from the cache: it holds all of it
        self.in_flight: dict[int, _GroupInFlight] = {}
        self.dropped: set[int] = set()  # groups we stopped delivering (reset): never reopened
        self.skipped_groups: list[int] = []
        self.objects_sent = 0
        # when the subscriber last stopped taking what it is owed (None: it is keeping up)
        self.stalled_since: float | None = None
        # why its fan-out let it go (its connection failed under a call): the relay closes its session
        self.failed: str | None = None
        self._quiet_until = 0.0  # nothing can fall due before then (QUIET_COUNT_INTERVAL)
        # a group that ends while acknowledgements are in doubt keeps its FIN back (a state
        # track's groups do not: the relay never resets those for lateness)
        self.hold_fin = True
        self._written_since = 0  # bytes written since the last count

    def set_delivery_timeout(self, seconds: float) -> None:
        """A new budget (the subscriber's REQUEST_UPDATE or PUBLISH_OK): judged at the next check,
        for every object owed, those already written too."""
        self.delivery_timeout = seconds
        self._quiet_until = 0.0  # computed with the old budget

    def deliver(self, group_id: int, object_id: int, payload, extensions, received: float,
                subgroup: int = 0, priority: int | None = None, end_of_group: bool = True, status: int = 0) -> None:
        if group_id in self.dropped or (self.start_group is not None and group_id < self.start_group):
            return
        if self.last_group is not None and group_id > self.last_group:
            if self.groups_in_order and self.last_group not in self.in_flight:
                self.range_ended = True  # the end group is done or never came: nothing more passes
            return
        g = self.in_flight.get(group_id)
        s = g.streams.get(subgroup) if g is not None else None
        if s is None:
            s = self._open(g, group_id, object_id, subgroup, priority, end_of_group)
            if s is None:
                return
        elif s.complete:
            log.debug("object %d of group %d after its end: not delivered", object_id, group_id)
            return  # its stream is finished; a source that ends subgroups by their own streams never does this
        self.sink.send_object(s.handle, object_id, payload, extensions, status)
        s.written += len(payload)
        s.pending.append((s.written, received))
        s.last_received = received
        self.objects_sent += 1
        self._written_since += len(payload)
        if self._written_since > self.send_budget // 8 or \
                received + self.delivery_timeout - QUIET_COUNT_INTERVAL < self._quiet_until:
            self._quiet_until = 0.0

    def deliver_datagram(self, group_id: int, object_id: int, payload, extensions, priority: int | None = None,
                         status: int = 0, end_of_group: bool = False) -> None:
        """An object of Forwarding Preference Datagram: sent as one (draft 16: a relay MUST NOT
        change it), within the subscription's range. It has no stream to open, hold or reset, and
        the relay keeps nothing of it per subscriber: sent once, or dropped where QUIC cannot take
        it (the sink counts those), as a datagram may be."""
        if group_id in self.dropped or (self.start_group is not None and (
                group_id < self.start_group or (group_id == self.start_group and object_id < self.start_object))):
            return
        last = self.last_group
        if last is not None and group_id >= last:
            if group_id > last or end_of_group or status:
                # past the End Group, or its end: over, unless a stream of it is still open here
                if last not in self.in_flight:
                    self.range_ended = True
                if group_id > last:
                    return
        self.sink.send_datagram(group_id, object_id, payload, extensions, priority, status, end_of_group)
        self.objects_sent += 1

    def _open(self, g: _GroupInFlight | None, group_id: int, object_id: int, subgroup: int,
              priority: int | None, end_of_group: bool) -> _StreamInFlight | None:
        """The stream for a subgroup not open here yet, or None if its objects are not delivered."""
        whole = True
        if g is None:
            if group_id == self.start_group and self.start_object:
                if object_id < self.start_object:
                    return None  # before the subscription's start (a joining FETCH carries those)
            elif self.live_from is None or group_id < self.live_from:
                if object_id != 0:
                    return None  # joined in the middle of a group we never started: wait for the next
                # (its object 0 begins its subgroup, whatever came before it, unless the cache hands it over)
                whole = group_id == self.replaying
            g = self.in_flight[group_id] = _GroupInFlight(group_id, whole=whole)
            while len(self.in_flight) > MAX_GROUPS_IN_FLIGHT:
                self._drop(min(self.in_flight), RESET_DELIVERY_TIMEOUT)
            if group_id not in self.in_flight:
                return None  # older than every group in flight: it was the one dropped
        elif subgroup in g.closed or not g.whole:
            return None  # delivered or dropped already (a subgroup is never reopened), or joined late
        if len(g.streams) + len(g.closed) >= MAX_SUBGROUPS_PER_GROUP:
            g.closed.add(subgroup)
            self.sink.reset_group(self.sink.open_group(group_id, subgroup, priority, end_of_group),
                                  RESET_DELIVERY_TIMEOUT)
            return None
        s = g.streams[subgroup] = _StreamInFlight(subgroup, self.sink.open_group(group_id, subgroup, priority,
                                                                                   end_of_group))
        g.complete = False  # (a relayed group's subgroup may begin after the others ended)
        return s

    def end_group(self, group_id: int) -> None:
        """The group is over: every stream of it ends."""
        g = self.in_flight.get(group_id)
        if g is not None and not g.complete:
            g.complete = True
            if group_id == self.last_group:
                self.range_ended = True
            for s in g.streams.values():
                self._end_stream(s)
            self._quiet_until = 0.0  # the next check sees whether it was all delivered

    def cut_group(self, group_id: int, code: int) -> None:
        """The source of ``group_id`` is gone before the group's end: its streams still open here
        are reset with ``code`` (a FIN would say they are whole), and nothing more of it comes;
        streams of it that had ended keep their FIN."""
        g = self.in_flight.get(group_id)
        if g is None or g.complete:
            return
        for s in [s for s in g.streams.values() if not s.complete]:
            self._cut_stream(g, s, code)
        if self.in_flight.get(group_id) is g:
            self.end_group(group_id)  # what is left of it had ended: the group is over

    def _cut_stream(self, g: _GroupInFlight, s: _StreamInFlight, code: int) -> None:
        """End ``s`` short with a reset, after what was written to it: the reset goes once every
        byte written is acknowledged (``check``), or when its objects' budget ends. A reset at once
        would make QUIC discard what the subscriber has not received yet, objects the relay had
        accepted (MoQT d16, "Closing Subgroup Streams": a relay "might send RESET_STREAM_AT with
        reliable_size set to the last Object it has, so as to reliably deliver the Objects it has
        while signaling that other Objects might exist"; neither QUIC library offers RESET_STREAM_AT
        on raw QUIC, so the relay waits for the acknowledgements instead). A stream whose FIN
        went out already is reset at once, as before (the FIN said it was whole)."""
        if s.cut is not None:
            return  # cut already (a second reset of the group from upstream): it waits as it was
        if s.complete and not s.fin_held:
            self._drop_stream(g, s, code)
            return
        s.complete, s.fin_held, s.cut = True, False, code  # nothing more of it is sent, nor its FIN
        self._quiet_until = 0.0
        if not self.sink.ack_doubt() and not self.sink.buffered_bytes(s.handle):
            self._drop_stream(g, s, code)  # all of it delivered already (an in-process reader)

    def end_subgroup(self, group_id: int, subgroup: int) -> None:
        """One subgroup of the group ended (its stream upstream did); the group goes on."""
        g = self.in_flight.get(group_id)
        s = g.streams.get(subgroup) if g is not None else None
        if s is not None:
            self._end_stream(s)
            self._quiet_until = 0.0

    def _end_stream(self, s: _StreamInFlight) -> None:
        if not s.complete:
            s.complete = True
            if self.hold_fin and self.sink.ack_doubt():
                s.fin_held = True  # resettable until the doubt is gone (check) or its budget ends
            else:
                self.sink.end_group(s.handle)

    def release_fins(self) -> None:
        """Write the FIN of every ended stream that holds it back."""
        for g in self.in_flight.values():
            for s in g.streams.values():
                if s.fin_held:
                    s.fin_held = False
                    self.sink.end_group(s.handle)

    def check(self, now: float) -> None:
        """Enforce the budgets; call on a timer and after each batch of objects."""
        if now < self._quiet_until:
            return
        progress = waiting = False
        allowance = self.sink.ack_allowance()
        deadline = now - self.delivery_timeout  # objects received before this are past budget
        if not self.sink.ack_doubt() and any(s.fin_held for g in self.in_flight.values() for s in g.streams.values()):
            self.release_fins()
        for g in list(self.in_flight.values()):
            for s in list(g.streams.values()):
                if s.pending:  # (a stream with nothing owed needs no count from the transport)
                    acked = s.written - self.sink.buffered_bytes(s.handle)
                    if s.pending[0][0] <= acked:
                        progress = True
                        if s.doubted is None and self.sink.ack_doubt():
                            s.doubted = s.pending[0][1]  # delivered by the estimate's word only
                        while s.pending and s.pending[0][0] <= acked:
                            s.pending.popleft()
                waiting = waiting or bool(s.pending)
                if s.doubted is not None and s.doubted < deadline - allowance:
                    if self.sink.confirmed(s.handle):
                        s.doubted = None  # every byte so far was acknowledged after all
                    else:
                        self._drop_stream(g, s, RESET_DELIVERY_TIMEOUT)
                        continue
                if not s.pending:
                    if s.cut is not None:
                        # what was written is delivered: the cut can be said now (in doubt, an
                        # unconfirmed estimate waits for its budget, above: no FIN confirms it)
                        if s.doubted is None:
                            self._drop_stream(g, s, s.cut)
                        continue
                    if s.complete:
                        # everything sent, FIN too. Where acknowledgements are estimated, a hole in
                        # the stream (a copy lost again) can hold the stream's tail back at the
                        # subscriber long after the estimate said delivered: the stream stays until
                        # the transport confirms it, within the budget of its newest object
                        if self.sink.confirmed(s.handle):
                            del g.streams[s.subgroup]
                            g.closed.add(s.subgroup)
                        elif now - s.last_received > self.delivery_timeout + allowance:
                            self._drop_stream(g, s, RESET_DELIVERY_TIMEOUT)
                    continue
                if s.pending[0][1] < deadline - allowance or (
                        s.pending[0][1] < deadline and self._late_object_unsent(s, deadline)):
                    self._drop_stream(g, s, RESET_DELIVERY_TIMEOUT)
            if g.complete and not g.streams and self.in_flight.get(g.group_id) is g:
                del self.in_flight[g.group_id]  # every stream of it delivered (or dropped)
        total = self.sink.total_buffered_bytes() if self.in_flight else 0
        while self.in_flight and total > self.send_budget:
            self._drop(min(self.in_flight), RESET_DELIVERY_TIMEOUT)
            total = self.sink.total_buffered_bytes()
        # groups dropped unread do not restart the clock; only acknowledged bytes do
        if progress:
            self.stalled_since = now if waiting else None
        elif waiting and self.stalled_since is None:
            self.stalled_since = now
        self._written_since = 0
        if total <= self.send_budget // 2:
            streams = [s for g in self.in_flight.values() for s in g.streams.values()]
            due = [s.pending[0][1] if s.pending else s.last_received for s in streams if s.pending or s.complete]
            due += [s.doubted for s in streams if s.doubted is not None]
            self._quiet_until = min(now + QUIET_COUNT_INTERVAL,
                                    min(due, default=now + 1e9) + self.delivery_timeout - QUIET_COUNT_INTERVAL)
            if any(s.cut is not None for s in streams):
                self._quiet_until = 0.0  # a cut waiting for its acknowledgement is told at the next check

    def _late_object_unsent(self, s: _StreamInFlight, deadline: float) -> bool:
        """Whether the newest of ``s``'s objects received before ``deadline`` has bytes not yet
        sent even once (it cannot be delivered within its budget)."""
        end = 0
        for written, received in s.pending:
            if received >= deadline:
                break
            end = written
        return end > s.written - self.sink.unsent_bytes(s.handle)

    def signal_skipped(self, group_id: int, code: int, subgroup: int = 0) -> None:
        """Tell the subscriber that ``group_id``, which it never began, is skipped: a stream of
        ``subgroup``, opened with the header alone, is reset at once."""
        g = self.in_flight[group_id] = _GroupInFlight(group_id)
        g.streams[subgroup] = _StreamInFlight(subgroup, self.sink.open_group(group_id, subgroup))
        self._drop(group_id, code)

    def reset_subgroup(self, group_id: int, subgroup: int, code: int) -> None:
        """A subgroup of a group in flight was cut upstream: its stream is reset (one never opened
        here is signalled on a stream of its header alone), the group's others go on."""
        g = self.in_flight.get(group_id)
        if g is None:
            return
        s = g.streams.get(subgroup)
        if s is not None:
            self._cut_stream(g, s, code)
        elif subgroup not in g.closed:
            g.closed.add(subgroup)
            self.sink.reset_group(self.sink.open_group(group_id, subgroup), code)

    def _drop_stream(self, g: _GroupInFlight, s: _StreamInFlight, code: int) -> None:
        """Reset one subgroup stream and never reopen it; a group of that stream alone is dropped
        whole (``_drop``), as a group of one subgroup always was."""
        if len(g.streams) == 1 and not g.closed:
            self._drop(g.group_id, code)
            return
        del g.streams[s.subgroup]
        g.closed.add(s.subgroup)
        self._reset(g.group_id, s, code)
        if g.complete and not g.streams:
            del self.in_flight[g.group_id]

    def _reset(self, group_id: int, s: _StreamInFlight, code: int) -> None:
        if s.cut is not None:
            code = s.cut  # dropped (late, over budget) while its cut waited: it was cut all the same
        unannounced = s.written > 0 and not self.sink.announced(s.handle)
        self.sink.reset_group(s.handle, code)
        if unannounced:
            # the reset drops the stream's unsent bytes, its header among them, and then says
            # nothing about which group it was: say it with a stream of the header alone, reset
            # once that has arrived (MoQT d16 allows a new stream after a premature reset)
            self.sink.reset_group(self.sink.open_group(group_id, s.subgroup), code)

    def _drop(self, group_id: int, code: int) -> None:
        """Stop delivering the group: every stream of it still here is reset, none is opened again."""
        g = self.in_flight.pop(group_id)
        if group_id == self.last_group:
            self.range_ended = True
        for s in g.streams.values():
            self._reset(group_id, s, code)
        self.dropped.add(group_id)
        self.skipped_groups.append(group_id)
        if len(self.dropped) > 64:  # only recent ids matter: groups only move forward
            self.dropped = set(sorted(self.dropped)[-32:])

    def close(self, code: int = RESET_CANCELLED) -> None:
        for group_id in list(self.in_flight):
            for s in self.in_flight.pop(group_id).streams.values():
                if not s.complete or s.fin_held or s.cut is not None:
                    self.sink.reset_group(s.handle, code)


class TrackFanout:
    """The cache and subscribers of one track at this relay."""

    def __init__(self, cache: GroupCache | None = None, *, state: bool = False,
                 ends_groups_on_newer: bool = True) -> None:
        """``ends_groups_on_newer``: a group is over when a newer one begins (a local source, which
        produces groups in order). A relayed track passes False: its groups arrive on parallel
        streams, newest first, so an older group's tail may come after a newer group's start, and
        a group ends when its own stream does (``end_group``)."""
        self.cache = GroupCache() if cache is None else cache  # (an empty one is falsy: len 0)
        # a state track (the catalog): its newest group is the current state, not media that
        # ages, so a new subscriber always gets it however long ago it was published
        self.state = state
        self.ends_groups_on_newer = ends_groups_on_newer
        self.subscribers: set[TrackSubscription] = set()
        self.ended = False
        self.publisher_priority: int | None = None  # of a relayed track, passed on unchanged
        # a relayed track's Track Extensions (its publisher's latest set), passed on unchanged; this
        # relay's own tracks say what it does: a newer group is sent before an older one
        self._track_extensions: dict = {EXT_DEFAULT_PUBLISHER_GROUP_ORDER: GROUP_ORDER_DESCENDING}
        # read by metrics: objects and bytes in, bytes handed to subscribers' sessions, groups
        # dropped for subscribers past their budget
        self.objects_received = 0
        self.bytes_received = 0
        self.groups_received = 0  # relayed groups seen begin (a newer group than any before)
        self._newest_received = -1
        self.first_received: float | None = None  # wall clock of the first relayed object (the API's "started")
        self.bytes_sent = 0
        self.groups_dropped = 0
        self.duplicates = 0  # objects a publisher sent again (not passed on)
        self.label = ""  # the track, for its log lines (a relayed one's)

    @property
    def track_extensions(self) -> dict:
        return self._track_extensions

    @track_extensions.setter
    def track_extensions(self, extensions: dict) -> None:
        """A relayed track's Track Extensions: its MAX_CACHE_DURATION (ms) bounds what the cache
        serves (a MUST NOT in draft 16), the rest is passed on."""
        self._track_extensions = extensions
        ms = extensions.get(EXT_MAX_CACHE_DURATION)
        self.cache.max_object_age = ms / 1000 if isinstance(ms, int) else None

    def delivery_timeout(self, asked: float) -> float:
        """A subscription's delivery timeout: ``asked`` (the subscriber's, else the relay's), or the
        track's DELIVERY_TIMEOUT extension if smaller (draft 16: "the endpoints use the min")."""
        ms = self._track_extensions.get(EXT_DELIVERY_TIMEOUT)
        return min(asked, ms / 1000) if isinstance(ms, int) and ms > 0 else asked

    def subscribe(self, sub: TrackSubscription, now: float) -> None:
        """Add a subscriber and send it the newest cached group at once."""
        self.subscribers.add(sub)
        sub.hold_fin = not self.state
        self._set_live_from(sub)
        latest = self.cache.latest(now)  # (nothing past the track's MAX_CACHE_DURATION)
        if latest is None:
            return
        try:
            for group in self.cache.groups_from(latest.group_id, now):
                if self.state:
                    self._replay(sub, group, received=now)  # its budget runs from now
                elif now - group.started > sub.delivery_timeout:
                    continue  # already past this subscriber's budget: never start it (a reset would follow)
                else:
                    self._replay(sub, group)
            sub.check(now)
        except Exception as exc:  # noqa: BLE001 - see _let_go
            self._let_go([(sub, exc)])

    def subscribe_from(self, sub: TrackSubscription, now: float) -> None:
        """Add a subscriber whose filter starts at an explicit Location (``sub.start_group``,
        ``sub.start_object``: AbsoluteStart/AbsoluteRange): the cached objects from there (up to
        ``sub.last_group``) at once, then live ones. A start older than the cache starts at what is
        cached (draft 16 answers a SUBSCRIBE with objects from now on; older ones are FETCHed).
        At most the newest MAX_GROUPS_IN_FLIGHT cached groups: more would reset each other."""
        self.subscribers.add(sub)
        sub.hold_fin = not self.state
        sub.groups_in_order = self.ends_groups_on_newer
        self._set_live_from(sub)
        last = sub.last_group
        groups = [g for g in self.cache.groups_from(sub.start_group, now) if last is None or g.group_id <= last]
        try:
            for group in groups[-MAX_GROUPS_IN_FLIGHT:]:
                # asked for by name: its budget runs from now (one older than the budget would be
                # reset at once otherwise)
                self._replay(sub, group, sub.start_object if group.group_id == sub.start_group else 0, received=now)
            sub.range_ended = self._range_over(sub, now)  # its end group may be over already (from the cache or gone)
            sub.check(now)
        except Exception as exc:  # noqa: BLE001 - see _let_go
            self._let_go([(sub, exc)])

    def subscribe_next(self, sub: TrackSubscription) -> None:
        """Add a subscriber whose filter starts at a group not begun yet (``sub.start_group``:
        LargestObject, NextGroupStart): it gets objects from there on, live."""
        self.subscribers.add(sub)
        self._set_live_from(sub)

    def _set_live_from(self, sub: TrackSubscription) -> None:
        """Groups newer than any held now begin after ``sub`` joined: all their objects reach it.
        Nothing held yet: the first group may be joined mid-way (a publisher's LargestObject), so
        only its object 0 opens one, as ever."""
        largest = self.cache.largest
        if largest is not None:
            sub.live_from = max(largest[0] + 1, sub.start_group or 0)

    def _first_object(self, group_id: int, object_id: int) -> None:
        """The track's first object here: subscribers that came before it get every group from
        this one on (from the next if this one was joined mid-way upstream)."""
        for sub in self.subscribers:
            if sub.live_from is None:
                sub.live_from = max(group_id if object_id == 0 else group_id + 1, sub.start_group or 0)

    def _let_go(self, failed: list) -> None:
        """Subscribers whose connection failed under a call (closed under us, a transport error)
        leave this fan-out at once, so one dead connection never stops the others' delivery;
        ``sub.failed`` tells the relay to close its session."""
        for sub, exc in failed:
            if sub not in self.subscribers:
                continue
            self.subscribers.discard(sub)
            sub.failed = f"{type(exc).__name__}: {exc}"
            log.warning("subscriber dropped from a fan-out: %s", sub.failed)
            try:
                sub.close()
            except Exception:  # noqa: BLE001 - its connection is already broken
                sub.in_flight.clear()

    @staticmethod
    def _replay(sub: TrackSubscription, group, from_object: int = 0, received: float | None = None) -> None:
        """Hand a subscriber the cached objects of ``group`` (from ``from_object`` on), each in its
        subgroup, and the end of the group or of those of its subgroups that ended."""
        when = group.started if received is None else received
        sub.replaying = group.group_id
        try:
            for obj in group.objects:
                if obj.object_id < from_object:
                    continue
                if obj.datagram:  # as it came: a datagram
                    sub.deliver_datagram(group.group_id, obj.object_id, obj.payload, obj.extensions, obj.priority,
                                         obj.status, obj.end_of_group)
                else:
                    sub.deliver(group.group_id, obj.object_id, obj.payload, obj.extensions, when,
                                obj.subgroup, obj.priority, obj.end_of_group, obj.status)
        finally:
            sub.replaying = None
        if group.complete:
            sub.end_group(group.group_id)
        elif group.ended:
            for subgroup in group.ended:
                sub.end_subgroup(group.group_id, subgroup)

    def extend_back(self, sub: TrackSubscription, group_id: int, from_object: int, now: float) -> None:
        """Also deliver ``group_id`` from object ``from_object`` on (cached objects at once): a
        subscription that starts mid-group, for a subscriber whose joining FETCH carries the rest."""
        if sub.start_group is None or group_id >= sub.start_group or group_id in sub.dropped:
            return
        sub.start_group, sub.start_object = group_id, from_object
        if sub not in self.subscribers:
            return  # not delivered to yet (FORWARD=0): it starts there once it is
        group = next((g for g in self.cache.groups_from(group_id, now) if g.group_id == group_id), None)
        try:
            if group is not None:
                # those objects came after the subscription began (within a round trip): their
                # budget runs from now, not from the group's start, or a joined group older than
                # the budget would be dropped at once and leave a hole between FETCH and subscription
                self._replay(sub, group, from_object, received=now)
            sub.check(now)
        except Exception as exc:  # noqa: BLE001 - see _let_go
            self._let_go([(sub, exc)])

    def live_start(self, start: tuple[int, int], now: float) -> tuple[int, int]:
        """Where a subscription asking to start at ``start`` starts here: there, or at the newest
        group cached whole if that is later. Draft 16 ("Updating Subscriptions"): a Start Location
        below the Largest Location is like a new subscription, what came before is FETCHed; so it
        starts where an unfiltered one does (``subscribe``), and AbsoluteStart {0, 0} is the same
        as no filter, as the draft says."""
        latest = self.cache.latest(now)
        return start if latest is None else max(start, (latest.group_id, 0))

    def set_range(self, sub: TrackSubscription, start: tuple[int, int], last_group: int | None, now: float) -> None:
        """A subscription's new filter (REQUEST_UPDATE): objects from ``start`` to the end of group
        ``last_group`` (None: open ended). Groups it has open outside that are reset (draft 16: a
        narrowed subscription may still get what was sent before; a stream closed early is reset);
        a start moved back replays the cached group it now starts at (``live_start``); an End Group
        already passed ends the range now."""
        for group_id, g in list(sub.in_flight.items()):
            if not g.complete and (group_id < start[0] or (last_group is not None and group_id > last_group)):
                sub._drop(group_id, RESET_CANCELLED)
        sub.last_group = last_group
        if sub not in self.subscribers:  # not delivered to yet (FORWARD=0): like a new subscription
            sub.start_group, sub.start_object = self.live_start(start, now)
        elif sub.start_group is None or start >= (sub.start_group, sub.start_object):
            sub.start_group, sub.start_object = start
        else:
            back = self.live_start(start, now)
            if back[0] < sub.start_group:
                self.extend_back(sub, back[0], back[1], now)
        sub.range_ended = self._range_over(sub, now)

    def _range_over(self, sub: TrackSubscription, now: float) -> bool:
        """Whether ``sub``'s End Group is over: it ended or was dropped for the subscriber, or it is
        not in flight and a later group exists or it is complete here (delivered already)."""
        last = sub.last_group
        if last is None:
            return False
        if last in sub.dropped:
            return True
        if last in sub.in_flight:
            return sub.in_flight[last].complete
        largest = self.cache.largest
        if largest is not None and largest[0] > last:
            return True
        group = next((g for g in self.cache.groups_from(last, now) if g.group_id == last), None)
        return group is not None and group.complete

    def unsubscribe(self, sub: TrackSubscription) -> None:
        self.subscribers.discard(sub)
        sub.close()

    def publish_frame(self, frame: Frame, timescale: int, now: float) -> None:
        """``publish_object`` for a frame of an in-process broadcast (subgroup 0): cached as it
        came (CachedFrame), its LOC extensions made only once a subscriber is there to send them
        to (the cache makes them when read)."""
        self.objects_received += 1
        self.bytes_received += len(frame.payload)
        if not self.subscribers:
            self.cache.add_frame(frame, timescale, now)
            return
        previous = self.cache.largest
        self.cache.add_frame(frame, timescale, now)
        self._deliver(previous, frame.group, frame.index, frame.payload, frame_extensions(frame, timescale), now)

    def publish_object(self, group_id: int, object_id: int, payload, extensions: dict | None, now: float,
                       subgroup: int = 0, priority: int | None = None, end_of_group: bool = True,
                       status: int = 0) -> None:
        """An object of ``subgroup`` (publisher ``priority``, None: the track's; ``end_of_group``:
        the subgroup holds the group's last object; ``status``: its Object Status, an End of Group
        or End of Track passed on as it came) to the cache and every subscriber."""
        self.objects_received += 1
        self.bytes_received += len(payload)
        if group_id > self._newest_received:
            if self._newest_received < 0:
                self.first_received = time.time()
            self._newest_received = group_id
            self.groups_received += 1
        previous = self.cache.largest if self.subscribers else None  # (read only for someone to tell)
        if not self.cache.add(group_id, object_id, payload, extensions, now, subgroup, priority, end_of_group, status):
            self._sent_again(group_id, subgroup, object_id)
        elif self.subscribers:  # nobody to tell: only the cache (the common case of an ingest nobody watches)
            self._deliver(previous, group_id, object_id, payload, extensions, now, subgroup, priority, end_of_group,
                          status)

    def _sent_again(self, group_id: int, subgroup: int, object_id: int) -> None:
        """The publisher sent an object it had sent (``GroupCache.add`` said so): dropped, said once."""
        self.duplicates += 1
        if self.duplicates == 1:
            log.warning("%s: the publisher sent object %d of group %d subgroup %d again (a subgroup on a second "
                        "stream?): objects sent again are dropped, not passed on", self.label or "track",
                        object_id, group_id, subgroup)

    def publish_datagram(self, group_id: int, object_id: int, payload, extensions: dict | None, now: float,
                         priority: int | None = None, status: int = 0, end_of_group: bool = False) -> None:
        """An object that came as an OBJECT_DATAGRAM (publisher ``priority``, None: the track's;
        ``end_of_group``: its END_OF_GROUP bit) to the cache, flagged so, and to every subscriber
        as a datagram (``TrackSubscription.deliver_datagram``)."""
        self.objects_received += 1
        self.bytes_received += len(payload)
        if group_id > self._newest_received:
            if self._newest_received < 0:
                self.first_received = time.time()
            self._newest_received = group_id
            self.groups_received += 1
        previous = self.cache.largest
        self.cache.add(group_id, object_id, payload, extensions, now, 0, priority, end_of_group, status, datagram=True)
        if not self.subscribers:
            return
        if previous is None:
            self._first_object(group_id, object_id)
        self._each(lambda sub: sub.deliver_datagram(group_id, object_id, payload, extensions, priority, status,
                                                    end_of_group))

    def _deliver(self, previous: tuple[int, int] | None, group_id: int, object_id: int, payload,
                 extensions: dict | None, now: float, subgroup: int = 0, priority: int | None = None,
                 end_of_group: bool = True, status: int = 0) -> None:
        """An object just cached (``previous``: the largest object before it) to every subscriber."""
        if previous is None:
            self._first_object(group_id, object_id)
        failed = None
        ended = previous[0] if self.ends_groups_on_newer and previous is not None and group_id > previous[0] else None
        for sub in self.subscribers:
            try:
                if ended is not None:
                    sub.end_group(ended)  # a newer group began: the older one is complete
                sub.deliver(group_id, object_id, payload, extensions, now, subgroup, priority, end_of_group, status)
            except Exception as exc:  # noqa: BLE001 - see _let_go
                failed = failed or []
                failed.append((sub, exc))
        if failed:
            self._let_go(failed)

    def _each(self, call) -> None:
        """``call(sub)`` for every subscriber; one whose connection fails is let go (_let_go)."""
        failed = None
        for sub in self.subscribers:
            try:
                call(sub)
            except Exception as exc:  # noqa: BLE001 - see _let_go
                failed = failed or []
                failed.append((sub, exc))
        if failed:
            self._let_go(failed)

    def end_group(self, group_id: int) -> None:
        self.cache.end_group(group_id)
        self._each(lambda sub: sub.end_group(group_id))

    def end_subgroup(self, group_id: int, subgroup: int) -> None:
        """One subgroup of the group ended upstream (FIN, End of Group): its streams end; the group
        ends when every subgroup has (``end_group``: the relay knows which are still open)."""
        self.cache.end_subgroup(group_id, subgroup)
        self._each(lambda sub: sub.end_subgroup(group_id, subgroup))

    def cut_open_groups(self, code: int, groups: Iterable[int] = ()) -> None:
        """The source is gone in the middle of its groups in progress: ``groups`` (a relayed
        track's groups with a stream still open upstream) and every group not over here (a local
        source's newest; any a subscriber has open). None of them ends with a FIN, which says a
        subgroup is whole (MoQT d16, "Closing Subgroup Streams"): each subscriber's streams of
        them still open are reset with ``code`` (it learns it skipped the rest), and the cache
        can no longer serve them (a late joiner starts at a whole group; a FETCH is told their
        range is unknown)."""
        cut = set(groups)
        cut.update(g.group_id for g in self.cache.groups() if not g.complete)
        for group_id in cut:
            self.cache.drop(group_id)
            self.cache.end_group(group_id)

        def cut_all(sub: TrackSubscription) -> None:
            for group_id, g in list(sub.in_flight.items()):
                if group_id in cut or not g.complete:
                    sub.cut_group(group_id, code)
        self._each(cut_all)

    def end_open_groups(self) -> None:
        """The source is gone: every group still open for a subscriber ends here."""
        def end_all(sub):
            for group_id in list(sub.in_flight):
                sub.end_group(group_id)
        self._each(end_all)

    def reset_group(self, group_id: int, code: int, now: float | None = None, subgroup: int = 0) -> None:
        """A subgroup of the group was cut upstream: cut it for every subscriber too (never pass on
        part silently; the group's other subgroups go on), and the cache can no longer serve the
        group whole. A group of which nothing arrived (its publisher skipped it whole: a stream of
        the header alone, reset) is passed on as such (see ``skip_group``)."""
        if not self.cache.has_objects(group_id):
            self.skip_group(group_id, code, now, subgroup)
            return
        self.cache.drop(group_id)
        self._each(lambda sub: sub.reset_subgroup(group_id, subgroup, code))

    def skip_group(self, group_id: int, code: int, now: float | None = None, subgroup: int = 0) -> None:
        """The source dropped (the rest of) ``group_id`` (a transcoder rung that fell behind): a
        subscriber with the group open gets its stream reset with ``code``; one that has not begun
        it (and would have: it is not older than the subscription's start) gets a stream of the
        subgroup header alone, reset, which tells it the group is skipped (MoQT d16: "explicitly
        tells the receiver there is an unsent Subgroup")."""
        self.cache.drop(group_id)

        def skip(sub: TrackSubscription) -> None:
            if group_id in sub.in_flight:
                if not sub.in_flight[group_id].complete:
                    sub.reset_subgroup(group_id, subgroup, code)
            elif group_id not in sub.dropped and (sub.start_group is None or group_id >= sub.start_group):
                sub.signal_skipped(group_id, code, subgroup)
            if now is not None:
                sub.check(now)
        self._each(skip)

    def check(self, now: float) -> None:
        self.cache.expire(now)
        self._each(lambda sub: now < sub._quiet_until or sub.check(now))

    def end(self) -> Iterable[TrackSubscription]:
        """The publisher is gone: close every group and return the subscribers to notify."""
        self.ended = True
        largest = self.cache.largest
        if largest is not None:
            self.end_group(largest[0])
        self._each(lambda sub: sub.release_fins())  # nothing checks their budgets from now on
        subs = list(self.subscribers)
        self.subscribers.clear()
        return subs
