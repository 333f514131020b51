"""The relay's limits an operator sizes to the machine, set in the environment of a relay node
(RTMPQ_MOQ_* as a user sets them), take effect for its subscribers: a relay node below an `rtmpq
up` whose broadcast the test publishes in-process, group by group."""

import asyncio
from contextlib import asynccontextmanager

import pytest

from rtmpq.media.catalog import Catalog, TrackInfo
from rtmpq.media.frames import VIDEO, Frame
from rtmpq.moq.client import SkippedGroup, fetch_track, subscribe_broadcast
from rtmpq.moq.transport import connect_moq

from .conftest import relay_node, start_up_node, until

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
    """Yields (push, connect): ``push(frames)`` publishes the next frames at the origin (a group
    every FRAMES_PER_GROUP) and returns the last one's group; ``connect()`` opens a MoQ session to
    the relay node, started with ``env``."""
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
            yield push, lambda: connect_moq("127.0.0.1", port, insecure=True, backend=backend, timeout=10)
    finally:
        await origin.close()


@pytest.mark.parametrize("backend", ["aioquic", "aiopquic"])
@pytest.mark.parametrize("setting", [("RTMPQ_MOQ_GROUP_CACHE_MAX_GROUPS", "2"),
                                     # 2 groups of 50 kB fit, a third does not
                                     ("RTMPQ_MOQ_GROUP_CACHE_MAX_BYTES", "120000")])
async def test_a_relay_node_caches_as_many_groups_of_a_track_as_its_settings_let(tmp_path, backend, setting):
    """A late FETCH at the relay node gets only the groups its cache settings keep (by default all
    7 it relayed: 8 groups, 32 MB)."""
    async with origin_and_relay(tmp_path, backend, dict([setting])) as (push, connect):
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
    assert [f.group for f in fetched.frames] == [5] * FRAMES_PER_GROUP + [6] * FRAMES_PER_GROUP


@pytest.mark.parametrize("backend", ["aioquic", "aiopquic"])
@pytest.mark.parametrize("setting", [None, ("RTMPQ_MOQ_DELIVERY_TIMEOUT", "0.2"), ("RTMPQ_MOQ_SEND_BUDGET", "30000")])
async def test_a_relay_node_delivers_a_cached_group_within_its_delivery_timeout_and_send_budget(
        tmp_path, backend, setting):
    """A subscriber that comes 0.3 s after group 0 (50 kB) began gets it from the relay's cache
    with the defaults (2 s, 4 MiB); with a 0.2 s delivery timeout it starts at the next group, and
    past a 30 kB send budget the group is dropped for it (skipped, said so)."""
    async with origin_and_relay(tmp_path, backend, dict([setting] if setting else [])) as (push, connect):
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
                await until(lambda: late.groups or late.skipped or loop.time() - began > 0.8, 5,
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
        assert not late.whole(0) and 0 in late.skipped, (late.groups, late.skipped)
