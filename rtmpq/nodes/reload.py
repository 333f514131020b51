"""SIGHUP: a running node reads its stream keys, publish hook and events service and [auth]
settings again (config.RELOADABLE).

The new values replace the old ones in the node's one Config, whose sections every part holds
(the ingest's and the relay's Access, the edge's, the node token of each new link), so they take
effect at the next decision; live publishes are then checked again by the hooks (the ingest ends
one whose stream key was removed or whose token the new secret does not sign, and sends events
to the new events_url).
"""

import logging

from ..auth.tokens import MIN_SECRET_BYTES, weak_secret
from ..config import Config, ConfigError, reload_settings

log = logging.getLogger("rtmpq.nodes")


class Reloader:
    """``reload()`` is the SIGHUP handler: ``load()`` reads the configuration as at start (the same
    file, flags and environment); a file that does not load, or a change that needs a restart
    of its own (an open node closed), leaves every setting as it was."""

    def __init__(self, config: Config, load) -> None:
        self.config = config
        self.load = load
        self.hooks: list = []  # () -> None, run after settings were taken

    def reload(self) -> bool:
        try:
            taken, later = reload_settings(self.config, self.load())
        except ConfigError as exc:
            log.error("SIGHUP: configuration not reloaded: %s; the settings in use stay", exc)
            return False
        if later:
            log.warning("SIGHUP: %s changed, which is read at start only: in effect after a restart",
                        ", ".join(later))
        if "auth.secret" in taken:
            warn_if_weak(self.config.auth.secret)
        log.info("SIGHUP: configuration reloaded; %s", f"now in effect: {', '.join(taken)}" if taken
                 else "no stream key or [auth] setting changed")
        for hook in self.hooks:
            hook()
        return True


def warn_if_weak(secret: str) -> None:
    """At start and on reload: a short [auth] secret is said (tokens signed with it can be guessed)."""
    if secret and weak_secret(secret):
        log.warning("[auth] secret is short: use at least %d random bytes (e.g. openssl rand -hex 32)",
                    MIN_SECRET_BYTES)
