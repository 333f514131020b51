"""A SUBSCRIBE's filter and FORWARD parameter (draft 16, "Subscription Filters"): a publisher
"MUST NOT send objects from outside the requested range", and sends none while the Forward State
is 0. Found by a review: the relay dropped AbsoluteRange's End Group, started AbsoluteStart at the
newest cached group whatever its Start Location, never read FORWARD and refused REQUEST_UPDATE.
Then REQUEST_UPDATE's SUBSCRIPTION_FILTER ("Updating Subscriptions"), which the relay ignored.

Each test runs a relay with a raw publisher (PUBLISH_NAMESPACE; the relay subscribes upstream) and
raw subscriber sessions on loopback QUIC: one unfiltered viewer fills the relay's cache, then the
subscriber under test asks with its filter."""

import time
from contextlib import asynccontextmanager

import pytest

from rtmpq.moq import events as ev
from rtmpq.moq.transport import connect_moq
from rtmpq.moq.wire import (
    FILTER_ABSOLUTE_RANGE,
    FILTER_ABSOLUTE_START,
    FILTER_LARGEST_OBJECT,
    PARAM_LARGEST_OBJECT,
    PublishDoneStatus,
    RequestError,
    decode_location_param,
)
from rtmpq.netem import Impairment, ImpairmentProxy

from .conftest import EventRecorder, serving_relay, until

BACKENDS = ["aioquic", "aiopquic"]
NAMESPACE = ("live", "f")
OBJECTS = 3  # per group
PATIENT_RELAY = 30.0  # the relay's delivery timeout in these tests (s)


class Publisher:
    """A raw publisher of one track: answers the relay's SUBSCRIBE, sends groups when told."""

    def __init__(self, conn) -> None:
        self.conn = conn
        self.alias: int | None = None
        self.events: list = []
        self.track_extensions: dict = {}  # sent in SUBSCRIBE_OK
        conn.handler = self._on_event

    def _on_event(self, _conn, event) -> None:
        self.events.append(event)
        if isinstance(event, ev.SubscribeRequested):
            self.alias = 7
            self.conn.session.subscribe_ok(event.request_id, self.alias, extensions=self.track_extensions)
            self.conn.flush()

    def send(self, *groups: int, priority: int | None = 128) -> None:
        """Groups of OBJECTS objects; ``priority`` None: subgroup headers without one (DEFAULT_PRIORITY)."""
        for group in groups:
            sid = self.conn.session.open_subgroup(self.alias, group, priority=priority)
            for object_id in range(OBJECTS):
                self.conn.session.send_object(sid, object_id, f"{group}.{object_id}".encode())
            self.conn.session.end_subgroup(sid)
        self.conn.flush()


class Viewer(EventRecorder):
    """A raw subscriber session: every event it gets, in order."""

    def subscribe(self, **kwargs) -> int:
        rid = self.conn.session.subscribe(NAMESPACE, "video", **kwargs)
        self.conn.flush()
        return rid

    async def subscribed(self, **kwargs) -> tuple[int, int]:
        """SUBSCRIBE, accepted: (its request id, its track alias)."""
        rid = self.subscribe(**kwargs)
        await until(lambda: self.answer(rid) is not None, what="SUBSCRIBE answered")
        assert isinstance(self.answer(rid), ev.SubscribeAccepted), self.answer(rid)
        return rid, self.answer(rid).track_alias

    def update(self, rid: int, **kwargs) -> int:
        """REQUEST_UPDATE of subscription ``rid`` (its new filter, FORWARD, DELIVERY_TIMEOUT)."""
        update = self.conn.session.request_update(rid, **kwargs)
        self.conn.flush()
        return update

    def of(self, kind) -> list:
        return [e for e in self.events if isinstance(e, kind)]

    def objects(self, alias: int) -> list[tuple[int, int]]:
        return [(e.group, e.object_id) for e in self.of(ev.ObjectReceived) if e.track_alias == alias]

    def ended(self, alias: int) -> set[int]:
        return {e.group for e in self.of(ev.SubgroupEnded) if e.track_alias == alias}

    def answer(self, rid: int):
        return next((e for e in self.events if isinstance(e, (ev.SubscribeAccepted, ev.RequestFailed, ev.RequestAccepted))
                     and e.request_id == rid), None)


