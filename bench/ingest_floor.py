"""`python bench/ingest_floor.py (read|demux) <rtmpq arguments>`: rtmpq with its ingest cut short, to
measure what the layers below a cut cost (bench/bench_ingest.py with INGEST_FLOOR=1).

    read   every media message is read (epoll, recv_into, chunk reassembly, FLV header split) and
           handed to the publish's sink, which drops it: the read path alone, nothing downstream
    demux  the sink also runs the demuxer (timestamps, groups, NAL check, Frame objects) and keeps
           the catalog current, but pushes no frame into the broadcast: no relay, cache or edge
    hold   as demux, and each frame is kept in the least a cache for late joiners must be: a list
           per track of its newest GROUP_CACHE_MAX_GROUPS groups' frames (no broadcast, no relay,
           no byte or age bound), what the group cache's layers cost above that

Analysis only: the product has no such switch. Commands, handshakes and the publish's lifecycle
run as in `rtmpq up`.
"""

import sys
import time

from rtmpq.cli import main
from rtmpq.media.frames import Frame
from rtmpq.moq.group_cache import GROUP_CACHE_MAX_GROUPS
from rtmpq.nodes import ingest


def read_only(self, type_id, timestamp, body, codec, frame_type, cts, header) -> None:
    self.last_media_ns = time.time_ns()


def demux_only(self, type_id, timestamp, body, codec, frame_type, cts, header) -> None:
    self.last_media_ns = now_ns = time.time_ns()
    for item in self.demuxer.media(type_id, timestamp, body, codec, frame_type, cts, header, now_ns):
        if type(item) is not Frame:
            self.broadcast.set_catalog(item)


def demux_hold(self, type_id, timestamp, body, codec, frame_type, cts, header) -> None:
    self.last_media_ns = now_ns = time.time_ns()
    for item in self.demuxer.media(type_id, timestamp, body, codec, frame_type, cts, header, now_ns):
        if type(item) is not Frame:
            self.broadcast.set_catalog(item)
            continue
        held = self.__dict__.setdefault("held", {})
        groups = held.get(item.track)
        if groups is None:
            groups = held[item.track] = {}
        frames = groups.get(item.group)
        if frames is None:
            frames = groups[item.group] = []
            if len(groups) > GROUP_CACHE_MAX_GROUPS:
                del groups[next(iter(groups))]
        frames.append(item)


if __name__ == "__main__":
    ingest.Publish.on_media = {"read": read_only, "demux": demux_only, "hold": demux_hold}[sys.argv.pop(1)]
    sys.exit(main(sys.argv[1:]))
