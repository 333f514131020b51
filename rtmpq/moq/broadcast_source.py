"""A local broadcast (media/broadcast.py, the in-process RTMP ingest) read into per-track
``TrackFanout``s: its catalog as the ``catalog`` track (one group per version, with the tracks other
nodes added listed by ``with_added_tracks``), each frame published as an object as the publisher
hands it over. The relay (relay.py) subscribes its subscribers to these fan-outs.
"""

import logging
import time
from dataclasses import replace

from ..media.broadcast import Broadcast, BroadcastEnded, CatalogUpdate, GroupSkipped, PublisherLeft
from ..media.catalog import Catalog
from ..media.frames import Frame
from ..redact import safe_name
from . import events as ev
from .fanout import RESET_DELIVERY_TIMEOUT, TrackFanout
from .group_cache import CacheBounds
from .loc import CATALOG_TRACK
from .transport import MoqConnection
from .wire import StreamResetCode

log = logging.getLogger("rtmpq.moq")


def with_added_tracks(catalog: Catalog, added) -> Catalog:
    """``catalog`` with the tracks another node added to its broadcast (transcoder rungs) listed,
    each while the track it is made from is (a rung of a track that left has nothing to make)."""
    listed = {t.name for t in catalog.tracks}
    for info in added:
        if info.source is not None and info.source not in listed:
            continue
        if catalog.track(info.name) != info:
            catalog = catalog.with_track(info)
    return catalog


