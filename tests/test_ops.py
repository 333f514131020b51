"""What operators read from every node's HTTP listener: /metrics, /healthz, /readyz, the API."""

import asyncio
import json
import sys

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from rtmpq.config import Config, HttpConfig, MoqConfig, PublishConfig, UpstreamConfig

from .conftest import free_port, need, start_up_node, wait_tcp
from .publishers import LivePublish, ffmpeg_publish_args, run_process


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) -> value, as prometheus_client's own parser reads the page."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def wait_until(check, deadline: float = 20.0, interval: float = 0.2):
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while True:
        result = await check()
        if result or loop.time() > end:
            return result
        await asyncio.sleep(interval)


@pytest.mark.parametrize("backend", ["aioquic", "aiopquic"])
async def test_metrics_api_and_health_of_a_node_with_a_live_publish(tmp_path, backend):
    need("ffmpeg")
    # a secret key published under a public name: only the name may show
    node = await start_up_node(tmp_path, backend, publish=PublishConfig(keys={"sk-9f8e7d": "ops"}, grace_period=0))
    try:
        rtmp = node.rtmp.address[1]
        base = f"http://127.0.0.1:{node.edge.address[1]}"
        publisher = LivePublish(  # (ended once the subscriber is done)
            ffmpeg_publish_args(f"rtmp://127.0.0.1:{rtmp}/live/sk-9f8e7d", str(tmp_path / "ref.flv"), seconds=8))
        await node.registry.wait_for("live/ops", 10)
        async with httpx.AsyncClient(timeout=20) as client:
            assert (await client.get(f"{base}/healthz")).json() == {"status": "ok"}
            ready = await client.get(f"{base}/readyz")
            assert ready.status_code == 200 and ready.json()["ready"] is True

            async def scrape():
                r = await client.get(f"{base}/metrics")
                assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
                assert "sk-9f8e7d" not in r.text
                return samples(r.text)

            video_bytes = ("rtmpq_broadcast_received_bytes_total", (("broadcast", "live/ops"), ("track", "video")))

            async def some_video():
                reading = await scrape()
                return reading if reading.get(video_bytes, 0) > 0 else None

            first = await wait_until(some_video)
            assert first, "no video counted"
            b = (("broadcast", "live/ops"),)
            # a MoQ subscriber and a player watch
            sub = asyncio.create_task(run_process(
                [sys.executable, "-m", "rtmpq", "sub", f"moqt://127.0.0.1:{node.moq_address[1]}/live/ops",
                 "--insecure", "--quic-backend", backend, "--seconds", "5"], timeout=60))
            assert (await client.get(f"{base}/live/ops/index.m3u8")).status_code == 200
            assert (await client.get(f"{base}/live/ops/video.m3u8")).status_code == 200

            async def moved():
                later = await scrape()
                return later if later.get(("rtmpq_broadcast_groups_total", b), 0) >= 3 and \
                    later.get(("rtmpq_broadcast_subscribers", b)) == 1 else None

            later = await wait_until(moved)
            assert later, "groups did not move"
            assert later[("rtmpq_broadcast_frames_received_total", b)] > first.get(("rtmpq_broadcast_frames_received_total", b), 0)
            assert later[video_bytes] > first[video_bytes]
            assert later[("rtmpq_received_bytes_total", (("protocol", "rtmp"),))] > first[("rtmpq_received_bytes_total", (("protocol", "rtmp"),))]
            assert later[("rtmpq_sent_bytes_total", (("protocol", "http"),))] > 0
            assert later[("rtmpq_broadcast_sent_bytes_total", (("broadcast", "live/ops"), ("protocol", "hls")))] > 0
            assert 1.5 <= later[("rtmpq_broadcast_keyframe_interval_seconds", b)] <= 2.5  # ffmpeg -g 60 at 30 fps
            assert later[("rtmpq_broadcast_viewers", b)] == 1
            assert later[("rtmpq_broadcast_sent_bytes_total", (("broadcast", "live/ops"), ("protocol", "moq")))] > 0
            assert later[("rtmpq_connections", (("protocol", "moq"),))] == 1
            assert 0 < later[("rtmpq_quic_rtt_seconds", (("stat", "max"),))] < 1
            if backend == "aiopquic":  # picoquic also counts packets
                assert later[("rtmpq_quic_packets_sent", ())] > 0
            assert later[("rtmpq_broadcast_publisher_reconnects_total", b)] == 0
            assert 300_000 < later[("rtmpq_broadcast_bitrate_in_bits_per_second", b)] < 1_500_000  # 400k + 64k
            assert later[("rtmpq_connections", (("protocol", "rtmp"),))] == 1
            # the relay's caches hold the media received so far (this publish is shorter than their bounds)
            rtmp_in = later[("rtmpq_received_bytes_total", (("protocol", "rtmp"),))]
            assert 0.5 * later[video_bytes] < later[("rtmpq_group_cache_bytes", ())] <= rtmp_in
            assert ("rtmpq_event_loop_lag_seconds", (("stat", "max"),)) in later
            assert all(name.startswith("rtmpq_") for name, _ in later)

            api = (await client.get(f"{base}/api/v1/broadcasts")).json()
            assert "sk-9f8e7d" not in json.dumps(api)
            item = next(i for i in api["items"] if i["name"] == "live/ops")
            tracks = {t["name"]: t for t in item["tracks"]}
            assert tracks["video"]["codec"].startswith("avc1.") and (tracks["video"]["width"], tracks["video"]["height"]) == (320, 240)
            assert tracks["audio"]["codec"] == "mp4a.40.2" and tracks["audio"]["bitrate"] > 0
            assert item["started"].endswith("Z") and item["viewers"] == 1 and item["subscribers"] == 1
        rc, out = await sub
        assert rc == 0, out
        await publisher.finish()
    finally:
        await node.close()


