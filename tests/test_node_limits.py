"""The limits an operator sizes to the machine, set as a user sets them, take effect: a relay
node's (RTMPQ_MOQ_* in its environment) for its subscribers, below an `rtmpq up` whose broadcast
the test publishes in-process group by group; a node's in-process broadcasts ([publish]) and
recordings ([rtmp])."""

import asyncio
import json
import logging
import urllib.request
from contextlib import asynccontextmanager

import pytest

from rtmpq.config import HttpConfig, IngestConfig, PublishConfig
from rtmpq.media.broadcast import BroadcastRegistry
from rtmpq.media.catalog import Catalog, TrackInfo
from rtmpq.media.frames import VIDEO, Frame
from rtmpq.moq.client import SkippedGroup, fetch_track, subscribe_broadcast
from rtmpq.moq.transport import connect_moq
from rtmpq.nodes.ingest import IngestNode

from .conftest import local_config, need, relay_node, start_up_node, until
from .publishers import ffmpeg_publish_only_args, run_process

FRAMES_PER_GROUP, FRAME_BYTES = 5, 10_000  # groups of 50 kB


class Watcher:
    """A subscriber of live/c's video at the relay: every frame's group and every group skipped."""

    def __init__(self, conn) -> None:
        self.groups: list[int] = []
        self.skipped: list[int] = []
        self.task = asyncio.create_task(self._watch(conn))

    async def _watch(self, conn) -> None:
        async for item in subscribe_broadcast(conn, "live/c", tracks=[VIDEO], wait=10):
            if isinstance(item, Frame):
                self.groups.append(item.group)
            elif isinstance(item, SkippedGroup):
                self.skipped.append(item.group)

    def whole(self, group: int) -> bool:
        return self.groups.count(group) == FRAMES_PER_GROUP


@asynccontextmanager
async def origin_and_relay(tmp_path, backend: str, env: dict[str, str]):
    """Yields (push, connect, origin): ``push(frames)`` publishes the next frames at the origin (a
    group every FRAMES_PER_GROUP) and returns the last one's group; ``connect()`` opens a MoQ
    session to the relay node, started with ``env``; ``origin``: the `rtmpq up` node above it."""
    origin = await start_up_node(tmp_path / "origin", backend)
    broadcast = origin.registry.publish("live/c")
    broadcast.set_catalog(Catalog(broadcast="live/c").with_track(TrackInfo(
        name=VIDEO, kind=VIDEO, codec="avc1.64001f", init_data=b"\x01avcc", width=320, height=240)))
    sent = 0

    def push(frames: int = FRAMES_PER_GROUP) -> int:
        nonlocal sent
        for _ in range(frames):
            group, index = divmod(sent, FRAMES_PER_GROUP)
            broadcast.push(Frame(VIDEO, group, index, sent * 40, sent * 40, index == 0, bytes(FRAME_BYTES)))
            sent += 1
        return group

    try:
        async with relay_node(tmp_path / "relay", backend, {
                "RTMPQ_UPSTREAM_URL": f"moqt://127.0.0.1:{origin.moq_address[1]}", "RTMPQ_UPSTREAM_INSECURE": "true",
                **env}) as port:
            yield push, lambda: connect_moq("127.0.0.1", port, insecure=True, backend=backend, timeout=10), origin
    finally:
        await origin.close()


@pytest.mark.parametrize("backend", ["aioquic", "aiopquic"])
@pytest.mark.parametrize("setting, groups, end", [
    (("RTMPQ_MOQ_GROUP_CACHE_MAX_GROUPS", "2"), [5, 6], (7, 0)),
    (("RTMPQ_MOQ_GROUP_CACHE_MAX_BYTES", "120000"), [5, 6], (7, 0)),  # 2 groups of 50 kB fit, a third does not
    (("RTMPQ_MOQ_MAX_FETCH_BYTES", "60000"), [0, 1], (1, 1)),  # 6 objects of 10 kB; FETCH_OK says where it ends
])
async def test_a_relay_node_caches_and_fetches_as_much_of_a_track_as_its_settings_let(tmp_path, backend, setting,
                                                                                    groups, end):
    """A late FETCH at the relay node gets only the groups its cache settings keep (by default all
    7 it relayed: 8 groups, 32 MiB), at most [moq] max_fetch_bytes of them (8 MiB)."""
    async with origin_and_relay(tmp_path, backend, dict([setting])) as (push, connect, _):
        async with connect() as viewer, connect() as late:
            watcher = Watcher(viewer)
            try:
                push()
                await until(lambda: watcher.groups, 15, "the first group through the relay")
                for _ in range(6):  # each once the one before came through (none skipped as late)
                    group = push()
                    await until(lambda: watcher.whole(group), 10, f"group {group} through the relay")
                fetched = await asyncio.wait_for(fetch_track(late, "live/c", VIDEO, (0, 0), (7, 0)), 10)
            finally:
                watcher.task.cancel()
    assert sorted(set(watcher.groups)) == list(range(7))  # the relay had them all
    got = [f.group for f in fetched.frames]
    if end == (7, 0):  # the whole range the cache holds
        assert got == [groups[0]] * FRAMES_PER_GROUP + [groups[1]] * FRAMES_PER_GROUP
    else:
        assert got == [0] * FRAMES_PER_GROUP + [1] and fetched.end == end, (got, fetched.end)


