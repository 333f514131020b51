"""Publishers shaped like OBS: audio and video interleaved on one chunk stream with delta headers
(and fmt 3 headers that start messages), and E-RTMP multitrack messages that carry several tracks
each (OBS Enhanced Broadcasting): AVC renditions, an AVC and an HEVC track, two AAC tracks."""

import asyncio
import logging
import subprocess
from dataclasses import replace

import pytest

from rtmpq.codec import amf0_encode
from rtmpq.media.catalog import Catalog
from rtmpq.media.demux import BroadcastDemuxer
from rtmpq.media.flv import read_flv_tags
from rtmpq.rtmp.handshake import HANDSHAKE_SIZE, make_client_c1
from rtmpq.rtmp.session import ConnectionFailed, RtmpServerSession

from .conftest import encode_test_flv, need, start_up_node
from .publishers import Packet, as_packets, collect_broadcast, probe_packets, pyav_packets, pyav_publish_args
from .rtmp_client import InMemoryPublisher, TcpPublisher

OBS_CSID = 4  # librtmp's RTMP_Write (OBS) sends every FLV tag on chunk stream 4
OBS_CHUNK_SIZE = 4096  # sent before connect
SET_DATA_FRAME = b"\x02\x00\x0d@setDataFrame"  # what an encoder puts before onMetaData


@pytest.fixture
async def node(tmp_path):
    n = await start_up_node(tmp_path)  # the ingest works the same on either QUIC backend
    yield n
    await n.close()


class ObsChunkWriter:
    """Chunks as OBS's librtmp writes them on one chunk stream: fmt 0 for its first message, then
    fmt 1 (delta, length, type) or fmt 2 (delta only, when length and type repeat), fmt 3 for
    continuations. A delta is the 32-bit difference from the previous message of the chunk
    stream, whatever its track: when audio and video interleave out of order it is "negative",
    a large unsigned number in the extended field, repeated in the continuation chunks.
    With ``reuse_headers``, a message whose delta, length and type all repeat the previous one's
    starts with a fmt 3 chunk (the whole header reused, delta included).
    Independent of rtmpq's ChunkWriter, which falls back to fmt 0 when time goes backwards."""

    def __init__(self, csid: int = OBS_CSID, chunk_size: int = OBS_CHUNK_SIZE, reuse_headers: bool = False) -> None:
        self.csid = csid
        self.chunk_size = chunk_size
        self.reuse_headers = reuse_headers
        self.last = None  # (timestamp, length, type id, delta) of the previous message
        self.fmts = {0: 0, 1: 0, 2: 0, 3: 0}  # the first chunk's fmt, per message
        self.backward_deltas = 0  # deltas >= 2**31: time went back
        self.extended_continuations = 0  # continuation chunks that repeated an extended field

    def write(self, timestamp: int, type_id: int, stream_id: int, body: bytes) -> bytes:
        timestamp &= 0xFFFFFFFF
        if self.last is None:
            fmt, field = 0, timestamp
        else:
            field = (timestamp - self.last[0]) & 0xFFFFFFFF
            fmt = 2 if self.last[1:3] == (len(body), type_id) else 1
            if fmt == 2 and self.reuse_headers and self.last[3] == field:
                fmt = 3
            self.backward_deltas += field >= 0x80000000
        self.fmts[fmt] += 1
        self.last = (timestamp, len(body), type_id, field)
        ext = field.to_bytes(4, "big") if field >= 0xFFFFFF else b""
        out = bytearray([fmt << 6 | self.csid])
        if fmt < 3:
            out += (0xFFFFFF if ext else field).to_bytes(3, "big")
        if fmt <= 1:
            out += len(body).to_bytes(3, "big") + bytes([type_id])
        if fmt == 0:
            out += stream_id.to_bytes(4, "little")
        out += ext + body[: self.chunk_size]
        for pos in range(self.chunk_size, len(body), self.chunk_size):
            out += bytes([3 << 6 | self.csid]) + ext + body[pos : pos + self.chunk_size]
            self.extended_continuations += bool(ext)
        return bytes(out)


