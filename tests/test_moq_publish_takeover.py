"""Relayed tracks whose source restarts while the relay still serves them.

A track PUBLISHed to the relay whose publisher restarts: the new session takes it over.

Found deploying the transcoder as its own node: `rtmpq transcode` killed (SIGKILL, a container
restart) and started again at once PUBLISHes its rungs anew, while the relay still holds its old
session (nothing told the relay it died: that takes the QUIC idle timeout, 10 s). The relay
refused the new PUBLISH ("track already published") and the transcoder gave up on the rung, so
the rendition stayed dead for good: the old session's track then waited its grace period for a
publisher that had already come back and been turned away. An authorized newcomer now takes the
track over, as a PUBLISH_NAMESPACE takes over a namespace: the old session is told UNSUBSCRIBE,
its groups in progress end, and the subscribers go on with the new publisher's groups, numbered
above the last one served. And a relay below a relay that restarted before its publisher came
back to it keeps asking for the track until the publisher is there (the second test)."""

import asyncio
import contextlib
import logging

import pytest

from rtmpq.moq import events as ev
from rtmpq.moq.transport import connect_moq
from rtmpq.moq.wire import PublishDoneStatus, StreamResetCode

from .conftest import EventRecorder, serving_relay, until

BACKENDS = ["aioquic", "aiopquic"]
NAMESPACE = ("live", "x")
TRACK = "video-240p"


async def wait_for(recorder: EventRecorder, match, what: str, deadline: float = 10.0):
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while True:
        found = [e for e in recorder.events if match(e)]
        if found:
            return found[0]
        closed = [e for e in recorder.events if isinstance(e, ev.SessionClosed)]
        assert not closed, f"session closed: {closed}"
        assert loop.time() < end, f"timed out waiting for {what}; got {recorder.events}"
        await asyncio.sleep(0.02)


def send_group(conn, group: int, payload: bytes) -> None:
    sid = conn.session.open_subgroup(0, group)
    conn.session.send_object(sid, 0, payload)
    conn.session.end_subgroup(sid)
    conn.flush()


