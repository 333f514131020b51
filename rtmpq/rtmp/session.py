"""The server side of one RTMP connection, sans-I/O: handshake, chunk stream, commands, acks.

Feed bytes with ``receive_data`` (or ``get_buffer``/``buffer_updated`` from a BufferedProtocol),
take events with ``next_event``, send what ``data_to_send`` returns, call ``handle_timer(now)``.
The application answers ``PublishRequested`` with ``accept_publish`` or ``reject_publish``.
Everything else a publisher needs (connect replies, acknowledgements, ping replies) is automatic.

Media a client sends after ``publish`` without waiting for its answer (pipelining: the metadata
and sequence headers an encoder sends once) are held, at most ``max_pending_media_bytes`` per
connection, and handed on in order when the publish is accepted, before anything after them;
dropped (and counted in ``messages_ignored``) when it is refused.

Media of an accepted publish come as ``MediaMessage`` events, or, when ``accept_publish`` was given
a ``media_sink``, straight to it (no event object per message: the ingest's fast path), in order,
as ``media_sink(type_id, timestamp, body, codec, frame_type, cts, header)``: the FLV header
fields are those ``ChunkReader.read_messages`` read and split off (``body`` is then the codec
payload alone, ``header`` the tag header's bytes); ``codec`` None when it did not: ``body`` is the
whole message, the sink parses the tag itself, its header is known to be whole.
"""

import logging
import re
from collections import deque
from dataclasses import dataclass, field

from ..codec import NEED_DATA, ChunkReader, amf0_decode, amf0_encode, parse_audio_tracks, parse_video_tracks
from ..codec.amf_types import UNDEFINED
from ..codec.flv_types import AUDIO_CODECS, VIDEO_CODECS
from ..codec.chunk import MAX_CHUNK_STREAMS, MAX_MESSAGE_SIZE, MAX_PARTIAL_BYTES, MIN_CHUNK_SIZE
from ..errors import RemoteProtocolError
from ..rtmp.chunk_writer import ChunkWriter
from .handshake import HandshakeDone, ServerHandshake
from .messages import (
    CSID_COMMAND,
    CSID_PROTOCOL,
    CSID_STREAM_COMMAND,
    MessageType,
    PeerBandwidthLimit,
    UserControlEvent,
    parse_u32,
    parse_user_control,
    set_chunk_size_body,
    set_peer_bandwidth_body,
    split_aggregate,
    user_control_body,
    u32,
    window_ack_size_body,
)

log = logging.getLogger("rtmpq.rtmp")

# Seconds a client has from its first byte to a successful connect command, and to an accepted
# publish (slowloris guard: connecting needs no key, and an ingest only serves publishers).
HANDSHAKE_TIMEOUT = 10.0
# Window we announce (Window Acknowledgement Size) and the peer bandwidth we set.
SERVER_WINDOW_ACK_SIZE = 2_500_000
# Our outbound chunk size (sent right after connect, as nginx-rtmp and SRS do).
SERVER_CHUNK_SIZE = 4096
# The peer's window ack size is clamped to at least this, so a tiny window cannot flood ACKs.
MIN_PEER_WINDOW_ACK_SIZE = 64 * 1024
_NO_ACK = 1 << 62  # ack_at while the peer asked for no acknowledgements
# Stream keys and app names: a conservative allowlist; never used as a file path as received.
# A key may be a signed publish token (a JWT, about 200-400 characters), hence the length.
MAX_STREAM_KEY_LENGTH = 2048
# What a player that asks to play over RTMP is told: this server only takes publishers.
PLAY_REFUSED = ("RTMP playback is not offered: this server takes publishers; watch over LL-HLS "
                "(http://HOST:HTTP_PORT/<app>/<name>/ or its index.m3u8) or MoQ (rtmpq sub)")
