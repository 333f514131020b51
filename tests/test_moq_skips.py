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
