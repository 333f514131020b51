"""What a node does to its Python runtime once it is up."""

import gc

# Container objects allocated (net) between the garbage collector's young collections; CPython's
# default is 700. Each media frame makes a few (frame, cache entry, extension dict), so the
# default ran a collection every ~200 frames.
GC_YOUNG_THRESHOLD = 10_000

_owned = False


def own_process() -> None:
    """The command line runs a node as the whole process: ``settle`` may then tune the runtime (a
    node started inside another program, a test, leaves that program's garbage collector alone)."""
    global _owned
    _owned = True


def settle() -> None:
    """Move everything start-up made (modules, classes, the QUIC and HTTP libraries' objects) out
    of the garbage collector's reach, and collect the young generation less often. Start-up's
    objects live as long as the process, yet each older-generation collection walked them again;
    in ``rtmpq up`` under 10 publishers collections took 0.06-0.09 s of ~0.7 s of CPU, ~0.01 s
    frozen; at 50 publishers 0.13-0.18 s, 0.03-0.04 s with the young threshold too
    (docs/benchmarks.md, ingest). Cycles are still found, over what the node makes from here on."""
    if not _owned:
        return
    gc.collect()  # start-up's own garbage goes first, so that none of it is kept for good
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
