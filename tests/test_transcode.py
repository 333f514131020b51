"""The transcoder core with real PyAV encodes, no network: groups in, groups out per rung."""

import asyncio
import threading
import time
from fractions import Fraction

import av
import pytest

from rtmpq.media.catalog import TrackInfo
from rtmpq.media.frames import Frame
from rtmpq.transcode.coder import RungEncoder, SourceDecoder, annexb_to_length_prefixed
from rtmpq.transcode.ladder import LadderError, Rung, parse_ladder, rungs_for_source
from rtmpq.transcode.pipeline import Transcoder

from .conftest import until

FPS = 30


def make_source(seconds: float = 6.0, gop: int = 60, width: int = 1280, height: int = 720, bframes: int = 2):
    """A real x264 encode (B-frames, as ffmpeg publishes by default): (TrackInfo, [Frame])."""
    enc = av.CodecContext.create("libx264", "w")
    enc.width, enc.height, enc.pix_fmt = width, height, "yuv420p"
    enc.time_base = Fraction(1, 1000)
    enc.framerate = Fraction(FPS)
    enc.gop_size = gop
    enc.max_b_frames = bframes
    enc.flags |= 1 << 22
    enc.options = {"preset": "ultrafast", "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0"} if bframes == 0 else \
        {"preset": "superfast", "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0"}
    enc.open()
    packets = []
    n = int(seconds * FPS)
    for i in range(n + 1):
        if i < n:
            img = av.VideoFrame(width, height, "yuv420p")
            for p, plane in enumerate(img.planes):
                plane.update(bytes([(i * 7 + p * 50) % 256]) * plane.buffer_size)
            img.pts = round(i * 1000 / FPS)
            packets += enc.encode(img)
        else:
            packets += enc.encode(None)
    from rtmpq.codec import find_annexb_units
    from rtmpq.media.avc import avcc_from_parameter_sets
    ex = bytes(enc.extradata)
    units = [ex[s:e] for s, e in find_annexb_units(ex)]
    sps = next(u for u in units if u[0] & 0x1F == 7)
    pps = next(u for u in units if u[0] & 0x1F == 8)
    info = TrackInfo("video", "video", f"avc1.{sps[1]:02x}{sps[2]:02x}{sps[3]:02x}", avcc_from_parameter_sets([sps], [pps]),
                     width=width, height=height, framerate=FPS, nal_length_size=4, alt_group=1)
    frames = []
    group, index = -1, 0
    for p in packets:
        data, _ = annexb_to_length_prefixed(bytes(p))
        if p.is_keyframe:
            group, index = group + 1, 0
        frames.append(Frame("video", group, index, p.dts, p.pts, p.is_keyframe, data, time.time_ns()))
        index += 1
    return info, frames


@pytest.fixture(scope="module")
def source():
    return make_source()


def run(info, frames, ladder, active, *, feed_delay=0.0, activate_after=None):
    out: dict[str, list[Frame]] = {}
    lock = threading.Lock()

    def emit(track, frame):
        with lock:
            out.setdefault(track, []).append(frame)

    t = Transcoder("live/test", info, ladder, emit, lossless=True)
    for track in active if activate_after is None else ():
        t.set_active(track, True)
    for i, f in enumerate(frames):
        if activate_after is not None and i == activate_after:
            for track in active:
                t.set_active(track, True)
        t.push(f)
        if feed_delay:
            time.sleep(feed_delay)
    t.finish()
    deadline = time.monotonic() + 60
    last = [f for f in frames if f.group == frames[-1].group]
    # until every rung has the whole last group (or more frames than the source, which fails)
    while time.monotonic() < deadline:
        with lock:
            if all(sum(f.group == last[0].group for f in out.get(tr, [])) >= len(last) for tr in active):
                break
        time.sleep(0.05)
    t.close()
    t.join()
    return t, out


