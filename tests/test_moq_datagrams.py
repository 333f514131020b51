"""Objects sent as OBJECT_DATAGRAMs (draft 16: Forwarding Preference Datagram, per object) cross
the relay as datagrams. Before, the relay decoded them and dropped them with one warning per
session, so a publisher that sends a track's objects as datagrams lost that track at an rtmpq
relay (a relay "MUST NOT" change an object's Forwarding Preference, so it cannot put them on
streams). Now each reaches every subscriber as an OBJECT_DATAGRAM with its ids, extensions,
status, priority and END_OF_GROUP bit, under the subscription's FORWARD state and filter, and is
cached, so a relay below and a late joiner's FETCH (which carries it on the fetch stream, flagged
as a datagram object) get it too.

Real QUIC on loopback, both backends: a raw publisher (rtmpq's own session API) PUBLISH_NAMESPACEs
and answers the relay's SUBSCRIBE, then sends its objects as datagrams. Loopback loses none, so
every test asserts that all arrive."""

import asyncio
from contextlib import asynccontextmanager

import pytest

from rtmpq.moq import events as ev
from rtmpq.moq import transport, wire
from rtmpq.moq.transport import connect_moq
from rtmpq.moq.wire import FILTER_ABSOLUTE_RANGE, FILTER_LARGEST_OBJECT, ObjectStatus, PublishDoneStatus

from .conftest import announced, relay_below, serving_relay, until
from .test_moq_subscribe_filters import Viewer as FilterViewer

BACKENDS = ["aioquic", "aiopquic"]
NAMESPACE = ("live", "dg")
TRACK = "sensor"
OBJECTS = 3  # Normal objects per group; then an End of Group status datagram
EXTENSIONS = {0x10: 40, 0x11: b"xy"}  # on each group's object 0


def group_objects(group: int, size: int = 0) -> list[tuple]:
    """What the publisher sends of ``group`` and every subscriber must get, in the fields of
    DatagramObjectReceived: (group, object, payload, extensions, status, priority, end_of_group)."""
    out = []
    for object_id in range(OBJECTS):
        payload = f"{group}.{object_id}".encode().ljust(size, b".")
        out.append((group, object_id, payload, EXTENSIONS if object_id == 0 else {}, ObjectStatus.NORMAL,
                    None if object_id == 1 else 5, object_id == OBJECTS - 1))
    out.append((group, OBJECTS, b"", {}, ObjectStatus.END_OF_GROUP, 5, False))
    return out


class DatagramPublisher:
    """A raw publisher of one track whose objects all go as datagrams."""

    def __init__(self, conn) -> None:
        self.conn = conn
        self.alias: int | None = None
        conn.handler = self._on_event

    def _on_event(self, _conn, event) -> None:
        if isinstance(event, ev.SubscribeRequested):
            self.alias = 3
            self.conn.session.subscribe_ok(event.request_id, self.alias)
            self.conn.flush()

    def send(self, *groups: int, size: int = 0) -> None:
        for group in groups:
            for g, object_id, payload, extensions, status, priority, end_of_group in group_objects(group, size):
                result = self.conn.session.send_datagram(self.alias, g, object_id, payload, extensions,
                                                         priority=priority, status=status, end_of_group=end_of_group)
                assert result == "sent", result
        self.conn.flush()


class Viewer(FilterViewer):
    """A raw subscriber session (``subscribed`` as in test_moq_subscribe_filters), of this track."""

    def subscribe(self, **kwargs) -> int:
        rid = self.conn.session.subscribe(NAMESPACE, TRACK, **kwargs)
        self.conn.flush()
        return rid

    def datagrams(self, alias: int) -> list[tuple]:
        return [(e.group, e.object_id, e.payload, e.extensions, e.status, e.priority, e.end_of_group)
                for e in self.events if isinstance(e, ev.DatagramObjectReceived) and e.track_alias == alias]

    def streams(self) -> list:
        """Objects that came on subgroup streams (a datagram object must never)."""
        return [e for e in self.events if isinstance(e, ev.ObjectReceived)]

    async def fetched(self, start, end) -> list[ev.FetchObjectReceived]:
        rid = self.conn.session.fetch(NAMESPACE, TRACK, start, end)
        self.conn.flush()
        await until(lambda: any(isinstance(e, (ev.FetchEnded, ev.RequestFailed)) and e.request_id == rid
                                for e in self.events), what="the FETCH answered to its end")
        ended = next(e for e in self.events if isinstance(e, (ev.FetchEnded, ev.RequestFailed)) and e.request_id == rid)
        assert isinstance(ended, ev.FetchEnded) and ended.code is None, ended
        return [e for e in self.events if isinstance(e, ev.FetchObjectReceived) and e.request_id == rid]


