"""The transcoder node: an ABR ladder for every broadcast, made on demand.

- ``BroadcastTranscoder``: one broadcast's rungs (a ``Transcoder`` per source video track), fed
  Catalog and Frame items, told which rung tracks are watched; rung tracks and frames go to the
  ``publish_tracks``/``emit`` it was given. A rung stops ``idle_stop`` seconds after its last
  viewer left. When a source track leaves the catalog (a publisher back without it) its
  ``Transcoder`` stops and its rungs are withdrawn; they are made and listed again if it returns.
- ``LocalTranscoder`` (``rtmpq up --ladder``): over the in-process registry; rungs become tracks
  of the same ``Broadcast`` (its catalog lists them), demand comes from ``Broadcast.want``
  (the relay for MoQ subscribers, the edge for players).
- ``run_transcode`` (``rtmpq transcode --upstream``): over MoQ. For each broadcast the relay
  announces, it subscribes to the catalog and the source video, and PUBLISHes into that relay,
  as a trusted node, an MSF catalog of its rungs (track ``rtmpq.renditions``, which the relay
  merges into the broadcast's catalog) and each rung with FORWARD=0: the relay asks for a rung's
  objects (REQUEST_UPDATE FORWARD=1) when its first subscriber comes, and stops them when the last
  one leaves.
"""

import asyncio
import logging
import os
import socket
import time

from ..config import Config, TranscodeConfig
from ..media.broadcast import BroadcastEnded, BroadcastRegistry, CatalogUpdate, PublisherLeft
from ..media.catalog import RUNG_NAME, Catalog, TrackInfo
from ..media.frames import VIDEO, Frame
from ..moq.fanout import RESET_CANCELLED, RESET_DELIVERY_TIMEOUT
from ..moq.reachability import reconnect_delay
from ..moq.wire import GROUP_ORDER_ASCENDING, ObjectStatus, PublishDoneStatus
from ..redact import names_are_public, safe_name
from ..transcode.coder import CoderError
from ..transcode.ladder import DEFAULT_FRAMERATE, DEFAULT_LADDER, Rung, parse_ladder
from ..transcode.pipeline import Transcoder
from . import runtime

log = logging.getLogger("rtmpq.transcode")
_CATALOG_FETCH_LATE = object()  # event marker: the catalog's joining FETCH's wait is over (catalog_join.py)

def is_rung_track(name: str) -> bool:
    """A track named like a rung ("video-480p") is never transcoded again (a relay may still list
    the rungs of an earlier transcoder session)."""
    return RUNG_NAME.search(name) is not None


def _rate(info: TrackInfo) -> float:
    """The frame rate a rung encoder of ``info`` is opened with."""
    return info.framerate or DEFAULT_FRAMERATE


