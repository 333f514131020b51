"""Hostile inputs (specs/bad-inputs.md) close only the connection that sent them.

A real ffmpeg publish runs while raw TCP clients send bad bytes; each bad client is closed by the
server with the reason it logs (an exception escaping into asyncio closes a connection too, so
the closing alone proves nothing), and the good publish arrives frame-exact.
"""

import asyncio

import pytest

from rtmpq.codec import amf0_encode
from rtmpq.config import IngestConfig, PublishConfig
from rtmpq.media.broadcast import BroadcastRegistry
from rtmpq.rtmp.chunk_writer import ChunkWriter
from rtmpq.rtmp.handshake import HANDSHAKE_SIZE, make_client_c1
from rtmpq.rtmp.session import SessionLimits
from rtmpq.nodes.ingest import IngestNode

from rtmpq.media.broadcast import CatalogUpdate

from .conftest import need
from .rtmp_client import TcpPublisher
from .publishers import as_packets, collect_broadcast, ffmpeg_publish_args, probe_packets, run_process


def after_connect(*messages: tuple) -> bytes:
    """Handshake + connect + createStream, then the given raw messages."""
    w = ChunkWriter(128)
    out = b"\x03" + make_client_c1(digest=False) + bytes(HANDSHAKE_SIZE)
    out += w.write(3, 0, 20, 0, amf0_encode("connect", 1.0, {"app": "live"}))
    out += w.write(3, 0, 20, 0, amf0_encode("createStream", 2.0, None))
    for m in messages:
        if isinstance(m, bytes):
            out += m
        else:
            out += w.write(*m)
    return out


def deep_amf(depth: int) -> bytes:
    return amf0_encode("connect", 1.0) + b"\x03\x00\x01a" * depth  # objects nested in objects


def partial_messages(csids: int, mib_each: int) -> bytes:
    """Chunk size 1 MiB, then ``csids`` video messages of just under max_message_size, each left
    incomplete after ``mib_each`` chunks: what a connection holds in partial messages grows past
    max_partial_bytes (16 MiB) though no message breaks a limit of its own."""
    mib = 1 << 20
    out = [(2, 0, 1, 0, mib.to_bytes(4, "big"))]
    for csid in range(4, 4 + csids):
        out.append(bytes([csid]) + bytes(3) + (8 * mib - 1).to_bytes(3, "big") + b"\x09" + b"\x01\x00\x00\x00" + bytes(mib))
        out += [bytes([0xC0 | csid]) + bytes(mib)] * (mib_each - 1)
    return after_connect(*out)


