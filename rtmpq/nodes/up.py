"""All in one process: RTMP ingest, an in-process MoQ relay (QUIC) and the LL-HLS edge (HTTP)."""

import asyncio
import ipaddress
import logging
import socket

from ..auth.access import Access
from ..config import Config
from ..edge.server import EdgeServer
from ..media.broadcast import BroadcastEnded, BroadcastRegistry, CatalogUpdate, GroupSkipped
from ..media.catalog import Catalog
from ..moq.broadcast_source import with_added_tracks
from ..moq.relay import MoqRelay
from ..moq.relay_sink import InProcessSink
from ..moq.tls import server_pair
from ..moq.transport import bound_host, serve_moq
from ..ops.health import remove_http_url, write_http_url
from ..ops.routes import OpsRoutes
from ..ops.view import NodeView
from ..redact import names_are_public
from . import runtime
from .ingest import IngestNode, rtmp_hosts
from .reload import Reloader, warn_if_weak

log = logging.getLogger("rtmpq.nodes")


def node_relay(registry: BroadcastRegistry, config: Config, access: Access, **options) -> MoqRelay:
    """A node's MoQ relay with the settings of ``config`` that it applies."""
    return MoqRelay(registry, access=access, upstream_grace=config.publish.grace_period,
                    stuck_timeout=config.moq.stuck_timeout, partial_object_timeout=config.moq.partial_object_timeout,
                    max_partial_bytes=config.moq.max_partial_bytes, upstream_wait=config.moq.upstream_wait,
                    max_waiting_subscribes=config.moq.max_waiting_subscribes,
                    cache_bounds=config.moq.cache_bounds, delivery_timeout=config.moq.delivery_timeout,
                    send_budget=config.moq.send_budget, max_fetch_bytes=config.moq.max_fetch_bytes, **options)


def node_registry(config: Config) -> BroadcastRegistry:
    """A node's in-process broadcasts, bounded by ``config``'s [publish] settings."""
    return BroadcastRegistry(max_group_bytes=config.publish.max_group_bytes,
                             reader_max_buffered_bytes=config.publish.reader_max_buffered_bytes)


def free_udp_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class LocalFeed:
    """An in-process broadcast as Catalog and Frame items for the edge. Transcoder rungs pass only
    once ``want`` asked for them, which tells the broadcast (and so the transcoder) that they are
    watched. With ``relay``, a new feed starts with the groups the relay's caches hold (a first
    viewer's playlist window is filled at once), then goes on with the broadcast from there; and
    the tracks another node added to the broadcast through the relay (the rungs of `rtmpq
    transcode --upstream` connected to this node) are listed in its catalog and, while wanted, read
    from the relay as one more subscriber there: the transcoder makes a rung only while it has one,
    as for the MoQ subscription of a separate `rtmpq edge`."""

    def __init__(self, broadcast, relay: MoqRelay | None = None) -> None:
        self.broadcast = broadcast
        self.relay = relay
        self.wanted: set[str] = set()
        self._reader = None
        # wanted tracks another node added -> (the relay's fan-out, our subscription there) or None
        # while the relay has none (the node is reconnecting)
        self._from_relay: dict[str, tuple | None] = {}

    def want(self, track: str, wanted: bool = True) -> None:
        if wanted == (track in self.wanted):
            return
        (self.wanted.add if wanted else self.wanted.discard)(track)
        if wanted and self.broadcast.catalog.track(track) is None and self._added(track):
            self._from_relay[track] = None
            self._subscribe()
        elif not wanted and track in self._from_relay:
            held = self._from_relay.pop(track)
            if held is not None:
                held[0].unsubscribe(held[1])  # the relay stops asking the transcoder for it
        else:
            self.broadcast.want(track, wanted)

    def _added(self, track: str) -> bool:
        return self.relay is not None and any(t.name == track for t in self.relay.added_tracks(self.broadcast.name))

    def _subscribe(self) -> None:
        """Subscribe at the relay to each wanted track another node added, where not yet, or anew
        where its fan-out there changed (the node came back after the relay gave up on it)."""
        if self._reader is None:
            return
        for track, held in list(self._from_relay.items()):
            fanout = self.relay.added_fanout(self.broadcast.name, track)
            if held is not None and held[0] is fanout:
                continue
            if held is not None:
                held[0].unsubscribe(held[1])
            self._from_relay[track] = None if fanout is None else (
                fanout, self.relay.subscribe_in_process(fanout, InProcessSink(track, self._reader.add)))

    def _on_added(self) -> None:
        """The tracks another node adds to the broadcast changed: the catalog again (merged with
        them on the way out), and subscriptions to them follow."""
        if not self.broadcast.catalog.empty:
            self._reader.add(CatalogUpdate(self.broadcast.catalog))
        self._subscribe()

    def _merged(self, catalog):
        if self.relay is None:
            return catalog
        return with_added_tracks(catalog, self.relay.added_tracks(self.broadcast.name))

    def _passes(self, catalog, track: str) -> bool:
        return catalog is None or track in self.wanted or not catalog.is_rung(track)

    async def __aiter__(self):
        reader = self._reader = self.broadcast.reader()  # first: nothing published from now on is missed
        cached = self.relay.cached_frames(self.broadcast.name) if self.relay is not None else []
        if self.relay is not None:
            self.relay.watch_added(self.broadcast.name, self._on_added)
            self._subscribe()
        newest: dict[str, tuple[int, int]] = {}  # track -> (group, object) yielded from the cache
        catalog = None
        try:
            if cached and self.broadcast.catalog.tracks:
                catalog = self._merged(self.broadcast.catalog)
                yield catalog
                for frame in cached:
                    if self._passes(catalog, frame.track):
                        newest[frame.track] = (frame.group, frame.index)
                        yield frame
            async for event in reader:
                if isinstance(event, CatalogUpdate):
                    catalog = self._merged(event.catalog)
                    yield catalog
                elif isinstance(event, BroadcastEnded):
                    return
                elif isinstance(event, GroupSkipped):
                    if self._passes(catalog, event.track):
                        yield event  # a rung's: its playlist lists the gap at once (LlHlsStream.skip)
                elif (event.group, event.index) > newest.get(event.track, (-1, -1)) and self._passes(catalog, event.track):
                    yield event
        finally:
            reader.close()
            if self.relay is not None:
                self.relay.watch_added(self.broadcast.name, self._on_added, False)
            for track in list(self.wanted):
                self.want(track, False)


