"""The server session in memory: handshake flavours, the publish command flow, control messages."""

import pytest

from rtmpq.codec import NEED_DATA, amf0_encode
from rtmpq.codec.amf_types import EcmaArray
from rtmpq.rtmp.handshake import HANDSHAKE_SIZE, find_client_digest, make_client_c1, verify_server_s2
from rtmpq.rtmp.session import (
    ConnectionFailed,
    Connected,
    HandshakeCompleted,
    MediaMessage,
    PublishEnded,
    PublishRequested,
    RtmpServerSession,
    SessionLimits,
)

from .rtmp_client import InMemoryPublisher


def statuses(replies) -> list[str]:
    return [r[2][3]["code"] for r in replies if r[0] == 20 and r[2][0] == "onStatus"]


@pytest.mark.parametrize("digest", [True, False])
def test_handshake_flavours(digest):
    client = InMemoryPublisher(RtmpServerSession(), digest=digest)
    client.handshake()
    [event] = client.events()
    assert event == HandshakeCompleted(digest=digest)
    s1, s2 = client.s1s2[:HANDSHAKE_SIZE], client.s1s2[HANDSHAKE_SIZE:]
    if digest:
        # a Flash client checks that S2 is signed with a key derived from its own C1 digest
        _, c1_digest = find_client_digest(client.c1)
        assert verify_server_s2(s2, c1_digest)
    else:
        assert s2 == client.c1  # plain handshake: S2 echoes C1
    assert len(s1) == HANDSHAKE_SIZE


def test_c2_echo_mismatch_is_tolerated_and_bytes_after_c2_are_kept():
    session = RtmpServerSession()
    client = InMemoryPublisher(session)
    session.receive_data(b"\x03" + make_client_c1(digest=False))
    session.data_to_send()
    # a C2 that echoes nothing, and the connect command in the same write
    connect = client.writer.write(3, 0, 20, 0, amf0_encode("connect", 1.0, {"app": "live"}))
    session.receive_data(bytes(HANDSHAKE_SIZE) + connect)
    events = client.events()
    assert isinstance(events[0], HandshakeCompleted)
    assert events[1] == Connected("live", "", "")


def test_wrong_version_byte_fails_the_connection():
    session = RtmpServerSession()
    session.receive_data(b"\x06" + bytes(HANDSHAKE_SIZE))
    [event] = InMemoryPublisher(session).events()
    assert isinstance(event, ConnectionFailed) and "version" in event.reason


@pytest.mark.parametrize("first, kind", [(b"\x16\x03\x01\x02\x00", "tls_on_plain_port"), (b"GET / HTTP/1.1\r\n", "http_on_rtmp_port"),
                                         (b"\x06", "protocol_error")])
def test_another_protocol_fails_at_its_first_byte_not_after_1537(first, kind):
    """A TLS ClientHello (rtmps:// to the plain port) or a browser sends fewer bytes than C0+C1 and
    waits: told apart by the first byte, it is closed at once, counted by its kind."""
    session = RtmpServerSession()
    session.receive_data(first[:1])
    [event] = InMemoryPublisher(session).events()
    assert isinstance(event, ConnectionFailed) and event.kind == kind, event
    assert session.data_to_send() == b""  # nothing in answer: S0 would be noise to either


def test_ffmpeg_publish_sequence_and_replies():
    client = InMemoryPublisher(RtmpServerSession())
    stream_id = client.connect_and_publish("cam1")
    events = client.events()
    assert [type(e) for e in events] == [HandshakeCompleted, Connected, PublishRequested]
    req = events[-1]
    assert (req.broadcast, req.stream_id, req.publish_type) == ("live/cam1", stream_id, "live")
    kinds = [r[0] for r in client.replies]
    # Window Ack Size, Set Peer Bandwidth, StreamBegin, Set Chunk Size before the connect _result
    assert kinds[:4] == [5, 6, 4, 1]
    connect_result = next(r[2] for r in client.replies if r[0] == 20 and r[2][:2] == ["_result", 1.0])
    assert connect_result[3]["code"] == "NetConnection.Connect.Success"
    client.session.accept_publish(stream_id)
    assert statuses(client.read_replies()) == ["NetStream.Publish.Start"]
    # metadata and media now flow as MediaMessage events
    client.send(4, 0, 18, stream_id, amf0_encode("@setDataFrame", "onMetaData", EcmaArray(width=320.0)))
    client.send(6, 40, 9, stream_id, b"\x17\x01\x00\x00\x00" + b"x" * 300)
    events = client.events()
    assert [(e.type_id, e.timestamp, len(e.body)) for e in events] == [(18, 0, len(amf0_encode("@setDataFrame", "onMetaData", EcmaArray(width=320.0)))), (9, 40, 305)]
    client.command(0, "FCUnpublish", 6.0, None, "cam1")
    client.command(0, "deleteStream", 7.0, None, float(stream_id))
    assert client.events() == [PublishEnded(stream_id, "FCUnpublish")]


