"""Requests draft 16 tells a relay to refuse on a session that already has their like.

- "Subscriptions": "an endpoint can have at most one subscription to a Track acting as the
  publisher and at most one acting as a subscriber. If an endpoint receives a message attempting
  to establish a second subscription to a Track with the same role, it MUST fail that request with
  a DUPLICATE_SUBSCRIPTION error" (0x19); so a relay that PUBLISHes a track to a session does not
  also take its SUBSCRIBE, nor PUBLISH a track to a session that SUBSCRIBEd to it. A PUBLISH that
  crosses the relay's own pending SUBSCRIBE is no duplicate: the relay ends its SUBSCRIBE first.
- SUBSCRIBE_NAMESPACE: "if a publisher receives a SUBSCRIBE_NAMESPACE with a Track Namespace Prefix
  that shares a common prefix with an established namespace subscription, it MUST respond with
  REQUEST_ERROR with error code PREFIX_OVERLAP" (0x30).

The relay took all of these (docs/interop.md listed it as a deviation). Raw sessions of rtmpq's
MoQ stack on loopback QUIC, both backends, against a bare relay with a raw publisher."""

import pytest

from rtmpq.moq import events as ev
from rtmpq.moq.wire import NAMESPACE_OPTION_PUBLISH, RequestError

from .conftest import relay_publisher_viewer, until
from .test_moq_subscribe_filters import BACKENDS, NAMESPACE, OBJECTS, Viewer, relay_with_publisher, whole


