"""HEVC, AV1 and Opus over Enhanced RTMP, end to end: PyAV's FFmpeg 8 publishes into `rtmpq up`;
a MoQ subscriber gets every frame with the right codec strings in the MSF catalog; the LL-HLS
playlist decodes frame-exact after the end; the recording decodes. A two-track E-RTMP publish
becomes two renditions. Bad configuration records and OBUs cost only that publish its track."""

import asyncio
import json
import re
import urllib.request

import pytest


from rtmpq.media.catalog import Catalog
from rtmpq.nodes.up import UpNode

from .conftest import local_config, need
from .publishers import (
    as_packets,
    pyav_decoded_frames,
    pyav_packets,
    pyav_publish_args,
    push_flv,
    run_process,
)
from .test_moq_e2e import receive


@pytest.fixture
async def node(tmp_path):
    config = local_config(tmp_path)
    config.rtmp.record_dir = tmp_path / "rec"
    n = UpNode(config)
    await n.start()
    yield n
    await n.close()


async def http_text(url: str) -> tuple[int, str]:
    def fetch():
        try:
            with urllib.request.urlopen(url, timeout=15) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
    return await asyncio.to_thread(fetch)


async def wait_for_text(url: str, needle: str, timeout: float = 20.0) -> str:
    async with asyncio.timeout(timeout):
        while True:
            status, text = await http_text(url)
            if status == 200 and needle in text:
                return text
            await asyncio.sleep(0.1)


async def count_frames(url: str) -> dict[str, int]:
    rc, out = await run_process(["ffprobe", "-v", "error", "-count_frames", "-show_entries",
                                 "stream=codec_type,nb_read_frames", "-of", "json", url], timeout=60)
    assert rc == 0, out
    return {s["codec_type"]: int(s["nb_read_frames"]) for s in json.loads(out)["streams"]}