def decode_all(info: TrackInfo, frames: list[Frame]):
    dec = SourceDecoder(info)
    pictures = []
    for f in frames:
        pictures += dec.decode(f.payload, f.pts, f.dts, f.keyframe)
    pictures += dec.flush()
    return pictures


def test_ladder_parsing_and_defaults():
    rungs = parse_ladder("360p, 720p,480p")
    assert [r.name for r in rungs] == ["720p", "480p", "360p"]
    assert [r.bitrate for r in rungs] == [2_500_000, 1_200_000, 700_000]
    assert parse_ladder("480p", {"480p": "900"})[0].bitrate == 900_000
    assert [r.name for r in rungs_for_source(rungs, 720)] == ["480p", "360p"]  # not as tall as the source
    assert Rung("480p", 480, 1).size_for(1280, 720) == (854, 480)
    with pytest.raises(LadderError, match="'fast'"):
        parse_ladder("720p,fast")
    with pytest.raises(LadderError, match="not in the ladder"):
        parse_ladder("720p", {"480p": "1000"})


def test_every_group_starts_with_an_idr_at_the_source_pts(source):
    info, frames = source
    ladder = parse_ladder("720p,480p,360p")
    t, out = run(info, frames, ladder, ["video-480p", "video-360p"])
    assert set(t.workers) == {"video-480p", "video-360p"}  # 720p is not smaller than the source
    src_groups = {}
    for f in frames:
        src_groups.setdefault(f.group, []).append(f.pts)
    for rung in t.tracks:
        got = out[rung.name]
        assert len(got) == len(frames)
        groups: dict[int, list[Frame]] = {}
        for f in got:
            groups.setdefault(f.group, []).append(f)
        assert sorted(groups) == sorted(src_groups)
        for g, fs in groups.items():
            assert [f.index for f in fs] == list(range(len(fs)))
            assert fs[0].keyframe and all(not f.keyframe for f in fs[1:])  # IDR at the start only
            assert fs[0].pts == min(src_groups[g])  # the group's first frame has the source's pts
            assert all(f.dts == f.pts for f in fs)
            assert sorted(f.pts for f in fs) == sorted(src_groups[g])
        pictures = decode_all(rung, got)
        assert len(pictures) == len(frames)
        assert {(p.width, p.height) for p in pictures} == {(rung.width, rung.height)}
        assert rung.codec.startswith("avc1.") and rung.bitrate in (1_200_000, 700_000)
        assert t.frames_encoded(rung.name) == len(frames)


def test_an_inactive_rung_encodes_nothing_and_starts_at_the_current_group(source):
    info, frames = source
    ladder = parse_ladder("480p,360p")
    # 480p is watched from the start; 360p is asked for in the middle of group 1
    mid = next(i for i, f in enumerate(frames) if f.group == 1) + 20
    out: dict[str, list[Frame]] = {}
    t = Transcoder("live/test", info, ladder, lambda tr, f: out.setdefault(tr, []).append(f), lossless=True)
    t.set_active("video-480p", True)
    for i, f in enumerate(frames):
        if i == mid:
            deadline = time.monotonic() + 30
            while len(out.get("video-480p", [])) < mid - 5 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert t.frames_encoded("video-360p") == 0  # nobody asked: nothing encoded
            t.set_active("video-360p", True)
        t.push(f)
    t.finish()
    deadline = time.monotonic() + 60
    first_g1 = next(i for i, f in enumerate(frames) if f.group == 1)
    while (len(out.get("video-360p", [])) < len(frames) - first_g1) and time.monotonic() < deadline:
        time.sleep(0.05)
    t.close()
    t.join()
    late = out["video-360p"]
    assert late[0].group == 1 and late[0].index == 0 and late[0].keyframe
    assert late[0].pts == frames[first_g1].pts  # the IDR that starts the current source group
    assert len(late) == len(frames) - first_g1
    assert len(decode_all(t.tracks[1], late)) == len(late)


