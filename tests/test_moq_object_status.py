"""Object Status (draft 16): a publisher may end a group with an End of Group (0x3) object, a track
with an End of Track (0x4) object, both empty and never Normal. Found by a review against draft 16:
rtmpq parsed the status and then ignored it, so its subscriber took such an object on the catalog
track for an empty catalog (and failed on it) and for an empty frame on a media track, and its
relay passed it on as an empty Normal object. The client ended a track at its End of Track object
even while an older group of it was still on its way. Then the relay swallowed status objects (it
ended the stream and the track, but passed no End of Group / End of Track object on), which draft
16 does not allow a relay: found deploying a relay chain with a third-party subscriber below."""

import asyncio
import contextlib

import pytest

from rtmpq.media.catalog import Catalog, TrackInfo
from rtmpq.media.frames import Frame
from rtmpq.moq import client as client_module
from rtmpq.moq import events as ev
from rtmpq.moq import wire
from rtmpq.moq.loc import CATALOG_TRACK
from rtmpq.moq.transport import connect_moq
from rtmpq.moq.wire import ObjectStatus, PublishDoneStatus

from .conftest import relay_below, serving_relay, subscribe_to_raw_publisher

BACKENDS = ["aioquic", "aiopquic"]
VIDEO = TrackInfo(name="video", kind="video", codec="avc1.64001f", init_data=b"\x01", alt_group=1)
AUDIO = TrackInfo(name="audio", kind="audio", codec="mp4a.40.2", init_data=b"\x12\x10")
CATALOG = Catalog("live/x", (VIDEO, AUDIO))
FRAMES_PER_GROUP = 3


def send_group(session, alias: int, group: int, payloads: list[bytes], status: int, *, fin: bool = True) -> None:
    """One group on its own stream: its objects, then an empty object of ``status`` (written raw,
    as rtmpq never sends one), then FIN unless ``fin`` is False."""
    sid = session.open_subgroup(alias, group)
    for object_id, payload in enumerate(payloads):
        session.send_object(sid, object_id, payload)
    # the status object's ID follows the last one's: delta = object_id - last_object_id - 1 = 0
    session.quic.send_stream_data(sid, wire.encode_object(0, b"", None, with_extensions=True, status=status))
    if fin:
        session.end_subgroup(sid)


def media(track: str, group: int) -> list[bytes]:
    return [f"{track} {group}.{i}".encode() for i in range(FRAMES_PER_GROUP)]


def answer_subscribes(conn, answer) -> None:
    """``conn`` accepts each SUBSCRIBE, then ``answer(event, alias)`` sends what it sends."""
    aliases = iter(range(100))

    def on_event(_conn, event) -> None:
        if not isinstance(event, ev.SubscribeRequested):
            return
        alias = next(aliases)
        conn.session.subscribe_ok(event.request_id, alias)
        answer(event, alias)
        conn.flush()

    conn.handler = on_event


def publisher(conn, ending: str, *, fin: bool = True) -> None:
    """Answers each SUBSCRIBE with its groups, each ended by an End of Group object: the catalog
    (one group), video (two groups), audio (one group), then PUBLISH_DONE. With ``ending`` =
    "end_of_track": one group per track, ended by an End of Track object instead, and no
    PUBLISH_DONE (nothing but that object says the track is over)."""
    session = conn.session

    def answer(event, alias: int) -> None:
        name = event.track_name
        if name == CATALOG_TRACK:
            groups = [[CATALOG.to_json()]]
        else:
            groups = [media(name, g) for g in range(2 if name == "video" and ending == "publish_done" else 1)]
        for group, payloads in enumerate(groups):
            last = group == len(groups) - 1
            status = ObjectStatus.END_OF_TRACK if last and ending == "end_of_track" else ObjectStatus.END_OF_GROUP
            send_group(session, alias, group, payloads, status, fin=fin)
        if ending == "publish_done":
            session.publish_done(event.request_id, PublishDoneStatus.TRACK_ENDED, len(groups))

    answer_subscribes(conn, answer)


@pytest.mark.parametrize("ending", ["publish_done", "end_of_track"])
@pytest.mark.parametrize("backend", BACKENDS)
async def test_status_objects_are_neither_catalogs_nor_frames(tmp_path, backend, ending):
    """subscribe_broadcast yields the catalog and exactly the real frames; a track ended by an End
    of Track object no longer holds the subscription open."""
    got = await subscribe_to_raw_publisher(tmp_path, lambda conn: publisher(conn, ending), backend=backend)
    catalogs = [i for i in got if isinstance(i, Catalog)]
    assert [[t.name for t in c.tracks] for c in catalogs] == [["video", "audio"]]
    frames = sorted(bytes(f.payload) for f in got if not isinstance(f, Catalog))
    video_groups = 2 if ending == "publish_done" else 1
    assert frames == sorted([p for g in range(video_groups) for p in media("video", g)] + media("audio", 0))


