"""ffmpeg publishes over RTMP into `rtmpq up`; MoQ subscribers receive over real QUIC on loopback."""

import asyncio
import subprocess

import pytest

from rtmpq.codec import amf0_encode
from rtmpq.media.flv import read_flv_tags

from rtmpq.media.catalog import Catalog
from rtmpq.moq.client import SkippedGroup, subscribe_broadcast
from rtmpq.moq.transport import connect_moq

from rtmpq.nodes.up import UpNode

from .conftest import local_config, need, until
from .publishers import as_packets, ffmpeg_publish_args, probe_packets, run_process
from .rtmp_client import TcpPublisher


async def receive(node, broadcast, *, fingerprint=None, insecure=True, limit=None, until_video=False, tracks=None):
    host, port = node.moq_address
    catalogs, frames, skipped = [], [], []
    # the subscriber uses the same QUIC library as the node (pinning needs aioquic on the client)
    backend = "aioquic" if fingerprint else node.moq_config.backend
    async with connect_moq(host, port, insecure=insecure and not fingerprint, fingerprint=fingerprint,
                           backend=backend) as conn:
        async for item in subscribe_broadcast(conn, broadcast, tracks=tracks):
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
    broadcast = node.registry.get("live/late")
    # into the second GoP (keyframes every 2 s): its IDR is the group in progress, the next is 2 s away
    await until(lambda: broadcast._current_group and broadcast._current_group[0].group == 1, what="the second group")
    in_progress = broadcast._current_group[0]
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
    the node's certificate accepts that node and refuses any other. The refusal says what to
    check (found deploying nodes apart: aiopquic said "connection terminated during handshake
    (error_code=0)", aioquic nothing at all, so `rtmpq sub` printed "rtmpq sub: ")."""
    from rtmpq.moq.tls import ensure_self_signed

    host, port = node.moq_address
    backend = node.moq_config.backend
    own = node.moq_config.state_dir / "tls" / "cert.pem"
    async with connect_moq(host, port, cafile=str(own), backend=backend, timeout=10) as conn:
        assert conn.session.setup_done
    other, _ = ensure_self_signed(tmp_path / "other")
    with pytest.raises(ConnectionError, match=rf"handshake with {host}:{port} failed.*signed by, or be, {other}"):
        async with connect_moq(host, port, cafile=str(other), backend=backend, timeout=10):
            pass
    # and no CA at all: the system's roots do not know it
    with pytest.raises(ConnectionError, match=r"handshake with .* failed.*--cafile .*cert\.pem.*--insecure"):
        async with connect_moq(host, port, backend=backend, timeout=10):
            pass


def test_fingerprint_on_aiopquic_says_to_pin_with_cafile():
    with pytest.raises(ValueError, match="--cafile"):
        connect_moq("127.0.0.1", 4443, fingerprint="00" * 32, backend="aiopquic")
    from rtmpq.config import Config, ConfigError, UpstreamConfig, validate

    with pytest.raises(ConfigError, match="--cafile"):
        validate(Config(upstream=UpstreamConfig(url="moqt://a:1", fingerprint="00" * 32)))


async def test_a_moq_port_in_use_is_an_error_at_start(node, tmp_path):
    """A second node on the same UDP port does not start. picoquic, when it cannot bind its
    port, runs with no socket at all and says nothing: the node logged that it listened."""
    config = local_config(tmp_path / "second", node.moq_config.backend)
    config.moq.port = node.moq_address[1]
    second = UpNode(config)
    try:
        with pytest.raises(OSError, match=str(config.moq.port)):
            await second.start()
    finally:
        await second.close()


async def fails_to_start_on_a_taken_port(tmp_path, port: int) -> None:
    """An aiopquic node on MoQ ``port`` does not start, and says which listener and why."""
    import errno

    config = local_config(tmp_path, "aiopquic")
    config.moq.port = port
    node = UpNode(config)
    try:
        with pytest.raises(OSError, match=f"MoQ \\(udp\\) listener on 127.0.0.1:{port}: ") as info:
            await node.start()
        assert info.value.errno == errno.EADDRINUSE
        assert str(info.value).endswith("([moq] host/port, --moq)"), info.value
    finally:
        await node.close()


async def test_a_moq_port_taken_after_the_check_is_an_error_at_start(tmp_path, monkeypatch):
    """picoquic binds on its own thread and, when the port is taken, runs with no socket and says
    nothing. A port taken between the node's check and picoquic's bind (another program starting
    at the same moment: the check is made to pass here) left a node that logged it listened and
    held no socket; it now fails to start."""
    import sys

    from rtmpq.moq import transport

    monkeypatch.setattr(transport, "_check_udp_port_free", lambda host, port: None)
    holder = await asyncio.create_subprocess_exec(  # another program, holding the port on IPv4 and IPv6
        sys.executable, "-c", "import socket, sys\n"
        "v4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); v4.bind(('0.0.0.0', 0))\n"
        "port = v4.getsockname()[1]\n"
        "try:\n"
        "    v6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n"
        "    v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1); v6.bind(('::', port))\n"
        "except OSError:\n"
        "    pass\n"
        "print(port, flush=True); sys.stdin.read()",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    try:
        port = int(await asyncio.wait_for(holder.stdout.readline(), 10))
        await fails_to_start_on_a_taken_port(tmp_path, port)
    finally:
        holder.stdin.close()
        await holder.wait()


async def test_a_moq_port_in_use_on_ipv6_alone_is_an_error_at_start(tmp_path):
    """aiopquic binds its port on IPv4 and IPv6 of every interface. A port another program holds
    on IPv6 alone passed the IPv4 check: the node started (aiopquic 0.6.1 listening on IPv4 alone,
    picoquic on no socket at all), and IPv6 clients of the port reached the other program."""
    import socket

    try:
        holder = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    except OSError:
        pytest.skip("this host has no IPv6")
    with holder:
        holder.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        holder.bind(("::", 0))
        port = holder.getsockname()[1]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as v4:
            v4.bind(("0.0.0.0", port))  # free on IPv4: only the IPv6 check can see it taken
        await fails_to_start_on_a_taken_port(tmp_path, port)


@pytest.mark.parametrize("listener", ["RTMP", "HTTP"])
async def test_a_tcp_port_in_use_names_its_listener(node, tmp_path, listener):
    """The error a user sees (`rtmpq: ...`) says which of the node's listeners could not bind:
    the bare errno names no address."""
    config = local_config(tmp_path / "second", node.moq_config.backend)
    section, (host, port) = (config.rtmp, node.rtmp.address) if listener == "RTMP" else (config.http, node.edge.address)
    section.port = port
    second = UpNode(config)
    try:
        with pytest.raises(OSError, match=f"{listener} listener on {host}:{port}: ") as info:
            await second.start()
        setting = "[rtmp] host/port, --rtmp" if listener == "RTMP" else "[http] host/port, --http"
        assert str(info.value).endswith(f"({setting})"), info.value  # what to change
    finally:
        await second.close()


async def test_a_node_shutting_down_sends_goaway(node):
    from rtmpq.moq.events import GoawayReceived

    host, port = node.moq_address
    async with connect_moq(host, port, insecure=True, backend=node.moq_config.backend) as conn:
        got = asyncio.get_running_loop().create_future()
        conn.handler = lambda _c, e: got.set_result(e) if isinstance(e, GoawayReceived) and not got.done() else None
        node.moq.stop()
        assert isinstance(await asyncio.wait_for(got, 5), GoawayReceived)


@pytest.fixture(scope="module")
def video_flv(tmp_path_factory):
    """Two seconds of video with a keyframe every 0.5 s: groups 0 to 3."""
    need("ffmpeg")
    path = tmp_path_factory.mktemp("flv") / "video.flv"
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc2=size=160x120:rate=20",
         "-t", "2", "-c:v", "libx264", "-preset", "veryfast", "-bf", "0", "-g", "10", "-keyint_min", "10",
         "-x264-params", "scenecut=0", "-f", "flv", str(path)],
        check=True,
    )
    return path


