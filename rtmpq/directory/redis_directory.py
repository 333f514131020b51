"""The directory on Redis: the asyncio shell around ``core.Registrar`` and ``core.Mirror``.

- ``register(holdings, url)``: every ``REGISTRAR_POLL`` seconds asks the node which broadcasts it
  holds a publisher for, and claims, renews (a compare-and-set script: never over another node's
  claim) and withdraws (compare-and-delete) their entries, announcing claims and withdrawals on
  the pub/sub channel.
- ``follow()``: a mirror of every entry, from the channel (moves are seen at once) and from a
  snapshot every ``poll`` seconds (lapsed leases: a node that died silently). ``listen(callback)``
  gets each batch of changes.

Redis being unreachable is not fatal, at start or later: the node goes on with what it has and
retries; its leases lapse if it cannot renew them, which is what followers should see. A refusal
that retrying cannot mend (a wrong password, no such database) stops the node at start.
"""

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable

import redis.asyncio  # imported only by nodes given a directory (nodes/directory.py)
import redis.exceptions

from ..errors import RemoteProtocolError
from ..redact import safe_name
from .core import (CHANNEL, DEFAULT_TTL, KEY_PREFIX, MAX_ENTRIES, RENEWALS_PER_TTL, VERSION_KEY, Change, Claim, Entry,
                   Mirror, Registrar, Renew, Withdraw, announcement, key_of, name_of, safe_url)

log = logging.getLogger("rtmpq.directory")

# How often a registering node compares what it holds with what it wrote (seconds): a publisher
# that arrives or leaves is in the directory this long after at most.
REGISTRAR_POLL = 0.2
# Seconds between attempts to reach Redis after an error.
RETRY_INTERVAL = 1.0
# While Redis stays unreachable, the warning is repeated this often (seconds), not at every retry.
OUTAGE_LOG_INTERVAL = 60.0
# Keys asked per SCAN step of a snapshot.
SCAN_COUNT = 1000

# Renew a lease only while it is ours: 1 renewed, 2 lapsed (claimed again with a fresh version),
# 0 another node holds the name.
_RENEW = """
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
if v == false then return 2 end
return 0
"""
# Delete an entry only if it is still ours.
_WITHDRAW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def default_node_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class DirectoryUnavailable(ConnectionError):
    """Redis refused this node at start for a reason retrying cannot mend (its password, its database)."""


