"""What a node does to its Python runtime once it is up."""

import gc

# Container objects allocated (net) between the garbage collector's young collections; CPython's
# default is 700. Each media frame makes a few (frame, cache entry, extension dict), so the
# default ran a collection every ~200 frames.
GC_YOUNG_THRESHOLD = 10_000


def settle() -> None:
    """Move everything start-up made (modules, classes, the QUIC and HTTP libraries' objects) out
    of the garbage collector's reach, and collect the young generation less often. Start-up's
    objects live as long as the process, yet each older-generation collection walked them again;
    in ``rtmpq up`` under 10 publishers collections took ~0.07 s of ~0.65 s of CPU, ~0.01 s
    frozen, and at 50 publishers ~0.17 s, ~0.05 s with the young threshold too
    (docs/benchmarks.md, ingest). Cycles are still found, over what the node makes from here on."""
    gc.collect()  # start-up's own garbage goes first, so that none of it is kept for good
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