def push_live_then_wait_for_group_1(t, frames, start, first_g1, skipped, lock, emitted) -> None:
    """Push ``frames[start:]`` as a live source the 360p rung's encoder keeps up with (the next
    frame once this one's turn has come), finish, and wait until ``emitted()`` holds group 1 whole
    or a group was skipped; then stop ``t``."""
    for i in range(start, len(frames)):
        deadline = time.monotonic() + 30
        while t.frames_encoded("video-360p") < i - first_g1 - 10 and not skipped and time.monotonic() < deadline:
            time.sleep(0.005)
        t.push(frames[i])
    t.finish()
    g1 = [f for f in frames if f.group == 1]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not skipped:
        with lock:
            if sum(f.group == 1 for f in emitted()) >= len(g1):
                break
        time.sleep(0.02)
    t.close()
    t.join()


def test_a_rung_started_mid_group_live_delivers_that_group_whole(source):
    """Not lossless, the default rung queue (15 frames): the first viewer of a rung arrives 40
    frames into a group. Its catch-up burst fills the rung's queue; the live frames right behind
    it must wait for that burst to drain, not find the queue full and cut the group the viewer
    waits for (they did: the first segment of every rung started mid-group was lost)."""
    info, frames = source
    first_g1 = next(i for i, f in enumerate(frames) if f.group == 1)
    mid = first_g1 + 40
    out: dict[str, list[Frame]] = {}
    skipped = []
    lock = threading.Lock()

    def emit(track, frame):
        with lock:
            out.setdefault(track, []).append(frame)

    t = Transcoder("live/test", info, parse_ladder("360p"), emit, skip=lambda tr, g: skipped.append(g))
    for f in frames[:mid]:
        t.push(f)
    t.set_active("video-360p", True)
    for f in frames[mid:mid + 10]:  # live frames already on their way behind the catch-up burst
        t.push(f)
    push_live_then_wait_for_group_1(t, frames, mid + 10, first_g1, skipped, lock, lambda: out.get("video-360p", []))
    assert skipped == []
    got = [f for f in out["video-360p"] if f.group == 1]
    assert len(got) == sum(f.group == 1 for f in frames) and got[0].index == 0 and got[0].keyframe


def test_source_groups_the_decoder_drops_are_skipped_by_the_rungs_and_said_so(source):
    """Not lossless, a source faster than the decoder (every frame pushed at once into a decode
    queue of 20): the groups dropped before the decoder are, for each watched rung, either whole
    or signalled as skipped after what of them went out, and counted in the rung's skipped
    groups (rtmpq_transcode_skipped_groups_total). Before, the rung just stopped mid-group and
    went on at a later one: subscribers got a group cut short, or none, with no word."""
    info, frames = source
    events = []
    lock = threading.Lock()

    def emit(track, frame):
        with lock:
            events.append(("frame", frame.group, frame.index, frame.keyframe))

    def skip(track, group):
        with lock:
            events.append(("skip", group))

    t = Transcoder("live/test", info, parse_ladder("360p"), emit, skip=skip, decode_queue_frames=20,
                   rung_queue_frames=len(frames))
    t.set_active("video-360p", True)
    for f in frames:
        t.push(f)
    t.finish()
    sizes = {g: sum(f.group == g for f in frames) for g in {f.group for f in frames}}

    def settled() -> bool:
        with lock:
            return all(("skip", g) in events or sum(e[:2] == ("frame", g) for e in events) == n
                       for g, n in sizes.items())

    deadline = time.monotonic() + 60
    while not settled() and time.monotonic() < deadline:
        time.sleep(0.02)
    t.close()
    t.join()
    assert t.stats.input_skipped_groups >= 1
    skipped = [e[1] for e in events if e[0] == "skip"]
    assert skipped and len(skipped) == len(set(skipped)) == t.stats.rungs["video-360p"].skipped_groups
    for g, n in sizes.items():
        got = [e for e in events if e[:2] == ("frame", g)]
        if g in skipped:  # what went out of it came first, from its IDR
            assert all(events.index(e) < events.index(("skip", g)) for e in got)
            assert [e[2] for e in got] == list(range(len(got))) and (not got or got[0][3])
        else:
            assert len(got) == n and got[0][2] == 0 and got[0][3]


