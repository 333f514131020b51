"""What an HTTP application sees and returns, the same whichever HTTP version carried it."""

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import parse_qs

_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")
_ABSOLUTE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/?]*")


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    query: str  # the raw query string, without '?'
    headers: dict[str, str]  # lower-case names
    client: str  # the peer's IP address
    version: str  # "1.0", "1.1" or "2"

    def arg(self, name: str) -> str | None:
        values = parse_qs(self.query).get(name)
        return values[0] if values else None


@dataclass(slots=True)
class Response:
    """A whole response. ``body`` is bytes or a sequence of buffers (written one after another
    with the socket's backpressure in between, never joined into one copy)."""

    status: int
    body: bytes | memoryview | Sequence = b""
    content_type: str = "text/plain; charset=utf-8"
    cache: str = "no-store"
    headers: list[tuple[str, str]] = field(default_factory=list)

    def chunks(self) -> Sequence:
        return (self.body,) if isinstance(self.body, (bytes, bytearray, memoryview)) else self.body

    @property
    def length(self) -> int:
        return sum(len(c) for c in self.chunks())


def text(status: int, message: str) -> Response:
    return Response(status, (message + "\n").encode())


def path_segments(path: str) -> list[str]:
    """The segments of a request's path, each percent-decoded (RFC 3986 2.1, as UTF-8: 2.5) after
    the path is split at its slashes, so an encoded slash (%2F) stays inside its segment and never
    becomes a separator. ValueError for a '%' not followed by two hex digits, or bytes that are
    not UTF-8."""
    segments = []
    for raw in path.split("/"):
        data = raw.encode("latin-1")  # h11 and h2 give the target as latin-1: these are its bytes
        if b"%" in data:
            if data.count(b"%") != len(_ESCAPE.findall(data)):
                raise ValueError("a '%' in the path is not followed by two hex digits")
            data = _ESCAPE.sub(lambda m: bytes((int(m[1], 16),)), data)
        try:
            segments.append(data.decode("utf-8"))
        except UnicodeDecodeError:
            raise ValueError("the path's percent-encoded bytes are not UTF-8") from None
    return segments


def origin_form(target: str) -> str:
    """A request target as its path and query: the absolute-form (``http://host/path?q``, which
    RFC 9112 3.2.2 says a server MUST accept: clients set up for a proxy, some HTTP/1.0-era
    players) loses its scheme and authority; ``/`` when it has no path."""
    m = _ABSOLUTE.match(target)
    if m is None:
        return target
    rest = target[m.end():]
    return rest if rest.startswith("/") else "/" + rest
