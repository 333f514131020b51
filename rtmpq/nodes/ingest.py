"""The ingest node: RTMP publishes become broadcasts (with a recording, when asked).

It decides what the RTMP layer does not: which public name a stream key publishes (auth/access),
what happens when a name is already live (the new publish takes over: an encoder's reconnect is
never refused), when a silent publisher is dropped (``[publish] idle_timeout``), and how long a
broadcast waits for its publisher to return (``[publish] grace_period``).
"""

import asyncio
import logging
import math
import ssl
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

from ..auth.access import Access, AccessDenied
from ..auth.hook import hook_name, hook_payload
from ..auth.refusals import RefusedPublishes, counted_address
from ..config import STOP_TIMEOUT, ConfigError, IngestConfig, PublishConfig, default_state_dir
from ..errors import StreamNameInUse
from ..http.client import HttpCallError, post_json, url_label
from ..media.broadcast import Broadcast, BroadcastRegistry
from ..media.catalog import Catalog
from ..media.demux import BroadcastDemuxer
from ..media.frames import Frame
from ..media.recording import FlvRecorder, check_record_dir
from ..redact import safe_name
from ..rtmp.server import STOP_CLOSE_LINGER, RtmpConnection, RtmpServer
from ..rtmp.session import MediaMessage, PublishRequested
from ..rtmp.tls import rtmps_context
from .notify import PublishEvents

log = logging.getLogger("rtmpq.nodes")

# Refusals that count against the address as stream key guessing ([rtmp] max_refused_publishes):
# the publisher's key or token was wrong, not the node's hook that failed to answer.
GUESSES = ("unknown_key", "token_refused", "hook_refused")
# How often publishers are checked for silence, and broadcasts for an expired grace period (seconds).
CHECK_INTERVAL = 0.5
# Graceful stop: what is left of [node] stop_timeout after the publishers asked to reconnect had
# theirs ([rtmp] reconnect_wait), for the rest of the stop (publishes ended, recordings finalized,
# the events service told, MoQ GOAWAY, playlists ENDLIST) (seconds).
RECONNECT_STOP_RESERVE = 1.0


class Publish:
    """One accepted publish: its connection, broadcast, demuxer and (optional) recorder."""

    def __init__(self, node: "IngestNode", conn: RtmpConnection, stream_id: int, broadcast: Broadcast,
                 record_dir) -> None:
        self.node = node
        self.conn = conn
        self.stream_id = stream_id
        self.broadcast = broadcast
        self.name = safe_name(broadcast.name)
        # its warnings (codecs not carried, bad headers) name the publisher as the node's lines do
        self.demuxer = BroadcastDemuxer(broadcast.name, log_name=f"{conn.peer}: {self.name}",
                                        not_carried=broadcast.add_not_carried)
        # named after the public name (the key never reaches a file name)
        self.recorder = FlvRecorder(record_dir, broadcast.name, peer=conn.peer, on_stop=node.recording_stopped,
                                    max_queued_bytes=node.config.record_max_queued_bytes) if record_dir else None
        self.last_media_ns = time.time_ns()
        self.started = time.monotonic()
        self.closed = False
        # what admitted it (app, key, query, wall time): checked again when the settings are
        # reloaded (the key stays in memory, never logged); None: the publish hook admitted it
        self.admitted: tuple[str, str, str, float] | None = None

    def _recorded(self) -> None:
        """Its recording is finalized: the events service hears where it is (none if it was empty)."""
        path, events = self.recorder.path, self.node.events  # (the one in use now: SIGHUP may change it)
        if events is not None and path is not None and path.exists():
            events.post("record_done", name=self.broadcast.name, path=str(path))

    def on_message(self, msg: MediaMessage) -> None:
        now_ns = time.time_ns()
        self.last_media_ns = now_ns
        if self.recorder is not None:
            self.recorder.write(msg.type_id, msg.timestamp, msg.body)
        for item in self.demuxer.message(msg.type_id, msg.timestamp, msg.body, now_ns):
            if isinstance(item, Catalog):
                self.broadcast.set_catalog(item)
            else:
                self.broadcast.push(item)

    def on_media(self, type_id: int, timestamp: int, body, codec, frame_type: int, cts: int, header) -> None:
        """The fast path (RtmpServerSession's media sink): one message, its FLV header read (and,
        with a ``codec``, split off: ``body`` is the payload)."""
        now_ns = time.time_ns()
        self.last_media_ns = now_ns
        if self.recorder is not None:
            self.recorder.write(type_id, timestamp, body, header or b"")
        broadcast = self.broadcast
        for item in self.demuxer.media(type_id, timestamp, body, codec, frame_type, cts, header, now_ns):
            if type(item) is Frame:
                broadcast.push(item)
            else:
                broadcast.set_catalog(item)

    def close(self, reason: str, clean: bool = False) -> None:
        """The publish is over: ``clean``, ended by the publisher (FCUnpublish, deleteStream); else
        cut off (its connection dropped, or closed from here), its groups in progress cut short."""
        if self.closed:
            return
        self.closed = True
        if self.recorder is not None:  # finalized off the event loop; a graceful stop waits for it
            closing = asyncio.ensure_future(self.recorder.aclose())
            self.node._finalizing.add(closing)
            closing.add_done_callback(self.node._finalizing.discard)
            closing.add_done_callback(lambda _: self._recorded())  # (after publish_end: it runs later)
        s = self.demuxer.stats
        log.info("%s: %s: publish ended (%s): %d video, %d audio frames, %d dropped, %d bad access units",
                 self.conn.peer, self.name, reason, s.frames["video"], s.frames["audio"], s.dropped,
                 s.bad_access_units)
        events = self.node.events
        if events is not None:
            events.post("publish_end", name=self.broadcast.name, address=self.conn.peer.rpartition(":")[0],
                        reason=reason, clean=clean, seconds=round(time.monotonic() - self.started, 3),
                        video_frames=s.frames["video"], audio_frames=s.frames["audio"])
        self.node._publish_closed(self, clean)


