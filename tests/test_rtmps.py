"""RTMPS: publishers over TLS into the same ingest, beside the plain RTMP listener."""

import asyncio
import ssl

import pytest

from rtmpq.config import ConfigError, IngestConfig, PublishConfig
from rtmpq.media.broadcast import BroadcastRegistry
from rtmpq.nodes.ingest import IngestNode

from .conftest import need, start_up_node, until
from .publishers import as_packets, collect_broadcast, ffmpeg_publish_args, probe_packets, run_process
from .rtmp_client import TcpPublisher
from .test_edge import count_frames, http_get

# short, so that a test sees a stalled handshake dropped
HANDSHAKE_TIMEOUT = 0.5


def rtmps_config(**kw) -> IngestConfig:
    return IngestConfig(host="127.0.0.1", port=0, tls_host="127.0.0.1", tls_port=0,
                        tls_handshake_timeout=HANDSHAKE_TIMEOUT, **kw)


@pytest.fixture
async def ingest(tmp_path):
    node = IngestNode(BroadcastRegistry(), rtmps_config(), PublishConfig(grace_period=0, keys={"sk-1": "show"}),
                      state_dir=tmp_path / "state")
    await node.start()
    yield node
    await node.close()


def verifying_context(node: IngestNode) -> ssl.SSLContext:
    """What a streamer who checks the node's self-signed certificate uses."""
    return ssl.create_default_context(cafile=node.state_dir / "tls" / "cert.pem")


async def test_ffmpeg_publishes_over_rtmps_and_the_hls_edge_serves_every_frame(tmp_path):
    need("ffmpeg")
    node = await start_up_node(tmp_path, rtmp=rtmps_config())
    try:
        ref = str(tmp_path / "ref.flv")
        tls_port = node.rtmp.tls_address[1]
        host, http_port = node.edge.address
        base = f"http://{host}:{http_port}/live/secure"
        publisher = asyncio.create_task(run_process(
            ffmpeg_publish_args(f"rtmps://127.0.0.1:{tls_port}/live/secure", ref)))
        await node.registry.wait_for("live/secure", 10)
        assert (await http_get(f"{base}/index.m3u8"))[0] == 200  # a viewer while it is live
        rc, out = await publisher
        assert rc == 0, out
        loop = asyncio.get_running_loop()
        end = loop.time() + 10
        while not (await http_get(f"{base}/video.m3u8"))[2].rstrip().endswith(b"#EXT-X-ENDLIST"):
            assert loop.time() < end, "the broadcast did not end"
            await asyncio.sleep(0.1)
        reference = probe_packets(ref)
        counts = await count_frames(f"{base}/index.m3u8")
        assert counts["video"] == len([p for p in reference if p.track == "video"]) > 60
        assert counts["audio"] == len([p for p in reference if p.track == "audio"])
    finally:
        await node.close()


async def test_publish_keys_apply_over_rtmps(ingest, caplog):
    caplog.set_level("DEBUG")
    tls_port = ingest.tls_address[1]
    with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
        await TcpPublisher.publish(tls_port, "not-a-key", ssl=verifying_context(ingest))
    assert ingest.registry.get("live/not-a-key") is None
    # the node's self-signed certificate verifies for a streamer who has it (127.0.0.1 in its names)
    publisher = await TcpPublisher.publish(tls_port, "sk-1", ssl=verifying_context(ingest))
    await until(lambda: ingest.registry.get("live/show") is not None, what="live/show")
    publisher.close()
    assert ": publishing live/" in caplog.text  # logged with the peer, as on plain RTMP
    assert "over RTMPS" in caplog.text  # and an operator reads which listener it came by
    assert "sk-1" not in caplog.text and "not-a-key" not in caplog.text  # the keys are not


async def test_plain_rtmp_and_silence_on_the_tls_port_are_dropped_without_touching_a_publisher(ingest, tmp_path):
    need("ffmpeg")
    ref = str(tmp_path / "ref.flv")
    collector = asyncio.create_task(collect_broadcast(ingest.registry, "live/show"))
    publisher = asyncio.create_task(run_process(
        ffmpeg_publish_args(f"rtmp://127.0.0.1:{ingest.address[1]}/live/sk-1", ref)))
    await ingest.registry.wait_for("live/show", 10)
    tls_port = ingest.tls_address[1]
    # an encoder given rtmp:// for the RTMPS port: its handshake is no TLS, it is closed at once
    with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
        await TcpPublisher.publish(tls_port, "sk-1", timeout=5)
    # a client that opens TCP and says nothing is dropped after the handshake timeout
    reader, writer = await asyncio.open_connection("127.0.0.1", tls_port)
    started = asyncio.get_running_loop().time()
    async with asyncio.timeout(HANDSHAKE_TIMEOUT + 5):
        assert await reader.read(1) == b""
    assert asyncio.get_running_loop().time() - started >= HANDSHAKE_TIMEOUT * 0.9
    writer.close()
    assert ingest.server.errors["plain_on_tls_port"] == 1 and ingest.server.errors["tls_handshake"] == 1
    rc, out = await publisher
    assert rc == 0, out
    _, frames = await collector
    assert as_packets(frames) == probe_packets(ref)  # every frame of the plain publisher arrived
    await until(lambda: not ingest.server.connections, what="every connection gone")


