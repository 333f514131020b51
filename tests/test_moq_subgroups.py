"""Subgroups through the relay (MoQT d16, "Subgroups"): a publisher may send a group in several
subgroups, each on its own stream with its own publisher priority (a codec's temporal layers).
The relay sent every group downstream as subgroup 0 on one stream and ended it at its first
subgroup's FIN, so the objects of the later subgroups were lost, and its cache and FETCH answers
said subgroup 0 for everything."""

import asyncio

import pytest

from rtmpq.moq import events as ev
from rtmpq.moq import wire
from rtmpq.moq.transport import connect_moq
from rtmpq.moq.wire import ObjectStatus

from .conftest import EventRecorder, announced, serving_relay

BACKENDS = ["aioquic", "aiopquic"]
SUBGROUPS = 3
OBJECTS = 9  # per whole group: object i is in subgroup i % SUBGROUPS
NAMESPACE = ("live", "x")


def priority(subgroup: int) -> int:
    return 10 * (subgroup + 1)  # the base layer first


def payload(group: int, object_id: int) -> bytes:
    return f"video {group}.{object_id}".encode()


class LayeredPublisher:
    """Publishes ``video`` of ``live/x`` through the relay (PUBLISH_NAMESPACE; the relay subscribes
    here): groups in SUBGROUPS subgroups, their objects interleaved across the subgroup streams.
    The last subgroup holds each group's last object (its header's END_OF_GROUP)."""

    def __init__(self, conn, on_subscribe) -> None:
        self.conn = conn
        self.alias: int | None = None
        self.streams: dict[tuple[int, int], int] = {}  # (group, subgroup) -> stream id
        self.last: dict[int, int] = {}  # stream id -> the last object ID written on it
        self.on_subscribe = on_subscribe
        conn.handler = self._on_event

    def _on_event(self, _conn, event) -> None:
        if isinstance(event, ev.SubscribeRequested) and event.track_name == "video":
            self.alias = 0
            self.conn.session.subscribe_ok(event.request_id, self.alias)
            self.on_subscribe(self)
            self.conn.flush()

    def send(self, group: int, object_ids) -> None:
        """Objects of ``group``, each on its subgroup's stream (opened at its first object), written
        with wire.py alone, as a foreign publisher would."""
        quic = self.conn.session.quic
        for object_id in object_ids:
            subgroup = object_id % SUBGROUPS
            if (group, subgroup) not in self.streams:
                sid = self.streams[(group, subgroup)] = quic.get_next_available_stream_id(is_unidirectional=True)
                self.last[sid] = -1
                header = wire.SubgroupHeader(self.alias, group, subgroup, priority(subgroup),
                                             end_of_group=subgroup == SUBGROUPS - 1)
                quic.send_stream_data(sid, header.encode())
            self._object(self.streams[(group, subgroup)], object_id, payload(group, object_id))
        self.conn.flush()

    def _object(self, sid: int, object_id: int, data: bytes, status: int = ObjectStatus.NORMAL) -> None:
        delta = object_id - self.last[sid] - 1
        self.last[sid] = object_id
        self.conn.session.quic.send_stream_data(
            sid, wire.encode_object(delta, data, None, with_extensions=True, status=status) + data)

    def end(self, group: int, subgroups=range(SUBGROUPS)) -> None:
        for subgroup in subgroups:
            self.conn.session.quic.send_stream_data(self.streams[(group, subgroup)], b"", end_stream=True)
        self.conn.flush()

    def status(self, group: int, subgroup: int, object_id: int, status: int) -> None:
        """A status object (``object_id``) on a subgroup's stream; the stream stays open."""
        self._object(self.streams[(group, subgroup)], object_id, b"", status)
        self.conn.flush()