class RedisDirectory:
    def __init__(self, url: str, *, node: str | None = None, ttl: float = DEFAULT_TTL,
                 poll: float | None = None, max_entries: int = MAX_ENTRIES) -> None:
        self.url = url
        self.node = node or default_node_id()
        self.ttl = ttl
        self.poll = poll if poll is not None else ttl / RENEWALS_PER_TTL
        self.redis = redis.asyncio.from_url(url, socket_connect_timeout=2, socket_timeout=max(2.0, ttl))
        self.mirror = Mirror(max_entries=max_entries)
        self._fill_ups_told = 0  # the mirror's fill-ups logged
        self.registrar: Registrar | None = None
        self._listeners: list[Callable[[list[Change]], None]] = []
        self._changed = asyncio.Event()  # set (and replaced) at every change of the mirror
        self._tasks: list[asyncio.Task] = []
        self._renew = self.redis.register_script(_RENEW)
        self._withdraw = self.redis.register_script(_WITHDRAW)
        self.answered = False  # Redis has answered since this node started (for /readyz)
        self._outage_since: float | None = None  # when Redis stopped answering, if it has
        self._outage_told = 0.0

    async def start(self) -> None:
        """Asks Redis once. A refusal that retrying cannot mend (a wrong password, no such
        database) raises DirectoryUnavailable: the node does not start. Redis not answering (not
        started yet, a pod not ready, a name not resolvable yet) is said and retried in the
        background: the node starts, and ``ready()`` is False until Redis first answers (before,
        the node exited, and a pod started before Redis was restarted with growing back-off)."""
        try:
            await self.redis.ping()
        except asyncio.CancelledError:
            raise
        except (redis.exceptions.AuthenticationError, redis.exceptions.ResponseError) as exc:
            raise DirectoryUnavailable(f"directory {safe_url(self.url)}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - ConnectionError, TimeoutError, OSError: it may come
            self._trouble(exc)
            self._tasks.append(asyncio.get_running_loop().create_task(self._wait_for_answer()))
        else:
            self._answering()
        log.info("directory %s, node %s, lease %g s", safe_url(self.url), self.node, self.ttl)

    def ready(self) -> tuple[bool, str]:
        """For /readyz: whether Redis has answered since the node started."""
        if self.answered:
            return True, "directory answers"
        return False, f"directory {safe_url(self.url)} has not answered yet"

    async def _wait_for_answer(self) -> None:
        while not self.answered:
            await asyncio.sleep(RETRY_INTERVAL)
            try:
                await self.redis.ping()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - still down: said once per OUTAGE_LOG_INTERVAL
                self._trouble(exc)
            else:
                self._answering()

    def _trouble(self, exc: BaseException) -> None:
        """Redis did not answer: a warning when this starts, and once per OUTAGE_LOG_INTERVAL while
        it lasts (every loop retries each RETRY_INTERVAL: a line each time buried the log)."""
        now = time.monotonic()
        if self._outage_since is None:
            self._outage_since = now
        elif now - self._outage_told < OUTAGE_LOG_INTERVAL:
            return
        self._outage_told = now
        down = now - self._outage_since
        log.warning("directory %s does not answer%s: %s; retrying every %g s%s", safe_url(self.url),
                    f" (for {down:.0f} s)" if down >= 1 else "", exc, RETRY_INTERVAL,
                    "" if self.answered else "; this node is not ready (/readyz) until it answers")

    def _answering(self) -> None:
        if self._outage_since is not None:
            log.info("directory %s answers again (after %.0f s)", safe_url(self.url),
                     time.monotonic() - self._outage_since)
        self._outage_since = None
        self.answered = True

    async def close(self) -> None:
        """Withdraws this node's entries (followers move at once, not after the TTL), then stops."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        if self.registrar is not None:
            for action in self.registrar.withdraw_all():
                try:
                    await self._apply(action)
                except Exception as exc:  # noqa: BLE001 - the leases lapse by themselves
                    log.warning("directory: could not withdraw %s: %s", safe_name(action.entry.name), exc)
        await self.redis.aclose()

    # -- registering ------------------------------------------------------------------------------
    def register(self, holdings: Callable[[], set[str]], url: str, fingerprint: str = "") -> None:
        """Keep an entry for every name ``holdings()`` returns, pointing at ``url`` (this node)."""
        self.registrar = Registrar(self.node, url, self.ttl, fingerprint)
        self._tasks.append(asyncio.get_running_loop().create_task(self._register(holdings)))

    async def _register(self, holdings) -> None:
        while True:
            try:
                actions = self.registrar.update(set(holdings()), time.monotonic())
                for action in actions:
                    await self._apply(action)
                if actions:
                    self._answering()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Redis down: retry, leases lapse meanwhile
                self._trouble(exc)
                await asyncio.sleep(RETRY_INTERVAL)
            await asyncio.sleep(REGISTRAR_POLL)

    async def _apply(self, action) -> None:
        ttl_ms = str(int(self.ttl * 1000))
        if isinstance(action, Claim):
            try:
                version = await self.redis.incr(VERSION_KEY)
                entry = self.registrar.entry(action.name, int(version))
                await self.redis.set(key_of(action.name), entry.encode(), px=int(ttl_ms))
                await self.redis.publish(CHANNEL, announcement(action.name, entry))
            except Exception:
                self.registrar.failed(action.name)
                raise
            self.registrar.claimed(entry, time.monotonic())
            log.info("directory: %s is here (%s)", safe_name(action.name), self.registrar.url)
        elif isinstance(action, Renew):
            result = await self._renew(keys=[key_of(action.entry.name)], args=[action.entry.encode(), ttl_ms])
            if result == 0:
                self.registrar.superseded(action.entry.name)
                log.info("directory: %s was claimed by another node", safe_name(action.entry.name))
            elif result == 2:  # the lease lapsed (Redis restarted, or this node stalled): claim again
                self.registrar.lapsed(action.entry.name)
                log.warning("directory: the lease on %s had lapsed; claiming it again", safe_name(action.entry.name))
        elif isinstance(action, Withdraw):
            if await self._withdraw(keys=[key_of(action.entry.name)], args=[action.entry.encode()]):
                await self.redis.publish(CHANNEL, announcement(action.entry.name, None, withdrawn=action.entry))
                log.info("directory: %s withdrawn", safe_name(action.entry.name))

    # -- following --------------------------------------------------------------------------------
    def listen(self, callback: Callable[[list[Change]], None]) -> None:
        self._listeners.append(callback)

    def follow(self) -> None:
        """Keep ``self.mirror`` up to date from now on."""
        self._tasks.append(asyncio.get_running_loop().create_task(self._follow()))

    def lookup(self, name: str) -> Entry | None:
        return self.mirror.entries.get(name)

    def metrics(self):
        """For NodeView.collectors (a node that follows): the entries its mirror ignored, full."""
        from prometheus_client.core import CounterMetricFamily

        yield CounterMetricFamily("rtmpq_directory_ignored_entries", "directory entries this node ignored because "
                                  "it knew [directory] max_entries broadcasts (one still ignored counts again at "
                                  "each snapshot)", value=self.mirror.dropped)

    async def changed(self) -> None:
        """Returns at the next change of the mirror."""
        await self._changed.wait()

    def _changes(self, changes: list[Change]) -> None:
        if self.mirror.fill_ups > self._fill_ups_told:
            self._fill_ups_told = self.mirror.fill_ups
            log.warning("directory %s: this node knows [directory] max_entries (%d) broadcasts; more are "
                        "ignored until some lapse (%d ignored so far)", safe_url(self.url), self.mirror.max_entries,
                        self.mirror.dropped)
        if not changes:
            return
        for change in changes:
            new = change.new.url if change.new else "nowhere"
            log.info("directory: %s -> %s", safe_name(change.name), new)
        event, self._changed = self._changed, asyncio.Event()
        event.set()
        for callback in list(self._listeners):
            callback(changes)

    async def _follow(self) -> None:
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(CHANNEL)
                next_snapshot = 0.0
                while True:
                    now = time.monotonic()
                    if now >= next_snapshot:  # subscribed first, so no claim falls between the two
                        self._changes(await self._snapshot())
                        self._answering()
                        next_snapshot = now + self.poll
                    message = await pubsub.get_message(timeout=max(next_snapshot - time.monotonic(), 0.01))
                    if message is not None and message.get("type") == "message":
                        try:
                            self._changes(self.mirror.apply_message(message["data"]))
                        except RemoteProtocolError as exc:
                            log.warning("directory: %s", exc)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Redis down: keep the mirror, retry
                self._trouble(exc)
                await asyncio.sleep(RETRY_INTERVAL)
            finally:
                try:
                    await pubsub.aclose()
                except Exception:  # noqa: BLE001
                    pass

    async def _snapshot(self) -> list[Change]:
        version = int(await self.redis.get(VERSION_KEY) or 0)
        entries: list[Entry] = []
        keys = [k async for k in self.redis.scan_iter(match=KEY_PREFIX + "*", count=SCAN_COUNT)]
        for start in range(0, len(keys), SCAN_COUNT):
            chunk = keys[start:start + SCAN_COUNT]
            for key, value in zip(chunk, await self.redis.mget(chunk)):
                if value is None:
                    continue  # lapsed between SCAN and MGET
                try:
                    entries.append(Entry.decode(name_of(key), value))
                except RemoteProtocolError as exc:
                    log.warning("directory: %s", exc)
        return self.mirror.snapshot(entries, version)
