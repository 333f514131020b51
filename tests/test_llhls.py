"""The LL-HLS packager in memory: init segment versions and discontinuities."""

import re
from collections.abc import Callable
from dataclasses import replace

import pytest

from rtmpq.edge.llhls import PART_TARGET, LlHlsStream
from rtmpq.media.catalog import Catalog, TrackInfo
from rtmpq.media.frames import AUDIO, VIDEO, Frame


def video_catalog(avcc: bytes, width: int) -> Catalog:
    return Catalog("live/x").with_track(TrackInfo(VIDEO, VIDEO, "avc1.64001e", avcc, 1000, width, 240,
                                                  nal_length_size=4))


def push_group(stream: LlHlsStream, group: int, frames: int = 10) -> None:
    for i in range(frames):
        ts = (group * frames + i) * 100
        stream.push(Frame(VIDEO, group, i, ts, ts, i == 0, b"\x00\x00\x00\x01\x65" if i == 0 else b"\x00\x00\x00\x01\x41", 1))


def maps_and_discontinuities(playlist: str) -> list[str]:
    return [line for line in playlist.splitlines()
            if line.startswith("#EXT-X-MAP") or line == "#EXT-X-DISCONTINUITY"
            or line.endswith(".m4s") and "PART" not in line]


def test_a_new_avcc_gets_its_own_init_uri_and_a_discontinuity():
    stream = LlHlsStream(tracks={VIDEO}, prefix="v-", window=4)
    first, second = b"\x01\x64\x00\x1eAAAA", b"\x01\x64\x00\x1fBBBB"
    stream.set_catalog(video_catalog(first, 320))
    push_group(stream, 0)
    push_group(stream, 1)
    stream.set_catalog(video_catalog(first, 320))  # a repeated sequence header changes nothing
    stream.set_catalog(video_catalog(second, 640))  # the publisher's encoder restarts: new SPS/PPS
    push_group(stream, 2)
    push_group(stream, 3)
    stream.end()
    assert maps_and_discontinuities(stream.media_playlist()) == [
        '#EXT-X-MAP:URI="v-init-0.mp4"', "v-seg0.m4s", "v-seg1.m4s",
        "#EXT-X-DISCONTINUITY", '#EXT-X-MAP:URI="v-init-1.mp4"', "v-seg2.m4s", "v-seg3.m4s"]
    # each URI keeps its bytes (players cache them): the old init is still served as it was
    assert first in stream.init_version_data(0) and second in stream.init_version_data(1)
    assert stream.init_version_data(1) == stream.init
    assert [(s.msn, s.init_version, s.discontinuity) for s in stream.segments] == [
        (0, 0, False), (1, 0, False), (2, 1, True), (3, 1, False)]


def test_discontinuity_sequence_counts_the_discontinuities_that_left_the_window():
    stream = LlHlsStream(tracks={VIDEO}, prefix="v-", window=2)
    stream.set_catalog(video_catalog(b"\x01\x64\x00\x1eAAAA", 320))
    push_group(stream, 0)
    stream.set_catalog(video_catalog(b"\x01\x64\x00\x1eBBBB", 320))
    push_group(stream, 1)
    push_group(stream, 2)
    push_group(stream, 3)
    stream.end()
    playlist = stream.media_playlist()
    # segment 1 (the discontinuity) has left the two-segment window: its count stays
    assert "#EXT-X-DISCONTINUITY-SEQUENCE:1" in playlist
    assert maps_and_discontinuities(playlist) == ['#EXT-X-MAP:URI="v-init-1.mp4"', "v-seg2.m4s", "v-seg3.m4s"]
    assert stream.init_version_data(0) is None  # no segment in the window needs it any more


def test_the_audio_playlist_marks_the_videos_discontinuity_with_its_own_init():
    """The video's configuration changes (a new sequence header, or new SPS/PPS in-band): the audio
    playlist has a discontinuity at the same segment as the video's, so both count the same
    discontinuity sequence (hls.js and ExoPlayer map audio timestamps by it), and keeps its one
    init segment. A catalog with the same video configuration, or another rendition's change,
    changes nothing."""
    stream = LlHlsStream(tracks={AUDIO}, prefix="a-")
    audio = TrackInfo(AUDIO, AUDIO, "mp4a.40.2", b"\x12\x10", 1000, sample_rate=44100, channels=2)
    catalog = video_catalog(b"\x01\x64\x00\x1eAAAA", 320).with_track(audio)
    rung = TrackInfo("video-240p", VIDEO, "avc1.64000d", b"\x01\x64\x00\x0dCCCC", 1000, 160, 120, nal_length_size=4)

    def push_audio(group: int) -> None:
        for i in range(40):
            ts = group * 1000 + i * 25
            stream.push(Frame(AUDIO, group, i, ts, ts, True, b"\x21", 1))

    stream.set_catalog(catalog)
    push_audio(0)
    stream.set_catalog(catalog.with_track(rung))  # a rung added, then its configuration changes
    stream.set_catalog(catalog.with_track(replace(rung, init_data=b"\x01\x64\x00\x0dDDDD")))
    push_audio(1)
    stream.set_catalog(catalog.with_track(video_catalog(b"\x01\x64\x00\x1fBBBB", 640).tracks[0]))
    push_audio(2)
    push_audio(3)
    stream.end()
    assert maps_and_discontinuities(stream.media_playlist()) == [
        '#EXT-X-MAP:URI="a-init-0.mp4"', "a-seg0.m4s", "a-seg1.m4s",
        "#EXT-X-DISCONTINUITY", '#EXT-X-MAP:URI="a-init-0.mp4"', "a-seg2.m4s", "a-seg3.m4s"]
    assert [s.discontinuity_sequence for s in stream.segments] == [0, 0, 1, 1]


