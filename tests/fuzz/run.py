"""Coverage-guided fuzzing of one target with atheris (libFuzzer), both codec twins compared.

    python -m tests.fuzz.run TARGET [--seconds 60] [-- libFuzzer flags]
    python -m tests.fuzz.run --list

Seeds are read from tests/data/corpus/TARGET/ (never written); what the campaign learns goes to
var/fuzz/corpus/TARGET/ and survives between runs, crashes to var/fuzz/crashes/. A crash file
replays with `python -m tests.fuzz.run TARGET var/fuzz/crashes/FILE`; once the bug is fixed, copy
it to tests/data/corpus/crashes/TARGET-<what> so tests/test_fuzz.py replays it on every run.
Only rtmpq's Python code is instrumented for coverage; the compiled twin runs uninstrumented
beside it and every input is checked against it.
"""

import argparse
import importlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # a stray "tests" package in site-packages must not shadow ours
# every module a target reaches, imported under atheris's instrumentation before the targets
INSTRUMENTED = ("rtmpq.auth.hook", "rtmpq.codec", "rtmpq.edge.server", "rtmpq.media.aac", "rtmpq.media.ac3",
                "rtmpq.media.av1", "rtmpq.media.avc", "rtmpq.media.catalog", "rtmpq.media.catalog_delta",
                "rtmpq.media.demux", "rtmpq.media.hevc", "rtmpq.media.opus", "rtmpq.media.vp9",
                "rtmpq.moq.catalog_track", "rtmpq.moq.datagram_order", "rtmpq.moq.wire", "rtmpq.rtmp.handshake",
                "rtmpq.rtmp.session")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("target", nargs="?")
    ap.add_argument("inputs", nargs="*", help="replay these files instead of fuzzing")
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--work", help="where the campaign's corpus grows (default var/fuzz/corpus/TARGET)")
    args, extra = ap.parse_known_args()

    import atheris

    with atheris.instrument_imports(include=["rtmpq"]):
        for module in INSTRUMENTED:
            importlib.import_module(module)
    from tests.fuzz.targets import TARGETS

    if args.list or not args.target:
        print("\n".join(TARGETS))
        return 0
    target = TARGETS[args.target]
    if args.inputs:
        for path in args.inputs:
            target(Path(path).read_bytes())
            print(f"{path}: ok")
        return 0
    seeds = ROOT / "tests/data/corpus" / args.target
    work = Path(args.work) if args.work else ROOT / "var/fuzz/corpus" / args.target
    crashes = ROOT / "var/fuzz/crashes"
    work.mkdir(parents=True, exist_ok=True)
    crashes.mkdir(parents=True, exist_ok=True)
    flags = [sys.argv[0], f"-max_total_time={args.seconds}", "-max_len=16384", "-timeout=10",
             "-rss_limit_mb=2048", f"-artifact_prefix={crashes}/{args.target}-", "-print_final_stats=1",
             *extra, str(work), str(seeds)]
    atheris.Setup(flags, target)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())
