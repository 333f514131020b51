"""The node kinds besides ``up``, each runnable alone (one per container)."""

import asyncio
import ipaddress
import logging
import time

from ..auth.access import ACT_RELAY, Access
from ..config import Config, ConfigError, MoqConfig
from ..edge.llhls import SEGMENT_WINDOW
from ..edge.server import EdgeServer
from ..http.server import HttpServer
from ..moq.group_tails import GROUP_TAIL_WAIT
from ..moq.relay import MoqRelay
from ..moq.tls import server_pair
from ..moq.transport import bound_host, parse_moq_url, serve_moq
from ..ops.health import remove_http_url, write_http_url
from ..ops.probe import UpstreamProbe
from ..ops.routes import OpsRoutes, ops_only
from ..ops.view import NodeView
from ..redact import names_are_public
from . import runtime
from .directory import advertised_url, open_directory
from .ingest import IngestNode, rtmp_hosts
from .remote import OriginLinks, UpstreamLink, moq_broadcast_source
from .reload import Reloader
from .up import node_registry, node_relay, stop_within, warn_if_open

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
            "fingerprint": u.fingerprint or None, "backend": u.backend, "idle_timeout": config.moq.idle_timeout,
            "session_caps": config.moq.session_caps}


def upstream_options(config: Config) -> dict:
    """upstream_tls and the settings of a loop that reconnects to the upstream (UpstreamLink,
    OriginLinks, follow_broadcast)."""
    return {**upstream_tls(config), "refused_reconnect_max": config.upstream.refused_reconnect_max}


def node_access(config: Config) -> Access:
    access = Access(config.publish, config.auth)
    names_are_public(not access.open)  # keys never reach a name: log names as they are
    return access


async def serve_relay(relay: MoqRelay, moq: MoqConfig):
    cert, key, relay.fingerprint = server_pair(moq.certfile, moq.keyfile, moq.state_dir)
    server = await serve_moq(moq.host, moq.port, certfile=cert, keyfile=key, on_connection=relay.on_connection,
                             backend=moq.backend, handshake_timeout=moq.handshake_timeout, idle_timeout=moq.idle_timeout,
                             max_connections=moq.max_connections, max_connections_per_ip=moq.max_connections_per_ip,
                             budget=relay.receive_budget, errors=relay.errors, retry=moq.retry,
                             session_caps=moq.session_caps)
    relay.start()
    log.info("MoQ relay (%s) on udp %s:%d%s, certificate sha256 %s", moq.backend, moq.host, moq.port,
             ", QUIC Retry on" if moq.retry else "", relay.fingerprint)
    return server


class OpsListener:
    """The HTTP listener of a node that serves no video over HTTP (relay, ingest): metrics,
    health, API. Started only when [http] enabled (``--http``), or on ``sock`` (a listening
    socket handed over by a parent process)."""

    def __init__(self, config: Config, view: NodeView, sock=None) -> None:
        self.view = view
        self.routes = OpsRoutes(view)
        self.http = HttpServer(ops_only(self.routes), config.http, sock=sock) \
            if config.http.enabled or sock is not None else None
        view.http = self.http
        # `rtmpq health` finds a listener of the node's own here (not one its parent handed it)
        self.state_dir = config.moq.state_dir if sock is None else None
        self.url = None

    async def start(self) -> None:
        self.routes.start()
        if self.http is not None:
            await self.http.start()
            log.info("metrics and health on %s://%s:%d/metrics", self.http.scheme, *self.http.address)
            if self.state_dir is not None:
                self.url = write_http_url(self.state_dir, self.http)
        self.view.listening = True

    async def close(self) -> None:
        self.view.listening = False
        self.routes.stop()
        if self.http is not None:
            if self.state_dir is not None:
                remove_http_url(self.state_dir, self.url)
            await self.http.close()


def link_ready(link: "UpstreamLink") -> tuple[bool, str]:
    if link.connected.is_set():
        return True, f"upstream {link.host}:{link.port} connected"
    return False, f"upstream {link.host}:{link.port} not connected"


def upstream_is_itself(url: str, moq: MoqConfig) -> bool:
    """``url`` names this node's own MoQ listener: its port, on a loopback address or the host it
    binds (another host's relay on the same port is not told apart by address: not refused)."""
    host, port, _ = parse_moq_url(url)
    if port != moq.port:
        return False
    if host in ("localhost", moq.host):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_unspecified


