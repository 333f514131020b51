"""Minimal RTMP publishers for tests: in memory (no sockets) and over a real TCP connection."""

import asyncio

from urllib.parse import urlsplit

from rtmpq.codec import NEED_DATA, ChunkReader, amf0_decode, amf0_encode, parse_audio_tag, parse_video_tag
from rtmpq.codec.flv_types import PACKET_CODED_FRAMES
from rtmpq.media.flv import read_flv_tags
from rtmpq.rtmp.chunk_writer import ChunkWriter
from rtmpq.rtmp.handshake import HANDSHAKE_SIZE, make_client_c1
from rtmpq.rtmp.session import RtmpServerSession


class InMemoryPublisher:
    def __init__(self, session: RtmpServerSession, *, digest: bool = True, chunk_size: int = 128) -> None:
        self.session = session
        self.writer = ChunkWriter(128)
        self.chunk_size = chunk_size  # announced with Set Chunk Size right after the handshake, as OBS does
        self.reader = ChunkReader()
        self.digest = digest
        self.replies: list = []  # every message the server sent, decoded
        self.s1s2 = b""

    def handshake(self, *, c2: bytes | None = None) -> None:
        self.c1 = make_client_c1(digest=self.digest)
        self.session.receive_data(b"\x03" + self.c1)
        out = self.session.data_to_send()
        assert out[0] == 3 and len(out) == 1 + 2 * HANDSHAKE_SIZE
        self.s1s2 = out[1:]
        self.session.receive_data(c2 if c2 is not None else self.s1s2[:HANDSHAKE_SIZE])
        if self.chunk_size != 128:
            self.send(2, 0, 1, 0, self.chunk_size.to_bytes(4, "big"))
            self.writer.chunk_size = self.chunk_size

    def send(self, csid: int, timestamp: int, type_id: int, stream_id: int, body: bytes, **kw) -> None:
        self.session.receive_data(self.writer.write(csid, timestamp, type_id, stream_id, body, **kw))

    def command(self, stream_id: int, *values, csid: int = 3) -> None:
        self.send(csid, 0, 20, stream_id, amf0_encode(*values))

    def read_replies(self) -> list:
        self.reader.receive_data(self.session.data_to_send())
        new = []
        while (msg := self.reader.next_message()) is not NEED_DATA:
            body = bytes(msg.body)
            new.append((msg.type_id, msg.stream_id, amf0_decode(body) if msg.type_id == 20 else body))
        self.replies += new
        return new

    def events(self) -> list:
        out = []
        while (ev := self.session.next_event()) is not NEED_DATA:
            out.append(ev)
        return out

    def connect_and_publish(self, key: str = "cam1", app: str = "live", pipelined: list[tuple[int, int, bytes]] = ()) -> int:
        """Connect and publish; ``pipelined`` media messages (type id, timestamp, body) are fed
        with ``publish`` in one piece, before its answer."""
        self.handshake()
        self.command(0, "connect", 1.0, {"app": app, "type": "nonprivate", "flashVer": "FMLE/3.0 (compatible; Lavf61)",
                                         "tcUrl": f"rtmp://127.0.0.1/{app}"})
        self.command(0, "releaseStream", 2.0, None, key)
        self.command(0, "FCPublish", 3.0, None, key)
        self.command(0, "createStream", 4.0, None)
        replies = self.read_replies()
        [stream_id] = [int(r[2][3]) for r in replies if r[0] == 20 and r[2][0] == "_result" and r[2][1] == 4.0]
        out = [self.writer.write(8, 0, 20, stream_id, amf0_encode("publish", 5.0, None, key, "live"))]
        out += [self.writer.write(4 if t == 8 else 6, ts, t, stream_id, body) for t, ts, body in pipelined]
        self.session.receive_data(b"".join(out))
        return stream_id


