"""The MoQ side of a node: serves broadcasts to MoQ subscribers through per-track fan-outs.

Each broadcast is read once (one reader of the in-process broadcast, however many subscribers):
its catalog becomes the ``catalog`` track (one group per catalog version) and each media track a
``TrackFanout`` with its group cache. Subscribers get one QUIC stream per group, newest and audio
first, within their delivery timeout and send budget (see fanout.py).

Subscription filters: unfiltered and AbsoluteStart start at the newest cached group (from its first
object, an IDR for video); LargestObject and NextGroupStart start at the next group, since a group
is only ever delivered whole from its first object.
"""

import asyncio
import logging
import time

from ..media.broadcast import Broadcast, BroadcastEnded, BroadcastRegistry, CatalogUpdate
from ..media.frames import AUDIO, VIDEO
from ..redact import safe_name
from . import events as ev
from .fanout import DEFAULT_DELIVERY_TIMEOUT, DEFAULT_SEND_BUDGET, TrackFanout, TrackSubscription
from .loc import CATALOG_TRACK, frame_extensions
from .transport import MoqConnection
from .wire import FILTER_LARGEST_OBJECT, FILTER_NEXT_GROUP_START, PublishDoneStatus, RequestError

log = logging.getLogger("rtmpq.moq")

# How often budgets are enforced and caches expired (seconds).
CHECK_INTERVAL = 0.05
# Send scheduler urgency per track kind: lower is sent first.
URGENCY = {CATALOG_TRACK: 0, AUDIO: 1, VIDEO: 2}


class _ConnectionSink:
    """GroupSink over one MoQ connection for one subscription (one stream per group)."""

    def __init__(self, conn: MoqConnection, track_alias: int, urgency: int) -> None:
        self.conn = conn
        self.alias = track_alias
        self.urgency = urgency
        self.streams_opened = 0

    def open_group(self, group_id: int) -> int:
        sid = self.conn.session.open_subgroup(self.alias, group_id, priority=self.urgency)
        self.conn.set_priority(sid, self.urgency, group_id)
        self.streams_opened += 1
        self.conn.flush()
        return sid

    def send_object(self, handle: int, object_id: int, payload, extensions) -> None:
        self.conn.session.send_object(handle, object_id, payload, extensions)
        self.conn.flush()

    def end_group(self, handle: int) -> None:
        self.conn.session.end_subgroup(handle)
        self.conn.forget_stream(handle)
        self.conn.flush()

    def reset_group(self, handle: int, code: int) -> None:
        self.conn.session.reset_subgroup(handle, code)
        self.conn.forget_stream(handle)
        self.conn.flush()

    def buffered_bytes(self, handle: int) -> int:
        return self.conn.queued_bytes(handle)

    def total_buffered_bytes(self) -> int:
        return self.conn.total_queued_bytes()


class _Subscription:
    def __init__(self, conn: MoqConnection, request_id: int, source: "_BroadcastSource", track: str,
                 sub: TrackSubscription, sink: _ConnectionSink) -> None:
        self.conn = conn
        self.request_id = request_id
        self.source = source
        self.track = track
        self.sub = sub
        self.sink = sink


class _BroadcastSource:
    """Reads one in-process broadcast into per-track fan-outs."""

    def __init__(self, broadcast: Broadcast, on_end) -> None:
        self.broadcast = broadcast
        self.name = safe_name(broadcast.name)
        self.fanouts: dict[str, TrackFanout] = {CATALOG_TRACK: TrackFanout()}
        self.ended = False
        self._on_end = on_end
        self._reader = broadcast.reader()
        self._catalog_groups = 0
        self.task = asyncio.get_running_loop().create_task(self._run())
        # publish what is known now, so a subscriber right after start has a catalog
        if broadcast.catalog.tracks:
            self._on_catalog(broadcast.catalog)

    def fanout(self, track: str) -> TrackFanout | None:
        return self.fanouts.get(track)

    def _on_catalog(self, catalog) -> None:
        now = time.monotonic()
        data = catalog.to_json()
        last = self.fanouts[CATALOG_TRACK].cache.latest()
        if last is not None and last.objects and bytes(last.objects[0].payload) == data:
            return
        for info in catalog.tracks:
            self.fanouts.setdefault(info.name, TrackFanout())
        group = self._catalog_groups
        self._catalog_groups += 1
        self.fanouts[CATALOG_TRACK].publish_object(group, 0, data, None, now)
        self.fanouts[CATALOG_TRACK].end_group(group)

    async def _run(self) -> None:
        timescales = {}
        try:
            async for item in self._reader:
                if isinstance(item, CatalogUpdate):
                    timescales = {t.name: t.timescale for t in item.catalog.tracks}
                    self._on_catalog(item.catalog)
                elif isinstance(item, BroadcastEnded):
                    break
                else:
                    fanout = self.fanouts.get(item.track)
                    if fanout is None:
                        fanout = self.fanouts[item.track] = TrackFanout()
                    fanout.publish_object(item.group, item.index, item.payload,
                                          frame_extensions(item, timescales.get(item.track, 1000)), time.monotonic())
        finally:
            self.ended = True
            self._reader.close()
            self._on_end(self)


