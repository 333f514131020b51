"""The WAN scoreboard (make wan) flags each kind of violation; in memory, no network."""

from rtmpq.media.frames import Frame
from rtmpq.moq.client import SkippedGroup

from tests.publishers import Packet
from tests.wan.scoreboard import PROFILES, Result, judge

# two 3-frame video groups and their audio, as the reference file would list them
REF = [Packet("video", d, d, d % 100 == 0, 1000 + d) for d in (0, 33, 66, 100, 133, 166)]
REF += [Packet("audio", d, d, True, 300) for d in (0, 50, 100, 150)]


def frames(spec):
    """(track, group, index, dts[, keyframe]) -> (arrival, lateness, Frame) as the subscriber saw them."""
    out = []
    for i, (track, group, index, dts, *key) in enumerate(spec):
        pk = next(p for p in REF if p.track == track and p.dts == dts)
        kf = key[0] if key else pk.keyframe
        out.append((float(i), 0.1, Frame(track, group, index, dts, dts, kf, bytes(pk.size))))
    return out


GOOD = [("video", 0, 0, 0), ("audio", 0, 0, 0), ("video", 0, 1, 33), ("audio", 0, 1, 50), ("video", 0, 2, 66),
        ("video", 1, 0, 100), ("audio", 1, 0, 100), ("video", 1, 1, 133), ("audio", 1, 1, 150), ("video", 1, 2, 166)]


def run(spec, skipped=()):
    return judge(Result("aioquic", PROFILES["reorder"]), REF, frames(spec), list(skipped), None)


def test_a_clean_delivery_passes():
    r = run(GOOD)
    assert r.passed and r.share == 1.0 and r.objects == 10


def test_each_violation_is_counted():
    # a frame missing inside a group, no signal
    assert run([s for s in GOOD if s[3] != 33 or s[0] != "video"]).unsignalled == 1
    # the same gap when the relay said it dropped the group's rest is fine (but fewer arrived)
    gap = [s for s in GOOD if not (s[0] == "video" and s[1] == 0 and s[2] > 0)]
    r = run(gap, [SkippedGroup("video", 0, 2)])
    assert r.unsignalled == 0 and r.share < 1.0
    assert run(gap).unsignalled == 2
    # object ids out of order within a group
    swapped = GOOD[:2] + [GOOD[4], GOOD[3], GOOD[2]] + GOOD[5:]
    assert run(swapped).out_of_order == 1
    # a video group that does not start on a keyframe
    assert run([("video", 0, 0, 0, False)] + GOOD[1:]).not_idr == 1
    # bytes that are not the reference's (a truncated object)
    bad = frames(GOOD)
    t, lat, f = bad[2]
    bad[2] = (t, lat, Frame(f.track, f.group, f.index, f.dts, f.pts, f.keyframe, b"short"))
    assert judge(Result("aioquic", PROFILES["reorder"]), REF, bad, [], None).incomplete == 1


def test_a_subscriber_that_received_nothing_fails():
    r = run([])
    assert not r.passed and r.share == 0.0


def test_a_cpu_burner_keeps_a_core_busy_until_stopped():
    """--cpu-burners (a busy host for make wan): each burner really spins, and stops with the run."""
    import os
    import time

    from tests.wan.scoreboard import start_burners, stop_burners

    assert start_burners(0) == []
    burners = start_burners(1)
    try:
        assert len(burners) == 1
        ticks = os.sysconf("SC_CLK_TCK")
        deadline = time.monotonic() + 20
        cpu = 0.0
        while time.monotonic() < deadline and cpu < 0.3:
            with open(f"/proc/{burners[0].pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            cpu = (int(fields[11]) + int(fields[12])) / ticks  # utime + stime
            time.sleep(0.05)
        assert cpu >= 0.3, f"the burner used {cpu:.2f} s of CPU"
    finally:
        stop_burners(burners)
    assert burners[0].poll() is not None


async def test_a_subscriber_that_never_gets_ready_is_a_harness_failure_and_nothing_is_published(
        tmp_path, monkeypatch):
    """The publisher starts only once the subscriber's session is up; one that never comes up is
    the harness's failure, told apart from the profile's (before: the publisher went first, and a
    subscriber that started after a short stream had ended made the profile FAIL with no objects)."""
    import socket
    from types import SimpleNamespace

    from tests.conftest import free_port
    from tests.wan import scoreboard

    monkeypatch.setattr(scoreboard, "SUBSCRIBER_READY_TIMEOUT", 3.0, raising=False)

    class Node:  # nothing listens at its MoQ port: the subscriber's session never comes up
        config = SimpleNamespace(moq=SimpleNamespace(backend="aioquic"))
        moq_address = ("127.0.0.1", free_port(socket.SOCK_DGRAM))

        @property
        def rtmp(self):
            raise AssertionError("the publisher was started before the subscriber was ready")

    r = await scoreboard.run_profile(Node(), PROFILES["reorder"], tmp_path / "unused.flv", [])
    assert not r.passed and "never got ready" in r.harness, r
    assert scoreboard.verdict(r).startswith("HARNESS FAILURE")
