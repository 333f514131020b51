"""The compiled codecs and their pure-Python twins agree on random input, split at random points.

These tests load both twins directly (rtmpq._speedups must be built), whatever backend the rest
of the run uses.
"""

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
