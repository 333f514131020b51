"""`python bench/ingest_floor.py (read|demux) <rtmpq arguments>`: rtmpq with its ingest cut short, to
measure what the layers below a cut cost (bench/bench_ingest.py with INGEST_FLOOR=1).

    read   every media message is read (epoll, recv_into, chunk reassembly, FLV header split) and
           handed to the publish's sink, which drops it: the read path alone, nothing downstream
    demux  the sink also runs the demuxer (timestamps, groups, NAL check, Frame objects) and keeps
           the catalog current, but pushes no frame into the broadcast: no relay, cache or edge

Analysis only: the product has no such switch. Commands, handshakes and the publish's lifecycle
run as in `rtmpq up`.
"""

import sys
import time

from rtmpq.cli import main
from rtmpq.media.frames import Frame
from rtmpq.nodes import ingest


def read_only(self, type_id, timestamp, body, codec, frame_type, cts, header) -> None:
    self.last_media_ns = time.time_ns()


def demux_only(self, type_id, timestamp, body, codec, frame_type, cts, header) -> None:
    self.last_media_ns = now_ns = time.time_ns()
    for item in self.demuxer.media(type_id, timestamp, body, codec, frame_type, cts, header, now_ns):
        if type(item) is not Frame:
            self.broadcast.set_catalog(item)


if __name__ == "__main__":
    ingest.Publish.on_media = {"read": read_only, "demux": demux_only}[sys.argv.pop(1)]
    sys.exit(main(sys.argv[1:]))
