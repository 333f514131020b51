"""Minimal RTMP publishers for tests: in memory (no sockets) and over a real TCP connection."""

import asyncio

from rtmpq.codec import NEED_DATA, ChunkReader, amf0_decode, amf0_encode
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
                      pipelined: list[tuple[int, int, bytes]] = (), ssl=None, source: str | None = None) -> "TcpPublisher":
        """Connect, publish ``app/key`` and wait for NetStream.Publish.Start. ``pipelined`` media
        messages (type id, timestamp, body) go in the same write as ``publish``, before its answer
        (as an encoder that saves the round trip does). ``ssl``: a client context (RTMPS);
        ``source``: the local address to connect from. A refused publish raises
        ConnectionRefusedError with the onStatus description."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ssl,
                                                       local_addr=(source, 0) if source else None)
        self = cls(reader, writer)
        async with asyncio.timeout(timeout):
            writer.write(b"\x03" + make_client_c1(digest=False))
            s0s1s2 = await reader.readexactly(1 + 2 * HANDSHAKE_SIZE)
            writer.write(s0s1s2[1 : 1 + HANDSHAKE_SIZE])  # C2 echoes S1
            self.command(0, "connect", 1.0, {"app": app, "tcUrl": f"rtmp://127.0.0.1/{app}"})
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
