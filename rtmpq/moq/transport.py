"""The asyncio shell: QUIC connections that drive a MoqSession, on two backends.

- ``aioquic`` (pure Python, the reference): the session writes into aioquic's QuicConnection and
  we transmit. aioquic lacks what live media needs (specs/bad-inputs.md, "QUIC (aioquic) risks"),
  so this module adds a send scheduler (before each transmit the stream queue is ordered by
  urgency, then newer group first: audio before video, a new GoP before an old one; the older
  first for a subscription that asked GROUP_ORDER Ascending) and
  per-stream queued-byte accounting for the relay's send budgets. Its connections use our
  congestion controller (``congestion.py``: NewReno that random loss cannot starve) and
  flow-control windows sized for a few Mbit/s over long round trips.
- ``aiopquic`` (picoquic on its own thread): writes go into per-stream rings that may refuse
  bytes (BufferError) when full; refused writes wait here, in order, and are retried. Priorities
  map onto picoquic's stream priorities: a band per urgency, the newest group of a track first
  (for GROUP_ORDER Ascending the oldest still being sent, the newer ones in the band below).
  Unacknowledged bytes per stream are estimated from picoquic's packetized offsets and the
  connection's bytes in flight (``_PquicWriter``).

Both: a handshake (setup) timeout, an idle timeout (``[moq] idle_timeout``), and a keep-alive
(PING) on both sides; a listener caps the sessions it holds, in all and per IP address (QUIC itself
has no such cap). A client connection also takes ICMP unreachable for its peer, kept up with
nothing received, as the connection lost (``reachability.py``): a killed upstream was known in
1.6-2.1 s (aioquic) and 2.7-2.9 s (aiopquic) on loopback instead of at the idle timeout. An
attempt to connect whose server's port refuses the same way ends then (1.0-1.6 s on loopback), not
at CONNECT_TIMEOUT (``_ProbeSocket``, ``_PeerWatch``), so a reconnect loop's backoff says when to try again.
"""

import asyncio
import errno
import logging
import os
import socket
import ssl
import time
from collections import Counter, deque
from collections.abc import Callable
from urllib.parse import urlsplit

from aioquic.asyncio import QuicConnectionProtocol, connect, serve
from aioquic.quic.configuration import QuicConfiguration

from ..config import (MOQ_HANDSHAKE_TIMEOUT, MOQ_IDLE_TIMEOUT, MOQ_MAX_CONNECTIONS, MOQ_MAX_CONNECTIONS_PER_IP,
                      MOQ_MAX_PARTIAL_BYTES)
from ..errors import listener_error
from . import congestion, wire
from .native_memory import pin_mmap_threshold
from .reachability import (HANDSHAKE_UNREACHABLE_GRACE, PEER_UNREACHABLE_GRACE, SILENCE_PROBE_INTERVAL,
                           PeerReachability)
from .session import MoqSession, ReceivePool, SessionCaps
from .tls import der_fingerprint

log = logging.getLogger("rtmpq.moq")


def _stream_reset_at_debug(record: logging.LogRecord) -> bool:
    """aiopquic logs every RESET_STREAM it receives as a WARNING naming neither the peer nor the
    track ("stream 27 reset by peer: error=3"): one per group a relay drops or cuts short, which
    rtmpq reports itself (a skipped group to its reader, counted in metrics). Kept at DEBUG."""
    if not str(record.msg).startswith("stream %d reset by peer"):
        return True
    record.levelno, record.levelname = logging.DEBUG, "DEBUG"
    return logging.getLogger("rtmpq").isEnabledFor(logging.DEBUG)


logging.getLogger("aiopquic.quic.connection").addFilter(_stream_reset_at_debug)

# Seconds a client waits for a server to answer before saying it is not there.
CONNECT_TIMEOUT = 5.0
# Seconds of silence before QUIC closes a connection, where the caller gives none (a node gives
# its [moq] idle_timeout): also how long a node below takes to notice an upstream that died
# without a word and without an ICMP (a host gone), while its players wait. Both ends PING
# (below), so only a dead peer or path is silent this long.
IDLE_TIMEOUT = MOQ_IDLE_TIMEOUT
# QUIC PINGs either end of a session sends per idle timeout: a MoQ session is quiet while its
# broadcast waits for a publisher (the grace period, which may be longer than the idle timeout)
# or before it is live, and must not be closed for that; three, so one or two lost PINGs do not.
KEEPALIVES_PER_IDLE_TIMEOUT = 3
DEFAULT_MOQ_PORT = 4443
# aiopquic: how often (seconds) the connection's bytes in flight are read for the budgets.
PATH_POLL_INTERVAL = 0.01
# aiopquic: bytes of each stream's send ring (aiopquic's default is 4 MiB). The ring only holds
# what picoquic has not yet put into packets; each stream's ring is allocated whole and the
# pages it touches stay resident while the stream lives, so with a GoP per stream a 4 MiB ring
# cost a subscriber its whole group in flight (~0.8 MB of a 3 Mbit/s stream per group). A write
# larger than the ring is cut into ring-sized pieces (cut once per object, shared by every
# subscriber); a full ring refuses the rest, which waits here and is retried.
PQUIC_STREAM_RING_BYTES = 64 * 1024
# Seconds a starting node waits for picoquic's thread to hold its UDP port before it fails.
PQUIC_BIND_TIMEOUT = 2.0
# aiopquic: seconds between retries of writes a full ring refused; doubled while a retry takes
# nothing (a subscriber on a slow path), up to the second figure.
PQUIC_RETRY_MIN = 0.002
PQUIC_RETRY_MAX = 0.016
# Longest a reset waits for its stream's first bytes (the subgroup header) to be acknowledged
# (seconds): see _AioquicWriter and _PquicWriter.reset_stream. A round trip, a queue at a slow
# link (0.3 s at 1 Mbit/s in the soak, where 0.5 s ran out) and a resend or two; a held stream
# costs a few bytes.
HELD_RESET_SECONDS = 2.0
# aioquic: congestion controller (``congestion.NAME``: "live"; aioquic's own: "reno", "cubic").
AIOQUIC_CONGESTION_CONTROL = congestion.NAME
# aioquic: flow-control credit granted to the peer at the start, per connection and per stream
# (aioquic doubles each once half is used). aioquic's 1 MiB ran out at 750 ms RTT before the
# doubled credit arrived (3 Mbit/s with the RTT inflated to 2 s by a CPU-starved receiver). It
# bounds what a peer can make us buffer unread or out of order.
AIOQUIC_MAX_DATA = 4 * 1024 * 1024
AIOQUIC_MAX_STREAM_DATA = 2 * 1024 * 1024
# aioquic: doublings of the probe timeout (PTO) while nothing is acknowledged, at most (picoquic's
# too: 2, i.e. 4x). RFC 9002 doubles without end: after a 5 s outage aioquic's next probe came
# up to 4.5 s after the path was back (a blackhole profile's share of objects then depends on
# where the outage ends in that schedule); capped, the sender learns the path is back within
# 4 PTOs (~0.5 s at 50 ms RTT).
AIOQUIC_MAX_PTO_DOUBLINGS = 2
# aioquic: UDP socket buffers asked for (the kernel caps them at net.core.rmem_max / wmem_max).
# Linux's default ~208 kB holds ~90 full packets: 150 ms of a 5 Mbit/s burst arriving while the
# event loop is busy elsewhere, after which the kernel drops them (seen at 750 ms RTT).
UDP_BUFFER_BYTES = 4 * 1024 * 1024
# Only a stream holding no more than this (bytes: a subgroup header, no object) is held so:
# resetting a stream with data sooner frees what it holds, as a delivery timeout wants.
HELD_RESET_MAX_BYTES = 64
# picoquic priority of a stream whose reset waits for its header: ahead of all media (a few bytes).
HELD_RESET_PRIORITY = 0
# aiopquic: picoquic priority a stream is given just before it is reset. picoquic sends
# RESET_STREAM in the stream's turn (streams by priority), and resends the stream's lost data
# until it has: an older group, behind a newer one that always has data on a slow path, would
# wait. (Alone it did not change the 30 % loss runs: what kept data coming for seconds after a
# reset there was a FIN already sent, see fanout.py.)
RESET_PRIORITY = 0
# aiopquic: a path that lost at least this share of the packets sent in the last
# LOSS_RATE_WINDOW seconds (and at least LOSS_RATE_MIN_PACKETS sent) is lossy: the per-stream
# acknowledgement estimate is then in doubt (``ack_doubt``). At 30 % loss the estimate called
# audio groups delivered 1-3 s before their objects reached the subscriber (a copy lost again and
# again, while newer groups' bytes were acknowledged); the 2-5 % profiles pass with it.
# Largest DATAGRAM frame (bytes) a session takes from its peer (the QUIC transport parameter
# max_datagram_frame_size, RFC 9221): OBJECT_DATAGRAMs (MoQT objects of Forwarding Preference
# Datagram) come in them. Both backends advertise it, as clients and as servers.
MAX_DATAGRAM_FRAME_SIZE = 65536
# Bytes of OBJECT_DATAGRAMs one connection queues for sending, at most (aiopquic: its datagram
# ring; aioquic: its pending datagrams). A datagram that finds the queue full is dropped (and
# counted): queued longer it would be late anyway, and draft 16 lets a datagram object be lost.
DATAGRAM_QUEUE_BYTES = 64 * 1024
# aioquic: bytes of a 1-RTT packet that are not a DATAGRAM frame's payload, at most: the short
# header (1 + a connection ID of up to 20 bytes + the 2-byte packet number aioquic writes), the
# AEAD tag (16) and the frame's type and length (1 + 2). aioquic sends packets of
# max_datagram_size (1200) and keeps a datagram too big for one queued for ever, in front of
# every later one, so a larger one is refused before it is queued.
AIOQUIC_DATAGRAM_OVERHEAD = 1 + 20 + 2 + 16 + 3
LOSSY_PATH_LOSS_RATE = 0.10
LOSS_RATE_WINDOW = 1.0
LOSS_RATE_MIN_PACKETS = 20


