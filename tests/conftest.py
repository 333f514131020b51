import asyncio
import inspect
import itertools
import json
import os
import shutil
import subprocess
from contextlib import asynccontextmanager
from pathlib import Path
import urllib.error
import urllib.request
import socket

import pytest

from rtmpq import codec
from rtmpq.config import MOQ_IDLE_TIMEOUT, Config, HttpConfig, IngestConfig, MoqConfig, PublishConfig
from rtmpq.nodes.up import UpNode
from rtmpq.moq.transport import DEFAULT_BACKEND


@pytest.fixture(autouse=True)
def _names_hidden_again():
    """A node sets the process-wide ``names_are_public`` at start; each test starts from the default."""
    yield
    from rtmpq.redact import names_are_public
    names_are_public(False)


def pytest_report_header(config):
    return f"rtmpq codec backend: {codec.BACKEND}"


def need(binary: str) -> str:
    """Path of a system binary the test needs; a missing one is a setup error, not a skip."""
    path = shutil.which(binary)
    if path is None:
        pytest.fail(f"{binary} is not installed: run `make install-test` (installs the system packages)")
    return path


def _port_range() -> range:
    """This test process's own slice of the ports below the kernel's ephemeral range. A port the
    kernel handed out (bind to 0) was free only then: before the node under test bound it, an
    outgoing connection (a player, ffmpeg, another worker's test) could take it as its source
    port, and the node failed with "address already in use". The kernel never picks source ports
    below ``ip_local_port_range``, and each xdist worker takes ports from its own slice."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    first = 10000 if low > 12000 else 1024
    workers = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0) % workers
    span = (low - first) // workers
    return range(first + worker * span, first + (worker + 1) * span)


_PORTS = _port_range()
_ports = itertools.cycle(_PORTS)


def _bindable(port: int) -> bool:
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def free_port(kind=socket.SOCK_STREAM) -> int:
    """A loopback port free for both TCP and UDP, from this process's slice (``_port_range``);
    ``kind`` stays for the callers that name one."""
    for _ in range(len(_PORTS)):
        port = next(_ports)
        if _bindable(port):
            return port
    raise RuntimeError("no free loopback port in this test process's range")


async def wait_tcp(port: int, host: str = "127.0.0.1", deadline: float = 20.0) -> None:
    """Wait until something listens on a TCP port (a node started as a process)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while True:
        try:
            _, writer = await asyncio.open_connection(host, port)
            writer.close()
            return
        except OSError:
            if loop.time() > end:
                raise
            await asyncio.sleep(0.1)


async def until(condition, deadline: float = 20.0, what: str = "condition", interval: float = 0.05) -> None:
    """Wait for ``condition()`` to be true, polling every ``interval`` seconds, for at most
    ``deadline`` seconds. ``condition`` may be a coroutine function (an HTTP request, a page's
    state): a call still running at the deadline is cancelled."""

    async def met():
        result = condition()
        return await result if inspect.isawaitable(result) else result

    try:
        async with asyncio.timeout(deadline):
            while not await met():
                await asyncio.sleep(interval)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def read_broadcast(port: int, backend: str, name: str, frames: list, skipped: list) -> None:
    """Subscribe to ``name`` over MoQ and read it to its end: frames into ``frames``, skipped
    groups into ``skipped``."""
    from rtmpq.media.catalog import Catalog
    from rtmpq.moq.client import SkippedGroup, subscribe_broadcast
    from rtmpq.moq.transport import connect_moq

    async with connect_moq("127.0.0.1", port, insecure=True, timeout=20, backend=backend) as conn:
        async for item in subscribe_broadcast(conn, name):
            if isinstance(item, SkippedGroup):
                skipped.append(item)
            elif not isinstance(item, Catalog):
                frames.append(item)


@asynccontextmanager
async def serving_relay(tmp_path, backend: str = DEFAULT_BACKEND, seen=None, **options):
    """A bare MoqRelay (``options``: its keyword arguments) served on a loopback UDP port: yields
    (relay, port). ``seen(event)`` is called on each event of its sessions as it comes, before the
    relay handles it."""
    from rtmpq.media.broadcast import BroadcastRegistry
    from rtmpq.moq.relay import MoqRelay
    from rtmpq.moq.tls import ensure_self_signed
    from rtmpq.moq.transport import serve_moq

    cert, key = ensure_self_signed(tmp_path / "tls")
    port = free_port(socket.SOCK_DGRAM)
    relay = MoqRelay(BroadcastRegistry(), **options)

    def on_connection(conn):
        relay.on_connection(conn)
        if seen is not None:
            handle = conn.handler
            conn.handler = lambda c, event: (seen(event), handle(c, event))

    server = await serve_moq("127.0.0.1", port, certfile=cert, keyfile=key, on_connection=on_connection,
                             backend=backend)
    relay.start()
    try:
        yield relay, port
    finally:
        relay.stop()
        server.close()


