"""PNG plots of the peer tables from the benchmarks' JSON results (var/bench/*.json) into docs/plots/.

    make plots      # runs bench_ingest, bench_relay and bench_hls_lag, then this
    .venv/bin/python bench/plots.py   # only redraws from the last results
"""

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RESULTS = Path("var/bench")
OUT = Path("docs/plots")
SERVERS = ["rtmpq baseline", "rtmpq compiled", "rtmpq pure", "nginx-rtmp", "pyrtmp"]


def ingest() -> None:
    rows = json.loads((RESULTS / "ingest.json").read_text())
    for key, label, name in (("cores_per_publisher", "CPU per publisher (cores)", "ingest_cpu.png"),
                             ("rss_mb_per_publisher", "RSS per publisher (MB)", "ingest_rss.png")):
        fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
        for ax, record in zip(axes, (False, True)):
            for server in SERVERS:
                points = sorted((r["publishers"], r[key]) for r in rows if r["server"] == server and r["record"] == record)
                if points:
                    ax.plot(*zip(*points), marker="o", label=server)
            if key == "rss_mb_per_publisher":  # the group cache's share apart (bench_ingest reads it)
                points = sorted((r["publishers"], r["rss_less_cache_mb_per_publisher"]) for r in rows
                                if r["server"] == "rtmpq compiled" and r["record"] == record
                                and r.get("rss_less_cache_mb_per_publisher") is not None
                                # one publisher's media can fit in heap pages start-up made
                                # resident: RSS less cache comes out <= 0, nothing to draw on a log scale
                                and r["rss_less_cache_mb_per_publisher"] > 0)
                if points:
                    ax.plot(*zip(*points), marker="o", linestyle="--", label="rtmpq compiled, less its group cache")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("concurrent publishers (ffmpeg -re -c copy, 2.6 Mbit/s)")
            ax.set_title("recording every publish" if record else "live only")
            ax.grid(True, which="both", alpha=0.3)
        axes[0].set_ylabel(label)
        axes[0].legend()
        fig.tight_layout()
        fig.savefig(OUT / name, dpi=100)
        plt.close(fig)


def relay() -> None:
    rows = json.loads((RESULTS / "relay.json").read_text())
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for backend in ("aiopquic", "aioquic"):
        points = sorted((r["subscribers"], r["egress_MB_per_cpu_s"], r["latency_p99_ms"]) for r in rows
                        if r["backend"] == backend)
        if points:
            n, egress, p99 = zip(*points)
            axes[0].plot(n, egress, marker="o", label=backend)
            axes[1].plot(n, p99, marker="o", label=backend)
        probe = sorted((r["subscribers"], r["probe_latency_p99_ms"]) for r in rows
                       if r["backend"] == backend and r.get("probe_latency_p99_ms") is not None)
        if probe:  # the subscriber alone in its process (bench_relay.py)
            axes[1].plot(*zip(*probe), marker="x", linestyle="--", label=f"{backend}, probe subscriber")
    axes[0].set_ylabel("relay egress, MB per relay CPU second")
    axes[1].set_ylabel("p99 ingest-to-subscriber latency (ms)")
    axes[1].set_yscale("log")
    for ax in axes:
        ax.set_xlabel("MoQ subscribers of a 3 Mbit/s stream")
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(OUT / "relay.png", dpi=100)
    plt.close(fig)


def hls_lag() -> None:
    runs = json.loads((RESULTS / "hls_lag.json").read_text())
    fig, ax = plt.subplots(figsize=(6, 4))
    names = sorted(runs)
    width = 0.35
    for i, server in enumerate(("rtmpq", "nginx")):
        ax.bar([x + i * width for x in range(len(names))], [runs[n][server]["p50_ms"] for n in names], width,
               label=f"{'rtmpq LL-HLS' if server == 'rtmpq' else 'nginx-rtmp HLS'} p50",
               yerr=[[0] * len(names), [runs[n][server]["p99_ms"] - runs[n][server]["p50_ms"] for n in names]])
    ax.set_xticks([x + width / 2 for x in range(len(names))], [f"source GoP {n[3:]}" for n in names])
    ax.set_ylabel("live-edge lag (ms): bar p50, whisker p99")
    ax.set_title("HLS live edge behind the publisher, same publish")
    ax.legend()
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(OUT / "hls_lag.png", dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    for plot, source in ((ingest, "ingest.json"), (relay, "relay.json"), (hls_lag, "hls_lag.json")):
        if (RESULTS / source).exists():
            plot()
            print("wrote", plot.__name__)
        else:
            print(f"no {RESULTS / source}: run its benchmark first (make plots)")
