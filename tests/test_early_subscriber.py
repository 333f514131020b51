"""A relay started with an upstream (`rtmpq relay --upstream`) serves a subscriber that reaches it
before its session to the upstream is up: a relay that restarts has its viewers (edges, `rtmpq
sub`, players behind an edge) reconnect at once, and their SUBSCRIBEs often come first."""

import asyncio
import socket

import pytest

from rtmpq.moq import events as ev
from rtmpq.moq.transport import connect_moq
from rtmpq.nodes.remote import UpstreamLink

from .conftest import EventRecorder, free_port, relay_node, serving_relay, start_up_node, until
from .publishers import ffmpeg_publish_only_args, run_process


@pytest.mark.parametrize("backend", ["aioquic", "aiopquic"])
async def test_a_subscriber_that_comes_before_the_upstream_link_gets_the_track_once_it_is_up(tmp_path, backend):
    node = await start_up_node(tmp_path / "a", backend)
    publisher = asyncio.create_task(run_process(
        ffmpeg_publish_only_args(f"rtmp://127.0.0.1:{node.rtmp.address[1]}/live/early", 8), 40))
    early: list[bool] = []  # for each SUBSCRIBE the relay got: whether its link upstream was not up yet

    def seen(event):
        if isinstance(event, ev.SubscribeRequested):
            early.append(not link.connected.is_set())

    try:
        await node.registry.wait_for("live/early", 15)
        async with serving_relay(tmp_path, backend, seen=seen) as (relay, port):
            link = UpstreamLink(relay, f"moqt://127.0.0.1:{node.moq_address[1]}", insecure=True, backend=backend)
            try:
                async with connect_moq("127.0.0.1", port, insecure=True, backend=backend, timeout=10) as conn:
                    recorder = EventRecorder(conn)
                    conn.session.subscribe(("live", "early"), "video")
                    conn.flush()
                    # the link starts as the SUBSCRIBE is on its way: its handshake and setup upstream
                    # take round trips, so the SUBSCRIBE comes first (as when a restarted relay's
                    # viewers are back before its own session to the upstream is up)
                    link.start()
                    await until(lambda: early, 10, "the SUBSCRIBE at the relay")
                    assert early == [True], "the link was up before the SUBSCRIBE came"
                    await until(lambda: any(isinstance(e, (ev.ObjectReceived, ev.RequestFailed)) for e in recorder.events),
                                5, "video objects through the relay")
                    assert any(isinstance(e, ev.ObjectReceived) for e in recorder.events), recorder.events[:3]
            finally:
                await link.close()
    finally:
        await node.close()
        await publisher  # (ffmpeg ends with its publish, or as the node closes)


@pytest.mark.parametrize("backend", ["aioquic", "aiopquic"])
async def test_a_subscriber_waiting_for_an_upstream_that_never_comes_is_refused_after_the_wait(tmp_path, backend):
    """Held, not forever: with no session upstream within [moq] upstream_wait (1 s here; 12 by
    default) the SUBSCRIBE is refused as before ("no such broadcast"), so a viewer is not left with
    a subscription that never serves; and at most [moq] max_waiting_subscribes (1 here) wait: the
    next is refused at once. A relay node set from the environment, as a user sets it."""
    loop = asyncio.get_running_loop()
    # nothing listens upstream: the link keeps trying
    async with relay_node(tmp_path, backend, {"RTMPQ_UPSTREAM_URL": f"moqt://127.0.0.1:{free_port(socket.SOCK_DGRAM)}",
                                              "RTMPQ_UPSTREAM_INSECURE": "true", "RTMPQ_MOQ_UPSTREAM_WAIT": "1",
                                              "RTMPQ_MOQ_MAX_WAITING_SUBSCRIBES": "1"}) as port:
        async with connect_moq("127.0.0.1", port, insecure=True, backend=backend, timeout=10) as conn:
            recorder = EventRecorder(conn)
            asked = loop.time()
            held = conn.session.subscribe(("live", "nowhere"), "video")
            over = conn.session.subscribe(("live", "nowhere"), "audio")  # one more than may wait
            conn.flush()
            await until(lambda: len(recorder.events) == 2, 10, "answers to both SUBSCRIBEs")
            waited = loop.time() - asked
            assert [(type(e), e.request_id) for e in recorder.events] == [(ev.RequestFailed, over),
                                                                          (ev.RequestFailed, held)], recorder.events
            assert all(e.reason == "no such broadcast" for e in recorder.events)
            assert 0.9 <= waited < 4, waited


