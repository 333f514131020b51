"""A publisher that ends a track with PUBLISH_DONE and publishes it again on the same session.

Draft 16 "Subscriptions": the publisher "terminates a subscription ... using PUBLISH_DONE", so a
PUBLISH of the track after it is a new subscription, not a second one (DUPLICATE_SUBSCRIPTION is
for a second subscription "with the same role"). PUBLISH_DONE overtakes the last streams on the
control stream ("it is likely to arrive at the receiver before late-arriving objects"), so the
relay holds the old subscription's late streams for a while (LATE_STREAM_GRACE); a new publish
that comes meanwhile was refused DUPLICATE_SUBSCRIPTION and the relay's subscribers of the track
got PUBLISH_DONE. Now the late streams end as before, and the subscribers go on with the new
publish's groups, numbered above the old ones (a late joiner gets them from the cache too).

The three ways a publisher does it: PUBLISH, PUBLISH_DONE, PUBLISH; the relay's SUBSCRIBE,
PUBLISH_DONE, PUBLISH; and the relay's SUBSCRIBE, PUBLISH_DONE, PUBLISH_NAMESPACE_DONE and
PUBLISH_NAMESPACE again (the relay subscribes again for its subscribers). Raw sessions of
rtmpq's MoQ stack on loopback QUIC, both backends."""

import pytest

from rtmpq.moq import events as ev
from rtmpq.moq.transport import connect_moq
from rtmpq.moq.wire import PublishDoneStatus

from .conftest import EventRecorder, serving_relay, until
from .test_moq_subscribe_filters import BACKENDS, NAMESPACE, OBJECTS, Viewer, whole

OLD_ALIAS, NEW_ALIAS = 1, 2


def _send_group(conn, alias: int, group: int) -> None:
    sid = conn.session.open_subgroup(alias, group)
    for object_id in range(OBJECTS):
        conn.session.send_object(sid, object_id, f"{alias}:{group}.{object_id}".encode())
    conn.session.end_subgroup(sid)
    conn.flush()


def _requests(publisher: EventRecorder) -> list[ev.SubscribeRequested]:
    return [e for e in publisher.events if isinstance(e, ev.SubscribeRequested)]


async def _answer_subscribe(publisher: EventRecorder, index: int, alias: int) -> int:
    """SUBSCRIBE_OK to the relay's ``index``-th SUBSCRIBE; its request id."""
    await until(lambda: len(_requests(publisher)) > index, what="the relay's SUBSCRIBE at the publisher")
    rid = _requests(publisher)[index].request_id
    publisher.conn.session.subscribe_ok(rid, alias)
    publisher.conn.flush()
    return rid


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("how", "last_group"), [("publish", "begun"), ("publish", "unopened"), ("subscribe", "begun"),
                                           ("namespace", "begun")])
