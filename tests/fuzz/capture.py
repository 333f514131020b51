"""Record real publishes at the byte level and write the fuzz seed corpora (tests/data/corpus/).

    python -m tests.fuzz.capture [--out tests/data/corpus]

A TCP proxy in front of a real rtmpq ingest records every byte a publisher sends: system ffmpeg
(H.264/AAC, 128-byte chunks), GStreamer's rtmp2sink (4096-byte chunks), PyAV's FFmpeg 8 (E-RTMP
HEVC/Opus and AV1/AAC), and an OBS-shaped client (4096-byte chunks, an E-RTMP connect with
fourCcList/capsEx/videoFourCcInfoMap, the HEVC capture's tags re-sent). From each capture it keeps
the head of the byte stream (handshake and chunk seeds) and cuts the messages out of it (AMF0
commands, FLV tags, avcC/hvcC/av1C, AAC/Opus configs, NAL units) as seeds for the other targets.
MoQT seeds are encoded by rtmpq's own encoders (no public relay to record from offline).
Re-running it replaces the seed files; they are small on purpose (libFuzzer reads 4 KiB inputs).
"""

import argparse
import asyncio
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

from rtmpq.codec import NEED_DATA, REFERENCE, amf0_encode
from rtmpq.config import IngestConfig, PublishConfig
from rtmpq.media.broadcast import BroadcastRegistry
from rtmpq.nodes.ingest import IngestNode
from rtmpq.rtmp.chunk_writer import ChunkWriter
from rtmpq.rtmp.handshake import HANDSHAKE_SIZE, make_client_c1
from tests.fuzz.targets import demux_input

ROOT = Path(__file__).resolve().parents[2]
SEED_PREFIX = bytes(8)  # the targets draw their split points from the first 8 bytes
STREAM_HEAD = 12_000  # bytes of each raw capture kept as a seed


async def record(publisher_args: list[str] | None, client=None, seconds: float = 30) -> bytes:
    """Run a publisher against ingest through a recording proxy; the bytes it sent."""
    registry = BroadcastRegistry()
    ingest = IngestNode(registry, IngestConfig(host="127.0.0.1", port=0), PublishConfig(grace_period=0))
    await ingest.start()
    sent = bytearray()

    async def pipe(r, w, keep):
        try:
            while data := await r.read(65536):
                if keep:
                    sent.extend(data)
                w.write(data)
                await w.drain()
        except ConnectionError:
            pass
        finally:
            w.close()

    async def handle(cr, cw):
        sr, sw = await asyncio.open_connection(*ingest.address)
        await asyncio.gather(pipe(cr, sw, True), pipe(sr, cw, False))

    proxy = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = proxy.sockets[0].getsockname()[1]
    try:
        if client is not None:
            await client(port)
        else:
            args = [a.replace("{URL}", f"rtmp://127.0.0.1:{port}/live/cap") for a in publisher_args]
            proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.DEVNULL,
                                                        stderr=asyncio.subprocess.PIPE)
            _, err = await asyncio.wait_for(proc.communicate(), seconds)
            if proc.returncode != 0:
                raise RuntimeError(f"{args[0]} failed: {err.decode()[-500:]}")
        await asyncio.sleep(0.3)
    finally:
        proxy.close()
        await ingest.close()
    return bytes(sent)


def messages(stream: bytes) -> list:
    """The RTMP messages after the handshake: (type_id, body)."""
    r = REFERENCE["ChunkReader"]()
    r.receive_data(stream[1 + 2 * HANDSHAKE_SIZE:])
    out = []
    while (m := r.next_message()) is not NEED_DATA:
        out.append((m.type_id, bytes(m.body)))
    return out