STREAM_KEY_PATTERN = re.compile(r"[A-Za-z0-9_.~-]{1,%d}" % MAX_STREAM_KEY_LENGTH)
# What may follow the key after '?' (e.g. ?token=<JWT>): at most this many characters.
MAX_PUBLISH_QUERY_LENGTH = 4096
APP_NAME_PATTERN = re.compile(r"[A-Za-z0-9_.~-]{1,64}(/[A-Za-z0-9_.~-]{1,64})?")
# ... but neither is "." or "..": no player can ask for such a name (URLs resolve them away).
DOT_SEGMENTS = frozenset((".", ".."))
# Message streams a client may create on one connection.
MAX_MESSAGE_STREAMS = 8
# Bytes of media one connection may send on publishes not yet answered (sent without waiting for
# NetStream.Publish.Start, held until the publish is accepted); more closes the connection.
MAX_PENDING_MEDIA_BYTES = 2 * 1024 * 1024
# E-RTMP v2 ("Enhancing NetConnection connect Command"): a client that declares its enhancements in
# connect gets the server's in the _result's properties. rtmpq forwards the codecs it carries
# (FourCcInfoMask.CanForward) and takes multitrack publishes and ModEx packets (CapsExMask); a
# server that asks publishers to reconnect before it stops ([rtmp] reconnect_wait) says Reconnect
# too, and asks only clients that said it in their own capsEx ("Reconnect Request").
E_RTMP_CONNECT_KEYS = frozenset(("fourCcList", "videoFourCcInfoMap", "audioFourCcInfoMap", "capsEx"))
_CAN_FORWARD = 0x04
_CAPS_EX_RECONNECT, _CAPS_EX_MULTITRACK, _CAPS_EX_MODEX = 0x01, 0x02, 0x04
E_RTMP_SERVER_CAPS = {
    "videoFourCcInfoMap": {fourcc: float(_CAN_FORWARD) for fourcc in VIDEO_CODECS},
    "audioFourCcInfoMap": {fourcc: float(_CAN_FORWARD) for fourcc in AUDIO_CODECS},
    "capsEx": float(_CAPS_EX_MULTITRACK | _CAPS_EX_MODEX),
}
RECONNECT_REQUEST = "NetConnection.Connect.ReconnectRequest"


# -- events ---------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class HandshakeCompleted:
    digest: bool


@dataclass(frozen=True, slots=True)
class Connected:
    app: str
    tc_url: str = field(repr=False)  # what the encoder was given as the server: may hold ?token= after the app
    flash_ver: str


@dataclass(frozen=True, slots=True)
class PublishRequested:
    stream_id: int
    app: str
    # the stream key (a secret: never log it, and not in the repr a traceback or a failed test shows)
    key: str = field(repr=False)
    publish_type: str  # "live", "record", "append"
    query: str = field(default="", repr=False)  # what followed the key after '?' (may hold ?token=: a secret too)

    @property
    def broadcast(self) -> str:
        return f"{self.app}/{self.key}"


@dataclass(frozen=True, slots=True)
class MediaMessage:
    """An audio (8), video (9) or data (18 / 15) message of a publishing stream."""

    stream_id: int
    type_id: int
    timestamp: int  # 32-bit milliseconds as sent (wraps)
    body: memoryview | bytes


@dataclass(frozen=True, slots=True)
class PublishEnded:
    stream_id: int
    reason: str  # "FCUnpublish", "deleteStream", "closeStream"


@dataclass(frozen=True, slots=True)
class ConnectionFailed:
    """The peer broke the protocol; the shell should close the connection after flushing."""

    reason: str
    # the metrics reason (never a key or name): protocol_error, handshake_timeout (no connect or
    # publish in time), bad_name (a stream key no name may be), or, from the first byte, the peer
    # speaks another protocol (handshake.WrongScheme): tls_on_plain_port, http_on_rtmp_port
    kind: str = "protocol_error"


class BadStreamName(RemoteProtocolError):
    """A publish whose stream key no name may be (a space, a path, too long): counted apart."""

    kind = "bad_name"


Event = HandshakeCompleted | Connected | PublishRequested | MediaMessage | PublishEnded | ConnectionFailed


@dataclass(frozen=True, slots=True)
class SessionLimits:
    max_message_size: int = MAX_MESSAGE_SIZE
    max_partial_bytes: int = MAX_PARTIAL_BYTES
    max_chunk_streams: int = MAX_CHUNK_STREAMS
    min_chunk_size: int = MIN_CHUNK_SIZE
    handshake_timeout: float = HANDSHAKE_TIMEOUT
    max_message_streams: int = MAX_MESSAGE_STREAMS
    max_pending_media_bytes: int = MAX_PENDING_MEDIA_BYTES