class _MoqConnectionMixin:
    """One QUIC connection with its MoQ session; ``handler`` receives the session's events."""

    backend = "?"

    def _init_moq(self, quic, is_client: bool, path: str, token: str | None = None, authority: str = "",
                  caps: SessionCaps | None = None) -> None:
        self.session = MoqSession(quic, is_client=is_client, path=path, token=token, authority=authority, caps=caps)
        self.handler: Callable[["MoqConnection", object], None] | None = None
        self.ready = asyncio.get_running_loop().create_future()
        # nobody awaits a server session's setup: mark its failure seen (no "never retrieved" noise)
        self.ready.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._priorities: dict[int, tuple[int, int, int]] = {}
        self._ascending: set[int] = set()  # streams of subscriptions asking GROUP_ORDER Ascending
        self._waiting: dict[int, list[int]] = {}  # stream -> the streams it is sent after (wait_for)
        self._flush_scheduled = False
        self._close_told = False  # the handler heard SessionClosed (it hears it exactly once)
        # a listener's count of what it refused or closed, by reason (metrics); None: not counted
        self.errors: Counter | None = None

    def close_session(self, code: int, reason: str = "") -> None:
        """Close the MoQ session from this side. The handler hears SessionClosed at once, as for a
        close by the peer (the QUIC close that follows is not reported again)."""
        if self.session.closed:
            return
        self.session.close(code, reason)
        self.flush()
        self._tell_closed(int(code), reason)

    def _tell_closed(self, code: int, reason: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"MoQ session closed: {reason or code}"))
        if not self._close_told:
            self._close_told = True
            if self.handler is not None:
                self.handler(self, ev_closed(code, reason))

    # -- sending --------------------------------------------------------------------------------
    def set_priority(self, stream_id: int, urgency: int, group: int, subgroup: int = 0,
                     ascending: bool = False) -> None:
        # within a group, the lowest Subgroup ID first (MoQT d16, "Scheduling Algorithm"); the
        # newest group first, or the oldest for a subscription that asked GROUP_ORDER Ascending
        self._priorities[stream_id] = (urgency, group if ascending else -group, subgroup)
        if ascending:
            self._ascending.add(stream_id)

    def step_back(self, stream_id: int, urgency: int) -> None:
        """Another group of the same subscription goes first (aioquic: the queue order already says so)."""

    def step_forward(self, stream_id: int, urgency: int) -> None:
        """The streams this one waited for are sent (aioquic: ``wait_for`` lets it go by itself)."""

    def wait_for(self, stream_id: int, before: list[int], urgency: int) -> None:
        """Send nothing of ``stream_id`` until every byte written on the streams ``before`` is
        sent (GROUP_ORDER Ascending: a newer group behind an older one). aioquic serves its streams
        round robin, a packet each, whatever their order: the stream is held (aioquic's own
        ``is_blocked``, which its loop honours) and let go at a transmit once they are sent. One
        aioquic blocks already (the peer's stream limit) is left to aioquic: sent as it comes."""
        stream = self._quic._streams.get(stream_id)
        if stream is None or (stream.is_blocked and stream_id not in self._waiting):
            return
        stream.is_blocked = True
        self._waiting.setdefault(stream_id, []).extend(before)

    def _let_go_waiting(self) -> None:
        streams = self._quic._streams
        for stream_id, before in list(self._waiting.items()):
            stream = streams.get(stream_id)
            if stream is not None and any(sid in streams and not streams[sid].sender.buffer_is_empty
                                          for sid in before):
                continue
            del self._waiting[stream_id]
            if stream is not None:
                stream.is_blocked = False

    def forget_stream(self, stream_id: int) -> None:
        """The stream's last write is made. A Descending stream's tail, unsent, goes behind every
        stream with a priority (as ever); an Ascending one keeps its place ahead of the newer groups
        until aioquic discards it (all of it acknowledged)."""
        if stream_id not in self._ascending:
            self._priorities.pop(stream_id, None)
            return
        streams = self._quic._streams
        for gone in [sid for sid in self._ascending if sid not in streams]:
            self._ascending.discard(gone)
            self._priorities.pop(gone, None)

    def flush(self) -> None:
        """Send soon: many session calls in one loop iteration become one transmit."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        queue = self._quic._streams_queue  # aioquic serves this list round-robin: order it first
        if self._priorities and len(queue) > 1:
            control = self.session.control_stream_id
            queue.sort(key=lambda s: (-1, 0, 0) if s.stream_id == control
                       else self._priorities.get(s.stream_id, (255, 0, 0)))
        self.transmit()

    def queued_bytes(self, stream_id: int) -> int:
        """Bytes written on a stream and not yet acknowledged by the peer."""
        stream = self._quic._streams.get(stream_id)
        return len(stream.sender._buffer) if stream is not None else 0

    def total_queued_bytes(self) -> int:
        return sum(len(s.sender._buffer) for s in self._quic._streams.values())

    def delivered(self, stream_id: int) -> bool:
        """Every byte written on the stream (and its FIN) is acknowledged, by QUIC's own word."""
        return self.queued_bytes(stream_id) == 0  # aioquic's count is exact

    def unsent_bytes(self, stream_id: int) -> int:
        """Bytes written on a stream and not yet sent even once."""
        stream = self._quic._streams.get(stream_id)
        return stream.sender._buffer_stop - stream.sender.highest_offset if stream is not None else 0

    def ack_allowance(self) -> float:
        """Seconds an acknowledgement takes to come back: the smoothed RTT (the relay's delivery
        budget gives an object sent in time this long more to be acknowledged)."""
        return self._quic._loss._rtt_smoothed

    def ack_doubt(self) -> bool:
        """Whether ``queued_bytes`` cannot be trusted now (aioquic's count is exact: never)."""
        return False

    def announced(self, stream_id: int) -> bool:
        """The stream's first bytes (a subgroup header) are acknowledged, or nothing can be told
        any more: a reset of the stream now names its group at the receiver."""
        stream = self._quic._streams.get(stream_id)
        return self.session.closed or stream is None or stream.sender._buffer_start > 0

    # -- receiving ------------------------------------------------------------------------------
    def quic_event_received(self, event) -> None:
        self._dispatch(self.session.handle_event(event))

    def expire_partial_objects(self, now: float, timeout: float) -> None:
        """Stop the incoming data streams whose object stayed incomplete over ``timeout`` seconds."""
        self._dispatch(self.session.expire_partial_objects(now, timeout))

    def _dispatch(self, moq_events: list) -> None:
        """The session's events to the handler, then the listener's byte budget, then send."""
        for moq_event in moq_events:
            if isinstance(moq_event, ev_setup) and not self.ready.done():
                self.ready.set_result(moq_event)
            if isinstance(moq_event, ev_closed):
                if not self.ready.done():
                    self.ready.set_exception(ConnectionError(f"MoQ session closed: {moq_event.reason or moq_event.code}"))
                if self._close_told:
                    continue
                self._close_told = True
                if moq_event.by_us and self.errors is not None:
                    self.errors["protocol_error"] += 1
            if self.handler is not None:
                self.handler(self, moq_event)
        if self.session.closed and not self._close_told:
            # a handler closed the session itself (session.close): everyone else forgets it too
            self._tell_closed(0, "closed by this side")
        pool = self.session.pool
        if pool is not None and pool.held > pool.limit and pool.over is not None:
            pool.over()
        self.flush()

    def connection_lost(self, exc) -> None:
        super().connection_lost(exc)
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("QUIC connection lost"))
        self.session.closed = True
        self.session.release_buffers()
        self._tell_closed(0, "connection lost")

    # -- a client's peer gone without a word (reachability.py) ----------------------------------
    def watch_peer(self, grace: float = PEER_UNREACHABLE_GRACE) -> None:
        """Check every SILENCE_PROBE_INTERVAL whether the peer is unreachable (client
        connections, once set up: the backend reports refusals to ``peer_refused``)."""
        self._peer_watch = _PeerWatch(grace, self._received_count, self._probe_peer, self._peer_gone,
                                      closed=lambda: self.session.closed)
        self._peer_watch.check_later()

    def stop_watching_peer(self) -> None:
        watch = getattr(self, "_peer_watch", None)
        if watch is not None:
            watch.close()

    def peer_refused(self, exc: OSError | None = None) -> None:
        """A packet to the peer drew an ICMP error (ECONNREFUSED: nothing listens on its port)."""
        watch = getattr(self, "_peer_watch", None)
        if watch is not None:
            watch.refused()

    def _peer_gone(self, refused_for: float) -> None:
        log.warning("%s: peer unreachable (ICMP: nothing listens on its port) for %.1f s with nothing received "
                    "from it: connection lost", self.peer, refused_for)
        self.stop_watching_peer()
        self.close_session(wire.SessionError.INTERNAL_ERROR, "peer unreachable")

    def _received_count(self) -> int:
        """Something that grows with each packet received from the peer."""
        raise NotImplementedError

    def _probe_peer(self) -> None:
        """Send the peer something that a live peer answers, a closed port refuses."""
        raise NotImplementedError

    @property
    def peer(self) -> str:
        paths = getattr(self._quic, "_network_paths", None)  # a client's UDP socket has no peername
        addr = paths[0].addr if paths else None
        return f"{addr[0]}:{addr[1]}" if addr else "?"


