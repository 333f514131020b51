"""Soak: an `rtmpq up` under churn for N minutes, sampled every 30 s.

    python -m tests.wan.soak --minutes 10 [--interval 30] [--backend aiopquic|aioquic] [--write-docs docs/reliability.md]

In one process with the node (so it can count its tasks and QUIC streams), driving:
- two ffmpeg publishers (640x360, 1 s GOPs), each publishing 40-80 s, then reconnecting under the
  same name (the broadcast outlives them by the grace period);
- MoQ subscribers joining for 15-45 s then leaving, each through its own rtmpq.netem proxy whose
  impairment rotates every minute (clean, 2 % loss, bursty loss, reordering, 1 Mbit/s link); they
  run in a child process (``--subscribers-in-process``: in the node's, as the runs before
  2026-11-28 did, when RSS counted their QUIC stacks too);
- HLS players (ffmpeg reading the multivariant playlist for 8-15 s) coming and going.
Every sample: RSS, bytes glibc holds free in its heaps, open file descriptors, asyncio tasks,
QUIC streams and bytes queued in QUIC for all MoQ sessions, MoQ sessions, the load average. Every subscriber's objects are checked as they arrive:
in order within a group, video groups start on a keyframe, no group id skipped without a
SkippedGroup signal. Writes var/soak/samples.csv, docs/soak.png and a table to the docs.
"""

import argparse
import asyncio
import csv
import ctypes
import json
import os
import random
import sys
import time
from pathlib import Path

from rtmpq.config import Config, HttpConfig, IngestConfig, MoqConfig, PublishConfig
from rtmpq.media.catalog import Catalog
from rtmpq.moq.client import SkippedGroup, subscribe_broadcast
from rtmpq.moq.transport import DEFAULT_BACKEND, connect_moq
from rtmpq.netem import Impairment, ImpairmentProxy
from rtmpq.nodes.up import UpNode

ROOT = Path(__file__).resolve().parents[2]
# Seconds a missing group's reset may trail the newer group's objects (its delivery budget, a
# few round trips and a lost RESET_STREAM sent again) before the group counts as unsignalled.
SIGNAL_GRACE = 3.0
ROTATION = [
    ("clean", Impairment(delay_ms=10)),
    ("loss 2%", Impairment(delay_ms=25, loss=0.02)),
    ("bursty", Impairment(delay_ms=25, burst_p=0.01, burst_r=0.3)),
    ("reorder", Impairment(delay_ms=25, jitter_ms=5, reorder=0.05, reorder_ms=30)),
    ("1 Mbit/s", Impairment(delay_ms=25, rate_bps=1e6, queue_bytes=32_000)),
]


