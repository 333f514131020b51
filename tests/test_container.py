"""The node image: built once per module with buildah from the Dockerfile (on a Debian base made with
debootstrap, no registry needed), then run: `rtmpq up` as the image's default command, and the
services of compose.yaml from their own command lines. ffmpeg publishes from the host; a MoQ
subscriber and an HLS reader on the host get the stream out of the containers.

No container network here: `buildah run --isolation chroot` shares the host's network, so every
service gets ITS OWN PORTS: each listener of a compose command (``--rtmp/--moq/--http
0.0.0.0:PORT``) is moved to a free loopback port, and each ``SERVICE:PORT`` a command dials is
replaced by that service's loopback address. Nothing else of the command lines changes.
"""

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from rtmpq.media.frames import Frame
from rtmpq.moq.client import subscribe_broadcast
from rtmpq.moq.transport import connect_moq

from .conftest import free_port, need, wait_tcp
from .publishers import as_packets, ffmpeg_publish_args, probe_packets, run_process

ROOT = Path(__file__).resolve().parent.parent
# Another checkout building at the same time on this machine must not retag our image.
IMAGE = os.environ.get("RTMPQ_TEST_IMAGE", "localhost/rtmpq-test")
BUILDAH = ["buildah", "--storage-driver", "vfs"]
# building the image (once per module) takes minutes on a loaded 2-core machine
pytestmark = pytest.mark.timeout(900)
LISTEN_FLAGS = {"--rtmp": socket.SOCK_STREAM, "--moq": socket.SOCK_DGRAM, "--http": socket.SOCK_STREAM}


@pytest.fixture(scope="module")
def image() -> str:
    need("buildah")
    need("debootstrap")
    assert os.geteuid() == 0, "building images with buildah and debootstrap here needs root"
    build = subprocess.run([str(ROOT / "scripts" / "build-image"), IMAGE], capture_output=True, text=True, timeout=900)
    assert build.returncode == 0, (build.stdout + build.stderr)[-3000:]
    return IMAGE


def image_config(image: str) -> dict:
    out = subprocess.run([*BUILDAH, "inspect", "--type", "image", image], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)["Docker"]["config"]


@contextlib.asynccontextmanager
async def container(image: str, *args: str, env: dict | None = None, volumes: list[str] = ()):
    """A container of ``image`` running ``rtmpq ARGS`` (no ARGS: the image's ENTRYPOINT + CMD, as a
    container runtime would; `buildah run` itself needs the command spelled out); stopped and
    removed on exit."""
    rc, name = await run_process([*BUILDAH, "from", image])
    assert rc == 0, name
    name = name.strip().splitlines()[-1]
    flags = []
    for key, value in {"RTMPQ_PUBLISH_GRACE_PERIOD": "0", **(env or {})}.items():  # broadcasts end with their publisher
        flags += ["--env", f"{key}={value}"]
    for volume in volumes:
        flags += ["--volume", volume]
    if args:
        command = ["--", "rtmpq", *args]
    else:
        config = image_config(image)
        command = ["--", *config["Entrypoint"], *config["Cmd"]]
    proc = await asyncio.create_subprocess_exec(*BUILDAH, "run", "--isolation", "chroot", *flags, name, *command,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                                                start_new_session=True)
    try:
        yield name, proc
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 20)
        await run_process([*BUILDAH, "rm", name])


async def run_in_image(image: str, *command: str) -> tuple[int, str]:
    """A one-off command in a fresh container of ``image``."""
    rc, name = await run_process([*BUILDAH, "from", image])
    assert rc == 0, name
    name = name.strip().splitlines()[-1]
    try:
        return await run_process([*BUILDAH, "run", "--isolation", "chroot", name, "--", *command])
    finally:
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
        # every frame is checked: a latency budget far above what a loaded machine may take
        async for item in subscribe_broadcast(conn, broadcast, wait=30, delivery_timeout_ms=30_000):
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
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


async def check_health(name: str, config: dict, http: int) -> None:
    """Run the image's own HEALTHCHECK command inside the running container. Until the node serves
    /healthz (the HTTP API's endpoint), only that endpoint's absence is tolerated: the check must
    then fail on a 404 from a listener that answers HTTP, never on a dead one."""
    test = config["Healthcheck"]["Test"]
    assert test[0] == "CMD-SHELL" and "rtmpq health" in test[1], test
    rc, out = await run_process([*BUILDAH, "run", "--isolation", "chroot", "--env", f"RTMPQ_HTTP_PORT={http}", name,
                                 "--", "sh", "-c", test[1]])
    if rc != 0:
        status, _ = await asyncio.to_thread(http_get, f"http://127.0.0.1:{http}/healthz")
        assert status == 404, (status, out)  # answered HTTP: only /healthz itself is missing


