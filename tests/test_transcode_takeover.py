"""Two transcoders for one broadcast: `rtmpq transcode` run against `rtmpq up --ladder`.

With `up`'s ladder in a child process (isolate, the default) both are transcoder nodes PUBLISHing
rungs into `up`'s relay: the newer takes the rungs over (as a restarted transcoder must, whose old
session the relay cannot yet know is dead), and the older one logs that and stops making them
until the broadcast is left with none. With `up`'s ladder on its own threads, the relay refuses
the other transcoder's rungs, and that one logs the refusal and stops. Before, the second one's
list silently replaced the first's in the catalog while the first went on encoding."""

import asyncio
import contextlib
import logging

from rtmpq.config import TranscodeConfig
from rtmpq.moq.transport import connect_moq
from rtmpq.nodes.transcode import transcode_over_moq
from rtmpq.transcode.ladder import parse_ladder

from .conftest import need, start_up_node, until
from .publishers import drop_publish, run_process
from .test_transcode_e2e import ffmpeg_live_args

GAVE_WAY = "this transcoder stops making the broadcast's rungs"


def publish_args(node, name: str) -> list[str]:
    """A live ffmpeg publish of 640x360 video (1 s GoPs) and audio, for 30 s."""
    args = ffmpeg_live_args(f"rtmp://127.0.0.1:{node.rtmp.address[1]}/{name}", 30)
    return [a.replace("size=320x240", "size=640x360") for a in args]


def rungs(node, name: str) -> set[str]:
    """The rungs the broadcast's catalog lists (made here, or added by a transcoder node)."""
    catalog = node.registry.get(name).catalog
    return {t.name for t in (*catalog.tracks, *node.moq.added_tracks(name)) if t.source is not None}


@contextlib.asynccontextmanager
async def up_and_another_transcoder(tmp_path, name: str, isolate: bool):
    """`up --ladder 180p` (``isolate``) with a live 640x360 publish of ``name`` whose rung video-180p
    is listed; yields (node, other): ``other()`` starts another transcoder of ``name`` with 240p
    (`rtmpq transcode --upstream <up> --broadcast NAME --ladder 240p`'s work, in this process) and
    returns its task."""
    need("ffmpeg")
    node = await start_up_node(tmp_path, "aioquic", grace_period=10.0,
                               transcode=TranscodeConfig(ladder="180p", isolate=isolate))
    publisher = asyncio.create_task(run_process(publish_args(node, name), 60))
    tasks = []

    async def run():
        host, port = node.moq_address
        async with connect_moq(host, port, insecure=True, backend=node.moq_config.backend) as conn:
            await transcode_over_moq(conn, name, parse_ladder("240p"), TranscodeConfig(), None, {})

    def other() -> asyncio.Task:
        tasks.append(asyncio.create_task(run()))
        return tasks[-1]
    try:
        await until(lambda: node.registry.get(name) and rungs(node, name) == {"video-180p"}, 20, "up's own rung")
        yield node, other
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await drop_publish(publisher)
        await node.close()


async def test_a_second_transcoder_takes_the_rungs_over_and_the_first_says_so_and_gives_way(tmp_path, caplog, capfd):
    """`up --ladder 180p` (its child makes video-180p) and then another transcoder of the same
    broadcast with 240p: the newer one's rungs are the broadcast's (video-240p, not video-180p),
    the relay logs the takeover naming both peers, and `up`'s child logs that it gives way. Once
    the other transcoder is gone, the child makes its rungs again."""
    caplog.set_level(logging.INFO)
    name = "live/two"
    async with up_and_another_transcoder(tmp_path, name, isolate=True) as (node, other):
        task = other()
        await until(lambda: rungs(node, name) == {"video-240p"}, 20, "the other transcoder's rung alone")
        child_log = []  # (the child's lines go to up's stderr)
        await until(lambda: child_log.append(capfd.readouterr().err) or GAVE_WAY in "".join(child_log), 10,
                    "the child saying it gives way")
        assert any("taken over by" in r.getMessage() and "rtmpq.renditions" in r.getMessage()
                   for r in caplog.records), [r.getMessage() for r in caplog.records]
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await until(lambda: rungs(node, name) == {"video-180p"}, 20, "the child's rung again")


async def test_a_transcoder_offering_the_rungs_up_makes_on_its_threads_is_refused_and_says_so(tmp_path, caplog):
    """`up --ladder 180p` with isolate = false and another transcoder (240p) of the same
    broadcast: the relay refuses its rungs (logged, naming the peer), the other transcoder logs the
    refusal and stops, and the broadcast's rungs stay up's own."""
    caplog.set_level(logging.INFO)
    name = "live/own"
    async with up_and_another_transcoder(tmp_path, name, isolate=False) as (node, other):
        other()
        await until(lambda: any(GAVE_WAY in r.getMessage() and "refused" in r.getMessage() for r in caplog.records),
                    10, "the other transcoder saying it was refused and stops")
        assert any("refused: this node makes them itself" in r.getMessage() for r in caplog.records)
        assert rungs(node, name) == {"video-180p"} and not node.moq.added_tracks(name)
