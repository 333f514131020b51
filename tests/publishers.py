"""Real RTMP publishers (ffmpeg, GStreamer) and ffprobe readers for end-to-end tests."""

import asyncio
import json
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from rtmpq.codec import amf0_encode

from rtmpq.media.broadcast import BroadcastEnded, BroadcastRegistry, CatalogUpdate
from rtmpq.media.frames import Frame

# A short, deterministic encode: x264 with a fixed B-frame pattern and a 2 s GoP, AAC audio.
VIDEO_ENCODE = ["-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency", "-bf", "2",
                "-x264-params", "b-adapt=0:scenecut=0:rc-lookahead=0:sync-lookahead=0", "-g", "60",
                "-keyint_min", "60", "-pix_fmt", "yuv420p", "-b:v", "400k"]
AUDIO_ENCODE = ["-c:a", "aac", "-b:a", "64k", "-ar", "44100", "-ac", "2"]
# Another audio format (ffmpeg's and OBS's defaults differ: an encoder switch changes it).
AUDIO_MONO_48K = ["-c:a", "aac", "-b:a", "64k", "-ar", "48000", "-ac", "1"]


def ffmpeg_publish_args(url: str, reference: str, seconds: float = 3.0, size: str = "320x240",
                        audio: list[str] = AUDIO_ENCODE, ts_offset: float = 0.0) -> list[str]:
    """One live encode, written both to ``url`` (RTMP) and straight to the FLV file ``reference``;
    its timestamps start at ``ts_offset`` seconds (a publisher that has been live that long)."""
    return [
        "ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-re",
        "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=30",
        "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100",
        "-t", str(seconds), *VIDEO_ENCODE, *audio,
        "-map", "0:v", "-map", "1:a", "-flags", "+global_header",
        *(["-output_ts_offset", str(ts_offset)] if ts_offset else []),
        "-f", "tee", f"[f=flv]{url}|[f=flv]{reference}",
    ]


def ffmpeg_clip_args(path: str, seconds: float = 4.0, size: str = "320x240", audio: list[str] = AUDIO_ENCODE) -> list[str]:
    """The same encode as ffmpeg_publish_args, as fast as it goes, into the FLV file ``path`` (a
    whole number of 2 s GoPs), for ffmpeg_replay_args."""
    return [
        "ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin",
        "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=30",
        "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100",
        "-t", str(seconds), *VIDEO_ENCODE, *audio,
        "-map", "0:v", "-map", "1:a", "-flags", "+global_header", "-f", "flv", "-y", path,
    ]


async def audio_switch_flv(folder: Path, after: float = 4.0) -> Path:
    """An FLV of one timeline (no gap) whose audio changes format 4 s in, its video the same
    throughout: 4 s of the test encode with 44.1 kHz stereo AAC, then ``after`` seconds of it with
    48 kHz mono (its own AAC and AVC sequence headers at 4 s, the AVC one the same bytes)."""
    from rtmpq.media.flv import FlvWriter, read_flv_tags

    clips = [(0, folder / "stereo.flv", 4.0, AUDIO_ENCODE), (4000, folder / "mono48k.flv", after, AUDIO_MONO_48K)]
    path = folder / "audio-switch.flv"
    with open(path, "wb") as f:
        writer = FlvWriter(f)
        for start, clip, seconds, audio in clips:
            rc, out = await run_process(ffmpeg_clip_args(str(clip), seconds=seconds, audio=audio))
            assert rc == 0, out
            for tag_type, ts, body in read_flv_tags(clip):
                if tag_type in (8, 9):
                    writer.write_tag(tag_type, start + ts, body)
    return path


def ffmpeg_replay_args(url: str, clip: str, seconds: float) -> list[str]:
    """A live publish of an encoded clip, looped for ``seconds`` in real time: a publisher that
    costs no encoding CPU while the test runs (for tests whose host is busy decoding and
    transcoding already)."""
    return [
        "ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-re", "-stream_loop", "-1",
        "-i", clip, "-t", str(seconds), "-c", "copy", "-f", "flv", url,
    ]


def ffmpeg_publish_only_args(url: str, seconds: float = 2.0) -> list[str]:
    """A plain publish (no tee): ffmpeg's exit status tells whether the server took it."""
    return [
        "ffmpeg", "-hide_banner", "-loglevel", "info", "-nostdin", "-re",
        "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30", "-t", str(seconds), *VIDEO_ENCODE,
        "-f", "flv", url,
    ]


