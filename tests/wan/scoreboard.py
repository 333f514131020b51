"""WAN profiles through the impairment proxy, each judged object by object.

    python -m tests.wan.scoreboard [--backends aioquic,aiopquic] [--profiles a,b] [--seconds 20]
                                   [--write-docs docs/reliability.md]      (make wan)

A real 720p stream (x264, ~2.5 Mbit/s, 1 s GOPs, AAC) is encoded once to an FLV file, which is
also the reference: each profile publishes it in real time over RTMP to an in-process `rtmpq up`,
and one MoQ subscriber (same QUIC backend as the node) reads it through rtmpq.netem with the
profile's impairment and its delivery budget. The scoreboard checks every object the subscriber got
against the reference:

- complete: the object is a reference packet, same timestamps, keyframe flag and size;
- in order within its group: object ids arrive 0, 1, 2, ... per group;
- groups start on an IDR: object 0 of every video group is a keyframe;
- skipped groups signalled: any reference packet missing between the first and the last object
  received lies in a group the relay reset (the subscriber saw SkippedGroup), never silently;
- latency within budget: arrival minus ingest time at most budget + RTT + bottleneck queueing +
  0.3 s slack (tolerance: 1 % of objects, for a loaded machine);
- arrived share: delivered objects / reference objects from the subscriber's first group to the
  end, at least the profile's stated minimum (a subscriber that got nothing cannot pass).
"""

import argparse
import asyncio
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from rtmpq.config import Config, HttpConfig, IngestConfig, MoqConfig, PublishConfig
from rtmpq.media.catalog import Catalog
from rtmpq.moq.client import SkippedGroup, subscribe_broadcast
from rtmpq.moq.transport import connect_moq
from rtmpq.netem import Impairment, ImpairmentProxy
from rtmpq.nodes.up import UpNode

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Profile:
    name: str
    describe: str
    up: Impairment
    down: Impairment
    budget: float  # the subscriber's delivery timeout (s)
    min_share: float  # objects that must arrive, of those published after joining
    min_audio_share: float = 0.0
    blackhole: tuple[float, float] | None = None  # (at s, for s) after the subscriber's first object

    @property
    def rtt(self) -> float:
        return (self.up.delay_ms + self.down.delay_ms + self.up.jitter_ms + self.down.jitter_ms) / 1000

    @property
    def queueing(self) -> float:
        return self.down.queue_bytes * 8 / self.down.rate_bps if self.down.rate_bps else 0.0


def _both(**kw) -> tuple[Impairment, Impairment]:
    down = dict(kw)
    up = {k: v for k, v in kw.items() if k not in ("rate_bps", "queue_bytes")}
    return Impairment(**up), Impairment(**down)


PROFILES = {p.name: p for p in [
    Profile("15ms-10mbit", "15 ms RTT, 10 Mbit/s down", *_both(delay_ms=7.5, rate_bps=10e6, queue_bytes=64_000),
            budget=1.0, min_share=0.99),
    Profile("750ms-rtt", "750 ms RTT", *_both(delay_ms=375), budget=2.0, min_share=0.97),
    Profile("loss-2pct", "2 % random loss each way, 50 ms RTT", *_both(delay_ms=25, loss=0.02),
            budget=2.0, min_share=0.95),
    Profile("loss-30pct", "30 % random loss each way, 50 ms RTT", *_both(delay_ms=25, loss=0.30),
            budget=2.0, min_share=0.05),
    Profile("bursty", "Gilbert-Elliott loss (p=1 %, r=30 %: ~3 %, bursts of ~3), 50 ms RTT",
            *_both(delay_ms=25, burst_p=0.01, burst_r=0.3), budget=2.0, min_share=0.90),
    Profile("reorder", "5 % of packets 30 ms late, 50 ms RTT, 5 ms jitter",
            *_both(delay_ms=25, jitter_ms=5, reorder=0.05, reorder_ms=30), budget=1.0, min_share=0.98),
    Profile("blackhole-5s", "5 s blackhole both ways, then recovery; 50 ms RTT", *_both(delay_ms=25),
            budget=2.0, min_share=0.55, blackhole=(5.0, 5.0)),
    Profile("below-bitrate", "1.5 Mbit/s down for a ~2.6 Mbit/s stream, 32 kB queue, 50 ms RTT",
            *_both(delay_ms=25, rate_bps=1.5e6, queue_bytes=32_000), budget=1.0, min_share=0.3,
            min_audio_share=0.9),
]}