def udp_bound(port: int) -> bool:
    """Whether a socket is bound to a UDP port (read from the kernel's tables, as the transport
    checks its own listener: a bind of our own to try it could take it first)."""
    from rtmpq.moq.transport import _udp_socket_inodes

    return bool(_udp_socket_inodes(port))


async def node_listening(proc, args) -> None:
    """Once a node started as a process with ``args`` that has ``--moq HOST:PORT`` has bound that
    MoQ listener (or has exited): a `rtmpq sub` started before it would be refused at once."""
    if "--moq" in args:
        port = int(args[args.index("--moq") + 1].rsplit(":", 1)[1])
        await until(lambda: proc.returncode is not None or udp_bound(port), 30,
                    f"the MoQ listener of rtmpq {args[0]}")


@asynccontextmanager
async def relay_node(tmp_path, backend: str, env: dict[str, str]):
    """`rtmpq relay` in this process (run_relay), its settings read from ``env`` (RTMPQ_* variables,
    as a user sets them) over a MoQ listener on a free loopback port: yields that port once bound."""
    from rtmpq.config import load_config
    from rtmpq.nodes.nodes import run_relay

    port = free_port(socket.SOCK_DGRAM)
    config = load_config(env={"RTMPQ_MOQ_HOST": "127.0.0.1", "RTMPQ_MOQ_PORT": str(port),
                              "RTMPQ_MOQ_STATE_DIR": str(tmp_path / "state"), "RTMPQ_MOQ_BACKEND": backend,
                              "RTMPQ_UPSTREAM_BACKEND": backend, **env})
    stop = asyncio.Event()
    task = asyncio.create_task(run_relay(config, stop))

    def bound() -> bool:
        if task.done():
            task.result()  # (its error)
        return udp_bound(port)

    try:
        await until(bound, 20, "the relay's MoQ listener")
        yield port
    finally:
        stop.set()
        await task


@asynccontextmanager
async def relay_below(tmp_path, backend: str, port_a: int):
    """A second bare relay (B) whose upstream is the relay or node at loopback ``port_a`` (A): yields
    B's port once its upstream session is up (a relay chain, as `rtmpq relay --upstream` makes)."""
    from rtmpq.media.broadcast import BroadcastRegistry
    from rtmpq.moq.relay import MoqRelay
    from rtmpq.moq.tls import ensure_self_signed
    from rtmpq.moq.transport import serve_moq
    from rtmpq.nodes.remote import UpstreamLink

    cert, key = ensure_self_signed(tmp_path / "b-tls")
    relay_b = MoqRelay(BroadcastRegistry())
    port_b = free_port(socket.SOCK_DGRAM)
    server_b = await serve_moq("127.0.0.1", port_b, certfile=cert, keyfile=key, on_connection=relay_b.on_connection,
                               backend=backend)
    relay_b.start()
    link = UpstreamLink(relay_b, f"moqt://127.0.0.1:{port_a}", insecure=True, backend=backend)
    link.start()
    try:
        await asyncio.wait_for(link.connected.wait(), 10)
        yield port_b
    finally:
        await link.close()
        relay_b.stop()
        server_b.close()


async def subscribe_to_raw_publisher(tmp_path, on_connection, *, backend: str = "aioquic", name: str = "live/x",
                                     deadline: float = 20.0, each=None, seen=None, in_order: bool = False) -> list:
    """Everything ``subscribe_broadcast`` yields for ``name`` until the broadcast ends, from a MoQ
    server whose sessions ``on_connection`` sets up (a publisher written with MoqSession);
    ``each(item)`` is called on each item as it comes, ``seen(event)`` on each event of the
    subscriber's session as it is handed to ``subscribe_broadcast`` (before it reads it);
    ``in_order`` is subscribe_broadcast's."""
    from rtmpq.moq.client import subscribe_broadcast
    from rtmpq.moq.tls import ensure_self_signed
    from rtmpq.moq.transport import connect_moq, serve_moq

    cert, key = ensure_self_signed(tmp_path / "tls")
    port = free_port(socket.SOCK_DGRAM)
    server = await serve_moq("127.0.0.1", port, certfile=cert, keyfile=key, backend=backend, on_connection=on_connection)
    got: list = []
    try:
        async with connect_moq("127.0.0.1", port, insecure=True, backend=backend, timeout=10) as conn:
            if seen is not None:
                handle_event = conn.session.handle_event
                conn.session.handle_event = lambda event: [seen(e) or e for e in handle_event(event)]
            async with asyncio.timeout(deadline):
                async for item in subscribe_broadcast(conn, name, in_order=in_order):
                    got.append(item)
                    if each is not None:
                        each(item)
    finally:
        server.close()
    return got


