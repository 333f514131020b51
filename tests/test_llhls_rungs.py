"""A rung's LL-HLS playlist stays in step with its source's: a group the rung skipped keeps its
place as an EXT-X-GAP segment (durations within the target, media sequence numbers aligned).

The rung here is made by a test transcoder over rtmpq's own MoQ client: it copies the source's
video into a rung track PUBLISHed into `rtmpq up`'s relay (as `rtmpq transcode --upstream` does,
with its `_RungPublisher`) and skips one group whole as a rung that fell behind does, so the skip
is where the test wants it, every run."""

import asyncio
import re
import time
import urllib.request
from dataclasses import replace

import pytest

from rtmpq.config import HttpConfig, TranscodeConfig
from rtmpq.edge.server import EdgeServer

from rtmpq.media.catalog import Catalog
from rtmpq.media.frames import Frame
from rtmpq.moq import events as ev
from rtmpq.moq.client import subscribe_broadcast
from rtmpq.moq.loc import RENDITIONS_TRACK
from rtmpq.moq.transport import connect_moq
from rtmpq.nodes.remote import moq_broadcast_source
from rtmpq.nodes.transcode import _RungPublisher

from .conftest import need, start_up_node, until
from .publishers import AUDIO_ENCODE, VIDEO_ENCODE, run_process
from .test_codecs_e2e import http_text

RUNG = "video-360p"
# ffmpeg publishing 1 s GoPs (30 fps), so a few seconds hold several groups
ONE_SECOND_GOPS = [a for a in VIDEO_ENCODE]
ONE_SECOND_GOPS[ONE_SECOND_GOPS.index("-g") + 1] = ONE_SECOND_GOPS[ONE_SECOND_GOPS.index("-keyint_min") + 1] = "30"


def live_publish_args(url: str, seconds: float) -> list[str]:
    return ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-re",
            "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30", "-f", "lavfi", "-i", "sine=frequency=440",
            "-t", str(seconds), *ONE_SECOND_GOPS, *AUDIO_ENCODE, "-map", "0:v", "-map", "1:a", "-f", "flv", url]


class CopyRung:
    """A transcoder of ``name`` at ``node`` whose rung RUNG is its source video copied, group by
    group, but for the groups ``skip(self)`` says to skip whole (the rung's stream for such a
    group: its header alone, reset, as a transcoder's rung that fell behind sends) and those
    ``cut(self, frame)`` says to cut short at that frame (the rest of the group is not sent, its
    stream reset)."""

    def __init__(self, node, name: str, skip, cut=lambda copy, frame: False) -> None:
        self.node, self.name, self.skip, self.cut = node, name, skip, cut
        self.sent: list[int] = []  # groups sent whole or begun, while the relay forwarded the rung
        self.skipped: list[int] = []
        self.cut_short: list[int] = []
        self.forwarded = False

    async def run(self) -> None:
        host, port = self.node.moq_address
        backend = self.node.moq_config.backend
        namespace = tuple(self.name.split("/"))
        async with connect_moq(host, port, insecure=True, backend=backend) as src, \
                connect_moq(host, port, insecure=True, backend=backend) as pub:
            rung: _RungPublisher | None = None

            def on_event(_conn, event) -> None:
                if isinstance(event, ev.RequestUpdated) and rung is not None \
                        and event.existing_request_id == rung.request_id:
                    pub.session.request_ok(event.request_id)
                    self.forwarded = bool(event.forward)
                    rung.resume(encoding=True) if event.forward else rung.pause()
                    pub.flush()
                elif isinstance(event, ev.TrackPublished):
                    pub.session.publish_ok(event.request_id)
                    pub.flush()

            pub.handler = on_event
            dropping = None
            async for item in subscribe_broadcast(src, self.name, tracks=["video"], wait=20):
                if isinstance(item, Catalog) and rung is None and item.track("video") is not None:
                    video = item.track("video")
                    info = replace(video, name=RUNG, source="video", alt_group=video.alt_group or 1)
                    rung = _RungPublisher(pub, namespace, info, 1, None)
                    pub.session.publish(namespace, RENDITIONS_TRACK, 0)  # the list of the rungs added
                    sid = pub.session.open_subgroup(0, 0, priority=0)
                    pub.session.send_object(sid, 0, Catalog(self.name, (info,)).to_json())
                    pub.session.end_subgroup(sid)
                    pub.flush()
                elif isinstance(item, Frame) and rung is not None:
                    if item.index == 0 and self.forwarded and self.skip(self):
                        dropping = item.group
                        self.skipped.append(item.group)
                        rung.skip(item.group)
                    elif item.index > 0 and item.group != dropping and self.cut(self, item):
                        dropping = item.group
                        self.cut_short.append(item.group)
                        rung.skip(item.group)
                    if item.group == dropping:
                        continue
                    if item.index == 0 and self.forwarded:
                        self.sent.append(item.group)
                    rung.send(replace(item, track=RUNG))