@contextlib.asynccontextmanager
async def watched_track(tmp_path, backend):
    """A relay; TRACK PUBLISHed there by one session and subscribed to by a viewer; a third session
    to take it over. Yields (old, viewer, new connection, viewer's and new's recorders)."""
    async with serving_relay(tmp_path, backend) as (_relay, port):
        async with (connect_moq("127.0.0.1", port, insecure=True, backend=backend) as old_conn,
                    connect_moq("127.0.0.1", port, insecure=True, backend=backend) as viewer_conn,
                    connect_moq("127.0.0.1", port, insecure=True, backend=backend) as new_conn):
            old, viewer, new = EventRecorder(old_conn), EventRecorder(viewer_conn), EventRecorder(new_conn)
            old_conn.session.publish(NAMESPACE, TRACK, 0)
            old_conn.flush()
            await wait_for(old, lambda e: isinstance(e, ev.PublishAccepted), "PUBLISH_OK")
            viewer_conn.session.subscribe(NAMESPACE, TRACK)
            viewer_conn.flush()
            await wait_for(viewer, lambda e: isinstance(e, ev.SubscribeAccepted), "SUBSCRIBE_OK")
            yield old_conn, viewer_conn, new_conn, viewer, new


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_restarted_publisher_takes_its_track_over_from_its_old_session(tmp_path, backend):
    async with serving_relay(tmp_path, backend) as (relay, port):
        async with (connect_moq("127.0.0.1", port, insecure=True, backend=backend) as old_conn,
                    connect_moq("127.0.0.1", port, insecure=True, backend=backend) as viewer_conn,
                    connect_moq("127.0.0.1", port, insecure=True, backend=backend) as new_conn):
            old, viewer, new = EventRecorder(old_conn), EventRecorder(viewer_conn), EventRecorder(new_conn)
            # a rung: PUBLISHed with FORWARD=0, objects only once the relay asks for them
            old_rid = old_conn.session.publish(NAMESPACE, TRACK, 0, forward=False)
            old_conn.flush()
            await wait_for(old, lambda e: isinstance(e, ev.PublishAccepted), "PUBLISH_OK")
            viewer_conn.session.subscribe(NAMESPACE, TRACK)
            viewer_conn.flush()
            await wait_for(viewer, lambda e: isinstance(e, ev.SubscribeAccepted), "SUBSCRIBE_OK")
            await wait_for(old, lambda e: isinstance(e, ev.RequestUpdated) and e.forward, "FORWARD=1")
            send_group(old_conn, 0, b"old 0")
            await wait_for(viewer, lambda e: isinstance(e, ev.ObjectReceived), "the old publisher's group")

            # the publisher restarts; its old session stays open (the relay cannot know it is dead)
            new_rid = new_conn.session.publish(NAMESPACE, TRACK, 0, forward=False)
            new_conn.flush()
            answer = await wait_for(new, lambda e: isinstance(e, (ev.PublishAccepted, ev.RequestFailed)),
                                    "the answer to the new PUBLISH")
            assert isinstance(answer, ev.PublishAccepted), answer
            assert answer.request_id == new_rid
            await wait_for(new, lambda e: isinstance(e, ev.RequestUpdated) and e.forward,
                           "FORWARD=1 to the new publisher (a subscriber is there)")
            await wait_for(old, lambda e: isinstance(e, ev.Unsubscribed) and e.request_id == old_rid,
                           "UNSUBSCRIBE to the old session")
            send_group(new_conn, 0, b"new 0")  # its own numbering starts again
            got = await wait_for(viewer, lambda e: isinstance(e, ev.ObjectReceived) and bytes(e.payload) == b"new 0",
                                 "the new publisher's group")
    first = next(e for e in viewer.events if isinstance(e, ev.ObjectReceived))
    assert bytes(first.payload) == b"old 0"
    assert got.group > first.group  # numbered above what was served
    assert not [e for e in viewer.events if isinstance(e, ev.PublishDoneReceived)]  # the subscription went on


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_relay_below_keeps_asking_a_restarted_relay_until_its_publisher_is_back(tmp_path, backend, caplog):
    """Relay B (--upstream A) serves video of live/x to a viewer; A is restarted, and B reconnects
    to it before the publisher (an `ingest --upstream`) has: A refuses B's resubscription (no such
    broadcast yet). Found with the nodes as processes, A killed: B's upstream link and the ingest
    both reconnected within the same 50 ms, B first. B dropped the track at that refusal without a
    word to its subscriber, whose subscription then delivered nothing for good (the edge's
    playlist stopped while the broadcast went on). B now keeps the track for the rest of its grace
    period and asks again until the publisher is back."""
    from rtmpq.media.broadcast import BroadcastRegistry
    from rtmpq.moq.relay import MoqRelay
    from rtmpq.moq.tls import ensure_self_signed
    from rtmpq.moq.transport import serve_moq

    from .conftest import free_port, relay_below

    cert, key = ensure_self_signed(tmp_path / "a-tls")
    port_a = free_port(__import__("socket").SOCK_DGRAM)

    async def start_a():
        relay = MoqRelay(BroadcastRegistry())
        server = await serve_moq("127.0.0.1", port_a, certfile=cert, keyfile=key, on_connection=relay.on_connection,
                                 backend=backend)
        relay.start()
        return relay, server

    def publish(conn, payload: bytes) -> None:
        """``conn`` answers a SUBSCRIBE to video with one group (left open) of ``payload``."""
        def on_event(_conn, event) -> None:
            if isinstance(event, ev.SubscribeRequested):
                conn.session.subscribe_ok(event.request_id, 0)
                sid = conn.session.open_subgroup(0, 0)
                conn.session.send_object(sid, 0, payload)
                conn.flush()
        conn.handler = on_event

    async def announce(conn) -> None:
        answers = EventRecorder(conn)
        conn.session.publish_namespace(NAMESPACE)
        conn.flush()
        await wait_for(answers, lambda e: isinstance(e, ev.RequestAccepted), "PUBLISH_NAMESPACE accepted")

    caplog.set_level(logging.INFO, logger="rtmpq.moq")
    relay_a, server_a = await start_a()
    async with relay_below(tmp_path, backend, port_a) as port_b:
        async with connect_moq("127.0.0.1", port_b, insecure=True, backend=backend) as viewer_conn:
            viewer = EventRecorder(viewer_conn)
            async with connect_moq("127.0.0.1", port_a, insecure=True, backend=backend) as pub:
                await announce(pub)
                publish(pub, b"before")
                viewer_conn.session.subscribe(NAMESPACE, "video")
                viewer_conn.flush()
                await wait_for(viewer, lambda e: isinstance(e, ev.ObjectReceived), "the first publisher's object")
                relay_a.stop()  # A goes (its sessions close)
                server_a.close()
            await until(lambda: any("source lost" in r.getMessage() for r in caplog.records), 15,
                        "relay B to see A gone")
            relay_a, server_a = await start_a()  # A is back, without the broadcast
            try:
                # B has reconnected and asked A for video: refused
                await until(lambda: any("not back at" in r.getMessage() for r in caplog.records), 15,
                            "relay B's resubscription refused")
                async with connect_moq("127.0.0.1", port_a, insecure=True, backend=backend) as pub:
                    await announce(pub)  # the publisher is back at A
                    publish(pub, b"after")
                    await wait_for(viewer, lambda e: isinstance(e, ev.ObjectReceived) and bytes(e.payload) == b"after",
                                   "the object of the publisher back at A", deadline=15)
            finally:
                relay_a.stop()
                server_a.close()
    assert not [e for e in viewer.events if isinstance(e, ev.PublishDoneReceived)]


