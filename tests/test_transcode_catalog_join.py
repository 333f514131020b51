"""The transcoder node gets the broadcast's current catalog by a Joining FETCH (MSF, draft 16).

It only SUBSCRIBEd to the catalog: from a publisher that sends only new versions on SUBSCRIBE it
never learnt a steady broadcast's tracks, so it made no rungs and never asked for the video. A
publisher whose FETCH brings nothing gets an unfiltered SUBSCRIBE as well, as from subscribe_broadcast
and the relay (moq/catalog_join.py)."""

import asyncio
from contextlib import asynccontextmanager

import pytest

from rtmpq.config import TranscodeConfig
from rtmpq.media.catalog import Catalog
from rtmpq.moq import events as ev
from rtmpq.moq.loc import CATALOG_TRACK, RENDITIONS_TRACK
from rtmpq.moq.tls import ensure_self_signed
from rtmpq.moq.transport import connect_moq, serve_moq
from rtmpq.moq.wire import FETCH_RELATIVE_JOINING, FILTER_LARGEST_OBJECT, GROUP_ORDER_ASCENDING, RequestError
from rtmpq.nodes.transcode import transcode_over_moq
from rtmpq.transcode.ladder import parse_ladder

from .conftest import until
from .test_transcode import make_source

CATALOG_GROUP = 7  # the version published before the transcoder came


def publisher(conn, catalog: bytes, got: list, fetch: str = "answers") -> None:
    """SUBSCRIBE to the catalog: SUBSCRIBE_OK with its Largest Location, nothing else (unfiltered:
    the current version too); its Joining FETCH: the current version, or as ``fetch`` says:
    "refuses" (REQUEST_ERROR), "empty" (FETCH_OK, no object), "never" (no answer); SUBSCRIBE to
    video: accepted; PUBLISH of a track: accepted."""
    session = conn.session
    aliases = iter(range(100))

    def on_event(_conn, event) -> None:
        got.append(event)
        if isinstance(event, ev.SubscribeRequested):
            alias = next(aliases)
            largest = (CATALOG_GROUP, 0) if event.track_name == CATALOG_TRACK else None
            session.subscribe_ok(event.request_id, alias, largest)
            if event.track_name == CATALOG_TRACK and event.filter_type is None:
                sid = session.open_subgroup(alias, CATALOG_GROUP)
                session.send_object(sid, 0, catalog)
                session.end_subgroup(sid)
        elif isinstance(event, ev.FetchRequested) and fetch == "refuses":
            session.request_error(event.request_id, RequestError.NOT_SUPPORTED, "no FETCH here")
        elif isinstance(event, ev.FetchRequested) and fetch != "never":
            session.fetch_ok(event.request_id, (CATALOG_GROUP, 1))
            sid = session.open_fetch_stream(event.request_id)
            if fetch == "answers":
                session.send_fetch_object(sid, CATALOG_GROUP, 0, catalog)
            session.end_fetch_stream(sid)
        elif isinstance(event, ev.TrackPublished):
            session.publish_ok(event.request_id)
        conn.flush()

    conn.handler = on_event


def published(got: list) -> list[str]:
    return [e.track_name for e in got if isinstance(e, ev.TrackPublished)]


@asynccontextmanager
async def transcoding(tmp_path, got: list, fetch: str = "answers"):
    """The transcoder of live/x on a session with ``publisher`` (its events go to ``got``) until
    it has subscribed to the source video and listed its rungs."""
    info, _ = make_source(seconds=0.2, width=854, height=480, bframes=0)
    catalog = Catalog("live/x", (info,)).to_json()
    cert, key = ensure_self_signed(tmp_path)
    server = await serve_moq("127.0.0.1", 0, certfile=cert, keyfile=key, backend="aioquic",
                             on_connection=lambda conn: publisher(conn, catalog, got, fetch))
    port = server._transport.get_extra_info("sockname")[1]
    try:
        async with connect_moq("127.0.0.1", port, insecure=True, backend="aioquic", timeout=10) as conn:
            task = asyncio.create_task(transcode_over_moq(conn, "live/x", parse_ladder("360p"),
                                                          TranscodeConfig(idle_stop=0.0), None, {}))
            try:
                def subscribed() -> list[str]:
                    return [e.track_name for e in got if isinstance(e, ev.SubscribeRequested)]

                # before: the catalog never came, so no video subscription and no rungs
                await until(lambda: "video" in subscribed() and RENDITIONS_TRACK in published(got), 10,
                            "the source video subscribed and the rungs listed")
                yield
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
    finally:
        server.close()


async def test_the_transcoder_learns_a_steady_broadcasts_tracks_by_joining_fetch(tmp_path):
    got: list = []
    async with transcoding(tmp_path, got):
        pass
    assert "video-360p" in published(got)
    catalog_subscribe = next(e for e in got if isinstance(e, ev.SubscribeRequested) and e.track_name == CATALOG_TRACK)
    assert catalog_subscribe.filter_type == FILTER_LARGEST_OBJECT  # a joining FETCH needs it (draft 16)
    assert [(e.fetch_type, e.joining_request_id, e.joining_start) for e in got if isinstance(e, ev.FetchRequested)] == [
        (FETCH_RELATIVE_JOINING, catalog_subscribe.request_id, 0)]


@pytest.mark.parametrize("fetch", ["refuses", "empty", "never"])
async def test_the_transcoder_subscribes_to_the_catalog_unfiltered_when_its_fetch_brings_nothing(tmp_path, fetch):
    """The publisher refuses the catalog's Joining FETCH, answers it with no object, or not at all:
    the transcoder subscribes to the catalog unfiltered, which this publisher answers with its
    current version, and makes its rungs. Before, a FETCH never answered meant no catalog ever."""
    got: list = []
    async with transcoding(tmp_path, got, fetch):
        pass
    assert "video-360p" in published(got)
    catalog_subscribes = [e for e in got if isinstance(e, ev.SubscribeRequested) and e.track_name == CATALOG_TRACK]
    assert [e.filter_type for e in catalog_subscribes] == [FILTER_LARGEST_OBJECT, None]
    assert [e.joining_request_id for e in got if isinstance(e, ev.FetchRequested)] == [catalog_subscribes[0].request_id]


async def test_the_transcoder_asks_its_source_video_in_ascending_group_order(tmp_path):
    """GROUP ORDER (draft 16): the decoder needs each source group whole and in order, yet the
    transcoder asked no order, so a relay sent a newer group first (its own preference,
    Descending) and on a loaded host the older group's tail came late and was dropped. The
    catalog, a state track whose newest version is what counts, asks none."""
    got: list = []
    async with transcoding(tmp_path, got):
        pass
    orders = {e.track_name: e.group_order for e in got if isinstance(e, ev.SubscribeRequested)}
    assert orders == {CATALOG_TRACK: None, "video": GROUP_ORDER_ASCENDING}, orders
