"""UpstreamProbe: whether the node above answers, for the /readyz of an edge.

An edge has no standing session upstream (it subscribes when a player asks), so it dials the
upstream every ``PROBE_INTERVAL`` and keeps the outcome; /readyz reads it without waiting.
"""

import asyncio
import logging

from ..moq.transport import connect_moq, parse_moq_url, setup_path

log = logging.getLogger("rtmpq.ops")

# Seconds between two probes, and how long one may take.
PROBE_INTERVAL = 5.0
PROBE_TIMEOUT = 3.0


class UpstreamProbe:
    def __init__(self, url: str, *, token=lambda: None, interval: float = PROBE_INTERVAL,
                 timeout: float = PROBE_TIMEOUT, **tls) -> None:
        self.host, self.port, _ = parse_moq_url(url)
        self.path = setup_path(url)  # (its query too)
        self.token = token
        self.tls = tls
        self.interval = interval
        self.timeout = timeout
        self.ok: bool | None = None  # None: not probed yet
        self.reason = "upstream not probed yet"
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def __call__(self) -> tuple[bool, str]:
        return bool(self.ok), self.reason

    async def _run(self) -> None:
        while True:
            try:
                await self._probe()
                ok, reason = True, f"upstream {self.host}:{self.port} reachable"
            except (TimeoutError, ConnectionError, OSError) as exc:
                ok, reason = False, f"upstream {self.host}:{self.port} unreachable: {exc or type(exc).__name__}"
            if ok != self.ok:
                (log.info if ok else log.warning)("readiness: %s", reason)
            self.ok, self.reason = ok, reason
            await asyncio.sleep(self.interval)

    async def _probe(self) -> None:
        async with connect_moq(self.host, self.port, path=self.path, token=self.token(), timeout=self.timeout,
                               **self.tls):
            pass
