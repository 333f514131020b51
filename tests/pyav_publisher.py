"""A publisher with a modern FFmpeg: PyAV's bundled FFmpeg (8.x) encodes a test pattern and a
sine tone and publishes them as Enhanced RTMP (HEVC, AV1, Opus in FLV), the way ffmpeg 7+ and OBS
30+ do. Run as a subprocess (it paces itself in real time and would block an event loop):

    python tests/pyav_publisher.py --video libx265 --audio aac --seconds 3 rtmp://127.0.0.1:1935/live/x ref.flv

(URL "-": only write the reference file, as fast as it encodes.)

Every encoded packet goes both to the RTMP URL and, unchanged, to the reference FLV file, so a
test can compare what arrived with what was sent. With ``--multitrack 640x360`` it instead writes
an E-RTMP multitrack FLV to the reference file only (the main picture and the audio as track 0, a
second encode at that size as video track 1; the tags are FFmpeg's own enhanced FLV tags with a
multitrack header added); the test pushes that file over RTMP.
"""

import argparse
import io
import sys
import time
from fractions import Fraction

import av

GOP = 30  # frames: one group per second at 30 fps (--gop)


def video_options(video: str, gop: int) -> dict:
    """The encoder's options; key frames every ``gop`` frames."""
    return {
        "libx265": {"x265-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0:log-level=error"},
        "libsvtav1": {"preset": "12"},
        "libx264": {"preset": "veryfast", "tune": "zerolatency"},
        "libvpx-vp9": {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"},
    }.get(video, {})


AUDIO_RATE = {"libopus": 48000, "aac": 44100}


def encode(targets: list, video: str, audio: str, size: str, seconds: float, realtime: bool, gop: int = GOP) -> None:
    """Encode once; mux every packet, unchanged, into each target (a URL, path or file object)."""
    outputs = [av.open(target, "w", format="flv") for target in targets]
    rate = AUDIO_RATE.get(audio, 48000)
    streams = []
    for out in outputs:
        v = out.add_stream(video, rate=30)
        v.width, v.height = map(int, size.split("x"))
        v.pix_fmt, v.gop_size = "yuv420p", gop
        v.options = video_options(video, gop)
        a = out.add_stream(audio, rate=rate) if audio else None
        if a is not None:
            a.layout = "stereo"
        streams.append((v, a))
    venc, aenc = streams[0]  # the first output's encoders feed every output
    vin = av.open(f"testsrc2=size={size}:rate=30", format="lavfi")
    ain = av.open(f"sine=frequency=440:sample_rate={rate}", format="lavfi")
    audio_frames = ain.decode(audio=0)

    def mux(packets, index):
        for p in packets:
            for out, pair in zip(outputs, streams, strict=True):
                copy = av.Packet(bytes(p))
                copy.pts, copy.dts, copy.time_base, copy.is_keyframe = p.pts, p.dts, p.time_base, p.is_keyframe
                copy.stream = pair[index]
                out.mux(copy)

    start = time.monotonic()
    audio_seconds = 0.0
    for n, frame in enumerate(vin.decode(video=0)):
        if n >= int(seconds * 30):
            break
        frame.pts, frame.time_base, frame.pict_type = n, Fraction(1, 30), 0  # the encoder picks key frames
        mux(venc.encode(frame), 0)
        while aenc is not None and audio_seconds < (n + 1) / 30:
            af = next(audio_frames)
            af.pts = None
            audio_seconds += af.samples / rate
            mux(aenc.encode(af), 1)
        if realtime:
            time.sleep(max(0.0, start + (n + 1) / 30 - time.monotonic()))
    mux(venc.encode(), 0)
    if aenc is not None:
        mux(aenc.encode(), 1)
    for out in outputs:
        out.close()


# -- an E-RTMP multitrack FLV, made from FFmpeg's own enhanced FLV tags -------------------------------

def flv_tags(data: bytes):
    pos = int.from_bytes(data[5:9], "big") + 4
    while pos + 11 <= len(data):
        size = int.from_bytes(data[pos + 1 : pos + 4], "big")
        yield data[pos : pos + 11], data[pos + 11 : pos + 11 + size]
        pos += 11 + size + 4


def as_multitrack(body: bytes, track_id: int) -> bytes | None:
    """An enhanced video tag body (``1 ftype ptype | FourCC | data``) as a OneTrack multitrack one."""
    if not body[0] & 0x80 or (body[0] >> 4) & 7 == 5:
        return None  # legacy or command/metadata tags: not needed here
    return bytes((body[0] & 0xF0 | 6, body[0] & 0x0F)) + body[1:5] + bytes((track_id,)) + body[5:]


def write_multitrack(args) -> None:
    """Track 0: ``--size`` video and the audio; track 1: ``--multitrack`` video; one FLV file."""
    files = []
    for size, audio in ((args.size, args.audio), (args.multitrack, "")):
        buf = io.BytesIO()
        encode([buf], args.video, audio, size, args.seconds, realtime=False)
        files.append(buf.getvalue())
    tags = []
    for track_id, data in enumerate(files):
        for order, (header, body) in enumerate(flv_tags(data)):
            ts = int.from_bytes(header[4:7], "big") | header[7] << 24
            if header[0] == 9:
                body = as_multitrack(body, track_id)
                if body is None:
                    continue
            elif track_id:
                continue  # audio and metadata come from track 0's file
            tags.append((ts, track_id, order, header[0], body))
    tags.sort()  # by time; at one time track 0 first; each file's own order kept
    with open(args.reference, "wb") as f:
        f.write(b"FLV\x01\x05" + (9).to_bytes(4, "big") + bytes(4))
        for ts, _, _, kind, body in tags:
            f.write(bytes((kind,)) + len(body).to_bytes(3, "big") + (ts & 0xFFFFFF).to_bytes(3, "big")
                    + bytes((ts >> 24 & 0xFF,)) + bytes(3) + body + (11 + len(body)).to_bytes(4, "big"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("reference")
    parser.add_argument("--video", default="libx265")
    parser.add_argument("--audio", default="aac")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--size", default="320x240")
    parser.add_argument("--multitrack", default="")
    parser.add_argument("--gop", type=int, default=GOP)
    args = parser.parse_args()
    if args.multitrack:
        write_multitrack(args)
    else:
        targets = [args.reference] if args.url == "-" else [args.url, args.reference]
        encode(targets, args.video, args.audio, args.size, args.seconds, realtime=args.url != "-", gop=args.gop)


if __name__ == "__main__":
    sys.exit(main())
