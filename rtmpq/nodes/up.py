"""All in one process: RTMP ingest publishing into an in-process MoQ relay (QUIC listener)."""

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path

from ..config import IngestConfig
from ..media.broadcast import BroadcastRegistry
from ..moq.relay import MoqRelay
from ..moq.tls import ensure_self_signed, fingerprint
from ..moq.transport import DEFAULT_MOQ_PORT, serve_moq
from ..rtmp.server import RtmpServer

log = logging.getLogger("rtmpq.nodes")


def default_state_dir() -> Path:
    return Path.home() / ".local" / "state" / "rtmpq"


@dataclass
class MoqConfig:
    host: str = "0.0.0.0"
    port: int = DEFAULT_MOQ_PORT
    certfile: Path | None = None  # both None: a self-signed pair is made in state_dir/tls
    keyfile: Path | None = None
    state_dir: Path = field(default_factory=default_state_dir)


class UpNode:
    """Ingest + relay; ``start()`` then ``close()``; addresses are known after start."""

    def __init__(self, ingest: IngestConfig, moq: MoqConfig) -> None:
        self.registry = BroadcastRegistry()
        self.rtmp = RtmpServer(self.registry, ingest)
        self.moq_config = moq
        self.moq = MoqRelay(self.registry)
        self._quic = None
        self.fingerprint = ""

    async def start(self) -> None:
        await self.rtmp.start()
        cert, key = self.moq_config.certfile, self.moq_config.keyfile
        if cert is None or key is None:
            cert, key = ensure_self_signed(self.moq_config.state_dir / "tls")
        self.fingerprint = fingerprint(cert)
        self._quic = await serve_moq(self.moq_config.host, self.moq_config.port, certfile=cert, keyfile=key,
                                     on_connection=self.moq.on_connection)
        self.moq.start()
        host, port = self.moq_address
        log.info("MoQ (draft 16, ALPN moqt-16) on udp %s:%d, certificate sha256 %s", host, port, self.fingerprint)

    @property
    def moq_address(self) -> tuple[str, int]:
        return self._quic._transport.get_extra_info("sockname")[:2]

    async def close(self) -> None:
        self.moq.stop()
        if self._quic is not None:
            self._quic.close()
        await self.rtmp.close()


async def run_up(ingest: IngestConfig, moq: MoqConfig, stop: asyncio.Event) -> None:
    node = UpNode(ingest, moq)
    await node.start()
    try:
        await stop.wait()
    finally:
        await node.close()
