"""FETCH: objects a relay already holds, standalone or joined to a subscription (draft 16).

The plan (what the group cache yields for a range) is tested in memory; the rest over real QUIC
against `rtmpq up` with an ffmpeg publish, with rtmpq's own client and with aiomoqt's.
"""

import asyncio
import socket

import pytest

from rtmpq.media.frames import Frame
from rtmpq.moq.client import FetchError, fetch_track, subscribe_broadcast
from rtmpq.moq.fetch import FetchRangeError, UnknownUntil, plan_fetch
from rtmpq.moq.group_cache import GroupCache
from rtmpq.moq.transport import connect_moq
from rtmpq.moq.wire import LARGEST_VARINT, RequestError

from .conftest import need, relay_below, until
from .publishers import as_packets, end_live_publish, ffmpeg_publish_args, probe_packets, run_process


def cache_with(groups: dict[int, int], *, max_groups: int = 8) -> GroupCache:
    """A cache holding ``groups`` (group id -> object count), each complete but the last."""
    cache = GroupCache(max_groups=max_groups)
    for group_id, count in groups.items():
        for object_id in range(count):
            cache.add(group_id, object_id, bytes([group_id, object_id]), None, now=0.0)
    return cache


def locations(plan) -> list:
    return [i.location if isinstance(i, UnknownUntil) else (i[0], i[1].object_id) for i in plan.items]


def test_whole_groups_in_ascending_order():
    plan = plan_fetch(cache_with({3: 3, 4: 2, 5: 2}), (3, 0), (4, 0), 0.0)
    assert locations(plan) == [(3, 0), (3, 1), (3, 2), (4, 0), (4, 1)]
    assert plan.end == (4, 0)  # the whole end group, which is complete


def test_a_range_past_the_largest_object_ends_at_it():
    cache = cache_with({3: 3, 4: 2})  # group 4 still in progress
    plan = plan_fetch(cache, (3, 1), (9, 0), 0.0)
    assert locations(plan) == [(3, 1), (3, 2), (4, 0), (4, 1)]
    assert plan.end == (4, 2)


def test_an_end_object_cuts_inside_a_group():
    plan = plan_fetch(cache_with({3: 5, 4: 1}), (3, 1), (3, 3), 0.0)
    assert locations(plan) == [(3, 1), (3, 2)]
    assert plan.end == (3, 3)


def test_descending_order_sends_newest_groups_first():
    plan = plan_fetch(cache_with({3: 2, 4: 2, 5: 1}), (3, 0), (5, 0), 0.0, descending=True)
    assert locations(plan) == [(5, 0), (4, 0), (4, 1), (3, 0), (3, 1)]


def test_groups_older_than_the_cache_are_announced_unknown_not_missing():
    cache = cache_with({1: 1, 2: 1, 3: 1, 4: 1}, max_groups=2)  # 1 and 2 evicted
    plan = plan_fetch(cache, (0, 0), (4, 0), 0.0)
    assert locations(plan) == [(2, LARGEST_VARINT), (3, 0), (4, 0)]


def test_a_group_too_big_to_cache_is_unknown():
    cache = GroupCache(max_bytes=100)
    cache.add(0, 0, b"a" * 10, None, now=0.0)
    cache.add(1, 0, b"b" * 60, None, now=0.0)
    cache.add(1, 1, b"b" * 60, None, now=0.0)  # group 1 outgrows the cache: group 0 evicted, 1 truncated
    cache.add(2, 0, b"c" * 10, None, now=0.0)
    plan = plan_fetch(cache, (0, 0), (2, 0), 0.0)
    assert locations(plan) == [(1, LARGEST_VARINT), (2, 0)]  # one marker for both unknown groups


@pytest.mark.parametrize(("start", "end"), [((7, 0), (8, 0)), ((4, 1), (3, 0))])
def test_ranges_that_cannot_be_served_are_invalid(start, end):
    with pytest.raises(FetchRangeError):
        plan_fetch(cache_with({3: 2, 4: 2}), start, end, 0.0)
    with pytest.raises(FetchRangeError):
        plan_fetch(GroupCache(), (0, 0), (1, 0), 0.0)  # nothing published yet


