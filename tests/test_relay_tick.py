"""The relay's periodic task (budgets, delivery timeouts, cache ages) survives a failing track."""

import asyncio
import logging
import time
from types import SimpleNamespace

from rtmpq.moq.relay import MoqRelay


class _Fanout:
    def __init__(self, fail_times: int = 0) -> None:
        self.fail_times = fail_times
        self.checks = 0

    def check(self, now: float) -> None:
        self.checks += 1
        if self.checks <= self.fail_times:
            raise RuntimeError("a bug in one track's fan-out")


async def test_a_failing_fanout_does_not_stop_the_checks_of_other_tracks(caplog):
    relay = MoqRelay()
    bad, good = _Fanout(fail_times=1), _Fanout()
    # two tracks of one local broadcast; the first one checked raises once
    relay._sources["live/cam"] = SimpleNamespace(fanouts={"video": bad, "audio": good},
                                                close=lambda: None, update_demand=lambda: None)
    relay.start()
    try:
        deadline = time.monotonic() + 10
        while good.checks < 5 or bad.checks < 5:
            assert time.monotonic() < deadline, f"checks stopped: good {good.checks}, bad {bad.checks}"
            await asyncio.sleep(0.01)
        assert not any(t.done() for t in relay._tasks)
    finally:
        relay.stop()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "video" in errors[0].getMessage() and errors[0].exc_info
