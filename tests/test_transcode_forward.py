"""A rung the relay stops forwarding (FORWARD=0: its last viewer left) and asks for again while
the transcoder still encodes it ([transcode] idle_stop): the viewer back gets the group in
progress at once, from its key frame, as a viewer of a rung started anew does; a group cut short
by FORWARD=0 is reset, one that went out whole ends (a real transcoder session on loopback QUIC;
the relay's side is scripted here)."""

import asyncio

from rtmpq.config import TranscodeConfig
from rtmpq.media.catalog import Catalog
from rtmpq.moq import events as ev
from rtmpq.moq.fanout import RESET_CANCELLED
from rtmpq.moq.loc import CATALOG_TRACK, frame_extensions
from rtmpq.moq.tls import ensure_self_signed
from rtmpq.moq.transport import connect_moq, serve_moq
from rtmpq.nodes.transcode import transcode_over_moq
from rtmpq.transcode.ladder import parse_ladder

from .conftest import until
from .test_transcode import make_source


async def test_a_rung_forwarded_again_while_it_encodes_sends_the_group_in_progress_at_once(tmp_path):
    """Before, the frames made while not forwarded were dropped and the viewer back waited for
    the next source group (up to a GoP: 2-4 s), where a rung nobody had watched for longer
    started at once at the current group."""
    info, frames = make_source(seconds=3, gop=30, width=320, height=240, bframes=0)
    catalog = Catalog("live/x", (info,)).to_json()
    relay: dict = {}  # the scripted relay's session, the video alias, the rung's PUBLISH
    rung: list[ev.ObjectReceived] = []
    ends: list = []  # the rung's subgroup ends and resets: (group, "end" or the reset code)

    def on_connection(conn) -> None:
        session = relay["session"] = conn.session
        aliases = iter(range(100))

        def on_event(_conn, event) -> None:
            if isinstance(event, ev.SubscribeRequested):
                alias = next(aliases)
                session.subscribe_ok(event.request_id, alias)
                if event.track_name == CATALOG_TRACK:
                    sid = session.open_subgroup(alias, 0)
                    session.send_object(sid, 0, catalog)
                    session.end_subgroup(sid)
                elif event.track_name == "video":
                    relay["video"] = alias
            elif isinstance(event, ev.TrackPublished):
                session.publish_ok(event.request_id, forward=False)
                if event.track_name == "video-180p":
                    relay["rung"] = event
            elif "rung" in relay and getattr(event, "track_alias", None) == relay["rung"].track_alias:
                if isinstance(event, ev.ObjectReceived):
                    rung.append(event)
                elif isinstance(event, ev.SubgroupEnded):
                    ends.append((event.group, "end"))
                elif isinstance(event, ev.SubgroupReset):
                    ends.append((event.group, event.code))
            conn.flush()

        relay["conn"] = conn
        conn.handler = on_event

    def forward(on: bool) -> None:
        relay["session"].request_update(relay["rung"].request_id, forward=on)
        relay["conn"].flush()

    streams: dict[int, int] = {}

    def send_source(part) -> None:
        session = relay["session"]
        for f in part:
            if f.index == 0:
                if streams:
                    session.end_subgroup(streams.pop(f.group - 1))
                streams[f.group] = session.open_subgroup(relay["video"], f.group)
            session.send_object(streams[f.group], f.index, f.payload, frame_extensions(f, 1000))
        relay["conn"].flush()

    cert, key = ensure_self_signed(tmp_path)
    server = await serve_moq("127.0.0.1", 0, certfile=cert, keyfile=key, backend="aioquic", on_connection=on_connection)
    port = server._transport.get_extra_info("sockname")[1]
    registry: dict = {}
    try:
        async with connect_moq("127.0.0.1", port, insecure=True, backend="aioquic", timeout=10) as conn:
            task = asyncio.create_task(transcode_over_moq(conn, "live/x", parse_ladder("180p"),
                                                          TranscodeConfig(idle_stop=30.0), None, registry))
            try:
                await until(lambda: "video" in relay and "rung" in relay, 10, "the source subscribed, the rung published")
                forward(True)
                await until(lambda: "live/x" in registry and "video-180p" in registry["live/x"].wanted, 10, "the rung wanted")
                group0 = [f for f in frames if f.group == 0]
                send_source(group0)
                await until(lambda: len(rung) == len(group0), 20, "the rung's group 0")
                forward(False)  # its viewer left; the rung goes on encoding (idle_stop)
                bt = registry["live/x"]
                group1_head = [f for f in frames if f.group == 1][:10]
                send_source(group1_head)
                await until(lambda: bt.frames_encoded("video-180p") >= len(group0) + len(group1_head), 20,
                            "group 1's first frames encoded while not forwarded")
                forward(True)  # a viewer is back, mid-group: no more source frames are sent
                await until(lambda: sum(o.group == 1 for o in rung) == len(group1_head), 10,
                            "group 1 of the rung, from its key frame, at once")
                got = [o.object_id for o in rung if o.group == 1]
                assert got == list(range(len(group1_head)))
                assert ends == [(0, "end")]  # group 0 went out whole: ended when group 1 began
                # its viewer leaves mid-group 1 and the rung goes on making group 1: the relay has
                # a group cut short, and is told so (it ended as if whole at FORWARD=0)
                forward(False)
                send_source([f for f in frames if f.group == 1][len(group1_head):])
                await until(lambda: len(ends) == 2, 10, "the end of the rung's group 1")
                assert ends[1] == (1, RESET_CANCELLED)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
    finally:
        server.close()