class BroadcastTranscoder:
    def __init__(self, name: str, ladder: tuple[Rung, ...], config: TranscodeConfig, publish_tracks, emit,
                 skip=None, withdraw=None) -> None:
        self.name = name
        self.label = safe_name(name)
        self.ladder = ladder
        self.config = config
        self.publish_tracks = publish_tracks  # (tuple[TrackInfo, ...]) -> None, on the loop
        self.emit = emit  # (Frame) -> None, on the loop
        # (track, group) -> None, on the loop: a rung dropped (the rest of) that group
        self.skip = skip or (lambda track, group: None)
        # (list[str]) -> None, on the loop: the rungs of a source track that left the catalog
        self.withdraw = withdraw or (lambda tracks: None)
        self.transcoders: dict[str, Transcoder] = {}  # source track -> its rungs
        self.rung_source: dict[str, str] = {}  # rung track -> source track
        self.wanted: set[str] = set()
        self._stops: dict[str, asyncio.TimerHandle] = {}
        # rung track -> its catalog entry at the source's new size, listed with the new Transcoder's
        # first frame of it (a watched rung: the old one's last frames go out first)
        self._pending: dict[str, TrackInfo] = {}
        self._listed: dict[str, Transcoder] = {}  # rung track -> the Transcoder whose entry the catalog has
        self._late_skips: dict[str, tuple] = {}  # rung track -> (id of a replaced Transcoder, group) said skipped
        self._newest: dict[str, int] = {}  # source track -> the group of its newest frame pushed
        self._loop = asyncio.get_running_loop()
        self.started = time.time()  # wall clock: when this node began transcoding the broadcast

    def on_catalog(self, catalog: Catalog) -> None:
        listed = {info.name for info in catalog.tracks}
        for source in [s for s in self.transcoders if s not in listed]:
            self._source_left(source)
        for info in catalog.tracks:
            if info.kind != VIDEO or is_rung_track(info.name) or info.name in self.rung_source:
                continue
            t = self.transcoders.get(info.name)
            if t is None:
                self._start(info)
            elif (t.source.width, t.source.height) != (info.width, info.height) or _rate(t.source) != _rate(info):
                self._resize(t, info)
            elif (t.source.init_data, t.source.codec) != (info.init_data, info.codec):
                log.info("%s %s: new decoder configuration; rungs go on at the next group", self.label, info.name)
                t.source = info
                t.reconfigure(info)

    def _start(self, info: TrackInfo, stats=None, defer=frozenset()) -> None:
        owner: list[Transcoder] = []

        def emit(track: str, frame: Frame) -> None:  # rung threads -> the loop (in order with skip)
            self._to_loop(self._from_rung, owner[0], track, frame.group, frame)

        def skip(track: str, group: int) -> None:
            self._to_loop(self._from_rung, owner[0], track, group, None)

        try:
            t = Transcoder(self.label, info, self.ladder, emit, skip=skip,
                           rung_queue_frames=self.config.rung_queue_frames,
                           decode_queue_frames=self.config.decode_queue_frames, preset=self.config.preset,
                           presets=self.config.presets, stats=stats)
        except CoderError as exc:
            log.warning("%s %s: not transcoded: %s", self.label, info.name, exc)
            return
        owner.append(t)
        if not t.workers:
            log.info("%s %s: no rung is smaller than the source (%sx%s)", self.label, info.name, info.width, info.height)
        self.transcoders[info.name] = t
        for track in t.workers:
            self.rung_source[track] = info.name
        for rung in t.tracks:
            if rung.name in defer:
                self._pending[rung.name] = rung
        if t.tracks:
            now = tuple(rung for rung in t.tracks if rung.name not in self._pending)
            if now:
                self._list(now, t)
            left_out = [r.name for r in self.ladder if r.track(info.name) not in t.workers]
            log.info("%s %s: rungs %s (made when watched)%s", self.label, info.name,
                     ", ".join(f"{r.name} {r.width}x{r.height}" for r in t.tracks),
                     f"; {', '.join(left_out)} left out: not smaller than the source ({info.width}x{info.height})"
                     if left_out else "")
        for track in self.wanted & set(t.workers):
            t.set_active(track, True)

    def _from_rung(self, t: Transcoder, track: str, group: int, frame: Frame | None) -> None:
        """On the loop: a rung frame (or, ``frame`` None, a skip of ``group``) from ``t``. A
        Transcoder replaced (its source changed size) finishes its queue: its frames go out while
        the catalog still lists the rung at the old size, which it does for a watched rung until
        the new Transcoder's first frame of it; a frame made after that (or after its source left)
        is dropped, and the group it cut short is said to be skipped, once."""
        if track in self._pending and self.transcoders.get(t.source.name) is t:
            self._list((self._pending.pop(track),), t)
        if self._listed.get(track) is t:
            if frame is None:
                self.skip(track, group)
            else:
                self.emit(frame)
        elif self._late_skips.get(track) != (id(t), group):
            self._late_skips[track] = (id(t), group)
            self.skip(track, group)

    def _list(self, rungs: tuple[TrackInfo, ...], t: Transcoder) -> None:
        """The catalog lists ``rungs`` as ``t`` makes them: their frames from ``t`` go out."""
        for rung in rungs:
            self._listed[rung.name] = t
        self.publish_tracks(rungs)

    def _resize(self, old: Transcoder, info: TrackInfo) -> None:
        """The source's picture changed size or frame rate: its rungs are made anew for it from
        the next group (a rung keeps its track, gets a new size, frame rate and avcC in the
        catalog; one no longer smaller than the source is withdrawn, one that now is comes), so no
        rung is upscaled or stretched to the old aspect, and no encoder's rate control counts the
        old frame rate (a 30 fps rung fed 60 fps made twice its bitrate)."""
        log.info("%s %s: the source is now %sx%s %g fps (was %sx%s %g fps); rungs made anew from the next group",
                 self.label, info.name, info.width, info.height, _rate(info), old.source.width, old.source.height,
                 _rate(old.source))
        before = [track for track, s in self.rung_source.items() if s == info.name]
        old.finish()  # the pictures its decoder holds back end the old size's last group
        self._stop_source(info.name)
        self._start(info, old.stats, defer=self.wanted)
        gone = [track for track in before if track not in self.rung_source]
        self._forget(gone)
        for track in gone:
            old.stats.rungs.pop(track, None)  # (the new Transcoder goes on counting in the others)
        if gone:
            log.info("%s %s: rungs %s withdrawn (not smaller than the source)", self.label, info.name,
                     ", ".join(gone))
            self.withdraw(gone)

    def _stop_source(self, source: str) -> None:
        """Its Transcoder stops (finishing its queues) and its rungs are no longer its."""
        self.transcoders.pop(source).close()
        for track in [track for track, s in self.rung_source.items() if s == source]:
            del self.rung_source[track]

    def _forget(self, tracks) -> None:
        """Rungs withdrawn: nobody wants them, no stop is pending."""
        for track in tracks:
            self.wanted.discard(track)
            self._pending.pop(track, None)
            self._listed.pop(track, None)
            stop = self._stops.pop(track, None)
            if stop is not None:
                stop.cancel()

    def _source_left(self, source: str) -> None:
        """``source`` left the catalog: nothing feeds its rungs any more."""
        gone = [track for track, s in self.rung_source.items() if s == source]
        self._stop_source(source)
        self._forget(gone)
        log.info("%s %s: the source track left; rungs %s withdrawn", self.label, source, ", ".join(gone) or "(none)")
        if gone:
            self.withdraw(gone)

    def _to_loop(self, callback, *args) -> None:
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:
            pass  # the loop is closed (the node stopped while a rung finished its queue): nobody to tell

    def on_frame(self, frame: Frame) -> None:
        t = self.transcoders.get(frame.track)
        if t is not None:
            # the tail of a group may come after the next group began (over MoQ: a stream per
            # group, the newer first): the end of that older group is not the end of the newest
            if frame.group >= self._newest.get(frame.track, frame.group):
                self._newest[frame.track] = frame.group
            t.push(frame)

    def group_ended(self, track: str, group: int) -> None:
        """Over MoQ: ``group`` of the source ``track`` is complete (its stream ended). When no later
        group has begun (the publisher left, or the end came first), the pictures the decoder
        holds back go out now: nothing else would make it give them."""
        t = self.transcoders.get(track)
        if t is not None and self._newest.get(track) == group:
            t.finish()

    def set_wanted(self, track: str, wanted: bool) -> None:
        """A rung gained its first viewer (start it now) or lost its last (stop it a little later)."""
        if not is_rung_track(track):
            return  # demand for the source's own tracks (catalog, audio, video) is not ours to meet
        stop = self._stops.pop(track, None)
        if stop is not None:
            stop.cancel()
        if wanted:
            if track not in self.wanted:
                log.info("%s %s: watched; encoding", self.label, track)
            self.wanted.add(track)
            self._activate(track, True)
        elif track in self.wanted:
            self._stops[track] = self._loop.call_later(self.config.idle_stop, self._idle, track)

    def _idle(self, track: str) -> None:
        self._stops.pop(track, None)
        self.wanted.discard(track)
        if track in self._pending:  # no new frame of it will list it
            self._list((self._pending.pop(track),), self.transcoders[self.rung_source[track]])
        log.info("%s %s: nobody watches; stopped", self.label, track)
        self._activate(track, False)

    def _activate(self, track: str, on: bool) -> None:
        source = self.rung_source.get(track)
        if source is not None:
            self.transcoders[source].set_active(track, on)

    def frames_encoded(self, track: str) -> int:
        source = self.rung_source.get(track)
        return self.transcoders[source].frames_encoded(track) if source else 0

    def rung_tracks(self) -> tuple[TrackInfo, ...]:
        """The rungs the broadcast's catalog lists from us now, as listed."""
        return tuple(rung for track, t in list(self._listed.items()) for rung in t.tracks if rung.name == track)

    def rung_stats(self):
        """(rung track, RungStats, encoding now) of every rung, for metrics."""
        for source, t in list(self.transcoders.items()):
            for track, stats in list(t.stats.rungs.items()):
                yield track, stats, track in self.wanted

    def finish(self, done=None) -> None:
        """The source's groups in progress are complete (the publisher left, or the broadcast
        ended): the pictures the decoders hold back go out, ending the rungs' groups. ``done()`` is
        called on the loop once every rung has emitted them (after their ``emit`` calls)."""
        left = [len(self.transcoders)]

        def one_done() -> None:
            left[0] -= 1
            if left[0] == 0:
                done()
        if done is not None and not self.transcoders:
            self._loop.call_soon(done)
        for t in self.transcoders.values():
            t.finish(None if done is None else lambda: self._to_loop(one_done))

    def close(self) -> None:
        for handle in self._stops.values():
            handle.cancel()
        for t in self.transcoders.values():
            t.close()

    def join(self, timeout: float) -> None:
        """After ``close``: wait (blocking, off the loop) until every rung has emitted what it was
        given, at most ``timeout`` seconds for each transcoder."""
        for t in list(self.transcoders.values()):
            t.join(timeout)