def obs_order(tags: list, video_lag: int = 100) -> list:
    """The tags (per track in order) interleaved as an encoder whose video comes ``video_lag`` ms
    after its audio sends them: on one chunk stream, video deltas go back in time."""
    return sorted(tags, key=lambda tag: tag[1] + (video_lag if tag[0] == 9 else 0))


def media_tags(path) -> list:
    return [(t, ts, SET_DATA_FRAME + body if t == 18 else body) for t, ts, body in read_flv_tags(str(path))
            if t in (8, 9, 18)]


def expected(path, offset: int = 0) -> dict[str, list[Packet]]:
    """Per track, the FLV's packets (timestamps shifted by ``offset``)."""
    out = {}
    for p in probe_packets(str(path)):
        out.setdefault(p.track, []).append(Packet(p.track, p.dts + offset, p.pts + offset, p.keyframe, p.size))
    return out


def by_track(frames) -> dict[str, list[Packet]]:
    out = {}
    for p in as_packets(frames):
        out.setdefault(p.track, []).append(p)
    return out


def publish_in_memory(stream: bytes, piece: int = 1460):
    """An OBS-like publish (Set Chunk Size 4096 first, connect, publish) into a session whose
    media go to a demuxer through the ingest's media sink; ``stream`` (the media chunks) is fed
    in TCP-segment-sized pieces. Returns (session events, demuxer output)."""
    session = RtmpServerSession()
    client = InMemoryPublisher(session, chunk_size=OBS_CHUNK_SIZE)
    stream_id = client.connect_and_publish("obs")
    assert stream_id == 1  # what the stream was written for
    client.events()
    demuxer = BroadcastDemuxer("live/obs")
    out = []
    session.accept_publish(stream_id, lambda *msg: out.extend(demuxer.media(*msg)))
    for pos in range(0, len(stream), piece):
        session.receive_data(stream[pos : pos + piece])
    return client.events(), out


@pytest.mark.parametrize("offset", [
    0,
    0xFFFFFF - 1500,  # the first (fmt 0) timestamp and then every one is in the extended field
    2**32 - 1500,  # deltas that cross 2**32: modular arithmetic
])
def test_obs_interleaved_delta_headers_give_every_frame_at_its_time(source_flv, offset):
    """Audio and video on one chunk stream, fmt 1/2 deltas between them (backwards ones as large
    unsigned deltas in the extended field): the demuxer gets each track's frames with the
    FLV's dts and pts."""
    writer = ObsChunkWriter()
    stream = b"".join(writer.write(ts + offset, t, 1, body) for t, ts, body in obs_order(media_tags(source_flv)))
    # the stream is the shape it claims: every header form, time going back, extended continuations
    assert writer.fmts[0] == 1 and writer.fmts[1] > 100 and writer.fmts[2] > 0, writer.fmts
    assert writer.backward_deltas > 100 and writer.extended_continuations > 0  # the key frames
    events, out = publish_in_memory(stream)
    assert not [e for e in events if isinstance(e, ConnectionFailed)], events
    assert by_track(frames_of(out)) == expected(source_flv, offset)
    assert [t.name for t in latest_catalog(out).tracks] == ["video", "audio"]