def _failed(viewer, rid: int) -> ev.RequestFailed:
    answer = viewer.answer(rid)
    assert isinstance(answer, ev.RequestFailed), answer
    return answer


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_second_subscribe_to_a_track_on_one_session_is_a_duplicate_subscription(tmp_path, backend):
    """The second SUBSCRIBE gets DUPLICATE_SUBSCRIPTION and the first goes on; after UNSUBSCRIBE
    the session may subscribe to the track again."""
    async with relay_with_publisher(tmp_path, backend, cached_groups=1) as (_relay, publisher, _warm, connect):
        async with connect() as viewer:
            first, alias = await viewer.subscribed()
            second = viewer.subscribe()
            await until(lambda: viewer.answer(second) is not None, what="second SUBSCRIBE answered")
            assert _failed(viewer, second).error_code == RequestError.DUPLICATE_SUBSCRIPTION
            publisher.send(1)
            await until(lambda: 1 in viewer.ended(alias), what="group 1 on the first subscription")
            viewer.conn.session.unsubscribe(first)
            viewer.conn.flush()
            third, third_alias = await viewer.subscribed()
            publisher.send(2)
            await until(lambda: 2 in viewer.ended(third_alias), what="group 2 on the new subscription")
            assert sorted(o for o in viewer.objects(third_alias) if o[0] == 2) == whole(2)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_subscribe_to_a_track_the_relay_publishes_to_the_session_is_a_duplicate(tmp_path, backend):
    """The relay PUBLISHed the track to a namespace subscriber that asked for tracks: that is the
    session's subscription to it (publisher role: the relay), so its SUBSCRIBE is a second one."""
    async with relay_with_publisher(tmp_path, backend, cached_groups=1) as (_relay, _publisher, _warm, connect):
        async with connect() as viewer:
            viewer.conn.session.subscribe_namespace(NAMESPACE[:1], options=NAMESPACE_OPTION_PUBLISH)
            viewer.conn.flush()
            await until(lambda: viewer.of(ev.TrackPublished), what="the track PUBLISHed")
            rid = viewer.subscribe()
            await until(lambda: viewer.answer(rid) is not None, what="SUBSCRIBE answered")
            assert _failed(viewer, rid).error_code == RequestError.DUPLICATE_SUBSCRIPTION


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_session_that_subscribed_gets_no_publish_of_that_track(tmp_path, backend):
    """A session that SUBSCRIBEd to the track, then asks for the namespace's tracks, gets no
    PUBLISH of it (a peer that keeps the draft would refuse it as a duplicate)."""
    async with relay_with_publisher(tmp_path, backend, cached_groups=1) as (_relay, _publisher, _warm, connect):
        async with connect() as viewer, connect() as other:
            await viewer.subscribed()
            for session in (viewer, other):
                session.conn.session.subscribe_namespace(NAMESPACE[:1], options=NAMESPACE_OPTION_PUBLISH)
                session.conn.flush()
            await until(lambda: other.of(ev.TrackPublished), what="the track PUBLISHed to the other session")
            status = viewer.conn.session.track_status(NAMESPACE, "video")  # a round trip after the listing
            viewer.conn.flush()
            await until(lambda: viewer.answer(status) is not None, what="TRACK_STATUS answered")
            assert viewer.of(ev.TrackPublished) == []


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_second_publish_of_a_track_on_one_session_is_a_duplicate_subscription(tmp_path, backend):
    """Subscriber role (the relay): a session that PUBLISHes a track twice gets DUPLICATE_SUBSCRIPTION
    for the second PUBLISH."""
    async with relay_with_publisher(tmp_path, backend, cached_groups=0) as (_relay, _publisher, _warm, connect):
        async with connect() as pusher:
            first = pusher.conn.session.publish(("live", "pushed"), "video", 3)
            pusher.conn.flush()
            await until(lambda: pusher.of(ev.PublishAccepted), what="PUBLISH accepted")
            second = pusher.conn.session.publish(("live", "pushed"), "video", 4)
            pusher.conn.flush()
            await until(lambda: pusher.answer(second) is not None, what="second PUBLISH answered")
            assert [e.request_id for e in pusher.of(ev.PublishAccepted)] == [first]
            assert _failed(pusher, second).error_code == RequestError.DUPLICATE_SUBSCRIPTION


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("established", "overlapping"), [
    (("live",), ("live", "f")),  # narrower
    (("live", "f"), ("live",)),  # wider
    (("live",), ("live",)),  # the same
    (("live",), ()),  # every namespace
])
async def test_an_overlapping_subscribe_namespace_on_one_session_is_refused(tmp_path, backend, established,
                                                                           overlapping):
    """PREFIX_OVERLAP for a prefix that one of the session's namespace subscriptions begins with, or
    that begins with one ("shares a common prefix" read as the error's name says: the namespaces
    they match overlap); a prefix beside it ("live", "g" next to "live", "f") is taken, and another
    session may subscribe to the same prefix.""" 
    async with relay_with_publisher(tmp_path, backend, cached_groups=0) as (_relay, _publisher, _warm, connect):
        async with connect() as viewer, connect() as other:
            session = viewer.conn.session
            first = session.subscribe_namespace(established)
            viewer.conn.flush()
            await until(lambda: viewer.answer(first) is not None, what="SUBSCRIBE_NAMESPACE answered")
            assert isinstance(viewer.answer(first), ev.RequestAccepted), viewer.answer(first)
            second = session.subscribe_namespace(overlapping)
            beside = session.subscribe_namespace(("live", "g") if established == ("live", "f") else ("other",))
            viewer.conn.flush()
            again = other.conn.session.subscribe_namespace(overlapping)
            other.conn.flush()
            await until(lambda: viewer.answer(second) is not None and other.answer(again) is not None,
                        what="the other SUBSCRIBE_NAMESPACEs answered")
            assert _failed(viewer, second).error_code == RequestError.PREFIX_OVERLAP
            assert isinstance(other.answer(again), ev.RequestAccepted)
            await until(lambda: viewer.answer(beside) is not None, what="the prefix beside answered")
            assert isinstance(viewer.answer(beside), ev.RequestAccepted), viewer.answer(beside)


