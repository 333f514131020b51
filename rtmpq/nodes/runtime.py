"""What a node does to its Python runtime: the open-file limit at start, the event loop's
resource errors, the garbage collector once it is up."""

import gc
import logging
import resource
import time

from ..log_limit import LogLimiter

log = logging.getLogger("rtmpq.nodes")

# Descriptors a node holds besides one per connection its limits admit: listeners, epoll, the
# event loop's own, a recording per publish (counted apart), the upstream, directory, hook and
# transcoder children's pipes.
OPEN_FILES_MARGIN = 256
# A listener that cannot accept (the open-file limit reached) is said this often, at most (seconds).
ACCEPT_FAILED_LOG_INTERVAL = 60.0

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


def open_files_needed(config) -> int:
    """Descriptors the node's connection limits may hold at once: each RTMP connection and its
    recording, each HTTP connection, and OPEN_FILES_MARGIN (MoQ sessions share one UDP socket)."""
    rtmp = config.rtmp.max_connections * (2 if config.rtmp.record_dir is not None else 1)
    return rtmp + config.http.max_connections + OPEN_FILES_MARGIN


def raise_open_files(needed: int) -> None:
    """Raise the process's soft open-file limit (Debian's shells and systemd services start at 1024)
    toward ``needed``, as far as the hard limit allows, and say when that is too little: past it
    every listener's accept fails, and new players and encoders wait with no word from their side."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        new = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        if new > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            except (OSError, ValueError) as exc:
                log.warning("could not raise the open-file limit from %d: %s", soft, exc)
            else:
                log.info("open-file limit raised from %d to %d", soft, new)
                soft = new
    if soft != resource.RLIM_INFINITY and soft < needed:
        log.warning("the open-file limit is %d (hard limit %s), below the %d descriptors this node's "
                    "connection limits may hold ([rtmp] and [http] max_connections, a recording per publish): "
                    "past it new connections wait; raise it (ulimit -n, systemd LimitNOFILE=, "
                    "podman/docker --ulimit nofile=) or lower max_connections", soft,
                    "unlimited" if hard == resource.RLIM_INFINITY else hard, needed)


def quiet_accept_failures(loop) -> None:
    """asyncio logs a traceback each time a listener's accept fails for want of descriptors, and
    CPython 3.12's accept loop goes on trying after one (python/cpython#151615): thousands of
    tracebacks a second at the open-file limit. One line per listener per
    ACCEPT_FAILED_LOG_INTERVAL instead; every other error as asyncio logs it."""
    said = LogLimiter(ACCEPT_FAILED_LOG_INTERVAL)

    def handler(loop, context) -> None:
        if context.get("message") != "socket.accept() out of system resource":
            loop.default_exception_handler(context)
            return
        sock = context.get("socket")
        try:
            where = "%s:%s" % sock.getsockname()[:2]
        except (AttributeError, OSError, TypeError):
            where = "a listener"
        if said.due(where, time.monotonic()):
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            log.error("cannot accept connections on %s: %s (open-file limit %s); new connections wait until "
                      "some close (said once per %g s)", where, context.get("exception"),
                      "unlimited" if soft == resource.RLIM_INFINITY else soft, ACCEPT_FAILED_LOG_INTERVAL)

    loop.set_exception_handler(handler)