def whole(*groups: int) -> list[tuple[int, int]]:
    return [(g, o) for g in groups for o in range(OBJECTS)]


@asynccontextmanager
async def relay_with_publisher(tmp_path, backend, cached_groups: int, track_extensions: dict | None = None,
                               delivery_timeout: float = PATIENT_RELAY):
    """(relay, publisher, warm viewer and its alias, connect): the publisher (whose SUBSCRIBE_OK
    carries ``track_extensions``) has sent groups 0..cached_groups-1, which the relay holds. The
    relay's ``delivery_timeout`` is long: the newest cached group stays young enough to start at
    however loaded the host (tests of the budget ask for theirs, or give the relay's default)."""
    async with serving_relay(tmp_path, backend, delivery_timeout=delivery_timeout) as (relay, port):
        async with (connect_moq("127.0.0.1", port, insecure=True, backend=backend) as pub_conn,
                    connect_moq("127.0.0.1", port, insecure=True, backend=backend) as warm_conn):
            publisher = Publisher(pub_conn)
            publisher.track_extensions = track_extensions or {}
            announced = pub_conn.session.publish_namespace(NAMESPACE)
            pub_conn.flush()
            await until(lambda: any(isinstance(e, ev.RequestAccepted) and e.request_id == announced
                                    for e in publisher.events), what="PUBLISH_NAMESPACE accepted")
            warm = Viewer(warm_conn)
            rid = warm.subscribe()
            await until(lambda: warm.answer(rid) is not None and publisher.alias is not None, what="warm subscription")
            warm_alias = warm.answer(rid).track_alias
            if cached_groups:
                publisher.send(*range(cached_groups))
                cache = relay._tracks[(NAMESPACE, "video")].fanout.cache
                await until(lambda: cache.largest == (cached_groups - 1, OBJECTS - 1), what="groups cached at the relay")

            @asynccontextmanager
            async def connect(down: Impairment | None = None):
                """A raw viewer; ``down``: behind the impairment proxy, this link from the relay."""
                if down is None:
                    async with connect_moq("127.0.0.1", port, insecure=True, backend=backend) as conn:
                        yield Viewer(conn)
                    return
                async with (ImpairmentProxy(target=("127.0.0.1", port), down=down, seed=1) as proxy,
                            connect_moq("127.0.0.1", proxy.port, insecure=True, backend=backend, timeout=20) as conn):
                    yield Viewer(conn)

            yield relay, publisher, (warm, warm_alias), connect


