"""LL-HLS for one broadcast, sans-I/O: frames in, init segment, parts, segments and playlists out.

One segment per source group (GoP), cut into parts of at most ``part_target`` seconds at frame
boundaries (a group longer than the target duration goes on in more segments: see
``target_duration``); each part is one CMAF fragment (moof+mdat) with the video and audio samples of its
time span, and a segment is the concatenation of its parts. A part is published as soon as its
last frame is in (the next frame, by the track's frame interval, would not fit), not when the
next frame arrives: that wait was one frame interval of live-edge lag for nothing. A sliding
window keeps the newest ``window`` segments (memory is bounded); EXT-X-ENDLIST is added when the
broadcast ends.

A new init segment (a new avcC or AudioSpecificConfig mid-broadcast: the encoder restarted, or a
key frame came with other in-band parameter sets: media/demux.py) gets
a version of its own, so its URI (``init-<n>.mp4``) never changes content and may be cached; the
first segment after the change starts at the next keyframe with EXT-X-DISCONTINUITY and a new
EXT-X-MAP, and the old version is kept while a segment in the window still needs it. When the
video's init changes, the audio playlist and the rungs made from it mark a discontinuity at the
same group (keeping their inits), and so do the video playlists when the audio's init changes,
so every playlist counts the same discontinuity sequence.
"""

import math
import time
from collections import deque
from dataclasses import dataclass, field

from ..media.catalog import Catalog
from ..media.frames import AUDIO, VIDEO, Frame
from .fmp4 import Sample, can_package, fragment, init_segment

# Target duration of an LL-HLS part (seconds; EXT-X-PART-INF PART-TARGET; `[http] part_target`).
# Every part is at most this long (RFC 8216bis 4.4.4.9), so the live edge trails the publisher
# by about half of it on average, and each viewer makes about two requests (a blocking playlist
# reload and the part) per part and playlist. 0.2 s: the live edge 6-19x nearer the publisher
# (p50) than nginx-rtmp's fragments of one 1-2 s GoP, at ~20 requests/s per viewer (0.3 s:
# 3.5-6.6x, ~14/s; 0.1 s: 8.6-27x, but ~40/s, and hls.js aborted part loads in every run on the
# loaded test machine). Whole frames fill 85 % of it (the spec's floor for parts) at 25, 30, 50
# and 60 fps, not at 24 fps (4 frames, 83 %). docs/benchmarks.md "HLS live-edge lag vs
# nginx-rtmp" has the measurements.
PART_TARGET = 0.2
# The next frame's time is predicted from the mean of this many recent frame intervals of the
# track: timestamps in ms jitter by a tick (33, 33, 34 at 30 fps), and a mean over a second of
# frames predicts the next one to the tick, so a part's last frame ends where the next begins.
FRAME_INTERVAL_HISTORY = 30
# EXT-X-TARGETDURATION (whole seconds, `[http] target_duration`) when not configured: 0 takes the
# first whole segment's duration, rounded to the nearest second (so a publisher with a steady GoP
# gets one segment per GoP and the target it had before any rule existed). Either way the target
# is fixed for the playlist's life (RFC 8216 6.2.1), and a group that would outgrow it, an EXTINF
# that rounds above it (4.4.3.1), goes on in another segment cut at a part boundary instead: that
# segment starts without a keyframe (its first part lacks INDEPENDENT=YES).
TARGET_DURATION = 0
# How far under the rounding bound (target + 0.5 s) a segment stays, for timestamp rounding.
TARGET_MARGIN = 0.01
# Timestamp rounding (in timescale ticks) forgiven when predicting whether one more frame fits in
# a part; the part's written duration never exceeds PART-TARGET all the same.
FRAME_TIME_TOLERANCE_TICKS = 1
# A track's part begins where its previous part's samples ended (the next tfdt is the sum of the
# durations before it, as CMAF asks) when its first frame is this close (seconds), or within half
# the last sample's duration, of that end: that part's last duration was predicted (the next frame
# had not come), and millisecond timestamps put the next frame a tick off (24 fps and 44.1 kHz AAC
# gave 3 tfdt gaps or overlaps of 1 ms per segment), or a frame missing from the recent ones put
# the prediction off by more (gaps and overlaps of up to 11 ms); the frame is written that much
# earlier or later (its composition offset kept), so the samples tile the timeline.
TIMELINE_SNAP = 0.002
# Complete segments kept in the playlist (and in memory).
SEGMENT_WINDOW = 6
# A window that would begin inside a group (a segment that goes on with a group longer than the
# target duration, with no keyframe) reaches back to the group's first segment, so a player that
# starts at the first listed segment starts at a keyframe; but never to more than this many times
# the window (memory stays bounded if a publisher sends a keyframe once in a long while).
WINDOW_REACH = 4
# Parts are listed for segments this close to the live edge (the spec asks for at least 3 target durations).
PART_LISTING_SEGMENTS = 3
# A group whose first frame is more than this far (seconds) after the previous frame, or before it,
# starts after a seam (a publisher that reconnected, an origin that restarted): its segment is
# marked EXT-X-DISCONTINUITY.
DISCONTINUITY_GAP = 0.5
# A rendition made from another (a transcoder rung) follows that one's timeline: a gap in its
# pictures (the rest of a group it skipped, falling behind) is no seam of its own, or its
# discontinuity count would differ from the source's and players that align renditions by it
# (hls.js) would misplace it by seconds; the picture before the gap is shown through it. A gap
# longer than this (seconds: the rung was stopped and pulled again), or a jump back as long, starts
# its playlist afresh.
# A group that begins again at or before the rung's last frame, within this, is a transcoder's
# re-encoding of a source group it already delivered in part (a restarted child starts over at
# the group in progress): it is dropped up to the next group, the cut group's segment filled up to
# it with GAP=YES parts (the rung's timeline never goes back, and no discontinuity of its own).
FOLLOWER_RESTART_GAP = 10.0
# A rung whose source has gone on this far (seconds of the source's media) into a group the rung has
# not begun lists that group as a gap from then on (``[http] rung_gap_after``): the fallback for a
# skip not said on the wire (a reset lost, or held past HELD_RESET_SECONDS). A rung that comes later
# than this without skipping loses that group (its frames are dropped, it goes on at the next), so
# the bound is above what a rung that keeps up lags by: its transcoder's queues (a decode queue of up
# to DECODE_QUEUE_FRAMES, seconds of source on a busy host) and the way back through the relay.
RUNG_GAP_AFTER = 3.0
# A rung's segment cut short (its transcoder skipped the rest of its group) is filled up to its
# source's with GAP=YES parts; a shortfall under this (seconds: the rounding of predicted part ends)
# is none.
GAP_PART_MIN = 0.01