def _status(level: str, code: str, description: str) -> dict:
    return {"level": level, "code": code, "description": description}


def _stream_id_arg(command: str, value: float) -> int:
    """A message stream id sent as an AMF0 number (a double: NaN, infinity and 0.5 are refused)."""
    if not (value.is_integer() and 0 <= value <= 0xFFFFFFFF):
        raise RemoteProtocolError(f"{command}: stream id {value!r} is not a message stream id")
    return int(value)


def _says_reconnect(caps_ex) -> bool:
    """Whether a connect's ``capsEx`` (an AMF0 number: any double a client sends) has CapsExMask.Reconnect."""
    return isinstance(caps_ex, float) and caps_ex.is_integer() and 0 <= caps_ex <= 0xFFFFFFFF \
        and bool(int(caps_ex) & _CAPS_EX_RECONNECT)


class RtmpServerSession:
    """``reconnect``: this server may ask its publishers to reconnect (``request_reconnect``), and
    says so (capsEx Reconnect) to an E-RTMP client's connect."""

    def __init__(self, *, now: float = 0.0, limits: SessionLimits = SessionLimits(), peer: str = "?",
                 reconnect: bool = False) -> None:
        self.limits = limits
        self.peer = peer
        self.reconnect = reconnect
        self.can_reconnect = False  # the client said capsEx Reconnect in its connect
        self._handshake = ServerHandshake(now_ms=int(now * 1000))
        self._handshake_buffer = bytearray(4096)
        self._reader = ChunkReader(
            max_message_size=limits.max_message_size,
            max_partial_bytes=limits.max_partial_bytes,
            max_chunk_streams=limits.max_chunk_streams,
            min_chunk_size=limits.min_chunk_size,
        )
        self._writer = ChunkWriter(128)
        self._out = bytearray()
        self._events: deque[Event] = deque()
        self._deadline: float | None = now + limits.handshake_timeout
        self.app: str | None = None
        self.closed = False
        self._failed = False
        self._next_stream_id = 1
        self._streams: set[int] = set()
        self.publishing: dict[int, str] = {}  # stream id -> broadcast name, once accepted
        self._media_sinks: dict[int, object] = {}  # stream id -> media_sink of accept_publish
        self._pending: dict[int, PublishRequested] = {}
        # stream id -> media (type id, timestamp, body) sent before its publish was answered
        self._held: dict[int, list[tuple]] = {}
        self._held_bytes = 0
        self._peer_window = 0  # bytes between our ACKs, as set by the peer (0: none asked)
        self._last_ack = 0
        self.ack_at = _NO_ACK  # bytes received at which the next ACK is due (read by the shared reader)
        self.messages_ignored = 0

    # -- input ----------------------------------------------------------------------------------
    def get_buffer(self, sizehint: int) -> memoryview:
        if self._handshake.done:
            return self._reader.get_buffer(sizehint)
        return memoryview(self._handshake_buffer)

    def buffer_updated(self, nbytes: int) -> None:
        if self._handshake.done:
            self._reader.buffer_updated(nbytes)
            self.handle_read(None)
        else:
            self.receive_data(bytes(self._handshake_buffer[:nbytes]))

    def receive_data(self, data) -> None:
        if self._failed or self.closed:
            return
        try:
            if not self._handshake.done:
                leftover = self._handshake.receive_data(data)
                self._out += self._handshake.data_to_send()
                if not self._handshake.done:
                    return
                result: HandshakeDone = self._handshake.result
                self._events.append(HandshakeCompleted(result.digest))
                data = leftover
                if not data:
                    return
            self._reader.receive_data(data)
        except RemoteProtocolError as exc:
            self._fail_on(exc)
            return
        self.handle_read(None)

    def handle_read(self, message) -> None:
        """What a read brought, after the chunk reader's ``dispatch`` handed its media to their
        sinks (the shared reader's fast path does that itself): ``message`` is the one it stopped
        at (None: none), handled here with every message after it, in order."""
        if self._failed:
            return  # the connection is being closed: nothing more it sends is handled
        sinks = self._media_sinks
        reader = self._reader
        try:
            if message is None:
                message = reader.dispatch(sinks)
            while message is not None:
                csid, stream_id, type_id, timestamp, body, codec, frame_type, cts, header = message
                if codec is not None:
                    body = header + body  # the whole message again (no sink for this stream)
                self._handle_message(csid, stream_id, type_id, timestamp, body)
                message = reader.dispatch(sinks)
            self._maybe_acknowledge()
        except RemoteProtocolError as exc:
            self._fail_on(exc)

    @property
    def fast_path(self) -> tuple | None:
        """(chunk reader, media sinks by stream id) once the handshake is done and the session has
        not failed: the shared reader may then receive into the reader and dispatch its media
        itself, calling ``handle_read`` only for what is left (rtmpq/rtmp/reader.py)."""
        if self._handshake.done and not self._failed and not self.closed:
            return self._reader, self._media_sinks

    def _fail_on(self, exc: RemoteProtocolError) -> None:
        self._fail(str(exc), getattr(exc, "kind", "protocol_error"))

    def _fail(self, reason: str, kind: str = "protocol_error") -> None:
        if not self._failed:
            self._failed = True
            self._held.clear()
            self._held_bytes = 0
            self._events.append(ConnectionFailed(reason, kind))

    # -- output ---------------------------------------------------------------------------------
    @property
    def has_work(self) -> bool:
        """Whether there are events to take or bytes to send (the shell may skip both when not)."""
        return bool(self._events or self._out)

    def next_event(self):
        return self._events.popleft() if self._events else NEED_DATA

    def data_to_send(self) -> bytes:
        if not self._out:
            return b""
        out = bytes(self._out)
        self._out.clear()
        return out

    def handle_timer(self, now: float) -> None:
        if self._deadline is not None and now >= self._deadline:
            self._deadline = None
            waited_for = "successful connect" if self.app is None else "publish"
            self._fail(f"no {waited_for} within {self.limits.handshake_timeout:g} s", "handshake_timeout")

    def publish_idle(self, now: float) -> None:
        """Call when the client ended a publish: if nothing is published or asked to be on this
        connection any more, it has ``handshake_timeout`` from ``now`` to publish again, as after
        connect, else it is closed (it would hold a connection slot for good)."""
        if not self.publishing and not self._pending and self._deadline is None and not self._failed:
            self._deadline = now + self.limits.handshake_timeout

    @property
    def timer_deadline(self) -> float | None:
        return self._deadline

    # -- application answers --------------------------------------------------------------------
    def awaits_answer(self, stream_id: int) -> bool:
        """The publish asked on ``stream_id`` waits for accept_publish or reject_publish."""
        return stream_id in self._pending

    def accept_publish(self, stream_id: int, media_sink=None) -> None:
        req = self._pending.pop(stream_id)
        self.publishing[stream_id] = req.broadcast
        self._deadline = None
        # what came before the answer goes first: the sink is installed after it, as the shared
        # reader's fast path hands later media straight to installed sinks
        for type_id, timestamp, body in self._take_held(stream_id):
            if media_sink is not None:
                media_sink(type_id, timestamp, body, None, 0, 0, None)
            else:
                self._events.append(MediaMessage(stream_id, type_id, timestamp, body))
        if media_sink is not None:
            self._media_sinks[stream_id] = media_sink
        self._send(CSID_PROTOCOL, 0, MessageType.USER_CONTROL, 0, user_control_body(UserControlEvent.STREAM_BEGIN, stream_id))
        self._send_on_status(stream_id, _status("status", "NetStream.Publish.Start", "Start publishing."))

    def reject_publish(self, stream_id: int, code: str, description: str) -> None:
        self._pending.pop(stream_id, None)
        if dropped := self._take_held(stream_id):
            self.messages_ignored += len(dropped)
            log.info("%s: publish on message stream %d refused: dropped the %d media messages sent before the answer",
                     self.peer, stream_id, len(dropped))
        self._send_on_status(stream_id, _status("error", code, description))

    def stop_publish(self, stream_id: int, code: str, description: str) -> None:
        """End an accepted publish from our side (idle, taken over, server stopping): the
        publisher gets an onStatus; its media is ignored from here on."""
        self._media_sinks.pop(stream_id, None)
        if self.publishing.pop(stream_id, None) is not None:
            self._send_on_status(stream_id, _status("error", code, description))

    def request_reconnect(self, description: str, tc_url: str = "") -> None:
        """Ask the client to reconnect (E-RTMP v2 "Reconnect Request"; only one that said it can,
        ``can_reconnect``): a NetConnection onStatus ``NetConnection.Connect.ReconnectRequest``,
        with ``tc_url`` where it should go (empty: to the tcUrl it connected with). Its messages
        are handled as before until it leaves: the spec's old server goes on taking them."""
        info = _status("status", RECONNECT_REQUEST, description)
        if tc_url:
            info["tcUrl"] = tc_url
        self._send_on_status(0, info)

    def _take_held(self, stream_id: int) -> list[tuple]:
        held = self._held.pop(stream_id, [])
        self._held_bytes -= sum(len(body) for _, _, body in held)
        return held

    def _hold(self, stream_id: int, type_id: int, timestamp: int, body) -> None:
        """Keep a media message of a publish not answered yet, for ``accept_publish``."""
        self._held_bytes += len(body)
        if self._held_bytes > self.limits.max_pending_media_bytes:
            raise RemoteProtocolError(
                f"more than {self.limits.max_pending_media_bytes} bytes of media sent before the publish on message "
                f"stream {stream_id} was answered (max_pending_media_bytes)")
        # a copy: a view would pin its receive block, up to MAX_PIN_FACTOR times the bytes counted
        self._held.setdefault(stream_id, []).append((type_id, timestamp, bytes(body)))

    # -- message handling -----------------------------------------------------------------------
    def _send(self, csid: int, timestamp: int, type_id: int, stream_id: int, body: bytes) -> None:
        self._out += self._writer.write(csid, timestamp, int(type_id), stream_id, body)

    def _send_command(self, stream_id: int, *values) -> None:
        csid = CSID_COMMAND if stream_id == 0 else CSID_STREAM_COMMAND
        self._send(csid, 0, MessageType.COMMAND_AMF0, stream_id, amf0_encode(*values))

    def _send_on_status(self, stream_id: int, info: dict) -> None:
        self._send_command(stream_id, "onStatus", 0.0, None, info)

    def _maybe_acknowledge(self) -> None:
        received = self._reader.bytes_received
        if received >= self.ack_at:  # (the shared reader's fast path checks the same)
            self._last_ack = received
            self.ack_at = received + self._peer_window
            self._send(CSID_PROTOCOL, 0, MessageType.ACKNOWLEDGEMENT, 0, u32(received))

    def _media(self, stream_id: int, type_id: int, timestamp: int, body) -> None:
        if not len(body):
            self.messages_ignored += 1  # an empty media message (Wowza sends them) carries nothing
            return
        # A malformed FLV tag header fails the connection here, where it can be closed cleanly;
        # the demuxer downstream then parses only headers known to be whole. Every track of an
        # E-RTMP multitrack message: one bad track refuses the whole message, before the
        # recorder or the demuxer has taken any of it.
        if type_id == 9:
            parse_video_tracks(body)
        elif type_id == 8:
            parse_audio_tracks(body)
        sink = self._media_sinks.get(stream_id)
        if sink is not None:
            sink(type_id, timestamp, body, None, 0, 0, None)
        elif stream_id in self.publishing:
            self._events.append(MediaMessage(stream_id, type_id, timestamp, body))
        else:
            self._hold(stream_id, type_id, timestamp, body)

    def _handle_message(self, csid: int, stream_id: int, type_id: int, timestamp: int, body) -> None:
        if type_id == 8 or type_id == 9 or type_id == 18 or type_id == 15:  # audio, video, data (AMF0, AMF3)
            if stream_id in self.publishing or stream_id in self._pending:
                if type_id == MessageType.DATA_AMF3:
                    body = body[1:] if len(body) and body[0] == 0 else body
                    type_id = MessageType.DATA_AMF0
                self._media(stream_id, type_id, timestamp, body)
            else:
                self.messages_ignored += 1  # media before publish: ignored and counted
        elif type_id == MessageType.AGGREGATE:
            if stream_id not in self.publishing and stream_id not in self._pending:
                self.messages_ignored += 1
                return
            tags = split_aggregate(body)
            base = tags[0][1] if tags else 0
            for tag_type, ts, tag_body in tags:
                if tag_type in (MessageType.AUDIO, MessageType.VIDEO, MessageType.DATA_AMF0):
                    self._media(stream_id, tag_type, (timestamp + ts - base) & 0xFFFFFFFF, tag_body)
        elif type_id in (MessageType.COMMAND_AMF0, MessageType.COMMAND_AMF3):
            if type_id == MessageType.COMMAND_AMF3 and len(body) and body[0] == 0:
                body = body[1:]  # AMF3 command messages start with a 0 byte, then AMF0 values
            self._handle_command(stream_id, amf0_decode(body))
        elif type_id == MessageType.WINDOW_ACK_SIZE:
            self._peer_window = max(parse_u32(body, "window ack size"), MIN_PEER_WINDOW_ACK_SIZE)
            self.ack_at = self._last_ack + self._peer_window
        elif type_id == MessageType.USER_CONTROL:
            event, data = parse_user_control(body)
            if event == UserControlEvent.PING_REQUEST and len(data) >= 4:
                self._send(CSID_PROTOCOL, 0, MessageType.USER_CONTROL, 0,
                           user_control_body(UserControlEvent.PING_RESPONSE, int.from_bytes(data[:4], "big")))
        elif type_id in (MessageType.SET_CHUNK_SIZE, MessageType.ABORT, MessageType.ACKNOWLEDGEMENT,
                         MessageType.SET_PEER_BANDWIDTH):
            pass  # chunk size and abort are applied by the chunk reader; the rest needs no answer
        else:
            self.messages_ignored += 1

    def _handle_command(self, stream_id: int, values: list) -> None:
        if not values or not isinstance(values[0], str):
            raise RemoteProtocolError("command message without a command name")
        name = values[0]
        tx = values[1] if len(values) > 1 and isinstance(values[1], float) else 0.0
        args = values[3:]
        if name == "connect":
            self._on_connect(tx, values[2] if len(values) > 2 else None)
            return
        if self.app is None:
            raise RemoteProtocolError(f"command {name!r} before connect")
        if name == "createStream":
            if len(self._streams) >= self.limits.max_message_streams:
                raise RemoteProtocolError("too many message streams on one connection")
            sid = self._next_stream_id
            self._next_stream_id += 1
            self._streams.add(sid)
            self._send_command(0, "_result", tx, None, float(sid))
        elif name == "publish":
            self._on_publish(stream_id, tx, args)
        elif name in ("releaseStream", "FCPublish"):
            self._send_command(0, "_result", tx, None, UNDEFINED)
            if name == "FCPublish":
                self._send_command(0, "onFCPublish", 0.0, None, _status("status", "NetStream.Publish.Start", "FCPublish"))
        elif name == "FCUnpublish":
            self._send_command(0, "_result", tx, None, UNDEFINED)
            self._end_publishing(None, "FCUnpublish")
        elif name in ("deleteStream", "closeStream"):
            sid = _stream_id_arg(name, args[0]) if name == "deleteStream" and args and isinstance(args[0], float) else stream_id
            self._end_publishing(sid, name)
            self._streams.discard(sid)
        elif name == "play":  # a viewer trying RTMP (ffplay rtmp://...): was "unknown command 'play'"
            self._send_on_status(stream_id, _status("error", "NetStream.Play.Failed", PLAY_REFUSED))
        elif name in ("_checkbw", "getStreamLength", "ping"):
            self._send_command(0, "_result", tx, None, UNDEFINED)
        elif name in ("_result", "_error", "onBWDone", "onStatus"):
            pass
        elif tx:
            self._send_command(0, "_error", tx, None, _status("error", "NetConnection.Call.Failed", f"unknown command {name[:32]!r}"))

    def _on_connect(self, tx: float, obj) -> None:
        if self.app is not None:
            raise RemoteProtocolError("second connect on one connection")
        if not isinstance(obj, dict):
            raise RemoteProtocolError("connect without a command object")
        app = obj.get("app")
        if not isinstance(app, str):
            raise RemoteProtocolError("connect: app is not a string")
        app = app.split("?", 1)[0].strip("/")
        if not APP_NAME_PATTERN.fullmatch(app) or DOT_SEGMENTS & set(app.split("/")):
            self._send_command(0, "_error", tx, None, _status("error", "NetConnection.Connect.Rejected", "invalid application name"))
            raise RemoteProtocolError("connect: invalid application name")
        self.app = app  # the deadline stands until a publish is accepted
        self._send(CSID_PROTOCOL, 0, MessageType.WINDOW_ACK_SIZE, 0, window_ack_size_body(SERVER_WINDOW_ACK_SIZE))
        self._send(CSID_PROTOCOL, 0, MessageType.SET_PEER_BANDWIDTH, 0, set_peer_bandwidth_body(SERVER_WINDOW_ACK_SIZE, PeerBandwidthLimit.DYNAMIC))
        self._send(CSID_PROTOCOL, 0, MessageType.USER_CONTROL, 0, user_control_body(UserControlEvent.STREAM_BEGIN, 0))
        self._send(CSID_PROTOCOL, 0, MessageType.SET_CHUNK_SIZE, 0, set_chunk_size_body(SERVER_CHUNK_SIZE))
        self._writer.chunk_size = SERVER_CHUNK_SIZE
        properties = {"fmsVer": "FMS/3,0,1,123", "capabilities": 31.0}
        if not E_RTMP_CONNECT_KEYS.isdisjoint(obj):
            properties.update(E_RTMP_SERVER_CAPS)  # an E-RTMP client: say what this server takes
            if self.reconnect:
                properties["capsEx"] = float(int(properties["capsEx"]) | _CAPS_EX_RECONNECT)
        self.can_reconnect = _says_reconnect(obj.get("capsEx"))
        self._send_command(
            0, "_result", tx, properties,
            {**_status("status", "NetConnection.Connect.Success", "Connection succeeded."), "objectEncoding": 0.0},
        )
        self._send_command(0, "onBWDone", 0.0, None, 8192.0)
        flash_ver = obj.get("flashVer")
        tc_url = obj.get("tcUrl")
        self._events.append(Connected(app, tc_url if isinstance(tc_url, str) else "", flash_ver if isinstance(flash_ver, str) else ""))

    def _on_publish(self, stream_id: int, tx: float, args: list) -> None:
        if stream_id not in self._streams:
            raise RemoteProtocolError(f"publish on message stream {stream_id} that was never created")
        if not args or not isinstance(args[0], str):
            self._send_on_status(stream_id, _status("error", "NetStream.Publish.BadName", "publish needs a stream name"))
            raise BadStreamName("publish: stream name is not a string")
        key, _, query = args[0].partition("?")
        publish_type = args[1] if len(args) > 1 and isinstance(args[1], str) else "live"
        if not STREAM_KEY_PATTERN.fullmatch(key) or key in DOT_SEGMENTS or len(query) > MAX_PUBLISH_QUERY_LENGTH:
            self._send_on_status(stream_id, _status("error", "NetStream.Publish.BadName", "invalid stream name"))
            raise BadStreamName("publish: invalid stream name")
        if stream_id in self.publishing or stream_id in self._pending:
            raise RemoteProtocolError("publish twice on one message stream")
        req = PublishRequested(stream_id, self.app, key, publish_type, query)
        self._pending[stream_id] = req
        self._events.append(req)

    def _end_publishing(self, stream_id: int | None, reason: str) -> None:
        ids = list(self.publishing) if stream_id is None else [stream_id]
        for sid in ids:
            self._media_sinks.pop(sid, None)
            if self.publishing.pop(sid, None) is not None:
                self._events.append(PublishEnded(sid, reason))
                if reason != "FCUnpublish":
                    self._send_on_status(sid, _status("status", "NetStream.Unpublish.Success", "Stop publishing."))