# -- over QUIC against `rtmpq up` ---------------------------------------------------------------
async def publish_until_group(node, tmp_path, name: str, group: int):
    """Start a 6 s ffmpeg publish; returns (publisher task, reference file) once the relay has begun
    video group ``group`` (seen by a live subscriber)."""
    need("ffmpeg")
    ref = str(tmp_path / "ref.flv")
    url = f"rtmp://127.0.0.1:{node.rtmp.address[1]}/{name}"
    publisher = asyncio.create_task(run_process(ffmpeg_publish_args(url, ref, seconds=6)))
    await node.registry.wait_for(name, 10)
    host, port = node.moq_address
    async with connect_moq(host, port, insecure=True, backend=node.moq_config.backend) as conn:
        async for item in subscribe_broadcast(conn, name, tracks=["video"]):
            if isinstance(item, Frame) and item.group >= group:
                break
    return publisher, ref


def reference_groups(ref: str, track: str = "video") -> list[list]:
    groups: list[list] = []
    for p in probe_packets(ref):
        if p.track == track:
            if p.keyframe or not groups:
                groups.append([])
            groups[-1].append(p)
    return groups


async def test_fetch_returns_whole_past_groups_as_the_encoder_made_them(node, tmp_path):
    publisher, ref = await asyncio.wait_for(publish_until_group(node, tmp_path, "live/past", 2), 30)
    host, port = node.moq_address
    async with connect_moq(host, port, insecure=True, backend=node.moq_config.backend) as conn:
        result = await asyncio.wait_for(fetch_track(conn, "live/past", "video", (0, 0), (1, 0)), 10)
        newest_first = await asyncio.wait_for(fetch_track(conn, "live/past", "video", (0, 0), (1, 0), descending=True), 10)
    rc, output = await publisher
    assert rc == 0, output
    assert result.end == (1, 0) and not result.end_of_track and not result.unknown
    groups = reference_groups(ref)
    assert as_packets(result.frames) == groups[0] + groups[1]
    assert [f.group for f in result.frames] == [0] * len(groups[0]) + [1] * len(groups[1])
    assert as_packets(newest_first.frames) == groups[1] + groups[0]


async def test_fetch_errors_are_clear(node, tmp_path):
    publisher, _ = await asyncio.wait_for(publish_until_group(node, tmp_path, "live/err", 0), 30)
    host, port = node.moq_address
    async with connect_moq(host, port, insecure=True, backend=node.moq_config.backend) as conn:
        with pytest.raises(FetchError, match="no such track") as exc:
            await asyncio.wait_for(fetch_track(conn, "live/err", "subtitles", (0, 0), (1, 0)), 10)
        assert exc.value.code == RequestError.DOES_NOT_EXIST
        with pytest.raises(FetchError, match="after the largest object") as exc:
            await asyncio.wait_for(fetch_track(conn, "live/err", "video", (50, 0), (51, 0)), 10)
        assert exc.value.code == RequestError.INVALID_RANGE
        # the session goes on: a valid fetch on it still works
        ok = await asyncio.wait_for(fetch_track(conn, "live/err", "video", (0, 0), (0, 1)), 10)
        assert [(f.group, f.index, f.keyframe) for f in ok.frames] == [(0, 0, True)]
    await end_live_publish(publisher)  # (its rest is not needed)


async def test_aiomoqt_join_gets_the_current_group_whole_from_fetch_plus_subscription(node, tmp_path):
    """SUBSCRIBE (largest object) + relative joining FETCH from a third-party client: the fetch
    carries the joined group up to the largest object, the subscription the rest, with no gap
    and no duplicate."""
    from aiomoqt.client import MOQTClient
    from aiomoqt.types import FetchType

    publisher, ref = await asyncio.wait_for(publish_until_group(node, tmp_path, "live/join", 1), 30)
    await asyncio.sleep(0.5)  # inside group 1
    host, port = node.moq_address
    fetched, live = [], []
    client = MOQTClient(host, port, use_quic=True, verify_tls=False)
    async with client.connect() as session:
        await session.client_session_init()
        session.on_fetch_object = lambda msg, *_: fetched.append((msg.group_id, msg.object_id))
        _, fetch_ok = await asyncio.wait_for(session.join(
            ("live", "join"), "video", fetch_type=FetchType.RELATIVE_JOINING, joining_start=0, wait_response=True,
            on_object=lambda msg, _size, _now, group_id=None, *_: live.append((group_id, msg.object_id))), 10)
        await session.await_fetch_done(fetch_ok.request_id, timeout=5)
        rc, output = await publisher
        assert rc == 0, output
        await asyncio.sleep(0.5)
    groups = reference_groups(ref)
    assert fetched and {g for g, _ in fetched} == {1}
    assert fetched[0] == (1, 0)
    group1 = sorted(fetched + [x for x in live if x[0] == 1])
    assert group1 == [(1, i) for i in range(len(groups[1]))]
    assert {g for g, _ in live} >= {1, 2}


