"""Draft 16 read as another implementer reads it: what an rtmpq relay answers on the paths the
interop peers (aiomoqt, moq-rs) do not take. Each test is written from the draft's text (section
named) against a relay on loopback QUIC, with raw sessions built on rtmpq's codec."""

import pytest

from rtmpq.moq import events as ev
from rtmpq.moq.transport import connect_moq
from rtmpq.moq.wire import PublishDoneStatus, RequestError

from .conftest import EventRecorder, serving_relay, until

BACKENDS = ["aioquic", "aiopquic"]


def answered(rec: EventRecorder, rid: int):
    return next((e for e in rec.events if isinstance(e, (ev.RequestAccepted, ev.RequestFailed))
                 and e.request_id == rid), None)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_namespace_taken_over_is_cancelled_to_its_first_publisher(tmp_path, backend):
    """PUBLISH_NAMESPACE_CANCEL: "The subscriber sends an PUBLISH_NAMESPACE_CANCEL control message
    to indicate it will stop sending new subscriptions for tracks within the provided Track
    Namespace." When a second session publishes the namespace, the relay sends its SUBSCRIBEs
    there; the first publisher was never told and went on believing it served the namespace."""
    async with serving_relay(tmp_path, backend) as (_relay, port):
        async with (connect_moq("127.0.0.1", port, insecure=True, backend=backend) as first_conn,
                    connect_moq("127.0.0.1", port, insecure=True, backend=backend) as second_conn):
            first, second = EventRecorder(first_conn), EventRecorder(second_conn)
            rid = first_conn.session.publish_namespace(("live", "t"))
            first_conn.flush()
            await until(lambda: answered(first, rid) is not None, what="first PUBLISH_NAMESPACE answered")
            assert isinstance(answered(first, rid), ev.RequestAccepted)
            rid2 = second_conn.session.publish_namespace(("live", "t"))
            second_conn.flush()
            await until(lambda: answered(second, rid2) is not None, what="second PUBLISH_NAMESPACE answered")
            await until(lambda: any(isinstance(e, ev.NamespaceCancelled) for e in first.events),
                        deadline=5, what="PUBLISH_NAMESPACE_CANCEL to the first publisher")
            cancel = next(e for e in first.events if isinstance(e, ev.NamespaceCancelled))
            assert cancel.request_id == rid and cancel.error_code == RequestError.UNINTERESTED
            assert not any(isinstance(e, ev.NamespaceCancelled) for e in second.events)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_subscriptions_a_stopping_relay_ends_say_going_away(tmp_path, backend):
    """PUBLISH_DONE status codes: GOING_AWAY (0x4) "The subscriber or publisher issued a GOAWAY
    message". A relay that stops sends GOAWAY, then ends the subscriptions of its broadcasts; they
    said TRACK_ENDED ("no longer being published"), which tells a subscriber not to look for the
    track elsewhere when the GOAWAY asks it to."""
    async with serving_relay(tmp_path, backend) as (relay, port):
        relay.registry.publish("live/g")
        async with connect_moq("127.0.0.1", port, insecure=True, backend=backend) as conn:
            viewer = EventRecorder(conn)
            rid = conn.session.subscribe(("live", "g"), "catalog")
            conn.flush()
            await until(lambda: any(isinstance(e, ev.SubscribeAccepted) and e.request_id == rid for e in viewer.events),
                        what="SUBSCRIBE accepted")
            relay.stop()
            await until(lambda: any(isinstance(e, ev.PublishDoneReceived) for e in viewer.events), deadline=5,
                        what="PUBLISH_DONE")
            kinds = [type(e) for e in viewer.events]
            assert kinds.index(ev.GoawayReceived) < kinds.index(ev.PublishDoneReceived)
            done = next(e for e in viewer.events if isinstance(e, ev.PublishDoneReceived))
            assert done.request_id == rid and done.status == PublishDoneStatus.GOING_AWAY, done
