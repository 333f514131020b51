"""The baseline for relay egress: raw aiopquic stream transfers on loopback, sender CPU measured.

    .venv/bin/python -m pytest bench/bench_quic_raw.py --benchmark-only -s

A sender pushes 200 MB to a sink in another process, over 1 connection (20 streams) and over 50
connections (2 streams each, as 50 relay subscribers are 50 connections); MB per CPU second of the
sending process (all threads) is comparable to the relay's "MB/s per core" in bench_relay.py,
which also counts the sending side only.
"""

import pytest

import asyncio
import resource
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

from aiopquic.asyncio import connect
from aiopquic.quic.configuration import QuicConfiguration

from rtmpq.moq.tls import ensure_self_signed

TOTAL_MB = 200
STREAMS = 20
CHUNK = 64 * 1024


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def send_all(port: int, connections: int) -> None:
    config = QuicConfiguration(is_client=True, alpn_protocols=["raw"])
    config.verify_mode = ssl.CERT_NONE
    payload = bytes(CHUNK)
    streams = max(STREAMS // connections, 2)
    per_stream = TOTAL_MB * 1_000_000 // (streams * connections)

    async def one_connection() -> None:
        async with connect("127.0.0.1", port, configuration=config) as proto:
            quic = proto._quic

            async def one_stream() -> None:
                sid = quic.get_next_available_stream_id(is_unidirectional=True)
                sent = 0
                while sent < per_stream:
                    n = min(CHUNK, per_stream - sent)
                    await quic.send_stream_data_drained(sid, payload[:n], sent + n >= per_stream)
                    sent += n

            await asyncio.gather(*(one_stream() for _ in range(streams)))
            await asyncio.sleep(3.0)  # let the last bytes leave (and be acknowledged) before closing

    await asyncio.gather(*(one_connection() for _ in range(connections)))


def run(tmp: Path, connections: int) -> dict:
    cert, key = ensure_self_signed(tmp)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sink = subprocess.Popen([sys.executable, str(Path(__file__).with_name("quic_sink.py")), str(port), str(cert), str(key)],
                            stdout=subprocess.PIPE, text=True)
    sink.stdout.readline()
    c0, t0 = cpu(), time.monotonic()
    asyncio.run(send_all(port, connections))
    c1, t1 = cpu(), time.monotonic()
    sink.terminate()
    received = int(sink.stdout.read().split()[-1])
    return {"MB_received": round(received / 1e6, 1), "wall_MB_per_s": round(received / 1e6 / (t1 - t0), 1),
            "sender_MB_per_cpu_s": round(received / 1e6 / (c1 - c0), 1)}


@pytest.mark.parametrize("connections", [1, 50])
def test_raw_aiopquic_transfer(benchmark, tmp_path, connections):
    stats = benchmark.pedantic(run, args=(tmp_path, connections), rounds=1, iterations=1)
    assert stats["MB_received"] > 0.9 * TOTAL_MB
    benchmark.extra_info.update(stats)
    print("\n", connections, "connections:", stats)
