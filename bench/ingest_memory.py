"""Where `rtmpq up`'s memory per publisher goes: tracemalloc of the server while N publishers push.

    .venv/bin/python bench/ingest_memory.py [publishers] [--record] [--top 15]

The same publishes as bench/bench_ingest.py (a 6 s 720p30 2.6 Mbit/s H.264 + AAC file pushed by
`ffmpeg -re -c copy`, nobody watching). The server runs under `bench/traced.py`: tracemalloc is
started before start-up, a snapshot is taken once the server is up and another one second before
the publishes end (SIGUSR1 each), and the lines that allocated what the second holds beyond the
first are printed, per publisher: the group cache's media (the payloads) apart from the objects
that describe them, the receive buffers, the rest. tracemalloc's own bookkeeping inflates RSS, so
read RSS from bench_ingest.py; this says what the Python heap holds and who made it.
"""

import argparse
import os
import pickle
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_ingest import SECONDS, make_source, wait_listening  # noqa: E402
from bench_relay import free_port  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("publishers", type=int, nargs="?", default=10)
    ap.add_argument("--record", action="store_true")
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ingest-memory-"))
    source = make_source(tmp / "source.flv")
    port = free_port(socket.SOCK_STREAM)
    snaps = tmp / "snapshots.pickle"
    server = subprocess.Popen([sys.executable, str(Path(__file__).parent / "traced.py"), str(snaps),
                               "--log-level", "WARNING", "up", "--rtmp", f"127.0.0.1:{port}",
                               "--moq", f"127.0.0.1:{free_port(socket.SOCK_DGRAM)}",
                               "--http", f"127.0.0.1:{free_port(socket.SOCK_STREAM)}", "--state-dir", str(tmp / "state"),
                               *(["--record", str(tmp / "rec")] if args.record else [])],
                              env={**os.environ, "RTMPQ_PUBLISH_GRACE_PERIOD": "0"})
    try:
        wait_listening(port)
        time.sleep(1.0)
        server.send_signal(signal.SIGUSR1)
        procs = [subprocess.Popen(["ffmpeg", "-v", "error", "-re", "-i", str(source), "-c", "copy", "-f", "flv",
                                   f"rtmp://127.0.0.1:{port}/live/p{i}"], stdin=subprocess.DEVNULL)
                 for i in range(args.publishers)]
        time.sleep(SECONDS - 1.0)
        server.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 60
        while not snaps.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        failed = sum(p.wait(timeout=SECONDS * 10) != 0 for p in procs)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    before, during = pickle.loads(snaps.read_bytes())
    stats = during.compare_to(before, "lineno")
    n = args.publishers
    total = sum(s.size_diff for s in stats)
    print(f"{n} publishers ({failed} failed){' recording' if args.record else ''}: the Python heap holds "
          f"{total / n / 1024:.0f} KiB more per publisher one second before the publishes end")
    print("  KiB/publisher  objects/publisher  allocated at")
    for s in stats[: args.top]:
        print(f"  {s.size_diff / n / 1024:13.1f}  {s.count_diff / n:17.1f}  {s.traceback[0]}")


if __name__ == "__main__":
    main()
