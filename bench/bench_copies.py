"""Media-byte copies from the socket to the QUIC stack and to the LL-HLS part, counted (issue 12).

    .venv/bin/python -m pytest bench/bench_copies.py --benchmark-only -s

Method: tracemalloc byte counters. A synthetic 4 s publish (bench/conftest.py: 3 Mbit/s
H.264-shaped video, AAC-shaped audio; 128-byte chunks as ffmpeg sends them) goes through the
ingest's own pieces in 64 KiB reads: ChunkReader (the receive buffer is the socket buffer:
`get_buffer` + `buffer_updated`, as the asyncio BufferedProtocol does; `read_messages`, as the
ingest reads), BroadcastDemuxer (`media`, the ingest's fast path), then for
every frame the MoQ object encoding (`moq.session._encoded_object`, what is handed to the QUIC
library's `send_stream_data`, once for all subscribers) and the LL-HLS packager (`LlHlsStream`,
its parts). Every object made is kept alive; for each stage the peak of traced memory during
the call over the memory before it is summed (what it keeps plus the temporaries alive at the
same time, so a copy made and dropped counts too), per media byte: 1.0 is one copy of the
media (the ingest stage also allocates the receive buffer, about one input's worth). Copies inside C libraries are not traced: aiopquic's stream ring (one copy per
subscriber, in C, inside `send_stream_data`) is stated, not measured; aioquic's per-subscriber
stream buffer (a Python bytearray) is the aioquic backend's.
"""

import subprocess
import tracemalloc

import pytest

from rtmpq.codec import ChunkReader
from rtmpq.edge.llhls import LlHlsStream
from rtmpq.media.catalog import Catalog
from rtmpq.media.demux import BroadcastDemuxer
from rtmpq.moq import session as moq_session
from rtmpq.moq.loc import frame_extensions
from rtmpq.moq.transport import PQUIC_STREAM_RING_BYTES
from rtmpq.rtmp.chunk_writer import ChunkWriter

READ_SIZE = 65536


class Stage:
    """Bytes a stage allocates at once (its peak over what was allocated before the call): what
    it keeps plus the temporaries alive at the same time, so copies made and dropped count too."""

    def __init__(self) -> None:
        self.allocated = 0

    def __enter__(self):
        self.before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()

    def __exit__(self, *exc) -> None:
        self.allocated += tracemalloc.get_traced_memory()[1] - self.before


def pipeline(data: bytes) -> tuple[int, int, dict[str, int]]:
    keep = []
    reader = ChunkReader()
    demuxer = BroadcastDemuxer("live/copies")
    hls = LlHlsStream()
    view = memoryview(data)
    media = received = 0
    ingest, moq, moq_pquic, llhls = Stage(), Stage(), Stage(), Stage()
    for pos in range(0, len(data), READ_SIZE):
        piece = view[pos:pos + READ_SIZE]
        n = len(piece)
        with ingest:  # receive buffer, reassembly, FLV tag, frames
            buf = reader.get_buffer(n)
            if len(buf) < n:
                reader.receive_data(piece)
            else:
                buf[:n] = piece  # stands for the socket's recv_into the same buffer
                reader.buffer_updated(n)
            items = []  # the ingest's own path: one read_messages per read, media to demuxer.media
            for _csid, _sid, type_id, ts, body, codec, frame_type, cts, header in reader.read_messages():
                keep.append(body)
                items += demuxer.media(type_id, ts, body, codec, frame_type, cts, header, 1)
        received += n
        for item in items:
            if isinstance(item, Catalog):
                hls.set_catalog(item)
                continue
            media += len(item.payload)
            keep.append(item)
            with moq:  # the object as handed to the QUIC library (once for every subscriber)
                keep.append(moq_session._encoded_object(0, item.payload, frame_extensions(item, 1000)))
            with moq_pquic:  # the same on aiopquic: objects over its stream ring cut into ring-sized writes
                keep.append(moq_session._encoded_object(0, item.payload, frame_extensions(item, 1000),
                                                        PQUIC_STREAM_RING_BYTES))
            with llhls:  # CMAF parts
                hls.push(item)
    with llhls:
        hls.end()
    return media, received, {"ingest": ingest.allocated, "moq": moq.allocated, "moq_aiopquic": moq_pquic.allocated,
                             "llhls": llhls.allocated}


def count(data: bytes) -> tuple[int, int, dict[str, float]]:
    tracemalloc.start(1)
    try:
        media, received, stages = pipeline(data)
    finally:
        tracemalloc.stop()
    return media, received, {k: v / media for k, v in stages.items()}


@pytest.fixture(scope="module")
def flv_tags(tmp_path_factory) -> list[tuple[int, int, bytes]]:
    """(type, timestamp, body) of every tag of a 4 s 720p H.264 (3 Mbit/s) + AAC FLV made by ffmpeg."""
    path = tmp_path_factory.mktemp("copies") / "source.flv"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30", "-f", "lavfi",
                    "-i", "sine", "-t", "4", "-c:v", "libx264", "-preset", "ultrafast", "-b:v", "3M", "-g", "60",
                    "-c:a", "aac", "-f", "flv", str(path)], check=True)
    data = path.read_bytes()
    tags, pos = [], 13
    while pos + 11 <= len(data):
        kind, size = data[pos], int.from_bytes(data[pos + 1:pos + 4], "big")
        ts = int.from_bytes(data[pos + 4:pos + 7], "big") | data[pos + 7] << 24
        tags.append((kind, ts, data[pos + 11:pos + 11 + size]))
        pos += 11 + size + 4
    return tags


def chunk_stream(tags, chunk: int) -> bytes:
    """The tags as a publisher's RTMP chunk stream (set chunk size first, as OBS does)."""
    w = ChunkWriter(128)
    out = bytearray()
    if chunk != 128:
        out += w.write(2, 0, 1, 0, chunk.to_bytes(4, "big"))
        w.chunk_size = chunk
    for kind, ts, body in tags:
        out += w.write({8: 4, 9: 6}.get(kind, 5), ts, kind, 1, body)
    return bytes(out)


@pytest.mark.parametrize("chunk", [128, 4096])
def test_media_copies(benchmark, chunk, flv_tags):
    data = chunk_stream(flv_tags, chunk)
    media, received, per_media_byte = benchmark.pedantic(count, args=(data,), rounds=1, iterations=1)
    benchmark.extra_info.update({"media_bytes": media, **{k: round(v, 2) for k, v in per_media_byte.items()}})
    print(f"\n{chunk}-byte chunks: {received:,} bytes received, {media:,} media bytes; bytes allocated per "
          f"media byte: " + ", ".join(f"{k} {v:.2f}" for k, v in per_media_byte.items()))
