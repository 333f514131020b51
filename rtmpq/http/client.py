"""The node's own HTTP/1.1 calls out (h11), one request per connection: the publish hook.

Only what such a call needs: a POST of a JSON body, the status and a bounded body back, all within
one timeout. ``http://user:password@host/`` sends the credentials as Basic authorization.
"""

import asyncio
import base64
import json
import ssl
from urllib.parse import unquote, urlsplit

import h11

from .. import __version__

# Bytes of a response body read at most: a hook's answer is a small JSON object; a larger one is
# an error, not something to hold in memory.
MAX_RESPONSE_BYTES = 64 * 1024
READ_SIZE = 16 * 1024


class HttpCallError(Exception):
    """The call failed (no connection, TLS, a malformed or too large answer); the message is
    safe to log (never the URL's credentials or query)."""


def url_label(url: str) -> str:
    """``scheme://host:port/path`` of ``url``, for logs: no credentials, no query."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname or ''}{port}{parts.path}"


async def post_json(url: str, payload: dict, timeout: float, *, ssl_context: ssl.SSLContext | None = None
                    ) -> tuple[int, bytes]:
    """POST ``payload`` as JSON to ``url``: (status, body). TimeoutError past ``timeout`` seconds
    in all; HttpCallError for anything else that went wrong."""
    parts = urlsplit(url)
    https = parts.scheme == "https"
    host, port = parts.hostname or "", parts.port or (443 if https else 80)
    body = json.dumps(payload).encode()
    headers = [("Host", parts.netloc.rpartition("@")[2]), ("User-Agent", f"rtmpq/{__version__}"),
               ("Content-Type", "application/json"), ("Content-Length", str(len(body))), ("Connection", "close")]
    if parts.username is not None:
        user = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        headers.append(("Authorization", "Basic " + base64.b64encode(user.encode()).decode()))
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    async with asyncio.timeout(timeout):
        try:
            reader, writer = await asyncio.open_connection(
                host, port, ssl=(ssl_context or ssl.create_default_context()) if https else None)
        except OSError as exc:  # refused, unreachable, TLS verification
            raise HttpCallError(f"cannot connect: {exc.strerror or exc}") from None
        try:
            conn = h11.Connection(h11.CLIENT)
            writer.write(conn.send(h11.Request(method="POST", target=target, headers=headers))
                         + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
            await writer.drain()
            status, chunks, size = 0, [], 0
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await reader.read(READ_SIZE))  # b"": the peer closed
                elif isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    size += len(event.data)
                    if size > MAX_RESPONSE_BYTES:
                        raise HttpCallError(f"an answer larger than {MAX_RESPONSE_BYTES} bytes")
                    chunks.append(event.data)
                elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                    return status, b"".join(chunks)
        except h11.ProtocolError as exc:
            raise HttpCallError(f"a malformed answer: {exc}") from None
        except OSError as exc:
            raise HttpCallError(f"connection failed: {exc.strerror or exc}") from None
        finally:
            writer.close()
