"""A synthetic but realistic publish session, written by rtmpq's ChunkWriter, for parser benchmarks."""

import random

import pytest

from rtmpq.rtmp.chunk_writer import ChunkWriter

SECONDS = 4
VIDEO_BITRATE = 3_000_000  # bits/s
FPS = 25
GOP_SECONDS = 2
IDR_BYTES = 60_000
AUDIO_FRAMES_PER_SECOND = 43  # AAC at 44.1 kHz: 1024 samples a frame
AUDIO_FRAME_BYTES = 370


def nal_units(rng: random.Random, total: int) -> bytes:
    """2-3 length-prefixed NAL units adding up to ``total`` bytes of payload."""
    count = rng.choice((2, 3))
    sizes = [total // count] * count
    sizes[-1] += total - sum(sizes)
    return b"".join(n.to_bytes(4, "big") + bytes((0x65,)) + rng.randbytes(n - 1) for n in sizes)


def publish_session(chunk_size: int, seed: int = 1) -> tuple[bytes, int, int]:
    """(the bytes, messages written, message body bytes written)."""
    rng = random.Random(seed)
    w = ChunkWriter(128)
    out = bytearray()
    messages = body_bytes = 0
    if chunk_size != 128:  # OBS announces its chunk size first
        out += w.write(2, 0, 1, 0, chunk_size.to_bytes(4, "big"))
        messages, body_bytes = 1, 4
        w.chunk_size = chunk_size
    frames_per_gop = FPS * GOP_SECONDS
    inter_bytes = (VIDEO_BITRATE // 8 * GOP_SECONDS - IDR_BYTES) // (frames_per_gop - 1)
    events = []
    for i in range(SECONDS * FPS):
        key = i % frames_per_gop == 0
        size = IDR_BYTES if key else int(inter_bytes * rng.uniform(0.6, 1.4))
        body = (b"\x17" if key else b"\x27") + b"\x01\x00\x00\x00" + nal_units(rng, size)
        events.append((i * 1000 // FPS, 6, 9, body))
    for i in range(SECONDS * AUDIO_FRAMES_PER_SECOND):
        events.append((i * 1000 // AUDIO_FRAMES_PER_SECOND, 4, 8, b"\xaf\x01" + rng.randbytes(AUDIO_FRAME_BYTES)))
    events.sort(key=lambda e: e[0])
    for ts, csid, type_id, body in events:
        out += w.write(csid, ts, type_id, 1, body)
        messages += 1
        body_bytes += len(body)
    return bytes(out), messages, body_bytes


@pytest.fixture(scope="session", params=[128, 4096], ids=["chunk128-ffmpeg", "chunk4096-obs"])
def session_bytes(request):
    """(chunk size, the bytes, messages in them, message body bytes in them)."""
    return request.param, *publish_session(request.param)
