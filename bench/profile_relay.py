"""Where the relay's CPU goes with N aiopquic subscribers: per thread, and per part of the event loop.

    .venv/bin/python bench/profile_relay.py [N=50] [--backend aiopquic] [--tracemalloc]

The same run as bench/bench_relay.py (a 3 Mbit/s 720p file replayed in real time into `rtmpq up`,
N subscribers in another process), with `rtmpq up` started through bench/relay_timed.py. Prints
each relay thread's CPU over the subscribers' run (`/proc/PID/task/*/stat`: the event-loop thread
and picoquic's network thread), the counters of relay_timed.py, the subscribers' figures and the
relay's RSS (before, peak). Run it from a checkout to measure that checkout's code. With
--tracemalloc the counters are written halfway through the publish instead (subscribers still
connected) with Python's traced allocations: run it with N=0 and N=50 for Python's share of a
subscriber's memory.
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench_relay import PeakRss, SECONDS, encode_source, free_port, rss_mb, wait_listening

HERE = Path(__file__).resolve().parent


def thread_cpu(pid: int) -> dict[str, float]:
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            out[task.name] = (int(fields[11]) + int(fields[12])) / 100
        except OSError:
            pass
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("subscribers", type=int, nargs="?", default=50)
    ap.add_argument("--backend", default="aiopquic")
    ap.add_argument("--tracemalloc", action="store_true")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    source = tmp / "source.flv"
    encode_source(source)
    moq, rtmp, http = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_STREAM), free_port(socket.SOCK_STREAM)
    counters = tmp / "counters.txt"
    env = dict(os.environ, PYTHONPATH=os.getcwd())  # this checkout's rtmpq
    if args.tracemalloc:
        env["RTMPQ_BENCH_TRACEMALLOC"] = "1"
    relay = subprocess.Popen([sys.executable, str(HERE / "relay_timed.py"), str(counters), "--log-level", "WARNING", "up",
                              "--rtmp", f"127.0.0.1:{rtmp}", "--moq", f"127.0.0.1:{moq}", "--http", f"127.0.0.1:{http}",
                              "--state-dir", str(tmp), "--quic-backend", args.backend], env=env)
    try:
        wait_listening(rtmp)
        publisher = subprocess.Popen(["ffmpeg", "-v", "error", "-re", "-i", str(source), "-c", "copy", "-f", "flv",
                                      f"rtmp://127.0.0.1:{rtmp}/live/bench"])
        time.sleep(0.5)
        rss0 = rss_mb(relay.pid)
        sampler = PeakRss(relay.pid)
        sampler.start()
        relay.send_signal(signal.SIGUSR1)
        cpu0 = thread_cpu(relay.pid)
        if args.tracemalloc:  # halfway through the publish, subscribers connected
            snapshot = threading.Timer(SECONDS / 2, lambda: (relay.send_signal(signal.SIGUSR2),
                                                             print(f"relay RSS at the snapshot {rss_mb(relay.pid):.1f} MB")))
            snapshot.start()
        subs = subprocess.run([sys.executable, str(HERE / "relay_subscribers.py"), str(moq), "live/bench",
                               str(args.subscribers), args.backend], capture_output=True, text=True, timeout=120, env=env)
        cpu1 = thread_cpu(relay.pid)
        if not args.tracemalloc:
            relay.send_signal(signal.SIGUSR2)
        sampler.done.set()
        publisher.wait(timeout=30)
        time.sleep(0.5)
        if args.tracemalloc and not args.subscribers:
            time.sleep(SECONDS)
        stats = json.loads(subs.stdout.strip().splitlines()[-1])
        threads = sorted(((cpu1[t] - cpu0.get(t, 0.0), t) for t in cpu1), reverse=True)
        print(f"load average {os.getloadavg()[0]:.1f}; {args.subscribers} {args.backend} subscribers: {stats}")
        print(f"relay RSS before {rss0:.1f} MB, peak {sampler.peak:.1f} MB "
              f"({(sampler.peak - rss0) / max(args.subscribers, 1) * 1000:.0f} kB per subscriber)")
        print("relay CPU per thread (s): " + ", ".join(f"{t:.2f}" for t, _ in threads if t > 0) +
              f" (total {sum(t for t, _ in threads):.2f}; {stats['bytes'] / 1e6 / max(sum(t for t, _ in threads), 0.01):.1f} MB per CPU s)")
        time.sleep(0.5)
        print(counters.read_text())
    finally:
        relay.terminate()
        relay.wait(timeout=10)


if __name__ == "__main__":
    main()
