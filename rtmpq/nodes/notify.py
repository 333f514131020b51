"""[publish] events_url: the ingest tells the operator's service when a publish starts and ends,
and when its recording is finished (as nginx-rtmp's on_publish / on_publish_done /
on_record_done, or SRS's http hooks, do), so a platform knows what is live without polling.

Each event is a POST of JSON, sent one after another in the order they happened, by one task: a
service never hears of an end before its start. They are notifications: the publish does not wait
for them. One the service did not take for a reason that may pass (no answer, a 5xx, 408 or 429: a
service restarting) is sent again, up to [publish] events_retries times, 1 s later, then 2 s, 4 s,
...; the ones after it wait, so the order holds. Any other answer (a 4xx: the service will not take
it) is logged and not sent again. At most MAX_QUEUED_EVENTS wait (more are dropped, said once per
fill-up), so a slow or dead service costs a bounded amount of memory.
"""

import asyncio
import logging
import time
from collections import Counter

from ..http.client import HttpCallError, post_json, url_label
from ..redact import safe_name

log = logging.getLogger("rtmpq.nodes")

# Events waiting to be sent, at most: past it new ones are dropped (a dead service at 3 s per try
# against a burst of publishes).
MAX_QUEUED_EVENTS = 256
# Seconds before an event not taken is sent again the first time; doubled for each try after.
FIRST_RETRY_DELAY = 1.0
# Answers that may change if the event is sent again (the service busy or restarting).
RETRY_STATUSES = frozenset((408, 429))


class PublishEvents:
    """``post(event, **fields)`` queues an event; ``start()`` then ``close()`` run the sender."""

    def __init__(self, url: str, timeout: float, ssl_context=None, retries: int = 0,
                 counts: Counter | None = None) -> None:
        self.url = url
        self.timeout = timeout
        self.retries = retries
        self._closing = asyncio.Event()  # a stopping node sends what waits once more, then no retries
        self.ssl_context = ssl_context  # an https URL's CA ([publish] hook_cafile); None: the system's
        self._queue: asyncio.Queue = asyncio.Queue(MAX_QUEUED_EVENTS)
        self._task: asyncio.Task | None = None
        self._full = False  # said once per fill-up
        # events by result: "sent", "failed", "dropped" (a node passes its own, which outlives a
        # sender replaced on SIGHUP while the old one still empties its queue)
        self.counts = Counter() if counts is None else counts

    @property
    def sent(self) -> int:
        return self.counts["sent"]

    @property
    def failed(self) -> int:
        return self.counts["failed"]

    @property
    def dropped(self) -> int:
        return self.counts["dropped"]

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._send())

    def post(self, event: str, **fields) -> None:
        payload = {"event": event, "time": round(time.time(), 3), **fields}
        try:
            self._queue.put_nowait(payload)
            self._full = False
        except asyncio.QueueFull:
            self.counts["dropped"] += 1
            if not self._full:
                self._full = True
                log.warning("publish events %s: %d events wait to be sent; new ones are dropped until it "
                            "catches up", url_label(self.url), MAX_QUEUED_EVENTS)

    async def _send(self) -> None:
        while True:
            payload = await self._queue.get()
            try:
                tries, why = await self._deliver(payload)
            finally:
                self._queue.task_done()
            if why is None:
                self.counts["sent"] += 1
            else:
                self.counts["failed"] += 1
                log.warning("%s not taken%s: %s", self._which(payload), f" after {tries} tries" if tries > 1 else "", why)

    async def _deliver(self, payload: dict) -> tuple[int, str | None]:
        """Send one event until it is taken or may not be sent again: (tries, None) or (tries, why not)."""
        delay, tries = FIRST_RETRY_DELAY, 0
        while True:
            tries += 1
            may_pass = True
            try:
                status, _ = await post_json(self.url, payload, self.timeout, ssl_context=self.ssl_context)
                if 200 <= status <= 299:
                    return tries, None
                why, may_pass = f"HTTP {status}", status >= 500 or status in RETRY_STATUSES
            except TimeoutError:
                why = f"no answer within {self.timeout:g} s"
            except HttpCallError as exc:
                why = str(exc)
            if not may_pass or tries > self.retries or self._closing.is_set():
                return tries, why
            if tries == 1:
                log.info("%s not taken (%s); sending it again", self._which(payload), why)
            try:  # a stop cuts the wait short: one last try
                await asyncio.wait_for(self._closing.wait(), delay)
            except TimeoutError:
                delay *= 2

    def _which(self, payload: dict) -> str:
        """For the log: the service (no credentials) and the event ("publish_end of live/studio")."""
        return f"publish events {url_label(self.url)}: {payload['event']} of {safe_name(payload.get('name', '?'))}"

    async def close(self, timeout: float) -> None:
        """Send what waits (within ``timeout`` seconds: part of the node's stop), then stop."""
        if self._task is None:
            return
        self._closing.set()
        try:
            await asyncio.wait_for(self._queue.join(), timeout)
        except TimeoutError:
            log.warning("publish events %s: %d events not sent at stop", url_label(self.url), self._queue.qsize())
        self._task.cancel()
