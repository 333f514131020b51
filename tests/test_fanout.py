"""Fan-out rules with a recording sink: join at the newest group, budgets drop whole groups."""

from rtmpq.media.frames import Frame
from rtmpq.moq.fanout import RESET_CANCELLED, RESET_DELIVERY_TIMEOUT, TrackFanout, TrackSubscription
from rtmpq.moq.loc import frame_extensions


class FakeSink:
    """Records what a subscriber's QUIC connection was asked to do; ``drain`` simulates sending."""

    def __init__(self):
        self.streams = {}  # handle -> dict(group, objects, state, queued)
        self.headers = {}  # handle -> (subgroup, publisher priority, END_OF_GROUP) of its header
        self.next = 0

    def open_group(self, group_id, subgroup=0, priority=None, end_of_group=True):
        self.next += 1
        self.streams[self.next] = {"group": group_id, "objects": [], "state": "open", "queued": 0}
        self.headers[self.next] = (subgroup, priority, end_of_group)
        return self.next

    def send_object(self, handle, object_id, payload, extensions, status=0):
        s = self.streams[handle]
        s["objects"].append(object_id)
        s["queued"] += len(payload)

    def end_group(self, handle):
        self.streams[handle]["state"] = "fin"

    def reset_group(self, handle, code):
        self.streams[handle]["state"] = ("reset", code)
        self.streams[handle]["queued"] = 0

    def buffered_bytes(self, handle):
        return self.streams[handle]["queued"]

    def total_buffered_bytes(self):
        return sum(s["queued"] for s in self.streams.values())

    def confirmed(self, handle):
        return self.streams[handle]["queued"] == 0

    def unsent_bytes(self, handle):
        return self.streams[handle]["queued"]  # nothing in flight: sent is delivered here

    def ack_allowance(self):
        return 0.0

    def ack_doubt(self):
        return False  # buffered_bytes is exact here

    def announced(self, handle):
        return True  # its header arrives at once

    def drain(self):
        for s in self.streams.values():
            s["queued"] = 0

    def groups(self, state=None):
        return [s["group"] for s in self.streams.values() if state is None or s["state"] == state]


def publish_gop(fanout, group, n, now, size=1000):
    for i in range(n):
        fanout.publish_object(group, i, bytes(size), None, now)


def test_late_joiner_starts_at_the_newest_group_from_object_zero():
    fanout = TrackFanout()
    publish_gop(fanout, 0, 60, 0.0)
    publish_gop(fanout, 1, 10, 2.0)
    sink = FakeSink()
    fanout.subscribe(TrackSubscription(sink), 2.0)
    [stream] = sink.streams.values()
    assert stream["group"] == 1 and stream["objects"] == list(range(10))
    fanout.publish_object(1, 10, b"x", None, 2.1)
    fanout.publish_object(2, 0, b"x", None, 4.0)
    assert sink.groups("fin") == [1] and sink.groups("open") == [2]


def test_a_fast_subscriber_gets_every_object_of_every_group_in_order():
    fanout = TrackFanout()
    sink = FakeSink()
    fanout.subscribe(TrackSubscription(sink), 0.0)
    for g in range(5):
        publish_gop(fanout, g, 30, g * 1.0)
        sink.drain()
        fanout.check(g * 1.0 + 0.5)
    assert [s["objects"] for s in sink.streams.values()] == [list(range(30))] * 5
    assert sink.groups("fin") == [0, 1, 2, 3]


def test_a_slow_subscriber_skips_old_groups_whole_and_stays_within_its_budget():
    fanout = TrackFanout()
    sink = FakeSink()
    sub = TrackSubscription(sink, delivery_timeout=1.0, send_budget=10**9)
    fanout.subscribe(sub, 0.0)
    for g in range(6):  # nothing is ever sent: the link is dead slow
        publish_gop(fanout, g, 20, g * 1.0)
        fanout.check(g * 1.0 + 0.9)
    resets = [s for s in sink.streams.values() if isinstance(s["state"], tuple)]
    assert resets and all(s["state"] == ("reset", RESET_DELIVERY_TIMEOUT) for s in resets)
    assert sub.skipped_groups == [s["group"] for s in resets]
    # what is still queued is never older than the budget
    assert sink.groups("open") == [5] and len(sub.in_flight) <= 2


def test_send_budget_bounds_queued_bytes():
    fanout = TrackFanout()
    sink = FakeSink()
    sub = TrackSubscription(sink, delivery_timeout=100.0, send_budget=50_000)
    fanout.subscribe(sub, 0.0)
    for g in range(10):
        publish_gop(fanout, g, 30, 0.0)
        fanout.check(0.0)
        assert sink.total_buffered_bytes() <= 50_000
        assert sink.groups("open") == [g]  # the newest group is kept; older ones went whole
    assert sub.skipped_groups == list(range(9))
    assert all(s["objects"] == list(range(30)) for s in sink.streams.values())


def test_a_group_bigger_than_the_send_budget_is_dropped_whole_and_signalled():
    fanout = TrackFanout()
    sink = FakeSink()
    sub = TrackSubscription(sink, delivery_timeout=100.0, send_budget=50_000)
    fanout.subscribe(sub, 0.0)
    publish_gop(fanout, 0, 60, 0.0)  # 60 kB queued: the budget holds even with one group in flight
    fanout.check(0.0)
    assert sink.total_buffered_bytes() == 0 and sub.skipped_groups == [0]
    assert [s["state"] for s in sink.streams.values()] == [("reset", RESET_DELIVERY_TIMEOUT)]
    publish_gop(fanout, 1, 30, 0.0)  # the next group that fits is delivered from its start
    fanout.check(0.0)
    assert sink.groups("open") == [1] and sink.streams[2]["objects"] == list(range(30))