class IngestNode:
    """The RTMP listener and the publishes it holds; a ``PublishHandler`` for ``RtmpServer``."""

    def __init__(self, registry: BroadcastRegistry, config: IngestConfig | None = None,
                 publish: PublishConfig | None = None, access: Access | None = None,
                 state_dir: Path | None = None, stop_timeout: float = STOP_TIMEOUT) -> None:
        self.registry = registry
        self.config = config or IngestConfig()
        # how long a graceful stop waits for publishers asked to reconnect ([node] stop_timeout bounds it)
        self.reconnect_wait = max(0.0, min(self.config.reconnect_wait, stop_timeout - RECONNECT_STOP_RESERVE))
        self._moving: set[Publish] = set()  # asked to reconnect, not gone yet
        self._moved: asyncio.Future | None = None  # done when the last of them is gone
        self._drained = False
        self.state_dir = state_dir or default_state_dir()  # where a self-signed RTMPS certificate is kept
        self.publish_config = publish or PublishConfig()
        self.access = access or Access(self.publish_config)
        self.server = RtmpServer(self, self.config)
        c = self.config
        self.refusals = RefusedPublishes(c.max_refused_publishes, c.refused_publish_window, c.refused_publish_cooldown)
        self.publishes: dict[str, Publish] = {}  # by broadcast name
        self._finalizing: set[asyncio.Future] = set()  # recordings being closed, old event senders emptied
        self._hook_calls: set[asyncio.Task] = set()  # publishes waiting for [publish] hook_url
        p = self.publish_config
        self.hook_tls = hook_tls_context(p.hook_cafile)
        self.event_counts = Counter()  # /metrics counts on across a change of events_url
        self.events = self._events_sender()
        self._idle_task: asyncio.Task | None = None

    @property
    def address(self) -> tuple[str, int]:
        return self.server.address

    @property
    def tls_address(self) -> tuple[str, int] | None:
        return self.server.tls_address

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()  # (recording_stopped comes from recorder threads)
        if self.config.record_dir:
            check_record_dir(self.config.record_dir)
        tls = rtmps_context(self.config, self.state_dir) if self.config.tls_port is not None else None
        await self.server.start(tls)
        if self.events is not None:
            self.events.start()
        self._idle_task = asyncio.get_running_loop().create_task(self._watch_idle())

    async def drain(self, reason: str = "the server is stopping") -> None:
        """Graceful stop, first step (``close`` takes it if the node did not): the listener takes no
        more connections; each publisher that said it can reconnect (E-RTMP capsEx Reconnect) is
        asked to ([rtmp] reconnect_url) and its media taken as before until it leaves, at most
        ``reconnect_wait`` seconds; every other publisher is stopped at once, its broadcast ended.
        A broadcast whose publisher moved keeps every frame it sent here."""
        if self._drained:
            return
        self._drained = True
        self.registry.stopping = True  # (its log: the broadcasts end, no grace period said)
        pubs = list(self.publishes.values())
        moving = [pub for pub in pubs if pub.conn.can_reconnect] if self.reconnect_wait > 0 else []
        if not moving:
            return
        self.server.stop_listening()  # a publisher sent back to the tcUrl it came by must not land here again
        for pub in pubs:
            if pub.conn.can_reconnect:
                continue
            pub.conn.stop(pub.stream_id, "NetStream.Publish.Idle", reason)
            pub.broadcast.end()
        self._moving.update(moving)
        self._moved = asyncio.get_running_loop().create_future()
        asked = set()
        for pub in moving:
            tc_url = reconnect_tc_url(self.config.reconnect_url, pub.conn.session.app)
            log.info("%s: %s: asked to reconnect (%s) to %s; its media is taken until it leaves, at most %g s",
                     pub.conn.peer, pub.name, reason, url_label(tc_url) if tc_url else "the tcUrl it connected with",
                     self.reconnect_wait)
            if pub.conn not in asked:  # one request per connection, whatever it publishes
                asked.add(pub.conn)
                pub.conn.request_reconnect(f"{reason}: please reconnect", tc_url)
        await asyncio.wait([self._moved], timeout=self.reconnect_wait)
        if not self._moved.done():
            for pub in list(self._moving):
                log.warning("%s: %s: did not reconnect within %g s ([rtmp] reconnect_wait); ending its publish",
                            pub.conn.peer, pub.name, self.reconnect_wait)
        self._moving.clear()

    async def close(self, reason: str = "the server is stopping") -> None:
        """Graceful stop: publishers that can reconnect are asked to (``drain``); then every
        publisher gets an onStatus and a close, recordings are finalized, broadcasts end (players
        get ENDLIST)."""
        await self.drain(reason)
        if self._idle_task is not None:
            self._idle_task.cancel()
        for task in self._hook_calls:
            task.cancel()
        for pub in list(self.publishes.values()):
            pub.conn.stop(pub.stream_id, "NetStream.Publish.Idle", reason)
        self.registry.end_all()
        await self.server.close(linger=STOP_CLOSE_LINGER)  # the encoders read why first
        if self._finalizing:
            await asyncio.gather(*self._finalizing, return_exceptions=True)
        if self.events is not None:  # the ends and recordings just told, within the hook's timeout
            await self.events.close(self.publish_config.hook_timeout)

    # -- PublishHandler -------------------------------------------------------------------------
    def publish_requested(self, conn: RtmpConnection, req: PublishRequested) -> None:
        address, now = conn.peer.rpartition(":")[0], time.monotonic()
        if wait := self.refusals.cooldown_left(address, now):  # logged once, when it began
            self._refuse(conn, req.stream_id, "max_refused_publishes", "NetStream.Publish.BadName",
                         f"publish refused: too many refused publishes from your address; try again in {math.ceil(wait)} s")
            return
        admitted = (req.app, req.key, req.query, time.time())
        try:
            name = self.access.publish_name(*admitted)
        except AccessDenied as exc:
            if exc.reason == "unknown_key" and self.publish_config.hook_url:  # the operator's service decides
                if not self.refusals.may_ask(address, now):  # (not a guess: those asked may all be good)
                    self._refuse(conn, req.stream_id, "max_refused_publishes", "NetStream.Publish.BadName",
                                 "publish refused: too many publishes from your address await the publish hook; "
                                 "try again in a few seconds")
                    return
                self.refusals.asking(address)
                task = asyncio.get_running_loop().create_task(self._ask_hook(conn, req, address))
                self._hook_calls.add(task)
                task.add_done_callback(self._hook_calls.discard)
                return
            self._denied(conn, req, exc, address)
            return
        self._admit(conn, req, name, admitted)

    async def _ask_hook(self, conn: RtmpConnection, req: PublishRequested, address: str) -> None:
        """[publish] hook_url decides a publish; it is answered when the hook answers (the RTMP
        layer holds what the encoder sends meanwhile). No answer in time is a refusal."""
        url, timeout = self.publish_config.hook_url, self.publish_config.hook_timeout
        try:
            try:
                status, body = await post_json(url, hook_payload(req.app, req.key, req.query, address), timeout,
                                               ssl_context=self.hook_tls)
            finally:
                self.refusals.answered(address)
            name = hook_name(status, body, req.app)
        except AccessDenied as exc:
            if exc.reason != "hook_refused":  # the operator's service answered what is not an answer
                log.error("%s: publish hook %s: %s", conn.peer, url_label(url), exc)
            name, denied = None, exc
        except (TimeoutError, HttpCallError) as exc:
            log.error("%s: publish hook %s: %s", conn.peer, url_label(url),
                      f"no answer within {timeout:g} s ([publish] hook_timeout)" if isinstance(exc, TimeoutError) else exc)
            name, denied = None, AccessDenied("the publish hook did not answer", "hook_unavailable")
        if not conn.awaits_answer(req.stream_id):  # the encoder left (or asked again) meanwhile
            return
        if name is None:
            self._denied(conn, req, denied, address)
        else:
            self._admit(conn, req, name, None)

    def _denied(self, conn: RtmpConnection, req: PublishRequested, exc: AccessDenied, address: str) -> None:
        log.warning("%s: publish to app %r refused: %s", conn.peer, req.app, exc)
        self._refuse(conn, req.stream_id, exc.reason, "NetStream.Publish.BadName", f"publish refused: {exc}")
        if exc.reason in GUESSES and (count := self.refusals.refused(address, time.monotonic())):
            log.warning("%s: %d publishes refused within %g s: refusing every publish from %s for %g s",
                        conn.peer, count, self.refusals.window, counted_address(address), self.refusals.cooldown)

    def _admit(self, conn: RtmpConnection, req: PublishRequested, name: str, admitted) -> None:
        """Publish ``name``; ``admitted``: what a settings reload checks it by again (None: the
        hook admitted it, and is not asked again)."""
        old = self.publishes.get(name)
        if old is not None:  # a reconnecting encoder, or a second one: the newest wins
            log.warning("%s: %s: taken over by %s", old.conn.peer, safe_name(name), conn.peer)
            old.conn.stop(old.stream_id, "NetStream.Publish.BadName", "another publisher took over this stream")
        try:
            broadcast = self.registry.publish(name)
        except StreamNameInUse:  # a broadcast of this name that is not ours (e.g. relayed here)
            log.warning("%s: publish to %s refused: already live", conn.peer, safe_name(name))
            self._refuse(conn, req.stream_id, "name_in_use", "NetStream.Publish.BadName", "Stream already publishing")
            return
        try:
            pub = Publish(self, conn, req.stream_id, broadcast, self.config.record_dir)
        except OSError as exc:
            log.error("%s: cannot record %s: %s", conn.peer, safe_name(name), exc)
            broadcast.publisher_left(0, time.monotonic())
            self._refuse(conn, req.stream_id, "record_failed", "NetStream.Publish.Failed", "Recording failed")
            return
        pub.admitted = admitted
        self.publishes[name] = pub
        if self.events is not None:
            self.events.post("publish_start", name=name, app=req.app, address=conn.peer.rpartition(":")[0],
                             publish=broadcast.publishes)
        log.info("%s: publishing %s%s", conn.peer, safe_name(name),
                 f" (publish {broadcast.publishes})" if broadcast.publishes > 1 else "")
        conn.accept(req.stream_id, pub)

    def _refuse(self, conn: RtmpConnection, stream_id: int, reason: str, code: str, description: str) -> None:
        """Refuse a publish, counted in metrics by ``reason`` (never a key or name)."""
        self.server.errors[reason] += 1
        conn.refuse(stream_id, code, description)

    def recording_stopped(self) -> None:
        """A recording stopped (a full or failing disk, one too far behind): counted as
        ``record_stopped``, so a full disk can be alerted on (it was only an error log line). Called
        from a recorder's writer thread, or the loop's."""
        try:
            self._loop.call_soon_threadsafe(self.server.errors.update, ("record_stopped",))
        except RuntimeError:
            pass  # the loop is closed: the node has stopped

    def _publish_closed(self, pub: Publish, clean: bool) -> None:
        if self.publishes.get(pub.broadcast.name) is pub:
            del self.publishes[pub.broadcast.name]
        pub.broadcast.publisher_left(self.publish_config.grace_period, time.monotonic(), lost=not clean)
        if pub in self._moving:
            self._moving.discard(pub)
            if not self._moving and not self._moved.done():
                self._moved.set_result(None)

    def settings_reloaded(self) -> None:
        """SIGHUP took new settings: the hook's CA is read again, the events service is the new
        one, live publishes are checked."""
        self.reload_hook_ca()
        self.renew_events()
        self.recheck_publishes()

    def reload_hook_ca(self) -> None:
        """[publish] hook_cafile read again (a CA renewed in place keeps its path); a file that
        cannot be loaded now leaves the CA in use as it was."""
        try:
            self.hook_tls = hook_tls_context(self.publish_config.hook_cafile)
        except ConfigError as exc:
            log.error("SIGHUP: %s; the hook's CA in use stays", exc)
            return
        if self.events is not None:
            self.events.ssl_context = self.hook_tls

    def renew_events(self) -> None:
        """[publish] events_url or events_retries changed: events from now on go to the new URL
        (none: not told); what the old sender holds is still sent to the old one, within hook_timeout."""
        p, old = self.publish_config, self.events
        if old is not None and old.url == p.events_url:
            old.retries = p.events_retries
            return
        self.events = self._events_sender()
        if self.events is not None:
            self.events.start()
        if old is not None:
            closing = asyncio.ensure_future(old.close(p.hook_timeout))
            self._finalizing.add(closing)
            closing.add_done_callback(self._finalizing.discard)

    def _events_sender(self) -> PublishEvents | None:
        p = self.publish_config
        return PublishEvents(p.events_url, p.hook_timeout, self.hook_tls, p.events_retries, self.event_counts) \
            if p.events_url else None

    def recheck_publishes(self) -> None:
        """After a settings reload: end each live publish the new stream keys or [auth] secret
        would not have admitted at its start (a key removed or given to another name, a token the
        new secret does not sign). Its broadcast waits [publish] grace_period as for a drop."""
        for name, pub in list(self.publishes.items()):
            if pub.admitted is None:  # the hook's decision stands
                continue
            try:
                still = self.access.publish_name(*pub.admitted) == name
            except AccessDenied:
                still = False
            if not still:
                log.warning("%s: %s: its stream key or token is no longer accepted (settings reloaded); "
                            "publish ended", pub.conn.peer, pub.name)
                self.server.errors["key_revoked"] += 1
                pub.conn.stop(pub.stream_id, "NetStream.Publish.BadName", "stream key no longer accepted")

    # -- idle publishers ------------------------------------------------------------------------
    def check_idle(self, now_ns: int) -> None:
        """Close every publisher that sent no media for ``idle_timeout`` (time passed in)."""
        limit = self.publish_config.idle_timeout
        if limit <= 0:
            return
        for pub in list(self.publishes.values()):
            if now_ns - pub.last_media_ns > limit * 1e9:
                log.warning("%s: %s: no media for %g s, closing the publisher", pub.conn.peer, pub.name, limit)
                pub.conn.stop(pub.stream_id, "NetStream.Publish.Idle", f"no media for {limit:g} s")

    async def _watch_idle(self) -> None:
        while True:
            await asyncio.sleep(CHECK_INTERVAL)
            try:
                self.check_idle(time.time_ns())
                self.registry.expire(time.monotonic())
            except Exception:  # never let one bad publish stop the checks for every other
                log.exception("idle check failed")


