"""Prometheus metrics of one node, written with prometheus-client's registry and text exposition.

Each node has its own ``CollectorRegistry`` (never the process-wide default: tests run several
nodes in one process). One custom collector reads the ``NodeView`` at scrape time, so the hot
paths only ever add integers. Every name starts with ``rtmpq_``; per-broadcast series carry the
playback name as the ``broadcast`` label.
"""

import asyncio
import time

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

from .. import __version__
from .view import NodeView

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# How often the event loop's lag is sampled (seconds).
LOOP_LAG_INTERVAL = 0.5


class LoopLag:
    """How late the event loop runs a timer: the newest sample and the largest since last read."""

    def __init__(self, interval: float = LOOP_LAG_INTERVAL) -> None:
        self.interval = interval
        self.last = 0.0
        self.max = 0.0
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        while True:
            t = time.monotonic()
            await asyncio.sleep(self.interval)
            self.last = max(0.0, time.monotonic() - t - self.interval)
            self.max = max(self.max, self.last)

    def take_max(self) -> float:
        value, self.max = self.max, self.last
        return value


class NodeCollector:
    def __init__(self, view: NodeView, loop_lag: LoopLag) -> None:
        self.view = view
        self.loop_lag = loop_lag

    def describe(self):
        return []  # collected at scrape time only

    def collect(self):
        view = self.view
        yield InfoMetricFamily("rtmpq_node", "this node", value={"version": __version__, "kind": view.kind})
        yield GaugeMetricFamily("rtmpq_up_seconds", "seconds since this node started", value=time.time() - view.started)
        lag = GaugeMetricFamily("rtmpq_event_loop_lag_seconds", "how late the event loop ran a timer",
                                labels=["stat"])
        lag.add_metric(["last"], self.loop_lag.last)
        lag.add_metric(["max"], self.loop_lag.take_max())
        yield lag
        yield from self._broadcasts()
        yield from self._connections()
        if view.transcode is not None:
            yield from self._rungs(view.transcode())
        for extra in list(view.collectors):
            yield from extra()

    def _broadcasts(self):
        b_ = ["broadcast"]
        frames = CounterMetricFamily("rtmpq_broadcast_frames_received", "frames (objects) received", labels=b_)
        bytes_in = CounterMetricFamily("rtmpq_broadcast_received_bytes", "media bytes received",
                                       labels=["broadcast", "track"])
        bytes_out = CounterMetricFamily("rtmpq_broadcast_sent_bytes", "media bytes sent to viewers and subscribers",
                                        labels=["broadcast", "protocol"])
        rate_in = GaugeMetricFamily("rtmpq_broadcast_bitrate_in_bits_per_second", "bitrate received", labels=b_)
        rate_out = GaugeMetricFamily("rtmpq_broadcast_bitrate_out_bits_per_second", "bitrate sent, all viewers",
                                     labels=b_)
        groups = CounterMetricFamily("rtmpq_broadcast_groups", "groups (GoPs) received", labels=b_)
        keyint = GaugeMetricFamily("rtmpq_broadcast_keyframe_interval_seconds",
                                   "time between the starts of the last two groups", labels=b_)
        subs = GaugeMetricFamily("rtmpq_broadcast_subscribers", "MoQ sessions and in-process readers subscribed", labels=b_)
        viewers = GaugeMetricFamily("rtmpq_broadcast_viewers", "HLS players seen recently", labels=b_)
        skipped = CounterMetricFamily("rtmpq_broadcast_skipped_groups",
                                      "whole groups dropped for readers or subscribers that fell behind", labels=b_)
        reconnects = CounterMetricFamily("rtmpq_broadcast_publisher_reconnects",
                                         "publishes that continued this broadcast after the first", labels=b_)
        publishing = GaugeMetricFamily("rtmpq_broadcast_publishing",
                                       "1 while a publisher is attached, 0 while the broadcast waits for it to return",
                                       labels=b_)
        silence = CounterMetricFamily("rtmpq_broadcast_silent_audio_seconds",
                                      "silence the edge put into the HLS audio where the publisher sent none", labels=b_)
        for s in self.view.broadcasts():
            name = [s.name]
            frames.add_metric(name, s.frames_in)
            for track, n in sorted(s.bytes_in.items()):
                bytes_in.add_metric([s.name, track], n)
            for protocol, n in sorted(s.sent_bytes.items()):
                bytes_out.add_metric([s.name, protocol], n)
            if s.bitrate_in is not None:
                rate_in.add_metric(name, s.bitrate_in)
            if s.bitrate_out is not None:
                rate_out.add_metric(name, s.bitrate_out)
            groups.add_metric(name, s.groups)
            if s.keyframe_interval is not None:
                keyint.add_metric(name, s.keyframe_interval)
            subs.add_metric(name, s.subscribers)
            viewers.add_metric(name, s.viewers)
            skipped.add_metric(name, s.skipped_groups)
            reconnects.add_metric(name, max(0, s.publishes - 1))
            silence.add_metric(name, s.silent_audio_seconds)
            if s.publishing is not None:
                publishing.add_metric(name, 1 if s.publishing else 0)
        yield from (frames, bytes_in, bytes_out, rate_in, rate_out, groups, keyint, subs, viewers, skipped, reconnects,
                    publishing, silence)

    @staticmethod
    def _rungs(rungs):
        """Transcoder rungs: (broadcast, rendition track, RungStats, encoding now) each."""
        labels = ["broadcast", "rendition"]
        lag = GaugeMetricFamily("rtmpq_transcode_lag_seconds", "source frame arrival at the transcoder to its rung "
                                "frame leaving the encoder, for the rung's last frame (rungs encoding now)", labels=labels)
        encoded = CounterMetricFamily("rtmpq_transcode_frames_encoded", "frames a rung encoded", labels=labels)
        groups = CounterMetricFamily("rtmpq_transcode_groups", "groups a rung delivered (each from an IDR)",
                                     labels=labels)
        skipped = CounterMetricFamily("rtmpq_transcode_skipped_groups",
                                      "groups a rung dropped or cut short (it fell behind; signalled on the wire)",
                                      labels=labels)
        for name, track, stats, encoding in rungs:
            key = [name, track]
            if encoding and stats.lag is not None:
                lag.add_metric(key, stats.lag)
            encoded.add_metric(key, stats.frames_encoded)
            groups.add_metric(key, stats.groups)
            skipped.add_metric(key, stats.skipped_groups)
        yield from (lag, encoded, groups, skipped)

    def _connections(self):
        view = self.view
        conns = GaugeMetricFamily("rtmpq_connections", "open connections", labels=["protocol"])
        received = CounterMetricFamily("rtmpq_received_bytes", "bytes read from sockets", labels=["protocol"])
        sent = CounterMetricFamily("rtmpq_sent_bytes", "bytes written to sockets", labels=["protocol"])
        errors = CounterMetricFamily("rtmpq_errors", "errors and refusals by protocol and reason: connections, "
                                     "sessions or requests ended or refused, publishes refused, recordings stopped, "
                                     "relayed datagrams not sent (each reason: docs/operations.md)",
                                     labels=["protocol", "reason"])
        if view.ingest is not None:
            rtmp = view.ingest.server
            conns.add_metric(["rtmp"], len(rtmp.connections))
            received.add_metric(["rtmp"], rtmp.bytes_in)
            for reason, n in sorted(rtmp.errors.items()):
                errors.add_metric(["rtmp", reason], n)
            if (events := view.ingest.events) is not None:
                told = CounterMetricFamily("rtmpq_publish_events", "events told to [publish] events_url, by result "
                                           "(sent: taken; failed: not taken, retries included; dropped: too many waiting)",
                                           labels=["result"])
                for result in ("sent", "failed", "dropped"):
                    told.add_metric([result], getattr(events, result))
                yield told
        if view.http is not None:
            st = view.http.stats
            conns.add_metric(["http"], st.open)
            received.add_metric(["http"], st.bytes_in)
            sent.add_metric(["http"], st.bytes_out)
            for reason, n in sorted(st.errors.items()):
                errors.add_metric(["http", reason], n)
            yield CounterMetricFamily("rtmpq_http_requests", "HTTP requests answered", value=st.requests)
            yield CounterMetricFamily("rtmpq_http_connections_accepted", "HTTP connections accepted", value=st.accepted)
            yield GaugeMetricFamily("rtmpq_http_buffered_bytes",
                                    "response bytes queued in user space for all HTTP connections",
                                    value=view.http.buffered_bytes())
        if view.relay is not None:
            for reason, n in sorted(view.relay.errors.items()):
                errors.add_metric(["moq", reason], n)
            sessions = [c for c in list(view.relay.connections) if not c.session.closed]
            conns.add_metric(["moq"], len(sessions))
            rtts, lost, packets = [], 0, 0
            for conn in sessions:
                rtt, conn_lost, conn_sent = quic_path(conn)
                if rtt is not None:
                    rtts.append(rtt)
                lost += conn_lost or 0
                packets += conn_sent or 0
            rtt = GaugeMetricFamily("rtmpq_quic_rtt_seconds", "smoothed RTT of the open QUIC connections",
                                    labels=["stat"])
            if rtts:
                rtt.add_metric(["mean"], sum(rtts) / len(rtts))
                rtt.add_metric(["max"], max(rtts))
            yield rtt
            yield GaugeMetricFamily("rtmpq_quic_queued_bytes", "bytes queued in QUIC, not yet acknowledged",
                                    value=sum(c.total_queued_bytes() for c in sessions))
            yield GaugeMetricFamily("rtmpq_group_cache_bytes",
                                    "media bytes the relay's group caches hold, every track of every broadcast",
                                    value=sum(fanout.cache.size for _, fanout in view.relay._all_fanouts()))
            if view.relay_backend == "aiopquic":  # picoquic counts packets sent and lost per path
                yield GaugeMetricFamily("rtmpq_quic_packets_lost", "packets lost on the open QUIC connections",
                                        value=lost)
                yield GaugeMetricFamily("rtmpq_quic_packets_sent", "packets sent on the open QUIC connections",
                                        value=packets)
        yield from (conns, received, sent, errors)


def quic_path(conn) -> tuple[float | None, int | None, int | None]:
    """(smoothed RTT in seconds, packets lost, packets sent) of a MoQ connection, where its QUIC
    library tells: aioquic keeps the RTT in its loss recovery; picoquic reports all three."""
    quic = getattr(conn, "_quic", None)
    if quic is None:
        return None, None, None
    path_quality = getattr(quic, "path_quality", None)
    if path_quality is not None:
        q = path_quality() or {}
        rtt = q.get("rtt")
        return (rtt / 1e6 if rtt else None), q.get("lost"), q.get("sent")
    loss = getattr(quic, "_loss", None)
    rtt = getattr(loss, "_rtt_smoothed", None) if loss is not None else None
    return (rtt if rtt else None), None, None


class NodeMetrics:
    """A node's registry and its exposition (``GET /metrics``)."""

    def __init__(self, view: NodeView) -> None:
        self.view = view
        self.loop_lag = LoopLag()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(NodeCollector(view, self.loop_lag))

    def start(self) -> None:
        self.loop_lag.start()

    def stop(self) -> None:
        self.loop_lag.stop()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