async def _events_until(queue: asyncio.Queue, done) -> list:
    got = []
    async with asyncio.timeout(15):
        while not done(got):
            event = await queue.get()
            if isinstance(event, ev.SessionClosed):
                raise AssertionError(f"session closed: {event}")
            got.append(event)
    return got


def answer_with_status_objects(pub, catalog_status: int, video_status: int, subscribed: list) -> None:
    """``pub`` answers each SUBSCRIBE (track names go to ``subscribed``): the catalog, one group
    ended by ``catalog_status``; video, two groups, the second ended by ``video_status``; every
    stream left open."""
    def answer(event, alias: int) -> None:
        subscribed.append(event.track_name)
        if event.track_name == CATALOG_TRACK:
            send_group(pub.session, alias, 0, [CATALOG.to_json()], catalog_status, fin=False)
        else:
            send_group(pub.session, alias, 0, media("video", 0), ObjectStatus.END_OF_GROUP, fin=False)
            send_group(pub.session, alias, 1, media("video", 1), video_status, fin=False)

    answer_subscribes(pub, answer)


def subscribe_catalog_and_video(viewer) -> tuple[asyncio.Queue, int, int]:
    """The viewer's events go to the queue returned, with its catalog and video request ids."""
    vq: asyncio.Queue = asyncio.Queue()
    viewer.handler = lambda _c, e: vq.put_nowait(e)
    catalog_rid = viewer.session.subscribe(("live", "x"), CATALOG_TRACK)
    video_rid = viewer.session.subscribe(("live", "x"), "video")
    viewer.flush()
    return vq, catalog_rid, video_rid


async def ended_by_end_of_track(pub, viewer) -> tuple[list, int, int]:
    """``pub`` announces live/x and answers each SUBSCRIBE with its groups, each track ended by an
    End of Track object (no PUBLISH_DONE, streams left open); ``viewer`` subscribes to the catalog
    and video: its events until PUBLISH_DONE for both and every stream they count has ended, with
    its catalog and video request ids."""
    pq: asyncio.Queue = asyncio.Queue()
    pub.handler = lambda _c, e: pq.put_nowait(e)
    pub.session.publish_namespace(("live", "x"))
    pub.flush()
    await _events_until(pq, lambda got: any(isinstance(e, ev.RequestAccepted) for e in got))
    answer_with_status_objects(pub, ObjectStatus.END_OF_TRACK, ObjectStatus.END_OF_TRACK, [])
    vq, catalog_rid, video_rid = subscribe_catalog_and_video(viewer)

    def both_done(got) -> bool:
        # PUBLISH_DONE can overtake the streams it counts: those end too (FIN or reset)
        done = {e.request_id: e.stream_count for e in got if isinstance(e, ev.PublishDoneReceived)}
        streams = len([e for e in got if isinstance(e, (ev.SubgroupEnded, ev.SubgroupReset))])
        return done.keys() == {catalog_rid, video_rid} and streams >= sum(done.values())

    return await _events_until(vq, both_done), catalog_rid, video_rid


