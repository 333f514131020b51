"""Single byte ranges (RFC 9110 14): a ``Range: bytes=...`` GET of a body whose length is known.

Players that fetch media in pieces (Safari/AVPlayer, some TVs) send ``Range``. One range is
answered 206 with ``Content-Range``; a range that starts past the end, 416 with ``bytes */LENGTH``.
Anything else is answered whole with 200, as RFC 9110 14.2 allows a server that ignores a Range:
several ranges (a multipart/byteranges answer would buy players nothing on parts of a few kB), a
Range that does not parse or names another unit, and an ``If-Range`` (we send no validator, so
none can match: 13.1.5). The body is sliced as views of its buffers, never joined.
"""

import re

from .message import Response, text

ACCEPT_RANGES = ("Accept-Ranges", "bytes")

_SPEC = re.compile(r"^\s*bytes\s*=\s*(?:(\d{1,19})\s*-\s*(\d{0,19})|-\s*(\d{1,19}))\s*$", re.I)


def byte_range(response: Response, range_header: str | None, if_range: str | None) -> Response:
    """``response`` (a whole 200) as the answer to a GET with these headers: itself, or 206 / 416."""
    if range_header is None or if_range is not None or response.status != 200:
        return response
    m = _SPEC.match(range_header)
    if m is None:  # several ranges, another unit, or not a range at all: the whole body
        return response
    length = response.length
    if m[3] is not None:  # the last N bytes
        first, last = max(0, length - int(m[3])), length - 1
        if int(m[3]) == 0:
            first = length  # "-0" selects nothing: unsatisfiable
    else:
        first = int(m[1])
        last = min(int(m[2]), length - 1) if m[2] else length - 1
        if m[2] and int(m[2]) < first:  # last before first: not a valid range, ignored (14.1.1)
            return response
    if first >= length or last < first:
        refused = text(416, f"range not satisfiable: the body has {length} bytes")
        refused.headers += [ACCEPT_RANGES, ("Content-Range", f"bytes */{length}")]
        return refused
    headers = [h for h in response.headers] + [("Content-Range", f"bytes {first}-{last}/{length}")]
    return Response(206, _slice(response.chunks(), first, last + 1), response.content_type, response.cache, headers)


def _slice(chunks, start: int, end: int) -> list[memoryview]:
    """Views of bytes [start, end) of the concatenation of ``chunks``."""
    out, offset = [], 0
    for chunk in chunks:
        n = len(chunk)
        if offset + n > start and offset < end:
            out.append(memoryview(chunk)[max(0, start - offset):min(n, end - offset)])
        offset += n
    return out