@pytest.mark.parametrize("backend", ["aioquic", "aiopquic"])
async def test_a_subscriber_that_comes_before_the_session_to_the_origin_the_directory_lists_gets_the_track(
        tmp_path, backend, redis_server):
    """The same for a relay that finds origins through the directory (many hosts): the directory
    lists the broadcast, the relay's session to its origin is not up yet (the relay just
    restarted). A broadcast the directory does not list is still refused at once."""
    from rtmpq.directory.redis_directory import RedisDirectory
    from rtmpq.moq import relay as relay_module
    from rtmpq.nodes.directory import publishing
    from rtmpq.nodes.remote import OriginLinks

    node = await start_up_node(tmp_path / "a", backend)
    registration = RedisDirectory(redis_server.url, node="origin", ttl=5)  # as `rtmpq up --directory` does
    await registration.start()
    registration.register(publishing(node.registry), f"moqt://127.0.0.1:{node.moq_address[1]}", node.fingerprint)
    publisher = asyncio.create_task(run_process(
        ffmpeg_publish_only_args(f"rtmp://127.0.0.1:{node.rtmp.address[1]}/live/early", 8), 40))
    directory = RedisDirectory(redis_server.url, node="relay", ttl=5)
    early: list[bool] = []  # for each SUBSCRIBE to live/early: whether the session to the origin was not up yet
    loop = asyncio.get_running_loop()

    def seen(event):
        if isinstance(event, ev.SubscribeRequested) and event.namespace == ("live", "early"):
            early.append(not any(link.connected.is_set() for link in origins.links.values()))

    try:
        await node.registry.wait_for("live/early", 15)
        await directory.start()
        directory.follow()
        await until(lambda: directory.lookup("live/early"), 10, "live/early in the directory")
        async with serving_relay(tmp_path, backend, seen=seen) as (relay, port):
            origins = OriginLinks(relay, directory, insecure=True, backend=backend)
            try:
                async with connect_moq("127.0.0.1", port, insecure=True, backend=backend, timeout=10) as conn:
                    recorder = EventRecorder(conn)
                    conn.session.subscribe(("live", "early"), "video")
                    conn.flush()
                    origins.start()  # its session to the origin takes round trips: the SUBSCRIBE comes first
                    await until(lambda: early, 10, "the SUBSCRIBE at the relay")
                    assert early == [True], "the session to the origin was up before the SUBSCRIBE came"
                    await until(lambda: any(isinstance(e, (ev.ObjectReceived, ev.RequestFailed)) for e in recorder.events),
                                5, "video objects through the relay")
                    assert any(isinstance(e, ev.ObjectReceived) for e in recorder.events), recorder.events[:3]

                    asked = loop.time()
                    unlisted = conn.session.subscribe(("live", "unlisted"), "video")
                    conn.flush()
                    await until(lambda: any(isinstance(e, ev.RequestFailed) and e.request_id == unlisted
                                            for e in recorder.events), 10, "an answer for live/unlisted")
                    assert loop.time() - asked < relay_module.UPSTREAM_WAIT / 4, "a broadcast not listed waited"
            finally:
                await origins.close()
    finally:
        await directory.close()
        await registration.close()
        await node.close()
        await publisher


async def test_a_name_unknown_upstream_is_said_once_however_often_a_subscriber_below_asks(tmp_path, caplog):
    """A viewer waiting at relay B for a name not live at A asks again every second; B logged
    "live/none/catalog: subscribing upstream" at INFO each time (31 lines per relay of a chain for
    one HLS player's 30 s wait). Now once; the other tries are at DEBUG."""
    import logging

    from rtmpq.moq.client import SubscribeError, subscribe_broadcast
    from rtmpq.redact import safe_name

    from .conftest import relay_below

    caplog.set_level(logging.DEBUG, logger="rtmpq.moq")
    async with serving_relay(tmp_path) as (_relay_a, port_a), relay_below(tmp_path, "aioquic", port_a) as port_b:
        async with connect_moq("127.0.0.1", port_b, insecure=True, backend="aioquic") as conn:
            try:
                async for _ in subscribe_broadcast(conn, "live/none", wait=2.5):
                    pass
            except SubscribeError:
                pass
    said = f"{safe_name('live/none')}/catalog: subscribing upstream"  # (hashed: an open relay)
    tries = [r for r in caplog.records if said in r.getMessage()]
    assert len(tries) >= 2, [r.getMessage() for r in tries]  # it asked again
    assert [r.levelno for r in tries].count(logging.INFO) == 1, [(r.levelname, r.getMessage()) for r in tries]