async def obs_publish(port: int, key: str) -> TcpPublisher:
    """Over TCP as OBS starts: handshake, Set Chunk Size 4096, connect (OBS's flashVer),
    releaseStream, FCPublish, createStream, publish; waits for NetStream.Publish.Start."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    client = TcpPublisher(reader, writer)
    async with asyncio.timeout(10):
        writer.write(b"\x03" + make_client_c1(digest=False))
        s0s1s2 = await reader.readexactly(1 + 2 * HANDSHAKE_SIZE)
        writer.write(s0s1s2[1 : 1 + HANDSHAKE_SIZE])
        client.send(2, 0, 1, 0, OBS_CHUNK_SIZE.to_bytes(4, "big"))
        client.chunks.chunk_size = OBS_CHUNK_SIZE
        client.command(0, "connect", 1.0, {"app": "live", "type": "nonprivate", "tcUrl": "rtmp://127.0.0.1/live",
                                           "flashVer": "FMLE/3.0 (compatible; FMSc/1.0)"})
        client.command(0, "releaseStream", 2.0, None, key)
        client.command(0, "FCPublish", 3.0, None, key)
        client.command(0, "createStream", 4.0, None)
        client.stream_id = int((await client.wait_command(lambda v: v[0] == "_result" and v[1] == 4.0))[3])
        client.send(8, 0, 20, client.stream_id, amf0_encode("publish", 5.0, None, key, "live"))
        await client.wait_command(lambda v: v[0] == "onStatus" and v[3]["code"] == "NetStream.Publish.Start")
    return client


async def test_an_obs_shaped_publish_over_tcp_arrives_whole(node, source_flv):
    """The same over a real TCP connection into `rtmpq up` (shared reader, fast path): the
    broadcast carries every frame of the FLV with its dts and pts."""
    collector = asyncio.create_task(collect_broadcast(node.registry, "live/obs"))
    client = await obs_publish(node.rtmp.address[1], "obs")
    writer = ObsChunkWriter()
    for t, ts, body in obs_order(media_tags(source_flv)):
        client.writer.write(writer.write(ts, t, client.stream_id, body))
        await client.writer.drain()
    assert writer.backward_deltas > 100 and writer.fmts[2] > 0
    client.command(0, "deleteStream", 6.0, None, float(client.stream_id))
    _, frames = await collector
    client.close()
    assert by_track(frames) == expected(source_flv)


# -- E-RTMP ManyTracks: two AVC renditions in each video message ----------------------------------

@pytest.fixture(scope="module")
def small_flv(tmp_path_factory):
    """The source_flv encode at 160x120, video only: the same frame types and timestamps, other bytes."""
    return encode_test_flv(tmp_path_factory.mktemp("small") / "small.flv", "160x120", audio=False)


def many_tracks(first: bytes, second: bytes) -> bytes:
    """One E-RTMP video message carrying two legacy AVC tags as tracks 0 and 1 (ManyTracks, one
    FourCC)."""
    frame_type, packet_type = first[0] >> 4, first[1]
    assert (second[0] >> 4, second[1]) == (frame_type, packet_type)
    # SequenceStart carries the avcC; CodedFrames the SI24 composition time, then the NAL units
    data = [tag[5:] if packet_type == 0 else tag[2:] for tag in (first, second)]
    out = bytearray([0x80 | frame_type << 4 | 6, 1 << 4 | packet_type]) + b"avc1"
    for track_id, d in enumerate(data):
        out += bytes([track_id]) + len(d).to_bytes(3, "big") + d
    return bytes(out)


def two_rendition_tags(big, small) -> list:
    """The audio and metadata of ``big``; each video message carrying ``big``'s and ``small``'s frame."""
    tags = media_tags(big)
    small_video = [(ts, body) for t, ts, body in read_flv_tags(str(small)) if t == 9]
    video = [(i, ts, body) for i, (t, ts, body) in enumerate(tags) if t == 9]
    assert [ts for _, ts, _ in video] == [ts for ts, _ in small_video]  # the encodes line up
    for (i, ts, body), (_, small_body) in zip(video, small_video):
        tags[i] = (9, ts, many_tracks(body, small_body))
    return tags


async def test_many_tracks_messages_are_two_video_renditions(node, source_flv, small_flv):
    """Every video message holds track 0 (320x240) and track 1 (160x120): the catalog lists both,
    each with exactly its encode's frames."""
    collector = asyncio.create_task(collect_broadcast(node.registry, "live/ladder"))
    client = await obs_publish(node.rtmp.address[1], "ladder")
    writer = ObsChunkWriter()
    for t, ts, body in obs_order(two_rendition_tags(source_flv, small_flv)):
        client.writer.write(writer.write(ts, t, client.stream_id, body))
        await client.writer.drain()
    client.command(0, "deleteStream", 6.0, None, float(client.stream_id))
    catalogs, frames = await collector
    client.close()
    v0, v1 = catalogs[-1].track("video"), catalogs[-1].track("video-1")
    assert (v0.width, v0.height, v1.width, v1.height) == (320, 240, 160, 120)
    want = expected(source_flv)
    want["video-1"] = [replace(p, track="video-1") for p in expected(small_flv)["video"]]
    assert by_track(frames) == want


