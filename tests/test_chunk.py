"""The chunk stream reader, against whichever codec backend this run uses."""

import pytest

from rtmpq.codec import NEED_DATA, ChunkReader
from rtmpq.codec.chunk import BLOCK_SIZE, MAX_CHUNK_STREAMS, MAX_PIN_FACTOR
from rtmpq.errors import LimitExceeded, RemoteProtocolError
from rtmpq.rtmp.chunk_writer import ChunkWriter


def parse(data: bytes, *, step: int | None = None, **limits) -> list[tuple]:
    r = ChunkReader(**limits)
    out = []
    chunks = [data] if step is None else [data[i : i + step] for i in range(0, len(data), step)]
    for piece in chunks:
        r.receive_data(piece)
        while (m := r.next_message()) is not NEED_DATA:
            out.append((m.csid, m.stream_id, m.type_id, m.timestamp, bytes(m.body)))
    return out


def sample_stream(chunk_size=128, repeat_ext=True, start_ts=0) -> tuple[bytes, list[tuple]]:
    w = ChunkWriter(128, repeat_extended_timestamp=repeat_ext)
    out = b""
    expected = []
    if chunk_size != 128:
        out += w.write(2, 0, 1, 0, chunk_size.to_bytes(4, "big"))
        expected.append((2, 0, 1, 0, chunk_size.to_bytes(4, "big")))
        w.chunk_size = chunk_size
    for i in range(40):
        ts = (start_ts + i * 33) & 0xFFFFFFFF
        for csid, type_id, size in ((6, 9, 300 + 97 * i), (4, 8, 20)):
            body = bytes((i * 7 + k) & 0xFF for k in range(size))
            out += w.write(csid, ts, type_id, 1, body)
            expected.append((csid, 1, type_id, ts, body))
    return out, expected


@pytest.mark.parametrize("chunk_size", [128, 4096, 65536])
def test_whole_byte_by_byte_and_odd_splits_give_the_same_messages(chunk_size):
    data, expected = sample_stream(chunk_size)
    assert parse(data) == expected
    assert parse(data, step=1) == expected
    assert parse(data, step=7) == expected


@pytest.mark.parametrize("start", [0xFFFFFF - 400, 2**32 - 400])
@pytest.mark.parametrize("repeat_ext", [True, False])
def test_extended_and_wrapping_timestamps_with_and_without_the_fmt3_repeat(start, repeat_ext):
    data, expected = sample_stream(128, repeat_ext=repeat_ext, start_ts=start)
    assert parse(data) == expected
    assert parse(data, step=1) == expected
    if start > 2**31:
        assert any(ts < 1000 for *_, ts, _ in expected)  # the stream really wrapped


@pytest.mark.parametrize("csid", [2, 3, 63, 64, 319, 320, 65599])
def test_every_basic_header_form(csid):
    w = ChunkWriter(128)
    data = w.write(csid, 10, 9, 1, b"x" * 300) + w.write(csid, 20, 9, 1, b"y" * 300)
    assert parse(data, step=3) == [(csid, 1, 9, 10, b"x" * 300), (csid, 1, 9, 20, b"y" * 300)]


def test_header_compression_fmt_1_2_3():
    w = ChunkWriter(128)
    msgs = [(6, 0, 9, 1, b"a" * 10), (6, 40, 9, 1, b"b" * 20), (6, 80, 9, 1, b"c" * 20), (6, 120, 9, 1, b"d" * 20)]
    data = b"".join(w.write(*m) for m in msgs)
    # fmt 0, then fmt 1 (length changed), fmt 2? no: same delta and length -> fmt 3 twice
    assert [b >> 6 for b in (data[0], data[12 + 10], data[12 + 10 + 8 + 20])] == [0, 1, 3]
    assert parse(data) == [(6, 1, 9, ts, body) for _, ts, _, _, body in msgs]


def test_fmt3_new_message_after_fmt0_adds_the_fmt0_timestamp_as_delta():
    w = ChunkWriter(128)
    data = w.write(6, 40, 9, 1, b"a") + w.write(6, 80, 9, 1, b"b", fmt=3)
    assert parse(data) == [(6, 1, 9, 40, b"a"), (6, 1, 9, 80, b"b")]


def test_librtmp_fmt1_on_a_fresh_csid_takes_the_last_stream_id():
    w = ChunkWriter(128)
    data = w.write(4, 0, 8, 1, b"a") + w.write(5, 10, 9, 7, b"b", fmt=1)
    assert parse(data) == [(4, 1, 8, 0, b"a"), (5, 1, 9, 10, b"b")]


