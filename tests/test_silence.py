"""The edge's silence for an audio rendition whose source stops while the video goes on
(rtmpq/edge/silence.py), in memory: when it fills, when it must not, and how real audio resumes."""

from rtmpq.edge.silence import AudioGapFill, silent_aac_frame
from rtmpq.media.catalog import TrackInfo
from rtmpq.media.frames import Frame

AAC_LC_44K_STEREO = bytes.fromhex("1210")
VIDEO = TrackInfo("video", "video", "avc1.64001f")


def filler(asc: bytes = AAC_LC_44K_STEREO, codec: str = "mp4a.40.2", lag: float = 0.5) -> AudioGapFill:
    fill = AudioGapFill(lag)
    fill.set_tracks(TrackInfo("audio", "audio", codec, asc), VIDEO)
    return fill


def run(fill: AudioGapFill, seconds: float, audio_until=lambda t, ms: True, video_at=lambda ms: ms, at=lambda t: None):
    """30 fps video and 43 fps audio for ``seconds``, arriving as their media time passes (the
    clock ``t``); audio frames at ``ms`` are sent while ``audio_until(t, ms)``; ``at(t)`` is
    called before each video frame. Every audio frame the edge would package, real or silent:
    (dts, silent)."""
    audio, out, a = fill, [], 0
    silence = fill._silence
    for i in range(int(seconds * 30)):
        ms = round(i * 1000 / 30)
        t = ms / 1000
        while a * 1024 * 1000 / 44100 <= ms:
            ams = round(a * 1024 * 1000 / 44100)
            if audio_until(t, ams):
                out += [(f.dts, f.payload == silence) for f in audio.audio(Frame("audio", 0, a, ams, ams, True, b"a"), t)]
            a += 1
        at(t)
        out += [(f.dts, True) for f in fill.video(Frame("video", ms // 2000, i % 60, video_at(ms), video_at(ms), i % 60 == 0, b"v"), t)]
    return out


def test_a_silent_frame_is_made_for_the_common_aac_layouts():
    assert silent_aac_frame(44100, 2) and silent_aac_frame(48000, 1) and silent_aac_frame(48000, 6)
    assert silent_aac_frame(44100, 3) is None  # no layout for it here: no fill, as before


def test_audio_that_flows_is_never_filled_even_late_in_media_time():
    fill = filler()
    # the audio's timestamps 0.4 s behind the video's for the whole publish: an encoder's offset
    frames = run(fill, 6, video_at=lambda ms: ms + 400)
    assert fill.filled == 0 and not any(silent for _, silent in frames)


def test_a_stop_is_filled_up_to_the_lag_behind_the_video_and_resumed_audio_bridges_the_rest():
    fill = filler()
    frames = run(fill, 8, audio_until=lambda t, ms: not 2500 <= ms < 5500)
    dts = [d for d, _ in frames]
    assert dts == sorted(set(dts))  # nothing twice, in order
    assert max(b - a for a, b in zip(dts, dts[1:])) <= 24  # no hole (frames of 23.2 ms)
    silent = [d for d, s in frames if s]
    assert 2500 <= silent[0] < 2530 and 5470 < silent[-1] < 5500  # the gap, all of it
    assert fill.gaps == 1
    assert [d for d, s in frames if not s and d >= 5500][0] < 5530  # the publisher's audio again


def test_audio_that_comes_back_inside_the_silence_is_dropped_where_it_overlaps():
    fill = filler()
    # the encoder stalls 2 s, then sends the stalled audio late with its old timestamps
    late = run(fill, 6, audio_until=lambda t, ms: not (2.0 <= t < 4.0 and ms >= 2000) and not (t >= 4.0 and ms < 3000))
    dts = [d for d, _ in late]
    assert dts == sorted(set(dts))


def test_no_silence_across_a_seam_of_the_video():
    fill = filler()
    # the publisher leaves at 3 s and is back (the broadcast's timeline jumps 5 s) without audio
    frames = run(fill, 6, audio_until=lambda t, ms: ms < 3000, video_at=lambda ms: ms if ms < 3000 else ms + 5000)
    assert fill.filled == 0 and not any(silent for _, silent in frames)


def test_silence_in_progress_at_a_seam_runs_to_the_end_of_the_video_before_it():
    fill = filler()
    # the audio stops at 1 s; the publisher leaves at 4 s and is back 3 s later (still no audio)
    frames = run(fill, 6, audio_until=lambda t, ms: ms < 1000, video_at=lambda ms: ms if ms < 4000 else ms + 3000)
    silent = [d for d, s in frames if s]
    assert 1000 <= silent[0] < 1024 and max(b - a for a, b in zip(silent, silent[1:])) <= 24
    # every group of the old timeline gets its audio (the last video frame: 3967 ms, 33 ms long)
    assert 4000 - 24 < silent[-1] + 23 <= 4000 + 12
    assert not [d for d in silent if d >= 4000]  # nothing across the seam: the audio is not gone


def test_audio_that_left_the_catalog_is_silence_from_the_seam_on():
    fill = filler()
    audio = TrackInfo("audio", "audio", "mp4a.40.2", AAC_LC_44K_STEREO)
    # the publisher leaves at 3 s and is back (the timeline jumps 5 s) without audio; the catalog
    # says the audio left once the new publish's first group is over (at 6 s)
    frames = run(fill, 9, audio_until=lambda t, ms: ms < 3000, video_at=lambda ms: ms if ms < 3000 else ms + 5000,
                 at=lambda t: t >= 6 and not fill.gone and fill.set_tracks(audio, VIDEO, gone=True))
    silent = [d for d, s in frames if s]
    assert not [d for d in silent if d < 8000]  # nothing across the gap itself
    assert 8000 <= silent[0] < 8024  # from the seam: the new group starts with sound (silence)
    assert max(b - a for a, b in zip(silent, silent[1:])) <= 24 and silent == sorted(set(silent))
    assert silent[-1] > 13967 - 500 - 50  # up to the lag behind the last video frame (8967 ms + 5 s)


def test_only_aac_lc_is_filled():
    for fill in (filler(bytes.fromhex("2b920800"), "mp4a.40.5"), filler(b"OpusHead", "opus"), filler(lag=0)):
        run(fill, 5, audio_until=lambda t, ms: ms < 2000)
        assert fill.filled == 0
