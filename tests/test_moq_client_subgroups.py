"""subscribe_broadcast and a group sent in several subgroups (MoQT d16, "Subgroups"): each
subgroup on its own stream, their objects interleaved (object i in subgroup i % 3, as temporal
layers are). The client handed frames on as their streams delivered them, so a group whose
subgroup 0 came first went out as 0, 3, 6, 1, 4, ... (the edge's packager takes a track's frames
in decode order), and a reset of one subgroup was reported as the whole group skipped while the
other subgroups' frames were handed on. Last, an LL-HLS edge fed by such a
publisher over MoQ."""

import asyncio
import json
import socket
import sys

import pytest

from rtmpq.config import HttpConfig
from rtmpq.edge.server import EdgeServer
from rtmpq.media.catalog import Catalog, TrackInfo
from rtmpq.media.frames import Frame
from rtmpq.moq import events as ev
from rtmpq.moq.client import SkippedGroup, subscribe_broadcast
from rtmpq.moq.loc import CATALOG_TRACK, frame_extensions
from rtmpq.moq.tls import ensure_self_signed
from rtmpq.moq.transport import connect_moq, serve_moq
from rtmpq.moq.wire import PublishDoneStatus, StreamResetCode
from rtmpq.nodes.remote import moq_broadcast_source

from .conftest import announced, free_port, http_get, need, serving_relay, start_up_node, subscribe_to_raw_publisher
from .publishers import VIDEO_ENCODE, collect_broadcast, run_process
from .test_moq_object_status import answer_subscribes

BACKENDS = ["aioquic", "aiopquic"]
VIDEO = TrackInfo(name="video", kind="video", codec="avc1.64001f", init_data=b"\x01")
SUBGROUPS = 3
OBJECTS = 9  # per group: object i is in subgroup i % SUBGROUPS


def ids(subgroup: int) -> list[int]:
    return list(range(subgroup, OBJECTS, SUBGROUPS))


def send_catalog(session, event, alias: int, *tracks: TrackInfo) -> None:
    """Answer a SUBSCRIBE to the catalog: live/x listing ``tracks``, one group, then PUBLISH_DONE."""
    sid = session.open_subgroup(alias, 0)
    session.send_object(sid, 0, Catalog("live/x", tracks).to_json())
    session.end_subgroup(sid)
    session.publish_done(event.request_id, PublishDoneStatus.TRACK_ENDED, 1)


class LayeredPublisher:
    """Serves live/x: a catalog of one video track, and video groups in SUBGROUPS interleaved
    subgroups, each subgroup's stream written whole (objects, then FIN) before the next one's."""

    def __init__(self) -> None:
        self.video = None  # (connection, alias, request id) once video is subscribed
        self.on_video = lambda: None

    def on_connection(self, conn) -> None:
        def answer(event, alias: int) -> None:
            if event.track_name == CATALOG_TRACK:
                send_catalog(conn.session, event, alias, VIDEO)
            else:
                self.video = (conn, alias, event.request_id)
                self.on_video()

        answer_subscribes(conn, answer)

    def subgroup(self, group: int, subgroup: int, *, reset: bool = False) -> None:
        conn, alias, _ = self.video
        sid = conn.session.open_subgroup(alias, group, subgroup=subgroup, end_of_group=subgroup == SUBGROUPS - 1)
        if reset:  # a header alone, reset (the transport holds the reset until the header is acknowledged)
            conn.session.reset_subgroup(sid, StreamResetCode.DELIVERY_TIMEOUT)
        else:
            for object_id in ids(subgroup):
                conn.session.send_object(sid, object_id, f"video {group}.{object_id}".encode())
            conn.session.end_subgroup(sid)
        conn.flush()

    def done(self, streams: int) -> None:
        conn, _, rid = self.video
        conn.session.publish_done(rid, PublishDoneStatus.TRACK_ENDED, streams)
        conn.flush()


def frames(got: list) -> list[tuple[int, int]]:
    return [(f.group, f.index) for f in got if isinstance(f, Frame)]