def test_segment_dates_follow_media_time_on_one_clock_for_every_rendition():
    """Dates (EXT-X-PROGRAM-DATE-TIME) come from media time with one anchor per broadcast: a
    publisher that runs behind and bursts (arrival times jitter by a second) still gets dates
    two seconds apart for two-second segments, and a rendition made later (a rung) and the
    audio get the same date for the same media time."""
    from rtmpq.edge.llhls import MediaClock

    clock = MediaClock()
    video, rung, audio = (LlHlsStream(tracks={name}, prefix=f"{name}-") for name in (VIDEO, "video-360p", AUDIO))
    catalog = video_catalog(b"\x01\x64\x00\x1eAAAA", 320).with_track(
        TrackInfo("video-360p", VIDEO, "avc1.64001e", b"\x01\x64\x00\x1eBBBB", 1000, 640, 360, nal_length_size=4)
    ).with_track(TrackInfo(AUDIO, AUDIO, "mp4a.40.2", b"\x12\x10", 1000, sample_rate=44100, channels=2))
    for s in (video, rung, audio):
        s.clock, s.group_origin = clock, 0  # as the edge sets them for a broadcast's playlists
        s.set_catalog(catalog)
    base = 1_800_000_000 * 10**9
    jitter = [0, 900, -300, 1200, 50]  # ms the arrival is late or early, per group
    for group in range(5):
        arrival = base + (group * 2000 + jitter[group]) * 10**6
        for i in range(60):
            pts = 67 + group * 2000 + i * 33
            frame = Frame(VIDEO, group, i, pts - 67, pts, i == 0, b"\x00\x00\x00\x01\x65", arrival + i * 33 * 10**6)
            video.push(frame)
            if group >= 2:  # the rung starts later, from its own arrival times
                rung.push(Frame("video-360p", group, i, pts, pts, i == 0, b"\x00\x00\x00\x01\x65",
                                arrival + (500 + i * 33) * 10**6))
        for k in range(86):
            t = round((group * 86 + k) * 1024 * 1000 / 44100)
            audio.push(Frame(AUDIO, group, k, t, t, True, b"\x21\x00", arrival + t % 2000 * 10**6))

    def dates(s):
        return {seg.msn: seg.started_ns for seg in s.segments}

    v, r = dates(video), dates(rung)
    assert [v[m + 1] - v[m] for m in range(4)] == [2000 * 10**6] * 4
    assert all(r[m] == v[m] for m in r) and set(r) == {2, 3, 4}
    a = list(audio.segments)
    for seg in a[1:]:  # an audio segment starts up to a part before the video's (dated by its
        # first pts, 67 ms after its dts here): dates say so
        assert 0 <= v[seg.msn] - seg.started_ns < (PART_TARGET + 0.067) * 10**9
    # every audio part but a segment's (possibly longer-carried) first is a whole part (8 AAC
    # frames in 0.2 s), never a sliver at a group boundary
    assert all(p.duration > 0.85 * PART_TARGET for seg in a[:-1] for p in seg.parts), \
        [[p.duration for p in s.parts] for s in a]


