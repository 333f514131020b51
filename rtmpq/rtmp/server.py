"""The asyncio shell around RtmpServerSession: moves bytes and timers, hands publishes to a handler.

What a publish becomes (a broadcast, a recording) is the ingest node's business
(``nodes/ingest.py``): the server asks its ``PublishHandler`` and passes each accepted publish's
media messages to the sink the handler returned.
"""

import asyncio
from collections import Counter
import logging
import ssl
import time
from typing import Protocol

from ..codec import NEED_DATA
from ..config import IngestConfig
from ..errors import listener_error
from ..first_bytes import PLAIN_ON_TLS_PORT, WRONG_SCHEME_KINDS, WRONG_SCHEME_LOG_INTERVAL, peek, says_rtmp
from ..log_limit import LogLimiter
from .reader import SharedReader
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

# Seconds a connection whose publish we ended (taken over, idle) stays open, reading and dropping
# what the encoder still sends, before it is closed: closed at once, with media in flight, the
# socket is reset and the onStatus that says why is lost with it (ffmpeg said "Broken pipe"; now it
# prints "Server error: <why>"). An encoder that closes first ends it sooner.
STOP_LINGER = 2.0
# A graceful stop: seconds the server waits, at most, for the encoders whose publishes it just
# ended to read why and leave, before it closes their connections under them (the same reset).
# Part of [node] stop_timeout; encoders leave within milliseconds.
STOP_CLOSE_LINGER = 0.5


class PublishSink(Protocol):
    def on_message(self, msg: MediaMessage) -> None: ...
    def close(self, reason: str, clean: bool = False) -> None:
        """The publish is over; ``clean``: the publisher ended it (FCUnpublish, deleteStream,
        closeStream), else its connection dropped or was closed from here."""
    # optional: the fast path (see RtmpServerSession); when a sink has it, on_message is not used
    # def on_media(self, type_id, timestamp, body, codec, frame_type, cts, header) -> None: ...


class PublishHandler(Protocol):
    def publish_requested(self, conn: "RtmpConnection", req: PublishRequested) -> None:
        """Answer with ``conn.accept(stream_id, sink)`` or ``conn.refuse(...)``."""



