"""A node run by the command line tunes its process's garbage collector once up; a node started
inside another program (a test, an embedding application) leaves that program's collector alone."""

import subprocess
import sys

PROBE = """
import gc
from rtmpq.nodes import runtime
before, frozen = gc.get_threshold(), gc.get_freeze_count()
{own}
runtime.settle()
print(gc.get_freeze_count() > frozen, gc.get_threshold()[0], gc.get_threshold()[1:] == before[1:])
"""


def run(own: bool) -> str:
    code = PROBE.format(own="runtime.own_process()" if own else "")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()


def test_a_node_that_owns_its_process_freezes_start_up_and_collects_the_young_generation_less_often():
    from rtmpq.nodes.runtime import GC_YOUNG_THRESHOLD

    assert run(own=True) == ["True", str(GC_YOUNG_THRESHOLD), "True"]


def test_a_node_inside_another_program_leaves_its_garbage_collector_alone():
    assert run(own=False) == ["False", "700", "True"]
