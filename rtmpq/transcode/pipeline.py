"""One source video track -> its rungs: decode once, scale and encode per rung, group by group.

Threads (PyAV releases the GIL in decode, scale and encode, so they use both cores):

    push(Frame) --queue--> decoder thread --bounded queue per rung--> rung thread --> emit(track, Frame)

- **Groups.** Output group N of every rung is made from source group N: the first frame of each
  source group goes into each rung's encoder as an IDR (pict_type I, forced-idr), every other
  frame with its picture type cleared. Decoded frames are mapped to source groups by pts (the
  first pts of each group), never by call order, so decoder delay cannot move a frame across a
  boundary. Rung frames keep the source pts; dts = pts (no B-frames).
- **Frames leave as they are encoded**: a rung adds the encoder's delay (none with zerolatency)
  and the queue's, not a GoP.
- **On demand.** A rung that is not active gets no frames and costs nothing; with no active rung
  nothing is decoded either. A rung set inactive first finishes the source group in progress (up
  to the first decoded frame of a later group), so the last group it made is whole and a rung
  started again later never makes a group it already began (the relay would see its object ids
  start over, and close its subscribers' sessions). The decoder thread always keeps the current source group's access
  units (references, not copies), so a rung that becomes active starts at the current group:
  that group is decoded from its IDR (by the main decoder when it was idle, otherwise by a
  catch-up decoder for that rung alone) before it goes on live. The group a rung starts at waits
  for its encoder, not only a catch-up burst: a rung watched before the source came gets the
  relay's newest cached group at once (a transcoder started under its viewers).
- **Falling behind.** A rung whose queue is full drops the rest of that group and the frames
  until the next group boundary, and what its queue still holds of that group and older ones
  (stale; a skipped group: counted, logged, and signalled with ``skip(track, group)`` after any
  frames of it the rung emitted, so the wire can say so); it never stalls the decoder or the
  other rungs, and a group it delivers always starts with an IDR.
- **Bad input.** A decode error, or a new configuration record, stops decoding until the next
  source group, which starts a fresh decoder; one log line names the broadcast.
"""

import bisect
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import av

from ..media.catalog import TrackInfo
from ..media.frames import Frame
from .coder import CoderError, RungEncoder, SourceDecoder
from .ladder import DECODE_QUEUE_FRAMES, RUNG_QUEUE_FRAMES, X264_PRESET, Rung, rungs_for_source

log = logging.getLogger("rtmpq.transcode")

# The access units of the current source group kept for rungs that start mid-group (bytes; one GoP
# of a 20 Mbit/s source with 4 s GoPs is 10 MB). A larger group cannot be joined mid-way.
MAX_GROUP_BYTES = 24 * 1024 * 1024
# Group start pts remembered to map decoded frames to groups (decoders hold back a few frames).
GROUP_STARTS_KEPT = 8

_STOP = object()
_SKIP = object()  # queue marker: (_SKIP, group) after the last queued frame of a skipped group
_FLUSHED = object()  # queue marker: (_FLUSHED, callback) after the frames of a flush (finish)


@dataclass
class RungStats:
    frames_encoded: int = 0
    groups: int = 0  # groups delivered (each starting with an IDR)
    skipped_groups: int = 0  # groups dropped or cut short because the rung fell behind
    frames_dropped: int = 0
    # seconds from a source frame's arrival at the transcoder to its rung frame leaving the
    # encoder, for the last frame made (None: none yet)
    lag: float | None = None


@dataclass
class TranscodeStats:
    frames_in: int = 0
    frames_decoded: int = 0
    decode_errors: int = 0
    input_skipped_groups: int = 0  # source groups dropped before the decoder (it fell behind)
    late_frames: int = 0  # frames of a group that came after a later group began (not decoded)
    rungs: dict[str, RungStats] = field(default_factory=dict)


