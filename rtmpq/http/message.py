"""What an HTTP application sees and returns, the same whichever HTTP version carried it."""

from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import parse_qs


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