async def announced(conn, namespace: tuple[str, ...] = ("live", "x")) -> None:
    """``conn`` has announced ``namespace`` to the relay (PUBLISH_NAMESPACE accepted); its handler
    is taken over for that."""
    from rtmpq.moq import events as ev

    answers: list = []
    conn.handler = lambda _c, e: answers.append(e)
    conn.session.publish_namespace(namespace)
    conn.flush()
    async with asyncio.timeout(10):
        while not any(isinstance(e, ev.RequestAccepted) for e in answers):
            await asyncio.sleep(0.02)


class EventRecorder:
    """A raw MoQ session's events, every one in order, for a test to wait on and read."""

    def __init__(self, conn) -> None:
        self.conn = conn
        self.events: list = []
        conn.handler = lambda _c, e: self.events.append(e)


@asynccontextmanager
async def relay_publisher_viewer(tmp_path, backend: str, namespace: tuple[str, ...], *,
                                 make_publisher=EventRecorder, make_viewer=EventRecorder):
    """A bare relay, a raw publisher session that has PUBLISH_NAMESPACEd ``namespace`` there and
    answers nothing by itself, and a raw viewer session: yields (publisher, viewer), each made by
    ``make_publisher`` / ``make_viewer`` from its connection (an EventRecorder)."""
    from rtmpq.moq import events as ev
    from rtmpq.moq.transport import connect_moq

    async with serving_relay(tmp_path, backend) as (_relay, port):
        async with (connect_moq("127.0.0.1", port, insecure=True, backend=backend) as pub_conn,
                    connect_moq("127.0.0.1", port, insecure=True, backend=backend) as view_conn):
            publisher, viewer = make_publisher(pub_conn), make_viewer(view_conn)
            rid = pub_conn.session.publish_namespace(namespace)
            pub_conn.flush()
            await until(lambda: any(isinstance(e, ev.RequestAccepted) and e.request_id == rid
                                    for e in publisher.events), what="PUBLISH_NAMESPACE accepted")
            yield publisher, viewer


async def http_get(url: str, *, until_live: bool = False, deadline: float = 20.0) -> tuple[int, bytes]:
    """GET ``url`` as a player would: (status, body); status 0 when nothing listens. With
    ``until_live``, asks again while the broadcast is not there yet (404/503), up to ``deadline``."""
    def get():
        try:
            with urllib.request.urlopen(url, timeout=20) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except urllib.error.URLError:
            return 0, b""

    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while True:
        status, body = await asyncio.to_thread(get)
        if not until_live or status not in (0, 404, 503) or loop.time() > end:
            return status, body
        await asyncio.sleep(0.2)


def local_config(tmp_path, backend: str = DEFAULT_BACKEND, *, grace_period: float = 0.0,
                 idle_timeout: float = MOQ_IDLE_TIMEOUT, **sections) -> Config:
    """`rtmpq up`'s settings with every listener on a free loopback port. Broadcasts end when
    their publisher leaves (grace 0) unless a test is about publishers that come back.
    ``idle_timeout``: [moq] idle_timeout (tests of peers gone without a word shorten it)."""
    config = Config(rtmp=IngestConfig(host="127.0.0.1", port=0),
                    moq=MoqConfig(host="127.0.0.1", port=0, state_dir=tmp_path / "state", backend=backend,
                                  idle_timeout=idle_timeout),
                    http=HttpConfig(host="127.0.0.1", port=0),
                    publish=PublishConfig(grace_period=grace_period))
    for name, value in sections.items():
        setattr(config, name, value)
    return config


async def start_up_node(tmp_path, backend: str = DEFAULT_BACKEND, **settings) -> UpNode:
    """`rtmpq up` in this process, every listener on a free loopback port."""
    n = UpNode(local_config(tmp_path, backend, **settings))
    await n.start()
    return n


@pytest.fixture(params=["aioquic", "aiopquic"])
async def node(tmp_path, request):
    """`rtmpq up` on each QUIC backend in turn (a module may define its own ``node``)."""
    n = await start_up_node(tmp_path, request.param)
    yield n
    await n.close()


class RedisServer:
    """A real redis-server (the Debian package) on a free loopback port, for the directory."""

    def __init__(self, tmp_path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.dir = tmp_path / "redis"
        self.proc = None

    async def start(self) -> "RedisServer":
        need("redis-server")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc = await asyncio.create_subprocess_exec(
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(self.dir), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        await wait_tcp(self.port)
        return self

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            await self.proc.wait()


@pytest.fixture
async def redis_server(tmp_path):
    """A redis-server of the test's own (the directory of many hosts)."""
    server = await RedisServer(tmp_path).start()
    yield server
    await server.stop()


def encode_test_flv(path, size: str = "320x240", audio: bool = True):
    """8 s of the test encode (B-frames, a GoP every 2 s), as ffmpeg writes FLV: the same frame
    types and timestamps at any ``size``."""
    import subprocess

    from .publishers import AUDIO_ENCODE, VIDEO_ENCODE

    need("ffmpeg")
    sound = ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100"] if audio else []
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=30",
         *sound, "-t", "8", *VIDEO_ENCODE, *(AUDIO_ENCODE if audio else []), "-f", "flv", str(path)], check=True)
    return path


