"""Installed, not checked out: a node started from any directory, or from a wheel built on a clean
clone, serves its player page, hls.js and its status page; a missing hls.js is a warning at start."""

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx

from rtmpq.config import bundled_static_dir

from .conftest import free_port, need, wait_tcp

REPO = Path(__file__).resolve().parent.parent


async def run_node(cwd: Path, *extra: str, env: dict | None = None):
    http = free_port()
    node = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rtmpq", "up", "--rtmp", f"127.0.0.1:{free_port()}",
        "--moq", f"127.0.0.1:{free_port(socket.SOCK_DGRAM)}", "--http", f"127.0.0.1:{http}",
        "--state-dir", str(cwd / "state"), *extra, cwd=cwd, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    await wait_tcp(http)
    return node, f"http://127.0.0.1:{http}"


async def stop(node) -> str:
    node.terminate()
    _, err = await node.communicate()
    return err.decode()


async def check_player_and_status_page(base: str, hls_js: bytes) -> None:
    async with httpx.AsyncClient(timeout=20) as client:
        r = await client.get(f"{base}/hls.min.js")
        assert r.status_code == 200 and r.content == hls_js
        page = await client.get(f"{base}/live/anything/")
        assert page.status_code == 200 and '<script src="/hls.min.js">' in page.text
        status = await client.get(f"{base}/")
        assert status.status_code == 200 and "/api/v1/broadcasts" in status.text


async def test_a_node_started_in_another_directory_serves_hls_js_or_says_it_has_none(tmp_path):
    bundled = bundled_static_dir() / "hls.min.js"
    assert bundled.is_file(), "run `make hlsjs`"
    node, base = await run_node(tmp_path)
    try:
        await check_player_and_status_page(base, bundled.read_bytes())
    finally:
        err = await stop(node)
    assert "hls.js is not in" not in err
    # a --static without hls.js: a warning at start that says what to do; the 404 blames no one
    (tmp_path / "empty").mkdir()
    node, base = await run_node(tmp_path, "--static", str(tmp_path / "empty"))
    try:
        async with httpx.AsyncClient(timeout=20) as client:
            r = await client.get(f"{base}/hls.min.js")
            assert r.status_code == 404 and "its log said so at start" in r.text
    finally:
        err = await stop(node)
    assert f"hls.js is not in {tmp_path / 'empty'}" in err and "make hlsjs" in err


async def test_a_wheel_built_on_a_clean_clone_carries_hls_js_and_the_status_page(tmp_path):
    need("git")
    src = tmp_path / "src"
    subprocess.run(["git", "clone", "-q", "--depth", "1", f"file://{REPO}", str(src)], check=True)
    assert not (src / "rtmpq" / "edge" / "static" / "hls.min.js").exists()  # not committed
    env = dict(os.environ, RTMPQ_NO_COMPILE="1")
    if (REPO / "var" / "npm").is_dir():  # the tarball `make hlsjs` cached (checked by its SHA-512): no network
        env["RTMPQ_HLSJS_CACHE"] = str(REPO / "var" / "npm")
    build = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"),
        str(src), env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(build.communicate(), 120)
    assert build.returncode == 0, out.decode()
    wheel = next((tmp_path / "dist").glob("rtmpq-*.whl"))
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        assert {"rtmpq/edge/static/hls.min.js", "rtmpq/ops/static/status.html"} <= names
        z.extractall(site)
    hls_js = (site / "rtmpq" / "edge" / "static" / "hls.min.js").read_bytes()
    assert hls_js == (bundled_static_dir() / "hls.min.js").read_bytes()
    # the node runs from the unpacked wheel (pure Python: it was built without the compiler)
    env = dict(os.environ, PYTHONPATH=str(site), RTMPQ_PUREPYTHON="1")
    env.pop("RTMPQ_REQUIRE_COMPILED", None)
    where = subprocess.run([sys.executable, "-c", "import rtmpq; print(rtmpq.__file__)"], env=env, cwd=tmp_path,
                           capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(site)), where
    node, base = await run_node(tmp_path, env=env)
    try:
        await check_player_and_status_page(base, hls_js)
    finally:
        err = await stop(node)
    assert "hls.js is not in" not in err
    shutil.rmtree(src)