class BroadcastSource:
    """Reads one in-process broadcast into per-track fan-outs: a listener of the broadcast, called
    from inside the publisher's calls (no task and no queue per frame; issue 12)."""

    def __init__(self, broadcast: Broadcast, on_end, on_new_tracks, bounds: CacheBounds = CacheBounds()) -> None:
        self.broadcast = broadcast
        self.bounds = bounds  # of each media track's cache
        self.fanouts: dict[str, TrackFanout] = {CATALOG_TRACK: TrackFanout(state=True)}
        self.ended = False
        self.waiting: list[tuple[MoqConnection, ev.SubscribeRequested]] = []  # for tracks not there yet
        self._on_end = on_end
        self._on_new_tracks = on_new_tracks
        self._timescales: dict[str, int] = {}
        # track -> (its fan-out, its timescale): one lookup per frame; cleared when the catalog
        # changes (fan-outs are never replaced, timescales may be)
        self._frame_targets: dict[str, tuple[TrackFanout, int]] = {}
        self._catalog_groups = 0
        self.wanted: set[str] = set()  # tracks this relay told the broadcast it needs (Broadcast.want)
        self.added: tuple = ()  # TrackInfo of tracks a trusted node PUBLISHed into this broadcast (rungs)
        self._own: set[str] = set()  # the broadcast's own tracks in the last catalog
        if not broadcast.catalog.empty:  # a subscriber right after start gets a catalog at once
            self._on_catalog(broadcast.catalog)
        broadcast.listen(self._on_event)

    def _on_catalog(self, catalog) -> None:
        catalog = with_added_tracks(catalog, self.added)
        data = catalog.to_json()
        last = self.fanouts[CATALOG_TRACK].cache.latest(time.monotonic())
        if last is not None and last.objects and bytes(last.objects[0].payload) == data:
            return
        added = {info.name for info in self.added}
        own = {info.name for info in catalog.tracks} - added
        gone, self._own = self._own - own, own
        self._end_tracks(gone - added)
        new = [info.name for info in catalog.tracks if info.name not in self.fanouts and info.name not in added]
        for name in new:
            self.fanouts[name] = TrackFanout(self.bounds.cache())
        group = self._catalog_groups
        self._catalog_groups += 1
        self.fanouts[CATALOG_TRACK].publish_object(group, 0, data, None, time.monotonic())
        self.fanouts[CATALOG_TRACK].end_group(group)
        if new:  # SUBSCRIBEs waiting for them, SUBSCRIBE_NAMESPACEs asking for PUBLISHes (the catalog listing them is out)
            self._on_new_tracks(self)

    def _end_tracks(self, names) -> None:
        """Tracks the broadcast's catalog no longer lists (a publisher back without them): their
        subscribers are told the track ended (PUBLISH_DONE); a later catalog may list them again."""
        ended = []
        for name in names:
            fanout = self.fanouts.pop(name, None)
            self._frame_targets.pop(name, None)
            if name in self.wanted:
                self.wanted.discard(name)
                self.broadcast.want(name, False)
            if fanout is not None:
                fanout.end()
                ended.append(fanout)
        if ended:
            self._on_end(ended)

    def set_added(self, added: tuple) -> None:
        """The tracks a trusted node adds to this broadcast (its rungs; () when it is gone): the
        catalog is re-issued with them."""
        self.added = added
        self._on_catalog(self.broadcast.catalog)

    def update_demand(self) -> None:
        """Tell the broadcast which tracks have MoQ subscribers here, so a transcoder makes a rung
        only while someone watches it."""
        for name, fanout in self.fanouts.items():
            watched = bool(fanout.subscribers) and not self.ended
            if watched != (name in self.wanted):
                (self.wanted.add if watched else self.wanted.discard)(name)
                self.broadcast.want(name, watched)

    def _on_event(self, item) -> None:
        try:
            if type(item) is Frame:
                target = self._frame_targets.get(item.track)
                if target is None:
                    target = self._frame_target(item.track)
                fanout, timescale = target
                fanout.publish_frame(item, timescale, time.monotonic())
            elif isinstance(item, CatalogUpdate):
                self._timescales = {t.name: t.timescale for t in item.catalog.tracks}
                self._frame_targets.clear()
                self._on_catalog(item.catalog)
            elif isinstance(item, GroupSkipped):
                fanout = self.fanouts.get(item.track)
                if fanout is not None:
                    fanout.skip_group(item.group, RESET_DELIVERY_TIMEOUT, time.monotonic())
            elif isinstance(item, PublisherLeft):
                if item.lost:
                    self._cut_groups()
                else:
                    self._end_publisher_groups()
            elif isinstance(item, BroadcastEnded):
                # the last catalog says so (MSF isLive false, isComplete): nothing more will come
                self._on_catalog(replace(self.broadcast.catalog, live=False, complete=True, not_carried=()))
                self.close()
        except Exception:  # as a reading task that failed did: this source ends, the publish goes on
            log.exception("%s: reading the broadcast failed", safe_name(self.broadcast.name))
            self.close()

    def _cut_groups(self) -> None:
        """The publisher is lost mid-group: the group in progress of each track it feeds is cut
        short (its streams reset with SESSION_CLOSED, never ended whole). The catalog's versions
        are whole objects, and a rung made here ends its groups itself (it may still finish one
        from a group the source completed)."""
        catalog = self.broadcast.catalog
        for name, fanout in self.fanouts.items():
            if name != CATALOG_TRACK and not catalog.is_rung(name):
                fanout.cut_open_groups(StreamResetCode.SESSION_CLOSED)

    def _end_publisher_groups(self) -> None:
        """The publisher left cleanly: the newest group of each of its tracks is complete (a
        returning publisher starts a new one), so its streams end now, not at the return, and a
        transcoder reading over MoQ can flush its decoder on it. Tracks made here (rungs) still get
        the frames made from that group; they end theirs when their next group begins."""
        catalog = self.broadcast.catalog
        for name, fanout in self.fanouts.items():
            if name == CATALOG_TRACK or name not in self._own or catalog.is_rung(name):
                continue
            largest = fanout.cache.largest
            if largest is not None:
                fanout.end_group(largest[0])

    def _frame_target(self, track: str) -> tuple[TrackFanout, int]:
        fanout = self.fanouts.get(track)
        if fanout is None:
            fanout = self.fanouts[track] = TrackFanout(self.bounds.cache())
        target = self._frame_targets[track] = (fanout, self._timescales.get(track, 1000))
        return target

    def close(self) -> None:
        """Stop reading the broadcast: every fan-out ends."""
        if self.ended:
            return
        self.ended = True
        self.broadcast.unlisten(self._on_event)
        self.update_demand()
        for fanout in self.fanouts.values():
            fanout.end()
        self._on_end(self.fanouts.values())
