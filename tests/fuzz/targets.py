"""Fuzz targets: every parser that takes bytes from a peer, one function of ``data: bytes`` each.

A target returns normally when the parser accepted the bytes or refused them with
RemoteProtocolError (the one error the I/O shells catch: close that peer, nothing else). Anything
else escaping is a crash. Where a parser has a compiled twin (rtmpq.codec), the target runs both
and asserts they give the same result or the same error, whatever backend this process selected.
Stream parsers are fed the same bytes cut at points derived from the input, and must give the same
result as one whole feed.

Used by tests/fuzz/run.py (atheris, `make fuzz`) and tests/test_fuzz.py (a few seconds each).
"""

import asyncio
import math
import random

from rtmpq.codec import NEED_DATA, REFERENCE
from rtmpq.errors import RemoteProtocolError

try:  # the twins are compared when the extension is built (CI requires it)
    import rtmpq._speedups as COMPILED
except ImportError:  # pragma: no cover - pure-Python-only install
    COMPILED = None


def _cuts(data: bytes, payload_len: int) -> list[int]:
    """Split points for a payload, drawn from the input's first bytes (so a crash file replays)."""
    rng = random.Random(data[:8])
    return sorted(rng.randrange(payload_len + 1) for _ in range(rng.randrange(8)))


