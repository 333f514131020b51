"""One reader for the sockets of every RTMP connection: fewer event-loop wakeups per message.

``ffmpeg -re`` and live encoders send each RTMP message when it is due, so a plain asyncio
``BufferedProtocol`` is woken about once per message, and in this VM each such wakeup (selector,
handle, transport, protocol) costs several times the read itself (docs/benchmarks.md, ingest).
Here the loop watches one private ``epoll`` holding every connection's socket (the transports'
own reading is paused); when it is readable, one callback reads every ready socket into its
session's buffer (``get_buffer``/``buffer_updated`` as asyncio would, during the handshake; after
it, the fast path: the chunk reader receives and hands the media to their sinks itself, and the
connection is called only for other messages). Once wakeups come less than
``coalesce`` seconds apart (smoothed), the loop stops watching and a timer reads every ready
socket once per ``coalesce`` seconds, so that one wakeup serves many sockets and, with a window
near a publisher's message interval, several messages of each; the first round that finds
nothing goes back to watching. So an idle server or a lone publisher is read at once, and a busy
one adds at most ``coalesce`` to a message's way in. Writes, accept
and close stay asyncio's. Where ``select.epoll`` is missing (not Linux) ``SharedReader.create``
returns None and the transports read as usual; so it does with ``coalesce`` 0.
"""

import asyncio
import logging
import select
import socket

from ..errors import RemoteProtocolError

log = logging.getLogger("rtmpq.rtmp")

# Seconds between the shared reader's rounds while reads come faster than that ([rtmp]
# read_coalesce); 0: no shared reader, each transport reads its socket as soon as it is readable
# (asyncio's own reads, as before the shared reader). Adds at most this to a
# message's ingest latency, and only on a busy server (docs/benchmarks.md: the CPU it saves).
INGEST_READ_COALESCE = 0.01
# Weight of the newest gap between wakeups in the smoothed gap that decides when to poll.
GAP_SMOOTHING = 0.2
# Ready sockets taken from the epoll per wakeup (the rest stay ready for the next one).
MAX_READY_PER_WAKEUP = 1024
# Reads of one socket per round while each fills the receive buffer (a burst larger than the
# chunk reader's free space); what is left waits for the next round, so no publisher starves others.
MAX_READS_PER_SOCKET = 8