class Viewer(EventRecorder):
    """A raw MoQ session's events, for waiting on them."""

    def objects(self) -> list:
        """Objects that came (status objects aside: ``statuses``)."""
        return [e for e in self.events if isinstance(e, ev.FetchObjectReceived)
                or (isinstance(e, ev.ObjectReceived) and e.status == ObjectStatus.NORMAL)]

    def statuses(self) -> list:
        """(group, subgroup, object, status) of each status object that came."""
        return [(e.group, e.subgroup, e.object_id, e.status) for e in self.events
                if isinstance(e, ev.ObjectReceived) and e.status != ObjectStatus.NORMAL]

    def ended(self) -> set:
        return {(e.group, e.subgroup) for e in self.events if isinstance(e, ev.SubgroupEnded)}

    async def until(self, condition, what: str, deadline: float = 15.0) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline
        while not condition():
            closed = [e for e in self.events if isinstance(e, ev.SessionClosed)]
            assert not closed, f"session closed: {closed}"
            assert loop.time() < end, f"timed out waiting for {what}; got {self.events}"
            await asyncio.sleep(0.02)


def subscribe(viewer: Viewer) -> None:
    viewer.conn.session.subscribe(NAMESPACE, "video")
    viewer.conn.flush()


def assert_in_their_subgroups(objects, groups: dict[int, list[int]]) -> None:
    """Every object of ``groups`` (group -> object ids) came once, with its Subgroup ID and its
    subgroup's priority, in order within its subgroup."""
    got = sorted((e.group, e.object_id) for e in objects)
    assert got == sorted((g, o) for g, ids in groups.items() for o in ids)
    for e in objects:
        assert (e.subgroup, e.priority, bytes(e.payload)) == (
            e.object_id % SUBGROUPS, priority(e.object_id % SUBGROUPS), payload(e.group, e.object_id)), e
    for group in groups:
        for subgroup in range(SUBGROUPS):
            ids = [e.object_id for e in objects if (e.group, e.subgroup) == (group, subgroup)]
            assert ids == sorted(ids), (group, subgroup, ids)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_subscriber_gets_every_subgroup_on_its_own_stream(tmp_path, backend):
    """Two groups of three interleaved subgroups: each object arrives with its subgroup's ID and
    priority, each subgroup ends (FIN) once it has all its objects; only the subgroup that holds
    the group's last object says END_OF_GROUP."""
    def on_subscribe(publisher: LayeredPublisher) -> None:
        for group in range(2):
            publisher.send(group, range(OBJECTS))
            publisher.end(group)

    async with serving_relay(tmp_path, backend) as (relay, port):
        async with (connect_moq("127.0.0.1", port, insecure=True, backend=backend) as pub,
                    connect_moq("127.0.0.1", port, insecure=True, backend=backend) as conn):
            await announced(pub, NAMESPACE)
            LayeredPublisher(pub, on_subscribe)
            viewer = Viewer(conn)
            subscribe(viewer)
            every = {(g, s) for g in range(2) for s in range(SUBGROUPS)}
            await viewer.until(lambda: viewer.ended() >= every, "every subgroup to end")
    objects = viewer.objects()
    assert_in_their_subgroups(objects, {0: list(range(OBJECTS)), 1: list(range(OBJECTS))})
    assert {e.subgroup for e in objects if e.end_of_group} == {SUBGROUPS - 1}  # (its header's flag)
    ends = [(e.group, e.subgroup) for e in viewer.events if isinstance(e, (ev.SubgroupEnded, ev.SubgroupReset))]
    assert sorted(ends) == sorted(every)  # one stream a subgroup, each ended with FIN, none reset


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_late_joiner_and_a_fetch_get_the_cached_objects_in_their_subgroups(tmp_path, backend):
    """Group 1 in progress, its last subgroup already ended by an End of Group object: a subscriber
    that joins then gets the group's cached objects in their subgroups, that subgroup's end at
    once (the cache kept it), then the rest live; a FETCH from the cache says each object's
    subgroup and priority."""
    def on_subscribe(publisher: LayeredPublisher) -> None:
        publisher.send(0, range(OBJECTS))
        publisher.end(0)
        publisher.send(1, range(6))  # objects 0-5: two in each subgroup
        publisher.status(1, SUBGROUPS - 1, 8, ObjectStatus.END_OF_GROUP)  # objects 6 and 7 are to come

    async with serving_relay(tmp_path, backend) as (relay, port):
        async with (connect_moq("127.0.0.1", port, insecure=True, backend=backend) as pub,
                    connect_moq("127.0.0.1", port, insecure=True, backend=backend) as first_conn,
                    connect_moq("127.0.0.1", port, insecure=True, backend=backend) as late_conn):
            await announced(pub, NAMESPACE)
            publisher = LayeredPublisher(pub, on_subscribe)
            first = Viewer(first_conn)
            subscribe(first)
            await first.until(lambda: len([e for e in first.objects() if e.group == 1]) == 6
                              and (1, SUBGROUPS - 1) in first.ended(), "group 1 in progress")
            late = Viewer(late_conn)
            subscribe(late)
            await late.until(lambda: len(late.objects()) == 6 and (1, SUBGROUPS - 1) in late.ended(),
                             "group 1 from the cache")
            assert late.ended() == {(1, SUBGROUPS - 1)}  # the others are still open
            # the End of Group came to both on its subgroup's stream (cached for the late one)
            assert first.statuses() == late.statuses() == [(1, SUBGROUPS - 1, 8, ObjectStatus.END_OF_GROUP)]
            publisher.send(1, [6, 7])
            publisher.end(1, range(SUBGROUPS - 1))
            done = {(1, s) for s in range(SUBGROUPS)}
            await late.until(lambda: late.ended() >= done, "group 1 to end")
            assert_in_their_subgroups(late.objects(), {1: list(range(8))})
            ends = [(e.group, e.subgroup) for e in late.events if isinstance(e, (ev.SubgroupEnded, ev.SubgroupReset))]
            assert sorted(ends) == sorted(done)  # one stream a subgroup, each ended with FIN, none reset

            fetcher = Viewer(late_conn)
            rid = late_conn.session.fetch(NAMESPACE, "video", (0, 0), (1, 0))
            late_conn.flush()
            await fetcher.until(lambda: any(isinstance(e, ev.FetchEnded) and e.request_id == rid
                                            for e in fetcher.events), "the FETCH")
    fetched = [e for e in fetcher.objects() if e.request_id == rid]
    assert_in_their_subgroups(fetched, {0: list(range(OBJECTS)), 1: list(range(8))})
    assert [(e.group, e.object_id) for e in fetched] == sorted((e.group, e.object_id) for e in fetched)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_end_of_track_on_one_subgroup_waits_for_the_others(tmp_path, backend, monkeypatch):
    """An End of Track object on one subgroup's stream says nothing of the objects before it: the
    relay passes it on at once on that subgroup's stream, and its subscriber still gets the other
    subgroups' objects that came after it; the track ends (PUBLISH_DONE) the late-stream grace
    after the End of Track, as no PUBLISH_DONE of the publisher's says how many streams to wait for."""
    from rtmpq.moq import relay as relay_module
    monkeypatch.setattr(relay_module, "LATE_STREAM_GRACE", 3.0)  # (the rest comes well within it)

    def on_subscribe(publisher: LayeredPublisher) -> None:
        publisher.send(0, range(6))
        publisher.status(0, SUBGROUPS - 1, 8, ObjectStatus.END_OF_TRACK)  # objects 6 and 7 are to come

    async with serving_relay(tmp_path, backend) as (relay, port):
        async with (connect_moq("127.0.0.1", port, insecure=True, backend=backend) as pub,
                    connect_moq("127.0.0.1", port, insecure=True, backend=backend) as conn):
            await announced(pub, NAMESPACE)
            publisher = LayeredPublisher(pub, on_subscribe)
            viewer = Viewer(conn)
            subscribe(viewer)
            await viewer.until(lambda: len(viewer.objects()) == 6 and (0, SUBGROUPS - 1) in viewer.ended(),
                               "the End of Track's subgroup to end")
            assert not [e for e in viewer.events if isinstance(e, ev.PublishDoneReceived)]
            publisher.send(0, [6, 7])
            publisher.end(0, range(SUBGROUPS - 1))
            await viewer.until(lambda: any(isinstance(e, ev.PublishDoneReceived) for e in viewer.events),
                               "PUBLISH_DONE")
    assert_in_their_subgroups(viewer.objects(), {0: list(range(8))})
    assert viewer.statuses() == [(0, SUBGROUPS - 1, 8, ObjectStatus.END_OF_TRACK)]
    assert viewer.ended() == {(0, s) for s in range(SUBGROUPS)}