async def test_readyz_follows_the_upstream_of_a_relay_an_edge_and_a_transcoder(tmp_path):
    """(A transcoder node's /readyz said ready, "listening", with no relay above it.)"""
    from rtmpq.nodes.nodes import run_edge, run_relay
    from rtmpq.nodes.transcode import run_transcode

    stop = asyncio.Event()
    relay_http, relay_moq = free_port(), free_port(2)
    relay = Config(moq=MoqConfig(host="127.0.0.1", port=relay_moq, state_dir=tmp_path / "state"),
                   http=HttpConfig(host="127.0.0.1", port=relay_http, enabled=True))
    down = Config(http=HttpConfig(host="127.0.0.1", port=free_port()),
                  upstream=UpstreamConfig(url=f"moqt://127.0.0.1:{free_port(2)}", insecure=True))
    up = Config(http=HttpConfig(host="127.0.0.1", port=free_port()),
                upstream=UpstreamConfig(url=f"moqt://127.0.0.1:{relay_moq}", insecure=True))
    transcoders = [Config(http=HttpConfig(host="127.0.0.1", port=free_port(), enabled=True), upstream=c.upstream)
                   for c in (down, up)]
    tasks = [asyncio.create_task(run_relay(relay, stop)), asyncio.create_task(run_edge(down, stop)),
             asyncio.create_task(run_edge(up, stop))] + [asyncio.create_task(run_transcode(c, stop))
                                                          for c in transcoders]
    try:
        for c in (relay, down, up, *transcoders):
            await wait_tcp(c.http.port)
        async with httpx.AsyncClient(timeout=20) as client:
            async def readyz(config):
                r = await client.get(f"http://127.0.0.1:{config.http.port}/readyz")
                return r.status_code, r.json()

            # a relay with no upstream is ready once it listens; its metrics count MoQ sessions
            assert await readyz(relay) == (200, {"ready": True, "reason": "listening"})
            metrics = samples((await client.get(f"http://127.0.0.1:{relay_http}/metrics")).text)
            assert ("rtmpq_connections", (("protocol", "moq"),)) in metrics
            assert (await client.get(f"http://127.0.0.1:{relay_http}/live/x/index.m3u8")).status_code == 404
            page = await client.get(f"http://127.0.0.1:{relay_http}/")  # a status page with no player links
            assert page.status_code == 200 and 'data-player="0"' in page.text
            # an edge whose upstream answers is ready; one whose upstream is down is not, but alive
            assert await wait_until(lambda: _is(readyz(up), 200))
            status, body = await wait_until(lambda: _reason(readyz(down), "unreachable"))
            assert status == 503 and body["ready"] is False and "unreachable" in body["reason"]
            assert (await client.get(f"http://127.0.0.1:{down.http.port}/healthz")).status_code == 200
            # the same for a transcoder node
            assert await wait_until(lambda: _is(readyz(transcoders[1]), 200))
            status, body = await wait_until(lambda: _reason(readyz(transcoders[0]), "unreachable"))
            assert status == 503 and body["ready"] is False, body
    finally:
        stop.set()
        await asyncio.gather(*tasks)


