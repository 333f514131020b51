"""Nodes that talk to another node over MoQ: a relay below a relay, an ingest or an edge apart.

- ``UpstreamLink``: keeps one client session to an upstream node open (reconnecting with
  backoff), with a MoqRelay handling its events. A relay asks it for tracks it does not have; an
  ingest announces its broadcasts on it (PUBLISH_NAMESPACE) and answers the upstream's SUBSCRIBEs.
- ``moq_broadcast_source``: the edge's ``open_broadcast`` over MoQ (one session per broadcast).
"""

import asyncio
import logging

from ..media.catalog import Catalog
from ..media.frames import Frame
from ..moq.client import TrackChoice
from ..moq.follow import follow_broadcast
from ..moq.relay import MoqRelay
from ..moq.transport import DEFAULT_BACKEND, connect_moq, parse_moq_url
from ..redact import safe_name

log = logging.getLogger("rtmpq.nodes")

# Seconds between reconnection attempts to an upstream node (doubling up to the maximum).
RECONNECT_MIN = 0.5
RECONNECT_MAX = 10.0


class UpstreamLink:
    def __init__(self, relay: MoqRelay, url: str, *, insecure: bool = False, cafile: str | None = None,
                 fingerprint: str | None = None, backend: str = DEFAULT_BACKEND, announce: bool = False,
                 use_for_unknown_tracks: bool = True, token=lambda: None) -> None:
        self.relay = relay
        self.host, self.port, self.path = parse_moq_url(url)
        self.tls = dict(insecure=insecure, cafile=cafile, fingerprint=fingerprint, backend=backend)
        self.announce = announce
        self.use_for_unknown_tracks = use_for_unknown_tracks
        self.token = token  # () -> the node token to present, or None
        self.connected = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        delay = RECONNECT_MIN
        while True:
            try:
                async with connect_moq(self.host, self.port, path=self.path, **self.tls, token=self.token()) as conn:
                    delay = RECONNECT_MIN
                    self.relay.on_connection(conn)
                    if self.use_for_unknown_tracks:
                        self.relay.set_upstream(conn)
                    log.info("connected to upstream %s:%d", self.host, self.port)
                    self.connected.set()
                    closed = asyncio.get_running_loop().create_future()
                    original = conn.handler

                    def handler(c, event, _orig=original, _closed=closed):
                        _orig(c, event)
                        if type(event).__name__ == "SessionClosed" and not _closed.done():
                            _closed.set_result(None)

                    conn.handler = handler
                    announcer = asyncio.ensure_future(self._announce(conn)) if self.announce else None
                    try:
                        await closed
                    finally:
                        if announcer is not None:
                            announcer.cancel()
            except (ConnectionError, OSError, TimeoutError) as exc:
                log.warning("upstream %s:%d: %s; retrying in %.1f s", self.host, self.port, exc, delay)
            self.connected.clear()
            if self.relay.upstream is not None and self.relay.upstream.session.closed:
                self.relay.set_upstream(None)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX)

    async def _announce(self, conn) -> None:
        """PUBLISH_NAMESPACE every local broadcast, now and as they start; withdraw them as they end."""
        announced: dict[str, int] = {}
        async for broadcast in self.relay.registry.announcements():
            namespace = tuple(broadcast.name.split("/"))
            announced[broadcast.name] = conn.session.publish_namespace(namespace, authorization=self.token())
            conn.flush()
            log.info("announced %s upstream", safe_name(broadcast.name))
            asyncio.ensure_future(self._withdraw_when_done(conn, broadcast, announced))

    async def _withdraw_when_done(self, conn, broadcast, announced) -> None:
        await broadcast.wait_ended()
        rid = announced.pop(broadcast.name, None)
        if rid is not None and not conn.session.closed:
            conn.session.publish_namespace_done(rid)
            conn.flush()


def moq_broadcast_source(url: str, *, wait: float, token: str | None = None, **tls):
    """open_broadcast for an edge fed over MoQ: subscribes when a player first asks for a broadcast,
    waits up to ``wait`` for one that is not live yet, and follows it through upstream restarts.

    ``tls`` takes connect_moq's insecure / cafile / fingerprint / backend.
    """
    host, port, _ = parse_moq_url(url)

    def open_broadcast(name: str):
        return MoqFeed(host, port, name, wait=wait, token=token, **tls)

    return open_broadcast


class MoqFeed:
    """A broadcast followed over MoQ as Catalog and Frame items for the edge: every track but the
    transcoder rungs, and the rungs that ``want`` asks for while players watch them."""

    def __init__(self, host: str, port: int, name: str, **options) -> None:
        self.host, self.port, self.name, self.options = host, port, name, options
        self.choice = TrackChoice(all_but_rungs=True)

    def want(self, track: str, wanted: bool = True) -> None:
        self.choice.want(track, wanted)

    async def __aiter__(self):
        async for item in follow_broadcast(self.host, self.port, self.name, choice=self.choice, **self.options):
            if isinstance(item, (Catalog, Frame)):
                yield item
