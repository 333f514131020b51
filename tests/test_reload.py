"""SIGHUP: stream keys and [auth] settings read again from the config file, streams going on."""

import asyncio
import os
import signal
import socket
import sys
import time

import pytest

from rtmpq.auth.tokens import mint_token
from rtmpq.config import AuthConfig, Config, ConfigError, load_config, reload_settings

from .conftest import free_port, http_get, need, start_up_node, until, wait_tcp
from .publishers import drop_publish, ffmpeg_publish_only_args, run_process

OLD, KEEP, NEW = "sk-old-1f9c2a77", "sk-keep-5d0e8b31", "sk-new-77aa0c42"
SECRET = "a-test-secret-that-is-long-enough-for-hs256"


def write(path, text: str) -> None:
    path.write_text(text)


def test_only_keys_and_auth_are_taken_and_an_open_node_stays_open(tmp_path):
    cfg = tmp_path / "rtmpq.toml"
    write(cfg, f'[publish]\ngrace_period = 1.0\n[publish.keys]\n"{OLD}" = "studio"\n')
    config = load_config(cfg, env={})
    keys, auth = config.publish.keys, config.auth  # the objects the node's parts hold
    write(cfg, f'[publish]\ngrace_period = 9.0\n[publish.keys]\n"{NEW}" = "studio"\n[auth]\nsecret = "{SECRET}"\n')
    taken, later = reload_settings(config, load_config(cfg, env={}))
    assert sorted(taken) == ["auth.secret", "publish.keys"] and later == ["publish.grace_period"]
    assert config.publish.keys == {NEW: "studio"} and config.auth is auth and auth.secret == SECRET
    assert config.publish.grace_period == 1.0  # read at start only
    assert keys == {OLD: "studio"}  # replaced, not edited: a reader mid-decision sees one or the other
    with pytest.raises(ConfigError, match="without a restart"):  # closed -> open
        reload_settings(config, load_config(None, env={}))
    assert config.publish.keys == {NEW: "studio"}
    open_node = load_config(None, env={})
    with pytest.raises(ConfigError, match="without a restart"):  # open -> closed
        reload_settings(open_node, load_config(cfg, env={}))
    assert not open_node.publish.keys and not open_node.auth.secret


async def test_sighup_revokes_a_key_admits_a_new_one_and_keeps_the_other_streams(tmp_path):
    need("ffmpeg")
    rtmp, http, moq = free_port(), free_port(), free_port(socket.SOCK_DGRAM)
    cfg, log = tmp_path / "rtmpq.toml", tmp_path / "up.log"
    write(cfg, f'[publish.keys]\n"{OLD}" = "studio"\n"{KEEP}" = "desk"\n')
    with open(log, "wb") as out:
        up = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "rtmpq", "--log-level", "INFO", "up", "--config", str(cfg),
            "--rtmp", f"127.0.0.1:{rtmp}", "--http", f"127.0.0.1:{http}", "--moq", f"127.0.0.1:{moq}",
            "--state-dir", str(tmp_path / "state"), stdout=out, stderr=out,
            env={**os.environ, "RTMPQ_PUBLISH_GRACE_PERIOD": "0"})
    publishes = []

    def publish(key: str, seconds: float = 60) -> asyncio.Task:
        task = asyncio.ensure_future(run_process(ffmpeg_publish_only_args(f"rtmp://127.0.0.1:{rtmp}/live/{key}",
                                                                          seconds), timeout=seconds + 30))
        publishes.append(task)
        return task

    async def live(name: str) -> None:
        status, _ = await http_get(f"http://127.0.0.1:{http}/live/{name}/index.m3u8", until_live=True, deadline=30)
        assert status == 200, name

    async def logged(text: str) -> None:
        await until(lambda: text in log.read_text(), 20, f"{text!r} in the node's log")

    async def hangup(text: str) -> None:
        up.send_signal(signal.SIGHUP)
        await logged(text)

    try:
        await wait_tcp(rtmp)
        await wait_tcp(http)
        old, keep = publish(OLD), publish(KEEP)
        await live("studio")
        await live("desk")
        # the operator revokes OLD, adds NEW and changes a setting read at start only
        write(cfg, f'[publish]\nidle_timeout = 7.0\n[publish.keys]\n"{KEEP}" = "desk"\n"{NEW}" = "studio2"\n')
        await hangup("now in effect: publish.keys")
        await logged("publish.idle_timeout changed, which is read at start only")
        rc, output = await asyncio.wait_for(old, 20)  # the revoked key's publish is ended
        assert rc != 0 and "no longer accepted" in log.read_text(), output
        assert not keep.done()  # the other publish goes on
        rc, output = await asyncio.wait_for(publish(OLD, 3), 30)
        assert rc != 0, output  # the revoked key is refused from now on
        new = publish(NEW)
        await live("studio2")
        # a file that does not load, or one that would open the node, changes nothing
        write(cfg, "[publish.keys\n")
        await hangup("configuration not reloaded")
        write(cfg, "")
        await hangup("cannot go from none to some, or from some to none")
        assert up.returncode is None and not keep.done() and not new.done()
        rc, output = await asyncio.wait_for(publish("desk", 3), 30)  # still closed: a name is not a key
        assert rc != 0, output
        await live("desk")
        text = log.read_text()
        assert not any(secret in text for secret in (OLD, KEEP, NEW))  # keys never reach the log
    finally:
        for task in publishes:
            await drop_publish(task)
        if up.returncode is None:
            up.terminate()
        await up.wait()