def made_once(tmp_path_factory, name: str, make) -> Path:
    """The file ``name`` made by ``make(path)`` once per test run, shared by the pytest-xdist
    workers (a costly encode that tests on several workers read; the first to ask makes it)."""
    import fcntl
    import os

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # (each worker's base is a folder of the run's)
    folder = root / "made-once"
    folder.mkdir(exist_ok=True)
    path = folder / name
    with open(folder / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists():
            part = folder / f"part-{name}"
            make(part)
            part.rename(path)
    return path


@pytest.fixture(scope="module")
def source_flv(tmp_path_factory):
    """8 s of the test encode with its audio (encode_test_flv)."""
    return encode_test_flv(tmp_path_factory.mktemp("src") / "src.flv")


@pytest.fixture(scope="module")
def switch_clips(tmp_path_factory):
    """For a change of size mid-stream carried only in-band (tests/test_inband_parameter_sets.py
    restream, -c copy): 4 s MPEG-TS clips (x264, a key frame every second with SPS/PPS before it,
    AAC), made once per (size, x264 profile) asked for."""
    from .publishers import AUDIO_ENCODE

    need("ffmpeg")
    folder = tmp_path_factory.mktemp("switch")
    made = {}

    def clip(size: str, profile: str) -> str:
        if (size, profile) not in made:
            path = folder / f"{size}-{profile}.ts"
            subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=30",
                            "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100", "-t", "4", "-c:v", "libx264",
                            "-preset", "veryfast", "-profile:v", profile, "-g", "30", "-pix_fmt", "yuv420p",
                            *AUDIO_ENCODE, "-f", "mpegts", str(path)], check=True)
            made[size, profile] = str(path)
        return made[size, profile]

    return clip


# -- headless Chromium (the player and status pages) ---------------------------------------------
# What the tests read of the player page (rtmpq/edge/server.py PLAYER_PAGE).
VIDEO_TIME = "document.getElementById('video').currentTime"
PAGE_ERRORS = "JSON.stringify(window.rtmpqErrors)"
PAGE_STATUS = "document.getElementById('status').textContent"


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

    async def poll(self, expression: str, deadline: float = 30.0):
        """The value of ``expression`` once it is truthy, asked every 0.2 s (None after ``deadline``)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline
        while loop.time() < end:
            value = await self.evaluate(expression)
            if value:
                return value
            await asyncio.sleep(0.2)
        return None

    async def playback_started(self, tries: int = 100) -> float:
        """The page's video position once it moves, polled every 0.1 s (0 if it never does)."""
        for _ in range(tries):
            if position := await self.evaluate(VIDEO_TIME):
                return position
            await asyncio.sleep(0.1)
        return 0

    async def errors(self) -> str:
        """The player page's hls.js errors so far (JSON), for a failure message."""
        return await self.evaluate(PAGE_ERRORS)


async def chromium_page(tmp_path, url: str):
    """(browser process, DevTools websocket URL) of a headless Chromium showing ``url``."""
    chromium = shutil.which("chromium") or need("chromium")
    debug_port = free_port()
    browser = await asyncio.create_subprocess_exec(
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--autoplay-policy=no-user-gesture-required", f"--user-data-dir={tmp_path / 'chromium'}",
        f"--remote-debugging-port={debug_port}", url,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    for _ in range(200):
        try:
            targets = json.loads(await asyncio.to_thread(
                lambda: urllib.request.urlopen(f"http://127.0.0.1:{debug_port}/json", timeout=2).read()))
            pages = [t for t in targets if t["type"] == "page"]
            if pages:
                return browser, pages[0]["webSocketDebuggerUrl"]
        except OSError:
            pass
        await asyncio.sleep(0.1)
    browser.terminate()
    raise AssertionError("chromium did not start")


@asynccontextmanager
async def chromium_devtools(tmp_path, url: str):
    """A DevTools session on a headless Chromium showing ``url``; the browser ends with the block."""
    import websockets

    browser, ws_url = await chromium_page(tmp_path, url)
    try:
        async with websockets.connect(ws_url, max_size=None) as ws:
            yield DevTools(ws)
    finally:
        browser.terminate()
        await browser.wait()


def need_hls_js() -> None:
    """The player page's hls.js, which `make hlsjs` installs where the node serves it from."""
    from rtmpq.config import bundled_static_dir

    if not (bundled_static_dir() / "hls.min.js").exists():
        pytest.fail("hls.js is not installed: run `make hlsjs`")
