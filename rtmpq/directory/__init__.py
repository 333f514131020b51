"""Where broadcasts live when there are many hosts: leases in Redis (DESIGN.md, "Directory for
many hosts"). ``core`` decides (sans-I/O, the time passed in); ``redis_directory`` talks to Redis."""

from .core import DEFAULT_TTL, Change, Entry, Mirror, Registrar

__all__ = ["DEFAULT_TTL", "Change", "Entry", "Mirror", "Registrar"]