async def _is(call, status: int):
    return (await call)[0] == status


async def _reason(call, word: str):
    result = await call
    return result if word in result[1]["reason"] else None


@pytest.mark.parametrize("path", ["/metrics", "/healthz", "/api/v1/broadcasts"])
async def test_operator_routes_refuse_other_methods(tmp_path, path):
    node = await start_up_node(tmp_path)
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            r = await client.post(f"http://127.0.0.1:{node.edge.address[1]}{path}")
            assert r.status_code == 405
    finally:
        await node.close()


def test_a_rate_read_again_within_its_window_keeps_its_first_figure():
    """The status page (every 2 s) and a scrape read the same rates: the API's video bitrate and
    the bitrate gauges went missing (null) on the second reading after a broadcast appeared."""
    from rtmpq.ops.view import RATE_WINDOW, _Rate

    rate = _Rate()
    assert rate("in", 1_000_000, now=100.0, since=96.0) == 2_000_000  # the average since it started
    assert rate("in", 1_100_000, now=100.5, since=96.0) == 2_000_000  # within the window: the same
    assert rate("in", 1_000_000 + 250_000 * RATE_WINDOW, now=100.0 + RATE_WINDOW, since=96.0) == 2_000_000
    assert rate("out", 5_000, now=100.0, since=None) is None  # no start to average from: nothing yet
    assert rate("out", 6_000, now=100.5, since=None) is None
    assert rate("out", 5_000 + 1_000 * RATE_WINDOW, now=100.0 + RATE_WINDOW, since=None) == 8_000
    # read just after it started: nothing yet, and the next reading is a first one (was: nothing
    # until a whole window after that first reading)
    assert rate("new", 10_000, now=100.2, since=100.0) is None
    assert rate("new", 100_000, now=100.8, since=100.0) == pytest.approx(1_000_000)


def test_a_counter_that_starts_again_is_no_negative_rate():
    """A broadcast published again under its name between two readings (the old one ended, or
    its publisher came back) counts its bytes from 0 again: /api/v1/broadcasts said
    "bitrate": -1254 for its video (seen in the E-RTMP audit, docs/interop.md)."""
    from rtmpq.ops.view import RATE_WINDOW, _Rate

    rate = _Rate()
    assert rate("in", 4_000_000, now=100.0, since=84.0) == 2_000_000
    # published again at 110: 500 kB in its first 2 s
    assert rate("in", 500_000, now=100.0 + 2 * RATE_WINDOW + 8, since=110.0) == pytest.approx(2_000_000)
    assert rate("in", 1_000_000, now=100.0 + 3 * RATE_WINDOW + 8, since=110.0) == pytest.approx(2_000_000)