class _RungWorker:
    """One rung's encoder and thread; fed by the decoder thread through a queue bounded in frames
    (markers are not counted: a skip is always signalled)."""

    def __init__(self, owner: "Transcoder", encoder: RungEncoder, track: str) -> None:
        self.owner = owner
        self.encoder = encoder
        self.track = track
        self.stats = owner.stats.rungs.setdefault(track, RungStats())
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.room = threading.Semaphore(owner.rung_queue_frames)  # frames the queue may still take
        # decoder-thread side
        self.active = False
        self.stop_after: int | None = None  # set inactive: it stops after this source group
        self.offered_group: int | None = None
        self.skipping = False
        self.last_pts: int | None = None
        self.said_dropped: int | None = None  # the last source group dropped before the decoder it signalled
        self.sent = 0  # frames queued so far (their sequence numbers)
        self.catch_up_end = 0  # the sequence number of the last frame of the last catch-up burst
        self.start_group: int | None = None  # the source group it started at (made whole, waited for)
        # rung-thread side: the sequence number of the last frame taken from the queue
        self.taken = 0
        # the newest group dropped: its frames still queued, and those of older groups (stale),
        # are dropped too, unencoded (set by the decoder thread, read by the rung thread)
        self.cut_group: int | None = None
        self.thread = threading.Thread(target=self._run, name=f"rtmpq-rung-{track}", daemon=True)
        self.thread.start()

    # decoder thread
    def offer(self, group: int, frame, received_ns: int, pushed_ns: int, catch_up: bool = False) -> None:
        if self.last_pts is not None and frame.pts <= self.last_pts:
            return  # already made by a catch-up decode
        first = group != self.offered_group
        if first:
            if self.offered_group is None:
                self.start_group = group
            self.say_dropped(group)
            self.offered_group = group
            self.skipping = False
        elif self.skipping:
            self.stats.frames_dropped += 1
            return
        # a catch-up burst waits for the encoder, and so do the live frames behind it until the
        # burst has left the queue: else the first of them finds the queue full of the burst and
        # cuts the very group the rung was started for. So does the group it starts at whatever
        # brought it: a source subscription begins with the relay's newest cached group, from its
        # IDR, at once (a transcoder node, or `up`'s isolated child, started under its viewers),
        # and the opening encoder took no frame yet
        waits = self.owner.lossless or catch_up or self.taken < self.catch_up_end or group == self.start_group
        if self.room.acquire(blocking=waits):
            self.sent += 1
            if catch_up:
                self.catch_up_end = self.sent
            self.queue.put((group, frame, first, received_ns, pushed_ns, self.sent))
            self.last_pts = frame.pts
            return
        self.skipping = True
        self.stats.skipped_groups += 1
        self.stats.frames_dropped += 1
        self.cut_group = group
        self.queue.put((_SKIP, group))
        log.warning("%s %s: the encoder fell behind; dropping to the next group (group %d %s)",
                    self.owner.label, self.track, group, "skipped" if first else "cut short")

    def say_dropped(self, before: int | None) -> None:
        """Source groups the decoder never got (all or the rest of them: it fell behind), from the
        one in progress here up to ``before`` (None: all), each once: the rung skipped them, after
        what of them it made (their frames the decoder still held went out first)."""
        for group in self.owner.dropped_groups:
            if (before is not None and group >= before) or (self.said_dropped is not None and group <= self.said_dropped):
                continue
            self.said_dropped = group
            if self.offered_group is None or group < self.offered_group:
                continue  # before this rung started
            if group == self.offered_group and self.skipping:
                continue  # it cut that group itself, and said so
            self.stats.skipped_groups += 1
            self.queue.put((_SKIP, group))

    # rung thread
    def _run(self) -> None:
        group = None
        index = 0
        drop_group = False
        signalled = None  # the last group signalled as skipped
        while True:
            item = self.queue.get()
            if item is _STOP:
                return
            if item[0] is _FLUSHED:
                item[1]()  # every frame queued before it was emitted
                continue
            if item[0] is _SKIP:
                if item[1] != signalled:
                    signalled = item[1]
                    self.owner.skip(self.track, item[1])
                if group == item[1]:
                    drop_group = True
                continue
            self.room.release()
            group_id, frame, first, received_ns, pushed_ns, self.taken = item
            cut = self.cut_group
            if cut is not None and group_id <= cut:  # stale: the rung goes on at the next group
                self.stats.frames_dropped += 1
                if group_id != signalled:  # (the rest of) this group is not made: say so
                    if group_id < cut:
                        self.stats.skipped_groups += 1  # an older group cut short on the way
                    signalled = group_id
                    self.owner.skip(self.track, group_id)
                if group == group_id:
                    drop_group = True
                continue
            try:
                packets = self.encoder.encode(frame, idr=first)
            except av.FFmpegError as exc:
                log.warning("%s %s: encode failed (%s); going on at the next group", self.owner.label, self.track, exc)
                if group_id != signalled:
                    self.stats.skipped_groups += 1
                    signalled = group_id
                    self.owner.skip(self.track, group_id)
                drop_group, group = True, group_id
                continue
            self.stats.frames_encoded += 1
            for pts, data, idr in packets:
                if first:
                    group, index, drop_group = group_id, 0, False
                    first = False
                    if not idr:  # never deliver a group that does not start with an IDR
                        drop_group = True
                        self.stats.skipped_groups += 1
                        log.warning("%s %s: group %d did not start with an IDR; skipped", self.owner.label, self.track,
                                    group_id)
                        signalled = group_id
                        self.owner.skip(self.track, group_id)
                    else:
                        self.stats.groups += 1
                if drop_group or group is None:
                    continue
                self.owner.emit(self.track, Frame(self.track, group, index, pts, pts, idr, data, received_ns))
                if pushed_ns:
                    self.stats.lag = (time.monotonic_ns() - pushed_ns) / 1e9
                index += 1

    def stop(self) -> None:
        self.queue.put(_STOP)  # after what is queued (at most rung_queue_frames): nothing is cut off


