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
REFERENCE_ARGS = (REFERENCE["ChunkReader"], REFERENCE["parse_video_tag"], REFERENCE["split_length_prefixed"])



def rtmpq_parse(reader_cls, parse_video_tag, split_length_prefixed, data: bytes) -> tuple[int, int, int, int]:
    """Feed ``data`` as socket reads would arrive; extract every video frame's NAL units.
    Returns (chunks, NAL units, messages, message body bytes)."""
    reader = reader_cls()
    view = memoryview(data)
    nal_count = messages = body_bytes = 0
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
            messages += 1
            body_bytes += len(m.body)
            if m.type_id == 9:
                tag = parse_video_tag(m.body)
                nal_count += len(split_length_prefixed(memoryview(m.body)[tag.payload_offset : tag.payload_end], 4))
    return reader.chunks_parsed, nal_count, messages, body_bytes


def pyrtmp_parse(data: bytes) -> tuple[int, int]:
    """pyrtmp's chunk reader on the same bytes (it reads from an asyncio StreamReader).
    Returns (messages, payload bytes); only a clean end of input ends it."""
    from pyrtmp import StreamClosedException
    from pyrtmp.session_manager import SessionManager

    async def run() -> tuple[int, int]:
        reader = asyncio.StreamReader(limit=2**30)
        reader.feed_data(data)
        reader.feed_eof()
        session = SessionManager(reader=reader, writer=None)
        messages = body_bytes = 0
        try:
            async for chunk in session.read_chunks_from_stream():
                messages += 1
                body_bytes += len(chunk.payload)
                if chunk.msg_type_id == 1:
                    session.reader_chunk_size = int.from_bytes(chunk.payload[:4], "big")
        except StreamClosedException:  # how pyrtmp ends at the end of input (the caller checks it was all)
            pass
        return messages, body_bytes

    return asyncio.run(run())


def record(benchmark, name: str, chunk_size: int, data: bytes, chunks: int) -> None:
    seconds = benchmark.stats.stats.min
    info = {"MB/s": round(len(data) / seconds / 1e6, 1), "chunks/s": round(chunks / seconds)}
    benchmark.extra_info.update(info)
    RESULTS[(name, chunk_size)] = info


@pytest.mark.parametrize("impl", ["compiled", "reference"])
def test_rtmpq_chunk_parsing(benchmark, session_bytes, impl):
    chunk_size, data, written_messages, written_bytes = session_bytes
    if impl == "compiled":
        args = (compiled.ChunkReader, compiled.parse_video_tag, compiled.split_length_prefixed)
    else:
        args = (REFERENCE["ChunkReader"], REFERENCE["parse_video_tag"], REFERENCE["split_length_prefixed"])
    chunks, nals, messages, body_bytes = benchmark.pedantic(
        rtmpq_parse, args=(*args, data), rounds=5 if impl == "compiled" else 2, iterations=1,
        warmup_rounds=1 if impl == "compiled" else 0)
    # the same work as the other implementations: every message, every byte, every NAL unit
    assert (chunks, nals, messages, body_bytes) == rtmpq_parse(*REFERENCE_ARGS, data)
    assert (messages, body_bytes) == (written_messages, written_bytes)
    record(benchmark, f"rtmpq-{impl}", chunk_size, data, chunks)


def test_pyrtmp_chunk_parsing(benchmark, session_bytes):
    chunk_size, data, written_messages, written_bytes = session_bytes
    messages, body_bytes = benchmark.pedantic(pyrtmp_parse, args=(data,), rounds=1, iterations=1)
    chunks, _, rtmpq_messages, rtmpq_bytes = rtmpq_parse(*REFERENCE_ARGS, data)
    # pyrtmp did the same reassembly work: every message and every body byte of the input (it
    # splits no NAL units, so its figure stays an upper bound for it)
    assert (messages, body_bytes) == (rtmpq_messages, rtmpq_bytes) == (written_messages, written_bytes)
    record(benchmark, "pyrtmp", chunk_size, data, chunks)


def teardown_module(module):
    if RESULTS:
        print("\n\nimplementation           chunk   MB/s      chunks/s")
        for (name, size), info in sorted(RESULTS.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            print(f"{name:24} {size:5}  {info['MB/s']:8}  {info['chunks/s']:>12}")