@dataclass(slots=True)
class Part:
    data: bytes
    duration: float
    independent: bool
    gap: bool = False  # a rung's place for a part of its source's it has no media of (GAP=YES)


@dataclass(slots=True)
class Segment:
    msn: int
    started_ns: int  # date of its first frame (EXT-X-PROGRAM-DATE-TIME; see MediaClock)
    parts: list[Part] = field(default_factory=list)
    complete: bool = False
    duration: float = 0.0
    init_version: int = 0  # the init segment its samples need
    discontinuity: bool = False  # a new init segment or a seam in the timeline before it (EXT-X-DISCONTINUITY)
    discontinuity_sequence: int = 0  # EXT-X-DISCONTINUITY tags up to and including this segment
    group: int | None = None  # the source group its frames are of
    continues: bool = False  # it goes on with its group, which outgrew the target duration in the one before
    gap: bool = False  # a rung's place for a source segment it has no media of (EXT-X-GAP; see follow_source)
    media_start: float | None = None  # its first frame's presentation time (s)

    def data(self) -> bytes:
        return b"".join(p.data for p in self.parts)

    @property
    def media_duration(self) -> float:
        """Its duration but for its GAP=YES parts (the seconds its data plays)."""
        return sum(p.duration for p in self.parts if not p.gap) if self.parts and self.parts[-1].gap else self.duration


# A segment's date (EXT-X-PROGRAM-DATE-TIME) further than this (seconds) from its first frame's
# arrival re-anchors the broadcast's MediaClock: the media timeline jumped (a source that restarted
# its timestamps), not the usual jitter of a publisher that runs a little behind real time.
DATE_REANCHOR_SECONDS = 10.0


class MediaClock:
    """The dates of one broadcast's segments, from media time: one anchor (a frame's arrival
    wall clock and its pts) for every playlist of the broadcast, so a segment's date is the
    anchor plus its first frame's media time since. Dates taken from each segment's arrival
    instead drift from the EXTINF durations whenever the publisher runs behind or bursts, and
    differ between renditions made later (transcoder rungs) and the audio: hls.js aligns
    alternate audio to video by date, loaded the wrong audio parts and stalled on the holes."""

    def __init__(self) -> None:
        self.anchor: tuple[int, float] | None = None  # (wall clock ns, media seconds)

    def date_ns(self, pts: int, timescale: int, arrival_ns: int) -> int:
        media = pts / timescale
        if self.anchor is not None:
            date = self.anchor[0] + round((media - self.anchor[1]) * 1e9)
            if abs(date - arrival_ns) <= DATE_REANCHOR_SECONDS * 1e9:
                return date
        self.anchor = (arrival_ns, media)
        return arrival_ns


def sequence_base(now: float) -> int:
    """Where a broadcast's media sequence numbers and init versions start: the wall clock in
    tenths of a second (``now``, Unix time). A segment's or init's URI then names the same
    bytes for good, across broadcasts of one name (a publisher back after its grace period, a
    restarted node), which players and caches keep for their max-age: one broadcast would
    reach the numbers of a later one only with groups shorter than 0.1 s."""
    return int(now * 10)