@asynccontextmanager
async def publisher_at(port: int, backend: str):
    async with connect_moq("127.0.0.1", port, insecure=True, backend=backend) as conn:
        await announced(conn, NAMESPACE)
        yield DatagramPublisher(conn)


@asynccontextmanager
async def viewer_at(port: int, backend: str):
    async with connect_moq("127.0.0.1", port, insecure=True, backend=backend) as conn:
        yield Viewer(conn)


def normal(objects: list[tuple]) -> list[tuple]:
    """The Normal objects of ``objects`` as a FETCH carries them: (group, object, payload, extensions)."""
    return [(g, o, p, x) for g, o, p, x, status, _, _ in objects if not status]


@pytest.mark.parametrize("backend", BACKENDS)
async def test_datagram_objects_reach_subscribers_as_datagrams_under_forward_and_filters(tmp_path, backend):
    """Every object of the track reaches an unfiltered subscriber as an OBJECT_DATAGRAM, fields
    unchanged; one with FORWARD=0 gets nothing until its REQUEST_UPDATE sets 1 (then, as any new
    subscriber, from the newest cached group); LargestObject starts at the next group;
    AbsoluteRange {1, 1}..1 gets group 1 from object 1 and then PUBLISH_DONE."""
    async with (serving_relay(tmp_path, backend) as (relay, port), publisher_at(port, backend) as publisher,
                viewer_at(port, backend) as all_of_it, viewer_at(port, backend) as held,
                viewer_at(port, backend) as next_group, viewer_at(port, backend) as ranged):
        _, alias = await all_of_it.subscribed()
        await until(lambda: publisher.alias is not None, what="the relay subscribed upstream")
        held_rid, held_alias = await held.subscribed(forward=False)
        publisher.send(0)
        await until(lambda: len(all_of_it.datagrams(alias)) == len(group_objects(0)), what="group 0")
        assert held.datagrams(held_alias) == []  # FORWARD=0: nothing
        _, next_alias = await next_group.subscribed(filter_type=FILTER_LARGEST_OBJECT)
        range_rid, range_alias = await ranged.subscribed(filter_type=FILTER_ABSOLUTE_RANGE, start=(1, 1), end_group=1)
        held.conn.session.request_update(held_rid, forward=True)
        held.conn.flush()
        await until(lambda: len(held.datagrams(held_alias)) == len(group_objects(0)), what="group 0 once forwarded")
        publisher.send(1, 2)
        every = group_objects(0) + group_objects(1) + group_objects(2)
        await until(lambda: len(all_of_it.datagrams(alias)) == len(every), what="every datagram")
        assert all_of_it.datagrams(alias) == every  # (loopback: in order too)
        await until(lambda: len(held.datagrams(held_alias)) == len(every), what="every datagram, FORWARD=1")
        assert held.datagrams(held_alias) == every
        await until(lambda: len(next_group.datagrams(next_alias)) == 2 * len(group_objects(1)), what="groups 1, 2")
        assert next_group.datagrams(next_alias) == group_objects(1) + group_objects(2)
        await until(lambda: any(isinstance(e, ev.PublishDoneReceived) for e in ranged.events), what="the range ended")
        assert ranged.datagrams(range_alias) == group_objects(1)[1:]
        done = next(e for e in ranged.events if isinstance(e, ev.PublishDoneReceived))
        assert (done.request_id, done.status, done.stream_count) == (range_rid, PublishDoneStatus.SUBSCRIPTION_ENDED, 0)
        for viewer in (all_of_it, held, next_group, ranged):
            assert viewer.streams() == []  # never turned into stream objects
        assert not relay.errors


