"""Where a node's HTTP listener is, for a health check that does not know the node's command line.

A node with an HTTP listener of its own (``--http HOST:PORT``, [http] host/port in its config file
or the environment) writes that listener's URL to ``<state_dir>/http.url`` once it listens, and
removes it when it stops. ``rtmpq health`` reads it and GETs ``/healthz`` there: the image's
HEALTHCHECK runs it (it asked the port of RTMPQ_HTTP_PORT, 8080 unless set, whatever port the
command line gave). Nodes that share a state dir (several on one host, outside containers) share
the file: it names the one that started last; a container has one node and its own state dir.
"""

import logging
import os
import ssl
import urllib.error
import urllib.request
from pathlib import Path

log = logging.getLogger("rtmpq.ops")

HTTP_URL_FILE = "http.url"
# Seconds `rtmpq health` waits for /healthz (the image's HEALTHCHECK gives the command 3 s).
HEALTH_TIMEOUT = 2.0


def _local_url(scheme: str, host: str, port: int) -> str:
    """The URL a process on this host reaches the listener by (a wildcard address: loopback)."""
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def write_http_url(state_dir: Path, http) -> str | None:
    """Write the URL of ``http`` (a started rtmpq.http.server.HttpServer) to ``state_dir``/http.url
    (whole: a reader never sees half of it); the URL, or None (a warning said why) if the state dir
    cannot be written."""
    url = _local_url(http.scheme, *http.address)
    path = Path(state_dir) / HTTP_URL_FILE
    part = path.with_name(f".{HTTP_URL_FILE}.{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        part.write_text(url + "\n")
        os.replace(part, path)
    except OSError as exc:
        log.warning("cannot write %s (%s): `rtmpq health` (the image's HEALTHCHECK) will not find this node's "
                    "HTTP listener", path, exc.strerror or exc)
        return None
    return url


def remove_http_url(state_dir: Path, url: str | None) -> None:
    """Remove ``state_dir``/http.url if it still names ``url`` (not a node started since)."""
    path = Path(state_dir) / HTTP_URL_FILE
    try:
        if url is not None and path.read_text().strip() == url:
            path.unlink()
    except OSError:
        pass


def check_health(state_dir: Path, timeout: float = HEALTH_TIMEOUT) -> tuple[bool, str]:
    """(healthy, what was found): GET /healthz of the listener ``state_dir``/http.url names. An
    HTTPS listener's certificate is not verified: the URL is this host's own node."""
    path = Path(state_dir) / HTTP_URL_FILE
    try:
        url = path.read_text().strip()
    except OSError as exc:
        return False, (f"cannot read {path} ({exc.strerror or exc}): no node with an HTTP listener runs with this "
                       "state dir (--state-dir, RTMPQ_MOQ_STATE_DIR, [moq] state_dir)")
    context = ssl._create_unverified_context() if url.startswith("https:") else None
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=timeout, context=context) as response:
            return response.status == 200, f"{url}/healthz: {response.status}"
    except urllib.error.HTTPError as exc:
        return False, f"{url}/healthz: {exc.code}"
    except (OSError, ValueError) as exc:
        return False, f"{url}/healthz: {getattr(exc, 'reason', None) or exc}"