def connect_result(client, command_object: dict) -> dict:
    client.handshake()
    client.command(0, "connect", 1.0, command_object)
    return next(r[2] for r in client.read_replies() if r[0] == 20 and r[2][:2] == ["_result", 1.0])[2]


def test_an_e_rtmp_client_learns_what_the_server_takes_and_a_legacy_one_gets_the_legacy_reply():
    # E-RTMP v2, "Enhancing NetConnection connect Command": the server echoes its enhancements
    enhanced = connect_result(InMemoryPublisher(RtmpServerSession()), {
        "app": "live", "fourCcList": ["hvc1", "av01", "avc1", "Opus", "mp4a"], "capsEx": 1.0})
    assert enhanced["videoFourCcInfoMap"] == {"avc1": 4.0, "hvc1": 4.0, "av01": 4.0, "vp09": 4.0}  # CanForward
    assert enhanced["audioFourCcInfoMap"] == {"mp4a": 4.0, "Opus": 4.0, "ac-3": 4.0, "ec-3": 4.0}
    assert enhanced["capsEx"] == 6.0  # Multitrack | ModEx; no Reconnect: this server never asks a client to reconnect
    assert enhanced["fmsVer"] and enhanced["capabilities"] == 31.0
    mapped = connect_result(InMemoryPublisher(RtmpServerSession()), {"app": "live", "videoFourCcInfoMap": {"hvc1": 4.0}})
    assert "videoFourCcInfoMap" in mapped
    legacy = connect_result(InMemoryPublisher(RtmpServerSession()), {"app": "live", "flashVer": "FMLE/3.0"})
    assert set(legacy) == {"fmsVer", "capabilities"}


@pytest.mark.parametrize("caps_ex, can", [(1.0, True), (7.0, True), (6.0, False), (1.5, False), (float("nan"), False),
                                         (-1.0, False), ("1", False), (None, False)])
def test_a_server_that_asks_publishers_to_reconnect_says_so_and_reads_whether_the_client_can(caps_ex, can):
    # E-RTMP v2: capsEx Reconnect (0x01) both ways; NetConnection onStatus ReconnectRequest to ask
    session = RtmpServerSession(reconnect=True)
    client = InMemoryPublisher(session)
    properties = connect_result(client, {"app": "live", "fourCcList": ["avc1"], "capsEx": caps_ex})
    assert properties["capsEx"] == 7.0  # Reconnect | Multitrack | ModEx
    assert session.can_reconnect is can
    session.request_reconnect("stopping", "rtmp://b.example:1935/live")
    [(type_id, stream_id, command)] = client.read_replies()
    assert (type_id, stream_id, command) == (20, 0, ["onStatus", 0.0, None, {
        "level": "status", "code": "NetConnection.Connect.ReconnectRequest", "description": "stopping",
        "tcUrl": "rtmp://b.example:1935/live"}])
    session.request_reconnect("stopping")  # no tcUrl: the client goes back where it connected
    assert "tcUrl" not in client.read_replies()[0][2][3]


def test_rejected_publish_gets_badname_status():
    client = InMemoryPublisher(RtmpServerSession())
    stream_id = client.connect_and_publish("cam1")
    client.events()
    client.session.reject_publish(stream_id, "NetStream.Publish.BadName", "Stream already publishing")
    replies = client.read_replies()
    [status] = [r[2][3] for r in replies if r[0] == 20 and r[2][0] == "onStatus"]
    assert status["level"] == "error" and status["code"] == "NetStream.Publish.BadName"


