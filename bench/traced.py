"""`python bench/traced.py OUT.pickle <rtmpq arguments>`: rtmpq under tracemalloc; each SIGUSR1 takes a
snapshot, and the second writes both to OUT.pickle (bench/ingest_memory.py)."""

import os
import pickle
import signal
import sys
import tracemalloc

from rtmpq.cli import main

out = sys.argv.pop(1)
snapshots = []


def snapshot(*_) -> None:
    snapshots.append(tracemalloc.take_snapshot())
    if len(snapshots) == 2:
        with open(out + ".part", "wb") as f:
            pickle.dump(snapshots, f)
        os.replace(out + ".part", out)  # whole, or not there


signal.signal(signal.SIGUSR1, snapshot)
tracemalloc.start(1)
sys.exit(main(sys.argv[1:]))