async def test_a_many_tracks_message_with_a_bad_second_track_closes_only_that_publish(node, source_flv, small_flv,
                                                                                        caplog):
    """A ManyTracks message whose second track's declared size runs past the message is refused
    whole, as a bad header of a single-track message is: the connection is closed with the
    reason logged, every frame of both tracks before it is carried, and nothing after it. A
    publish on the same node at the same time arrives whole."""
    caplog.set_level(logging.INFO)
    tags = two_rendition_tags(source_flv, small_flv)
    video = [i for i, (t, _, _) in enumerate(tags) if t == 9]
    bad = video[len(video) // 2]
    t, ts, body = tags[bad]
    size_at = 11 + int.from_bytes(body[7:10], "big")  # after the first track and the second's id
    declared = int.from_bytes(body[size_at : size_at + 3], "big") + 100  # past the end of the message
    tags[bad] = (t, ts, body[:size_at] + declared.to_bytes(3, "big") + body[size_at + 3 :])

    collectors = {key: asyncio.create_task(collect_broadcast(node.registry, f"live/{key}")) for key in ("bad", "good")}
    bad_client = await obs_publish(node.rtmp.address[1], "bad")
    good_client = await obs_publish(node.rtmp.address[1], "good")
    writers = {"bad": ObsChunkWriter(), "good": ObsChunkWriter()}
    good_tags = two_rendition_tags(source_flv, small_flv)
    for client, key, publish in ((bad_client, "bad", tags), (good_client, "good", good_tags)):
        for t, ts, body in publish:
            client.writer.write(writers[key].write(ts, t, client.stream_id, body))
    assert await bad_client.closed()
    good_client.command(0, "deleteStream", 6.0, None, float(good_client.stream_id))
    (_, bad_frames), (_, good_frames) = await asyncio.gather(*collectors.values())
    good_client.close()
    bad_client.close()

    peer = bad_client.local_address
    [reason] = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"{peer}: closing connection: ")]
    assert "multitrack track of" in reason and "past the end" in reason, reason
    # what came before the bad message, on both tracks (all of the audio sent before it), and nothing after
    sent_before = tags[:bad]
    want = expected(source_flv)
    want["video-1"] = [replace(p, track="video-1") for p in expected(small_flv)["video"]]
    n_video = sum(t == 9 and body[1] & 0x0F == 1 for t, _, body in sent_before)
    n_audio = sum(t == 8 and body[1] == 1 for t, _, body in sent_before)
    assert by_track(bad_frames) == {"video": want["video"][:n_video], "video-1": want["video-1"][:n_video],
                                    "audio": want["audio"][:n_audio]}
    assert by_track(good_frames) == want