from .events import SessionClosed as ev_closed  # noqa: E402
from .events import SetupComplete as ev_setup  # noqa: E402


class _AioquicWriter:
    """aioquic's QuicConnection as the session uses it, with resets of a stream that holds only
    its subgroup header held until that header is acknowledged: aioquic neither sends nor resends
    a reset stream's data, and a header written just before its reset (MoQT's "there is an unsent
    Subgroup") would never reach the receiver (raw QUIC has no RESET_STREAM_AT here)."""

    def __init__(self, quic) -> None:
        self.quic = quic
        self.get_next_available_stream_id = quic.get_next_available_stream_id
        self.send_stream_data = quic.send_stream_data
        self.stop_stream = quic.stop_stream
        self.close = quic.close
        self.held_resets: dict[int, tuple[int, float]] = {}  # stream id -> (code, give up at)

    def datagram_room(self) -> int:
        """The largest datagram payload this connection sends (0: the peer takes none)."""
        remote = self.quic._remote_max_datagram_frame_size
        if not remote:
            return 0
        return max(min(remote - 3, self.quic._max_datagram_size - AIOQUIC_DATAGRAM_OVERHEAD), 0)

    def send_datagram_frame(self, data: bytes) -> bool:
        """Queue a datagram; False (dropped) when DATAGRAM_QUEUE_BYTES are queued already."""
        pending = self.quic._datagrams_pending
        if sum(map(len, pending)) + len(data) > DATAGRAM_QUEUE_BYTES:
            return False
        self.quic.send_datagram_frame(bytes(data))
        return True

    def reset_stream(self, stream_id: int, error_code: int) -> None:
        stream = self.quic._streams.get(stream_id)
        if stream is not None and not stream.sender._buffer_start and 0 < stream.sender._buffer_stop <= HELD_RESET_MAX_BYTES:
            self.held_resets[stream_id] = (error_code, time.monotonic() + HELD_RESET_SECONDS)
            return
        self.quic.reset_stream(stream_id, error_code)

    def release(self) -> bool:
        """Reset the streams whose first bytes are acknowledged; True when some wait."""
        now = time.monotonic()
        for stream_id, (code, give_up) in list(self.held_resets.items()):
            stream = self.quic._streams.get(stream_id)
            if stream is None or stream.sender._buffer_start or now > give_up:
                del self.held_resets[stream_id]
                if stream is not None:
                    self.quic.reset_stream(stream_id, code)
        return bool(self.held_resets)


class MoqConnection(_MoqConnectionMixin, QuicConnectionProtocol):
    """The aioquic backend."""

    backend = "aioquic"

    def __init__(self, *args, is_client: bool = False, path: str = "", token: str | None = None,
                 authority: str = "", caps: SessionCaps | None = None, **kwargs) -> None:
        QuicConnectionProtocol.__init__(self, *args, **kwargs)
        self._writer = _AioquicWriter(self._quic)
        self._init_moq(self._writer, is_client, path, token, authority, caps)
        _cap_pto_backoff(self._quic._loss)
        _slide_receive_windows(self._quic)
        # aioquic sends no keep-alive of its own (aiopquic: keep_alive_interval)
        self._keepalive_interval = self._quic._configuration.idle_timeout / KEEPALIVES_PER_IDLE_TIMEOUT
        self._keepalive = self._loop.call_later(self._keepalive_interval, self._keep_alive)
        self._datagrams_received = 0

    def _keep_alive(self) -> None:
        if self.session.closed:
            return
        self._quic.send_ping(0)
        self.transmit()
        self._keepalive = self._loop.call_later(self._keepalive_interval, self._keep_alive)

    def datagram_received(self, data, addr) -> None:
        self._datagrams_received += 1
        super().datagram_received(data, addr)

    def error_received(self, exc: OSError) -> None:
        # a connected client socket (connect_moq) hears the ICMP errors its packets drew
        if isinstance(exc, ConnectionRefusedError):
            self.peer_refused(exc)

    def _received_count(self) -> int:
        return self._datagrams_received

    def _probe_peer(self) -> None:
        self._quic.send_ping(1)  # a live peer acknowledges it within a round trip
        self.transmit()

    def connect_socket(self) -> None:
        """Connect the client's UDP socket to its peer, so that the kernel reports the ICMP errors
        its packets draw (an unconnected socket hears none) to ``error_received``."""
        addr = self._quic._network_paths[0].addr
        with socket.socket(fileno=os.dup(self._transport.get_extra_info("socket").fileno())) as sock:
            sock.connect(addr)  # (a duplicate descriptor: the same socket)

    def connection_lost(self, exc) -> None:
        self._keepalive.cancel()
        self.stop_watching_peer()
        super().connection_lost(exc)

    def transmit(self) -> None:
        if self._waiting:  # (every transmit: an acknowledgement's, a timer's, ours)
            self._let_go_waiting()
        super().transmit()

    def _flush(self) -> None:
        super()._flush()
        if self._writer.held_resets:
            waiting = self._writer.release()
            self.transmit()
            if waiting:
                asyncio.get_running_loop().call_later(0.002, self.flush)

    async def wait_connected(self) -> None:
        # aioquic's own, with its waiter's failure marked seen: a connect that timed out left it
        # behind, and its ConnectionError was logged as "never retrieved" when the close came
        if not self._connected:
            self._connected_waiter = self._loop.create_future()
            self._connected_waiter.add_done_callback(lambda f: f.cancelled() or f.exception())
            await asyncio.shield(self._connected_waiter)


