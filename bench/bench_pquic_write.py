"""What one aiopquic call costs the relay's event-loop thread, and what a write costs the process.

    .venv/bin/python -m pytest bench/bench_pquic_write.py --benchmark-only -s

One client connection to a raw QUIC sink in another process (bench/quic_sink.py), on loopback.
Per call, CPU time of the calling thread (``time.thread_time``; picoquic's own thread apart):

- ``send_stream_data`` of 5 KB (the relay's mean object at 3 Mbit/s) on a stream already written;
- the first write to a new stream, with ``set_stream_priority`` (what opening a group costs);
- ``path_quality()`` (the connection snapshot the delivery budgets read) and ``tx_sent_bytes()``.

Then the whole process (both threads, ``getrusage``) moving 100 MB in 5 KB writes and in 64 KB
writes: the difference is the per-write cost the relay pays, since it cannot batch objects of
different subscribers into one call. Both with aiopquic's default 4 MiB stream ring and with
rtmpq's ``PQUIC_STREAM_RING_BYTES``.
"""

import asyncio
import resource
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
from aiopquic.asyncio import connect
from aiopquic.quic.configuration import QuicConfiguration

from rtmpq.moq.tls import ensure_self_signed
from rtmpq.moq.transport import PQUIC_STREAM_RING_BYTES

OBJECT = 5 * 1024
CALLS = 20_000
TOTAL_MB = 100
RESULTS = {}


def process_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def write_all(quic, size: int, total: int) -> None:
    """``total`` bytes in writes of ``size`` over 8 streams of 2 MB (group-like), waiting on a full ring."""
    payload = bytes(size)
    sent = 0
    while sent < total:
        sids = [quic.get_next_available_stream_id(is_unidirectional=True) for _ in range(8)]
        for _ in range(2_000_000 // size):
            for sid in sids:
                await quic.send_stream_data_drained(sid, payload)
                sent += size
        for sid in sids:
            quic.send_stream_data(sid, b"", True)


async def measure(port: int, ring: int) -> dict:
    config = QuicConfiguration(is_client=True, alpn_protocols=["raw"], stream_ring_cap=ring)
    config.verify_mode = ssl.CERT_NONE
    out = {}
    async with connect("127.0.0.1", port, configuration=config) as proto:
        quic = proto._quic
        payload = bytes(OBJECT)
        sid = quic.get_next_available_stream_id(is_unidirectional=True)
        quic.send_stream_data(sid, payload)
        calls = t = 0
        while calls < CALLS:
            t0 = time.thread_time()
            try:
                quic.send_stream_data(sid, payload)
            except BufferError:
                await asyncio.sleep(0.001)
                continue
            t += time.thread_time() - t0
            calls += 1
            if calls % 50 == 0:
                await asyncio.sleep(0)  # let picoquic's thread drain the ring and the loop run
        out["send_5KB_us"] = round(t / CALLS * 1e6, 2)
        t = 0.0
        for i in range(2000):
            t0 = time.thread_time()
            s = quic.get_next_available_stream_id(is_unidirectional=True)
            quic.set_stream_priority(s, 10)
            quic.send_stream_data(s, payload[:100], True)
            t += time.thread_time() - t0
            if i % 50 == 0:
                await asyncio.sleep(0.005)
        out["new_stream_prio_write_us"] = round(t / 2000 * 1e6, 2)
        t0 = time.thread_time()
        for _ in range(CALLS):
            quic.path_quality()
        out["path_quality_us"] = round((time.thread_time() - t0) / CALLS * 1e6, 2)
        t0 = time.thread_time()
        for _ in range(CALLS):
            quic.tx_sent_bytes(sid)
        out["tx_sent_bytes_us"] = round((time.thread_time() - t0) / CALLS * 1e6, 2)
        await asyncio.sleep(0.5)
        for size in (OBJECT, 64 * 1024):
            c0 = process_cpu()
            await write_all(quic, size, TOTAL_MB * 1_000_000)
            out[f"process_MB_per_cpu_s_{size // 1024}KB_writes"] = round(TOTAL_MB / (process_cpu() - c0), 1)
    return out


def run(tmp: Path, ring: int) -> dict:
    cert, key = ensure_self_signed(tmp)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sink = subprocess.Popen([sys.executable, str(Path(__file__).with_name("quic_sink.py")), str(port), str(cert), str(key)],
                            stdout=subprocess.PIPE, text=True)
    try:
        sink.stdout.readline()
        stats = asyncio.run(measure(port, ring))
    finally:
        sink.terminate()
    stats["MB_received"] = round(int(sink.stdout.read().split()[-1]) / 1e6, 1)
    return stats


@pytest.mark.parametrize("ring", [4 * 1024 * 1024, PQUIC_STREAM_RING_BYTES])
def test_aiopquic_call_costs(benchmark, tmp_path, ring):
    stats = benchmark.pedantic(run, args=(tmp_path, ring), rounds=1, iterations=1)
    assert stats["MB_received"] >= 2 * TOTAL_MB  # the sink got every byte of both transfers
    benchmark.extra_info.update(stats)
    RESULTS[ring] = stats


def teardown_module(module):
    for ring, stats in RESULTS.items():
        print(f"\nstream ring {ring // 1024} KiB: {stats}")