def test_a_corrupt_group_recovers_at_the_next_one(source, caplog):
    info, frames = source
    bad = []
    for f in frames:
        if f.group == 1 and f.index in (0, 1):
            f = Frame(f.track, f.group, f.index, f.dts, f.pts, f.keyframe, b"\x00\x00\x00\x05\x65\xff\xff\xff\xff" * 3)
        bad.append(f)
    t, out = run(info, bad, parse_ladder("360p"), ["video-360p"], activate_after=0)
    got = out.get("video-360p", [])
    groups = {f.group for f in got}
    assert 0 in groups and max(f.group for f in frames) in groups
    for g in groups:
        first = min((f for f in got if f.group == g), key=lambda f: f.index)
        assert first.index == 0 and first.keyframe


def test_a_codec_the_decoder_cannot_open_is_logged_with_the_broadcast(source, caplog):
    info, frames = source
    broken = TrackInfo(info.name, info.kind, "vvc1.1.L93", b"\x01\x02", width=1280, height=720, alt_group=1)
    out = {}
    t = Transcoder("live/broken-cam", broken, parse_ladder("360p"), lambda tr, f: out.setdefault(tr, []).append(f),
                   lossless=True)
    t.set_active("video-360p", True)
    for f in frames[:70]:
        t.push(f)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and "live/broken-cam" not in caplog.text:
        time.sleep(0.05)
    assert "live/broken-cam video: no decoder for codec 'vvc1.1.L93'" in caplog.text
    assert not out  # nothing goes out for a source that cannot be decoded
    t.reconfigure(info)  # a good configuration: rungs come back at the next group
    for f in frames[70:]:
        t.push(f)
    t.finish()
    deadline = time.monotonic() + 30
    while not any(f.group >= 2 for f in out.get("video-360p", [])) and time.monotonic() < deadline:
        time.sleep(0.05)
    t.close()
    t.join()
    got = out.get("video-360p", [])
    assert any(f.group >= 2 for f in got)
    for g in {f.group for f in got}:
        assert min((f for f in got if f.group == g), key=lambda f: f.index).keyframe


def test_a_portrait_source_gets_rungs_by_its_short_side():
    """A phone's 720x1280 picture: "480p" is 480x854 (the short side, as for a landscape source,
    with the pixels its bitrate is meant for), and a rung is made only below the short side.
    Before, rungs went by height: 270x480 at 480p's 1200 kbit/s, 136x240 for 240p, and a
    1080p rung (608x1080) of a 720-wide picture."""
    portrait = TrackInfo("video", "video", "avc1.64001f", b"", width=720, height=1280, framerate=FPS, alt_group=1)
    t = Transcoder("live/phone", portrait, parse_ladder("1080p,720p,480p,240p"), lambda tr, f: None)
    try:
        assert [(r.name, r.width, r.height) for r in t.tracks] == [("video-480p", 480, 854),
                                                                   ("video-240p", 240, 426)]
    finally:
        t.close()
        t.join()
    assert Rung("480p", 480, 1).size_for(1280, 720) == (854, 480)  # landscape: unchanged


def test_encoder_settings_are_live():
    enc = RungEncoder(Rung("360p", 360, 700_000), 640, 360, 30, 1000)
    assert enc.ctx.max_b_frames == 0 and enc.ctx.gop_size >= 300
    assert enc.avcc[0] == 1 and enc.codec.startswith("avc1.")