async def run_relay(config: Config, stop: asyncio.Event) -> None:
    """A relay: serves what publishers announce to it, and asks its upstream for anything else.
    With a directory, it registers what publishers announce to it and subscribes to anything else
    at the origin the directory names (before trying its upstream)."""
    if config.upstream.url and upstream_is_itself(config.upstream.url, config.moq):
        # (a config file shared by every node, with the [upstream] url the ingest and edge use: the
        # relay subscribed to itself, in a loop, and said only "NAMESPACE_DONE for a namespace never announced")
        raise ConfigError(f"upstream.url (--upstream) {config.upstream.url} is this relay's own MoQ listener "
                          f"([moq] port {config.moq.port}): a relay's upstream is a relay above it; set [upstream] "
                          "url only on the nodes below it, or give it as --upstream")
    access = node_access(config)
    warn_if_open(access, [bound_host(config.moq.host, config.moq.backend)])
    directory = await open_directory(config)
    relay = node_relay(node_registry(config), config, access)
    view = NodeView("relay", relay=relay)
    view.relay_backend = config.moq.backend
    ops = OpsListener(config, view)
    server = await serve_relay(relay, config.moq)
    link = origins = None
    if config.upstream.url:
        link = UpstreamLink(relay, config.upstream.url, token=lambda: node_token(config), **upstream_options(config))
        link.start()
        view.upstream_ready = lambda: link_ready(link)
    if directory is not None:
        directory.register(relay.published_names, advertised_url(config, config.moq.host, config.moq.port),
                           relay.fingerprint)
        directory.follow()
        view.collectors.append(directory.metrics)
        view.directory_ready = directory.ready
        origins = OriginLinks(relay, directory, token=lambda: node_token(config), **upstream_options(config))
        origins.start()
    await ops.start()
    runtime.settle()
    try:
        await stop.wait()
    finally:
        relay.stopping = True  # the links below close first: their tracks are not lost sources
        await ops.close()
        if origins is not None:
            await origins.close()
        if directory is not None:
            await directory.close()  # entries withdrawn: followers move at once
        if link is not None:
            await link.close()
        relay.stop()
        server.close()


async def run_ingest_node(config: Config, stop: asyncio.Event, reloader: Reloader | None = None) -> None:
    """An ingest; with [upstream] url, it publishes its broadcasts into that relay over MoQ."""
    access = node_access(config)
    warn_if_open(access, rtmp_hosts(config.rtmp))
    registry = node_registry(config)
    ingest = IngestNode(registry, config.rtmp, config.publish, access, config.moq.state_dir, config.node.stop_timeout)
    if reloader is not None:
        reloader.hooks.append(ingest.settings_reloaded)
    view = NodeView("ingest", registry=registry, ingest=ingest)
    ops = OpsListener(config, view)  # (an HTTPS certificate that does not load: before RTMP listens)
    await ingest.start()
    host, port = ingest.address
    log.info("ingest ready: publish to rtmp://%s:%d/live/<stream key>", host, port)
    relay = link = None
    if config.upstream.url:
        relay = node_relay(registry, config, access)
        relay.start()
        link = UpstreamLink(relay, config.upstream.url, announce=True, use_for_unknown_tracks=False,
                            token=lambda: node_token(config), **upstream_options(config))
        link.start()
        view.relay, view.relay_backend = relay, config.upstream.backend
        view.upstream_ready = lambda: link_ready(link)
    await ops.start()
    runtime.settle()
    try:
        await stop.wait()
    finally:
        async def closing():
            await ops.close()
            await ingest.drain()  # publishers that can reconnect move first; the relay above takes all they send
            # the session upstream closes first, without PUBLISH_DONE: the relay above keeps the
            # broadcasts for its grace period, so a restarted ingest continues them
            if relay is not None:
                relay.stopping = True
            if link is not None:
                await link.close()
            if relay is not None:
                relay.stop()
            await ingest.close()

        await stop_within(closing(), config.node.stop_timeout)


async def run_edge(config: Config, stop: asyncio.Event) -> None:
    """An LL-HLS edge fed over MoQ from its upstream (or, with a directory and no upstream, from
    each broadcast's origin), subscribing when a player first asks."""
    access = node_access(config)
    directory = None if config.upstream.url else await open_directory(config)
    if directory is not None:
        directory.follow()
    source = moq_broadcast_source(config.upstream.url, wait=config.upstream.wait, token=node_token(config),
                                  directory=directory, fill_groups=min(config.upstream.fill_groups, SEGMENT_WINDOW),
                                  tail_wait=GROUP_TAIL_WAIT, **upstream_options(config))
    view = NodeView("edge")
    if directory is not None:
        view.collectors.append(directory.metrics)
        view.directory_ready = directory.ready
    ops = OpsRoutes(view)
    edge = EdgeServer(source, http=config.http, access=access, apps=[ops])
    view.edge, view.http = edge, edge.http
    probe = None
    if config.upstream.url:  # with only a directory, each broadcast has its own origin
        probe = UpstreamProbe(config.upstream.url, token=lambda: node_token(config), **upstream_tls(config))
        view.upstream_ready = probe
    await edge.start()
    ops.start()
    if probe is not None:
        probe.start()
    view.listening = True
    url = write_http_url(config.moq.state_dir, edge.http)
    runtime.settle()
    try:
        await stop.wait()
    finally:
        view.listening = False
        remove_http_url(config.moq.state_dir, url)
        if probe is not None:
            probe.stop()
        ops.stop()
        await stop_within(edge.close(), config.node.stop_timeout)
        if directory is not None:
            await directory.close()