@pytest.mark.parametrize("backend", BACKENDS)
async def test_absolute_start_below_the_newest_group_starts_where_unfiltered_does(tmp_path, backend):
    """Draft 16: AbsoluteStart {0, 0} "is equivalent to an unfiltered subscription", and a Start
    Location below the Largest Location is like a new subscription (what came before is FETCHed).
    With groups 0..3 cached, {0, 0} and {1, 1} get what an unfiltered viewer gets: group 3 whole
    (the newest, from its first object), then live group 4; a start inside group 3 ({3, 1}) is kept."""
    async with relay_with_publisher(tmp_path, backend, cached_groups=4) as (_relay, publisher, _warm, connect):
        async with connect() as zero, connect() as one_one, connect() as plain, connect() as inside:
            viewers = {zero: dict(filter_type=FILTER_ABSOLUTE_START, start=(0, 0)),
                       one_one: dict(filter_type=FILTER_ABSOLUTE_START, start=(1, 1)),
                       plain: {}, inside: dict(filter_type=FILTER_ABSOLUTE_START, start=(3, 1))}
            rids = {viewer: viewer.subscribe(**kwargs) for viewer, kwargs in viewers.items()}
            await until(lambda: all(v.answer(r) is not None for v, r in rids.items()), what="SUBSCRIBEs answered")
            oks = {v: v.answer(r) for v, r in rids.items()}
            assert all(isinstance(ok, ev.SubscribeAccepted) and ok.largest == (3, OBJECTS - 1) for ok in oks.values()), oks
            publisher.send(4)
            await until(lambda: all(4 in v.ended(ok.track_alias) for v, ok in oks.items()), what="group 4 delivered")
            got = {v: sorted(v.objects(ok.track_alias)) for v, ok in oks.items()}
    assert got[plain] == whole(3, 4)
    assert got[zero] == got[plain] and got[one_one] == got[plain]
    assert got[inside] == [(3, 1), (3, 2)] + whole(4)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_absolute_range_gets_exactly_its_groups_then_ends(tmp_path, backend):
    """AbsoluteRange {3, 1}..5 with groups 0..3 cached: objects 3.1 and 3.2, groups 4 and 5 whole,
    then PUBLISH_DONE (SUBSCRIPTION_ENDED) counting their 3 streams; never group 6 or 7."""
    async with relay_with_publisher(tmp_path, backend, cached_groups=4) as (_relay, publisher, warm, connect):
        warm, warm_alias = warm
        async with connect() as viewer:
            rid = viewer.subscribe(filter_type=FILTER_ABSOLUTE_RANGE, start=(3, 1), end_group=5)
            await until(lambda: viewer.answer(rid) is not None, what="SUBSCRIBE answered")
            ok = viewer.answer(rid)
            assert isinstance(ok, ev.SubscribeAccepted), ok
            publisher.send(4, 5, 6, 7)
            await until(lambda: viewer.of(ev.PublishDoneReceived), what="PUBLISH_DONE")
            # the warm viewer got group 7: the relay has handled groups 6 and 7 by now
            await until(lambda: 7 in warm.ended(warm_alias), what="the warm viewer got group 7")
            await until(lambda: {3, 4, 5} <= viewer.ended(ok.track_alias), what="groups 3..5 delivered")
            got = viewer.objects(ok.track_alias)
            done = viewer.of(ev.PublishDoneReceived)
    assert sorted(got) == [(3, 1), (3, 2)] + whole(4, 5)
    assert [(d.request_id, d.status, d.stream_count) for d in done] == [(rid, PublishDoneStatus.SUBSCRIPTION_ENDED, 3)]


@pytest.mark.parametrize("backend", BACKENDS[:1])
async def test_absolute_range_already_over_is_refused(tmp_path, backend):
    """A range whose End Group is already over (a newer group was published) is refused with
    INVALID_RANGE, as draft 16 asks (its objects are FETCHed); so is one that ends before it starts."""
    async with relay_with_publisher(tmp_path, backend, cached_groups=4) as (_relay, _publisher, _warm, connect):
        async with connect() as viewer:
            past = viewer.subscribe(filter_type=FILTER_ABSOLUTE_RANGE, start=(0, 0), end_group=1)
            backwards = viewer.subscribe(filter_type=FILTER_ABSOLUTE_RANGE, start=(9, 0), end_group=8)
            await until(lambda: viewer.answer(past) and viewer.answer(backwards), what="SUBSCRIBEs answered")
            answers = [viewer.answer(past), viewer.answer(backwards)]
            got = viewer.of(ev.ObjectReceived)
    assert [(type(a), getattr(a, "error_code", None)) for a in answers] == [(ev.RequestFailed, RequestError.INVALID_RANGE)] * 2
    assert got == []


