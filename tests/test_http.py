"""The HTTP listener (h11 / h2 under rtmpq.http.server): limits, stuck clients, HTTP/2 over TLS."""

import asyncio
from contextlib import asynccontextmanager
import os
import re
import socket
import sys
import time

import httpx
import pytest

from rtmpq.config import HttpConfig
from rtmpq.http import Response
from rtmpq.http.server import HttpServer
from rtmpq.moq.tls import ensure_self_signed

from .conftest import free_port, local_config, need, until, wait_tcp
from .publishers import end_live_publish, run_process


async def hello(request):
    return Response(200, f"hello {request.method} {request.path} {request.version}\n".encode())


@pytest.fixture
async def server():
    s = HttpServer(hello, HttpConfig(host="127.0.0.1", port=0, max_connections_per_ip=3, request_timeout=1.0,
                                     max_header_bytes=1024))
    await s.start()
    yield s
    await s.close()


async def exchange(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    try:
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


async def test_requests_pipelined_keep_alive_and_bad_heads(server):
    port = server.address[1]
    two = await exchange(port, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert two.count(b"HTTP/1.1 200 OK") == 2 and b"hello GET /a 1.1" in two and b"hello GET /b 1.1" in two
    huge = await exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 4000 + b"\r\n\r\n")
    assert huge.startswith(b"HTTP/1.1 431 ")
    bad = await exchange(port, b"GARBAGE\r\n\r\n")
    assert bad.startswith(b"HTTP/1.1 400 ")
    # the error says what was wrong without echoing the request (its URL may hold a token)
    echo = await exchange(port, b"GET /live/a/index.m3u8?token=s3cret HTTP/1.1 x\r\nHost: x\r\n\r\n")
    assert echo.startswith(b"HTTP/1.1 400 ") and echo.endswith(b"\r\n\r\nillegal request line\n"), echo
    # a client that sends half a request head is closed after request_timeout, with nothing else
    assert await exchange(port, b"GET / HTTP/1.1\r\nHo") == b""
    assert server.stats.errors["header_too_large"] == 1 and server.stats.errors["bad_request"] == 2
    assert server.stats.errors["request_timeout"] == 1


async def test_a_request_with_both_content_length_and_transfer_encoding_is_refused_and_closed(server):
    """Request smuggling: a proxy in front that frames by Content-Length would see one request
    where we (by Transfer-Encoding) saw two. RFC 9112 6.1: reject it, or close after answering;
    we reject it (400, as nginx does) and close, so what follows is never read as a request."""
    smuggled = await exchange(server.address[1], b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 30\r\n"
                                                  b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                                                  b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n")
    assert smuggled.startswith(b"HTTP/1.1 400 ") and smuggled.count(b"HTTP/1.1 ") == 1, smuggled
    assert b"smuggled" not in smuggled and server.stats.errors["bad_request"] == 1


async def test_an_absolute_form_request_target_is_served_as_its_path(server):
    """RFC 9112 3.2.2: a server MUST accept the absolute-form (what a client set up for a proxy,
    and some HTTP/1.0-era players, send); the application sees the path and query alone."""
    port = server.address[1]
    for target, path in ((b"http://127.0.0.1/live/a/index.m3u8?token=t", b"/live/a/index.m3u8"),
                         (b"HTTP://example.com:8080/live/a/", b"/live/a/"), (b"https://example.com", b"/")):
        answer = await exchange(port, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"hello GET " + path + b" 1.1\n"), answer
    answer = await exchange(port, b"GET http://x/live/a/ HTTP/1.0\r\n\r\n")
    assert answer.endswith(b"hello GET /live/a/ 1.0\n"), answer


async def test_a_slow_reader_that_keeps_reading_gets_the_whole_body(tmp_path):
    """A viewer on a slow link (here: socket buffers of a few kB) takes longer than write_timeout
    over a big body (hls.min.js is 600 kB, a segment of a high rung some MB): it gets all of
    it, since it keeps taking bytes; only a reader that takes nothing for write_timeout is
    dropped."""
    body = os.urandom(200_000)  # about 4 s at the ~50 kB/s that buffers this small give on loopback

    async def big(request):
        for c in list(slow._connections):  # a slow link's small send buffer, not loopback's megabytes
            c.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        return Response(200, body)

    # a piece (64 kB) in 2 s: the reader must take ~32 kB/s
    slow = HttpServer(big, HttpConfig(host="127.0.0.1", port=0, write_timeout=2.0))
    await slow.start()
    try:
        def fetch(path: str, rate: float, stop_after: int | None = None) -> bytes:
            with socket.create_connection(slow.address) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
                got = b""
                while data := sock.recv(4096):
                    got += data
                    if stop_after is not None and len(got) > stop_after:
                        sock.settimeout(10)
                        time.sleep(4)  # stops reading: dropped after write_timeout
                        stop_after = None
                    time.sleep(len(data) / rate)
                return got

        loop = asyncio.get_running_loop()
        started = loop.time()
        got = await asyncio.to_thread(fetch, "/big", 400_000)
        assert got.endswith(body), (len(got), loop.time() - started)
        assert loop.time() - started > 2.5  # past write_timeout
        got = await asyncio.to_thread(fetch, "/big", 400_000, 50_000)
        assert not got.endswith(body) and slow.stats.errors["write_timeout"] == 1
    finally:
        await slow.close()


async def test_per_ip_connection_limit(server):
    port = server.address[1]
    held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
    try:
        for _ in range(100):  # the server has accepted all three
            if server.stats.open == 3:
                break
            await asyncio.sleep(0.05)
        refused = await exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert refused.startswith(b"HTTP/1.1 503 ") and b"too many connections" in refused
        assert server.stats.errors["max_connections_per_ip"] == 1
    finally:
        for _, w in held:
            w.close()
    for _ in range(100):
        if server.stats.open == 0:
            break
        await asyncio.sleep(0.05)
    assert (await exchange(port, b"GET / HTTP/1.0\r\n\r\n")).startswith(b"HTTP/1.1 200 ")


# -- a node with real publishers and players -----------------------------------------------------

def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def established_to(port: int) -> int:
    """Established TCP connections whose local port is ``port`` (the server's side of them)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                    count += 1
    return count


def publish_args(url: str, seconds: float) -> list[str]:
    """A 3 Mbit/s 640x360 stream with 1 s GoPs, so a segment is a few hundred KB."""
    return ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-re",
            "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30", "-f", "lavfi", "-i", "sine=frequency=440",
            "-t", str(seconds), "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", "30",
            "-b:v", "3M", "-maxrate", "3M", "-bufsize", "1M", "-x264-params", "nal-hrd=cbr:scenecut=0",
            "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "64k", "-f", "flv", url]


async def test_fifty_stuck_clients_are_dropped_with_memory_flat_and_players_unaffected(tmp_path):
    need("ffmpeg")
    rtmp, http = free_port(), free_port()
    write_timeout = 3.0
    (tmp_path / "node.toml").write_text(f"[http]\nwrite_timeout = {write_timeout}\n")
    node = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rtmpq", "up", "--log-level", "WARNING", "--config", str(tmp_path / "node.toml"),
        "--rtmp", f"127.0.0.1:{rtmp}", "--moq", f"127.0.0.1:{free_port(socket.SOCK_DGRAM)}",
        "--http", f"127.0.0.1:{http}", "--state-dir", str(tmp_path / "state"),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    stuck: list[socket.socket] = []
    try:
        await wait_tcp(rtmp)
        await wait_tcp(http)
        publisher = asyncio.create_task(run_process(publish_args(f"rtmp://127.0.0.1:{rtmp}/live/big", 18), timeout=90))
        base = f"http://127.0.0.1:{http}/live/big"
        async with httpx.AsyncClient(timeout=20) as client:
            segment = None
            for _ in range(300):  # until two whole segments exist
                r = await client.get(f"{base}/video.m3u8")
                names = [line for line in r.text.splitlines() if line.startswith("v-seg")] if r.status_code == 200 else []
                if len(names) >= 2:
                    segment = names[-1]
                    break
                await asyncio.sleep(0.1)
            assert segment is not None, "no segments"
            size = len((await client.get(f"{base}/{segment}")).content)
            assert size > 200_000  # what a stuck client would pin per request if bodies were buffered
        before = rss_bytes(node.pid)
        request = f"GET /live/big/{segment} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        for _ in range(50):  # each pipelines 100 requests for that segment and never reads a byte
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", http))
            s.sendall(request * 100)
            stuck.append(s)
        # meanwhile a player decodes the live stream without an error
        rc, out = await run_process(["ffmpeg", "-v", "error", "-xerror", "-i", f"{base}/index.m3u8", "-t", "3",
                                     "-f", "null", "-"], timeout=60)
        assert rc == 0 and out.strip() == "", out
        peak = rss_bytes(node.pid)
        loop = asyncio.get_running_loop()
        end = loop.time() + write_timeout + 30
        while established_to(http) > 0 and loop.time() < end:  # the stuck ones are dropped
            peak = max(peak, rss_bytes(node.pid))
            await asyncio.sleep(0.2)
        assert established_to(http) == 0, "stuck clients still connected"
        after = rss_bytes(node.pid)
        # 50 clients x 100 requests x a segment would be GBs if bodies were queued; each client
        # may pin one write piece (64 KiB) plus the socket's own buffers, which are the kernel's.
        grew = peak - before
        print(f"segment {size} B; RSS before {before >> 20} MiB, peak {peak >> 20} MiB, after {after >> 20} MiB")
        assert grew < 24 * 1024 * 1024, f"RSS grew {grew >> 20} MiB with 50 stuck clients"
        await end_live_publish(publisher)  # (the publish went on meanwhile)
    finally:
        for s in stuck:
            s.close()
        node.terminate()
        await node.wait()


async def test_http2_over_tls_with_alpn_serves_blocking_ll_hls(tmp_path):
    need("ffmpeg")
    from rtmpq.nodes.up import UpNode

    cert, key = ensure_self_signed(tmp_path / "tls")
    config = local_config(tmp_path)
    config.http.certfile, config.http.keyfile = cert, key
    node = UpNode(config)
    await node.start()
    try:
        rtmp = node.rtmp.address[1]
        port = node.edge.address[1]
        publisher = asyncio.create_task(run_process(publish_args(f"rtmp://127.0.0.1:{rtmp}/live/h2", 8), timeout=60))
        await node.registry.wait_for("live/h2", 10)
        base = f"https://127.0.0.1:{port}/live/h2"
        async with httpx.AsyncClient(http2=True, verify=False, timeout=20) as client:
            r = await client.get(f"{base}/index.m3u8")
            assert r.status_code == 200 and r.http_version == "HTTP/2", (r.status_code, r.http_version)
            assert "#EXT-X-STREAM-INF" in r.text and r.headers["access-control-allow-origin"] == "*"
            playlist = (await client.get(f"{base}/video.m3u8")).text
            hint = next(line for line in playlist.splitlines() if line.startswith("#EXT-X-PRELOAD-HINT"))
            uri = hint.split('URI="')[1].rstrip('"')
            msn = int(uri.split("seg")[1].split(".")[0])
            # two blocking requests on one connection: the next playlist and the hinted part
            reload, part = await asyncio.gather(
                client.get(f"{base}/video.m3u8", params={"_HLS_msn": msn, "_HLS_part": int(uri.split(".")[1])}),
                client.get(f"{base}/{uri}"))
            assert reload.status_code == 200 and uri in reload.text
            assert part.status_code == 200 and part.http_version == "HTTP/2" and len(part.content) > 1000
            assert part.content[4:8] == b"moof"
        if os.path.exists("/usr/bin/curl"):  # curl (nghttp2) agrees, ALPN and all
            rc, out = await run_process(["curl", "-sk", "--http2", "-o", "/dev/null", "-w", "%{http_version}",
                                         f"{base}/index.m3u8"], timeout=30)
            assert rc == 0 and out.strip() == "2", out
        # plain HTTP/1.1 clients still work on the same TLS listener
        async with httpx.AsyncClient(verify=False, timeout=20) as client:
            r = await client.get(f"{base}/video.m3u8")
            assert r.status_code == 200 and r.http_version == "HTTP/1.1"
        rc, out = await publisher
        assert rc == 0, out
    finally:
        await node.close()


@asynccontextmanager
async def tls_server(tmp_path, handler, **settings):
    """An HttpServer with a self-signed certificate (HTTP/2 offered by ALPN)."""
    cert, key = ensure_self_signed(tmp_path / "tls")
    server = HttpServer(handler, HttpConfig(host="127.0.0.1", port=0, certfile=cert, keyfile=key, **settings))
    await server.start()
    try:
        yield server
    finally:
        await server.close()


async def h2_connect(port: int):
    """A raw HTTP/2 client (h2) over TLS: (reader, writer, its H2Connection, preface not sent yet)."""
    import ssl

    import h2.config
    import h2.connection

    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "h2"
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    return reader, writer, conn


async def test_an_http2_client_that_keeps_its_window_shut_is_dropped_after_write_timeout(tmp_path):
    """HTTP/2 flow control is the client's to open: one that never does is a reader that stopped."""
    import h2.events

    body = os.urandom(200_000)  # about 4 s at the ~50 kB/s that buffers this small give on loopback

    async def big(request):
        return Response(200, body, "video/mp4")

    async with tls_server(tmp_path, big, write_timeout=1.0) as server:
        reader, writer, conn = await h2_connect(server.address[1])
        conn.send_headers(1, [(":method", "GET"), (":path", "/seg"), (":scheme", "https"), (":authority", "x")],
                          end_stream=True)
        writer.write(conn.data_to_send())
        got = 0
        loop = asyncio.get_running_loop()
        end = loop.time() + 30
        while loop.time() < end:  # read what the default 64 KiB window lets through, never open it further
            data = await asyncio.wait_for(reader.read(65536), 30)
            if not data:
                break
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.DataReceived):
                    got += len(event.data)  # not acknowledged: the window stays shut
            writer.write(conn.data_to_send())
        assert 0 < got < len(body)
        assert server.stats.errors["write_timeout"] == 1 and server.stats.open == 0
        writer.close()


async def test_a_viewer_who_resets_mid_response_costs_no_warnings_and_no_writes(caplog):
    # a player that goes away (RST) while a segment is being written: the rest of the response is
    # not written into the dead transport (asyncio warns "socket.send() raised exception." from
    # the fifth such write on), and the server goes on serving others
    reset = asyncio.Event()

    async def big(request):
        if request.path == "/big":
            await reset.wait()  # the client is gone before the first byte of the body is written
            return Response(200, b"x" * (4 * 1024 * 1024))
        return await hello(request)

    s = HttpServer(big, HttpConfig(host="127.0.0.1", port=0))
    await s.start()
    try:
        caplog.set_level("DEBUG", logger="asyncio")
        sock = socket.create_connection(("127.0.0.1", s.address[1]))
        sock.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        async with asyncio.timeout(10):
            while not s.stats.requests:  # the request is in the handler
                await asyncio.sleep(0.01)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()  # linger 0: an RST
        reset.set()
        async with asyncio.timeout(10):
            while s.stats.open:  # the server saw the reset
                await asyncio.sleep(0.01)
        assert (await exchange(s.address[1], b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")).startswith(b"HTTP/1.1 200")
        assert not [r for r in caplog.records if "socket.send() raised exception" in r.getMessage()]
        assert s.stats.bytes_out < 1024 * 1024, s.stats.bytes_out  # the rest of the 4 MB was not written
    finally:
        await s.close()


@pytest.mark.parametrize("how", ["pings", "an unfinished request dripping its body"])
async def test_an_http2_client_that_only_keeps_the_connection_busy_is_closed_at_request_timeout(tmp_path, how):
    """HTTP/2 slowloris: PINGs (or a request whose body drips a byte at a time and never ends)
    are bytes, not requests: the connection is closed request_timeout after its last request,
    as an idle HTTP/1.1 keep-alive is. Another client meanwhile is served."""
    timeout = 1.0
    async with tls_server(tmp_path, hello, request_timeout=timeout) as server:
        reader, writer, conn = await h2_connect(server.address[1])
        if how != "pings":
            conn.send_headers(1, [(":method", "POST"), (":path", "/api"), (":scheme", "https"), (":authority", "x")])
        writer.write(conn.data_to_send())
        loop = asyncio.get_running_loop()
        started = loop.time()
        closed_at = None
        async with httpx.AsyncClient(http2=True, verify=False) as other:
            while loop.time() - started < timeout + 5:
                if how == "pings":
                    conn.ping(b"12345678")
                else:
                    conn.send_data(1, b"x")
                writer.write(conn.data_to_send())
                try:
                    data = await asyncio.wait_for(reader.read(65536), 0.25)
                except TimeoutError:
                    continue
                except ConnectionError:
                    data = b""
                if not data or any(type(e).__name__ == "ConnectionTerminated" for e in conn.receive_data(data)):
                    closed_at = loop.time() - started  # EOF, or the GOAWAY before it
                    break
                r = await other.get(f"https://127.0.0.1:{server.address[1]}/x")
                assert r.status_code == 200 and r.http_version == "HTTP/2"
        assert closed_at is not None and timeout <= closed_at <= timeout + 2.5, closed_at
        assert server.stats.errors["request_timeout"] == (how != "pings")
        writer.close()


async def test_endless_or_dripped_http1_heads_are_cut_off_while_another_client_is_served(server):
    """HTTP/1.1: a head that does not end (small header lines, no blank line) is answered 431
    once it passes max_header_bytes; one dripped a byte at a time is closed request_timeout after it began,
    however steadily the bytes come. Another client is served meanwhile."""
    port = server.address[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    # header lines that never end, past max_header_bytes (1024) then no more: unread bytes at
    # the server's close would reset the connection before its answer is read
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(200)))
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:100]

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    loop = asyncio.get_running_loop()
    started, closed_at = loop.time(), None
    head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 500
    for byte in head:
        try:
            writer.write(bytes([byte]))
            await writer.drain()
            if await asyncio.wait_for(reader.read(1), 0.1) == b"":
                closed_at = loop.time() - started
                break
        except TimeoutError:
            pass
        except ConnectionError:
            closed_at = loop.time() - started
            break
        if byte % 4 == 0:
            assert (await exchange(port, b"GET /other HTTP/1.0\r\n\r\n")).startswith(b"HTTP/1.1 200 ")
    writer.close()
    assert closed_at is not None and 1.0 <= closed_at <= 2.0, closed_at
    assert server.stats.errors["header_too_large"] == 1 and server.stats.errors["request_timeout"] == 1


async def test_an_endless_http2_header_block_is_refused_while_another_client_is_served(tmp_path):
    """HTTP/2 CONTINUATION flood (HEADERS without END_HEADERS, then CONTINUATION frames without
    end): h2 keeps up to 64 of them (h2.frame_buffer.CONTINUATION_BACKLOG, 1 MB here) before it
    refuses; the connection is closed once the block passes twice max_header_bytes, as sent."""
    from hyperframe.frame import ContinuationFrame, HeadersFrame

    async with tls_server(tmp_path, hello) as server:
        reader, writer, conn = await h2_connect(server.address[1])
        headers = HeadersFrame(1)
        headers.data = b"\x82"  # :method GET, and the block goes on
        writer.write(conn.data_to_send() + headers.serialize())
        closed = False
        async with httpx.AsyncClient(http2=True, verify=False) as other:
            for _ in range(1000):  # up to 16 MB of header block
                frame = ContinuationFrame(1)
                frame.data = b"\x40\x01a\x01b" * 3000
                try:
                    writer.write(frame.serialize())
                    await writer.drain()
                    data = await asyncio.wait_for(reader.read(65536), 0.01)
                    closed = not data or b"\x07" in data[3:4]  # EOF or a GOAWAY frame
                except TimeoutError:
                    continue
                except ConnectionError:
                    closed = True
                if closed:
                    break
            read = server.stats.bytes_in  # of the flooding client
            r = await other.get(f"https://127.0.0.1:{server.address[1]}/x")
            assert r.status_code == 200
        assert closed
        assert server.stats.errors == {"header_too_large": 1}, server.stats.errors
        assert read < 100_000, read  # 2 x 8192 allowed; before, 64 frames of 15 kB were read and held
        writer.close()


async def _http1_get(reader, writer, path: str) -> tuple[int, bytes]:
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    return int(head.split()[1]), await reader.readexactly(length)


async def test_many_held_blocking_reloads_from_one_address_stop_at_its_cap_and_a_player_elsewhere_plays(tmp_path):
    """A node's edge with HELD connections from 127.0.0.2, each holding blocking playlist reloads
    for the next part in a loop (each answered when its part exists, within the blocking limit),
    and a reload too far ahead refused at once (part_limit()). The address's next connection is
    refused (503, max_connections_per_ip); ffmpeg playing from 127.0.0.1 decodes without an error."""
    need("ffmpeg")
    from rtmpq.edge.server import BLOCKING_TARGET_DURATIONS, part_limit
    from rtmpq.nodes.up import UpNode

    held_count = 100
    config = local_config(tmp_path)
    config.http.max_connections_per_ip = held_count
    node = UpNode(config)
    await node.start()
    conns = []
    try:
        port = node.edge.address[1]
        publisher = asyncio.create_task(run_process(publish_args(f"rtmp://127.0.0.1:{node.rtmp.address[1]}/live/held", 12),
                                                    timeout=60))
        await node.registry.wait_for("live/held", 10)
        playlist = "/live/held/video.m3u8"
        conns = [await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.2", 0)) for _ in range(held_count)]
        async with asyncio.timeout(20):
            while True:  # until the playlist lists parts
                status, body = await _http1_get(*conns[0], playlist)
                if status == 200 and b"#EXT-X-PRELOAD-HINT" in body:
                    break
                await asyncio.sleep(0.1)
        # the next connection from that address is refused; one from elsewhere is not
        refused = await exchange_from("127.0.0.2", port, f"GET {playlist} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert refused.startswith(b"HTTP/1.1 503 "), refused[:80]
        hint = re.findall(rb'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="v-seg(\d+)\.(\d+)', body)[-1]
        limit = part_limit(float(re.search(rb"PART-TARGET=([\d.]+)", body)[1]),
                           float(re.search(rb"#EXT-X-TARGETDURATION:(\d+)", body)[1]))
        ahead = int(hint[1]) + limit + 1
        too_far = await _http1_get(*conns[0], f"{playlist}?_HLS_msn={int(hint[0])}&_HLS_part={ahead}")
        assert too_far[0] == 400, too_far
        waits: list[float] = []

        async def hold(reader, writer) -> None:
            loop = asyncio.get_running_loop()
            status, body = await _http1_get(reader, writer, playlist)
            while True:
                msn, part = map(int, re.findall(rb'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="v-seg(\d+)\.(\d+)', body)[-1])
                asked = loop.time()
                status, body = await _http1_get(reader, writer, f"{playlist}?_HLS_msn={msn}&_HLS_part={part}")
                assert status == 200, (status, body)
                waits.append(loop.time() - asked)

        holders = [asyncio.create_task(hold(*c)) for c in conns]
        base = f"http://127.0.0.1:{port}/live/held"
        rc, out = await run_process(["ffmpeg", "-v", "error", "-xerror", "-i", f"{base}/index.m3u8", "-t", "4",
                                     "-f", "null", "-"], timeout=60)
        assert rc == 0 and out.strip() == "", out
        failed = [t for t in holders if t.done()]
        assert not failed, failed[0].exception()
        for t in holders:
            t.cancel()
        # held, and answered once their part came: each within the blocking limit, most within a part or two
        target = 1  # s: the publisher's 1 s GoPs
        assert len(waits) > held_count * 10 and max(waits) < BLOCKING_TARGET_DURATIONS * target + 1, (len(waits), max(waits))
        assert node.edge.http.stats.errors["max_connections_per_ip"] >= 1
        await end_live_publish(publisher)
    finally:
        for _, writer in conns:
            writer.close()
        await node.close()


async def exchange_from(source: str, port: int, data: bytes, timeout: float = 10.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    writer.write(data)
    try:
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


async def test_http_to_the_https_listener_is_told_to_use_https_and_https_to_the_plain_one_is_closed(tmp_path, caplog):
    """What nginx does with http:// on its HTTPS port: a plain-text 400 that says so (rtmpq sent an
    empty reply and logged nothing); https:// on the plain port cannot be answered in HTTP: closed at
    once (it was answered a 400 in clear), and so is an encoder given an HTTP port (rtmp://; it
    was answered or dropped without a word). Each is counted, and logged once per address a minute
    (a client that retries is said once), never with its URL (it may carry a token or a key)."""
    curl, ffmpeg = need("curl"), need("ffmpeg")
    encode = [ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin", "-f", "lavfi", "-i",
              "testsrc2=size=160x120:rate=10", "-t", "1", "-c:v", "libx264", "-f", "flv"]
    caplog.set_level("WARNING", logger="rtmpq.http")
    async with tls_server(tmp_path, hello, request_timeout=10) as https:
        url = f"http://127.0.0.1:{https.address[1]}/live/a/index.m3u8?token=s3cret"
        for _ in range(2):
            rc, out = await run_process([curl, "-sS", "-i", "--max-time", "5", url], timeout=10)
            assert rc == 0 and out.startswith("HTTP/1.1 400 ") and "use https://" in out, out
        rc, out = await run_process([curl, "-sSk", "--http2", "--max-time", "5", url.replace("http:", "https:")])
        assert rc == 0 and out == "hello GET /live/a/index.m3u8 2\n", out  # TLS clients as before
        rc, out = await run_process([curl, "-sSk", "--http1.1", "--max-time", "5", url.replace("http:", "https:")])
        assert rc == 0 and out == "hello GET /live/a/index.m3u8 1.1\n", out
        rc, out = await run_process([*encode, f"rtmp://127.0.0.1:{https.address[1]}/live/sk-1"], timeout=20)
        assert rc != 0, out
        assert https.stats.errors["plain_on_tls_port"] == 2 and https.stats.errors["rtmp_on_http_port"] == 1
    plain = HttpServer(hello, HttpConfig(host="127.0.0.1", port=0, request_timeout=10))
    await plain.start()
    try:
        url = f"https://127.0.0.1:{plain.address[1]}/live/a/"
        started = time.monotonic()
        rc, out = await run_process([curl, "-sSk", "--max-time", "5", url], timeout=10)
        assert rc != 0 and time.monotonic() - started < 3, out  # closed at once, not at request_timeout
        rc, out = await run_process([curl, "-sS", "--max-time", "5", url.replace("https:", "http:")])
        assert rc == 0 and out == "hello GET /live/a/ 1.1\n", out
        rc, out = await run_process([*encode, f"rtmp://127.0.0.1:{plain.address[1]}/live/sk-1"], timeout=20)
        assert rc != 0, out
        assert plain.stats.errors["tls_on_plain_port"] == 1 and plain.stats.errors["rtmp_on_http_port"] == 1
        assert not plain.stats.errors["bad_request"]
    finally:
        await plain.close()
    lines = [r.getMessage() for r in caplog.records]
    assert len([m for m in lines if "plain HTTP on the HTTPS listener: use https://" in m]) == 1, lines
    assert len([m for m in lines if "a TLS client on the plain HTTP listener: use http://" in m]) == 1, lines
    assert len([m for m in lines if "an RTMP client (rtmp://) on the HTTP listener" in m]) == 2, lines  # 2 servers
    assert all("127.0.0.1:" in m for m in lines) and "s3cret" not in caplog.text and "/live/" not in caplog.text
    assert "sk-1" not in caplog.text


async def test_silent_and_unfinished_clients_on_the_https_listener_are_dropped_at_request_timeout(tmp_path):
    """The HTTPS listener reads a connection's first byte before TLS: a client that sends nothing,
    or half a plain request, still holds it no longer than request_timeout (as asyncio's TLS
    handshake timeout did), and each is counted (a handshake that never was: tls_handshake)."""
    async with tls_server(tmp_path, hello, request_timeout=0.5) as server:
        port = server.address[1]
        started = time.monotonic()
        silent, unfinished = await asyncio.gather(exchange(port, b""), exchange(port, b"GET / HTTP/1.1\r\nHo"))
        assert silent == b"" and unfinished == b"" and 0.4 < time.monotonic() - started < 5
        assert server.stats.errors["tls_handshake"] == 1 and server.stats.errors["plain_on_tls_port"] == 1
        await until(lambda: not server._gates, what="no connection left")


async def _read_until_goaway(reader, conn, deadline: float = 10.0):
    """The error code of the GOAWAY the server sends (None: closed without one)."""
    import h2.events

    async with asyncio.timeout(deadline):
        while True:
            try:
                data = await reader.read(65536)
            except ConnectionError:
                return None
            if not data:
                return None
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ConnectionTerminated):
                    return event.error_code


@pytest.mark.parametrize("flood", ["rapid reset", "pings", "settings", "window updates"])
async def test_an_http2_flood_of_resets_or_control_frames_is_told_to_calm_down_and_closed(tmp_path, flood):
    """Rapid Reset (CVE-2023-44487: a request and its RST_STREAM, thousands a second, bounded by
    no max_concurrent_streams) and floods of frames that ask work but are no request: past
    max_stream_resets / max_control_frames a second, GOAWAY ENHANCE_YOUR_CALM, the connection
    closed and counted; the handler ran for none of the reset requests. Another client is served,
    and one that downloads a large body (answering WINDOW_UPDATEs as it reads) is not cut."""
    import h2.errors
    from hyperframe.frame import PingFrame, SettingsFrame, WindowUpdateFrame

    handled = []
    big = os.urandom(4 * 1024 * 1024)

    async def handler(request):
        handled.append(request.path)
        return Response(200, big, "video/mp4") if request.path == "/big" else await hello(request)

    async with tls_server(tmp_path, handler, max_stream_resets=50, max_control_frames=100) as server:
        reader, writer, conn = await h2_connect(server.address[1])
        if flood == "rapid reset":
            for i in range(2000):
                conn.send_headers(1 + 2 * i, [(":method", "GET"), (":path", "/r"), (":scheme", "https"),
                                              (":authority", "x")], end_stream=True)
                conn.reset_stream(1 + 2 * i)
            blob = conn.data_to_send()
        else:
            frame = {"pings": PingFrame(0, b"12345678"), "settings": SettingsFrame(0, {0x2: 0}),
                     "window updates": WindowUpdateFrame(0, 1)}[flood]
            blob = conn.data_to_send() + frame.serialize() * 2000
        writer.write(blob)
        assert await _read_until_goaway(reader, conn) == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
        writer.close()
        reason = "h2_rapid_reset" if flood == "rapid reset" else "h2_flood"
        await until(lambda: server.stats.open == 0, 5, "the flooding connection closed")
        assert server.stats.errors == {reason: 1}, server.stats.errors
        assert handled.count("/r") < 60, len(handled)
        async with httpx.AsyncClient(http2=True, verify=False, timeout=20) as other:
            r = await other.get(f"https://127.0.0.1:{server.address[1]}/big")
            assert r.status_code == 200 and r.http_version == "HTTP/2" and r.content == big
        assert server.stats.errors == {reason: 1}, server.stats.errors


async def test_an_http2_client_that_sends_pings_and_never_reads_is_dropped_with_our_output_bounded(tmp_path):
    """h2 answers each PING (and SETTINGS) with an ACK of its own: a client that sends them and
    reads nothing grew our write buffer without bound (tens of MB a second). Now the connection
    is no longer read while the socket has not taken what is queued, and is dropped after
    write_timeout of that (as a response's reader is): our output stays near write_buffer_bytes."""
    import ssl

    from hyperframe.frame import PingFrame

    async with tls_server(tmp_path, hello, write_timeout=1.0, request_timeout=60.0,
                          max_control_frames=10 ** 9) as server:
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        ctx.set_alpn_protocols(["h2"])
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.address[1]))
        sock.setblocking(False)
        # limit: our reader buffers little before it stops reading the socket
        reader, writer = await asyncio.open_connection(sock=sock, ssl=ctx, server_hostname="x", limit=4096)
        import h2.config
        import h2.connection
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        pings = PingFrame(0, b"12345678").serialize() * 4000
        await until(lambda: server.stats.open == 1, 5, "the connection accepted")
        peak = 0
        loop = asyncio.get_running_loop()
        started = loop.time()
        while server.stats.open and loop.time() - started < 15:
            writer.write(pings)
            try:
                await asyncio.wait_for(writer.drain(), 0.05)
            except TimeoutError:  # the server stopped reading us
                pass
            except ConnectionError:
                break
            peak = max(peak, server.buffered_bytes())
        writer.transport.abort()
        print(f"peak {peak} B queued, dropped after {loop.time() - started:.1f} s")
        assert server.stats.open == 0, "never dropped"
        assert server.stats.errors["write_timeout"] == 1, server.stats.errors
        # write_buffer_bytes (64 KiB), and the ACKs of the read it stopped in (TLS hands on up to
        # 256 KiB at once: 15,000 PINGs); before, 23 MB in 15 s and growing
        assert peak < 1024 * 1024, peak
        async with httpx.AsyncClient(http2=True, verify=False) as other:
            assert (await other.get(f"https://127.0.0.1:{server.address[1]}/x")).status_code == 200


async def test_many_http2_streams_held_at_a_zero_window_drop_their_connection_once(tmp_path):
    """A client that opens many streams at a flow-control window of 0 (slow read across
    streams): each stream holds its response (a reference, not a copy), the connection is dropped
    write_timeout later and counted once, not once per stream."""
    import h2.settings

    body = os.urandom(1024 * 1024)

    async def big(request):
        return Response(200, body, "video/mp4")

    async with tls_server(tmp_path, big, write_timeout=1.0) as server:
        reader, writer, conn = await h2_connect(server.address[1])
        conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
        for i in range(50):
            conn.send_headers(1 + 2 * i, [(":method", "GET"), (":path", "/seg"), (":scheme", "https"),
                                          (":authority", "x")], end_stream=True)
        writer.write(conn.data_to_send())
        await until(lambda: server.stats.requests == 50, 5, "the requests served")
        await until(lambda: server.stats.open == 0, 5, "the connection dropped")
        assert server.stats.errors == {"write_timeout": 1}, server.stats.errors
        writer.close()


def test_the_header_block_meter_reads_frame_heads_split_anywhere():
    """HeaderBlockMeter in memory, fed whole or a byte at a time: a client's real requests (a
    4 kB cookie, bodies) pass; a block past the limit, HEADERS then CONTINUATIONs, is caught."""
    import h2.config
    import h2.connection
    from hyperframe.frame import ContinuationFrame, HeadersFrame

    from rtmpq.http.server import HeaderBlockMeter

    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    for i in range(5):
        client.send_headers(1 + 2 * i, [(":method", "POST"), (":path", "/api"), (":scheme", "https"),
                                        (":authority", "x"), ("cookie", "c" * 4000)])
        client.send_data(1 + 2 * i, b"x" * 10_000, end_stream=True)
    good = client.data_to_send()
    block = HeadersFrame(13).serialize()[:9]  # an empty HEADERS without END_HEADERS, then 3 x 6000 B
    more = b"".join(ContinuationFrame(13, data=b"\x00" * 6000).serialize() for _ in range(3))
    stream = good + block + more
    for pieces in ([good, block + more], [stream[i:i + 1] for i in range(len(stream))]):
        meter, fed, refused_at = HeaderBlockMeter(16384), 0, None
        for piece in pieces:
            fed += len(piece)
            if not meter.feed(piece):
                refused_at = fed
                break
        # byte by byte: refused as the third CONTINUATION's head is read (18,000 B > 16,384)
        assert refused_at == (len(stream) if len(pieces) == 2 else len(good) + 9 + 2 * 6009 + 9), refused_at


async def test_an_http2_request_head_past_max_header_bytes_is_answered_431_and_the_connection_goes_on(tmp_path):
    """h2 holds a client to our SETTINGS_MAX_HEADER_LIST_SIZE only once it has acknowledged
    them: a request sent at once (as every client does) with a 12 kB header was served. It is
    answered 431, as on HTTP/1.1, and the next request on the connection is served."""
    import h2.events

    async with tls_server(tmp_path, hello, max_header_bytes=8192) as server:
        reader, writer, conn = await h2_connect(server.address[1])
        for stream, size in ((1, 12_000), (3, 100)):
            conn.send_headers(stream, [(":method", "GET"), (":path", f"/{stream}"), (":scheme", "https"),
                                       (":authority", "x"), ("x-big", "v" * size)], end_stream=True)
        writer.write(conn.data_to_send())
        status = {}
        async with asyncio.timeout(10):
            while len(status) < 2:
                data = await reader.read(65536)
                assert data, status
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived):
                        status[event.stream_id] = dict(event.headers)[b":status"]
                writer.write(conn.data_to_send())
        assert status == {1: b"431", 3: b"200"}, status
        assert server.stats.errors == {"header_too_large": 1}, server.stats.errors
        writer.close()