def rung_readings(broadcasts: dict[str, BroadcastTranscoder]):
    """NodeView.transcode: (broadcast, rendition track, RungStats, encoding now) of every rung."""

    def readings():
        for name, bt in list(broadcasts.items()):
            for track, stats, encoding in bt.rung_stats():
                yield name, track, stats, encoding

    return readings


def transcoded_broadcasts(broadcasts: dict[str, BroadcastTranscoder]):
    """NodeView.transcoded: (broadcast, started, its rung tracks) of every broadcast a transcoder
    node follows, for its API and status page."""
    return lambda: [(name, bt.started, bt.rung_tracks()) for name, bt in list(broadcasts.items())]


def ladder_of(config: TranscodeConfig, default: str = "") -> tuple[Rung, ...]:
    return parse_ladder(config.ladder or default, config.bitrates)


class LocalTranscoder:
    """Rungs for every in-process broadcast (``rtmpq up --ladder``)."""

    def __init__(self, registry: BroadcastRegistry, config: TranscodeConfig) -> None:
        self.registry = registry
        self.config = config
        self.ladder = ladder_of(config)
        self.broadcasts: dict[str, BroadcastTranscoder] = {}
        self._tasks: set[asyncio.Task] = set()
        self._watch: asyncio.Task | None = None

    def start(self) -> None:
        self._watch = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        async for broadcast in self.registry.announcements():
            if broadcast.name not in self.broadcasts:
                task = asyncio.get_running_loop().create_task(self._serve(broadcast))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _serve(self, broadcast) -> None:
        def publish_tracks(infos):
            broadcast.set_catalog(Catalog(broadcast.name, tuple(infos), generated_at=broadcast.catalog.generated_at))

        bt = self.broadcasts[broadcast.name] = BroadcastTranscoder(broadcast.name, self.ladder, self.config,
                                                                   publish_tracks, broadcast.push_rendition,
                                                                   broadcast.skip_rendition_group,
                                                                   broadcast.remove_renditions)
        for track, count in broadcast.demand.items():
            if count:
                bt.set_wanted(track, True)
        broadcast.watch_demand(bt.set_wanted)
        # PublisherLeft: the rungs' groups in progress end while the broadcast still takes their
        # frames (at BroadcastEnded it takes no more; with no grace period it waits for them)
        reader = broadcast.reader(publisher_events=True)
        try:
            async for item in reader:
                if isinstance(item, CatalogUpdate):
                    bt.on_catalog(item.catalog)
                elif isinstance(item, PublisherLeft):
                    bt.finish(broadcast.renditions_flushed)
                elif isinstance(item, BroadcastEnded):
                    bt.finish()
                    break
                elif item.track in bt.transcoders:
                    bt.on_frame(item)
        finally:
            reader.close()
            bt.close()
            if self.broadcasts.get(broadcast.name) is bt:
                del self.broadcasts[broadcast.name]

    def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
        for task in list(self._tasks):
            task.cancel()
        for bt in self.broadcasts.values():
            bt.close()