@pytest.mark.parametrize("backend", BACKENDS)
async def test_forward_0_gets_nothing_until_request_update(tmp_path, backend):
    """SUBSCRIBE (Largest Object) with FORWARD=0 is accepted and gets no object while groups 1 and 2
    reach the relay; after REQUEST_UPDATE FORWARD=1 (answered REQUEST_OK) it gets the next group."""
    async with relay_with_publisher(tmp_path, backend, cached_groups=1) as (relay, publisher, warm, connect):
        warm, warm_alias = warm
        async with connect() as viewer:
            rid = viewer.subscribe(filter_type=FILTER_LARGEST_OBJECT, forward=False)
            await until(lambda: viewer.answer(rid) is not None, what="SUBSCRIBE answered")
            ok = viewer.answer(rid)
            assert isinstance(ok, ev.SubscribeAccepted), ok
            publisher.send(1, 2)
            cache = relay._tracks[(NAMESPACE, "video")].fanout.cache
            await until(lambda: cache.largest == (2, OBJECTS - 1) and 2 in warm.ended(warm_alias),
                        what="groups 1 and 2 at the relay and its other viewer")
            assert viewer.of(ev.ObjectReceived) == []
            update = viewer.conn.session.request_update(rid, forward=True)
            viewer.conn.flush()
            await until(lambda: viewer.answer(update) is not None, what="REQUEST_UPDATE answered")
            assert isinstance(viewer.answer(update), ev.RequestAccepted), viewer.answer(update)
            publisher.send(3)
            await until(lambda: 3 in viewer.ended(ok.track_alias), what="group 3 delivered")
            got = viewer.objects(ok.track_alias)
    assert sorted(got) == whole(3)


def done_of(viewer) -> list[tuple[int, int, int]]:
    return [(d.request_id, d.status, d.stream_count) for d in viewer.of(ev.PublishDoneReceived)]


@pytest.mark.parametrize("backend", BACKENDS)
async def test_request_update_raising_the_end_group_extends_the_range(tmp_path, backend):
    """REQUEST_UPDATE of an AbsoluteRange {3, 0}..5 subscription to {3, 0}..7 after group 4: REQUEST_OK
    with LARGEST_OBJECT (4, 2), then groups up to 7 and PUBLISH_DONE (SUBSCRIPTION_ENDED, 5 streams)
    after group 7, not after 5; never group 8."""
    async with relay_with_publisher(tmp_path, backend, cached_groups=4) as (_relay, publisher, warm, connect):
        warm, warm_alias = warm
        async with connect() as viewer:
            rid, alias = await viewer.subscribed(filter_type=FILTER_ABSOLUTE_RANGE, start=(3, 0), end_group=5)
            publisher.send(4)
            await until(lambda: 4 in viewer.ended(alias), what="group 4 delivered")
            update = viewer.update(rid, filter_type=FILTER_ABSOLUTE_RANGE, start=(3, 0), end_group=7)
            await until(lambda: viewer.answer(update) is not None, what="REQUEST_UPDATE answered")
            answer = viewer.answer(update)
            assert isinstance(answer, ev.RequestAccepted), answer
            assert decode_location_param(bytes(answer.params[PARAM_LARGEST_OBJECT])) == (4, OBJECTS - 1)
            publisher.send(5, 6, 7, 8)
            await until(lambda: viewer.of(ev.PublishDoneReceived), what="PUBLISH_DONE")
            await until(lambda: 8 in warm.ended(warm_alias), what="the warm viewer got group 8")
            got = viewer.objects(alias)
    assert sorted(got) == whole(3, 4, 5, 6, 7)
    assert done_of(viewer) == [(rid, PublishDoneStatus.SUBSCRIPTION_ENDED, 5)]


@pytest.mark.parametrize("new_end", [4, 5], ids=["passed", "the newest group"])
@pytest.mark.parametrize("backend", BACKENDS)
async def test_request_update_lowering_the_end_group_to_one_sent_ends_at_once(tmp_path, backend, new_end):
    """An AbsoluteRange {3, 0}..9 subscription that got groups 3..5, updated to end at group 4 (passed)
    or 5 (the newest, complete): REQUEST_OK, then PUBLISH_DONE (SUBSCRIPTION_ENDED, 3 streams) with no
    further group published; group 6 is not delivered."""
    async with relay_with_publisher(tmp_path, backend, cached_groups=4) as (_relay, publisher, warm, connect):
        warm, warm_alias = warm
        async with connect() as viewer:
            rid, alias = await viewer.subscribed(filter_type=FILTER_ABSOLUTE_RANGE, start=(3, 0), end_group=9)
            publisher.send(4, 5)
            await until(lambda: {3, 4, 5} <= viewer.ended(alias), what="groups 3..5 delivered")
            update = viewer.update(rid, filter_type=FILTER_ABSOLUTE_RANGE, start=(3, 0), end_group=new_end)
            await until(lambda: viewer.of(ev.PublishDoneReceived), what="PUBLISH_DONE")
            answered = [e for e in viewer.events if isinstance(e, (ev.RequestAccepted, ev.PublishDoneReceived))]
            publisher.send(6)
            await until(lambda: 6 in warm.ended(warm_alias), what="the warm viewer got group 6")
            got = viewer.objects(alias)
    assert [type(e) for e in answered] == [ev.RequestAccepted, ev.PublishDoneReceived]  # REQUEST_OK first
    assert answered[0].request_id == update
    assert sorted(got) == whole(3, 4, 5)
    assert done_of(viewer) == [(rid, PublishDoneStatus.SUBSCRIPTION_ENDED, 3)]


