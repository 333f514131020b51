"""UDP impairment proxy: delay, jitter, loss, reordering and a rate limit, per direction, seeded.

    async with ImpairmentProxy(target=("127.0.0.1", 4443), down=Impairment(delay_ms=50, loss=0.02),
                               up=Impairment(delay_ms=50), seed=1) as proxy:
        ... connect to ("127.0.0.1", proxy.port) ...

"down" is server -> client, "up" client -> server. Given the seed, the same packets are dropped and
delayed the same way on every run. Packets stay in order unless ``reorder`` picks one to hold
back by ``reorder_ms``. The rate limit is a token bucket in front of a drop-tail queue of
``queue_bytes``: a link slower than the traffic delays packets, then drops them, as a real one does.
Bursty loss is a Gilbert-Elliott chain: each packet, the good state turns bad with ``burst_p`` and
the bad state turns good with ``burst_r``; a packet is lost with ``loss`` in the good state and
``burst_loss`` in the bad one (mean burst 1/burst_r packets). ``proxy.blackhole(seconds)`` drops
every packet both ways for that long (a dead link, then recovery); ``blackholes`` schedules the
same from the command line.

Several clients may use the proxy at once (a node's session and its readiness probe, say): each
client address gets its own socket towards the target, and all of them share one impaired link
per direction, as hosts behind one bottleneck do.
"""

import argparse
import asyncio
import random
from collections import OrderedDict
from dataclasses import dataclass

# Client addresses carried at once; the least recently heard from is let go beyond this.
MAX_CLIENTS = 64
# UDP socket buffers asked for (capped by the kernel's rmem_max / wmem_max): the proxy drops only
# what its impairment says, not a burst that came while its event loop was busy.
SOCKET_BUFFER_BYTES = 4 * 1024 * 1024


def _widen(transport) -> None:
    import socket

    sock = transport.get_extra_info("socket")
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_BYTES)
        except OSError:
            pass


@dataclass
class Impairment:
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0  # probability a packet is dropped
    reorder: float = 0.0  # probability a packet is held back by reorder_ms
    reorder_ms: float = 10.0
    rate_bps: float | None = None  # link rate in bits per second (None: unlimited)
    queue_bytes: int = 64 * 1024  # bottleneck queue before drop-tail
    burst_p: float = 0.0  # Gilbert-Elliott: good -> bad per packet (0: no bursts)
    burst_r: float = 0.5  # bad -> good per packet
    burst_loss: float = 1.0  # loss probability in the bad state


@dataclass
class DirectionStats:
    forwarded: int = 0
    dropped_loss: int = 0
    dropped_queue: int = 0
    dropped_burst: int = 0
    dropped_blackhole: int = 0
    reordered: int = 0
    bytes: int = 0


class _Direction:
    def __init__(self, imp: Impairment, rng: random.Random) -> None:
        self.imp = imp
        self.rng = rng
        self.stats = DirectionStats()
        self._link_free_at = 0.0  # when the bottleneck finishes serialising what is queued
        self._last_due = 0.0
        self._bad = False  # Gilbert-Elliott state
        self.dark_until = 0.0  # blackhole: drop everything until this loop time

    def packet(self, data: bytes, loop: asyncio.AbstractEventLoop, send) -> None:
        imp = self.imp
        now = loop.time()
        if now < self.dark_until:
            self.stats.dropped_blackhole += 1
            return
        if imp.burst_p:
            self._bad = self.rng.random() >= imp.burst_r if self._bad else self.rng.random() < imp.burst_p
            if self._bad and self.rng.random() < imp.burst_loss:
                self.stats.dropped_burst += 1
                return
        if imp.loss and self.rng.random() < imp.loss:
            self.stats.dropped_loss += 1
            return
        start = now
        if imp.rate_bps:
            backlog = max(0.0, self._link_free_at - now) * imp.rate_bps / 8
            if backlog + len(data) > imp.queue_bytes:
                self.stats.dropped_queue += 1
                return
            self._link_free_at = max(now, self._link_free_at) + len(data) * 8 / imp.rate_bps
            start = self._link_free_at
        due = start + imp.delay_ms / 1000
        if imp.jitter_ms:
            due += self.rng.uniform(-imp.jitter_ms, imp.jitter_ms) / 1000
        due = max(due, self._last_due)  # FIFO unless reordered on purpose
        self._last_due = due
        if imp.reorder and self.rng.random() < imp.reorder:
            due += imp.reorder_ms / 1000
            self.stats.reordered += 1
        self.stats.forwarded += 1
        self.stats.bytes += len(data)
        loop.call_at(due, send, data)


