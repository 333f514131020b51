"""Where `rtmpq up` spends its time on ingest: cProfile of the server while N publishers push.

    .venv/bin/python bench/profile_ingest.py [publishers] [--record] [--pure] [--sort tottime]
    .venv/bin/python bench/profile_ingest.py 50 --perf        # native profile: interpreter, compiled core, kernel
    .venv/bin/python bench/profile_ingest.py 50 --no-profile --uvloop   # CPU with uvloop's event loop
    .venv/bin/python bench/profile_ingest.py 50 --perf --callgraph   # + Python functions by inclusive share
    .venv/bin/python bench/profile_ingest.py 50 --time-sink   # µs per message in the publishes' sinks

The same publishes as bench/bench_ingest.py (a 6 s 720p30 2.6 Mbit/s H.264 + AAC file pushed by
`ffmpeg -re -c copy`); the server's main thread is profiled (cProfile, switched on by SIGUSR1 once the server is up and
off by SIGUSR2 one second after the last publisher exited: imports and start-up are left out);
the top functions are printed. With 0 publishers it profiles 10 s of an idle server (the fixed
cost). cProfile slows Python
calls down, so read the shares, not the absolute times.

--perf samples the server's CPU (all threads) with Linux perf's software clock instead (`perf record
-e cpu-clock`, the server run with `python -X perf` so Python functions are named), from the first
publisher to one second after the last, and prints the share of each library (the interpreter in
libpython, the compiled core in _speedups, the kernel) and of the busiest symbols. --uvloop runs
the server on uvloop's event loop (`pip install -e '.[bench]'`), to compare its CPU with asyncio's.
--callgraph adds DWARF call chains to --perf (299 Hz) and prints the Python functions' inclusive
shares (the unwinding through the interpreter is partial: read them as lower bounds).
--time-sink runs the server under bench/sink_timed.py and prints the thread CPU time per media
message of the publishes' sinks, measured inside the server (compare with bench/frame_path.py).
"""

import argparse
import os
import pstats
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_ingest import SECONDS, make_source, wait_listening  # noqa: E402
from bench_relay import cpu_seconds, free_port  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("publishers", type=int, nargs="?", default=10)
    ap.add_argument("--record", action="store_true")
    ap.add_argument("--pure", action="store_true")
    ap.add_argument("--sort", default="tottime")
    ap.add_argument("--top", type=int, default=45)
    ap.add_argument("--no-profile", action="store_true", help="only the CPU seconds")
    ap.add_argument("--perf", action="store_true", help="sample with Linux perf (cpu-clock) instead of cProfile")
    ap.add_argument("--callgraph", action="store_true",
                    help="with --perf: record call chains and print the Python functions by inclusive share")
    ap.add_argument("--time-sink", action="store_true",
                    help="time each publish's media sink inside the server (bench/sink_timed.py), no profile")
    ap.add_argument("--uvloop", action="store_true", help="run the server on uvloop's event loop")
    ap.add_argument("--floor", choices=("read", "demux", "hold"),
                    help="run rtmpq with its ingest cut short there (bench/ingest_floor.py), no cProfile")
    args = ap.parse_args()
    if args.perf and not shutil.which("perf"):
        sys.exit("--perf needs Linux perf (Debian: linux-perf)")
    tmp = Path(tempfile.mkdtemp(prefix="profile-ingest-"))
    source = make_source(tmp / "source.flv")
    port = free_port(socket.SOCK_STREAM)
    env = {**os.environ, "RTMPQ_PUBLISH_GRACE_PERIOD": "0"}
    env.pop("RTMPQ_PUREPYTHON", None)
    if args.pure:
        env["RTMPQ_PUREPYTHON"] = "1"
    prof = tmp / "up.prof"
    cprofile = not (args.no_profile or args.perf or args.time_sink or args.floor)
    here = Path(__file__).parent
    if args.time_sink:
        profile = [str(here / "sink_timed.py"), str(tmp / "sink.txt")]
    elif args.floor:
        profile = [str(here / "ingest_floor.py"), args.floor]
    elif args.uvloop:
        profile = [str(here / "uvloop_rtmpq.py"), *([str(prof)] if cprofile else [])]
    else:
        profile = [str(here / "profiled.py"), str(prof)] if cprofile else ["-m", "rtmpq"]
    server = subprocess.Popen([sys.executable, *(["-X", "perf"] if args.perf else []), *profile, "--log-level", "WARNING", "up",
                               "--rtmp", f"127.0.0.1:{port}", "--moq", f"127.0.0.1:{free_port(socket.SOCK_DGRAM)}",
                               "--http", f"127.0.0.1:{free_port(socket.SOCK_STREAM)}", "--state-dir", str(tmp / "state"),
                               *(["--record", str(tmp / "rec")] if args.record else [])], env=env)
    try:
        wait_listening(port)
        time.sleep(1.0)
        cpu0 = cpu_seconds(server.pid)
        if cprofile:
            server.send_signal(signal.SIGUSR1)
        perf = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-F", "999", *(["--call-graph", "dwarf,16384", "-F", "299"] if args.callgraph else []),
                                 "-p", str(server.pid),
                                 "-o", str(tmp / "perf.data")], stderr=subprocess.DEVNULL) if args.perf else None
        procs = [subprocess.Popen(["ffmpeg", "-v", "error", "-re", "-i", str(source), "-c", "copy", "-f", "flv",
                                   f"rtmp://127.0.0.1:{port}/live/p{i}"], stdin=subprocess.DEVNULL)
                 for i in range(args.publishers)]
        failed = sum(p.wait(timeout=SECONDS * 10) != 0 for p in procs)
        time.sleep(1.0 if procs else 10.0)
        cpu = cpu_seconds(server.pid) - cpu0
        if perf is not None:
            perf.send_signal(signal.SIGINT)
            perf.wait(timeout=60)
        if cprofile:
            server.send_signal(signal.SIGUSR2)
            time.sleep(0.5)
        print(f"{args.publishers} publishers ({failed} failed): {cpu:.3f} s CPU"
              + (f", {cpu / args.publishers / SECONDS:.4f} cores per publisher" if procs else " in 10 s idle"))
        if args.time_sink:
            server.send_signal(signal.SIGUSR2)
            deadline = time.monotonic() + 10
            while not (tmp / "sink.txt").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            print((tmp / "sink.txt").read_text().strip())
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    if args.perf:
        for sort in ("dso", "dso,sym"):
            report = subprocess.run(["perf", "report", "-i", str(tmp / "perf.data"), "--no-children", "--sort", sort,
                                     "--stdio", "-g", "none"], capture_output=True, text=True).stdout
            print("\n".join([line for line in report.splitlines() if line.strip() and not line.startswith("#")][:args.top]))
        if args.callgraph:  # inclusive shares of the Python functions (python -X perf names them py::)
            report = subprocess.run(["perf", "report", "-i", str(tmp / "perf.data"), "--children", "--sort", "sym",
                                     "--stdio", "-g", "none"], capture_output=True, text=True).stdout
            print("\n".join([line for line in report.splitlines() if "py::" in line][:args.top]))
    elif cprofile:
        pstats.Stats(str(prof)).sort_stats(args.sort).print_stats(args.top)


if __name__ == "__main__":
    main()