def test_the_help_of_the_error_counter_says_what_it_counts():
    """rtmpq_errors_total's HELP said "connections or requests ended by an error", but it counts
    refused publishes, stopped recordings and datagrams not sent as well (docs/operations.md)."""
    from rtmpq.ops.metrics import NodeMetrics
    from rtmpq.ops.view import NodeView

    [help_line] = [line for line in NodeMetrics(NodeView("up")).exposition().decode().splitlines()
                   if line.startswith("# HELP rtmpq_errors_total ")]
    for counted in ("refused", "publishes refused", "recordings stopped", "datagrams not sent", "docs/operations.md"):
        assert counted in help_line, help_line


def test_a_broadcast_whose_publisher_left_says_so():
    """While a broadcast waits out [publish] grace_period for its encoder, the API and the status
    page showed it as they did while the encoder sent (its stated bitrates too): an operator could
    not tell a dropped encoder from a live one."""
    from rtmpq.media.broadcast import BroadcastRegistry
    from rtmpq.ops.metrics import NodeMetrics
    from rtmpq.ops.view import NodeView

    registry = BroadcastRegistry()
    broadcast = registry.publish("live/studio")
    view = NodeView("up", registry=registry)
    metrics = NodeMetrics(view)

    def reading():
        [item] = view.api_broadcasts()["items"]
        return item["publishing"], samples(metrics.exposition().decode())[
            ("rtmpq_broadcast_publishing", (("broadcast", "live/studio"),))]

    assert reading() == (True, 1)
    broadcast.publisher_left(30.0, 0.0)
    assert reading() == (False, 0)
    registry.publish("live/studio")  # back within the grace period
    assert reading() == (True, 1)
    assert NodeView("relay").api_broadcasts() == {"items": []}



async def test_a_relay_and_an_edge_below_count_the_groups_and_frames_they_receive(tmp_path):
    """`rtmpq up` -> `rtmpq relay --upstream --http` -> `rtmpq edge --upstream`: the relay's and
    the edge's /metrics said rtmpq_broadcast_groups_total 0, and the edge's frames received and
    bitrate in 0 too, for a broadcast both were passing on (an operator reads "nothing comes").
    And the relay's API said "started": null and no bitrate on its first read of the broadcast,
    where `rtmpq up`'s gives both: now when the relay first got it, and the bitrate in since."""
    from rtmpq.nodes.nodes import run_edge, run_relay

    need("ffmpeg")
    node = await start_up_node(tmp_path)
    backend = node.moq_config.backend
    relay_moq = free_port(2)
    relay = Config(moq=MoqConfig(host="127.0.0.1", port=relay_moq, state_dir=tmp_path / "relay", backend=backend),
                   http=HttpConfig(host="127.0.0.1", port=free_port(), enabled=True),
                   upstream=UpstreamConfig(url=f"moqt://127.0.0.1:{node.moq_address[1]}", insecure=True,
                                           backend=backend))
    edge = Config(http=HttpConfig(host="127.0.0.1", port=free_port()),
                  upstream=UpstreamConfig(url=f"moqt://127.0.0.1:{relay_moq}", insecure=True, backend=backend))
    stop = asyncio.Event()
    tasks = [asyncio.create_task(run_relay(relay, stop)), asyncio.create_task(run_edge(edge, stop))]
    publisher = LivePublish(ffmpeg_publish_args(f"rtmp://127.0.0.1:{node.rtmp.address[1]}/live/tree",
                                                str(tmp_path / "ref.flv"), seconds=30))
    try:
        await wait_tcp(relay.http.port)
        await wait_tcp(edge.http.port)
        b = (("broadcast", "live/tree"),)
        async with httpx.AsyncClient(timeout=20) as client:
            async def two_groups_at_both():
                assert (await client.get(f"http://127.0.0.1:{edge.http.port}/live/tree/video.m3u8")).status_code \
                    in (200, 404, 503)  # (a player: the edge pulls the broadcast)
                readings = [samples((await client.get(f"http://127.0.0.1:{c.http.port}/metrics")).text)
                            for c in (relay, edge)]
                return readings if all(r.get(("rtmpq_broadcast_groups_total", b), 0) >= 2 for r in readings) else None

            async def two_groups_at_the_edge():  # (the relay's view not read before its API, below)
                assert (await client.get(f"http://127.0.0.1:{edge.http.port}/live/tree/video.m3u8")).status_code \
                    in (200, 404, 503)
                reading = samples((await client.get(f"http://127.0.0.1:{edge.http.port}/metrics")).text)
                return reading.get(("rtmpq_broadcast_groups_total", b), 0) >= 2

            assert await wait_until(two_groups_at_the_edge), "groups did not reach the edge"
            [listed] = (await client.get(f"http://127.0.0.1:{relay.http.port}/api/v1/broadcasts")).json()["items"]
            assert listed["name"] == "live/tree" and listed["started"] is not None, listed
            rates = {t["name"]: t["bitrate"] for t in listed["tracks"]}
            assert rates["video"] > 100_000 and rates["audio"] > 10_000, listed
            readings = await wait_until(two_groups_at_both)
            assert readings, "groups were not counted below the origin"
            for reading in readings:
                assert reading[("rtmpq_broadcast_frames_received_total", b)] > 60
                assert reading[("rtmpq_broadcast_received_bytes_total", b + (("track", "video"),))] > 0
            assert readings[1][("rtmpq_broadcast_bitrate_in_bits_per_second", b)] > 100_000  # the edge's
    finally:
        await publisher.finish()
        stop.set()
        await asyncio.gather(*tasks)
        await node.close()


