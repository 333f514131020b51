"""SUBSCRIBEs a relay holds until it can place them: for a session upstream that is not up yet, or
for a track a new local broadcast has not announced yet (relay.py)."""

# A new broadcast's tracks appear as their sequence headers arrive: for this long after a publish
# starts, a SUBSCRIBE to a track it does not have yet waits for it instead of being refused.
NEW_TRACK_WAIT = 3.0
# At most this many such SUBSCRIBEs wait per broadcast, and this many wait for a session upstream
# (all broadcasts together); more are refused at once ([moq] max_waiting_subscribes).
MAX_WAITING_SUBSCRIBES = 256
# A relay with an upstream (`rtmpq relay --upstream`) whose session there is not up (it just
# started, or the link is reconnecting, RECONNECT_MAX apart at most) holds a SUBSCRIBE to a
# broadcast it does not know this long (seconds), and passes it up once the session is, instead of
# refusing it: a restarted relay's viewers come back at once, often before its own session does
# ([moq] upstream_wait).
UPSTREAM_WAIT = 12.0


class WaitingSubscribes:
    """SUBSCRIBEs held for a session upstream that is not up yet, in the order they came, at most
    ``limit`` of them (relay.py sets each one's timer and answers it; this only keeps them)."""

    def __init__(self, limit: int = MAX_WAITING_SUBSCRIBES) -> None:
        self.limit = limit
        self._held: list[tuple] = []  # (conn, SubscribeRequested)

    def __iter__(self):
        return iter(self._held)

    def __len__(self) -> int:
        return len(self._held)

    def add(self, conn, request) -> bool:
        """Hold ``request`` of ``conn``; False (not held) when ``limit`` are held already."""
        if len(self._held) >= self.limit:
            return False
        self._held.append((conn, request))
        return True

    def withdraw(self, conn, request_id: int | None = None) -> None:
        """Forget ``conn``'s SUBSCRIBE ``request_id`` (withdrawn), or all of ``conn``'s (its session closed)."""
        self._held = [(c, r) for c, r in self._held
                      if c is not conn or (request_id is not None and r.request_id != request_id)]

    def take(self, namespace: tuple[str, ...] | None = None) -> list[tuple]:
        """Those held (all, or ``namespace``'s), in the order they came: no longer held."""
        taken = [(c, r) for c, r in self._held if namespace is None or r.namespace == namespace]
        self._held = [w for w in self._held if w not in taken]
        return taken

    def expire(self, conn, request) -> bool:
        """``request``'s wait is over: whether it was still held (it is not any more)."""
        if (conn, request) in self._held:
            self._held.remove((conn, request))
            return True
        return False