def test_a_source_that_changes_size_and_avcc_keeps_its_rungs(source):
    """A publisher comes back at another size (a new avcC): the rung goes on at the next group,
    at its own size, its first frame an IDR."""
    info, frames = source
    small_info, small = make_source(seconds=2.0, width=960, height=540)
    later = [Frame(f.track, f.group + 10, f.index, f.dts + 10_000, f.pts + 10_000, f.keyframe, f.payload)
             for f in small]
    out: dict[str, list[Frame]] = {}
    t = Transcoder("live/resize", info, parse_ladder("360p"), lambda tr, f: out.setdefault(tr, []).append(f),
                   lossless=True)
    t.set_active("video-360p", True)
    for f in frames:
        t.push(f)
    t.reconfigure(small_info)
    for f in later:
        t.push(f)
    t.finish()
    deadline = time.monotonic() + 60
    while len(out.get("video-360p", [])) < len(frames) + len(later) and time.monotonic() < deadline:
        time.sleep(0.05)
    t.close()
    t.join()
    got = out["video-360p"]
    assert len(got) == len(frames) + len(later)
    first_new = next(f for f in got if f.group == 10)
    assert first_new.index == 0 and first_new.keyframe and first_new.pts == later[0].pts
    pictures = decode_all(t.tracks[0], got)
    assert {(p.width, p.height) for p in pictures} == {(640, 360)}


def test_request_update_and_publish_forward_on_the_wire():
    from rtmpq.moq import wire

    msg = wire.RequestUpdate(4, 2, {wire.PARAM_FORWARD: 1})
    decoded, end = wire.decode_control_message(wire.encode_control_message(msg))
    assert decoded == msg
    pub = wire.Publish(6, (b"live", b"cam"), b"video-480p", 3, {wire.PARAM_FORWARD: 0})
    decoded, _ = wire.decode_control_message(wire.encode_control_message(pub))
    assert decoded.params[wire.PARAM_FORWARD] == 0


async def test_only_rungs_are_logged_as_watched_and_stopped(caplog):
    """Demand comes for every track of a broadcast (the relay's subscribers: catalog, audio, the
    source video); only a rung's is the transcoder's to start and stop. Before, an operator read
    "audio: watched; encoding" and "catalog: nobody watches; stopped" for nothing being encoded."""
    from rtmpq.config import TranscodeConfig
    from rtmpq.nodes.transcode import BroadcastTranscoder

    caplog.set_level("INFO", "rtmpq.transcode")
    bt = BroadcastTranscoder("live/x", parse_ladder("360p"), TranscodeConfig(idle_stop=0.0),
                             lambda tracks: None, lambda frame: None)
    for track in ("catalog", "audio", "video", "video-360p"):
        bt.set_wanted(track, True)
    assert bt.wanted == {"video-360p"}
    logged = [r.getMessage() for r in caplog.records]
    assert len(logged) == 1 and logged[0].endswith(" video-360p: watched; encoding"), logged
    bt.close()


async def test_the_rungs_of_a_source_track_that_left_are_withdrawn_and_come_back_with_it(source):
    """A multitrack publisher back without ``video-1``: its Transcoder stops and its rungs are
    withdrawn (``rtmpq transcode`` sends PUBLISH_DONE); when ``video-1`` comes back, its rungs are
    made and listed again. The rungs of ``video`` are untouched. Each rung names its source."""
    from dataclasses import replace

    from rtmpq.config import TranscodeConfig
    from rtmpq.media.catalog import Catalog
    from rtmpq.nodes.transcode import BroadcastTranscoder

    info, _ = source
    second = replace(info, name="video-1")
    listed, withdrawn = [], []
    bt = BroadcastTranscoder("live/mt", parse_ladder("360p"), TranscodeConfig(idle_stop=0.0),
                             lambda tracks: listed.append([(t.name, t.source) for t in tracks]), lambda frame: None,
                             withdraw=withdrawn.append)
    try:
        both = Catalog("live/mt", (info, second))
        bt.on_catalog(both)
        assert sorted(listed) == [[("video-1-360p", "video-1")], [("video-360p", "video")]]
        bt.set_wanted("video-1-360p", True)
        bt.on_catalog(Catalog("live/mt", (info,)))
        assert withdrawn == [["video-1-360p"]] and set(bt.transcoders) == {"video"}
        assert bt.wanted == set() and set(bt.rung_source) == {"video-360p"}
        bt.on_catalog(both)  # video-1 is back
        assert listed[-1] == [("video-1-360p", "video-1")] and set(bt.transcoders) == {"video", "video-1"}
    finally:
        bt.close()