@pytest.mark.parametrize("backend", BACKENDS[:1])
async def test_request_update_to_a_range_ending_before_its_start_fails_the_subscription(tmp_path, backend):
    """Draft 16: a subscription update that fails is answered REQUEST_ERROR, and the publisher MUST
    end the subscription with PUBLISH_DONE (UPDATE_FAILED). AbsoluteRange {6, 0}..5 cannot be
    served (INVALID_RANGE); the subscription gets nothing after it."""
    async with relay_with_publisher(tmp_path, backend, cached_groups=4) as (_relay, publisher, warm, connect):
        warm, warm_alias = warm
        async with connect() as viewer:
            rid, alias = await viewer.subscribed()
            await until(lambda: 3 in viewer.ended(alias), what="group 3 delivered")
            update = viewer.update(rid, filter_type=FILTER_ABSOLUTE_RANGE, start=(6, 0), end_group=5)
            await until(lambda: viewer.answer(update) is not None and viewer.of(ev.PublishDoneReceived),
                        what="REQUEST_UPDATE answered and PUBLISH_DONE")
            answer = viewer.answer(update)
            publisher.send(4)
            await until(lambda: 4 in warm.ended(warm_alias), what="the warm viewer got group 4")
            got = viewer.objects(alias)
    assert isinstance(answer, ev.RequestFailed) and answer.error_code == RequestError.INVALID_RANGE, answer
    assert [d[:2] for d in done_of(viewer)] == [(rid, PublishDoneStatus.UPDATE_FAILED)]
    assert sorted(got) == whole(3)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_request_update_moving_the_start_forward_skips_the_groups_before_it(tmp_path, backend):
    """An unfiltered subscription updated to AbsoluteStart {6, 0} after group 4: group 5 is outside
    the new range and not delivered; groups 6 and 7 are."""
    async with relay_with_publisher(tmp_path, backend, cached_groups=4) as (_relay, publisher, warm, connect):
        warm, warm_alias = warm
        async with connect() as viewer:
            rid, alias = await viewer.subscribed()
            publisher.send(4)
            await until(lambda: 4 in viewer.ended(alias), what="group 4 delivered")
            update = viewer.update(rid, filter_type=FILTER_ABSOLUTE_START, start=(6, 0))
            await until(lambda: viewer.answer(update) is not None, what="REQUEST_UPDATE answered")
            assert isinstance(viewer.answer(update), ev.RequestAccepted), viewer.answer(update)
            publisher.send(5, 6, 7)
            await until(lambda: 7 in viewer.ended(alias) and 7 in warm.ended(warm_alias), what="group 7 delivered")
            got = viewer.objects(alias)
    assert sorted(got) == whole(3, 4, 6, 7)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_request_update_moving_the_start_back_starts_like_a_new_subscription(tmp_path, backend):
    """AbsoluteStart {9, 0} with groups 0..3 cached gets nothing; updated to {0, 0} it is like a new
    subscription (draft 16, "Updating Subscriptions": older objects are FETCHed): the newest cached
    group 3 at once, then live group 4."""
    async with relay_with_publisher(tmp_path, backend, cached_groups=4) as (_relay, publisher, _warm, connect):
        async with connect() as viewer:
            rid, alias = await viewer.subscribed(filter_type=FILTER_ABSOLUTE_START, start=(9, 0))
            update = viewer.update(rid, filter_type=FILTER_ABSOLUTE_START, start=(0, 0))
            await until(lambda: 3 in viewer.ended(alias), what="group 3 delivered")
            assert isinstance(viewer.answer(update), ev.RequestAccepted), viewer.answer(update)
            publisher.send(4)
            await until(lambda: 4 in viewer.ended(alias), what="group 4 delivered")
            got = viewer.objects(alias)
    assert sorted(got) == whole(3, 4)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_absolute_start_0_0_skips_a_newest_group_past_the_budget_as_unfiltered_does(tmp_path, backend):
    """Draft 16: AbsoluteStart {0, 0} "is equivalent to an unfiltered subscription". An unfiltered
    subscriber never starts a media group already older than its delivery timeout (it would be reset
    at once); {0, 0} replayed that stale newest group as if just published (found by the draft 16
    audit). Both get live group 4 alone."""
    timeout_ms = 200
    async with relay_with_publisher(tmp_path, backend, cached_groups=4) as (relay, publisher, _warm, connect):
        newest = relay._tracks[(NAMESPACE, "video")].fanout.cache.latest(time.monotonic())
        await until(lambda: time.monotonic() - newest.started > 2 * timeout_ms / 1000, what="group 3 past the budget")
        async with connect() as zero, connect() as plain:
            viewers = {zero: dict(filter_type=FILTER_ABSOLUTE_START, start=(0, 0)), plain: {}}
            oks = {v: await v.subscribed(delivery_timeout_ms=timeout_ms, **kwargs)
                   for v, kwargs in viewers.items()}
            publisher.send(4)
            await until(lambda: all(4 in v.ended(alias) for v, (_rid, alias) in oks.items()), what="group 4 delivered")
            got = {v: sorted(v.objects(alias)) for v, (_rid, alias) in oks.items()}
    assert got[plain] == whole(4)
    assert got[zero] == got[plain]


