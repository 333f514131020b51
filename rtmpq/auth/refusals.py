"""Slowing down stream key guessing: the publishes refused to each client address (an IPv6
client's /64), and the addresses whose publishes are refused outright for a cool-down after too
many refusals in a window ([rtmp] max_refused_publishes, refused_publish_window,
refused_publish_cooldown).

Sans-I/O: the time is passed in (seconds, any monotonic clock). Memory is bounded: at most
MAX_TRACKED_ADDRESSES addresses, a few numbers each; when full, the address refused longest ago is
forgotten first. Neither keys nor names are kept, only how many were refused.
"""

import ipaddress
from collections import OrderedDict
from dataclasses import dataclass

# After this many publishes refused (unknown key, token refused) from one address within
# REFUSED_PUBLISH_WINDOW seconds, that address's publishes are refused for
# REFUSED_PUBLISH_COOLDOWN seconds: 10 guesses, then 2 minutes of waiting, per address, while an
# encoder with a mistyped key learns why within a minute of retries.
MAX_REFUSED_PUBLISHES = 10
REFUSED_PUBLISH_WINDOW = 60.0
REFUSED_PUBLISH_COOLDOWN = 120.0
# Addresses tracked at once (tracemalloc: ~250 bytes an IPv6 entry, 1.0 MB when full). A guesser
# spread over more addresses than this (IPv6) pushes the oldest out early.
MAX_TRACKED_ADDRESSES = 4096
# An IPv6 client is counted by its /64 (RFC 6177: what one site, often one host, is given; a host
# picks addresses in it at will, privacy extensions do it on their own). Counted whole, a guesser
# with one /64 had 10 guesses per address it chose: unlimited, and the table churned.
IPV6_COUNTED_PREFIX = 64


def counted_address(address: str) -> str:
    """What refusals are counted by: an IPv4 address (IPv4-mapped too) whole, an IPv6 address's
    /64 (``2001:db8:1:2::/64``); anything else as it is."""
    try:
        ip = ipaddress.ip_address(address.strip("[]").partition("%")[0])
    except ValueError:
        return address
    if ip.version == 4:
        return str(ip)
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ipaddress.IPv6Network((ip, IPV6_COUNTED_PREFIX), strict=False))


@dataclass(slots=True)
class _Address:
    refused: int  # refusals in the window that began at window_start
    window_start: float
    cooldown_until: float  # 0: not cooling down


class RefusedPublishes:
    """Counts refused publishes per address; ``refused()`` says when an address starts its
    cool-down, ``cooldown_left()`` whether it is in one."""

    def __init__(self, limit: int = MAX_REFUSED_PUBLISHES, window: float = REFUSED_PUBLISH_WINDOW,
                 cooldown: float = REFUSED_PUBLISH_COOLDOWN, max_addresses: int = MAX_TRACKED_ADDRESSES) -> None:
        self.limit = limit  # 0: never cool down
        self.window = window
        self.cooldown = cooldown
        self.max_addresses = max_addresses
        self._addresses: OrderedDict[str, _Address] = OrderedDict()  # least recently refused first
        self._asking: dict[str, int] = {}  # address -> its publishes the publish hook has yet to answer

    def __len__(self) -> int:
        return len(self._addresses)

    def cooldown_left(self, address: str, now: float) -> float:
        """Seconds ``address`` must still wait before it may publish (0: it may)."""
        address = counted_address(address)
        entry = self._addresses.get(address)
        return max(0.0, entry.cooldown_until - now) if entry is not None else 0.0

    def may_ask(self, address: str, now: float) -> bool:
        """Whether a publish from ``address`` may be put to the publish hook now: its refusals in
        the window plus the answers still awaited for it stay under the limit. A refusal is counted
        when the hook answers, so without this a guesser's publishes sent at once (up to
        [rtmp] max_connections_per_ip connections, several streams each) all reached the hook
        before the first counted."""
        address = counted_address(address)
        if self.limit <= 0:
            return True
        entry = self._addresses.get(address)
        refused = entry.refused if entry is not None and now - entry.window_start <= self.window else 0
        return refused + self._asking.get(address, 0) < self.limit

    def asking(self, address: str) -> None:
        """A publish from ``address`` was put to the publish hook."""
        address = counted_address(address)
        self._asking[address] = self._asking.get(address, 0) + 1

    def answered(self, address: str) -> None:
        """The hook answered (or failed to) a publish ``asking`` counted."""
        address = counted_address(address)
        left = self._asking.pop(address, 0) - 1
        if left > 0:
            self._asking[address] = left

    def refused(self, address: str, now: float) -> int:
        """A publish from ``address`` was refused. Returns the refusals counted in its window when
        this one starts its cool-down (to be logged once), else 0."""
        address = counted_address(address)
        if self.limit <= 0:
            return 0
        self._forget_stale(now)
        entry = self._addresses.get(address)
        if entry is None:
            while len(self._addresses) >= self.max_addresses:
                self._addresses.popitem(last=False)
            entry = self._addresses[address] = _Address(0, now, 0.0)
        else:
            self._addresses.move_to_end(address)
            if now - entry.window_start > self.window:
                entry.refused, entry.window_start = 0, now
        entry.refused += 1
        if entry.refused < self.limit:
            return 0
        count = entry.refused
        entry.refused, entry.window_start, entry.cooldown_until = 0, now, now + self.cooldown
        return count

    def _forget_stale(self, now: float) -> None:
        """Drop, oldest first, the addresses whose window and cool-down are both over."""
        addresses = self._addresses
        while addresses:
            entry = next(iter(addresses.values()))
            if now - entry.window_start <= self.window or now < entry.cooldown_until:
                return
            addresses.popitem(last=False)
