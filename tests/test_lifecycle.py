"""Publishers that freeze, reconnect and come back; viewers and subscribers that ride through it."""

import asyncio
import os
import re
import signal

import pytest

from rtmpq.config import PublishConfig
from rtmpq.media.catalog import Catalog
from rtmpq.media.frames import Frame
from rtmpq.moq.client import subscribe_broadcast
from rtmpq.moq.transport import connect_moq

from rtmpq.media.flv import read_flv_tags

from .conftest import http_get, need, start_up_node, until
from .publishers import (AUDIO_MONO_48K, VIDEO_ENCODE, audio_switch_flv, drop_publish, end_live_publish,
                         ffmpeg_publish_args, ffmpeg_publish_only_args, run_process)
from .rtmp_client import TcpPublisher


def long_publish_args(url: str, seconds: float = 60.0) -> list[str]:
    return ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-re",
            "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30", "-t", str(seconds), *VIDEO_ENCODE, "-f", "flv", url]


async def spawn(args: list[str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.DEVNULL)


def video_frames(node, name: str) -> int:
    pub = node.rtmp.publishes.get(name)
    return pub.demuxer.stats.frames["video"] if pub is not None else 0


@pytest.fixture
async def node(tmp_path):
    n = await start_up_node(tmp_path, publish=PublishConfig(idle_timeout=2.0, grace_period=30.0))
    yield n
    await n.close()


async def test_a_frozen_publisher_is_taken_over_at_once(node):
    need("ffmpeg")
    url = f"rtmp://127.0.0.1:{node.rtmp.address[1]}/live/cam"
    frozen = await spawn(long_publish_args(url))
    try:
        await until(lambda: video_frames(node, "live/cam") > 10, what="the first publish")
        first = node.rtmp.publishes["live/cam"]
        broadcast = node.registry.get("live/cam")
        os.kill(frozen.pid, signal.SIGSTOP)  # a dead link that TCP has not noticed
        # the encoder's reconnect: accepted at once, on the same broadcast
        rc, output = await run_process(ffmpeg_publish_only_args(url, seconds=2))
        assert rc == 0, output
        assert first.closed and node.registry.get("live/cam") is broadcast and broadcast.publishes == 2
    finally:
        frozen.kill()
        await frozen.wait()


async def test_a_silent_publisher_is_closed_after_the_idle_time_and_its_name_freed(node, caplog):
    need("ffmpeg")
    url = f"rtmp://127.0.0.1:{node.rtmp.address[1]}/live/idle"
    frozen = await spawn(long_publish_args(url))
    try:
        await until(lambda: video_frames(node, "live/idle") > 10, what="the first publish")
        os.kill(frozen.pid, signal.SIGSTOP)
        await until(lambda: "live/idle" not in node.rtmp.publishes, deadline=10, what="the idle publisher to be closed")
        assert "no media for 2 s" in caplog.text
        rc, output = await run_process(ffmpeg_publish_only_args(url, seconds=1))
        assert rc == 0, output
    finally:
        frozen.kill()
        await frozen.wait()


async def test_subscriber_keeps_receiving_across_a_publisher_reconnect(node, tmp_path):
    need("ffmpeg")
    url = f"rtmp://127.0.0.1:{node.rtmp.address[1]}/live/again"
    host, port = node.moq_address
    frames: list[Frame] = []
    catalogs: list[Catalog] = []

    async def subscribe():
        async with connect_moq(host, port, insecure=True) as conn:
            # the subscriber comes first: it waits for the broadcast
            # a budget far above what a loaded machine takes: this test is about continuity
            async for item in subscribe_broadcast(conn, "live/again", wait=20, delivery_timeout_ms=30_000):
                if isinstance(item, Frame):
                    frames.append(item)
                elif isinstance(item, Catalog):
                    catalogs.append(item)

    sub = asyncio.create_task(subscribe())
    rc, out = await run_process(ffmpeg_publish_args(url, str(tmp_path / "a.flv"), seconds=3))
    assert rc == 0, out
    first = len([f for f in frames if f.track == "video"])
    broadcast = node.registry.get("live/again")
    await until(lambda: not broadcast.publishing, what="the publisher to leave")
    rc, out = await run_process(ffmpeg_publish_args(url, str(tmp_path / "b.flv"), seconds=3))
    assert rc == 0, out
    await until(lambda: len([f for f in frames if f.track == "video"]) >= first + 80, what="frames of the second publish")
    broadcast.end()
    await asyncio.wait_for(sub, 10)
    assert broadcast.publishes == 2 and first >= 60
    for track in ("video", "audio"):
        # placed by group and object id: each group is its own stream and the relay sends the
        # newest first, so under load a group's last frames may arrive after the next group's
        # first (tests/test_restart.py); what is promised is one timeline, groups begun in order
        arrived = [f for f in frames if f.track == track]
        begun = list(dict.fromkeys(f.group for f in arrived))  # in the order groups began
        assert begun == sorted(begun), f"{track} group ids went backwards"
        mine = sorted(arrived, key=lambda f: (f.group, f.index))
        assert len({(f.group, f.index) for f in mine}) == len(mine), f"{track} objects twice"
        dts = [f.dts for f in mine]
        assert all(b > a for a, b in zip(dts, dts[1:])), f"{track} timestamps went backwards"
        # the seam is a gap of at least a second on the timeline, nothing more
        jumps = [b - a for a, b in zip(dts, dts[1:]) if b - a > 500]
        assert len(jumps) == 1 and jumps[0] >= 1000, jumps
    video = sorted((f for f in frames if f.track == "video"), key=lambda f: (f.group, f.index))
    seam = next(i for i, (a, b) in enumerate(zip(video, video[1:])) if b.dts - a.dts > 500) + 1
    assert video[seam].keyframe and video[seam].index == 0 and video[seam].group > video[seam - 1].group
    # a catalog for the second publish only when something changed: same encoder settings, same catalog
    assert len({c.to_json() for c in catalogs}) == len(catalogs)
    assert all(c.live for c in catalogs[:-1]) and not catalogs[-1].live and catalogs[-1].complete  # the end


async def test_hls_player_rides_through_a_publisher_reconnect(node, tmp_path):
    need("ffmpeg")
    url = f"rtmp://127.0.0.1:{node.rtmp.address[1]}/live/show"
    base = f"http://127.0.0.1:{node.edge.address[1]}/live/show"
    first = asyncio.create_task(run_process(ffmpeg_publish_args(url, str(tmp_path / "a.flv"), seconds=6)))
    broadcast_live = lambda: node.registry.get("live/show") is not None  # noqa: E731
    await until(broadcast_live, what="the broadcast")
    status, _ = await http_get(f"{base}/index.m3u8")  # the edge opens the broadcast and waits for a segment
    assert status == 200
    player = asyncio.create_task(run_process(
        ["ffmpeg", "-hide_banner", "-v", "error", "-nostdin", "-i", f"{base}/index.m3u8", "-map", "0:v",
         "-f", "framemd5", str(tmp_path / "played.md5")], timeout=90))
    rc, out = await first
    assert rc == 0, out
    broadcast = node.registry.get("live/show")
    await until(lambda: not broadcast.publishing, what="the publisher to leave")
    await asyncio.sleep(2)  # the outage itself (not an ordering wait): the encoder is gone this long
    status, body = await http_get(f"{base}/video.m3u8")
    assert status == 200 and b"#EXT-X-ENDLIST" not in body  # viewers are kept during the grace period
    second = asyncio.create_task(run_process(ffmpeg_publish_args(url, str(tmp_path / "b.flv"), seconds=4)))
    playlist = b""

    async def seam_listed() -> bool:
        nonlocal playlist
        _, playlist = await http_get(f"{base}/video.m3u8")
        return b"#EXT-X-DISCONTINUITY" in playlist

    loop = asyncio.get_running_loop()
    end = loop.time() + 20
    while not await seam_listed():
        assert loop.time() < end, playlist.decode()
        await asyncio.sleep(0.2)
    assert b"#EXT-X-ENDLIST" not in playlist
    rc, out = await second
    assert rc == 0, out
    broadcast.end()  # the grace period's end, now: the player gets its ENDLIST and stops
    rc, out = await player
    assert rc == 0, out
    played = [line for line in (tmp_path / "played.md5").read_text().splitlines() if not line.startswith("#")]
    # frames of both publishes (6 s + 4 s at 30 fps; the player joined about 2 s into the first):
    # more than the first alone has
    assert len(played) > 6 * 30, len(played)
    pts = [int(line.split(",")[2]) for line in played]
    assert pts == sorted(pts)


def first_msn(playlist: bytes) -> int:
    return int(re.search(rb"#EXT-X-MEDIA-SEQUENCE:(\d+)", playlist)[1])


def discontinuities(playlist: bytes) -> dict[int, int]:
    """The media sequence number of each segment a playlist marks EXT-X-DISCONTINUITY -> its
    discontinuity sequence number."""
    msn, seq, out = first_msn(playlist), 0, {}
    found = re.search(rb"#EXT-X-DISCONTINUITY-SEQUENCE:(\d+)", playlist)
    seq = int(found[1]) if found else 0
    for line in playlist.splitlines():
        if line == b"#EXT-X-DISCONTINUITY":
            seq += 1
            out[msn] = seq
        elif line.startswith(b"#EXTINF"):
            msn += 1
    return out


def discontinuity_sequences(playlist: bytes) -> dict[int, int]:
    """The media sequence number of every segment of a media playlist -> its discontinuity
    sequence number (RFC 8216 6.2.4: matching content has matching numbers in every playlist)."""
    msn, out = first_msn(playlist), {}
    found = re.search(rb"#EXT-X-DISCONTINUITY-SEQUENCE:(\d+)", playlist)
    seq = int(found[1]) if found else 0
    for line in playlist.splitlines():
        if line == b"#EXT-X-DISCONTINUITY":
            seq += 1
        elif line.startswith(b"#EXTINF"):
            out[msn] = seq
            msn += 1
    return out


def counted_alike(*playlists: bytes) -> bool:
    """Whether the playlists give each segment they share the same discontinuity sequence number."""
    counts = [discontinuity_sequences(p) for p in playlists]
    shared = set.intersection(*(set(c) for c in counts))
    return bool(shared) and all(c[msn] == counts[0][msn] for c in counts for msn in shared)


def media_sequence(playlist: bytes) -> int:
    """The media sequence number of a media playlist's last segment (or part in progress)."""
    first = int(re.search(rb"#EXT-X-MEDIA-SEQUENCE:(\d+)", playlist)[1])
    return first + len(re.findall(rb"^#EXTINF", playlist, re.M))


async def publish_with_a_player(node, tmp_path, key: str) -> tuple:
    """A 4 s ffmpeg publish of audio and video to live/<key>, and once the edge lists its audio an
    HLS player (ffmpeg reading index.m3u8, both streams, into tmp_path/played.md5): (RTMP url,
    HLS base url, the multivariant playlist, the publish task, the player task)."""
    need("ffmpeg")
    url = f"rtmp://127.0.0.1:{node.rtmp.address[1]}/live/{key}"
    base = f"http://127.0.0.1:{node.edge.address[1]}/live/{key}"
    first = asyncio.create_task(run_process(ffmpeg_publish_args(url, str(tmp_path / "a.flv"), seconds=4)))
    await until(lambda: node.registry.get(f"live/{key}") is not None, what="the broadcast")
    status, multivariant = await http_get(f"{base}/index.m3u8")
    assert status == 200 and b"TYPE=AUDIO" in multivariant, multivariant.decode()
    player = asyncio.create_task(run_process(
        ["ffmpeg", "-hide_banner", "-v", "error", "-nostdin", "-i", f"{base}/index.m3u8", "-map", "0:v", "-map", "0:a",
         "-f", "framemd5", "-flush_packets", "1", str(tmp_path / "played.md5")], timeout=90))
    return url, base, multivariant, first, player


async def test_a_publisher_back_without_audio_leaves_new_players_video_only_and_its_players_silence(node, tmp_path):
    """ffmpeg publishes audio and video, stops, and comes back within the grace period with `-an`:
    once the new publish's first group is over the audio rendition leaves the multivariant
    playlist (players that come now get video only), while its media playlist goes on as silence
    for the players already on it (an HLS player stops at the end of any rendition it plays),
    with its discontinuity where the video has one; an HLS player that reads the stream
    throughout (ffmpeg) keeps getting video frames and audio frames past the seam."""
    url, base, multivariant, first, player = await publish_with_a_player(node, tmp_path, "an")
    rc, out = await first
    assert rc == 0, out
    broadcast = node.registry.get("live/an")
    await until(lambda: not broadcast.publishing, what="the publisher to leave")
    second = await spawn(long_publish_args(url, seconds=30))  # the encoder restarted without audio
    try:
        loop = asyncio.get_running_loop()
        end = loop.time() + 20
        while b"TYPE=AUDIO" in multivariant:
            assert loop.time() < end, multivariant.decode()
            await asyncio.sleep(0.2)
            status, multivariant = await http_get(f"{base}/index.m3u8")
            assert status == 200, multivariant
        assert b"mp4a" not in multivariant and b"video.m3u8" in multivariant, multivariant.decode()
        _, video = await http_get(f"{base}/video.m3u8")
        assert b"#EXT-X-DISCONTINUITY" in video and b"#EXT-X-ENDLIST" not in video, video.decode()
        seen = media_sequence(video)
        while media_sequence(video) < seen + 2:  # the video playlist goes on growing past the seam
            assert loop.time() < end + 10, video.decode()
            await asyncio.sleep(0.2)
            _, video = await http_get(f"{base}/video.m3u8")
        _, audio = await http_get(f"{base}/audio.m3u8")
        assert b"#EXT-X-ENDLIST" not in audio and media_sequence(audio) >= seen + 1, audio.decode()
        # the audio's discontinuity is the video's: the same segment, the same sequence number
        assert discontinuities(audio) == {msn: d for msn, d in discontinuities(video).items() if msn >= first_msn(audio)}, \
            (audio.decode(), video.decode())
        assert [t.name for t in broadcast.catalog.tracks] == ["video"]
        # the player (ffmpeg reading index.m3u8 since the first publish) gets video and audio past the seam
        md5 = tmp_path / "played.md5"
        await until(lambda: after_seam(played(md5, 0)) >= 3 * 30 and after_seam(played(md5, 1)) >= 2 * 43, deadline=30,
                    what="the player to play 3 s of video and 2 s of audio after the seam")
    finally:
        if second.returncode is None:
            second.kill()
        await second.wait()
    broadcast.end()
    rc, out = await player
    assert rc == 0, out
    assert played(md5, 0) == sorted(played(md5, 0)) and played(md5, 1) == sorted(played(md5, 1))


def played(md5, stream: int) -> list[int]:
    """The pts of each frame of ``stream`` that a player writing framemd5 has decoded so far."""
    if not md5.exists():
        return []
    return [int(line.split(",")[2]) for line in md5.read_text().splitlines()
            if not line.startswith("#") and int(line.split(",")[0]) == stream]


def after_seam(pts: list[int]) -> int:
    """How many frames come after the largest step in ``pts`` (0 when no step stands out)."""
    steps = [b - a for a, b in zip(pts, pts[1:])]
    seam = max(range(len(steps)), key=steps.__getitem__, default=None)
    return 0 if seam is None or steps[seam] < 10 * min(steps) else len(pts) - seam - 1


def init_segments(playlist: bytes) -> list[tuple[int, str]]:
    """Each EXT-X-MAP of a media playlist: (the media sequence number of its first segment, URI)."""
    msn, out = first_msn(playlist), []
    for line in playlist.splitlines():
        if line.startswith(b"#EXT-X-MAP:"):
            out.append((msn, re.search(rb'URI="([^"]+)"', line)[1].decode()))
        elif line.startswith(b"#EXTINF"):
            msn += 1
    return out


async def test_a_publisher_back_with_another_audio_format_plays_on_with_a_new_audio_init_segment(node, tmp_path):
    """The encoder restarts with its audio at 48 kHz mono instead of 44.1 kHz stereo (OBS's default
    and ffmpeg's differ, so this happens when a streamer switches encoders): the audio playlist goes
    on past the seam with a new init segment of the new format, its discontinuity on the video's
    segment, and an HLS player that reads the stream throughout plays audio past the seam."""
    need("ffprobe")
    url, base, _, first, player = await publish_with_a_player(node, tmp_path, "fmt")
    md5 = tmp_path / "played.md5"
    rc, out = await first
    assert rc == 0, out
    broadcast = node.registry.get("live/fmt")
    await until(lambda: not broadcast.publishing, what="the publisher to leave")
    second = asyncio.create_task(run_process(ffmpeg_publish_args(url, str(tmp_path / "b.flv"), seconds=30,
                                                                 audio=AUDIO_MONO_48K), timeout=60))
    try:
        await until(lambda: after_seam(played(md5, 0)) >= 3 * 30 and after_seam(played(md5, 1)) >= 2 * 46,
                    deadline=30, what="the player to play 3 s of video and 2 s of audio after the seam")
        _, video = await http_get(f"{base}/video.m3u8")
        _, audio = await http_get(f"{base}/audio.m3u8")
        assert b"#EXT-X-ENDLIST" not in audio, audio.decode()
        seams = discontinuities(audio)
        assert len(seams) == 1 and \
            seams == {msn: d for msn, d in discontinuities(video).items() if msn >= first_msn(audio)}, \
            (audio.decode(), video.decode())
        assert counted_alike(video, audio), (audio.decode(), video.decode())
        maps = init_segments(audio)
        assert maps[-1][0] == next(iter(seams)) and len({uri for _, uri in maps}) == len(maps) >= 2, audio.decode()
        formats = []
        for _, uri in maps[-2:]:
            status, init = await http_get(f"{base}/{uri}")
            assert status == 200
            (tmp_path / uri).write_bytes(init)
            rc, out = await run_process(["ffprobe", "-v", "error", "-show_entries",
                                         "stream=codec_name,sample_rate,channels", "-of", "csv=p=0",
                                         str(tmp_path / uri)])
            assert rc == 0, out
            formats.append(out.strip())
        assert formats == ["aac,44100,2", "aac,48000,1"], formats
        await end_live_publish(second)  # (still live: its rest is not needed)
    finally:
        await drop_publish(second)  # (a test that failed: its publish ends with it)
    broadcast.end()
    rc, out = await player
    assert rc == 0, out
    assert played(md5, 0) == sorted(played(md5, 0)) and played(md5, 1) == sorted(played(md5, 1))


async def test_an_audio_format_change_with_no_seam_is_a_discontinuity_of_every_playlist(node, tmp_path):
    """The audio's configuration changes mid-publish, with no gap in the timeline (an AAC sequence
    header of 48 kHz mono after 44.1 kHz stereo; the video's unchanged): the audio playlist marked
    EXT-X-DISCONTINUITY with its new init, the video playlist nothing, so from there on they counted
    different discontinuity sequences (hls.js maps audio by the video of the same sequence: a
    player that joined after the change had none). Now the video marks it too, at the same
    segment, with its one init."""
    need("ffmpeg")
    flv = await audio_switch_flv(tmp_path)
    publisher = await TcpPublisher.publish(node.rtmp.address[1], "switch")
    base = f"http://127.0.0.1:{node.edge.address[1]}/live/switch"
    assert (await http_get(f"{base}/"))[0] == 200  # the edge packages it from the first frame
    for tag_type, ts, body in read_flv_tags(flv):  # two 2 s groups of each format, at once
        publisher.media(tag_type, ts, body)
    publisher.close()
    broadcast = node.registry.get("live/switch")
    await until(lambda: not broadcast.publishing, what="the publisher to leave")
    broadcast.end()  # (its grace period is not waited out)

    async def ended() -> bool:
        return all([b"#EXT-X-ENDLIST" in (await http_get(f"{base}/{p}.m3u8"))[1] for p in ("video", "audio")])
    await until(ended, what="both playlists to end")
    _, video = await http_get(f"{base}/video.m3u8")
    _, audio = await http_get(f"{base}/audio.m3u8")
    assert len(init_segments(audio)) == 2 and len({uri for _, uri in init_segments(video)}) == 1, \
        (audio.decode(), video.decode())
    assert len(discontinuities(audio)) == 1 and discontinuities(video) == discontinuities(audio), \
        (audio.decode(), video.decode())
    assert counted_alike(video, audio), (audio.decode(), video.decode())


@pytest.mark.parametrize("backend", ["aioquic", "aiopquic"])
async def test_a_subscription_outlives_a_publisher_gap_longer_than_the_quic_idle_timeout(tmp_path, monkeypatch, backend):
    """While a broadcast waits for its publisher (the grace period) nothing flows on its MoQ
    sessions; the client keeps them alive (QUIC PING) or QUIC's idle timeout closes them. Seen
    before: with `[publish] grace_period` above 30 s every subscriber and relay below lost its
    session 30 s into the gap (rtmpq sub exited "not back within 30 s")."""
    need("ffmpeg")
    from rtmpq.moq import transport

    idle = 1.5  # the test's idle timeout (10 s in a node)
    monkeypatch.setattr(transport, "IDLE_TIMEOUT", idle)  # (the subscribers' side)
    node = await start_up_node(tmp_path, backend, publish=PublishConfig(grace_period=30.0), idle_timeout=idle)
    try:
        url = f"rtmp://127.0.0.1:{node.rtmp.address[1]}/live/gap"
        host, port = node.moq_address
        frames: list[Frame] = []
        conns = []

        async def subscribe():
            async with connect_moq(host, port, insecure=True, backend=backend) as conn:
                conns.append(conn)
                async for item in subscribe_broadcast(conn, "live/gap", wait=20, delivery_timeout_ms=30_000):
                    if isinstance(item, Frame):
                        frames.append(item)

        sub = asyncio.create_task(subscribe())
        rc, out = await run_process(ffmpeg_publish_args(url, str(tmp_path / "a.flv"), seconds=2))
        assert rc == 0, out
        broadcast = node.registry.get("live/gap")
        await until(lambda: not broadcast.publishing, what="the publisher to leave")
        first = len(frames)
        assert first > 0 and conns
        # quiet for three idle timeouts: the session must stay open
        with pytest.raises(AssertionError, match="timed out"):
            await until(lambda: sub.done() or conns[0].session.closed, deadline=3 * idle, what="a lost session")
        rc, out = await run_process(ffmpeg_publish_args(url, str(tmp_path / "b.flv"), seconds=2))
        assert rc == 0, out
        await until(lambda: len(frames) >= first + 60 or sub.done(), what="frames of the second publish")
        assert not sub.done(), sub.exception() if not sub.cancelled() else "cancelled"
        broadcast.end()
        await asyncio.wait_for(sub, 10)
    finally:
        await node.close()


async def test_an_encoder_taken_over_is_told_why(node):
    """Two encoders on one key: the second takes over and the first is closed. It was closed at
    once, while it was still sending, so its onStatus went down with the connection (a reset):
    ffmpeg said "Broken pipe". The connection now stays open a moment, reading and dropping
    what comes, and the encoder reads the reason."""
    need("ffmpeg")
    url = f"rtmp://127.0.0.1:{node.rtmp.address[1]}/live/twice"
    first = asyncio.create_task(run_process(["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-re",
                                             "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30", "-t", "20",
                                             *VIDEO_ENCODE, "-f", "flv", url], timeout=40))
    await until(lambda: video_frames(node, "live/twice") > 10, what="the first publish")
    second = asyncio.create_task(run_process(ffmpeg_publish_only_args(url, seconds=2)))
    rc, output = await asyncio.wait_for(first, 20)
    assert rc != 0 and "Server error: another publisher took over this stream" in output, output
    rc, output = await second
    assert rc == 0, output


async def test_a_graceful_stop_says_the_broadcast_ends_with_the_node_not_that_it_is_kept(tmp_path, caplog):
    """On SIGTERM the log said "publisher left, kept for 30 s" and then, at once, "ended": the
    grace period is not waited for when the node stops. Now it says the broadcast ends because
    the node is stopping, and nothing about keeping it."""
    need("ffmpeg")
    import logging

    caplog.set_level(logging.INFO, "rtmpq")
    node = await start_up_node(tmp_path, publish=PublishConfig(grace_period=30.0))
    publisher = await spawn(long_publish_args(f"rtmp://127.0.0.1:{node.rtmp.address[1]}/live/cam"))
    try:
        await until(lambda: video_frames(node, "live/cam") > 0, what="the publish")
    finally:
        await node.close()
        publisher.kill()
        await publisher.wait()
    said = [r.getMessage().split(" ", 2)[2] for r in caplog.records if r.getMessage().startswith("broadcast live/")]
    assert said == ["is live", "ended: the node is stopping"], said