def obs_shaped(tags: list) -> "callable":
    """A client shaped like OBS 30: Set Chunk Size 4096 first, an E-RTMP connect, then the tags."""

    async def run(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        w = ChunkWriter(128)
        writer.write(b"\x03" + make_client_c1(digest=False))
        s0s1s2 = await reader.readexactly(1 + 2 * HANDSHAKE_SIZE)
        writer.write(s0s1s2[1:1 + HANDSHAKE_SIZE])
        writer.write(w.write(2, 0, 1, 0, (4096).to_bytes(4, "big")))
        w.chunk_size = 4096
        writer.write(w.write(3, 0, 20, 0, amf0_encode("connect", 1.0, {
            "app": "live", "type": "nonprivate", "flashVer": "FMLE/3.0 (compatible; FMSc/1.0)",
            "swfUrl": "rtmp://127.0.0.1/live", "tcUrl": "rtmp://127.0.0.1/live",
            "fourCcList": ["av01", "vp09", "hvc1", "avc1", "Opus", "mp4a"], "capsEx": 1.0,
            "videoFourCcInfoMap": {"hvc1": 1.0, "avc1": 1.0, "av01": 1.0},
            "audioFourCcInfoMap": {"Opus": 1.0, "mp4a": 1.0}})))
        for i, cmd in enumerate((["releaseStream", 2.0, None, "cap"], ["FCPublish", 3.0, None, "cap"],
                                 ["createStream", 4.0, None])):
            writer.write(w.write(3, 0, 20, 0, amf0_encode(*cmd)))
        writer.write(w.write(8, 0, 20, 1, amf0_encode("publish", 5.0, None, "cap", "live")))
        writer.write(w.write(5, 0, 18, 1, amf0_encode("@setDataFrame", "onMetaData", {
            "width": 160.0, "height": 120.0, "videocodecid": 1752589105.0, "framerate": 30.0,
            "encoder": "obs-output module (libobs version 30.1.2)"})))
        for type_id, ts, body in tags:
            writer.write(w.write(6 if type_id == 9 else 4, ts, type_id, 1, body))
            await writer.drain()
        await asyncio.sleep(0.5)
        writer.close()

    return run


def flv_tags(stream: bytes, types=(8, 9)) -> list:
    """(type_id, timestamp, body) of the messages of these types after the handshake."""
    r = REFERENCE["ChunkReader"]()
    r.receive_data(stream[1 + 2 * HANDSHAKE_SIZE:])
    out = []
    while (m := r.next_message()) is not NEED_DATA:
        if m.type_id in types:
            out.append((m.type_id, m.timestamp, bytes(m.body)))
    return out


def inband_restream(tmp: Path) -> list[str]:
    """ffmpeg restreaming (-c copy) two MPEG-TS clips of different sizes one after the other: the
    second size comes only in-band, in the SPS/PPS of its first key frame (no new sequence header)."""
    import subprocess

    clips = []
    for size in ("64x48", "96x64"):
        clip = tmp / f"{size}.ts"
        subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-f", "lavfi", "-i",
                        f"testsrc2=size={size}:rate=30", "-t", "0.3", "-c:v", "libx264", "-preset", "veryfast",
                        "-g", "5", "-pix_fmt", "yuv420p", "-f", "mpegts", str(clip)], check=True)
        clips.append(str(clip))
    return ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-re", "-i", f"concat:{'|'.join(clips)}",
            "-c", "copy", "-f", "flv", "{URL}"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "tests/data/corpus"))
    args = ap.parse_args()
    out = Path(args.out)
    py = sys.executable
    pyav = str(ROOT / "tests/pyav_publisher.py")
    lavfi = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-re", "-f", "lavfi", "-i",
             "testsrc2=size=160x120:rate=30", "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100",
             "-t", "1", "-c:v", "libx264", "-preset", "veryfast", "-bf", "2", "-g", "15",
             "-c:a", "aac", "-b:a", "32k", "-f", "flv", "{URL}"]
    gst = ["gst-launch-1.0", "-q", "-e", *(
        "videotestsrc num-buffers=30 ! video/x-raw,width=160,height=120,framerate=30/1 "
        "! x264enc key-int-max=15 bframes=2 tune=zerolatency ! h264parse ! queue ! m. "
        "audiotestsrc num-buffers=44 samplesperbuffer=1024 ! audio/x-raw,rate=44100,channels=2 "
        "! avenc_aac ! aacparse ! queue ! m. flvmux name=m streamable=true "
        "! rtmp2sink location={URL} chunk-size=4096").split()]
    captures = {
        "ffmpeg": asyncio.run(record(lavfi)),
        "gstreamer": asyncio.run(record(gst)),
        "pyav-hevc-opus": asyncio.run(record([py, pyav, "{URL}", os.devnull, "--video", "libx265", "--audio",
                                              "libopus", "--seconds", "1", "--size", "160x120"])),
        "pyav-av1-aac": asyncio.run(record([py, pyav, "{URL}", os.devnull, "--video", "libsvtav1", "--audio",
                                            "aac", "--seconds", "1", "--size", "160x120"])),
    }
    captures["obs-shaped"] = asyncio.run(record(None, obs_shaped(flv_tags(captures["pyav-hevc-opus"])[:40])))
    with tempfile.TemporaryDirectory() as tmp:  # small clips: the size change within STREAM_HEAD
        captures["ffmpeg-inband-size-change"] = asyncio.run(record(inband_restream(Path(tmp))))

    seeds: dict[str, dict[str, bytes]] = {}

    def seed(target: str, name: str, data: bytes, limit: int = 4000) -> None:
        files = seeds.setdefault(target, {})
        if data[:limit] not in files.values():  # identical commands from several publishers: once
            files[name] = data[:limit]

    for name, stream in captures.items():
        print(f"{name}: {len(stream)} bytes captured")
        seed("handshake", name, SEED_PREFIX + stream, 1 + 2 * HANDSHAKE_SIZE + 8 + 400)
        seed("chunk", name, SEED_PREFIX + stream[1 + 2 * HANDSHAKE_SIZE:], STREAM_HEAD)
        seed("session", name, SEED_PREFIX + stream[1 + 2 * HANDSHAKE_SIZE:], STREAM_HEAD)
        for target in ("demux", "package"):  # the same input: media messages
            seed(target, name, demux_input(flv_tags(stream, (8, 9, 18))), STREAM_HEAD)
        videos = audios = 0
        for i, (type_id, body) in enumerate(messages(stream)):
            if type_id in (18, 20):
                seed("amf0", f"{name}-{i}", body)
            elif type_id == 9 and videos < 6:
                videos += 1
                seed("flvtag", f"{name}-v{i}", body, 600)
                _codec_seeds(seed, f"{name}-v{i}", body)
            elif type_id == 8 and audios < 3:
                audios += 1
                seed("flvtag", f"{name}-a{i}", body, 300)
                _codec_seeds(seed, f"{name}-a{i}", body)
    _moq_seeds(seed)
    _http_seeds(seed)
    _json_seeds(seed)
    for target, files in seeds.items():
        d = out / target
        d.mkdir(parents=True, exist_ok=True)
        for old in d.iterdir():
            old.unlink()
        for name, data in files.items():
            (d / f"{name}-{hashlib.sha1(data).hexdigest()[:8]}").write_bytes(data)
        print(f"{target}: {len(files)} seeds")


