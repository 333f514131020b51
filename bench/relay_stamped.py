"""`python bench/relay_stamped.py OUT.json <rtmpq arguments>`: rtmpq with the relay's side of the
latency stamped (bench/relay_latency.py). SIGUSR1 starts recording, SIGUSR2 writes OUT.json.

Per media frame, against its ingest arrival (``Frame.received_ns``, the same clock as the
subscribers'): when the relay's broadcast listener got it (``enter``: ingest, demux and the
broadcast's own work before it), when the listener returned (``handed``: the object written to
every subscriber's QUIC stream, i.e. handed to picoquic's rings) and the listener's thread CPU;
with aiopquic, when picoquic put the object's last byte into a packet for the first, the middle
and the last subscriber written (``packetized_first`` / ``_mid`` / ``_last``; objects of
BIG_OBJECT bytes or more apart, in ``..._big``: a thread polls each stream's packetized offset
every PACKETIZED_POLL_S). Also the event loop's lag (a timer due every LAG_PROBE_S fires late by
this much: other work held the loop), every connection's cwnd, smoothed RTT and pacing rate every
PATH_SAMPLE_S, and aiopquic's counters of TX events and network-thread wake-ups over the run.
The stamping costs the relay CPU of its own (the polling thread, the samples): its latencies err
high, and the relay's CPU here is no egress figure."""

import asyncio
import json
import os
import signal
import sys
import threading
import time

from rtmpq.cli import main
from rtmpq.media.frames import Frame
from rtmpq.moq import broadcast_source, transport

LAG_PROBE_S = 0.005
PACKETIZED_POLL_S = 0.0005
out = sys.argv.pop(1)
LISTS = ("enter", "handed", "cpu", "lag", "packetized_first", "packetized_mid", "packetized_last",
         "packetized_first_big", "packetized_mid_big", "packetized_last_big", "cwin", "rtt_ms", "pacing_MBps")
BIG_OBJECT = 30_000  # bytes: the benchmark's keyframes (~36 kB; other frames up to 15 kB) are timed apart
PATH_SAMPLE_S = 0.1
conns: dict[int, object] = {}  # aiopquic connections written to: their path figures sampled
state = {"on": False, **{k: [] for k in LISTS}}
_on_event = broadcast_source.BroadcastSource._on_event
_send = transport._PquicWriter.send_stream_data
writes: list = []  # this object's writes: (quic, stream id, offset of its end)
watch: list = []  # (quic, stream id, offset, received_ns, list to add to)
watch_lock = threading.Lock()
transports: dict[int, object] = {}  # aiopquic's TransportContext(s) written through: their counters
COUNTERS = ("wake_calls", "wake_skipped_coalesced", "tx_event_ring_pushes", "mark_active_processed",
            "prepare_to_send_calls")
counters0: dict[str, int] = {}


def transport_counters() -> dict[str, int]:
    total = dict.fromkeys(COUNTERS, 0)
    for t in transports.values():
        c = t.counters
        for k in COUNTERS:
            total[k] += c.get(k, 0)
    return total


def send_stream_data(self, stream_id, data, end_stream=False) -> None:
    _send(self, stream_id, data, end_stream)
    t = self.quic._transport
    if t is not None and id(t) not in transports:
        transports[id(t)] = t
    conns[id(self.quic)] = self.quic
    if state["on"] and stream_id in self.written and stream_id not in self.pending:
        writes.append((self.quic, stream_id, self.written[stream_id]))


transport._PquicWriter.send_stream_data = send_stream_data


def poll_packetized() -> None:
    while True:
        time.sleep(PACKETIZED_POLL_S)
        now = time.time_ns()
        with watch_lock:
            for entry in list(watch):
                quic, sid, offset, received_ns, into = entry
                if sid not in quic._stream_ctxs:  # retired (or reset): when is not known
                    watch.remove(entry)
                elif quic.tx_sent_bytes(sid) >= offset:
                    into.append((now - received_ns) / 1e6)
                    watch.remove(entry)


threading.Thread(target=poll_packetized, daemon=True).start()


def on_event(self, item) -> None:
    if not (state["on"] and type(item) is Frame and item.received_ns):
        return _on_event(self, item)
    t0, c0 = time.time_ns(), time.thread_time()
    writes.clear()
    try:
        return _on_event(self, item)
    finally:
        if writes:  # the object's last piece per subscriber, in the order written
            last = {}
            for quic, sid, offset in writes:
                last[(id(quic), sid)] = (quic, sid, offset)
            order = list(last.values())
            with watch_lock:
                for k, i in (("first", 0), ("mid", len(order) // 2), ("last", len(order) - 1)):
                    into = state[f"packetized_{k}"] if len(item.payload) < BIG_OBJECT else state[f"packetized_{k}_big"]
                    watch.append((*order[i], item.received_ns, into))
        t1 = time.time_ns()
        state["cpu"].append(time.thread_time() - c0)
        state["enter"].append((t0 - item.received_ns) / 1e6)
        state["handed"].append((t1 - item.received_ns) / 1e6)


broadcast_source.BroadcastSource._on_event = on_event


def probe(loop, due: float) -> None:
    if not state["on"]:
        return
    now = loop.time()
    state["lag"].append((now - due) * 1e3)
    loop.call_at(now + LAG_PROBE_S, probe, loop, now + LAG_PROBE_S)


def sample_paths(loop) -> None:
    if not state["on"]:
        return
    for quic in list(conns.values()):
        q = quic.path_quality() if quic._cnx_ptr and not quic._closed else None
        if q:
            state["cwin"].append(q["cwin"])
            state["rtt_ms"].append(q["rtt"] / 1e3)
            state["pacing_MBps"].append(q["pacing_rate"] / 1e6)
    loop.call_later(PATH_SAMPLE_S, sample_paths, loop)


def start(*_) -> None:
    state.update(on=True, **{k: [] for k in LISTS})
    counters0.clear()
    counters0.update(transport_counters())
    loop = asyncio.get_event_loop()
    loop.call_soon_threadsafe(lambda: probe(loop, loop.time()))
    loop.call_soon_threadsafe(sample_paths, loop)


def stop(*_) -> None:
    state["on"] = False
    now = transport_counters()
    with open(out + ".part", "w") as f:  # renamed when whole: the reader waits for the name
        json.dump({**{k: v for k, v in state.items() if k != "on"},
                   "counters": {k: now[k] - counters0.get(k, 0) for k in COUNTERS}}, f)
    os.replace(out + ".part", out)


signal.signal(signal.SIGUSR1, start)
signal.signal(signal.SIGUSR2, stop)
sys.exit(main(sys.argv[1:]))
