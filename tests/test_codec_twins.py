"""The compiled codecs and their pure-Python twins agree on random input, split at random points.

These tests load both twins directly (rtmpq._speedups must be built), whatever backend the rest
of the run uses.
"""

import socket

import rtmpq._speedups as compiled
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rtmpq.codec import REFERENCE, NEED_DATA
from rtmpq.codec.amf0 import amf0_encode
from rtmpq.codec.amf_types import UNDEFINED, AmfDate, EcmaArray
from rtmpq.errors import RemoteProtocolError
from rtmpq.rtmp.chunk_writer import ChunkWriter

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_every_reference_function_has_a_compiled_twin():
    assert sorted(n for n in REFERENCE if not hasattr(compiled, n)) == []


def outcome(fn, *args):
    """Result or (exception type, message): what a caller of either twin would observe."""
    try:
        return ("ok", fn(*args))
    except RemoteProtocolError as exc:
        return (type(exc).__name__, str(exc))


def run_reader(cls, data: bytes, cuts: list[int]):
    r = cls()
    out = []
    pos = 0
    try:
        for cut in sorted(set(cuts)) + [len(data)]:
            r.receive_data(data[pos:cut])
            pos = cut
            while (m := r.next_message()) is not NEED_DATA:
                out.append((m.csid, m.stream_id, m.type_id, m.timestamp, bytes(m.body), type(m.body).__name__))
    except RemoteProtocolError as exc:
        out.append((type(exc).__name__, str(exc)))
    return out, r.chunk_size, r.bytes_received, r.bytes_moved


messages = st.lists(st.tuples(
    st.sampled_from([2, 3, 4, 6, 63, 64, 300, 65599]),  # csid
    st.integers(0, 2**32 - 1),  # timestamp
    st.sampled_from([8, 9, 18, 20]),
    st.integers(0, 3),  # stream id
    st.binary(max_size=700),
), max_size=12)


@SETTINGS
@given(messages, st.sampled_from([128, 129, 1000, 4096]), st.booleans(), st.lists(st.integers(0, 9000), max_size=20))
def test_chunk_reader_twins_agree_on_valid_streams(msgs, chunk_size, repeat_ext, cuts):
    w = ChunkWriter(128, repeat_extended_timestamp=repeat_ext)
    data = w.write(2, 0, 1, 0, chunk_size.to_bytes(4, "big"))
    w.chunk_size = chunk_size
    for m in msgs:
        data += w.write(*m)
    cuts = [c % (len(data) + 1) for c in cuts]
    ref = run_reader(REFERENCE["ChunkReader"], data, cuts)
    assert ref == run_reader(compiled.ChunkReader, data, cuts)
    assert _contents(ref) == _contents(run_reader(REFERENCE["ChunkReader"], data, []))  # splits change nothing
    assert len(ref[0]) == len(msgs) + 1


def _contents(result):
    """The messages alone: whether a body is a view and how many bytes moved depend on the reads."""
    out, chunk_size, received, _ = result
    return [m[:5] for m in out], chunk_size, received


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 700_000), st.sampled_from([8, 9])), min_size=1, max_size=5),
       st.sampled_from([65536, 300_000, 0xFFFFFF]), st.lists(st.integers(0, 2_000_000), max_size=30))
def test_chunk_reader_twins_agree_on_big_chunks(sizes, chunk_size, cuts):
    """Chunks that outgrow a receive block, read in arbitrary pieces: same messages, same body
    kinds (view or copy), same bytes moved between blocks."""
    w = ChunkWriter(128)
    data = w.write(2, 0, 1, 0, chunk_size.to_bytes(4, "big"))
    w.chunk_size = chunk_size
    for i, (size, type_id) in enumerate(sizes):
        data += w.write(4 + i % 2, i, type_id, 1, bytes([i]) * size)
    cuts = [c % (len(data) + 1) for c in cuts]
    ref = run_reader(REFERENCE["ChunkReader"], data, cuts)
    assert ref == run_reader(compiled.ChunkReader, data, cuts)
    assert len(ref[0]) == len(sizes) + 1


