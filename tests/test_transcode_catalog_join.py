"""The transcoder node gets the broadcast's current catalog by a Joining FETCH (MSF, draft 16).

It only SUBSCRIBEd to the catalog: from a publisher that sends only new versions on SUBSCRIBE it
never learnt a steady broadcast's tracks, so it made no rungs and never asked for the video."""

import asyncio

from rtmpq.config import TranscodeConfig
from rtmpq.media.catalog import Catalog
from rtmpq.moq import events as ev
from rtmpq.moq.loc import CATALOG_TRACK, RENDITIONS_TRACK
from rtmpq.moq.tls import ensure_self_signed
from rtmpq.moq.transport import connect_moq, serve_moq
from rtmpq.moq.wire import FETCH_RELATIVE_JOINING, FILTER_LARGEST_OBJECT
from rtmpq.nodes.transcode import transcode_over_moq
from rtmpq.transcode.ladder import parse_ladder

from .conftest import until
from .test_transcode import make_source

CATALOG_GROUP = 7  # the version published before the transcoder came


def publisher(conn, catalog: bytes, got: list) -> None:
    """SUBSCRIBE to the catalog: SUBSCRIBE_OK with its Largest Location, nothing else; its Joining
    FETCH: the current version; SUBSCRIBE to video: accepted; PUBLISH of a track: accepted."""
    session = conn.session
    aliases = iter(range(100))

    def on_event(_conn, event) -> None:
        got.append(event)
        if isinstance(event, ev.SubscribeRequested):
            largest = (CATALOG_GROUP, 0) if event.track_name == CATALOG_TRACK else None
            session.subscribe_ok(event.request_id, next(aliases), largest)
        elif isinstance(event, ev.FetchRequested):
            session.fetch_ok(event.request_id, (CATALOG_GROUP, 1))
            sid = session.open_fetch_stream(event.request_id)
            session.send_fetch_object(sid, CATALOG_GROUP, 0, catalog)
            session.end_fetch_stream(sid)
        elif isinstance(event, ev.TrackPublished):
            session.publish_ok(event.request_id)
        conn.flush()

    conn.handler = on_event


async def test_the_transcoder_learns_a_steady_broadcasts_tracks_by_joining_fetch(tmp_path):
    info, _ = make_source(seconds=0.2, width=854, height=480, bframes=0)
    catalog = Catalog("live/x", (info,)).to_json()
    cert, key = ensure_self_signed(tmp_path)
    got: list = []
    server = await serve_moq("127.0.0.1", 0, certfile=cert, keyfile=key, backend="aioquic",
                             on_connection=lambda conn: publisher(conn, catalog, got))
    port = server._transport.get_extra_info("sockname")[1]
    try:
        async with connect_moq("127.0.0.1", port, insecure=True, backend="aioquic", timeout=10) as conn:
            task = asyncio.create_task(transcode_over_moq(conn, "live/x", parse_ladder("360p"),
                                                          TranscodeConfig(idle_stop=0.0), None, {}))
            try:
                def subscribed() -> list[str]:
                    return [e.track_name for e in got if isinstance(e, ev.SubscribeRequested)]

                def published() -> list[str]:
                    return [e.track_name for e in got if isinstance(e, ev.TrackPublished)]

                # before: the catalog never came, so no video subscription and no rungs
                await until(lambda: "video" in subscribed() and RENDITIONS_TRACK in published(), 10,
                            "the source video subscribed and the rungs listed")
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
    finally:
        server.close()
    assert "video-360p" in published()
    catalog_subscribe = next(e for e in got if isinstance(e, ev.SubscribeRequested) and e.track_name == CATALOG_TRACK)
    assert catalog_subscribe.filter_type == FILTER_LARGEST_OBJECT  # a joining FETCH needs it (draft 16)
    assert [(e.fetch_type, e.joining_request_id, e.joining_start) for e in got if isinstance(e, ev.FetchRequested)] == [
        (FETCH_RELATIVE_JOINING, catalog_subscribe.request_id, 0)]
