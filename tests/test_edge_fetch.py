"""Instant start on a separate edge: `rtmpq edge --upstream moqt://...` fills a first viewer's
playlist window with a joining FETCH from the relay above (here the in-process relay of `rtmpq up`,
which caches every local broadcast's groups), on either QUIC backend, with node and playback tokens."""

import asyncio
import logging
import time

import pytest

from rtmpq.auth.tokens import mint_token
from rtmpq.config import AuthConfig, Config, HttpConfig, UpstreamConfig
from rtmpq.moq import relay as relay_module
from rtmpq.moq.wire import RequestError
from rtmpq.edge.llhls import sequence_base
from rtmpq.nodes.nodes import run_edge

from .conftest import free_port, need, start_up_node, wait_tcp
from .publishers import ffmpeg_publish_args, run_process
from .test_edge import assert_reads_every_frame, http_get, inside_group, media_sequence

SECRET = "edge-fetch-test-secret-0123456789abcdef"


async def origin_and_edge(tmp_path, backend: str, stop: asyncio.Event, **upstream):
    """`rtmpq up` (the origin, tokens required) and a separate `rtmpq edge --upstream` below it."""
    auth = AuthConfig(secret=SECRET, require_playback_token=True)
    origin = await start_up_node(tmp_path, backend, auth=auth)
    port = free_port()
    edge = Config(http=HttpConfig(host="127.0.0.1", port=port), auth=AuthConfig(secret=SECRET, require_playback_token=True),
                  upstream=UpstreamConfig(url="moqt://127.0.0.1:{}".format(origin.moq_address[1]), insecure=True,
                                          backend=backend, **upstream))
    task = asyncio.create_task(run_edge(edge, stop))
    await wait_tcp(port)
    return origin, port, task


async def publish_late_viewer(tmp_path, origin, edge_port: int, name: str):
    """Publish 9 s (2 s GoPs); a first viewer asks the edge for the video playlist ~5 s in.
    Returns (first answer, reference file, publisher task, playback token)."""
    now = time.time()
    ref = str(tmp_path / f"{name}.flv")
    publish = mint_token(SECRET, f"live/{name}", "publish", 120, now=now)
    viewer = mint_token(SECRET, f"live/{name}", "subscribe", 120, now=now)
    publisher = asyncio.create_task(run_process(
        ffmpeg_publish_args(f"rtmp://127.0.0.1:{origin.rtmp.address[1]}/live/{name}?token={publish}", ref, seconds=9)))
    broadcast = await origin.registry.wait_for(f"live/{name}", 10)
    await inside_group(broadcast, 2)  # group 2 begins at 4 s: arrive inside it, ~5 s in
    status, _, body = await http_get(f"http://127.0.0.1:{edge_port}/live/{name}/video.m3u8?token={viewer}")
    assert status == 200, body
    return body.decode(), ref, publisher, viewer


@pytest.mark.parametrize("backend", ["aioquic", "aiopquic"])
async def test_a_viewer_arriving_5s_in_at_a_separate_edge_gets_whole_segments_and_every_frame(tmp_path, backend):
    need("ffmpeg")
    stop = asyncio.Event()
    origin, port, task = await origin_and_edge(tmp_path, backend, stop)
    try:
        opened = sequence_base(time.time())
        first, ref, publisher, viewer = await publish_late_viewer(tmp_path, origin, port, "late")
        assert first.count("#EXTINF") >= 2, first  # groups 0 and 1, whole, in the very first answer
        # numbered from the broadcast's start on this edge: the window begins at its first group
        assert opened <= media_sequence(first) <= sequence_base(time.time()), first
        # a player that starts at the oldest listed segment and reads to the end gets every frame
        await assert_reads_every_frame(f"http://127.0.0.1:{port}/live/late/index.m3u8?token={viewer}", publisher, ref)
    finally:
        stop.set()
        await task
        await origin.close()


@pytest.mark.parametrize("relay", ["refuses", "never-answers"])
async def test_a_relay_that_refuses_the_fetch_means_starting_at_the_live_edge(tmp_path, monkeypatch, caplog, relay):
    """A relay that answers FETCH with an error (NOT_SUPPORTED for every FETCH) or not at all:
    the edge starts with the group in progress, as without the fill, and says so once."""
    need("ffmpeg")

    def refuse(self, conn, event):
        if relay == "refuses":
            conn.session.request_error(event.request_id, RequestError.NOT_SUPPORTED, "no fetch here")

    monkeypatch.setattr(relay_module.MoqRelay, "_on_FetchRequested", refuse)
    caplog.set_level(logging.INFO, logger="rtmpq")
    stop = asyncio.Event()
    origin, port, task = await origin_and_edge(tmp_path, "aiopquic", stop)
    try:
        first, ref, publisher, viewer = await publish_late_viewer(tmp_path, origin, port, "nofetch")
        # no past segment: the first answer waits for the group in progress to be whole, and lists it alone
        assert first.count("#EXTINF") == 1, first
        rc, output = await publisher
        assert rc == 0, output
        status, _, body = await http_get(f"http://127.0.0.1:{port}/live/nofetch/video.m3u8?token={viewer}")
        refusals = [r for r in caplog.records if r.levelno >= logging.WARNING and "FETCH" in r.getMessage()]
        assert len(refusals) == 1, [r.getMessage() for r in refusals]
        assert viewer not in refusals[0].getMessage()
    finally:
        stop.set()
        await task
        await origin.close()
