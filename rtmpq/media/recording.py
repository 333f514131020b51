"""Record a publish session as an FLV file: a remux of exactly the tags received.

One thing is rewritten when the recording closes, as FFmpeg's own FLV writer does at its end: the
``duration`` (and ``filesize``) numbers of the publisher's onMetaData, which an encoder fills in
before it knows (ffmpeg writes the length it means to send: ``-t``, or the file it restreams). They say what the file holds, so a publish cut off early is not a file that claims
its planned length.

The file is ``<dir>/<app>/<key>-<UTC start>.flv``; a publish that sent no audio or video, or
whose disk took not a byte of it (full), leaves none (the file is removed when the recording
closes). The key has passed the session's allowlist (letters, digits, ``_.~-``), so it cannot
climb out of ``dir``; we check that once more anyway.

The disk is only touched by a thread of the recorder's own (opening, writing, closing), so a slow
or stuck disk never holds up the event loop. Tags wait for it in a queue bounded in bytes; a
recording that falls further behind, or whose disk fails, is stopped with an error log and the
stream goes on. Bodies are queued as they come, without a copy: they are views into the chunk
reader's receive blocks, which are never reused (or copies it made), so they stay valid.
"""

import asyncio
import hashlib
import logging
import os
import struct
import tempfile
import threading
import time
from collections import deque
from pathlib import Path

from ..codec import parse_audio_tracks, parse_video_tracks
from ..codec.flv_types import PACKET_SEQUENCE_END, PACKET_SEQUENCE_START
from ..errors import RemoteProtocolError
from ..redact import safe_name
from .demux import TimestampUnwrapper
from .flv import FLV_HEADER_SIZE, TAG_HEADER_SIZE, FlvWriter, tag_pieces

log = logging.getLogger("rtmpq.media")

# "@setDataFrame" as an AMF0 string: publishers wrap onMetaData in it; FLV files store it without.
_SET_DATA_FRAME = b"\x02\x00\x0d@setDataFrame"
# Bytes of tags a recording may have waiting for the disk; past it the recording is stopped
# (error log), never the stream. Default 32 MiB (about 20 s of a 12 Mbit/s stream); [rtmp]
# record_max_queued_bytes.
RECORDER_MAX_QUEUED_BYTES = 32 * 1024 * 1024
# Seconds close() waits for the writer thread to flush and close the file; a disk stuck longer is
# left to the thread, which closes the file when the disk returns. Default 10 s.
RECORDER_CLOSE_TIMEOUT = 10.0
# How often aclose() looks whether the writer thread is done (s).
RECORDER_CLOSE_POLL = 0.01
# The writer thread is woken once this many bytes wait, or once this many seconds passed since it
# was last woken, not for every tag (a thread wakeup per tag cost more CPU than the write; issue
# 12). close() writes what waits at once.
RECORDER_WAKE_BYTES = 256 * 1024
RECORDER_WAKE_INTERVAL = 0.2
# A stream name may be 2048 characters (rtmp/session.py MAX_STREAM_KEY_LENGTH), a file name 255
# bytes (NAME_MAX): a longer name is cut to its first characters and 8 hex digits of its SHA-256
# in the file name, which stays under 255 bytes with its "-<UTC start>[-N].flv".
RECORDING_NAME_MAX_CHARS = 200
# Per-tag overhead in the file and in the queue's byte count (tag header + PreviousTagSize).
_TAG_OVERHEAD = 15
# onMetaData (AMF0 string) and the keys of its numbers rewritten at close (length-prefixed, then the
# AMF0 number marker: the 8-byte double follows)
_ON_METADATA = b"\x02\x00\x0aonMetaData"
_DURATION_KEY = b"\x00\x08duration\x00"
_FILESIZE_KEY = b"\x00\x08filesize\x00"
# pieces one writev takes (Linux: 1024; sysconf says -1 where it is not known)
_IOV_MAX = max(os.sysconf("SC_IOV_MAX"), 16) if hasattr(os, "sysconf") else 16


def check_record_dir(directory: str | Path) -> None:
    """At start: make ``directory`` ([rtmp] record_dir) and a file in it, so that a node that
    cannot record says so and does not start (it used to start and log an error at each publish,
    which went on unrecorded). A ConfigError that names the setting."""
    from ..config import ConfigError  # (here: the config module imports this one's bound)

    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        # a file there: mkdir says "File exists"
        reason = "it is not a directory" if directory.exists() and not directory.is_dir() else exc.strerror or exc
        raise ConfigError(f"rtmp.record_dir (--record): cannot record in {directory}: {reason}") from None


def recording_path(directory: Path, broadcast: str, started: float) -> Path:
    app, _, key = broadcast.rpartition("/")
    if len(key) > RECORDING_NAME_MAX_CHARS:  # (names are ASCII: a character is a byte)
        key = f"{key[:RECORDING_NAME_MAX_CHARS - 9]}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started))
    folder = (directory / app).resolve()
    if not folder.is_relative_to(directory.resolve()):
        raise ValueError("recording path escapes the recording directory")
    path = folder / f"{key}-{stamp}.flv"
    n = 1
    while path.exists():
        n += 1
        path = folder / f"{key}-{stamp}-{n}.flv"
    return path


