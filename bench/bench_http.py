"""The HTTP listener (h11 / h2 under rtmpq.http.server) against nginx, same files, same load.

    .venv/bin/python -m pytest bench/bench_http.py --benchmark-only -s

h2load (Debian nghttp2-client) fetches one file over and over on 10 connections (HTTP/1.1, or
HTTP/2 over TLS with one stream per connection at a time): a 300 KB segment (what LL-HLS players
fetch most by bytes) and a 2 KB playlist (most by count). Each server runs in its own process:
rtmpq's HttpServer with a handler that answers from memory (the edge answers segments from memory
too), and nginx 1.22 (Debian) with one worker serving the files from disk (page cache). Reported:
requests/s and the server process's CPU seconds per 1000 requests (user + system, from /proc).
"""

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REQUESTS = {"seg.m4s": 3000, "index.m3u8": 20000}
CONNECTIONS = 10
RESULTS: dict[tuple[str, str, str], tuple[float, float]] = {}

SERVER = """
import asyncio, sys
from pathlib import Path
from rtmpq.config import HttpConfig
from rtmpq.http import Response
from rtmpq.http.server import HttpServer

root, port = Path(sys.argv[1]), int(sys.argv[2])
files = {"/" + p.name: p.read_bytes() for p in root.iterdir() if p.is_file()}

async def handle(request):
    body = files.get(request.path)
    return Response(200, body, "video/mp4", "max-age=60") if body is not None else Response(404, b"")

async def main():
    tls = sys.argv[3:5] if len(sys.argv) > 4 else (None, None)
    server = HttpServer(handle, HttpConfig(host="127.0.0.1", port=port, certfile=tls[0], keyfile=tls[1]))
    await server.start()
    await asyncio.Event().wait()

asyncio.run(main())
"""

NGINX = """
{user}worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    keepalive_requests 1000000;  # nginx closes a connection after 1000 requests by default
    types {{ video/mp4 m4s; application/vnd.apple.mpegurl m3u8; }}
    client_body_temp_path {root}/tmp; proxy_temp_path {root}/tmp; fastcgi_temp_path {root}/tmp;
    uwsgi_temp_path {root}/tmp; scgi_temp_path {root}/tmp;
    server {{ listen 127.0.0.1:{plain}; root {root}/www; }}
    server {{ listen 127.0.0.1:{tls} ssl http2; ssl_certificate {cert}; ssl_certificate_key {key}; root {root}/www; }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int) -> None:
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    for tool in ("h2load", "nginx"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed (make system-deps: nghttp2-client, nginx)")
    root = tmp_path_factory.mktemp("http")
    www = root / "www"
    www.mkdir()
    (root / "tmp").mkdir()
    (www / "seg.m4s").write_bytes(os.urandom(300_000))
    (www / "index.m3u8").write_bytes(b"#EXTM3U\n" + b"#EXT-X-PART:DURATION=0.3,URI=\"v-seg1.0.m4s\"\n" * 45)
    from rtmpq.moq.tls import ensure_self_signed

    cert, key = ensure_self_signed(root / "tls")
    ports = {name: free_port() for name in ("rtmpq", "rtmpq-tls", "nginx", "nginx-tls")}
    procs = {
        "rtmpq": [subprocess.Popen([sys.executable, "-c", SERVER, str(www), str(ports["rtmpq"])])],
        "rtmpq-tls": [subprocess.Popen([sys.executable, "-c", SERVER, str(www), str(ports["rtmpq-tls"]),
                                        str(cert), str(key)])],
    }
    # as root, nginx's worker would run as nobody and could not read pytest's private tmp dir
    user = "user root;\n" if os.geteuid() == 0 else ""
    (root / "nginx.conf").write_text(NGINX.format(user=user, root=root, plain=ports["nginx"], tls=ports["nginx-tls"],
                                                  cert=cert, key=key))
    nginx = subprocess.Popen(["nginx", "-c", str(root / "nginx.conf"), "-p", str(root)],
                             stderr=subprocess.DEVNULL)
    for port in ports.values():
        wait_port(port)
    time.sleep(0.2)
    master = nginx.pid
    children = [int(p) for p in Path(f"/proc/{master}/task/{master}/children").read_text().split()]
    procs["nginx"] = procs["nginx-tls"] = [nginx]
    pids = {"rtmpq": [procs["rtmpq"][0].pid], "rtmpq-tls": [procs["rtmpq-tls"][0].pid],
            "nginx": [master, *children], "nginx-tls": [master, *children]}
    yield ports, pids
    for p in (procs["rtmpq"][0], procs["rtmpq-tls"][0], nginx):
        p.terminate()
        p.wait()
    print_table()


def h2load(url: str, n: int, h1: bool) -> float:
    args = ["h2load", "-n", str(n), "-c", str(CONNECTIONS), "-m", "1", url]
    if h1:
        args.insert(1, "--h1")
    out = subprocess.run(args, capture_output=True, text=True, timeout=300).stdout
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out)
    assert done and int(done.group(2)) == n, out
    return float(re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out).group(1))


@pytest.mark.parametrize("file", ["seg.m4s", "index.m3u8"])
@pytest.mark.parametrize("protocol", ["HTTP/1.1", "HTTP/2 (TLS)"])
@pytest.mark.parametrize("server", ["rtmpq", "nginx"])
def test_http_throughput(benchmark, servers, server, protocol, file):
    ports, pids = servers
    key = server + ("-tls" if protocol.startswith("HTTP/2") else "")
    scheme = "https" if key.endswith("tls") else "http"
    url = f"{scheme}://127.0.0.1:{ports[key]}/{file}"
    n = REQUESTS[file]
    h2load(url, n // 10, protocol == "HTTP/1.1")  # warm up
    before = cpu_seconds(pids[key])
    rate = benchmark.pedantic(h2load, args=(url, n, protocol == "HTTP/1.1"), rounds=1, iterations=1)
    cpu = cpu_seconds(pids[key]) - before
    RESULTS[(file, protocol, server)] = (rate, cpu / n * 1000)
    benchmark.extra_info.update(requests_per_s=rate, cpu_s_per_1000=cpu / n * 1000)


def print_table() -> None:
    print("\n| file | protocol | rtmpq req/s | nginx req/s | rtmpq CPU s / 1000 req | nginx CPU s / 1000 req |")
    print("|---|---|---|---|---|---|")
    for file in REQUESTS:
        for protocol in ("HTTP/1.1", "HTTP/2 (TLS)"):
            r, g = RESULTS.get((file, protocol, "rtmpq")), RESULTS.get((file, protocol, "nginx"))
            if r and g:
                print(f"| {file} | {protocol} | {r[0]:.0f} | {g[0]:.0f} | {r[1]:.3f} | {g[1]:.3f} |")