def test_a_response_is_cut_at_the_byte_limit_and_says_where():
    cache = cache_with({3: 4, 4: 4, 5: 1})  # objects of 2 bytes
    plan = plan_fetch(cache, (3, 0), (4, 0), 0.0, max_bytes=10)
    assert locations(plan) == [(3, 0), (3, 1), (3, 2), (3, 3), (4, 0)]
    assert plan.end == (4, 1)  # the subscriber asks again from here
    newest_first = plan_fetch(cache, (3, 0), (4, 0), 0.0, descending=True, max_bytes=10)
    assert locations(newest_first) == [(4, 0), (4, 1), (4, 2), (4, 3), (3, 0)]


async def test_joining_fetch_errors(node, tmp_path):
    """A joining FETCH needs a live subscription of this session at the largest object."""
    from rtmpq.moq import events as ev
    from rtmpq.moq.wire import FILTER_LARGEST_OBJECT, FILTER_NEXT_GROUP_START, SessionError

    publisher, _ = await asyncio.wait_for(publish_until_group(node, tmp_path, "live/jerr", 0), 30)
    host, port = node.moq_address

    async def answer(conn, request_id, kinds):
        queue: asyncio.Queue = asyncio.Queue()
        conn.handler = lambda _c, e: queue.put_nowait(e)
        while True:
            e = await asyncio.wait_for(queue.get(), 10)
            if isinstance(e, kinds) and getattr(e, "request_id", request_id) == request_id:
                return e

    async with connect_moq(host, port, insecure=True, backend=node.moq_config.backend) as conn:
        rid = conn.session.joining_fetch(99, 0)
        conn.flush()
        failed = await answer(conn, rid, (ev.RequestFailed,))
        assert failed.error_code == RequestError.INVALID_JOINING_REQUEST_ID
        sub = conn.session.subscribe(("live", "jerr"), "video", filter_type=FILTER_LARGEST_OBJECT)
        conn.flush()
        rid = conn.session.joining_fetch(sub, 0)
        conn.flush()
        accepted = await answer(conn, rid, (ev.FetchAccepted,))
        assert accepted.end[1] > 0  # up to the largest object when the subscription began
    async with connect_moq(host, port, insecure=True, backend=node.moq_config.backend) as conn:
        sub = conn.session.subscribe(("live", "jerr"), "video", filter_type=FILTER_NEXT_GROUP_START)
        conn.flush()
        conn.session.joining_fetch(sub, 0)
        conn.flush()
        closed = await answer(conn, None, (ev.SessionClosed,))
        assert closed.code == SessionError.PROTOCOL_VIOLATION
    await end_live_publish(publisher)  # (its rest is not needed)


def relay_below_node(node, tmp_path):
    """Relay B (`--upstream` the node, A), on A's QUIC backend (conftest.relay_below)."""
    return relay_below(tmp_path, node.moq_config.backend, node.moq_address[1])


async def test_a_relay_below_passes_a_fetch_for_a_track_it_does_not_hold_upstream(node, tmp_path):
    """ffmpeg -> `rtmpq up` (A) <- relay B (--upstream A) <- FETCH: B holds nothing of the track,
    so it asks A and passes the answer and the objects back."""
    publisher, ref = await asyncio.wait_for(publish_until_group(node, tmp_path, "live/chain", 1), 30)
    async with relay_below_node(node, tmp_path) as port_b, \
            connect_moq("127.0.0.1", port_b, insecure=True, backend=node.moq_config.backend) as conn:
        result = await asyncio.wait_for(fetch_track(conn, "live/chain", "video", (0, 0), (0, 0)), 10)
        with pytest.raises(FetchError, match="no such track"):  # A's refusal, passed on
            await asyncio.wait_for(fetch_track(conn, "live/chain", "subtitles", (0, 0), (0, 0)), 10)
    rc, output = await publisher
    assert rc == 0, output
    assert result.end == (0, 0)
    assert as_packets(result.frames) == reference_groups(ref)[0]


