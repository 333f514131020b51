"""A group skipped is reported once, however many times the relay says so. A relay announces a
dropped group again on a new stream of its header alone, reset, when the first reset may have
taken the header with it (fanout.py, ``_drop``): a subscriber that got both resets heard of the
same group twice, and ``rtmpq sub`` counted it twice in its summary."""

import asyncio
import json
import socket
import sys

import pytest

from rtmpq.media.catalog import Catalog, TrackInfo
from rtmpq.moq import events as ev
from rtmpq.moq.client import SkippedGroup, subscribe_broadcast
from rtmpq.moq.loc import CATALOG_TRACK
from rtmpq.moq.tls import ensure_self_signed
from rtmpq.moq.transport import connect_moq, serve_moq
from rtmpq.moq.wire import PublishDoneStatus, StreamResetCode

from .conftest import free_port

VIDEO = TrackInfo(name="video", kind="video", codec="avc1.64001f", init_data=b"\x01")


def publisher(conn) -> None:
    """Serves live/x: a catalog of one video track; video group 5 reset twice (on two streams),
    group 6 whole; then PUBLISH_DONE."""
    session = conn.session
    aliases = iter(range(100))

    def on_event(_conn, event) -> None:
        if not isinstance(event, ev.SubscribeRequested):
            return
        alias = next(aliases)
        session.subscribe_ok(event.request_id, alias)
        if event.track_name == CATALOG_TRACK:
            sid = session.open_subgroup(alias, 0)
            session.send_object(sid, 0, Catalog("live/x", (VIDEO,)).to_json())
            session.end_subgroup(sid)
            streams = 1
        else:
            for _ in range(2):  # (the transport holds a reset of a header alone until it is acknowledged)
                session.reset_subgroup(session.open_subgroup(alias, 5), StreamResetCode.DELIVERY_TIMEOUT)
            sid = session.open_subgroup(alias, 6)
            session.send_object(sid, 0, b"frame of group 6")
            session.end_subgroup(sid)
            streams = 3
        session.publish_done(event.request_id, PublishDoneStatus.TRACK_ENDED, streams)
        conn.flush()

    conn.handler = on_event


@pytest.fixture(params=["aioquic", "aiopquic"])
async def server(tmp_path, request):
    cert, key = ensure_self_signed(tmp_path)
    port = free_port(socket.SOCK_DGRAM)
    s = await serve_moq("127.0.0.1", port, certfile=cert, keyfile=key, backend=request.param, on_connection=publisher)
    yield request.param, port
    s.close()


async def test_a_group_reset_twice_is_reported_skipped_once(server):
    backend, port = server
    got = []
    async with connect_moq("127.0.0.1", port, insecure=True, backend=backend, timeout=10) as conn:
        async with asyncio.timeout(20):
            async for item in subscribe_broadcast(conn, "live/x"):
                got.append(item)
    assert [bytes(f.payload) for f in got if not isinstance(f, (Catalog, SkippedGroup))] == [b"frame of group 6"]
    assert [s for s in got if isinstance(s, SkippedGroup)] == [SkippedGroup("video", 5, StreamResetCode.DELIVERY_TIMEOUT)]


async def test_rtmpq_sub_counts_each_skipped_group_once(server):
    backend, port = server
    sub = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rtmpq", "sub", f"moqt://127.0.0.1:{port}/live/x", "--insecure", "--json",
        "--quic-backend", backend, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(sub.communicate(), 30)
    assert sub.returncode == 0, err
    lines = [json.loads(line) for line in out.splitlines() if line.startswith(b"{")]
    assert [line["skipped"] for line in lines if "skipped" in line] == [{"track": "video", "group": 5, "code": 2}]
    summary = json.loads(err.splitlines()[-1])["summary"]
    assert summary["skipped_groups"] == 1 and summary["objects"] == {"video": 1}, summary


def test_the_memory_of_skipped_groups_is_bounded_per_track():
    from rtmpq.moq.client import SKIPS_REMEMBERED, SkipMemory

    skips = SkipMemory()
    assert skips.first("video", 0) and skips.first("audio", 0) and not skips.first("video", 0)
    for group in range(1, SKIPS_REMEMBERED + 1):
        assert skips.first("video", group)
    assert skips.first("video", 0)  # the oldest was forgotten (a group that old is not reset again)
    assert not skips.first("audio", 0)


class ScriptedRelay:
    """An in-memory MoQ connection for subscribe_broadcast: answers each SUBSCRIBE at once with the
    events the test scripts for its track, in exactly that order (no QUIC to reorder streams)."""

    def __init__(self, script: dict[str, list]) -> None:
        self.script = script
        self.handler = None
        self.session = self
        self._rids = iter(range(0, 1000, 2))

    def subscribe(self, namespace, track, **_options) -> int:
        rid = next(self._rids)
        alias = rid + 1000
        events = [ev.SubscribeAccepted(rid, alias, None)]
        for item in self.script[track]:
            events.append(item(rid, alias))
        loop = asyncio.get_running_loop()
        for event in events:
            loop.call_soon(lambda e=event: self.handler(self, e))
        return rid

    def unsubscribe(self, _rid) -> None:
        pass

    def flush(self) -> None:
        pass


