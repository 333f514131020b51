"""Where broadcasts live, as leases: the decisions, with no Redis and no clock of their own.

A node that holds broadcasts for subscribers (``rtmpq up``, a relay that ingests publish into)
*registers* each one it has a publisher for: ``rtmpq:broadcast:<name>`` -> an ``Entry`` (its own
``moqt://`` URL and node id), written with a TTL and renewed while the publisher stays. Followers
(relays, edges) keep a *mirror* of the entries, fed by snapshots and by announcements on a pub/sub
channel, and act on its changes. The Redis shell (``redis.py``) moves bytes and timers; these
classes take ``now`` as an argument and return what to do.

Ordering: each claim takes a number from one Redis counter (``version``): followers keep the
highest claim per name, a withdrawal only removes the claim it names, and a counter that went
back (Redis lost its data) makes the next snapshot authoritative.
"""

import json
from dataclasses import dataclass, field

from ..errors import RemoteProtocolError
from ..redact import REDACTED

KEY_PREFIX = "rtmpq:broadcast:"
CHANNEL = "rtmpq:directory"
VERSION_KEY = "rtmpq:directory:version"

# The lease of an entry (seconds): a node that dies silently stops being the origin this long
# after its last renewal ([directory] ttl).
DEFAULT_TTL = 5.0
# Leases are renewed this many times per TTL, so one lost renewal does not drop an entry.
RENEWALS_PER_TTL = 3
# Entries a mirror keeps; more are ignored (Mirror.dropped counts them; logged once each time the
# mirror fills up) so memory stays bounded ([directory] max_entries).
MAX_ENTRIES = 100_000
# An entry's encoded size is bounded: a larger value in Redis is not ours and is ignored. So is a
# pub/sub announcement's (an entry and its name).
MAX_ENTRY_BYTES = 4096
MAX_ANNOUNCEMENT_BYTES = 2 * MAX_ENTRY_BYTES


@dataclass(frozen=True, slots=True)
class Entry:
    """One broadcast's origin: where to subscribe to it."""

    name: str  # public broadcast name, e.g. live/cam1
    url: str  # moqt://HOST:PORT of the origin node
    node: str  # the origin's node id
    version: int = 0  # the claim's number (VERSION_KEY); renewals keep it
    fingerprint: str = ""  # SHA-256 of the origin's certificate (hex), when it has a self-signed one

    def encode(self) -> str:
        return json.dumps({"url": self.url, "node": self.node, "version": self.version,
                           "fingerprint": self.fingerprint}, separators=(",", ":"))

    @classmethod
    def decode(cls, name: str, data: str | bytes) -> "Entry":
        """An entry read from Redis; RemoteProtocolError when it is not one of ours."""
        if len(data) > MAX_ENTRY_BYTES:
            raise RemoteProtocolError(f"directory entry for {name!r} is {len(data)} bytes")
        try:
            doc = json.loads(data)
            entry = cls(name, str(doc["url"]), str(doc["node"]), int(doc.get("version", 0)),
                        str(doc.get("fingerprint", "")))
        except (ValueError, KeyError, TypeError, RecursionError) as exc:  # RecursionError: nested too deep
            raise RemoteProtocolError(f"directory entry for {name!r} is not valid: {exc}") from None
        if not entry.url.startswith(("moqt://", "moq://")):
            raise RemoteProtocolError(f"directory entry for {name!r} has no moqt:// URL")
        return entry


def key_of(name: str) -> str:
    return KEY_PREFIX + name


def name_of(key: str | bytes) -> str:
    if isinstance(key, bytes):
        key = key.decode("utf-8", "surrogateescape")
    return key[len(KEY_PREFIX):]


def announcement(name: str, entry: Entry | None, *, withdrawn: Entry | None = None) -> str:
    """The pub/sub message for a claim (``entry``) or a withdrawal of the claim ``withdrawn``."""
    if entry is not None:
        return json.dumps({"name": name, "entry": json.loads(entry.encode())}, separators=(",", ":"))
    return json.dumps({"name": name, "gone": withdrawn.node if withdrawn else "",
                       "version": withdrawn.version if withdrawn else 0}, separators=(",", ":"))


# -- the registering side ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Claim:
    """Write ``name`` -> this node with a fresh version (a new publisher here takes the name)."""

    name: str


@dataclass(frozen=True, slots=True)
class Renew:
    """Extend the lease on ``entry`` if Redis still holds it (or nothing: a lapsed lease)."""

    entry: Entry


@dataclass(frozen=True, slots=True)
class Withdraw:
    """Delete ``entry`` if Redis still holds it, and announce that it went."""

    entry: Entry