async def test_a_relay_below_says_when_its_upstream_goes_away(node, tmp_path, caplog):
    """An operator reading relay B's log sees why its upstream session ends (A stopping sends
    GOAWAY), not only the reconnection failing a few seconds later."""
    import logging

    caplog.set_level(logging.INFO, "rtmpq.moq")
    async with relay_below_node(node, tmp_path):
        node.moq.stop()  # A's graceful stop: GOAWAY to every session
        await until(lambda: "MoQ upstream" in caplog.text and "is going away (GOAWAY)" in caplog.text,
                    deadline=10, what="B's log line")


async def test_a_subscriber_waiting_at_a_relay_below_hears_at_once_that_the_broadcast_went_live_above(node, tmp_path):
    """A subscriber that comes first waits at relay B (--upstream A) with a SUBSCRIBE_NAMESPACE on
    the broadcast's name, but only A learns when it goes live. B used to say nothing: the
    subscriber found out at its next SUBSCRIBE retry, up to a second later, and with a 1 s GoP
    the first group was over before it joined. Now B watches the name at A too and passes A's
    NAMESPACE down."""
    from rtmpq.moq import events as ev

    need("ffmpeg")
    async with relay_below_node(node, tmp_path) as port_b, \
            connect_moq("127.0.0.1", port_b, insecure=True, backend=node.moq_config.backend) as conn:
        events = []
        conn.handler = lambda _c, e: events.append(e)
        watch = conn.session.subscribe_namespace(("live", "early"))
        conn.flush()
        await until(lambda: any(isinstance(e, ev.RequestAccepted) and e.request_id == watch for e in events),
                    deadline=10, what="B's answer to the SUBSCRIBE_NAMESPACE")
        assert not any(isinstance(e, ev.NamespaceReceived) for e in events)  # not live anywhere yet
        url = f"rtmp://127.0.0.1:{node.rtmp.address[1]}/live/early"
        publisher = asyncio.create_task(run_process(ffmpeg_publish_args(url, str(tmp_path / "ref.flv"), seconds=2)))
        try:
            await until(lambda: any(isinstance(e, ev.NamespaceReceived) and e.request_id == watch
                                    and e.namespace == ("live", "early") for e in events),
                        deadline=10, what="NAMESPACE live/early from B")
        finally:
            rc, output = await publisher
        assert rc == 0, output


async def test_aiomoqt_join_at_a_relay_that_holds_nothing_of_the_track_yet(node, tmp_path):
    """aiomoqt's join sends SUBSCRIBE (largest object) and its joining FETCH together. At a relay
    below (B, --upstream A) that was not carrying the track, the FETCH used to arrive while the
    SUBSCRIBE waited for A and was refused (INVALID_JOINING_REQUEST_ID: draft 16 lets a pending
    subscription be joined), and B's SUBSCRIBE_OK said nothing existed. Now B answers with A's
    Largest Location and passes the FETCH up to A: the joined group arrives whole, half from the
    fetch and half from the subscription."""
    from aiomoqt.client import MOQTClient
    from aiomoqt.types import FetchType

    publisher, ref = await asyncio.wait_for(publish_until_group(node, tmp_path, "live/joinb", 1), 30)
    fetched, live = [], []
    async with relay_below_node(node, tmp_path) as port_b:
        client = MOQTClient("127.0.0.1", port_b, use_quic=True, verify_tls=False)
        async with client.connect() as session:
            await session.client_session_init()
            session.on_fetch_object = lambda msg, *_: fetched.append((msg.group_id, msg.object_id))
            _, fetch_ok = await asyncio.wait_for(session.join(
                ("live", "joinb"), "video", fetch_type=FetchType.RELATIVE_JOINING, joining_start=1,
                wait_response=True,
                on_object=lambda msg, _size, _now, group_id=None, *_: live.append((group_id, msg.object_id))), 10)
            await session.await_fetch_done(fetch_ok.request_id, timeout=5)
            joined = fetch_ok.largest_group_id
            await until(lambda: any(g > joined for g, _ in live), deadline=10, what="the next group, live")
    rc, output = await publisher
    assert rc == 0, output
    groups = reference_groups(ref)
    assert fetched and fetched[0] == (joined - 1, 0)
    whole = sorted(fetched + [x for x in live if x[0] == joined])
    assert [x for x in whole if x[0] == joined - 1] == [(joined - 1, i) for i in range(len(groups[joined - 1]))]
    assert [x for x in whole if x[0] == joined] == [(joined, i) for i in range(len(groups[joined]))]