async def test_the_decode_queue_setting_reaches_a_broadcast_s_decoder(source):
    """[transcode] decode_queue_frames (20 here; 240 by default) bounds the source frames queued
    before a broadcast's decoder: fed faster than it decodes (a 6 s source, 180 frames, at once),
    it drops source groups, counted (rtmpq_transcode_skipped_groups_total), where the default
    queue would take them all. Set in the environment, as a user sets it."""
    from rtmpq.config import load_config
    from rtmpq.media.catalog import Catalog
    from rtmpq.nodes.transcode import BroadcastTranscoder

    info, frames = source
    config = load_config(env={"RTMPQ_TRANSCODE_DECODE_QUEUE_FRAMES": "20"}).transcode
    bt = BroadcastTranscoder("live/q", parse_ladder("360p"), config, lambda tracks: None, lambda frame: None)
    try:
        bt.on_catalog(Catalog("live/q", (info,)))
        bt.set_wanted("video-360p", True)
        for f in frames:
            bt.on_frame(f)
        assert len(frames) < load_config(env={}).transcode.decode_queue_frames
        assert bt.transcoders["video"].stats.input_skipped_groups >= 1
    finally:
        bt.close()


class RungFrames:
    """What one rung emits, collected from its thread; ``wait(n)`` polls until ``n`` frames came."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.lock = threading.Lock()

    def emit(self, track, frame) -> None:
        with self.lock:
            self.frames.append(frame)

    def wait(self, count: int, deadline: float = 60.0) -> list[Frame]:
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            with self.lock:
                if len(self.frames) >= count:
                    break
            time.sleep(0.02)
        with self.lock:
            return list(self.frames)


def test_a_rung_no_longer_watched_finishes_its_group_and_never_makes_one_twice():
    """Its last viewer leaves mid-group: the rung finishes that group (the decoder's held-back
    pictures included), then stops. Watched again mid-way through a later group, it starts there
    from the IDR; left and watched again within one group, it just goes on. Before, it stopped at
    once (its last group cut short, with no skip said) and, watched again in the group it had
    stopped in, made that group again from object 0: the relay took the repeated object ids for a
    protocol error and closed the sessions of the rung's subscribers."""
    info, frames = make_source(seconds=6, width=640, height=360)
    groups = {g: [f for f in frames if f.group == g] for g in (0, 1, 2)}
    rung = RungFrames()
    t = Transcoder("live/test", info, parse_ladder("180p"), rung.emit, lossless=True)
    steps = [True, groups[0][:30], False, groups[0][30:] + groups[1][:20], True,
             groups[1][20:40], False, groups[1][40:50], True, groups[1][50:] + groups[2]]
    for step in steps:
        if isinstance(step, bool):
            t.set_active("video-180p", step)
        else:
            for f in step:
                t.push(f)
    t.finish()
    out = rung.wait(len(frames))
    t.close()
    t.join()
    got = {g: [(f.index, f.pts) for f in out if f.group == g] for g in groups}
    for g, source in groups.items():
        assert [i for i, _ in got[g]] == list(range(len(source))), (g, [i for i, _ in got[g]])
        assert sorted(p for _, p in got[g]) == sorted(f.pts for f in source)
    assert len(out) == len(frames)