@SETTINGS
@given(st.binary(max_size=2000), st.lists(st.integers(0, 2000), max_size=10))
def test_chunk_reader_twins_agree_on_garbage(data, cuts):
    cuts = [c % (len(data) + 1) for c in cuts]
    assert run_reader(REFERENCE["ChunkReader"], data, cuts) == run_reader(compiled.ChunkReader, data, cuts)


amf_values = st.recursive(
    st.none() | st.just(UNDEFINED) | st.booleans() | st.floats(allow_nan=False) | st.text(max_size=30)
    | st.builds(AmfDate, st.floats(allow_nan=False), st.integers(-720, 720)),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(min_size=1, max_size=8), children, max_size=4)
    | st.dictionaries(st.text(min_size=1, max_size=8), children, max_size=4).map(EcmaArray),
    max_leaves=20,
)


@SETTINGS
@given(st.lists(amf_values, max_size=5))
def test_amf0_twins_round_trip_identically(values):
    data = amf0_encode(*values)
    ref = REFERENCE["amf0_decode"](data)
    assert ref == compiled.amf0_decode(data) == values
    assert [type(v) for v in ref] == [type(v) for v in compiled.amf0_decode(data)]


@SETTINGS
@given(st.binary(max_size=300))
def test_amf0_twins_agree_on_garbage(data):
    assert outcome(REFERENCE["amf0_decode"], data) == outcome(compiled.amf0_decode, data)


@SETTINGS
@given(st.binary(max_size=300), st.sampled_from([1, 2, 3, 4]))
def test_nal_twins_agree(data, length_size):
    ref = outcome(REFERENCE["split_length_prefixed"], data, length_size)
    com = outcome(compiled.split_length_prefixed, data, length_size)
    if ref[0] == "ok":
        ref, com = [bytes(u) for u in ref[1]], [bytes(u) for u in com[1]]
    assert ref == com
    assert REFERENCE["find_annexb_units"](data) == compiled.find_annexb_units(data)
    assert REFERENCE["unescape_rbsp"](data) == compiled.unescape_rbsp(data)


@SETTINGS
@given(st.binary(max_size=64))
def test_flv_tag_twins_agree(data):
    for name in ("parse_video_tag", "parse_audio_tag"):
        assert outcome(REFERENCE[name], data) == outcome(getattr(compiled, name), data)


@SETTINGS
@given(st.binary(max_size=40), st.lists(st.sampled_from(["bits", "ue", "se", "skip"]), max_size=30),
       st.integers(0, 33))
def test_bit_reader_twins_agree(data, ops, n):
    def run(cls):
        r = cls(data)
        out = []
        try:
            for op in ops:
                if op == "bits":
                    out.append(r.read_bits(n))
                elif op == "ue":
                    out.append(r.read_ue())
                elif op == "se":
                    out.append(r.read_se())
                else:
                    r.skip_bits(n)
                out.append(r.bits_left)
        except RemoteProtocolError as exc:
            out.append(str(exc))
        return out

    assert run(REFERENCE["BitReader"]) == run(compiled.BitReader)


@SETTINGS
@given(st.binary(max_size=64))
def test_flv_multitrack_twins_agree(data):
    for name in ("parse_video_tracks", "parse_audio_tracks"):
        assert outcome(REFERENCE[name], data) == outcome(getattr(compiled, name), data)


def _multitrack_body(kind: str, mt_type: int, packet_type: int, tracks: list[tuple[str, int, bytes]], cut: int) -> bytes:
    """An E-RTMP multitrack video (0x96) or audio (0x95) message, cut at ``cut`` bytes."""
    first = 0x96 if kind == "video" else 0x95
    body = bytes((first, (mt_type << 4) | packet_type))
    if mt_type != 2:
        body += tracks[0][0].encode("latin-1")
    for fourcc, track_id, payload in tracks:
        if mt_type == 2:
            body += fourcc.encode("latin-1")
        body += bytes((track_id,))
        if mt_type != 0:
            body += len(payload).to_bytes(3, "big")
        body += payload
        if mt_type == 0:
            break
    return body[:cut] if cut else body


