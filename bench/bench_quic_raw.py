"""The baseline for relay egress: a raw aiopquic stream transfer on loopback, sender CPU measured.

    .venv/bin/python -m pytest bench/bench_quic_raw.py --benchmark-only -s

A sender pushes 200 MB over 20 unidirectional streams to a sink in another process; MB per CPU
second of the sending process (all threads) is comparable to the relay's "MB/s per core" in
bench_relay.py, which also counts the sending side only.
"""

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


async def send_all(port: int) -> None:
    config = QuicConfiguration(is_client=True, alpn_protocols=["raw"])
    config.verify_mode = ssl.CERT_NONE
    payload = bytes(CHUNK)
    per_stream = TOTAL_MB * 1_000_000 // STREAMS
    async with connect("127.0.0.1", port, configuration=config) as proto:
        quic = proto._quic

        async def one() -> None:
            sid = quic.get_next_available_stream_id(is_unidirectional=True)
            sent = 0
            while sent < per_stream:
                n = min(CHUNK, per_stream - sent)
                await quic.send_stream_data_drained(sid, payload[:n], sent + n >= per_stream)
                sent += n

        await asyncio.gather(*(one() for _ in range(STREAMS)))
        await asyncio.sleep(1.0)  # let the last bytes leave before closing


def run(tmp: Path) -> dict:
    cert, key = ensure_self_signed(tmp)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sink = subprocess.Popen([sys.executable, str(Path(__file__).with_name("quic_sink.py")), str(port), str(cert), str(key)],
                            stdout=subprocess.PIPE, text=True)
    sink.stdout.readline()
    c0, t0 = cpu(), time.monotonic()
    asyncio.run(send_all(port))
    c1, t1 = cpu(), time.monotonic()
    sink.terminate()
    received = int(sink.stdout.read().split()[-1])
    return {"MB_received": round(received / 1e6, 1), "wall_MB_per_s": round(received / 1e6 / (t1 - t0), 1),
            "sender_MB_per_cpu_s": round(received / 1e6 / (c1 - c0), 1)}


def test_raw_aiopquic_transfer(benchmark, tmp_path):
    stats = benchmark.pedantic(run, args=(tmp_path,), rounds=1, iterations=1)
    assert stats["MB_received"] > 0.9 * TOTAL_MB
    benchmark.extra_info.update(stats)
    print("\n", stats)