async def play_rung(base: str) -> asyncio.Task:
    """Once the multivariant at ``base`` lists RUNG: ffmpeg reading the rung's playlist to its end
    (a task: its (exit code, output))."""
    async def listed() -> bool:
        status, body = await http_text(f"{base}/index.m3u8")
        return status == 200 and RUNG in body
    await until(listed, 20, "the rung in the multivariant")
    return asyncio.create_task(run_process(["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin",
                                            "-i", f"{base}/{RUNG}.m3u8", "-map", "0:v", "-f", "null", "-"], 60))


async def gap_answered_404_and_played_through(gap_url: str, publish: asyncio.Task, player: asyncio.Task) -> None:
    """A gap's URI answers 404 (no media: players fetch nothing of it, RFC 8216bis 4.4.4.7); the
    publisher and the player (play_rung) end well."""
    status, _ = await http_text(gap_url)
    assert status == 404
    for process in (publish, player):
        rc, out = await process
        assert rc == 0, out


def gap_uris(playlist: str) -> list[str]:
    return re.findall(r"^#EXT-X-GAP\n#EXTINF:[\d.]+,\n(\S+)$", playlist, re.M)


def segments(playlist: str) -> dict[int, tuple[float, bool]]:
    """{media sequence number: (EXTINF, EXT-X-GAP)} of a media playlist's whole segments."""
    found = re.search(r"#EXT-X-MEDIA-SEQUENCE:(\d+)", playlist)
    if found is None:
        return {}
    msn = int(found[1])
    out = {}
    gap = False
    for line in playlist.splitlines():
        if line == "#EXT-X-GAP":
            gap = True
        elif line.startswith("#EXTINF:"):
            out[msn] = (float(line[8:].rstrip(",")), gap)
            msn += 1
            gap = False
    return out


async def test_a_group_a_rung_skipped_is_a_gap_in_its_playlist_in_step_with_the_source(tmp_path):
    """ffmpeg publishes 1 s GoPs; the rung skips one group whole once it has delivered one while
    a player watches it. Its playlist lists that group as an EXT-X-GAP segment of the source's
    duration at the source's media sequence number (its segment URI answers 404, nothing to
    fetch), every EXTINF within the target duration, and ffmpeg plays the rung's playlist to its
    end through it. Before, the segment before the skip spanned two groups (EXTINF 2.0 for a
    target of 1) and every later segment was numbered one behind the source's."""
    need("ffmpeg")
    node = await start_up_node(tmp_path)
    copy = CopyRung(node, "live/gaps", lambda c: not c.skipped and len(c.sent) >= 2)
    task = asyncio.create_task(copy.run())
    try:
        publish = asyncio.create_task(run_process(
            live_publish_args(f"rtmp://127.0.0.1:{node.rtmp.address[1]}/live/gaps", 8), 60))
        host, port = node.edge.address
        base = f"http://{host}:{port}/live/gaps"

        player = await play_rung(base)
        rung_playlist = source_playlist = ""

        await until(lambda: copy.skipped and len([g for g in copy.sent if g > copy.skipped[0]]) >= 2, 20,
                    "two groups of the rung sent after the one it skipped")

        async def in_step() -> bool:  # the newest whole segments numbered alike
            nonlocal rung_playlist, source_playlist
            _, rung_playlist = await http_text(f"{base}/{RUNG}.m3u8")
            _, source_playlist = await http_text(f"{base}/video.m3u8")
            rung, source = segments(rung_playlist), segments(source_playlist)
            return bool(rung) and max(rung) == max(source)
        await until(in_step, 5, "the rung's newest whole segment numbered as the source's")
        await gap_answered_404_and_played_through(f"{base}/{gap_uris(rung_playlist)[0]}", publish, player)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await node.close()
    assert len(copy.skipped) == 1
    target = int(re.search(r"#EXT-X-TARGETDURATION:(\d+)", rung_playlist)[1])
    assert target == int(re.search(r"#EXT-X-TARGETDURATION:(\d+)", source_playlist)[1]) == 1
    rung, source = segments(rung_playlist), segments(source_playlist)
    assert all(round(d) <= target for d, _ in rung.values()), rung_playlist
    common = sorted(set(rung) & set(source))
    assert len(common) >= 3 and common[-1] == max(rung), (rung, source)
    for msn in common:
        assert abs(rung[msn][0] - source[msn][0]) < 0.05, (msn, rung_playlist, source_playlist)
    gaps = [msn for msn in rung if rung[msn][1]]
    assert len(gaps) == 1 and not any(gap for _, gap in source.values())
    assert ',GAP=YES' in rung_playlist or gaps[0] not in list(rung)[-3:]  # its parts too, when listed


