"""The broadcast that outlives its publisher, in memory: the time is passed in, nothing sleeps."""

import time
from dataclasses import replace

import pytest

from rtmpq.errors import StreamNameInUse
from rtmpq.media.broadcast import SEAM_MIN_GAP_MS, BroadcastEnded, BroadcastRegistry, CatalogUpdate
from rtmpq.media.catalog import Catalog, TrackInfo
from rtmpq.media.frames import AUDIO, DATA, VIDEO, Frame


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


def av_catalog(name: str, *extra: TrackInfo) -> Catalog:
    c = catalog(name, 320).with_track(TrackInfo(name=AUDIO, kind=AUDIO, codec="mp4a.40.2", init_data=b"\x12\x10",
                                                sample_rate=44100, channels=2))
    for info in extra:
        c = c.with_track(info)
    return c


def av_frames(n_groups: int, start_dts: int = 0, audio: bool = True) -> list[Frame]:
    """Video groups of 3 frames, with an audio frame after each video frame (group by group, as
    the demuxer numbers them)."""
    out = []
    for f in frames(n_groups, start_dts=start_dts):
        out.append(f)
        if audio:
            out.append(Frame(AUDIO, f.group, f.index, f.dts, f.dts, True, b"a" * 4))
    return out


RUNG = TrackInfo(name="video-180p", kind=VIDEO, codec="avc1.64000c", init_data=b"\x01r", width=320, height=180,
                 alt_group=1)


async def test_a_publisher_back_without_audio_takes_audio_out_of_the_catalog_after_its_first_group():
    """ffmpeg restarted with -an: once the new publish's first group is over (its second keyframe),
    the catalog is re-issued without audio, and video goes on; a transcoder rung and the data
    track stay."""
    registry = BroadcastRegistry()
    b = registry.publish("live/an")
    video = replace(catalog("live/an", 320).track(VIDEO), alt_group=1)
    b.set_catalog(av_catalog("live/an", video, TrackInfo(name=DATA, kind=DATA, codec="amf0")))
    b.set_catalog(Catalog("live/an", (RUNG,)))  # the local transcoder's rung
    reader = b.reader()
    for f in av_frames(3):
        b.push(f)
    b.publisher_left(30.0, now=100.0)
    assert registry.publish("live/an") is b
    b.set_catalog(Catalog("live/an").with_track(video))  # the new publish: video only
    second = frames(3)
    for f in second[:3]:  # its first group: what else it carries may still come
        b.push(f)
    assert b.catalog.track(AUDIO) is not None
    b.push(second[3])  # the second keyframe: its track set is known
    items = drain(reader)
    updates = [i.catalog for i in items if isinstance(i, CatalogUpdate)]
    assert [t.name for t in updates[-1].tracks] == [VIDEO, "video-180p", DATA]
    assert b.catalog is updates[-1] and updates[-1].version > updates[0].version
    # the update comes just before the frame that settled it, and frames go on
    assert isinstance(items[-2], CatalogUpdate) and items[-1].track == VIDEO and items[-1].index == 0
    for f in second[4:]:
        b.push(f)
    got = [i for i in drain(reader) if isinstance(i, Frame)]
    assert [f.group for f in got] == [4, 4, 5, 5, 5]
    late = b.reader()
    assert all(not isinstance(i, Frame) or i.track != AUDIO for i in drain(late))  # a late reader too
    late.close()


def av_published(name: str):
    """A broadcast whose first publish sent video and audio, two groups, read from the start:
    (registry, broadcast, reader)."""
    registry = BroadcastRegistry()
    b = registry.publish(name)
    b.set_catalog(av_catalog(name))
    reader = b.reader()
    for f in av_frames(2):
        b.push(f)
    return registry, b, reader


async def test_a_publisher_back_with_the_same_tracks_changes_no_catalog():
    registry, b, reader = av_published("live/same")
    b.publisher_left(30.0, now=100.0)
    registry.publish("live/same")
    b.set_catalog(Catalog("live/same").with_track(catalog("live/same", 320).track(VIDEO)))
    b.push(av_frames(1)[0])  # video's sequence header came first, audio's a moment later
    b.set_catalog(av_catalog("live/same"))
    for f in av_frames(3)[1:]:
        b.push(f)
    items = drain(reader)
    assert sum(isinstance(i, CatalogUpdate) for i in items) == 1  # the first publish's only
    assert {t.name for t in b.catalog.tracks} == {VIDEO, AUDIO}
    assert [f.group for f in items if isinstance(f, Frame) and f.track == AUDIO][-1] == 4


