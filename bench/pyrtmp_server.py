"""pyrtmp (PyPI) as an RTMP ingest peer for bench_ingest.py: accepts publishes, optionally records
each one as FLV with pyrtmp's own FLVWriter (the way its README does).

    python bench/pyrtmp_server.py PORT [RECORD_DIR]
"""

import asyncio
import logging
import os
import sys

from pyrtmp.flv import FLVMediaType, FLVWriter
from pyrtmp.rtmp import RTMPProtocol, SimpleRTMPController


class Recorder(SimpleRTMPController):
    def __init__(self, directory: str | None) -> None:
        super().__init__()
        self.directory = directory

    async def on_ns_publish(self, session, message) -> None:
        if self.directory:
            path = os.path.join(self.directory, f"publish-{id(session)}.flv")
            session.state = (open(path, "wb"), FLVWriter())
            session.state[0].write(session.state[1].write_header())
        await super().on_ns_publish(session, message)

    async def on_video_message(self, session, message) -> None:
        self._write(session, message, FLVMediaType.VIDEO)
        await super().on_video_message(session, message)

    async def on_audio_message(self, session, message) -> None:
        self._write(session, message, FLVMediaType.AUDIO)
        await super().on_audio_message(session, message)

    def _write(self, session, message, kind) -> None:
        state = getattr(session, "state", None)
        if state:
            state[0].write(state[1].write(message.timestamp, message.payload, kind))

    async def cleanup(self, session) -> None:
        state = getattr(session, "state", None)
        if state:
            state[0].close()
        await super().cleanup(session)


async def main(port: int, directory: str | None) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: RTMPProtocol(controller=Recorder(directory)), "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    logging.disable(logging.CRITICAL)  # its per-message debug and warning lines are not the work measured
    asyncio.run(main(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else None))
