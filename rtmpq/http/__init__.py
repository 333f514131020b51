"""Every node's HTTP listener: h11 (HTTP/1.1) and h2 (HTTP/2) as sans-I/O cores under our own
asyncio shell, with the limits a public listener needs.

    message.py   Request / Response, what an application sees and returns; path_segments
    ranges.py    single byte ranges (206 / 416) of a whole response
    server.py    HttpServer: accept, per-IP and total limits, TLS + ALPN, the two protocol drivers
"""

from .message import Request, Response, text

__all__ = ["Request", "Response", "text"]