def test_the_session_refuses_a_many_tracks_message_whose_second_track_is_malformed(source_flv, small_flv):
    """The session checks every track's header before it hands a message on, so a media sink (the
    recorder and demuxer) never sees a message the demuxer cannot read: the messages before it are
    handed on, it and what follows are not, and the connection fails with the reason."""
    tags = [tag for tag in two_rendition_tags(source_flv, small_flv) if tag[0] == 9][:10]
    t, ts, body = tags[5]
    tags[5] = (t, ts, body[:-1])  # the second track (the last) declares one byte more than it has
    session = RtmpServerSession()
    client = InMemoryPublisher(session, chunk_size=OBS_CHUNK_SIZE)
    stream_id = client.connect_and_publish("obs")
    client.events()
    handed_on = []
    session.accept_publish(stream_id, lambda type_id, ts, body, *header: handed_on.append((type_id, ts, bytes(body))))
    writer = ObsChunkWriter()
    session.receive_data(b"".join(writer.write(ts, t, stream_id, body) for t, ts, body in tags))
    assert handed_on == tags[:5]
    [failed] = [e for e in client.events() if isinstance(e, ConnectionFailed)]
    assert "multitrack track of" in failed.reason and "past the end" in failed.reason, failed.reason


def latest_catalog(out) -> Catalog:
    return [c for c in out if isinstance(c, Catalog)][-1]


def frames_of(out) -> list:
    return [f for f in out if not isinstance(f, Catalog)]


# -- E-RTMP multitrack audio: two AAC tracks (two languages) in each audio message ----------------

@pytest.fixture(scope="module")
def mono48_flv(tmp_path_factory):
    """A second AAC encode (48 kHz mono, another tone), audio only."""
    need("ffmpeg")
    path = tmp_path_factory.mktemp("mono48") / "mono48.flv"
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i",
                    "sine=frequency=660:sample_rate=48000", "-t", "9", "-c:a", "aac", "-b:a", "48k", "-ar", "48000",
                    "-ac", "1", "-f", "flv", str(path)], check=True)
    return path


def many_tracks_audio(first: bytes, second: bytes) -> bytes:
    """One E-RTMP audio message carrying two legacy AAC tags as tracks 0 and 1 (ManyTracks, mp4a)."""
    packet_type = first[1]
    assert first[0] >> 4 == second[0] >> 4 == 10 and second[1] == packet_type
    out = bytearray([9 << 4 | 5, 1 << 4 | packet_type]) + b"mp4a"  # ExHeader, Multitrack; ManyTracks
    for track_id, tag in enumerate((first, second)):
        out += bytes([track_id]) + len(tag[2:]).to_bytes(3, "big") + tag[2:]  # AudioSpecificConfig or a raw frame
    return bytes(out)


def two_language_tags(tags: list, second) -> list:
    """The tags, each audio message carrying its AAC frame (track 0) and ``second``'s frame of the
    same index (track 1): the message's timestamp is both frames' timestamp."""
    tags = list(tags)
    other = [body for t, _, body in read_flv_tags(str(second)) if t == 8]
    audio = [i for i, (t, _, _) in enumerate(tags) if t == 8]
    assert len(other) >= len(audio)
    for i, body in zip(audio, other):
        t, ts, first = tags[i]
        tags[i] = (t, ts, many_tracks_audio(first, body))
    return tags


def test_many_tracks_audio_messages_are_two_audio_tracks(source_flv, mono48_flv):
    """Every audio message holds track 0 (44.1 kHz stereo) and track 1 (48 kHz mono): the catalog
    lists ``audio`` and ``audio-1`` with their own sample rate and channels, and each gets exactly
    its encode's frames, at the message's time."""
    writer = ObsChunkWriter()
    tags = two_language_tags(media_tags(source_flv), mono48_flv)
    events, out = publish_in_memory(b"".join(writer.write(ts, t, 1, body) for t, ts, body in obs_order(tags)))
    assert not [e for e in events if isinstance(e, ConnectionFailed)], events
    catalog = latest_catalog(out)
    assert_two_languages(catalog)
    assert [t.name for t in catalog.tracks] == ["video", "audio", "audio-1"]
    assert by_track(frames_of(out)) == with_second_language(expected(source_flv), mono48_flv)


