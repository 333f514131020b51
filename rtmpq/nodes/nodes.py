"""The node kinds besides ``up``, each runnable alone (one per container)."""

import asyncio
import logging
import time

from ..auth.access import ACT_RELAY, Access
from ..config import Config, MoqConfig
from ..edge.server import EdgeServer
from ..media.broadcast import BroadcastRegistry
from ..moq.relay import MoqRelay
from ..moq.tls import ensure_self_signed, fingerprint
from ..moq.transport import serve_moq
from ..redact import names_are_public
from .ingest import IngestNode
from .remote import UpstreamLink, moq_broadcast_source
from .up import stop_within, warn_if_open

log = logging.getLogger("rtmpq.nodes")

# A node token minted from [auth] secret (no node_token given) is valid this long (seconds); a
# fresh one is minted for every connection to the upstream.
NODE_TOKEN_TTL = 24 * 3600.0


def node_token(config: Config) -> str | None:
    """The token this node presents upstream: [auth] node_token, or one minted from the secret."""
    if config.auth.node_token:
        return config.auth.node_token
    if config.auth.secret:
        from ..auth.tokens import mint_token

        return mint_token(config.auth.secret, "", ACT_RELAY, NODE_TOKEN_TTL, now=time.time())
    return None


def upstream_tls(config: Config) -> dict:
    u = config.upstream
    return {"insecure": u.insecure, "cafile": str(u.cafile) if u.cafile else None,
            "fingerprint": u.fingerprint or None, "backend": u.backend}


def node_access(config: Config) -> Access:
    access = Access(config.publish, config.auth)
    names_are_public(not access.open)  # keys never reach a name: log names as they are
    return access


async def serve_relay(relay: MoqRelay, moq: MoqConfig):
    cert, key = moq.certfile, moq.keyfile
    if cert is None or key is None:
        cert, key = ensure_self_signed(moq.state_dir / "tls")
    server = await serve_moq(moq.host, moq.port, certfile=cert, keyfile=key, on_connection=relay.on_connection,
                             backend=moq.backend)
    relay.start()
    log.info("MoQ relay (%s) on udp %s:%d, certificate sha256 %s", moq.backend, moq.host, moq.port, fingerprint(cert))
    return server


async def run_relay(config: Config, stop: asyncio.Event) -> None:
    """A relay: serves what publishers announce to it, and asks its upstream for anything else."""
    access = node_access(config)
    warn_if_open(access, [config.moq.host])
    relay = MoqRelay(BroadcastRegistry(), access=access, upstream_grace=config.publish.grace_period,
                     stuck_timeout=config.moq.stuck_timeout)
    server = await serve_relay(relay, config.moq)
    link = None
    if config.upstream.url:
        link = UpstreamLink(relay, config.upstream.url, token=lambda: node_token(config), **upstream_tls(config))
        link.start()
    try:
        await stop.wait()
    finally:
        if link is not None:
            await link.close()
        relay.stop()
        server.close()


async def run_ingest_node(config: Config, stop: asyncio.Event) -> None:
    """An ingest; with [upstream] url, it publishes its broadcasts into that relay over MoQ."""
    access = node_access(config)
    warn_if_open(access, [config.rtmp.host])
    registry = BroadcastRegistry()
    ingest = IngestNode(registry, config.rtmp, config.publish, access)
    await ingest.start()
    host, port = ingest.address
    log.info("ingest ready: publish to rtmp://%s:%d/live/<stream key>", host, port)
    relay = link = None
    if config.upstream.url:
        relay = MoqRelay(registry, access=access, upstream_grace=config.publish.grace_period,
                     stuck_timeout=config.moq.stuck_timeout)
        relay.start()
        link = UpstreamLink(relay, config.upstream.url, announce=True, use_for_unknown_tracks=False,
                            token=lambda: node_token(config), **upstream_tls(config))
        link.start()
    try:
        await stop.wait()
    finally:
        async def closing():
            # the session upstream closes first, without PUBLISH_DONE: the relay above keeps the
            # broadcasts for its grace period, so a restarted ingest continues them
            if link is not None:
                await link.close()
            if relay is not None:
                relay.stop()
            await ingest.close()

        await stop_within(closing(), config.node.stop_timeout)


async def run_edge(config: Config, stop: asyncio.Event) -> None:
    """An LL-HLS edge fed over MoQ from its upstream, subscribing when a player first asks."""
    access = node_access(config)
    source = moq_broadcast_source(config.upstream.url, wait=config.upstream.wait, token=node_token(config),
                                  **upstream_tls(config))
    edge = EdgeServer(source, host=config.http.host, port=config.http.port, static_dir=config.http.static_dir,
                      access=access)
    await edge.start()
    try:
        await stop.wait()
    finally:
        await stop_within(edge.close(), config.node.stop_timeout)