def in_turn(pub: LayeredPublisher, groups: range, streams: int):
    """A ``seen`` hook that sends ``groups`` subgroup by subgroup, each after the client is handed
    the one before: once it has a group's subgroup 0 whole, that group's other subgroups; once it
    has the group's last object, the next group's subgroup 0; after the last, PUBLISH_DONE
    counting ``streams`` (every stream the publisher opened for the subscription)."""
    loop = asyncio.get_running_loop()

    def seen(event) -> None:
        if not isinstance(event, ev.ObjectReceived) or event.group not in groups:
            return
        if event.object_id == ids(0)[-1]:
            loop.call_soon(lambda: [pub.subgroup(event.group, s) for s in range(1, SUBGROUPS)])
        elif event.object_id == OBJECTS - 1 and event.group + 1 in groups:
            loop.call_soon(pub.subgroup, event.group + 1, 0)  # (a newer group lets an older one's frames held go)
        elif event.object_id == OBJECTS - 1:
            loop.call_soon(pub.done, streams)

    return seen


def rest_after_first_subgroup(pub: LayeredPublisher):
    """Groups 0 and 1 in turn (``in_turn``), group 0's subgroup 0 when video is subscribed."""
    pub.on_video = lambda: pub.subgroup(0, 0)
    return in_turn(pub, range(2), 2 * SUBGROUPS)


async def subscribed(conn, seen, **options) -> list:
    """What subscribe_broadcast yields for live/x on ``conn`` until it ends; ``seen(event)`` on each
    of the session's events as subscribe_broadcast is handed it."""
    handle_event = conn.session.handle_event
    conn.session.handle_event = lambda event: [seen(e) or e for e in handle_event(event)]
    got = []
    async with asyncio.timeout(15):
        async for item in subscribe_broadcast(conn, "live/x", **options):
            got.append(item)
    return got


WHOLE = [(g, o) for g in range(2) for o in range(OBJECTS)]


@pytest.mark.parametrize("in_order", [False, True])
@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_group_in_interleaved_subgroups_is_handed_on_whole_in_object_order(tmp_path, backend, in_order):
    """Subgroup 0 (objects 0, 3, 6) arrives whole before subgroups 1 and 2 begin: every object of
    every subgroup is handed on, each group in Object ID order, and the track ends when the six
    streams PUBLISH_DONE counts have ended; with ``in_order`` too (no subgroup's frames taken for
    late, no group reported skipped)."""
    pub = LayeredPublisher()
    got = await subscribe_to_raw_publisher(tmp_path, pub.on_connection, backend=backend, deadline=10,
                                           seen=rest_after_first_subgroup(pub), in_order=in_order)
    assert frames(got) == WHOLE
    assert not [s for s in got if isinstance(s, SkippedGroup)]


@pytest.mark.parametrize("backend", BACKENDS)
async def test_through_the_relay_a_group_in_interleaved_subgroups_is_handed_on_in_object_order(tmp_path, backend):
    """The same publisher announced to an rtmpq relay, subscribe_broadcast on the relay: every
    object, each group in Object ID order, and the end at the relay's PUBLISH_DONE."""
    pub = LayeredPublisher()
    async with serving_relay(tmp_path, backend) as (relay, port):
        async with (connect_moq("127.0.0.1", port, insecure=True, backend=backend) as pub_conn,
                    connect_moq("127.0.0.1", port, insecure=True, backend=backend) as conn):
            await announced(pub_conn)
            pub.on_connection(pub_conn)
            got = await subscribed(conn, rest_after_first_subgroup(pub))
    assert frames(got) == WHOLE
    assert not [s for s in got if isinstance(s, SkippedGroup)]


@pytest.mark.parametrize("backend", BACKENDS)
async def test_the_window_fill_then_live_groups_in_interleaved_subgroups_in_object_order(tmp_path, backend):
    """Groups 0 and 1 cached at the relay (a first viewer made it subscribe upstream), then a
    subscribe_broadcast with fill_groups=2: the joining FETCH's groups, then live group 2 sent
    subgroup by subgroup, every frame once and in (group, Object ID) order."""
    pub = LayeredPublisher()

    def cached() -> None:
        for group in range(2):
            for subgroup in range(SUBGROUPS):
                pub.subgroup(group, subgroup)

    pub.on_video = cached
    async with serving_relay(tmp_path, backend) as (relay, port):
        async with (connect_moq("127.0.0.1", port, insecure=True, backend=backend) as pub_conn,
                    connect_moq("127.0.0.1", port, insecure=True, backend=backend) as first,
                    connect_moq("127.0.0.1", port, insecure=True, backend=backend) as conn):
            await announced(pub_conn)
            pub.on_connection(pub_conn)
            first_events: list = []
            first.handler = lambda _c, e: first_events.append(e)
            first.session.subscribe(("live", "x"), "video")
            first.flush()
            async with asyncio.timeout(10):
                while len([e for e in first_events if isinstance(e, ev.SubgroupEnded)]) < 2 * SUBGROUPS:
                    await asyncio.sleep(0.02)
            seen = in_turn(pub, range(2, 3), 3 * SUBGROUPS)

            def watch(event) -> None:
                if isinstance(event, ev.FetchObjectReceived) and (event.group, event.object_id) == (1, OBJECTS - 1):
                    # the fill has come: group 2 goes live
                    asyncio.get_running_loop().call_soon(pub.subgroup, 2, 0)
                seen(event)

            got = await subscribed(conn, watch, fill_groups=2)
    assert frames(got) == [(g, o) for g in range(3) for o in range(OBJECTS)]
    assert not [s for s in got if isinstance(s, SkippedGroup)]