async def test_a_track_published_again_after_publish_done_goes_on_for_its_subscribers(tmp_path, backend, how, last_group):
    """``last_group``: the old subscription's last group had begun at the relay before PUBLISH_DONE, or
    its stream opens only after it (a late-opening stream: the new publish's groups leave its id
    free)."""
    async with serving_relay(tmp_path, backend) as (relay, port):
        async with (connect_moq("127.0.0.1", port, insecure=True, backend=backend) as pub_conn,
                    connect_moq("127.0.0.1", port, insecure=True, backend=backend) as view_conn,
                    connect_moq("127.0.0.1", port, insecure=True, backend=backend) as late_conn):
            publisher, viewer, late = EventRecorder(pub_conn), Viewer(view_conn), Viewer(late_conn)
            session = pub_conn.session
            if how == "publish":
                first = session.publish(NAMESPACE, "video", OLD_ALIAS)
                pub_conn.flush()
                await until(lambda: any(isinstance(e, ev.PublishAccepted) for e in publisher.events),
                            what="PUBLISH accepted")
                rid, alias = await viewer.subscribed()
            else:
                announced = session.publish_namespace(NAMESPACE)
                pub_conn.flush()
                await until(lambda: any(isinstance(e, ev.RequestAccepted) and e.request_id == announced
                                        for e in publisher.events), what="PUBLISH_NAMESPACE accepted")
                rid = viewer.subscribe()
                first = await _answer_subscribe(publisher, 0, OLD_ALIAS)
                await until(lambda: viewer.answer(rid) is not None, what="SUBSCRIBE answered")
                alias = viewer.answer(rid).track_alias
            _send_group(pub_conn, OLD_ALIAS, 0)
            await until(lambda: 0 in viewer.ended(alias), what="group 0 at the viewer")

            # group 1's stream (or the rest of it) comes after PUBLISH_DONE, as the network may order them
            if last_group == "begun":
                late_stream = session.open_subgroup(OLD_ALIAS, 1)
                session.send_object(late_stream, 0, b"late 0")
                pub_conn.flush()
                await until(lambda: (1, 0) in viewer.objects(alias), what="group 1's first object at the viewer")
            session.publish_done(first, PublishDoneStatus.TRACK_ENDED, 2)  # group 0's and group 1's streams
            if how == "namespace":
                session.publish_namespace_done(announced)
                again = session.publish_namespace(NAMESPACE)
                pub_conn.flush()
                await until(lambda: any(isinstance(e, ev.RequestAccepted) and e.request_id == again
                                        for e in publisher.events), what="PUBLISH_NAMESPACE accepted again")
            else:
                second = session.publish(NAMESPACE, "video", NEW_ALIAS)
                pub_conn.flush()
                await until(lambda: any(isinstance(e, (ev.PublishAccepted, ev.RequestFailed))
                                        and e.request_id == second for e in publisher.events),
                            what="the second PUBLISH answered")
                answer = next(e for e in publisher.events if getattr(e, "request_id", None) == second
                              and isinstance(e, (ev.PublishAccepted, ev.RequestFailed)))
                assert isinstance(answer, ev.PublishAccepted), answer

            # the old subscription's late stream ends whole
            if last_group == "unopened":
                late_stream = session.open_subgroup(OLD_ALIAS, 1)
                session.send_object(late_stream, 0, b"late 0")
            for object_id in range(1, OBJECTS):
                session.send_object(late_stream, object_id, f"late {object_id}".encode())
            session.end_subgroup(late_stream)
            pub_conn.flush()
            await until(lambda: 1 in viewer.ended(alias), what="group 1 (the late stream) at the viewer")
            assert sorted(viewer.objects(alias)) == whole(0, 1)
            if how == "namespace":  # the relay subscribes again for its viewer
                await _answer_subscribe(publisher, 1, NEW_ALIAS)

            # the new publish numbers its groups from 0 again: they reach the viewer above group 1, whole
            for group in (0, 1):
                _send_group(pub_conn, NEW_ALIAS, group)
            await until(lambda: {2, 3} <= viewer.ended(alias), what="the new publish's groups at the viewer")
            assert sorted(viewer.objects(alias)) == whole(0, 1, 2, 3)
            assert not viewer.of(ev.PublishDoneReceived)
            payloads = [e.payload for e in viewer.of(ev.ObjectReceived) if e.group == 3]
            assert [bytes(p) for p in payloads] == [f"{NEW_ALIAS}:1.{o}".encode() for o in range(OBJECTS)]

            # a late joiner starts at the newest group, from the cache
            _, late_alias = await late.subscribed()
            await until(lambda: 3 in late.ended(late_alias), what="the newest group at the late joiner")
            assert sorted(late.objects(late_alias)) == whole(3)
            assert not viewer.of(ev.RequestFailed)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_late_group_past_the_ids_left_for_it_is_dropped_not_mixed_into_the_new_publish(tmp_path, backend,
                                                                                                  caplog):
    """A publisher that skips group ids: the late stream PUBLISH_DONE counted brings group 5, but
    the relay left one id (group 1) for it and the new publish's groups took those above. Its
    objects are dropped and logged, never mixed into a group of the new publish, and the old
    subscription is over once that stream ended."""
    caplog.set_level("WARNING", "rtmpq.moq")
    async with serving_relay(tmp_path, backend) as (relay, port):
        async with (connect_moq("127.0.0.1", port, insecure=True, backend=backend) as pub_conn,
                    connect_moq("127.0.0.1", port, insecure=True, backend=backend) as view_conn):
            publisher, viewer = EventRecorder(pub_conn), Viewer(view_conn)
            first = pub_conn.session.publish(NAMESPACE, "video", OLD_ALIAS)
            pub_conn.flush()
            await until(lambda: publisher.events, what="PUBLISH answered")
            _, alias = await viewer.subscribed()
            _send_group(pub_conn, OLD_ALIAS, 0)
            await until(lambda: 0 in viewer.ended(alias), what="group 0 at the viewer")
            pub_conn.session.publish_done(first, PublishDoneStatus.TRACK_ENDED, 2)
            pub_conn.session.publish(NAMESPACE, "video", NEW_ALIAS)
            pub_conn.flush()
            _send_group(pub_conn, NEW_ALIAS, 0)
            await until(lambda: 2 in viewer.ended(alias), what="the new publish's first group at the viewer")
            _send_group(pub_conn, OLD_ALIAS, 5)  # the late stream, past the id left for it
            _send_group(pub_conn, NEW_ALIAS, 1)
            await until(lambda: 3 in viewer.ended(alias), what="the new publish's next group at the viewer")
            await until(lambda: not relay._tails, what="the old subscription over")
            assert sorted(viewer.objects(alias)) == whole(0, 2, 3)
            assert [bytes(e.payload) for e in viewer.of(ev.ObjectReceived) if e.group == 3] == \
                [f"{NEW_ALIAS}:1.{o}".encode() for o in range(OBJECTS)]
            assert any("late group 5" in r.getMessage() for r in caplog.records)
