"""NodeView: the broadcasts, sessions and listeners of one node, read only when asked.

Components count with plain integers as they work (an add per frame or per read); everything
else (sums over sessions, rates, subscriber counts) is computed here, at scrape time.

Names: a broadcast is listed by the name players use (``live/studio``). A secret stream key never
reaches this far on a node with [publish.keys] or [auth]; on an open node the key *is* the
playback name (the node warns at start that it is open).
"""

import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from ..edge.server import VIEWER_WINDOW
from ..media.catalog import Catalog
from ..moq.broadcast_source import with_added_tracks
from ..moq.relay_sink import InProcessSink

# Bitrates are measured over at least this many seconds between two readings.
RATE_WINDOW = 2.0
# A first reading says the average since the start (a broadcast's started) once the start is at
# least this many seconds past; sooner, it says nothing and the next reading is a first one again.
RATE_FIRST_AFTER = 0.5


@dataclass
class BroadcastStats:
    """One broadcast as this node sees it (every source of it merged)."""

    name: str
    catalog: Catalog | None = None
    started: float | None = None  # wall clock
    frames_in: int = 0
    bytes_in: dict[str, int] = field(default_factory=dict)  # by track
    groups: int = 0
    keyframe_interval: float | None = None  # seconds
    subscribers: int = 0  # MoQ sessions and in-process readers subscribed to any of its tracks
    viewers: int = 0  # HLS players seen in the last VIEWER_WINDOW
    sent_bytes: dict[str, int] = field(default_factory=dict)  # by protocol: moq, hls
    skipped_groups: int = 0
    publishes: int = 0
    # a publisher is attached now (False: it left, and the broadcast waits out [publish]
    # grace_period for it); None: not published at this node (relayed here)
    publishing: bool | None = None
    silent_audio_seconds: float = 0.0  # silence the edge put into the HLS audio (edge/silence.py)
    bitrate_in: float | None = None  # bits/s
    bitrate_out: float | None = None
    track_bitrates: dict[str, float] = field(default_factory=dict)  # measured, bits/s


class _Rate:
    """Bits per second of a byte counter, between readings at least RATE_WINDOW apart."""

    def __init__(self) -> None:
        self._last: dict[object, tuple[float, int, float | None]] = {}

    def __call__(self, key, total: int, now: float, since: float | None) -> float | None:
        last = self._last.get(key)
        if last is None:
            rate = None
            if since is not None and now - since <= RATE_FIRST_AFTER:
                return None  # too soon after its start to say: the next reading is a first one again
            if since is not None:  # the average since it started, for a start
                rate = total * 8 / (now - since)
            # kept as the reading until the window's end: a second reading within it (the status
            # page's next refresh, a scrape) said nothing after the first had said a rate
            self._last[key] = (now, total, rate)
            return rate
        t, b, rate = last
        if total < b:  # the counter started again (a new publish of the name, between readings)
            del self._last[key]
            return self(key, total, now, since)
        if now - t >= RATE_WINDOW:
            rate = (total - b) * 8 / (now - t)
            self._last[key] = (now, total, rate)
        return rate

    def forget_except(self, keys: set) -> None:
        for key in [k for k in self._last if (k[0] if isinstance(k, tuple) else k) not in keys]:
            del self._last[key]