@dataclass(frozen=True)
class Packet:
    track: str
    dts: int
    pts: int
    keyframe: bool
    size: int


def probe_packets(path: str) -> list[Packet]:
    """Every packet of an FLV/MP4 file as ffprobe sees it, timestamps in ms."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries",
         "packet=stream_index,pts,dts,flags,size:stream=index,codec_type", "-of", "json", path],
        check=True, capture_output=True, text=True,
    ).stdout
    doc = json.loads(out)
    kinds = {s["index"]: s["codec_type"] for s in doc["streams"]}
    return [
        Packet(kinds[p["stream_index"]], int(p["dts"]), int(p["pts"]), "K" in p["flags"], int(p["size"]))
        for p in doc["packets"]
    ]


def count_decoded_frames(path: str) -> dict[str, int]:
    """Frames per stream type that ffprobe decodes (-count_frames)."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-show_entries", "stream=codec_type,nb_read_frames",
         "-of", "json", path],
        check=True, capture_output=True, text=True,
    ).stdout
    return {s["codec_type"]: int(s["nb_read_frames"]) for s in json.loads(out)["streams"]}


def as_packets(frames: list[Frame]) -> list[Packet]:
    return [Packet(f.track, f.dts, f.pts, f.keyframe, f.size) for f in frames]


async def collect_broadcast(registry: BroadcastRegistry, name: str, timeout: float = 20.0):
    """Wait for ``name`` to go live, read it to the end; returns (catalogs, frames)."""
    broadcast = await registry.wait_for(name, timeout)
    catalogs, frames = [], []
    async with asyncio.timeout(timeout):
        async for event in broadcast.reader():
            if isinstance(event, CatalogUpdate):
                catalogs.append(event.catalog)
            elif isinstance(event, BroadcastEnded):
                break
            else:
                frames.append(event)
    return catalogs, frames


async def run_process(args: list[str], timeout: float = 30.0) -> tuple[int, str]:
    """Its exit status and its output (stdout and stderr as one)."""
    rc, out, _ = await _run(args, timeout, asyncio.subprocess.STDOUT)
    return rc, out


async def run_process_apart(args: list[str], timeout: float = 30.0) -> tuple[int, str, str]:
    """Its exit status, its stdout and its stderr."""
    return await _run(args, timeout, asyncio.subprocess.PIPE)


async def _run(args: list[str], timeout: float, stderr, started=None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE, stderr=stderr)
    if started is not None:
        started.set_result(proc)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except (TimeoutError, asyncio.CancelledError):  # a test that gave up on it: it ends with the test
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    return proc.returncode, out.decode(errors="replace"), (err or b"").decode(errors="replace")


class LivePublish:
    """A run_process publish (``ffmpeg_publish_args``, longer than the test needs) that the test
    ends once it has what it checks, as ffmpeg ends at its ``-t``: every packet it read goes to
    each output, the RTMP stream is deleted and a reference file gets its trailer, so what a
    subscriber got is still compared with the whole reference. A test that fails leaves it to
    run_process, which kills it when the test's event loop ends."""

    def __init__(self, args: list[str], timeout: float = 60.0) -> None:
        self._proc = asyncio.get_running_loop().create_future()
        self.task = asyncio.ensure_future(_run(args, timeout, asyncio.subprocess.STDOUT, self._proc))

    async def finish(self, timeout: float = 10.0) -> None:
        """SIGINT: ffmpeg stops reading its input and closes its outputs. It must have been
        publishing until then (exit status 255, ffmpeg's for a signal; 0 if its -t came first),
        not ended by an error, and said nothing (``-loglevel error``): the tee goes on with its
        reference file when the server drops or refuses the RTMP output, and says so."""
        proc = await self._proc
        signalled = proc.returncode is None
        if signalled:
            proc.send_signal(signal.SIGINT)
        rc, output, _ = await asyncio.wait_for(self.task, timeout)
        assert (rc == 0 or (signalled and rc == 255)) and not output.strip(), (rc, output)


async def end_live_publish(publish: asyncio.Task) -> None:
    """A run_process publish (longer than the test needs) that the test has seen enough of: if it
    has ended, it ended well (exit status 0); if not, it is still publishing (the server neither
    refused nor dropped it) and is ended now instead of waited for."""
    if publish.done():
        rc, output = publish.result()
        assert rc == 0, output
    await drop_publish(publish)


async def drop_publish(publish: asyncio.Task) -> None:
    """Ends a run_process publish if it still runs (run_process kills the process), e.g. that of
    a test that failed; waits for that, nothing else."""
    publish.cancel()
    await asyncio.gather(publish, return_exceptions=True)


