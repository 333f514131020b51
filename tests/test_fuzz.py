"""The fuzz targets (tests/fuzz/targets.py) on every run: each replays its seed corpus (recorded
from real ffmpeg, GStreamer, FFmpeg 8 E-RTMP and OBS-shaped publishes) and every crash a campaign
ever found, then mutates the seeds for a moment. The long, coverage-guided campaigns are
`make fuzz` (atheris)."""

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rtmpq.codec import amf0_decode
from rtmpq.rtmp.handshake import HANDSHAKE_SIZE

from .fuzz.targets import TARGETS

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "tests/data/corpus"
SECONDS = float(os.environ.get("FUZZ_TEST_SECONDS", "1.0"))


def files(target: str) -> list[Path]:
    return sorted((CORPUS / target).glob("*")) + sorted((CORPUS / "crashes").glob(f"{target}-*"))


def mutate(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randrange(1, 6)):
        op = rng.randrange(6)
        pos = rng.randrange(len(b) + 1)
        if op == 0 and b:
            b[pos % len(b)] ^= 1 << rng.randrange(8)
        elif op == 1:
            b[pos:pos] = rng.randbytes(rng.randrange(1, 9))
        elif op == 2:
            del b[pos:pos + rng.randrange(1, 64)]
        elif op == 3 and b:  # interesting values where lengths and varints live
            b[pos % len(b)] = rng.choice((0, 1, 0x3F, 0x40, 0x7F, 0x80, 0xBF, 0xC0, 0xFE, 0xFF))
        elif op == 4:
            other = rng.choice(pool)
            s = rng.randrange(len(other) + 1)
            b[pos:] = other[s:s + rng.randrange(1, 512)]
        else:
            del b[pos:]
    return bytes(b)


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_fuzz_target_survives_its_corpus_and_mutations(target):
    fn = TARGETS[target]
    seeds = [p.read_bytes() for p in files(target)]
    assert seeds, f"no seed corpus for {target}"
    for data in seeds:
        fn(data)
    rng = random.Random(target)
    deadline = time.monotonic() + SECONDS
    runs = 0
    while time.monotonic() < deadline:
        data = mutate(rng, rng.choice(seeds), seeds)
        try:
            fn(data)
        except BaseException:
            print(f"crash input for {target}: {data.hex()}")
            raise
        runs += 1
    assert runs > 0


def test_corpus_holds_real_publishes_including_an_obs_shaped_one():
    names = {p.name.rsplit("-", 1)[0] for p in (CORPUS / "chunk").glob("*")}
    assert {"ffmpeg", "gstreamer", "obs-shaped", "pyav-hevc-opus", "pyav-av1-aac"} <= names
    [obs] = (CORPUS / "session").glob("obs-shaped-*")
    data = obs.read_bytes()[8:]
    assert data[:16].endswith((4096).to_bytes(4, "big"))  # Set Chunk Size 4096 first, as OBS does
    assert b"fourCcList" in data and b"hvc1" in data
    [hs] = (CORPUS / "handshake").glob("ffmpeg-*")
    assert hs.read_bytes()[8] == 3 and len(hs.read_bytes()) > 8 + 1 + 2 * HANDSHAKE_SIZE
    assert any(amf0_decode(p.read_bytes())[0] == "connect" for p in (CORPUS / "amf0").glob("gstreamer-*"))


def test_atheris_campaign_runs_a_target(tmp_path):
    """What `make fuzz` runs, for two seconds: coverage-guided, seeds loaded, no crash."""
    out = subprocess.run([sys.executable, "-m", "tests.fuzz.run", "amf0", "--seconds", "2", "-seed=1",
                          "--work", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "INITED" in out.stderr and "stat::number_of_executed_units" in out.stderr
    executed = int(out.stderr.split("stat::number_of_executed_units:")[1].split()[0])
    assert executed > 100
    assert any(tmp_path.iterdir())  # coverage feedback kept new inputs