def assert_two_languages(catalog: Catalog) -> None:
    a0, a1 = catalog.track("audio"), catalog.track("audio-1")
    assert (a0.codec, a0.sample_rate, a0.channels) == ("mp4a.40.2", 44100, 2)
    assert (a1.codec, a1.sample_rate, a1.channels) == ("mp4a.40.2", 48000, 1)


def with_second_language(want: dict, second) -> dict:
    """``want`` and audio-1: ``second``'s frames at the times of track 0's of the same index."""
    other = expected(second)["audio"]
    return want | {"audio-1": [Packet("audio-1", p.dts, p.pts, q.keyframe, q.size)
                               for p, q in zip(want["audio"], other)]}


# -- E-RTMP ManyTracksManyCodecs: an AVC track 0 and an HEVC track 1 in each video message ---------

@pytest.fixture(scope="module")
def hevc_flv(tmp_path_factory):
    """8 s of HEVC at 160x120 from PyAV's FFmpeg (enhanced FLV), key frames every 60 frames as
    source_flv's."""
    path = tmp_path_factory.mktemp("hevc") / "hevc.flv"
    subprocess.run(pyav_publish_args("-", str(path), "libx265", "", seconds=8, size="160x120", gop=60), check=True)
    return path


def many_codecs(avc: bytes, hevc: bytes) -> bytes:
    """One E-RTMP video message carrying a legacy AVC tag as track 0 (avc1) and an enhanced HEVC
    tag as track 1 (hvc1), ManyTracksManyCodecs: each track names its FourCC."""
    frame_type, packet_type = avc[0] >> 4, avc[1]
    hevc_type = hevc[0] & 0x0F
    assert (hevc[0] >> 4) & 7 == frame_type and bytes(hevc[1:5]) == b"hvc1"
    assert hevc_type == packet_type or (hevc_type, packet_type) == (3, 1)
    avc_data = avc[5:] if packet_type == 0 else avc[2:]  # CodedFrames: SI24 composition time, NAL units
    hevc_data = b"\0\0\0" + hevc[5:] if hevc_type == 3 else hevc[5:]  # CodedFramesX: composition time 0
    out = bytearray([0x80 | frame_type << 4 | 6, 2 << 4 | packet_type])
    for track_id, (fourcc, data) in enumerate(((b"avc1", avc_data), (b"hvc1", hevc_data))):
        out += fourcc + bytes([track_id]) + len(data).to_bytes(3, "big") + data
    return bytes(out)


def avc_hevc_tags(tags: list, hevc) -> list:
    """The tags, each AVC sequence start or frame message also carrying ``hevc``'s of the same
    index (its metadata packet left out): the message's timestamp is both frames'."""
    tags = list(tags)
    hevc_tags = [body for t, _, body in read_flv_tags(str(hevc)) if t == 9 and body[0] & 0x0F in (0, 1, 3)]
    video = [i for i, (t, _, body) in enumerate(tags) if t == 9 and body[1] in (0, 1)]
    assert len(video) == len(hevc_tags)
    for i, body in zip(video, hevc_tags):
        t, ts, avc = tags[i]
        tags[i] = (t, ts, many_codecs(avc, body))
    return tags


def test_many_tracks_many_codecs_messages_are_an_avc_and_an_hevc_track(source_flv, hevc_flv):
    """Every video message holds an AVC track 0 (320x240) and an HEVC track 1 (160x120): each is
    in the catalog with its own codec and size, and gets exactly its encode's frames at the
    message's time (each with its own composition time)."""
    writer = ObsChunkWriter()
    tags = avc_hevc_tags(media_tags(source_flv), hevc_flv)
    events, out = publish_in_memory(b"".join(writer.write(ts, t, 1, body) for t, ts, body in obs_order(tags)))
    assert not [e for e in events if isinstance(e, ConnectionFailed)], events
    assert_avc_and_hevc(latest_catalog(out))
    assert by_track(frames_of(out)) == with_hevc_track(expected(source_flv), hevc_flv)


