"""The node image: built with buildah from the Containerfile (on a Debian base made with
debootstrap, no registry needed), then `rtmpq up` runs inside it; ffmpeg publishes from the host,
a MoQ subscriber and an HLS reader on the host get the stream out of the container."""

import asyncio
import os
import signal
import socket
import urllib.request
from pathlib import Path

from rtmpq.media.frames import Frame
from rtmpq.moq.client import subscribe_broadcast
from rtmpq.moq.transport import connect_moq

from .conftest import free_port, need
from .publishers import as_packets, ffmpeg_publish_args, probe_packets, run_process

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "localhost/rtmpq-test"
BUILDAH = ["buildah", "--storage-driver", "vfs"]


async def test_the_node_image_runs_rtmpq_up(tmp_path):
    need("buildah")
    need("debootstrap")
    need("ffmpeg")
    assert os.geteuid() == 0, "building images with buildah and debootstrap here needs root"
    rc, output = await run_process([str(ROOT / "scripts" / "build-image"), IMAGE], timeout=900)
    assert rc == 0, output[-3000:]
    rc, container = await run_process([*BUILDAH, "from", IMAGE])
    assert rc == 0, container
    container = container.strip().splitlines()[-1]
    rc, uid = await run_process([*BUILDAH, "run", "--isolation", "chroot", container, "--", "id", "-u"])
    assert rc == 0 and uid.strip() != "0", uid  # the node runs unprivileged
    rtmp, moq, http = free_port(), free_port(socket.SOCK_DGRAM), free_port()
    node = await asyncio.create_subprocess_exec(
        *BUILDAH, "run", "--isolation", "chroot", container, "--", "rtmpq", "up", "--rtmp", f"127.0.0.1:{rtmp}",
        "--moq", f"127.0.0.1:{moq}", "--http", f"127.0.0.1:{http}", "--state-dir", "/var/lib/rtmpq",
        "--static", "/opt/rtmpq/static", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        start_new_session=True)
    try:
        await asyncio.sleep(3)  # the node makes its certificate and binds
        assert node.returncode is None, (await node.stdout.read()).decode(errors="replace")
        ref = str(tmp_path / "ref.flv")
        publisher = asyncio.create_task(run_process(ffmpeg_publish_args(f"rtmp://127.0.0.1:{rtmp}/live/box", ref, seconds=4)))
        await asyncio.sleep(0.5)
        frames = []
        async with connect_moq("127.0.0.1", moq, insecure=True) as conn:
            async for item in subscribe_broadcast(conn, "live/box"):  # ends with the broadcast
                if isinstance(item, Frame):
                    frames.append(item)
                    if len(frames) == 20:  # the edge inside serves the same broadcast over HTTP
                        page = await asyncio.to_thread(lambda: urllib.request.urlopen(
                            f"http://127.0.0.1:{http}/live/box/index.m3u8", timeout=10).read())
                        player = await asyncio.to_thread(lambda: urllib.request.urlopen(
                            f"http://127.0.0.1:{http}/hls.min.js", timeout=10).status)
        rc, output = await publisher
        assert rc == 0, output
    finally:
        if node.returncode is None:
            os.killpg(node.pid, signal.SIGTERM)
        await asyncio.wait_for(node.wait(), 20)
        await run_process([*BUILDAH, "rm", container])
    assert b"#EXT-X-STREAM-INF" in page and player == 200
    reference = probe_packets(ref)
    for track in ("video", "audio"):
        mine = sorted((f for f in frames if f.track == track), key=lambda f: (f.group, f.index))
        assert as_packets(mine) == [p for p in reference if p.track == track], track