@SETTINGS
@given(st.sampled_from(["video", "audio"]), st.integers(0, 3), st.sampled_from([0, 1, 2, 3, 4, 5]),
       st.lists(st.tuples(st.sampled_from(["avc1", "hvc1", "av01", "Opus", "mp4a"]), st.integers(0, 255),
                          st.binary(max_size=12)), min_size=1, max_size=5),
       st.integers(0, 80))
def test_flv_multitrack_twins_agree_on_structured_messages(kind, mt_type, packet_type, tracks, cut):
    body = _multitrack_body(kind, mt_type, packet_type, tracks, cut)
    name = f"parse_{kind}_tracks"
    ref = outcome(REFERENCE[name], body)
    assert ref == outcome(getattr(compiled, name), body)
    if ref[0] == "ok" and not cut and mt_type in (1, 2):
        assert [t.track_id for t in ref[1]] == [t[1] for t in tracks]  # every track, in order
        assert outcome(REFERENCE[f"parse_{kind}_tag"], body)[1] == ref[1][0]


def _obu(obu_type: int, payload: bytes, extension: bool, sized: bool, size_bytes: int) -> bytes:
    header = bytes(((obu_type << 3) | (0x04 if extension else 0) | (0x02 if sized else 0),))
    if extension:
        header += b"\x08"
    if sized:
        n = len(payload)
        leb = bytearray()
        for i in range(size_bytes):
            leb.append((n & 0x7F) | (0x80 if i < size_bytes - 1 else 0))
            n >>= 7
        header += bytes(leb)
    return header + payload


@SETTINGS
@given(st.lists(st.tuples(st.integers(0, 15), st.binary(max_size=20), st.booleans(), st.integers(1, 9)), max_size=6),
       st.booleans(), st.integers(0, 200))
def test_obu_twins_agree(obus, last_unsized, cut):
    data = b"".join(_obu(t, p, ext, not (last_unsized and i == len(obus) - 1), sb)
                    for i, (t, p, ext, sb) in enumerate(obus))
    data = data[: cut] if cut < len(data) else data
    ref = outcome(REFERENCE["split_obus"], data)
    assert ref == outcome(compiled.split_obus, data)
    assert ref == outcome(compiled.split_obus, memoryview(data))
    if ref[0] == "ok":
        for _, start, payload, end in ref[1]:
            assert start < payload <= end <= len(data)


@SETTINGS
@given(st.binary(max_size=200))
def test_obu_twins_agree_on_garbage(data):
    assert outcome(REFERENCE["split_obus"], data) == outcome(compiled.split_obus, data)


# FLV tag header starts: legacy and E-RTMP, coded frames and not, AVC/HEVC/AV1/AAC/Opus/other,
# multitrack and ModEx, truncated or not; the rest of each body is random.
_TAG_STARTS = [
    b"\x17\x01", b"\x27\x01", b"\x17\x00", b"\x1c\x01", b"\x2c\x01", b"\x1d\x01", b"\x12", b"\x57\x01",
    b"\x91avc1", b"\x92hvc1", b"\x93avc1", b"\xa1avc1", b"\x91av01", b"\x90avc1", b"\x96\x01avc1\x00",
    b"\x97\x00", b"\xd1avc1",
    b"\xaf\x01", b"\xaf\x00", b"\x2f\x01", b"\x91mp4a", b"\x91Opus", b"\x90Opus", b"\x95\x01Opus\x00", b"\x91fLaC",
    b"\x97\x00\x00",
]
media_messages = st.lists(st.tuples(
    st.sampled_from([4, 6, 64]),  # csid
    st.integers(0, 2**32 - 1),
    st.sampled_from([8, 9, 9, 18, 20]),
    st.integers(0, 2),
    st.tuples(st.sampled_from(_TAG_STARTS), st.binary(max_size=600), st.integers(0, 12)),
), max_size=10)