async def test_an_http2_window_opened_a_byte_at_a_time_does_not_hold_a_stream_past_write_timeout(tmp_path):
    """Slow read across streams: a client at a window of 0 that opens the connection's window a
    byte every 0.3 s woke every stream's wait for a window, each then waiting write_timeout anew:
    it held its streams (and the segments they answer with) and its connection for ever at a
    frame per 0.3 s. Each 64 KiB of a body must now go within write_timeout, as on HTTP/1.1."""
    import h2.settings

    body = os.urandom(200_000)

    async def big(request):
        return Response(200, body, "video/mp4")

    async with tls_server(tmp_path, big, write_timeout=1.0) as server:
        reader, writer, conn = await h2_connect(server.address[1])
        conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
        for stream in (1, 3):
            conn.send_headers(stream, [(":method", "GET"), (":path", "/seg"), (":scheme", "https"),
                                       (":authority", "x")], end_stream=True)
        writer.write(conn.data_to_send())
        await until(lambda: server.stats.requests == 2, 5, "the requests served")
        loop = asyncio.get_running_loop()
        started = loop.time()
        while server.stats.open and loop.time() - started < 6:
            conn.increment_flow_control_window(1)
            conn.increment_flow_control_window(1, stream_id=3)
            writer.write(conn.data_to_send())
            await asyncio.sleep(0.3)
        assert server.stats.open == 0, "still held"
        assert server.stats.errors == {"write_timeout": 1}, server.stats.errors
        writer.close()


