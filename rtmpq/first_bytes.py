"""What a client's first bytes say it speaks: a wrong scheme on a listener is told apart from noise.

Operators and streamers point the wrong scheme at a port: http:// at the HTTPS listener, https://
at the plain one, rtmps:// at the plain RTMP port, rtmp:// at the RTMPS one, rtmp:// at the HTTP
one. The first byte tells: every TLS connection begins with a handshake record (0x16), an RTMP one
with its version (C0: 3), an HTTP/1 request with a method token (upper-case letters). A TLS
listener must know before it hands the socket to TLS, which would take the bytes and report a
bare "wrong version number": ``peek`` reads them off the socket without taking them.
"""

import asyncio
import socket

TLS_HANDSHAKE_RECORD = 0x16
RTMP_VERSION = 3
# What such a connection is counted as (rtmpq_errors_total reason, with the listener's protocol):
TLS_ON_PLAIN_PORT = "tls_on_plain_port"  # a TLS client (https://, rtmps://) on a plain listener
PLAIN_ON_TLS_PORT = "plain_on_tls_port"  # plain HTTP or RTMP on a TLS listener
HTTP_ON_RTMP_PORT = "http_on_rtmp_port"  # an HTTP client (a browser, curl) on the RTMP port
RTMP_ON_HTTP_PORT = "rtmp_on_http_port"  # an encoder (rtmp://) on the HTTP listener
WRONG_SCHEME_KINDS = frozenset((TLS_ON_PLAIN_PORT, PLAIN_ON_TLS_PORT, HTTP_ON_RTMP_PORT, RTMP_ON_HTTP_PORT))
# A peer's wrong scheme is logged once per this many seconds per address and kind (an encoder
# retries every few seconds; the operator needs the reason once); each one is counted.
WRONG_SCHEME_LOG_INTERVAL = 60.0


def says_tls(first: int) -> bool:
    """A connection whose first byte is ``first`` is a TLS client (https://, rtmps://)."""
    return first == TLS_HANDSHAKE_RECORD


def says_rtmp(first: int) -> bool:
    """... a plain RTMP client (rtmp://)."""
    return first == RTMP_VERSION


def says_http(first: int) -> bool:
    """... an HTTP/1 client: a request line begins with a method (GET, HEAD, POST, ...; PRI for
    HTTP/2 with prior knowledge), upper-case letters."""
    return 0x41 <= first <= 0x5A


async def peek(transport: asyncio.Transport, size: int) -> bytes:
    """Up to ``size`` of the first bytes the peer sent on ``transport`` (a TCP transport whose
    reading is paused), left in the socket for whoever reads it next; b"" at end of stream.
    Waits until there are some (the caller bounds the wait)."""
    tsock = transport.get_extra_info("socket")
    # asyncio's socket wrapper has no recv, and the loop refuses a reader on a transport's
    # descriptor: a duplicate is a real socket on the same connection (asyncio closes its own)
    sock = socket.socket(tsock.family, tsock.type, tsock.proto, fileno=socket.dup(tsock.fileno()))
    loop = asyncio.get_running_loop()
    try:
        sock.setblocking(False)
        while True:
            try:
                return sock.recv(size, socket.MSG_PEEK)
            except (BlockingIOError, InterruptedError):
                pass
            readable = loop.create_future()
            loop.add_reader(sock.fileno(), lambda: readable.done() or readable.set_result(None))
            try:
                await readable
            finally:
                loop.remove_reader(sock.fileno())
    finally:
        sock.close()