def picture_size(init: bytes) -> tuple[int, int]:
    """(width, height) of an init segment's track header (tkhd, 16.16 fixed point at its end)."""
    at = init.index(b"tkhd") - 4
    end = at + int.from_bytes(init[at:at + 4], "big")
    return int.from_bytes(init[end - 8:end - 6], "big"), int.from_bytes(init[end - 4:end - 2], "big")


def live_args(url: str, seconds: float, size: str) -> list[str]:
    return [a.replace("size=320x240", f"size={size}") for a in live_publish_args(url, seconds)]


@pytest.mark.parametrize("isolate", [False, True], ids=["threads", "child"])
async def test_a_player_on_a_rung_withdrawn_by_a_smaller_republish_plays_on(tmp_path, isolate):
    """`up --ladder 240p,180p`; ffmpeg publishes 640x360 and a player (ffmpeg) reads the 240p
    rung's playlist; the publisher comes back (within the grace period) at 320x240, so the
    240p rung is withdrawn (not smaller than the source). The player plays on: the playlist goes
    on with the source's pictures (320x240, not upscaled) behind a discontinuity with the
    source's init, to the broadcast's end; the multivariant no longer offers it. Before, the
    rung's playlist got EXT-X-ENDLIST at the republish and the player stopped there."""
    need("ffmpeg")
    node = await start_up_node(tmp_path, "aioquic", grace_period=2.0,
                               transcode=TranscodeConfig(ladder="240p,180p", isolate=isolate, idle_stop=1.0))
    url = f"rtmp://127.0.0.1:{node.rtmp.address[1]}/live/smaller"
    host, port = node.edge.address
    base = f"http://{host}:{port}/live/smaller"
    publisher = asyncio.create_task(run_process(live_args(url, 3, "640x360"), 60))
    player = None
    try:
        async def listed() -> bool:
            status, body = await http_text(f"{base}/index.m3u8")
            return status == 200 and "video-240p.m3u8" in body
        await until(listed, 20, "the 240p rung in the multivariant")
        player = asyncio.create_task(run_process(["ffmpeg", "-hide_banner", "-nostdin", "-i", f"{base}/video-240p.m3u8",
                                                  "-map", "0:v", "-c", "copy", "-f", "null", "-"], 60))
        rc, out = await publisher
        assert rc == 0, out
        publisher = asyncio.create_task(run_process(live_args(url, 3, "320x240"), 60))
        multivariant = ""

        async def withdrawn() -> bool:  # (the transcoder withdraws the rung once it sees the new size)
            nonlocal multivariant
            _, multivariant = await http_text(f"{base}/index.m3u8")
            return "320x240" in multivariant and "video-240p.m3u8" not in multivariant
        await until(withdrawn, 10, "the 240p rung withdrawn from the multivariant")
        rc, out = await publisher
        assert rc == 0, out
        # the broadcast ends [publish] grace_period after this publish: a player still reading now
        # read on past the republish (before, the rung's playlist ended at it, and so did the player)
        still_playing = not player.done()
        _, playlist = await http_text(f"{base}/video-240p.m3u8")
        maps = re.findall(r'#EXT-X-MAP:URI="([^"]+)"', playlist)
        init = await asyncio.to_thread(lambda: urllib.request.urlopen(f"{base}/{maps[-1]}", timeout=10).read())
        rc, played = await player
        assert rc == 0, played
    finally:
        for task in (publisher, player):
            if task is not None:
                task.cancel()
        await asyncio.gather(*(t for t in (publisher, player) if t is not None), return_exceptions=True)
        await node.close()
    assert re.findall(r"RESOLUTION=(\d+x\d+)", multivariant) == ["320x240", "240x180"], multivariant
    assert still_playing, played[-2000:]
    assert int(re.findall(r"frame=\s*(\d+)", played)[-1]) > 0, played[-2000:]
    assert "#EXT-X-DISCONTINUITY" in playlist and len(maps) >= 2, playlist
    assert picture_size(init) == (320, 240)  # the source's pictures, not upscaled to 426x240