@pytest.mark.parametrize("backend", ["aioquic", "aiopquic"])
async def test_a_relay_node_grants_its_moq_session_max_requests_on_its_listener_and_its_link(tmp_path, backend):
    """[moq] session_max_requests = 3 at a relay: its listener grants a subscriber, and its link
    upstream grants the origin, request ids for 3 open requests at once (MAX_REQUEST_ID 6: a
    peer's ids go by 2), not the default's 1000; 2 at an `rtmpq up`: 2."""
    async with origin_and_relay(tmp_path, backend, {"RTMPQ_MOQ_SESSION_MAX_REQUESTS": "3"}) as (_, connect, origin):
        async with connect() as conn:
            assert conn.session._peer_max_request_id == 6
        await until(lambda: any(c.session.setup_done for c in origin.moq.connections), 10, "the relay's link up")
        assert [c.session._peer_max_request_id for c in origin.moq.connections] == [6]
    up = local_config(tmp_path / "up", backend)
    up.moq.session_max_requests = 2
    node = await start_up_node(tmp_path / "up", backend, moq=up.moq)  # `rtmpq up`'s listener
    try:
        async with connect_moq("127.0.0.1", node.moq_address[1], insecure=True, backend=backend, timeout=10) as conn:
            assert conn.session._peer_max_request_id == 4
    finally:
        await node.close()


@pytest.mark.parametrize("backend", ["aioquic", "aiopquic"])
@pytest.mark.parametrize("setting", [None, ("RTMPQ_MOQ_DELIVERY_TIMEOUT", "0.2"), ("RTMPQ_MOQ_SEND_BUDGET", "30000")])
async def test_a_relay_node_delivers_a_cached_group_within_its_delivery_timeout_and_send_budget(
        tmp_path, backend, setting):
    """A subscriber that comes 0.3 s after group 0 (50 kB) began gets it from the relay's cache
    with the defaults (2 s, 4 MiB); with a 0.2 s delivery timeout it starts at the next group, and
    past a 30 kB send budget the group is dropped for it (skipped, said so)."""
    async with origin_and_relay(tmp_path, backend, dict([setting] if setting else [])) as (push, connect, _):
        async with connect() as first, connect() as second:
            early = Watcher(first)
            late = None
            try:
                loop = asyncio.get_running_loop()
                paced = setting is not None and setting[0] == "RTMPQ_MOQ_SEND_BUDGET"
                for frame in range(FRAMES_PER_GROUP if paced else 1):
                    # within the budget live: one frame at a time, 0.2 s apart (without the pause,
                    # aiopquic's frames not counted acknowledged yet added up past it)
                    push(1 if paced else FRAMES_PER_GROUP)
                    await until(lambda: len(early.groups) > frame, 15, f"frame {frame} through the relay")
                    sent = loop.time()
                    await until(lambda: not paced or loop.time() - sent > 0.2, 1, "a pause")
                await until(lambda: early.whole(0), 5, "group 0 through the relay")
                began = loop.time()
                await until(lambda: loop.time() - began > 0.3, 1, "group 0 at the relay 0.3 s old")
                late = Watcher(second)
                # group 0 whole or skipped, said to the late subscriber before group 1 begins (else,
                # its SUBSCRIBE slow to reach the relay on a loaded machine, it starts at group 1);
                # past the delivery timeout nothing of group 0 comes: 0.8 s is waited for then
                expired = setting is not None and setting[0] == "RTMPQ_MOQ_DELIVERY_TIMEOUT"
                await until(lambda: late.groups or late.skipped or (expired and loop.time() - began > 0.8), 10,
                            "group 0, or the delivery timeout past")
                push()
                await until(lambda: late.whole(1) or 1 in late.skipped, 10, "group 1 to the late subscriber")
            finally:
                for watcher in (early, late):
                    if watcher is not None:
                        watcher.task.cancel()
    if setting is None:
        assert late.whole(0) and late.whole(1) and not late.skipped, (late.groups, late.skipped)
    elif setting[0] == "RTMPQ_MOQ_DELIVERY_TIMEOUT":
        assert 0 not in late.groups and late.whole(1), (late.groups, late.skipped)
    else:
        # dropped and said so; its objects may all have reached the subscriber before the reset (the
        # budget counts bytes not yet acknowledged), but the group's end never does
        assert 0 in late.skipped, (late.groups, late.skipped)


