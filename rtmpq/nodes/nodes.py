"""The node kinds besides ``up``, each runnable alone (one per container)."""

import asyncio
import logging

from ..config import IngestConfig
from ..edge.server import EdgeServer
from ..media.broadcast import BroadcastRegistry
from ..moq.relay import MoqRelay
from ..moq.tls import ensure_self_signed, fingerprint
from ..moq.transport import serve_moq
from ..rtmp.server import RtmpServer
from .remote import UpstreamLink, moq_broadcast_source
from .up import HttpConfig, MoqConfig

log = logging.getLogger("rtmpq.nodes")


async def serve_relay(relay: MoqRelay, moq: MoqConfig):
    cert, key = moq.certfile, moq.keyfile
    if cert is None or key is None:
        cert, key = ensure_self_signed(moq.state_dir / "tls")
    server = await serve_moq(moq.host, moq.port, certfile=cert, keyfile=key, on_connection=relay.on_connection,
                             backend=moq.backend)
    relay.start()
    log.info("MoQ relay (%s) on udp %s:%d, certificate sha256 %s", moq.backend, moq.host, moq.port, fingerprint(cert))
    return server


async def run_relay(moq: MoqConfig, upstream: str | None, tls: dict, stop: asyncio.Event) -> None:
    """A relay: serves what publishers announce to it, and asks ``upstream`` for anything else."""
    relay = MoqRelay(BroadcastRegistry())
    server = await serve_relay(relay, moq)
    link = None
    if upstream:
        link = UpstreamLink(relay, upstream, **tls)
        link.start()
    try:
        await stop.wait()
    finally:
        if link is not None:
            await link.close()
        relay.stop()
        server.close()


async def run_ingest_upstream(config: IngestConfig, upstream: str, tls: dict, stop: asyncio.Event) -> None:
    """An ingest that publishes its broadcasts into a remote relay over MoQ."""
    registry = BroadcastRegistry()
    rtmp = RtmpServer(registry, config)
    await rtmp.start()
    relay = MoqRelay(registry)
    relay.start()
    link = UpstreamLink(relay, upstream, announce=True, use_for_unknown_tracks=False, **tls)
    link.start()
    try:
        await stop.wait()
    finally:
        await link.close()
        relay.stop()
        await rtmp.close()


async def run_edge(http: HttpConfig, upstream: str, tls: dict, stop: asyncio.Event) -> None:
    """An LL-HLS edge fed over MoQ from ``upstream``, subscribing when a player first asks."""
    edge = EdgeServer(moq_broadcast_source(upstream, **tls), host=http.host, port=http.port, static_dir=http.static_dir)
    await edge.start()
    try:
        await stop.wait()
    finally:
        await edge.close()
