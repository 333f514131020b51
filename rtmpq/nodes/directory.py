"""Wiring a node to the directory ([directory] url): which broadcasts it registers, at what URL."""

import socket

from ..config import Config
from ..media.broadcast import BroadcastRegistry


async def open_directory(config: Config):
    """The node's RedisDirectory, started (Redis answered), or None without [directory] url."""
    if not config.directory.url:
        return None
    from ..directory.redis_directory import RedisDirectory

    directory = RedisDirectory(config.directory.url, node=config.directory.node_id or None,
                               ttl=config.directory.ttl, max_entries=config.directory.max_entries)
    await directory.start()
    return directory


def advertised_url(config: Config, host: str, port: int) -> str:
    """The moqt:// URL other nodes reach this node's MoQ listener at."""
    if config.directory.advertise:
        return config.directory.advertise
    if host in ("", "0.0.0.0", "::"):
        host = socket.getfqdn()  # a wildcard listener: this host's name (set [directory] advertise if others cannot resolve it)
    if ":" in host:
        host = f"[{host}]"
    return f"moqt://{host}:{port}"


def publishing(registry: BroadcastRegistry):
    """holdings() for an origin with in-process broadcasts: those with a publisher attached now (a
    broadcast in its grace period is not where a returning publisher will be)."""

    def holdings() -> set[str]:
        return {name for name in registry.names() if (b := registry.get(name)) is not None and b.publishing}

    return holdings
