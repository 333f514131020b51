"""The asyncio shell: QUIC (aioquic) connections that drive a MoqSession.

The session is sans-I/O; this module only moves datagrams and timers, and adds what aioquic
lacks for live media (specs/bad-inputs.md, "QUIC (aioquic) risks"):

- a send scheduler: before each transmit the stream queue is ordered by (urgency, newer group
  first), so audio goes before video and a new GoP before an old one;
- per-stream and per-connection queued bytes, for the relay's send budgets;
- a handshake timeout and an idle timeout.
"""

import asyncio
import logging
import ssl
from collections.abc import Callable
from urllib.parse import urlsplit

from aioquic.asyncio import QuicConnectionProtocol, connect, serve
from aioquic.quic.configuration import QuicConfiguration

from . import wire
from .session import MoqSession
from .tls import der_fingerprint

log = logging.getLogger("rtmpq.moq")

# Seconds a peer has to complete the QUIC handshake and MoQ setup.
HANDSHAKE_TIMEOUT = 10.0
# Seconds of silence before QUIC closes a connection.
IDLE_TIMEOUT = 30.0
DEFAULT_MOQ_PORT = 4443


class MoqConnection(QuicConnectionProtocol):
    """One QUIC connection with its MoQ session; ``handler`` receives the session's events."""

    def __init__(self, *args, is_client: bool = False, path: str = "", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.session = MoqSession(self._quic, is_client=is_client, path=path)
        self.handler: Callable[["MoqConnection", object], None] | None = None
        self.ready = asyncio.get_running_loop().create_future()
        self._priorities: dict[int, tuple[int, int]] = {}
        self._flush_scheduled = False

    # -- sending --------------------------------------------------------------------------------
    def set_priority(self, stream_id: int, urgency: int, group: int) -> None:
        self._priorities[stream_id] = (urgency, -group)

    def forget_stream(self, stream_id: int) -> None:
        self._priorities.pop(stream_id, None)

    def flush(self) -> None:
        """Send soon: many session calls in one loop iteration become one transmit."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        queue = self._quic._streams_queue  # aioquic serves this list round-robin: order it first
        if self._priorities and len(queue) > 1:
            control = self.session.control_stream_id
            queue.sort(key=lambda s: (-1, 0) if s.stream_id == control else self._priorities.get(s.stream_id, (255, 0)))
        self.transmit()

    def queued_bytes(self, stream_id: int) -> int:
        """Bytes written on a stream and not yet acknowledged by the peer."""
        stream = self._quic._streams.get(stream_id)
        return len(stream.sender._buffer) if stream is not None else 0

    def total_queued_bytes(self) -> int:
        return sum(len(s.sender._buffer) for s in self._quic._streams.values())

    # -- receiving ------------------------------------------------------------------------------
    def quic_event_received(self, event) -> None:
        for moq_event in self.session.handle_event(event):
            if isinstance(moq_event, ev_setup) and not self.ready.done():
                self.ready.set_result(moq_event)
            if self.handler is not None:
                self.handler(self, moq_event)
            if isinstance(moq_event, ev_closed) and not self.ready.done():
                self.ready.set_exception(ConnectionError(f"MoQ session closed: {moq_event.reason or moq_event.code}"))
        self.flush()

    def connection_lost(self, exc) -> None:
        super().connection_lost(exc)
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("QUIC connection lost"))
        if self.handler is not None and not self.session.closed:
            self.session.closed = True
            self.handler(self, ev_closed(0, "connection lost"))

    @property
    def peer(self) -> str:
        addr = self._transport.get_extra_info("peername") if self._transport else None
        return f"{addr[0]}:{addr[1]}" if addr else "?"


from .events import SessionClosed as ev_closed  # noqa: E402
from .events import SetupComplete as ev_setup  # noqa: E402


def server_configuration(certfile, keyfile) -> QuicConfiguration:
    config = QuicConfiguration(is_client=False, alpn_protocols=[wire.ALPN], idle_timeout=IDLE_TIMEOUT,
                               max_datagram_frame_size=65536)
    config.load_cert_chain(str(certfile), str(keyfile))
    return config


async def serve_moq(host: str, port: int, *, certfile, keyfile, on_connection: Callable[[MoqConnection], None]):
    """Listen for MoQ sessions; ``on_connection`` gets each new connection (set its handler)."""
    config = server_configuration(certfile, keyfile)

    def factory(*args, **kwargs):
        conn = MoqConnection(*args, is_client=False, **kwargs)
        on_connection(conn)
        loop = asyncio.get_running_loop()

        def check_setup():
            if not conn.ready.done():
                log.warning("%s: no MoQ setup within %g s, closing", conn.peer, HANDSHAKE_TIMEOUT)
                conn.session.close(wire.SessionError.CONTROL_MESSAGE_TIMEOUT, "setup timeout")
                conn.flush()
        loop.call_later(HANDSHAKE_TIMEOUT, check_setup)
        return conn

    return await serve(host, port, configuration=config, create_protocol=factory)


def parse_moq_url(url: str, default_port: int = DEFAULT_MOQ_PORT) -> tuple[str, int, str]:
    """moqt://HOST:PORT/PATH -> (host, port, path)."""
    parts = urlsplit(url)
    if parts.scheme not in ("moqt", "moq"):
        raise ValueError(f"{url!r}: expected a moqt:// URL")
    if not parts.hostname:
        raise ValueError(f"{url!r}: no host")
    return parts.hostname, parts.port or default_port, parts.path


class connect_moq:
    """``async with connect_moq(host, port, ...) as conn``: a client connection with setup done."""

    def __init__(self, host: str, port: int, *, insecure: bool = False, cafile: str | None = None,
                 fingerprint: str | None = None, path: str = "", timeout: float = HANDSHAKE_TIMEOUT) -> None:
        config = QuicConfiguration(is_client=True, alpn_protocols=[wire.ALPN], idle_timeout=IDLE_TIMEOUT,
                                   server_name=host)
        if insecure or fingerprint:
            config.verify_mode = ssl.CERT_NONE
        elif cafile:
            config.load_verify_locations(cafile)
        self._fingerprint = fingerprint.replace(":", "").lower() if fingerprint else None
        self._cm = connect(host, port, configuration=config,
                           create_protocol=lambda *a, **k: MoqConnection(*a, is_client=True, path=path, **k),
                           wait_connected=True)
        self._timeout = timeout

    async def __aenter__(self) -> MoqConnection:
        async with asyncio.timeout(self._timeout):
            conn = await self._cm.__aenter__()
            if self._fingerprint is not None:
                der = conn._quic.tls._peer_certificate.public_bytes(_der_encoding())
                if der_fingerprint(der) != self._fingerprint:
                    await self._cm.__aexit__(None, None, None)
                    raise ConnectionError("server certificate does not match the pinned SHA-256 fingerprint")
            await conn.ready
        return conn

    async def __aexit__(self, *exc) -> None:
        await self._cm.__aexit__(*exc)


def _der_encoding():
    from cryptography.hazmat.primitives.serialization import Encoding

    return Encoding.DER