class LlHlsStream:
    """One media playlist: the tracks named in ``tracks`` (all audio/video tracks when None), with
    every URI it writes prefixed by ``prefix`` (so several streams share one directory); its
    segments and init versions are numbered from ``first`` (see ``sequence_base``)."""

    def __init__(self, *, tracks: set[str] | None = None, prefix: str = "", part_target: float = PART_TARGET,
                 window: int = SEGMENT_WINDOW, first: int = 0, target_duration: int = TARGET_DURATION) -> None:
        self.only = tracks
        self.prefix = prefix
        self.part_target = part_target
        self._target: int | None = target_duration or None  # fixed once known (see TARGET_DURATION)
        self.window = window
        self.first = first
        self.catalog: Catalog | None = None
        self.init: bytes | None = None
        self.init_version = first
        self._inits: dict[int, bytes] = {}  # init segment by version, while segments need them
        self._discontinuity_next = False  # the next segment opens with a discontinuity
        self._discontinuities = 0
        self.segments: deque[Segment] = deque()
        self.ended = False
        self.version = 0  # bumped whenever something new can be fetched (for blocking requests)
        self._tracks: list[str] = []
        self._timescale: dict[str, int] = {}
        self._pending: dict[str, list[Frame]] = {}
        self._last_duration: dict[str, int] = {}
        self._written_end: dict[str, int] = {}  # per track, where its last written sample ends (TIMELINE_SNAP)
        self._fragment_seq = 0
        self._msn = first
        # the broadcast's first group id (set by the edge): a stream that starts later (a rung
        # pulled when a player asks) numbers its first segment from it, so equal media sequence
        # numbers are the same group in every rendition (players align renditions by them)
        self.group_origin: int | None = None
        self._last_dts: int | None = None  # of the primary track's newest frame
        self._recent_dts: deque[int] = deque(maxlen=FRAME_INTERVAL_HISTORY + 1)  # the primary's, in one run
        self.media_time: float | None = None  # newest presentation time of the primary track (s)
        self._group: int | None = None
        # the broadcast's clock for segment dates, shared by its playlists (set by the edge)
        self.clock: MediaClock | None = None
        self.follows: LlHlsStream | None = None  # the stream whose seams this one takes (a rung's source)
        self.seam_groups: deque[int] = deque(maxlen=64)  # groups that opened after a seam
        # groups whose first segment has EXT-X-DISCONTINUITY (a seam or a new init): a rung that
        # follows this stream marks them too, its own init unchanged (the audio playlist marks
        # a new video init as well: see set_catalog), so every playlist counts them alike
        self.discontinuity_groups: deque[int] = deque(maxlen=64)
        self._dropping: int | None = None  # a group begun again over what the rung has delivered
        # a rung's groups it will not have (its transcoder skipped them, or they are late past
        # RUNG_GAP_AFTER): listed as gaps, their late frames dropped
        self.gap_groups: deque[int] = deque(maxlen=64)
        self._in_gap = False  # a rung's media is over until its next group: it lists its source's parts as gaps
        # the last media playlist made: (version, query, text); the viewers a new part wakes
        # (blocking reloads) all ask for the same one, once per part
        self._rendered: tuple[int, str, str] | None = None

    # -- input ----------------------------------------------------------------------------------
    def set_catalog(self, catalog: Catalog) -> None:
        tracks = [t for t in catalog.tracks if t.kind in (VIDEO, AUDIO) and t.init_data and can_package(t)
                  and (self.only is None or t.name in self.only)]
        if [t.name for t in tracks] != self._tracks and self._pending_frames():
            self._close_part(final=True)
        changed = self._config_changed(catalog)
        self.catalog = catalog
        self._tracks = [t.name for t in tracks]
        self._timescale = {t.name: t.timescale for t in tracks}
        init = init_segment(tracks) if tracks else None
        if init is not None and self.init is not None and init != self.init:
            # samples from here on need the new init: end the segment, restart at a keyframe
            self._end_segment()
            self._group = None
            self.init_version += 1
            self._discontinuity_next = True
        elif changed - set(self._tracks) and self.follows is None:
            # the broadcast's video (or audio) takes a new init at its next group: this playlist
            # (the audio, or a video one) marks a discontinuity there too, keeping its init.
            # hls.js maps an audio segment's timestamps with what the video segments of the same
            # discontinuity sequence number gave it (as ExoPlayer does; RFC 8216 6.2.4 asks
            # matching content to have matching Discontinuity Sequence Numbers): a player that
            # joined after such a change, whose video was all past it, waited for that mapping
            # forever and never played. (A rung marks its source's discontinuities instead:
            # discontinuity_groups.)
            self._discontinuity_next = True
        self.init = init
        if init is not None:
            self._inits[self.init_version] = init
        self._pending = {name: self._pending.get(name, []) for name in self._tracks}
        self.version += 1

    def _config_changed(self, catalog: Catalog) -> set[str]:
        """The broadcast's main tracks (VIDEO, AUDIO) that ``catalog`` gives another configuration
        than the catalog before it did."""
        changed = set()
        for track in (VIDEO, AUDIO):
            old = self.catalog.track(track) if self.catalog is not None else None
            new = catalog.track(track)
            if old is not None and new is not None and old.init_data != new.init_data:
                changed.add(track)
        return changed

    @property
    def _primary(self) -> str | None:
        if VIDEO in self._tracks:
            return VIDEO
        return self._tracks[0] if self._tracks else None

    def push(self, frame: Frame) -> None:
        if frame.track not in self._pending or self.ended:
            return
        primary = self._primary
        if frame.track == primary:
            if self._dropping is not None:
                if frame.group == self._dropping:
                    return
                self._dropping = None
            if self._begun_again(frame):
                self._dropping = frame.group
                return
            if self.follows is not None and (frame.group in self.gap_groups or self._in_gap and frame.group == self._group):
                return  # listed as a gap already (its transcoder said it skipped it, or it came too late)
            if frame.group != self._group:
                if self._group is not None and frame.group < self._group and frame.index != 0:
                    # the tail of a group whose segment is closed, overtaken by the next group
                    # on another QUIC stream (a relay sends the newest group first): too late
                    return
                seam = self._is_seam(frame.dts) if self.follows is None else frame.group in self.follows.seam_groups
                if self.follows is not None and not seam and self._last_dts is not None and not self._in_gap \
                        and abs(frame.dts - self._last_dts) / self._timescale[primary] > FOLLOWER_RESTART_GAP:
                    self._restart()
                if seam:
                    self.seam_groups.append(frame.group)
                carried = self._short_tail(frame, seam)
                if carried:
                    self._finish_segment()
                elif self._group is not None and self.follows is not None:
                    self._end_followed_group(frame, seam)
                elif self._group is not None:
                    self._close_part(final=True, next_dts=None if seam else frame.dts)
                if frame.index != 0 and self._group is None and not frame.keyframe:
                    return  # never start a stream mid-group
                self._group = frame.group
                if self.follows is not None and frame.group in self.follows.discontinuity_groups:
                    self._discontinuity_next = True
                self._open_segment(carried[0] if carried else frame, seam=seam)
                self._pending[primary] = carried
            elif self._part_would_exceed(frame.dts):
                self._close_part(final=False, next_dts=frame.dts)
            if self._last_dts is None or not 0 < frame.dts - self._last_dts <= DISCONTINUITY_GAP * self._timescale[primary]:
                self._recent_dts.clear()  # a gap or a jump is no frame interval
            self._recent_dts.append(frame.dts)
            self._last_dts = frame.dts
            pts = frame.pts / self._timescale[primary]
            self.media_time = pts if self.media_time is None else max(self.media_time, pts)
        elif self._group is None:
            return  # audio before the first video keyframe has no segment yet
        if frame.track == primary and self.segments and self.segments[-1].complete:
            self._open_segment(frame, continues=True)  # the group outgrew the target: on in the next segment
        self._pending[frame.track].append(frame)
        if frame.track == primary:
            last = self._part_full()
            if last is not None:  # the next frame would not fit: publish the part now
                self._close_part(final=False, last_duration=last)

    def end(self) -> None:
        if not self.ended:
            self._end_segment()
            self.ended = True
            self.version += 1

    # -- cutting --------------------------------------------------------------------------------
    def _short_tail(self, frame: Frame, seam: bool) -> list[Frame]:
        """At a group boundary of a track whose every frame can start a segment (audio): the
        frames pending for the segment's last part, taken out to open the next segment, so every
        part of such a playlist is a whole part (12 AAC frames, 279 ms) and a segment ends up to
        a part before the video's. hls.js finds the next part by its expected time, and its
        expectation for an alternate audio playlist is off by tens of ms (more on a loaded
        host): a last part shorter than that (a group boundary falls anywhere in a run of AAC
        frames) was never loaded, a hole playback stalled on."""
        if self._group is None or seam or not self.segments or not self.segments[-1].parts:
            return []
        pending = self._pending.get(frame.track) or []
        if not pending or not all(f.keyframe for f in pending):
            return []
        self._pending[frame.track] = []
        return pending

    def _restart(self) -> None:
        """Forget every segment: the next group starts the playlist again, numbered from the
        broadcast's first group like a stream that starts late."""
        self.segments.clear()
        self.gap_groups.clear()
        self._in_gap = False
        self._pending = {name: [] for name in self._tracks}
        self._group = self._last_dts = None
        self._written_end.clear()
        self._msn = self.first
        self.version += 1

    def _pending_frames(self) -> bool:
        return any(self._pending.values())

    def _end_segment(self) -> None:
        """End the segment in progress: its pending frames as its last part, or, with none
        pending, as it stands (a segment whose parts are all out)."""
        if self._pending_frames():
            self._close_part(final=True)
        elif self.segments and not self.segments[-1].complete:
            self._finish_segment()

    def _frame_interval(self) -> float | None:
        """The primary track's mean frame interval over its recent frames (ticks), if known."""
        if len(self._recent_dts) < 2:
            return None
        return (self._recent_dts[-1] - self._recent_dts[0]) / (len(self._recent_dts) - 1)

    def _part_would_exceed(self, dts: int) -> bool:
        """True when a frame at ``dts`` (with a duration like the previous one) would make the
        part longer than the part target: parts must never exceed PART-TARGET. (A part is
        normally closed before this, by ``_part_full``; this catches a frame that came sooner
        than predicted.)"""
        frames = self._pending.get(self._primary) or []
        if not frames:
            return False
        step = self._frame_interval() or dts - frames[-1].dts
        limit = self.part_target * self._timescale[self._primary] + FRAME_TIME_TOLERANCE_TICKS
        return dts + step - self._run_start(self._primary, frames) > limit

    def _part_full(self) -> int | None:
        """When the pending part's next frame would not fit in the part target (by the frame
        interval), the duration (ticks) to give its last frame so the part is published now
        without exceeding PART-TARGET; else None."""
        frames = self._pending.get(self._primary) or []
        step = self._frame_interval()
        if not frames or step is None:
            return None
        target = self.part_target * self._timescale[self._primary]
        span = frames[-1].dts - self._run_start(self._primary, frames)
        if span + 2 * step <= target + FRAME_TIME_TOLERANCE_TICKS:
            return None
        # the next frame's dts, from every recent one (each is rounded to the tick: their mean
        # phase is nearer the true one than the last's), so the part ends where the next begins
        recent = self._recent_dts
        count = len(recent)
        predicted = round(sum(d + (count - i) * step for i, d in enumerate(recent)) / count) - frames[-1].dts
        return max(1, min(predicted, math.floor(target + 1e-6) - span))

    def _run_start(self, name: str, frames: list[Frame]) -> int:
        """The decode time ``name``'s pending ``frames`` are written from: where its last written
        sample ended, when the first frame is that close to it (TIMELINE_SNAP, or half the last
        sample's duration) and before the second; else its own."""
        end = self._written_end.get(name)
        first = frames[0].dts
        near = max(TIMELINE_SNAP * self._timescale[name], self._last_duration.get(name, 0) // 2)
        if end is None or abs(first - end) > near \
                or (len(frames) > 1 and end >= frames[1].dts):
            return first
        return end

    def _begun_again(self, frame: Frame) -> bool:
        """A rung's group that starts at or before its last frame (see FOLLOWER_RESTART_GAP), not
        at a seam of its source: a restarted transcoder re-encoding the group in progress. Its
        group id may be the cut group's own (the new child's track is a new one)."""
        if self.follows is None or self._last_dts is None or frame.index != 0 or frame.group in self.follows.seam_groups:
            return False
        back = (self._last_dts - frame.dts) / self._timescale[self._primary]
        return 0 <= back <= FOLLOWER_RESTART_GAP

    def _is_seam(self, dts: int) -> bool:
        if self._last_dts is None or not self.segments:
            return False
        gap = (dts - self._last_dts) / self._timescale[self._primary]
        return abs(gap) > DISCONTINUITY_GAP  # a few ms of overlap between sources is jitter, not a seam

    def _open_segment(self, frame: Frame, seam: bool = False, continues: bool = False) -> None:
        if not self.segments and self._msn == self.first and self.group_origin is not None:
            self._msn = self._first_msn(frame.group)
        discontinuity = (self._discontinuity_next or seam) and bool(self.segments)
        self._discontinuities += discontinuity
        self._discontinuity_next = False
        if discontinuity:
            self.discontinuity_groups.append(frame.group)
        arrival = frame.received_ns or time.time_ns()
        started = arrival if self.clock is None else self.clock.date_ns(frame.pts, self._timescale[frame.track], arrival)
        self._append(Segment(self._msn, started, init_version=self.init_version, discontinuity=discontinuity,
                             discontinuity_sequence=self._discontinuities, group=frame.group, continues=continues,
                             media_start=frame.pts / self._timescale[frame.track]))

    # -- a rung's gaps ----------------------------------------------------------------------------
    # A group a rung's transcoder skipped whole (it fell behind) keeps its place in the rung's
    # playlist: a segment for each of the source's segments of it, marked EXT-X-GAP, with the
    # source's durations, date and parts (GAP=YES), listed part by part as the source's parts
    # appear, from when the rung is known not to have it: the skip said on the wire (skip), or the
    # source RUNG_GAP_AFTER into it (follow_source), or at the latest the rung's next group. A
    # blocking reload of the rung's playlist is then answered in step with the source's. A group
    # cut short (part of it delivered) ends where its media ends (the last picture lasts a frame
    # interval, never past PART-TARGET) and the rest of its segment is the source's parts, GAP=YES.

    def skip(self, group: int) -> None:
        """A rung's transcoder said it skipped (the rest of) ``group``."""
        if self.follows is None or self.ended or self._group is None or group < self._group \
                or group in self.gap_groups:
            return
        # (a rung's groups come in order: those between its last and this one will not come either)
        self._gap_to(group)
        self._enter_gap()
        self._follow()

    def follow_source(self, gap_after: float | None = None) -> bool:
        """Bring a rung's playlist in a gap up to its source's (call when the source's has changed);
        with ``gap_after`` (RUNG_GAP_AFTER), a source group the rung has not begun that far into
        it is a gap from now on. True when that made a gap (for the log)."""
        source = self.follows
        if source is None or self.ended or self._group is None or not self.segments:
            return False
        late = False
        if not self._in_gap and gap_after is not None and source.media_time is not None:
            groups = [s.group for s in source.segments if s.group is not None and s.group > self._group
                      and s.media_start is not None and source.media_time - s.media_start > gap_after]
            if groups:
                late = True
                self._gap_to(max(groups))
                self._enter_gap()
        self._follow()
        return late

    def _gap_to(self, group: int) -> None:
        """The source's groups from the rung's own (it comes no further) up to ``group`` are gaps."""
        groups = {s.group for s in self.follows.segments if s.group is not None and self._group <= s.group < group}
        self._add_gap_groups(groups | {group})

    def _add_gap_groups(self, groups: set[int]) -> None:
        """``groups`` are gaps too (in order; each once)."""
        for g in sorted(groups - set(self.gap_groups)):
            self.gap_groups.append(g)

    def _enter_gap(self) -> None:
        """The rung's media is over until its next group: its pending frames are its segment's last
        part (the last picture lasting as long as the one before), and the rest follows the source."""
        if self._in_gap:
            return
        self._in_gap = True
        if self._pending.get(self._primary):
            self._close_part(final=False)

    def _end_followed_group(self, frame: Frame, seam: bool) -> None:
        """A rung's next group (``frame``) begins: the group before ends, and the source's groups
        between, skipped whole (said on the wire or not), are gaps. Before, the skipped groups were
        listed only now, and a group cut short got a last part up to here, longer than PART-TARGET."""
        source = self.follows
        # (whole ones: a source group still in progress is the one this group was made from, under
        # another id: a restarted transcoder's new track numbered on from the relay's)
        between = [s for s in source.segments if s.group is not None and self._group < s.group < frame.group
                   and s.complete]
        self._add_gap_groups({s.group for s in between})
        if not self._in_gap:
            primary = self._primary
            frames = self._pending[primary]
            next_dts = None if seam or any(s.discontinuity for s in between) else frame.dts
            if between and next_dts is not None:  # the last picture lasts up to the first gap
                next_dts -= round(sum(s.duration for s in between) * self._timescale[primary])
            if frames and next_dts is not None and next_dts - self._run_start(primary, frames) \
                    > self.part_target * self._timescale[primary] + FRAME_TIME_TOLERANCE_TICKS:
                next_dts = None  # cut short: not up to the next group (PART-TARGET); GAP=YES parts after
            self._close_part(final=seam, next_dts=next_dts)
            last = self.segments[-1]
            src = source.segment(last.msn)
            short = src is not None and src.group == last.group and src.duration - last.duration > GAP_PART_MIN
            if seam or not (short or between):
                self._end_segment()
                return
            self._in_gap = True
        self._follow(before=frame.group)
        self._end_segment()  # (the source's is whole by now, or never here)
        self._in_gap = False

    def _follow(self, before: int | None = None) -> None:
        """In a gap: the rest of the rung's segment in progress, then a segment per source segment
        of the groups in ``gap_groups`` (before ``before``), each with the source's parts, GAP=YES,
        as they appear; a segment completes when the source's does."""
        if not self._in_gap:
            return
        source = self.follows
        while self.segments:
            last = self.segments[-1]
            if not last.complete:
                src = source.segment(last.msn)
                if src is None or src.group != last.group:
                    self._finish_segment()  # (not numbered as the source's: nothing to follow)
                    continue
                end = 0.0
                for p in src.parts:
                    end += p.duration
                    if end - last.duration > GAP_PART_MIN:
                        last.parts.append(Part(b"", end - last.duration, False, gap=True))
                        last.duration = end
                        self.version += 1
                if not src.complete:
                    return
                self._finish_segment()
                continue
            src = source.segment(self._msn)
            if src is None or src.group not in self.gap_groups or (before is not None and src.group >= before):
                return
            self._add_gap(src)

    def _add_gap(self, source: Segment) -> None:
        """A segment in place of ``source``'s, with its date and discontinuity, and no media
        (EXT-X-GAP: players fetch nothing of it; its URIs answer 404); its parts follow the
        source's (_follow)."""
        discontinuity = source.discontinuity and bool(self.segments)
        self._discontinuities += discontinuity
        if discontinuity:
            self.discontinuity_groups.append(source.group)
        self._append(Segment(self._msn, source.started_ns, init_version=self.init_version,
                             discontinuity=discontinuity, discontinuity_sequence=self._discontinuities,
                             group=source.group, continues=source.continues, gap=True,
                             media_start=source.media_start))

    def _append(self, segment: Segment) -> None:
        """The next segment: the window moves."""
        self.segments.append(segment)
        self._msn += 1
        self.version += 1  # (the window moves)
        for _ in range(self._window_start(list(self.segments), self.window + 1)):
            self.segments.popleft()
        oldest = self.segments[0].init_version
        for version in [v for v in self._inits if v < oldest]:
            del self._inits[version]

    def _window_start(self, segments: list[Segment], count: int) -> int:
        """Where a window of the last ``count`` of ``segments`` begins: back to its first group's
        first segment (WINDOW_REACH)."""
        start = max(0, len(segments) - count)
        while start > 0 and segments[start].continues and len(segments) - start < WINDOW_REACH * count:
            start -= 1
        return start

    def _first_msn(self, group: int) -> int:
        """The media sequence number of a late-starting stream's first segment (of ``group``):
        the one the stream it follows gave that group (their groups are cut alike, also where
        one outgrew the target), else the group's distance from the broadcast's first group."""
        if self.follows is not None:
            for s in self.follows.segments:
                if s.group == group and not s.continues:
                    return s.msn
        return self.first + max(group - self.group_origin, 0)

    def init_version_data(self, version: int) -> bytes | None:
        """The init segment of ``version``, while a segment in the window needs it."""
        return self._inits.get(version)

    def _close_part(self, *, final: bool, next_dts: int | None = None, last_duration: int | None = None) -> None:
        """Publish the pending frames as a part; the primary track's last frame lasts until
        ``next_dts`` or ``last_duration`` ticks (else as long as the one before)."""
        if not self.segments:
            return
        if not self._pending.get(self._primary):
            # (a stream of several tracks) the others' frames alone make no part: its duration is
            # the primary's; they go with the primary's next frames
            if final and not self.segments[-1].complete:
                self._finish_segment()
            return
        runs = []
        duration = 0.0
        independent = False
        for track_id, name in enumerate(self._tracks, start=1):
            frames = self._pending[name]
            if not frames:
                continue
            samples = []
            shift = self._run_start(name, frames) - frames[0].dts
            for i, f in enumerate(frames):
                dts, pts = (f.dts + shift, f.pts + shift) if i == 0 else (f.dts, f.pts)
                if i + 1 < len(frames):
                    d = frames[i + 1].dts - dts
                elif name == self._primary and next_dts is not None and next_dts > dts:
                    # (a next group that begins no later, as a restarted transcoder's re-encoding
                    # of the source group the crash cut short, leaves it a frame interval below:
                    # a frame of no duration would be a part or segment of 0.000 s)
                    d = next_dts - dts
                elif name == self._primary and last_duration is not None:
                    d = last_duration
                else:
                    d = self._last_duration.get(name, 0) or (frames[i].dts - frames[i - 1].dts if i else 0)
                d = max(d, 0)
                self._last_duration[name] = d or self._last_duration.get(name, 0)
                samples.append(Sample(dts, pts, d, f.keyframe, f.payload))
            self._written_end[name] = samples[-1].dts + samples[-1].duration
            if name == self._primary:
                duration = sum(s.duration for s in samples) / self._timescale[name]
                independent = samples[0].keyframe
            runs.append((track_id, samples))
            self._pending[name] = []
        if runs:
            self._fragment_seq += 1
            data = fragment(self._fragment_seq, runs)
            segment = self.segments[-1]
            segment.parts.append(Part(data, duration, independent))
            segment.duration += duration
            self.version += 1
            target = self._known_target()
            if not final and target is not None and segment.duration + self.part_target >= target + 0.5 - TARGET_MARGIN:
                final = True  # one more part could round its EXTINF above the target: end it here
        if final:
            self._finish_segment()

    def _finish_segment(self) -> None:
        segment = self.segments[-1]
        segment.complete = True
        if self._known_target() is None and segment.duration > 0:
            self._target = max(1, math.floor(segment.duration + 0.5))  # the first whole segment fixes it
        self.version += 1

    def _known_target(self) -> int | None:
        """The target duration, once fixed; a rung takes its source's, to be cut where it is."""
        if self._target is None and self.follows is not None:
            self._target = self.follows._target
        return self._target

    def _measured(self) -> list[Segment]:
        """The segments a rate is measured over: the whole ones in the window; the one in progress
        only while there is none (its first parts, the key frame's, are denser than any whole
        segment: counted, BANDWIDTH rose 40 % a part into each segment and fell back at its end)."""
        whole = [s for s in self.segments if s.complete and s.media_duration > 0 and not s.gap]
        return whole or [s for s in self.segments if s.media_duration > 0 and not s.gap]

    @property
    def bandwidth(self) -> int:
        """Peak bits per second of a segment in the window (for BANDWIDTH)."""
        return int(max((sum(len(p.data) for p in s.parts) * 8 / s.media_duration for s in self._measured()), default=0))

    @property
    def average_bandwidth(self) -> int:
        """Bits per second over the segments in the window (for AVERAGE-BANDWIDTH)."""
        measured = self._measured()
        seconds = sum(s.media_duration for s in measured)
        return int(sum(len(p.data) for s in measured for p in s.parts) * 8 / seconds) if seconds else 0

    # -- lookups --------------------------------------------------------------------------------
    def segment(self, msn: int) -> Segment | None:
        for s in self.segments:
            if s.msn == msn:
                return s
        return None

    def has(self, msn: int, part: int | None) -> bool:
        """True when segment ``msn`` is complete, or (with ``part``) that part of it exists."""
        s = self.segment(msn)
        if s is None:
            return bool(self.segments) and msn < self.segments[0].msn
        return s.complete if part is None else (len(s.parts) > part or s.complete)

    @property
    def last_part(self) -> tuple[int, int] | None:
        """(msn, part index) of the last part its playlist lists (EXT-X-RENDITION-REPORT's
        LAST-MSN and LAST-PART), or None before the first."""
        last = next((s for s in reversed(self.segments) if s.parts), None)
        return None if last is None else (last.msn, len(last.parts) - 1)

    @property
    def next_part(self) -> tuple[int, int]:
        """(msn, part index) of the part that will be published next (for the preload hint)."""
        if not self.segments:
            return self._msn, 0
        last = self.segments[-1]
        return (last.msn + 1, 0) if last.complete else (last.msn, len(last.parts))

    # -- playlists ------------------------------------------------------------------------------
    def target_duration(self) -> int:
        """EXT-X-TARGETDURATION: fixed once known (TARGET_DURATION); 2 s until then (no playlist
        is served before its first whole segment; this only times blocking requests)."""
        return self._target or 2

    def media_playlist(self, query: str = "") -> str:
        """The media playlist; ``query`` (``?token=...``) is appended to every URI in it."""
        rendered = self._rendered
        if rendered is not None and rendered[0] == self.version and rendered[1] == query:
            return rendered[2]
        text = self._render_media_playlist(query)
        self._rendered = (self.version, query, text)
        return text

    def _render_media_playlist(self, query: str) -> str:
        target = self.target_duration()
        segments = [s for s in self.segments if s.parts]
        complete = [s for s in segments if s.complete]
        shown = complete[self._window_start(complete, self.window):] + [s for s in segments if not s.complete]
        lines = [
            "#EXTM3U",
            "#EXT-X-VERSION:9",
            f"#EXT-X-TARGETDURATION:{target}",
            f"#EXT-X-PART-INF:PART-TARGET={self.part_target:.3f}",
            f"#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK={3 * self.part_target:.3f},HOLD-BACK={3 * target:.1f}",
            f"#EXT-X-MEDIA-SEQUENCE:{shown[0].msn if shown else self._msn}",
        ]
        if shown and shown[0].discontinuity_sequence:
            lines.append(f"#EXT-X-DISCONTINUITY-SEQUENCE:{shown[0].discontinuity_sequence}")
        lines.append(f'#EXT-X-MAP:URI="{self.prefix}init-{shown[0].init_version if shown else self.init_version}.mp4{query}"')
        with_parts = {s.msn for s in shown[-PART_LISTING_SEGMENTS:]}
        for s in shown:
            if s.discontinuity and s is not shown[0]:
                lines.append("#EXT-X-DISCONTINUITY")
                lines.append(f'#EXT-X-MAP:URI="{self.prefix}init-{s.init_version}.mp4{query}"')
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(s.started_ns / 1e9))
            lines.append(f"#EXT-X-PROGRAM-DATE-TIME:{stamp}.{(s.started_ns // 1_000_000) % 1000:03d}Z")
            if s.msn in with_parts:
                for i, p in enumerate(s.parts):
                    flag = ",GAP=YES" if s.gap or p.gap else ",INDEPENDENT=YES" if p.independent else ""
                    lines.append(f'#EXT-X-PART:DURATION={p.duration:.3f},URI="{self.prefix}seg{s.msn}.{i}.m4s{query}"{flag}')
            if s.gap and s.complete:  # (one in progress has its parts alone, GAP=YES)
                lines.append("#EXT-X-GAP")
            if s.complete:
                lines.append(f"#EXTINF:{s.duration:.3f},")
                lines.append(f"{self.prefix}seg{s.msn}.m4s{query}")
        if self.ended:
            lines.append("#EXT-X-ENDLIST")
        elif self.segments:
            msn, part = self.next_part
            lines.append(f'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="{self.prefix}seg{msn}.{part}.m4s{query}"')
        return "\n".join(lines) + "\n"

    @property
    def track_names(self) -> list[str]:
        """The catalog tracks this stream packages, in init segment order."""
        return list(self._tracks)

    @property
    def has_media(self) -> bool:
        return bool(self._tracks)

    @property
    def playable(self) -> bool:
        """An init segment and one whole segment: players (hls.js among them) reject a playlist
        that holds parts but no complete segment yet, so the first one is waited for."""
        return self.init is not None and any(s.complete for s in self.segments)


