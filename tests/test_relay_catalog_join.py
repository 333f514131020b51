"""The relay gets a relayed broadcast's current catalog by a Joining FETCH of its own (MSF, draft 16).

A conforming publisher sends only new catalog versions on SUBSCRIBE; the current one comes by a
Joining FETCH. The relay only SUBSCRIBEd upstream, so its cache never held the catalog of a steady
broadcast: a subscriber that does not FETCH (a relay below, the edge's unfiltered SUBSCRIBE) waited
for the catalog's next change, i.e. forever."""

import asyncio
import time
from contextlib import asynccontextmanager
from types import SimpleNamespace

import pytest

from rtmpq.media.catalog import Catalog, TrackInfo
from rtmpq.moq import events as ev
from rtmpq.moq.loc import CATALOG_TRACK
from rtmpq.moq.transport import connect_moq
from rtmpq.moq.wire import FETCH_RELATIVE_JOINING, FILTER_LARGEST_OBJECT, RequestError

from .conftest import serving_relay, until

BACKENDS = ["aioquic", "aiopquic"]
VIDEO = TrackInfo(name="video", kind="video", codec="avc1.64001f", init_data=b"\x01", alt_group=1)
CURRENT = Catalog("live/x", (VIDEO,)).to_json()
CATALOG_GROUP = 7  # the version published before anyone subscribed
NEWER = Catalog("live/x", (VIDEO, TrackInfo(name="audio", kind="audio", codec="mp4a.40.2"))).to_json()


def conforming_publisher(pub, subscribes: list, fetches: list, *, newer_live: bool = False,
                         without_fetch: bool = False, silent: bool = False):
    """SUBSCRIBE to the catalog: SUBSCRIBE_OK with its Largest Location and nothing else (with
    ``newer_live``: a newer version, group 8, at once); the Joining FETCH: the current version;
    SUBSCRIBE to video: one frame, the group left open (the broadcast goes on). With
    ``without_fetch``: a publisher that refuses FETCH (with ``silent``: never answers it) and replays
    its current catalog on an unfiltered SUBSCRIBE."""
    session = pub.session
    aliases = iter(range(100))

    def on_event(_conn, event) -> None:
        if isinstance(event, ev.SubscribeRequested):
            subscribes.append(event)
            alias = next(aliases)
            if event.track_name == CATALOG_TRACK:
                session.subscribe_ok(event.request_id, alias, (CATALOG_GROUP, 0))
                if without_fetch and event.filter_type is None:
                    sid = session.open_subgroup(alias, CATALOG_GROUP)
                    session.send_object(sid, 0, CURRENT)
                    session.end_subgroup(sid)
                if newer_live:
                    sid = session.open_subgroup(alias, CATALOG_GROUP + 1)
                    session.send_object(sid, 0, NEWER)
                    session.end_subgroup(sid)
            else:
                session.subscribe_ok(event.request_id, alias)
                sid = session.open_subgroup(alias, 0)
                session.send_object(sid, 0, b"frame of " + event.track_name.encode())
        elif isinstance(event, ev.FetchRequested):
            fetches.append(event)
            if without_fetch:
                if not silent:
                    session.request_error(event.request_id, RequestError.NOT_SUPPORTED, "no FETCH here")
                    pub.flush()
                return
            session.fetch_ok(event.request_id, (CATALOG_GROUP, 1))
            sid = session.open_fetch_stream(event.request_id)
            session.send_fetch_object(sid, CATALOG_GROUP, 0, CURRENT)
            session.end_fetch_stream(sid)
        pub.flush()

    pub.handler = on_event


async def _publish(pub) -> None:
    answered = asyncio.get_running_loop().create_future()
    pub.handler = lambda _c, e: isinstance(e, ev.RequestAccepted) and not answered.done() and answered.set_result(e)
    pub.session.publish_namespace(("live", "x"))
    pub.flush()
    async with asyncio.timeout(10):
        await answered