def _slide_receive_windows(quic) -> None:
    """aioquic doubles a receive limit (MAX_DATA, MAX_STREAM_DATA) whenever half of it has been
    *received*, gaps included, and zero-fills gaps: a peer sending one byte at the end of each
    window makes us allocate without end (specs/bad-inputs.md, QUIC; aioquic#589). Here the limits
    slide with the bytes delivered to the session instead, so bytes held for a stream stay within
    its window (AIOQUIC_MAX_STREAM_DATA) and for the connection within AIOQUIC_MAX_DATA."""
    write_connection_limits, write_stream_limits = quic._write_connection_limits, quic._write_stream_limits
    window, stream_window = quic._configuration.max_data, quic._configuration.max_stream_data

    def connection_limits(builder, space) -> None:
        limit = quic._local_max_data
        used = limit.used
        if used + window // 2 > limit.value:  # (delivered <= used: nothing to raise otherwise)
            undelivered = sum(s.receiver.highest_offset - s.receiver._buffer_start for s in quic._streams.values())
            limit.value = max(limit.value, used - undelivered + window)
        limit.used = 0  # aioquic's own doubling (used * 2 > value) off for this call
        try:
            write_connection_limits(builder, space)
        finally:
            limit.used = used

    def stream_limits(builder, space, stream) -> None:
        receiver = stream.receiver
        if stream.max_stream_data_local and receiver._buffer_start + stream_window // 2 > stream.max_stream_data_local:
            stream.max_stream_data_local = receiver._buffer_start + stream_window
        highest = receiver.highest_offset
        receiver.highest_offset = 0  # aioquic's own doubling (highest * 2 > limit) off for this call
        try:
            write_stream_limits(builder, space, stream)
        finally:
            receiver.highest_offset = highest

    quic._write_connection_limits, quic._write_stream_limits = connection_limits, stream_limits


def _cap_pto_backoff(loss) -> None:
    """Keep aioquic's PTO backoff to AIOQUIC_MAX_PTO_DOUBLINGS (see there)."""
    timeout = loss.on_loss_detection_timeout

    def on_loss_detection_timeout(*, now: float) -> None:
        timeout(now=now)
        loss._pto_count = min(loss._pto_count, AIOQUIC_MAX_PTO_DOUBLINGS)

    loss.on_loss_detection_timeout = on_loss_detection_timeout


_last_pieces: list = [None, ()]  # data, its pieces


def _ring_pieces(data) -> tuple[bytes, ...]:
    """``data`` cut into pieces no larger than a stream's ring. A relay writes the same object to
    every subscriber in a row: the last cut is kept (by identity) and reused, so the pieces are
    made once per object, not once per subscriber."""
    if _last_pieces[0] is data:
        return _last_pieces[1]
    view = memoryview(data)
    pieces = tuple(bytes(view[i:i + PQUIC_STREAM_RING_BYTES]) for i in range(0, len(view), PQUIC_STREAM_RING_BYTES))
    _last_pieces[0], _last_pieces[1] = data, pieces
    return pieces


