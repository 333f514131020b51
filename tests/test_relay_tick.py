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


def test_a_subscriber_its_fanout_let_go_has_its_session_closed_and_is_forgotten(caplog):
    from rtmpq.moq.wire import SessionError

    relay = MoqRelay()
    closed = []
    conn = SimpleNamespace(session=SimpleNamespace(closed=False), peer="127.0.0.1:9",
                           close_session=lambda code, reason: closed.append((code, reason)))
    healthy = SimpleNamespace(failed=None, stalled_since=None)
    failed = SimpleNamespace(failed="ConnectionError: set_stream_priority: cnx not open", stalled_since=None)
    relay._subs[(id(conn), 3)] = SimpleNamespace(conn=conn, request_id=3, sub=failed, label="live/x/video")
    relay._subs[(id(conn), 5)] = SimpleNamespace(conn=conn, request_id=5, sub=healthy, label="live/x/audio")
    relay.drop_failed()
    assert closed == [(SessionError.INTERNAL_ERROR, "delivery failed")]
    assert list(relay._subs) == [(id(conn), 5)]  # the rest goes when its SessionClosed arrives
    assert any("cnx not open" in r.getMessage() for r in caplog.records)