def test_a_rung_asked_for_while_the_publisher_is_away_gets_the_last_group_whole():
    """The publisher left (``finish``) mid-way through nobody watching the rung; a viewer asks for
    it in the gap: it is made from the last group's IDR, every picture of it (the catch-up
    decoder is flushed: the group is over), and the returning publish's group follows from a
    fresh decoder. Before, the catch-up decoder kept the last 2 pictures until the publisher
    came back."""
    info, frames = make_source(seconds=4, width=640, height=360)
    rung = RungFrames()
    t = Transcoder("live/test", info, parse_ladder("180p"), rung.emit, lossless=True)
    last = [f for f in frames if f.group == 0]
    for f in last:
        t.push(f)
    t.finish()
    t.set_active("video-180p", True)
    assert [f.index for f in rung.wait(len(last), 30)] == list(range(len(last)))
    for f in frames[len(last):]:  # back: the next group
        t.push(f)
    t.finish()
    out = rung.wait(len(frames), 30)
    t.close()
    t.join()
    assert [(f.group, f.index) for f in out] == [(f.group, i) for g in (0, 1)
                                                  for i, f in enumerate(x for x in frames if x.group == g)]


def test_a_watched_rung_whose_source_joins_with_a_groups_backlog_delivers_that_group_whole(source):
    """Not lossless, the default rung queue (15 frames), the rung watched before any source frame
    came (a transcoder node or `up`'s isolated child starting, or restarted, under viewers that
    were there already): its source subscription starts at the relay's newest cached group, from
    its IDR, so the first 40 frames of that group come at once, then the rest live. That backlog
    waits for the rung's encoder like a catch-up burst; before, it found the queue full while the
    encoder was still opening and the group was cut short (a segment of a few pictures in the rung's
    playlist at every child start on a loaded host)."""
    info, frames = source
    first_g1 = next(i for i, f in enumerate(frames) if f.group == 1)
    backlog = first_g1 + 40
    out: list[Frame] = []
    skipped = []
    lock = threading.Lock()

    def emit(track, frame):
        with lock:
            out.append(frame)

    t = Transcoder("live/test", info, parse_ladder("360p"), emit, skip=lambda tr, g: skipped.append(g))
    t.set_active("video-360p", True)
    for f in frames[first_g1:backlog]:  # the joined group's cached frames, as fast as they arrive
        t.push(f)
    push_live_then_wait_for_group_1(t, frames, backlog, first_g1, skipped, lock, lambda: out)
    assert skipped == []
    got = [f for f in out if f.group == 1]
    assert len(got) == sum(f.group == 1 for f in frames) and got[0].index == 0 and got[0].keyframe


def test_the_tail_of_a_group_that_comes_after_the_next_group_began_is_left_out():
    """Over MoQ each source group has its own QUIC stream and a relay sends the newer one first:
    under load the last frame of group 1 arrives after the first of group 2. Fed to the decoder
    after group 2's key frame it broke group 2: h264 gave 18 of its 30 pictures, silently (dav1d,
    an AV1 source, refused it and the rung's group 2 was one picture: `rtmpq up --ladder 360p`,
    pyav_publisher.py --video libsvtav1 854x480, a 360p viewer on a busy host)."""
    info, frames = make_source(seconds=4, gop=30, width=320, height=240, bframes=0)
    late = next(i for i, f in enumerate(frames) if f.group == 2 and f.index == 0) - 1
    frames[late], frames[late + 1] = frames[late + 1], frames[late]
    t, out = run(info, frames, parse_ladder("180p"), ["video-180p"])
    per_group = {g: sum(f.group == g for f in out["video-180p"]) for g in range(4)}
    assert per_group == {0: 30, 1: 29, 2: 30, 3: 30}  # group 1 ends a picture early; group 2 whole
    assert t.stats.late_frames == 1 and t.stats.decode_errors == 0