def silent_publisher(tmp_path, backend):
    """(publisher, viewer) at a relay: the publisher announced NAMESPACE and answers nothing by
    itself (a test answers the relay's SUBSCRIBE, or not)."""
    return relay_publisher_viewer(tmp_path, backend, NAMESPACE, make_viewer=Viewer)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_subscribe_withdrawn_while_waiting_for_its_track_is_gone(tmp_path, backend):
    """A SUBSCRIBE the relay holds while it subscribes upstream, then UNSUBSCRIBEd: a new SUBSCRIBE
    of the track is no duplicate, and once the publisher answers only the new one is accepted."""
    async with silent_publisher(tmp_path, backend) as (publisher, viewer):
        first = viewer.subscribe()
        await until(lambda: any(isinstance(e, ev.SubscribeRequested) for e in publisher.events),
                    what="the relay's SUBSCRIBE at the publisher")
        viewer.conn.session.unsubscribe(first)
        second = viewer.subscribe()
        # the publisher answers only once the relay has read both (the sessions race otherwise):
        # a TRACK_STATUS the relay answers itself comes back after them on the control stream
        status = viewer.conn.session.track_status(("elsewhere",), "video")
        viewer.conn.flush()
        await until(lambda: viewer.answer(status) is not None, what="TRACK_STATUS answered")
        ours = next(e for e in publisher.events if isinstance(e, ev.SubscribeRequested)).request_id
        publisher.conn.session.subscribe_ok(ours, 5)
        publisher.conn.flush()
        await until(lambda: viewer.answer(second) is not None, what="the new SUBSCRIBE answered")
        assert isinstance(viewer.answer(second), ev.SubscribeAccepted), viewer.answer(second)
        assert viewer.answer(first) is None


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_publish_crossing_the_relays_pending_subscribe_replaces_it(tmp_path, backend):
    """Draft 16: "If a subscriber receives a PUBLISH for a Track with a subscription in the
    Pending (Subscriber) state, it MUST ensure the subscription it initiated transitions to the
    Terminated state before sending PUBLISH_OK." A publisher that answers the relay's SUBSCRIBE
    with a PUBLISH of the track gets UNSUBSCRIBE, then PUBLISH_OK, and the viewer waiting for the
    track gets its objects. The relay refused such a PUBLISH, and its viewer's SUBSCRIBE waited
    for an answer that never came."""
    async with silent_publisher(tmp_path, backend) as (publisher, viewer):
        pub_conn = publisher.conn
        rid = viewer.subscribe()
        await until(lambda: any(isinstance(e, ev.SubscribeRequested) for e in publisher.events),
                    what="the relay's SUBSCRIBE at the publisher")
        pushed = pub_conn.session.publish(NAMESPACE, "video", 5)  # instead of SUBSCRIBE_OK
        pub_conn.flush()
        await until(lambda: any(isinstance(e, (ev.PublishAccepted, ev.RequestFailed)) for e in publisher.events),
                    what="PUBLISH answered")
        answers = [e for e in publisher.events if isinstance(e, (ev.Unsubscribed, ev.PublishAccepted,
                                                                  ev.RequestFailed))]
        ours = next(e for e in publisher.events if isinstance(e, ev.SubscribeRequested)).request_id
        assert [(type(e), e.request_id) for e in answers] == [(ev.Unsubscribed, ours), (ev.PublishAccepted, pushed)]
        await until(lambda: viewer.answer(rid) is not None, what="the viewer's SUBSCRIBE answered")
        assert isinstance(viewer.answer(rid), ev.SubscribeAccepted), viewer.answer(rid)
        sid = pub_conn.session.open_subgroup(5, 0)
        for object_id in range(OBJECTS):
            pub_conn.session.send_object(sid, object_id, b"x")
        pub_conn.session.end_subgroup(sid)
        pub_conn.flush()
        alias = viewer.answer(rid).track_alias
        await until(lambda: 0 in viewer.ended(alias), what="group 0 delivered")
        assert sorted(viewer.objects(alias)) == whole(0)
