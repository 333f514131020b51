"""Log injection: what a peer chose (an RTMP flashVer, a MoQ track namespace) never starts a log
line of its own in a running node's log."""

import asyncio
import socket
import sys

import pytest

from rtmpq.moq.client import SubscribeError, subscribe_broadcast
from rtmpq.moq.transport import connect_moq

from .conftest import free_port, node_listening, until, wait_tcp
from .rtmp_client import TcpPublisher

FORGED = "INFO rtmpq.nodes: 6.6.6.6:1: publishing live/f"  # (flashVer: 64 characters logged)


async def test_a_peer_cannot_forge_a_log_line_over_rtmp_or_moq(tmp_path):
    rtmp, moq = free_port(), free_port(socket.SOCK_DGRAM)
    (tmp_path / "node.toml").write_text('[auth]\nsecret = "0123456789abcdef0123456789abcdef"\n'
                                        "require_playback_token = true\n")
    log = open(tmp_path / "node.log", "w+b")
    args = ["up", "--config", str(tmp_path / "node.toml"), "--rtmp", f"127.0.0.1:{rtmp}", "--moq", f"127.0.0.1:{moq}",
            "--http", f"127.0.0.1:{free_port()}", "--state-dir", str(tmp_path / "state"), "--quic-backend", "aioquic"]
    node = await asyncio.create_subprocess_exec(sys.executable, "-m", "rtmpq", *args, stdout=log, stderr=log)
    try:
        await wait_tcp(rtmp)
        await node_listening(node, args)
        # connecting needs no key: the flashVer is logged with the connect
        with pytest.raises(ConnectionRefusedError):
            await TcpPublisher.publish(rtmp, "no-such-key", connect={"flashVer": f"FMLE/3.0\r\n{FORGED}"})
        # a SUBSCRIBE without a token is refused and logged with the namespace it named
        async with connect_moq("127.0.0.1", moq, insecure=True, backend="aioquic") as conn:
            with pytest.raises(SubscribeError):
                async for _ in subscribe_broadcast(conn, f"live/x\n{FORGED}\u2028", wait=1):
                    pass

        def logged() -> str:
            return (tmp_path / "node.log").read_text(errors="replace")

        await until(lambda: logged().count(FORGED) >= 2 and "connected to app" in logged(), 10,
                    "both attempts in the log")
        lines = logged().splitlines()
        assert not [line for line in lines if line.startswith(FORGED)], lines
        assert any("FMLE/3.0\\r\\n" + FORGED in line for line in lines)
        assert any("live/x\\n" + FORGED + "\\u2028" in line for line in lines)
    finally:
        node.terminate()
        await node.wait()
        log.close()
