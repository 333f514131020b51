"""WindowFill in memory: what a subscriber that starts with the past hands on, and when."""

from rtmpq.media.frames import Frame
from rtmpq.moq.window_fill import MAX_CONTINUATIONS, Continue, WindowFill

FPS = 10  # frames per group, 100 ms apart (timescale 1000)


def frame(track: str, group: int, index: int) -> Frame:
    step = 100 if track == "video" else 23
    return Frame(track, group, index, group * FPS * 100 + index * step, group * FPS * 100 + index * step,
                 index == 0, b"x")


def locs(frames):
    return [(f.track, f.group, f.index) for f in frames]


def start(fill: WindowFill, tracks=("video", "audio"), largest=(3, 4)) -> dict[str, int]:
    """Subscribe ``tracks`` for the fill, accept them at ``largest``, send their joining fetches."""
    ids = {}
    for i, track in enumerate(tracks):
        assert fill.wants(track)
        fill.subscribing(track)
    for i, track in enumerate(tracks):
        assert fill.accepted(track, largest)
        ids[track] = 100 + i
        fill.fetching(ids[track], track)
    return ids


def test_fetched_groups_then_live_with_no_gap_and_no_duplicate():
    fill = WindowFill(2)
    ids = start(fill)
    timescale = lambda _track: 1000  # noqa: E731
    # live frames come while the fetches are out: held back
    assert fill.live(frame("video", 3, 5)) == [] and fill.live(frame("audio", 3, 5)) == []
    for track, rid in ids.items():
        fill.fetch_ok(rid, (3, 5))
        for g in (1, 2, 3):
            for i in range(FPS if g < 3 else 5):
                fill.fetched(rid, frame(track, g, i))
    assert not fill.ready
    assert fill.fetch_ended(ids["video"]) is None
    assert not fill.ready  # audio still fetching
    assert fill.fetch_ended(ids["audio"]) is None
    assert fill.ready
    out = fill.release(timescale)
    for track in ("video", "audio"):
        mine = [(f.group, f.index) for f in out if f.track == track]
        assert mine == [(g, i) for g in (1, 2) for i in range(FPS)] + [(3, i) for i in range(6)]
    assert [f.dts for f in out[:-2]] == sorted(f.dts for f in out[:-2])  # merged by decode time
    assert locs(out[-2:]) == [("video", 3, 5), ("audio", 3, 5)]  # then the held frames, as they came
    # from now on live frames pass, except any the fetch already carried
    assert fill.live(frame("video", 3, 4)) == []
    assert locs(fill.live(frame("video", 3, 6))) == [("video", 3, 6)]
    assert not fill.wants("video-480p")  # a track added later starts live


def test_a_response_cut_at_the_byte_limit_is_continued_from_where_it_ended():
    fill = WindowFill(2)
    ids = start(fill, ("video",))
    rid = ids["video"]
    fill.fetch_ok(rid, (2, 3))  # the relay cut it: its End Location is before the subscription's start
    for i in range(3):
        fill.fetched(rid, frame("video", 2, i))
    more = fill.fetch_ended(rid)
    assert more == Continue("video", (2, 3), (3, 5))
    fill.fetching(7, "video")
    fill.fetch_ok(7, (3, 5))
    for g, i in [(2, i) for i in range(3, FPS)] + [(3, i) for i in range(5)]:
        fill.fetched(7, frame("video", g, i))
    assert fill.fetch_ended(7) is None and fill.ready
    out = fill.release(lambda _t: 1000)
    assert [(f.group, f.index) for f in out] == [(2, i) for i in range(FPS)] + [(3, i) for i in range(5)]


def test_a_relay_that_keeps_cutting_means_the_live_edge():
    fill = WindowFill(2)
    rid = start(fill, ("video",))["video"]
    for n in range(MAX_CONTINUATIONS):
        fill.fetch_ok(rid, (2, n))
        more = fill.fetch_ended(rid)
        assert isinstance(more, Continue)
        rid = 1000 + n
        fill.fetching(rid, "video")
    fill.fetch_ok(rid, (2, 99))
    assert fill.fetch_ended(rid) == "video"
    assert fill.ready and fill.release(lambda _t: 1000) == []


def test_objects_unknown_to_the_relay_inside_the_range_leave_only_the_run_after_them():
    fill = WindowFill(3)
    rid = start(fill, ("video",))["video"]
    fill.fetch_ok(rid, (3, 5))
    fill.unknown(rid, (0, 2**62 - 1))  # older than its cache: nothing lost
    for i in range(FPS):
        fill.fetched(rid, frame("video", 1, i))
    fill.unknown(rid, (2, 2**62 - 1))  # group 2 was too big to cache: a hole
    for i in range(5):
        fill.fetched(rid, frame("video", 3, i))
    fill.fetch_ended(rid)
    out = fill.release(lambda _t: 1000)
    assert [(f.group, f.index) for f in out] == [(3, i) for i in range(5)]


def test_a_refused_fetch_starts_that_track_at_the_live_edge_and_drops_what_it_held():
    fill = WindowFill(2)
    ids = start(fill)
    fill.live(frame("video", 4, 0))  # from the subscription at the largest object: let go
    assert fill.failed(ids["video"]) == "video"
    assert fill.failed(ids["video"]) is None  # said once
    assert fill.live(frame("video", 3, 0)) == []  # its new subscription (the group in progress): held
    fill.fetch_ok(ids["audio"], (3, 5))
    fill.fetched(ids["audio"], frame("audio", 2, 0))
    assert not fill.ready
    fill.fetch_ended(ids["audio"])
    out = fill.release(lambda _t: 1000)
    assert locs(out) == [("audio", 2, 0), ("video", 3, 0)]


def test_a_fill_that_takes_too_long_starts_the_tracks_still_fetching_live():
    fill = WindowFill(2)
    ids = start(fill)
    fill.fetch_ok(ids["audio"], (3, 5))
    fill.fetch_ended(ids["audio"])
    assert fill.expire() == [("video", [ids["video"]])]
    assert fill.ready


def test_nothing_published_before_the_subscription_means_nothing_to_fetch():
    fill = WindowFill(2)
    fill.subscribing("video")
    assert not fill.accepted("video", None)
    assert fill.ready
    assert fill.release(lambda _t: 1000) == []
    assert locs(fill.live(frame("video", 0, 0))) == [("video", 0, 0)]