HOSTILE = {
    # name: (bytes sent, the reason the server must log when it closes the connection)
    "bad version": (b"\x06" + bytes(HANDSHAKE_SIZE), "RTMP handshake: unsupported version byte 6"),
    "chunk size with the top bit": (after_connect((2, 0, 1, 0, (0x80000000).to_bytes(4, "big"))), "invalid chunk size 0x80000000"),
    "chunk size zero": (after_connect((2, 0, 1, 0, bytes(4))), "invalid chunk size 0x0"),
    "huge declared messages on many csids": (after_connect(
        # fmt 0 headers declaring 16 MiB video messages, each followed by one 128-byte chunk
        *[bytes([csid]) + bytes(3) + (0xFFFFFF).to_bytes(3, "big") + b"\x09" + b"\x01\x00\x00\x00" + bytes(128)
          for csid in range(4, 60)]), "max_message_size exceeded"),
    "messages just under the size limit on many csids": (after_connect(
        *[bytes([csid]) + bytes(3) + (8 * 1024 * 1024 - 1).to_bytes(3, "big") + b"\x09" + b"\x01\x00\x00\x00" + bytes(128)
          for csid in range(4, 60)]), "max_chunk_streams exceeded"),
    "amf nested 100k deep": (b"\x03" + make_client_c1(digest=False) + bytes(HANDSHAKE_SIZE)
        + ChunkWriter(128).write(3, 0, 20, 0, deep_amf(100_000)), "AMF0 nesting deeper than"),
    "fmt 3 on a csid never seen": (after_connect(bytes([0xC0 | 40]) + bytes(200)), "chunk of fmt 3 opens chunk stream 40"),
    "boolean stream name": (after_connect((8, 0, 20, 1, amf0_encode("publish", 3.0, None, True, "live"))), "publish: stream name is not a string"),
    "path traversal key": (after_connect((8, 0, 20, 1, amf0_encode("publish", 3.0, None, "../../etc/passwd", "live"))), "publish: invalid stream name"),
    "chunk size below the floor": (after_connect((2, 0, 1, 0, (1).to_bytes(4, "big"))), "chunk size 1 is below min_chunk_size 128"),
    # the length a message declared changes on the chunk that continues it (CVE-2016-10191)
    "message length changed mid-message": (after_connect(
        b"\x05" + bytes(3) + (1000).to_bytes(3, "big") + b"\x09" + b"\x01\x00\x00\x00" + bytes(128)
        + b"\x45" + bytes(3) + (2000).to_bytes(3, "big") + b"\x09" + bytes(128)), "fmt 1 header on chunk stream 5 while a message is incomplete"),
    "fmt 0 while a message is incomplete": (after_connect(
        b"\x05" + bytes(3) + (1000).to_bytes(3, "big") + b"\x09" + b"\x01\x00\x00\x00" + bytes(128)
        + b"\x05" + bytes(3) + (1000).to_bytes(3, "big") + b"\x09" + b"\x01\x00\x00\x00" + bytes(128)), "fmt 0 header on chunk stream 5 while a message is incomplete"),
    "bytes held in partial messages": (partial_messages(3, 7), "max_partial_bytes exceeded"),
    "many csids in the 3-byte form": (after_connect(
        *[b"\x01" + (csid - 64).to_bytes(2, "little") + bytes(3) + (256).to_bytes(3, "big") + b"\x09" + b"\x01\x00\x00\x00" + bytes(128)
          for csid in range(300, 340)]), "max_chunk_streams exceeded"),
    "amf string longer than the message": (b"\x03" + make_client_c1(digest=False) + bytes(HANDSHAKE_SIZE)
        + ChunkWriter(128).write(3, 0, 20, 0, b"\x02\x00\x07connect\x00" + bytes(8) + b"\x02\xff\xffabc"), "AMF0 truncated"),
    "amf array larger than the message": (b"\x03" + make_client_c1(digest=False) + bytes(HANDSHAKE_SIZE)
        + ChunkWriter(128).write(3, 0, 20, 0, amf0_encode("connect", 1.0) + b"\x0a\xff\xff\xff\xff\x05"), "AMF0 strict array of 4294967295 elements"),
    "amf with more values than the node cap": (b"\x03" + make_client_c1(digest=False) + bytes(HANDSHAKE_SIZE)
        + ChunkWriter(128).write(3, 0, 20, 0, amf0_encode("connect", 1.0) + b"\x0a" + (70_000).to_bytes(4, "big") + b"\x05" * 70_000), "AMF0 message holds more than"),
    "stream name far too long": (after_connect((8, 0, 20, 1, amf0_encode("publish", 3.0, None, "k" * 5000, "live"))), "publish: invalid stream name"),
    # a name no player can ask for (it resolves /live/../ away, and the edge refuses it)
    "dot-dot key": (after_connect((8, 0, 20, 1, amf0_encode("publish", 3.0, None, "..", "live"))), "publish: invalid stream name"),
    # says nothing at all: closed at the handshake deadline
    "silent client": (b"", "no successful connect within 1.5 s"),
    # connects (no key needed) and never publishes: it would hold one of MAX_RTMP_CONNECTIONS for good
    "connected client that never publishes": (after_connect(), "no publish within 1.5 s"),
}