class Transcoder:
    """The rungs of one source video track. ``push`` and ``set_active`` are called from the event
    loop and never block; ``emit(track, Frame)`` and ``skip(track, group)`` (the rung dropped the
    rest of that group, after any of its frames it emitted) are called from rung threads (make
    them thread-safe, e.g. with ``loop.call_soon_threadsafe``; in that order, they keep theirs).
    ``lossless``: for files and benchmarks, where input comes faster than real time: the decoder
    waits for slow rungs instead of dropping groups. ``presets``: an x264 preset per rung name
    ("480p") over ``preset``. ``stats``: the counts of the Transcoder this one replaces (its source
    changed size), which go on from there."""

    def __init__(self, label: str, source: TrackInfo, ladder: tuple[Rung, ...], emit, *, skip=None,
                 rung_queue_frames: int = RUNG_QUEUE_FRAMES, decode_queue_frames: int = DECODE_QUEUE_FRAMES,
                 lossless: bool = False, preset: str = X264_PRESET, presets: dict[str, str] | None = None,
                 stats: TranscodeStats | None = None) -> None:
        self.lossless = lossless
        self.label = label  # the broadcast's loggable name
        self.source = source
        self.emit = emit
        self.skip = skip or (lambda track, group: None)
        self.rung_queue_frames = rung_queue_frames
        self.decode_queue_frames = decode_queue_frames
        self.stats = stats or TranscodeStats()
        self.workers: dict[str, _RungWorker] = {}
        if not source.width or not source.height:
            raise CoderError(f"{label} {source.name}: the catalog gives no picture size")
        for rung in rungs_for_source(ladder, min(source.width, source.height)):
            width, height = rung.size_for(source.width, source.height)
            encoder = RungEncoder(rung, width, height, source.framerate, source.timescale,
                                  (presets or {}).get(rung.name, preset))
            self.workers[rung.track(source.name)] = _RungWorker(self, encoder, rung.track(source.name))
        self.tracks = tuple(w.encoder.info(source) for w in self.workers.values())
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._queued = 0  # frames in the inbox (approximate across threads; only a bound)
        self._dropping = False  # the decoder fell behind: drop input until the next group
        self._newest_group: int | None = None  # the newest source group a frame came of
        self._late_group: int | None = None  # the last group whose late frames were logged
        # source groups dropped before the decoder (decoder thread side; the rungs say so)
        self.dropped_groups: deque[int] = deque(maxlen=GROUP_STARTS_KEPT)
        self._thread = threading.Thread(target=self._run, name=f"rtmpq-decode-{source.name}", daemon=True)
        self._thread.start()

    # -- event loop side ------------------------------------------------------------------------------
    def push(self, frame: Frame) -> None:
        self.stats.frames_in += 1
        if self._newest_group is not None and frame.group < self._newest_group:
            # the tail of a group that comes after the next group began (over MoQ each group has
            # its own stream, and a relay sends the newer first): the decoder is past it, and fed
            # now it would break the new group (dav1d refuses it and the group is lost; h264
            # drops pictures of it silently). The rung's group ends a picture or two early.
            self.stats.late_frames += 1
            if frame.group != self._late_group:  # once a group
                self._late_group = frame.group
                log.info("%s %s: frames of group %d came after group %d began; left out", self.label,
                         self.source.name, frame.group, self._newest_group)
            return
        self._newest_group = frame.group
        if frame.index == 0:
            self._dropping = False
        if self._dropping:
            return
        if self._queued >= self.decode_queue_frames and not self.lossless:
            self._dropping = True
            self.stats.input_skipped_groups += 1
            log.warning("%s %s: the decoder fell behind; dropping source group %d", self.label, self.source.name,
                        frame.group)
            self._inbox.put(("drop", frame.group))
            return
        self._queued += 1
        self._inbox.put(("frame", (frame, time.monotonic_ns())))

    def set_active(self, track: str, active: bool) -> None:
        if track in self.workers:
            self._inbox.put(("active", (track, active)))

    def reconfigure(self, source: TrackInfo) -> None:
        """A new configuration record for the source track: a fresh decoder at the next group."""
        self._inbox.put(("config", source))

    def finish(self, done=None) -> None:
        """The source group in progress is complete (the publisher left: no more of it comes): the
        frames the decoder still holds (reordering) go out, so every rung's group ends whole; a
        later group (a returning publisher) starts a fresh decoder. ``done()`` is called (from a
        rung thread) once every rung has emitted what it was given up to then."""
        self._inbox.put(("flush", done))

    def close(self) -> None:
        self._inbox.put(("stop", None))

    def join(self, timeout: float = 2.0) -> None:
        self._thread.join(timeout)
        for w in self.workers.values():
            w.thread.join(timeout)

    # -- decoder thread -------------------------------------------------------------------------------
    def _run(self) -> None:
        source = self.source
        decoder: SourceDecoder | None = None
        broken = False  # wait for the next group start (after an error or a new configuration)
        failed = False  # the decoder cannot be opened for this configuration: wait for another
        group_units: list[tuple[Frame, int]] = []  # the current group's access units (and arrival), from its IDR
        group_bytes = 0
        group_whole = False  # group_units starts at the group's first unit and holds all of it
        group_over = False  # no more of the group in progress comes (flushed: its publisher left)
        starts: deque[tuple[int, int]] = deque(maxlen=GROUP_STARTS_KEPT)  # (first pts, group)
        received: dict[int, tuple[int, int]] = {}  # pts -> (ingest arrival, arrival here), for lag figures

        def group_of(pts: int) -> int | None:
            keys = [p for p, _ in starts]
            i = bisect.bisect_right(keys, pts) - 1
            return starts[i][1] if i >= 0 else None

        def dispatch(frames, workers, catch_up: bool = False) -> None:
            for f in frames:
                self.stats.frames_decoded += 1
                g = group_of(f.pts)
                ns, pushed = received.pop(f.pts, (0, 0))
                if g is None:
                    continue
                for w in workers:
                    if w.stop_after is not None and g > w.stop_after:
                        stop(w)  # its last group is whole: the decoder gave a frame of a later one
                    if w.active:
                        w.offer(g, f, ns, pushed, catch_up)

        def stop(w: _RungWorker) -> None:
            nonlocal decoder
            w.active, w.stop_after = False, None
            w.offered_group, w.last_pts, w.said_dropped, w.start_group = None, None, None, None
            if not any(x.active for x in self.workers.values()):
                decoder = None  # nobody watches: stop decoding

        def open_decoder() -> SourceDecoder | None:
            nonlocal broken, failed
            try:
                return SourceDecoder(source)
            except CoderError as exc:
                broken = failed = True
                log.warning("%s %s: %s; no rungs until the source changes", self.label, source.name, exc)
                return None

        def decode(dec: SourceDecoder, unit: Frame, pushed_ns: int = 0) -> list:
            received[unit.pts] = (unit.received_ns, pushed_ns)
            if len(received) > 4 * GROUP_STARTS_KEPT * 60:
                received.pop(next(iter(received)))
            return dec.decode(unit.payload, unit.pts, unit.dts, unit.keyframe)

        while True:
            kind, value = self._inbox.get()
            if kind == "stop":
                break
            if kind == "flush":
                if decoder is not None:
                    dispatch(decoder.flush(), [w for w in self.workers.values() if w.active])
                decoder, group_over = None, True
                for w in self.workers.values():
                    if w.active:
                        w.say_dropped(None)
                    if w.stop_after is not None:  # its group is over
                        stop(w)
                if value is not None:
                    self._after_rungs(value)
                continue
            if kind == "drop":  # the rest of this group never comes: no rung can start from it
                self.dropped_groups.append(value)
                group_whole = False
                continue
            if kind == "config":
                if decoder is not None:  # the old stream's last pictures (held for reordering) go out
                    dispatch(decoder.flush(), [w for w in self.workers.values() if w.active])
                source, decoder, broken, failed = value, None, True, False
                continue
            if kind == "active":
                track, on = value
                w = self.workers[track]
                if on and w.stop_after is not None:
                    w.stop_after = None  # watched again before it stopped: it goes on
                    continue
                if on == w.active:
                    continue
                if not on:
                    if decoder is not None and starts and w.offered_group is not None:
                        w.stop_after = starts[-1][1]  # after the group in progress
                    else:
                        stop(w)
                    continue
                w.active = True
                # a rung starts at the current group, from its IDR
                if broken or not group_whole:
                    continue  # it starts at the next group
                others = decoder is not None
                dec = SourceDecoder(source) if others else open_decoder()
                if dec is None:
                    continue
                try:
                    frames = []
                    for unit, pushed_ns in group_units:
                        frames += decode(dec, unit, pushed_ns)
                    # a catch-up decoder is not flushed: what it gives is the display-order prefix
                    # the main decoder gave; the main decoder's next frames follow on from it.
                    # A group that is over (asked for while its publisher is away) is flushed
                    # whole, and the next group starts a fresh decoder.
                    if group_over:
                        frames += dec.flush()
                        others = True
                except av.FFmpegError as exc:
                    self.stats.decode_errors += 1
                    log.warning("%s %s: undecodable group (%s); the rung starts at the next one", self.label,
                                source.name, exc)
                    continue
                if not others:
                    decoder = dec
                dispatch(frames, [w], catch_up=True)
                continue
            unit, pushed_ns = value
            self._queued -= 1
            group_over = False
            if unit.index == 0:
                group_units, group_bytes, group_whole = [], 0, True
                starts.append((unit.pts, unit.group))
                broken = failed
            if group_whole:
                if group_bytes + len(unit.payload) <= MAX_GROUP_BYTES:
                    group_units.append((unit, pushed_ns))
                    group_bytes += len(unit.payload)
                else:
                    group_whole = False
            active = [w for w in self.workers.values() if w.active]
            if not active or broken:
                continue
            if decoder is None:
                if unit.index != 0:
                    continue
                decoder = open_decoder()
                if decoder is None:
                    continue
            try:
                dispatch(decode(decoder, unit, pushed_ns), active)
            except av.FFmpegError as exc:
                self.stats.decode_errors += 1
                decoder, broken = None, True
                log.warning("%s %s: corrupt input in group %d (%s); going on at the next group", self.label,
                            source.name, unit.group, exc)
        for w in self.workers.values():
            w.stop()

    def _after_rungs(self, done) -> None:
        """``done()`` once every rung's thread has taken what is queued for it now (decoder thread)."""
        left = [len(self.workers)]
        lock = threading.Lock()

        def passed() -> None:
            with lock:
                left[0] -= 1
                last = left[0] == 0
            if last:
                done()
        if not self.workers:
            done()
        for w in self.workers.values():
            w.queue.put((_FLUSHED, passed))

    def frames_encoded(self, track: str) -> int:
        return self.stats.rungs[track].frames_encoded