def test_group_cut_by_the_relay_is_never_reopened():
    fanout = TrackFanout()
    sink = FakeSink()
    sub = TrackSubscription(sink, delivery_timeout=0.5)
    fanout.subscribe(sub, 0.0)
    publish_gop(fanout, 0, 5, 0.0)
    fanout.check(1.0)
    publish_gop(fanout, 0, 5, 1.0)  # more objects of the dropped group (same ids don't matter)
    assert sink.groups() == [0]


def test_a_late_subscriber_gets_the_catalog_however_old_it_is():
    """The catalog is state, not media: a subscriber joining long after it was published (beyond
    its delivery timeout) still gets it, and its budget runs from the join."""
    fanout = TrackFanout(state=True)
    fanout.publish_object(0, 0, b'{"catalog": 1}', None, now=0.0)
    fanout.end_group(0)
    sink = FakeSink()
    sub = TrackSubscription(sink, delivery_timeout=2.0)
    fanout.subscribe(sub, 30.0)
    [stream] = sink.streams.values()
    assert stream["group"] == 0 and stream["objects"] == [0] and stream["state"] == "fin"
    sub.check(31.0)  # not sent yet, but within its budget from the join
    assert not sub.skipped_groups
    media = TrackFanout()  # a media track's group that old is never started
    media.publish_object(0, 0, b"x", None, 0.0)
    other = FakeSink()
    media.subscribe(TrackSubscription(other, delivery_timeout=2.0), 30.0)
    assert not other.streams


def test_a_relayed_tracks_groups_end_with_their_own_streams_so_a_late_tail_still_arrives():
    # upstream sends groups on parallel streams, newest first: group 1's last objects may come
    # after group 2 began; they belong on group 1's stream, which ends when upstream's does
    fanout = TrackFanout(ends_groups_on_newer=False)
    sink = FakeSink()
    fanout.subscribe(TrackSubscription(sink), 0.0)
    publish_gop(fanout, 1, 3, 0.0)
    fanout.publish_object(2, 0, b"x", None, 0.1)
    fanout.publish_object(1, 3, b"x", None, 0.1)  # group 1's tail, late
    fanout.end_group(1)
    by_group = {s["group"]: s for s in sink.streams.values()}
    assert by_group[1]["objects"] == [0, 1, 2, 3] and by_group[1]["state"] == "fin"
    assert by_group[2]["state"] == "open"
    # the source goes away: every group still open ends (none is left hanging)
    fanout.end_open_groups()
    assert sink.groups("open") == []


def test_an_object_after_its_groups_end_is_not_sent_on_the_finished_stream():
    fanout = TrackFanout()
    sink = FakeSink()
    fanout.subscribe(TrackSubscription(sink), 0.0)
    publish_gop(fanout, 1, 2, 0.0)
    fanout.publish_object(2, 0, b"x", None, 0.1)  # a local source: group 1 is over
    fanout.publish_object(1, 2, b"x", None, 0.1)
    assert [s["objects"] for s in sink.streams.values()] == [[0, 1], [0]]


def test_stalled_since_counts_only_acknowledged_bytes_not_dropped_groups():
    """A subscriber that takes nothing stays stalled across its groups' resets; one that takes
    anything (however slowly) is not stalled; one that is idle with nothing owed is not either."""
    fanout = TrackFanout()
    stuck, slow = FakeSink(), FakeSink()
    s_stuck, s_slow = TrackSubscription(stuck, delivery_timeout=1.0), TrackSubscription(slow, delivery_timeout=1.0)
    publish_gop(fanout, 0, 1, 0.0)
    fanout.subscribe(s_stuck, 0.0)
    fanout.subscribe(s_slow, 0.0)
    fanout.check(0.1)
    assert s_stuck.stalled_since == 0.0 and s_slow.stalled_since == 0.0  # owed group 0 since joining
    for t in range(1, 20):  # a group a second, each dropped unread by the stuck one
        publish_gop(fanout, t, 3, float(t))
        for s in slow.streams.values():  # the slow one takes one object's worth a second
            s["queued"] = max(0, s["queued"] - 1000)
        fanout.check(t + 0.5)
    assert stuck.groups("fin") == [] and len([s for s in stuck.streams.values() if s["state"] != "open"]) > 10
    assert s_stuck.stalled_since == 0.0  # 19 s without taking a byte
    assert s_slow.stalled_since is not None and s_slow.stalled_since >= 18.5
    slow.drain()
    fanout.check(20.0)
    assert s_slow.stalled_since is None


def test_the_catalog_reaches_a_subscriber_however_old_it_is():
    """A state track's newest group (the catalog changes rarely) is sent to every new subscriber;
    a media group older than the budget is not (the next one comes within a GoP)."""
    catalog, media = TrackFanout(state=True), TrackFanout()
    catalog.publish_object(0, 0, b'{"tracks": []}', None, 0.0)
    catalog.end_group(0)
    publish_gop(media, 0, 3, 0.0)
    media.end_group(0)
    a, b = FakeSink(), FakeSink()
    catalog.subscribe(TrackSubscription(a, delivery_timeout=2.0), 60.0)
    media.subscribe(TrackSubscription(b, delivery_timeout=2.0), 60.0)
    assert a.groups("fin") == [0] and a.streams[1]["objects"] == [0]
    assert b.groups() == []


