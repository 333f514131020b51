"""HttpServer: every node's HTTP listener, h11 and h2 under a thin asyncio shell.

The protocol cores are h11 (HTTP/1.1) and h2 (HTTP/2): sans-I/O state machines that take bytes
in and give bytes out. This module only moves those bytes and enforces what a public listener
needs, each a named setting in ``[http]`` (rtmpq/config.py):

- ``max_connections`` / ``max_connections_per_ip``: more are answered 503 and closed at accept;
- ``max_header_bytes``: a request head larger than this is answered 431 and the connection closed
  (HTTP/2: the stream is answered 431 and the connection goes on, but h2 itself closes one whose
  client sends a longer list after acknowledging our SETTINGS_MAX_HEADER_LIST_SIZE, and a header
  block longer than twice this as sent closes it: HeaderBlockMeter);
- ``max_request_bytes``: a body, or pipelined requests not read yet, beyond this: 413, or the
  socket stops being read until the requests before are answered;
- ``request_timeout``: a request head must arrive within this after the connection opens or the
  previous response was written (an idle keep-alive connection is closed after it; on HTTP/2,
  one with no request begun or answered for this long, whatever else it sends);
- ``write_timeout``: each piece of a response must be taken by the socket within this, or the
  connection is dropped. Bodies are written in pieces of ``WRITE_PIECE`` bytes, each after the
  socket has taken the one before (``write_buffer_bytes`` at most queued in user space), so a
  client that stops reading holds one piece of our memory, not a segment per pipelined request,
  and is dropped after ``write_timeout``; a slow one that keeps reading gets the whole body.
  On HTTP/2, whose peer makes us write by itself (PING and SETTINGS ACKs), a connection whose
  socket holds more than ``write_buffer_bytes`` unsent is not read until it has taken them, and
  is dropped after ``write_timeout`` of that;
- ``max_stream_resets`` / ``max_control_frames`` (HTTP/2, per second per connection): past them
  (Rapid Reset; PING, SETTINGS, PRIORITY, WINDOW_UPDATE floods) GOAWAY ENHANCE_YOUR_CALM, closed.

HTTP/2 is offered (ALPN ``h2``) when the listener has a certificate (``--http-cert``/
``--http-key``); plain HTTP/1.1 is the default.

A client given the wrong scheme is told apart by its first byte (rtmpq/first_bytes.py), logged
once per ``WRONG_SCHEME_LOG_INTERVAL`` per address and counted (``rtmpq_errors_total``):
http:// to the HTTPS listener is answered a plain-text 400 that says to use https:// (as nginx
does; a TLS listener that handed the socket to TLS at once sent nothing and logged nothing), and
https:// to the plain listener, which cannot be answered in HTTP, is closed at once, and so is
an encoder given this port (rtmp://) on either.
"""

import asyncio
import logging
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from http import HTTPStatus

import h2.config
import h2.errors
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import h11

from ..errors import listener_error
from ..first_bytes import (PLAIN_ON_TLS_PORT, RTMP_ON_HTTP_PORT, TLS_ON_PLAIN_PORT, WRONG_SCHEME_LOG_INTERVAL, peek,
                           says_http, says_rtmp, says_tls)
from ..log_limit import LogLimiter
from ..moq.tls import load_cert_chain
from .message import Request, Response, origin_form, text

log = logging.getLogger("rtmpq.http")

# A response body is handed to the socket in pieces of at most this many bytes.
WRITE_PIECE = 64 * 1024
# HTTP/2: a connection's stream resets and control frames are counted over this many seconds
# against [http] max_stream_resets and max_control_frames (both per second).
FLOOD_WINDOW = 1.0
# HTTP/2 frames that ask work of us and are no request (with RST_STREAM and empty DATA frames):
# counted against [http] max_control_frames.
_CONTROL_EVENTS = (h2.events.PingReceived, h2.events.PingAckReceived, h2.events.RemoteSettingsChanged,
                   h2.events.PriorityUpdated, h2.events.WindowUpdated, h2.events.UnknownFrameReceived)

Handler = Callable[[Request], Awaitable[Response]]