class Registrar:
    """What this node must write: ``update(names, now)`` with the names it holds a publisher for,
    at least every ``ttl / RENEWALS_PER_TTL`` seconds; the shell reports back ``claimed``,
    ``superseded`` and ``failed``."""

    def __init__(self, node: str, url: str, ttl: float = DEFAULT_TTL, fingerprint: str = "") -> None:
        if ttl <= 0:
            raise ValueError("the lease TTL must be positive")
        self.node, self.url, self.ttl, self.fingerprint = node, url, ttl, fingerprint
        self.renew_every = ttl / RENEWALS_PER_TTL
        self.entries: dict[str, Entry] = {}  # names this node is the origin of, as written
        self._due: dict[str, float] = {}  # name -> when its lease is next renewed
        self._pending: set[str] = set()  # claims sent, not yet confirmed
        self._superseded: set[str] = set()  # another node took these while we still hold them

    def entry(self, name: str, version: int) -> Entry:
        return Entry(name, self.url, self.node, version, self.fingerprint)

    def update(self, names: set[str], now: float) -> list:
        actions: list = []
        for name in sorted(names - self.entries.keys() - self._pending - self._superseded):
            self._pending.add(name)
            actions.append(Claim(name))
        for name in sorted(set(self.entries) - names):
            actions.append(Withdraw(self.entries.pop(name)))
            self._due.pop(name, None)
        self._pending &= names
        self._superseded &= names  # a name that left and comes back is claimed again
        for name, entry in sorted(self.entries.items()):
            if now >= self._due[name]:
                self._due[name] = now + self.renew_every
                actions.append(Renew(entry))
        return actions

    def claimed(self, entry: Entry, now: float) -> None:
        """The claim for ``entry.name`` was written (with ``entry.version``)."""
        if entry.name not in self._pending:
            return  # the name left while the claim was on its way: the next update withdraws it
        self._pending.discard(entry.name)
        self.entries[entry.name] = entry
        self._due[entry.name] = now + self.renew_every

    def superseded(self, name: str) -> None:
        """A renewal found another node's claim: that node has the publisher now; stop renewing."""
        self.entries.pop(name, None)
        self._due.pop(name, None)
        self._superseded.add(name)

    def lapsed(self, name: str) -> None:
        """A renewal found no entry (Redis lost it, or this node was away longer than the TTL):
        the next update claims the name again, with a fresh version."""
        self.entries.pop(name, None)
        self._due.pop(name, None)

    def failed(self, name: str) -> None:
        """A claim could not be written (Redis unreachable): the next update tries again."""
        self._pending.discard(name)

    def withdraw_all(self) -> list[Withdraw]:
        """The node stops: every entry goes at once (followers need not wait for the TTL)."""
        actions = [Withdraw(e) for _, e in sorted(self.entries.items())]
        self.entries.clear()
        self._due.clear()
        self._pending.clear()
        return actions


# -- the following side -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Change:
    """``name`` moved from ``old`` to ``new`` (either may be None: appeared, vanished)."""

    name: str
    old: Entry | None
    new: Entry | None


@dataclass
class Mirror:
    """The entries a follower knows, kept from snapshots and announcements; each method returns
    the changes it made."""

    entries: dict[str, Entry] = field(default_factory=dict)
    max_entries: int = MAX_ENTRIES
    dropped: int = 0  # entries ignored because the mirror was full
    fill_ups: int = 0  # times an entry was ignored with the mirror full since it last had room
    _full: bool = False
    high_water: int = 0  # the highest claim version seen

    def _set(self, name: str, new: Entry | None, changes: list[Change]) -> None:
        old = self.entries.get(name)
        if old == new:
            return
        if new is None:
            del self.entries[name]
            self._full = False
        elif old is None and len(self.entries) >= self.max_entries:
            self.dropped += 1
            if not self._full:
                self._full = True
                self.fill_ups += 1
            return
        else:
            self.entries[name] = new
        if old is None or new is None or (old.url, old.node) != (new.url, new.node):
            changes.append(Change(name, old, new))

    def claimed(self, entry: Entry) -> list[Change]:
        """An announcement of a claim (or a lookup's answer)."""
        changes: list[Change] = []
        old = self.entries.get(entry.name)
        if old is None or entry.version >= old.version:
            self._set(entry.name, entry, changes)
            self.high_water = max(self.high_water, entry.version)
        return changes

    def withdrawn(self, name: str, node: str, version: int) -> list[Change]:
        """An announcement that ``node`` withdrew its claim ``version`` on ``name``."""
        changes: list[Change] = []
        old = self.entries.get(name)
        if old is not None and old.node == node and old.version <= version:
            self._set(name, None, changes)
        return changes

    def snapshot(self, entries: list[Entry], version_before: int) -> list[Change]:
        """Every entry in Redis, read after the version counter said ``version_before``: what is
        missing has lapsed (or was withdrawn), unless it was claimed after the read began. A counter
        below a version already seen means Redis lost its data (a restart): what it holds now is
        taken as it is, whatever the versions."""
        changes: list[Change] = []
        if version_before < self.high_water:
            fresh = {entry.name: entry for entry in entries}
            for name in sorted(set(self.entries) | set(fresh)):
                self._set(name, fresh.get(name), changes)
            self.high_water = max([version_before, *(e.version for e in fresh.values())])
            return changes
        seen = {}
        for entry in entries:
            seen[entry.name] = entry
            changes += self.claimed(entry)
        for name, old in list(self.entries.items()):
            if name not in seen and old.version <= version_before:
                self._set(name, None, changes)
        return changes

    def apply_message(self, data: str | bytes) -> list[Change]:
        """A pub/sub announcement (``announcement()``); RemoteProtocolError if it is not one."""
        if len(data) > MAX_ANNOUNCEMENT_BYTES:
            raise RemoteProtocolError(f"directory announcement is {len(data)} bytes")
        try:
            doc = json.loads(data)
            name = str(doc["name"])
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            raise RemoteProtocolError(f"directory announcement is not valid: {exc}") from None
        if "entry" in doc:
            return self.claimed(Entry.decode(name, json.dumps(doc["entry"])))
        try:
            return self.withdrawn(name, str(doc["gone"]), int(doc.get("version", 0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise RemoteProtocolError(f"directory announcement is not valid: {exc}") from None

    def origins(self) -> dict[str, list[Entry]]:
        """The origins in the mirror: URL -> its entries."""
        out: dict[str, list[Entry]] = {}
        for entry in self.entries.values():
            out.setdefault(entry.url, []).append(entry)
        return out


def safe_url(url: str) -> str:
    """A Redis URL fit for logs and ``config show``: its password masked."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    user = f"{parts.username or ''}:{REDACTED}@"
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))