@pytest.mark.parametrize("status", [ObjectStatus.END_OF_GROUP, ObjectStatus.END_OF_TRACK])
@pytest.mark.parametrize("backend", BACKENDS)
async def test_the_relay_ends_the_group_and_passes_on_the_status_object(tmp_path, backend, status):
    """A remote publisher (PUBLISH_NAMESPACE; the relay subscribes upstream) ends each group with a
    status object and keeps the group's stream open: the relay's subscriber gets the real objects,
    each status object as it came (empty, never an empty Normal one: draft 16 forwards every object
    with its status), and each group's end (its stream's FIN), which only the status object said."""
    async with serving_relay(tmp_path, backend) as (relay, port):
        async with (connect_moq("127.0.0.1", port, insecure=True, backend=backend) as pub,
                    connect_moq("127.0.0.1", port, insecure=True, backend=backend) as viewer):
            pq: asyncio.Queue = asyncio.Queue()
            pub.handler = lambda _c, e: pq.put_nowait(e)
            announced = pub.session.publish_namespace(("live", "x"))
            pub.flush()
            answer = await _events_until(pq, lambda got: any(isinstance(e, ev.RequestAccepted) for e in got))
            assert answer[-1].request_id == announced
            subscribed: list = []
            answer_with_status_objects(pub, ObjectStatus.END_OF_GROUP, status, subscribed)
            vq, catalog_rid, video_rid = subscribe_catalog_and_video(viewer)

            def all_ended(got) -> bool:
                return len([e for e in got if isinstance(e, ev.SubgroupEnded)]) >= 3

            # every object the relay writes on a group's stream comes before that stream's FIN, so
            # once all three ended, every object passed on is among the events already here
            got = await _events_until(vq, all_ended)
            while not vq.empty():
                got.append(vq.get_nowait())
    assert sorted(subscribed) == [CATALOG_TRACK, "video"]
    accepted = {e.request_id: e.track_alias for e in got if isinstance(e, ev.SubscribeAccepted)}
    track = {accepted[catalog_rid]: CATALOG_TRACK, accepted[video_rid]: "video"}
    received = [e for e in got if isinstance(e, ev.ObjectReceived)]
    assert sorted((track[e.track_alias], e.group, e.object_id, e.status) for e in received if e.status) == [
        (CATALOG_TRACK, 0, 1, ObjectStatus.END_OF_GROUP), ("video", 0, FRAMES_PER_GROUP, ObjectStatus.END_OF_GROUP),
        ("video", 1, FRAMES_PER_GROUP, status)]
    objects = [e for e in received if not e.status]
    assert all(len(e.payload) for e in objects)  # no empty Normal object
    assert [bytes(e.payload) for e in objects if track[e.track_alias] == CATALOG_TRACK] == [CATALOG.to_json()]
    assert sorted(bytes(e.payload) for e in objects if track[e.track_alias] == "video") == sorted(
        media("video", 0) + media("video", 1))
    ended = sorted((track[e.track_alias], e.group) for e in got if isinstance(e, ev.SubgroupEnded))
    catalog_groups = sorted({e.group for e in objects if track[e.track_alias] == CATALOG_TRACK})
    video_groups = sorted({e.group for e in objects if track[e.track_alias] == "video"})
    assert ended == sorted([(CATALOG_TRACK, g) for g in catalog_groups] + [("video", g) for g in video_groups])
    assert len(video_groups) == 2


@pytest.mark.parametrize("backend", BACKENDS)
async def test_end_of_track_ends_the_relayed_track_without_publish_done(tmp_path, backend, monkeypatch):
    """A remote publisher ends each track with an End of Track object, sends no PUBLISH_DONE and
    keeps its session and streams open: the relay's subscriber gets every object, the End of Track
    objects, and then PUBLISH_DONE (TRACK_ENDED) for each track, the late-stream grace after the
    End of Track (which says nothing of older groups still on their way: the relay used to end the
    track once the groups it had seen ended, and lost an older group that came after the newer)."""
    from rtmpq.moq import relay as relay_module
    monkeypatch.setattr(relay_module, "LATE_STREAM_GRACE", 0.5)
    async with serving_relay(tmp_path, backend) as (relay, port):
        async with (connect_moq("127.0.0.1", port, insecure=True, backend=backend) as pub,
                    connect_moq("127.0.0.1", port, insecure=True, backend=backend) as viewer):
            got, catalog_rid, video_rid = await ended_by_end_of_track(pub, viewer)
    done = {e.request_id: e.status for e in got if isinstance(e, ev.PublishDoneReceived)}
    assert done == {catalog_rid: PublishDoneStatus.TRACK_ENDED, video_rid: PublishDoneStatus.TRACK_ENDED}
    accepted = {e.request_id: e.track_alias for e in got if isinstance(e, ev.SubscribeAccepted)}
    ends = [(e.track_alias, e.group) for e in got if isinstance(e, ev.ObjectReceived)
            and e.status == ObjectStatus.END_OF_TRACK]
    assert sorted(ends) == sorted([(accepted[catalog_rid], 0), (accepted[video_rid], 1)])
    objects = [e for e in got if isinstance(e, ev.ObjectReceived) and e.status == ObjectStatus.NORMAL]
    assert [bytes(e.payload) for e in objects if e.track_alias == accepted[catalog_rid]] == [CATALOG.to_json()]
    assert sorted(bytes(e.payload) for e in objects if e.track_alias == accepted[video_rid]) == sorted(
        media("video", 0) + media("video", 1))