@pytest.mark.parametrize("backend", BACKENDS)
async def test_track_extensions_of_the_publisher_reach_the_subscriber_through_the_relay(tmp_path, backend):
    """Draft 16 "Extension Headers": a relay MUST forward (and cache) the Track Extensions it does
    not support. The relay dropped those of its publisher's SUBSCRIBE_OK (draft 16 audit): here
    MAX_CACHE_DURATION (0x04) = 5000 ms, DYNAMIC_GROUPS (0x30) = 0 and an odd (byte) type 0x4001;
    in SUBSCRIBE_OK and in FETCH_OK."""
    extensions = {0x04: 5000, 0x30: 0, 0x4001: b"opaque"}
    async with relay_with_publisher(tmp_path, backend, 0, extensions) as (_relay, publisher, _warm, connect):
        async with connect() as viewer:
            rid, alias = await viewer.subscribed()
            publisher.send(0)
            await until(lambda: viewer.ended(alias), what="group 0 delivered")
            fetch = viewer.conn.session.fetch(NAMESPACE, "video", (0, 0), (1, 0))  # from the relay's cache
            viewer.conn.flush()
            await until(lambda: viewer.of(ev.FetchAccepted), what="FETCH answered")
    assert viewer.answer(rid).extensions == extensions
    fetched, = viewer.of(ev.FetchAccepted)
    assert fetched.request_id == fetch and fetched.extensions == extensions  # FETCH_OK's Track Extensions


