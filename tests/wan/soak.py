"""Soak: an `rtmpq up` under churn for N minutes, sampled every 30 s.

    python -m tests.wan.soak --minutes 10 [--interval 30] [--backend aioquic] [--write-docs docs/reliability.md]

In one process with the node (so it can count its tasks and QUIC streams):
- two ffmpeg publishers (640x360, 1 s GOPs), each publishing 40-80 s, then reconnecting under the
  same name (the broadcast outlives them by the grace period);
- MoQ subscribers joining for 15-45 s then leaving, each through its own rtmpq.netem proxy whose
  impairment rotates every minute (clean, 2 % loss, bursty loss, reordering, 1 Mbit/s link);
- HLS players (ffmpeg reading the multivariant playlist for 8-15 s) coming and going.
Every sample: RSS, open file descriptors, asyncio tasks, QUIC streams and bytes queued in QUIC
for all MoQ sessions, live subscribers. Every subscriber's objects are checked as they arrive:
in order within a group, video groups start on a keyframe, no group id skipped without a
SkippedGroup signal. Writes var/soak/samples.csv, docs/soak.png and a table to the docs.
"""

import argparse
import asyncio
import csv
import os
import random
import sys
import time
from pathlib import Path

from rtmpq.config import Config, HttpConfig, IngestConfig, MoqConfig, PublishConfig
from rtmpq.media.catalog import Catalog
from rtmpq.moq.client import SkippedGroup, subscribe_broadcast
from rtmpq.moq.transport import connect_moq
from rtmpq.netem import Impairment, ImpairmentProxy
from rtmpq.nodes.up import UpNode

ROOT = Path(__file__).resolve().parents[2]
ROTATION = [
    ("clean", Impairment(delay_ms=10)),
    ("loss 2%", Impairment(delay_ms=25, loss=0.02)),
    ("bursty", Impairment(delay_ms=25, burst_p=0.01, burst_r=0.3)),
    ("reorder", Impairment(delay_ms=25, jitter_ms=5, reorder=0.05, reorder_ms=30)),
    ("1 Mbit/s", Impairment(delay_ms=25, rate_bps=1e6, queue_bytes=32_000)),
]


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def quic_streams(node: UpNode) -> int:
    n = 0
    for conn in list(node.moq.connections):
        quic = conn._quic
        streams = getattr(quic, "_streams", None)  # aioquic
        if streams is None:
            streams = getattr(conn, "_writer", None).streams  # aiopquic: the streams we write
        n += len(streams)
    return n