GROUP = 5  # video's last group; its End of Track comes on group GROUP + 1's stream


class TailAfterEndOfTrack:
    """A publisher of live/x: the catalog (video alone) ended by End of Track on its own stream;
    video: the first two frames of group GROUP on a stream left open. ``end_of_track()`` then
    sends End of Track alone on group GROUP + 1's stream (FIN, or left open); ``finish()`` the
    rest of group GROUP and its FIN. Never a PUBLISH_DONE; the session stays open."""

    def __init__(self) -> None:
        self.video = None  # (connection, alias, group GROUP's stream) once video is subscribed

    def on_connection(self, conn) -> None:
        session = conn.session

        def answer(event, alias: int) -> None:
            if event.track_name == CATALOG_TRACK:
                send_group(session, alias, 0, [Catalog("live/x", (VIDEO,)).to_json()], ObjectStatus.END_OF_TRACK)
            else:
                sid = session.open_subgroup(alias, GROUP)
                for object_id, payload in enumerate(media("video", GROUP)[:2]):
                    session.send_object(sid, object_id, payload)
                self.video = (conn, alias, sid)

        answer_subscribes(conn, answer)

    def end_of_track(self, *, fin: bool = True) -> None:
        conn, alias, _ = self.video
        send_group(conn.session, alias, GROUP + 1, [], ObjectStatus.END_OF_TRACK, fin=fin)
        conn.flush()

    def finish(self) -> None:
        conn, _, sid = self.video
        for object_id, payload in enumerate(media("video", GROUP)[2:], start=2):
            conn.session.send_object(sid, object_id, payload)
        conn.session.end_subgroup(sid)
        conn.flush()


def frames(got: list) -> list[bytes]:
    return [bytes(f.payload) for f in got if isinstance(f, Frame)]


@pytest.mark.parametrize("backend", BACKENDS)
async def test_end_of_track_waits_for_an_older_group_still_on_its_way(tmp_path, backend, monkeypatch):
    """Video's group 5 is on its way (its stream open) when End of Track comes on group 6's stream,
    and the rest of group 5 only after that: the client gets all of group 5, and the track ends with
    group 5's FIN (the grace is made too long to be what ends it here). Before, the client stopped
    at End of Track, video being its last open track, and dropped the rest of group 5."""
    monkeypatch.setattr(client_module, "LATE_STREAM_GRACE", 60.0)
    pub = TailAfterEndOfTrack()
    loop = asyncio.get_running_loop()

    def each(item) -> None:  # the client has read group 5's first frames: End of Track now
        if isinstance(item, Frame) and item.index == 1:
            pub.end_of_track()

    def seen(event) -> None:  # End of Track is handed to the client: the rest of group 5 comes behind it
        if isinstance(event, ev.ObjectReceived) and event.status == ObjectStatus.END_OF_TRACK and event.group == GROUP + 1:
            loop.call_soon(pub.finish)

    got = await subscribe_to_raw_publisher(tmp_path, pub.on_connection, backend=backend, deadline=10, each=each,
                                           seen=seen)
    assert frames(got) == media("video", GROUP)


async def test_end_of_track_with_nothing_older_open_ends_the_track_at_once(tmp_path, monkeypatch):
    """Group 5 whole, then End of Track on group 6's stream, left open: the subscription ends at
    once (the grace is made longer than the test's deadline)."""
    monkeypatch.setattr(client_module, "LATE_STREAM_GRACE", 60.0)
    pub = TailAfterEndOfTrack()

    def each(item) -> None:
        if isinstance(item, Frame) and item.index == 1:
            pub.finish()
            pub.end_of_track(fin=False)

    got = await subscribe_to_raw_publisher(tmp_path, pub.on_connection, deadline=10, each=each)
    assert frames(got) == media("video", GROUP)


async def test_end_of_track_waits_for_an_older_group_no_longer_than_the_grace(tmp_path, monkeypatch):
    """Group 5's stream never ends: the track ends LATE_STREAM_GRACE after its End of Track, with
    what came of group 5, instead of holding the subscription open."""
    monkeypatch.setattr(client_module, "LATE_STREAM_GRACE", 0.5)
    pub = TailAfterEndOfTrack()

    def each(item) -> None:
        if isinstance(item, Frame) and item.index == 1:
            pub.end_of_track()

    got = await subscribe_to_raw_publisher(tmp_path, pub.on_connection, deadline=10, each=each)
    assert frames(got) == media("video", GROUP)[:2]