def encode_720p(path: Path, seconds: float) -> Path:
    """The reference: 1280x720 30 fps with noise (so it really is ~2.5 Mbit/s), 1 s GOPs, AAC."""
    if path.exists() and path.stat().st_mtime > 0 and path.with_suffix(".seconds").exists() \
            and float(path.with_suffix(".seconds").read_text()) == seconds:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([
        "ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
        "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30,noise=alls=12:allf=t",
        "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", str(seconds),
        "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-bf", "0", "-g", "30",
        "-keyint_min", "30", "-sc_threshold", "0", "-b:v", "2500k", "-maxrate", "2500k", "-bufsize", "1250k",
        "-c:a", "aac", "-b:a", "128k", "-ac", "2", "-f", "flv", str(path)], check=True)
    path.with_suffix(".seconds").write_text(str(seconds))
    return path


@dataclass
class Result:
    backend: str
    profile: Profile
    objects: int = 0
    reference: int = 0
    share: float = 0.0
    audio_share: float = 0.0
    video_share: float = 0.0
    skipped: int = 0
    incomplete: int = 0
    out_of_order: int = 0
    not_idr: int = 0
    unsignalled: int = 0
    late: int = 0
    p50: float = 0.0
    p99: float = 0.0
    worst: float = 0.0
    limit: float = 0.0
    after_blackhole: int = 0
    errors: list = field(default_factory=list)

    @property
    def passed(self) -> bool:
        p = self.profile
        return (not self.errors and self.objects > 0 and self.incomplete == 0 and self.out_of_order == 0
                and self.not_idr == 0 and self.unsignalled == 0 and self.late <= 0.01 * self.objects
                and self.share >= p.min_share and self.audio_share >= p.min_audio_share
                and (p.blackhole is None or self.after_blackhole > 0))


