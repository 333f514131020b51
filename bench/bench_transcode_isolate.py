"""What [transcode] isolate costs: `rtmpq up --ladder 480p,360p` with the ladder on threads of the
node's process, and in a child process (`rtmpq transcode` over the node's own MoQ listener), in
one run.

    .venv/bin/python -m pytest bench/bench_transcode_isolate.py -s

Per mode: a fresh `rtmpq up` process; a 720p30 H.264 file (bench_transcode.make_source, 20 s)
replayed in real time over RTMP (`ffmpeg -re -c copy`); one `rtmpq sub --rendition` per rung over
MoQ, so both rungs are made for the whole publish. CPU is the user + system time of `up` and of
every process it started and reaped (its transcoder child), from wait4 on `up`: start-up,
the publish, the stop; the subscribers and the publisher are not counted. Peak RSS is the largest
of `up` and its child (ru_maxrss of each, read from /proc while the publish goes on).
"""

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bench_transcode import SECONDS, make_source

PORTS = {"rtmp": 45001, "moq": 45002, "http": 45003}  # the range this bench may use


def vm_hwm_kib(pid: int) -> int:
    try:
        return int(re.search(r"VmHWM:\s+(\d+)", Path(f"/proc/{pid}/status").read_text()).group(1))
    except (OSError, AttributeError):
        return 0


def run_mode(isolate: bool, source: Path, state: Path) -> dict:
    env = {**os.environ, "RTMPQ_TRANSCODE_ISOLATE": "true" if isolate else "false",
           "RTMPQ_TRANSCODE_RUNG_QUEUE_FRAMES": "120"}
    up = subprocess.Popen([sys.executable, "-m", "rtmpq", "up", "--ladder", "480p,360p",
                           "--rtmp", f"127.0.0.1:{PORTS['rtmp']}", "--moq", f"127.0.0.1:{PORTS['moq']}",
                           "--http", f"127.0.0.1:{PORTS['http']}", "--state-dir", str(state)],
                          env=env, stderr=subprocess.PIPE, text=True)
    for line in up.stderr:
        if "certificate sha256" in line:
            break
    children: list[int] = []  # the broadcast's transcoder child, started with its publish

    def drain() -> None:  # (a full pipe would stop the node's logging)
        for line in up.stderr:
            m = re.search(r"transcoder: child process pid (\d+)", line)
            if m:
                children.append(int(m.group(1)))

    drainer = threading.Thread(target=drain)
    drainer.start()
    subs = [subprocess.Popen([sys.executable, "-m", "rtmpq", "sub", f"moqt://127.0.0.1:{PORTS['moq']}/live/bench",
                              "--insecure", "--json", "--rendition", rung, "--seconds", str(SECONDS + 15)],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for rung in ("480p", "360p")]
    time.sleep(1.0)  # the subscribers wait for the broadcast
    publisher = subprocess.Popen(["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-re", "-i", str(source),
                                  "-c", "copy", "-f", "flv", f"rtmp://127.0.0.1:{PORTS['rtmp']}/live/bench"])
    rss = 0
    while publisher.poll() is None:
        rss = max(rss, vm_hwm_kib(up.pid) + sum(vm_hwm_kib(child) for child in children))
        time.sleep(0.5)
    rung_frames = {}
    for rung, sub in zip(("480p", "360p"), subs):
        out, _ = sub.communicate()
        rung_frames[rung] = len(re.findall(rf'"track": ?"video-{rung}"', out))
    up.send_signal(signal.SIGTERM)
    drainer.join()
    _, status, usage = os.wait4(up.pid, 0)
    up.returncode = os.waitstatus_to_exitcode(status)
    return {"cpu": usage.ru_utime + usage.ru_stime, "rss_mib": rss / 1024, "frames": rung_frames}


@pytest.mark.skipif(sys.platform != "linux", reason="wait4 and /proc")
def test_isolate_cost(tmp_path):
    source = make_source(tmp_path / "source.mp4")
    results = {}
    for isolate in (False, True):
        results["child process" if isolate else "in process"] = run_mode(isolate, source, tmp_path / "state")
    print(f"\n`rtmpq up --ladder 480p,360p`, {SECONDS} s of 720p30 replayed, both rungs watched:")
    for mode, r in results.items():
        print(f"  {mode:14s} CPU {r['cpu']:6.2f} s ({100 * r['cpu'] / SECONDS:5.1f} % of a core over the publish), "
              f"peak RSS {r['rss_mib']:6.0f} MiB, rung frames received {r['frames']}")
    base, iso = results["in process"]["cpu"], results["child process"]["cpu"]
    print(f"  isolate costs {iso - base:+.2f} s CPU ({100 * (iso - base) / base:+.0f} %)")
