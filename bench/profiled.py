"""`python bench/profiled.py OUT.prof <rtmpq arguments>`: rtmpq with cProfile switched on by SIGUSR1
and off (stats written to OUT.prof) by SIGUSR2, so start-up is left out (bench/profile_ingest.py)."""

import cProfile
import signal
import sys

from rtmpq.cli import main

out = sys.argv.pop(1)
profiler = cProfile.Profile()
signal.signal(signal.SIGUSR1, lambda *_: profiler.enable())
signal.signal(signal.SIGUSR2, lambda *_: (profiler.disable(), profiler.dump_stats(out)))
sys.exit(main(sys.argv[1:]))
