"""`python bench/sink_timed.py OUT.txt <rtmpq arguments>`: rtmpq with the thread CPU time of each
publish's media sink (``Publish.on_media``: demuxer, broadcast, relay source, group cache) and of
``Broadcast.push`` within it summed, written to OUT.txt on SIGUSR2 (bench/profile_ingest.py
--time-sink). It times the per-frame path inside the running server, between its reads and
other work, to compare with bench/frame_path.py, which times the same calls back to back.
Each timed call adds two ``time.thread_time_ns`` reads (~0.44 µs each on the test machine)."""

import signal
import sys
import time

from rtmpq.cli import main
from rtmpq.media.broadcast import Broadcast
from rtmpq.nodes.ingest import Publish

out = sys.argv.pop(1)
clock = time.thread_time_ns
totals = {"sink_ns": 0, "messages": 0, "push_ns": 0, "frames": 0}
on_media, push = Publish.on_media, Broadcast.push


def timed_on_media(self, *args):
    t = clock()
    on_media(self, *args)
    totals["sink_ns"] += clock() - t
    totals["messages"] += 1


def timed_push(self, frame):
    t = clock()
    push(self, frame)
    totals["push_ns"] += clock() - t
    totals["frames"] += 1


def write(*_):
    n, f = max(totals["messages"], 1), max(totals["frames"], 1)
    with open(out, "w") as fh:
        fh.write(f"{totals['messages']} messages: sink {totals['sink_ns'] / n / 1e3:.2f} µs per message, "
                 f"of it Broadcast.push {totals['push_ns'] / f / 1e3:.2f} µs per frame ({totals['frames']} frames)\n")


Publish.on_media, Broadcast.push = timed_on_media, timed_push
signal.signal(signal.SIGUSR2, write)
sys.exit(main(sys.argv[1:]))