def test_a_group_the_source_skips_is_signalled_to_every_subscriber_cut_short_or_never_begun():
    """A transcoder rung that fell behind skips (the rest of) a group: a subscriber with the group
    open has its stream reset; one that has not begun it gets its header alone, reset; later
    groups go on, and a subscriber joining after the skip never gets the skipped group's part."""
    fanout = TrackFanout()
    early, late = FakeSink(), FakeSink()
    fanout.subscribe(TrackSubscription(early), 0.0)
    publish_gop(fanout, 0, 30, 0.0)
    publish_gop(fanout, 1, 5, 1.0)
    fanout.skip_group(1, RESET_DELIVERY_TIMEOUT, 1.1)  # cut short after 5 objects
    early.drain()  # (its reset waits for what was written to arrive)
    fanout.check(1.2)
    fanout.skip_group(2, RESET_DELIVERY_TIMEOUT, 2.0)  # never begun
    publish_gop(fanout, 3, 30, 3.0)
    states = {s["group"]: (s["objects"], s["state"]) for s in early.streams.values()}
    assert states[1] == (list(range(5)), ("reset", RESET_DELIVERY_TIMEOUT))
    assert states[2] == ([], ("reset", RESET_DELIVERY_TIMEOUT))
    assert states[0][1] == "fin" and states[3] == (list(range(30)), "open")
    fanout.subscribe(TrackSubscription(late), 3.1)
    assert late.groups() == [3]  # the newest group: the skipped ones are not replayed


def test_an_upstream_group_reset_with_nothing_sent_is_passed_on_as_skipped():
    """Through a relay: a group whose stream arrived with its header alone and a reset (the
    transcoder skipped it whole) reaches the subscribers as such; a group cut short upstream is
    cut for those that have it, and not announced to a subscriber that never took it."""
    fanout = TrackFanout(ends_groups_on_newer=False)
    sink = FakeSink()
    fanout.subscribe(TrackSubscription(sink), 0.0)
    publish_gop(fanout, 0, 10, 0.0)
    fanout.end_group(0)
    fanout.reset_group(1, RESET_DELIVERY_TIMEOUT)  # nothing of group 1 came
    publish_gop(fanout, 2, 3, 2.0)
    fanout.reset_group(2, RESET_DELIVERY_TIMEOUT)
    sink.drain()  # (the reset of what was written waits for it to arrive)
    fanout.check(2.1)
    assert [(s["group"], s["objects"], s["state"]) for s in sink.streams.values()] == [
        (0, list(range(10)), "fin"), (1, [], ("reset", RESET_DELIVERY_TIMEOUT)),
        (2, [0, 1, 2], ("reset", RESET_DELIVERY_TIMEOUT))]


def test_the_rest_of_a_joined_group_is_not_dropped_for_the_age_of_the_group():
    """Largest Object subscription + joining FETCH: the objects of the joined group after the
    largest one come on the subscription, however long ago the group began (here 2.5 s, past the
    2 s budget): they were published after the join, so their budget runs from then."""
    fanout = TrackFanout()
    publish_gop(fanout, 4, 30, 0.0)  # the joined group, begun long ago
    sink = FakeSink()
    sub = TrackSubscription(sink, delivery_timeout=2.0, start_group=5)
    fanout.subscribers.add(sub)
    fanout.publish_object(4, 30, b"x", None, 2.5)  # after the largest object the subscriber learned (4, 29)
    assert sink.streams == {}
    fanout.extend_back(sub, 4, 30, 2.5)  # the joining FETCH carries (4, 0) to (4, 29)
    [stream] = sink.streams.values()
    assert stream["group"] == 4 and stream["objects"] == [30] and stream["state"] == "open"
    fanout.publish_object(4, 31, b"x", None, 2.6)
    sub.check(2.7)
    assert stream["state"] == "open" and stream["objects"] == [30, 31]


class BrokenSink(FakeSink):
    """A subscriber whose QUIC connection closed under the relay: calls into it raise."""

    def __init__(self, fail_from_group):
        super().__init__()
        self.fail_from_group = fail_from_group

    def open_group(self, group_id, *args):
        if group_id >= self.fail_from_group:
            raise ConnectionError("set_stream_priority: cnx not open")
        return super().open_group(group_id, *args)

    def reset_group(self, handle, code):
        raise ConnectionError("cnx not open")


def test_a_subscriber_whose_connection_fails_leaves_alone_and_the_others_get_every_object():
    fanout = TrackFanout()
    healthy, broken = FakeSink(), BrokenSink(fail_from_group=2)
    other = FakeSink()
    subs = [TrackSubscription(s) for s in (healthy, broken, other)]
    for sub in subs:
        fanout.subscribe(sub, 0.0)
    for g in range(5):
        publish_gop(fanout, g, 30, g * 1.0)
        healthy.drain()
        other.drain()
        fanout.check(g * 1.0 + 0.5)
    fanout.end_group(4)
    for sink in (healthy, other):
        assert [s["objects"] for s in sink.streams.values()] == [list(range(30))] * 5
        assert sink.groups("fin") == [0, 1, 2, 3, 4]
    assert subs[1] not in fanout.subscribers and subs[0] in fanout.subscribers and subs[2] in fanout.subscribers
    assert subs[1].failed == "ConnectionError: set_stream_priority: cnx not open"
    assert subs[0].failed is None and not subs[1].in_flight
    assert broken.groups() == [0, 1]  # what it got before its connection failed


class EstimatingSink(FakeSink):
    """Acknowledgements estimated (aiopquic): ``drain`` says sent, the transport confirms later."""

    def __init__(self):
        super().__init__()
        self.unconfirmed = set()

    def send_object(self, handle, object_id, payload, extensions, status=0):
        super().send_object(handle, object_id, payload, extensions)
        self.unconfirmed.add(handle)

    def confirmed(self, handle):
        return handle not in self.unconfirmed