# -- Enhanced RTMP (HEVC, AV1, Opus, multitrack) from PyAV's bundled FFmpeg ------------------------

PYAV_PUBLISHER = str(Path(__file__).parent / "pyav_publisher.py")


def pyav_publish_args(url: str, reference: str, video: str, audio: str, seconds: float = 3.0,
                      size: str = "320x240", multitrack: str = "", gop: int = 0) -> list[str]:
    """tests/pyav_publisher.py as a subprocess: E-RTMP to ``url`` and the same tags to ``reference``."""
    args = [sys.executable, PYAV_PUBLISHER, url, reference, "--video", video, "--audio", audio,
            "--seconds", str(seconds), "--size", size]
    return args + (["--multitrack", multitrack] if multitrack else []) + (["--gop", str(gop)] if gop else [])


def pyav_packets(path: str) -> dict[int, list[Packet]]:
    """Every packet of a file as PyAV's FFmpeg (8.x, which reads enhanced FLV) demuxes it, per
    stream index; timestamps in ms."""
    import av

    out: dict[int, list[Packet]] = {}
    with av.open(path) as container:
        for p in container.demux():
            if p.size:
                kind = p.stream.type
                ms = lambda t: int(t * p.time_base * 1000)  # noqa: E731
                out.setdefault(p.stream.index, []).append(Packet(kind, ms(p.dts), ms(p.pts), p.is_keyframe, p.size))
    return out


def pyav_decoded_frames(path: str) -> dict[str, int]:
    """Frames per stream type that PyAV's FFmpeg decodes; raises on a decoding error."""
    import av

    counts: dict[str, int] = {}
    with av.open(path) as container:
        for frame in container.decode(*container.streams):
            kind = "video" if isinstance(frame, av.VideoFrame) else "audio"
            counts[kind] = counts.get(kind, 0) + 1
    return counts


async def push_flv(port: int, key: str, flv_path: str, app: str = "live") -> None:
    """Publish the tags of an FLV file, as they are, over one RTMP connection, paced by their
    timestamps (as ffmpeg -re); for tags the Debian ffmpeg cannot read (enhanced, multitrack, or
    damaged on purpose). Returns when the server has closed the connection after the last."""
    from rtmpq.codec import NEED_DATA, ChunkReader
    from rtmpq.media.flv import read_flv_tags
    from rtmpq.rtmp.chunk_writer import ChunkWriter
    from rtmpq.rtmp.handshake import HANDSHAKE_SIZE, make_client_c1

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    w = ChunkWriter(128)
    writer.write(b"\x03" + make_client_c1(digest=False))
    s0s1s2 = await reader.readexactly(1 + 2 * HANDSHAKE_SIZE)
    out = s0s1s2[1 : 1 + HANDSHAKE_SIZE]  # C2 echoes S1
    out += w.write(2, 0, 1, 0, (4096).to_bytes(4, "big"))
    w.chunk_size = 4096
    out += w.write(3, 0, 20, 0, amf0_encode("connect", 1.0, {"app": app, "type": "nonprivate"}))
    out += w.write(3, 0, 20, 0, amf0_encode("createStream", 2.0, None))
    out += w.write(8, 0, 20, 1, amf0_encode("publish", 3.0, None, key, "live"))
    writer.write(out)
    replies = ChunkReader()  # media only once the server said NetStream.Publish.Start, as clients do
    started = False
    while not started:
        data = await asyncio.wait_for(reader.read(65536), 10)
        if not data:
            raise ConnectionError("the server closed the connection before the publish started")
        replies.receive_data(data)
        while (msg := replies.next_message()) is not NEED_DATA:
            started = started or (msg.type_id == 20 and b"NetStream.Publish.Start" in bytes(msg.body))
    start = asyncio.get_running_loop().time()
    for tag_type, ts, body in read_flv_tags(flv_path):
        delay = start + ts / 1000 - asyncio.get_running_loop().time()
        if delay > 0:
            await writer.drain()
            await asyncio.sleep(delay)
        writer.write(w.write({8: 4, 9: 6, 18: 5}[tag_type], ts, tag_type, 1, body))
    writer.write(w.write(8, 0, 20, 1, amf0_encode("deleteStream", 4.0, None, 1.0)))
    await writer.drain()
    writer.write_eof()
    try:
        await asyncio.wait_for(reader.read(), 10)  # the server closes once it has read everything
    except TimeoutError:
        pass
    writer.close()