async def test_an_up_node_bounds_its_broadcasts_group_kept_and_readers_queue_by_its_publish_settings(tmp_path):
    """[publish] max_group_bytes: a new in-process reader (the edge of `rtmpq up`, a transcoder)
    starts with at most that much of the group in progress; reader_max_buffered_bytes: a reader
    that far behind skips its old groups (defaults 24 MiB, 32 MiB)."""
    node = await start_up_node(tmp_path, publish=PublishConfig(grace_period=0, max_group_bytes=25_000,
                                                               reader_max_buffered_bytes=30_000))
    try:
        broadcast = node.registry.publish("live/b")
        behind = broadcast.reader()  # (read from only at the end)
        for index in range(FRAMES_PER_GROUP):
            broadcast.push(Frame(VIDEO, 0, index, index * 40, index * 40, index == 0, bytes(FRAME_BYTES)))
        late = broadcast.reader()
        broadcast.push(Frame(VIDEO, 1, 0, 200, 200, True, bytes(FRAME_BYTES)))
        broadcast.end()
        kept = [(f.group, f.index) async for f in late if isinstance(f, Frame)]
        read = [(f.group, f.index) async for f in behind if isinstance(f, Frame)]
    finally:
        await node.close()
    assert kept == [(0, 0), (0, 1), (1, 0)]  # 2 frames of 10 kB fit in 25 kB
    assert read == [(1, 0)] and behind.skipped_groups == {(VIDEO, 0)}


async def test_an_ingest_stops_a_recording_past_its_record_max_queued_bytes_and_the_stream_goes_on(tmp_path, caplog):
    """[rtmp] record_max_queued_bytes (32 MiB): set below one keyframe, the recording stops at the
    first one (an error that names the setting, counted as record_stopped: it was a log line alone,
    nothing to alert on, as for a full disk) and the publish goes on."""
    need("ffmpeg")
    caplog.set_level(logging.ERROR, "rtmpq")
    registry = BroadcastRegistry()
    ingest = IngestNode(registry, IngestConfig(host="127.0.0.1", port=0, record_dir=tmp_path / "rec",
                                               record_max_queued_bytes=2000), PublishConfig(grace_period=0))
    await ingest.start()
    try:
        rc, output = await run_process(ffmpeg_publish_only_args(f"rtmp://127.0.0.1:{ingest.address[1]}/live/rec", 1))
        await until(lambda: ingest.server.errors["record_stopped"], 5, "the stopped recording counted")
        assert ingest.server.errors["record_stopped"] == 1
    finally:
        await ingest.close()
    assert rc == 0, output
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "stopped" in errors[0] and "[rtmp] record_max_queued_bytes 2000" in errors[0], errors


async def test_a_node_knows_at_most_its_directory_max_entries_broadcasts(redis_server, caplog):
    """[directory] max_entries (100 000): a node following the directory keeps that many entries,
    the rest are ignored, said once in its log (not at each snapshot that ignores them again)."""
    from rtmpq.config import load_config
    from rtmpq.directory.redis_directory import RedisDirectory
    from rtmpq.nodes.directory import open_directory

    origin = RedisDirectory(redis_server.url, node="origin", ttl=5)
    await origin.start()
    follower = None
    try:
        origin.register(lambda: {"live/a", "live/b", "live/c"}, "moqt://127.0.0.1:4443")
        # a 1 s lease: it reads the whole directory again every 0.33 s
        follower = await open_directory(load_config(env={"RTMPQ_DIRECTORY_URL": redis_server.url,
                                                         "RTMPQ_DIRECTORY_MAX_ENTRIES": "2",
                                                         "RTMPQ_DIRECTORY_TTL": "1"}))
        follower.follow()
        await until(lambda: follower.mirror.dropped >= 3, 10, "an entry past the bound, ignored at 3 snapshots")
        assert len(follower.mirror.entries) == 2
        told = [r.getMessage() for r in caplog.records if "max_entries" in r.getMessage()]
        assert len(told) == 1 and "max_entries (2) broadcasts; more are ignored" in told[0], told
    finally:
        for directory in (follower, origin):
            if directory is not None:
                await directory.close()