class HttpStats:
    """Plain counters, read when metrics are scraped (no work per request beyond an add)."""

    def __init__(self) -> None:
        self.accepted = 0
        self.open = 0
        self.requests = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.errors: Counter[str] = Counter()  # by reason


def https_context(config) -> ssl.SSLContext:
    """The TLS context of an [http] section with certfile and keyfile (ConfigError naming them if
    they do not load); HTTP/2 offered by ALPN."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    load_cert_chain(ctx, config.certfile, config.keyfile, "http.certfile/http.keyfile (--http-cert/--http-key)")
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    return ctx


class HttpServer:
    def __init__(self, handler: Handler, config, *, server_header: str = "rtmpq", sock=None) -> None:
        """``config`` is an [http] section (rtmpq.config.HttpConfig); ``sock``: a listening socket
        to serve on instead of binding [http] host:port."""
        self.handler = handler
        self.sock = sock
        self.config = config
        self.server_header = server_header
        self.stats = HttpStats()
        self.tls = bool(config.certfile and config.keyfile)
        # loaded here, not in start(): a certificate that does not load stops a node before any of
        # its listeners is up (up's log said "RTMP listening on ...", then it exited on this)
        self._ctx = https_context(config) if self.tls else None
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[_Connection] = set()
        self._per_ip: Counter[str] = Counter()
        self._gates: set[_TlsGate] = set()  # TLS listener: connections not past their TLS handshake
        self._wrong_scheme_log = LogLimiter(WRONG_SCHEME_LOG_INTERVAL)  # (address, kind)
        self.closing = False

    async def start(self) -> None:
        ctx = self._ctx
        loop = asyncio.get_running_loop()
        try:
            where = {"sock": self.sock} if self.sock is not None else {"host": self.config.host, "port": self.config.port}
            # plain TCP on both: a TLS connection's first byte is read before TLS starts (_TlsGate)
            self._server = await loop.create_server(lambda: _TlsGate(self) if ctx else _Connection(self), **where)
        except OSError as exc:
            raise listener_error(exc, "HTTP", self.config.host, self.config.port) from None

    @property
    def address(self) -> tuple[str, int]:
        return self._server.sockets[0].getsockname()[:2]

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    def buffered_bytes(self) -> int:
        """Response bytes queued in user space for all connections (read at scrape time)."""
        return sum(c.buffered_bytes() for c in self._connections)

    async def close(self) -> None:
        self.closing = True
        if self._server is not None:
            self._server.close()
        for c in [*self._connections, *self._gates]:
            c.transport.abort()
        if self._server is not None:
            await self._server.wait_closed()

    def _admit(self, c: "_Connection") -> str | None:
        """None, or why the connection is refused."""
        if len(self._connections) >= self.config.max_connections:
            return "max_connections"
        if self._per_ip[c.client] >= self.config.max_connections_per_ip:
            return "max_connections_per_ip"
        self._connections.add(c)
        self._per_ip[c.client] += 1
        self.stats.accepted += 1
        self.stats.open += 1
        return None

    def peer_error(self, transport: asyncio.Transport, kind: str, what: str) -> None:
        """A client on ``transport`` spoke another protocol, or abused this one (``kind``): counted,
        and logged once per WRONG_SCHEME_LOG_INTERVAL per address (a client that retries is said
        once)."""
        self.stats.errors[kind] += 1
        peer = transport.get_extra_info("peername") or ("?", 0)
        if self._wrong_scheme_log.due((peer[0], kind), time.monotonic()):
            log.warning("http: %s:%d: %s (said again for this address after %g s)", peer[0], peer[1], what,
                        WRONG_SCHEME_LOG_INTERVAL)

    def _forget(self, c: "_Connection") -> None:
        if c in self._connections:
            self._connections.discard(c)
            self.stats.open -= 1
            self._per_ip[c.client] -= 1
            if self._per_ip[c.client] <= 0:
                del self._per_ip[c.client]


_REFUSED = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: 21\r\n"
            b"connection: close\r\n\r\ntoo many connections\n")


RTMP_ON_HTTP = "an RTMP client (rtmp://) on the HTTP listener: publish to the RTMP port"
_PLAIN_BODY = b"This port speaks HTTPS: use https:// (a plain HTTP request was sent to the HTTPS port)\n"
_PLAIN_ON_TLS = (b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n"
                 b"connection: close\r\n\r\n%s" % (len(_PLAIN_BODY), _PLAIN_BODY))


class _TlsGate(asyncio.Protocol):
    """A connection to the HTTPS listener until its TLS handshake is done, all within
    request_timeout: its first byte says whether it is TLS. A plain HTTP request (http:// to this
    port) is read to the end of its head, answered a 400 in plain text that says to use
    https://, and closed; anything else goes on to the TLS handshake, after which a _Connection
    (HTTP/2 or HTTP/1.1, as ALPN says) takes it. A failed handshake is counted (tls_handshake)."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self._head_bytes = 0  # of a plain request, read to find the end of its head
        self._tail = b""  # its last bytes, which may begin that end
        self._head_read: asyncio.Future | None = None
        self._task: asyncio.Task | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        transport.pause_reading()
        self.server._gates.add(self)
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        server, transport = self.server, self.transport
        timeout = server.config.request_timeout
        conn = _Connection(server)
        first = b""
        try:
            async with asyncio.timeout(timeout):
                first = await peek(transport, 1)
                if not first:  # closed before a byte (a TCP health check): nothing to say
                    transport.abort()
                    return
                if says_http(first[0]):
                    server.peer_error(transport, PLAIN_ON_TLS_PORT, "plain HTTP on the HTTPS listener: use https://")
                    await self._refuse_plain()
                    return
                if says_rtmp(first[0]):
                    server.peer_error(transport, RTMP_ON_HTTP_PORT, RTMP_ON_HTTP)
                    transport.abort()
                    return
                tls = await asyncio.get_running_loop().start_tls(transport, conn, server._ctx, server_side=True,
                                                                 ssl_handshake_timeout=timeout)
            if tls is None:
                raise ConnectionAbortedError("closed during the TLS handshake")
        except Exception as exc:  # noqa: BLE001 - whatever it was, only this connection ends
            if not (first and says_http(first[0])):  # a plain request that never ended is counted already
                log.debug("http: TLS handshake with %s failed: %r", transport.get_extra_info("peername"), exc)
                server.stats.errors["tls_handshake"] += 1
            transport.abort()
            return
        finally:
            server._gates.discard(self)
        conn.connection_made(tls)

    async def _refuse_plain(self) -> None:
        self._head_read = asyncio.get_running_loop().create_future()
        self.transport.resume_reading()
        await self._head_read  # read first: a socket closed with bytes unread is reset, the answer lost
        self.transport.write(_PLAIN_ON_TLS)
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        self.server.stats.bytes_in += len(data)
        self._head_bytes += len(data)
        seen, self._tail = self._tail + data[:4], data[-3:]
        ended = b"\r\n\r\n" in seen or b"\r\n\r\n" in data
        if (ended or self._head_bytes > self.server.config.max_header_bytes) and not self._head_read.done():
            self._head_read.set_result(None)

    def eof_received(self):
        if self._head_read is not None and not self._head_read.done():
            self._head_read.set_result(None)
        return True  # keep our side open to answer

    def connection_lost(self, exc) -> None:
        self.server._gates.discard(self)
        if self._task is not None and not self._task.done():
            self._task.cancel()


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