# -- the transcoder as its own node, over MoQ ---------------------------------------------------------

# Seconds a rung may take, once its broadcast ended, to emit what it was given before its stream
# is ended (the session closes after that).
RUNG_DRAIN_TIMEOUT = 5.0
# Seconds between attempts to reach the upstream relay (doubling up to the maximum; up to
# [upstream] refused_reconnect_max after an attempt its closed port refused).
RECONNECT_MIN = 0.5
RECONNECT_MAX = 10.0


class _RungPublisher:
    """One rung PUBLISHed into the relay with FORWARD=0: groups go out only while forwarded."""

    def __init__(self, conn, namespace: tuple[str, ...], info: TrackInfo, alias: int, token: str | None) -> None:
        self.conn = conn
        self.info = info
        self.alias = alias
        self.request_id = conn.session.publish(namespace, info.name, alias, authorization=token, forward=False)
        self.forward = False
        self.stream: int | None = None
        self.group: int | None = None
        self.streams = 0  # subgroup streams opened (PUBLISH_DONE's stream count)
        # the frames of the rung's newest group, from its key frame, made while not forwarded (it
        # goes on encoding [transcode] idle_stop after its last viewer left): a viewer back within
        # it gets that group at once, as a rung started anew gets the current group
        self.held: list[Frame] = []

    def _open(self, group: int) -> None:
        self.group = group
        self.stream = self.conn.session.open_subgroup(self.alias, group, priority=2)
        self.streams += 1

    def send(self, frame: Frame) -> None:
        from ..moq.loc import frame_extensions

        session = self.conn.session
        if not self.forward or session.closed:
            self._settle(frame.group)
            if frame.index == 0:
                self.held = [frame]
            elif self.held and self.held[-1].group == frame.group:
                self.held.append(frame)
            return
        if frame.group != self.group:
            if self.stream is not None:
                session.end_subgroup(self.stream)
                self.stream = None
            if frame.index != 0:
                return  # never start a group mid-way
            self._open(frame.group)
        if self.stream is not None:
            session.send_object(self.stream, frame.index, frame.payload, frame_extensions(frame, self.info.timescale))
            self.conn.flush()

    def skip(self, group: int) -> None:
        """The rung dropped (the rest of) ``group``: its subgroup stream is reset with
        DELIVERY_TIMEOUT; a group not begun gets a stream of its header alone, reset (MoQT d16:
        "explicitly tells the receiver there is an unsent Subgroup")."""
        session = self.conn.session
        if not self.forward or session.closed:
            self._settle(group)
            if self.held and self.held[0].group == group:
                self.held = []  # not whole: a viewer back waits for the next group
            return
        if self.group != group or self.stream is None:
            if self.group is not None and group < self.group:
                return  # older than what went out: nothing to say
            if self.stream is not None:
                session.end_subgroup(self.stream)
            self._open(group)
            self.conn.flush()  # the header goes out before the reset
        session.reset_subgroup(self.stream, RESET_DELIVERY_TIMEOUT)
        self.stream = None
        self.conn.flush()

    def pause(self) -> None:
        """FORWARD=0: no more objects. The group in progress stays open until the rung's next
        frame says whether every frame of it went out (``_settle``)."""
        self.forward = False

    def _settle(self, group: int) -> None:
        """Not forwarded, the rung made a frame of ``group`` (or skipped it): the stream of the
        group in progress when forwarding stopped ends whole if ``group`` is a later one, and is
        reset (CANCELLED) if it is that group, a frame of which is not sent. Before, it ended at
        FORWARD=0 as if whole, and the relay kept a group cut short as a whole one."""
        if self.stream is None or self.conn.session.closed:
            return
        if group == self.group:
            self.conn.session.reset_subgroup(self.stream, RESET_CANCELLED)
        else:
            self.conn.session.end_subgroup(self.stream)
        self.stream = None
        self.conn.flush()

    def resume(self, encoding: bool) -> None:
        """Forwarded again: the group in progress goes on if nothing of it was missed, or the
        group held since (if the rung was ``encoding`` all along, so it is the newest, and none
        of it went out before) goes out now, from its key frame."""
        held, self.held = self.held, []
        self.forward = True
        if encoding and held and self.stream is None and held[0].group != self.group:
            for frame in held:
                self.send(frame)

    def stop(self) -> None:
        self.forward = False
        if self.stream is not None and not self.conn.session.closed:
            self.conn.session.end_subgroup(self.stream)
        self.stream = self.group = None

    def done(self, reason: str = "its source track left") -> None:
        """The rung is withdrawn (its source track left, or the broadcast ended): PUBLISH_DONE, so
        the relay ends it for its subscribers."""
        self.stop()
        if not self.conn.session.closed:
            self.conn.session.publish_done(self.request_id, PublishDoneStatus.TRACK_ENDED, self.streams, reason)