def media_stream(msgs, chunk_size: int, garbage: bytes) -> bytes:
    """A publisher's chunk stream of ``media_messages`` (each body cut short by its third
    number), after a Set Chunk Size, with ``garbage`` at the end."""
    w = ChunkWriter(128)
    data = w.write(2, 0, 1, 0, chunk_size.to_bytes(4, "big"))
    w.chunk_size = chunk_size
    for csid, ts, type_id, sid, (start, rest, cut) in msgs:
        body = (start + rest)[: len(start) + len(rest) - cut] if cut < len(start) + len(rest) else start[:1]
        data += w.write(csid, ts, type_id, sid, body)
    return data + garbage


def run_batches(cls, data: bytes, cuts: list[int]):
    """read_messages after each piece: the tuples (bodies as bytes, and whether each is a view)."""
    r = cls()
    out = []
    pos = 0
    try:
        for cut in sorted(set(cuts)) + [len(data)]:
            r.receive_data(data[pos:cut])
            pos = cut
            batch = r.read_messages()
            out.append([(*m[:4], bytes(m[4]), type(m[4]).__name__, *m[5:]) for m in batch])
    except RemoteProtocolError as exc:
        out.append((type(exc).__name__, str(exc)))
    return out, r.chunk_size, r.bytes_received, r.bytes_moved


@SETTINGS
@given(media_messages, st.sampled_from([128, 300, 4096]), st.lists(st.integers(0, 9000), max_size=20), st.binary(max_size=40))
def test_read_messages_twins_agree_on_media_streams(msgs, chunk_size, cuts, garbage):
    """Both twins of read_messages give the same batches, whatever the reads; every FLV header
    they read is the one parse_*_tag reads; split points change only how the messages are batched.
    Trailing garbage: the messages before it are returned, the error comes with the next call."""
    data = media_stream(msgs, chunk_size, garbage)
    cuts = [c % (len(data) + 1) for c in cuts]
    ref = run_batches(REFERENCE["ChunkReader"], data, cuts)
    assert ref == run_batches(compiled.ChunkReader, data, cuts)
    whole = [m for batch in run_batches(REFERENCE["ChunkReader"], data, [])[0] if isinstance(batch, list) for m in batch]
    assert [m[:5] + m[6:] for batch in ref[0] if isinstance(batch, list) for m in batch] == [m[:5] + m[6:] for m in whole]
    # a header read is split off the body: together they are the message next_message returns
    assert [m[:4] + ((m[9] or b"") + m[4],) for m in whole] == [
        m[:5] for m in run_reader(REFERENCE["ChunkReader"], data, [])[0] if len(m) == 6]
    for csid, sid, type_id, ts, payload, kind, codec, frame_type, cts, header in whole:
        if codec is None:
            assert header is None
            continue
        body = header + payload
        tag = (REFERENCE["parse_video_tag"] if type_id == 9 else REFERENCE["parse_audio_tag"])(body)
        assert (tag.codec, tag.packet_type, tag.track_id, tag.payload_end) == (codec, 1, 0, len(body))
        assert (getattr(tag, "frame_type", 0), getattr(tag, "cts", 0), tag.payload_offset) == (frame_type, cts, len(header))


def test_read_messages_reads_the_headers_ffmpeg_sends():
    w = ChunkWriter(4096)
    bodies = [b"\x17\x01\x00\x00\x21" + bytes(20), b"\x27\x01\xff\xff\xfe" + bytes(20), b"\xaf\x01" + bytes(9),
              b"\x17\x00\x00\x00\x00" + bytes(9), b"\x02\x00\x0aonMetaData"]
    data = b"".join(w.write(6, i, 9 if b[0] & 0x0F == 7 else 8 if b[0] == 0xAF else 18, 1, b) for i, b in enumerate(bodies))
    for cls in (REFERENCE["ChunkReader"], compiled.ChunkReader):
        reader = cls()
        reader.receive_data(ChunkWriter(128).write(2, 0, 1, 0, (4096).to_bytes(4, "big")) + data)
        got = [(bytes(m[4]), *m[5:]) for m in reader.read_messages()[1:]]
        assert got == [(bytes(20), "avc1", 1, 0x21, b"\x17\x01\x00\x00\x21"),
                       (bytes(20), "avc1", 2, -2, b"\x27\x01\xff\xff\xfe"), (bytes(9), "mp4a", 0, 0, b"\xaf\x01"),
                       (bodies[3], None, 0, 0, None), (bodies[4], None, 0, 0, None)]


