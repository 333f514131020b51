"""The FLV recorder writes on a thread of its own: the event loop never waits for the disk."""

import asyncio
import logging
import threading
import time

import pytest

from rtmpq.codec import amf0_decode, amf0_encode
from rtmpq.media import recording
from rtmpq.media.flv import read_flv_tags
from rtmpq.media.recording import FlvRecorder

TAGS = [(9 if i % 3 else 8, i * 20, bytes([i % 256]) * (1000 + i)) for i in range(300)]


class _StuckDisk:
    """open() for the recorder whose file blocks every write until ``release`` is set."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.writes_waiting = threading.Event()

    def open(self, path, mode="rb", buffering=-1):
        real = open(path, mode, buffering=buffering)
        disk = self

        class File:
            closed = False

            def write(self, data):
                disk.writes_waiting.set()
                disk.release.wait()
                return real.write(data)

            def flush(self):
                real.flush()

            def fileno(self):  # batches go out by os.writev on it, after the header's write()
                return real.fileno()

            def close(self):
                self.closed = True
                real.close()

        return File()


def _recording(root):
    [path] = list(root.rglob("*.flv"))
    return path


def test_tags_are_written_in_order_and_close_finalizes_the_file(tmp_path):
    rec = FlvRecorder(tmp_path, "live/cam")
    for type_id, ts, body in TAGS:
        rec.write(type_id, ts, memoryview(body))
    rec.close()
    assert list(read_flv_tags(_recording(tmp_path))) == TAGS
    assert rec.tags == len(TAGS)


def test_writes_do_not_wait_for_a_slow_disk(tmp_path, monkeypatch):
    disk = _StuckDisk()
    monkeypatch.setattr(recording, "open", disk.open, raising=False)
    timer = threading.Timer(5.0, disk.release.set)  # the disk comes back after 5 s
    timer.start()
    try:
        began = time.monotonic()
        rec = FlvRecorder(tmp_path, "live/cam")
        for type_id, ts, body in TAGS:
            rec.write(type_id, ts, body)
        assert time.monotonic() - began < 1.0, "the caller waited for the disk"
        assert disk.writes_waiting.wait(5)
    finally:
        disk.release.set()
        timer.cancel()
    rec.close()
    assert list(read_flv_tags(_recording(tmp_path))) == TAGS


def test_a_disk_that_cannot_keep_up_stops_the_recording_not_the_stream(tmp_path, monkeypatch, caplog):
    disk = _StuckDisk()
    monkeypatch.setattr(recording, "open", disk.open, raising=False)
    rec = FlvRecorder(tmp_path, "live/cam", max_queued_bytes=100_000)
    began = time.monotonic()
    for type_id, ts, body in TAGS:  # 450 KB: past the bound while the disk is stuck
        rec.write(type_id, ts, body)
    assert time.monotonic() - began < 1.0
    assert rec.stopped
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "stopped" in errors[0].getMessage() and "cam" not in errors[0].getMessage()
    disk.release.set()
    rec.close()
    written = list(read_flv_tags(_recording(tmp_path)))
    assert written == TAGS[: len(written)]  # a valid FLV file, a prefix of the stream
    assert sum(len(b) for _, _, b in written) <= 100_000


async def test_aclose_finalizes_without_blocking_the_loop(tmp_path, monkeypatch):
    disk = _StuckDisk()
    monkeypatch.setattr(recording, "open", disk.open, raising=False)
    rec = FlvRecorder(tmp_path, "live/cam")
    for type_id, ts, body in TAGS[:10]:
        rec.write(type_id, ts, body)
    closing = asyncio.ensure_future(rec.aclose())
    ticks = 0
    while ticks < 20:  # the loop keeps running while the disk is stuck
        await asyncio.sleep(0.01)
        ticks += 1
    assert not closing.done()
    disk.release.set()
    await asyncio.wait_for(closing, 10)
    assert list(read_flv_tags(_recording(tmp_path))) == TAGS[:10]


_STUCK_AT_EXIT = """
import asyncio, sys
from rtmpq.codec import amf0_decode, amf0_encode
from rtmpq.media import recording
from tests.test_recording import TAGS, _StuckDisk