@pytest.mark.parametrize("backend", BACKENDS)
async def test_the_group_the_old_publisher_left_open_is_reset_below_not_ended(tmp_path, backend):
    """The old session was in the middle of a group when the new one took the track over: that
    group's stream to the subscriber is reset (SESSION_CLOSED), never ended with a FIN, which
    would tell it (and a relay below, which caches it) that the group is whole."""
    async with watched_track(tmp_path, backend) as (old_conn, viewer_conn, new_conn, viewer, new):
        send_group(old_conn, 0, b"old 0")  # a whole group
        sid = old_conn.session.open_subgroup(0, 1)  # and one it never finishes
        old_conn.session.send_object(sid, 0, b"old 1 first half")
        old_conn.flush()
        await wait_for(viewer, lambda e: isinstance(e, ev.ObjectReceived) and e.object_id == 0
                       and bytes(e.payload) == b"old 1 first half", "the half group")
        new_conn.session.publish(NAMESPACE, TRACK, 0)
        new_conn.flush()
        await wait_for(new, lambda e: isinstance(e, ev.PublishAccepted), "PUBLISH_OK to the new publisher")
        half = next(e for e in viewer.events if isinstance(e, ev.ObjectReceived)
                    and bytes(e.payload) == b"old 1 first half")
        reset = await wait_for(viewer, lambda e: isinstance(e, ev.SubgroupReset) and e.group == half.group,
                               "the half group's stream reset")
        send_group(new_conn, 0, b"new 0")
        await wait_for(viewer, lambda e: isinstance(e, ev.ObjectReceived) and bytes(e.payload) == b"new 0",
                       "the new publisher's group")
    assert reset.code == StreamResetCode.SESSION_CLOSED
    ended = {e.group for e in viewer.events if isinstance(e, ev.SubgroupEnded)}
    assert half.group not in ended and half.group - 1 in ended  # the whole group before it kept its FIN


@pytest.mark.parametrize("backend", BACKENDS)
async def test_the_new_publishers_stream_count_is_its_own(tmp_path, backend):
    """PUBLISH_DONE's stream count is the streams of that publisher's own subscription. The relay
    counted the old session's finished streams too, so the new publisher's PUBLISH_DONE, which
    overtakes its last group's stream, looked complete at once and that group was cut (found with
    a relay following the directory from one ingest to another: B's last 3 frames lost)."""
    async with watched_track(tmp_path, backend) as (old_conn, viewer_conn, new_conn, viewer, new):
        send_group(old_conn, 0, b"old 0")  # a stream the old session finished
        await wait_for(viewer, lambda e: isinstance(e, ev.SubgroupEnded), "the old publisher's group")
        new_rid = new_conn.session.publish(NAMESPACE, TRACK, 0)
        new_conn.flush()
        await wait_for(new, lambda e: isinstance(e, ev.PublishAccepted), "PUBLISH_OK to the new publisher")
        send_group(new_conn, 0, b"new 0")
        sid = new_conn.session.open_subgroup(0, 1)  # its last group, still on its way
        new_conn.session.send_object(sid, 0, b"new 1 first")
        new_conn.flush()
        await wait_for(viewer, lambda e: isinstance(e, ev.ObjectReceived) and bytes(e.payload) == b"new 1 first",
                       "the new publisher's last group")
        new_conn.session.publish_done(new_rid, PublishDoneStatus.TRACK_ENDED, 2, "done")  # its 2 streams
        # an answer on the same control stream: the relay has taken the PUBLISH_DONE before it
        probe = new_conn.session.subscribe(("elsewhere",), "nothing")
        new_conn.flush()
        await wait_for(new, lambda e: isinstance(e, (ev.SubscribeAccepted, ev.RequestFailed))
                       and e.request_id == probe, "the probe's answer")
        new_conn.session.send_object(sid, 1, b"new 1 last")
        new_conn.session.end_subgroup(sid)
        new_conn.flush()
        await wait_for(viewer, lambda e: isinstance(e, ev.PublishDoneReceived), "PUBLISH_DONE")
    last = [e for e in viewer.events if isinstance(e, ev.ObjectReceived) and bytes(e.payload) == b"new 1 last"]
    assert last, "the last group's last object never came"
    assert not [e for e in viewer.events if isinstance(e, ev.SubgroupReset)]