async def test_an_audio_only_publisher_back_without_video_takes_video_out_after_its_first_group():
    """An audio-only publish has groups too (AUDIO_ONLY_GROUP_MS): its second one settles it."""
    registry = BroadcastRegistry()
    b = registry.publish("live/radio")
    b.set_catalog(av_catalog("live/radio"))
    for f in av_frames(2):
        b.push(f)
    b.publisher_left(30.0, now=100.0)
    registry.publish("live/radio")
    b.set_catalog(Catalog("live/radio").with_track(av_catalog("live/radio").track(AUDIO)))
    for i in range(5):
        b.push(Frame(AUDIO, 0, i, i * 23, i * 23, True, b"a"))
    assert b.catalog.track(VIDEO) is not None
    b.push(Frame(AUDIO, 1, 0, 2000, 2000, True, b"a"))
    assert [t.name for t in b.catalog.tracks] == [AUDIO]


async def test_the_relay_ends_a_track_the_returning_publisher_does_not_carry_and_takes_it_back_later():
    """The relay's reading of a local broadcast: the audio track that left the catalog ends for
    its MoQ subscribers (PUBLISH_DONE); a later publish with audio again makes a new one."""
    from rtmpq.moq.broadcast_source import BroadcastSource
    from rtmpq.moq.loc import CATALOG_TRACK

    registry = BroadcastRegistry()
    b = registry.publish("live/moq")
    ended = []
    source = BroadcastSource(b, ended.extend, lambda source: None)
    b.set_catalog(av_catalog("live/moq"))
    for f in av_frames(2):
        b.push(f)
    audio = source.fanouts[AUDIO]
    b.publisher_left(30.0, now=100.0)
    registry.publish("live/moq")
    b.set_catalog(Catalog("live/moq").with_track(catalog("live/moq", 320).track(VIDEO)))
    for f in av_frames(2, audio=False):
        b.push(f)
    assert ended == [audio] and audio.ended and AUDIO not in source.fanouts
    latest = Catalog.from_json(bytes(source.fanouts[CATALOG_TRACK].cache.latest(time.monotonic()).objects[0].payload))
    assert [t.name for t in latest.tracks] == [VIDEO]
    assert not source.fanouts[VIDEO].ended
    b.publisher_left(30.0, now=200.0)
    registry.publish("live/moq")  # back with audio: a track again
    b.set_catalog(av_catalog("live/moq"))
    for f in av_frames(2):
        b.push(f)
    assert source.fanouts[AUDIO] is not audio and not source.fanouts[AUDIO].ended and ended == [audio]
    source.close()


def multitrack_catalog(name: str) -> Catalog:
    """E-RTMP multitrack: the main picture (``video``), a second picture (``video-1``), audio."""
    second = TrackInfo(name="video-1", kind=VIDEO, codec="avc1.64001e", init_data=b"\x01v1", width=640, height=360,
                       alt_group=1)
    return av_catalog(name, replace(catalog(name, 320).track(VIDEO), alt_group=1), second)


