"""A raw QUIC sink (aiopquic) for bench_quic_raw.py: counts stream bytes, prints the total at exit."""

import asyncio
import signal
import sys

from aiopquic.asyncio import serve
from aiopquic.asyncio.protocol import QuicConnectionProtocol
from aiopquic.quic.configuration import QuicConfiguration

TOTAL = [0]


class Sink(QuicConnectionProtocol):
    def quic_event_received(self, event) -> None:
        if type(event).__name__ == "StreamDataReceived":
            TOTAL[0] += len(event.data)


async def main(port: int, cert: str, key: str) -> None:
    config = QuicConfiguration(is_client=False, alpn_protocols=["raw"])
    config.load_cert_chain(cert, key)
    server = await serve("127.0.0.1", port, configuration=config, create_protocol=Sink)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()
    server.close()
    print(TOTAL[0], flush=True)


asyncio.run(main(int(sys.argv[1]), sys.argv[2], sys.argv[3]))