class RtmpConnection(asyncio.BufferedProtocol):
    def __init__(self, server: "RtmpServer", tls: ssl.SSLContext | None = None) -> None:
        self.server = server
        self.tls = tls  # RTMPS: asyncio's SSL transport reads and decrypts (never the shared reader)
        self._tls_handshake: asyncio.Task | None = None
        self.transport: asyncio.Transport | None = None
        self.session: RtmpServerSession | None = None
        self.publishes: dict[int, PublishSink] = {}
        self.peer = "?"
        self._timer: asyncio.TimerHandle | None = None
        self._closing = False
        self._linger: asyncio.TimerHandle | None = None  # set while a stopped publish's connection lingers
        self._reader_fd: int | None = None  # set while the server's SharedReader reads this socket
        self.lost = asyncio.get_running_loop().create_future()  # done when the connection is gone

    # -- asyncio callbacks ----------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        loop = asyncio.get_running_loop()
        self.session = RtmpServerSession(now=loop.time(), limits=self.server.session_limits, peer=self.peer,
                                         reconnect=self.server.config.reconnect_wait > 0)
        limit = self._over_limit()
        if limit is not None:
            log.warning("%s: refused, %d connections open (%s)", self.peer, len(self.server.connections), limit)
            self.server.errors[limit] += 1
            transport.abort()
            return
        self.server.connections.add(self)  # a TLS handshake counts against max_connections too
        if self.tls is not None:
            # the shared reader would read ciphertext off the socket: asyncio's SSL layer reads it;
            # nothing reads before that layer is in place
            transport.pause_reading()
            self._tls_handshake = loop.create_task(self._start_tls(transport))
            return  # the session's deadline (from now) is armed once TLS is up: one failure, one log
        if self.server.reader is not None:
            self.server.reader.add(self, transport)
        self._arm_timer()

    def _over_limit(self) -> str | None:
        """The connection limit this one would pass, if any."""
        config = self.server.config
        if len(self.server.connections) >= config.max_connections:
            return "max_connections"
        ip = self.peer.rpartition(":")[0]
        if sum(1 for c in self.server.connections if c.peer.rpartition(":")[0] == ip) >= config.max_connections_per_ip:
            return "max_connections_per_ip"
        return None

    async def _start_tls(self, transport) -> None:
        """Put TLS under this connection; a handshake that fails or stalls (tls_handshake_timeout)
        costs this connection only, and is logged once. An encoder given rtmp:// for this port
        (its first byte the RTMP version, no TLS record) is told apart and told so in the log."""
        timeout = self.server.config.tls_handshake_timeout
        try:
            async with asyncio.timeout(timeout):
                first = await peek(transport, 1)
                if not first:  # closed before a byte: a TCP check (a load balancer's), no failed handshake
                    self._not_tls(transport, None)
                    return
                if says_rtmp(first[0]):
                    self.server.closed_for(self.peer, "plain RTMP on the RTMPS listener: use rtmps://",
                                           PLAIN_ON_TLS_PORT)
                    self._not_tls(transport, None)
                    return
                tls_transport = await asyncio.get_running_loop().start_tls(
                    transport, self, self.tls, server_side=True, ssl_handshake_timeout=timeout)
            if tls_transport is None:  # closed meanwhile (the server stopping)
                raise ConnectionAbortedError("closed during the TLS handshake")
        except Exception as exc:  # noqa: BLE001 - whatever it was, only this connection ends
            why = f"no TLS handshake within {timeout:g} s" if isinstance(exc, TimeoutError) else str(exc)
            log.warning("%s: RTMPS: TLS handshake failed: %s", self.peer, why or type(exc).__name__)
            self.server.errors["tls_handshake"] += 1
            self._not_tls(transport, exc)
            return
        self._tls_handshake = None
        self.transport = tls_transport
        self._arm_timer()
        if self.session.has_work:  # C0/C1 that came with the end of the handshake
            self._process()

    def _not_tls(self, transport, exc) -> None:
        self._tls_handshake = None
        transport.abort()
        self.connection_lost(exc)  # asyncio does not call it for a connection that never was TLS

    def get_buffer(self, sizehint: int):
        return self.session.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        self.server._bytes_in += nbytes
        session = self.session
        session.buffer_updated(nbytes)
        # most reads carry media only, which the session handed on already; what comes with the
        # end of a TLS handshake waits for the TLS transport (answers must not go out in clear)
        if session.has_work and self._tls_handshake is None:
            self._process()
        if self._reader_fd is not None:  # the handshake done: the shared reader's fast path from now
            self.server.reader.fast_path(self, session)

    def read_rest(self, message) -> None:
        """From the shared reader's fast path: ``message`` (or None) and what follows it, for the
        session (commands, the publish's first messages, an acknowledgement due, an error)."""
        session = self.session
        session.handle_read(message)
        if session.has_work:
            self._process()

    def eof_received(self):
        return False  # close our side too

    # -- from the SharedReader (when it reads this socket): what asyncio would do ---------------
    def read_eof(self) -> None:
        self.eof_received()
        self.transport.close()

    def read_failed(self, exc: BaseException) -> None:
        log.debug("%s: read failed: %r", self.peer, exc)
        self.transport.abort()

    def connection_lost(self, exc) -> None:
        if self._tls_handshake is not None and not self._tls_handshake.done():
            self._tls_handshake.cancel()
        if self._reader_fd is not None:
            self.server.reader.remove(self)
        self.server.connections.discard(self)
        if not self.lost.done():
            self.lost.set_result(None)
        if self._timer is not None:
            self._timer.cancel()
        if self._linger is not None:
            self._linger.cancel()
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
                if self._linger is None:  # not from a connection that is on its way out
                    self.server.handler.publish_requested(self, event)
            elif isinstance(event, PublishEnded):
                pub = self.publishes.pop(event.stream_id, None)
                if pub is not None:
                    pub.close(event.reason, clean=True)
                self._publish_idle()
            elif isinstance(event, Connected):
                log.info("%s: connected to app %r%s (%s)%s", self.peer, event.app, " over RTMPS" if self.tls else "",
                         event.flash_ver[:64], ", can reconnect when asked" if session.can_reconnect else "")
            elif isinstance(event, HandshakeCompleted):
                log.debug("%s: handshake done (digest=%s)", self.peer, event.digest)
            elif isinstance(event, ConnectionFailed):
                self.server.closed_for(self.peer, event.reason, event.kind)
                self._close()
        self._flush()  # asyncio flushes what was written before it closes

    def _publish_idle(self) -> None:
        """Start the deadline to publish again if this connection publishes nothing now."""
        self.session.publish_idle(asyncio.get_running_loop().time())
        if self._timer is None and not self._closing:
            self._arm_timer()

    def _close(self) -> None:
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- answers of the publish handler ------------------------------------------------------------
    def awaits_answer(self, stream_id: int) -> bool:
        """For a handler that answers later (the publish hook): the connection is open and its
        publish on ``stream_id`` still waits for ``accept`` or ``refuse``."""
        return (not self._closing and self.transport is not None and not self.transport.is_closing()
                and self.session.awaits_answer(stream_id))

    def accept(self, stream_id: int, sink: PublishSink) -> None:
        self.publishes[stream_id] = sink
        self.session.accept_publish(stream_id, getattr(sink, "on_media", None))
        self._flush()

    def refuse(self, stream_id: int, code: str, description: str) -> None:
        """Refuse a publish (onStatus ``code``) and close the connection."""
        self.session.reject_publish(stream_id, code, description)
        self._close()
        self._flush()

    def stop(self, stream_id: int, code: str, description: str) -> None:
        """End an accepted publish from our side (idle, taken over, stopping) and close the
        connection, STOP_LINGER seconds later: the encoder reads the onStatus first."""
        sink = self.publishes.pop(stream_id, None)
        self.session.stop_publish(stream_id, code, description)
        if self._linger is None and not self._closing:
            self._linger = asyncio.get_running_loop().call_later(STOP_LINGER, self._linger_over)
        self._flush()
        if sink is not None:
            sink.close(description)

    @property
    def can_reconnect(self) -> bool:
        """The client said in its connect that it reconnects when asked (E-RTMP capsEx Reconnect)."""
        return self.session is not None and self.session.can_reconnect

    def request_reconnect(self, description: str, tc_url: str = "") -> None:
        """Ask the client to reconnect (to ``tc_url``; empty: where it connected); its publishes
        go on as before until it ends them or leaves."""
        self.session.request_reconnect(description, tc_url)
        self._flush()

    def _linger_over(self) -> None:
        self._close()
        self._flush()

    def _flush(self) -> None:
        data = self.session.data_to_send()
        if data and not self.transport.is_closing():
            self.transport.write(data)
        if self._closing and not self.transport.is_closing():
            if self._reader_fd is not None:  # read no more, as asyncio's close() does
                self.server.reader.remove(self)
            self.transport.close()