def test_media_before_publish_is_ignored_and_counted():
    client = InMemoryPublisher(RtmpServerSession())
    client.handshake()
    client.command(0, "connect", 1.0, {"app": "live"})
    client.send(6, 0, 9, 1, b"\x17\x01\x00\x00\x00abc")
    assert not [e for e in client.events() if isinstance(e, MediaMessage)]
    assert client.session.messages_ignored == 1


def test_ping_is_answered_and_acknowledgements_follow_the_window():
    client = InMemoryPublisher(RtmpServerSession())
    stream_id = client.connect_and_publish()
    client.session.accept_publish(stream_id)
    client.read_replies()
    client.send(2, 0, 4, 0, b"\x00\x06" + (123456).to_bytes(4, "big"))  # PingRequest
    assert (4, 0, b"\x00\x07" + (123456).to_bytes(4, "big")) in client.read_replies()
    client.send(2, 0, 5, 0, (1).to_bytes(4, "big"))  # a window of 1 byte is clamped to 64 KiB
    for i in range(40):
        client.send(6, i * 40, 9, stream_id, b"\x27\x01\x00\x00\x00" + bytes(4000))
    acks = [r for r in client.read_replies() if r[0] == 3]
    assert 1 <= len(acks) <= 3  # ~160 KB received: one ACK per 64 KiB, not one per message
    assert int.from_bytes(acks[-1][2], "big") <= client.session._reader.bytes_received


def test_aggregate_message_is_split_into_tags_rebased_on_its_timestamp():
    client = InMemoryPublisher(RtmpServerSession())
    stream_id = client.connect_and_publish()
    client.session.accept_publish(stream_id)
    client.events()

    def tag(tag_type, ts, body):
        header = bytes((tag_type,)) + len(body).to_bytes(3, "big") + (ts & 0xFFFFFF).to_bytes(3, "big") + bytes((ts >> 24,)) + bytes(3)
        return header + body + (11 + len(body)).to_bytes(4, "big")

    agg = tag(9, 500, b"\x17\x01\x00\x00\x00v1") + tag(8, 510, b"\xaf\x01a1") + tag(9, 533, b"\x27\x01\x00\x00\x00v2")
    client.send(6, 1000, 22, stream_id, agg)
    events = client.events()
    assert [(e.type_id, e.timestamp, bytes(e.body)) for e in events] == [
        (9, 1000, b"\x17\x01\x00\x00\x00v1"), (8, 1010, b"\xaf\x01a1"), (9, 1033, b"\x27\x01\x00\x00\x00v2")]


def test_amf3_command_is_understood():
    client = InMemoryPublisher(RtmpServerSession())
    client.handshake()
    client.send(3, 0, 17, 0, b"\x00" + amf0_encode("connect", 1.0, {"app": "live"}))
    assert Connected("live", "", "") in client.events()


@pytest.mark.parametrize("key", ["../../etc/passwd", "a" * 3000, "", "key with spaces", "ключ"])
def test_hostile_stream_names_are_refused(key):
    client = InMemoryPublisher(RtmpServerSession())
    client.connect_and_publish(key)
    events = client.events()
    assert not any(isinstance(e, PublishRequested) for e in events)
    assert isinstance(events[-1], ConnectionFailed)
    assert statuses(client.read_replies()) == ["NetStream.Publish.BadName"]


def test_publish_name_of_wrong_type_fails_cleanly():
    client = InMemoryPublisher(RtmpServerSession())
    client.handshake()
    client.command(0, "connect", 1.0, {"app": "live"})
    client.command(0, "createStream", 2.0, None)
    client.command(1, "publish", 3.0, None, True, "live", csid=8)
    assert isinstance(client.events()[-1], ConnectionFailed)


def test_handshake_deadline():
    session = RtmpServerSession(now=100.0)
    session.receive_data(b"\x03")
    session.handle_timer(105.0)
    assert session.next_event() is NEED_DATA and session.timer_deadline == 110.0
    session.handle_timer(110.0)
    event = session.next_event()
    assert isinstance(event, ConnectionFailed) and "connect" in event.reason


def test_the_deadline_stands_after_connect_until_a_publish_is_accepted():
    session = RtmpServerSession(now=100.0)
    client = InMemoryPublisher(session)
    stream_id = client.connect_and_publish("cam1")
    client.events()
    assert session.timer_deadline == 110.0  # connected, publish asked for, not yet accepted
    session.accept_publish(stream_id)
    assert session.timer_deadline is None
    idle = RtmpServerSession(now=100.0)  # connects, asks to publish, is never accepted
    idle_client = InMemoryPublisher(idle)
    idle_client.connect_and_publish("cam1")
    idle_client.events()
    idle.handle_timer(110.0)
    assert [e.reason for e in idle_client.events() if isinstance(e, ConnectionFailed)] == ["no publish within 10 s"]