async def send_and_wait_close(port: int, payload: bytes, timeout: float = 10.0, source: str | None = None) -> tuple[bool, str]:
    """Send bytes (from address ``source``); (whether the server closed the connection within the
    timeout, our address)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0) if source else None)
    host, local_port = writer.get_extra_info("sockname")[:2]
    try:
        writer.write(payload)
        await writer.drain()
        async with asyncio.timeout(timeout):
            while await reader.read(65536):
                pass
        return True, f"{host}:{local_port}"
    except (ConnectionResetError, BrokenPipeError):
        return True, f"{host}:{local_port}"
    except TimeoutError:
        return False, f"{host}:{local_port}"
    finally:
        writer.close()


def close_reason(caplog, peer: str) -> str | None:
    """The reason the server logged for closing the connection from ``peer``."""
    prefix = f"{peer}: closing connection: "
    for record in caplog.records:
        if record.getMessage().startswith(prefix):
            return record.getMessage()[len(prefix):]
    return None


async def dts_of(reader, count: int, timeout: float = 5.0) -> list[int]:
    """The dts of the next ``count`` frames a broadcast reader gives (catalog updates skipped)."""
    got = []
    async with asyncio.timeout(timeout):
        async for event in reader:
            if not isinstance(event, CatalogUpdate):
                got.append(event.dts)
                if len(got) == count:
                    break
    return got


@pytest.fixture
async def ingest(tmp_path):
    registry = BroadcastRegistry()
    limits = SessionLimits(handshake_timeout=1.5)
    server = IngestNode(registry, IngestConfig(host="127.0.0.1", port=0, limits=limits), PublishConfig(grace_period=0))
    await server.start()
    yield server
    await server.close()


async def test_hostile_clients_are_closed_with_a_logged_reason_while_a_real_publish_goes_on(ingest, tmp_path, caplog):
    need("ffmpeg")
    port = ingest.address[1]
    ref = str(tmp_path / "good.flv")
    collector = asyncio.create_task(collect_broadcast(ingest.registry, "live/good"))
    good = asyncio.create_task(run_process(ffmpeg_publish_args(f"rtmp://127.0.0.1:{port}/live/good", ref, seconds=3)))
    await ingest.registry.wait_for("live/good", 10)
    results = await asyncio.gather(*(send_and_wait_close(port, payload) for payload, _ in HOSTILE.values()))
    # each one closed, for its own reason (an exception escaping the session would close it too)
    got = {name: (closed, close_reason(caplog, peer)) for name, (closed, peer) in zip(HOSTILE, results, strict=True)}
    assert {name: (closed, reason and reason.startswith(HOSTILE[name][1])) for name, (closed, reason) in got.items()} \
        == {name: (True, True) for name in HOSTILE}, got
    assert not [r for r in caplog.records if r.name == "asyncio"], caplog.text
    bad_names = sum(reason.startswith(("publish: invalid stream name", "publish: stream name is not a string"))
                    for _, reason in HOSTILE.values())
    assert ingest.server.errors["bad_name"] == bad_names  # counted apart from protocol errors
    rc, output = await good
    assert rc == 0, output
    _, frames = await collector
    assert as_packets(frames) == probe_packets(ref)
    # ffmpeg's EOF may come a read window (rtmpq/rtmp/reader.py) after its deleteStream ended the publish
    async with asyncio.timeout(5):
        while ingest.server.connections:
            await asyncio.sleep(0.01)


async def test_a_client_that_unpublishes_and_stays_connected_is_closed_at_the_deadline(ingest, caplog):
    """It would hold one of MAX_RTMP_CONNECTIONS for good: after its publish ends it has the
    handshake deadline to publish again, as after connect."""
    client = await TcpPublisher.publish(ingest.address[1], "quits")
    peer = "%s:%d" % client.writer.get_extra_info("sockname")[:2]
    client.command(0, "deleteStream", 4.0, None, float(client.stream_id))
    assert await client.closed(timeout=10)
    assert close_reason(caplog, peer) == "no publish within 1.5 s"
    assert ingest.server.errors["handshake_timeout"] == 1 and not ingest.server.errors["protocol_error"]


AAC_CONFIG = b"\xaf\x00\x12\x10"  # AAC LC, 44.1 kHz, stereo
BAD_AFTER_PUBLISH = {
    # (message type, body) sent on the publishing stream, and the reason the log must give
    "truncated video tag": ((9, b"\x17\x01"), "FLV video tag truncated at byte 1"),
    "truncated audio tag": ((8, b"\xaf"), "FLV audio tag truncated at byte 1"),
    "E-RTMP multitrack inside multitrack": ((9, b"\x96\x06avc1\x00"), "FLV video multitrack header is invalid"),
    "deleteStream NaN": ((20, amf0_encode("deleteStream", 4.0, None, float("nan"))), "deleteStream: stream id nan"),
    "deleteStream infinity": ((20, amf0_encode("deleteStream", 4.0, None, float("inf"))), "deleteStream: stream id inf"),
}


@pytest.mark.parametrize("case", BAD_AFTER_PUBLISH)
async def test_bad_bytes_after_publish_close_only_that_publisher_with_a_logged_reason(ingest, caplog, case):
    (type_id, body), reason = BAD_AFTER_PUBLISH[case]
    port = ingest.address[1]
    good = await TcpPublisher.publish(port, "good")
    bad = await TcpPublisher.publish(port, "bad")
    reader = (await ingest.registry.wait_for("live/good", 5)).reader()
    good.media(8, 0, AAC_CONFIG)
    bad.media(8, 0, AAC_CONFIG)
    bad.media(8, 0, b"\xaf\x01" + bytes(10))
    bad.media(8, 0, b"")  # an empty media message (Wowza sends them) is skipped, not an error
    if type_id == 20:
        bad.send(3, 0, 20, 0, body)
    else:
        bad.media(type_id, 23, body)
    assert await bad.closed()
    # the good publisher goes on: its frames after the bad one closed still arrive
    for ts in range(0, 230, 23):
        good.media(8, ts, b"\xaf\x01" + bytes([ts]) * 10)
    assert await dts_of(reader, 10) == list(range(0, 230, 23))
    bad_peer = bad.local_address
    closes = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"{bad_peer}: closing connection")]
    assert closes and reason in closes[0], caplog.text
    # a logged protocol error, not an exception escaping into asyncio
    assert not [r for r in caplog.records if r.name == "asyncio"], caplog.text
    good.close()
    bad.close()


def _damage_avc(flv_in: str, flv_out: str, how: str) -> None:
    """Copy a legacy-AVC FLV with its avcC, or some of its access units, damaged (bad-inputs.md's
    avcC, NAL length and SPS rows)."""
    from rtmpq.media.flv import FlvWriter, read_flv_tags

    with open(flv_out, "wb") as f:
        w = FlvWriter(f)
        for tag_type, ts, body in read_flv_tags(flv_in):
            body = bytes(body)
            if tag_type == 9 and body[:2] == b"\x17\x00":  # AVC sequence header: avcC from byte 5
                sps_len = int.from_bytes(body[11:13], "big")
                if how == "avcC shorter than 7 bytes":
                    body = body[:11]
                elif how == "SPS length past the end":
                    body = body[:11] + b"\xff\xff" + body[13:]
                elif how == "lengthSizeMinusOne 2":
                    body = body[:9] + b"\xfe" + body[10:]
                elif how == "SPS exp-Golomb overrun":  # every bit after the level is 0: ue(v) never ends
                    body = body[:17] + bytes(sps_len - 4) + body[13 + sps_len:]
            elif tag_type == 9 and body[:2] == b"\x27\x01" and 1000 < ts < 1500:  # an inter frame
                if how == "NAL length past the end":
                    body = body[:5] + b"\xff\xff\xff\xff" + body[9:]
                elif how == "NAL length 0":
                    body = body[:5] + bytes(4) + body[9:]
            w.write_tag(tag_type, ts, body)


BAD_AVC_CONFIG = ("avcC shorter than 7 bytes", "SPS length past the end", "lengthSizeMinusOne 2", "SPS exp-Golomb overrun")
BAD_AVC_FRAMES = ("NAL length past the end", "NAL length 0")


async def test_bad_avc_configs_and_access_units_cost_only_that_track_while_a_real_publish_goes_on(ingest, tmp_path, caplog):
    """A refused avcC leaves the video track unconfigured (not carried; audio is); an access unit
    whose NAL units do not frame is dropped with the rest of its group, from the next IDR on the
    stream goes on. Each comes over its own connection, none is closed for it, and a real ffmpeg
    publish on the same ingest at the same time arrives frame-exact."""
    from .publishers import AUDIO_ENCODE, VIDEO_ENCODE, push_flv

    need("ffmpeg")
    clip = str(tmp_path / "clip.flv")
    rc, out = await run_process(["ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i",
                                 "testsrc2=size=320x240:rate=30", "-f", "lavfi", "-i", "sine", "-t", "3",
                                 *VIDEO_ENCODE, "-g", "30", "-keyint_min", "30", *AUDIO_ENCODE, "-f", "flv", clip])
    assert rc == 0, out
    hows = (*BAD_AVC_CONFIG, *BAD_AVC_FRAMES)
    for how in hows:
        _damage_avc(clip, str(tmp_path / f"{how}.flv"), how)
    port = ingest.address[1]
    ref = str(tmp_path / "good.flv")
    names = {how: how.replace(" ", "-").replace("'", "") for how in hows}
    tasks = {how: asyncio.create_task(collect_broadcast(ingest.registry, f"live/{name}")) for how, name in names.items()}
    good_frames = asyncio.create_task(collect_broadcast(ingest.registry, "live/good"))
    good = asyncio.create_task(run_process(ffmpeg_publish_args(f"rtmp://127.0.0.1:{port}/live/good", ref, seconds=3)))
    await asyncio.gather(*(push_flv(port, name, str(tmp_path / f"{how}.flv")) for how, name in names.items()))
    rc, output = await good
    assert rc == 0, output
    _, frames = await good_frames
    assert as_packets(frames) == probe_packets(ref)
    sent = probe_packets(clip)
    sent_video = [p for p in sent if p.track == "video"]
    sent_audio = [p for p in sent if p.track == "audio"]
    for how in hows:
        catalogs, frames = await tasks[how]
        video = as_packets([f for f in frames if f.track == "video"])
        assert as_packets([f for f in frames if f.track == "audio"]) == sent_audio, how
        if how in BAD_AVC_CONFIG:
            assert not video and all(c.track("video") is None for c in catalogs), how
        else:
            broken = min(p.dts for p in sent_video if 1000 < p.dts < 1500 and not p.keyframe)
            next_key = min(p.dts for p in sent_video if p.keyframe and p.dts > broken)
            assert video == [p for p in sent_video if not broken <= p.dts < next_key], how
    assert caplog.text.count("avc1 sequence header of video rejected") == len(BAD_AVC_CONFIG), caplog.text
    assert "closing connection" not in caplog.text and not [r for r in caplog.records if r.name == "asyncio"]


@pytest.mark.parametrize("window", [0, 1])
async def test_unknown_messages_media_before_publish_and_a_tiny_ack_window_are_survived_without_an_ack_flood(ingest, window):
    """Ignored and counted, not fatal: an unknown message type and media before publish. A window
    acknowledgement size of 0 or 1 is clamped to MIN_PEER_WINDOW_ACK_SIZE (the shared reader's
    fast path included), so 512 KiB of media draw one ACK per 64 KiB, not one per read. The
    publish that follows arrives whole; another publisher beside it is untouched."""
    from rtmpq.codec import NEED_DATA, ChunkReader
    from rtmpq.rtmp.reader import INGEST_READ_COALESCE
    from rtmpq.rtmp.messages import UserControlEvent, user_control_body
    from rtmpq.rtmp.session import MIN_PEER_WINDOW_ACK_SIZE

    port = ingest.address[1]
    good = await TcpPublisher.publish(port, "good")
    good_reader = (await ingest.registry.wait_for("live/good", 5)).reader()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    w = ChunkWriter(128)
    writer.write(b"\x03" + make_client_c1(digest=False))
    s0s1s2 = await reader.readexactly(1 + 2 * HANDSHAKE_SIZE)
    writer.write(s0s1s2[1:1 + HANDSHAKE_SIZE]
                 + w.write(2, 0, 5, 0, window.to_bytes(4, "big"))  # Window Acknowledgement Size
                 + w.write(3, 0, 0x55, 0, b"what is this")  # a message type nobody defined
                 + w.write(4, 0, 8, 1, AAC_CONFIG)  # media before any publish
                 + w.write(3, 0, 20, 0, amf0_encode("connect", 1.0, {"app": "live"}))
                 + w.write(3, 0, 20, 0, amf0_encode("createStream", 2.0, None))
                 + w.write(8, 0, 20, 1, amf0_encode("publish", 3.0, None, "tiny", "live")))
    replies, acks, started, pong = ChunkReader(), 0, False, False

    async def read_replies() -> None:
        nonlocal acks, started, pong
        while data := await reader.read(65536):
            replies.receive_data(data)
            while (msg := replies.next_message()) is not NEED_DATA:
                acks += msg.type_id == 3
                started = started or (msg.type_id == 20 and b"NetStream.Publish.Start" in bytes(msg.body))
                pong = pong or (msg.type_id == 4 and bytes(msg.body[:2]) == b"\x00\x07")  # PingResponse

    replying = asyncio.create_task(read_replies())
    async with asyncio.timeout(5):
        while not started:
            await asyncio.sleep(0.01)
    [conn] = [c for c in ingest.server.connections if c.session.publishing and 1 in c.session.publishing
              and c.peer == "%s:%d" % writer.get_extra_info("sockname")[:2]]
    assert conn.session.messages_ignored == 2  # the unknown type and the early media
    tiny_reader = (await ingest.registry.wait_for("live/tiny", 5)).reader()
    writer.write(w.write(4, 0, 8, 1, AAC_CONFIG))
    frame = b"\xaf\x01" + bytes(4094)
    count = 128  # 512 KiB of audio, a message a write, paced (as a live encoder sends): a read each
    for ts in range(count):
        writer.write(w.write(4, ts, 8, 1, frame))
        if ts % 2 == 0:
            good.media(8, ts, AAC_CONFIG if ts == 0 else b"\xaf\x01" + bytes([ts]) * 10)
        await writer.drain()
        await asyncio.sleep(2 * INGEST_READ_COALESCE)
    assert await dts_of(tiny_reader, count) == list(range(count))
    assert await dts_of(good_reader, count // 2 - 1) == list(range(2, count, 2))
    received = count * (len(frame) + 12 + len(frame) // 128)  # a 12-byte header, then a byte per chunk
    # a ping after it all: its answer comes after every ACK those bytes drew
    writer.write(w.write(2, 0, 4, 0, user_control_body(UserControlEvent.PING_REQUEST, 1)))
    async with asyncio.timeout(5):
        while not pong:
            await asyncio.sleep(0.01)
    assert 4 <= acks <= received // MIN_PEER_WINDOW_ACK_SIZE + 2, acks
    assert not replying.done()  # still connected
    writer.close()
    replying.cancel()
    good.close()


async def test_one_address_cannot_hold_every_connection_slot(caplog):
    """[rtmp] max_connections_per_ip: silent clients from 127.0.0.2 get that many slots, the next one
    is refused at accept (logged, counted); publishers from 127.0.0.1 still connect and publish."""
    registry = BroadcastRegistry()
    config = IngestConfig(host="127.0.0.1", port=0, max_connections_per_ip=3)
    ingest = IngestNode(registry, config, PublishConfig(grace_period=0))
    await ingest.start()
    held = []
    try:
        port = ingest.address[1]
        good = await TcpPublisher.publish(port, "good")
        reader = (await registry.wait_for("live/good", 5)).reader()
        good.media(8, 0, AAC_CONFIG)
        held = [await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.2", 0)) for _ in range(3)]
        async with asyncio.timeout(5):
            while len(ingest.server.connections) < 4:
                await asyncio.sleep(0.01)
        closed, peer = await send_and_wait_close(port, b"\x03", timeout=2, source="127.0.0.2")
        assert closed and f"{peer}: refused, 4 connections open (max_connections_per_ip)" in caplog.text
        assert ingest.server.errors["max_connections_per_ip"] == 1
        second = await TcpPublisher.publish(port, "second")  # another address's slots are its own
        for ts in range(0, 100, 10):
            good.media(8, ts, b"\xaf\x01" + bytes([ts]) * 10)
        assert await dts_of(reader, 10) == list(range(0, 100, 10))
        good.close()
        second.close()
    finally:
        for _, writer in held:
            writer.close()
        await ingest.close()



@pytest.mark.parametrize("repeat_extended", [True, False])
async def test_extended_wrapping_and_backward_timestamps_over_a_socket_arrive_in_serial_order(ingest, caplog, repeat_extended):
    """bad-inputs.md's timestamp row over a real socket: timestamps past the 24-bit field (extended,
    with or without the 4 bytes repeated on type-3 chunks, as encoders differ), through 2**32, and a
    step back, on messages of several chunks. Nothing is closed; each frame arrives with its time
    unwrapped by serial arithmetic; a publisher beside it is untouched."""
    port = ingest.address[1]
    good = await TcpPublisher.publish(port, "good")
    odd = await TcpPublisher.publish(port, "odd")
    odd.chunks.repeat_extended_timestamp = repeat_extended
    readers = {name: (await ingest.registry.wait_for(f"live/{name}", 5)).reader() for name in ("good", "odd")}
    start = 0xFFFFFF - 100
    # two forward steps just under 2**31 (serial arithmetic: a longer one is a step back) cross 2**32
    steps = [23] * 10 + [-100] + [23] * 10 + [0x7FFF0000] * 2 + [23] * 10
    sent, ts = [], start
    for step in [0, *steps]:
        ts += step
        sent.append(ts)
    good.media(8, 0, AAC_CONFIG)
    odd.media(8, start, AAC_CONFIG)
    for i, t in enumerate(sent):
        odd.media(8, t & 0xFFFFFFFF, b"\xaf\x01" + bytes([i]) * 300)  # three chunks a message
        good.media(8, i * 10, b"\xaf\x01" + bytes([i]) * 10)
    assert sent[-1] > 2**32 and await dts_of(readers["odd"], len(sent)) == sent
    assert await dts_of(readers["good"], len(sent)) == [i * 10 for i in range(len(sent))]
    assert "closing connection" not in caplog.text and not [r for r in caplog.records if r.name == "asyncio"]
    good.close()
    odd.close()
