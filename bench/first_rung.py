"""How long a new publish waits for its first rung: `rtmpq up --ladder 180p` ([transcode] isolate),
a `rtmpq sub --rendition 180p` waiting for the broadcast, then an ffmpeg publish (320x240 test
pattern, 2 s GoP). Prints, per run, the seconds from up's "broadcast ... is live" log line (the
RTMP publish reached the node) to the subscriber's first video-180p object. Before it, another
publish that nobody watches (live/idle) has run 3 s: the RSS of the transcoder child(ren) then is
``idle_child_rss_mib``; ``busy_child_rss_mib``, each one's at the first rung object.

    .venv/bin/python bench/first_rung.py [RUNS] [BASE_PORT]     # e.g. 3 48250
"""

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

CHILD = re.compile(r"transcoder: child process pid (\d+)")


def vm_rss_kib(pid: int) -> int:
    try:
        return int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text()).group(1))
    except (OSError, AttributeError):
        return 0


def publish(rtmp_port: int, name: str, seconds: int) -> subprocess.Popen:
    return subprocess.Popen(["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-re",
                             "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30", "-t", str(seconds),
                             "-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency", "-g", "60",
                             "-pix_fmt", "yuv420p", "-f", "flv", f"rtmp://127.0.0.1:{rtmp_port}/{name}"])


def run(base_port: int, state: str) -> dict:
    rtmp, moq, http = base_port, base_port + 1, base_port + 2
    up = subprocess.Popen([sys.executable, "-m", "rtmpq", "up", "--ladder", "180p", "--rtmp", f"127.0.0.1:{rtmp}",
                           "--moq", f"127.0.0.1:{moq}", "--http", f"127.0.0.1:{http}", "--state-dir", state,
                           "--quic-backend", "aiopquic"], stderr=subprocess.PIPE, text=True)
    seen: dict[str, float] = {}
    live: list[float] = []  # when up logged each broadcast live (its names are hashed on an open node)
    children: list[int] = []

    def read_up() -> None:
        for line in up.stderr:
            m = CHILD.search(line)
            if m:
                children.append(int(m.group(1)))
            if "certificate sha256" in line:
                seen.setdefault("listening", time.monotonic())
            if re.search(r"broadcast live/\S+ is live", line):
                live.append(time.monotonic())

    reader = threading.Thread(target=read_up, daemon=True)
    reader.start()
    while "listening" not in seen:
        time.sleep(0.05)
    idle = publish(rtmp, "live/idle", 30)
    time.sleep(3.0)  # its child (or the one child) has started and imported what it needs
    idle_rss = sum(vm_rss_kib(pid) for pid in children)
    sub = subprocess.Popen([sys.executable, "-m", "rtmpq", "sub", f"moqt://127.0.0.1:{moq}/live/first", "--insecure",
                            "--json", "--rendition", "180p", "--seconds", "20", "--quic-backend", "aiopquic"],
                           stdout=subprocess.PIPE, stderr=open(os.path.join(state, "sub.log"), "w"), text=True)
    time.sleep(1.0)  # the subscriber is connected and waits for the broadcast
    publisher = publish(rtmp, "live/first", 10)
    first = None
    for line in sub.stdout:
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if obj.get("track") == "video-180p":
            first = time.monotonic()
            break
    busy_rss = [vm_rss_kib(pid) for pid in sorted(set(children))]
    for p in (publisher, idle):
        p.terminate()
        p.wait()
    sub.terminate()
    sub.wait()
    if first is None:
        print(open(os.path.join(state, "sub.log")).read(), file=sys.stderr)
    up.send_signal(signal.SIGTERM)
    up.wait(20)
    return {"seconds": None if first is None or len(live) < 2 else round(first - live[1], 2),
            "children": len(set(children)), "idle_child_rss_mib": round(idle_rss / 1024, 1),
            "busy_child_rss_mib": [round(kib / 1024, 1) for kib in busy_rss]}


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    base_port = int(sys.argv[2]) if len(sys.argv) > 2 else 48250
    for i in range(runs):
        with tempfile.TemporaryDirectory() as state:
            print(json.dumps({"run": i + 1, **run(base_port, state)}), flush=True)


if __name__ == "__main__":
    os.environ.setdefault("RTMPQ_TRANSCODE_ISOLATE", "true")
    main()
