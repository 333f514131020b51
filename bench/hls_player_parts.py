"""hls.js in headless Chromium at a given LL-HLS part target: latency, requests, stalls (issue 12).

    .venv/bin/python bench/hls_player_parts.py 0.3 0.2 0.1

For each part target: `rtmpq up` in this process with `[http] part_target` set, a 20 s live
ffmpeg publish (320x240 30 fps, 2 s GoP, AAC: tests/publishers.py), and the edge's player page
(hls.js, as tests/test_browser.py opens it). Once playing, for 6 s: hls.js's own latency estimate
every 0.5 s (median, min, max), the page's requests per second (Resource Timing: playlists,
parts, segments); and from the start of playback, 'waiting' events of the video element (stalls),
and from the page's start, hls.js's error details.
"""

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from rtmpq.config import HttpConfig  # noqa: E402
from rtmpq.nodes.up import UpNode  # noqa: E402
from tests.conftest import local_config  # noqa: E402
from tests.publishers import ffmpeg_publish_args, run_process  # noqa: E402
from tests.test_browser import DevTools, chromium_page  # noqa: E402

SECONDS = 6.0


async def measure(part_target: float) -> str:
    tmp = Path(tempfile.mkdtemp())
    config = local_config(tmp)
    config.http = HttpConfig(host="127.0.0.1", port=0, part_target=part_target)
    node = UpNode(config)
    await node.start()
    rtmp = node.rtmp.address[1]
    host, port = node.edge.address
    publisher = asyncio.create_task(run_process(
        ffmpeg_publish_args(f"rtmp://127.0.0.1:{rtmp}/live/web", str(tmp / "ref.flv"), seconds=20), timeout=60))
    await node.registry.wait_for("live/web", 10)
    browser, ws_url = await chromium_page(tmp, f"http://{host}:{port}/live/web/")
    try:
        async with websockets.connect(ws_url, max_size=None) as ws:
            page = DevTools(ws)
            await page.playback_started()
            await page.evaluate("window.stalls = 0; document.getElementById('video')"
                                ".addEventListener('waiting', () => window.stalls++)")
            await asyncio.sleep(2)
            await page.evaluate("performance.setResourceTimingBufferSize(100000); performance.clearResourceTimings()")
            start = time.monotonic()
            samples = []
            while time.monotonic() - start < SECONDS:
                await asyncio.sleep(0.5)
                samples.append(await page.evaluate("window.rtmpqHls.latency"))
            requests = await page.evaluate("performance.getEntriesByType('resource').length")
            elapsed = time.monotonic() - start
            stalls = await page.evaluate("window.stalls")
            errors = await page.evaluate("JSON.stringify(window.rtmpqErrors)")
    finally:
        browser.terminate()
        await browser.wait()
        await node.close()
        await publisher
    return (f"part target {part_target} s: hls.js latency median {statistics.median(samples):.2f} s "
            f"(min {min(samples):.2f}, max {max(samples):.2f}); {requests / elapsed:.1f} requests/s; "
            f"stalls {stalls}; errors {errors}")


if __name__ == "__main__":
    for target in [float(a) for a in sys.argv[1:]] or [0.3, 0.2, 0.1]:
        print(asyncio.run(measure(target)), flush=True)
