"""The ingest node: an RTMP listener whose publishes become broadcasts."""

import asyncio
import logging

from ..config import IngestConfig
from ..media.broadcast import BroadcastRegistry
from ..rtmp.server import RtmpServer

log = logging.getLogger("rtmpq.nodes")


async def run_ingest(config: IngestConfig, registry: BroadcastRegistry | None = None,
                     stop: asyncio.Event | None = None) -> None:
    registry = registry or BroadcastRegistry()
    server = RtmpServer(registry, config)
    await server.start()
    host, port = server.address
    log.info("ingest ready: publish to rtmp://%s:%d/live/<stream key>", host, port)
    try:
        await (stop or asyncio.Event()).wait()
    finally:
        await server.close()
