"""rtmpq's own subscriber and objects sent as OBJECT_DATAGRAMs (draft 16: Forwarding Preference
Datagram). The relay carried them (tests/test_moq_datagrams.py), but ``subscribe_broadcast`` (the
LL-HLS edge, ``rtmpq sub``) read objects on streams only: a publisher sending its audio as
datagrams played without audio at an rtmpq edge, and ``rtmpq sub`` counted none of them (and
waited for ever for a track whose End of Track came in a datagram). Now a datagram object is a
frame of its group, handed on as it comes: a lost one is not waited for, and one of an older
group, a duplicate, or one overtaken by a later object of its group is dropped and counted.

Real QUIC on loopback, both backends; real H.264 + AAC through a relay to an edge."""

import asyncio
import json
import socket
import subprocess
import sys

import pytest

from rtmpq.config import HttpConfig
from rtmpq.edge.server import EdgeServer
from rtmpq.media.catalog import Catalog, TrackInfo
from rtmpq.media.demux import BroadcastDemuxer
from rtmpq.media.flv import read_flv_tags
from rtmpq.media.frames import Frame
from rtmpq.moq.client import subscribe_broadcast
from rtmpq.moq.datagram_order import DatagramOrder
from rtmpq.moq.loc import CATALOG_TRACK, frame_extensions
from rtmpq.moq.subgroup_order import REORDER_WAIT
from rtmpq.moq.tls import ensure_self_signed
from rtmpq.moq.transport import connect_moq, serve_moq
from rtmpq.moq.wire import ObjectStatus, PublishDoneStatus
from rtmpq.nodes.remote import moq_broadcast_source

from .conftest import announced, free_port, http_get, need, serving_relay
from .publishers import AUDIO_ENCODE, VIDEO_ENCODE, run_process
from .test_moq_object_status import answer_subscribes

BACKENDS = ["aioquic", "aiopquic"]
AUDIO = TrackInfo(name="audio", kind="audio", codec="mp4a.40.2", init_data=b"\x12\x10")

# What the lossy publisher sends of its audio, in this order: (group, object) of a Normal object,
# ("end", group, object) an End of Group status datagram, ("end_bit", group, object) a Normal object
# with the END_OF_GROUP bit, ("end_of_track", group, object) an End of Track status datagram.
FIRST = [(0, 0), (0, 1), (0, 3)]  # object 2 lost
REST = [
    (0, 1),  # a duplicate
    (1, 0), (1, 2),  # a newer group; object 1 is late
    (0, 2),  # group 0's lost object, after group 1 began: too old
    (1, 1),  # overtaken by object 2
    ("end", 1, 3), (1, 4),  # an object after its group's End of Group
    ("end_bit", 2, 0), (2, 1),  # an object after the END_OF_GROUP bit
    ("end_of_track", 3, 0),
]
HANDED_ON = [(0, 0), (0, 1), (0, 3), (1, 0), (1, 2), (2, 0)]
DROPPED = 5


def test_datagram_order_hands_on_as_they_come_and_drops_what_lost_its_place():
    """DatagramOrder alone: a gap is not waited for; a duplicate, an object of an older group, one
    overtaken in its group, one after its group's end (a status datagram or the bit) is dropped and
    counted; a newer group starts wherever its first object is; ``restart`` keeps the count."""
    order = DatagramOrder()
    assert [order.admit("a", 5, o) for o in (2, 3, 5)] == [True, True, True]  # joined mid-group; 4 lost
    assert [order.admit("a", 5, o) for o in (5, 4)] == [False, False]
    assert order.admit("a", 7, 1) and not order.admit("a", 6, 0) and not order.admit("a", 5, 6)
    assert order.admit("b", 1, 0)  # tracks apart
    order.end_group("a", 7, 3)
    assert not order.admit("a", 7, 3)
    assert order.admit("a", 8, 0, end_of_group=True) and not order.admit("a", 8, 1)
    order.end_group("a", 9, 0)  # an empty group
    assert not order.admit("a", 9, 0) and order.admit("a", 10, 0)
    assert order.dropped == 7
    order.restart()  # a new subscription: a publisher back from group 0
    assert order.admit("a", 0, 0) and order.dropped == 7