class RtmpServer:
    """Accepts RTMP publishers and asks ``handler`` what each publish becomes."""

    def __init__(self, handler: PublishHandler, config: IngestConfig | None = None) -> None:
        self.handler = handler
        self.config = config or IngestConfig()
        self.session_limits = self.config.session_limits
        self.connections: set[RtmpConnection] = set()
        self._bytes_in = 0  # read by the connections themselves (handshakes, no shared reader)
        self.errors: Counter[str] = Counter()  # connections closed by us, by reason
        self._server: asyncio.AbstractServer | None = None
        self._tls_server: asyncio.AbstractServer | None = None  # RTMPS, when started with a context
        self.reader: SharedReader | None = None  # reads every connection's socket (None: asyncio does)
        self._wrong_scheme_log = LogLimiter(WRONG_SCHEME_LOG_INTERVAL)  # (address, kind)

    async def start(self, tls: ssl.SSLContext | None = None) -> None:
        """Listen for RTMP; with ``tls`` and [rtmp] tls_port, for RTMPS too."""
        loop = asyncio.get_running_loop()
        self.reader = SharedReader.create(loop, self.config.read_coalesce)
        try:
            self._server = await loop.create_server(
                lambda: RtmpConnection(self), self.config.host, self.config.port
            )
        except OSError as exc:
            raise listener_error(exc, "RTMP", self.config.host, self.config.port) from None
        log.info("RTMP listening on %s:%d", *self.address)
        if tls is None or self.config.tls_port is None:
            return
        # plain TCP: each connection starts TLS itself (RtmpConnection._start_tls), so that a
        # failed handshake is seen and logged, and counts against max_connections while it lasts
        try:
            self._tls_server = await loop.create_server(
                lambda: RtmpConnection(self, tls), self.config.tls_host, self.config.tls_port
            )
        except OSError as exc:
            self._server.close()
            raise listener_error(exc, "RTMPS", self.config.tls_host, self.config.tls_port) from None
        log.info("RTMPS listening on %s:%d", *self.tls_address)

    def closed_for(self, peer: str, reason: str, kind: str) -> None:
        """A connection from ``peer`` is closed for ``reason``: counted as ``kind``, and logged;
        a wrong scheme once per WRONG_SCHEME_LOG_INTERVAL per address (its encoder retries)."""
        self.errors[kind] += 1
        if kind not in WRONG_SCHEME_KINDS:
            log.warning("%s: closing connection: %s", peer, reason)
        elif self._wrong_scheme_log.due((peer.rpartition(":")[0], kind), time.monotonic()):
            log.warning("%s: closing connection: %s (said again for this address after %g s)",
                        peer, reason, WRONG_SCHEME_LOG_INTERVAL)

    @property
    def bytes_in(self) -> int:
        """Bytes received from every connection (read by metrics)."""
        return self._bytes_in + (self.reader.bytes if self.reader is not None else 0)

    @property
    def address(self) -> tuple[str, int]:
        sock = self._server.sockets[0]
        return sock.getsockname()[:2]

    @property
    def tls_address(self) -> tuple[str, int] | None:
        """Where the RTMPS listener is bound (None: no RTMPS)."""
        if self._tls_server is None:
            return None
        return self._tls_server.sockets[0].getsockname()[:2]

    def stop_listening(self) -> None:
        """Accept no more connections (a graceful stop: those open go on until ``close``)."""
        for server in (self._server, self._tls_server):
            if server is not None:
                server.close()

    async def close(self, linger: float = 0.0) -> None:
        """Close the listeners and every connection; those whose publishes were just ended (still
        lingering) get up to ``linger`` seconds to read why and leave first."""
        servers = [s for s in (self._server, self._tls_server) if s is not None]
        self.stop_listening()
        lingering = [conn.lost for conn in self.connections if conn._linger is not None]
        if lingering and linger > 0:
            await asyncio.wait(lingering, timeout=linger)
        for conn in tuple(self.connections):
            conn.transport.close()
        for server in servers:
            await server.wait_closed()
        if self.reader is not None:
            self.reader.close()
