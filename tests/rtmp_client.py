"""A minimal in-memory RTMP publisher for driving RtmpServerSession without sockets."""

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

    def connect_and_publish(self, key: str = "cam1", app: str = "live") -> int:
        self.handshake()
        self.command(0, "connect", 1.0, {"app": app, "type": "nonprivate", "flashVer": "FMLE/3.0 (compatible; Lavf61)",
                                         "tcUrl": f"rtmp://127.0.0.1/{app}"})
        self.command(0, "releaseStream", 2.0, None, key)
        self.command(0, "FCPublish", 3.0, None, key)
        self.command(0, "createStream", 4.0, None)
        replies = self.read_replies()
        [stream_id] = [int(r[2][3]) for r in replies if r[0] == 20 and r[2][0] == "_result" and r[2][1] == 4.0]
        self.command(stream_id, "publish", 5.0, None, key, "live", csid=8)
        return stream_id
