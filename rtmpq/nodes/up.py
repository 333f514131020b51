"""All in one process: RTMP ingest, an in-process MoQ relay (QUIC) and the LL-HLS edge (HTTP)."""

import asyncio
import logging
import socket
from dataclasses import dataclass, field
from pathlib import Path

from ..config import IngestConfig
from ..edge.server import EdgeServer
from ..media.broadcast import BroadcastEnded, BroadcastRegistry, CatalogUpdate
from ..moq.relay import MoqRelay
from ..moq.tls import ensure_self_signed, fingerprint
from ..moq.transport import DEFAULT_MOQ_PORT, serve_moq
from ..rtmp.server import RtmpServer

log = logging.getLogger("rtmpq.nodes")


def free_udp_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def default_state_dir() -> Path:
    return Path.home() / ".local" / "state" / "rtmpq"


@dataclass
class MoqConfig:
    host: str = "0.0.0.0"
    port: int = DEFAULT_MOQ_PORT
    certfile: Path | None = None  # both None: a self-signed pair is made in state_dir/tls
    keyfile: Path | None = None
    state_dir: Path = field(default_factory=default_state_dir)
    backend: str = "aioquic"  # QUIC library: "aioquic" or "aiopquic"


@dataclass
class HttpConfig:
    host: str = "0.0.0.0"
    port: int = 8080
    static_dir: Path | None = None  # where hls.min.js is (make hlsjs puts it in var/static)


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
    """Ingest + relay; ``start()`` then ``close()``; addresses are known after start."""

    def __init__(self, ingest: IngestConfig, moq: MoqConfig, http: HttpConfig | None = None) -> None:
        self.registry = BroadcastRegistry()
        self.rtmp = RtmpServer(self.registry, ingest)
        self.moq_config = moq
        self.moq = MoqRelay(self.registry)
        http = http or HttpConfig()
        self.edge = EdgeServer(local_broadcast_source(self.registry), host=http.host, port=http.port,
                               static_dir=http.static_dir)
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
        self.moq.stop()
        if self._quic is not None:
            self._quic.close()
        await self.edge.close()
        await self.rtmp.close()


async def run_up(ingest: IngestConfig, moq: MoqConfig, http: HttpConfig, stop: asyncio.Event) -> None:
    node = UpNode(ingest, moq, http)
    await node.start()
    try:
        await stop.wait()
    finally:
        await node.close()
