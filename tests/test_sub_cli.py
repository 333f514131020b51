"""`rtmpq sub` as a viewer runs it: what it says while it waits, and when it stops waiting.

A real `rtmpq up` in this process (an ffmpeg publish where a live broadcast is needed) and
`rtmpq sub` as a process, as a user starts it."""

import asyncio
import sys
from contextlib import asynccontextmanager

from .conftest import need, start_up_node
from .publishers import drop_publish, ffmpeg_publish_only_args, run_process, run_process_apart


def sub_args(node, name: str, *more: str) -> list[str]:
    host, port = node.moq_address
    return [sys.executable, "-m", "rtmpq", "sub", f"moqt://{host}:{port}/{name}", "--insecure",
            "--quic-backend", node.moq_config.backend, *more]


@asynccontextmanager
async def live_cam(tmp_path):
    """`rtmpq up` with ffmpeg publishing live/cam (video alone) for longer than a test needs."""
    need("ffmpeg")
    node = await start_up_node(tmp_path)
    publish = None
    try:
        publish = asyncio.create_task(run_process(ffmpeg_publish_only_args(
            f"rtmp://127.0.0.1:{node.rtmp.address[1]}/live/cam", seconds=30), timeout=60))
        await node.registry.wait_for("live/cam", 10)
        yield node
    finally:
        if publish is not None:
            await drop_publish(publish)
        await node.close()


async def test_sub_names_the_broadcast_as_it_was_typed(tmp_path):
    """On an open node a node's log hides a stream name (the key) behind a hash; the subscriber's
    own log did too: "live/#1a2b3c4d is not live yet" for the live/soon its user had typed."""
    node = await start_up_node(tmp_path)
    try:
        rc, out, err = await run_process_apart(sub_args(node, "live/soon", "--wait", "0.5"), timeout=30)
    finally:
        await node.close()
    assert rc == 1, (out, err)
    assert "live/soon is not live yet" in err and "#" not in err, err


async def test_sub_with_a_track_the_broadcast_lacks_gives_up_after_its_wait(tmp_path):
    """`--track vdeo` (a typo) on a live broadcast: the subscriber warned once, then waited with
    no end, --wait 2 or not. Now it waits --wait for a catalog that lists the track, then says
    which tracks there are and exits 1."""
    async with live_cam(tmp_path) as node:
        rc, out, err = await run_process_apart(sub_args(node, "live/cam", "--track", "vdeo", "--wait", "2"),
                                               timeout=20)
    assert rc == 1, (out, err)
    assert "live/cam has no track vdeo (its catalog lists video; waited 2 s, --wait)" in err, err


async def test_sub_says_when_the_rendition_it_was_asked_for_is_not_there(tmp_path):
    """`--rendition 360p` of a broadcast with no such rung took the source's rendition without a
    word: the viewer believed it was watching 360p. It still plays the source, and says so."""
    async with live_cam(tmp_path) as node:
        rc, out, err = await run_process_apart(sub_args(node, "live/cam", "--rendition", "360p", "--seconds", "4"),
                                               timeout=20)
    assert rc == 0, (out, err)
    assert "live/cam has no rendition 360p (its tracks: video): taking the source's rendition" in err, err


async def test_sub_whose_server_goes_away_for_good_exits_non_zero(tmp_path):
    """The node a subscriber reads from stops and does not come back within --wait: `rtmpq sub`
    said so and exited 0, as at a broadcast's end, since objects had come; a script could not tell."""
    proc = None
    try:
        async with live_cam(tmp_path) as node:
            proc = await asyncio.create_subprocess_exec(*sub_args(node, "live/cam", "--json", "--wait", "1"),
                                                        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            while b'"track"' not in await asyncio.wait_for(proc.stdout.readline(), 20):  # objects come
                pass
        # the node is stopped, for good
        _, err = await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode == 1, err.decode()
        assert "lost and not back within 1 s" in err.decode(), err.decode()
    finally:
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()
