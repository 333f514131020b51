"""The asyncio shell around RtmpServerSession: moves bytes and timers, wires publishes to broadcasts."""

import asyncio
import logging
import time

from ..codec import NEED_DATA
from ..config import IngestConfig
from ..errors import StreamNameInUse
from ..media.broadcast import Broadcast, BroadcastRegistry
from ..media.catalog import Catalog
from ..media.demux import BroadcastDemuxer
from ..media.recording import FlvRecorder
from ..redact import safe_name
from .session import (
    ConnectionFailed,
    Connected,
    HandshakeCompleted,
    MediaMessage,
    PublishEnded,
    PublishRequested,
    RtmpServerSession,
)

log = logging.getLogger("rtmpq.rtmp")


class _Publish:
    """One accepted publish: its broadcast, demuxer and (optional) recorder."""

    def __init__(self, broadcast: Broadcast, record_dir) -> None:
        self.broadcast = broadcast
        self.name = safe_name(broadcast.name)
        self.demuxer = BroadcastDemuxer(broadcast.name, log_name=self.name)
        self.recorder = FlvRecorder(record_dir, broadcast.name) if record_dir else None

    def on_message(self, msg: MediaMessage) -> None:
        if self.recorder is not None:
            self.recorder.write(msg.type_id, msg.timestamp, msg.body)
        for item in self.demuxer.message(msg.type_id, msg.timestamp, msg.body, time.time_ns()):
            if isinstance(item, Catalog):
                self.broadcast.set_catalog(item)
            else:
                self.broadcast.push(item)

    def close(self, reason: str) -> None:
        if self.recorder is not None:
            self.recorder.close()
        s = self.demuxer.stats
        log.info("%s: publish ended (%s): %d video, %d audio frames, %d dropped, %d bad access units",
                 self.name, reason, s.frames["video"], s.frames["audio"], s.dropped, s.bad_access_units)
        self.broadcast.end()


class RtmpConnection(asyncio.BufferedProtocol):
    def __init__(self, server: "RtmpServer") -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.session: RtmpServerSession | None = None
        self.publishes: dict[int, _Publish] = {}
        self.peer = "?"
        self._timer: asyncio.TimerHandle | None = None
        self._closing = False

    # -- asyncio callbacks ----------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        loop = asyncio.get_running_loop()
        self.session = RtmpServerSession(now=loop.time(), limits=self.server.config.limits, peer=self.peer)
        if len(self.server.connections) >= self.server.config.max_connections:
            log.warning("%s: refused, %d connections open (max_connections)", self.peer, len(self.server.connections))
            transport.abort()
            return
        self.server.connections.add(self)
        self._arm_timer()

    def get_buffer(self, sizehint: int):
        return self.session.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        self.session.buffer_updated(nbytes)
        self._process()

    def eof_received(self):
        return False  # close our side too

    def connection_lost(self, exc) -> None:
        self.server.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
        for pub in self.publishes.values():
            pub.close("connection closed")
        self.publishes.clear()

    # -- work -----------------------------------------------------------------------------------
    def _arm_timer(self) -> None:
        deadline = self.session.timer_deadline
        if deadline is not None:
            self._timer = asyncio.get_running_loop().call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.session.handle_timer(asyncio.get_running_loop().time())
        self._process()
        if not self._closing:
            self._arm_timer()

    def _process(self) -> None:
        session = self.session
        while (event := session.next_event()) is not NEED_DATA:
            if isinstance(event, MediaMessage):
                pub = self.publishes.get(event.stream_id)
                if pub is not None:
                    pub.on_message(event)
            elif isinstance(event, PublishRequested):
                self._on_publish_requested(event)
            elif isinstance(event, PublishEnded):
                pub = self.publishes.pop(event.stream_id, None)
                if pub is not None:
                    pub.close(event.reason)
            elif isinstance(event, Connected):
                log.info("%s: connected to app %r (%s)", self.peer, event.app, event.flash_ver[:64])
            elif isinstance(event, HandshakeCompleted):
                log.debug("%s: handshake done (digest=%s)", self.peer, event.digest)
            elif isinstance(event, ConnectionFailed):
                log.warning("%s: closing connection: %s", self.peer, event.reason)
                self._close()
        data = session.data_to_send()
        if data and not self.transport.is_closing():
            self.transport.write(data)
        if self._closing and not self.transport.is_closing():
            self.transport.close()  # after the write above: asyncio flushes before closing

    def _close(self) -> None:
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_publish_requested(self, req: PublishRequested) -> None:
        name = safe_name(req.broadcast)
        try:
            broadcast = self.server.registry.publish(req.broadcast)
        except StreamNameInUse:
            log.warning("%s: publish to %s refused: already live", self.peer, name)
            self.session.reject_publish(req.stream_id, "NetStream.Publish.BadName", "Stream already publishing")
            self._close()
            return
        try:
            self.publishes[req.stream_id] = _Publish(broadcast, self.server.config.record_dir)
        except OSError as exc:
            log.error("%s: cannot record %s: %s", self.peer, name, exc)
            broadcast.end()
            self.session.reject_publish(req.stream_id, "NetStream.Publish.Failed", "Recording failed")
            self._close()
            return
        log.info("%s: publishing %s", self.peer, name)
        self.session.accept_publish(req.stream_id)


class RtmpServer:
    """Accepts RTMP publishers and turns each publish into a broadcast of ``registry``."""

    def __init__(self, registry: BroadcastRegistry, config: IngestConfig | None = None) -> None:
        self.registry = registry
        self.config = config or IngestConfig()
        self.connections: set[RtmpConnection] = set()
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: RtmpConnection(self), self.config.rtmp_host, self.config.rtmp_port
        )
        log.info("RTMP listening on %s:%d", *self.address)

    @property
    def address(self) -> tuple[str, int]:
        sock = self._server.sockets[0]
        return sock.getsockname()[:2]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for conn in tuple(self.connections):
                conn.transport.close()
            await self._server.wait_closed()