def _configuration_only(type_id: int, message) -> bool:
    """Whether a media message holds only sequence headers or ends: those before the first frame
    are sent at time 0 whatever the frames' time (ffmpeg -output_ts_offset): the length starts at
    the first frame."""
    try:
        tracks = parse_video_tracks(message) if type_id == 9 else parse_audio_tracks(message)
    except RemoteProtocolError:
        return False
    return all(t.packet_type in (PACKET_SEQUENCE_START, PACKET_SEQUENCE_END) for t in tracks)


class _Length:
    """What the writer thread learns of the file as its tags go out: where the onMetaData numbers
    rewritten at close are, and how long the media is (the first audio or video timestamp to the
    last, plus that track's last frame interval, as FFmpeg counts a packet's duration)."""

    def __init__(self) -> None:
        self.offset = FLV_HEADER_SIZE + 4  # the file header and the first PreviousTagSize
        self.durations: list[int] = []  # file offsets of the doubles to rewrite
        self.filesizes: list[int] = []
        self._clock = TimestampUnwrapper()
        self._first: int | None = None
        self._last: dict[int, tuple[int, int]] = {}  # tag type -> (timestamp, interval before it)

    def tag(self, type_id: int, timestamp: int, header: bytes, body) -> None:
        size = len(header) + len(body)
        if type_id == 18 and bytes(body[: len(_ON_METADATA)]) == _ON_METADATA:
            data = bytes(body)
            for key, offsets in ((_DURATION_KEY, self.durations), (_FILESIZE_KEY, self.filesizes)):
                found = data.find(key)
                if found >= 0 and found + len(key) + 8 <= len(data):
                    offsets.append(self.offset + TAG_HEADER_SIZE + len(header) + found + len(key))
        elif type_id in (8, 9) and (self._first is not None or header or not _configuration_only(type_id, body)):
            ts = self._clock.unwrap(timestamp)
            if self._first is None:
                self._first = ts
            last = self._last.get(type_id)
            if last is None:
                self._last[type_id] = (ts, 0)
            else:  # a step back keeps the interval it had
                self._last[type_id] = (ts, ts - last[0] if ts > last[0] else last[1])
        self.offset += TAG_HEADER_SIZE + size + 4

    def seconds(self) -> float:
        if self._first is None:
            return 0.0
        return (max(ts + interval for ts, interval in self._last.values()) - self._first) / 1000

    def rewrite(self, fd: int) -> None:
        """Write the media's length and the file's size into every onMetaData that has them."""
        for offsets, value in ((self.durations, self.seconds()), (self.filesizes, float(self.offset))):
            for at in offsets:
                os.pwrite(fd, struct.pack(">d", value), at)