def subgroup_1_reset() -> LayeredPublisher:
    """A publisher of group 0 alone: subgroups 0 and 2 whole, subgroup 1 reset, then PUBLISH_DONE."""
    pub = LayeredPublisher()

    def send() -> None:
        pub.subgroup(0, 0)
        pub.subgroup(0, 2)
        pub.subgroup(0, 1, reset=True)
        pub.done(SUBGROUPS)

    pub.on_video = send
    return pub


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_reset_of_one_subgroup_skips_that_subgroup_alone(tmp_path, backend):
    """Subgroups 0 and 2 of group 0 whole, subgroup 1 reset: their frames are handed on in Object
    ID order, and the skip reported names subgroup 1 (the group's other frames came), once."""
    pub = subgroup_1_reset()
    got = await subscribe_to_raw_publisher(tmp_path, pub.on_connection, backend=backend, deadline=10)
    skips = [(s.track, s.group, s.code, getattr(s, "subgroup", None)) for s in got if isinstance(s, SkippedGroup)]
    assert skips == [("video", 0, StreamResetCode.DELIVERY_TIMEOUT, 1)]  # main: (..., None), the whole group
    assert frames(got) == [(0, o) for o in sorted(ids(0) + ids(2))]


def video(group: int, index: int) -> Frame:
    return Frame("video", group, index, index, index, index == 0, b"", 0)


def test_a_gap_no_subgroup_fills_is_let_go_after_the_reorder_wait():
    """SubgroupOrder alone (time as an argument): a frame after a gap in Object IDs waits for the
    gap to fill, at most REORDER_WAIT; a group on one subgroup with no gap goes on at once."""
    from rtmpq.moq.subgroup_order import REORDER_WAIT, SubgroupOrder

    order = SubgroupOrder()
    assert order.frame(video(0, 0), 0, now=1.0) == [video(0, 0)]
    assert order.frame(video(0, 1), 0, now=1.0) == [video(0, 1)]
    assert order.frame(video(0, 3), 0, now=1.0) == []  # object 2 may be on another subgroup
    assert order.frame(video(0, 5), 0, now=1.1) == []
    assert order.due(1.0 + REORDER_WAIT - 0.01) == []
    assert order.due(1.0 + REORDER_WAIT) == [video(0, 3), video(0, 5)]
    assert order.frame(video(0, 2), 1, now=2.0) == [video(0, 2)]  # too late for order: handed on still
    assert order.frame(video(0, 7), 0, now=2.0) == []
    assert order.frame(video(1, 0), 0, now=2.1) == [video(0, 7), video(1, 0)]  # a newer group: no more waiting
    assert order.next_due is None
    assert order.frame(video(1, 2), 2, now=2.2) == []
    assert order.reset("video", 1) == [video(1, 2)]  # a subgroup reset: its objects are what the gap waits for
    # the publisher says objects 4 and 5 do not exist (Prior Object ID Gap): no waiting for them
    assert order.frame(video(1, 3), 0, now=3.0) == [video(1, 3)]
    assert order.frame(video(1, 6), 0, now=3.0, prior_gap=2) == [video(1, 6)]
    assert order.frame(video(1, 10), 0, now=3.0, prior_gap=2) == []  # 8 and 9 do not exist; 7 does
    assert order.frame(video(1, 7), 1, now=3.0) == [video(1, 7), video(1, 10)]


def test_a_fill_joined_group_starts_where_its_subscription_does():
    """A subscription joined by a FETCH starts mid-group (the FETCH carried the objects before):
    its first frame, on whatever subgroup, is not held for the Object IDs the FETCH carried."""
    from rtmpq.moq.subgroup_order import SubgroupOrder

    order = SubgroupOrder()
    order.starts("video", 4, 7)
    assert order.frame(video(4, 7), 1, now=1.0) == [video(4, 7)]
    assert order.frame(video(4, 8), 2, now=1.0) == [video(4, 8)]
    assert order.next_due is None