class _PquicWriter:
    """aiopquic's QuicConnection, with refused writes kept in order and retried (never dropped).

    Also estimates what aioquic tells exactly: the bytes of a stream not yet acknowledged.
    picoquic reports per stream only how far it has put the stream into packets, and per
    connection how many bytes it sent and how many are still in flight. So each time a stream is
    seen further packetized, the connection's bytes-sent count is noted against that offset; the
    offset counts as acknowledged once the connection's bytes out of flight (and not lost in the
    last two round trips, whose copies are still on their way) reach that count. The connection
    figures come from a snapshot picoquic's thread refreshes when asked, so the count noted is one
    read after the packetizing was seen (a stale, smaller count would call bytes acknowledged that
    are still in flight): this errs late, by a poll or two, never early. Offsets are the stream's
    own, from its first byte, so a stream's state is kept until picoquic retires it (or it is
    reset), however long it sits drained between objects.
    """

    max_write = PQUIC_STREAM_RING_BYTES  # the session cuts larger objects while encoding them

    def __init__(self, quic) -> None:
        self.quic = quic
        self.pending: dict[int, list[tuple[bytes, bool]]] = {}
        self.streams: set[int] = set()
        self.written: dict[int, int] = {}  # bytes picoquic accepted per stream
        self._marks: dict[int, deque] = {}  # stream -> [offset packetized, read seen at, connection bytes sent]
        self._acked: dict[int, int] = {}  # stream -> offset estimated acknowledged
        self._progress = (0.0, 0, 0, 0)  # when read, read count, connection bytes sent, bytes acknowledged
        # resets held until the stream's first bytes are acknowledged: stream id -> (code, give up at)
        self.held_resets: dict[int, tuple[int, float]] = {}
        self._first_write: dict[int, int] = {}  # stream -> length of its first write (a header)
        self.waits: dict[int, list[int]] = {}  # stream -> the streams whose waiting writes go first (wait_for)
        self._losses: deque = deque()  # (when read, connection bytes declared lost so far)
        self._loss_rate: deque = deque()  # (when read, packets sent, packets lost): LOSS_RATE_WINDOW
        self._last_queued: dict[int, tuple[tuple, int]] = {}  # stream -> ((read, written, waiting), queued)
        self._last_total = (-1, 0, 0)  # (read count, total_queued, _bytes_in) when last counted
        self._bytes_in = 0  # bytes handed to send_stream_data (taken or waiting), ever
        self._changes = 0  # writes taken or refused, and streams forgotten (retry's progress)

    def get_next_available_stream_id(self, is_unidirectional: bool = False) -> int:
        return self.quic.get_next_available_stream_id(is_unidirectional)

    @property
    def closed(self) -> bool:
        """The connection is closed or closing (either side): nothing written now would be read."""
        return self.quic._closed

    @property
    def open(self) -> bool:
        """picoquic has the connection: calls that need it do not raise ("cnx not open")."""
        return bool(self.quic._cnx_ptr) and not self.quic._closed

    def send_stream_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        if self.quic._closed:
            return  # nobody will read it: a subscriber that left costs nothing more
        if stream_id not in self.streams:
            self._first_write[stream_id] = len(data)
        self.streams.add(stream_id)
        if len(data) > PQUIC_STREAM_RING_BYTES:
            *pieces, last = _ring_pieces(data)
            for piece in pieces:
                self.send_stream_data(stream_id, piece)
            data = last
        elif type(data) is not bytes:
            data = bytes(data)
        self._changes += 1
        self._bytes_in += len(data)
        queue = self.pending.get(stream_id)
        if queue:
            queue.append((data, end_stream))
            return
        if self.waits and self._held(stream_id):
            self.pending[stream_id] = [(data, end_stream)]
            return
        try:
            self.quic.send_stream_data(stream_id, data, end_stream)
            self.written[stream_id] = self.written.get(stream_id, 0) + len(data)
        except BufferError:
            self.pending[stream_id] = [(data, end_stream)]

    def retry(self) -> bool:
        """Push what was refused, and the resets held; True when something is still waiting."""
        if not self.pending and not self.held_resets:
            return False
        if self.closed:
            self.pending.clear()
            self.held_resets.clear()
            return False
        for stream_id, queue in list(self.pending.items()):
            if self.waits and self._held(stream_id):
                continue
            while queue:
                data, end = queue[0]
                try:
                    self.quic.send_stream_data(stream_id, data, end)
                except BufferError:
                    break
                self.written[stream_id] = self.written.get(stream_id, 0) + len(data)
                self._changes += 1
                queue.pop(0)
            if not queue:
                del self.pending[stream_id]
        now = time.monotonic()
        for stream_id, (code, give_up) in list(self.held_resets.items()):
            if stream_id not in self.pending and (self.announced(stream_id) or now > give_up):
                del self.held_resets[stream_id]
                try:
                    self._reset_now(stream_id, code)
                except Exception:  # noqa: BLE001 - the connection went away meanwhile: nothing to reset
                    pass
        return bool(self.pending or self.held_resets)

    def reset_stream(self, stream_id: int, error_code: int) -> None:
        """Reset a stream; one that holds only its subgroup header (MoQT's "there is an unsent
        Subgroup") is reset once the header is acknowledged, and sent first meanwhile: picoquic
        neither sends nor resends a reset stream's data, so the receiver would learn nothing
        (raw QUIC has no RESET_STREAM_AT here)."""
        if 0 < self.written.get(stream_id, 0) + sum(len(d) for d, _ in self.pending.get(stream_id, ())) <= HELD_RESET_MAX_BYTES \
                and (stream_id in self.quic._stream_ctxs or stream_id in self.pending) and not self.announced(stream_id):
            self.held_resets[stream_id] = (error_code, time.monotonic() + HELD_RESET_SECONDS)
            if self.open:
                self.quic.set_stream_priority(stream_id, HELD_RESET_PRIORITY)
            return
        self._reset_now(stream_id, error_code)

    def announced(self, stream_id: int) -> bool:
        """The stream's first write (a subgroup header) is acknowledged (estimated, late rather
        than early: see the class), or nothing can be told any more."""
        if self.closed or stream_id not in self._first_write:
            return True
        if stream_id in self.pending and stream_id not in self.written:
            return False
        self.queued(stream_id)  # moves the estimate on
        if stream_id not in self.written:  # picoquic retired it: every byte acknowledged
            return True
        return self._acked.get(stream_id, 0) >= self._first_write[stream_id]

    def _reset_now(self, stream_id: int, error_code: int) -> None:
        retired = stream_id in self.written and stream_id not in self.quic._stream_ctxs
        self._forget(stream_id)
        if not retired and not self.closed:  # retired: every byte was delivered, nothing to reset
            if self.open:
                self.quic.set_stream_priority(stream_id, RESET_PRIORITY)  # its reset goes out first
            self.quic.reset_stream(stream_id, error_code)

    def _forget(self, stream_id: int) -> None:
        self._changes += 1
        self.pending.pop(stream_id, None)
        self.streams.discard(stream_id)
        self.written.pop(stream_id, None)
        self._marks.pop(stream_id, None)
        self._acked.pop(stream_id, None)
        self._last_queued.pop(stream_id, None)
        self._first_write.pop(stream_id, None)
        self.waits.pop(stream_id, None)

    def wait_for(self, stream_id: int, before: list[int]) -> None:
        """Keep ``stream_id``'s writes here while any of ``before`` has writes waiting here:
        picoquic sends whatever a ring holds when the rings above it run dry, so a newer group
        handed over while an older one still waits for ring room would go between its pieces."""
        self.waits.setdefault(stream_id, []).extend(before)

    def _held(self, stream_id: int) -> bool:
        before = self.waits.get(stream_id)
        if before is None:
            return False
        if any(sid in self.pending for sid in before):
            return True
        del self.waits[stream_id]
        return False

    def stop_stream(self, stream_id: int, error_code: int) -> None:
        if not self.closed:
            self.quic.stop_stream(stream_id, error_code)

    def datagram_room(self) -> int:
        """The largest datagram payload this connection sends (0: the peer takes none, or the
        handshake is not done): picoquic's own ceiling (at most 1200 bytes, what it sends
        without looking at the path's MTU), less the frame's type and length where the peer's
        max_datagram_frame_size is what bounds it (RFC 9221 counts the whole frame)."""
        if not self.open:
            return 0
        ceiling = self.quic.max_datagram_payload()
        remote = (self.quic.peer_transport_parameters or {}).get("max_datagram_frame_size", 0)
        return max(min(ceiling, remote - 3), 0) if ceiling else 0

    def send_datagram_frame(self, data: bytes) -> bool:
        """Into picoquic's datagram ring; False (dropped) when the ring is full."""
        if self.quic._closed:
            return True  # nobody will read it (as send_stream_data)
        try:
            return bool(self.quic.send_datagram_frame(data))
        except (ConnectionError, ValueError):
            return False

    def close(self, error_code: int = 0, reason_phrase: str = "") -> None:
        self.quic.close(error_code=error_code, reason_phrase=reason_phrase)

    def _connection_progress(self) -> tuple[int, int, int]:
        """(read count, bytes sent, bytes acknowledged) of the connection; a new read at most
        every PATH_POLL_INTERVAL (each read also asks picoquic's thread for a fresh snapshot)."""
        now = time.monotonic()
        read_at, reads, sent, done = self._progress
        if now - read_at > PATH_POLL_INTERVAL:
            q = self.quic.path_quality()
            if q:
                reads, sent = reads + 1, q["bytes_sent"]
                # Bytes that left flight were acknowledged, or declared lost and sent again: a
                # loss counts as not yet delivered for two round trips after it is declared (its
                # copy's flight). picoquic counts losses in packets.
                lost = q["lost"] * sent // max(q["sent"], 1)
                history = self._losses
                history.append((now, lost))
                window = max(2 * q["rtt"] / 1e6, 4 * PATH_POLL_INTERVAL)
                while len(history) > 1 and now - history[1][0] > window:
                    history.popleft()
                done = sent - q["bytes_in_transit"] - (lost - history[0][1])
                self._progress = (now, reads, sent, done)
                rate = self._loss_rate
                rate.append((now, q["sent"], q["lost"]))
                while len(rate) > 1 and now - rate[1][0] > LOSS_RATE_WINDOW:
                    rate.popleft()
        return reads, sent, done

    @property
    def lossy(self) -> bool:
        """The path lost at least LOSSY_PATH_LOSS_RATE of the packets sent lately (see there)."""
        self._connection_progress()
        if len(self._loss_rate) < 2:
            return False
        (_, sent0, lost0), (_, sent1, lost1) = self._loss_rate[0], self._loss_rate[-1]
        sent = sent1 - sent0
        return sent >= LOSS_RATE_MIN_PACKETS and (lost1 - lost0) >= LOSSY_PATH_LOSS_RATE * sent

    def queued(self, stream_id: int) -> int:
        """Bytes of the stream not yet acknowledged (estimated; see the class).

        The estimate moves only with a new read of the connection (or a write): between two
        reads the last answer is given again without asking picoquic (the budgets ask for every
        group of every subscriber each check; a packetizing seen a read later errs late)."""
        return self._queued_at(stream_id, self._connection_progress())

    def _queued_at(self, stream_id: int, progress: tuple[int, int, int]) -> int:
        written = self.written.get(stream_id, 0)
        queue = self.pending.get(stream_id)
        key = (progress[0], written, len(queue) if queue else 0)
        last = self._last_queued.get(stream_id)
        if last is not None and last[0] == key:
            return last[1]
        value = self._queued(stream_id, written, queue, progress)
        if stream_id in self.streams:
            self._last_queued[stream_id] = (key, value)
        return value

    def total_queued(self) -> int:
        """``queued`` summed over the connection's streams, counted once per read of the
        connection (every track of every subscriber asks, each check); between two reads, that
        count plus the bytes written since (errs high: late, never early)."""
        progress = self._connection_progress()
        last_reads, last_total, last_in = self._last_total
        if progress[0] == last_reads:
            return last_total + self._bytes_in - last_in
        total = 0
        for stream_id in list(self.streams):
            total += self._queued_at(stream_id, progress)
        self._last_total = (progress[0], total, self._bytes_in)
        return total

    def _queued(self, stream_id: int, written: int, queue, progress: tuple[int, int, int]) -> int:
        waiting = sum(len(d) for d, _ in queue) if queue else 0
        if not written:
            return waiting
        if stream_id not in self.quic._stream_ctxs:  # picoquic retired the stream: all of it done
            self._forget(stream_id)
            return 0
        marks = self._marks.setdefault(stream_id, deque())
        packetized = self.quic.tx_sent_bytes(stream_id)
        reads, conn_sent, conn_done = progress
        if packetized > (marks[-1][0] if marks else self._acked.get(stream_id, 0)):
            marks.append([packetized, reads, None])
        for mark in marks:
            if mark[2] is None and reads > mark[1]:
                mark[2] = conn_sent  # from a snapshot asked for after the packetizing was seen
        acked = self._acked.get(stream_id, 0)
        while marks and marks[0][2] is not None and marks[0][2] <= conn_done:
            acked = marks.popleft()[0]
        self._acked[stream_id] = acked
        return waiting + max(written - acked, 0)