@pytest.mark.parametrize("backend", BACKENDS)
async def test_datagram_objects_of_a_published_track_are_cached_and_reach_a_later_subscriber(tmp_path, backend):
    """A track PUBLISHed to the relay whose datagrams follow at once (they may come before the
    PUBLISH that names their alias: then held until it is read): cached, so a subscriber that comes
    later gets the newest group from the cache, as datagrams, then the next live."""
    async with (serving_relay(tmp_path, backend) as (relay, port), viewer_at(port, backend) as viewer):
        async with connect_moq("127.0.0.1", port, insecure=True, backend=backend) as conn:
            publisher = DatagramPublisher(conn)
            publisher.alias = 9
            conn.session.publish(NAMESPACE, TRACK, publisher.alias)
            publisher.send(0)
            await until(lambda: (NAMESPACE, TRACK) in relay._tracks
                        and relay._tracks[(NAMESPACE, TRACK)].fanout.cache.largest == (0, OBJECTS - 1),
                        what="group 0 cached at the relay")
            _, alias = await viewer.subscribed()
            publisher.send(1)
            every = group_objects(0) + group_objects(1)
            await until(lambda: len(viewer.datagrams(alias)) == len(every), what="the cached group, then the live one")
            assert viewer.datagrams(alias) == every
            assert viewer.streams() == []