def playlist_parts(playlist: str) -> list[dict]:
    """A media playlist's segments: {msn, parts: [(duration, GAP=YES, URI)], extinf (None while in
    progress), gap (EXT-X-GAP)}."""
    msn = int(re.search(r"#EXT-X-MEDIA-SEQUENCE:(\d+)", playlist)[1])
    out = [{"msn": msn, "parts": [], "extinf": None, "gap": False}]
    for line in playlist.splitlines():
        if line.startswith("#EXT-X-PART:"):
            duration = float(re.search(r"DURATION=([\d.]+)", line)[1])
            out[-1]["parts"].append((duration, "GAP=YES" in line, re.search(r'URI="([^"]+)"', line)[1]))
        elif line == "#EXT-X-GAP":
            out[-1]["gap"] = True
        elif line.startswith("#EXTINF:"):
            out[-1]["extinf"] = float(line[8:].rstrip(","))
            msn += 1
            out.append({"msn": msn, "parts": [], "extinf": None, "gap": False})
    return [s for s in out if s["parts"] or s["extinf"] is not None]


@pytest.mark.parametrize("edge", ["up", "separate"])
async def test_a_blocking_reload_of_a_rung_whose_transcoder_skips_is_answered_in_step_with_the_source(tmp_path, edge):
    """ffmpeg publishes 1 s GoPs; the rung skips two groups whole, said on the wire (a reset
    subgroup). While it skips, a blocking reload of the rung's playlist for the source's next part
    (_HLS_msn/_HLS_part) is answered as the source's is (within 2 part targets, not a GoP), listing
    that part GAP=YES: at `up`'s edge (the skip comes in-process) and at a separate edge fed over
    MoQ, as `rtmpq edge` is (the reset subgroup). Before, the rung's playlist got nothing for the
    skipped groups until its next group began: that reload waited 2 s (hls.js reported
    levelLoadTimeOut and a stall there)."""
    need("ffmpeg")
    node = await start_up_node(tmp_path)
    server = node.edge
    if edge == "separate":
        server = EdgeServer(moq_broadcast_source(f"moqt://127.0.0.1:{node.moq_address[1]}", wait=10, insecure=True,
                                                 backend=node.moq_config.backend),
                            http=HttpConfig(host="127.0.0.1", port=0))
        await server.start()
    copy = CopyRung(node, "live/gapsoon", lambda c: len(c.sent) >= 2 and len(c.skipped) < 2)
    task = asyncio.create_task(copy.run())
    publish = asyncio.create_task(run_process(
        live_publish_args(f"rtmp://127.0.0.1:{node.rtmp.address[1]}/live/gapsoon", 6), 60))
    try:
        host, port = server.address
        base = f"http://{host}:{port}/live/gapsoon"

        async def pulled() -> bool:  # (asking for the rung's playlist pulls it: the relay forwards it)
            status, body = await http_text(f"{base}/index.m3u8")
            return status == 200 and RUNG in body and (await http_text(f"{base}/{RUNG}.m3u8"))[0] == 200
        await until(pulled, 20, "the rung's playlist served")
        await until(lambda: copy.skipped, 10, "the rung skipping a group")
        _, source_playlist = await http_text(f"{base}/video.m3u8")
        msn, part = map(int, re.search(r'PRELOAD-HINT:TYPE=PART,URI="v-seg(\d+)\.(\d+)\.m4s"', source_playlist).groups())
        query = f"?_HLS_msn={msn}&_HLS_part={part}"

        async def reload(uri: str) -> tuple[int, str, float]:
            status, body = await http_text(f"{base}/{uri}{query}")
            return status, body, time.monotonic()
        (source_status, _, source_at), (rung_status, rung_playlist, rung_at) = await asyncio.gather(
            reload("video.m3u8"), reload(f"{RUNG}.m3u8"))
        assert copy.skipped[-1] <= copy.skipped[0] + 1 and len(copy.sent) == 2  # (asked while it skipped)
    finally:
        task.cancel()
        publish.cancel()
        await asyncio.gather(task, publish, return_exceptions=True)
        if server is not node.edge:
            await server.close()
        await node.close()
    assert source_status == rung_status == 200, rung_playlist
    assert abs(rung_at - source_at) < 2 * 0.2, (rung_at - source_at, rung_playlist)
    asked = [p for s in playlist_parts(rung_playlist) for p in s["parts"] if p[2] == f"v{RUNG[6:]}-seg{msn}.{part}.m4s"]
    assert asked and asked[0][1], rung_playlist  # listed, GAP=YES