async def test_an_up_node_counts_at_most_its_http_max_viewers_tracked_players(tmp_path):
    """[http] max_viewers_tracked (16384): the edge counts that many players of a broadcast (by
    address and user agent); more are served, not counted."""
    need("ffmpeg")
    node = await start_up_node(tmp_path, http=HttpConfig(host="127.0.0.1", port=0, max_viewers_tracked=1))
    publisher = asyncio.create_task(run_process(
        ffmpeg_publish_only_args(f"rtmp://127.0.0.1:{node.rtmp.address[1]}/live/v", 3)))

    def get(path: str, agent: str = "test") -> tuple[int, bytes]:
        request = urllib.request.Request(f"http://{host}:{port}{path}", headers={"User-Agent": agent})
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()

    try:
        await node.registry.wait_for("live/v", 10)
        host, port = node.edge.address
        for agent in ("player 1", "player 2"):
            assert (await asyncio.to_thread(get, "/live/v/index.m3u8", agent))[0] == 200
        _, listing = await asyncio.to_thread(get, "/api/v1/broadcasts")
    finally:
        await node.close()
        await publisher
    [item] = [i for i in json.loads(listing)["items"] if i["name"] == "live/v"]
    assert item["viewers"] == 1


async def _up_with_open_files(tmp_path, soft: int, hard: int):
    """`rtmpq up` as a process started with the open-file limit (soft, hard); its stderr lines are
    gathered in the returned list as they come."""
    import resource
    import socket
    import sys

    from .conftest import free_port, wait_tcp

    phttp = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rtmpq", "up", "--rtmp", f"127.0.0.1:{free_port()}", "--http", f"127.0.0.1:{phttp}",
        "--moq", f"127.0.0.1:{free_port(socket.SOCK_DGRAM)}", "--state-dir", str(tmp_path / "s"),
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    lines: list[str] = []

    async def gather() -> None:
        async for line in proc.stderr:
            lines.append(line.decode(errors="replace"))

    reader = asyncio.create_task(gather())
    await wait_tcp(phttp)
    return proc, phttp, lines, reader


async def _stopped(proc, reader) -> None:
    proc.terminate()
    await proc.wait()
    await reader


async def test_a_node_raises_its_open_file_limit_to_what_its_connection_limits_hold(tmp_path):
    # Debian shells and systemd services start at 1024: the default limits (512 RTMP + 1024 HTTP
    # connections) hit EMFILE before max_connections
    from rtmpq.config import load_config
    from rtmpq.nodes.runtime import open_files_needed

    needed = open_files_needed(load_config(env={}))
    proc, _, lines, reader = await _up_with_open_files(tmp_path, 80, needed + 100)
    try:
        limits = open(f"/proc/{proc.pid}/limits").read()
        soft = next(line.split()[3] for line in limits.splitlines() if line.startswith("Max open files"))
        assert int(soft) == needed, limits
    finally:
        await _stopped(proc, reader)
    assert any(f"open-file limit raised from 80 to {needed}" in line for line in lines), lines


async def test_at_the_open_file_limit_a_listener_says_so_once_and_serves_again_once_connections_close(tmp_path):
    import socket

    from .conftest import http_get

    proc, phttp, lines, reader = await _up_with_open_files(tmp_path, 80, 80)  # the hard limit: not raised
    held = []
    try:
        await until(lambda: any("the open-file limit is 80" in line for line in lines), 10, "the limit said at start")
        for _ in range(120):  # more than 80 descriptors: accept fails with EMFILE
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", phttp))
            held.append(s)
        await until(lambda: any("cannot accept connections" in line for line in lines), 10, "the listener to say it")
        for s in held:
            s.close()
        held.clear()
        status, _ = await http_get(f"http://127.0.0.1:{phttp}/healthz", deadline=10)
        assert status == 200  # served again once the connections closed
    finally:
        for s in held:
            s.close()
        await _stopped(proc, reader)
    log = "".join(lines)
    assert "Traceback" not in log, log  # asyncio logged a traceback per failed accept: thousands a second
    assert log.count("cannot accept connections") == 1, log