async def test_a_tcp_check_that_connects_and_closes_is_no_failed_handshake(ingest, caplog):
    """A load balancer's or orchestrator's TCP check opens the RTMPS port and closes it, every few
    seconds: each was logged as a failed TLS handshake and counted `tls_handshake`, burying real
    failures. A connection closed before its first byte is neither (the HTTPS listener already
    did this)."""
    caplog.set_level("WARNING", logger="rtmpq.rtmp")
    for _ in range(3):
        _, writer = await asyncio.open_connection(*ingest.tls_address)
        writer.close()
        await writer.wait_closed()
    await until(lambda: not ingest.server.connections, what="the checks' connections gone")
    assert ingest.server.errors["tls_handshake"] == 0 and "TLS handshake failed" not in caplog.text, caplog.text


async def test_an_encoder_given_the_wrong_scheme_fails_at_once_and_the_log_says_what_it_did(ingest, caplog):
    """rtmps:// to the plain port (a TLS ClientHello where C0 should be) was held to the handshake
    deadline (10 s) and logged "no successful connect"; rtmp:// to the RTMPS listener was logged as
    a bare WRONG_VERSION_NUMBER. Now either fails at once, the log says what the encoder did (once
    per address a minute: encoders retry), each is counted by its kind, and no key is logged."""
    ffmpeg, curl = need("ffmpeg"), need("curl")
    caplog.set_level("WARNING", logger="rtmpq.rtmp")
    encode = [ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin", "-f", "lavfi", "-i",
              "testsrc2=size=160x120:rate=10", "-t", "1", "-c:v", "libx264", "-f", "flv"]
    for url in (f"rtmps://127.0.0.1:{ingest.address[1]}/live/sk-1", f"rtmp://127.0.0.1:{ingest.tls_address[1]}/live/sk-1"):
        for _ in range(2):
            started = asyncio.get_running_loop().time()
            rc, out = await run_process([*encode, url], timeout=20)
            assert rc != 0 and asyncio.get_running_loop().time() - started < 5, out  # not held to a deadline
    rc, out = await run_process([curl, "-sS", "--max-time", "5", f"http://127.0.0.1:{ingest.address[1]}/live/sk-1"])
    assert rc != 0 and "timed out" not in out, out  # a browser or curl on the RTMP port: closed at once too
    errors = ingest.server.errors
    assert errors["tls_on_plain_port"] == 2 and errors["plain_on_tls_port"] == 2 and errors["http_on_rtmp_port"] == 1
    assert not errors["handshake_timeout"] and not errors["tls_handshake"]
    lines = [r.getMessage() for r in caplog.records]
    assert len([m for m in lines if "a TLS client (rtmps://) on the plain RTMP port" in m]) == 1, lines
    assert len([m for m in lines if "plain RTMP on the RTMPS listener: use rtmps://" in m]) == 1, lines
    assert len([m for m in lines if "an HTTP client on the RTMP port" in m]) == 1, lines
    assert all(m.startswith("127.0.0.1:") for m in lines) and "sk-1" not in caplog.text
    await until(lambda: not ingest.server.connections, what="every connection gone")


async def test_max_connections_counts_both_listeners(tmp_path):
    node = IngestNode(BroadcastRegistry(), rtmps_config(max_connections=1), PublishConfig(grace_period=0),
                      state_dir=tmp_path / "state")
    await node.start()
    try:
        publisher = await TcpPublisher.publish(node.address[1], "cam")
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError, ssl.SSLError)):
            await TcpPublisher.publish(node.tls_address[1], "cam2", ssl=verifying_context(node), timeout=5)
        assert node.server.errors["max_connections"] == 1
        publisher.close()
    finally:
        await node.close()


@pytest.mark.parametrize("files", ["missing", "not-pem"])
async def test_an_unreadable_certificate_is_a_config_error_at_start(tmp_path, files):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    if files == "not-pem":
        cert.write_text("not a certificate")
        key.write_text("not a key")
    node = IngestNode(BroadcastRegistry(), rtmps_config(tls_cert=cert, tls_key=key), state_dir=tmp_path / "state")
    with pytest.raises(ConfigError, match="rtmp.tls_cert"):
        await node.start()
    await node.close()