async def transcode_over_moq(conn, name: str, ladder: tuple[Rung, ...], config: TranscodeConfig,
                             token: str | None, registry: dict) -> None:
    """One broadcast on one session: subscribe to its catalog and source video, PUBLISH its rungs
    (FORWARD=0) and the list of them, encode a rung while the relay forwards it. Returns when the
    broadcast ends; raises ConnectionError when the session is lost."""
    from ..moq import events as ev
    from ..moq.catalog_join import CATALOG_FETCH_WAIT, CatalogJoin
    from ..moq.catalog_track import CatalogTrack
    from ..moq.loc import CATALOG_TRACK, RENDITIONS_TRACK, object_to_frame

    namespace = tuple(name.split("/"))
    session = conn.session
    events: asyncio.Queue = asyncio.Queue()
    conn.handler = lambda _c, event: events.put_nowait(event)
    requests: dict[int, str] = {}  # our SUBSCRIBE request id -> track
    aliases: dict[int, str] = {}  # subscription track alias -> track
    rungs: dict[str, _RungPublisher] = {}
    by_request: dict[int, _RungPublisher] = {}
    next_alias = [0]
    list_alias = list_request = None
    list_streams = 0  # groups (streams) of the list sent since its PUBLISH
    # the catalog is joined as subscribe_broadcast and the relay join it (catalog_join.py)
    catalog_join = CatalogJoin(safe_name(name))
    catalog_alias: int | None = None  # the catalog subscription's: its joining FETCH's objects go as its
    loop = asyncio.get_running_loop()

    def sub(track: str) -> None:
        # a source track Ascending (GROUP_ORDER): the decoder needs each group whole and in order,
        # and a relay sends a newer group first otherwise, an older group's tail then coming late
        catalog = track == CATALOG_TRACK
        requests[session.subscribe(namespace, track, priority=0 if catalog else 128,
                                   filter_type=catalog_join.filter_type if catalog else None,
                                   group_order=None if catalog else GROUP_ORDER_ASCENDING,
                                   authorization=token)] = track
        conn.flush()

    def catalog_not_fetched() -> None:
        """If the joining FETCH brought no catalog in time, subscribe to it unfiltered instead."""
        if catalog_join.falls_back(loop.time(), catalog_track.catalog is not None):
            for rid in [r for r, t in requests.items() if t == CATALOG_TRACK]:
                del requests[rid]
                session.unsubscribe(rid)
            sub(CATALOG_TRACK)

    def from_catalog_fetch(event):
        """The event of the catalog's joining FETCH as the loop handles it: a fetched object as an
        object of the catalog subscription; nothing else (None)."""
        if isinstance(event, ev.FetchObjectReceived):
            return ev.ObjectReceived(catalog_alias, event.group, event.subgroup, event.object_id, event.payload,
                                     event.extensions)
        if isinstance(event, (ev.FetchEnded, ev.RequestFailed)):
            catalog_join.fetch_over()
            catalog_not_fetched()
        return None

    def publish_tracks(infos) -> None:
        for info in infos:
            if info.name in rungs:
                rungs[info.name].info = info  # made anew (the source changed size): listed with its new size
            else:
                alias = next_alias[0]
                next_alias[0] += 1
                p = rungs[info.name] = _RungPublisher(conn, namespace, info, alias, token)
                by_request[p.request_id] = p
        send_list()

    def withdraw(tracks) -> None:
        for track in tracks:
            p = rungs.pop(track, None)
            if p is not None:
                by_request.pop(p.request_id, None)
                p.done()
        send_list()

    def send_list() -> None:
        nonlocal list_alias, list_request, list_streams
        # the list of what this node adds: one group per version on RENDITIONS_TRACK
        if list_alias is None:
            list_alias = next_alias[0]
            next_alias[0] += 1
            list_request = session.publish(namespace, RENDITIONS_TRACK, list_alias, authorization=token)
            list_streams = 0
        list_streams += 1
        group = send_list.version = getattr(send_list, "version", -1) + 1
        sid = session.open_subgroup(list_alias, group, priority=0)
        session.send_object(sid, 0, Catalog(name, tuple(p.info for p in rungs.values())).to_json())
        session.end_subgroup(sid)
        conn.flush()

    def emit(frame: Frame) -> None:
        p = rungs.get(frame.track)
        if p is not None:
            p.send(frame)

    def skip(track: str, group: int) -> None:
        p = rungs.get(track)
        if p is not None:
            p.skip(group)

    def ours(request_id: int) -> bool:
        """Whether ``request_id`` is one of our PUBLISHes (a rung's, or the list of them)."""
        return request_id in by_request or (request_id is not None and request_id == list_request)

    def give_way(why: str, taken: int | None = None) -> None:
        """Another transcoder makes this broadcast's rungs (it took them over at the relay, or the
        relay's node makes them itself): ours stop, with their source subscriptions, until the
        catalog lists no rung (that one is gone: the relay unlists a node's rungs with its session).
        ``taken``: the PUBLISH the relay ended (UNSUBSCRIBE), which gets no PUBLISH_DONE."""
        nonlocal list_alias, list_request, yielded
        log.warning("%s: %s; this transcoder stops making the broadcast's rungs, and makes them again if the "
                    "broadcast is left with none", bt.label, why)
        yielded = True
        bt.close()
        for p in rungs.values():
            if p.request_id == taken:
                p.stop()
            else:
                p.done("another transcoder makes the broadcast's rungs")
        rungs.clear()
        by_request.clear()
        if list_request not in (None, taken) and not session.closed:
            session.publish_done(list_request, PublishDoneStatus.TRACK_ENDED, list_streams,
                                 "another transcoder makes the broadcast's rungs")
        list_alias = list_request = None
        for rid in [rid for rid, track in requests.items() if track != CATALOG_TRACK]:
            del requests[rid]
            session.unsubscribe(rid)
        for alias in [a for a, track in aliases.items() if track != CATALOG_TRACK]:
            del aliases[alias]
        source_tracks.clear()
        conn.flush()

    def transcoder() -> BroadcastTranscoder:
        registry[name] = BroadcastTranscoder(name, ladder, config, publish_tracks, emit, skip, withdraw)
        return registry[name]

    bt = transcoder()
    yielded = False  # another transcoder makes the rungs (give_way)
    source_tracks: set[str] = set()
    catalog_track = CatalogTrack(bt.label)  # older versions than the one applied are ignored
    sub(CATALOG_TRACK)
    try:
        while True:
            event = await events.get()
            if catalog_join.is_fetch(getattr(event, "request_id", None)):
                event = from_catalog_fetch(event)
            if event is _CATALOG_FETCH_LATE:
                catalog_not_fetched()
            elif isinstance(event, ev.SubscribeAccepted):
                if event.request_id in requests:
                    aliases[event.track_alias] = requests[event.request_id]
                if requests.get(event.request_id) == CATALOG_TRACK and catalog_join.wants_fetch(event.largest):
                    catalog_alias = event.track_alias
                    catalog_join.fetching(session.joining_fetch(event.request_id, 0, priority=0, authorization=token),
                                          loop.time())
                    loop.call_later(CATALOG_FETCH_WAIT, events.put_nowait, _CATALOG_FETCH_LATE)  # at its deadline
                    conn.flush()
            elif isinstance(event, ev.RequestFailed):
                track = requests.pop(event.request_id, None)
                if track == CATALOG_TRACK:
                    return  # the broadcast is gone
                if ours(event.request_id) and not yielded:
                    give_way(f"the relay refused its rungs: {event.reason}")
            elif isinstance(event, ev.Unsubscribed):
                if ours(event.request_id) and not yielded:
                    # a newer PUBLISH of the same track took it over (moq/relay.py _take_over): another
                    # transcoder of this broadcast, or this one restarted; either way the relay no
                    # longer takes ours
                    give_way("another transcoder took over its rungs at the relay", event.request_id)
            elif isinstance(event, ev.ObjectReceived):
                track = aliases.get(event.track_alias)
                if event.status != ObjectStatus.NORMAL:
                    continue  # End of Group / End of Track: neither a catalog nor a frame
                if track == CATALOG_TRACK:
                    for catalog in catalog_track.read(event.group, event.object_id, event.payload):
                        if yielded and not any(catalog.is_rung(t.name) for t in catalog.tracks):
                            log.info("%s: no transcoder makes the broadcast's rungs any more; making them again",
                                     bt.label)
                            yielded = False
                            bt = transcoder()
                        if not yielded:
                            bt.on_catalog(catalog)
                    if yielded:
                        continue  # (no source video: another transcoder makes the rungs)
                    source_tracks &= bt.transcoders.keys()  # one that left is subscribed again if it returns
                    for source in bt.transcoders:
                        if source not in source_tracks:
                            source_tracks.add(source)
                            sub(source)
                elif track is not None:
                    bt.on_frame(object_to_frame(track, event.group, event.object_id, event.payload, event.extensions))
            elif isinstance(event, ev.SubgroupEnded):
                track = aliases.get(event.track_alias)
                if track is not None:
                    bt.group_ended(track, event.group)
            elif isinstance(event, ev.RequestUpdated):
                p = by_request.get(event.existing_request_id)
                if p is None or event.forward is None:
                    session.request_error(event.request_id, 0x3, "only FORWARD updates of rungs")  # NOT_SUPPORTED
                else:
                    session.request_ok(event.request_id)
                    if event.forward:
                        p.resume(encoding=p.info.name in bt.wanted)
                    else:
                        p.pause()
                    bt.set_wanted(p.info.name, event.forward)
                conn.flush()
            elif isinstance(event, ev.PublishDoneReceived):
                if requests.get(event.request_id) == CATALOG_TRACK and yielded:
                    return  # the broadcast ended; its rungs were another transcoder's
                if requests.get(event.request_id) == CATALOG_TRACK:  # the broadcast ended
                    # the rungs' last frames go out, then their streams end whole and their tracks
                    # with PUBLISH_DONE, before the session closes: a group whose stream is open
                    # when its publisher's session goes is a cut group to the relay (reset below)
                    bt.finish()
                    bt.close()
                    await asyncio.to_thread(bt.join, RUNG_DRAIN_TIMEOUT)
                    ending = [p.stream for p in rungs.values() if p.stream is not None]
                    for p in rungs.values():
                        p.done("the broadcast ended")
                    conn.flush()
                    # and the relay has those ends (acknowledged) before the session goes
                    until = loop.time() + RUNG_DRAIN_TIMEOUT
                    while not all(conn.delivered(s) for s in ending) and loop.time() < until:
                        await asyncio.sleep(0.02)
                    return
            elif isinstance(event, ev.GoawayReceived):
                raise ConnectionError("the relay is going away (GOAWAY)")
            elif isinstance(event, ev.SessionClosed):
                raise ConnectionError(f"MoQ session closed: {event.reason or event.code}")
    finally:
        conn.handler = None
        bt.close()
        if registry.get(name) is bt:
            del registry[name]