def assert_avc_and_hevc(catalog: Catalog) -> None:
    v0, v1 = catalog.track("video"), catalog.track("video-1")
    assert v0.codec.startswith("avc1.") and v1.codec.startswith("hvc1."), (v0.codec, v1.codec)
    assert (v0.width, v0.height, v1.width, v1.height) == (320, 240, 160, 120)


def with_hevc_track(want: dict, hevc_flv) -> dict:
    """``want`` and video-1: the HEVC frames at the times of track 0's of the same index, each
    with its own composition time."""
    [hevc] = pyav_packets(str(hevc_flv)).values()
    return want | {"video-1": [Packet("video-1", p.dts, p.dts + q.pts - q.dts, q.keyframe, q.size)
                               for p, q in zip(want["video"], hevc, strict=True)]}


async def test_many_tracks_audio_and_many_codecs_video_over_tcp(node, source_flv, mono48_flv, hevc_flv):
    """Both at once over TCP into `rtmpq up` (shared reader, fast path): two AAC tracks in every
    audio message, an AVC and an HEVC track in every video message; four tracks in the catalog,
    each with exactly its frames."""
    collector = asyncio.create_task(collect_broadcast(node.registry, "live/mt"))
    client = await obs_publish(node.rtmp.address[1], "mt")
    writer = ObsChunkWriter()
    tags = avc_hevc_tags(two_language_tags(media_tags(source_flv), mono48_flv), hevc_flv)
    for t, ts, body in obs_order(tags):
        client.writer.write(writer.write(ts, t, client.stream_id, body))
        await client.writer.drain()
    client.command(0, "deleteStream", 6.0, None, float(client.stream_id))
    catalogs, frames = await collector
    client.close()
    assert_two_languages(catalogs[-1])
    assert_avc_and_hevc(catalogs[-1])
    want = with_hevc_track(with_second_language(expected(source_flv), mono48_flv), hevc_flv)
    assert by_track(frames) == want


# -- fmt 3 starting a new message: the previous message's whole header, delta included -------------

@pytest.fixture(scope="module")
def ac3_flv(tmp_path_factory):
    """4 s of H.264 and AC-3 (48 kHz: every frame 1536 samples, 32 ms, and of one size) from
    PyAV's FFmpeg (enhanced FLV)."""
    path = tmp_path_factory.mktemp("ac3") / "ac3.flv"
    subprocess.run(pyav_publish_args("-", str(path), "libx264", "ac3", seconds=4), check=True)
    return path


@pytest.mark.parametrize("offset", [0, 0xFFFFFF - 1500, 2**32 - 1500])
def test_fmt3_headers_that_start_messages_repeat_the_previous_delta(ac3_flv, offset):
    """A publisher with audio on its own chunk stream: AC-3 frames of one size 32 ms apart, so
    after the first fmt 2 every audio message starts with a bare fmt 3 chunk (legal RTMP: the
    previous header again, its delta added once more). Every frame arrives at its time, also when
    the first (fmt 0) timestamp was extended and when time wraps at 2**32."""
    audio, video = ObsChunkWriter(csid=OBS_CSID, reuse_headers=True), ObsChunkWriter(csid=6, reuse_headers=True)
    stream = b"".join((audio if t == 8 else video).write(ts + offset, t, 1, body)
                      for t, ts, body in obs_order(media_tags(ac3_flv)))
    assert audio.fmts[3] > 100 and audio.fmts[0] == 1, audio.fmts  # the shape the test is about
    events, out = publish_in_memory(stream)
    assert not [e for e in events if isinstance(e, ConnectionFailed)], events
    assert latest_catalog(out).track("audio").codec == "ac-3"
    want = {p[0].track: [replace(q, dts=q.dts + offset, pts=q.pts + offset) for q in p]
            for p in pyav_packets(str(ac3_flv)).values()}
    assert by_track(frames_of(out)) == want
