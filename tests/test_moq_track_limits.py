"""The Track Extensions of a relayed track that bound what the relay serves (draft 16, "Extension
Headers"):

- MAX_CACHE_DURATION (0x04): "the relay MUST NOT start forwarding any individual Object received
  through this subscription or fetch after the specified number of milliseconds has elapsed since
  the beginning of the Object was received ... Once Objects have expired from cache, their state
  becomes unknown, and a relay that handles a downstream request that includes those Objects
  re-requests them."
- DELIVERY_TIMEOUT (0x02): "If both the subscriber specifies this parameter and the Track has a
  DELIVERY_TIMEOUT extension, the endpoints use the min of the two values."

The relay forwarded both but acted on neither (docs/interop.md listed it as a deviation): a new
subscriber got a cached group older than MAX_CACHE_DURATION, a FETCH was served from it, and a
subscription's delivery timeout ignored the track's. A raw publisher's SUBSCRIBE_OK carries the
extensions; raw viewers on loopback QUIC, both backends."""

import time

import pytest

from rtmpq.moq import events as ev

from .conftest import until
from .test_moq_subscribe_filters import BACKENDS, NAMESPACE, OBJECTS, Publisher, relay_with_publisher, whole

MAX_CACHE_DURATION = 0x04
DELIVERY_TIMEOUT = 0x02


class FetchingPublisher(Publisher):
    """Also answers a FETCH, with objects whose payload says they came from the publisher."""

    def _on_event(self, conn, event) -> None:
        super()._on_event(conn, event)
        if isinstance(event, ev.FetchRequested):
            session = self.conn.session
            session.fetch_ok(event.request_id, event.end)
            sid = session.open_fetch_stream(event.request_id)
            for object_id in range(OBJECTS):
                session.send_fetch_object(sid, event.start[0], object_id, b"from the publisher")
            session.end_fetch_stream(sid)
            self.conn.flush()


async def _cached_groups_older_than(relay, seconds: float) -> None:
    cache = relay._tracks[(NAMESPACE, "video")].fanout.cache
    newest = cache.groups()[-1]
    await until(lambda: time.monotonic() - newest.started > seconds, what=f"the cached groups {seconds} s old")


async def _only_live(viewer, publisher, group: int) -> None:
    """``viewer`` subscribes and gets none of the cached groups, only the live ``group``."""
    _rid, alias = await viewer.subscribed()
    publisher.send(group)
    await until(lambda: group in viewer.ended(alias), what=f"group {group} delivered")
    assert sorted(viewer.objects(alias)) == whole(group)


async def _fetch_group_1(viewer) -> list:
    """FETCH of group 1 by ``viewer``: its objects, once all came."""
    fetch = viewer.conn.session.fetch(NAMESPACE, "video", (1, 0), (1, OBJECTS))
    viewer.conn.flush()

    def objects():
        return [e for e in viewer.of(ev.FetchObjectReceived) if e.request_id == fetch]

    await until(lambda: len(objects()) == OBJECTS, what="the FETCH answered")
    return objects()


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_cached_group_older_than_max_cache_duration_is_not_served(tmp_path, backend):
    """MAX_CACHE_DURATION 300 ms: 0.5 s after groups 0 and 1 came (well within the relay's 2 s
    delivery timeout, which alone would replay group 1), a new subscriber gets none of them, only
    the live group 2; a FETCH of group 1 is asked of the publisher again and answered with its
    objects, none from the relay's cache."""
    async with relay_with_publisher(tmp_path, backend, 2, {MAX_CACHE_DURATION: 300}) as (relay, publisher, _warm,
                                                                                         connect):
        publisher.__class__ = FetchingPublisher
        publisher.conn.handler = publisher._on_event
        await _cached_groups_older_than(relay, 0.5)
        async with connect() as viewer:
            await _only_live(viewer, publisher, 2)
            fetched = await _fetch_group_1(viewer)
        assert {bytes(e.payload) for e in fetched} == {b"from the publisher"}
        asked = [e for e in publisher.events if isinstance(e, ev.FetchRequested)]
        assert [(e.start, e.end) for e in asked] == [((1, 0), (1, OBJECTS))]


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_cached_group_within_max_cache_duration_is_served(tmp_path, backend):
    """The same with MAX_CACHE_DURATION 10 s: the cached group 1 is served to a new subscriber
    and a FETCH from the cache, nothing is asked of the publisher."""
    async with relay_with_publisher(tmp_path, backend, 2, {MAX_CACHE_DURATION: 10_000}) as (relay, publisher,
                                                                                            _warm, connect):
        await _cached_groups_older_than(relay, 0.5)
        async with connect() as viewer:
            _rid, alias = await viewer.subscribed()
            await until(lambda: 1 in viewer.ended(alias), what="group 1 from the cache")
            fetched = await _fetch_group_1(viewer)
        assert [bytes(e.payload) for e in fetched] == [f"1.{o}".encode() for o in range(OBJECTS)]  # the cache's
        assert not [e for e in publisher.events if isinstance(e, ev.FetchRequested)]


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_subscription_takes_the_tracks_delivery_timeout_when_smaller(tmp_path, backend):
    """The track's DELIVERY_TIMEOUT 100 ms, the subscriber none (the relay's own is 2 s): the
    subscription's is 100 ms, so a cached group 0.5 s old is past its budget and not started (an
    unfiltered subscriber never starts a group already past it); the live group 1 comes."""
    async with relay_with_publisher(tmp_path, backend, 1, {DELIVERY_TIMEOUT: 100}) as (relay, publisher, _warm,
                                                                                       connect):
        await _cached_groups_older_than(relay, 0.5)
        async with connect() as viewer:
            await _only_live(viewer, publisher, 1)
