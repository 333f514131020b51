"""Follow a broadcast over MoQ for as long as it lives, through its origin's restarts.

``follow_broadcast`` yields what ``subscribe_broadcast`` yields, but when the session is lost
(the upstream node restarted, GOAWAY, a network outage) it reconnects with backoff and
subscribes again, as long as the broadcast comes back within ``wait`` seconds. A first
connection that fails is reported at once (a wrong address should not look like a wait).
"""

import asyncio
import logging
from collections.abc import AsyncIterator

from ..media.frames import Frame, NotLive
from ..redact import safe_name
from .client import SkipMemory, SkippedGroup, SubscribeError, TrackChoice, subscribe_broadcast
from .datagram_order import DatagramOrder
from .reachability import REFUSED_RECONNECT_MAX, reconnect_delay
from .transport import connect_moq
from .wire import RequestError

log = logging.getLogger("rtmpq.moq")

# Seconds between reconnection attempts (doubling up to the maximum; up to refused_reconnect_max
# after an attempt the upstream's closed port refused).
RECONNECT_MIN = 0.25
RECONNECT_MAX = 5.0


class BroadcastGone(ConnectionError):
    """The broadcast did not come back (or the upstream did not) within the wait."""


async def follow_broadcast(host: str, port: int, broadcast: str, *, wait: float, token: str | None = None,
                           delivery_timeout_ms: int | None = None, choice: TrackChoice | None = None,
                           fill_groups: int = 0, tail_wait: float = 0.0,
                           refused_reconnect_max: float = REFUSED_RECONNECT_MAX, datagrams: DatagramOrder | None = None,
                           say_not_live: bool = False, **tls) -> AsyncIterator:
    """Catalog / Frame / SkippedGroup items; ends when the broadcast ends. ``tls`` takes
    connect_moq's insecure / cafile / fingerprint / backend / idle_timeout / session_caps. ``fill_groups``: the first
    subscription starts with up to this many cached groups before the live edge
    (subscribe_broadcast); one after a reconnection goes on from the live edge. ``tail_wait``:
    subscribe_broadcast's (an older group's tail before a newer group's frames).
    ``refused_reconnect_max``: the longest pause after an attempt the upstream's closed port refused.
    ``datagrams``: counts the datagram objects dropped, across reconnections (subscribe_broadcast).
    ``say_not_live``: subscribe_broadcast's (a NotLive item when the upstream has no such broadcast)."""
    loop = asyncio.get_running_loop()
    delay = RECONNECT_MIN
    connected_once = False
    deadline = loop.time() + wait
    skips = SkipMemory()  # a group skipped before a reconnection and again after it is reported once
    lost_at: float | None = None  # when the upstream was lost, until media comes again
    last_media: float | None = None  # when the last frame came (a silent death is known lost only later)
    while True:
        try:
            async with connect_moq(host, port, **tls, token=token) as conn:
                connected_once = True
                async for item in subscribe_broadcast(conn, broadcast, wait=max(deadline - loop.time(), 0.0),
                                                      delivery_timeout_ms=delivery_timeout_ms, authorization=token,
                                                      choice=choice, fill_groups=fill_groups, skips=skips,
                                                      tail_wait=tail_wait, datagrams=datagrams,
                                                      say_not_live=say_not_live):
                    if isinstance(item, Frame):
                        fill_groups = 0  # what follows a reconnection continues what was handed on
                        now = loop.time()
                        if lost_at is not None:  # the warning that it was lost gets its answer
                            gap = now - (last_media if last_media is not None else lost_at)
                            log.info("%s: upstream %s:%d back; media again %.1f s after the last "
                                     "(%.1f s after its loss was known)", safe_name(broadcast), host, port, gap,
                                     now - lost_at)
                            lost_at = None
                        last_media = now
                    delay = RECONNECT_MIN
                    if not isinstance(item, (SkippedGroup, NotLive)):
                        deadline = loop.time() + wait  # alive: a later loss gets the whole wait again
                    yield item
                return  # PUBLISH_DONE on every track: the broadcast ended
        except SubscribeError as exc:
            # not live (yet), or the relay's own upstream did not answer in time (TIMEOUT): both
            # refusals of the moment, asked again while the wait lasts
            if exc.code not in (RequestError.DOES_NOT_EXIST, RequestError.TIMEOUT) or loop.time() >= deadline:
                raise
        except (ConnectionError, OSError) as exc:
            if not connected_once:
                raise
            if lost_at is None:
                lost_at = loop.time()
                # the wait for a lost upstream runs from when its loss is known: one that died
                # without a word (SIGKILL, a host gone) is known lost only at QUIC's idle timeout,
                # as long as the wait by default, by when a wait counted from the last media is over
                deadline = max(deadline, lost_at + wait)
            if loop.time() >= deadline:
                raise BroadcastGone(f"{safe_name(broadcast)}: upstream {host}:{port} lost and not back within "
                                    f"{wait:g} s: {exc}") from None
            delay = reconnect_delay(delay, exc, refused_reconnect_max)
            log.warning("%s: upstream %s:%d lost (%s); reconnecting in %.2f s", safe_name(broadcast), host, port,
                        exc, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, RECONNECT_MAX)