def obj(group, index, payload):
    return lambda _rid, alias: ev.ObjectReceived(alias, group, 0, index, payload, {})


def ended(group):
    return lambda _rid, alias: ev.SubgroupEnded(alias, group, 0)


def done(streams):
    return lambda rid, _alias: ev.PublishDoneReceived(rid, PublishDoneStatus.TRACK_ENDED, streams, "")


LATE_TAIL = [obj(4, 0, b"4.0"), obj(5, 0, b"5.0"), obj(4, 1, b"4.1 late"), obj(5, 1, b"5.1"),
             obj(4, 2, b"4.2 late"), ended(4), ended(5), obj(6, 0, b"6.0"), ended(6), done(3)]


async def test_by_default_every_frame_is_handed_on_as_it_comes():
    """The default loses nothing: a late tail is handed on where it arrives (a consumer may order
    by (group, index)); on a loaded machine such tails come even on loopback."""
    conn = ScriptedRelay({CATALOG_TRACK: [obj(0, 0, Catalog("live/x", (VIDEO,)).to_json()), ended(0), done(1)],
                          "video": LATE_TAIL})
    got = []
    async with asyncio.timeout(10):
        async for item in subscribe_broadcast(conn, "live/x"):
            got.append(item)
    assert [bytes(f.payload) for f in got if not isinstance(f, (Catalog, SkippedGroup))] == \
        [b"4.0", b"5.0", b"4.1 late", b"5.1", b"4.2 late", b"6.0"]
    assert not [s for s in got if isinstance(s, SkippedGroup)]


async def test_in_order_the_late_tail_of_a_group_after_the_next_group_is_dropped_and_reported_skipped():
    """The relay sends the newest group first, each on its own stream: the tail of group 4 may
    come after group 5 began. A decoder fed it would go back in time: with in_order it is not
    handed on, and group 4 is reported skipped (once) so that the consumer knows frames are missing."""
    from rtmpq.moq.client import LATE_GROUP

    conn = ScriptedRelay({CATALOG_TRACK: [obj(0, 0, Catalog("live/x", (VIDEO,)).to_json()), ended(0), done(1)],
                          "video": LATE_TAIL})
    got = []
    async with asyncio.timeout(10):
        async for item in subscribe_broadcast(conn, "live/x", in_order=True):
            got.append(item)
    frames = [(f.group, bytes(f.payload)) for f in got if not isinstance(f, (Catalog, SkippedGroup))]
    assert frames == [(4, b"4.0"), (5, b"5.0"), (5, b"5.1"), (6, b"6.0")]
    assert [s for s in got if isinstance(s, SkippedGroup)] == [SkippedGroup("video", 4, LATE_GROUP)]
    # reported once group 4's stream ended (a reset might still have come, with the relay's reason)
    kinds = [type(i).__name__ for i in got if not isinstance(i, Catalog)]
    assert kinds == ["Frame", "Frame", "Frame", "SkippedGroup", "Frame"]


async def test_a_group_reset_after_its_late_tail_was_dropped_is_reported_once_with_the_relays_code():
    """A group late because it was too slow is often cut short by the relay too: the skip carries
    the relay's reason (DELIVERY_TIMEOUT), once."""
    reset = lambda _rid, alias: ev.SubgroupReset(alias, 4, 0, StreamResetCode.DELIVERY_TIMEOUT)  # noqa: E731
    conn = ScriptedRelay({
        CATALOG_TRACK: [obj(0, 0, Catalog("live/x", (VIDEO,)).to_json()), ended(0), done(1)],
        "video": [obj(5, 0, b"5.0"), obj(4, 3, b"4.3 late"), reset, ended(5), done(2)],
    })
    got = []
    async with asyncio.timeout(10):
        async for item in subscribe_broadcast(conn, "live/x", in_order=True):
            got.append(item)
    assert [s for s in got if isinstance(s, SkippedGroup)] == [SkippedGroup("video", 4, StreamResetCode.DELIVERY_TIMEOUT)]
    assert [bytes(f.payload) for f in got if not isinstance(f, (Catalog, SkippedGroup))] == [b"5.0"]


async def test_a_late_group_whose_stream_never_ended_is_still_reported_at_the_end():
    from rtmpq.moq.client import LATE_GROUP

    conn = ScriptedRelay({
        CATALOG_TRACK: [obj(0, 0, Catalog("live/x", (VIDEO,)).to_json()), ended(0), done(1)],
        "video": [obj(5, 0, b"5.0"), obj(4, 3, b"4.3 late"), ended(5), done(1)],
    })
    got = []
    async with asyncio.timeout(10):
        async for item in subscribe_broadcast(conn, "live/x", in_order=True):
            got.append(item)
    assert [s for s in got if isinstance(s, SkippedGroup)] == [SkippedGroup("video", 4, LATE_GROUP)]
