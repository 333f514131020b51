"""All in one process: RTMP ingest, an in-process MoQ relay (QUIC) and the LL-HLS edge (HTTP)."""

import asyncio
import ipaddress
import logging
import socket

from ..auth.access import Access
from ..auth.tokens import MIN_SECRET_BYTES, weak_secret
from ..config import Config
from ..edge.server import EdgeServer
from ..media.broadcast import BroadcastEnded, BroadcastRegistry, CatalogUpdate
from ..moq.relay import MoqRelay
from ..moq.tls import ensure_self_signed, fingerprint
from ..moq.transport import serve_moq
from ..redact import names_are_public
from .ingest import IngestNode

log = logging.getLogger("rtmpq.nodes")


def free_udp_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def local_broadcast_source(registry: BroadcastRegistry):
    """open_broadcast for the edge: read an in-process broadcast as Catalog and Frame items."""

    def open_broadcast(name: str):
        broadcast = registry.get(name)
        if broadcast is None:
            return None

        async def items():
            reader = broadcast.reader()
            try:
                async for event in reader:
                    if isinstance(event, CatalogUpdate):
                        yield event.catalog
                    elif isinstance(event, BroadcastEnded):
                        return
                    else:
                        yield event
            finally:
                reader.close()

        return items()

    return open_broadcast


class UpNode:
    """Ingest + relay + edge; ``start()`` then ``close()``; addresses are known after start."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.access = Access(config.publish, config.auth)
        names_are_public(not self.access.open)  # keys never reach a name: log names as they are
        self.registry = BroadcastRegistry()
        self.rtmp = IngestNode(self.registry, config.rtmp, config.publish, self.access)
        self.moq_config = config.moq
        self.moq = MoqRelay(self.registry, access=self.access, upstream_grace=config.publish.grace_period,
                     stuck_timeout=config.moq.stuck_timeout)
        self.edge = EdgeServer(local_broadcast_source(self.registry), host=config.http.host, port=config.http.port,
                               static_dir=config.http.static_dir, access=self.access)
        self._quic = None
        self.fingerprint = ""

    async def start(self) -> None:
        await self.rtmp.start()
        await self.edge.start()
        cert, key = self.moq_config.certfile, self.moq_config.keyfile
        if cert is None or key is None:
            cert, key = ensure_self_signed(self.moq_config.state_dir / "tls")
        self.fingerprint = fingerprint(cert)
        self._quic_port = self.moq_config.port
        if self.moq_config.backend == "aiopquic" and not self._quic_port:
            self._quic_port = free_udp_port(self.moq_config.host)  # picoquic does not report a port 0 bind
        self._quic = await serve_moq(self.moq_config.host, self._quic_port, certfile=cert, keyfile=key,
                                     on_connection=self.moq.on_connection, backend=self.moq_config.backend)
        self.moq.start()
        host, port = self.moq_address
        log.info("MoQ (draft 16, ALPN moqt-16) on udp %s:%d, certificate sha256 %s", host, port, self.fingerprint)

    @property
    def moq_address(self) -> tuple[str, int]:
        if self.moq_config.backend == "aiopquic":  # picoquic binds the port we asked for
            return self.moq_config.host, self._quic_port
        return self._quic._transport.get_extra_info("sockname")[:2]

    async def close(self) -> None:
        """Graceful stop: GOAWAY to every MoQ session (nodes below reconnect, their broadcasts
        go on when this node is back), publishers get onStatus and a close, recordings are
        finalized, the node's own playlists get ENDLIST."""
        self.moq.stop()
        await self.rtmp.close()
        await asyncio.sleep(0)  # let the edge read the ends
        await self.edge.close()
        if self._quic is not None:
            self._quic.close()


def warn_if_open(access: Access, hosts: list[str]) -> None:
    """An open node says so at start; one listening beyond loopback also says how to close it."""
    if access.auth.secret and weak_secret(access.auth.secret):
        log.warning("[auth] secret is short: use at least %d random bytes (e.g. openssl rand -hex 32)",
                    MIN_SECRET_BYTES)
    if not access.open:
        return
    log.warning("open node: anyone may publish any stream name, and a stream key is its public playback "
                "name (no [publish.keys] and no [auth] secret configured)")
    if any(not _loopback(h) for h in hosts):
        log.warning("this node listens beyond loopback: to close it, give --config FILE with "
                    "[publish.keys] (\"secret-key\" = \"name\") or [auth] secret (signed publish tokens: rtmpq token)")


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


async def run_up(config: Config, stop: asyncio.Event) -> None:
    node = UpNode(config)
    warn_if_open(node.access, [config.rtmp.host, config.moq.host, config.http.host])
    await node.start()
    try:
        await stop.wait()
    finally:
        await stop_within(node.close(), config.node.stop_timeout)


async def stop_within(closing, timeout: float) -> None:
    """Run a node's graceful ``close()``, giving up after ``timeout`` seconds."""
    try:
        await asyncio.wait_for(closing, timeout)
    except TimeoutError:
        log.warning("graceful stop took longer than %g s; exiting anyway", timeout)
