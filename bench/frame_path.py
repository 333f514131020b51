"""The ingest's per-frame work after the chunk reader, in one process: µs per media message.

    .venv/bin/python bench/frame_path.py [--repeat 7] [--record] [--publishers 50]
    RTMPQ_PUREPYTHON=1 .venv/bin/python bench/frame_path.py          # the pure-Python codecs
    PYTHONPATH=/tmp/base .venv/bin/python bench/frame_path.py        # another checkout's code, same run

What `rtmpq up` does for each media message the chunk reader hands to a publish's sink
(``Publish.on_media``: the demuxer, the ``Frame``, the broadcast, the relay's source and fan-out,
the group cache), fed the messages of the ingest benchmarks' publish (bench_ingest.make_source: 6 s
of 720p30 H.264 at 2.6 Mbit/s + AAC), split as ``ChunkReader.dispatch`` splits them. No socket, no
event loop, no subscriber: the part of the ingest's CPU that docs/benchmarks.md found above the
read path ("The read path alone"), timed alone, so that a change to it can be compared on a busy
machine (best of --repeat passes of the whole publish, each with a fresh broadcast).
--publishers N feeds N publishes at once, their messages interleaved as N publishers' would come,
each payload a fresh copy (as the chunk reader makes one per message).
"""

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_ingest import make_source  # noqa: E402


def flv_messages(path: Path) -> list[tuple[int, int, bytes]]:
    """(type_id, timestamp, body) of every tag of an FLV file."""
    data = path.read_bytes()
    pos = 9 + 4  # header, PreviousTagSize0
    out = []
    while pos + 11 <= len(data):
        type_id = data[pos] & 0x1F
        size = int.from_bytes(data[pos + 1:pos + 4], "big")
        ts = int.from_bytes(data[pos + 4:pos + 7], "big") | data[pos + 7] << 24
        out.append((type_id, ts, data[pos + 11:pos + 11 + size]))
        pos += 11 + size + 4
    return out


def sink_calls(messages) -> list[tuple]:
    """The arguments ChunkReader.dispatch gives a sink for each message."""
    from rtmpq.codec.chunk import _media_header

    calls = []
    for type_id, ts, body in messages:
        media = _media_header(type_id, body, len(body)) if type_id in (8, 9) else None
        if media is None:
            calls.append((type_id, ts, body, None, 0, 0, None))
        else:
            codec, frame_type, cts, offset = media
            calls.append((type_id, ts, body[offset:], codec, frame_type, cts, body[:offset]))
    return calls


def one_pass(calls, record_dir: Path | None, publishers: int = 1) -> float:
    """Seconds of CPU for every call through fresh publishes, broadcasts and relay sources."""
    from rtmpq.media.broadcast import BroadcastRegistry
    from rtmpq.moq.relay import MoqRelay
    from rtmpq.nodes.ingest import Publish

    registry = BroadcastRegistry()
    relay = MoqRelay(registry, cache_local=True)

    class Node:
        _finalizing: set = set()

    class Conn:
        peer = "bench"

    sinks = []
    for i in range(publishers):
        name = f"live/bench{i}"
        broadcast = registry.publish(name)
        relay._local_source(name)  # what the relay does when the broadcast appears
        sinks.append(Publish(Node(), Conn(), 1, broadcast, record_dir).on_media)
    # data messages take the session's path, not the sink's
    media = [c for c in calls if c[3] is not None or c[0] in (8, 9)]
    if publishers == 1:
        work = [(sinks[0], c) for c in media]
    else:
        work = [(sink, (t, ts, bytes(body), *rest)) for (t, ts, body, *rest) in media for sink in sinks]
    gc.collect()
    start = time.process_time()
    for on_media, args in work:
        on_media(*args)
    return time.process_time() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--record", action="store_true", help="with a recorder (its writes are queued, not made)")
    ap.add_argument("--publishers", type=int, default=1, help="publishes fed at once, interleaved")
    args = ap.parse_args()
    import rtmpq

    tmp = Path(tempfile.mkdtemp(prefix="frame-path-"))
    calls = sink_calls(flv_messages(make_source(tmp / "source.flv")))
    media = sum(1 for c in calls if c[0] in (8, 9)) * args.publishers
    gc.freeze()
    times = [one_pass(calls, tmp if args.record else None, args.publishers) for _ in range(args.repeat)]
    best = min(times)
    from rtmpq import codec

    print(f"{Path(rtmpq.__file__).parent.parent}: codecs {codec.BACKEND}, {media} media messages, "
          f"best {best * 1e3:.1f} ms = {best / media * 1e6:.2f} µs per message "
          f"(passes: {', '.join(f'{t * 1e3:.1f}' for t in times)} ms)")


if __name__ == "__main__":
    main()