@SETTINGS
@given(st.binary(max_size=300), st.integers(0, 20), st.sampled_from([1, 2, 3, 4]), st.booleans())
def test_access_unit_type_twins_agree_with_split_length_prefixed(data, start, length_size, hevc):
    ref = outcome(REFERENCE["access_unit_type"], data, start, length_size, hevc)
    assert ref == outcome(compiled.access_unit_type, data, start, length_size, hevc)
    split = outcome(REFERENCE["split_length_prefixed"], data[start:], length_size)
    if split[0] != "ok":
        assert ref == split
        return
    units = split[1]
    if hevc:
        rap = any(len(u) >= 2 and 16 <= (u[0] >> 1) & 0x3F <= 23 for u in units)
    else:
        rap = any(u[0] & 0x1F == 5 for u in units)
    assert ref == ("ok", 0 if not units else 2 if rap else 1)


def run_dispatch(cls, data: bytes, cuts: list[int], sink_ids: set[int], max_reads: int):
    """The shared reader's fast path on a real socket: each piece is sent, then ``recv_from`` and
    ``dispatch`` until it stops; what went to a sink, what came back, errors, in order."""
    a, b = socket.socketpair()
    b.setblocking(False)
    r = cls()
    out = []
    sinks = {sid: (lambda *m, sid=sid: out.append(("sink", sid, *m[:2], bytes(m[2]), *m[3:])))
             for sid in sink_ids}
    pos = 0
    try:
        with a, b:
            for cut in sorted(set(cuts)) + [len(data)]:
                if cut > pos:
                    a.sendall(data[pos:cut])
                pos = cut
                got = r.recv_from(b.fileno(), max_reads)
                out.append(("read", got))
                while (m := r.dispatch(sinks)) is not None:
                    out.append(("rest", *m[:4], bytes(m[4]), *m[5:]))
            a.shutdown(socket.SHUT_WR)
            out.append(("read", r.recv_from(b.fileno(), max_reads)))
    except RemoteProtocolError as exc:
        out.append((type(exc).__name__, str(exc)))
    return out, r.bytes_received


@SETTINGS
@given(media_messages, st.sampled_from([128, 300, 4096]), st.lists(st.integers(0, 9000), max_size=20),
       st.binary(max_size=40), st.sets(st.integers(0, 2)), st.sampled_from([1, 8]))
def test_recv_from_and_dispatch_twins_agree(msgs, chunk_size, cuts, garbage, sink_ids, max_reads):
    """Both twins of the fast path agree, whatever the reads; and every message reaches its sink
    or the caller exactly once, in the order read_messages gives them (a command between two
    frames is handed back before the frame after it goes to its sink)."""
    data = media_stream(msgs, chunk_size, garbage)
    cuts = [c % (len(data) + 1) for c in cuts]
    ref = run_dispatch(REFERENCE["ChunkReader"], data, cuts, sink_ids, max_reads)
    assert ref == run_dispatch(compiled.ChunkReader, data, cuts, sink_ids, max_reads)
    events, received = ref
    assert received == len(data) or events[-1][0] != "read"  # everything read, unless an error stopped it
    if events[-1][0] == "read":
        assert events[-1][1] == 0  # the peer's close, once everything before it was read
    handed = [e for e in events if e[0] in ("sink", "rest")]
    whole = [m for batch in run_batches(REFERENCE["ChunkReader"], data, [])[0] if isinstance(batch, list) for m in batch]
    assert len(handed) == len(whole)
    for e, (csid, sid, type_id, ts, body, _kind, codec, frame_type, cts, header) in zip(handed, whole):
        if e[0] == "sink":  # a media message whose header was split off, of a stream with a sink
            assert codec is not None and sid in sink_ids
            assert e[1:] == (sid, type_id, ts, body, codec, frame_type, cts, header)
        else:
            assert codec is None or sid not in sink_ids
            assert e[1:] == (csid, sid, type_id, ts, body, codec, frame_type, cts, header)