@pytest.mark.parametrize("backend", BACKENDS)
async def test_subscribe_namespace_with_forward_0_gets_its_publishes_with_forward_0(tmp_path, backend):
    """Draft 16 SUBSCRIBE_NAMESPACE: with FORWARD=0, "PUBLISH messages resulting from this
    SUBSCRIBE_NAMESPACE will set the FORWARD parameter to 0", so no objects come until the
    subscriber's REQUEST_UPDATE sets it to 1. The relay PUBLISHed with FORWARD=1 and sent objects
    at once (draft 16 audit)."""
    from rtmpq.moq.wire import NAMESPACE_OPTION_PUBLISH

    async with relay_with_publisher(tmp_path, backend, cached_groups=1) as (_relay, publisher, (warm, warm_alias), connect):
        async with connect() as viewer:
            viewer.conn.session.subscribe_namespace(NAMESPACE[:1], options=NAMESPACE_OPTION_PUBLISH, forward=False)
            viewer.conn.flush()
            await until(lambda: viewer.of(ev.TrackPublished), what="the track PUBLISHed")
            pushed, = viewer.of(ev.TrackPublished)
            assert pushed.forward is False
            viewer.conn.session.publish_ok(pushed.request_id)
            viewer.conn.flush()
            publisher.send(1)
            await until(lambda: 1 in warm.ended(warm_alias), what="group 1 at the relay's other subscriber")
            assert viewer.objects(pushed.track_alias) == []  # FORWARD=0: nothing, not even the cached group 0
            update = viewer.update(pushed.request_id, forward=True)
            await until(lambda: viewer.answer(update) is not None, what="REQUEST_UPDATE answered")
            publisher.send(2)
            await until(lambda: 2 in viewer.ended(pushed.track_alias), what="group 2 delivered")
            got = sorted(viewer.objects(pushed.track_alias))
    assert got[-OBJECTS:] == whole(2)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("track_extensions", "inherited"), [({}, 128), ({0x0E: 9}, 9)])
async def test_a_subgroup_without_a_priority_keeps_the_tracks_default_through_the_relay(tmp_path, backend,
                                                                                        track_extensions, inherited):
    """Draft 16: a subgroup header with DEFAULT_PRIORITY inherits the subscription's Publisher
    Priority: DEFAULT_PUBLISHER_PRIORITY (0x0E) when the track has it, else 128. The relay sent such
    objects on with its own urgency for the track name (video: 2), another priority than the
    publisher's (draft 16 audit)."""
    async with relay_with_publisher(tmp_path, backend, 0, track_extensions) as (_relay, publisher, _warm, connect):
        async with connect() as viewer:
            _rid, alias = await viewer.subscribed()
            publisher.send(0, priority=None)
            await until(lambda: viewer.ended(alias), what="group 0 delivered")
    assert {e.priority for e in viewer.of(ev.ObjectReceived)} == {inherited}


@pytest.mark.parametrize("backend", BACKENDS)
async def test_publish_ok_with_forward_0_stops_the_objects_of_a_published_track(tmp_path, backend):
    """Draft 16 "Subscriptions": the subscriber "can send PUBLISH_OK or REQUEST_UPDATE to update the
    Forward State", and none are sent at 0. The relay read no parameter of PUBLISH_OK and went on
    sending (draft 16 audit). A TRACK_STATUS round trip after PUBLISH_OK shows it was processed."""
    from rtmpq.moq.wire import NAMESPACE_OPTION_PUBLISH

    async with relay_with_publisher(tmp_path, backend, cached_groups=1) as (_relay, publisher, (warm, warm_alias), connect):
        async with connect() as viewer:
            viewer.conn.session.subscribe_namespace(NAMESPACE[:1], options=NAMESPACE_OPTION_PUBLISH)
            viewer.conn.flush()
            await until(lambda: viewer.of(ev.TrackPublished), what="the track PUBLISHed")
            pushed, = viewer.of(ev.TrackPublished)
            viewer.conn.session.publish_ok(pushed.request_id, forward=False)
            status = viewer.conn.session.track_status(NAMESPACE, "video")
            viewer.conn.flush()
            await until(lambda: viewer.answer(status) is not None, what="TRACK_STATUS answered")
            publisher.send(1)
            await until(lambda: 1 in warm.ended(warm_alias), what="group 1 at the relay's other subscriber")
            again = viewer.conn.session.track_status(NAMESPACE, "video")
            viewer.conn.flush()
            await until(lambda: viewer.answer(again) is not None, what="TRACK_STATUS answered")
            assert not [o for o in viewer.objects(pushed.track_alias) if o[0] == 1]
            update = viewer.update(pushed.request_id, forward=True)
            await until(lambda: viewer.answer(update) is not None, what="REQUEST_UPDATE answered")
            publisher.send(2)
            await until(lambda: 2 in viewer.ended(pushed.track_alias), what="group 2 delivered after FORWARD=1")
