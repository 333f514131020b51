"""[publish] events_url: the operator's service hears when publishes start and end, and where
their recordings are, in order, without the publish waiting for it."""

import asyncio
import json
import logging
from pathlib import Path

from rtmpq.config import Config, IngestConfig, PublishConfig, reload_settings

from .conftest import http_get, need, start_up_node, until
from .publishers import ffmpeg_publish_only_args, run_process
from .test_publish_hook import read_post


class Service:
    """Takes events (and answers ``status``, or the ``first`` statuses first), recording them in the
    order they came."""

    def __init__(self, status: int = 204, first: tuple[int, ...] = ()) -> None:
        self.events: list[dict] = []
        self.status = status
        self.first = list(first)

    async def handle(self, reader, writer) -> None:
        self.events.append((await read_post(reader))[1])
        status = self.first.pop(0) if self.first else self.status
        writer.write(b"HTTP/1.1 %d X\r\nContent-Length: 0\r\n\r\n" % status)
        await writer.drain()
        writer.close()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/events"


async def test_the_service_hears_of_each_publish_its_end_and_its_recording_in_order(tmp_path, caplog):
    """... and, after a reload that names another events_url, the new one hears the next publish's."""
    need("ffmpeg")
    caplog.set_level(logging.INFO, logger="rtmpq")
    service, refusing = Service(), Service(status=500)
    url, refusing_url = await service.start(), await refusing.start()
    node = await start_up_node(tmp_path, publish=PublishConfig(keys={"sk-7a1c": "studio"}, events_url=url),
                               rtmp=IngestConfig(host="127.0.0.1", port=0, record_dir=str(tmp_path / "rec")))
    try:
        rtmp = f"rtmp://127.0.0.1:{node.rtmp.address[1]}/live"
        rc, out = await run_process(ffmpeg_publish_only_args(f"{rtmp}/sk-7a1c", 2))
        assert rc == 0, out
        await until(lambda: len(service.events) >= 3, 20, "three events")
        start, end, recorded = service.events
        assert (start["event"], start["name"], start["app"], start["address"], start["publish"]) == (
            "publish_start", "live/studio", "live", "127.0.0.1", 1)
        assert end["event"] == "publish_end" and end["name"] == "live/studio" and end["clean"] is True
        assert 1.5 < end["seconds"] < 30 and end["video_frames"] >= 55 and end["audio_frames"] == 0
        assert recorded["event"] == "record_done" and Path(recorded["path"]).stat().st_size > 10_000
        assert start["time"] <= end["time"] <= recorded["time"]
        # SIGHUP's settings: another service, that keeps failing (500): it gets each event again
        # (once here), then it is logged; the publishes go on as before
        new = Config()
        new.publish.keys, new.publish.events_url, new.publish.events_retries = {"sk-7a1c": "studio"}, refusing_url, 1
        assert reload_settings(node.config, new)[0] == ["publish.events_url", "publish.events_retries"]
        node.rtmp.settings_reloaded()
        rc, out = await run_process(ffmpeg_publish_only_args(f"{rtmp}/sk-7a1c", 1))
        assert rc == 0, out
        await until(lambda: len(refusing.events) >= 6, 20, "three events told twice to the refusing service")
        assert [e["event"] for e in refusing.events] == [
            "publish_start", "publish_start", "publish_end", "publish_end", "record_done", "record_done"]
        await until(lambda: "publish_end of live/studio not taken after 2 tries: HTTP 500" in caplog.text, 10,
                    "the warning")
        await until(lambda: node.rtmp.events.failed == 3, 10, "the third event not taken")
        _, page = await http_get(f"http://127.0.0.1:{node.edge.http.address[1]}/metrics")
        assert b'rtmpq_publish_events_total{result="sent"} 3.0' in page  # counted on across the reload
        assert b'rtmpq_publish_events_total{result="failed"} 3.0' in page
    finally:
        await node.close()
        service.server.close()
        refusing.server.close()
    assert "sk-7a1c" not in json.dumps(service.events + refusing.events) and "sk-7a1c" not in caplog.text


async def test_events_waiting_for_a_slow_service_are_bounded(caplog):
    from rtmpq.nodes.notify import MAX_QUEUED_EVENTS, PublishEvents

    events = PublishEvents("http://127.0.0.1:9/events", 1.0)  # not started: nothing is taken
    for i in range(MAX_QUEUED_EVENTS + 5):
        events.post("publish_start", name=f"live/{i}")
    assert events.dropped == 5
    assert caplog.text.count("new ones are dropped") == 1  # said once per fill-up


async def test_an_event_the_service_could_not_take_is_sent_again_and_the_order_holds(caplog):
    """A service restarting (503, then no listener) hears every event once it is back, in order; one
    that refuses an event (400) is not asked again."""
    from rtmpq.nodes.notify import PublishEvents

    service = Service(first=(503, 503))
    events = PublishEvents(await service.start(), 1.0, retries=3)
    events.start()
    try:
        events.post("publish_start", name="live/a")
        events.post("publish_end", name="live/a")
        await until(lambda: len(service.events) >= 4, 10, "the first event three times, then the second")
        assert [e["event"] for e in service.events] == ["publish_start"] * 3 + ["publish_end"]
        assert (events.sent, events.failed) == (2, 0) and "not taken after" not in caplog.text
        service.first = [400]
        events.post("publish_start", name="live/b")
        events.post("publish_end", name="live/b")
        await until(lambda: events.sent + events.failed == 4, 10, "both events of live/b")
        assert [e["name"] for e in service.events[4:]] == ["live/b", "live/b"]  # the refused one once
        assert events.failed == 1 and "not taken: HTTP 400" in caplog.text and "live/b" not in caplog.text
    finally:
        await events.close(1.0)
        service.server.close()
