"""Headless Chromium plays the edge's player page (hls.js, LL-HLS) while ffmpeg publishes."""

import asyncio
import itertools
import json
import shutil
import socket
import urllib.request
from pathlib import Path

import pytest
import websockets

from rtmpq.nodes.up import UpNode

from .conftest import local_config, need
from .publishers import ffmpeg_publish_args, run_process

STATIC = Path(__file__).resolve().parent.parent / "var" / "static"


@pytest.fixture
async def node(tmp_path):
    if not (STATIC / "hls.min.js").exists():
        pytest.fail("hls.js is not installed: run `make hlsjs`")
    config = local_config(tmp_path)
    config.http.static_dir = STATIC
    n = UpNode(config)
    await n.start()
    yield n
    await n.close()


class DevTools:
    """Just enough of the Chrome DevTools protocol to evaluate JavaScript in a page."""

    def __init__(self, ws):
        self.ws = ws
        self.ids = itertools.count(1)

    async def call(self, method: str, **params):
        msg_id = next(self.ids)
        await self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            reply = json.loads(await self.ws.recv())
            if reply.get("id") == msg_id:
                return reply.get("result", {})

    async def evaluate(self, expression: str):
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")


async def test_hls_js_in_chromium_plays_live_and_reports_latency(node, tmp_path, record_property):
    chromium = shutil.which("chromium") or need("chromium")
    need("ffmpeg")
    rtmp_port = node.rtmp.address[1]
    host, http_port = node.edge.address
    publisher = asyncio.create_task(run_process(
        ffmpeg_publish_args(f"rtmp://127.0.0.1:{rtmp_port}/live/web", str(tmp_path / "ref.flv"), seconds=10), timeout=60))
    await node.registry.wait_for("live/web", 10)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        debug_port = s.getsockname()[1]
    browser = await asyncio.create_subprocess_exec(
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--autoplay-policy=no-user-gesture-required", f"--user-data-dir={tmp_path / 'chromium'}",
        f"--remote-debugging-port={debug_port}", f"http://{host}:{http_port}/live/web/",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        targets = None
        for _ in range(100):
            try:
                targets = json.loads(await asyncio.to_thread(
                    lambda: urllib.request.urlopen(f"http://127.0.0.1:{debug_port}/json", timeout=2).read()))
                if any(t["type"] == "page" for t in targets):
                    break
            except OSError:
                pass
            await asyncio.sleep(0.1)
        page = next(t for t in targets if t["type"] == "page")
        async with websockets.connect(page["webSocketDebuggerUrl"], max_size=None) as ws:
            devtools = DevTools(ws)
            first = None
            for _ in range(100):  # until playback starts
                first = await devtools.evaluate("document.getElementById('video').currentTime")
                if first:
                    break
                await asyncio.sleep(0.1)
            assert first, (await devtools.evaluate("document.getElementById('status').textContent"),
                           await devtools.evaluate("JSON.stringify(window.rtmpqErrors)"))
            samples = []  # hls.js's own estimate: live edge - playhead, every 0.5 s for 4 s
            for _ in range(8):
                await asyncio.sleep(0.5)
                samples.append(await devtools.evaluate("window.rtmpqHls.latency"))
            later = await devtools.evaluate("document.getElementById('video').currentTime")
        assert later > first + 1.0  # the video plays (a loaded machine may stall it for a while)
        assert all(s is not None and s > 0 for s in samples), samples
        latency = sorted(samples)[len(samples) // 2]
        record_property("hlsjs_live_latency_s", round(latency, 3))
        print(f"hls.js live latency: median {latency:.3f} s of {[round(s, 2) for s in samples]}")
        # the player page sits half a second behind the live edge (edge/server.py PLAYER_PAGE)
        assert latency < 1.0, samples
    finally:
        browser.terminate()
        await browser.wait()
        rc, output = await publisher
    assert rc == 0, output