class TcpPublisher:
    """A minimal RTMP publisher over a real TCP connection: plain handshake, connect, publish.

    ``send`` writes any message, so a test can follow good media with bad bytes; ``closed`` tells
    whether the server closed the connection.
    """

    def __init__(self, reader, writer) -> None:
        self.reader = reader
        self.writer = writer
        self.chunks = ChunkWriter(128)
        self.replies = ChunkReader()
        self.stream_id = 0

    @classmethod
    async def publish(cls, port: int, key: str, app: str = "live", timeout: float = 10.0,
                      pipelined: list[tuple[int, int, bytes]] = (), ssl=None, source: str | None = None,
                      connect: dict | None = None) -> "TcpPublisher":
        """Connect, publish ``app/key`` and wait for NetStream.Publish.Start. ``pipelined`` media
        messages (type id, timestamp, body) go in the same write as ``publish``, before its answer
        (as an encoder that saves the round trip does). ``ssl``: a client context (RTMPS);
        ``source``: the local address to connect from; ``connect``: more properties of the connect
        command object (E-RTMP's capsEx). A refused publish raises ConnectionRefusedError with the
        onStatus description."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ssl,
                                                       local_addr=(source, 0) if source else None)
        self = cls(reader, writer)
        async with asyncio.timeout(timeout):
            writer.write(b"\x03" + make_client_c1(digest=False))
            s0s1s2 = await reader.readexactly(1 + 2 * HANDSHAKE_SIZE)
            writer.write(s0s1s2[1 : 1 + HANDSHAKE_SIZE])  # C2 echoes S1
            self.command(0, "connect", 1.0, {"app": app, "tcUrl": f"rtmp://127.0.0.1/{app}", **(connect or {})})
            self.command(0, "createStream", 2.0, None)
            reply = await self.wait_command(lambda v: v[0] == "_result" and v[1] == 2.0)
            self.stream_id = int(reply[3])
            out = [self.chunks.write(8, 0, 20, self.stream_id, amf0_encode("publish", 3.0, None, key, "live"))]
            out += [self.chunks.write(4 if t == 8 else 6, ts, t, self.stream_id, body) for t, ts, body in pipelined]
            writer.write(b"".join(out))
            status = (await self.wait_command(lambda v: v[0] == "onStatus" and v[3]["code"].startswith("NetStream.Publish")))[3]
            if status["code"] != "NetStream.Publish.Start":
                writer.close()
                raise ConnectionRefusedError(status.get("description", status["code"]))
        return self

    def send(self, csid: int, timestamp: int, type_id: int, stream_id: int, body: bytes) -> None:
        self.writer.write(self.chunks.write(csid, timestamp, type_id, stream_id, body))

    def command(self, stream_id: int, *values, csid: int = 3) -> None:
        self.send(csid, 0, 20, stream_id, amf0_encode(*values))

    def media(self, type_id: int, timestamp: int, body: bytes) -> None:
        self.send(4 if type_id == 8 else 6, timestamp, type_id, self.stream_id, body)

    async def wait_command(self, match) -> list:
        while True:
            while (msg := self.replies.next_message()) is not NEED_DATA:
                if msg.type_id == 20 and match(values := amf0_decode(bytes(msg.body))):
                    return values
            data = await self.reader.read(65536)
            if not data:
                raise ConnectionError("server closed the connection")
            self.replies.receive_data(data)

    async def closed(self, timeout: float = 10.0) -> bool:
        """True when the server closes the connection (EOF or reset) within the timeout."""
        try:
            await self.writer.drain()
            async with asyncio.timeout(timeout):
                while await self.reader.read(65536):
                    pass
            return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False

    @property
    def local_address(self) -> str:
        host, port = self.writer.get_extra_info("sockname")[:2]
        return f"{host}:{port}"

    def close(self) -> None:
        self.writer.close()


RECONNECT_REQUEST = "NetConnection.Connect.ReconnectRequest"


def coded_frame(tag_type: int, body: bytes) -> bool:
    """An audio or video tag that carries a frame (not a sequence header, not metadata)."""
    if tag_type == 9:
        return parse_video_tag(body).packet_type == PACKET_CODED_FRAMES
    return tag_type == 8 and parse_audio_tag(body).packet_type == PACKET_CODED_FRAMES


class ReconnectingPublisher:
    """An E-RTMP publisher that says it can reconnect (capsEx Reconnect in connect) and does what
    E-RTMP v2's client does when asked (NetConnection.Connect.ReconnectRequest): it goes on to its
    next key frame, connects to the request's tcUrl, publishes there from that key frame (its
    sequence headers first) and leaves the old server (deleteStream, then closes and reads to the
    end). ``follow=False``: it says it can reconnect and never does (publishes on until the server
    closes). The tags of an FLV file are sent paced by their timestamps; after a move, those of
    ``after_move_ms`` more, then it leaves that server too.

    ``sent``: coded frames sent to each server in turn; ``statuses``: the onStatus commands each
    got (the whole command: name, transaction id, command object, info object); ``left``: when
    it left each server (loop time: it sent deleteStream, or the server closed the connection)."""

    def __init__(self, flv_path, key: str, *, follow: bool = True, after_move_ms: int = 500) -> None:
        self.tags = list(read_flv_tags(flv_path))
        self.headers = [t for t in self.tags if not coded_frame(t[0], t[2])][:3]  # metadata, sequence headers
        self.key = key
        self.follow = follow
        self.after_move_ms = after_move_ms
        self.sent: list[int] = []
        self.statuses: list[list] = []
        self.left: list[float] = []
        self._leaving: set[TcpPublisher] = set()

    @property
    def request(self) -> dict | None:
        """The info object of the first ReconnectRequest (None: none came)."""
        return next((v[3] for v in self.statuses if v[0] == "onStatus" and v[3].get("code") == RECONNECT_REQUEST), None)

    async def _publish(self, port: int, app: str, pipelined=()) -> tuple[TcpPublisher, asyncio.Task]:
        pub = await TcpPublisher.publish(port, self.key, app, pipelined=pipelined,
                                         connect={"capsEx": 1.0, "tcUrl": f"rtmp://127.0.0.1:{port}/{app}"})
        self.sent.append(0)
        statuses = self.statuses

        async def listen():  # every onStatus, until the server closes
            try:
                await pub.wait_command(lambda v: v[0] == "onStatus" and statuses.append(v))
            except (ConnectionError, OSError):
                pass
            if pub not in self._leaving:
                self.left.append(asyncio.get_running_loop().time())

        return pub, asyncio.ensure_future(listen())

    async def _leave(self, pub: TcpPublisher, listening: asyncio.Task) -> None:
        self._leaving.add(pub)
        self.left.append(asyncio.get_running_loop().time())
        pub.command(pub.stream_id, "deleteStream", 9.0, None, float(pub.stream_id))
        await pub.writer.drain()
        pub.writer.write_eof()
        await asyncio.wait_for(listening, 10)
        pub.close()

    async def run(self, port: int, app: str = "live") -> None:
        pub, listening = await self._publish(port, app)
        loop = asyncio.get_running_loop()
        start, moved_at = loop.time(), None
        try:
            for tag_type, ts, body in self.tags:
                if listening.done():  # the server closed the connection
                    return
                if (delay := start + ts / 1000 - loop.time()) > 0:
                    await pub.writer.drain()
                    await asyncio.sleep(delay)
                frame = coded_frame(tag_type, body)
                if (moved_at is None and self.follow and self.request is not None and tag_type == 9 and frame
                        and parse_video_tag(body).frame_type == 1):
                    to = urlsplit(self.request.get("tcUrl") or f"rtmp://127.0.0.1:{port}/{app}")
                    new = await self._publish(to.port or 1935, to.path.strip("/"), pipelined=self.headers)
                    await self._leave(pub, listening)
                    (pub, listening), moved_at = new, ts
                elif moved_at is not None and ts > moved_at + self.after_move_ms:
                    break
                pub.media(tag_type, ts, body)
                self.sent[-1] += frame
            await self._leave(pub, listening)
        except ConnectionError:  # the server closed the connection before its reader saw it
            await asyncio.wait_for(listening, 10)
        finally:
            listening.cancel()
            pub.close()