def test_an_ended_group_the_transport_does_not_confirm_within_budget_is_reset():
    fanout = TrackFanout()
    sink = EstimatingSink()
    sub = TrackSubscription(sink, delivery_timeout=2.0)
    fanout.subscribe(sub, 0.0)
    publish_gop(fanout, 0, 30, 0.0)
    fanout.publish_object(0, 30, bytes(10), None, 1.0)  # the group's newest object, at 1.0
    publish_gop(fanout, 1, 30, 1.1)  # group 0 ends
    sink.drain()  # the estimate: every byte of both groups delivered
    fanout.check(2.9)
    assert set(sub.in_flight) == {0, 1}  # ended, not confirmed: still watched, within budget
    sink.unconfirmed.discard(2)  # group 1's stream confirmed
    fanout.check(3.05)  # group 0's newest object is now 2.05 s old and its delivery unconfirmed
    assert sink.streams[1]["state"] == ("reset", RESET_DELIVERY_TIMEOUT) and sub.skipped_groups == [0]
    assert set(sub.in_flight) == {1}  # group 1 is open (not ended yet): it stays
    fanout.publish_object(2, 0, b"x", None, 3.1)  # group 1 ends
    sink.drain()
    sink.unconfirmed.discard(2)
    fanout.check(3.2)
    assert set(sub.in_flight) == {2} and sub.skipped_groups == [0]  # group 1 confirmed: done with


class InFlightSink(FakeSink):
    """A sink whose bytes go out (``send``), then are acknowledged a round trip later (``ack``)."""

    def __init__(self, rtt):
        super().__init__()
        self.rtt = rtt
        self.unsent = {}

    def send_object(self, handle, object_id, payload, extensions, status=0):
        super().send_object(handle, object_id, payload, extensions)
        self.unsent[handle] = self.unsent.get(handle, 0) + len(payload)

    def send(self):
        self.unsent = {h: 0 for h in self.unsent}

    def ack(self):
        self.drain()

    def unsent_bytes(self, handle):
        return self.unsent.get(handle, 0)

    def ack_allowance(self):
        return self.rtt


def test_an_object_sent_within_budget_has_a_round_trip_more_to_be_acknowledged():
    # 750 ms RTT, 2 s budget: an object received at 0 and sent at 1.9 s is acknowledged at 2.65 s.
    # Judged by the acknowledgement alone it was late at 2 s; it was sent in time
    fanout = TrackFanout()
    sink = InFlightSink(rtt=0.75)
    sub = TrackSubscription(sink, delivery_timeout=2.0)
    fanout.subscribe(sub, 0.0)
    publish_gop(fanout, 0, 3, 0.0)
    sink.send()
    fanout.check(2.6)
    assert sink.groups("open") == [0] and not sub.skipped_groups
    sink.ack()
    fanout.check(2.65)
    assert sink.groups("open") == [0] and not sub.skipped_groups
    # not acknowledged a round trip past the budget (a copy lost): reset then
    publish_gop(fanout, 1, 3, 3.0)
    sink.send()
    fanout.check(5.7)
    assert 1 not in sub.skipped_groups
    fanout.check(5.8)
    assert 1 in sub.skipped_groups


def test_an_object_not_even_sent_when_its_budget_ends_is_reset_at_once():
    fanout = TrackFanout()
    sink = InFlightSink(rtt=0.75)
    sub = TrackSubscription(sink, delivery_timeout=2.0)
    fanout.subscribe(sub, 0.0)
    publish_gop(fanout, 0, 3, 0.0)
    fanout.check(1.9)
    assert not sub.skipped_groups
    fanout.check(2.1)  # still unsent at 2 s: no round trip more
    assert sub.skipped_groups == [0]


class CountingSink(FakeSink):
    """Counts how often the fan-out asks the transport what is still queued (what costs CPU)."""

    def __init__(self):
        super().__init__()
        self.counts = 0

    def buffered_bytes(self, handle):
        self.counts += 1
        return super().buffered_bytes(handle)

    def total_buffered_bytes(self):
        self.counts += 1
        return super().total_buffered_bytes()