def test_a_client_that_unpublishes_and_stays_connected_has_the_deadline_to_publish_again():
    session = RtmpServerSession(now=100.0)
    client = InMemoryPublisher(session)
    stream_id = client.connect_and_publish("cam1")
    client.events()
    session.accept_publish(stream_id)
    client.command(0, "deleteStream", 4.0, None, float(stream_id))
    assert [type(e) for e in client.events()] == [PublishEnded]
    session.publish_idle(200.0)
    assert session.timer_deadline == 210.0
    session.handle_timer(210.0)
    assert [e.reason for e in client.events() if isinstance(e, ConnectionFailed)] == ["no publish within 10 s"]
    # one publish of two ended: the other goes on, no deadline
    both = RtmpServerSession(now=100.0)
    two = InMemoryPublisher(both)
    first = two.connect_and_publish("cam1")
    two.command(0, "createStream", 5.0, None)
    two.command(first + 1, "publish", 6.0, None, "cam2", "live", csid=8)
    for req in [e for e in two.events() if isinstance(e, PublishRequested)]:
        both.accept_publish(req.stream_id)
    two.command(0, "deleteStream", 7.0, None, float(first))
    two.events()
    both.publish_idle(200.0)
    assert both.timer_deadline is None and len(both.publishing) == 1


def test_query_string_of_the_key_is_not_part_of_the_name():
    client = InMemoryPublisher(RtmpServerSession())
    client.connect_and_publish("cam1?token=secret")
    assert [e for e in client.events() if isinstance(e, PublishRequested)][0].key == "cam1"


def flv_tag(type_id: int, timestamp: int, body: bytes) -> bytes:
    return (bytes((type_id,)) + len(body).to_bytes(3, "big") + (timestamp & 0xFFFFFF).to_bytes(3, "big")
            + bytes((timestamp >> 24,)) + bytes(3) + body + (11 + len(body)).to_bytes(4, "big"))


@pytest.mark.parametrize("bad", [
    (9, b"\x17\x01\x00"),  # AVC NALU header cut before its composition time
    (8, b"\xaf"),  # AAC header cut before its packet type
    (9, b"\x91av"),  # E-RTMP header cut inside its FourCC
])
@pytest.mark.parametrize("aggregated", [False, True])
def test_truncated_flv_tag_header_fails_the_connection(bad, aggregated):
    client = InMemoryPublisher(RtmpServerSession())
    sid = client.connect_and_publish()
    [req] = [e for e in client.events() if isinstance(e, PublishRequested)]
    client.session.accept_publish(req.stream_id)
    type_id, body = bad
    good = (8, b"\xaf\x01" + bytes(8))
    if aggregated:
        client.send(4, 0, 22, sid, flv_tag(*good[:1], 0, good[1]) + flv_tag(type_id, 20, body))
    else:
        client.send(4, 0, good[0], sid, good[1])
        client.send(4, 20, type_id, sid, body)
    events = client.events()
    assert isinstance(events[0], MediaMessage) and bytes(events[0].body) == good[1]
    assert isinstance(events[-1], ConnectionFailed) and "truncated" in events[-1].reason


def test_empty_media_messages_are_skipped():
    client = InMemoryPublisher(RtmpServerSession())
    sid = client.connect_and_publish()
    [req] = [e for e in client.events() if isinstance(e, PublishRequested)]
    client.session.accept_publish(req.stream_id)
    client.send(4, 0, 8, sid, b"")
    client.send(4, 0, 9, sid, b"")
    assert client.events() == [] and client.session.messages_ignored == 2


@pytest.mark.parametrize("stream_id", [float("nan"), float("inf"), -1.0, 1.5, 2.0**40])
def test_delete_stream_with_an_impossible_stream_id_fails_the_connection(stream_id):
    client = InMemoryPublisher(RtmpServerSession())
    client.connect_and_publish()
    client.events()
    client.command(0, "deleteStream", 6.0, None, stream_id)
    [event] = client.events()
    assert isinstance(event, ConnectionFailed) and event.reason.startswith("deleteStream: stream id")