class SharedReader:
    """Reads the sockets of many connections from one epoll the event loop watches.

    A connection handed to ``add`` must have ``get_buffer(sizehint)``, ``buffer_updated(n)``,
    ``read_eof()`` and ``read_failed(exc)``, and its transport must not read (``pause_reading``).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, coalesce: float = INGEST_READ_COALESCE) -> None:
        if coalesce < 0:
            raise ValueError("coalesce must not be negative")
        self._loop = loop
        self.coalesce = coalesce
        self._epoll = select.epoll()
        self._fd = self._epoll.fileno()
        self._conns: dict[int, tuple[object, socket.socket]] = {}  # fd -> (connection, socket)
        # fd -> (connection, chunk reader, media sinks, session) of a connection on the fast path
        self._fast: dict[int, tuple] = {}
        self._watching = False
        self._rearm: asyncio.TimerHandle | None = None  # the next polling round
        self._last_wakeup = float("-inf")
        self._gap = 1.0  # seconds between wakeups while watching, smoothed (GAP_SMOOTHING)
        self.wakeups = 0  # callbacks run (read by tests and benchmarks)
        self.reads = 0  # socket reads that returned bytes (a fast-path read may be several recvs)
        self.bytes = 0  # bytes read on the fast path (the connections count the others)

    @classmethod
    def create(cls, loop: asyncio.AbstractEventLoop, coalesce: float = INGEST_READ_COALESCE) -> "SharedReader | None":
        """A reader, or None (the caller keeps asyncio's reads) where there is no epoll, or with
        no window: read at once, one epoll inside another measured no cheaper than asyncio's own
        reads (docs/benchmarks.md)."""
        if not hasattr(select, "epoll") or not coalesce:
            return None
        return cls(loop, coalesce)

    def __len__(self) -> int:
        return len(self._conns)

    def add(self, conn, transport: asyncio.Transport) -> bool:
        """Take over the reads of ``transport`` for ``conn``; False (nothing changed) if its
        socket cannot be had (then the transport goes on reading)."""
        tsock = transport.get_extra_info("socket")
        if tsock is None or tsock.type != socket.SOCK_STREAM:
            return False
        # asyncio hands out a wrapper without recv_into; a duplicate of the descriptor is a real
        # socket on the same connection (closed by us in ``remove``, asyncio closes its own)
        sock = socket.socket(tsock.family, tsock.type, tsock.proto, fileno=socket.dup(tsock.fileno()))
        sock.setblocking(False)
        transport.pause_reading()
        fd = sock.fileno()
        self._epoll.register(fd, select.EPOLLIN)
        self._conns[fd] = (conn, sock)
        conn._reader_fd = fd
        if self._rearm is None:
            self._watch()
        return True

    def fast_path(self, conn, session) -> bool:
        """Read ``conn``'s socket on the fast path from now on, if it has one (the session's
        handshake done): one compiled call receives into the session's chunk reader, one more
        hands its media to their publishes' sinks, and the connection is called only for the
        other messages (``read_rest``) or an acknowledgement due. Whether it is on it now."""
        fd = getattr(conn, "_reader_fd", None)
        path = session.fast_path
        if fd is None or path is None:
            return False
        self._fast[fd] = (conn, *path, session)
        return True

    def remove(self, conn) -> None:
        fd = getattr(conn, "_reader_fd", None)
        if fd is None:
            return
        conn._reader_fd = None
        self._fast.pop(fd, None)
        entry = self._conns.pop(fd, None)
        if entry is None:
            return
        try:
            self._epoll.unregister(fd)
        except OSError:
            pass
        entry[1].close()
        if not self._conns:
            self._unwatch()

    def close(self) -> None:
        for conn, _ in tuple(self._conns.values()):
            self.remove(conn)
        self._unwatch()
        self._epoll.close()

    # -- the loop's side ------------------------------------------------------------------------
    # Two modes. Watching: the loop wakes us when a socket is readable (a quiet server, a lone
    # publisher: read at once). Polling: once reads come less than ``coalesce`` apart, the loop
    # stops watching and a timer reads every ready socket each ``coalesce`` seconds, until a
    # round finds nothing (back to watching). Each wakeup of this VM's event loop costs more
    # than the reads it serves (docs/benchmarks.md), and a timer that finds work saves the
    # second wakeup a re-armed watch would take.
    def _watch(self) -> None:
        if self._conns and not self._watching:
            self._loop.add_reader(self._fd, self._on_ready)
            self._watching = True

    def _unwatch(self) -> None:
        if self._rearm is not None:
            self._rearm.cancel()
            self._rearm = None
        if self._watching:
            self._loop.remove_reader(self._fd)
            self._watching = False

    def _on_ready(self) -> None:
        now = self._loop.time()
        # a smoothed gap between wakeups, so that two messages that happen to come close
        # together (a lone publisher's audio and video) do not start polling rounds that find
        # nothing: each empty round is a wakeup more than watching would have cost
        gap = min(now - self._last_wakeup, 1.0)
        self._gap += (gap - self._gap) * GAP_SMOOTHING
        self._last_wakeup = now
        self._read_ready()
        if self._gap < self.coalesce and self._watching and self._conns:
            self._loop.remove_reader(self._fd)
            self._watching = False
            self._rearm = self._loop.call_later(self.coalesce, self._on_timer)

    def _on_timer(self) -> None:
        self._rearm = None
        self._last_wakeup = self._loop.time()
        if self._read_ready() and self._conns:
            self._rearm = self._loop.call_later(self.coalesce, self._on_timer)
        else:
            self._watch()

    def _read_ready(self) -> int:
        """Read every ready socket once; how many were ready."""
        self.wakeups += 1
        conns, fast = self._conns, self._fast
        ready = self._epoll.poll(0, MAX_READY_PER_WAKEUP)
        for fd, _events in ready:
            if (path := fast.get(fd)) is not None:
                self._read_fast(fd, *path)
                continue
            entry = conns.get(fd)
            if entry is None:
                continue
            conn, sock = entry
            # a read that fills the buffer may have left more behind (a key frame larger than the
            # receive block's free space): read on now, not a round later
            for _ in range(MAX_READS_PER_SOCKET):
                try:
                    buf = conn.get_buffer(-1)
                    n = sock.recv_into(buf)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:  # reset by the peer and the like: the connection is gone
                    self.remove(conn)
                    conn.read_failed(exc)
                    break
                except (SystemExit, KeyboardInterrupt):
                    raise
                except BaseException as exc:  # a bug of this connection's: it alone is closed
                    self.remove(conn)
                    self._report(conn, exc, "get_buffer() failed")
                    break
                if not n:
                    self.remove(conn)
                    conn.read_eof()
                    break
                self.reads += 1
                try:
                    conn.buffer_updated(n)
                except (SystemExit, KeyboardInterrupt):
                    raise
                except BaseException as exc:
                    self.remove(conn)
                    self._report(conn, exc, "buffer_updated() failed")
                    break
                if n < len(buf) or conn._reader_fd != fd:  # drained, or closed by what it read
                    break
        return len(ready)

    def _read_fast(self, fd: int, conn, reader, sinks: dict, session) -> None:
        try:
            n = reader.recv_from(fd, MAX_READS_PER_SOCKET)
        except OSError as exc:  # reset by the peer and the like: the connection is gone
            self.remove(conn)
            conn.read_failed(exc)
            return
        if n <= 0:
            if n == 0:
                self.remove(conn)
                conn.read_eof()
            return
        self.reads += 1
        self.bytes += n
        try:
            try:
                message = reader.dispatch(sinks)
            except RemoteProtocolError:
                message = None  # raised again where the session handles it (read_rest)
            else:
                if message is None and reader.bytes_received < session.ack_at:
                    return  # media only, all handed on: nothing for the connection to do
            conn.read_rest(message)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:  # a bug of this connection's (or its sink's): it alone is closed
            self.remove(conn)
            self._report(conn, exc, "read_rest() failed")

    def _report(self, conn, exc: BaseException, what: str) -> None:
        # what asyncio does when a protocol callback raises: report it, close that connection
        self._loop.call_exception_handler({"message": f"Fatal error: protocol.{what}", "exception": exc,
                                           "protocol": conn})
        conn.read_failed(exc)
