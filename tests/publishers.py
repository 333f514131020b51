"""Real RTMP publishers (ffmpeg, GStreamer) and ffprobe readers for end-to-end tests."""

import asyncio
import json
import subprocess
from dataclasses import dataclass

from rtmpq.media.broadcast import BroadcastEnded, BroadcastRegistry, CatalogUpdate
from rtmpq.media.frames import Frame

# A short, deterministic encode: x264 with a fixed B-frame pattern and a 2 s GoP, AAC audio.
VIDEO_ENCODE = ["-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency", "-bf", "2",
                "-x264-params", "b-adapt=0:scenecut=0:rc-lookahead=0:sync-lookahead=0", "-g", "60",
                "-keyint_min", "60", "-pix_fmt", "yuv420p", "-b:v", "400k"]
AUDIO_ENCODE = ["-c:a", "aac", "-b:a", "64k", "-ar", "44100", "-ac", "2"]


def ffmpeg_publish_args(url: str, reference: str, seconds: float = 3.0, size: str = "320x240") -> list[str]:
    """One live encode, written both to ``url`` (RTMP) and straight to the FLV file ``reference``."""
    return [
        "ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-re",
        "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=30",
        "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100",
        "-t", str(seconds), *VIDEO_ENCODE, *AUDIO_ENCODE,
        "-map", "0:v", "-map", "1:a", "-flags", "+global_header",
        "-f", "tee", f"[f=flv]{url}|[f=flv]{reference}",
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
    proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode, out.decode(errors="replace")