class Soak:
    def __init__(self, node: UpNode, minutes: float, interval: float, seed: int = 1) -> None:
        self.node = node
        self.end = time.monotonic() + minutes * 60
        self.interval = interval
        self.rng = random.Random(seed)
        self.samples: list[dict] = []
        self.violations: list[str] = []
        self.counts = {"publishes": 0, "subscribers": 0, "players": 0, "objects": 0, "skipped_groups": 0,
                       "player_failures": 0, "subscriber_errors": 0}
        self.live_subscribers = 0
        self.errors: dict[str, int] = {}
        self.impairment = ROTATION[0]
        self.t0 = time.monotonic()

    def running(self) -> bool:
        return time.monotonic() < self.end

    async def publisher(self, name: str) -> None:
        port = self.node.rtmp.address[1]
        while self.running():
            seconds = self.rng.uniform(40, 80)
            proc = await asyncio.create_subprocess_exec(
                "ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-re",
                "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30", "-f", "lavfi", "-i", "sine=frequency=300",
                "-t", f"{min(seconds, max(self.end - time.monotonic(), 1)):.1f}", "-c:v", "libx264",
                "-preset", "ultrafast", "-tune", "zerolatency", "-g", "30", "-sc_threshold", "0", "-b:v", "800k",
                "-c:a", "aac", "-b:a", "64k", "-f", "flv", f"rtmp://127.0.0.1:{port}/live/{name}",
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
            self.counts["publishes"] += 1
            await proc.wait()
            await asyncio.sleep(self.rng.uniform(0.5, 3))  # reconnect within the grace period

    async def subscriber(self, name: str) -> None:
        label, imp = self.impairment
        joined = time.monotonic() - self.t0
        stay = self.rng.uniform(15, 45)
        self.counts["subscribers"] += 1
        self.live_subscribers += 1
        last: dict[tuple[str, int], int] = {}
        groups: dict[str, int] = {}
        skipped: set[tuple[str, int]] = set()
        try:
            async with ImpairmentProxy(target=self.node.moq_address, up=imp, down=imp,
                                       seed=self.rng.randrange(1 << 30)) as proxy:
                async with connect_moq("127.0.0.1", proxy.port, insecure=True, timeout=20,
                                       backend=self.node.config.moq.backend) as conn:
                    async with asyncio.timeout(stay):
                        async for item in subscribe_broadcast(conn, f"live/{name}", delivery_timeout_ms=1500,
                                                              wait=10):
                            if isinstance(item, SkippedGroup):
                                skipped.add((item.track, item.group))
                                self.counts["skipped_groups"] += 1
                                continue
                            if isinstance(item, Catalog):
                                continue
                            self.counts["objects"] += 1
                            key = (item.track, item.group)
                            expected = last.get(key, -1) + 1
                            if item.index != expected and key not in skipped:
                                self.violations.append(f"{label}: {item.track} group {item.group} object "
                                                       f"{item.index} after {expected - 1}")
                            last[key] = item.index
                            if item.track == "video" and item.index == 0 and not item.keyframe:
                                self.violations.append(f"{label}: video group {item.group} starts on a non-IDR")
                            prev = groups.get(item.track)
                            if item.index == 0 and prev is not None and item.group > prev + 1:
                                for g in range(prev + 1, item.group):
                                    if (item.track, g) not in skipped:
                                        # a group id with no objects: must have been signalled
                                        # (publisher reconnects keep ids contiguous)
                                        self.violations.append(f"{label}: {item.track} group {g} missing, unsignalled")
                            if item.index == 0:
                                groups[item.track] = max(item.group, prev or 0)
        except TimeoutError:
            pass  # stayed as long as it meant to
        except Exception as exc:  # noqa: BLE001 - counted by kind and reported
            self.counts["subscriber_errors"] += 1
            kind = f"{type(exc).__name__}: {str(exc)[:60]}"
            self.errors[kind] = self.errors.get(kind, 0) + 1
            print(f"{time.monotonic() - self.t0:.0f} s subscriber ({label}, joined {joined:.0f} s): {kind}", flush=True)
        finally:
            self.live_subscribers -= 1

    async def player(self, name: str) -> None:
        host, port = self.node.edge.address
        self.counts["players"] += 1
        proc = await asyncio.create_subprocess_exec(
            "ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-i",
            f"http://127.0.0.1:{port}/live/{name}/index.m3u8", "-t", f"{self.rng.uniform(8, 15):.1f}",
            "-f", "null", "-", stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        try:
            async with asyncio.timeout(40):
                rc = await proc.wait()
        except TimeoutError:
            proc.kill()
            rc = -1
        if rc != 0:
            self.counts["player_failures"] += 1

    async def churn(self, kind, every: tuple[float, float]) -> None:
        tasks = set()
        while self.running():
            t = asyncio.create_task(kind(self.rng.choice(["soak-a", "soak-b"])))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
            await asyncio.sleep(self.rng.uniform(*every))
        await asyncio.gather(*tasks, return_exceptions=True)

    async def rotate(self) -> None:
        i = 0
        while self.running():
            await asyncio.sleep(60)
            i += 1
            self.impairment = ROTATION[i % len(ROTATION)]

    def sample(self) -> None:
        s = {"t_s": round(time.monotonic() - self.t0), "rss_mb": round(rss_bytes() / 1e6, 1),
             "fds": len(os.listdir("/proc/self/fd")), "tasks": len(asyncio.all_tasks()),
             "quic_streams": quic_streams(self.node),
             "queued_kb": round(sum(c.total_queued_bytes() for c in list(self.node.moq.connections)) / 1e3, 1),
             "moq_sessions": len(self.node.moq.connections), "subscribers": self.live_subscribers,
             "impairment": self.impairment[0]}
        self.samples.append(s)
        print(s, flush=True)

    async def sampler(self) -> None:
        while self.running():
            self.sample()
            await asyncio.sleep(self.interval)
        self.sample()

    async def run(self) -> None:
        publishers = [asyncio.create_task(self.publisher(n)) for n in ("soak-a", "soak-b")]
        for name in ("live/soak-a", "live/soak-b"):  # churn starts once both are live
            await self.node.registry.wait_for(name, 30)
        await asyncio.gather(*publishers, self.sampler(), self.rotate(),
                             self.churn(self.subscriber, (2, 6)), self.churn(self.player, (6, 14)))


def plot(samples: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t_s"] / 60 for s in samples]
    fig, axes = plt.subplots(5, 1, figsize=(8, 9), sharex=True)
    for ax, key, label in zip(axes, ["rss_mb", "fds", "tasks", "quic_streams", "queued_kb"],
                              ["RSS (MB)", "open fds", "asyncio tasks", "QUIC streams", "QUIC queued (kB)"]):
        ax.plot(t, [s[key] for s in samples], marker=".")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("minutes")
    fig.suptitle("rtmpq up under churn (make soak)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)


def growth(samples: list[dict], key: str, warmup_s: float) -> tuple[float, float, float]:
    """(median of the first half after warm-up, median of the second half, max) of one figure."""
    after = [s[key] for s in samples if s["t_s"] >= warmup_s]
    if len(after) < 2:
        return (0.0, 0.0, 0.0)
    half = len(after) // 2
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    return (med(after[:half]), med(after[half:]), max(after))


def report(soak: Soak, minutes: float, warmup_s: float, command: str) -> str:
    rows = ["| figure | first half after warm-up (median) | second half (median) | max |", "|---|---|---|---|"]
    for key in ("rss_mb", "fds", "tasks", "quic_streams", "queued_kb"):
        a, b, m = growth(soak.samples, key, warmup_s)
        rows.append(f"| {key} | {a:g} | {b:g} | {m:g} |")
    c = soak.counts
    return (f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} with `{command}` "
            f"({minutes:g} minutes, samples every {soak.interval:g} s, warm-up {warmup_s:g} s, backend "
            f"{soak.node.config.moq.backend}): {c['publishes']} publishes (reconnects included), "
            f"{c['subscribers']} MoQ subscribers ({c['subscriber_errors']} ended by an error), {c['players']} HLS "
            f"players ({c['player_failures']} exited non-zero), {c['objects']} objects checked, "
            f"{c['skipped_groups']} skipped groups signalled, **{len(soak.violations)} scoreboard violations**"
            + (f" (first: {soak.violations[0]})" if soak.violations else "") + ".\n"
            + "".join(f"\n- subscriber ended by `{k}`: {n}" for k, n in sorted(soak.errors.items()))
            + "\n\n" + "\n".join(rows)
            + "\n\n![soak](soak.png)\n")


async def amain(args) -> Soak:
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="rtmpq-soak-"))
    config = Config(rtmp=IngestConfig(host="127.0.0.1", port=0),
                    moq=MoqConfig(host="127.0.0.1", port=0, state_dir=tmp / "state", backend=args.backend),
                    http=HttpConfig(host="127.0.0.1", port=0), publish=PublishConfig(grace_period=10))
    node = UpNode(config)
    await node.start()
    soak = Soak(node, args.minutes, args.interval)
    try:
        await soak.run()
    finally:
        await node.close()
    return soak


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--interval", type=float, default=30)
    ap.add_argument("--backend", default="aioquic")
    ap.add_argument("--warmup", type=float, default=90)
    ap.add_argument("--write-docs")
    args = ap.parse_args()
    soak = asyncio.run(amain(args))
    out = ROOT / "var/soak"
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "samples.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(soak.samples[0]))
        w.writeheader()
        w.writerows(soak.samples)
    text = report(soak, args.minutes, args.warmup, f"make soak MINUTES={args.minutes:g}")
    print(text)
    for v in soak.violations[:20]:
        print("violation:", v)
    if args.write_docs:
        doc = Path(args.write_docs)
        plot(soak.samples, doc.parent / "soak.png")
        body = doc.read_text() if doc.exists() else "# Reliability\n"
        start, end = "<!-- soak:start -->", "<!-- soak:end -->"
        block = f"{start}\n{text}{end}"
        body = (body[:body.index(start)] + block + body[body.index(end) + len(end):]) if start in body \
            else body + "\n" + block + "\n"
        doc.write_text(body)
    return 0 if not soak.violations else 1


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
