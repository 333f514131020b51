"""The node image: built with buildah from the Containerfile (on a Debian base made with
debootstrap, no registry needed), then run: `rtmpq up` in one container, and a deployment of
ingest, relay and edge in three. ffmpeg publishes from the host; a MoQ subscriber and an HLS reader
on the host get the stream out of the containers."""

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import urllib.request
from pathlib import Path

import pytest

from rtmpq.media.frames import Frame
from rtmpq.moq.client import subscribe_broadcast
from rtmpq.moq.transport import connect_moq

from .conftest import free_port, need, wait_tcp
from .publishers import as_packets, ffmpeg_publish_args, probe_packets, run_process

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "localhost/rtmpq-test"
BUILDAH = ["buildah", "--storage-driver", "vfs"]
# building the image (the first test) takes minutes on a loaded 2-core machine
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def image() -> str:
    need("buildah")
    need("debootstrap")
    assert os.geteuid() == 0, "building images with buildah and debootstrap here needs root"
    build = subprocess.run([str(ROOT / "scripts" / "build-image"), IMAGE], capture_output=True, text=True, timeout=900)
    assert build.returncode == 0, (build.stdout + build.stderr)[-3000:]
    return IMAGE


@contextlib.asynccontextmanager
async def container(image: str, *args: str):
    """A container of ``image`` running ``rtmpq ARGS``; stopped and removed on exit."""
    rc, name = await run_process([*BUILDAH, "from", image])
    assert rc == 0, name
    name = name.strip().splitlines()[-1]
    proc = await asyncio.create_subprocess_exec(
        # broadcasts end when their publisher leaves (the tests read them to the end)
        *BUILDAH, "run", "--isolation", "chroot", "--env", "RTMPQ_PUBLISH_GRACE_PERIOD=0", name, "--", "rtmpq", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, start_new_session=True)
    try:
        yield name, proc
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 20)
        await run_process([*BUILDAH, "rm", name])


async def still_running(*procs) -> None:
    for proc in procs:
        assert proc.returncode is None, (await proc.stdout.read()).decode(errors="replace")


async def receive(moq_port: int, broadcast: str, on_frame=None) -> list[Frame]:
    """Every frame of ``broadcast``, subscribing before it is live (the subscriber waits for it)."""
    frames = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while True:  # the node in the container may still be making its certificate and binding
        try:
            connection = connect_moq("127.0.0.1", moq_port, insecure=True, timeout=2)
            conn = await connection.__aenter__()
            break
        except ConnectionError:
            assert loop.time() < deadline, "the MoQ listener never answered"
    try:
        async for item in subscribe_broadcast(conn, broadcast, wait=30):  # ends with the broadcast
            if isinstance(item, Frame):
                frames.append(item)
                if on_frame is not None:
                    await on_frame(len(frames))
    finally:
        await connection.__aexit__(None, None, None)
    return frames


def assert_same_as_encoded(frames: list[Frame], ref: str) -> None:
    reference = probe_packets(ref)
    for track in ("video", "audio"):
        mine = sorted((f for f in frames if f.track == track), key=lambda f: (f.group, f.index))
        assert as_packets(mine) == [p for p in reference if p.track == track], track


def http_get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, r.read()


async def test_the_node_image_runs_rtmpq_up(image, tmp_path):
    need("ffmpeg")
    rtmp, moq, http = free_port(), free_port(socket.SOCK_DGRAM), free_port()
    got = {}

    async def look_at_the_edge(count: int) -> None:
        if count == 20:  # the edge inside serves the same broadcast over HTTP
            got["playlist"] = await asyncio.to_thread(http_get, f"http://127.0.0.1:{http}/live/box/index.m3u8")
            got["player"] = await asyncio.to_thread(http_get, f"http://127.0.0.1:{http}/hls.min.js")

    async with container(image, "up", "--rtmp", f"127.0.0.1:{rtmp}", "--moq", f"127.0.0.1:{moq}", "--http",
                         f"127.0.0.1:{http}", "--state-dir", "/var/lib/rtmpq", "--static", "/opt/rtmpq/static") as (name, node):
        rc, uid = await run_process([*BUILDAH, "run", "--isolation", "chroot", name, "--", "id", "-u"])
        assert rc == 0 and uid.strip() != "0", uid  # the node runs unprivileged
        receiving = asyncio.create_task(receive(moq, "live/box", look_at_the_edge))  # the subscriber comes first
        await wait_tcp(rtmp)
        await still_running(node)
        ref = str(tmp_path / "ref.flv")
        publisher = asyncio.create_task(run_process(ffmpeg_publish_args(f"rtmp://127.0.0.1:{rtmp}/live/box", ref, seconds=4)))
        frames = await receiving
        rc, output = await publisher
        assert rc == 0, output
    assert got["playlist"][0] == 200 and b"#EXT-X-STREAM-INF" in got["playlist"][1]
    assert got["player"][0] == 200 and len(got["player"][1]) > 100_000
    assert_same_as_encoded(frames, ref)


async def test_ingest_relay_and_edge_each_in_a_container(image, tmp_path):
    need("ffmpeg")
    rtmp, relay, http = free_port(), free_port(socket.SOCK_DGRAM), free_port()
    upstream = ["--upstream", f"moqt://127.0.0.1:{relay}", "--insecure"]
    got = {}

    async def play_from_the_edge(count: int) -> None:
        if count == 20:  # a player's first request makes the edge subscribe through the relay
            await wait_tcp(http)  # the edge's container may still be starting
            got["playlist"] = await asyncio.to_thread(http_get, f"http://127.0.0.1:{http}/live/tree/index.m3u8")

    async with (container(image, "relay", "--moq", f"127.0.0.1:{relay}", "--state-dir", "/var/lib/rtmpq") as (_, r),
                container(image, "ingest", "--rtmp", f"127.0.0.1:{rtmp}", *upstream) as (_, i),
                container(image, "edge", "--http", f"127.0.0.1:{http}", *upstream) as (_, e)):
        receiving = asyncio.create_task(receive(relay, "live/tree", play_from_the_edge))  # the subscriber comes first
        await wait_tcp(rtmp)
        await still_running(r, i, e)
        ref = str(tmp_path / "ref.flv")
        publisher = asyncio.create_task(run_process(ffmpeg_publish_args(f"rtmp://127.0.0.1:{rtmp}/live/tree", ref, seconds=5)))
        frames = await receiving
        rc, output = await publisher
        assert rc == 0, output
        await still_running(r, i, e)
    assert got["playlist"][0] == 200 and b"#EXT-X-STREAM-INF" in got["playlist"][1]
    assert_same_as_encoded(frames, ref)
