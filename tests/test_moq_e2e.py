"""ffmpeg publishes over RTMP into `rtmpq up`; MoQ subscribers receive over real QUIC on loopback."""

import asyncio

import pytest

from rtmpq.media.catalog import Catalog
from rtmpq.moq.client import SkippedGroup, subscribe_broadcast
from rtmpq.moq.transport import connect_moq

from .conftest import need
from .publishers import as_packets, ffmpeg_publish_args, probe_packets, run_process


async def receive(node, broadcast, *, fingerprint=None, insecure=True, limit=None, until_video=False):
    host, port = node.moq_address
    catalogs, frames, skipped = [], [], []
    # the subscriber uses the same QUIC library as the node (pinning needs aioquic on the client)
    backend = "aioquic" if fingerprint else node.moq_config.backend
    async with connect_moq(host, port, insecure=insecure and not fingerprint, fingerprint=fingerprint,
                           backend=backend) as conn:
        async for item in subscribe_broadcast(conn, broadcast):
            if isinstance(item, Catalog):
                catalogs.append(item)
            elif isinstance(item, SkippedGroup):
                skipped.append(item)
            else:
                frames.append(item)
                if (limit and len(frames) >= limit) or (until_video and item.track == "video"):
                    break
    return catalogs, frames, skipped


async def test_subscriber_receives_every_frame_of_an_ffmpeg_publish(node, tmp_path):
    need("ffmpeg")
    ref = str(tmp_path / "ref.flv")
    rtmp_port = node.rtmp.address[1]
    publisher = asyncio.create_task(run_process(ffmpeg_publish_args(f"rtmp://127.0.0.1:{rtmp_port}/live/cam", ref, seconds=4)))
    await node.registry.wait_for("live/cam", 10)
    catalogs, frames, skipped = await asyncio.wait_for(receive(node, "live/cam", fingerprint=node.fingerprint), 30)
    rc, output = await publisher
    assert rc == 0, output
    assert not skipped
    reference = probe_packets(ref)
    video = [f for f in frames if f.track == "video"]
    # subscribed right at the start: the first group in the cache is group 0, so nothing is missing
    for track in ("video", "audio"):
        # newer groups may overtake older ones (one stream each); within a group order is kept
        got = as_packets(sorted((f for f in frames if f.track == track), key=lambda f: (f.group, f.index)))
        assert got == [p for p in reference if p.track == track], track
    assert video[0].keyframe and video[0].index == 0
    assert catalogs[-1].track("video").codec.startswith("avc1.")
    assert all(f.received_ns > 0 for f in frames)


async def test_late_joiner_starts_on_the_newest_keyframe_at_once(node, tmp_path):
    need("ffmpeg")
    rtmp_port = node.rtmp.address[1]
    ref = str(tmp_path / "ref.flv")
    publisher = asyncio.create_task(run_process(ffmpeg_publish_args(f"rtmp://127.0.0.1:{rtmp_port}/live/late", ref, seconds=5)))
    await node.registry.wait_for("live/late", 10)
    await asyncio.sleep(2.8)  # inside the second GoP (keyframes every 2 s)
    in_progress = node.registry.get("live/late")._current_group[0]
    assert in_progress.track == "video" and in_progress.group == 1
    catalogs, frames, _ = await asyncio.wait_for(receive(node, "live/late", until_video=True), 20)
    first_video = next(f for f in frames if f.track == "video")
    # the group in progress at join time, from its IDR: not the next keyframe 1.2 s later
    assert (first_video.group, first_video.index, first_video.keyframe) == (1, 0, True)
    assert first_video.dts == in_progress.dts
    rc, output = await publisher
    assert rc == 0, output


async def test_unknown_broadcast_is_refused_clearly(node):
    with pytest.raises(ConnectionError, match="no such broadcast"):
        await asyncio.wait_for(receive(node, "live/nobody"), 10)


async def test_wrong_fingerprint_is_refused(node):
    with pytest.raises(ConnectionError, match="fingerprint"):
        await asyncio.wait_for(receive(node, "live/x", fingerprint="00" * 32), 10)


async def test_the_nodes_own_certificate_as_ca_pins_it_on_both_backends(node, tmp_path):
    """How aiopquic pins (it cannot show the peer certificate for --fingerprint): --cafile with
    the node's certificate accepts that node and refuses any other."""
    from rtmpq.moq.tls import ensure_self_signed

    host, port = node.moq_address
    backend = node.moq_config.backend
    own = node.moq_config.state_dir / "tls" / "cert.pem"
    async with connect_moq(host, port, cafile=str(own), backend=backend, timeout=10) as conn:
        assert conn.session.setup_done
    other, _ = ensure_self_signed(tmp_path / "other")
    with pytest.raises(ConnectionError):
        async with connect_moq(host, port, cafile=str(other), backend=backend, timeout=10):
            pass
    with pytest.raises(ConnectionError):  # and no CA at all: the system's roots do not know it
        async with connect_moq(host, port, backend=backend, timeout=10):
            pass


def test_fingerprint_on_aiopquic_says_to_pin_with_cafile():
    with pytest.raises(ValueError, match="--cafile"):
        connect_moq("127.0.0.1", 4443, fingerprint="00" * 32, backend="aiopquic")
    from rtmpq.config import Config, ConfigError, UpstreamConfig, validate

    with pytest.raises(ConfigError, match="--cafile"):
        validate(Config(upstream=UpstreamConfig(url="moqt://a:1", fingerprint="00" * 32)))


async def test_a_node_shutting_down_sends_goaway(node):
    from rtmpq.moq.events import GoawayReceived

    host, port = node.moq_address
    async with connect_moq(host, port, insecure=True, backend=node.moq_config.backend) as conn:
        got = asyncio.get_running_loop().create_future()
        conn.handler = lambda _c, e: got.set_result(e) if isinstance(e, GoawayReceived) and not got.done() else None
        node.moq.stop()
        assert isinstance(await asyncio.wait_for(got, 5), GoawayReceived)
