"""Instant start: time from a first viewer's first playlist request to a decodable frame (issue 12).

    .venv/bin/python -m pytest bench/bench_instant_start.py --benchmark-only -s

`rtmpq up` (in this process) takes one `ffmpeg -re -c copy` publish of a 720p file (2 Mbit/s,
2 s GoP) teed to 8 broadcast names. 5 s in, a first viewer opens each name, 0.25 s apart:
GET index.m3u8, GET video.m3u8, then the init segment and the newest independent part listed
(what a low-latency player starts with); the time is taken when the part's last byte is in, and
ffprobe checks afterwards that init + part decodes at least one frame. Compared in the same run
with the edge reading only the broadcast (the relay's caches not used: the behaviour before),
where the first playlist waits for a whole segment, and with a separate edge (`rtmpq edge
--upstream moqt://...` as its own process, below the same `rtmpq up`) that fills its window with
a joining FETCH from the relay above ([upstream] fill_groups = 6, the default) or does not
(fill_groups = 0: the behaviour before).
"""

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench_edge import http_get, percentile
from rtmpq.config import Config, HttpConfig, IngestConfig, MoqConfig, PublishConfig
from rtmpq.nodes.up import UpNode, local_broadcast_source

NAMES = 8
RESULTS = {}


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("start") / "source.flv"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30", "-f", "lavfi",
                    "-i", "sine", "-t", "12", "-c:v", "libx264", "-preset", "ultrafast", "-b:v", "2M", "-g", "60",
                    "-keyint_min", "60", "-c:a", "aac", "-f", "flv", str(path)], check=True)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def separate_edge(moq_port: int, tmp: Path, fill_groups: int):
    """`rtmpq edge --upstream` as its own process; returns (process, its HTTP port) once it listens."""
    port = free_port()
    env = {**os.environ, "RTMPQ_UPSTREAM_FILL_GROUPS": str(fill_groups)}
    log = open(tmp / f"edge-{fill_groups}.log", "wb")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rtmpq", "edge", "--http", f"127.0.0.1:{port}", "--upstream",
        f"moqt://127.0.0.1:{moq_port}", "--insecure", stdout=log, stderr=log, env=env)
    for _ in range(200):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return process, port
        except OSError:
            await asyncio.sleep(0.1)
    raise RuntimeError("the edge never listened")


async def first_views(source: Path, tmp: Path, layout: str) -> dict:
    node = UpNode(Config(rtmp=IngestConfig(host="127.0.0.1", port=0), moq=MoqConfig(host="127.0.0.1", port=0, state_dir=tmp),
                         http=HttpConfig(host="127.0.0.1", port=0), publish=PublishConfig(grace_period=0)))
    if layout == "broadcast-only":
        node.edge.open_broadcast = local_broadcast_source(node.registry)
    await node.start()
    edge = None
    if layout.startswith("separate-edge"):
        edge, port = await separate_edge(node.moq_address[1], tmp, 6 if layout == "separate-edge-fetch" else 0)
    else:
        port = node.edge.address[1]
    times, segments, decodable = [], [], 0
    try:
        outputs = "|".join(f"[f=flv]rtmp://127.0.0.1:{node.rtmp.address[1]}/live/s{i}" for i in range(NAMES))
        publisher = await asyncio.create_subprocess_exec("ffmpeg", "-v", "error", "-re", "-i", str(source), "-map", "0",
                                                         "-c", "copy", "-f", "tee", outputs)
        await node.registry.wait_for(f"live/s{NAMES - 1}", 10)
        await asyncio.sleep(5.0)
        async def view(i: int) -> None:
            t0 = time.monotonic()
            await http_get(port, f"/live/s{i}/index.m3u8")
            playlist = (await http_get(port, f"/live/s{i}/video.m3u8")).decode()
            segments.append(playlist.count("#EXTINF"))  # whole segments in the first answer
            init = re.search(r'#EXT-X-MAP:URI="([^"]+)"', playlist)[1]
            part = re.findall(r'#EXT-X-PART:[^\n]*URI="([^"]+)",INDEPENDENT=YES', playlist)[-1]
            data = await http_get(port, f"/live/s{i}/{init}") + await http_get(port, f"/live/s{i}/{part}")
            times.append((time.monotonic() - t0) * 1000)
            (tmp / f"first{i}.mp4").write_bytes(data)

        viewers = []
        for i in range(NAMES):  # first viewers 0.25 s apart, each on its own broadcast
            viewers.append(asyncio.create_task(view(i)))
            await asyncio.sleep(0.25)
        await asyncio.gather(*viewers)
        await publisher.wait()
    finally:
        if edge is not None:
            edge.terminate()
            await edge.wait()
        await node.close()
    for i in range(NAMES):
        out = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-show_entries", "stream=nb_read_frames",
                              "-of", "json", str(tmp / f"first{i}.mp4")], capture_output=True, text=True).stdout
        decodable += int(json.loads(out)["streams"][0]["nb_read_frames"]) > 0
    return {"viewers": NAMES, "decodable": decodable, "first_segments": min(segments), "p50_ms": round(percentile(times, 0.5)),
            "max_ms": round(max(times))}


LAYOUTS = {
    "from-group-cache": "edge of rtmpq up, from the relay's group caches",
    "broadcast-only": "edge of rtmpq up, broadcast only (before)",
    "separate-edge-fetch": "separate edge, joining FETCH from the relay above",
    "separate-edge-live": "separate edge, fill_groups = 0 (before)",
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_first_playlist_to_first_frame(benchmark, source, tmp_path, layout):
    stats = benchmark.pedantic(lambda: asyncio.run(first_views(source, tmp_path, layout)), rounds=1, iterations=1)
    assert stats["decodable"] == stats["viewers"], stats  # every first view got a frame it can decode
    stats["load_average"] = round(os.getloadavg()[0], 1)
    benchmark.extra_info.update(stats)
    RESULTS[LAYOUTS[layout]] = stats
    print("\n", RESULTS)