class MoqBroadcastServer:
    """Answers MoQ subscriptions with the broadcasts of an in-process registry."""

    def __init__(self, registry: BroadcastRegistry, *, delivery_timeout: float = DEFAULT_DELIVERY_TIMEOUT,
                 send_budget: int = DEFAULT_SEND_BUDGET) -> None:
        self.registry = registry
        self.delivery_timeout = delivery_timeout
        self.send_budget = send_budget
        self._sources: dict[str, _BroadcastSource] = {}
        self._subs: dict[tuple[int, int], _Subscription] = {}  # (id(conn), request id) -> subscription
        self._aliases: dict[int, int] = {}
        self.connections: set[MoqConnection] = set()
        self._ticker: asyncio.Task | None = None

    def start(self) -> None:
        self._ticker = asyncio.get_running_loop().create_task(self._tick())

    def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        for source in list(self._sources.values()):
            source.task.cancel()

    def on_connection(self, conn: MoqConnection) -> None:
        conn.handler = self._on_event
        self.connections.add(conn)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(CHECK_INTERVAL)
            now = time.monotonic()
            for source in list(self._sources.values()):
                for fanout in source.fanouts.values():
                    fanout.check(now)

    def _source(self, name: str) -> _BroadcastSource | None:
        source = self._sources.get(name)
        if source is not None and not source.ended:
            return source
        broadcast = self.registry.get(name)
        if broadcast is None:
            return None
        source = self._sources[name] = _BroadcastSource(broadcast, self._on_source_end)
        return source

    def _on_source_end(self, source: _BroadcastSource) -> None:
        if self._sources.get(source.broadcast.name) is source:
            del self._sources[source.broadcast.name]
        for key, s in list(self._subs.items()):
            if s.source is source:
                del self._subs[key]
                for group in list(s.sub.in_flight):
                    s.sub.end_group(group)
                if not s.conn.session.closed:
                    s.conn.session.publish_done(s.request_id, PublishDoneStatus.TRACK_ENDED, s.sink.streams_opened,
                                                "the publisher stopped")
                    s.conn.flush()
        log.info("%s: MoQ source ended", source.name)

    def _on_event(self, conn: MoqConnection, event) -> None:
        if isinstance(event, ev.SubscribeRequested):
            self._on_subscribe(conn, event)
        elif isinstance(event, ev.Unsubscribed):
            s = self._subs.pop((id(conn), event.request_id), None)
            if s is not None:
                fanout = s.source.fanout(s.track)
                if fanout is not None:
                    fanout.unsubscribe(s.sub)
                conn.session.publish_done(event.request_id, PublishDoneStatus.SUBSCRIPTION_ENDED, s.sink.streams_opened)
        elif isinstance(event, ev.TrackStatusRequested):
            source = self._source("/".join(event.namespace))
            fanout = source.fanout(event.track_name) if source else None
            if fanout is None:
                conn.session.request_error(event.request_id, RequestError.DOES_NOT_EXIST, "no such track")
            else:
                conn.session.request_ok(event.request_id, fanout.cache.largest)
        elif isinstance(event, ev.NamespacePublished):
            # publishing into this node over MoQ is not served yet: say so instead of hanging
            conn.session.request_error(event.request_id, RequestError.NOT_SUPPORTED,
                                       "this node takes broadcasts over RTMP only")
        elif isinstance(event, ev.NamespaceSubscribeRequested):
            conn.session.request_ok(event.request_id)
        elif isinstance(event, ev.SessionClosed):
            self.connections.discard(conn)
            for key in [k for k in self._subs if k[0] == id(conn)]:
                s = self._subs.pop(key)
                fanout = s.source.fanout(s.track)
                if fanout is not None:
                    fanout.subscribers.discard(s.sub)
        conn.flush()

    def _on_subscribe(self, conn: MoqConnection, event: ev.SubscribeRequested) -> None:
        name = "/".join(event.namespace)
        source = self._source(name)
        fanout = source.fanout(event.track_name) if source is not None else None
        if fanout is None:
            conn.session.request_error(event.request_id, RequestError.DOES_NOT_EXIST,
                                       "no such broadcast" if source is None else "no such track")
            return
        alias = self._aliases.get(id(conn), 0)
        self._aliases[id(conn)] = alias + 1
        largest = fanout.cache.largest
        start_group = None
        if event.filter_type in (FILTER_LARGEST_OBJECT, FILTER_NEXT_GROUP_START):
            start_group = largest[0] + 1 if largest else 0
        timeout = event.delivery_timeout_ms / 1000 if event.delivery_timeout_ms else self.delivery_timeout
        urgency = URGENCY.get(event.track_name, URGENCY[VIDEO])
        sink = _ConnectionSink(conn, alias, urgency)
        sub = TrackSubscription(sink, delivery_timeout=timeout, send_budget=self.send_budget, start_group=start_group)
        conn.session.subscribe_ok(event.request_id, alias, largest)
        self._subs[(id(conn), event.request_id)] = _Subscription(conn, event.request_id, source, event.track_name, sub, sink)
        if start_group is None:
            fanout.subscribe(sub, time.monotonic())
        else:
            fanout.subscribers.add(sub)
        log.info("%s: subscribed to %s/%s", conn.peer, source.name, event.track_name)