def _same(a, b) -> bool:
    """Equality that treats NaN as equal to NaN (AMF numbers), recursively."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return type(a) is type(b) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    fields = getattr(type(a), "__dataclass_fields__", None)
    if fields is not None and type(a) is type(b):  # e.g. AmfDate(ms=nan)
        return all(_same(getattr(a, f), getattr(b, f)) for f in fields)
    return type(a) is type(b) and a == b


def _outcome(fn, *args):
    """("ok", result) or (error class name, message): what a caller of either twin observes."""
    try:
        return ("ok", fn(*args))
    except RemoteProtocolError as exc:
        return (type(exc).__name__, str(exc))


def _twins(name: str, *args, normalize=lambda r: r):
    ref = _outcome(REFERENCE[name], *args)
    if ref[0] == "ok":
        ref = ("ok", normalize(ref[1]))
    if COMPILED is not None:
        com = _outcome(getattr(COMPILED, name), *args)
        if com[0] == "ok":
            com = ("ok", normalize(com[1]))
        assert _same(ref, com), f"{name} twins differ: {ref!r} != {com!r}"
    return ref


# --- RTMP ------------------------------------------------------------------------------------

def _read_chunks(cls, payload: bytes, cuts: list[int]):
    r = cls()
    out = []
    pos = 0
    try:
        for cut in cuts + [len(payload)]:
            r.receive_data(payload[pos:cut])
            pos = cut
            while (m := r.next_message()) is not NEED_DATA:
                out.append((m.csid, m.stream_id, m.type_id, m.timestamp, bytes(m.body)))
    except RemoteProtocolError as exc:  # reading stops at the error: bytes_received depends on the cuts
        out.append((type(exc).__name__, str(exc)))
        return out, r.chunk_size, None
    return out, r.chunk_size, r.bytes_received


def _read_batches(cls, payload: bytes, cuts: list[int]):
    """read_messages after each piece (until it returns nothing or raises)."""
    r = cls()
    out = []
    pos = 0
    try:
        for cut in cuts + [len(payload)]:
            r.receive_data(payload[pos:cut])
            pos = cut
            while batch := r.read_messages():
                # a header read is split off the body: joined again, the message next_message gives
                out += [(*m[:4], (m[8] or b"") + bytes(m[4]), *m[5:]) for m in batch]
    except RemoteProtocolError as exc:
        out.append((type(exc).__name__, str(exc)))
        return out, r.chunk_size, None
    return out, r.chunk_size, r.bytes_received


def chunk(data: bytes) -> None:
    """RTMP chunk reassembly, cut at random points: both twins, and the same as one whole read;
    read_messages (both twins) gives the same messages as next_message."""
    payload = data[8:]
    cuts = _cuts(data, len(payload))
    ref = _read_chunks(REFERENCE["ChunkReader"], payload, cuts)
    if COMPILED is not None:
        assert ref == _read_chunks(COMPILED.ChunkReader, payload, cuts), "ChunkReader twins differ"
    whole = _read_chunks(REFERENCE["ChunkReader"], payload, [])
    assert ref == whole, "ChunkReader result depends on how the bytes were cut"
    batches = _read_batches(REFERENCE["ChunkReader"], payload, cuts)
    if COMPILED is not None:
        assert batches == _read_batches(COMPILED.ChunkReader, payload, cuts), "read_messages twins differ"
    assert [m[:5] if len(m) > 2 else m for m in batches[0]] == ref[0], "read_messages differs from next_message"


def handshake(data: bytes) -> None:
    """The server side of the RTMP handshake, then the leftover bytes, cut at random points."""
    from rtmpq.rtmp.handshake import HANDSHAKE_SIZE, ServerHandshake

    payload = data[8:]
    hs = ServerHandshake(now_ms=1)
    leftover = b""
    pos = 0
    try:
        for cut in _cuts(data, len(payload)) + [len(payload)]:
            leftover += hs.receive_data(payload[pos:cut])
            pos = cut
    except RemoteProtocolError:
        return
    out = hs.data_to_send()
    if len(payload) >= 1 + HANDSHAKE_SIZE:
        assert len(out) == 1 + 2 * HANDSHAKE_SIZE
    if len(payload) >= 1 + 2 * HANDSHAKE_SIZE:
        assert hs.done and leftover == payload[1 + 2 * HANDSHAKE_SIZE:]
    else:
        assert not hs.done and leftover == b""


def session(data: bytes) -> None:
    """A whole RTMP server session (handshake skipped: a valid C0C1C2 is prepended) fed garbage;
    on odd first bytes a server that asks publishers to reconnect (capsEx Reconnect both ways),
    which asks a client whose connect said it can as soon as it has."""
    from rtmpq.rtmp.handshake import HANDSHAKE_SIZE
    from rtmpq.rtmp.session import RtmpServerSession

    s = RtmpServerSession(reconnect=bool(data[:1]) and data[0] & 1 == 1)
    payload = b"\x03" + bytes(HANDSHAKE_SIZE) + bytes(HANDSHAKE_SIZE) + data[8:]
    pos = 0
    asked = False
    try:
        for cut in _cuts(data, len(payload)) + [len(payload)]:
            s.receive_data(payload[pos:cut])
            pos = cut
            while s.next_event() is not NEED_DATA:
                pass
            if s.reconnect and s.can_reconnect and not asked:  # what follows is taken as before
                s.request_reconnect("fuzz: please reconnect", "rtmp://127.0.0.1/live")
                asked = True
    except RemoteProtocolError:
        return
    s.data_to_send()


def amf0(data: bytes) -> None:
    """AMF0 decoding: both twins; what decodes re-encodes to something that decodes the same."""
    from rtmpq.codec.amf0 import amf0_encode

    ref = _twins("amf0_decode", data)
    if ref[0] == "ok":
        try:
            again = REFERENCE["amf0_decode"](amf0_encode(*ref[1]))
        except (RemoteProtocolError, ValueError):  # e.g. nesting our encoder refuses
            return
        assert _same(again, ref[1]), "AMF0 round trip changed the values"


def flvtag(data: bytes) -> None:
    """FLV video/audio tag headers, legacy and E-RTMP (ExHeader, multitrack): both twins."""
    for name in ("parse_video_tag", "parse_audio_tag", "parse_video_tracks", "parse_audio_tracks"):
        _twins(name, data, normalize=_tag_tuple)


def _tag_tuple(result):
    items = result if isinstance(result, list) else [result]
    return [tuple((k, bytes(v) if isinstance(v, memoryview) else v) for k, v in sorted(vars(t).items()))
            if hasattr(t, "__dict__") else tuple(
                (k, bytes(getattr(t, k)) if isinstance(getattr(t, k), memoryview) else getattr(t, k))
                for k in t.__slots__) for t in items]


def demux_input(messages) -> bytes:
    """The ``demux`` target's input for media messages ``(type_id, timestamp, body)``: a type byte
    (8 audio, 9 video, else data), the 32-bit timestamp and a 16-bit length, then the body."""
    return b"".join(bytes([t]) + (ts & 0xFFFFFFFF).to_bytes(4, "big") + len(b[:0xFFFF]).to_bytes(2, "big")
                    + b[:0xFFFF] for t, ts, b in messages)


def _media_messages(data: bytes):
    """(end offset, type_id, timestamp, body) of each message of a ``demux_input``."""
    pos = 0
    while pos + 7 <= len(data):
        end = pos + 7 + int.from_bytes(data[pos + 5:pos + 7], "big")
        yield end, {8: 8, 9: 9}.get(data[pos], 18), int.from_bytes(data[pos + 1:pos + 5], "big"), data[pos + 7:end]
        pos = end


def _demuxed(items) -> list:
    return [("frame", f.track, f.group, f.index, f.dts, f.pts, f.keyframe, bytes(f.payload))
            if hasattr(f, "payload") else ("catalog", f) for f in items]


def demux(data: bytes) -> None:
    """A publish's media messages into the demuxer, both ways the ingest feeds it: whole FLV
    bodies (``message``, the session's path) and, as the chunk reader's fast path hands them
    over, with the FLV header read and split off (``_media_header``, then ``media``, which inlines
    the common case). Both must give the same frames and catalogs after every message, or the
    same refusal; only RemoteProtocolError may escape (the publisher is closed)."""
    from rtmpq.codec.chunk import _media_header
    from rtmpq.media.demux import BroadcastDemuxer

    whole, split = BroadcastDemuxer("live/fuzz"), BroadcastDemuxer("live/fuzz")
    for pos, type_id, ts, body in _media_messages(data):
        a = _outcome(whole.message, type_id, ts, body)
        media = _media_header(type_id, body, len(body)) if type_id in (8, 9) else None
        if media is None:
            b = _outcome(split.message, type_id, ts, body)
        else:
            codec, frame_type, cts, offset = media
            b = _outcome(split.media, type_id, ts, body[offset:], codec, frame_type, cts, body[:offset])
        if a[0] == "ok":
            a = ("ok", _demuxed(a[1]))
        if b[0] == "ok":
            b = ("ok", _demuxed(b[1]))
        assert a == b, f"the demuxer's two paths differ at byte {pos}: {a!r} != {b!r}"
        if a[0] != "ok":
            return


def package(data: bytes) -> None:
    """What the demuxer makes of a publish (the ``demux`` target's input) into the LL-HLS packager
    as the edge feeds it: a video and an audio playlist with a shared clock, every catalog and
    frame as they come. Nothing may escape the packager (what it is given was accepted already);
    every playlist it serves is well-formed, and every part, segment and init segment it lists
    can be made."""
    from rtmpq.edge.llhls import LlHlsStream, MediaClock
    from rtmpq.media.catalog import Catalog
    from rtmpq.media.demux import BroadcastDemuxer

    demuxer = BroadcastDemuxer("live/fuzz")
    clock = MediaClock()
    streams = [LlHlsStream(tracks={"video"}, prefix="v-"), LlHlsStream(tracks={"audio"}, prefix="a-")]
    for stream in streams:
        stream.clock = clock
    received_ns = 1_700_000_000_000_000_000
    for _, type_id, ts, body in _media_messages(data):
        received_ns += 33_000_000
        try:
            items = demuxer.message(type_id, ts, body, received_ns)
        except RemoteProtocolError:
            break
        for item in items:
            for stream in streams:
                stream.set_catalog(item) if isinstance(item, Catalog) else stream.push(item)
        for stream in streams:
            _well_formed(stream)
    for stream in streams:
        stream.end()
        _well_formed(stream, whole=True)


def _well_formed(stream, whole: bool = False) -> None:
    """The playlist, and the newest segment's parts and init (every segment's once ``whole``)."""
    text = stream.media_playlist("?token=t")
    assert text.startswith("#EXTM3U\n") and text.endswith("\n"), text[:80]
    for line in text.splitlines():
        assert line.startswith("#") or line.endswith(".m4s?token=t"), line
    for segment in stream.segments if whole else list(stream.segments)[-1:]:
        # (a rung's gap parts, GAP=YES, have no media: players fetch none of them)
        assert all(len(part.data) > 0 or part.gap for part in segment.parts), "an empty part not marked a gap"
        if segment.complete:
            segment.data()
        assert stream.init_version_data(segment.init_version), "a segment whose init is gone"


def moq_package(data: bytes) -> None:
    """Frames a MoQ publisher sends (a transcoder, ``rtmpq pub``, any peer with a token: times,
    groups, key flags as it pleases) as the edge reads them (``moq/loc.py`` ``object_to_frame``),
    into the LL-HLS packager with a video (and a rung that follows it) and an audio playlist. The
    client hands on what a subscriber can be sent: Object IDs rising in each group, groups in any
    order (a group's tail after the next group). Nothing may escape the packager; every playlist
    is well-formed and every part, segment and init segment it lists can be made. Each object is
    9 bytes: track (video, video-360p, audio), group, LOC timestamp (3 bytes), dts offset, flags
    (bit 0 key, bit 1 a timescale of 90000, bit 2 a received time), payload length."""
    from rtmpq.edge.llhls import LlHlsStream, MediaClock
    from rtmpq.media.catalog import Catalog, TrackInfo
    from rtmpq.moq.loc import EXT_DTS_OFFSET, EXT_FLAGS, EXT_RECEIVED_US, EXT_TIMESCALE, EXT_TIMESTAMP, object_to_frame

    catalog = Catalog("live/fuzz").with_track(
        TrackInfo("video", "video", "avc1.64001e", b"\x01\x64\x00\x1eAAAA", 1000, 1280, 720, nal_length_size=4,
                  alt_group=1)).with_track(
        TrackInfo("video-360p", "video", "avc1.64001e", b"\x01\x64\x00\x1eBBBB", 1000, 640, 360,
                  nal_length_size=4, alt_group=1)).with_track(
        TrackInfo("audio", "audio", "mp4a.40.2", b"\x12\x10", 1000, sample_rate=44100, channels=2))
    clock = MediaClock()
    video = LlHlsStream(tracks={"video"}, prefix="v-")
    rung = LlHlsStream(tracks={"video-360p"}, prefix="r-")
    rung.follows = video
    audio = LlHlsStream(tracks={"audio"}, prefix="a-")
    streams = (video, rung, audio)
    for stream in streams:
        stream.clock = clock
        stream.set_catalog(catalog)
    names = ("video", "video-360p", "audio")
    next_id: dict[tuple[str, int], int] = {}
    pos = 0
    while pos + 9 <= len(data):
        track, group = names[data[pos] % 3], data[pos + 1]
        flags, size = data[pos + 7], data[pos + 8]
        ext = {EXT_TIMESTAMP: int.from_bytes(data[pos + 2:pos + 5], "big"), EXT_FLAGS: flags & 1}
        if data[pos + 5]:
            ext[EXT_DTS_OFFSET] = data[pos + 5]
        if flags & 2:
            ext[EXT_TIMESCALE] = 90000
        if flags & 4:
            ext[EXT_RECEIVED_US] = 1_700_000_000_000_000 + pos
        object_id = next_id.get((track, group), 0)
        next_id[(track, group)] = object_id + 1 + (flags >> 7)  # bit 7: an object skipped before it
        frame = object_to_frame(track, group, object_id, data[pos + 9:pos + 9 + size], ext, 1000)
        pos += 9 + size
        for stream in streams:
            stream.push(frame)
            _well_formed(stream)
    for stream in streams:
        stream.end()
        _well_formed(stream, whole=True)


# --- codec configs and bitstreams ---------------------------------------------------------------

def _units(result):
    return [bytes(u) for u in result]


def avc(data: bytes) -> None:
    """avcC, SPS, length-prefixed and Annex B NAL splitting, RBSP unescaping."""
    from rtmpq.media.avc import AvcConfig, is_idr, parse_sps

    for size in (1, 2, 3, 4):
        r = _twins("split_length_prefixed", data, size, normalize=_units)
        if r[0] == "ok":
            is_idr(r[1])
    _twins("find_annexb_units", data)
    _twins("unescape_rbsp", data)
    try:
        cfg = AvcConfig.parse(data)
        for sps in cfg.sps:
            try:
                parse_sps(sps)
            except RemoteProtocolError:
                pass
    except RemoteProtocolError:
        pass
    try:
        parse_sps(data)
    except RemoteProtocolError:
        pass


def hevc(data: bytes) -> None:
    """hvcC and the HEVC SPS."""
    from rtmpq.media.hevc import HevcConfig, parse_hevc_sps

    for fn in (HevcConfig.parse, parse_hevc_sps):
        try:
            fn(data)
        except RemoteProtocolError:
            pass


def av1(data: bytes) -> None:
    """av1C, the AV1 sequence header, OBU splitting (both twins), key temporal units."""
    from rtmpq.media.av1 import Av1Config, is_key_temporal_unit, parse_sequence_header

    _twins("split_obus", data)
    for fn in (Av1Config.parse, parse_sequence_header, is_key_temporal_unit):
        try:
            fn(data)
        except RemoteProtocolError:
            pass


def audio_config(data: bytes) -> None:
    """AAC AudioSpecificConfig, OpusHead, AC-3/E-AC-3 headers and boxes, vpcC."""
    from rtmpq.media.aac import AudioSpecificConfig
    from rtmpq.media.ac3 import Ac3Header, Eac3Header
    from rtmpq.media.opus import OpusHead
    from rtmpq.media.vp9 import Vp9Config

    for fn in (AudioSpecificConfig.parse, OpusHead.parse, Ac3Header.parse, Ac3Header.from_dac3,
               Eac3Header.parse, Eac3Header.from_dec3, Vp9Config.parse):
        try:
            fn(data)
        except RemoteProtocolError:
            pass


# --- MoQT ---------------------------------------------------------------------------------------

def moq_control(data: bytes) -> None:
    """MoQT control messages: decode; what decodes re-encodes and decodes to the same message."""
    from rtmpq.moq.wire import UnknownMessage, decode_control_message, encode_control_message

    try:
        result = decode_control_message(data)
    except RemoteProtocolError:
        return
    if result is NEED_DATA:
        return
    msg, end = result
    assert 0 < end <= len(data)
    if isinstance(msg, UnknownMessage):
        return
    again, end2 = decode_control_message(encode_control_message(msg))
    assert again == msg, f"control message round trip: {msg!r} -> {again!r}"


def _stream(cls, data: bytes) -> None:
    payload = data[8:]

    def run(cuts):
        p = cls()
        out = []
        pos = 0
        try:
            for cut in cuts + [len(payload)]:
                out += p.feed(payload[pos:cut])
                pos = cut
        except RemoteProtocolError as exc:
            return out, (type(exc).__name__, str(exc)), None
        assert p.buffered <= len(payload)
        return out, None, p.buffered

    split = run(_cuts(data, len(payload)))
    whole = run([])
    if split[1] is None and whole[1] is None:
        assert split == whole, f"{cls.__name__} result depends on how the bytes were cut"
    else:  # an error may surface at a different item, but it must surface either way
        assert (split[1] is None) == (whole[1] is None), f"{cls.__name__}: error only in one reading"
        n = min(len(split[0]), len(whole[0]))
        assert split[0][:n] == whole[0][:n]


def moq_subgroup(data: bytes) -> None:
    """A subgroup data stream (header, objects, extensions), cut at random points."""
    from rtmpq.moq.wire import SubgroupStreamParser

    _stream(SubgroupStreamParser, data)


def moq_fetch(data: bytes) -> None:
    """A fetch data stream (header, objects with serialization flags, end-of-range markers)."""
    from rtmpq.moq.wire import FetchStreamParser

    _stream(FetchStreamParser, data)


def moq_datagram(data: bytes) -> None:
    """OBJECT_DATAGRAMs, one per piece (a byte giving the piece's length, then the piece): each
    decodes or is refused; what decodes re-encodes and decodes to the same object; the objects
    go in order through DatagramOrder, which hands on an (alias, group, object) at most once."""
    from rtmpq.moq.datagram_order import DatagramOrder
    from rtmpq.moq.wire import decode_object_datagram, encode_object_datagram

    order = DatagramOrder("fuzz")
    handed = set()
    pos = 0
    while pos < len(data):
        piece = data[pos + 1:pos + 1 + data[pos]]
        pos += 1 + data[pos]
        try:
            d = decode_object_datagram(piece)
        except RemoteProtocolError:
            continue
        again = decode_object_datagram(encode_object_datagram(
            d.track_alias, d.group_id, d.object_id, d.payload, d.extensions, priority=d.priority,
            status=d.status, end_of_group=d.end_of_group))
        assert again == d, f"datagram round trip: {d!r} -> {again!r}"
        track = str(d.track_alias)
        if d.status:
            order.end_group(track, d.group_id, d.object_id)
        elif order.admit(track, d.group_id, d.object_id, d.end_of_group):
            key = (d.track_alias, d.group_id, d.object_id)
            assert key not in handed, f"datagram object {key} handed on twice"
            handed.add(key)


def moq_catalog(data: bytes) -> None:
    """The MSF catalog track as a subscriber reads it (JSON from the publisher): the pieces
    between NUL bytes are objects 0, 1, 2... of one group (an independent catalog, then deltas);
    a bad one is refused (CatalogTrack logs it), nothing escapes. Catalog.from_json (the relay's
    reading) refuses with RemoteProtocolError or a field's ValueError/TypeError."""
    from rtmpq.media.catalog import Catalog
    from rtmpq.moq.catalog_track import CatalogTrack

    track = CatalogTrack("fuzz")
    for object_id, payload in enumerate(data.split(b"\0")[:16]):
        track.read(0, object_id, payload)
    try:
        Catalog.from_json(data.split(b"\0")[0])
    except (ValueError, TypeError):  # RemoteProtocolError is a ValueError
        pass


# --- publish hook -------------------------------------------------------------------------------

def publish_hook(data: bytes) -> None:
    """[publish] hook_url's answer (the operator's service, over HTTP): the first byte picks the
    status, the rest is the body. It admits a broadcast name or refuses with AccessDenied."""
    from rtmpq.auth.access import BROADCAST_NAME_PATTERN, AccessDenied
    from rtmpq.auth.hook import hook_name

    status = (200, 201, 204, 299, 300, 403, 404, 500)[data[0] % 8] if data else 200
    try:
        name = hook_name(status, data[1:], "live")
    except AccessDenied:
        return
    assert 200 <= status <= 299 and BROADCAST_NAME_PATTERN.fullmatch(name), name


# --- HTTP ---------------------------------------------------------------------------------------

_loop = None
_edge = None


class _Writer:
    def __init__(self) -> None:
        self.out = bytearray()

    def write(self, b) -> None:
        self.out += b

    async def drain(self) -> None:
        pass

    def close(self) -> None:
        pass


class _Transport(asyncio.Transport):
    """What the HTTP listener writes, kept; no socket."""

    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()
        self.closed = False

    def get_extra_info(self, name, default=None):
        return ("127.0.0.1", 1) if name == "peername" else default

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def write(self, data) -> None:
        self.out += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def http_request(data: bytes) -> None:
    """The HTTP/1.1 listener (h11 under our shell) with the edge's routes, on bytes, no socket:
    every answer is a well-formed status line, nothing escapes."""
    global _loop, _edge
    from rtmpq.config import HttpConfig
    from rtmpq.edge.server import EdgeServer
    from rtmpq.http.server import _Connection

    if _loop is None:
        _loop = asyncio.new_event_loop()
        _edge = EdgeServer(lambda name: None, http=HttpConfig(host="127.0.0.1", port=0, request_timeout=1.0))

    async def run() -> bytes:
        conn = _Connection(_edge.http)
        transport = _Transport()
        conn.connection_made(transport)
        conn.data_received(data)
        conn.eof_received()
        for _ in range(20):  # let the handler answer what it parsed
            await asyncio.sleep(0)
        conn.connection_lost(None)
        return bytes(transport.out)

    out = _loop.run_until_complete(asyncio.wait_for(run(), 5))
    for reply in out.split(b"HTTP/1.1 ")[1:]:
        assert reply[:3].isdigit(), reply[:40]


TARGETS = {f.__name__: f for f in (chunk, handshake, session, amf0, flvtag, demux, package, moq_package, avc, hevc, av1, audio_config,
                                   moq_control, moq_subgroup, moq_fetch, moq_datagram, moq_catalog,
                                   publish_hook, http_request)}