class NodeView:
    """The parts a node has (each may be None) and the readings operators ask for."""

    def __init__(self, kind: str, *, registry=None, relay=None, ingest=None, edge=None, http=None) -> None:
        self.kind = kind  # up, ingest, relay, edge, transcoder
        self.registry = registry
        self.relay = relay
        self.ingest = ingest
        self.edge = edge
        self.http = http
        self.relay_backend = "aioquic"  # the QUIC library the relay's sessions use
        self.started = time.time()
        self.listening = False  # set by the node once every listener is up
        self.upstream_ready: Callable[[], tuple[bool, str]] | None = None
        # the node's directory, while it has not answered since start: () -> (ready, why)
        self.directory_ready: Callable[[], tuple[bool, str]] | None = None
        # a transcoder's rungs: () -> iterable of (broadcast, rendition track, RungStats, encoding now)
        self.transcode: Callable[[], Iterable] | None = None
        # a transcoder node's broadcasts: () -> iterable of (name, started wall clock, the rung
        # tracks it adds to that broadcast); listed with those rungs as their tracks
        self.transcoded: Callable[[], Iterable[tuple[str, float, tuple]]] | None = None
        # more readings a component may add: () -> iterable of prometheus metric families
        self.collectors: list[Callable[[], Iterable]] = []
        # awaited before each scrape, for collectors whose readings come from elsewhere (each
        # bounds its own wait)
        self.refreshers: list[Callable[[], Awaitable[None]]] = []
        self._rate = _Rate()

    # -- readiness ------------------------------------------------------------------------------
    def ready(self) -> tuple[bool, str]:
        if not self.listening:
            return False, "not listening yet"
        if self.directory_ready is not None and not (directory := self.directory_ready())[0]:
            return directory
        if self.upstream_ready is not None:
            return self.upstream_ready()
        return True, "listening"

    # -- broadcasts -----------------------------------------------------------------------------
    def broadcasts(self) -> list[BroadcastStats]:
        now_wall, now = time.time(), time.monotonic()
        out: dict[str, BroadcastStats] = {}

        def get(name: str) -> BroadcastStats:
            if name not in out:
                out[name] = BroadcastStats(name)
            return out[name]

        if self.registry is not None:
            for b in filter(None, map(self.registry.get, self.registry.names())):
                s = get(b.name)
                s.catalog = s.catalog if b.catalog.empty else b.catalog
                if self.relay is not None and s.catalog is not None:  # the rungs a transcoder node (or
                    # `up`'s isolated ladder child) adds through the relay, as its catalog lists them
                    s.catalog = with_added_tracks(s.catalog, self.relay.added_tracks(b.name))
                s.started = b.created
                s.frames_in = b.frames_in
                s.bytes_in = dict(b.bytes_in)
                s.groups = b.groups
                s.keyframe_interval = b.keyframe_interval_ms / 1000 if b.keyframe_interval_ms else None
                s.skipped_groups += b.skipped_groups
                s.publishes = b.publishes
                s.publishing = b.publishing
        if self.relay is not None:
            self._read_relay(get)
        if self.transcoded is not None:
            for name, started, rungs in self.transcoded():
                s = get(name)
                s.catalog = s.catalog or Catalog(name, tuple(rungs))
                s.started = s.started or started
        if self.edge is not None:
            for b in list(self.edge._broadcasts.values()):
                if b.ended_at is not None:
                    continue
                s = get(b.name)
                if s.catalog is None:
                    s.catalog = next((st.catalog for st in b.streams.values() if st.catalog is not None), None)
                if s.started is None:
                    s.started = b.opened
                s.viewers = sum(1 for seen in b.viewers.values() if now - seen < VIEWER_WINDOW)
                s.sent_bytes["hls"] = s.sent_bytes.get("hls", 0) + b.bytes_out
                if self.registry is None and self.relay is None:  # an edge node: what came over MoQ
                    s.frames_in, s.bytes_in, s.groups = b.frames_in, dict(b.bytes_in), b.groups_in
                s.silent_audio_seconds += b.gap_fill.silence_seconds
        for s in out.values():
            total_in = sum(s.bytes_in.values())
            s.bitrate_in = self._rate((s.name, "in"), total_in, now, s.started and now - (now_wall - s.started))
            for track, n in s.bytes_in.items():
                rate = self._rate((s.name, "track", track), n, now, s.started and now - (now_wall - s.started))
                if rate is not None:
                    s.track_bitrates[track] = rate
            s.bitrate_out = self._rate((s.name, "out"), sum(s.sent_bytes.values()), now, None)
        self._rate.forget_except(set(out))
        return sorted(out.values(), key=lambda s: s.name)

    def _read_relay(self, get) -> None:
        relay = self.relay
        fanouts: dict[int, str] = {}
        for name, source in list(relay._sources.items()):
            for fanout in source.fanouts.values():
                fanouts[id(fanout)] = name
        for (namespace, _track), upstream in list(relay._tracks.items()):
            fanouts[id(upstream.fanout)] = "/".join(namespace)
        for name in set(fanouts.values()):
            s = get(name)
            if s.catalog is None:  # a relayed broadcast: its catalog track's newest object
                s.catalog = _relayed_catalog(relay, name)
        subscribed: dict[str, set[int]] = {}
        for sub in list(relay._subs.values()):
            name = fanouts.get(id(sub.fanout))
            if name is not None:
                subscribed.setdefault(name, set()).add(id(sub.conn))
        sent: dict[str, int] = {}
        dropped: dict[str, int] = {}
        for _, fanout in relay._all_fanouts():
            name = fanouts.get(id(fanout))
            if name is not None:
                # a reader in this process (the edge of `rtmpq up` pulling a transcoder node's rung)
                # counts as the MoQ session of a separate edge would: once, while in the fan-out
                for sub in list(fanout.subscribers):
                    if isinstance(sub.sink, InProcessSink):
                        subscribed.setdefault(name, set()).add(sub.sink.reader)
                sent[name] = sent.get(name, 0) + fanout.bytes_sent
                dropped[name] = dropped.get(name, 0) + fanout.groups_dropped
        for name, subscribers in subscribed.items():
            get(name).subscribers = len(subscribers)
        for name, n in sent.items():
            s = get(name)
            s.sent_bytes["moq"] = n
            s.skipped_groups += dropped.get(name, 0)
        for (namespace, track), upstream in list(relay._tracks.items()):
            s = get("/".join(namespace))
            if track != "catalog" and not s.publishes:  # what came from the publisher or relay above
                s.bytes_in[track] = upstream.fanout.bytes_received
                s.frames_in += upstream.fanout.objects_received
                s.groups = max(s.groups, upstream.fanout.groups_received)  # (a group spans the tracks)
                first = upstream.fanout.first_received  # relayed: started here when its first object came
                if first is not None and (s.started is None or first < s.started):
                    s.started = first

    # -- API ------------------------------------------------------------------------------------
    def api_broadcasts(self) -> dict:
        items = []
        for s in self.broadcasts():
            tracks = []
            for t in (s.catalog.tracks if s.catalog is not None else ()):
                measured = s.track_bitrates.get(t.name)
                tracks.append({"name": t.name, "codec": t.codec, "width": t.width, "height": t.height,
                               "bitrate": t.stated_bitrate or (round(measured) if measured else None)})
            # what the publisher sends that is not carried (dropped at the ingest), and why: in the
            # catalog, so a relay or an edge fed over MoQ says it as the ingest does
            dropped = [{"kind": d.kind, "codec": d.codec, "flv": d.flv, "carried": d.carried, "reason": d.reason()}
                       for d in (s.catalog.not_carried if s.catalog is not None else ())]
            items.append({"name": s.name, "tracks": tracks,
                          "started": _iso(s.started) if s.started else None,
                          "subscribers": s.subscribers, "viewers": s.viewers, "publishing": s.publishing,
                          "not_carried": dropped})
        return {"items": items}


def _relayed_catalog(relay, name: str) -> Catalog | None:
    upstream = relay._tracks.get((tuple(name.split("/")), "catalog"))
    if upstream is None:
        return None
    group = upstream.fanout.cache.latest(time.monotonic())
    if group is None or not group.objects:
        return None
    try:
        return Catalog.from_json(bytes(group.objects[0].payload))
    except Exception:  # a peer's catalog we cannot read: list the broadcast without tracks
        return None


def _iso(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