def test_end_of_track_waits_for_the_streams_before_its_location_alone():
    """EndOfTrack alone (time as an argument): streams of older groups, and other subgroups of its
    own group, are waited for; its own stream, newer groups and other tracks are not."""
    ends = client_module.EndOfTrack()
    ends.begun("video", 4, 0)
    ends.begun("video", 6, 1)  # another subgroup of the End of Track's group
    ends.begun("video", 6, 0)  # its own stream
    ends.begun("audio", 3, 0)
    assert not ends.end_of_track("video", 6, 0, now=10.0)
    assert not ends.stream_ended("video", 4, 0)
    assert ends.overdue(10.0) == []
    assert ends.stream_ended("video", 6, 1)  # over: only its own stream and other tracks are open
    assert not ends.stream_ended("video", 6, 0)  # said once
    ends.begun("video", 2, 0)
    assert not ends.end_of_track("video", 3, 0, now=20.0)
    assert ends.overdue(20.0 + client_module.LATE_STREAM_GRACE) == ["video"]
    assert not ends.end_of_track("audio", 4, 1, now=30.0)  # audio's group 3 is still open
    assert ends.stream_ended("audio", 3, 0)


@pytest.mark.parametrize("relays", [1, 2])
@pytest.mark.parametrize("backend", BACKENDS)
async def test_status_objects_are_forwarded_through_a_relay_chain(tmp_path, backend, relays, monkeypatch):
    """Draft 16 ("Object Status", "Relay Object Handling"): End of Group and End of Track are
    Objects; a relay forwards every Object of a track to its subscribers (never dropping one off a
    stream) with its properties unchanged, Object Status among them. A remote publisher ends each
    group with End of Group and each track with End of Track (no PUBLISH_DONE, streams left
    open): a subscriber one or two relays below gets each status object where the publisher put
    it, as a status object (never an empty Normal one), every object before them, and PUBLISH_DONE
    (TRACK_ENDED). Before, the relay swallowed them: a subscriber below learned of the end only
    from PUBLISH_DONE, never the End of Track location, and of no End of Group at all."""
    from rtmpq.moq import relay as relay_module
    monkeypatch.setattr(relay_module, "LATE_STREAM_GRACE", 0.5)  # no PUBLISH_DONE comes from the publisher
    async with serving_relay(tmp_path, backend) as (_relay, port_a):
        async with contextlib.AsyncExitStack() as stack:
            port = port_a if relays == 1 else await stack.enter_async_context(relay_below(tmp_path, backend, port_a))
            pub = await stack.enter_async_context(connect_moq("127.0.0.1", port_a, insecure=True, backend=backend))
            viewer = await stack.enter_async_context(connect_moq("127.0.0.1", port, insecure=True, backend=backend))
            got, catalog_rid, video_rid = await ended_by_end_of_track(pub, viewer)
    done = {e.request_id: e.status for e in got if isinstance(e, ev.PublishDoneReceived)}
    assert done == {catalog_rid: PublishDoneStatus.TRACK_ENDED, video_rid: PublishDoneStatus.TRACK_ENDED}
    accepted = {e.request_id: e.track_alias for e in got if isinstance(e, ev.SubscribeAccepted)}
    track = {accepted[catalog_rid]: CATALOG_TRACK, accepted[video_rid]: "video"}
    objects = [e for e in got if isinstance(e, ev.ObjectReceived)]
    status = sorted((track[e.track_alias], e.group, e.object_id, e.status) for e in objects if e.status)
    assert status == [(CATALOG_TRACK, 0, 1, ObjectStatus.END_OF_TRACK),
                      ("video", 0, FRAMES_PER_GROUP, ObjectStatus.END_OF_GROUP),
                      ("video", 1, FRAMES_PER_GROUP, ObjectStatus.END_OF_TRACK)]
    assert all(not len(e.payload) and not e.extensions for e in objects if e.status)
    normal = [e for e in objects if e.status == ObjectStatus.NORMAL]
    assert all(len(e.payload) for e in normal)  # no status object became an empty Normal one
    assert sorted(bytes(e.payload) for e in normal if track[e.track_alias] == "video") == sorted(
        media("video", 0) + media("video", 1))
    # each status object is the last thing on its stream, before its FIN
    for e in objects:
        if e.status:
            later = [o for o in objects[objects.index(e) + 1:]
                     if o.track_alias == e.track_alias and o.group == e.group and o.subgroup == e.subgroup]
            assert later == [], (track[e.track_alias], e.group)