CASES = {
    # video encoder, audio encoder, expected catalog codec strings (level from the encoder's choice)
    "hevc+aac": ("libx265", "aac", r"hvc1\.1\.6\.L\d+\.90", "mp4a.40.2", "mp4a.40.2"),
    "av1+opus": ("libsvtav1", "libopus", r"av01\.0\.\d\dM\.08", "opus", "Opus"),
    "hevc+ac3": ("libx265", "ac3", r"hvc1\.1\.6\.L\d+\.90", "ac-3", "ac-3"),
    "av1+eac3": ("libsvtav1", "eac3", r"av01\.0\.\d\dM\.08", "ec-3", "ec-3"),
    "vp9+opus": ("libvpx-vp9", "libopus", r"vp09\.00\.\d\d\.08", "opus", "Opus"),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_enhanced_rtmp_publish_reaches_moq_ll_hls_and_the_recording(node, tmp_path, case):
    need("ffmpeg")
    video_encoder, audio_encoder, video_codec, audio_codec, hls_audio = CASES[case]
    ref = str(tmp_path / "ref.flv")
    key = case.replace("+", "-")
    rtmp_port = node.rtmp.address[1]
    publisher = asyncio.create_task(run_process(
        pyav_publish_args(f"rtmp://127.0.0.1:{rtmp_port}/live/{key}", ref, video_encoder, audio_encoder, seconds=4),
        timeout=60))
    await node.registry.wait_for(f"live/{key}", 20)
    host, http_port = node.edge.address
    base = f"http://{host}:{http_port}/live/{key}"
    live_playlist = asyncio.create_task(http_text(f"{base}/index.m3u8"))  # the edge packages from now on
    catalogs, frames, skipped = await asyncio.wait_for(receive(node, f"live/{key}"), 60)
    assert (await live_playlist)[0] == 200
    rc, output = await publisher
    assert rc == 0, output
    assert not skipped

    # MoQ: every video and audio frame, as the encoder made it, under the right codec strings
    reference = pyav_packets(ref)
    sent = {packets[0].track: packets for packets in reference.values()}
    for track in ("video", "audio"):
        got = as_packets(sorted((f for f in frames if f.track == track), key=lambda f: (f.group, f.index)))
        assert got == sent[track], track
    catalog = catalogs[-1]
    video, audio = catalog.track("video"), catalog.track("audio")
    assert re.fullmatch(video_codec, video.codec), video.codec
    assert (video.width, video.height) == (320, 240)
    assert audio.codec == audio_codec and audio.channels == 2
    doc = json.loads(catalog.to_json())
    assert doc["version"] == "draft-01" and {e["id"] for e in doc["initDataList"]} == {"video", "audio"}
    video_groups = [f.group for f in frames if f.track == "video" and f.keyframe]
    assert video_groups == list(range(len(video_groups))) and len(video_groups) >= 3  # a group per GoP

    # LL-HLS: the multivariant names the codecs; after the end every frame is there and decodes
    await wait_for_text(f"{base}/video.m3u8", "#EXT-X-ENDLIST")
    await wait_for_text(f"{base}/audio.m3u8", "#EXT-X-ENDLIST")
    status, multivariant = await http_text(f"{base}/index.m3u8")
    assert status == 200
    assert f'CODECS="{video.codec},{hls_audio}"' in multivariant, multivariant
    counts = await count_frames(f"{base}/index.m3u8")  # Debian's ffmpeg as the player
    assert counts == {"video": len(sent["video"]), "audio": len(sent["audio"])}
    rc, out = await run_process(["ffmpeg", "-v", "error", "-xerror", "-i", f"{base}/index.m3u8", "-f", "null", "-"])
    assert rc == 0 and out.strip() == "", out

    # the recording: the enhanced FLV tags as received, which PyAV's FFmpeg reads and decodes
    [recording] = (tmp_path / "rec" / "live").glob(f"{key}-*.flv")
    assert pyav_packets(str(recording)) == reference
    assert pyav_decoded_frames(str(recording)) == {"video": len(sent["video"]), "audio": len(sent["audio"])}


async def test_two_track_publish_is_two_renditions(node, tmp_path):
    flv = str(tmp_path / "multitrack.flv")
    rc, out = await run_process(pyav_publish_args("-", flv, "libx265", "aac", seconds=3, size="1280x720",
                                                  multitrack="640x360"), timeout=120)
    assert rc == 0, out
    rtmp_port = node.rtmp.address[1]
    subscriber = asyncio.create_task(node.registry.wait_for("live/ladder", 20))
    pusher = asyncio.create_task(push_flv(rtmp_port, "ladder", flv))
    await subscriber
    host, http_port = node.edge.address
    base = f"http://{host}:{http_port}/live/ladder"
    live_playlist = asyncio.create_task(http_text(f"{base}/index.m3u8"))
    # both renditions asked for by name (by default a subscriber takes one per altGroup)
    catalogs, frames, _ = await asyncio.wait_for(receive(node, "live/ladder", tracks=["video", "video-1", "audio"]), 60)
    assert (await live_playlist)[0] == 200
    await pusher
    catalog = catalogs[-1]
    v0, v1 = catalog.track("video"), catalog.track("video-1")
    assert (v0.width, v0.height, v1.width, v1.height) == (1280, 720, 640, 360)
    assert v0.alt_group == v1.alt_group is not None and v0.codec.startswith("hvc1.")
    assert [t["name"] for t in json.loads(catalog.to_json())["tracks"]] == ["video", "video-1", "audio"]
    sent = pyav_packets(flv)
    by_track = {t: [f for f in frames if f.track == t] for t in ("video", "video-1", "audio")}
    assert sorted(len(v) for v in by_track.values()) == sorted(len(v) for v in sent.values())
    # renditions switch on the same boundaries: equal group numbers start at the same time
    starts = {t: {f.group: f.dts for f in by_track[t] if f.keyframe} for t in ("video", "video-1")}
    assert starts["video"] == starts["video-1"] and len(starts["video"]) >= 3

    await wait_for_text(f"{base}/video-1.m3u8", "#EXT-X-ENDLIST")
    status, multivariant = await http_text(f"{base}/index.m3u8")
    assert status == 200
    variants = re.findall(r"#EXT-X-STREAM-INF:(.*)\n(.*)", multivariant)
    assert [(re.search(r"RESOLUTION=(\d+x\d+)", a)[1], uri) for a, uri in variants] == [
        ("1280x720", "video.m3u8"), ("640x360", "video-1.m3u8")]
    assert all('AUDIO="audio"' in a and "hvc1." in a for a, _ in variants)
    counts = await count_frames(f"{base}/video-1.m3u8")
    assert counts == {"video": len(by_track["video-1"])}


def _corrupt(flv_in: str, flv_out: str, how: str) -> None:
    """Copy an enhanced FLV with its video sequence header, or some of its AV1 frames, damaged."""
    from rtmpq.media.flv import FlvWriter, read_flv_tags

    with open(flv_out, "wb") as f:
        w = FlvWriter(f)
        for tag_type, ts, body in read_flv_tags(flv_in):
            if tag_type == 9 and body[0] & 0x8F == 0x80:  # E-RTMP video SequenceStart: FourCC, then the record
                if how == "truncated config":
                    body = body[:9]
                elif how == "malformed config":
                    body = body[:5] + b"\x02" + body[6:]  # hvcC configurationVersion / av1C marker+version
            elif how == "bad obus" and tag_type == 9 and body[0] == 0xA1 and 1000 < ts < 1500:
                body = body[:5] + b"\xff" + body[6:]  # an inter frame's first OBU: forbidden bit set
            w.write_tag(tag_type, ts, body)


@pytest.mark.parametrize("video_encoder", ["libx265", "libsvtav1"])
async def test_bad_configuration_records_and_obus_cost_only_that_track(node, tmp_path, video_encoder, caplog):
    """Hostile input, handled as for AVC: a truncated or malformed hvcC/av1C is refused with a log
    line (the video track is not carried, the audio is); a temporal unit whose OBUs do not frame is
    dropped with the rest of its group. A good publish on the same node at the same time arrives whole."""
    good = str(tmp_path / "good.flv")
    audio = "aac" if video_encoder == "libx265" else "libopus"
    rc, out = await run_process(pyav_publish_args("-", good, video_encoder, audio, seconds=3), timeout=120)
    assert rc == 0, out
    rtmp_port = node.rtmp.address[1]
    hows = ["truncated config", "malformed config"] + (["bad obus"] if video_encoder == "libsvtav1" else [])
    for how in hows:
        _corrupt(good, str(tmp_path / f"{how}.flv"), how)
    names = {how: how.replace(" ", "-") for how in [*hows, "good"]}
    tasks = {how: asyncio.create_task(collect(node, name)) for how, name in names.items()}
    await asyncio.gather(*(push_flv(rtmp_port, name, str(tmp_path / f"{how}.flv") if how != "good" else good)
                           for how, name in names.items()))
    results = {how: await asyncio.wait_for(t, 30) for how, t in tasks.items()}
    sent = {packets[0].track: packets for packets in pyav_packets(good).values()}
    catalog, frames = results["good"]
    for track in ("video", "audio"):
        assert as_packets([f for f in frames if f.track == track]) == sent[track]
    for how in ("truncated config", "malformed config"):
        catalog, frames = results[how]
        assert catalog.track("video") is None and not [f for f in frames if f.track == "video"]  # not carried,
        assert as_packets([f for f in frames if f.track == "audio"]) == sent["audio"]  # the rest is
    assert "sequence header of video rejected" in caplog.text
    if "bad obus" in results:
        _, frames = results["bad obus"]
        broken = min(p.dts for p in sent["video"] if 1000 < p.dts < 1500 and not p.keyframe)
        next_key = min(p.dts for p in sent["video"] if p.keyframe and p.dts > broken)
        assert as_packets([f for f in frames if f.track == "video"]) == [
            p for p in sent["video"] if not broken <= p.dts < next_key]


async def collect(node, key: str) -> tuple[Catalog, list]:
    """The last catalog and every frame of ``live/<key>``, read in-process to its end."""
    from .publishers import collect_broadcast

    catalogs, frames = await collect_broadcast(node.registry, f"live/{key}", timeout=30)
    return (catalogs[-1] if catalogs else Catalog(f"live/{key}")), frames