async def test_data_objects_of_every_group_reach_a_subscriber(node, video_flv):
    """Timed metadata (AMF0 data messages) in every group, not only the first, reach MoQ subscribers."""
    publisher = await TcpPublisher.publish(node.rtmp.address[1], "meta")
    tags = list(read_flv_tags(str(video_flv)))
    # the sequence header and group 0, with a data message after each frame
    first_group = [i for i, (t, _, body) in enumerate(tags) if t == 9 and body[:2] == b"\x17\x01"][1]

    def send(part):
        for tag_type, ts, body in part:
            publisher.media(tag_type, ts, body)
            if tag_type == 9 and body[1] == 1:
                publisher.media(18, ts, amf0_encode("onTextData", {"text": f"at {ts}"}))

    send(tags[:first_group])
    data: list = []

    async def subscriber():
        host, port = node.moq_address
        async with connect_moq(host, port, insecure=True, backend=node.moq_config.backend) as conn:
            async for item in subscribe_broadcast(conn, "live/meta", tracks=["data"]):
                if not isinstance(item, (Catalog, SkippedGroup)):
                    data.append(item)

    task = asyncio.create_task(subscriber())
    async with asyncio.timeout(10):
        while not data:  # subscribed: it has the newest group of the data track
            await asyncio.sleep(0.01)
    send(tags[first_group:])
    # the publish ends (as an encoder stops: FCUnpublish), then the connection: the broadcast ends
    # and the subscription once every group is in (a connection dropped mid-group would instead
    # cut the group in progress: tests/test_cut_groups.py)
    publisher.command(0, "FCUnpublish", 6.0, None, "meta")
    publisher.close()
    await asyncio.wait_for(task, 15)
    # from group 1 on, every data object, numbered from 0 in its group, with its bytes
    later = sorted((f.group, f.index, bytes(f.payload)) for f in data if f.group >= 1)  # one stream a group
    video = [(ts, body) for t, ts, body in tags[first_group:] if t == 9 and body[1] == 1]
    assert later == [(1 + n // 10, n % 10, amf0_encode("onTextData", {"text": f"at {ts}"}))
                     for n, (ts, _) in enumerate(video)]


async def test_a_track_asked_for_by_name_that_the_broadcast_lacks_is_said(node, video_flv, caplog):
    """rtmpq sub --track vidoe (a typo) waited for that track with no word, for ever."""
    publisher = await TcpPublisher.publish(node.rtmp.address[1], "typo")
    for tag_type, ts, body in list(read_flv_tags(str(video_flv)))[:3]:
        publisher.media(tag_type, ts, body)
    host, port = node.moq_address
    async with connect_moq(host, port, insecure=True, backend=node.moq_config.backend) as conn:
        items = subscribe_broadcast(conn, "live/typo", tracks=["vidoe"], wait=5)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(2):
                async for _ in items:
                    pass
        await items.aclose()
    assert "has no track vidoe (its catalog lists video): waiting for it" in caplog.text, caplog.text
    publisher.close()