@pytest.mark.parametrize("fmt", [2, 3])
def test_fmt2_or_3_opening_a_chunk_stream_is_refused(fmt):
    with pytest.raises(RemoteProtocolError, match="opens chunk stream"):
        parse(bytes([(fmt << 6) | 9]) + bytes(200))


def test_new_header_while_a_message_is_incomplete_is_refused():
    w = ChunkWriter(128)
    first = w.write(6, 0, 9, 1, b"a" * 300)[: 12 + 128]  # first chunk only
    again = ChunkWriter(128).write(6, 0, 9, 1, b"b" * 10)  # fmt 0 on the same csid
    with pytest.raises(RemoteProtocolError, match="incomplete"):
        parse(first + again)


def test_abort_drops_the_partial_message():
    w = ChunkWriter(128)
    partial = w.write(6, 0, 9, 1, b"a" * 300)[: 12 + 128]
    abort = ChunkWriter(128).write(2, 0, 2, 0, (6).to_bytes(4, "big"))
    w2 = ChunkWriter(128)
    w2.write(6, 0, 9, 1, b"a" * 300)  # so the next message is compressed against the same header
    after = w2.write(6, 33, 9, 1, b"z" * 50, fmt=1)
    assert parse(partial + abort + after)[-1] == (6, 1, 9, 33, b"z" * 50)


@pytest.mark.parametrize("value,error", [(0, "invalid chunk size"), (0x80000000, "invalid chunk size"), (0x7FFFFFFF, None), (64, "min_chunk_size")])
def test_set_chunk_size_bounds(value, error):
    data = ChunkWriter(128).write(2, 0, 1, 0, value.to_bytes(4, "big"))
    if error:
        with pytest.raises(RemoteProtocolError, match=error):
            parse(data)
    else:
        r = ChunkReader()
        r.receive_data(data)
        r.next_message()
        assert r.chunk_size == 0xFFFFFF  # clamped: memory follows bytes received, not this


def test_huge_declared_lengths_on_many_csids_hit_the_limits_not_memory():
    data = b"".join(bytes([csid]) + bytes(3) + (0xFFFFFF).to_bytes(3, "big") + b"\x09\x01\x00\x00\x00" + bytes(128)
                    for csid in range(4, 60))
    with pytest.raises(LimitExceeded) as info:
        parse(data)
    assert info.value.limit == "max_message_size"
    small = b"".join(bytes([csid]) + bytes(3) + (1_000_000).to_bytes(3, "big") + b"\x09\x01\x00\x00\x00" + bytes(128)
                     for csid in range(4, 60))
    with pytest.raises(LimitExceeded) as info:
        parse(small, max_partial_bytes=4096)
    assert info.value.limit in ("max_partial_bytes", "max_chunk_streams")


def test_too_many_chunk_streams():
    w = ChunkWriter(128)
    data = b"".join(w.write(csid, 0, 9, 1, b"x") for csid in range(3, 3 + MAX_CHUNK_STREAMS + 1))
    with pytest.raises(LimitExceeded, match="max_chunk_streams"):
        parse(data)


def test_single_chunk_bodies_are_views_of_the_receive_block_and_big_ones_are_joined_once():
    r = ChunkReader()
    chunk = BLOCK_SIZE // 2  # a body of one whole chunk fills half a block: handed on as a view
    w = ChunkWriter(chunk)
    data = ChunkWriter(128).write(2, 0, 1, 0, chunk.to_bytes(4, "big"))
    data += w.write(6, 0, 9, 1, b"s" * 1000) + w.write(6, 40, 9, 1, b"l" * chunk)
    buf = r.get_buffer(len(data))
    buf[: len(data)] = data
    r.buffer_updated(len(data))
    r.next_message()
    small, large = r.next_message(), r.next_message()
    assert isinstance(small.body, bytes) and small.body == b"s" * 1000  # copied: a view would pin the block
    assert isinstance(large.body, memoryview) and large.body.obj is buf.obj  # no copy at all
    r.receive_data(w.write(6, 80, 9, 1, b"m" * (chunk + 1000)))
    big = r.next_message()
    assert isinstance(big.body, bytes) and big.body == b"m" * (chunk + 1000)  # one copy, by join
    assert r.chunks_parsed == 1 + 1 + 1 + 2


def test_garbage_never_raises_anything_but_protocol_errors():
    import random
    rng = random.Random(7)
    for _ in range(300):
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 600)))
        try:
            parse(data, step=rng.randrange(1, 50))
        except RemoteProtocolError:
            pass