# What an encoder sends right after publish when it does not wait for NetStream.Publish.Start:
# metadata, the AVC and AAC sequence headers (sent once), the first frames; 60 KB in all, so
# a key frame spans many 128-byte chunks.
PIPELINED = [
    (18, 0, amf0_encode("@setDataFrame", "onMetaData", EcmaArray(width=320.0, height=240.0))),
    (9, 0, b"\x17\x00\x00\x00\x00\x01\x64\x00\x0d\xff\xe1\x00\x04sps!\x01\x00\x03pps"),
    (8, 0, b"\xaf\x00\x12\x10"),
    (9, 0, b"\x17\x01\x00\x00\x00" + bytes(range(256)) * 200),
    (8, 23, b"\xaf\x01" + bytes(300)),
    (9, 33, b"\x27\x01\x00\x00\x00" + bytes(5000)),
]


def whole(type_id, timestamp, body, codec, frame_type, cts, header) -> tuple[int, int, bytes]:
    """A media sink's arguments as the message sent (the fast path splits the FLV header off)."""
    return type_id, timestamp, bytes(header) + bytes(body) if codec is not None else bytes(body)


@pytest.mark.parametrize("with_sink", [True, False])
def test_media_sent_with_publish_reach_the_publish_in_order_once_it_is_accepted(with_sink):
    client = InMemoryPublisher(RtmpServerSession())
    sid = client.connect_and_publish(pipelined=PIPELINED)
    [req] = [e for e in client.events() if isinstance(e, PublishRequested)]
    got = []
    client.session.accept_publish(req.stream_id, (lambda *args: got.append(whole(*args))) if with_sink else None)
    later = (9, 66, b"\x27\x01\x00\x00\x00" + bytes(3000))
    client.send(6, later[1], later[0], sid, later[2])
    if not with_sink:
        got = [(e.type_id, e.timestamp, bytes(e.body)) for e in client.events()]
    assert got == PIPELINED + [later]
    assert statuses(client.read_replies()) == ["NetStream.Publish.Start"]
    assert client.session.messages_ignored == 0


def test_media_sent_with_a_refused_publish_are_dropped_counted_and_logged_once(caplog):
    client = InMemoryPublisher(RtmpServerSession(peer="203.0.113.7:50000"))
    sid = client.connect_and_publish("sk-secret", pipelined=PIPELINED)
    client.events()
    with caplog.at_level("INFO", logger="rtmpq.rtmp"):
        client.session.reject_publish(sid, "NetStream.Publish.BadName", "publish refused")
    assert client.session.messages_ignored == len(PIPELINED)
    assert not [e for e in client.events() if isinstance(e, MediaMessage)]
    [line] = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert "203.0.113.7:50000" in line and f"message stream {sid}" in line and "sk-secret" not in line


def test_media_sent_before_the_publish_is_answered_are_held_up_to_a_limit():
    client = InMemoryPublisher(RtmpServerSession(limits=SessionLimits(max_pending_media_bytes=50_000)))
    client.connect_and_publish(pipelined=PIPELINED)  # 57 KB of media
    events = client.events()
    assert isinstance(events[-1], ConnectionFailed) and "max_pending_media_bytes" in events[-1].reason
    assert not [e for e in events if isinstance(e, MediaMessage)]


def test_the_events_of_a_publish_show_no_key_token_or_tcurl_in_their_repr():
    """A traceback, a failed assertion or a debug line that shows an event never shows the secrets in it."""
    pub = InMemoryPublisher(RtmpServerSession())
    pub.handshake()
    pub.command(0, "connect", 1.0, {"app": "live", "tcUrl": "rtmp://127.0.0.1/live?token=tc-secret-1"})
    pub.command(0, "createStream", 2.0, None)
    pub.command(1, "publish", 3.0, None, "sk-secret-2?token=query-secret-3", "live")
    events = pub.events()
    [req] = [e for e in events if isinstance(e, PublishRequested)]
    assert (req.key, req.query) == ("sk-secret-2", "token=query-secret-3")
    shown = repr(events)
    assert "Connected(" in shown and "PublishRequested(" in shown
    assert not any(secret in shown for secret in ("tc-secret-1", "sk-secret-2", "query-secret-3")), shown