class _ServerSide(asyncio.DatagramProtocol):
    """One client's socket towards the target."""

    def __init__(self, proxy: "ImpairmentProxy", client_addr) -> None:
        self.proxy = proxy
        self.client_addr = client_addr
        self.transport = None
        self.pending: list[bytes] = []  # packets that left the "up" impairment before this socket existed
        self.closed = False

    def connection_made(self, transport) -> None:
        if self.closed:
            transport.close()
            return
        self.transport = transport
        _widen(transport)
        pending, self.pending = self.pending, []
        for data in pending:
            transport.sendto(data)

    def datagram_received(self, data, addr) -> None:
        self.proxy._down.packet(data, asyncio.get_running_loop(), self.to_client)

    def error_received(self, exc) -> None:
        pass

    def to_server(self, data: bytes) -> None:
        if self.transport is not None:
            if not self.transport.is_closing():  # a packet still delayed when the proxy closed
                self.transport.sendto(data)
        elif not self.closed and len(self.pending) < 1024:
            self.pending.append(data)

    def to_client(self, data: bytes) -> None:
        if not self.closed:
            self.proxy.send_to_client(data, self.client_addr)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class ImpairmentProxy(asyncio.DatagramProtocol):
    def __init__(self, *, target: tuple[str, int], listen: tuple[str, int] = ("127.0.0.1", 0),
                 up: Impairment | None = None, down: Impairment | None = None, seed: int = 0) -> None:
        self.target = target
        self.listen = listen
        self._up = _Direction(up or Impairment(), random.Random(seed * 2 + 1))
        self._down = _Direction(down or Impairment(), random.Random(seed * 2 + 2))
        self._transport = None
        self._sides: OrderedDict = OrderedDict()  # client address -> _ServerSide
        self.port = 0

    def blackhole(self, seconds: float) -> None:
        """Drop every packet, both directions, for ``seconds`` from now."""
        until = asyncio.get_running_loop().time() + seconds
        self._up.dark_until = self._down.dark_until = until

    @property
    def stats(self) -> dict[str, DirectionStats]:
        return {"up": self._up.stats, "down": self._down.stats}

    async def __aenter__(self) -> "ImpairmentProxy":
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=self.listen)
        _widen(self._transport)
        self.port = self._transport.get_extra_info("sockname")[1]
        return self

    async def __aexit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        for side in self._sides.values():
            side.close()
        self._sides.clear()

    def datagram_received(self, data, addr) -> None:
        loop = asyncio.get_running_loop()
        side = self._sides.get(addr)
        if side is None:
            side = self._sides[addr] = _ServerSide(self, addr)
            loop.create_task(loop.create_datagram_endpoint(lambda: side, remote_addr=self.target))
            if len(self._sides) > MAX_CLIENTS:
                self._sides.popitem(last=False)[1].close()
        else:
            self._sides.move_to_end(addr)
        self._up.packet(data, loop, side.to_server)

    def send_to_client(self, data: bytes, addr) -> None:
        if self._transport is not None and not self._transport.is_closing():  # delayed past close
            self._transport.sendto(data, addr)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m rtmpq.netem", description=__doc__.split("\n\n")[0])
    p.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT to listen on")
    p.add_argument("--target", required=True, help="HOST:PORT of the server")
    p.add_argument("--delay-ms", type=float, default=0, help="one-way delay, each direction")
    p.add_argument("--jitter-ms", type=float, default=0)
    p.add_argument("--loss", type=float, default=0, help="drop probability, each direction")
    p.add_argument("--reorder", type=float, default=0)
    p.add_argument("--rate-kbps", type=float, help="server-to-client link rate")
    p.add_argument("--queue-bytes", type=int, default=64 * 1024, help="bottleneck queue of --rate-kbps")
    p.add_argument("--burst-p", type=float, default=0, help="Gilbert-Elliott good->bad per packet")
    p.add_argument("--burst-r", type=float, default=0.5, help="Gilbert-Elliott bad->good per packet")
    p.add_argument("--burst-loss", type=float, default=1.0, help="loss probability in the bad state")
    p.add_argument("--blackhole", action="append", default=[], metavar="AT:SECONDS",
                   help="drop everything for SECONDS, AT seconds after start (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    def split(text):
        host, _, port = text.rpartition(":")
        return host or "127.0.0.1", int(port)

    both = dict(delay_ms=args.delay_ms, jitter_ms=args.jitter_ms, loss=args.loss, reorder=args.reorder,
                burst_p=args.burst_p, burst_r=args.burst_r, burst_loss=args.burst_loss)
    outages = [tuple(float(x) for x in b.split(":")) for b in args.blackhole]

    async def run():
        async with ImpairmentProxy(target=split(args.target), listen=split(args.listen), seed=args.seed,
                                   up=Impairment(**both),
                                   down=Impairment(**both, rate_bps=args.rate_kbps * 1000 if args.rate_kbps else None,
                                                   queue_bytes=args.queue_bytes)) as proxy:
            print(f"impairing udp 127.0.0.1:{proxy.port} -> {args.target}", flush=True)
            loop = asyncio.get_running_loop()
            for at, seconds in outages:
                loop.call_later(at, proxy.blackhole, seconds)
            await asyncio.Event().wait()

    asyncio.run(run())
