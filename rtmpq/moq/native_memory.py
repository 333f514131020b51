"""Give picoquic's per-stream rings back to the OS when their stream ends (glibc only).

aiopquic mallocs a send ring per stream (``stream_ring_cap``, 4 MiB) and a receive ring per
stream (``max_stream_data``, 16 MiB), and frees them when the stream or its connection goes.
glibc serves an allocation that large with its own mmap, returned to the OS by free, until the
first such free: then it raises its mmap threshold above that size ("dynamic threshold") and
every later ring comes from an arena heap instead. A freed ring in the middle of a heap keeps the
pages its stream touched resident, and with one stream per group per subscriber the rings land on
ever new addresses: RSS grew about 1 MB a minute under subscriber churn with no live object
behind it (docs/reliability.md, "Soak"). Setting the threshold explicitly turns the dynamic
adjustment off, so rings stay mmapped and each free unmaps its pages.
"""

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger("rtmpq.moq")

# Allocations of at least this many bytes get their own mmap (glibc M_MMAP_THRESHOLD). Below
# aiopquic's rings (>= 4 MiB), above media frames (keyframes rarely exceed 1 MiB), which stay
# in the heap where reuse is cheap.
MMAP_THRESHOLD = 1024 * 1024
_M_MMAP_THRESHOLD = -3  # mallopt parameter number (malloc.h)
_pinned = False


def pin_mmap_threshold(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold once per process; True if it was set here. Leaves it alone when
    the user set MALLOC_MMAP_THRESHOLD_ (glibc's own environment knob) or libc is not glibc."""
    global _pinned
    if _pinned or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    _pinned = True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc (musl, macOS): no dynamic threshold to turn off
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    if mallopt(_M_MMAP_THRESHOLD, threshold) != 1:
        log.debug("mallopt(M_MMAP_THRESHOLD, %d) refused", threshold)
        return False
    return True