class _Connection(asyncio.Protocol):
    """One accepted socket: limits, write backpressure, and the driver for its HTTP version."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.config = server.config
        self.stats = server.stats
        self.transport: asyncio.Transport | None = None
        self.client = "?"
        self.driver: _H1 | _H2 | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        self.closed = False
        self._early = bytearray()  # TLS: what came with the end of the handshake, before connection_made
        self._first = not server.tls  # a plain listener's first bytes may be a TLS ClientHello

    # -- asyncio ----------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.client = peer[0] if peer else "?"
        refused = self.server._admit(self) if not self.server.closing else "closing"
        if refused is not None:
            self.stats.errors[refused] += 1
            self.closed = True
            transport.write(_REFUSED)
            transport.close()
            return
        transport.set_write_buffer_limits(high=self.config.write_buffer_bytes)
        sslobj = transport.get_extra_info("ssl_object")
        alpn = sslobj.selected_alpn_protocol() if sslobj is not None else None
        self.driver = _H2(self) if alpn == "h2" else _H1(self)
        self.driver.start()
        if self._early:
            self.driver.data_received(bytes(self._early))
            self._early.clear()

    def data_received(self, data: bytes) -> None:
        self.stats.bytes_in += len(data)
        if self.transport is None:  # TLS: asyncio reads on before start_tls returns
            self._early += data
            return
        if self._first and data:
            self._first = False
            kind, what = ((TLS_ON_PLAIN_PORT, "a TLS client on the plain HTTP listener: use http:// or configure "
                           "--http-cert") if says_tls(data[0]) else
                          (RTMP_ON_HTTP_PORT, RTMP_ON_HTTP) if says_rtmp(data[0]) else (None, ""))
            if kind is not None:  # neither can be answered in HTTP
                self.server.peer_error(self.transport, kind, what)
                self.closed = True
                self.transport.abort()
                return
        if self.driver is not None and not self.closed:
            self.driver.data_received(data)

    def eof_received(self):
        if self.transport is None:  # TLS: closed as the handshake ended, before connection_made
            return None
        if self.driver is not None:
            self.driver.data_received(b"")
        return self.transport.get_extra_info("sslcontext") is None  # keep a half-closed socket open to answer

    def pause_writing(self) -> None:
        self._writable.clear()
        if self.driver is not None:
            self.driver.writing_paused()

    def resume_writing(self) -> None:
        self._writable.set()
        if self.driver is not None:
            self.driver.writing_resumed()

    def connection_lost(self, exc) -> None:
        self.closed = True
        self._writable.set()
        self.server._forget(self)
        if self.driver is not None:
            self.driver.lost()

    # -- used by the drivers ----------------------------------------------------------------------
    def write(self, data) -> None:
        # closing: a send failed (the peer reset) and connection_lost is still to come; asyncio
        # would drop each write and warn from the fifth on
        if not self.closed and not self.transport.is_closing():
            self.stats.bytes_out += len(data)
            self.transport.write(data)

    async def drain(self) -> None:
        """Wait until the socket has taken what we queued (down to the low-water mark): at most
        write_timeout, which bounds a reader's stall, not a response (a slow reader that keeps
        taking bytes gets a body of any size)."""
        if self.closed or self.transport.is_closing():
            raise ConnectionError("closed")
        if self._writable.is_set():
            return
        try:
            await asyncio.wait_for(self._writable.wait(), self.config.write_timeout)
        except TimeoutError:
            self.abort("write_timeout")
            raise ConnectionError("write timeout") from None
        if self.closed:
            raise ConnectionError("closed")

    def buffered_bytes(self) -> int:
        return self.transport.get_write_buffer_size() if self.transport is not None and not self.closed else 0

    def abort(self, reason: str) -> None:
        """Drop the connection, counted once under ``reason`` (an HTTP/2 connection's streams
        that each time out waiting for its window are one client dropped)."""
        if not self.closed:
            self.stats.errors[reason] += 1
            self.closed = True
            self.transport.abort()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.close()

    async def respond(self, request: Request) -> Response:
        self.stats.requests += 1
        try:
            return await self.server.handler(request)
        except (asyncio.CancelledError, ConnectionError):
            raise
        except Exception:
            log.exception("http: %s %s failed", request.method, request.path)
            self.stats.errors["handler"] += 1
            return text(500, "internal error")

    def head_fields(self, response: Response) -> list[tuple[str, str]]:
        """Header fields of ``response`` as HTTP/1.1 writes them (HTTP/2 lower-cases the names)."""
        return [("Content-Type", response.content_type), ("Content-Length", str(response.length)),
                ("Cache-Control", response.cache), ("Access-Control-Allow-Origin", "*"),
                ("Server", self.server.server_header), *response.headers]


def _has_both_lengths(headers) -> bool:
    """A request head (h11's headers, names lower-cased) says both Content-Length and
    Transfer-Encoding: h11 frames it by the latter, a proxy in front may by the former."""
    names = {name for name, _ in headers}
    return b"content-length" in names and b"transfer-encoding" in names


class _H1:
    """HTTP/1.1 on h11: one request at a time (pipelined ones wait in h11's buffer, bounded)."""

    def __init__(self, c: _Connection) -> None:
        self.c = c
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=c.config.max_header_bytes)
        self._readable = asyncio.Event()
        self._reading_paused = False
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def data_received(self, data: bytes) -> None:
        try:
            self.h11.receive_data(data)
        except RuntimeError:  # data after the connection was closed: ignore
            return
        if not self._reading_paused and len(self.h11.trailing_data[0]) > self.c.config.max_request_bytes:
            self._reading_paused = True  # the requests before must be answered first
            self.c.transport.pause_reading()
        self._readable.set()

    def lost(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def writing_paused(self) -> None:  # HTTP/1.1 writes only responses, each drained
        pass

    def writing_resumed(self) -> None:
        pass

    def _resume_reading(self) -> None:
        if self._reading_paused and not self.c.closed:
            self._reading_paused = False
            self.c.transport.resume_reading()

    async def _run(self) -> None:
        try:
            while True:
                request = await self._next_request()
                if request is None:
                    break
                response = await self.c.respond(request)
                await self._send(response, head_only=request.method == "HEAD")
                if self.h11.our_state is not h11.DONE or self.h11.their_state is not h11.DONE or self.c.server.closing:
                    break
                self.h11.start_next_cycle()
                if len(self.h11.trailing_data[0]) <= self.c.config.max_request_bytes:
                    self._resume_reading()
        except (ConnectionError, h11.LocalProtocolError):
            pass
        except asyncio.CancelledError:
            return
        finally:
            self.c.close()

    async def _next_request(self) -> Request | None:
        deadline = time.monotonic() + self.c.config.request_timeout
        request = None
        body = 0
        while True:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint
                self.c.stats.errors["header_too_large" if status == 431 else "bad_request"] += 1
                # h11 says what was wrong, then quotes the bytes: the reason alone goes back (a
                # request line may hold a token, and the client needs no echo of what it sent)
                await self._send_error(status, str(exc).split(":", 1)[0] or HTTPStatus(status).phrase)
                return None
            if event is h11.NEED_DATA:
                self._resume_reading()
                self._readable.clear()
                try:
                    await asyncio.wait_for(self._readable.wait(), max(0.0, deadline - time.monotonic()))
                except TimeoutError:
                    idle = request is None and not self.h11.trailing_data[0]
                    if not idle:
                        self.c.stats.errors["request_timeout"] += 1
                    return None
                continue
            if isinstance(event, h11.Request):
                # h11 bounds a head still arriving; one that came whole is measured here
                head = len(event.target) + 16 + sum(len(k) + len(v) + 4 for k, v in event.headers.raw_items())
                if head > self.c.config.max_header_bytes:
                    self.c.stats.errors["header_too_large"] += 1
                    await self._send_error(431, "request head too large")
                    return None
                if _has_both_lengths(event.headers):  # request smuggling: refused (RFC 9112 6.1)
                    self.c.stats.errors["bad_request"] += 1
                    await self._send_error(400, "both Content-Length and Transfer-Encoding")
                    return None
                target = origin_form(event.target.decode("latin-1"))
                path, _, query = target.partition("?")
                headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in event.headers}
                request = Request(event.method.decode("ascii", "replace"), path, query, headers, self.c.client,
                                  event.http_version.decode("ascii"))
            elif isinstance(event, h11.Data):
                body += len(event.data)
                if body > self.c.config.max_request_bytes:
                    self.c.stats.errors["request_too_large"] += 1
                    await self._send_error(413, "request body too large")
                    return None
            elif isinstance(event, h11.EndOfMessage):
                return request
            else:  # ConnectionClosed, or PAUSED after a protocol switch we never agree to
                return None

    async def _send_error(self, status: int, message: str) -> None:
        if self.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        response = text(status, message)
        response.headers.append(("Connection", "close"))
        try:
            await self._send(response, head_only=False)
        except h11.LocalProtocolError:
            pass

    async def _send(self, response: Response, *, head_only: bool) -> None:
        c = self.c
        head = h11.Response(status_code=response.status, headers=c.head_fields(response),
                            reason=_reason(response.status))
        c.write(self.h11.send(head))
        if not head_only:
            for chunk in response.chunks():
                view = memoryview(chunk)
                for off in range(0, len(view), WRITE_PIECE):
                    for piece in self.h11.send_with_data_passthrough(h11.Data(data=view[off:off + WRITE_PIECE])):
                        c.write(piece)
                    await c.drain()
        c.write(self.h11.send(h11.EndOfMessage()))
        await c.drain()


_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# How the last this many HTTP/2 streams of a connection closed, as h2 remembers it (to ignore
# frames still coming on a stream it reset). h2 keeps 65,536 (MAX_CLOSED_STREAMS): ~7 MiB of a
# connection that lives that many requests, a player's in two or three hours of LL-HLS.
H2_CLOSED_STREAMS_KEPT = 1024


class _H2Connection(h2.connection.H2Connection):
    MAX_CLOSED_STREAMS = H2_CLOSED_STREAMS_KEPT


class HeaderBlockMeter:
    """HTTP/2 frame heads read as the bytes come, before h2 buffers them: each header block as
    sent (a HEADERS frame and the CONTINUATION frames after it up to END_HEADERS) is measured.
    h2 keeps up to 64 frames of an unfinished block (h2.frame_buffer.CONTINUATION_BACKLOG), each
    up to 16 KiB: 1.6 MiB of the node's memory per connection, measured. ``feed`` says False once
    a block passes ``limit`` bytes. (A block as sent is no longer than the header list it decodes
    to, as SETTINGS_MAX_HEADER_LIST_SIZE counts that, but for HEADERS padding and priority.)"""

    _HEADERS, _CONTINUATION, _END_HEADERS = 0x1, 0x9, 0x4

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._head = bytearray()  # of the next frame, until its 9 bytes are in
        self._skip = len(_H2_PREFACE)  # the client's preface, then each frame's payload
        self._block = 0  # bytes of the header block not ended yet

    def feed(self, data: bytes) -> bool:
        view, pos, end = memoryview(data), 0, len(data)
        while pos < end:
            if self._skip:
                taken = min(self._skip, end - pos)
                self._skip -= taken
                pos += taken
                continue
            need = 9 - len(self._head)
            self._head += view[pos:pos + need]
            pos += need
            if len(self._head) < 9:
                break
            length, kind, flags = int.from_bytes(self._head[:3], "big"), self._head[3], self._head[4]
            self._head.clear()
            self._skip = length
            if kind == self._HEADERS:
                self._block = length
            elif kind == self._CONTINUATION:
                self._block += length
            else:
                continue
            if self._block > self.limit:
                return False
            if flags & self._END_HEADERS:
                self._block = 0
        return True


class _H2:
    """HTTP/2 on h2: a task per stream, the peer's flow-control windows respected."""

    def __init__(self, c: _Connection) -> None:
        self.c = c
        config = h2.config.H2Configuration(client_side=False, header_encoding=None)
        self.h2 = _H2Connection(config)
        self._streams: dict[int, asyncio.Task] = {}
        self._pending: dict[int, tuple[Request, int]] = {}  # stream -> (request, body bytes so far)
        self._window = asyncio.Event()
        self._last_active = time.monotonic()
        self._watchdog: asyncio.Task | None = None
        self._stalled: asyncio.TimerHandle | None = None  # drops a peer that stopped reading
        # in this FLOOD_WINDOW: streams the peer reset, and its control frames (less 2 per DATA
        # frame we sent it: a reader opens its windows as it reads)
        self._counted_since = self._last_active
        self._resets = 0
        self._control = 0
        self._blocks = HeaderBlockMeter(2 * c.config.max_header_bytes)

    def start(self) -> None:
        self.h2.initiate_connection()
        self.h2.update_settings({
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.c.config.max_concurrent_streams,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: self.c.config.max_header_bytes,
        })
        self._flush()
        self._watchdog = asyncio.get_running_loop().create_task(self._idle())

    def _flush(self) -> None:
        data = self.h2.data_to_send()
        if data:
            self.c.write(data)

    def lost(self) -> None:
        for task in self._streams.values():
            task.cancel()
        if self._watchdog is not None:
            self._watchdog.cancel()
        self.writing_resumed()

    def writing_paused(self) -> None:
        """h2 answers each PING and SETTINGS with frames of its own: from a peer that sends them
        and reads nothing, nothing more is read (so nothing more answered) until the socket takes
        what is queued, and after write_timeout of that it is dropped (a peer that read nothing
        had grown our write buffer by 23 MB in 15 s)."""
        if self.c.closed or self._stalled is not None:
            return
        self.c.transport.pause_reading()
        self._stalled = asyncio.get_running_loop().call_later(self.c.config.write_timeout, self.c.abort,
                                                               "write_timeout")

    def writing_resumed(self) -> None:
        if self._stalled is not None:
            self._stalled.cancel()
            self._stalled = None
            if not self.c.closed:
                self.c.transport.resume_reading()

    async def _idle(self) -> None:
        timeout = self.c.config.request_timeout
        while not self.c.closed:
            await asyncio.sleep(min(1.0, timeout))
            # a stream still sending its request (or never ending it) does not keep the connection,
            # nor do bytes that are no request (PINGs, settings, window updates: HTTP/2 slowloris)
            if not self._streams and time.monotonic() - self._last_active > timeout:
                if self._pending:
                    self.c.stats.errors["request_timeout"] += 1
                self.h2.close_connection()
                self._flush()
                self.c.close()

    def data_received(self, data: bytes) -> None:
        if not data:
            self.c.close()
            return
        if not self._blocks.feed(data):
            self._calm("header_too_large", f"a header block over {self._blocks.limit} bytes (twice "
                                           f"http.max_header_bytes)")
            return
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self.c.stats.errors["h2_protocol"] += 1
            log.debug("http/2 from %s: %s", self.c.client, exc)
            self._flush()
            self.c.close()
            return
        now = time.monotonic()
        if now - self._counted_since >= FLOOD_WINDOW:
            self._counted_since, self._resets, self._control = now, 0, 0
        for event in events:
            if isinstance(event, _CONTROL_EVENTS):
                self._control += 1
            if isinstance(event, h2.events.RequestReceived):
                # as SETTINGS_MAX_HEADER_LIST_SIZE counts it: h2 holds a client to that (8 KiB)
                # only once it has acknowledged our SETTINGS, and to 64 KiB before
                if sum(len(k) + len(v) + 32 for k, v in event.headers) > self.c.config.max_header_bytes:
                    self.c.stats.errors["header_too_large"] += 1
                    self.h2.send_headers(event.stream_id, [(":status", "431"), ("content-length", "0")],
                                         end_stream=True)
                    if event.stream_ended is None:  # what it would send of a body is not wanted
                        self.h2.reset_stream(event.stream_id, h2.errors.ErrorCodes.NO_ERROR)
                    continue
                headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in event.headers}
                target = headers.get(":path", "/")
                path, _, query = target.partition("?")
                request = Request(headers.get(":method", "GET"), path, query, headers, self.c.client, "2")
                if event.stream_ended is not None:
                    self._begin(event.stream_id, request)
                else:
                    self._pending[event.stream_id] = (request, 0)
            elif isinstance(event, h2.events.DataReceived):
                if not event.data and event.stream_ended is None:
                    self._control += 1
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                if event.stream_id in self._pending:
                    request, size = self._pending[event.stream_id]
                    size += len(event.data)
                    self._pending[event.stream_id] = (request, size)
                    if size > self.c.config.max_request_bytes:
                        self.c.stats.errors["request_too_large"] += 1
                        del self._pending[event.stream_id]
                        self.h2.reset_stream(event.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
                if event.stream_ended is not None and event.stream_id in self._pending:
                    self._begin(event.stream_id, self._pending.pop(event.stream_id)[0])
            elif isinstance(event, h2.events.StreamEnded):
                if event.stream_id in self._pending:
                    self._begin(event.stream_id, self._pending.pop(event.stream_id)[0])
            elif isinstance(event, h2.events.StreamReset):
                if event.remote_reset:
                    self._resets += 1
                    self._control += 1
                self._pending.pop(event.stream_id, None)
                task = self._streams.pop(event.stream_id, None)
                if task is not None:
                    task.cancel()
                self._window.set()
            elif isinstance(event, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
                self._window.set()
            elif isinstance(event, h2.events.ConnectionTerminated):
                self._flush()
                self.c.close()
                return
        config = self.c.config
        if self._resets > config.max_stream_resets:
            self._calm("h2_rapid_reset", f"{self._resets} streams reset within {FLOOD_WINDOW:g} s "
                                         f"(http.max_stream_resets {config.max_stream_resets})")
        elif self._control > config.max_control_frames:
            self._calm("h2_flood", f"{self._control} control frames within {FLOOD_WINDOW:g} s "
                                   f"(http.max_control_frames {config.max_control_frames})")
        else:
            self._flush()

    def _calm(self, reason: str, what: str) -> None:
        """A flood of resets or control frames, or a header block too long: GOAWAY
        ENHANCE_YOUR_CALM, closed, counted under ``reason`` and logged (once per address per
        WRONG_SCHEME_LOG_INTERVAL)."""
        self.c.server.peer_error(self.c.transport, reason, f"HTTP/2 {what}: GOAWAY ENHANCE_YOUR_CALM")
        for task in self._streams.values():
            task.cancel()
        self.h2.close_connection(error_code=h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
        self._flush()
        self.c.close()

    def _begin(self, stream_id: int, request: Request) -> None:
        self._last_active = time.monotonic()
        if stream_id not in self._streams:
            self._streams[stream_id] = asyncio.get_running_loop().create_task(self._serve(stream_id, request))

    async def _serve(self, stream_id: int, request: Request) -> None:
        c = self.c
        try:
            response = await c.respond(request)
            head_only = request.method == "HEAD" or response.length == 0
            fields = [(":status", str(response.status)),
                      *((k.lower(), v) for k, v in c.head_fields(response) if k.lower() != "connection")]
            self.h2.send_headers(stream_id, fields, end_stream=head_only)
            self._flush()
            if not head_only:
                # each WRITE_PIECE of the body must go within write_timeout, as on HTTP/1.1: a
                # window opened by a byte at a time (or another stream's) does not hold it longer
                loop = asyncio.get_running_loop()
                deadline, piece_left = loop.time() + c.config.write_timeout, WRITE_PIECE
                for chunk in response.chunks():
                    view = memoryview(chunk)
                    off = 0
                    while off < len(view):
                        window = self.h2.local_flow_control_window(stream_id)
                        if window <= 0:
                            await self._wait_window(deadline)
                            continue
                        n = min(window, self.h2.max_outbound_frame_size, piece_left, len(view) - off)
                        self.h2.send_data(stream_id, bytes(view[off:off + n]))
                        self._control -= 2  # the WINDOW_UPDATEs it may answer with
                        off += n
                        piece_left -= n
                        if not piece_left:
                            deadline, piece_left = loop.time() + c.config.write_timeout, WRITE_PIECE
                        self._flush()
                        await c.drain()
                self.h2.end_stream(stream_id)
                self._flush()
            await c.drain()
        except (ConnectionError, asyncio.CancelledError, h2.exceptions.StreamClosedError):
            pass
        except h2.exceptions.ProtocolError as exc:
            log.debug("http/2 stream %d to %s: %s", stream_id, c.client, exc)
        finally:
            self._streams.pop(stream_id, None)
            self._last_active = time.monotonic()

    async def _wait_window(self, deadline: float) -> None:
        """Until the peer opens a window (any: the caller looks at its own), by ``deadline``."""
        self._window.clear()
        try:
            async with asyncio.timeout_at(deadline):
                await self._window.wait()
        except TimeoutError:  # the peer keeps its window shut: a reader that stopped reading
            self.c.abort("write_timeout")
            raise ConnectionError("write timeout") from None

