"""RTMP handshake, server side (sans-I/O).

C0+C1 arrive (1 + 1536 bytes), we answer S0+S1+S2 at once, then wait for C2 (1536 bytes).
Two flavours of C1 are accepted:

- plain (RTMP 1.0 spec): time, zero, random; S2 echoes C1.
- digest (Flash Player 9+, what librtmp and FFmpeg send): C1 carries an HMAC-SHA256 digest at an
  offset given by one of two schemes; such clients expect S1 to carry a server digest and S2 to be
  signed with a key derived from the client digest.

The C2 echo is never checked strictly: real clients get it wrong (see specs/rtmp-notes.md).
Only the version byte must be 3, and it is checked as soon as it comes: a client that speaks
something else (rtmps:// to the plain port, a browser) sends fewer than 1537 bytes and waits for an
answer, so it is told apart by that byte and closed at once (``WrongScheme``), not at the deadline.
"""

import hashlib
import hmac
import os
import struct
from dataclasses import dataclass

from ..errors import RemoteProtocolError
from ..first_bytes import HTTP_ON_RTMP_PORT, RTMP_VERSION, TLS_ON_PLAIN_PORT, says_http, says_tls

HANDSHAKE_SIZE = 1536
_DIGEST_SIZE = 32

# Public constants of the Flash handshake (the keys both sides use for the HMAC digests).
_KEY_TAIL = bytes.fromhex("f0eec24a8068bee82e00d0d1029e7e576eec5d2d29806fab93b8e636cfeb31ae")
_FLASH_PLAYER_KEY = b"Genuine Adobe Flash Player 001" + _KEY_TAIL
_FLASH_SERVER_KEY = b"Genuine Adobe Flash Media Server 001" + _KEY_TAIL
_PLAYER_KEY_TEXT = _FLASH_PLAYER_KEY[:30]
_SERVER_KEY_TEXT = _FLASH_SERVER_KEY[:36]
# The version we claim in a digest S1 (what FMS-compatible servers put there).
_SERVER_VERSION = bytes((5, 0, 3, 1))


class WrongScheme(RemoteProtocolError):
    """The peer speaks another protocol on this port; ``kind`` counts it (rtmpq_errors_total)."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def check_version(c0: int) -> None:
    """Refuse a C0 other than RTMP_VERSION, saying what the peer seems to speak."""
    if c0 == RTMP_VERSION:
        return
    if says_tls(c0):
        raise WrongScheme("a TLS client (rtmps://) on the plain RTMP port: use rtmp:// here, or the "
                          "RTMPS listener ([rtmp] tls_port, --rtmps)", TLS_ON_PLAIN_PORT)
    if says_http(c0):
        raise WrongScheme("an HTTP client on the RTMP port: players watch over LL-HLS on the HTTP "
                          "listener", HTTP_ON_RTMP_PORT)
    raise RemoteProtocolError(f"RTMP handshake: unsupported version byte {c0}")


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def _digest_offset(block: bytes, scheme: int) -> int:
    base = 8 if scheme == 0 else 772
    return sum(block[base : base + 4]) % 728 + base + 4


def _digest_of(block: bytes, offset: int, key: bytes) -> bytes:
    return _hmac(key, block[:offset] + block[offset + _DIGEST_SIZE :])


def find_client_digest(c1: bytes) -> tuple[int, bytes] | None:
    """(scheme, digest) when C1 carries a valid Flash Player digest, else None (plain C1)."""
    for scheme in (0, 1):
        offset = _digest_offset(c1, scheme)
        digest = c1[offset : offset + _DIGEST_SIZE]
        if hmac.compare_digest(_digest_of(c1, offset, _PLAYER_KEY_TEXT), digest):
            return scheme, digest
    return None


def make_client_c1(*, digest: bool, scheme: int = 0) -> bytes:
    """A C1 as a client would send it (used by tests and by our own RTMP client tooling)."""
    block = bytearray(struct.pack(">I", 0) + (bytes((9, 0, 124, 2)) if digest else bytes(4)))
    block += os.urandom(HANDSHAKE_SIZE - 8)
    if digest:
        offset = _digest_offset(block, scheme)
        block[offset : offset + _DIGEST_SIZE] = _digest_of(bytes(block), offset, _PLAYER_KEY_TEXT)
    return bytes(block)


def verify_server_s2(s2: bytes, c1_digest: bytes) -> bool:
    """True when S2 is signed for the client digest (the check a Flash client makes)."""
    key = _hmac(_FLASH_SERVER_KEY, c1_digest)
    return hmac.compare_digest(_hmac(key, s2[: -_DIGEST_SIZE]), s2[-_DIGEST_SIZE:])


@dataclass(frozen=True, slots=True)
class HandshakeDone:
    digest: bool  # the client used the Flash digest handshake
    c2_matched: bool  # C2 echoed S1 as the spec says (informational only)


class ServerHandshake:
    """Feed bytes; read what to send; when done, ``leftover`` holds bytes past C2 (chunk stream)."""

    def __init__(self, *, now_ms: int = 0) -> None:
        self._buffer = bytearray()
        self._out = bytearray()
        self._s1 = b""
        self._now_ms = now_ms & 0xFFFFFFFF
        self._state = "c0c1"
        self.result: HandshakeDone | None = None
        self._digest = False

    @property
    def done(self) -> bool:
        return self.result is not None

    def receive_data(self, data) -> bytes:
        """Consume bytes; returns the bytes that follow the handshake once it is complete."""
        if self.done:
            return bytes(data)
        self._buffer += data
        if self._state == "c0c1" and self._buffer:
            check_version(self._buffer[0])
        if self._state == "c0c1" and len(self._buffer) >= 1 + HANDSHAKE_SIZE:
            c1 = bytes(self._buffer[1 : 1 + HANDSHAKE_SIZE])
            del self._buffer[: 1 + HANDSHAKE_SIZE]
            self._out += bytes((RTMP_VERSION,)) + self._answer(c1)
            self._state = "c2"
        if self._state == "c2" and len(self._buffer) >= HANDSHAKE_SIZE:
            c2 = bytes(self._buffer[:HANDSHAKE_SIZE])
            del self._buffer[:HANDSHAKE_SIZE]
            self.result = HandshakeDone(self._digest, c2[8:] == self._s1[8:])
            self._state = "done"
            leftover = bytes(self._buffer)
            self._buffer = bytearray()
            return leftover
        return b""

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def _answer(self, c1: bytes) -> bytes:
        found = find_client_digest(c1) if c1[4:8] != bytes(4) else None
        if found is None:
            s1 = struct.pack(">II", self._now_ms, 0) + os.urandom(HANDSHAKE_SIZE - 8)
            self._s1 = s1
            return s1 + c1  # plain: S2 echoes C1
        scheme, client_digest = found
        self._digest = True
        s1 = bytearray(struct.pack(">I", self._now_ms) + _SERVER_VERSION)
        s1 += os.urandom(HANDSHAKE_SIZE - 8)
        offset = _digest_offset(s1, scheme)
        s1[offset : offset + _DIGEST_SIZE] = _digest_of(bytes(s1), offset, _SERVER_KEY_TEXT)
        s2 = bytearray(os.urandom(HANDSHAKE_SIZE - _DIGEST_SIZE))
        key = _hmac(_FLASH_SERVER_KEY, client_digest)
        s2 += _hmac(key, bytes(s2))
        self._s1 = bytes(s1)
        return bytes(s1) + bytes(s2)