def hook_tls_context(cafile: Path | None) -> ssl.SSLContext | None:
    """What an https hook_url / events_url is verified by: [publish] hook_cafile, or (None) the
    system's CAs. A file that cannot be loaded stops the node at start."""
    if cafile is None:
        return None
    try:
        return ssl.create_default_context(cafile=str(cafile))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"publish.hook_cafile: cannot load {cafile}: {exc}") from None


def reconnect_tc_url(url: str, app: str | None) -> str:
    """The tcUrl a publisher of ``app`` is asked to reconnect to: [rtmp] reconnect_url, with the
    publisher's own app appended when it names none; empty stays empty (where it connected)."""
    if not url or urlsplit(url).path.strip("/") or not app:
        return url
    return f"{url.rstrip('/')}/{app}"


def rtmp_hosts(config: IngestConfig) -> list[str]:
    """The addresses the ingest listens on (RTMP, and RTMPS when on)."""
    return [config.host] + ([config.tls_host] if config.tls_port is not None else [])


async def run_ingest(config: IngestConfig, registry: BroadcastRegistry | None = None,
                     stop: asyncio.Event | None = None, publish: PublishConfig | None = None,
                     access: Access | None = None) -> None:
    node = IngestNode(registry or BroadcastRegistry(), config, publish, access)
    await node.start()
    host, port = node.address
    log.info("ingest ready: publish to rtmp://%s:%d/live/<stream key>", host, port)
    try:
        await (stop or asyncio.Event()).wait()
    finally:
        await node.close()