def test_a_group_is_over_once_every_subgroup_seen_has_ended():
    """GroupOrder alone (in_order): a group's late frames are reported once its last subgroup
    stream ends, not at the first one's FIN; a reset of one of several subgroups is reported as
    that subgroup's; a reset of a group's only stream as the whole group, as before; a frame below
    one handed on in its own group is late too."""
    from rtmpq.moq.client import LATE_GROUP, GroupOrder, SkipMemory

    order = GroupOrder(SkipMemory())
    assert order.admit(video(5, 0)) == video(5, 0)
    assert order.admit(video(6, 0)) == video(6, 0)
    assert order.admit(video(5, 1)) is None  # after group 6 began
    assert order.stream_ended("video", 5, 0, None, others_open=True) == []  # subgroup 1 is on its way
    assert order.stream_ended("video", 5, 1, None) == [SkippedGroup("video", 5, LATE_GROUP)]

    code = StreamResetCode.DELIVERY_TIMEOUT
    assert order.stream_ended("video", 7, 1, code, others_open=True) == []
    assert order.stream_ended("video", 7, 0, None) == [SkippedGroup("video", 7, code, subgroup=1)]

    assert order.stream_ended("video", 8, 0, code) == [SkippedGroup("video", 8, code)]
    assert order.stream_ended("video", 8, 0, code) == []  # reported once

    assert order.admit(video(9, 3)) == video(9, 3)
    assert order.admit(video(9, 2)) is None


def test_end_of_track_tells_whether_another_subgroup_of_a_group_is_open():
    """EndOfTrack.group_open: what GroupOrder is told of a group's other subgroups."""
    from rtmpq.moq.client import EndOfTrack

    ends = EndOfTrack()
    ends.begun("video", 5, 0)
    ends.begun("video", 5, 1)
    ends.begun("audio", 5, 0)
    ends.stream_ended("video", 5, 0)
    assert ends.group_open("video", 5)
    ends.stream_ended("video", 5, 1)
    assert not ends.group_open("video", 5)


async def test_rtmpq_sub_tells_a_skipped_subgroup_from_a_skipped_group(tmp_path):
    """``rtmpq sub --json`` on the publisher that resets subgroup 1 of group 0: the skip line names
    the subgroup, and the summary counts it as a skipped subgroup, not a skipped group."""
    pub = subgroup_1_reset()
    cert, key = ensure_self_signed(tmp_path)
    port = free_port(socket.SOCK_DGRAM)
    server = await serve_moq("127.0.0.1", port, certfile=cert, keyfile=key, on_connection=pub.on_connection)
    try:
        sub = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "rtmpq", "sub", f"moqt://127.0.0.1:{port}/live/x", "--insecure", "--json",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(sub.communicate(), 30)
    finally:
        server.close()
    assert sub.returncode == 0, err
    lines = [json.loads(line) for line in out.splitlines() if line.startswith(b"{")]
    assert [line["skipped"] for line in lines if "skipped" in line] == [
        {"track": "video", "group": 0, "code": 2, "subgroup": 1}]
    assert [(line["group"], line["object"]) for line in lines if "object" in line] == [
        (0, o) for o in sorted(ids(0) + ids(2))]
    summary = json.loads(err.splitlines()[-1])["summary"]
    assert summary["skipped_groups"] == 0 and summary["skipped_subgroups"] == 1, summary


# -- an LL-HLS edge fed by a layered publisher -------------------------------------------------------
LAYER_LAG = 2  # frames: how late the upper layers' frames leave (after later base-layer ones), well inside REORDER_WAIT