async def test_a_relay_passes_on_at_most_a_few_fetches_of_one_subscriber(tmp_path):
    """Each FETCH passed upstream may bring back up to MAX_FETCH_BYTES: while an upstream has not
    answered (here: one that never does), a subscriber's next fetches beyond the cap are refused."""
    from rtmpq.media.broadcast import BroadcastRegistry
    from rtmpq.moq import events as ev
    from rtmpq.moq.relay import MAX_FETCHES_PASSED_ON, RETRY_AFTER_BUSY, MoqRelay
    from rtmpq.moq.tls import ensure_self_signed
    from rtmpq.moq.transport import serve_moq
    from rtmpq.nodes.remote import UpstreamLink

    from .conftest import free_port

    cert, key = ensure_self_signed(tmp_path / "tls")
    silent_port, relay_port = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_DGRAM)
    silent = await serve_moq("127.0.0.1", silent_port, certfile=cert, keyfile=key,
                             on_connection=lambda conn: None)  # sets up sessions, answers nothing
    relay = MoqRelay(BroadcastRegistry())
    server = await serve_moq("127.0.0.1", relay_port, certfile=cert, keyfile=key, on_connection=relay.on_connection)
    relay.start()
    link = UpstreamLink(relay, f"moqt://127.0.0.1:{silent_port}", insecure=True)
    link.start()
    try:
        await asyncio.wait_for(link.connected.wait(), 10)
        async with connect_moq("127.0.0.1", relay_port, insecure=True) as conn:
            queue: asyncio.Queue = asyncio.Queue()
            conn.handler = lambda _c, e: queue.put_nowait(e)
            for _ in range(MAX_FETCHES_PASSED_ON):
                conn.session.fetch(("live", "far"), "video", (0, 0), (1, 0))
            conn.flush()
            await asyncio.sleep(0.5)  # these are passed upstream, where they stay unanswered
            assert queue.empty()
            rid = conn.session.fetch(("live", "far"), "video", (0, 0), (1, 0))
            conn.flush()
            refused = await asyncio.wait_for(queue.get(), 10)
            assert isinstance(refused, ev.RequestFailed) and refused.request_id == rid
            assert "too many fetches" in refused.reason
            assert refused.retry_after == RETRY_AFTER_BUSY  # "retry later", and the Retry Interval says when
    finally:
        await link.close()
        relay.stop()
        server.close()
        silent.close()


async def test_a_fetched_object_has_the_publisher_priority_it_has_on_the_subscription(node, tmp_path):
    """Draft 16 "Canonical Object Properties": Publisher Priority is a property of the object. The
    relay wrote a local track's objects with its urgency on subscriptions (video 2, audio 1) but
    with 128 on FETCH streams, so one object had two priorities (found by the draft 16 audit)."""
    from rtmpq.moq import events as ev

    publisher, _ = await asyncio.wait_for(publish_until_group(node, tmp_path, "live/prio", 1), 30)
    host, port = node.moq_address
    async with connect_moq(host, port, insecure=True, backend=node.moq_config.backend) as conn:
        events: list = []
        conn.handler = lambda _c, e: events.append(e)
        subscribed, fetched = {}, {}  # request id -> track
        for track in ("video", "audio"):
            subscribed[conn.session.subscribe(("live", "prio"), track)] = track
            fetched[conn.session.fetch(("live", "prio"), track, (0, 0), (1, 0))] = track
        conn.flush()

        def priorities(kind) -> dict:
            """track -> the Publisher Priority of its objects (subscription or fetch)."""
            if kind is ev.FetchObjectReceived:
                return {fetched[e.request_id]: e.priority for e in events if isinstance(e, kind)}
            by_alias = {e.track_alias: subscribed[e.request_id] for e in events if isinstance(e, ev.SubscribeAccepted)}
            return {by_alias[e.track_alias]: e.priority for e in events if isinstance(e, kind)}

        await until(lambda: len(priorities(ev.ObjectReceived)) == 2 and len(priorities(ev.FetchObjectReceived)) == 2,
                    what="objects from both subscriptions and both fetches")
        assert priorities(ev.FetchObjectReceived) == priorities(ev.ObjectReceived)
    await end_live_publish(publisher)  # (its rest is not needed)