class _PeerWatch:
    """Drives a PeerReachability (reachability.py) on the event loop: a check every
    SILENCE_PROBE_INTERVAL probes a peer that sent nothing since the last one, a refusal probes
    again at once when it starts a run, and refusals kept up for ``grace`` with nothing received
    (``received``) call ``gone`` with how long they went on; the watch then ends. ``closed``: the
    watch ends quietly once it is true (its session closed)."""

    def __init__(self, grace: float, received: Callable[[], int], probe: Callable[[], None],
                 gone: Callable[[float], None], closed: Callable[[], bool] = lambda: False) -> None:
        self._reachability = PeerReachability(grace)
        self._received, self._probe, self._gone, self._closed = received, probe, gone, closed
        self._handle: asyncio.TimerHandle | None = None
        self._active = True

    def check_later(self) -> None:
        self._handle = asyncio.get_running_loop().call_later(SILENCE_PROBE_INTERVAL, self.check)

    def check(self) -> None:
        self._handle = None
        if self._closed():
            self.close()
            return
        now, received = time.monotonic(), self._received()
        if self._reachability.gone(now, received):
            self._end(now)
            return
        if self._reachability.silent(received):
            self._probe()  # (its refusal may come at once, and end the watch)
        if self._active:
            self.check_later()

    def refused(self) -> None:
        if not self._active or self._closed():
            return
        now, received = time.monotonic(), self._received()
        if self._reachability.refused(now, received):
            self._probe()  # the first of a run: ask again at once (a live peer answers)
        elif self._reachability.gone(now, received):
            self._end(now)

    def _end(self, now: float) -> None:
        refused_for = self._reachability.refused_for(now)
        self.close()
        self._gone(refused_for)

    def close(self) -> None:
        self._active = False
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class _ProbeSocket(asyncio.DatagramProtocol):
    """A UDP socket of our own connected to a peer's address, where the connection's own socket
    hears no ICMP (picoquic's, always; a client's, before its handshake is done): ``probe`` sends a
    one-byte datagram (no QUIC packet: a live peer drops it), and the refusals it draws are the
    peer's port's (``refused``)."""

    def __init__(self, refused: Callable[[], None]) -> None:
        self._refused = refused
        self._transport = None

    def connection_made(self, transport) -> None:
        self._transport = transport

    def error_received(self, exc: OSError) -> None:
        if isinstance(exc, ConnectionRefusedError) and self._transport is not None:
            self._refused()

    def probe(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.sendto(b"\0")

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None


def pquic_priority(urgency: int, *, newest: bool) -> int:
    """picoquic stream priority (lower first; even = round robin among equals): by urgency, and
    within one urgency the group a subscription's order puts first (``newest``: the newest, or for
    GROUP_ORDER Ascending the oldest still being sent) before its other groups."""
    return min(8 * urgency + (2 if newest else 4), 254)


def _pquic_protocol_class():
    from aiopquic.asyncio.protocol import QuicConnectionProtocol as PquicProtocol

    pin_mmap_threshold()  # picoquic's per-stream rings back to the OS when a stream ends

    class PquicMoqConnection(_MoqConnectionMixin, PquicProtocol):
        """The aiopquic backend."""

        backend = "aiopquic"

        def __init__(self, quic, stream_handler=None, *, is_client: bool = False, path: str = "",
                     token: str | None = None, authority: str = "", caps: SessionCaps | None = None) -> None:
            PquicProtocol.__init__(self, quic, stream_handler=stream_handler)
            self._writer = _PquicWriter(quic)
            self._init_moq(self._writer, is_client, path, token, authority, caps)
            self._retry_handle = None
            self._retry_after = PQUIC_RETRY_MIN
            self._retry_seen = 0

        def set_priority(self, stream_id: int, urgency: int, group: int, subgroup: int = 0,
                         ascending: bool = False) -> None:
            # (picoquic's bands per urgency leave a group's subgroups equal: round robin; which
            # group goes first is the sink's step_back / step_forward)
            if self._writer.open:  # a closed connection refuses it ("cnx not open")
                self._quic.set_stream_priority(stream_id, pquic_priority(urgency, newest=True))

        def step_back(self, stream_id: int, urgency: int) -> None:
            self._band(stream_id, urgency, newest=False)

        def step_forward(self, stream_id: int, urgency: int) -> None:
            self._band(stream_id, urgency, newest=True)

        def _band(self, stream_id: int, urgency: int, *, newest: bool) -> None:
            # still sending (picoquic retires finished streams) and the connection still open
            if stream_id in self._quic._stream_ctxs and self._writer.open:
                self._quic.set_stream_priority(stream_id, pquic_priority(urgency, newest=newest))

        def wait_for(self, stream_id: int, before: list[int], urgency: int) -> None:
            # the band below (picoquic sends it when the one above has nothing; the sink steps
            # it forward when its turn comes), and its writes kept while theirs wait for ring room
            self.step_back(stream_id, urgency)
            self._writer.wait_for(stream_id, before)

        def forget_stream(self, stream_id: int) -> None:
            pass

        def flush(self) -> None:
            if self._writer.retry() and self._retry_handle is None:
                self._retry_handle = asyncio.get_running_loop().call_later(self._retry_after, self._retry)

        def _retry(self) -> None:
            # a full ring that took nothing since the last try (a slow path) is tried less often
            written = self._writer._changes
            self._retry_after = (PQUIC_RETRY_MIN if written != self._retry_seen
                                 else min(2 * self._retry_after, PQUIC_RETRY_MAX))
            self._retry_handle = None
            self.flush()
            self._retry_seen = self._writer._changes

        def queued_bytes(self, stream_id: int) -> int:
            return self._writer.queued(stream_id)

        def total_queued_bytes(self) -> int:
            return self._writer.total_queued()

        def announced(self, stream_id: int) -> bool:
            return self._writer.announced(stream_id)

        def delivered(self, stream_id: int) -> bool:
            # queued() is an estimate; picoquic retires a stream once every byte and the FIN
            # are acknowledged (nothing more can be delivered once the connection is closed)
            return stream_id not in self._quic._stream_ctxs or self._writer.closed

        def unsent_bytes(self, stream_id: int) -> int:
            return self._writer.queued(stream_id)  # the estimate stands for both: judged as before

        def ack_allowance(self) -> float:
            return 0.0  # queued() already waits for the acknowledgements' flight

        def ack_doubt(self) -> bool:
            return self._writer.lossy  # queued() is an estimate; on a lossy path an optimistic one

        @property
        def peer(self) -> str:
            addr = self._quic.peer_address()
            return f"{addr[0]}:{addr[1]}" if addr else "?"

        # picoquic's UDP socket is its thread's (unconnected: it hears no ICMP, and picoquic takes
        # only EHOSTUNREACH, ENETUNREACH, ENETDOWN, ECONNRESET and EAFNOSUPPORT from a send as a
        # path unreachable, never ECONNREFUSED), and aiopquic sends no PING on demand. So the
        # probe is a one-byte datagram (no QUIC packet: a live peer drops it) from a socket of our
        # own connected to the peer's address, whose refusals are the peer's port's; what was
        # received is picoquic's count of bytes, a snapshot up to a check old (so the grace is
        # a check longer here).
        async def open_probe(self) -> None:
            addr = self._quic.peer_address()
            if addr is None:
                return
            self._probe = _ProbeSocket(self.peer_refused)
            await asyncio.get_running_loop().create_datagram_endpoint(lambda: self._probe, remote_addr=addr)
            self.watch_peer(PEER_UNREACHABLE_GRACE + SILENCE_PROBE_INTERVAL)

        def _received_count(self) -> int:
            return self._quic.path_quality().get("bytes_received", 0)

        def _probe_peer(self) -> None:
            self._probe.probe()

        def stop_watching_peer(self) -> None:
            super().stop_watching_peer()
            probe = getattr(self, "_probe", None)
            if probe is not None:
                probe.close()

    return PquicMoqConnection


BACKENDS = ("aioquic", "aiopquic")
FINGERPRINT_NEEDS_AIOQUIC = (
    "certificate pinning by SHA-256 fingerprint needs --quic-backend aioquic: aiopquic (picoquic) does not "
    "show the peer certificate. With aiopquic, pin the node's own certificate as the only CA instead: "
    "--cafile <the node's cert.pem> (a self-signed node keeps it in <state-dir>/tls/cert.pem)")
# picoquic (BBR, C packetization): ~10x aioquic's egress per core and live over lossy paths
# (docs/benchmarks.md); aioquic stays selectable and is the one that can pin by fingerprint.
DEFAULT_BACKEND = "aiopquic"


class ReceiveBudget:
    """[moq] max_partial_bytes over every MoQ session of a node: those its listener accepts and
    the node's own links to other nodes (a relay's upstream, the directory's origins), all in one
    ReceivePool. While together they hold more than the limit of their peers' bytes not handed on
    (partial objects and requests, objects held for an unknown alias), the session holding the most
    is closed (a link reconnects). ``errors`` counts each close (metrics, max_partial_bytes)."""

    def __init__(self, limit: int = MOQ_MAX_PARTIAL_BYTES, errors: Counter | None = None) -> None:
        self.errors = Counter() if errors is None else errors
        self.pool = ReceivePool(limit, self._over)
        self._sessions: set = set()  # sharing the pool, the ones past a listener's caps too until they close

    def join(self, conn) -> None:
        """``conn``'s session counts in the budget from now on, with what it holds already (unless
        it counts in one already: a listener's session, in its listener's)."""
        session = conn.session
        if session.pool is not None or session.closed:
            return
        session.pool = self.pool
        self.pool.held += session.buffered_bytes
        self._sessions.difference_update([c for c in self._sessions if c.session.closed])
        self._sessions.add(conn)
        if self.pool.held > self.pool.limit:
            self._over()

    def _over(self) -> None:
        """Close the session holding the most until the pool is within its limit again."""
        pool = self.pool
        while pool.held > pool.limit:
            self._sessions.difference_update([c for c in self._sessions if c.session.closed])
            worst = max(self._sessions, key=lambda c: c.session.buffered_bytes, default=None)
            if worst is None or not worst.session.buffered_bytes:
                return
            held = worst.session.buffered_bytes
            log.warning("%s: closing MoQ session%s: it holds %d bytes of partial objects and requests not handed on, "
                        "the most of any session, and all %d sessions together hold %d, more than [moq] "
                        "max_partial_bytes (%d)", worst.peer, " (this node's link to it: it reconnects)"
                        if worst.session.is_client else "", held, len(self._sessions), pool.held, pool.limit)
            self.errors["max_partial_bytes"] += 1
            worst.close_session(wire.SessionError.INTERNAL_ERROR, "too many bytes held (max_partial_bytes)")


def widen_udp_buffers(transport) -> None:
    """Ask for UDP_BUFFER_BYTES of receive and send buffer on an asyncio datagram transport."""
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        return
    import socket

    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, UDP_BUFFER_BYTES)
        except OSError:  # refused: the default stays
            pass