async def test_a_rotated_secret_ends_the_token_publishes_it_does_not_sign_and_only_those(tmp_path):
    need("ffmpeg")
    node = await start_up_node(tmp_path, auth=AuthConfig(secret=SECRET))
    rtmp = f"rtmp://127.0.0.1:{node.rtmp.address[1]}/live"
    now = time.time()
    short = mint_token(SECRET, "live/short", "publish", 2, now=now)  # expires while it publishes
    app_wide = mint_token(SECRET, "live", "publish", 60, now=now)
    first = second = None
    try:
        first = asyncio.ensure_future(run_process(ffmpeg_publish_only_args(f"{rtmp}/{short}", 60), timeout=90))
        await until(lambda: "live/short" in node.rtmp.publishes, 30, "the short token's publish")
        await until(lambda: time.time() > now + 3, 10, "the token's expiry")
        new = Config()
        new.auth.secret = SECRET  # the same secret: the expired token's publish goes on (checked as at its start)
        reload_settings(node.config, new)
        node.rtmp.recheck_publishes()
        assert "live/short" in node.rtmp.publishes and not first.done()
        second = asyncio.ensure_future(run_process(ffmpeg_publish_only_args(f"{rtmp}/cam?token={app_wide}", 60),
                                                   timeout=90))
        await until(lambda: "live/cam" in node.rtmp.publishes, 30, "the ?token= publish")
        new.auth.secret = SECRET[::-1]  # rotated: tokens signed with the old secret are not accepted
        reload_settings(node.config, new)
        node.rtmp.recheck_publishes()
        for task in (first, second):
            rc, output = await asyncio.wait_for(task, 20)
            assert rc != 0, output
        assert not node.rtmp.publishes
    finally:
        for task in (first, second):
            if task is not None:
                await drop_publish(task)
        await node.close()


async def test_sighup_to_a_transcoder_node_is_said_and_does_not_stop_it(tmp_path):
    """`kill -HUP` (systemd's ExecReload) ended `rtmpq transcode` at once, exit 129 and no log
    line; the nodes that reload their keys handle it, this one now says it has nothing to reload."""
    ops = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rtmpq", "transcode", "--upstream", f"moqt://127.0.0.1:{free_port(socket.SOCK_DGRAM)}",
        "--insecure", "--http", f"127.0.0.1:{ops}", stderr=asyncio.subprocess.PIPE)
    try:
        await wait_tcp(ops)
        proc.send_signal(signal.SIGHUP)
        async with asyncio.timeout(10):
            while "SIGHUP" not in (line := (await proc.stderr.readline()).decode()):
                assert line, f"the transcoder exited ({await proc.wait()})"
        assert "SIGHUP: a transcode node reads its settings at start only: nothing reloaded" in line, line
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 10)
        assert proc.returncode == 0 and b"Traceback" not in err, err.decode()[-2000:]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