@pytest.mark.parametrize("backend", BACKENDS)
async def test_an_edge_fed_by_a_layered_publisher_serves_every_frame_in_decode_order(tmp_path, backend):
    """Real H.264 (B-frames, a GoP every 2 s) published over MoQ with each group in three
    interleaved subgroups (frame i of a group in subgroup i % 3, as temporal layers are), the upper
    layers arriving late, through a relay to an LL-HLS edge: ffmpeg decodes every frame from the edge's playlist without an
    error, in the order they were published."""
    need("ffmpeg")
    clip = tmp_path / "clip.flv"  # 4 s: two groups
    rc, out = await run_process(["ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i",
                                 "testsrc2=size=320x240:rate=30", "-t", "4", *VIDEO_ENCODE, "-f", "flv", str(clip)])
    assert rc == 0, out
    source = await start_up_node(tmp_path / "source")  # the clip's catalog and frames, as ingest makes them
    try:
        reading = asyncio.create_task(collect_broadcast(source.registry, "live/clip"))
        rc, out = await run_process(["ffmpeg", "-hide_banner", "-loglevel", "error", "-i", str(clip), "-c", "copy",
                                     "-f", "flv", f"rtmp://127.0.0.1:{source.rtmp.address[1]}/live/clip"])
        assert rc == 0, out
        catalogs, sent = await reading
    finally:
        await source.close()
    track = catalogs[-1].track("video")
    sent = [f for f in sent if f.track == "video"]
    groups: dict[int, list[Frame]] = {}
    for f in sent:
        groups.setdefault(f.group, []).append(f)
    assert len(groups) >= 2

    sending: list[asyncio.Task] = []

    def layered(conn) -> None:
        def answer(event, alias: int) -> None:
            session = conn.session
            if event.track_name == CATALOG_TRACK:
                send_catalog(session, event, alias, track)
                return
            sending.append(asyncio.get_running_loop().create_task(live(session, alias, event.request_id)))

        async def live(session, alias: int, request_id: int) -> None:
            """In real time, as a live encoder sends: a group's three subgroups open together, each
            frame on its subgroup's stream at its time; the upper layers' frames go out LAYER_LAG
            frames late (a path that favours the base layer), so frames arrive out of decode order;
            the three streams end with the group."""
            loop = asyncio.get_running_loop()
            start = loop.time() - sent[0].dts / track.timescale
            for group, members in groups.items():
                sids = [session.open_subgroup(alias, group, subgroup=s, end_of_group=s == SUBGROUPS - 1)
                        for s in range(SUBGROUPS)]
                held: list[tuple[int, Frame]] = []

                def send(object_id: int, f: Frame) -> None:
                    session.send_object(sids[object_id % SUBGROUPS], object_id, bytes(f.payload),
                                        frame_extensions(f, track.timescale))

                for object_id, f in enumerate(members):
                    await asyncio.sleep(max(0.0, start + f.dts / track.timescale - loop.time()))
                    if object_id % SUBGROUPS:
                        held.append((object_id, f))
                    else:
                        send(object_id, f)
                    while held and held[0][0] <= object_id - LAYER_LAG:
                        send(*held.pop(0))
                    conn.flush()
                for object_id, f in held:
                    send(object_id, f)
                for sid in sids:
                    session.end_subgroup(sid)
            session.publish_done(request_id, PublishDoneStatus.TRACK_ENDED, SUBGROUPS * len(groups))
            conn.flush()

        answer_subscribes(conn, answer)

    async with serving_relay(tmp_path, backend) as (relay, port):
        async with connect_moq("127.0.0.1", port, insecure=True, backend=backend) as pub_conn:
            await announced(pub_conn)
            layered(pub_conn)
            edge = EdgeServer(moq_broadcast_source(f"moqt://127.0.0.1:{port}", wait=10, insecure=True, backend=backend),
                              http=HttpConfig(host="127.0.0.1", port=0))
            await edge.start()
            try:
                base = "http://{}:{}/live/x".format(*edge.address)
                async with asyncio.timeout(30):
                    while True:  # the publisher sent it all at once: the playlist ends
                        status, body = await http_get(f"{base}/video.m3u8")
                        if status == 200 and b"#EXT-X-ENDLIST" in body:
                            break
                        await asyncio.sleep(0.1)
                rc, out = await run_process(["ffprobe", "-v", "error", "-select_streams", "v", "-show_entries",
                                             "packet=dts_time,size", "-of", "csv=p=0", f"{base}/index.m3u8"], timeout=60)
                assert rc == 0, out
                packets = [line.split(",") for line in out.split()]
                got = [int(size) for _, size in packets]
                first = next((i for i, (a, b) in enumerate(zip(got, sent)) if a != b.size), min(len(got), len(sent) - 1))
                assert got == [f.size for f in sent], \
                    f"{len(got)} of {len(sent)} frames; from frame {first} (group {sent[first].group}, object " \
                    f"{sent[first].index}) sizes {got[first:first + 6]}, sent {[f.size for f in sent[first:first + 6]]}"
                rc, out = await run_process(["ffmpeg", "-v", "error", "-xerror", "-i", f"{base}/index.m3u8",
                                             "-f", "null", "-"], timeout=60)
                assert rc == 0 and out.strip() == "", out
            finally:
                await edge.close()
                for task in sending:
                    task.cancel()