def hls_codec(codec: str) -> str:
    """The CODECS name of a catalog codec: RFC 6381 names the ISOBMFF sample entry, which for
    Opus is "Opus" (WebCodecs and MSF write "opus"); the others are the same string."""
    return "Opus" if codec == "opus" else codec


def multivariant_playlist(videos: list[tuple[LlHlsStream, str]], audio: LlHlsStream, audio_uri: str,
                          query: str = "", other_audio: list[tuple[LlHlsStream, str]] = ()) -> str:
    """One variant per video stream (renditions of one picture: CODECS, RESOLUTION, BANDWIDTH,
    FRAME-RATE), all sharing the audio group: the default audio, then ``other_audio`` (further
    audio tracks in its codec, with their playlists' URIs: NAME "audio 1" for ``audio-1``); an
    audio-only variant (the default audio alone) when there is no video. ``query``
    (``?token=...``) is appended to every URI."""
    catalog = next((s.catalog for s, _ in videos if s.catalog), None) or audio.catalog
    # no EXT-X-INDEPENDENT-SEGMENTS: a group longer than the target duration goes on in a segment
    # that starts without a keyframe (TARGET_DURATION)
    lines = ["#EXTM3U", "#EXT-X-VERSION:9"]
    ainfo = catalog.track(audio.track_names[0]) if catalog and audio.has_media else None
    variants = []
    for stream, uri in videos:
        if catalog is None or not stream.has_media:
            continue
        info = catalog.track(stream.track_names[0])
        if info is not None:
            variants.append((stream, uri, info))
    if ainfo is not None and variants:
        channels = f',CHANNELS="{ainfo.channels}"' if ainfo.channels else ""
        lines.append(f'#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="audio",NAME="audio",DEFAULT=YES,AUTOSELECT=YES'
                     f'{channels},URI="{audio_uri}{query}"')
    group = [audio] if ainfo is not None else []
    for stream, uri in other_audio if ainfo is not None and variants else ():
        track = stream.track_names[0]
        info = catalog.track(track)
        if info is None or not stream.has_media:
            continue
        group.append(stream)
        channels = f',CHANNELS="{info.channels}"' if info.channels else ""
        # E-RTMP gives no per-track name or language (audioTrackIdInfoMap: rate, channels, codec)
        name = track.replace("-", " ")
        lines.append(f'#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="audio",NAME="{name}",DEFAULT=NO,AUTOSELECT=YES'
                     f'{channels},URI="{uri}{query}"')
    # the largest of the group's renditions (RFC 8216bis 4.4.6.2: any playable combination)
    audio_bandwidth = max((s.bandwidth for s in group), default=0)
    # AVERAGE-BANDWIDTH (RFC 8216bis 4.4.6.2; Apple's authoring spec requires it) once measured
    audio_average = max((s.average_bandwidth for s in group), default=0)
    for stream, uri, vinfo in variants:
        codecs = ",".join(hls_codec(t.codec) for t in (vinfo, ainfo) if t is not None)
        bandwidth = (stream.bandwidth or vinfo.stated_bitrate or 0) + audio_bandwidth
        attrs = [f"BANDWIDTH={max(bandwidth, 1)}"]
        if stream.average_bandwidth:
            attrs.append(f"AVERAGE-BANDWIDTH={stream.average_bandwidth + audio_average}")
        attrs.append(f'CODECS="{codecs}"')
        if vinfo.width and vinfo.height:
            attrs.append(f"RESOLUTION={vinfo.width}x{vinfo.height}")
        if vinfo.framerate:
            attrs.append(f"FRAME-RATE={vinfo.framerate:.3f}")
        if ainfo is not None:
            attrs.append('AUDIO="audio"')
        lines += [f"#EXT-X-STREAM-INF:{','.join(attrs)}", uri + query]
    if not variants and ainfo is not None:
        average = f",AVERAGE-BANDWIDTH={audio_average}" if audio_average else ""
        lines += [f'#EXT-X-STREAM-INF:BANDWIDTH={max(audio_bandwidth, 1)}{average},CODECS="{hls_codec(ainfo.codec)}"',
                  audio_uri + query]
    return "\n".join(lines) + "\n"
