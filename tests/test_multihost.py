"""Many hosts, each its own network namespace (tests/netns.py): two ingest origins (`rtmpq up`), a
relay and an LL-HLS edge, and the directory (a real redis-server) on a fifth. The relay -> edge
link goes through the project's impairment proxy (delay and loss). ffmpeg publishes inside one
ingest's namespace and ffprobe, inside the edge's, reads the HLS playlist and decodes every frame;
the publisher then moves to the other ingest and playback goes on: the relay finds the new origin
in the directory, the edge's playlist marks the seam and goes on."""

import asyncio
import json
import os
import sys
import time

import pytest

from .conftest import need
from .netns import Lab
from .publishers import ffmpeg_publish_args
from .test_lifecycle import long_publish_args

# the whole scenario takes about 25 s here; under load it may take longer
pytestmark = pytest.mark.timeout(180)
RTMP, MOQ, HTTP, REDIS, PROXY = 1935, 4443, 8080, 6379, 4444
TTL = "2"  # directory lease (seconds)


@pytest.fixture
async def lab():
    assert os.geteuid() == 0, "network namespaces need root (CI runs as root)"
    need("ip")
    lab = Lab()
    try:
        yield lab
    finally:
        await lab.close()


async def fetch(lab: Lab, host: str, url: str) -> tuple[int, bytes]:
    """GET ``url`` from inside ``host`` (curl-free: Python's urllib in that namespace)."""
    code = ("import sys, urllib.request, urllib.error\n"
            "try:\n"
            "    r = urllib.request.urlopen(sys.argv[1], timeout=10); sys.stdout.buffer.write(b'%d\\n' % r.status + r.read())\n"
            "except urllib.error.HTTPError as e:\n"
            "    sys.stdout.buffer.write(b'%d\\n' % e.code)\n"
            "except OSError:\n"
            "    sys.stdout.buffer.write(b'0\\n')\n")
    proc = await lab.run(host, sys.executable, "-c", code, url)
    out, _ = await proc.communicate()
    status, _, body = out.partition(b"\n")
    return int(status or 0), body


async def poll(lab: Lab, host: str, url: str, accept, deadline: float = 40.0) -> bytes:
    end = time.monotonic() + deadline
    while True:
        status, body = await fetch(lab, host, url)
        if status == 200 and accept(body):
            return body
        assert time.monotonic() < end, (url, status, body[-500:])
        await asyncio.sleep(0.3)


async def node(lab: Lab, host: str, *args: str, env: dict | None = None):
    return await lab.run(host, sys.executable, "-m", "rtmpq", *args, "--log-level", "INFO", env=env)


async def test_playback_from_an_edge_goes_on_when_the_publisher_moves_to_another_host(lab, tmp_path):
    need("ffmpeg")
    need("ffprobe")
    need("redis-server")
    ips = {name: lab.host(name) for name in ("directory", "ingest-a", "ingest-b", "relay", "edge")}
    directory = f"redis://{ips['directory']}:{REDIS}/0"
    await lab.run("directory", "redis-server", "--bind", ips["directory"], "--port", str(REDIS), "--save", "",
                  "--protected-mode", "no",  # reachable from the other namespaces, and only from them
                  "--appendonly", "no", "--dir", str(tmp_path), stdout=asyncio.subprocess.DEVNULL)
    common = {"RTMPQ_DIRECTORY_TTL": TTL}
    nodes = []
    for name, grace in (("ingest-a", "30"), ("ingest-b", "0")):  # B ends the broadcast when its publisher stops
        nodes.append(await node(lab, name, "up", "--rtmp", f"127.0.0.1:{RTMP}", "--http", f"127.0.0.1:{HTTP}",
                                "--moq", f"{ips[name]}:{MOQ}", "--state-dir", str(tmp_path / name),
                                "--directory", directory,
                                env={**common, "RTMPQ_PUBLISH_GRACE_PERIOD": grace, "RTMPQ_DIRECTORY_NODE_ID": name}))
    nodes.append(await node(lab, "relay", "relay", "--moq", f"{ips['relay']}:{MOQ}", "--state-dir",
                            str(tmp_path / "relay"), "--directory", directory, "--insecure", env=common))
    # the relay -> edge link: 20 ms each way, 1 % loss, through the impairment proxy on the edge's host
    await lab.run("edge", sys.executable, "-m", "rtmpq.netem", "--listen", f"127.0.0.1:{PROXY}",
                  "--target", f"{ips['relay']}:{MOQ}", "--delay-ms", "20", "--loss", "0.01", "--seed", "7",
                  stdout=asyncio.subprocess.DEVNULL)
    nodes.append(await node(lab, "edge", "edge", "--http", f"127.0.0.1:{HTTP}", "--upstream",
                            f"moqt://127.0.0.1:{PROXY}", "--insecure", env={"RTMPQ_UPSTREAM_WAIT": "20"}))
    publisher = None
    try:
        await poll(lab, "ingest-a", f"http://127.0.0.1:{HTTP}/hls.min.js", lambda body: True)  # A is up
        publisher = await lab.run("ingest-a", *long_publish_args(f"rtmp://127.0.0.1:{RTMP}/live/wan", seconds=60),
                                  stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        base = f"http://127.0.0.1:{HTTP}/live/wan"
        await poll(lab, "edge", f"{base}/index.m3u8", lambda body: b"#EXT-X-STREAM-INF" in body)
        player = await lab.run("edge", "ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0",
                               "-show_entries", "stream=nb_read_frames", "-of", "json", f"{base}/video.m3u8")
        await poll(lab, "edge", f"{base}/video.m3u8", lambda body: body.count(b"#EXTINF") >= 2)
        publisher.kill()  # the encoder moves to the other ingest host
        await publisher.wait()
        moved = await lab.run("ingest-b", *ffmpeg_publish_args(f"rtmp://127.0.0.1:{RTMP}/live/wan",
                                                                str(tmp_path / "b.flv"), seconds=5))
        _, err = await asyncio.wait_for(moved.communicate(), 60)
        assert moved.returncode == 0, err.decode()
        body = await poll(lab, "edge", f"{base}/video.m3u8", lambda body: b"#EXT-X-ENDLIST" in body)
        assert b"#EXT-X-DISCONTINUITY" in body  # one playlist across the move, the seam marked
        out, err = await asyncio.wait_for(player.communicate(), 60)
        assert player.returncode == 0, err.decode()
        decoded = int(json.loads(out)["streams"][0]["nb_read_frames"])
        # A's two segments seen before the move (2 s groups at 30 fps) and B's from the group the
        # relay joined at (under load as late as its last, 1 s of 5 s)
        assert decoded >= 2 * 60 + 30, decoded
    finally:
        if publisher is not None and publisher.returncode is None:
            publisher.kill()
        for proc in nodes:
            if proc.returncode is None:
                proc.terminate()
        for proc in nodes:
            _, err = await asyncio.wait_for(proc.communicate(), 20)
            print(err.decode(errors="replace"))  # shown when the test fails
            assert b"Traceback" not in err, err.decode(errors="replace")


