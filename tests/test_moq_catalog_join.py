"""MSF: a subscriber gets the current catalog by a SUBSCRIBE with a Joining FETCH (offset 0); the
SUBSCRIBE alone brings only versions published from now on (draft 16). Against a publisher that
replays nothing on SUBSCRIBE, a subscriber without the FETCH waited for the catalog to change,
i.e. forever for a steady broadcast. When the FETCH brings nothing, the catalog is subscribed
unfiltered (moq/catalog_join.py, shared with the relay and the transcoder)."""

import pytest


from rtmpq.media.catalog import Catalog, TrackInfo
from rtmpq.media.frames import Frame
from rtmpq.moq import events as ev
from rtmpq.moq.catalog_join import CATALOG_FETCH_WAIT, CatalogJoin
from rtmpq.moq.loc import CATALOG_TRACK, EXT_TIMESCALE, EXT_TIMESTAMP
from rtmpq.moq.wire import FETCH_RELATIVE_JOINING, FILTER_LARGEST_OBJECT, PublishDoneStatus, RequestError

from .conftest import subscribe_to_raw_publisher

VIDEO = TrackInfo(name="video", kind="video", codec="avc1.64001f", init_data=b"\x01", alt_group=1)
CATALOG_GROUP = 7  # the catalog version published before anyone subscribed


def publisher(conn, subscribes: list, fetches: list, fetch: str = "answers") -> None:
    """A steady broadcast as the draft allows it: SUBSCRIBE to the catalog sends nothing (no
    replay of the current version); the Joining FETCH gets the current version. One frame of
    video, then the broadcast ends. With ``fetch`` = "refuses" or "never": a publisher that refuses
    FETCH, or never answers it, and replays its current catalog on an unfiltered SUBSCRIBE."""
    session = conn.session
    aliases = iter(range(100))
    catalog_requests: set[int] = set()

    def on_event(_conn, event) -> None:
        if isinstance(event, ev.SubscribeRequested):
            subscribes.append(event)
            alias = next(aliases)
            if event.track_name == CATALOG_TRACK:
                catalog_requests.add(event.request_id)
                session.subscribe_ok(event.request_id, alias, (CATALOG_GROUP, 0))
                if fetch != "answers" and event.filter_type is None:
                    sid = session.open_subgroup(alias, CATALOG_GROUP)
                    session.send_object(sid, 0, Catalog("live/x", (VIDEO,)).to_json())
                    session.end_subgroup(sid)
            else:
                session.subscribe_ok(event.request_id, alias)
                sid = session.open_subgroup(alias, 0)
                # LOC timing in the publisher's own timescale: 1.5 s at 90 kHz
                session.send_object(sid, 0, b"frame of " + event.track_name.encode(),
                                    {EXT_TIMESCALE: 90000, EXT_TIMESTAMP: 135000})
                session.end_subgroup(sid)
                session.publish_done(event.request_id, PublishDoneStatus.TRACK_ENDED, 1)
                for rid in catalog_requests:
                    session.publish_done(rid, PublishDoneStatus.TRACK_ENDED, 0)
        elif isinstance(event, ev.FetchRequested):
            fetches.append(event)
            assert event.joining_request_id in catalog_requests and event.fetch_type == FETCH_RELATIVE_JOINING
            if fetch == "refuses":
                session.request_error(event.request_id, RequestError.NOT_SUPPORTED, "no FETCH here")
            if fetch != "answers":
                conn.flush()
                return
            session.fetch_ok(event.request_id, (CATALOG_GROUP, 1))
            sid = session.open_fetch_stream(event.request_id)
            session.send_fetch_object(sid, CATALOG_GROUP, 0, Catalog("live/x", (VIDEO,)).to_json())
            session.end_fetch_stream(sid)
        conn.flush()

    conn.handler = on_event


async def test_the_current_catalog_comes_by_joining_fetch(tmp_path):
    fetches: list = []
    subscribes: list = []
    # before the fix: no catalog ever, so no frames, until the deadline
    got = await subscribe_to_raw_publisher(tmp_path, lambda conn: publisher(conn, subscribes, fetches), deadline=10)
    catalogs = [i for i in got if isinstance(i, Catalog)]
    assert [[t.name for t in c.tracks] for c in catalogs] == [["video"]]
    frames = [f for f in got if isinstance(f, Frame)]
    assert [bytes(f.payload) for f in frames] == [b"frame of video"]
    assert frames[0].pts == 1500  # in the catalog's timescale for the track (1000: not listed)
    assert [e.joining_start for e in fetches] == [0]
    catalog_subscribe = next(e for e in subscribes if e.track_name == CATALOG_TRACK)
    assert catalog_subscribe.filter_type == FILTER_LARGEST_OBJECT  # a joining FETCH needs it (draft 16)


@pytest.mark.parametrize("fetch", ["refuses", "never"])
async def test_a_fetch_that_brings_nothing_means_an_unfiltered_catalog_subscribe(tmp_path, fetch):
    """A publisher without FETCH (refused, or no answer within CATALOG_FETCH_WAIT) that replays its
    current catalog on an unfiltered SUBSCRIBE: the client gets the catalog, then the frames."""
    fetches: list = []
    subscribes: list = []
    got = await subscribe_to_raw_publisher(tmp_path, lambda conn: publisher(conn, subscribes, fetches, fetch),
                                           deadline=10)
    assert [[t.name for t in c.tracks] for c in got if isinstance(c, Catalog)] == [["video"]]
    assert [bytes(f.payload) for f in got if isinstance(f, Frame)] == [b"frame of video"]
    assert [e.filter_type for e in subscribes if e.track_name == CATALOG_TRACK] == [FILTER_LARGEST_OBJECT, None]
    assert len(fetches) == 1


def test_the_join_falls_back_once_when_no_version_came():
    """CatalogJoin alone (time as an argument): the FETCH over or its wait passed with no version
    held means falling back, once; a version held, or no FETCH asked, means never."""
    join = CatalogJoin("live/x")
    assert join.filter_type == FILTER_LARGEST_OBJECT
    assert not join.wants_fetch(None)  # nothing published yet: every version comes live
    assert not join.falls_back(100.0, held=False)  # no FETCH asked: nothing to fall back from
    assert join.wants_fetch((7, 0))
    join.fetching(3, now=10.0)
    assert join.is_fetch(3) and not join.is_fetch(None)
    assert not join.falls_back(10.0 + CATALOG_FETCH_WAIT / 2, held=False)  # still waiting
    assert not join.falls_back(10.0 + CATALOG_FETCH_WAIT, held=True)  # a version came live
    assert join.falls_back(10.0 + CATALOG_FETCH_WAIT, held=False)
    assert join.filter_type is None and not join.wants_fetch((7, 0))
    assert not join.falls_back(20.0, held=False)  # once
    assert join.is_fetch(3)  # a late answer still counts

    over = CatalogJoin("live/x")
    over.fetching(4, now=10.0)
    over.fetch_over()
    assert not over.falls_back(10.0, held=True)  # it brought a version
    assert over.falls_back(10.0, held=False)  # it brought nothing: at once, no wait
