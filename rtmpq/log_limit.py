"""Per-peer warnings said once per interval: a client that retries every few seconds (a refused
player, an encoder given the wrong scheme) tells the operator why once, not at every attempt.

Sans-I/O: the time is passed in. Memory is bounded: at most ``max_keys`` keys are remembered, the
one logged longest ago forgotten first (so a flood from many addresses logs more, never grows).
"""

# Keys (peer address, what it did) remembered at once.
MAX_LOG_KEYS = 1024


class LogLimiter:
    """``due(key, now)``: True when a line about ``key`` may be logged now (then it is not again
    for ``interval`` seconds)."""

    def __init__(self, interval: float, max_keys: int = MAX_LOG_KEYS) -> None:
        self.interval = interval
        self.max_keys = max_keys
        self._last: dict = {}  # key -> when it was last logged, oldest first

    def due(self, key, now: float) -> bool:
        last = self._last.pop(key, None)
        if last is not None and now - last < self.interval:
            self._last[key] = last
            return False
        while len(self._last) >= self.max_keys:
            del self._last[next(iter(self._last))]
        self._last[key] = now
        return True