class FlvRecorder:
    """``write`` queues a tag and returns at once; ``close`` (or ``await aclose()``) finalizes."""

    def __init__(self, directory: str | Path, broadcast: str, *, started: float | None = None,
                 max_queued_bytes: int = RECORDER_MAX_QUEUED_BYTES, peer: str = "", on_stop=None) -> None:
        self.path: Path | None = None  # set by the writer thread once the file is open
        self.tags = 0
        self.stopped = False  # the disk failed or fell behind: nothing more is recorded
        self._on_stop = on_stop  # () -> None when it stops so, called on the thread that stopped it
        self.max_queued_bytes = max_queued_bytes
        self._directory = Path(directory)
        self._started = time.time() if started is None else started
        self._name = safe_name(broadcast)
        self._who = f"{peer}: " if peer else ""  # the publisher, first in each log line as the ingest's
        self._broadcast = broadcast
        self._queue: deque = deque()
        self._queued_bytes = 0
        self._closing = False
        self._woken = 0.0  # time.monotonic() the writer thread was last woken
        self._wake = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=f"rtmpq-recorder {self._name}", daemon=True)
        self._thread.start()

    def write(self, type_id: int, timestamp: int, body, header: bytes = b"") -> None:
        """Queue the tag ``header + body`` (``header``: the FLV tag header of a media message whose
        payload is ``body``, as ChunkReader.read_messages splits them)."""
        if self.stopped or self._closing:
            return
        if type_id == 18 and bytes(body[: len(_SET_DATA_FRAME)]) == _SET_DATA_FRAME:
            body = body[len(_SET_DATA_FRAME) :]
        size = len(header) + len(body) + _TAG_OVERHEAD
        with self._wake:
            if self._queued_bytes + size > self.max_queued_bytes:
                self._stop_locked(f"the disk is {self._queued_bytes} bytes behind "
                                  f"([rtmp] record_max_queued_bytes {self.max_queued_bytes})")
                return
            self._queue.append((type_id, timestamp, header, body))
            self._queued_bytes += size
            now = time.monotonic()
            if self._queued_bytes >= RECORDER_WAKE_BYTES or now - self._woken >= RECORDER_WAKE_INTERVAL:
                self._woken = now
                self._wake.notify()
        self.tags += 1

    def close(self, timeout: float = RECORDER_CLOSE_TIMEOUT) -> None:
        """Flush what is queued and close the file; waits for the writer thread up to ``timeout``."""
        self._begin_close()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("%srecording of %s: the disk did not finish within %g s; the file is closed when it does",
                      self._who, self._name, timeout)

    async def aclose(self) -> None:
        """close() without blocking the event loop. Waits by polling, not in an executor thread:
        one blocked in join() on a stuck disk held the process's exit (asyncio.run waits for the
        default executor) past [node] stop_timeout, until the disk returned."""
        self._begin_close()
        while self._thread.is_alive():
            await asyncio.sleep(RECORDER_CLOSE_POLL)

    def _begin_close(self) -> None:
        with self._wake:
            self._closing = True
            self._wake.notify()

    def _stop_locked(self, why: str) -> None:
        """Stop recording (the stream goes on): drop what waits, let the thread close the file."""
        if not self.stopped:
            self.stopped = True
            self._queue.clear()
            self._queued_bytes = 0
            self._wake.notify()
            log.error("%srecording of %s in %s stopped: %s", self._who, self._name, self._directory, why)
            if self._on_stop is not None:
                self._on_stop()

    # -- the writer thread ----------------------------------------------------------------------
    def _run(self) -> None:
        file = None
        media = 0  # audio and video tags written
        length = _Length()
        try:
            self.path = recording_path(self._directory, self._broadcast, self._started)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # unbuffered: each batch goes out in writev calls straight from the queued bodies, so
            # a recording holds no write buffer (256 KiB each cost ~0.2 MB per publisher) and the
            # bytes are not copied once more on their way to the kernel
            file = open(self.path, "wb", buffering=0)
            FlvWriter(file, has_audio=True, has_video=True)  # writes the FLV header; tags go out below
            # the file is named after the broadcast: logged whole where names are public (mapped
            # keys, tokens), without its name where the key is the name (an open node)
            shown = self.path if self._name == self._broadcast else self.path.parent / f"…{self.path.suffix}"
            log.info("%srecording %s to %s", self._who, self._name, shown)
            while True:
                with self._wake:
                    while not self._queue and not self._closing and not self.stopped:
                        self._wake.wait()
                    if self.stopped or (self._closing and not self._queue):
                        break
                    batch = list(self._queue)
                    self._queue.clear()
                pieces = []
                done = 0
                for type_id, timestamp, header, body in batch:
                    pieces += tag_pieces(type_id, timestamp, body, header)
                    done += len(header) + len(body) + _TAG_OVERHEAD
                write_all(file.fileno(), pieces)
                for type_id, timestamp, header, body in batch:  # (counted once on disk: a batch the
                    length.tag(type_id, timestamp, header, body)  # disk took in part is cut off below)
                    media += type_id in (8, 9)
                with self._wake:
                    if not self.stopped:
                        self._queued_bytes -= done
        except Exception as exc:  # a full or failing disk stops the recording, not the stream
            with self._wake:
                self._stop_locked(_describe(exc))
        finally:
            empty = False  # the disk took not one byte (it was full when the recording began)
            if file is not None:
                try:
                    empty = os.fstat(file.fileno()).st_size == 0
                    if media:
                        if self.stopped:  # (a full disk): the file ends with the last whole batch, a
                            # playable FLV whose onMetaData says how long it is (it ended mid-tag, duration 0)
                            os.ftruncate(file.fileno(), length.offset)
                        length.rewrite(file.fileno())
                    file.close()
                except Exception as exc:
                    with self._wake:
                        self._stop_locked(f"closing the file: {_describe(exc)}")
                if not media and (empty or not self.stopped):
                    # a publish that sent no audio or video (connect, publish, gone) would leave a
                    # file with nothing to play in it: the FLV header, perhaps metadata; a full disk
                    # left a 0-byte .flv per publish. A stopped recording keeps any other file:
                    # what the disk took before the error log
                    why = "the disk took none of it" if self.stopped else "no audio or video came"
                    try:
                        self.path.unlink()
                        log.info("%srecording of %s: %s, no file kept", self._who, self._name, why)
                    except OSError as exc:
                        log.warning("%srecording of %s: could not remove the empty file: %s", self._who, self._name,
                                    _describe(exc))


def write_all(fd: int, pieces: list) -> None:
    """Write every piece, in order, with as few writev calls as the system's IOV_MAX allows
    (writev may write less than asked: the rest is written on)."""
    i = 0
    while i < len(pieces):
        chunk = pieces[i : i + _IOV_MAX]
        n = os.writev(fd, chunk)
        for piece in chunk:
            if n < len(piece):
                break
            n -= len(piece)
            i += 1
        if n:  # a piece written in part: its rest goes first next time
            pieces[i] = memoryview(pieces[i])[n:]


def _describe(exc: Exception) -> str:
    """The error without the file name (it holds the stream key)."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{type(exc).__name__}: {exc.strerror}"
    return type(exc).__name__