async def test_a_transcoder_node_lists_the_broadcasts_it_transcodes_and_their_rungs(tmp_path):
    """`rtmpq transcode --http`: its /api/v1/broadcasts (and so its status page) said `{"items": []}`
    while it made rungs that its own /metrics listed: an operator could not see what it does. And
    the `rtmpq up` it adds them to listed only the source's tracks, though its catalog and
    multivariant playlist had the rungs (as for `up --ladder`, whose ladder child adds them so)."""
    from rtmpq.config import TranscodeConfig
    from rtmpq.nodes.transcode import run_transcode

    need("ffmpeg")
    node = await start_up_node(tmp_path)
    transcoder = Config(http=HttpConfig(host="127.0.0.1", port=free_port(), enabled=True),
                        upstream=UpstreamConfig(url=f"moqt://127.0.0.1:{node.moq_address[1]}", insecure=True,
                                                backend=node.moq_config.backend),
                        transcode=TranscodeConfig(ladder="180p"))
    stop = asyncio.Event()
    task = asyncio.create_task(run_transcode(transcoder, stop))
    publisher = LivePublish(ffmpeg_publish_args(f"rtmp://127.0.0.1:{node.rtmp.address[1]}/live/ladder",
                                                str(tmp_path / "ref.flv"), seconds=30))
    api = f"http://127.0.0.1:{transcoder.http.port}/api/v1/broadcasts"
    try:
        await wait_tcp(transcoder.http.port)
        async with httpx.AsyncClient(timeout=20) as client:
            async def rungs_listed():
                return [item for item in (await client.get(api)).json()["items"] if item["tracks"]]

            listed = await wait_until(rungs_listed, 15)
            assert listed, "the transcoder's API listed no broadcast"
            [item] = listed
            assert item["name"] == "live/ladder" and item["started"]
            assert [(t["name"], t["width"], t["height"], t["bitrate"]) for t in item["tracks"]] == \
                [("video-180p", 240, 180, 225_000)]

            async def up_lists_the_rung():  # (once the relay of `up` has the transcoder's list)
                [up] = (await client.get(f"http://127.0.0.1:{node.edge.address[1]}/api/v1/broadcasts")).json()["items"]
                return [t["name"] for t in up["tracks"]] == ["video", "video-180p", "audio"]

            assert await wait_until(up_lists_the_rung, 10), "up's API does not list the rung"
    finally:
        await publisher.finish()
        stop.set()
        await task
        await node.close()
