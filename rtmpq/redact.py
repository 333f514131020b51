"""Stream keys are secrets: logs, errors and metrics name a broadcast by a short hash of its key."""

import hashlib


def safe_name(broadcast: str) -> str:
    """``live/<key>`` -> ``live/#1a2b3c4d``: stable across logs, useless to an attacker."""
    app, sep, key = broadcast.rpartition("/")
    if not sep:
        app, key = "", broadcast
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{app}/#{digest}" if app else f"#{digest}"