def judge(result: Result, reference: list, got: list, skipped: list, blackhole_end: float | None) -> Result:
    """Fill ``result`` from the reference packets, the (arrival, lateness, Frame) list and skips."""
    from tests.publishers import Packet

    p = result.profile
    ref_by_track: dict[str, list] = {}
    for pk in reference:
        ref_by_track.setdefault(pk.track, []).append(pk)
    skipped_groups = {(s.track, s.group) for s in skipped}
    result.skipped = len(skipped_groups)
    result.limit = p.budget + p.rtt + p.queueing + 0.3
    lateness = sorted(lat for _, lat, _ in got)
    result.objects = len(got)
    if lateness:
        result.p50 = lateness[len(lateness) // 2]
        result.p99 = lateness[min(len(lateness) - 1, int(len(lateness) * 0.99))]
        result.worst = lateness[-1]
    result.late = sum(1 for lat in lateness if lat > result.limit)
    if blackhole_end is not None:
        result.after_blackhole = sum(1 for t, _, _ in got if t > blackhole_end)
    shares = {}
    total_ref = 0
    for track, refs in ref_by_track.items():
        mine = [f for _, _, f in got if f.track == track]
        ref_set = set(refs)
        for f in mine:
            if Packet(f.track, f.dts, f.pts, f.keyframe, f.size) not in ref_set:
                result.incomplete += 1
        groups: dict[int, list] = {}
        for f in mine:
            groups.setdefault(f.group, []).append(f)
        for g, frames in groups.items():
            if [f.index for f in frames] != list(range(len(frames))):
                result.out_of_order += 1
            if track == "video" and not frames[0].keyframe:
                result.not_idr += 1
        if not mine:
            continue
        # each reference packet from the subscriber's first one on: received, or inside a group the
        # relay said it skipped (between the groups of its received neighbours)
        by_dts = {f.dts: f for f in mine}
        first = min(by_dts)
        window = [pk for pk in refs if pk.dts >= first]
        total_ref += len(window)
        shares[track] = len(mine) / max(len(window), 1)
        prev = None
        missing_run = []
        for pk in window:
            f = by_dts.get(pk.dts)
            if f is None:
                missing_run.append(pk)
                continue
            if missing_run and prev is not None:
                covered = any((track, g) in skipped_groups for g in range(prev.group, f.group + 1))
                if prev.group == f.group or not covered:
                    result.unsignalled += len(missing_run)
            missing_run = []
            prev = f
        if missing_run and prev is not None and (track, prev.group) not in skipped_groups \
                and not any(g > prev.group for t, g in skipped_groups if t == track):
            # the tail after the last object: fine only if the stream really ended there (the relay
            # ends a broadcast's groups when the publisher leaves: at most the last group's tail)
            if len(missing_run) > 60:
                result.unsignalled += len(missing_run)
    result.reference = total_ref
    result.share = result.objects / max(total_ref, 1)
    result.video_share = shares.get("video", 0.0)
    result.audio_share = shares.get("audio", 0.0)
    return result


def node_config(tmp: Path, backend: str) -> Config:
    return Config(rtmp=IngestConfig(host="127.0.0.1", port=0),
                  moq=MoqConfig(host="127.0.0.1", port=0, state_dir=tmp / "state", backend=backend),
                  http=HttpConfig(host="127.0.0.1", port=0), publish=PublishConfig(grace_period=0))


async def run_profile(node: UpNode, profile: Profile, flv: Path, reference: list, *, seed: int = 1) -> Result:
    result = Result(node.config.moq.backend, profile)
    backend = node.config.moq.backend
    name = f"live/wan-{profile.name}"
    got, skipped = [], []
    blackhole_end = None
    async with ImpairmentProxy(target=node.moq_address, up=profile.up, down=profile.down, seed=seed) as proxy:
        publisher = await asyncio.create_subprocess_exec(
            "ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-re", "-i", str(flv), "-c", "copy",
            "-f", "flv", f"rtmp://127.0.0.1:{node.rtmp.address[1]}/{name}",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        await node.registry.wait_for(name, 15)
        loop = asyncio.get_running_loop()

        async def subscribe():
            nonlocal blackhole_end
            async with connect_moq("127.0.0.1", proxy.port, insecure=True, timeout=30, backend=backend) as conn:
                async for item in subscribe_broadcast(conn, name, delivery_timeout_ms=int(profile.budget * 1000)):
                    now = time.monotonic()
                    if isinstance(item, SkippedGroup):
                        skipped.append(item)
                    elif not isinstance(item, Catalog):
                        if not got and profile.blackhole:
                            at, seconds = profile.blackhole
                            loop.call_later(at, proxy.blackhole, seconds)
                            blackhole_end = now + at + seconds
                        got.append((now, (time.time_ns() - item.received_ns) / 1e9, item))

        try:
            await asyncio.wait_for(subscribe(), 120)
        except Exception as exc:  # noqa: BLE001 - a profile's failure is a scoreboard line, not a crash
            result.errors.append(f"{type(exc).__name__}: {exc}")
        _, err = await publisher.communicate()
        if publisher.returncode != 0:
            result.errors.append(f"publisher exited {publisher.returncode}: {err.decode()[-300:]}")
    return judge(result, reference, got, skipped, blackhole_end)


def table(results: list[Result]) -> str:
    lines = [
        "| backend | profile | budget | arrived (min) | video / audio | skipped groups | p50 / p99 / max latency (limit) | incomplete, out of order, not IDR, unsignalled, late | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        p = r.profile
        lines.append(
            f"| {r.backend} | {p.name}: {p.describe} | {p.budget:g} s | {r.share:.1%} ({p.min_share:.0%}) "
            f"| {r.video_share:.1%} / {r.audio_share:.1%} | {r.skipped} | {r.p50:.2f} / {r.p99:.2f} / {r.worst:.2f} s "
            f"({r.limit:.2f}) | {r.incomplete}, {r.out_of_order}, {r.not_idr}, {r.unsignalled}, {r.late} "
            f"| {'pass' if r.passed else 'FAIL' + (': ' + '; '.join(r.errors) if r.errors else '')} |")
    return "\n".join(lines)


async def run_all(backends: list[str], profiles: list[str], seconds: float, tmp: Path) -> list[Result]:
    from tests.publishers import probe_packets

    flv = encode_720p(ROOT / "var/wan/720p.flv", seconds)
    reference = probe_packets(str(flv))
    results = []
    for backend in backends:
        for name in profiles:
            node = UpNode(node_config(tmp / backend / name, backend))
            await node.start()
            try:
                r = await run_profile(node, PROFILES[name], flv, reference)
            finally:
                await node.close()
            print(table([r]).splitlines()[-1], flush=True)
            results.append(r)
    return results


def write_docs(path: Path, results: list[Result], command: str, seconds: float) -> None:
    text = path.read_text() if path.exists() else "# Reliability\n"
    start, end = "<!-- wan-scoreboard:start -->", "<!-- wan-scoreboard:end -->"
    bitrate = os.path.getsize(ROOT / "var/wan/720p.flv") * 8 / seconds / 1e6
    block = (f"{start}\nMeasured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} with `{command}`: "
             f"a {seconds:g} s 1280x720 30 fps stream at {bitrate:.1f} Mbit/s (video + audio), one "
             f"subscriber per profile.\n\n{table(results)}\n{end}")
    if start in text:
        text = text[:text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text += "\n" + block + "\n"
    path.write_text(text)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backends", default="aioquic,aiopquic")
    ap.add_argument("--profiles", default=",".join(PROFILES))
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--write-docs", help="put the scoreboard table into this Markdown file")
    args = ap.parse_args()
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        results = asyncio.run(run_all(args.backends.split(","), args.profiles.split(","), args.seconds, Path(tmp)))
    print(table(results))
    if args.write_docs:
        write_docs(Path(args.write_docs), results, "make wan", args.seconds)
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