def _feed_in_reads(r, data: bytes, read_size: int) -> list:
    """Feed as asyncio's BufferedProtocol does (get_buffer, then buffer_updated), parsing after each read."""
    out = []
    pos = 0
    while pos < len(data):
        buf = r.get_buffer(read_size)
        n = min(len(buf), read_size, len(data) - pos)
        buf[:n] = data[pos : pos + n]
        pos += n
        r.buffer_updated(n)
        while (m := r.next_message()) is not NEED_DATA:
            out.append(m)
    return out


def test_a_16_mb_chunk_read_4_kb_at_a_time_is_moved_a_linear_number_of_bytes():
    """Set Chunk Size 0xFFFFFF and one 16 MB message: while the chunk is incomplete the unparsed
    tail moves to fresh blocks; the bytes moved must stay a small multiple of the message (they
    grew with its square when each fresh block had only MIN_FREE more room)."""
    size = 16_000_000
    r = ChunkReader(max_message_size=size, max_partial_bytes=size)
    w = ChunkWriter(128)
    data = w.write(2, 0, 1, 0, (0xFFFFFF).to_bytes(4, "big"))
    w.chunk_size = 0xFFFFFF
    body = bytes(range(256)) * (size // 256)
    data += w.write(6, 0, 9, 1, body) + w.write(4, 0, 8, 1, b"after")
    msgs = _feed_in_reads(r, data, 4096)
    assert [m.type_id for m in msgs] == [1, 9, 8]
    assert bytes(msgs[1].body) == body and bytes(msgs[2].body) == b"after"
    assert r.bytes_moved <= 2 * size


def test_small_messages_held_alive_pin_about_their_own_size():
    """Bodies are views into 256 KiB receive blocks; a small one held alive must not keep a whole
    block alive (byte limits on held frames would not bound memory)."""
    r = ChunkReader()
    w = ChunkWriter(128)
    data = w.write(2, 0, 1, 0, (65536).to_bytes(4, "big"))
    w.chunk_size = 65536
    for i in range(200):  # small messages kept (audio), each followed by a big one let go
        data += w.write(4, i, 8, 1, bytes([i]) * 100) + w.write(6, i, 9, 1, b"v" * 60_000)
    held = [m.body for m in _feed_in_reads(r, data, 4096) if m.type_id == 8]
    assert len(held) == 200
    owners = {id(o): o for o in (b.obj if isinstance(b, memoryview) else b for b in held)}
    pinned = sum(len(o) for o in owners.values())
    assert pinned <= 2 * sum(len(b) for b in held), f"{pinned} bytes pinned by {len(held)} bodies of 100 bytes"


def test_a_single_chunk_body_that_fills_much_of_its_block_stays_a_view():
    r = ChunkReader()
    w = ChunkWriter(128)
    data = w.write(2, 0, 1, 0, (0xFFFFFF).to_bytes(4, "big"))
    w.chunk_size = 0xFFFFFF
    data += w.write(6, 0, 9, 1, b"i" * 200_000)
    big = _feed_in_reads(r, data, 4096)[1]
    assert isinstance(big.body, memoryview) and len(big.body) == 200_000
    assert len(big.body.obj) <= MAX_PIN_FACTOR * len(big.body)


def test_a_message_in_flight_does_not_pin_a_block_per_chunk():
    """Chunks of one message spread thin over many receive blocks (each followed by 256 KiB of
    other messages, let go): the incomplete message must not keep every block alive."""
    import tracemalloc

    w = ChunkWriter(128)
    head = w.write(4, 0, 9, 1, b"a" * 128 * 61)  # one message, 61 chunks of 128 bytes
    first = len(head) - 60 * 129  # 12-byte header + 128; then 1-byte headers + 128
    chunks = [head[:first]] + [head[first + 129 * i : first + 129 * (i + 1)] for i in range(60)]
    filler = b"".join(w.write(5, 0, 8, 1, b"f" * 100) for _ in range(2300))  # ~256 KiB of small messages
    r = ChunkReader()
    tracemalloc.start()
    try:
        for chunk in chunks[:-1]:
            for m in _feed_in_reads(r, chunk + filler, 65536):
                assert m.csid == 5
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    # 60 blocks of 256 KiB if each part pinned its block; the reader's own block and a few more if not
    assert held < 3 * 1024 * 1024, f"{held} bytes held for a message of {60 * 128} bytes in progress"
    [msg] = _feed_in_reads(r, chunks[-1], 65536)
    assert bytes(msg.body) == b"a" * 128 * 61
