"""The node kinds as separate processes, chained as in a deployment:

    ffmpeg --RTMP--> rtmpq ingest --upstream A --MoQ--> rtmpq relay A <--MoQ-- rtmpq relay B (--upstream A)
                                                                         |--> rtmpq sub (JSON lines)
                                                                         \\--> rtmpq edge (LL-HLS) --> ffprobe
"""

import asyncio
import json
import socket
import sys
import os
import urllib.error
import urllib.request

from .conftest import free_port, need, node_listening, wait_tcp
from .publishers import ffmpeg_publish_args, probe_packets, run_process


# broadcasts end when their publisher leaves (so players get ENDLIST at once)
NO_GRACE = {**os.environ, "RTMPQ_PUBLISH_GRACE_PERIOD": "0"}


async def start(*args: str, env=None):
    """A node as a process; one given ``--moq HOST:PORT`` is returned once that MoQ listener is
    bound (or the node has exited): a `rtmpq sub` started before it would be refused at once."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "rtmpq", "--log-level", "WARNING", *args,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                                                env=env or NO_GRACE)
    await node_listening(proc, args)
    return proc


async def get_when_ready(url: str, deadline: float = 30.0) -> bytes:
    """GET ``url``, asking again while the server answers 503/404 (not live yet), up to ``deadline`` s."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while True:
        try:
            return await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=20).read())
        except urllib.error.HTTPError as exc:
            if exc.code not in (404, 503) or loop.time() > end:
                raise
        except urllib.error.URLError:  # the edge is not listening yet
            if loop.time() > end:
                raise
        await asyncio.sleep(0.2)


async def start_waiting_sub(url: str, seconds: float) -> asyncio.Task:
    """`rtmpq sub --json URL` for a broadcast not live yet: returns once the subscriber says it
    waits for it (a publish started after that finds it waiting, however slow the machine is to
    start it), with a task for its exit code and whole output."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "rtmpq", "--log-level", "INFO", "sub", url,
                                                "--insecure", "--json", "--seconds", str(seconds),
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    head = []
    while not head or "is not live yet" not in head[-1]:
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert line, "".join(head)  # it ended without waiting
        head.append(line)

    async def rest() -> tuple[int, str]:
        tail = await asyncio.wait_for(proc.stdout.read(), seconds + 20)
        return await proc.wait(), "".join(head) + tail.decode()
    return asyncio.create_task(rest())


async def test_ingest_relay_chain_subscriber_and_edge_as_processes(tmp_path):
    need("ffmpeg")
    pa, pb, prtmp, phttp = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_DGRAM), free_port(), free_port()
    procs = []
    try:
        procs.append(await start("relay", "--moq", f"127.0.0.1:{pa}", "--state-dir", str(tmp_path / "a")))
        procs.append(await start("relay", "--moq", f"127.0.0.1:{pb}", "--state-dir", str(tmp_path / "b"),
                                 "--upstream", f"moqt://127.0.0.1:{pa}", "--insecure"))
        procs.append(await start("ingest", "--rtmp", f"127.0.0.1:{prtmp}", "--upstream", f"moqt://127.0.0.1:{pa}", "--insecure"))
        procs.append(await start("edge", "--http", f"127.0.0.1:{phttp}", "--upstream", f"moqt://127.0.0.1:{pb}", "--insecure"))
        # the subscriber comes first: it waits for the broadcast (and for relay B to be up), and
        # the publish starts only once it does (on a loaded machine its process can take seconds)
        sub = await start_waiting_sub(f"moqt://127.0.0.1:{pb}/live/chain", 20)
        ref = str(tmp_path / "ref.flv")
        await wait_tcp(prtmp)
        publisher = asyncio.create_task(run_process(ffmpeg_publish_args(f"rtmp://127.0.0.1:{prtmp}/live/chain", ref, seconds=5)))
        playlist = f"http://127.0.0.1:{phttp}/live/chain/index.m3u8"
        # a first player request makes the edge subscribe (through relay B) while the stream is live
        first = await get_when_ready(playlist)
        assert b"#EXT-X-STREAM-INF" in first
        rc, output = await publisher
        assert rc == 0, output
        rc, out = await sub
        lines = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
        frames = [l for l in lines if "track" in l]
        summary = next(l["summary"] for l in lines if "summary" in l)
        assert rc == 0 and summary["skipped_groups"] == 0, out
        reference = probe_packets(ref)
        for track in ("video", "audio"):
            mine = sorted((f for f in frames if f["track"] == track), key=lambda f: (f["group"], f["object"]))
            got = [(f["dts"], f["pts"], f["keyframe"], f["size"]) for f in mine]
            want = [(p.dts, p.pts, p.keyframe, p.size) for p in reference if p.track == track]
            # B passes A's NAMESPACE down: the waiting subscriber joins tens of ms after the
            # broadcast went live, inside the first GoP (2 s), and gets that group from its start
            assert got and got == want[len(want) - len(got):], track
            assert got[0] == want[0] or track == "audio"
        assert all(f["latency_ms"] is not None for f in frames)
        media = playlist.replace("index.m3u8", "video.m3u8")
        end = asyncio.get_running_loop().time() + 30
        while b"#EXT-X-ENDLIST" not in await get_when_ready(media):  # the edge has it all
            assert asyncio.get_running_loop().time() < end, "no ENDLIST in the edge's playlist"
            await asyncio.sleep(0.2)
        rc, out = await run_process(["ffprobe", "-v", "error", "-count_frames", "-show_entries",
                                     "stream=codec_type,nb_read_frames", "-of", "json", playlist], timeout=40)
        assert rc == 0, out
        counts = {s["codec_type"]: int(s["nb_read_frames"]) for s in json.loads(out)["streams"]}
        # the edge joined inside the first GoP, so the whole broadcast is in its playlist
        assert counts["video"] == len([p for p in reference if p.track == "video"])
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            _, err = await p.communicate()
            assert b"Traceback" not in err, err.decode()