async def test_a_long_lived_http2_connection_keeps_a_bounded_record_of_its_closed_streams(tmp_path):
    """h2 remembers how each of a connection's last 65,536 streams closed, ~7 MiB for a player's
    connection after two or three hours of LL-HLS requests; we keep H2_CLOSED_STREAMS_KEPT.
    1,500 requests on one connection: the record stays at that bound, requests go on."""
    import h2.events

    from rtmpq.http.server import H2_CLOSED_STREAMS_KEPT

    async with tls_server(tmp_path, hello) as server:
        reader, writer, conn = await h2_connect(server.address[1])
        done = 0
        for batch in range(30):
            for i in range(50):
                conn.send_headers(1 + 2 * (batch * 50 + i), [(":method", "GET"), (":path", "/x"), (":scheme", "https"),
                                                             (":authority", "x")], end_stream=True)
            writer.write(conn.data_to_send())
            async with asyncio.timeout(10):
                while done < (batch + 1) * 50:
                    data = await reader.read(65536)
                    assert data
                    done += sum(isinstance(e, h2.events.StreamEnded) for e in conn.receive_data(data))
                    writer.write(conn.data_to_send())
        (connection,) = server._connections
        assert len(connection.driver.h2._closed_streams) == H2_CLOSED_STREAMS_KEPT < 1500
        writer.close()