def _codec_seeds(seed, name: str, body: bytes) -> None:
    """The codec payloads inside an FLV tag (sequence headers and frames), by the tag's codec."""
    for parse in (REFERENCE["parse_video_tracks"], REFERENCE["parse_audio_tracks"]):
        try:
            tags = parse(body)
        except ValueError:
            continue
        for t in tags:
            payload = body[t.payload_offset:t.payload_end]
            target = {"hvc1": "hevc", "av01": "av1", "avc1": "avc"}.get(t.codec, "audio_config")
            if payload and (target != "audio_config" or t.codec in ("mp4a", "Opus")):
                seed(target, name, payload, 3000)
        return


def _moq_seeds(seed) -> None:
    from tests.fuzz.moq_samples import datagram_samples, samples

    for name, data in samples().items():
        target = "moq_fetch" if name.startswith("fetch") else "moq_subgroup" if name.startswith("subgroup") \
            else "moq_control"
        seed(target, name, (SEED_PREFIX if target != "moq_control" else b"") + data)
    for name, data in datagram_samples().items():
        seed("moq_datagram", name, data)
    for late in (False, True):
        seed("moq_package", "tail-after-next-group" if late else "steady", _loc_publish(late), STREAM_HEAD)


def _loc_publish(tail_late: bool) -> bytes:
    """moq_package's input for 3 groups of 2 s: video at 30 fps with B-frame offsets, a rung
    beside it, audio; with ``tail_late`` the last 10 video objects of group 1 come after group 2's first."""
    def obj(track: int, group: int, ts: int, offset: int, key: bool, size: int) -> bytes:
        return bytes([track, group]) + ts.to_bytes(3, "big") + bytes([offset, key, size]) + bytes(range(size))

    out = []
    for g in range(3):
        for i in range(60):
            t = g * 2000 + i * 33 + 66
            out.append(obj(0, g, t, 66 if i % 3 else 0, i == 0, 12))
            out.append(obj(1, g, t, 66 if i % 3 else 0, i == 0, 6))
            if i % 3 != 2:
                out.append(obj(2, g, g * 2000 + int(i * 23.2), 0, True, 4))
    if tail_late:
        late = [o for o in out if o[:2] == bytes([0, 1])][-10:]
        out = [o for o in out if o not in late]
        at = out.index(next(o for o in out if o[:2] == bytes([0, 2]))) + 1
        out[at:at] = late
    return b"".join(out)


def _http_seeds(seed) -> None:
    for name, req in {
        "get-playlist": b"GET /live/cap/video.m3u8?_HLS_msn=3&_HLS_part=1 HTTP/1.1\r\nHost: x\r\n\r\n",
        "pipelined": b"GET / HTTP/1.1\r\nHost: x\r\n\r\nHEAD /hls.js HTTP/1.1\r\n\r\nGET /x HTTP/1.0\r\n\r\n",
        "post": b"POST /live HTTP/1.1\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
    }.items():
        seed("http_request", name, req)


def _json_seeds(seed) -> None:
    """MSF catalogs (the draft's examples: each independent one, then it with each delta after it)
    and publish hook answers (a status byte, then the body)."""
    examples = json.loads((ROOT / "tests/data/msf-draft-examples.json").read_text())["examples"]
    docs = [e["json"].encode() for e in examples]
    deltas = [d for d in docs if b"deltaUpdate" in d]
    for i, doc in enumerate(d for d in docs if d not in deltas):
        seed("moq_catalog", f"msf-example-{i}", doc)
    for i, delta in enumerate(deltas):
        seed("moq_catalog", f"msf-example-delta-{i}", docs[0] + b"\0" + delta)
    for name, answer in {
        "admit": b"\x00" + b'{"name": "studio"}',
        "admit-path": b"\x01" + b'{"name": "news/desk", "extra": [1, 2.5, null, true, {"a": "b"}]}',
        "refuse-reason": b"\x05" + b'{"reason": "key revoked"}',
        "refuse-empty": b"\x06",
        "admit-bad-name": b"\x00" + b'{"name": "../etc"}',
    }.items():
        seed("publish_hook", name, answer)


if __name__ == "__main__":
    main()
