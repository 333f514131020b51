"""The broadcast that outlives its publisher, in memory: the time is passed in, nothing sleeps."""

import pytest

from rtmpq.errors import StreamNameInUse
from rtmpq.media.broadcast import SEAM_MIN_GAP_MS, BroadcastEnded, BroadcastRegistry, CatalogUpdate
from rtmpq.media.catalog import Catalog, TrackInfo
from rtmpq.media.frames import VIDEO, Frame


def frames(n_groups: int, per_group: int = 3, start_dts: int = 0) -> list[Frame]:
    out = []
    dts = start_dts
    for g in range(n_groups):
        for i in range(per_group):
            out.append(Frame(VIDEO, g, i, dts, dts, i == 0, b"x" * 10))
            dts += 33
    return out


def drain(reader) -> list:
    items = list(reader._queue)
    reader._queue.clear()
    return items


def catalog(name: str, width: int) -> Catalog:
    return Catalog(broadcast=name).with_track(TrackInfo(name=VIDEO, kind=VIDEO, codec="avc1.64001f",
                                                        init_data=b"\x01avcc", width=width, height=240))


async def test_a_returning_publisher_continues_groups_and_time_and_the_grace_period_ends_it():
    registry = BroadcastRegistry()
    b = registry.publish("live/a")
    b.set_catalog(catalog("live/a", 320))
    reader = b.reader()
    for f in frames(3):
        b.push(f)
    with pytest.raises(StreamNameInUse):
        registry.publish("live/a")  # a publisher is attached: the ingest takes it over first
    b.publisher_left(30.0, now=100.0)
    registry.expire(129.9)
    assert b.live and not b.publishing
    assert registry.publish("live/a") is b and b.publishes == 2  # back within the grace period
    b.set_catalog(catalog("live/a", 320))  # the same settings: no catalog change
    for f in frames(2):
        b.push(f)
    items = drain(reader)
    got = [i for i in items if isinstance(i, Frame)]
    assert [f.group for f in got] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]
    seam = got[9].dts - got[8].dts
    assert seam >= SEAM_MIN_GAP_MS and all(b2.dts > a.dts for a, b2 in zip(got, got[1:]))
    assert sum(isinstance(i, CatalogUpdate) for i in items) == 1
    before = b.catalog.version
    b.set_catalog(catalog("live/a", 640))  # a changed configuration is a new catalog version
    [update] = drain(reader)
    assert update.catalog.track(VIDEO).width == 640 and update.catalog.version == before + 1
    b.publisher_left(30.0, now=200.0)
    registry.expire(229.0)
    assert b.live
    registry.expire(230.0)
    assert not b.live and registry.get("live/a") is None
    assert isinstance(drain(reader)[-1], BroadcastEnded)
    assert registry.publish("live/a") is not b  # after the end a publish starts a new broadcast


async def test_no_grace_period_ends_at_once():
    registry = BroadcastRegistry()
    b = registry.publish("live/b")
    b.publisher_left(0, now=1.0)
    assert not b.live and registry.get("live/b") is None


async def test_a_listener_that_fails_on_a_frame_is_detached_and_the_others_go_on():
    registry = BroadcastRegistry()
    b = registry.publish("live/l")
    got, calls = [], []

    def broken(event):
        calls.append(event)
        raise RuntimeError("a consumer's bug")

    b.listen(broken)
    b.listen(got.append)
    for f in frames(2):
        b.push(f)  # never raises to the publisher
    assert len(calls) == 1 and got == frames(2)
    assert b.bytes_in == {VIDEO: 60} and b.frames_in == 6
