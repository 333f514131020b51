"""`python bench/relay_timed.py OUT.txt <rtmpq arguments>`: rtmpq with thread-CPU counters around
the relay's hot calls (bench/profile_relay.py). SIGUSR1 starts counting, SIGUSR2 writes them.

Counters (CPU of the event-loop thread, ``time.thread_time``): the budget checks of every
fan-out (per tick), the hand-over of one object to every subscriber (the broadcast listener,
which includes the fan-out), aiopquic's draining of picoquic's events, and inside the checks the
transport counts (``total_buffered_bytes`` / ``buffered_bytes``), and picoquic's own counters
(aiopquic ``TransportContext.counters``: its network thread's wake-ups and loop turns, since the
start). With RTMPQ_BENCH_TRACEMALLOC=1 Python's own allocations are traced from SIGUSR1 on (slower:
for memory, not CPU) and their size now and at peak written too. RTMPQ_BENCH_PQUIC_CC=NAME runs
aiopquic with another picoquic congestion controller (newreno, cubic, bbr, ...; default bbr1)."""

import os
import signal
import sys
import time
import tracemalloc

import aiopquic.quic.connection as pquic_connection

from rtmpq.cli import main
from rtmpq.moq import broadcast_source, fanout, relay_sink, transport

out = sys.argv.pop(1)
counters: dict[str, list] = {}
outer = [0]


def count(owner, name: str, label: str, nested: bool = False) -> None:
    """Wrap ``owner.name`` so its calls add their thread CPU to ``counters[label]``."""
    fn = getattr(owner, name)

    def wrapped(*args, **kwargs):
        if outer[0] and not nested:
            return fn(*args, **kwargs)
        outer[0] += not nested
        t0 = time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            outer[0] -= not nested
            c = counters.setdefault(label, [0, 0.0])
            c[0] += 1
            c[1] += time.thread_time() - t0
    setattr(owner, name, wrapped)


count(fanout.TrackFanout, "check", "budget checks (TrackFanout.check, every tick)")
count(broadcast_source.BroadcastSource, "_on_event", "objects handed to every subscriber (broadcast listener)")
count(pquic_connection, "drain_and_route", "aiopquic: events from picoquic's thread")
count(relay_sink.ConnectionSink, "total_buffered_bytes", "  of the checks: transport total counts", nested=True)
count(relay_sink.ConnectionSink, "buffered_bytes", "  of the checks: transport per-group counts", nested=True)


TRACE = os.environ.get("RTMPQ_BENCH_TRACEMALLOC") == "1"
PQUIC_COUNTERS = ("wake_calls", "wake_skipped_coalesced", "loop_callbacks", "tx_event_ring_pushes",
                  "prepare_to_send_calls", "mark_active_processed")
engines = []  # aiopquic's engines (one per listener or client), for their counters
_start_transport = pquic_connection.QuicEngine._start_transport


def _started(self, *args, **kwargs):
    engines.append(self)
    return _start_transport(self, *args, **kwargs)


pquic_connection.QuicEngine._start_transport = _started
_pquic_configuration = transport._pquic_configuration


def _configured(**kwargs):
    config = _pquic_configuration(**kwargs)
    if cc := os.environ.get("RTMPQ_BENCH_PQUIC_CC"):
        config.congestion_control_algorithm = cc
    return config


transport._pquic_configuration = _configured


def start(*_) -> None:
    if TRACE:
        tracemalloc.start()
    counters.clear()
    counters["start"] = [time.thread_time(), time.process_time()]


def stop(*_) -> None:
    t0, p0 = counters.pop("start")
    with open(out, "w") as f:
        f.write(f"event-loop thread CPU {time.thread_time() - t0:.3f} s, process CPU {time.process_time() - p0:.3f} s\n")
        for label, (n, t) in sorted(counters.items(), key=lambda kv: -kv[1][1]):
            f.write(f"{label}: {t:.3f} s in {n} calls ({t / n * 1e6:.1f} us a call)\n")
        for engine in engines:
            if engine._transport is not None:
                c = engine._transport.counters
                f.write("picoquic (since the start): " + ", ".join(f"{k} {c[k]}" for k in PQUIC_COUNTERS) + "\n")
        if TRACE:
            now, peak = tracemalloc.get_traced_memory()
            f.write(f"Python allocations since the start: {now / 1e6:.2f} MB now, {peak / 1e6:.2f} MB at peak\n")


signal.signal(signal.SIGUSR1, start)
signal.signal(signal.SIGUSR2, stop)
sys.exit(main(sys.argv[1:]))
