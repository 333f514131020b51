"""An older group's tail before the next group's start (group_tails.py): a group whose last
object (and its stream's FIN) arrives after the next group's first object, as a relay that sends
the newest group first makes happen on a loaded link. The edge's packager has closed the older
group's segment by then and drops the tail: a missing frame at the end of a GoP (seen in
tests/test_edge_fetch.py under load)."""

import asyncio
import socket

import pytest

from rtmpq.media.catalog import TrackInfo
from rtmpq.media.frames import Frame
from rtmpq.moq import events as ev
from rtmpq.moq.client import SkippedGroup, subscribe_broadcast
from rtmpq.moq.group_tails import GroupTails
from rtmpq.moq.loc import CATALOG_TRACK
from rtmpq.moq.tls import ensure_self_signed
from rtmpq.moq.transport import connect_moq, serve_moq
from rtmpq.moq.wire import PublishDoneStatus

from .conftest import free_port
from .test_moq_client_subgroups import send_catalog
from .test_moq_object_status import answer_subscribes

VIDEO = TrackInfo(name="video", kind="video", codec="avc1.64001f", init_data=b"\x01")
OBJECTS = 6  # per group


def video(group: int, index: int) -> Frame:
    return Frame("video", group, index, index, index, index == 0, b"", 0)


def test_a_newer_groups_frames_wait_for_the_older_groups_stream_to_end():
    """GroupTails alone (time as an argument)."""
    tails = GroupTails(wait=0.25)
    assert tails.frame(video(0, 0), older_open=False, now=1.0) == [video(0, 0)]
    # group 1 begins while group 0's stream is open: its frames wait
    assert tails.frame(video(1, 0), older_open=True, now=1.0) == []
    assert tails.frame(video(1, 1), older_open=True, now=1.01) == []
    assert tails.waiting("video") == 1
    # group 0's tail goes on at once, then its stream's end lets group 1 go, in order
    assert tails.frame(video(0, 5), older_open=True, now=1.02) == [video(0, 5)]
    assert tails.stream_ended("video", older_open=False) == [video(1, 0), video(1, 1)]
    assert tails.next_due is None
    # a tail that never comes: the newer group goes after the wait
    assert tails.frame(video(2, 0), older_open=True, now=2.0) == []
    assert tails.next_due == 2.25
    assert tails.due(2.24) == []
    assert tails.due(2.25) == [video(2, 0)]
    # an end of a stream while another older one is still open: still waiting
    assert tails.frame(video(3, 0), older_open=True, now=3.0) == []
    assert tails.stream_ended("video", older_open=True) == []
    assert tails.flush() == [video(3, 0)]
    # no wait asked: frames go as they come
    assert GroupTails(wait=0).frame(video(4, 0), older_open=True, now=4.0) == [video(4, 0)]


class TailLastPublisher:
    """Serves live/x: a catalog of one video track, then group 0's objects but its last and all of
    group 1 (and its FIN); group 0's last object and FIN only once the subscriber has group 1's
    last object: the next group overtook the older one's tail."""

    def __init__(self) -> None:
        self.tail = None  # (connection, group 0's stream, video's request id) until the tail is sent

    def on_connection(self, conn) -> None:
        session = conn.session

        def answer(event, alias: int) -> None:
            if event.track_name == CATALOG_TRACK:
                send_catalog(session, event, alias, VIDEO)
                return
            older = session.open_subgroup(alias, 0)
            for i in range(OBJECTS - 1):
                session.send_object(older, i, f"video 0.{i}".encode())
            conn.flush()
            newer = session.open_subgroup(alias, 1)
            for i in range(OBJECTS):
                session.send_object(newer, i, f"video 1.{i}".encode())
            session.end_subgroup(newer)
            self.tail = (conn, older, event.request_id)

        answer_subscribes(conn, answer)

    def send_tail(self) -> None:
        conn, older, rid = self.tail
        conn.session.send_object(older, OBJECTS - 1, f"video 0.{OBJECTS - 1}".encode())
        conn.session.end_subgroup(older)
        conn.session.publish_done(rid, PublishDoneStatus.TRACK_ENDED, 2)
        conn.flush()


async def frames_from_tail_last_publisher(tmp_path, backend: str, **options) -> list:
    cert, key = ensure_self_signed(tmp_path / "tls")
    port = free_port(socket.SOCK_DGRAM)
    pub = TailLastPublisher()
    server = await serve_moq("127.0.0.1", port, certfile=cert, keyfile=key, backend=backend,
                             on_connection=pub.on_connection)
    loop = asyncio.get_running_loop()

    def seen(event) -> None:  # the subscriber's session has group 1 whole: now the tail
        if isinstance(event, ev.ObjectReceived) and (event.group, event.object_id) == (1, OBJECTS - 1):
            loop.call_soon(pub.send_tail)

    got = []
    try:
        async with connect_moq("127.0.0.1", port, insecure=True, backend=backend, timeout=10) as conn:
            handle_event = conn.session.handle_event
            conn.session.handle_event = lambda event: [seen(e) or e for e in handle_event(event)]
            async with asyncio.timeout(15):
                async for item in subscribe_broadcast(conn, "live/x", **options):
                    got.append(item)
    finally:
        server.close()
    return got


def frames(got: list) -> list[tuple[int, int]]:
    return [(f.group, f.index) for f in got if isinstance(f, Frame)]


@pytest.mark.parametrize("backend", ["aioquic", "aiopquic"])
async def test_with_a_tail_wait_the_older_groups_tail_comes_before_the_next_group(tmp_path, backend):
    got = await frames_from_tail_last_publisher(tmp_path, backend, tail_wait=0.25)
    assert frames(got) == [(g, i) for g in range(2) for i in range(OBJECTS)]
    assert not [s for s in got if isinstance(s, SkippedGroup)]


@pytest.mark.parametrize("backend", ["aioquic", "aiopquic"])
async def test_without_one_frames_come_as_they_arrive(tmp_path, backend):
    """The default (``rtmpq sub``): arrival order, every frame (what the edge got before)."""
    got = await frames_from_tail_last_publisher(tmp_path, backend)
    assert sorted(frames(got)) == [(g, i) for g in range(2) for i in range(OBJECTS)]
    assert frames(got).index((0, OBJECTS - 1)) > frames(got).index((1, 0))