async def test_the_image_runs_rtmpq_up_by_default_unprivileged_and_healthy(image, tmp_path):
    need("ffmpeg")
    config = image_config(image)
    assert config["Entrypoint"] == ["rtmpq"] and config["Cmd"] == ["up"]
    assert {"1935/tcp", "4443/udp", "8080/tcp"} <= set(config["ExposedPorts"])
    assert config["User"] == "rtmpq"
    rtmp, moq, http = free_port(), free_port(socket.SOCK_DGRAM), free_port()
    got = {}

    async def look_at_the_edge(count: int) -> None:
        if count == 20:  # the edge inside serves the same broadcast over HTTP, with the player's hls.js
            got["playlist"] = await asyncio.to_thread(http_get, f"http://127.0.0.1:{http}/live/box/index.m3u8")
            got["player"] = await asyncio.to_thread(http_get, f"http://127.0.0.1:{http}/hls.min.js")

    listen = {"RTMPQ_RTMP_HOST": "127.0.0.1", "RTMPQ_RTMP_PORT": rtmp, "RTMPQ_MOQ_HOST": "127.0.0.1",
              "RTMPQ_MOQ_PORT": moq, "RTMPQ_HTTP_HOST": "127.0.0.1", "RTMPQ_HTTP_PORT": http}
    async with container(image, env=listen) as (name, node):  # the default command: up
        rc, uid = await run_process([*BUILDAH, "run", "--isolation", "chroot", name, "--", "id", "-u"])
        assert rc == 0 and uid.strip() != "0", uid  # the node runs unprivileged
        rc, out = await run_process([*BUILDAH, "run", "--isolation", "chroot", name, "--", "sh", "-c",
                                     "command -v gcc cc cython || echo none"])
        assert out.strip() == "none", out  # the runtime stage has no compiler
        receiving = asyncio.create_task(receive(moq, "live/box", look_at_the_edge))  # the subscriber comes first
        await wait_tcp(rtmp)
        await wait_tcp(http)
        await still_running(node)
        await check_health(name, config, http)
        ref = str(tmp_path / "ref.flv")
        publisher = asyncio.create_task(run_process(ffmpeg_publish_args(f"rtmp://127.0.0.1:{rtmp}/live/box", ref, seconds=4)))
        frames = await receiving
        rc, output = await publisher
        assert rc == 0, output
    assert got["playlist"][0] == 200 and b"#EXT-X-STREAM-INF" in got["playlist"][1]
    assert got["player"][0] == 200 and len(got["player"][1]) > 100_000
    assert_same_as_encoded(frames, ref)


def compose_commands(compose: dict) -> tuple[dict[str, list[str]], dict[str, dict[int, int]]]:
    """Each service's command with its own loopback ports (see the module docstring), and the
    port map: service -> {port in compose.yaml: port here}."""
    ports: dict[str, dict[int, int]] = {}
    commands: dict[str, list[str]] = {}
    for service, spec in compose["services"].items():
        command = list(spec["command"])
        ports[service] = {}
        for i, arg in enumerate(command[:-1]):
            if arg in LISTEN_FLAGS:
                _, _, port = command[i + 1].rpartition(":")
                here = free_port(LISTEN_FLAGS[arg])
                ports[service][int(port)] = here
                command[i + 1] = f"127.0.0.1:{here}"
        commands[service] = command
    names = "|".join(map(re.escape, compose["services"]))
    pattern = re.compile(rf"(?<=://)({names}):(\d+)")
    for service, command in commands.items():
        commands[service] = [pattern.sub(lambda m: f"127.0.0.1:{ports[m[1]][int(m[2])]}", arg) for arg in command]
    return commands, ports


def compose_volumes(spec: dict) -> list[str]:
    """The service's bind mounts (paths relative to compose.yaml); named volumes stay in the container."""
    out = []
    for volume in spec.get("volumes", []):
        source, _, rest = volume.partition(":")
        if source.startswith("."):
            out.append(f"{(ROOT / source).resolve()}:{rest}")
    return out


async def test_the_compose_services_run_from_the_image(image, tmp_path):
    need("ffmpeg")
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert {"ingest", "relay", "transcoder", "edge"} <= set(compose["services"])
    assert compose["services"]["transcoder"]["command"][:1] == ["transcode"]
    commands, ports = compose_commands(compose)
    order = ["relay", "ingest", "edge"]  # the relay first: the others dial it
    rc, _ = await run_in_image(image, "rtmpq", "transcode", "--help")
    if rc == 0:  # `rtmpq transcode` lands from another branch; run it too once it exists
        order.append("transcoder")
    relay, rtmp, http = ports["relay"][4443], ports["ingest"][1935], ports["edge"][8080]
    got = {}

    async def play_from_the_edge(count: int) -> None:
        if count == 20:  # a player's first request makes the edge subscribe through the relay
            await wait_tcp(http)  # the edge's container may still be starting
            got["playlist"] = await asyncio.to_thread(http_get, f"http://127.0.0.1:{http}/live/tree/index.m3u8")

    async with contextlib.AsyncExitStack() as stack:
        procs = []
        for service in order:
            _, proc = await stack.enter_async_context(
                container(image, *commands[service], volumes=compose_volumes(compose["services"][service])))
            procs.append(proc)
        receiving = asyncio.create_task(receive(relay, "live/tree", play_from_the_edge))  # the subscriber comes first
        await wait_tcp(rtmp)
        await still_running(*procs)
        ref = str(tmp_path / "ref.flv")
        publisher = asyncio.create_task(run_process(ffmpeg_publish_args(f"rtmp://127.0.0.1:{rtmp}/live/tree", ref, seconds=5)))
        frames = await receiving
        rc, output = await publisher
        assert rc == 0, output
        await still_running(*procs)
    assert got["playlist"][0] == 200 and b"#EXT-X-STREAM-INF" in got["playlist"][1]
    assert_same_as_encoded(frames, ref)