def rung(source: str, height: int) -> TrackInfo:
    """A transcoder rung of ``source`` as the transcoder lists it (coder.RungEncoder.info)."""
    return TrackInfo(name=f"{source}-{height}p", kind=VIDEO, codec="avc1.64000c", init_data=b"\x01r",
                     width=height * 16 // 9, height=height, alt_group=1, source=source)


async def test_the_rungs_of_a_track_the_returning_publisher_does_not_carry_leave_with_it():
    """A multitrack publisher back with its main picture only: ``video-1`` leaves the catalog once
    the new publish's first group is over, and so do its rungs (nothing feeds them any more), for
    the relay's MoQ subscribers too (PUBLISH_DONE); the rungs of ``video`` stay."""
    from rtmpq.moq.broadcast_source import BroadcastSource

    registry = BroadcastRegistry()
    b = registry.publish("live/mt")
    ended = []
    source = BroadcastSource(b, ended.extend, lambda source: None)
    b.set_catalog(multitrack_catalog("live/mt"))
    b.set_catalog(Catalog("live/mt", (rung(VIDEO, 180), rung("video-1", 180))))  # the local transcoder's
    for f in av_frames(2):
        b.push(f)
    b.push_rendition(Frame("video-1-180p", 1, 0, 33 * 3, 33 * 3, True, b"r"))
    gone_rung = source.fanouts["video-1-180p"]
    b.publisher_left(30.0, now=100.0)
    registry.publish("live/mt")
    b.set_catalog(Catalog("live/mt").with_track(replace(catalog("live/mt", 320).track(VIDEO), alt_group=1))
                  .with_track(av_catalog("live/mt").track(AUDIO)))
    for f in av_frames(2):
        b.push(f)
    assert [t.name for t in b.catalog.tracks] == [VIDEO, "video-180p", AUDIO]
    assert gone_rung in ended and gone_rung.ended and "video-1-180p" not in source.fanouts
    assert not source.fanouts["video-180p"].ended
    source.close()


async def test_a_rung_made_by_another_node_is_listed_only_while_its_source_is():
    """``rtmpq transcode`` adds its rungs to the relay's catalog (with_added_tracks): a rung whose
    source track left the broadcast's catalog is not listed; it is again when the source is back."""
    from rtmpq.moq.broadcast_source import with_added_tracks

    added = (rung(VIDEO, 180), rung("video-1", 180))
    both = with_added_tracks(multitrack_catalog("live/x"), added)
    assert {"video-180p", "video-1-180p"} <= {t.name for t in both.tracks}
    main_only = with_added_tracks(multitrack_catalog("live/x").without_tracks({"video-1"}), added)
    assert [t.name for t in main_only.tracks] == [VIDEO, "video-180p", AUDIO]


def test_a_rung_names_its_source_track_in_the_msf_catalog():
    c = Catalog("live/s", (rung("video-1", 180),))
    assert Catalog.from_json(c.to_json()).track("video-1-180p").source == "video-1"
    assert Catalog.from_json(av_catalog("live/s").to_json()).track(VIDEO).source is None


async def test_a_first_publish_that_sent_only_headers_is_followed_by_the_next_one_with_frames():
    """A publisher connects, sends its sequence headers (video, audio) and drops before any frame;
    it comes back with video only and publishes: once that publish's first group is over, audio
    leaves the catalog (nothing will ever feed it)."""
    registry = BroadcastRegistry()
    b = registry.publish("live/h")
    b.set_catalog(av_catalog("live/h"))
    b.publisher_left(30.0, now=100.0)
    assert registry.publish("live/h") is b
    b.set_catalog(Catalog("live/h").with_track(catalog("live/h", 320).track(VIDEO)))
    second = frames(2)
    for f in second[:3]:
        b.push(f)
    assert b.catalog.track(AUDIO) is not None  # its first group: audio may still come
    b.push(second[3])
    assert [t.name for t in b.catalog.tracks] == [VIDEO]


async def test_a_returning_publish_of_headers_only_wipes_nothing_and_the_next_publish_decides():
    """P1 publishes video and audio; P2 sends only a video header and drops; the catalog keeps
    audio (P2 published no frame: it decides nothing). P3 comes with video and audio: nothing
    leaves. P4 sends headers only for video and drops; P5 publishes video only: audio leaves after
    P5's first group, at the P5 group numbers (no half state left over from P2 or P4)."""
    registry, b, reader = av_published("live/hh")
    video_only = Catalog("live/hh").with_track(catalog("live/hh", 320).track(VIDEO))
    b.publisher_left(30.0, now=100.0)
    registry.publish("live/hh")  # P2: a header, no frame
    b.set_catalog(video_only)
    b.publisher_left(30.0, now=101.0)
    assert {t.name for t in b.catalog.tracks} == {VIDEO, AUDIO}
    registry.publish("live/hh")  # P3: video and audio
    b.set_catalog(av_catalog("live/hh"))
    for f in av_frames(3):
        b.push(f)
    assert {t.name for t in b.catalog.tracks} == {VIDEO, AUDIO}
    updates = [i for i in drain(reader) if isinstance(i, CatalogUpdate)]
    assert len(updates) == 1  # the first publish's only
    b.publisher_left(30.0, now=200.0)
    registry.publish("live/hh")  # P4: a header, no frame
    b.set_catalog(video_only)
    b.publisher_left(30.0, now=201.0)
    assert {t.name for t in b.catalog.tracks} == {VIDEO, AUDIO}
    registry.publish("live/hh")  # P5: video only
    b.set_catalog(video_only)
    p5 = frames(2)
    for f in p5[:3]:
        b.push(f)
    assert b.catalog.track(AUDIO) is not None
    b.push(p5[3])
    assert [t.name for t in b.catalog.tracks] == [VIDEO]
    got = [i for i in drain(reader) if isinstance(i, Frame)]
    assert [f.group for f in got if f.track == VIDEO][-4:] == [5, 5, 5, 6]


async def test_a_publisher_lost_mid_group_tells_listeners_and_no_late_reader_starts_on_the_cut_group():
    from rtmpq.media.broadcast import PublisherLeft

    registry = BroadcastRegistry()
    b = registry.publish("live/cut")
    b.set_catalog(catalog("live/cut", 320))
    for f in frames(2):
        b.push(f)
    heard = []
    b.listen(heard.append)
    b.publisher_left(30.0, now=100.0, lost=True)
    assert isinstance(heard[-1], PublisherLeft) and heard[-1].lost and b.live  # kept for the grace period as ever
    late = b.reader()
    assert not [i for i in drain(late) if isinstance(i, Frame)]  # the cut group is not handed on
    b2 = registry.publish("live/clean")
    for f in frames(2):
        b2.push(f)
    b2.publisher_left(30.0, now=100.0)  # a clean unpublish: its last group is whole
    assert [f.group for f in drain(b2.reader()) if isinstance(f, Frame)] == [1, 1, 1]