class SubscriberCheck:
    """The per-object checks of one subscriber, as its items arrive (time passed in): object ids in
    order within each group, video groups start on a keyframe, no group id skipped without a
    SkippedGroup. Each group's reset travels on that group's own stream, so it may arrive after a
    newer group's objects: a missing group is judged when the subscriber leaves, and only if it
    has been missing for SIGNAL_GRACE by then (else it is counted as undecided)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.violations: list[str] = []
        self.late_signals = 0  # resets that came after a newer group's first object
        self.undecided = 0
        self._last: dict[tuple[str, int], int] = {}  # (track, group) -> last object id
        self._newest: dict[str, int] = {}  # track -> newest group begun
        self._skipped: set[tuple[str, int]] = set()
        self._missing: dict[tuple[str, int], float] = {}  # (track, group) -> seen missing at

    def skipped(self, track: str, group: int, now: float) -> None:
        self._skipped.add((track, group))
        if self._missing.pop((track, group), None) is not None:
            self.late_signals += 1

    def frame(self, f, now: float) -> None:
        key = (f.track, f.group)
        self._missing.pop(key, None)  # an older group's stream may start after a newer one's
        expected = self._last.get(key, -1) + 1
        if f.index != expected and key not in self._skipped:
            self.violations.append(f"{self.label}: {f.track} group {f.group} object {f.index} after {expected - 1}")
        self._last[key] = f.index
        if f.track == "video" and f.index == 0 and not f.keyframe:
            self.violations.append(f"{self.label}: video group {f.group} starts on a non-IDR")
        if f.index != 0:
            return
        newest = self._newest.get(f.track)
        if newest is not None:
            # a group id with no objects must be signalled (publisher reconnects keep ids contiguous)
            for g in range(newest + 1, f.group):
                if (f.track, g) not in self._skipped and (f.track, g) not in self._last:
                    self._missing.setdefault((f.track, g), now)
        self._newest[f.track] = max(f.group, newest if newest is not None else f.group)

    def leave(self, now: float) -> None:
        for (track, g), seen in sorted(self._missing.items()):
            if now - seen < SIGNAL_GRACE:
                self.undecided += 1  # left before its reset could have arrived
            else:
                self.violations.append(f"{self.label}: {track} group {g} missing, unsignalled")
        self._missing.clear()


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                  "fsmblks", "uordblks", "fordblks", "keepcost")]


def heap_free_bytes() -> int:
    """Bytes glibc holds free in its heaps (resident if they were touched): RSS that no live
    allocation accounts for. 0 where mallinfo2 is missing (not glibc, or glibc < 2.33)."""
    try:
        mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return 0
    mallinfo2.restype = _MallInfo2
    return mallinfo2().fordblks


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
    def __init__(self, node: UpNode | None, minutes: float, interval: float, seed: int = 1, *,
                 moq_address: tuple[str, int] | None = None, backend: str | None = None) -> None:
        self.node = node
        self.moq_address = moq_address or node.moq_address
        self.backend = backend or node.config.moq.backend
        self.end = time.monotonic() + minutes * 60
        self.interval = interval
        self.rng = random.Random(seed)
        self.samples: list[dict] = []
        self.violations: list[str] = []
        self.counts = {"publishes": 0, "subscribers": 0, "players": 0, "objects": 0, "skipped_groups": 0,
                       "player_failures": 0, "subscriber_errors": 0,
                       "late_signals": 0, "undecided": 0}
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
        check = SubscriberCheck(label)
        try:
            async with ImpairmentProxy(target=self.moq_address, up=imp, down=imp,
                                       seed=self.rng.randrange(1 << 30)) as proxy:
                async with connect_moq("127.0.0.1", proxy.port, insecure=True, timeout=20,
                                       backend=self.backend) as conn:
                    async with asyncio.timeout(stay):
                        async for item in subscribe_broadcast(conn, f"live/{name}", delivery_timeout_ms=1500,
                                                              wait=10):
                            if isinstance(item, SkippedGroup):
                                self.counts["skipped_groups"] += 1
                                check.skipped(item.track, item.group, time.monotonic())
                            elif not isinstance(item, Catalog):
                                self.counts["objects"] += 1
                                check.frame(item, time.monotonic())
        except TimeoutError:
            pass  # stayed as long as it meant to
        except Exception as exc:  # noqa: BLE001 - counted by kind and reported
            self.counts["subscriber_errors"] += 1
            kind = f"{type(exc).__name__}: {str(exc)[:60]}"
            self.errors[kind] = self.errors.get(kind, 0) + 1
            print(f"{time.monotonic() - self.t0:.0f} s subscriber ({label}, joined {joined:.0f} s): {kind}", flush=True)
        finally:
            self.live_subscribers -= 1
            check.leave(time.monotonic())
            self.violations += check.violations
            self.counts["late_signals"] += check.late_signals
            self.counts["undecided"] += check.undecided

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
             "heap_free_mb": round(heap_free_bytes() / 1e6, 1),
             "fds": len(os.listdir("/proc/self/fd")), "tasks": len(asyncio.all_tasks()),
             "quic_streams": quic_streams(self.node),
             "queued_kb": round(sum(c.total_queued_bytes() for c in list(self.node.moq.connections)) / 1e3, 1),
             "moq_sessions": len(self.node.moq.connections), "impairment": self.impairment[0],
             "load1": round(os.getloadavg()[0], 1)}
        self.samples.append(s)
        print(s, flush=True)

    async def sampler(self) -> None:
        while self.running():
            self.sample()
            await asyncio.sleep(self.interval)
        self.sample()

    async def run(self, subscribers_in_process: bool = False) -> None:
        publishers = [asyncio.create_task(self.publisher(n)) for n in ("soak-a", "soak-b")]
        for name in ("live/soak-a", "live/soak-b"):  # churn starts once both are live
            await self.node.registry.wait_for(name, 30)
        subscribers = self.churn(self.subscriber, (2, 6)) if subscribers_in_process else self.subscriber_process()
        await asyncio.gather(*publishers, self.sampler(), self.rotate(), subscribers, self.churn(self.player, (6, 14)))

    async def subscriber_process(self) -> None:
        """The MoQ subscribers (their QUIC stacks, picoquic threads and impairment proxies) in a
        child process, so the samples measure the node and not its clients."""
        host, port = self.moq_address
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.wan.soak", "--role", "subscribers", "--target", f"{host}:{port}",
            "--minutes", f"{(self.end - time.monotonic()) / 60:.3f}", "--backend", self.backend,
            "--seed", str(self.rng.randrange(1 << 30)), cwd=ROOT, stdout=asyncio.subprocess.PIPE)
        summary = None
        async for line in proc.stdout:
            text = line.decode().rstrip()
            if text.startswith("{"):
                summary = json.loads(text)
            else:
                print(text, flush=True)
        await proc.wait()
        if summary is None:
            self.violations.append(f"the subscriber process exited {proc.returncode} without a summary")
            return
        for key in ("subscribers", "objects", "skipped_groups", "subscriber_errors", "late_signals", "undecided"):
            self.counts[key] += summary["counts"][key]
        self.violations += summary["violations"]
        for kind, n in summary["errors"].items():
            self.errors[kind] = self.errors.get(kind, 0) + n


async def subscribers_main(args) -> int:
    """--role subscribers: the subscriber churn alone, against --target; a JSON summary at the end."""
    host, port = args.target.rsplit(":", 1)
    soak = Soak(None, args.minutes, args.interval, args.seed, moq_address=(host, int(port)), backend=args.backend)
    await asyncio.gather(soak.rotate(), soak.churn(soak.subscriber, (2, 6)))
    print(json.dumps({"counts": soak.counts, "violations": soak.violations, "errors": soak.errors}), flush=True)
    return 0


def plot(samples: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t_s"] / 60 for s in samples]
    fig, axes = plt.subplots(5, 1, figsize=(8, 9), sharex=True)
    for ax, key, label in zip(axes, ["rss_mb", "fds", "tasks", "quic_streams", "queued_kb"],
                              ["RSS (MB)", "open fds", "asyncio tasks", "QUIC streams", "QUIC queued (kB)"]):
        ax.plot(t, [s[key] for s in samples], marker=".")
        if key == "rss_mb" and "heap_free_mb" in samples[0]:
            ax.plot(t, [s["heap_free_mb"] for s in samples], marker=".", label="of which glibc holds free")
            ax.legend(loc="upper left", fontsize="small")
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


def report(soak: Soak, minutes: float, warmup_s: float, command: str, image: str = "soak.png",
           in_process: bool = False) -> str:
    rows = ["| figure | first half after warm-up (median) | second half (median) | max |", "|---|---|---|---|"]
    for key in ("rss_mb", "heap_free_mb", "fds", "tasks", "quic_streams", "queued_kb", "load1"):
        a, b, m = growth(soak.samples, key, warmup_s)
        rows.append(f"| {key} | {a:g} | {b:g} | {m:g} |")
    c = soak.counts
    return (f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} with `{command}` "
            f"({minutes:g} minutes, samples every {soak.interval:g} s, warm-up {warmup_s:g} s, backend "
            f"{soak.node.config.moq.backend}, MoQ subscribers in {'the node' if in_process else 'a child'} process): "
            f"{c['publishes']} publishes (reconnects included), "
            f"{c['subscribers']} MoQ subscribers ({c['subscriber_errors']} ended by an error), {c['players']} HLS "
            f"players ({c['player_failures']} exited non-zero), {c['objects']} objects checked, "
            f"{c['skipped_groups']} skipped groups signalled ({c['late_signals']} after a newer group's first "
            f"object; {c['undecided']} missing within {SIGNAL_GRACE:g} s of the subscriber leaving, not judged), "
            f"**{len(soak.violations)} scoreboard violations**"
            + (f" (first: {soak.violations[0]})" if soak.violations else "") + ".\n"
            + "".join(f"\n- subscriber ended by `{k}`: {n}" for k, n in sorted(soak.errors.items()))
            + "\n\n" + "\n".join(rows)
            + f"\n\n![soak]({image})\n")


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
        await soak.run(args.subscribers_in_process)
    finally:
        await node.close()
    return soak


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--interval", type=float, default=30)
    ap.add_argument("--backend", default=DEFAULT_BACKEND)
    ap.add_argument("--warmup", type=float, default=90)
    ap.add_argument("--write-docs")
    ap.add_argument("--plot", help="where the plot goes (default: next to --write-docs, soak.png)")
    ap.add_argument("--subscribers-in-process", action="store_true",
                    help="run the MoQ subscribers in the node's process (as before 2026-11-28: RSS then counts theirs)")
    ap.add_argument("--role", choices=["all", "subscribers"], default="all", help=argparse.SUPPRESS)
    ap.add_argument("--target", help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role == "subscribers":
        return asyncio.run(subscribers_main(args))
    soak = asyncio.run(amain(args))
    out = ROOT / "var/soak"
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "samples.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(soak.samples[0]))
        w.writeheader()
        w.writerows(soak.samples)
    text = report(soak, args.minutes, args.warmup, f"make soak MINUTES={args.minutes:g}",
                  Path(args.plot).name if args.plot else "soak.png", args.subscribers_in_process)
    print(text)
    for v in soak.violations[:20]:
        print("violation:", v)
    if args.plot:
        plot(soak.samples, Path(args.plot))
    if args.write_docs:
        doc = Path(args.write_docs)
        if not args.plot:
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