def test_a_subscriber_that_keeps_up_is_counted_rarely_and_one_that_stops_still_loses_its_group_on_time():
    """Checked every 50 ms as the relay does, 30 objects a second: a subscriber whose transport
    takes everything at once is asked about far less often than every check, while one that takes
    nothing has its group dropped at the first check past its 2 s delivery timeout, as before."""
    fanout = TrackFanout()
    fast, stuck = CountingSink(), CountingSink()
    s_fast, s_stuck = TrackSubscription(fast, delivery_timeout=2.0), TrackSubscription(stuck, delivery_timeout=2.0)
    fanout.subscribe(s_fast, 0.0)
    fanout.subscribe(s_stuck, 0.0)
    checks = 0
    for tick in range(1, 61):  # 3 s
        now = tick * 0.05
        for i in range(3 * (tick - 1) // 2, 3 * tick // 2):  # 30 objects a second in group 0
            fanout.publish_object(0, i, bytes(1000), None, now)
        fast.drain()
        fanout.check(now)
        checks += 1
        if stuck.groups("open") == [0]:
            assert now - 0.05 <= 2.0 + 0.05  # still open only until the first check past the budget
    assert s_stuck.skipped_groups == [0] and stuck.streams[1]["state"] == ("reset", RESET_DELIVERY_TIMEOUT)
    assert s_fast.skipped_groups == [] and fast.groups("open") == [0] and fast.streams[1]["objects"] == list(range(90))
    assert fast.counts <= checks * 2 // 3  # about a count per QUIET_COUNT_INTERVAL, not two per check
    assert s_fast.stalled_since is None


class LossySink(FakeSink):
    """A subscriber whose link lost every packet so far: no stream header has been acknowledged."""

    def announced(self, handle):
        return False


def test_a_group_dropped_before_its_header_arrived_is_signalled_on_a_stream_of_its_own():
    # The delivery timeout resets group 0's stream while nothing of it has reached the subscriber:
    # the reset drops the header with the objects, and a bare RESET_STREAM names no group. The
    # relay says which group with a new stream carrying the header alone, reset (MoQT d16).
    fanout = TrackFanout()
    sink = LossySink()
    sub = TrackSubscription(sink, delivery_timeout=1.0)
    fanout.subscribe(sub, 0.0)
    publish_gop(fanout, 0, 10, 0.0)
    fanout.check(1.5)
    first, signal = sink.streams.values()
    assert first == {"group": 0, "objects": list(range(10)), "state": ("reset", RESET_DELIVERY_TIMEOUT), "queued": 0}
    assert signal == {"group": 0, "objects": [], "state": ("reset", RESET_DELIVERY_TIMEOUT), "queued": 0}
    assert sub.skipped_groups == [0]
    # a group whose header did arrive is reset on its own stream only
    publish_gop(fanout, 1, 10, 2.0)
    fanout.check(2.1)
    sink.announced = lambda handle: True
    fanout.check(3.5)
    assert sink.groups() == [0, 0, 1] and sub.skipped_groups == [0, 1]


class RetiringSink(FakeSink):
    """aiopquic's way: ``buffered_bytes`` is an estimate (``estimate_all`` calls every byte so far
    delivered), only ``retire`` (picoquic retiring the stream: every byte and the FIN acknowledged)
    confirms; ``doubt``: the path is lossy, the estimate in doubt."""

    def __init__(self, doubt):
        super().__init__()
        self.doubt = doubt
        self.retired = set()

    def estimate_all(self):
        self.drain()

    def retire(self, group):
        self.retired |= {h for h, s in self.streams.items() if s["group"] == group and s["state"] == "fin"}

    def confirmed(self, handle):
        return handle in self.retired

    def ack_doubt(self):
        return self.doubt


def subscribed_with_budget(doubt: bool):
    """A fan-out with one subscriber (2 s budget) on a RetiringSink whose path is lossy or not."""
    fanout = TrackFanout()
    sink = RetiringSink(doubt=doubt)
    sub = TrackSubscription(sink, delivery_timeout=2.0)
    fanout.subscribe(sub, 0.0)
    return fanout, sink, sub


def test_on_a_lossy_path_bytes_the_estimate_calls_delivered_stay_within_their_budget():
    # 30 % loss: the estimate counted a group's bytes delivered while a copy lost again held its
    # objects back at the subscriber; the group was judged delivered and its objects came seconds
    # late. In doubt, the group must be confirmed within the budget of the oldest object the
    # estimate let go, or it is reset then
    for complete in (False, True):
        fanout, sink, sub = subscribed_with_budget(doubt=True)
        for i in range(30):
            fanout.publish_object(0, i, bytes(1000), None, i / 30)
        if complete:
            fanout.end_group(0)
        sink.estimate_all()  # "delivered", by the estimate's word
        fanout.check(1.0)
        fanout.check(1.95)
        assert not sub.skipped_groups
        fanout.check(2.05)  # object 0's budget is over and the transport never confirmed the group
        assert sub.skipped_groups == [0], complete
        assert sink.groups(("reset", RESET_DELIVERY_TIMEOUT)) == [0]


def test_on_a_lossy_path_a_group_confirmed_in_time_is_kept():
    fanout, sink, sub = subscribed_with_budget(doubt=True)
    publish_gop(fanout, 0, 30, 0.0)
    sink.estimate_all()
    fanout.check(0.5)  # the estimate let every object go while in doubt
    sink.doubt = False  # the losses are over
    fanout.publish_object(1, 0, bytes(1000), None, 1.0)  # group 0 ends, its FIN written
    sink.estimate_all()
    fanout.check(1.5)
    sink.retire(0)
    fanout.check(2.5)
    assert not sub.skipped_groups and 0 not in sub.in_flight


def test_on_a_clean_path_the_estimate_stands_and_a_group_longer_than_the_budget_lives():
    # no doubt: an open 4 s group with a 2 s budget, every object estimated delivered, is not reset
    # (picoquic cannot confirm a group before its end)
    fanout, sink, sub = subscribed_with_budget(doubt=False)
    for i in range(120):
        fanout.publish_object(0, i, bytes(1000), None, i / 30)
        sink.estimate_all()
        fanout.check(i / 30 + 0.05)
    assert not sub.skipped_groups and sink.groups("open") == [0]


def test_on_a_lossy_path_a_group_keeps_its_fin_back_so_that_its_reset_still_holds():
    # picoquic will not reset a stream whose FIN it sent before every byte was acknowledged (it
    # delivers the rest however late: whole audio groups arrived 4-8 s late at 30 % loss). In
    # doubt, an ended group's FIN waits; the group is reset at its budget, or the FIN is written
    # once the path is no longer lossy
    fanout, sink, sub = subscribed_with_budget(doubt=True)
    publish_gop(fanout, 0, 30, 0.0)
    fanout.publish_object(1, 0, bytes(1000), None, 1.0)  # group 0 ends
    assert sink.streams[1]["state"] == "open"  # no FIN yet
    sink.estimate_all()
    fanout.check(1.5)
    assert sink.streams[1]["state"] == "open"
    fanout.check(2.05)
    assert sink.streams[1]["state"] == ("reset", RESET_DELIVERY_TIMEOUT) and sub.skipped_groups == [0]
    # the path recovers: group 1's FIN, held, is written at the next check
    fanout.publish_object(2, 0, bytes(1000), None, 2.1)  # group 1 ends
    assert sink.streams[2]["state"] == "open"
    sink.doubt = False
    fanout.check(2.2)
    assert sink.streams[2]["state"] == "fin" and sub.skipped_groups == [0]
    # the publisher goes while in doubt: nothing checks the budgets any more, the FIN is written
    sink.doubt = True
    fanout.publish_object(3, 0, bytes(1000), None, 3.1)  # group 2 ends, FIN held
    assert sink.streams[3]["state"] == "open"
    fanout.end()
    assert sink.streams[3]["state"] == "fin" and sink.streams[4]["state"] == "fin"


def test_a_state_track_never_holds_its_fin():
    fanout = TrackFanout(state=True)
    sink = RetiringSink(doubt=True)
    fanout.subscribe(TrackSubscription(sink, delivery_timeout=2.0), 0.0)
    fanout.publish_object(0, 0, b"{}", None, 0.0)
    fanout.publish_object(1, 0, b"{}", None, 1.0)
    assert sink.streams[1]["state"] == "fin"


class ExtSink(FakeSink):
    """Also records each object as sent: (object id, payload, LOC extensions)."""

    def __init__(self):
        super().__init__()
        self.sent = []

    def send_object(self, handle, object_id, payload, extensions, status=0):
        super().send_object(handle, object_id, payload, extensions)
        self.sent.append((object_id, bytes(payload), extensions))


def test_frames_cached_before_anyone_subscribed_reach_a_late_subscriber_as_a_live_one_gets_them():
    """An in-process broadcast's frames are cached without their LOC extensions built (nobody may
    ever read them); a late subscriber still gets each object with the very extensions a
    subscriber present from the start got."""
    frames = [Frame("video", 3, i, 1000 + 33 * i, 1066 + 33 * i, i == 0, bytes([i]) * 10, 1_700_000_000_000_000_000 + i)
              for i in range(5)]
    late, live = TrackFanout(), TrackFanout()
    live_sink, late_sink = ExtSink(), ExtSink()
    live.subscribe(TrackSubscription(live_sink), 0.0)
    for f in frames[:3]:
        late.publish_frame(f, 90000, 0.0)
        live.publish_frame(f, 90000, 0.0)
    late.subscribe(TrackSubscription(late_sink), 0.1)
    for f in frames[3:]:
        late.publish_frame(f, 90000, 0.2)
        live.publish_frame(f, 90000, 0.2)
    expected = [(f.index, f.payload, frame_extensions(f, 90000)) for f in frames]
    assert live_sink.sent == expected and late_sink.sent == expected
    assert late.objects_received == live.objects_received == 5
    assert late.bytes_received == live.bytes_received == 50


def test_a_range_lowered_on_a_relayed_track_ends_at_its_complete_end_group_and_cuts_later_ones():
    """REQUEST_UPDATE (``set_range``) of a range 0..9 on a relayed track (groups end by their own
    streams) to end at group 1, complete, while group 2 is in progress: group 2 is reset (CANCELLED,
    never cut silently) and the range is over at once, with no later group needed to say so."""
    fanout = TrackFanout(ends_groups_on_newer=False)
    sink = FakeSink()
    sub = TrackSubscription(sink, start_group=0)
    sub.last_group = 9
    fanout.subscribe_from(sub, 0.0)
    for g in (0, 1):
        publish_gop(fanout, g, 3, g * 1.0)
        fanout.end_group(g)
    publish_gop(fanout, 2, 2, 2.0)
    sink.drain()
    sub.check(2.1)  # groups 0 and 1 delivered: no longer in flight
    fanout.set_range(sub, (0, 0), 1, 2.2)
    assert sub.range_ended
    assert [s["state"] for s in sink.streams.values()] == ["fin", "fin", ("reset", RESET_CANCELLED)]
    publish_gop(fanout, 3, 2, 3.0)
    assert sink.groups() == [0, 1, 2]


def test_an_unfiltered_subscriber_updated_to_absolute_start_0_0_loses_nothing():
    """AbsoluteStart {0, 0} is the same as no filter (draft 16): an update to it resets none of the
    groups a relayed track has open in parallel, and their later objects still come."""
    fanout = TrackFanout(ends_groups_on_newer=False)
    publish_gop(fanout, 0, 2, 0.0)
    sink = FakeSink()
    sub = TrackSubscription(sink)
    fanout.subscribe(sub, 0.1)
    publish_gop(fanout, 1, 2, 0.2)  # group 1 begins while group 0 is still open
    fanout.set_range(sub, (0, 0), None, 0.3)
    fanout.publish_object(0, 2, b"x", None, 0.4)
    fanout.publish_object(1, 2, b"x", None, 0.4)
    assert [(s["group"], s["objects"], s["state"]) for s in sink.streams.values()] == [
        (0, [0, 1, 2], "open"), (1, [0, 1, 2], "open")]
    assert not sub.range_ended


def test_an_absolute_range_from_a_cached_group_ends_after_its_end_group():
    """AbsoluteRange {1, 2}..3 on an in-order source with groups 0..1 cached: group 1 from object
    2 at once, then live 2 and 3; group 4 is never opened, and its start ends the range."""
    fanout = TrackFanout()
    publish_gop(fanout, 0, 5, 0.0)
    publish_gop(fanout, 1, 5, 1.0)
    sink = FakeSink()
    sub = TrackSubscription(sink, start_group=1)
    sub.start_object, sub.last_group = 2, 3
    fanout.subscribe_from(sub, 1.5)
    for g in (2, 3, 4):
        publish_gop(fanout, g, 5, g * 1.0)
        assert sub.range_ended == (g == 4)
    assert [(s["group"], s["objects"]) for s in sink.streams.values()] == [(1, [2, 3, 4]), (2, list(range(5))),
                                                                          (3, list(range(5)))]
    assert sink.groups("fin") == [1, 2, 3]


def test_an_absolute_range_whose_end_group_never_comes_ends_at_a_later_group():
    """The source skips from group 2 to group 5: a range ending at 3 is over then."""
    fanout = TrackFanout()
    sink = FakeSink()
    sub = TrackSubscription(sink, start_group=2)
    sub.last_group = 3
    fanout.subscribe_from(sub, 0.0)
    publish_gop(fanout, 2, 3, 0.0)
    assert not sub.range_ended
    publish_gop(fanout, 5, 3, 1.0)
    assert sub.range_ended and sink.groups() == [2] and sink.groups("fin") == [2]


def test_an_absolute_start_older_than_the_cache_starts_at_what_it_holds_and_a_future_one_waits():
    fanout = TrackFanout()
    fanout.cache.max_groups = 2
    for g in range(4):
        publish_gop(fanout, g, 2, g * 1.0)
    old, future = FakeSink(), FakeSink()
    fanout.subscribe_from(TrackSubscription(old, start_group=0), 3.5)
    fanout.subscribe_from(TrackSubscription(future, start_group=5), 3.5)
    for g in (4, 5):
        publish_gop(fanout, g, 2, g * 1.0)
    assert old.groups() == [2, 3, 4, 5] and future.groups() == [5]


# -- subgroups (a relayed publisher's temporal layers): one stream each ---------------------------
def publish_layers(fanout, group, object_ids, now, layers=3, size=1000):
    """Objects of ``group`` in ``layers`` subgroups (object i in subgroup i % layers, priority
    10 per layer), as a relayed track's come."""
    for i in object_ids:
        fanout.publish_object(group, i, bytes(size), None, now, i % layers, 10 * (i % layers + 1), i % layers == 2)


def by_subgroup(sink, group):
    return {sink.headers[h][0]: s for h, s in sink.streams.items() if s["group"] == group}


def test_each_subgroup_goes_on_a_stream_of_its_own_with_its_header():
    fanout = TrackFanout(ends_groups_on_newer=False)
    sink = FakeSink()
    fanout.subscribe(TrackSubscription(sink), 0.0)
    publish_layers(fanout, 0, range(9), 0.0)
    fanout.end_subgroup(0, 0)
    streams = by_subgroup(sink, 0)
    assert {sg: s["objects"] for sg, s in streams.items()} == {0: [0, 3, 6], 1: [1, 4, 7], 2: [2, 5, 8]}
    assert {sg: sink.headers[h][1:] for h, s in sink.streams.items() for sg in [sink.headers[h][0]]} == {
        0: (10, False), 1: (20, False), 2: (30, True)}
    assert {sg: s["state"] for sg, s in streams.items()} == {0: "fin", 1: "open", 2: "open"}
    fanout.end_group(0)  # the relay saw every subgroup of it end
    assert sink.groups("fin") == [0, 0, 0]


def test_a_stalled_subgroup_stream_is_reset_and_the_others_go_on():
    """Past its delivery timeout, only the stream that stalled is reset (DELIVERY_TIMEOUT); the
    group's other subgroups are delivered and end, the stalled one is never reopened."""
    fanout = TrackFanout(ends_groups_on_newer=False)
    sink = FakeSink()
    sub = TrackSubscription(sink, delivery_timeout=1.0)
    fanout.subscribe(sub, 0.0)
    publish_layers(fanout, 0, range(6), 0.0)
    stalled = next(h for h in sink.streams if sink.headers[h][0] == 2)

    def drain_but_stalled():
        for h, s in sink.streams.items():
            if h != stalled:
                s["queued"] = 0

    drain_but_stalled()
    fanout.check(0.5)
    assert sink.groups("open") == [0, 0, 0]  # within the budget
    fanout.check(1.1)
    publish_layers(fanout, 0, range(6, 9), 1.2)
    drain_but_stalled()
    fanout.check(1.5)
    streams = by_subgroup(sink, 0)
    assert streams[2]["state"] == ("reset", RESET_DELIVERY_TIMEOUT) and streams[2]["objects"] == [2, 5]
    assert streams[0]["objects"] == [0, 3, 6] and streams[1]["objects"] == [1, 4, 7]
    for subgroup in range(3):
        fanout.end_subgroup(0, subgroup)
    fanout.end_group(0)
    drain_but_stalled()
    fanout.check(1.6)
    assert [s["state"] for s in sink.streams.values()] == ["fin", "fin", ("reset", RESET_DELIVERY_TIMEOUT)]
    assert not sub.skipped_groups and not sub.in_flight  # nothing else was skipped; all done with


def test_a_subgroup_that_comes_before_its_groups_object_0_is_delivered():
    """A relayed group's subgroups come on parallel streams: one may come before object 0."""
    fanout = TrackFanout(ends_groups_on_newer=False)
    publish_layers(fanout, 0, range(3), 0.0)
    sink = FakeSink()
    fanout.subscribe(TrackSubscription(sink), 0.0)
    publish_layers(fanout, 1, [1, 0, 2], 0.1)
    assert {sg: s["objects"] for sg, s in by_subgroup(sink, 1).items()} == {0: [0], 1: [1], 2: [2]}


def test_a_group_joined_at_its_object_0_after_other_subgroups_began_gets_that_subgroup_alone():
    """Objects of group 1's subgroup 1 came before the subscriber did (the cache does not start
    the group at object 0 yet): the subscriber takes group 1 from object 0, in its subgroup only,
    never a subgroup stream missing its first objects."""
    fanout = TrackFanout(ends_groups_on_newer=False)
    publish_layers(fanout, 0, range(3), 0.0)
    fanout.end_group(0)
    publish_layers(fanout, 1, [1], 0.1)
    sink = FakeSink()
    fanout.subscribe(TrackSubscription(sink, delivery_timeout=0.05), 0.2)  # group 0 is past its budget
    publish_layers(fanout, 1, [0, 2, 3, 4], 0.2)
    assert {sg: s["objects"] for sg, s in by_subgroup(sink, 1).items()} == {0: [0, 3]}


def test_an_upstream_reset_of_one_subgroup_resets_that_stream_alone():
    fanout = TrackFanout(ends_groups_on_newer=False)
    sink = FakeSink()
    sub = TrackSubscription(sink)
    fanout.subscribe(sub, 0.0)
    publish_layers(fanout, 0, range(6), 0.0)
    fanout.reset_group(0, 0x5, subgroup=1)
    publish_layers(fanout, 0, range(6, 9), 0.1)
    sink.drain()  # (the reset of what was written waits for it to arrive)
    fanout.check(0.2)
    streams = by_subgroup(sink, 0)
    assert streams[1]["state"] == ("reset", 0x5) and streams[1]["objects"] == [1, 4]
    assert streams[0]["objects"] == [0, 3, 6] and streams[2]["objects"] == [2, 5, 8]
    assert not fanout.cache.groups_from(0, 0.2)  # the cache cannot serve the group whole any more


def test_a_group_opens_at_most_max_subgroups_per_group_streams():
    from rtmpq.moq.fanout import MAX_SUBGROUPS_PER_GROUP
    fanout = TrackFanout(ends_groups_on_newer=False)
    sink = FakeSink()
    fanout.subscribe(TrackSubscription(sink), 0.0)
    n = MAX_SUBGROUPS_PER_GROUP + 2
    publish_layers(fanout, 0, range(2 * n), 0.0, layers=n)
    states = [s["state"] for s in sink.streams.values()]
    assert states.count("open") == MAX_SUBGROUPS_PER_GROUP
    assert states.count(("reset", RESET_DELIVERY_TIMEOUT)) == 2  # the others: skipped, said at once
    assert all(not s["objects"] for s in sink.streams.values() if s["state"] != "open")


def test_a_group_cut_short_by_its_lost_source_is_reset_and_no_longer_served_whole():
    """The publisher is lost mid-group (RTMP connection dropped, relayed session gone): the group
    in progress is reset with the code given, never ended with a FIN (which says it is whole);
    the group before it keeps its FIN; a late joiner starts at that whole group, and a later
    group (the publisher back) goes on as ever."""
    fanout = TrackFanout()
    publish_gop(fanout, 0, 60, 0.0)
    publish_gop(fanout, 1, 20, 2.0)
    sink = FakeSink()
    fanout.subscribe(TrackSubscription(sink, delivery_timeout=30.0), 2.0)
    fanout.cut_open_groups(0x3)
    sink.drain()  # (the reset waits for what was written to arrive: next test)
    fanout.check(2.1)
    [cut] = sink.streams.values()
    assert cut["group"] == 1 and cut["state"] == ("reset", 0x3)
    assert [g.group_id for g in fanout.cache.groups_from(0, 2.1)] == [0]  # the cut group is not served
    late = FakeSink()
    fanout.subscribe(TrackSubscription(late, delivery_timeout=30.0), 3.0)
    [whole] = late.streams.values()
    assert whole["group"] == 0 and whole["objects"] == list(range(60)) and whole["state"] == "fin"
    fanout.publish_object(2, 0, b"x", None, 4.0)  # the publisher is back: a new group
    assert sink.groups("open") == [2] and late.groups("open") == [2]


def test_a_relayed_group_still_open_upstream_is_cut_and_one_that_ended_keeps_its_fin():
    """A relayed track (groups end with their own streams): the source session is lost while the
    tail of group 0 and group 1 are still open upstream, group 2 had ended: groups 0 and 1 are
    reset, group 2's FIN stands."""
    fanout = TrackFanout(ends_groups_on_newer=False)
    sink = FakeSink()
    fanout.subscribe(TrackSubscription(sink, delivery_timeout=30.0), 0.0)
    for group in (0, 1, 2):
        publish_gop(fanout, group, 3, 0.1 * group)
    fanout.end_group(2)
    fanout.cut_open_groups(0x3, [0, 1])
    sink.drain()
    fanout.check(0.3)
    states = {s["group"]: s["state"] for s in sink.streams.values()}
    assert states == {0: ("reset", 0x3), 1: ("reset", 0x3), 2: "fin"}
    assert [g.group_id for g in fanout.cache.groups_from(0, 0.3)] == [2]


def test_a_cut_group_is_reset_only_after_what_was_written_arrived_or_its_budget_ended():
    """A subscriber that is behind when the source is lost mid-group: a reset at once would make
    QUIC discard the objects written but not yet delivered to it. The reset waits until they are
    acknowledged (nothing more of the group is sent meanwhile, and no FIN); a subscriber that
    takes nothing more has it reset when the budget of its objects ends."""
    fanout = TrackFanout()
    behind, stalled, caught_up = FakeSink(), FakeSink(), FakeSink()
    for sink in (behind, stalled, caught_up):
        fanout.subscribe(TrackSubscription(sink, delivery_timeout=2.0), 0.0)
    publish_gop(fanout, 0, 20, 0.0)
    caught_up.drain()
    fanout.cut_open_groups(0x3)
    assert [s["state"] for s in caught_up.streams.values()] == [("reset", 0x3)]  # nothing owed: at once
    fanout.publish_object(0, 20, b"x", None, 0.1)  # (nothing more of a cut group goes out)
    for t in (0.1, 0.5, 1.0):
        fanout.check(t)
        assert [(s["objects"], s["state"]) for s in behind.streams.values()] == [(list(range(20)), "open")]
    behind.drain()  # its last objects are acknowledged
    fanout.check(1.05)
    assert [s["state"] for s in behind.streams.values()] == [("reset", 0x3)]
    assert [s["state"] for s in stalled.streams.values()] == ["open"]
    fanout.check(2.01)  # the objects' budget is over: a stalled subscriber does not hold it
    assert [s["state"] for s in stalled.streams.values()] == [("reset", 0x3)]
    assert not any(sub.in_flight for sub in fanout.subscribers)


def test_a_second_reset_from_upstream_of_a_cut_group_still_waits_for_what_was_written():
    """Through a relay: the group's stream is reset upstream twice (a header-alone stream after a
    premature reset, say): the second reset does not cut short the wait for the first."""
    fanout = TrackFanout(ends_groups_on_newer=False)
    sink = FakeSink()
    fanout.subscribe(TrackSubscription(sink, delivery_timeout=30.0), 0.0)
    publish_gop(fanout, 0, 5, 0.0)
    fanout.reset_group(0, 0x3)
    fanout.reset_group(0, 0x3)
    fanout.check(0.1)
    assert [(s["objects"], s["state"]) for s in sink.streams.values()] == [(list(range(5)), "open")]
    sink.drain()
    fanout.check(0.2)
    assert [s["state"] for s in sink.streams.values()] == [("reset", 0x3)]