def aioquic_configuration(*, is_client: bool, idle_timeout: float | None = None, **kwargs) -> QuicConfiguration:
    return QuicConfiguration(is_client=is_client, alpn_protocols=[wire.ALPN], idle_timeout=idle_timeout or IDLE_TIMEOUT,
                             congestion_control_algorithm=AIOQUIC_CONGESTION_CONTROL, max_data=AIOQUIC_MAX_DATA,
                             max_stream_data=AIOQUIC_MAX_STREAM_DATA,
                             max_datagram_frame_size=kwargs.pop("max_datagram_frame_size", MAX_DATAGRAM_FRAME_SIZE),
                             **kwargs)


def server_configuration(certfile, keyfile, idle_timeout: float | None = None) -> QuicConfiguration:
    config = aioquic_configuration(is_client=False, idle_timeout=idle_timeout)
    config.load_cert_chain(str(certfile), str(keyfile))
    return config


async def serve_moq(host: str, port: int, *, certfile, keyfile, on_connection: Callable[[MoqConnection], None],
                    backend: str = DEFAULT_BACKEND, handshake_timeout: float = MOQ_HANDSHAKE_TIMEOUT,
                    max_connections: int = MOQ_MAX_CONNECTIONS, max_connections_per_ip: int = MOQ_MAX_CONNECTIONS_PER_IP,
                    max_partial_bytes: int = MOQ_MAX_PARTIAL_BYTES, errors: Counter | None = None,
                    idle_timeout: float | None = None, retry: bool = False, budget: ReceiveBudget | None = None,
                    session_caps: SessionCaps | None = None):
    """Listen for MoQ sessions; ``on_connection`` gets each new connection (set its handler).
    A session not set up within ``handshake_timeout`` is closed, and so is one that would make
    more than ``max_connections`` open sessions, or ``max_connections_per_ip`` from its address.
    While all sessions together hold more than ``max_partial_bytes`` of their peers' bytes not
    handed on (partial objects and requests, objects held for an unknown alias), the one holding
    the most is closed. ``errors`` counts what was refused or closed so, by reason (metrics).
    ``budget``: the node's ReceiveBudget, shared with its links to other nodes (replaces
    ``max_partial_bytes``; it counts in its own ``errors``).
    ``idle_timeout``: seconds of silence before QUIC closes a session (None: IDLE_TIMEOUT).
    ``retry``: answer each new client's first Initial with a QUIC Retry and go on only with a
    client that echoes its token from the same address (RFC 9000 8.1), so a spoofed source gets one
    small packet and leaves no connection state (no session, no handshake deadline, no cap slot).
    ``session_caps``: each session's own caps ([moq] session_max_*; None: the defaults)."""
    errors = Counter() if errors is None else errors
    idle_timeout = idle_timeout or IDLE_TIMEOUT
    if backend == "aiopquic":
        from aiopquic.asyncio import serve as pquic_serve

        config = _pquic_configuration(is_client=False, idle_timeout=idle_timeout)
        config.load_cert_chain(str(certfile), str(keyfile))
        cls = _pquic_protocol_class()
        serve_fn = pquic_serve
    else:
        config = server_configuration(certfile, keyfile, idle_timeout)
        cls = MoqConnection
        serve_fn = serve

    live: set = set()  # sessions of this listener not closed yet (pruned as new ones come)
    if budget is None:
        budget = ReceiveBudget(max_partial_bytes, errors)

    def check_caps(conn) -> None:
        """Once the first datagram told the peer's address (after the factory returned)."""
        live.difference_update([c for c in live if c.session.closed])
        ip = conn.peer.rpartition(":")[0]
        from_ip = sum(1 for c in live if c.peer.rpartition(":")[0] == ip)
        limit = ("max_connections" if len(live) >= max_connections
                 else "max_connections_per_ip" if from_ip >= max_connections_per_ip else None)
        if limit is None:
            live.add(conn)
            return
        log.warning("%s: refused, %d MoQ sessions open (%d from %s) (%s)", conn.peer, len(live), from_ip, ip, limit)
        errors[limit] += 1
        conn.close_session(wire.SessionError.INTERNAL_ERROR, f"too many connections ({limit})")

    def factory(*args, **kwargs):
        conn = cls(*args, is_client=False, caps=session_caps, **kwargs)
        conn.errors = errors
        budget.join(conn)
        on_connection(conn)
        loop = asyncio.get_running_loop()
        loop.call_soon(check_caps, conn)

        def check_setup():
            if not conn.ready.done() and not conn.session.closed:
                log.warning("%s: no MoQ setup within %g s, closing", conn.peer, handshake_timeout)
                errors["handshake_timeout"] += 1
                conn.close_session(wire.SessionError.CONTROL_MESSAGE_TIMEOUT, "setup timeout")
        loop.call_later(handshake_timeout, check_setup)
        return conn

    try:
        if backend == "aiopquic":
            _check_udp_port_free(host, port)
        server = await serve_fn(host, port, configuration=config, create_protocol=factory, retry=retry)
        if backend == "aiopquic" and port and not await _udp_port_bound_here(port):
            server.close()
            raise OSError(errno.EADDRINUSE, "picoquic did not bind the port (taken since it was checked?)")
    except OSError as exc:
        raise listener_error(exc, "MoQ (udp)", host, port) from None
    if backend != "aiopquic":
        widen_udp_buffers(server._transport)
    return server


def _pquic_configuration(*, is_client: bool, idle_timeout: float, **kwargs):
    from aiopquic.quic.configuration import QuicConfiguration as PquicConfiguration

    return PquicConfiguration(is_client=is_client, alpn_protocols=[wire.ALPN], idle_timeout=idle_timeout,
                              keep_alive_interval=idle_timeout / KEEPALIVES_PER_IDLE_TIMEOUT,
                              stream_ring_cap=PQUIC_STREAM_RING_BYTES,
                              max_datagram_frame_size=kwargs.pop("max_datagram_frame_size", MAX_DATAGRAM_FRAME_SIZE),
                              datagram_ring_bytes=DATAGRAM_QUEUE_BYTES, **kwargs)


def bound_host(host: str, backend: str) -> str:
    """The address a MoQ listener asked to listen on ``host`` really binds: picoquic (aiopquic)
    binds its port on every interface."""
    return "0.0.0.0" if backend == "aiopquic" else host


