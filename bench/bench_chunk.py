"""Chunk-stream parsing + frame extraction: compiled vs pure-Python reference vs pyrtmp, same bytes.

    .venv/bin/python -m pytest bench/bench_chunk.py --benchmark-only --benchmark-columns=min,median,rounds

MB/s and chunks/s of each run are in the benchmark's extra_info (and printed at the end).
"""

import asyncio

import pytest

import rtmpq._speedups as compiled
from rtmpq.codec import NEED_DATA, REFERENCE

READ_SIZE = 65536  # what one socket read hands the protocol
RESULTS: dict[tuple[str, int], dict] = {}


def rtmpq_parse(reader_cls, parse_video_tag, split_length_prefixed, data: bytes) -> tuple[int, int]:
    """Feed ``data`` as socket reads would arrive; extract every video frame's NAL units."""
    reader = reader_cls()
    view = memoryview(data)
    nal_count = 0
    for pos in range(0, len(data), READ_SIZE):
        piece = view[pos : pos + READ_SIZE]
        buf = reader.get_buffer(len(piece))
        n = len(piece)
        if len(buf) < n:  # never happens with 256 KiB blocks, kept for honesty
            reader.receive_data(piece)
        else:
            buf[:n] = piece
            reader.buffer_updated(n)
        while (m := reader.next_message()) is not NEED_DATA:
            if m.type_id == 9:
                tag = parse_video_tag(m.body)
                nal_count += len(split_length_prefixed(memoryview(m.body)[tag.payload_offset : tag.payload_end], 4))
    return reader.chunks_parsed, nal_count


def pyrtmp_parse(data: bytes) -> int:
    """pyrtmp's chunk reader on the same bytes (it reads from an asyncio StreamReader)."""
    from pyrtmp.session_manager import SessionManager

    async def run() -> int:
        reader = asyncio.StreamReader(limit=2**30)
        reader.feed_data(data)
        reader.feed_eof()
        session = SessionManager(reader=reader, writer=None)
        messages = 0
        try:
            async for chunk in session.read_chunks_from_stream():
                messages += 1
                if chunk.msg_type_id == 1:
                    session.reader_chunk_size = int.from_bytes(chunk.payload[:4], "big")
        except Exception:  # pyrtmp signals the end of input with an exception
            pass
        return messages

    return asyncio.run(run())


def record(benchmark, name: str, chunk_size: int, data: bytes, chunks: int) -> None:
    seconds = benchmark.stats.stats.min
    info = {"MB/s": round(len(data) / seconds / 1e6, 1), "chunks/s": round(chunks / seconds)}
    benchmark.extra_info.update(info)
    RESULTS[(name, chunk_size)] = info


@pytest.mark.parametrize("impl", ["compiled", "reference"])
def test_rtmpq_chunk_parsing(benchmark, session_bytes, impl):
    chunk_size, data = session_bytes
    if impl == "compiled":
        args = (compiled.ChunkReader, compiled.parse_video_tag, compiled.split_length_prefixed)
    else:
        args = (REFERENCE["ChunkReader"], REFERENCE["parse_video_tag"], REFERENCE["split_length_prefixed"])
    chunks, nals = benchmark.pedantic(rtmpq_parse, args=(*args, data), rounds=5 if impl == "compiled" else 2,
                                      iterations=1, warmup_rounds=1 if impl == "compiled" else 0)
    assert nals > 0
    record(benchmark, f"rtmpq-{impl}", chunk_size, data, chunks)


def test_pyrtmp_chunk_parsing(benchmark, session_bytes):
    chunk_size, data = session_bytes
    messages = benchmark.pedantic(pyrtmp_parse, args=(data,), rounds=1, iterations=1)
    assert messages > 0
    chunks, _ = rtmpq_parse(compiled.ChunkReader, compiled.parse_video_tag, compiled.split_length_prefixed, data)
    record(benchmark, "pyrtmp", chunk_size, data, chunks)


def teardown_module(module):
    if RESULTS:
        print("\n\nimplementation           chunk   MB/s      chunks/s")
        for (name, size), info in sorted(RESULTS.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            print(f"{name:24} {size:5}  {info['MB/s']:8}  {info['chunks/s']:>12}")
