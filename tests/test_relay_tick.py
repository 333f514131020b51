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
    relay._subs[(id(conn), 3)] = SimpleNamespace(conn=conn, request_id=3, sub=failed, label="live/x/video",
                                                 name=(("live", "x"), "video"))
    relay._subs[(id(conn), 5)] = SimpleNamespace(conn=conn, request_id=5, sub=healthy, label="live/x/audio",
                                                 name=(("live", "x"), "audio"))
    relay.drop_failed()
    assert closed == [(SessionError.INTERNAL_ERROR, "delivery failed")]
    assert list(relay._subs) == [(id(conn), 5)]  # the rest goes when its SessionClosed arrives
    assert any("cnx not open" in r.getMessage() for r in caplog.records)


async def _relay_with_pending_timers(monkeypatch):
    """A relay with one of each timer it schedules pending: an ORIGIN_DRAIN after the directory
    withdrew a broadcast, a LATE_STREAM_GRACE after a PUBLISH_DONE, a SUBSCRIBE waiting for a new
    broadcast's track. Each callback is replaced by a spy; the delays are shortened to 0.05 s."""
    from rtmpq.moq import events as ev
    from rtmpq.moq import relay as relay_module

    monkeypatch.setattr(relay_module, "ORIGIN_DRAIN", 0.05)
    monkeypatch.setattr(relay_module, "LATE_STREAM_GRACE", 0.05)
    relay = MoqRelay()
    fired = []
    for name in ("_unroute", "_end_upstream", "_expire_waiting"):
        monkeypatch.setattr(relay, name, lambda *args, name=name: fired.append(name))
    session = SimpleNamespace(closed=False, setup_done=False, setup_authorization=None)
    conn = SimpleNamespace(session=session, peer="127.0.0.1:9", flush=lambda: None)
    relay._routes[("live", "cam")] = conn
    relay.route(("live", "cam"), None)
    relay._by_request[(id(conn), 7)] = SimpleNamespace(streams_done=0, streams_expected=None)
    relay._on_PublishDoneReceived(conn, ev.PublishDoneReceived(request_id=7, status=0, stream_count=2, reason=""))
    started = time.monotonic() - relay_module.NEW_TRACK_WAIT + 0.05
    relay._sources["live/new"] = SimpleNamespace(ended=False, fanouts={}, waiting=[], close=lambda: None,
                                                 broadcast=SimpleNamespace(started=started))
    relay._on_SubscribeRequested(conn, ev.SubscribeRequested(
        request_id=9, namespace=("live", "new"), track_name="video", filter_type=None, start=None,
        delivery_timeout_ms=None, subscriber_priority=128))
    return relay, fired


async def test_the_relays_timers_fire_while_it_runs(monkeypatch):
    # (the control for the test below: the spies do see each timer fire)
    relay, fired = await _relay_with_pending_timers(monkeypatch)
    deadline = time.monotonic() + 10
    while len(fired) < 3:
        assert time.monotonic() < deadline, f"only {fired} fired"
        await asyncio.sleep(0.01)
    assert sorted(fired) == ["_end_upstream", "_expire_waiting", "_unroute"]
    relay.stop()


async def test_a_stopped_relay_runs_none_of_its_pending_timers(monkeypatch):
    # before: stop() left them scheduled, and e.g. an ORIGIN_DRAIN orphaned (and logged) tracks of
    # a relay already shut down
    relay, fired = await _relay_with_pending_timers(monkeypatch)
    relay.stop()
    # well past every (0.05 s) delay: a timer scheduled after them runs after them
    past = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_later(0.3, past.set_result, None)
    await asyncio.wait_for(past, 10)
    assert fired == []