async def test_the_end_of_a_group_whose_tail_came_late_does_not_flush_the_next_one():
    """Over MoQ: group 1's last frame and the end of its stream come after group 2 began. That
    end was taken for the end of the newest group (the publisher gone) and flushed the decoder:
    the rung's group 2 was the one picture decoded by then, the rest of it never decoded, with
    no word (seen with an AV1 source: a 360p segment of 1 picture after each late group tail)."""
    from rtmpq.config import TranscodeConfig
    from rtmpq.media.catalog import Catalog
    from rtmpq.nodes.transcode import BroadcastTranscoder

    info, frames = make_source(seconds=4, gop=30, width=320, height=240, bframes=0)
    late = next(i for i, f in enumerate(frames) if f.group == 2 and f.index == 0) - 1
    frames[late], frames[late + 1] = frames[late + 1], frames[late]
    got: list[Frame] = []
    # a rung queue deep enough for the whole source: on a busy host no group is cut for being behind
    bt = BroadcastTranscoder("live/late", parse_ladder("180p"), TranscodeConfig(rung_queue_frames=len(frames)),
                             lambda tracks: None, got.append)
    try:
        bt.on_catalog(Catalog("live/late", (info,)))
        bt.set_wanted("video-180p", True)
        for i, f in enumerate(frames):
            bt.on_frame(f)
            if i == late + 1:
                bt.group_ended("video", 1)  # group 1's stream ends after its late last frame
            await asyncio.sleep(0)  # the loop runs between frames, as between a live source's frames
        bt.group_ended("video", 3)
        await until(lambda: sum(f.group == 3 for f in got) == 30, 20, "the rung's last group")
        assert {g: sum(f.group == g for f in got) for g in range(4)} == {0: 30, 1: 29, 2: 30, 3: 30}
    finally:
        bt.close()


async def test_the_rungs_a_source_is_too_small_for_are_named_in_the_log(caplog):
    """A 640x480 publish on `up --ladder 720p,480p,360p`: the log listed "rungs video-360p
    480x360" and said nothing of 720p and 480p, which the operator configured (and a player
    never sees)."""
    from rtmpq.config import TranscodeConfig
    from rtmpq.media.catalog import Catalog
    from rtmpq.nodes.transcode import BroadcastTranscoder

    info, _ = make_source(seconds=0.2, width=640, height=480, bframes=0)
    caplog.set_level("INFO", "rtmpq.transcode")
    bt = BroadcastTranscoder("live/small", parse_ladder("720p,480p,360p"), TranscodeConfig(), lambda tracks: None,
                             lambda frame: None)
    try:
        bt.on_catalog(Catalog("live/small", (info,)))
        assert any(r.getMessage().endswith(" video: rungs video-360p 480x360 (made when watched); 720p, 480p left "
                                           "out: not smaller than the source (640x480)") for r in caplog.records), \
            [r.getMessage() for r in caplog.records]
    finally:
        bt.close()


async def test_a_publisher_back_at_another_frame_rate_gets_rungs_of_that_frame_rate():
    """The same 1280x720 publish back at 60 fps instead of 30: the rungs' encoders kept the old
    rate (`up --ladder 720p,480p,360p`: the 360p rung's measured BANDWIDTH 1.74 Mbit/s for its
    700 kbit/s) and the multivariant and catalog said FRAME-RATE=30.000 for them."""
    from dataclasses import replace

    from rtmpq.config import TranscodeConfig
    from rtmpq.media.catalog import Catalog
    from rtmpq.nodes.transcode import BroadcastTranscoder

    info, _ = make_source(seconds=0.2, width=320, height=240, bframes=0)
    listed = []
    bt = BroadcastTranscoder("live/fps", parse_ladder("180p"), TranscodeConfig(), listed.extend, lambda frame: None)
    try:
        bt.on_catalog(Catalog("live/fps", (info,)))
        assert [(r.name, r.framerate) for r in listed] == [("video-180p", 30)]
        bt.on_catalog(Catalog("live/fps", (replace(info, framerate=60.0),)))
        assert [(r.name, r.framerate) for r in listed[1:]] == [("video-180p", 60.0)]
        assert bt.transcoders["video"].workers["video-180p"].encoder.ctx.framerate == 60
    finally:
        bt.close()