recording.open = _StuckDisk().open  # never released

async def main():
    rec = recording.FlvRecorder(sys.argv[1], "live/cam")
    for tag in TAGS[:10]:
        rec.write(*tag)
    try:
        await asyncio.wait_for(rec.aclose(), 0.5)  # what a graceful stop does, within stop_timeout
    except TimeoutError:
        print("gave up on the recording", flush=True)

asyncio.run(main())
"""


def test_a_stuck_disk_does_not_hold_up_the_end_of_the_process(tmp_path):
    """A graceful stop gives up on a recording stuck on its disk after [node] stop_timeout; the
    process must then exit. aclose() waited in a thread of the default executor, and asyncio.run()
    waits for those before it returns: the process hung until the disk came back."""
    import subprocess
    import sys
    from pathlib import Path

    began = time.monotonic()
    try:
        out = subprocess.run([sys.executable, "-c", _STUCK_AT_EXIT, str(tmp_path)], capture_output=True, text=True,
                             timeout=15, cwd=Path(__file__).parents[1])
    except subprocess.TimeoutExpired:
        pytest.fail("the process did not exit while its recording's disk was stuck")
    assert out.returncode == 0 and "gave up on the recording" in out.stdout, out.stderr
    assert time.monotonic() - began < 10


def test_a_disk_error_stops_the_recording_with_an_error_log(tmp_path, monkeypatch, caplog):
    def failing_open(path, mode="rb", buffering=-1):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(recording, "open", failing_open, raising=False)
    rec = FlvRecorder(tmp_path, "live/cam")
    for type_id, ts, body in TAGS:
        rec.write(type_id, ts, body)
    rec.close()
    assert rec.stopped
    [error] = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert "No space" in error and "cam" not in error  # the path holds the stream key


def test_a_batch_written_in_parts_by_writev_lands_whole_and_in_order(tmp_path, monkeypatch):
    """writev may write less than it was given (a signal, a full pipe): the rest goes on,
    starting inside the piece it stopped in."""
    real = recording.os.writev
    calls = []

    def short_writev(fd, pieces):
        calls.append(len(pieces))
        first = bytes(pieces[0])[:7]  # at most 7 bytes per call, inside the first piece
        return real(fd, [first])

    monkeypatch.setattr(recording.os, "writev", short_writev)
    pieces = [b"abcdefghij", memoryview(b"0123456789abc")[2:], b"", b"xyz" * 5]
    with open(tmp_path / "out", "wb", buffering=0) as f:
        recording.write_all(f.fileno(), list(pieces))
    assert (tmp_path / "out").read_bytes() == b"".join(bytes(p) for p in pieces)
    assert len(calls) > len(pieces)


@pytest.fixture(autouse=True)
def _no_leftover_threads():
    yield
    deadline = time.monotonic() + 5
    while any(t.name.startswith("rtmpq-recorder") for t in threading.enumerate()):
        assert time.monotonic() < deadline, "a recorder thread outlived close()"
        time.sleep(0.01)


async def test_a_record_dir_that_cannot_be_written_stops_the_node_at_start(tmp_path):
    """It used to start, then log "recording of live/x stopped: NotADirectoryError" at each publish
    (naming neither the setting nor the directory) while the streams went on unrecorded."""
    from rtmpq.config import ConfigError, IngestConfig
    from rtmpq.media.broadcast import BroadcastRegistry
    from rtmpq.nodes.ingest import IngestNode

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    node = IngestNode(BroadcastRegistry(), IngestConfig(host="127.0.0.1", port=0, record_dir=blocker / "rec"),
                      state_dir=tmp_path / "state")
    with pytest.raises(ConfigError, match=f"rtmp.record_dir \\(--record\\): cannot record in {blocker / 'rec'}: "
                                          "Not a directory"):
        await node.start()
    good = IngestNode(BroadcastRegistry(), IngestConfig(host="127.0.0.1", port=0, record_dir=tmp_path / "new" / "rec"),
                      state_dir=tmp_path / "state")
    await good.start()  # made at start, nothing left in it
    try:
        assert (tmp_path / "new" / "rec").is_dir() and not list((tmp_path / "new" / "rec").iterdir())
    finally:
        await good.close()


@pytest.mark.parametrize("public", [True, False])
def test_the_start_log_names_the_file_where_names_are_public(tmp_path, caplog, public):
    """With [publish.keys] or [auth] the file name holds the public name: the log gives the file
    the operator looks for. On an open node it holds the key: the log leaves it out."""
    from rtmpq import redact

    caplog.set_level(logging.INFO)
    redact.names_are_public(public)
    try:
        rec = FlvRecorder(tmp_path, "live/cam", started=0)
        rec.write(*TAGS[1])
        rec.close()
    finally:
        redact.names_are_public(False)
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("recording ")]
    if public:
        assert line == f"recording live/cam to {tmp_path / 'live' / 'cam-19700101T000000Z.flv'}"
    else:
        assert "cam" not in line.replace(str(tmp_path), "") and line.endswith("….flv")


def test_close_writes_the_length_and_size_held_into_every_onmetadata(tmp_path):
    """An encoder's onMetaData says 0 or the length it means to send: the closed file says what
    it holds (the last frame's interval included), in each onMetaData (GStreamer repeats it)."""
    meta = amf0_encode("@setDataFrame", "onMetaData", {"duration": 0.0, "width": 320.0, "filesize": 0.0})
    rec = FlvRecorder(tmp_path, "live/cam", started=0)
    rec.write(18, 0, meta)
    for type_id, ts, body in TAGS[:150]:  # 0 .. 2980 ms, 20 ms apart
        rec.write(type_id, ts + 2**32 - 1000, body)  # across a 32-bit wrap
    rec.write(18, 1000, meta)
    rec.close()
    path = _recording(tmp_path)
    metadata = [amf0_decode(body) for kind, _, body in read_flv_tags(str(path)) if kind == 18]
    assert [m[0] for m in metadata] == ["onMetaData", "onMetaData"]
    assert all(m[1]["duration"] == 3.0 and m[1]["filesize"] == path.stat().st_size for m in metadata), metadata
    assert [t[2] for t in read_flv_tags(str(path)) if t[0] != 18] == [t[2] for t in TAGS[:150]]  # media as it came


def test_its_log_lines_name_the_publisher(tmp_path, caplog):
    """The ingest's lines name the publisher's address; the recording's named the broadcast
    alone, so "recording of live/cam stopped: disk full" did not say whose publish it was."""
    caplog.set_level(logging.INFO)
    rec = FlvRecorder(tmp_path / "a", "live/cam", started=0, peer="192.0.2.7:50000")
    rec.write(*TAGS[1])
    rec.close()
    empty = FlvRecorder(tmp_path / "b", "live/cam", started=0, peer="192.0.2.7:50001")
    empty.close()
    lines = [r.getMessage() for r in caplog.records if "recording" in r.getMessage()]
    assert len(lines) == 3 and all(line.startswith("192.0.2.7:5000") for line in lines), lines


def test_a_stream_name_too_long_for_a_file_name_is_recorded_under_a_shortened_one(tmp_path):
    """A stream key may be 2048 characters, a file name 255 bytes: a 300-character name stopped
    its recording at once ("OSError: File name too long"). Now its file name is cut, with a
    hash of the whole name so two long names that begin alike stay apart."""
    paths = []
    for name in ("k" * 300, "k" * 299 + "j"):
        rec = FlvRecorder(tmp_path, f"live/{name}", started=0)
        rec.write(*TAGS[1])
        rec.close()
        assert not rec.stopped
        paths.append(rec.path)
    assert len(set(paths)) == 2 and all(p.exists() and len(p.name) < 255 and p.parent == tmp_path / "live"
                                        for p in paths), paths
    assert list(read_flv_tags(paths[0])) == [TAGS[1]]


def test_the_length_of_a_publish_whose_time_starts_late_counts_its_frames_not_its_headers(tmp_path):
    """ffmpeg -output_ts_offset sends its sequence headers at time 0 and its frames from the
    offset: the length ran from 0, so a 3 s publish starting at 2147470 s was said to be 24.8
    days long (74 days with the wrap at 2**31 that followed)."""
    meta = amf0_encode("@setDataFrame", "onMetaData", {"duration": 0.0})
    start = 2**31 - 1000  # the frames cross ffmpeg's 31-bit wrap 1 s in
    rec = FlvRecorder(tmp_path, "live/cam", started=0)
    rec.write(18, 0, meta)
    rec.write(9, 0, b"\x17\x00\x00\x00\x00" + b"\x01" * 20)  # AVC sequence header
    rec.write(8, 0, b"\xaf\x00\x12\x08")  # AAC sequence header
    for i in range(90):  # 3 s at 30 fps
        rec.write(9, (start + i * 33) % 2**31, b"\x00" * 8, b"\x27\x01\x00\x00\x00")
    rec.write(9, (start + 89 * 33) % 2**31, b"\x17\x02\x00\x00\x00")  # AVC end of sequence
    rec.close()
    [meta_out] = [amf0_decode(body) for kind, _, body in read_flv_tags(str(_recording(tmp_path))) if kind == 18]
    assert meta_out[1]["duration"] == 2.97, meta_out  # 89 intervals and the last frame's


_FILLS_THE_DISK = """
import sys, time
from rtmpq.codec import amf0_encode
from rtmpq.media import recording
from tests.test_recording import TAGS

recording.RECORDER_WAKE_INTERVAL = 0  # the writer is woken per tag, and each group below is
rec = recording.FlvRecorder(sys.argv[1], "live/cam", started=0)
rec.write(18, 0, amf0_encode("@setDataFrame", "onMetaData", {"duration": 0.0, "filesize": 0.0}))
for i in range(0, len(TAGS), 30):
    for tag in TAGS[i : i + 30]:  # on the disk (or refused) before the next: not all in one batch
        rec.write(*tag)
    while rec._queued_bytes and not rec.stopped:
        time.sleep(0.005)
rec.close()
print("stopped" if rec.stopped else "whole", flush=True)
"""


def test_a_recording_the_disk_cannot_take_ends_as_a_whole_file_that_says_its_length(tmp_path):
    """A full disk (here a file size limit, `ulimit -f`: EFBIG as ENOSPC would be) stopped the
    recording with the file ending inside a tag and its onMetaData saying duration 0 and filesize
    0: now it ends with the last tags the disk took whole, and says how long they are."""
    import resource
    import subprocess
    import sys
    from pathlib import Path

    limit = 100_000
    out = subprocess.run([sys.executable, "-c", _FILLS_THE_DISK, str(tmp_path)], capture_output=True, text=True,
                         timeout=30, cwd=Path(__file__).parents[1],
                         preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
    assert out.returncode == 0 and out.stdout == "stopped\n", out.stdout + out.stderr
    assert "recording of live/#" in out.stderr and "stopped" in out.stderr, out.stderr
    path = _recording(tmp_path)
    tags = list(read_flv_tags(path))  # (raised on a tag cut short)
    media = [t for t in tags if t[0] != 18]
    assert media and media == [(k, ts, body) for k, ts, body in TAGS[: len(media)]] and path.stat().st_size <= limit
    meta = amf0_decode(tags[0][2])[1]
    assert meta["filesize"] == path.stat().st_size and meta["duration"] == (media[-1][1] + 20) / 1000, meta


def test_a_recording_the_disk_takes_nothing_of_leaves_no_file(tmp_path):
    """A full disk (a file size limit of 0 here) that refuses even the FLV header left a 0-byte
    .flv behind at every publish; now the file is removed, the recording still said stopped (the
    error line, and the on_stop the ingest counts as record_stopped)."""
    import resource
    import subprocess
    import sys
    from pathlib import Path

    out = subprocess.run([sys.executable, "-c", _FILLS_THE_DISK, str(tmp_path)], capture_output=True, text=True,
                         timeout=30, cwd=Path(__file__).parents[1],
                         preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0)))
    assert out.returncode == 0 and out.stdout == "stopped\n", out.stdout + out.stderr
    assert "stopped: OSError: File too large" in out.stderr, out.stderr
    assert list(tmp_path.rglob("*.flv")) == [], list(tmp_path.rglob("*"))