async def test_a_group_a_rung_cut_short_ends_within_the_part_target_and_gap_parts_follow(tmp_path):
    """The rung cuts one group short (a third of it delivered, the rest reset, as a transcoder that
    fell behind mid-group does). That segment's parts stay within PART-TARGET: its media ends a
    frame after its last picture and the rest of it is the source's parts, GAP=YES (their URIs
    answer 404), its EXTINF the source's; ffmpeg plays the rung's playlist to its end through it.
    Before, its last part lasted up to the next group (0.6 s for a PART-TARGET of 0.2)."""
    need("ffmpeg")
    node = await start_up_node(tmp_path)
    copy = CopyRung(node, "live/cut", lambda c: False,
                    lambda c, frame: not c.cut_short and len(c.sent) >= 2 and frame.index == 10)
    task = asyncio.create_task(copy.run())
    publish = asyncio.create_task(run_process(
        live_publish_args(f"rtmp://127.0.0.1:{node.rtmp.address[1]}/live/cut", 5), 60))
    player = None
    try:
        host, port = node.edge.address
        base = f"http://{host}:{port}/live/cut"

        player = await play_rung(base)
        rung_playlist = source_playlist = ""
        cut = None

        async def cut_listed() -> bool:  # the cut segment whole, with its parts
            nonlocal rung_playlist, source_playlist, cut
            _, rung_playlist = await http_text(f"{base}/{RUNG}.m3u8")
            _, source_playlist = await http_text(f"{base}/video.m3u8")
            cut = next((s for s in playlist_parts(rung_playlist) if s["extinf"] is not None and not s["gap"]
                        and any(gap for _, gap, _ in s["parts"])), None)
            return cut is not None
        await until(cut_listed, 10, "the segment of the group cut short, whole, with GAP=YES parts")
        gap_part = next(uri for _, gap, uri in cut["parts"] if gap)
        await gap_answered_404_and_played_through(f"{base}/{gap_part}", publish, player)
    finally:
        task.cancel()
        for t in (publish, player):
            if t is not None:
                t.cancel()
        await asyncio.gather(task, *(t for t in (publish, player) if t is not None), return_exceptions=True)
        await node.close()
    assert len(copy.cut_short) == 1
    parts = [d for s in playlist_parts(rung_playlist) for d, _, _ in s["parts"]]
    assert max(parts) <= 0.2 + 0.0005, rung_playlist  # PART-TARGET (RFC 8216bis 4.4.4.9)
    media = [d for d, gap, _ in cut["parts"] if not gap]
    assert 0.3 <= sum(media) <= 0.4, rung_playlist  # its 10 pictures, a frame interval each
    assert cut["parts"][-1][1]  # the rest: GAP=YES
    source = next(s for s in playlist_parts(source_playlist) if s["msn"] == cut["msn"])
    assert abs(cut["extinf"] - source["extinf"]) < 0.05, (rung_playlist, source_playlist)