@pytest.mark.parametrize("backend", BACKENDS)
async def test_datagram_objects_cross_a_relay_chain_as_datagrams(tmp_path, backend):
    """publisher -> relay A -> relay B -> subscriber: every object arrives, as a datagram."""
    async with (serving_relay(tmp_path, backend) as (_relay, port_a), relay_below(tmp_path, backend, port_a) as port_b,
                publisher_at(port_a, backend) as publisher, viewer_at(port_b, backend) as viewer):
        _, alias = await viewer.subscribed()
        await until(lambda: publisher.alias is not None, what="the relays subscribed upstream")
        publisher.send(0, 1, 2)
        every = group_objects(0) + group_objects(1) + group_objects(2)
        await until(lambda: len(viewer.datagrams(alias)) == len(every), what="every datagram through two relays")
        assert viewer.datagrams(alias) == every
        assert viewer.streams() == []


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_late_joiners_fetch_gets_the_datagram_objects_flagged_so(tmp_path, backend):
    """Datagram objects are cached: a late joiner's FETCH at the relay gets them on the fetch
    stream, each flagged as a datagram object (draft 16: serialization flag 0x40, no Subgroup ID),
    and so does one at a relay below that passes the FETCH up (End of Group status objects are no
    part of a FETCH)."""
    async with (serving_relay(tmp_path, backend) as (_relay, port_a), relay_below(tmp_path, backend, port_a) as port_b,
                publisher_at(port_a, backend) as publisher, viewer_at(port_a, backend) as viewer):
        _, alias = await viewer.subscribed()
        await until(lambda: publisher.alias is not None, what="the relay subscribed upstream")
        publisher.send(0, 1)
        every = group_objects(0) + group_objects(1)
        await until(lambda: len(viewer.datagrams(alias)) == len(every), what="every datagram live")
        for port in (port_a, port_b):
            async with viewer_at(port, backend) as late:
                got = await late.fetched((0, 0), (1, 0))
                assert [(e.group, e.object_id, e.payload, e.extensions) for e in got] == normal(every)
                assert all(e.datagram for e in got)
                assert [e.priority for e in got] == [5, 128, 5] * 2  # (object 1's: the track's default)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_datagrams_a_subscriber_cannot_take_are_counted_and_said_once(tmp_path, backend, monkeypatch, caplog):
    """A subscriber whose session negotiated no QUIC datagrams gets none (it is said once, and
    each one is counted), and one whose path takes only small datagrams (max_datagram_frame_size
    300) gets the small ones: each larger one is counted, not silently lost. A subscriber that
    takes them gets all."""
    async with serving_relay(tmp_path, backend) as (relay, port), publisher_at(port, backend) as publisher:
        async with viewer_at(port, backend) as full:
            monkeypatch.setattr(transport, "MAX_DATAGRAM_FRAME_SIZE", None)
            async with viewer_at(port, backend) as without:
                monkeypatch.setattr(transport, "MAX_DATAGRAM_FRAME_SIZE", 300)
                async with viewer_at(port, backend) as small:
                    _, alias = await full.subscribed()
                    await until(lambda: publisher.alias is not None, what="the relay subscribed upstream")
                    _, without_alias = await without.subscribed()
                    _, small_alias = await small.subscribed()
                    with caplog.at_level("WARNING", logger="rtmpq.moq"):
                        publisher.send(0, 1, size=600)
                        publisher.send(2)
                        every = group_objects(0, 600) + group_objects(1, 600) + group_objects(2)
                        await until(lambda: len(full.datagrams(alias)) == len(every), what="every datagram")
                        fits = [o for o in every if len(o[2]) < 300]
                        await until(lambda: len(small.datagrams(small_alias)) == len(fits), what="the small ones")
                        await asyncio.sleep(0)
                    assert full.datagrams(alias) == every
                    assert small.datagrams(small_alias) == fits
                    assert without.datagrams(without_alias) == []
                    assert relay.errors["datagram_unsupported"] == len(every)
                    assert relay.errors["datagram_too_big"] == len(every) - len(fits)
                    # the largest datagram a session says it can send goes through (1158 bytes on
                    # aioquic, 1200 on aiopquic); one byte more is refused before QUIC sees it
                    session = publisher.conn.session
                    room = session.datagram_room()
                    largest = b"z" * (room - len(wire.encode_object_datagram(publisher.alias, 3, 0, b"")))
                    assert session.send_datagram(publisher.alias, 3, 0, largest) == "sent"
                    assert session.send_datagram(publisher.alias, 3, 1, largest + b"z") == "too_big"
                    publisher.conn.flush()
                    await until(lambda: (3, 0, largest) in [d[:3] for d in full.datagrams(alias)],
                                what="the largest datagram")
                    said = [r.getMessage() for r in caplog.records if "sent as datagrams" in r.getMessage()]
                    assert len(said) == 2, said  # once per session and reason
                    assert any("did not negotiate" in m for m in said) and any("larger than" in m for m in said)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_aiomoqt_subscriber_reads_the_datagrams_the_relay_forwards(tmp_path, backend):
    """A third-party subscriber (aiomoqt) at the relay gets every object as a datagram (its
    callback is given no subgroup for one) with its payload and extensions."""
    from aiomoqt.client import MOQTClient
    from aiomoqt.track import SubscribedTrack
    from aiomoqt.types import GroupOrder

    got = []

    def on_object(msg, _size, _ts, group_id, subgroup_id) -> None:
        got.append((group_id, msg.object_id, int(getattr(msg, "status", 0) or 0), bytes(msg.payload or b""),
                    dict(msg.extensions or {}), subgroup_id))

    async with serving_relay(tmp_path, backend) as (_relay, port), publisher_at(port, backend) as publisher:
        client = MOQTClient("127.0.0.1", port, path="", use_quic=True, verify_tls=False)
        async with client.connect() as session:
            await session.client_session_init()
            track = SubscribedTrack(session, "/".join(NAMESPACE), TRACK, on_object=on_object)
            await track.subscribe(forward=None, group_order=GroupOrder.ASCENDING, filter_type=None)
            await until(lambda: publisher.alias is not None, what="the relay subscribed upstream")
            publisher.send(0, 1)
            every = group_objects(0) + group_objects(1)
            await until(lambda: len(got) == len(every), what="every datagram at aiomoqt")
            session.close()
    assert got == [(g, o, s, p, x, None) for g, o, p, x, s, _, _ in every]


def test_datagrams_queued_on_an_aioquic_connection_are_bounded():
    """aioquic queues datagrams without bound while its congestion window is shut; the relay's
    writer takes DATAGRAM_QUEUE_BYTES at most and refuses the rest (each refusal is counted as
    datagram_queue_full by the relay), so a subscriber that cannot keep up holds bounded memory.
    (aiopquic's queue is its datagram ring, of the same size.)"""
    from aioquic.quic.connection import QuicConnection

    writer = transport._AioquicWriter(QuicConnection(configuration=transport.aioquic_configuration(is_client=True)))
    assert writer.datagram_room() == 0  # no handshake: the peer took none yet
    taken = 0
    while writer.send_datagram_frame(b"d" * 1000):
        taken += 1
    assert taken == transport.DATAGRAM_QUEUE_BYTES // 1000
    assert sum(map(len, writer.quic._datagrams_pending)) <= transport.DATAGRAM_QUEUE_BYTES
