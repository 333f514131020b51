"""A subscriber's DELIVERY_TIMEOUT after SUBSCRIBE (draft 16, "DELIVERY TIMEOUT Parameter": it
"MAY appear in a PUBLISH_OK, SUBSCRIBE, or REQUEST_UPDATE message"; "REQUEST_UPDATE": "If a
parameter previously set on the request is not present in REQUEST_UPDATE, its value remains
unchanged"). The relay applied SUBSCRIBE's alone (docs/interop.md listed the others as not
applied): a subscriber that lowered its budget by REQUEST_UPDATE went on getting old groups late,
and a PUBLISH_OK's budget was never the subscription's. Raw sessions on loopback QUIC, both
backends; the slow subscriber behind the impairment proxy."""

import pytest

from rtmpq.moq import events as ev
from rtmpq.moq.fanout import DEFAULT_DELIVERY_TIMEOUT
from rtmpq.moq.wire import NAMESPACE_OPTION_PUBLISH, StreamResetCode
from rtmpq.netem import Impairment

from .conftest import until
from .test_moq_subscribe_filters import BACKENDS, NAMESPACE, OBJECTS, relay_with_publisher, whole
from .test_moq_track_limits import _cached_groups_older_than

# A link slower than the track: 80 kbit/s (10 kB/s) behind a short drop-tail queue (0.4 s of
# queueing, so the RTT the relay allows for acknowledgements stays short), for groups of 15 kB
# (1.5 s of link each).
SLOW_LINK = Impairment(delay_ms=10, rate_bps=80_000, queue_bytes=4_000)
OBJECT_BYTES = 5_000
# budgets, ms: far above what two groups take on the link, then well below what one does
PATIENT, HURRIED = 30_000, 300


def send_large(publisher, *groups: int) -> None:
    """Groups of OBJECTS objects of OBJECT_BYTES each."""
    session = publisher.conn.session
    for group in groups:
        sid = session.open_subgroup(publisher.alias, group)
        for object_id in range(OBJECTS):
            session.send_object(sid, object_id, bytes([object_id]) * OBJECT_BYTES)
        session.end_subgroup(sid)
    publisher.conn.flush()


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_request_update_lowering_the_delivery_timeout_skips_old_groups_from_then_on(tmp_path, backend):
    """A subscriber behind a link slower than the track, SUBSCRIBEd with a 30 s budget, gets groups
    0 and 1 whole (3 s of link), none reset. It then sends REQUEST_UPDATE DELIVERY_TIMEOUT=300 ms:
    of groups 2..4 (4.5 s of link) the old ones are reset with DELIVERY_TIMEOUT instead of arriving
    seconds late. (Before, the update was answered REQUEST_OK and ignored: all three came whole.)"""
    async with relay_with_publisher(tmp_path, backend, 0, delivery_timeout=DEFAULT_DELIVERY_TIMEOUT) as (
            _relay, publisher, _warm, connect):
        async with connect(down=SLOW_LINK) as viewer:
            rid, alias = await viewer.subscribed(delivery_timeout_ms=PATIENT)
            send_large(publisher, 0, 1)
            await until(lambda: {0, 1} <= viewer.ended(alias), deadline=30, what="groups 0 and 1 through the link")
            assert not viewer.of(ev.SubgroupReset)
            assert sorted(viewer.objects(alias)) == whole(0, 1)

            update = viewer.update(rid, delivery_timeout_ms=HURRIED)
            await until(lambda: viewer.answer(update) is not None, what="REQUEST_UPDATE answered")
            assert isinstance(viewer.answer(update), ev.RequestAccepted), viewer.answer(update)
            send_large(publisher, 2, 3, 4)

            def told() -> set[int]:  # groups delivered or reset
                return viewer.ended(alias) | {r.group for r in viewer.of(ev.SubgroupReset)}

            await until(lambda: {2, 3, 4} <= told(), deadline=30, what="groups 2..4 reset or delivered")
            resets = viewer.of(ev.SubgroupReset)
    assert resets, "every group came whole, seconds late: the update's budget was not applied"
    assert {r.code for r in resets} == {StreamResetCode.DELIVERY_TIMEOUT}
    assert {r.group for r in resets} <= {2, 3, 4} and min(r.group for r in resets) < 4, resets


@pytest.mark.parametrize("backend", BACKENDS)
async def test_publish_ok_delivery_timeout_is_the_subscriptions(tmp_path, backend):
    """Two namespace subscribers get the track PUBLISHed with FORWARD=0 and, once the relay's cached
    group 0 is 0.3 s old, take it with PUBLISH_OK FORWARD=1: one with DELIVERY_TIMEOUT 100 ms, for
    which group 0 is past its budget and never started, the other with none (the relay's 2 s), which
    gets group 0 from the cache. Both get the live group 1. (Before, PUBLISH_OK's DELIVERY_TIMEOUT
    was ignored and both got group 0.)"""
    async with relay_with_publisher(tmp_path, backend, 0, delivery_timeout=DEFAULT_DELIVERY_TIMEOUT) as (
            relay, publisher, (warm, warm_alias), connect):
        async with connect() as hurried, connect() as plain:
            for viewer in (hurried, plain):
                viewer.conn.session.subscribe_namespace(NAMESPACE[:1], options=NAMESPACE_OPTION_PUBLISH,
                                                        forward=False)
                viewer.conn.flush()
            await until(lambda: hurried.of(ev.TrackPublished) and plain.of(ev.TrackPublished),
                        what="the track PUBLISHed to both")
            publisher.send(0)
            await until(lambda: 0 in warm.ended(warm_alias), what="group 0 at the relay's other subscriber")
            await _cached_groups_older_than(relay, 0.3)
            (pushed_h,), (pushed_p,) = hurried.of(ev.TrackPublished), plain.of(ev.TrackPublished)
            hurried.conn.session.publish_ok(pushed_h.request_id, forward=True, delivery_timeout_ms=100)
            plain.conn.session.publish_ok(pushed_p.request_id, forward=True)
            hurried.conn.flush()
            plain.conn.flush()
            await until(lambda: 0 in plain.ended(pushed_p.track_alias), what="group 0 from the cache")
            publisher.send(1)
            await until(lambda: 1 in hurried.ended(pushed_h.track_alias) and 1 in plain.ended(pushed_p.track_alias),
                        what="group 1 delivered to both")
    assert sorted(plain.objects(pushed_p.track_alias)) == whole(0, 1)
    assert sorted(hurried.objects(pushed_h.track_alias)) == whole(1)
