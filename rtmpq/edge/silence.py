"""Silence for an HLS audio rendition whose source stops sending audio while its video goes on.

An HLS player buffers each rendition apart and stops at the end of the one that ran dry, so a
publisher whose audio pauses or ends while its video goes on (an audio device lost, a restream
of a file whose audio is shorter than its video) would freeze every viewer at the last audio
frame, whatever the video does. Once no audio frame has come for ``lag`` seconds while video
frames keep coming, and the audio is that far behind the video in media time too, the edge fills
its audio playlist with silent AAC frames up to ``lag`` behind the video; real audio that comes
back later than the silence goes on after it, what would overlap the silence is dropped. A seam
of the video (a publisher back after a gap) stops the fill: the silence never spans a
discontinuity the video has. Audio that left the catalog while the video stays (a publisher back
without audio: ``gone``) is silence from the seam on, for the players already on its playlist.
Only the edge's HLS audio is filled; MoQ subscribers get what the publisher sent.
"""

from collections import deque
from functools import lru_cache

from ..media.aac import AudioSpecificConfig
from ..media.catalog import TrackInfo
from ..media.frames import AUDIO, Frame
from ..errors import RemoteProtocolError
from .llhls import DISCONTINUITY_GAP

# Seconds without audio (arrival and media time) while video comes before silence fills the gap
# ([http] audio_gap_fill; 0: never). Encoders interleave audio within tens of ms of video; an edge
# fed over a lossy WAN sees audio late by a retransmission or two, which must not turn into
# silence; players sit about 0.5 s behind the live edge (the player page: liveSyncDuration).
AUDIO_GAP_FILL = 0.5
# AAC channel configurations the encoder of silence has a layout for.
_LAYOUTS = {1: "mono", 2: "stereo", 6: "5.1"}
# Seconds past ``lag`` after the silence's end that real audio coming back is still bridged to
# it; later, it is on a new timeline (a seam: a broadcast puts at least 1 s, SEAM_MIN_GAP_MS,
# between a publish's last frame and the next one's first, and its audio may come before the
# video shows the seam), and the audio playlist marks the discontinuity as the video's does.
_BRIDGE_SLACK = 0.5
# Video group starts remembered, so that a silent frame joins the group of its time.
_GROUPS_KEPT = 8


@lru_cache(maxsize=16)
def silent_aac_frame(sample_rate: int, channels: int) -> bytes | None:
    """One raw AAC LC frame (1024 samples) of silence, or None where there is no encoder."""
    import av  # PyAV: the transcoder's dependency, loaded only when a gap is filled

    layout = _LAYOUTS.get(channels)
    if layout is None:
        return None
    codec = av.CodecContext.create("aac", "w")
    codec.sample_rate = sample_rate
    codec.layout = layout
    codec.format = "fltp"
    codec.open()
    packets = []
    for i in range(4):  # past the encoder's priming: a frame of steady silence
        frame = av.AudioFrame(format="fltp", layout=layout, samples=1024)
        for plane in frame.planes:
            plane.update(bytes(plane.buffer_size))
        frame.sample_rate = sample_rate
        frame.pts = i * 1024
        packets += [bytes(p) for p in codec.encode(frame)]
    return packets[-1] if packets else None


