"""Where the relay's ingest-to-subscriber latency goes, with the subscribers in 1 or more processes.

    .venv/bin/python bench/relay_latency.py [N=50] [--processes 1,2,5] [--backend aiopquic]

The run of bench/bench_relay.py (a 3 Mbit/s 720p file replayed in real time into `rtmpq up`, N
subscribers), with `rtmpq up` started through bench/relay_stamped.py and the N subscribers spread
over P processes (bench/relay_subscribers.py ... raw), once per P. For every media object, ms
after its ingest arrival (one machine clock):

- relay got it: the relay's broadcast listener was called (ingest + demux before it);
- relay handed it: the listener returned, the object written to all N subscribers' streams
  (picoquic's rings);
- subscriber parsed it: a subscriber process's MoQ session parsed it out of aiopquic's stream
  event (picoquic sent, the subscriber's picoquic received, its event loop woke and drained);
- subscriber got it: the subscriber's code got the frame (bench_relay's latency).

Plus each event loop's lag (a 5 ms timer's lateness) and the relay's CPU. Run it from a checkout to
measure that checkout's code (rtmpq is imported from the cwd).
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_relay import cpu_seconds, encode_source, free_port, wait_listening

HERE = Path(__file__).resolve().parent


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(int(len(values) * q), len(values) - 1)]


def row(label: str, values: list[float]) -> str:
    return (f"{label:34} {len(values):7}  {pct(values, 0.5):8.1f}  {pct(values, 0.9):8.1f}  {pct(values, 0.99):8.1f}"
            f"  {pct(values, 1.0):8.1f}")


def run(source: Path, shares: list[int], backend: str, tmp: Path) -> tuple[dict, list[dict], dict, float]:
    moq, rtmp, http = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_STREAM), free_port(socket.SOCK_STREAM)
    processes = "+".join(map(str, shares))
    stamps = tmp / f"stamps{processes}.json"
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    relay = subprocess.Popen([sys.executable, str(HERE / "relay_stamped.py"), str(stamps), "--log-level", "WARNING", "up",
                              "--rtmp", f"127.0.0.1:{rtmp}", "--moq", f"127.0.0.1:{moq}", "--http", f"127.0.0.1:{http}",
                              "--state-dir", str(tmp / f"s{processes}"), "--quic-backend", backend], env=env)
    try:
        wait_listening(rtmp)
        publisher = subprocess.Popen(["ffmpeg", "-v", "error", "-re", "-i", str(source), "-c", "copy", "-f", "flv",
                                      f"rtmp://127.0.0.1:{rtmp}/live/bench"])
        time.sleep(0.5)
        relay.send_signal(signal.SIGUSR1)
        cpu0 = cpu_seconds(relay.pid)
        subs = [subprocess.Popen([sys.executable, str(HERE / "relay_subscribers.py"), str(moq), "live/bench", str(n),
                                  backend, "raw"], stdout=subprocess.PIPE, text=True, env=env) for n in shares]
        outs = [json.loads(p.communicate(timeout=120)[0].strip().splitlines()[-1]) for p in subs]
        cpu = cpu_seconds(relay.pid) - cpu0
        relay.send_signal(signal.SIGUSR2)
        publisher.wait(timeout=30)
        deadline = time.monotonic() + 10
        while not stamps.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        merged = {"bytes": 0, "objects": 0, "skipped": 0, "latency_ms": [], "drain_ms": [], "lag_ms": [], "cpu_s": 0.0}
        for o in outs:
            for k in merged:
                merged[k] += o[k]
        return merged, outs, json.loads(stamps.read_text()), cpu
    finally:
        relay.terminate()
        relay.wait(timeout=10)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("subscribers", type=int, nargs="?", default=50)
    ap.add_argument("--processes", default="1,2,5",
                    help="comma-separated runs: P (N spread evenly over P processes) or shares like 49+1")
    ap.add_argument("--backend", default="aiopquic")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    source = tmp / "source.flv"
    encode_source(source)
    for spec in args.processes.split(","):
        if "+" in spec:
            shares = [int(n) for n in spec.split("+")]
        else:
            p = int(spec)
            shares = [args.subscribers // p + (i < args.subscribers % p) for i in range(p)]
        load = os.getloadavg()[0]
        subs, outs, relay, cpu = run(source, shares, args.backend, tmp)
        print(f"\n{sum(shares)} {args.backend} subscribers in processes of {'+'.join(map(str, shares))}; load {load:.1f} -> "
              f"{os.getloadavg()[0]:.1f}; {subs['objects']} objects, {subs['skipped']} groups skipped, "
              f"{subs['bytes'] / 1e6:.1f} MB, relay CPU {cpu:.2f} s ({subs['bytes'] / 1e6 / max(cpu, 0.01):.1f} MB/s per core), "
              f"subscribers' CPU {subs['cpu_s']:.2f} s; relay listener CPU {sum(relay['cpu']):.2f} s")
        c = relay["counters"]
        print(f"relay's aiopquic over the run, per media object: {c['tx_event_ring_pushes'] / max(len(relay['handed']), 1):.1f} "
              f"writes, {c['wake_calls'] / max(len(relay['handed']), 1):.1f} wake-ups of picoquic's thread "
              f"({c['wake_skipped_coalesced'] / max(len(relay['handed']), 1):.1f} coalesced), "
              f"{c['prepare_to_send_calls'] / max(len(relay['handed']), 1):.1f} prepare-to-send calls")
        print(f"{'ms after ingest arrival':34} {'count':>7}  {'p50':>8}  {'p90':>8}  {'p99':>8}  {'max':>8}")
        print(row("relay got it (listener called)", relay["enter"]))
        print(row("relay handed it to all streams", relay["handed"]))
        print(row("  the listener's own CPU per object", [c * 1e3 for c in relay["cpu"]]))
        for k in ("first", "mid", "last"):
            print(row(f"picoquic packetized it, {k} sub", relay[f"packetized_{k}"]))
        for k in ("first", "mid", "last"):
            print(row(f"  the same, keyframes (>30 kB), {k}", relay[f"packetized_{k}_big"]))
        print(row("subscriber parsed it (session)", subs["drain_ms"]))
        print(row("subscriber got it (its code)", subs["latency_ms"]))
        print(row("relay event-loop lag (5 ms timer)", relay["lag"]))
        print(row("subscribers' event-loop lag", subs["lag_ms"]))
        print(f"relay's connections every 0.1 s: cwin bytes p10/p50/p90 {pct(relay['cwin'], .1):.0f}/{pct(relay['cwin'], .5):.0f}/"
              f"{pct(relay['cwin'], .9):.0f}, smoothed RTT ms {pct(relay['rtt_ms'], .1):.1f}/{pct(relay['rtt_ms'], .5):.1f}/"
              f"{pct(relay['rtt_ms'], .9):.1f}, pacing MB/s {pct(relay['pacing_MBps'], .1):.1f}/{pct(relay['pacing_MBps'], .5):.1f}/"
              f"{pct(relay['pacing_MBps'], .9):.1f}")
        if len(outs) > 1:
            for n, o in zip(shares, outs):
                print(row(f"  got it, process of {n}", o["latency_ms"]) + f"   CPU {o['cpu_s']:.2f} s")


if __name__ == "__main__":
    main()
