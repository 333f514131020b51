"""`python bench/uvloop_rtmpq.py [OUT.prof] <rtmpq arguments>`: rtmpq on uvloop's event loop
(bench/profile_ingest.py --uvloop), with cProfile as bench/profiled.py when OUT.prof is given.
Analysis only: rtmpq runs on asyncio's own loop."""

import asyncio
import runpy
import sys
from pathlib import Path

import uvloop

asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
if sys.argv[1].endswith(".prof"):
    runpy.run_path(str(Path(__file__).parent / "profiled.py"), run_name="__main__")
else:
    from rtmpq.cli import main

    sys.exit(main(sys.argv[1:]))