def _check_udp_port_free(host: str, port: int) -> None:
    """picoquic binds the port on every interface, IPv4 and IPv6, whatever ``host`` says, and
    when a bind fails it opens neither socket and says nothing (aiopquic 0.6.1 probes IPv6 first
    and then listens on IPv4 alone, with a warning: IPv6 clients of the port reach whatever holds
    it). Bind both once here first, so a port in use stops the node at start as it does on
    aioquic. IPv6 is probed where the host has it; a host without (no IPv6 support, or IPv6
    disabled) listens on IPv4 alone, as aiopquic does there."""
    if host not in ("", "0.0.0.0", "::"):
        log.warning("aiopquic listens on udp port %d of every interface, not only %s "
                    "(--quic-backend aioquic binds that address alone)", port, host)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("0.0.0.0", port))
    if not socket.has_ipv6:
        return
    try:
        probe = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    except OSError:
        return  # built with IPv6, but the kernel has none
    with probe:
        probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            probe.bind(("::", port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                raise
            # EADDRNOTAVAIL and the like: IPv6 is disabled here, picoquic uses IPv4 alone


async def _udp_port_bound_here(port: int, timeout: float = PQUIC_BIND_TIMEOUT) -> bool:
    """Whether a UDP socket of this process holds ``port`` (within ``timeout``): picoquic binds
    on its own thread and says nothing when it cannot, so a port taken between the check above
    and its bind (another program starting at the same moment) left a node that logged it
    listened with no socket at all. True where /proc cannot tell (not Linux)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            held = _udp_socket_inodes(port)
            if held & _own_socket_inodes():
                return True
        except OSError:
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.005)


def _udp_socket_inodes(port: int) -> set[str]:
    """Inodes of the UDP sockets bound to ``port`` (IPv4 and IPv6), from /proc/net."""
    inodes = set()
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(table) as f:
                lines = f.read().splitlines()[1:]
        except FileNotFoundError:
            continue  # no IPv6
        for line in lines:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def _own_socket_inodes() -> set[str]:
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if link.startswith("socket:["):
            out.add(link[8:-1])
    return out


def parse_moq_url(url: str, default_port: int = DEFAULT_MOQ_PORT) -> tuple[str, int, str]:
    """moqt://HOST:PORT/PATH -> (host, port, path)."""
    parts = urlsplit(url)
    if parts.scheme not in ("moqt", "moq"):
        raise ValueError(f"{url!r}: expected a moqt:// URL")
    if not parts.hostname:
        raise ValueError(f"{url!r}: no host")
    return parts.hostname, parts.port or default_port, parts.path


def setup_path(url: str) -> str:
    """The PATH setup parameter for a moqt:// URL: its path and, when it has one, ``?`` and its
    query (draft 16 "PATH": the client MUST send both; a relay above may take a token there)."""
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


class connect_moq:
    """``async with connect_moq(host, port, ...) as conn``: a client connection with setup done.
    ``token``: sent as the AUTHORIZATION TOKEN of CLIENT_SETUP (covers the whole session).
    ``idle_timeout``: seconds of silence before QUIC closes the connection (None: IDLE_TIMEOUT);
    a peer that is gone is known sooner where ICMP says so (``reachability.py``).
    ``session_caps``: the session's own caps ([moq] session_max_*; None: the defaults)."""

    def __init__(self, host: str, port: int, *, insecure: bool = False, cafile: str | None = None,
                 fingerprint: str | None = None, path: str = "", timeout: float = CONNECT_TIMEOUT,
                 backend: str = DEFAULT_BACKEND, token: str | None = None, idle_timeout: float | None = None,
                 session_caps: SessionCaps | None = None) -> None:
        idle_timeout = idle_timeout or IDLE_TIMEOUT
        if token is not None:
            wire.auth_token_param(token)  # too long a token fails here, not inside the connection
        self._fingerprint = fingerprint.replace(":", "").lower() if fingerprint else None
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"  # the moqt:// URI's (RFC 3986)
        if backend == "aiopquic":
            from aiopquic.asyncio import connect as pquic_connect

            if self._fingerprint:
                raise ValueError(FINGERPRINT_NEEDS_AIOQUIC)
            config = _pquic_configuration(is_client=True, idle_timeout=idle_timeout, server_name=host)
            if insecure:
                config.verify_mode = ssl.CERT_NONE
            elif cafile:
                config.load_verify_locations(cafile)
            cls = _pquic_protocol_class()
            self._cm = pquic_connect(host, port, configuration=config,
                                     create_protocol=lambda *a, **k: self._made(cls(*a, is_client=True, path=path,
                                                                                    token=token, authority=authority,
                                                                                    caps=session_caps, **k)))
        else:
            config = aioquic_configuration(is_client=True, idle_timeout=idle_timeout, server_name=host)
            if insecure or fingerprint:
                config.verify_mode = ssl.CERT_NONE
            elif cafile:
                config.load_verify_locations(cafile)
            self._cm = connect(host, port, configuration=config,
                               create_protocol=lambda *a, **k: self._made(MoqConnection(*a, is_client=True, path=path,
                                                                                        token=token, authority=authority,
                                                                                        caps=session_caps, **k)),
                               wait_connected=True)
        self._timeout = timeout
        self._conn = None
        self._protocol = None  # the connection, once made (before its handshake is done)
        self._host, self._port = host, port
        self._address = f"{host}:{port}"
        self._checks = "none" if insecure or fingerprint else (cafile or "")  # for _handshake_failed

    def _made(self, protocol):
        self._protocol = protocol
        return protocol

    async def __aenter__(self) -> MoqConnection:
        refused = []
        stop_watch = None
        try:
            async with asyncio.timeout(self._timeout) as timeout:
                def give_up(refused_for: float) -> None:  # (the timeout's way out: the handshake is cancelled)
                    refused.append(refused_for)
                    timeout.reschedule(asyncio.get_running_loop().time())

                stop_watch = await self._watch_handshake(give_up)
                return await self._enter()
        except TimeoutError:
            if refused:
                raise ConnectionRefusedError(f"MoQ connection to {self._address} refused (ICMP port unreachable "
                                             f"for {refused[0]:.1f} s: nothing listens there on UDP)") from None
            raise ConnectionError(f"no MoQ answer from {self._address} within {self._timeout:g} s "
                                  "(is a node listening there, on UDP?)") from None
        finally:
            if stop_watch is not None:
                stop_watch()

    async def _watch_handshake(self, give_up: Callable[[float], None]) -> Callable[[], None] | None:
        """Give the attempt up as soon as the server's port is known closed: a probe socket of our
        own (the connection's is not connected yet, and picoquic's never is) and refusals kept up
        for HANDSHAKE_UNREACHABLE_GRACE with nothing received; what ends the watch."""
        def received() -> int:
            try:
                return self._protocol._received_count() if self._protocol is not None else 0
            except Exception:  # (aiopquic: no path to read before the connection is made)
                return 0

        probe = _ProbeSocket(lambda: watch.refused())
        watch = _PeerWatch(HANDSHAKE_UNREACHABLE_GRACE, received, probe.probe, lambda s: (probe.close(), give_up(s)))
        try:
            await asyncio.get_running_loop().create_datagram_endpoint(lambda: probe, remote_addr=(self._host, self._port))
        except OSError as exc:  # (the attempt then waits for its timeout, as before)
            log.warning("%s: cannot watch for ICMP unreachable (%s); a closed port is noticed at the connect "
                        "timeout", self._address, exc)
            return None
        watch.check()  # the first probe at once

        def close() -> None:
            watch.close()
            probe.close()
        return close

    async def _enter(self) -> MoqConnection:
        try:
            conn = await self._cm.__aenter__()
        except ConnectionError as exc:
            raise ConnectionError(self._handshake_failed(exc)) from None
        if isinstance(conn, MoqConnection):
            widen_udp_buffers(conn._transport)
        if self._fingerprint is not None:
            der = conn._quic.tls._peer_certificate.public_bytes(_der_encoding())
            if der_fingerprint(der) != self._fingerprint:
                await self._cm.__aexit__(None, None, None)
                raise ConnectionError("server certificate does not match the pinned SHA-256 fingerprint")
        await conn.ready
        await self._watch_peer(conn)
        self._conn = conn
        return conn

    async def _watch_peer(self, conn) -> None:
        """Take ICMP unreachable for the peer, kept up, as the connection lost (reachability.py)."""
        try:
            if isinstance(conn, MoqConnection):
                conn.connect_socket()
                conn.watch_peer()
            else:
                await conn.open_probe()
        except OSError as exc:  # (the peer is then known lost at the idle timeout, as before)
            log.warning("%s: cannot watch for ICMP unreachable (%s); a peer gone without a word is noticed "
                        "at the idle timeout", self._address, exc)

    async def __aexit__(self, *exc) -> None:
        if self._conn is not None:
            self._conn.stop_watching_peer()
        await self._cm.__aexit__(*exc)

    def _handshake_failed(self, exc: ConnectionError) -> str:
        """What a connection closed during its handshake says, with what to check: most often the
        peer's certificate, which neither backend names (aiopquic: "connection terminated during
        handshake (error_code=0)", aioquic: an empty ConnectionError)."""
        detail = str(exc) or "closed during the handshake"
        if self._checks == "none":
            hint = "is a MoQ (draft 16) node listening there?"
        elif self._checks:
            hint = (f"if its certificate was refused: it must be signed by, or be, {self._checks} (a node's "
                    "self-signed certificate is its state directory's tls/cert.pem; its SHA-256 is in its start log)")
        else:
            hint = ("if its certificate was refused: the system's CAs do not know it (a node's own certificate is "
                    "self-signed): pin it with --cafile <that node's state directory>/tls/cert.pem ([upstream] "
                    "cafile), or give up the check with --insecure")
        return f"MoQ handshake with {self._address} failed ({detail}); {hint}"


def _der_encoding():
    from cryptography.hazmat.primitives.serialization import Encoding

    return Encoding.DER