def local_broadcast_source(registry: BroadcastRegistry, relay: MoqRelay | None = None):
    """open_broadcast for the edge: read an in-process broadcast as Catalog and Frame items."""

    def open_broadcast(name: str):
        broadcast = registry.get(name)
        return None if broadcast is None else LocalFeed(broadcast, relay)

    def catalog(name: str) -> Catalog | None:
        broadcast = registry.get(name)
        return None if broadcast is None else broadcast.catalog

    open_broadcast.wait_live = registry.wait_for  # the edge holds a page's "live again?" on it
    open_broadcast.catalog = catalog  # at once, before the feed's: what is not carried (the edge says it)
    return open_broadcast


class UpNode:
    """Ingest + relay + edge; ``start()`` then ``close()``; addresses are known after start."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.access = Access(config.publish, config.auth)
        names_are_public(not self.access.open)  # keys never reach a name: log names as they are
        self.registry = node_registry(config)
        self.rtmp = IngestNode(self.registry, config.rtmp, config.publish, self.access, config.moq.state_dir,
                               config.node.stop_timeout)
        self.moq_config = config.moq
        self.moq = node_relay(self.registry, config, self.access, cache_local=True)
        self.transcoder = self.transcoder_children = None
        if config.transcode.ladder and config.transcode.isolate:
            from .transcode_child import TranscoderChildren

            # a child per broadcast adds its rungs through the relay, as a separate transcoder node would
            self.transcoder_children = TranscoderChildren(config, self.moq)
        elif config.transcode.ladder:
            from .transcode import LocalTranscoder  # PyAV is loaded only by nodes that transcode

            self.transcoder = LocalTranscoder(self.registry, config.transcode)
        self.view = NodeView("up", registry=self.registry, relay=self.moq, ingest=self.rtmp)
        if self.transcoder is not None:
            from .transcode import rung_readings

            self.view.transcode = rung_readings(self.transcoder.broadcasts)
        if self.transcoder_children is not None:
            self.view.collectors.append(self.transcoder_children.metrics)
            self.view.refreshers.append(self.transcoder_children.refresh)
        self.view.relay_backend = config.moq.backend
        self.ops = OpsRoutes(self.view)
        self.edge = EdgeServer(local_broadcast_source(self.registry, self.moq), http=config.http, access=self.access,
                               apps=[self.ops])
        self.view.edge, self.view.http = self.edge, self.edge.http
        self._quic = None
        self.fingerprint = ""
        self._http_url = None  # what `rtmpq health` reads in the state dir (rtmpq.ops.health)

    async def start(self) -> None:
        # first: a MoQ certificate that does not load, or a state dir that cannot keep one, stops
        # the node before any listener is up (its log said "RTMP listening", then it exited)
        cert, key, self.fingerprint = server_pair(self.moq_config.certfile, self.moq_config.keyfile,
                                                  self.moq_config.state_dir)
        await self.rtmp.start()
        await self.edge.start()
        self._quic_port = self.moq_config.port
        if self.moq_config.backend == "aiopquic" and not self._quic_port:
            self._quic_port = free_udp_port(self.moq_config.host)  # picoquic does not report a port 0 bind
        self._quic = await serve_moq(self.moq_config.host, self._quic_port, certfile=cert, keyfile=key,
                                     on_connection=self.moq.on_connection, backend=self.moq_config.backend,
                                     handshake_timeout=self.moq_config.handshake_timeout,
                                     idle_timeout=self.moq_config.idle_timeout,
                                     max_connections=self.moq_config.max_connections,
                                     max_connections_per_ip=self.moq_config.max_connections_per_ip,
                                     budget=self.moq.receive_budget, errors=self.moq.errors,
                                     retry=self.moq_config.retry, session_caps=self.moq_config.session_caps)
        self.moq.start()
        if self.transcoder is not None:
            self.transcoder.start()
        if self.transcoder_children is not None:
            self.transcoder_children.start(*self.moq_address)
        self.ops.start()
        self.view.listening = True
        self._http_url = write_http_url(self.moq_config.state_dir, self.edge.http)
        host, port = self.moq_address
        log.info("MoQ (draft 16, ALPN moqt-16) on udp %s:%d%s, certificate sha256 %s", host, port,
                 ", QUIC Retry on" if self.moq_config.retry else "", self.fingerprint)

    @property
    def moq_address(self) -> tuple[str, int]:
        if self.moq_config.backend == "aiopquic":  # picoquic binds the port we asked for
            return self.moq_config.host, self._quic_port
        return self._quic._transport.get_extra_info("sockname")[:2]

    async def close(self) -> None:
        """Graceful stop: publishers that can reconnect are asked to, and waited for (their
        broadcasts take every frame they send until they leave, here and below); then GOAWAY to
        every MoQ session (nodes below reconnect, their broadcasts go on when this node is back),
        the other publishers get onStatus and a close, recordings are finalized, the node's own
        playlists get ENDLIST."""
        self.view.listening = False
        remove_http_url(self.moq_config.state_dir, self._http_url)
        await self.rtmp.drain()
        stopping_child = None
        if self.transcoder_children is not None:  # told first (before the GOAWAY they would reconnect after),
            stopping_child = asyncio.ensure_future(self.transcoder_children.close())
            await asyncio.sleep(0)  # (their SIGTERMs go now) and they stop beside the rest
        self.ops.stop()
        self.moq.stop()
        if self.transcoder is not None:
            self.transcoder.close()
        await self.rtmp.close()
        await asyncio.sleep(0)  # let the edge read the ends
        await self.edge.close()
        if stopping_child is not None:
            await stopping_child
        if self._quic is not None:
            self._quic.close()


def warn_if_open(access: Access, hosts: list[str]) -> None:
    """An open node says so at start; one listening beyond loopback also says how to close it."""
    warn_if_weak(access.auth.secret)
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


async def run_up(config: Config, stop: asyncio.Event, reloader: Reloader | None = None) -> None:
    from .directory import advertised_url, open_directory, publishing

    node = UpNode(config)
    if reloader is not None:
        reloader.hooks.append(node.rtmp.settings_reloaded)
    warn_if_open(node.access, [*rtmp_hosts(config.rtmp), bound_host(config.moq.host, config.moq.backend),
                               config.http.host])
    directory = await open_directory(config)
    if directory is not None:
        node.view.directory_ready = directory.ready
    await node.start()
    if directory is not None:  # the origin of what is published here: relays and edges find it
        directory.register(publishing(node.registry), advertised_url(config, *node.moq_address), node.fingerprint)
    runtime.settle()
    try:
        await stop.wait()
    finally:
        if directory is not None:
            await directory.close()  # withdrawn first: followers look elsewhere before the GOAWAY
        await stop_within(node.close(), config.node.stop_timeout)


async def stop_within(closing, timeout: float) -> None:
    """Run a node's graceful ``close()``, giving up after ``timeout`` seconds."""
    try:
        await asyncio.wait_for(closing, timeout)
    except TimeoutError:
        log.warning("graceful stop took longer than %g s; exiting anyway", timeout)