def test_a_rung_playlist_waits_until_the_rung_has_caught_up_with_its_source():
    """A rung pulled mid-group starts at that group's IDR and decodes its way up to the live edge;
    players get its playlist only once it is within RUNG_LIVE_LAG of the source (hls.js places a
    level it switches to at the old level's playhead: past a lagging rung's edge, it would play
    on at that edge with no buffer). Once caught up, a rung stays offered until it is let go; one
    that cannot catch up is offered RUNG_CATCH_UP_WAIT after it was pulled."""
    from rtmpq.edge.server import RUNG_CATCH_UP_WAIT, RUNG_LIVE_LAG, _Broadcast

    b = _Broadcast("live/x")
    b.catalog = Catalog("live/x").with_track(
        TrackInfo(VIDEO, VIDEO, "avc1.64001e", b"\x01\x64\x00\x1eAAAA", 1000, 1280, 720, nal_length_size=4, alt_group=1)
    ).with_track(TrackInfo("video-360p", VIDEO, "avc1.64001e", b"\x01\x64\x00\x1eBBBB", 1000, 640, 360,
                           nal_length_size=4, alt_group=1))
    source = b.streams["v"]
    rung = b.streams["v360p"] = LlHlsStream(tracks={"video-360p"}, prefix="v360p-")
    for s in b.streams.values():
        s.set_catalog(b.catalog)
    assert b.caught_up(source, 0.0) and b.caught_up(b.streams["a"], 0.0)  # the source and audio at once

    def push(stream, track, first, upto_ms):  # 30 fps, 2 s groups; the source has B-frames
        for n in range(first, upto_ms // 33 + 1):
            pts = n * 33 + (67 if track == VIDEO else 0)
            stream.push(Frame(track, n // 60, n % 60, n * 33, pts, n % 60 == 0, b"\x00\x00\x00\x01\x65", 1))
        return upto_ms // 33 + 1

    sent = push(source, VIDEO, 0, 3000)  # group 1, 1 s in: the rung is pulled, starts at its IDR
    b.pulled_at["video-360p"] = 100.0
    assert not b.caught_up(rung, 100.0)  # nothing yet
    done = push(rung, "video-360p", 60, 2500)
    assert not b.caught_up(rung, 101.0) and 3.067 - rung.media_time > RUNG_LIVE_LAG
    assert b.caught_up(rung, 100.0 + RUNG_CATCH_UP_WAIT)  # as live as it gets, after a while
    b.rungs_live.clear()
    push(rung, "video-360p", done, 2850)
    assert b.caught_up(rung, 101.5) and 3.067 - rung.media_time <= RUNG_LIVE_LAG
    push(source, VIDEO, sent, 6000)  # the rung falls behind again: still offered (players have it)
    assert b.caught_up(rung, 102.0)

    class Source:
        def want(self, track, on):
            self.last = (track, on)

    b.source, b.wanted = Source(), {"video-360p": 0.0}
    b.idle_renditions(1000.0)  # let go: pulled again later, it starts behind again
    assert b.source.last == ("video-360p", False) and "video-360p" not in b.pulled_at
    assert not b.caught_up(rung, 1000.0)


AAC = TrackInfo(AUDIO, AUDIO, "mp4a.40.2", b"\x12\x10", 1000, sample_rate=44100, channels=2)


def source_and_rung(track: str, width: int, height: int) -> tuple[LlHlsStream, LlHlsStream]:
    """A source's stream and a rung's that follows its timeline, as the edge makes them."""
    source, rung = LlHlsStream(tracks={VIDEO}), LlHlsStream(tracks={track})
    rung.follows = source
    catalog = video_catalog(b"\x01\x64\x00\x1eAAAA", 320).with_track(
        TrackInfo(track, VIDEO, "avc1.64001e", b"\x01\x64\x00\x1eBBBB", 1000, width, height, nal_length_size=4))
    for s in (source, rung):
        s.group_origin = 0
        s.set_catalog(catalog)
    return source, rung


def playlists_through_a_change_at_group_2(changed: Callable[[Catalog], Catalog]) -> tuple[LlHlsStream, ...]:
    """(source video, a rung following it, audio): four groups, the catalog ``changed`` at group 2
    (the rung a group late)."""
    source, rung = source_and_rung("video-360p", 640, 360)
    audio = LlHlsStream(tracks={AUDIO})
    audio.group_origin = 0
    catalog = source.catalog.with_track(AAC)
    for stream in (source, rung, audio):
        stream.set_catalog(catalog)
    for g in range(4):
        if g == 2:
            for stream in (source, rung, audio):
                stream.set_catalog(changed(catalog))
        for stream, track in ((source, VIDEO), (audio, AUDIO), (rung, "video-360p")):  # the rung a group late
            for i in range(30):
                ts = g * 1000 + i * 33
                stream.push(Frame(track, g, i, ts, ts, i == 0 or track == AUDIO, b"\x00\x00\x00\x01\x65", 1))
    for stream in (source, rung, audio):
        assert [(s.msn, s.discontinuity_sequence) for s in stream.segments] == [(0, 0), (1, 0), (2, 1), (3, 1)]
        assert maps_and_discontinuities(stream.media_playlist()).count("#EXT-X-DISCONTINUITY") == 1
    return source, rung, audio


def test_every_playlist_counts_the_discontinuity_of_a_new_source_init():
    """The source's video takes a new init at group 2 (its picture size changed); a rung made from
    it keeps its own init, and so does the audio: both mark EXT-X-DISCONTINUITY at group 2 as the
    source does, so a player on any rung with the audio maps one discontinuity sequence (hls.js
    waits for video of the audio's sequence before it loads audio)."""
    source, rung, audio = playlists_through_a_change_at_group_2(
        lambda catalog: catalog.with_track(video_catalog(b"\x01\x64\x00\x1fCCCC", 640).tracks[0]))
    assert [s.init_version for s in source.segments] == [0, 0, 1, 1]
    assert [s.init_version for s in rung.segments] == [s.init_version for s in audio.segments] == [0, 0, 0, 0]


def test_every_playlist_counts_the_discontinuity_of_a_new_audio_init():
    """The other way round: the audio takes a new init at group 2 (another AAC sample rate and
    channel count, its video unchanged, no gap in the timeline). The audio playlist marked
    EXT-X-DISCONTINUITY with its new init, the video playlists nothing: they counted one
    discontinuity fewer from there on, and a player that joined after the change (hls.js maps
    audio by the video of the same discontinuity sequence) had no video to map the audio with.
    Now the video and the rungs made from it mark it too, keeping their inits."""
    source, rung, audio = playlists_through_a_change_at_group_2(
        lambda catalog: catalog.with_track(replace(AAC, init_data=b"\x11\x88", sample_rate=48000, channels=1)))
    assert [s.init_version for s in audio.segments] == [0, 0, 1, 1]
    assert [s.init_version for s in source.segments] == [s.init_version for s in rung.segments] == [0, 0, 0, 0]


def test_a_rung_that_skips_frames_keeps_its_sources_timeline():
    """A rung that fell behind drops the rest of a group (or whole groups): that gap is not a seam
    of its own (an EXT-X-DISCONTINUITY only the rung had made hls.js misplace it by seconds at a
    switch); its last picture is shown through the gap. A seam of the source is one of the rung
    too, and a rung stopped and pulled again much later starts its playlist afresh."""
    source, rung = source_and_rung("video-360p", 640, 360)

    def group(stream, track, g, start_ms, frames=60):
        for i in range(frames):
            ts = start_ms + i * 33
            stream.push(Frame(track, g, i, ts, ts, i == 0, b"\x00\x00\x00\x01\x65", 1))

    for g in range(4):  # the source: groups 0-3, then a seam (a publisher that came back 5 s later)
        group(source, VIDEO, g, g * 1980)
    group(source, VIDEO, 4, 4 * 1980 + 5000)
    group(source, VIDEO, 5, 5 * 1980 + 5000)
    group(rung, "video-360p", 0, 0)
    group(rung, "video-360p", 1, 1980, frames=20)  # the rest of group 1 dropped, group 2 skipped
    group(rung, "video-360p", 3, 3 * 1980)
    group(rung, "video-360p", 4, 4 * 1980 + 5000)
    group(rung, "video-360p", 5, 5 * 1980 + 5000)
    assert [s.discontinuity for s in source.segments] == [False] * 4 + [True, False]
    assert [s.discontinuity for s in rung.segments] == [False] * 4 + [True, False]
    # group 1's last picture through the rest of group 1; group 2 a gap in its place (see
    # test_a_group_a_rung_skipped_whole_keeps_its_place_as_a_gap)
    assert abs(rung.segments[1].duration - 1.98) < 0.01 and rung.segments[2].gap
    assert "#EXT-X-DISCONTINUITY-SEQUENCE" not in rung.media_playlist()
    group(rung, "video-360p", 20, 20 * 1980 + 5000)  # stopped, pulled again 25 s later
    assert [s.msn for s in rung.segments] == [20]
    group(source, VIDEO, 21, 21 * 1980 + 60000)  # the publisher back a minute later: a seam of both
    group(rung, "video-360p", 21, 21 * 1980 + 60000)
    assert [(s.msn, s.discontinuity) for s in rung.segments] == [(20, False), (21, True)]


def test_a_group_a_rung_skipped_whole_keeps_its_place_as_a_gap():
    """A rung that skipped group 2 whole (its transcoder fell behind): the rung's playlist lists
    the source's segment of it as EXT-X-GAP (its parts GAP=YES), of the source's duration, so
    every segment stays within the target duration and numbered as the source's. Before, the
    segment of group 1 lasted through group 2 (EXTINF 2.000 for a target of 1) and the rung's
    later segments were numbered one behind the source's."""
    source, rung = source_and_rung("video-360p", 640, 360)
    n = 0
    for g in range(5):
        for i in range(30):
            ts = n * 100 // 3
            n += 1
            source.push(Frame(VIDEO, g, i, ts, ts, i == 0, b"\x00\x00\x00\x01\x65", 1))
            if g != 2:
                rung.push(Frame("video-360p", g, i, ts, ts, i == 0, b"\x00\x00\x00\x01\x65", 1))
    source.end()
    rung.end()
    assert [(s.msn, s.group, round(s.duration, 2)) for s in rung.segments] == \
        [(s.msn, s.group, round(s.duration, 2)) for s in source.segments]
    assert [s.gap for s in rung.segments] == [False, False, True, False, False]
    playlist = rung.media_playlist()
    assert "#EXT-X-GAP\n#EXTINF:1.000,\nseg2.m4s\n" in playlist
    assert all(float(d) <= 1.5 for d in re.findall(r"#EXTINF:([\d.]+),", playlist))
    gap_parts = re.findall(r'#EXT-X-PART:DURATION=([\d.]+),URI="seg2\.\d+\.m4s",GAP=YES\n', playlist)
    assert gap_parts and sum(map(float, gap_parts)) == pytest.approx(1.0, abs=0.01)
    assert 0 < rung.average_bandwidth  # (a gap, no bytes, is not measured)


def av_catalog() -> Catalog:
    return video_catalog(b"\x01\x64\x00\x1eAAAA", 320).with_track(
        TrackInfo(AUDIO, AUDIO, "mp4a.40.2", b"\x12\x10", 1000, sample_rate=44100, channels=2))


def listed_parts(playlist: str) -> list[tuple[str, float]]:
    return [(uri, float(d)) for d, uri in re.findall(r'#EXT-X-PART:DURATION=([\d.]+),URI="([^"]+)"', playlist)]


def test_a_part_is_listed_as_soon_as_its_last_frame_is_in():
    """At 30 fps (RTMP timestamps in ms: 0, 33, 67, 100, ...) a 0.3 s part holds 9 frames; it is
    in the playlist once the 9th is pushed, not a frame interval later when the 10th arrives, and
    its last frame's duration (from the frame interval) makes it exactly 0.300 s."""
    stream = LlHlsStream(tracks={VIDEO}, prefix="v-", part_target=0.3)
    stream.set_catalog(av_catalog())
    for n in range(9):
        ts = round(n * 1000 / 30)
        stream.push(Frame(VIDEO, 0, n, ts, ts, n == 0, b"\x00\x00\x00\x01\x65", 1))
        if n < 8:
            assert stream.segments[0].parts == []
    assert stream.next_part == (0, 1)  # the hint moved on: a blocking request for part 0 returns now
    assert listed_parts(stream.media_playlist()) == [("v-seg0.0.m4s", 0.3)]
    for n in range(9, 31):  # the rest of the 1 s group and the next keyframe
        ts = round(n * 1000 / 30)
        stream.push(Frame(VIDEO, n // 30, n % 30, ts, ts, n % 30 == 0, b"\x00\x00\x00\x01\x65", 1))
    assert [p for _, p in listed_parts(stream.media_playlist())] == [0.3, 0.3, 0.3, 0.1]
    assert stream.segments[0].duration == pytest.approx(1.0)  # the predicted durations add up to the media's


def push_media(stream: LlHlsStream, fps: float, seconds: float, gop: float) -> None:
    """Video at ``fps`` (ms timestamps, a keyframe every ``gop`` s) and AAC at 44.1 kHz, interleaved
    by time as a publisher sends them."""
    frames = [Frame(VIDEO, int(n / fps // gop), n, round(n * 1000 / fps), round(n * 1000 / fps),
                    round(n / fps * 1000) % round(gop * 1000) < 1000 / fps - 1e-6, b"\x00\x00\x00\x01\x65", 1)
              for n in range(int(seconds * fps))]
    frames += [Frame(AUDIO, int(n * 1024 / 44100 // gop), n, round(n * 1024000 / 44100), round(n * 1024000 / 44100),
                     True, b"\x21", 1) for n in range(int(seconds * 44100 / 1024))]
    for f in sorted(frames, key=lambda f: (f.dts, f.track != VIDEO)):
        stream.push(f)


@pytest.mark.parametrize("part_target", [0.1, 0.2, 0.3])
@pytest.mark.parametrize("fps", [30, 30000 / 1001, 25, 60])
@pytest.mark.parametrize("track", [VIDEO, AUDIO])
def test_parts_never_exceed_part_target(part_target, fps, track):
    """RFC 8216bis 4.4.4.9: every part is at most PART-TARGET long, and at least 85 % of it but for
    a segment's last part and INDEPENDENT ones (where whole frames can fill 85 %: not 25 fps in
    0.1 s parts, whose two frames make 0.08 s). Before parts were closed by the frame interval
    (with a tick of slack for ms timestamps), 0.3 s parts at 29.97 fps came out 0.301 s and audio
    parts 0.302 s."""
    stream = LlHlsStream(tracks={track}, prefix="x-", part_target=part_target)
    stream.set_catalog(av_catalog())
    push_media(stream, fps, 6.0, 1.0)
    stream.end()
    playlist = stream.media_playlist()
    assert f"PART-TARGET={part_target:.3f}" in playlist
    frame = 1024 / 44100 if track == AUDIO else 1 / fps
    floor = min(0.85 * part_target, int(part_target / frame + 1e-6) * frame - 0.0015)
    segments = [s for s in stream.segments if s.complete]
    assert len(segments) >= 5
    for s in segments:
        for i, p in enumerate(s.parts):
            assert p.duration <= part_target + 1e-9, (s.msn, i, p.duration)
            if i + 1 < len(s.parts) and not p.independent:
                assert p.duration >= floor, (s.msn, i, p.duration)
    for d in re.findall(r"#EXT-X-PART:DURATION=([\d.]+)", playlist):
        assert float(d) <= part_target
    # the predicted durations of parts' last frames leave no holes but of a tick (ms timestamps
    # round 29.97 fps and AAC frame times; a 6-frame part at 29.97 fps is cut to 0.2 s): the
    # parts add up to the media
    media = int(6.0 * fps) / fps if track == VIDEO else int(6.0 * 44100 / 1024) * 1024 / 44100
    parts = sum(len(s.parts) for s in stream.segments)
    assert sum(s.duration for s in stream.segments) == pytest.approx(media, abs=0.001 * parts / 2 + 0.002)


def test_a_stream_of_video_and_audio_never_makes_a_part_of_audio_alone():
    """With both tracks in one playlist, the video part closes at its last frame; audio that
    arrives before the next video frame waits for it (a part's duration is the video's), even at
    a group boundary."""
    stream = LlHlsStream(part_target=0.3)
    stream.set_catalog(av_catalog())
    push_media(stream, 30, 4.0, 1.0)
    stream.end()
    assert all(p.duration > 0 for s in stream.segments for p in s.parts)
    assert [round(s.duration, 3) for s in stream.segments if s.complete][:3] == [1.0, 1.0, 1.0]


def test_the_edge_packages_with_the_configured_part_target():
    from rtmpq.config import ConfigError, HttpConfig, load_config
    from rtmpq.edge.server import EdgeServer

    assert load_config(env={"RTMPQ_HTTP_PART_TARGET": "0.2"}).http.part_target == 0.2
    with pytest.raises(ConfigError, match="part_target"):
        load_config(env={"RTMPQ_HTTP_PART_TARGET": "0.01"})
    edge = EdgeServer(lambda name: None, http=HttpConfig(part_target=0.2))
    from rtmpq.edge.server import _Broadcast

    b = _Broadcast("live/x", edge.http_config.part_target)
    assert {s.part_target for s in b.streams.values()} == {0.2}
    assert "PART-TARGET=0.200" in b.streams["v"].media_playlist()


async def test_the_edge_packages_with_the_configured_target_duration():
    from rtmpq.config import ConfigError, HttpConfig, load_config
    from rtmpq.edge.server import EdgeServer

    assert load_config(env={"RTMPQ_HTTP_TARGET_DURATION": "4"}).http.target_duration == 4
    with pytest.raises(ConfigError, match="target_duration"):
        load_config(env={"RTMPQ_HTTP_TARGET_DURATION": "-1"})

    async def nothing():
        return
        yield

    edge = EdgeServer(lambda name: nothing(), http=HttpConfig(target_duration=4))
    b = edge._broadcast("live/x")
    await b.task
    assert {s.target_duration() for s in b.streams.values()} == {4}


def test_the_cached_playlist_is_always_the_one_the_stream_would_make_now():
    """Viewers woken by a new part get one playlist made once (cached by the stream's version):
    after every frame, catalog change and the end, it is what rendering afresh gives."""
    stream = LlHlsStream(tracks={VIDEO}, prefix="v-", window=2)
    stream.set_catalog(av_catalog())
    checked = 0
    for n in range(200):
        if n == 120:  # a new avcC mid-broadcast: a new init segment version and a discontinuity
            stream.set_catalog(video_catalog(b"\x01\x64\x00\x1fBBBB", 640))
        ts = round(n * 1000 / 30)
        stream.push(Frame(VIDEO, n // 30, n % 30, ts, ts, n % 30 == 0, b"\x00\x00\x00\x01\x65", 1))
        for query in ("", "?token=t"):
            assert stream.media_playlist(query) == stream._render_media_playlist(query)
            checked += 1
    stream.end()
    assert stream.media_playlist() == stream._render_media_playlist("") and "#EXT-X-ENDLIST" in stream.media_playlist()
    assert checked == 400 and stream.media_playlist() is stream.media_playlist()  # the same text, not made again


@pytest.mark.parametrize("track", [VIDEO, AUDIO])
def test_a_late_frame_of_the_previous_group_does_not_cut_a_segment(track):
    """Each group travels on its own QUIC stream and a relay sends the newest group first, so
    after a burst (an upstream relay restarted, a loss recovered) the last frame of group N can
    reach an edge after the first of group N+1 (seen with a relay restarted in a chain). The
    late frame's segment is already closed: it is left out, never made a segment of its own
    (which began on a non-key frame, lasted a frame and made players fail to decode)."""
    frames: list[Frame] = []

    class Collect:
        push = frames.append
    push_media(Collect, 30, 6.0, 1.0)  # type: ignore[arg-type]
    frames = [f for f in frames if f.track == track]
    swapped = list(frames)
    for i in range(1, len(frames)):
        if frames[i].group != frames[i - 1].group:  # the next group's first frame overtakes the last
            swapped[i - 1], swapped[i] = frames[i], frames[i - 1]
    in_order, late = (LlHlsStream(tracks={track}, prefix="x-", part_target=0.2) for _ in range(2))
    for stream, sequence in ((in_order, frames), (late, swapped)):
        stream.set_catalog(av_catalog())
        for f in sequence:
            stream.push(f)
        stream.end()
    assert [s.msn for s in late.segments] == [s.msn for s in in_order.segments] == list(range(6))
    assert all(s.parts[0].independent for s in late.segments)
    # the frame left out is covered by the one before it (lasting until the next group)
    assert all(0.5 < s.duration < 1.5 for s in list(late.segments)[:-1])
    assert sum(s.duration for s in late.segments) == pytest.approx(sum(s.duration for s in in_order.segments), abs=0.05)


def test_a_segment_slightly_longer_than_the_rest_keeps_the_target_duration():
    """RFC 8216 6.2.1: the target duration MUST NOT change, and it bounds each EXTINF rounded to
    the nearest integer. A group 40 ms longer than 2 s (jitter, an upstream restart) fits the
    target of 2 s; groups of 2.6 s need 3."""
    stream = LlHlsStream(tracks={VIDEO}, prefix="v-", window=6)
    stream.set_catalog(video_catalog(b"\x01\x64\x00\x1eAAAA", 320))
    dts = 0
    for group, frames in enumerate((20, 20, 20, 20)):  # 100 ms frames: 2 s groups
        for i in range(frames):
            stream.push(Frame(VIDEO, group, i, dts, dts, i == 0, b"\x00\x00\x00\x01\x65" if i == 0 else b"\x00\x00\x00\x01\x41", 1))
            dts += 140 if (group, i) == (1, 5) else 100  # one frame 40 ms late: a group over 2 s
    stream.end()
    playlist = stream.media_playlist()
    longest = max(float(d) for d in re.findall(r"#EXTINF:([\d.]+),", playlist))
    assert 2.0 < longest < 2.5 and "#EXT-X-TARGETDURATION:2\n" in playlist, playlist
    stream = LlHlsStream(tracks={VIDEO}, prefix="v-", window=6)
    stream.set_catalog(video_catalog(b"\x01\x64\x00\x1eAAAA", 320))
    push_group(stream, 0, frames=26)  # 2.6 s
    push_group(stream, 1, frames=26)
    stream.end()
    assert "#EXT-X-TARGETDURATION:3\n" in stream.media_playlist()


def push_groups(stream: LlHlsStream, track: str, seconds: list[float], first_group: int = 0,
                playlists: list | None = None) -> None:
    """30 fps groups of these lengths (ms timestamps), from group ``first_group`` (the earlier
    ones' frames are skipped); each media playlist made along the way goes to ``playlists``."""
    n = 0
    for group, length in enumerate(seconds):
        for i in range(round(length * 30)):
            if group >= first_group:
                ts = n * 100 // 3
                stream.push(Frame(track, group, i, ts, ts, i == 0, b"\x00\x00\x00\x01" + (b"\x65" if i == 0 else b"\x41"), 1))
                if playlists is not None and stream.playable:
                    playlists.append(stream.media_playlist())
            n += 1


def rung_catalog() -> Catalog:
    return video_catalog(b"\x01\x64\x00\x1eAAAA", 320).with_track(
        TrackInfo("video-360p", VIDEO, "avc1.64001e", b"\x01\x64\x00\x1eBBBB", 1000, 640, 360, nal_length_size=4))


def test_a_group_longer_than_the_target_goes_on_in_more_segments_and_the_target_never_changes():
    """RFC 8216 4.4.3.1 / 6.2.1: the first whole segment (1 s) fixes EXT-X-TARGETDURATION at 1;
    a 4 s group after it goes on in segments cut at part boundaries, each rounding to at most 1 s,
    the first of them independent (a keyframe) and the others not."""
    stream = LlHlsStream(tracks={VIDEO}, prefix="v-", window=20)
    stream.set_catalog(video_catalog(b"\x01\x64\x00\x1eAAAA", 320))
    playlists: list[str] = []
    push_groups(stream, VIDEO, [1, 4, 1, 1], playlists=playlists)
    stream.end()
    playlists.append(stream.media_playlist())
    assert {re.search(r"#EXT-X-TARGETDURATION:(\d+)\n", p)[1] for p in playlists} == {"1"}
    final = playlists[-1]
    durations = [float(d) for d in re.findall(r"#EXTINF:([\d.]+),", final)]
    assert all(round(d + 1e-9) <= 1 for d in durations) and sum(durations) == pytest.approx(7, abs=0.05), durations
    assert len(durations) > 4  # the 4 s group is in several segments
    pieces = [s for s in stream.segments if s.group == 1]
    assert len(pieces) > 2 and [s.continues for s in pieces] == [False] + [True] * (len(pieces) - 1)
    assert pieces[0].parts[0].independent and not any(s.parts[0].independent for s in pieces[1:])
    assert [s.msn for s in stream.segments] == list(range(len(stream.segments)))


def test_a_configured_target_duration_holds_from_the_start():
    """`[http] target_duration = 4`: advertised from the first playlist, and a 4 s group stays one
    segment (a GoP that fits the target is never cut)."""
    stream = LlHlsStream(tracks={VIDEO}, prefix="v-", target_duration=4)
    stream.set_catalog(video_catalog(b"\x01\x64\x00\x1eAAAA", 320))
    push_groups(stream, VIDEO, [1, 4, 1])
    stream.end()
    playlist = stream.media_playlist()
    assert "#EXT-X-TARGETDURATION:4\n" in playlist and "HOLD-BACK=12.0" in playlist
    assert [round(float(d)) for d in re.findall(r"#EXTINF:([\d.]+),", playlist)] == [1, 4, 1]


def test_a_window_that_begins_inside_a_group_reaches_back_to_its_keyframe():
    """A player that starts at the first listed segment starts at a keyframe: a window that would
    begin with a segment going on with a long group lists that group's first segment too."""
    stream = LlHlsStream(tracks={VIDEO}, prefix="v-", window=3)
    stream.set_catalog(video_catalog(b"\x01\x64\x00\x1eAAAA", 320))
    push_groups(stream, VIDEO, [1, 6, 1])
    stream.end()
    listed = re.findall(r"^v-seg(\d+)\.m4s$", stream.media_playlist(), re.M)
    first = stream.segment(int(listed[0]))
    assert not first.continues and first.parts[0].independent and len(listed) > 3, listed


def test_a_rung_pulled_late_numbers_and_cuts_its_segments_as_its_source_does():
    """A rung (made group by group from its source) takes its source's target duration, is cut
    where the source is, and a rung that starts after the source cut a long group numbers its
    first segment as the source numbered that group's: players align renditions by it."""
    catalog = rung_catalog()
    source = LlHlsStream(tracks={VIDEO})
    rung = LlHlsStream(tracks={"video-360p"})
    source.group_origin = rung.group_origin = 0
    rung.follows = source
    for s in (source, rung):
        s.set_catalog(catalog)
    groups = [1, 4, 2, 1]
    push_groups(source, VIDEO, groups)
    push_groups(rung, "video-360p", groups, first_group=2)  # pulled when group 2 began
    source.end()
    rung.end()
    assert rung.target_duration() == source.target_duration() == 1
    by_msn = {s.msn: s for s in source.segments}
    assert len(rung.segments) == 3 and rung.segments[1].continues  # group 2 (2 s) is cut, as the source's
    for s in rung.segments:
        assert (by_msn[s.msn].group, by_msn[s.msn].continues) == (s.group, s.continues)
        assert by_msn[s.msn].duration == pytest.approx(s.duration, abs=0.02)  # (the rung's first part: 1 ms)
    assert rung.segments[0].msn == next(s.msn for s in source.segments if s.group == 2) > 2


def first_tfdt(data: bytes) -> int:
    """baseMediaDecodeTime of a part's or segment's first track fragment (ticks)."""
    at = data.index(b"tfdt")
    return int.from_bytes(data[at + 8:at + 16] if data[at + 4] == 1 else data[at + 8:at + 12], "big")


@pytest.mark.parametrize("new_id", [1, 2], ids=["same-group-id", "next-group-id"])
def test_a_group_cut_short_and_begun_again_is_left_out_up_to_the_next_group(new_id):
    """A transcoder child that crashed cut its group short (a part, then one more frame); the
    new child's first group re-encodes the source group in progress from its start, so its
    first frame is before the cut group's last (its group id is the cut group's when its track
    is a new one, the next one when the relay kept the track). The rung's timeline does not go
    back over what it delivered (players saw the same time twice, with no discontinuity): the
    group begun again is left out, the cut group's last picture lasts a frame interval and the
    rest of its segment is GAP=YES parts up to the next group (no part longer than PART-TARGET),
    so the rung's segments keep the source's numbers and durations, with no discontinuity of its
    own (its count would differ from the source's and the audio's). No EXT-X-PART or EXTINF is
    of 0.000 s (players stall or skip on one). A jump back further than FOLLOWER_RESTART_GAP
    starts the rung's playlist afresh, as a gap that long does."""
    source, rung = source_and_rung("video-180p", 320, 180)

    def group(stream, track, g, start_ms, frames=60):
        for i in range(frames):
            ts = 20000 + start_ms + i * 33  # (a publisher live for 20 s)
            stream.push(Frame(track, g, i, ts, ts, i == 0, b"\x00\x00\x00\x01\x65", 1))

    for g in range(3):
        group(source, VIDEO, g, g * 1980)
    group(rung, "video-180p", 0, 0)
    group(rung, "video-180p", 1, 1980, frames=7)  # the child dies: a whole part (6 frames) and one frame more
    group(rung, "video-180p", new_id, 1980)  # the new child's first group, from the source group's start
    group(rung, "video-180p", new_id + 1, 2 * 1980)
    playlist = rung.media_playlist()
    assert [s.msn for s in rung.segments] == [s.msn for s in source.segments] == [0, 1, 2]
    assert "#EXT-X-DISCONTINUITY" not in playlist
    starts = [first_tfdt(p.data) for s in rung.segments for p in s.parts if not p.gap]
    assert starts == sorted(starts) and len(set(starts)) == len(starts), starts  # never back, never again
    assert abs(rung.segments[1].duration - source.segments[1].duration) < 0.002, playlist
    assert all(p.duration > 0 for s in rung.segments for p in s.parts), playlist
    assert all(p.duration <= rung.part_target + 1e-9 for s in rung.segments for p in s.parts), playlist
    assert rung.segments[1].parts[-1].gap and "GAP=YES" in playlist
    assert not re.search(r"^#EXTINF:0\.000,|DURATION=0\.000,", playlist, re.M), playlist
    group(rung, "video-180p", new_id + 2, -20000)  # 24 s back, with no seam of the source
    assert len(rung.segments) == 1 and "#EXT-X-DISCONTINUITY" not in rung.media_playlist()


@pytest.mark.parametrize("codec", ['avc1.64001e",X="1\n#EXT-X-INJECTED', "avc1.64001e\r\n#EXT-X-INJECTED",
                                   'avc1.64001e"', "avc1." + "0" * 200])
def test_a_track_whose_codec_string_could_break_a_playlist_is_not_packaged(codec):
    """A MoQ publisher (any peer with a publish token, a third-party transcoder) names its tracks'
    codecs in its catalog: a string with a quote or a line break went into CODECS="..." of the
    multivariant playlist every viewer reads (a line of the publisher's choosing). Such a track
    is not packaged: its playlist has nothing to play, and no playlist carries the string."""
    from rtmpq.edge.llhls import multivariant_playlist

    for accepted in (True, False):
        catalog = Catalog("live/x").with_track(TrackInfo(
            VIDEO, VIDEO, "avc1.64001e" if accepted else codec, b"\x01\x64\x00\x1eAAAA", 1000, 320, 240,
            nal_length_size=4)).with_track(TrackInfo(AUDIO, AUDIO, "mp4a.40.2", b"\x12\x10", 1000,
                                                     sample_rate=44100, channels=2))
        video, audio = LlHlsStream(tracks={VIDEO}, prefix="v-"), LlHlsStream(tracks={AUDIO}, prefix="a-")
        for stream in (video, audio):
            stream.set_catalog(catalog)
        for group in range(3):
            push_group(video, group)
        assert video.playable is accepted
        playlist = multivariant_playlist([(video, "video.m3u8")] if video.has_media else [], audio, "audio.m3u8")
        assert ("avc1.64001e" in playlist) is accepted
        assert "INJECTED" not in playlist and "\r" not in playlist and "0" * 100 not in playlist


def test_bandwidth_is_the_peak_of_whole_segments_not_of_the_one_in_progress_and_the_average_is_given():
    """BANDWIDTH is the peak segment bit rate (RFC 8216bis 4.4.6.2): a segment in progress that
    holds only its key frame's part is far denser than any whole segment, and counting it made
    the multivariant's BANDWIDTH jump up for part of each segment (players pick a lower variant).
    AVERAGE-BANDWIDTH (which Apple's authoring spec requires) is their mean."""
    from rtmpq.edge.llhls import multivariant_playlist

    stream = LlHlsStream(tracks={VIDEO}, prefix="v-")
    stream.set_catalog(video_catalog(b"\x01\x64\x00\x1eAAAA", 320))
    for group in range(3):
        for i in range(10 if group < 2 else 2):  # two whole one-second groups, then two frames
            ts = (group * 10 + i) * 100
            stream.push(Frame(VIDEO, group, i, ts, ts, i == 0, bytes(5000 if i == 0 else 500), 1))
    whole = [s for s in stream.segments if s.complete]
    assert len(whole) == 2 and not stream.segments[-1].complete and stream.segments[-1].parts
    peak = max(int(sum(len(p.data) for p in s.parts) * 8 / s.duration) for s in whole)
    audio = LlHlsStream(tracks={AUDIO}, prefix="a-")
    average = int(sum(len(p.data) for s in whole for p in s.parts) * 8 / sum(s.duration for s in whole))
    assert f"BANDWIDTH={peak},AVERAGE-BANDWIDTH={average}," in multivariant_playlist(
        [(stream, "video.m3u8")], audio, "audio.m3u8")


def fragment_timeline(part: bytes) -> tuple[int, int]:
    """(tfdt, sum of sample durations) of a one-track CMAF fragment (trun with durations)."""
    tfdt_at, trun_at = part.index(b"tfdt"), part.index(b"trun")
    tfdt = int.from_bytes(part[tfdt_at + 8:tfdt_at + 16])
    count = int.from_bytes(part[trun_at + 8:trun_at + 12])
    entries = part[trun_at + 16:]
    return tfdt, sum(int.from_bytes(entries[i * 16:i * 16 + 4]) for i in range(count))


@pytest.mark.parametrize("fps", [24, 30000 / 1001, 30])
@pytest.mark.parametrize("track", [VIDEO, AUDIO])
def test_every_part_begins_where_the_one_before_ended(fps, track):
    """CMAF: a fragment's tfdt is the sum of the durations of the samples before it. A part's last
    duration is predicted (it is published before the next frame comes), and millisecond
    timestamps put the next frame a tick off: at 24 fps, and with 44.1 kHz AAC, a part began 1 ms
    before or after the previous one ended, 3 times a segment."""
    stream = LlHlsStream(tracks={track}, prefix="x-", part_target=0.2)
    stream.set_catalog(av_catalog())
    push_media(stream, fps, 6.0, 1.0)
    stream.end()
    timeline = [fragment_timeline(p.data) for s in stream.segments for p in s.parts]
    gaps = [(i, start - (prev + length)) for i, ((prev, length), (start, _)) in enumerate(zip(timeline, timeline[1:]))
            if start != prev + length]
    assert gaps == []


def test_a_rung_its_source_left_rung_gap_after_behind_lists_the_group_as_a_gap_part_by_part():
    """The rung delivers group 0 whole and then nothing, no skip said (a reset lost): once the
    source is more than ``gap_after`` into group 1, the rung's playlist lists group 1 as a gap
    (the source's segment number, date and parts so far, GAP=YES) and from then on each source
    part as it appears, its segment whole when the source's is; group 1's frames that come after
    all are dropped, and the rung's group 2 is its own again, numbered as the source's. Without
    ``gap_after`` (a rung not pulled) nothing is listed before the rung's next group."""
    def frame(track, g, i):
        ts = 20000 + g * 990 + i * 33
        return Frame(track, g, i, ts, ts, i == 0, b"\x00\x00\x00\x01\x65", 1)

    for gap_after in (None, 0.5):
        source, rung = source_and_rung("video-180p", 320, 180)
        for i in range(30):
            source.push(frame(VIDEO, 0, i))
            rung.push(frame("video-180p", 0, i))
        late = []
        for i in range(30):
            source.push(frame(VIDEO, 1, i))
            late.append(rung.follow_source(gap_after))
            if gap_after is None or i < 16:  # (0.5 s: the 16th frame's start, 0.528 s, is past it)
                assert len(rung.segments) == 1, i
            else:
                gap = rung.segments[-1]
                assert gap.gap and gap.msn == source.segments[-1].msn and gap.group == 1
                assert [p.duration for p in gap.parts] == pytest.approx([p.duration for p in source.segments[-1].parts])
        assert late.count(True) == (gap_after is not None)
    source.push(frame(VIDEO, 2, 0))
    rung.follow_source(0.5)
    assert rung.segments[-1].complete and rung.segments[-1].duration == pytest.approx(source.segments[-2].duration)
    rung.push(frame("video-180p", 1, 0))  # late: left out
    for i in range(3):
        rung.push(frame("video-180p", 2, i))
    assert [(s.msn, s.gap) for s in rung.segments] == [(s.msn, s.group == 1) for s in source.segments]
    assert "#EXT-X-GAP" in rung.media_playlist() and "GAP=YES" in rung.media_playlist()