class AudioGapFill:
    """Silent frames for the audio track ``audio`` of a broadcast, from its video (sans-I/O:
    every call takes the time, seconds of a monotonic clock)."""

    def __init__(self, lag: float = AUDIO_GAP_FILL) -> None:
        self.lag = lag
        self.filled = 0  # silent frames made (read by tests)
        self.silence_seconds = 0.0  # of silence made (rtmpq_broadcast_silent_audio_seconds)
        self.gaps = 0  # gaps filled (one per stop of the audio)
        self._silence: bytes | None = None  # one silent frame of the current track, None: no fill
        self._duration = 0.0  # of a frame, in the audio track's ticks
        self._audio_scale = self._video_scale = 1000
        self._audio_end: float | None = None  # ticks: where the last audio (or silence) ends
        self._audio_at = 0.0  # when the last real audio frame came
        self._filling = False  # silence was made since the last real audio frame
        self._last_video: int | None = None
        self._video_step = 0  # ticks between the last two video frames
        self._seam_at: float | None = None  # audio ticks: where the video's timeline began after its last seam
        self.gone = False  # the audio left the catalog: nothing will come back to end the silence
        self._groups: deque[tuple[int, float]] = deque(maxlen=_GROUPS_KEPT)  # (group, start in audio ticks)

    def set_tracks(self, audio: TrackInfo | None, video: TrackInfo | None, *, gone: bool = False) -> None:
        """The catalog's audio and video tracks: silence is made for AAC LC audio only. ``gone``:
        ``audio`` is the track that left the catalog (silence from the video's last seam on)."""
        self._silence = None
        if gone and not self.gone:
            self._audio_at = float("-inf")  # no audio is coming: no wait for it
            if self._audio_end is None:
                self._audio_end = self._seam_at  # the catalog says so a group after the seam: fill from it
        self.gone = gone
        made = self._silence_of(audio) if video is not None else None
        if made is None:
            return
        sample_rate, self._silence = made
        self._duration = 1024 * audio.timescale / sample_rate
        self._audio_scale, self._video_scale = audio.timescale, video.timescale

    def can_fill(self, audio: TrackInfo | None) -> bool:
        """Whether silence can be made for ``audio`` (AAC LC in a layout the encoder has)."""
        return self._silence_of(audio) is not None

    def _silence_of(self, audio: TrackInfo | None) -> tuple[int, bytes] | None:
        """(sample rate, one silent frame) of ``audio``, where silence can be made for it."""
        if audio is None or not self.lag or not audio.codec.startswith("mp4a"):
            return None
        try:
            asc = AudioSpecificConfig.parse(audio.init_data)
        except RemoteProtocolError:
            return None
        if asc.object_type != 2 or asc.frame_length != 1024:
            return None
        silence = silent_aac_frame(asc.sample_rate, asc.channels)
        return (asc.sample_rate, silence) if silence is not None else None

    def audio(self, frame: Frame, now: float) -> list[Frame]:
        """A real audio frame: the frames to pass on for it: none if it falls inside the silence
        made, else itself, after the silence up to it when it ends a gap that was filled."""
        end = self._audio_end
        if end is not None and frame.dts + self._duration / 2 < end:
            return []
        bridge = self._filling and frame.dts - end <= (self.lag + _BRIDGE_SLACK) * self._audio_scale
        out = self._silence_until(end, frame.dts, frame.received_ns) if bridge else []
        out.append(frame)
        self._filling = False
        self._audio_end = frame.dts + self._duration
        self._audio_at = now
        return out

    def video(self, frame: Frame, now: float) -> list[Frame]:
        """A frame of the video: the silent audio frames due before it (most often none)."""
        to_audio = self._audio_scale / self._video_scale
        out = []
        last = self._last_video
        if last is not None and not 0 <= frame.dts - last <= DISCONTINUITY_GAP * self._video_scale:
            # a seam (or a jump): no silence across it. Silence in progress goes on to the end of
            # the video before it (no late audio of that timeline will come: every group gets its
            # audio, so the playlists' segments stay one per group alike); then real audio
            # restarts it, or with the audio gone the silence does, from the seam
            if self._filling and self._silence is not None and self._groups:
                out = self._silence_until(self._audio_end, (last + self._video_step) * to_audio, frame.received_ns)
            self._seam_at = frame.dts * to_audio
            self._audio_end = self._seam_at if self.gone and now - self._audio_at >= self.lag else None
            self._filling = False
            self._groups.clear()
        elif last is not None and frame.dts > last:
            self._video_step = frame.dts - last
        self._last_video = frame.dts
        if frame.index == 0:
            self._groups.append((frame.group, frame.dts * to_audio))
        end = self._audio_end
        if self._silence is None or end is None or now - self._audio_at < self.lag or not self._groups:
            return out
        made = self._silence_until(end, frame.dts * to_audio - self.lag * self._audio_scale, frame.received_ns)
        if made and not self._filling:
            self._filling = True
            self.gaps += 1
        return out + made

    def _silence_until(self, end: float, until: float, received_ns: int) -> list[Frame]:
        """Silent frames from ``end`` while a whole one fits before ``until`` (audio ticks)."""
        out = []
        while end + self._duration <= until + self._duration / 2:
            dts = round(end)
            group = next((g for g, start in reversed(self._groups) if start <= dts), self._groups[0][0])
            out.append(Frame(AUDIO, group, 0, dts, dts, True, self._silence, received_ns))
            end += self._duration
        self._audio_end = end
        self.filled += len(out)
        self.silence_seconds += len(out) * self._duration / self._audio_scale
        return out
