"""The seeded UDP impairment proxy, measured with plain UDP on loopback."""

import asyncio

from rtmpq.netem import Impairment, ImpairmentProxy


class Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.transport.sendto(data, addr)


class Client(asyncio.DatagramProtocol):
    def __init__(self):
        self.received = []

    def datagram_received(self, data, addr):
        self.received.append((asyncio.get_running_loop().time(), data))


async def run_through(up: Impairment, down: Impairment, seed: int, count: int = 400, size: int = 200, gap: float = 0.001):
    loop = asyncio.get_running_loop()
    echo, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
    target = echo.get_extra_info("sockname")
    async with ImpairmentProxy(target=target, up=up, down=down, seed=seed) as proxy:
        client = Client()
        transport, _ = await loop.create_datagram_endpoint(lambda: client, remote_addr=("127.0.0.1", proxy.port))
        sent = {}
        for i in range(count):
            sent[i] = loop.time()
            transport.sendto(i.to_bytes(4, "big") + bytes(size - 4))
            if gap:
                await asyncio.sleep(gap)
            elif i % 50 == 0:
                await asyncio.sleep(0)
        await asyncio.sleep(0.6)
        transport.close()
        stats = proxy.stats
    echo.close()
    return sent, client.received, stats


async def test_loss_is_close_to_the_setting_and_the_same_for_the_same_seed():
    lossy = Impairment(loss=0.1)
    _, got1, stats = await run_through(lossy, Impairment(), seed=7)
    _, got2, _ = await run_through(lossy, Impairment(), seed=7)
    ids1 = [int.from_bytes(d[:4], "big") for _, d in got1]
    assert ids1 == [int.from_bytes(d[:4], "big") for _, d in got2]  # same seed, same drops
    assert 0.05 < stats["up"].dropped_loss / 400 < 0.15
    assert ids1 == sorted(ids1)  # no reordering asked for: order kept


async def test_delay_adds_up_per_direction():
    sent, got, _ = await run_through(Impairment(delay_ms=30), Impairment(delay_ms=20), seed=1, count=20)
    rtts = [t - sent[int.from_bytes(d[:4], "big")] for t, d in got]
    assert len(rtts) == 20 and min(rtts) >= 0.050 and max(rtts) < 0.2


async def test_reordering_and_rate_limit():
    _, got, stats = await run_through(Impairment(reorder=0.2, reorder_ms=20), Impairment(), seed=3, count=200)
    ids = [int.from_bytes(d[:4], "big") for _, d in got]
    assert sorted(ids) == list(range(200)) and ids != sorted(ids) and stats["up"].reordered > 10
    # 400 packets of 1000 bytes at 800 kbit/s with a 20 kB queue: most are dropped, the rest paced
    _, got, stats = await run_through(Impairment(rate_bps=800_000, queue_bytes=20_000), Impairment(), seed=3,
                                      count=400, size=1000)
    assert stats["up"].dropped_queue > 300
    times = [t for t, _ in got]
    assert (times[-1] - times[0]) >= 0.9 * (len(times) - 1) * 1000 * 8 / 800_000


async def test_gilbert_elliott_loss_comes_in_bursts():
    # good->bad 2% a packet, bad->good 25%: ~7% loss, in runs of ~4 packets
    _, got, stats = await run_through(Impairment(burst_p=0.02, burst_r=0.25), Impairment(), seed=11, count=600)
    ids = {int.from_bytes(d[:4], "big") for _, d in got}
    lost = sorted(set(range(600)) - ids)
    assert stats["up"].dropped_burst == len(lost) and 0.03 < len(lost) / 600 < 0.15
    runs, run = [], 1
    for a, b in zip(lost, lost[1:]):
        if b == a + 1:
            run += 1
        else:
            runs.append(run)
            run = 1
    runs.append(run)
    assert sum(runs) / len(runs) > 2.5  # bursts, not independent drops (those average ~1.1)


async def test_blackhole_drops_everything_for_its_duration_then_recovers():
    loop = asyncio.get_running_loop()
    echo, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
    async with ImpairmentProxy(target=echo.get_extra_info("sockname")) as proxy:
        client = Client()
        transport, _ = await loop.create_datagram_endpoint(lambda: client, remote_addr=("127.0.0.1", proxy.port))
        sent = {}
        for i in range(90):
            if i == 30:
                proxy.blackhole(0.3)
            sent[i] = loop.time()
            transport.sendto(i.to_bytes(4, "big"))
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)
        transport.close()
    echo.close()
    ids = [int.from_bytes(d[:4], "big") for _, d in client.received]
    dark = [i for i in range(90) if i not in ids]
    assert dark and dark[0] == 30 and dark == list(range(30, dark[-1] + 1))  # one contiguous outage
    assert 0.25 <= sent[dark[-1]] - sent[30] <= 0.35 and ids[-1] == 89  # ~0.3 s, then packets flow again
    assert proxy.stats["up"].dropped_blackhole == len(dark)


async def test_several_clients_at_once_each_keep_their_own_path():
    """A node's session and its readiness probe share the proxy: a second client must not take the
    first one's path away (found with `make multihost`: the edge's probe cut its MoQ session)."""
    loop = asyncio.get_running_loop()
    echo, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
    async with ImpairmentProxy(target=echo.get_extra_info("sockname")) as proxy:
        clients = [Client() for _ in range(3)]
        transports = [(await loop.create_datagram_endpoint(lambda c=c: c, remote_addr=("127.0.0.1", proxy.port)))[0]
                      for c in clients]
        for i in range(30):  # interleaved, as concurrent QUIC connections are
            for n, transport in enumerate(transports):
                transport.sendto(bytes([n, i]))
            await asyncio.sleep(0.001)
        deadline = loop.time() + 5
        while any(len(c.received) < 30 for c in clients) and loop.time() < deadline:
            await asyncio.sleep(0.01)
        for transport in transports:
            transport.close()
    echo.close()
    for n, client in enumerate(clients):
        assert [d for _, d in client.received] == [bytes([n, i]) for i in range(30)]