def lossy_audio_publisher(conn, *, first=FIRST, rest=REST, then=None) -> None:
    """Serves live/x: a catalog (on a stream) of one audio track, whose objects all go as datagrams:
    ``first`` at its SUBSCRIBE, ``rest`` when ``then`` (a list) gets a callable and it is called
    (at once with no ``then``)."""
    session = conn.session

    def send(items, alias: int) -> None:
        for item in items:
            status, end_bit = ObjectStatus.NORMAL, False
            if isinstance(item[0], str):
                kind, *item = item
                status = {"end": ObjectStatus.END_OF_GROUP, "end_of_track": ObjectStatus.END_OF_TRACK}.get(kind, 0)
                end_bit = kind == "end_bit"
            group, object_id = item
            payload = b"" if status else f"audio {group}.{object_id}".encode()
            assert session.send_datagram(alias, group, object_id, payload, status=status, end_of_group=end_bit) == "sent"
        conn.flush()

    def answer(event, alias: int) -> None:
        if event.track_name == CATALOG_TRACK:
            sid = session.open_subgroup(alias, 0)
            session.send_object(sid, 0, Catalog("live/x", (AUDIO,)).to_json())
            session.end_subgroup(sid)
            session.publish_done(event.request_id, PublishDoneStatus.TRACK_ENDED, 1)
            return
        send(first, alias)
        if then is None:
            send(rest, alias)
        else:
            then.append(lambda: send(rest, alias))

    answer_subscribes(conn, answer)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_subscribe_broadcast_hands_datagram_objects_on_without_waiting_for_a_lost_one(tmp_path, backend):
    """An audio track sent as datagrams with a lost object, a duplicate, reordered objects and
    both kinds of group end: each object that keeps its place is a frame, in the order sent; the
    one after the lost object comes at once (no wait for it: well inside REORDER_WAIT, which the
    publisher waits for before sending anything more); the End of Track datagram ends the
    subscription; the dropped ones are counted."""
    cert, key = ensure_self_signed(tmp_path / "tls")
    port = free_port(socket.SOCK_DGRAM)
    then: list = []
    server = await serve_moq("127.0.0.1", port, certfile=cert, keyfile=key, backend=backend,
                             on_connection=lambda conn: lossy_audio_publisher(conn, then=then))
    loop = asyncio.get_running_loop()
    datagrams = DatagramOrder("live/x")
    got, after_gap, sent_at = [], None, 0.0
    try:
        async with connect_moq("127.0.0.1", port, insecure=True, backend=backend, timeout=10) as conn:
            async with asyncio.timeout(10):
                async for item in subscribe_broadcast(conn, "live/x", datagrams=datagrams):
                    if not isinstance(item, Frame):
                        continue
                    got.append(item)
                    if (item.group, item.index) == FIRST[-1]:
                        after_gap = loop.time() - sent_at
                        then.pop()()  # the rest only now: a client waiting for object 2 would still wait
                    elif len(got) == 1:
                        sent_at = loop.time()  # (the first frame: the three came together)
    finally:
        server.close()
    assert [(f.track, f.group, f.index, bytes(f.payload)) for f in got] == [
        ("audio", g, o, f"audio {g}.{o}".encode()) for g, o in HANDED_ON]
    assert after_gap < REORDER_WAIT / 2, after_gap
    assert datagrams.dropped == DROPPED


@pytest.mark.parametrize("backend", BACKENDS)
async def test_rtmpq_sub_reports_the_objects_of_a_track_sent_as_datagrams(tmp_path, backend):
    """``rtmpq sub --json`` on the same publisher, everything sent at once: a line per object
    handed on, the summary counts them for the track and the datagram objects dropped, and it ends
    at the End of Track datagram with status 0."""
    cert, key = ensure_self_signed(tmp_path / "tls")
    port = free_port(socket.SOCK_DGRAM)
    server = await serve_moq("127.0.0.1", port, certfile=cert, keyfile=key, backend=backend,
                             on_connection=lossy_audio_publisher)
    try:
        sub = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "rtmpq", "sub", f"moqt://127.0.0.1:{port}/live/x", "--insecure", "--json",
            "--quic-backend", backend, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(sub.communicate(), 30)
    finally:
        server.close()
    assert sub.returncode == 0, err
    lines = [json.loads(line) for line in out.splitlines() if line.startswith(b"{")]
    assert [(line["track"], line["group"], line["object"]) for line in lines if "object" in line] == [
        ("audio", g, o) for g, o in HANDED_ON]
    summary = json.loads(err.splitlines()[-1])["summary"]
    assert summary["objects"] == {"audio": len(HANDED_ON)} and summary["datagrams_dropped"] == DROPPED, summary


# -- an LL-HLS edge fed by a publisher whose audio goes as datagrams ---------------------------------
SECONDS = 2  # of the clip: two groups (a GoP a second)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> tuple[Catalog, list[Frame]]:
    """2 s of real H.264 (B-frames, a GoP a second) and AAC, demuxed as the ingest does: the last
    catalog and every frame, audio groups following the video's."""
    need("ffmpeg")
    path = tmp_path_factory.mktemp("clip") / "clip.flv"
    gop = {"-g": "30", "-keyint_min": "30"}
    video = [gop.get(prev, arg) for prev, arg in zip([None, *VIDEO_ENCODE], VIDEO_ENCODE)]
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30",
                    "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100", "-t", str(SECONDS), *video,
                    *AUDIO_ENCODE, "-f", "flv", str(path)], check=True)
    demuxer = BroadcastDemuxer("live/x")
    frames = []
    for tag_type, ts, body in read_flv_tags(str(path)):
        frames += [f for f in demuxer.message(tag_type, ts, body) if isinstance(f, Frame)]
    return demuxer.catalog, frames


