"""Stream keys are secrets: on an open node (key = name) logs, errors and metrics name a broadcast
by a short hash of its key. Where keys are mapped to public names or tokens are required
([publish.keys], [auth] secret), a broadcast's name is public and logged as it is."""

import hashlib

# What `rtmpq config show` (and a log line with a Redis URL) prints in place of a secret. A config
# that holds it as a secret's value is refused (config.validate): it is show's output saved as a file.
REDACTED = "********"

_names_are_public = False


def names_are_public(public: bool) -> None:
    """Set by each node at start from its access settings (``not Access.open``)."""
    global _names_are_public
    _names_are_public = public


def names_public() -> bool:
    """What ``names_are_public`` last set (a node tells its transcoder child)."""
    return _names_are_public


def safe_name(broadcast: str) -> str:
    """``live/<key>`` -> ``live/#1a2b3c4d``: stable across logs, useless to an attacker."""
    if _names_are_public:
        return broadcast
    app, sep, key = broadcast.rpartition("/")
    if not sep:
        app, key = "", broadcast
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{app}/#{digest}" if app else f"#{digest}"