def inherited_ops_socket():
    """The loopback listener `up` hands its transcoder child for its metrics, or None."""
    from .transcode_child import OPS_FD_ENV

    fd = os.environ.pop(OPS_FD_ENV, None)
    return None if fd is None else socket.socket(fileno=int(fd))


async def run_transcode(config: Config, stop: asyncio.Event, broadcast: str | None = None) -> None:
    """``rtmpq transcode --upstream``: rungs for every broadcast the relay lists, or with
    ``broadcast`` (``--broadcast``) for that one alone (no listing: followed again whenever it
    ended or was not there yet); with ``--http``, its metrics and health there."""
    from ..moq import events as ev
    from ..moq.transport import connect_moq, parse_moq_url, setup_path
    from ..ops.probe import UpstreamProbe
    from ..ops.view import NodeView
    from .nodes import OpsListener, node_access, node_token, upstream_tls
    from .transcode_child import PUBLIC_NAMES_ENV

    # broadcast names in its logs as the node above logs them: public where keys are mapped or
    # tokens required (its own settings, or `up` says so to its ladder child), else hashed
    node_access(config)
    if os.environ.pop(PUBLIC_NAMES_ENV, None) == "1":
        names_are_public(True)
    ladder = ladder_of(config.transcode, DEFAULT_LADDER)
    host, port, _ = parse_moq_url(config.upstream.url)
    path = setup_path(config.upstream.url)
    tls = upstream_tls(config)
    broadcasts: dict[str, BroadcastTranscoder] = {}
    tasks: dict[str, asyncio.Task] = {}
    view = NodeView("transcoder")
    view.transcode = rung_readings(broadcasts)
    view.transcoded = transcoded_broadcasts(broadcasts)
    ops_socket = inherited_ops_socket()
    ops = OpsListener(config, view, ops_socket)
    probe = None
    if ops_socket is None and config.http.enabled:  # /readyz: whether the relay above answers, as an edge's
        # (it said ready with no relay there; `up`'s ladder child serves only its metrics to `up`)
        probe = view.upstream_ready = UpstreamProbe(config.upstream.url, token=lambda: node_token(config), **tls)
        probe.start()
    await ops.start()

    async def follow(name: str) -> None:
        delay = RECONNECT_MIN
        while True:
            try:
                token = node_token(config)
                async with connect_moq(host, port, path=path, **tls, token=token) as conn:
                    await transcode_over_moq(conn, name, ladder, config.transcode, token, broadcasts)
                    return
            except (ConnectionError, OSError, TimeoutError) as exc:
                delay = reconnect_delay(delay, exc, config.upstream.refused_reconnect_max)
                log.warning("%s: upstream %s:%d: %s; again in %.1f s", safe_name(name), host, port, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX)

    async def listing() -> None:
        delay = RECONNECT_MIN
        while True:
            try:
                token = node_token(config)
                async with connect_moq(host, port, path=path, **tls, token=token) as conn:
                    events: asyncio.Queue = asyncio.Queue()
                    conn.handler = lambda _c, event: events.put_nowait(event)
                    conn.session.subscribe_namespace((), authorization=token)
                    conn.flush()
                    log.info("transcoder: ladder %s, following the broadcasts of %s:%d",
                             ",".join(r.name for r in ladder), host, port)
                    delay = RECONNECT_MIN
                    while True:
                        event = await events.get()
                        if isinstance(event, ev.NamespaceReceived):
                            name = "/".join(event.namespace)
                            if name and (name not in tasks or tasks[name].done()):
                                tasks[name] = asyncio.ensure_future(follow(name))
                        elif isinstance(event, ev.RequestFailed):
                            raise ConnectionError(f"the relay refused to list broadcasts: {event.reason}")
                        elif isinstance(event, (ev.SessionClosed, ev.GoawayReceived)):
                            raise ConnectionError("session closed")
            except (ConnectionError, OSError, TimeoutError) as exc:
                delay = reconnect_delay(delay, exc, config.upstream.refused_reconnect_max)
                log.warning("transcoder: upstream %s:%d: %s; again in %.1f s", host, port, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX)

    async def only(name: str) -> None:
        log.info("transcoder: ladder %s, following %s at %s:%d", ",".join(r.name for r in ladder), safe_name(name),
                 host, port)
        delay = RECONNECT_MIN
        while True:
            began = asyncio.get_running_loop().time()
            await follow(name)  # returns when the broadcast ended (or the relay has none of that name)
            if asyncio.get_running_loop().time() - began >= RECONNECT_MAX:
                delay = RECONNECT_MIN  # it was live a while: it may well be back soon
            log.info("%s: not live at %s:%d; asking again in %.1f s", safe_name(name), host, port, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX)

    lister = asyncio.ensure_future(listing() if broadcast is None else only(broadcast))
    runtime.settle()
    try:
        await stop.wait()
    finally:
        if probe is not None:
            probe.stop()
        await ops.close()
        lister.cancel()
        for task in tasks.values():
            task.cancel()
        for bt in list(broadcasts.values()):
            bt.close()