def audio_as_datagrams(conn, catalog: Catalog, frames: list[Frame], sending: list) -> None:
    """Serves live/x as a third-party publisher might: its catalog and video on streams (a group
    each), its audio's objects (LOC, one AAC frame each) as datagrams, each audio group ended by an
    End of Group datagram; in real time, once both media tracks are subscribed; then PUBLISH_DONE.
    Once: a later subscription (the edge opens an ended broadcast again) gets nothing."""
    session = conn.session
    subscribed: dict[str, tuple[int, int]] = {}  # track -> (alias, request id)

    def answer(event, alias: int) -> None:
        if event.track_name == CATALOG_TRACK:
            sid = session.open_subgroup(alias, 0)
            session.send_object(sid, 0, catalog.to_json())
            session.end_subgroup(sid)
            session.publish_done(event.request_id, PublishDoneStatus.TRACK_ENDED, 1)
            return
        subscribed.setdefault(event.track_name, (alias, event.request_id))
        if set(subscribed) == {"video", "audio"} and not sending:
            sending.append(asyncio.get_running_loop().create_task(live()))

    async def live() -> None:
        loop = asyncio.get_running_loop()
        video, audio = subscribed["video"][0], subscribed["audio"][0]
        start = loop.time() - frames[0].dts / 1000
        sid, video_groups, last_audio = None, 0, None  # (group, object) of the last audio object

        def end_audio_group() -> None:
            if last_audio is not None:
                assert session.send_datagram(audio, last_audio[0], last_audio[1] + 1, b"",
                                             status=ObjectStatus.END_OF_GROUP) == "sent"

        for f in frames:
            timescale = catalog.track(f.track).timescale
            await asyncio.sleep(max(0.0, start + f.dts / timescale - loop.time()))
            extensions = frame_extensions(f, timescale)
            if f.track == "video":
                if f.index == 0:
                    if sid is not None:
                        session.end_subgroup(sid)
                    sid, video_groups = session.open_subgroup(video, f.group), video_groups + 1
                session.send_object(sid, f.index, bytes(f.payload), extensions)
            else:
                if last_audio is not None and f.group != last_audio[0]:
                    end_audio_group()
                assert session.send_datagram(audio, f.group, f.index, bytes(f.payload), extensions) == "sent"
                last_audio = (f.group, f.index)
            conn.flush()
        session.end_subgroup(sid)
        end_audio_group()
        session.publish_done(subscribed["video"][1], PublishDoneStatus.TRACK_ENDED, video_groups)
        session.publish_done(subscribed["audio"][1], PublishDoneStatus.TRACK_ENDED, 0)
        conn.flush()

    answer_subscribes(conn, answer)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_an_edge_plays_the_audio_a_publisher_sends_as_datagrams(tmp_path, backend, clip):
    """Real H.264 + AAC published over MoQ, video on streams and audio as datagrams, through a
    relay to an LL-HLS edge: ffprobe, reading the audio playlist live from its first segment to
    its end, decodes every AAC frame sent (their sizes, in order: silence the edge would fill in
    is not the audio sent), and ffmpeg decodes the whole broadcast without an error. (Read live: a
    request after the end opens the broadcast again, which this publisher sends once.)"""
    catalog, frames = clip
    sent = [f for f in frames if f.track == "audio"]
    assert sent and all(f.group in (0, 1) for f in sent)
    sending: list[asyncio.Task] = []
    async with serving_relay(tmp_path, backend) as (relay, port):
        async with connect_moq("127.0.0.1", port, insecure=True, backend=backend) as pub_conn:
            await announced(pub_conn)
            audio_as_datagrams(pub_conn, catalog, frames, sending)
            edge = EdgeServer(moq_broadcast_source(f"moqt://127.0.0.1:{port}", wait=10, insecure=True, backend=backend),
                              http=HttpConfig(host="127.0.0.1", port=0))
            await edge.start()
            try:
                base = "http://{}:{}/live/x".format(*edge.address)
                status, _ = await http_get(f"{base}/audio.m3u8", until_live=True)
                assert status == 200
                probe, decode = await asyncio.gather(
                    run_process(["ffprobe", "-v", "error", "-count_frames", "-select_streams", "a", "-show_entries",
                                 "packet=size:stream=nb_read_frames", "-of", "json", f"{base}/audio.m3u8"], timeout=30),
                    run_process(["ffmpeg", "-v", "error", "-xerror", "-i", f"{base}/index.m3u8", "-f", "null", "-"],
                                timeout=30))
                rc, out = probe
                assert rc == 0, out
                probed = json.loads(out)
                assert [int(p["size"]) for p in probed["packets"]] == [f.size for f in sent]
                assert [s["nb_read_frames"] for s in probed["streams"]] == [str(len(sent))]
                rc, out = decode
                assert rc == 0 and out.strip() == "", out
                _, playlist = await http_get(f"{base}/audio.m3u8")
                assert b"#EXT-X-ENDLIST" in playlist and playlist.count(b"#EXTINF") >= 2, playlist.decode()
            finally:
                await edge.close()
                for task in sending:
                    task.cancel()