@asynccontextmanager
async def relayed(tmp_path, backend: str = "aioquic", **kinds):
    """A bare relay, ``conforming_publisher`` (``kinds``: its variant) publishing live/x into it, and
    a raw viewer of the relay whose events go to ``got``."""
    async with serving_relay(tmp_path, backend) as (relay, port):
        async with (connect_moq("127.0.0.1", port, insecure=True, backend=backend) as pub,
                    connect_moq("127.0.0.1", port, insecure=True, backend=backend) as viewer):
            await _publish(pub)
            t = SimpleNamespace(relay=relay, viewer=viewer, got=[], subscribes=[], fetches=[])
            conforming_publisher(pub, t.subscribes, t.fetches, **kinds)
            viewer.handler = lambda _c, e: t.got.append(e)
            yield t


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_subscriber_that_does_not_fetch_gets_the_current_catalog_from_the_relay(tmp_path, backend):
    """A raw subscriber of the relay, unfiltered SUBSCRIBE and no FETCH: the relay's own cache must
    hold the catalog; then video frames flow. Before: no catalog object ever came."""
    async with relayed(tmp_path, backend) as t:
        viewer, got, subscribes, fetches = t.viewer, t.got, t.subscribes, t.fetches
        catalog_rid = viewer.session.subscribe(("live", "x"), CATALOG_TRACK)
        viewer.flush()
        await until(lambda: any(isinstance(e, ev.ObjectReceived) for e in got), 10, "the catalog at the viewer")
        viewer.session.subscribe(("live", "x"), "video")
        viewer.flush()
        await until(lambda: len([e for e in got if isinstance(e, ev.ObjectReceived)]) >= 2, 10, "a frame")
        late: list = []  # a later subscriber is served from the relay's cache
        viewer.handler = lambda _c, e: late.append(e)
        viewer.session.unsubscribe(catalog_rid)  # (one subscription per track and session: draft 16)
        viewer.session.subscribe(("live", "x"), CATALOG_TRACK)
        viewer.flush()
        await until(lambda: any(isinstance(e, ev.ObjectReceived) for e in late), 10, "the cached catalog")
    alias = next(e.track_alias for e in got if isinstance(e, ev.SubscribeAccepted) and e.request_id == catalog_rid)
    objects = [e for e in got if isinstance(e, ev.ObjectReceived)]
    assert [bytes(e.payload) for e in objects if e.track_alias == alias] == [CURRENT]
    assert [bytes(e.payload) for e in objects if e.track_alias != alias] == [b"frame of video"]
    assert [bytes(e.payload) for e in late if isinstance(e, ev.ObjectReceived)] == [CURRENT]
    upstream = next(e for e in subscribes if e.track_name == CATALOG_TRACK)
    assert upstream.filter_type == FILTER_LARGEST_OBJECT  # a joining FETCH needs it (draft 16)
    assert [(e.fetch_type, e.joining_request_id, e.joining_start) for e in fetches] == [
        (FETCH_RELATIVE_JOINING, upstream.request_id, 0)]
    assert len([e for e in subscribes if e.track_name == CATALOG_TRACK]) == 1  # one upstream subscription


async def test_an_older_fetched_catalog_never_follows_a_newer_live_one(tmp_path):
    """The publisher's next version comes live before the fetched one: subscribers get the newer
    version alone, and the relay keeps it as the current one."""
    async with relayed(tmp_path, newer_live=True) as t:
        relay, viewer, got, fetches = t.relay, t.viewer, t.got, t.fetches
        viewer.session.subscribe(("live", "x"), CATALOG_TRACK)
        viewer.flush()
        upstream = lambda: relay._tracks.get((("live", "x"), CATALOG_TRACK))  # noqa: E731
        await until(lambda: fetches and upstream() is not None and upstream().catalog_join.fetch is None, 10,
                    "the relay's catalog FETCH answered")
        await until(lambda: any(isinstance(e, ev.ObjectReceived) for e in got), 10, "the catalog at the viewer")
        latest = upstream().fanout.cache.latest(time.monotonic())
    assert [bytes(e.payload) for e in got if isinstance(e, ev.ObjectReceived)] == [NEWER]
    assert [bytes(o.payload) for o in latest.objects] == [NEWER]


@pytest.mark.parametrize("silent", [False, True], ids=["refused", "never-answered"])
async def test_a_publisher_without_fetch_still_gives_its_catalog_through_the_relay(tmp_path, silent):
    """The relay's joining FETCH is refused, or not answered within CATALOG_FETCH_WAIT: it
    subscribes to the catalog unfiltered, which this publisher answers with its current version,
    and the relay's subscriber gets that. Before, a FETCH never answered meant no catalog ever."""
    async with relayed(tmp_path, without_fetch=True, silent=silent) as t:
        viewer, got, subscribes, fetches = t.viewer, t.got, t.subscribes, t.fetches
        viewer.session.subscribe(("live", "x"), CATALOG_TRACK)
        viewer.flush()
        await until(lambda: any(isinstance(e, ev.ObjectReceived) for e in got), 10, "the catalog at the viewer")
    assert [bytes(e.payload) for e in got if isinstance(e, ev.ObjectReceived)] == [CURRENT]
    assert [e.filter_type for e in subscribes if e.track_name == CATALOG_TRACK] == [FILTER_LARGEST_OBJECT, None]
    assert len(fetches) == 1
