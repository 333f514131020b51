"""MoQ Transport draft 16 wire format: varints, control messages, subgroup streams.

Everything draft-specific about bytes lives here (a later draft is a change to this module and a
new ALPN). Decoders are incremental: they return NEED_DATA when the bytes so far are a prefix of
something valid, raise ``MoqProtocolError`` (a RemoteProtocolError carrying the draft's session
error code) when they cannot be, and never read past what they were given.
"""

import re
from dataclasses import dataclass, field
from enum import IntEnum

from ..codec.sentinel import NEED_DATA
from ..errors import LimitExceeded, RemoteProtocolError

ALPN = "moqt-16"

# Limits: the draft caps control messages at 2^16-1 bytes and reason phrases at 1024 bytes.
MAX_CONTROL_MESSAGE = 0xFFFF
MAX_REASON_PHRASE = 1024
MAX_NAMESPACE_FIELDS = 32  # the draft's limit on Track Namespace tuple fields
MAX_FULL_TRACK_NAME = 4096  # namespace fields + track name, in bytes (draft: 4,096)
MAX_PARAMETERS = 64  # key-value pairs in one message or one extension block
MAX_OBJECT_SIZE = 16 * 1024 * 1024  # largest object payload we accept on a data stream
MAX_AUTH_TOKEN_BYTES = 4096  # Token Value of an AUTHORIZATION TOKEN; a longer one closes the session


class SessionError(IntEnum):
    """Session termination codes (draft 16, IANA table)."""

    NO_ERROR = 0x0
    INTERNAL_ERROR = 0x1
    UNAUTHORIZED = 0x2
    PROTOCOL_VIOLATION = 0x3
    INVALID_REQUEST_ID = 0x4
    DUPLICATE_TRACK_ALIAS = 0x5
    KEY_VALUE_FORMATTING_ERROR = 0x6
    TOO_MANY_REQUESTS = 0x7
    INVALID_PATH = 0x8
    MALFORMED_PATH = 0x9
    GOAWAY_TIMEOUT = 0x10
    CONTROL_MESSAGE_TIMEOUT = 0x11
    DATA_STREAM_TIMEOUT = 0x12
    AUTH_TOKEN_CACHE_OVERFLOW = 0x13
    DUPLICATE_AUTH_TOKEN_ALIAS = 0x14
    VERSION_NEGOTIATION_FAILED = 0x15
    MALFORMED_AUTH_TOKEN = 0x16
    UNKNOWN_AUTH_TOKEN_ALIAS = 0x17
    EXPIRED_AUTH_TOKEN = 0x18
    INVALID_AUTHORITY = 0x19
    MALFORMED_AUTHORITY = 0x1A


class RequestError(IntEnum):
    INTERNAL_ERROR = 0x0
    UNAUTHORIZED = 0x1
    TIMEOUT = 0x2
    NOT_SUPPORTED = 0x3
    MALFORMED_AUTH_TOKEN = 0x4
    EXPIRED_AUTH_TOKEN = 0x5
    DOES_NOT_EXIST = 0x10  # "Track Does Not Exist" / namespace unknown
    INVALID_RANGE = 0x11
    MALFORMED_TRACK = 0x12
    DUPLICATE_SUBSCRIPTION = 0x19  # a second subscription to a track with the same role
    UNINTERESTED = 0x20  # a subscriber refusing a PUBLISH or PUBLISH_NAMESPACE
    PREFIX_OVERLAP = 0x30  # a SUBSCRIBE_NAMESPACE overlapping one of the session's
    INVALID_JOINING_REQUEST_ID = 0x32


class PublishDoneStatus(IntEnum):
    INTERNAL_ERROR = 0x0
    UNAUTHORIZED = 0x1
    TRACK_ENDED = 0x2
    SUBSCRIPTION_ENDED = 0x3
    GOING_AWAY = 0x4
    EXPIRED = 0x5
    TOO_FAR_BEHIND = 0x6
    UPDATE_FAILED = 0x8  # a REQUEST_UPDATE of the subscription failed (it was answered REQUEST_ERROR)
    MALFORMED_TRACK = 0x12


class StreamResetCode(IntEnum):
    INTERNAL_ERROR = 0x0
    CANCELLED = 0x1
    DELIVERY_TIMEOUT = 0x2
    SESSION_CLOSED = 0x3
    UNKNOWN_OBJECT_STATUS = 0x4
    MALFORMED_TRACK = 0x12


class ObjectStatus(IntEnum):
    """Object Status of a zero-length object on a subgroup stream (draft 16, "Object Status"): any
    other value closes the session with PROTOCOL_VIOLATION."""

    NORMAL = 0x0  # an empty object; implicit for any object with a payload
    END_OF_GROUP = 0x3  # no object at or after this one's ID exists in its group
    END_OF_TRACK = 0x4  # no object at or after this one's location exists in the track


OBJECT_STATUSES = frozenset(ObjectStatus)


class MessageType(IntEnum):
    CLIENT_SETUP = 0x20
    SERVER_SETUP = 0x21
    GOAWAY = 0x10
    MAX_REQUEST_ID = 0x15
    REQUESTS_BLOCKED = 0x1A
    REQUEST_OK = 0x7
    REQUEST_ERROR = 0x5
    SUBSCRIBE = 0x3
    SUBSCRIBE_OK = 0x4
    REQUEST_UPDATE = 0x2
    UNSUBSCRIBE = 0xA
    PUBLISH = 0x1D
    PUBLISH_OK = 0x1E
    PUBLISH_DONE = 0xB
    FETCH = 0x16
    FETCH_OK = 0x18
    FETCH_CANCEL = 0x17
    TRACK_STATUS = 0xD
    PUBLISH_NAMESPACE = 0x6
    NAMESPACE = 0x8
    PUBLISH_NAMESPACE_DONE = 0x9
    NAMESPACE_DONE = 0xE
    PUBLISH_NAMESPACE_CANCEL = 0xC
    SUBSCRIBE_NAMESPACE = 0x11


# Setup parameter types (a namespace constant across drafts).
SETUP_PATH = 0x01
SETUP_MAX_REQUEST_ID = 0x02
SETUP_AUTHORIZATION_TOKEN = 0x03
SETUP_MAX_AUTH_TOKEN_CACHE_SIZE = 0x04
SETUP_AUTHORITY = 0x05
SETUP_IMPLEMENTATION = 0x07
# Message parameter types (draft 16).
PARAM_DELIVERY_TIMEOUT = 0x02
PARAM_AUTHORIZATION_TOKEN = 0x03
PARAM_EXPIRES = 0x08
PARAM_LARGEST_OBJECT = 0x09
PARAM_FORWARD = 0x10
PARAM_SUBSCRIBER_PRIORITY = 0x20
PARAM_SUBSCRIPTION_FILTER = 0x21
PARAM_GROUP_ORDER = 0x22
PARAM_NEW_GROUP_REQUEST = 0x32
# Object extension header (d16 "Prior Object ID Gap"): this many Object IDs just before the object's do not exist
EXT_PRIOR_OBJECT_ID_GAP = 0x3E
# Track extension (d16 "DEFAULT PUBLISHER PRIORITY"): what a subgroup header without a priority
# inherits; DEFAULT_PUBLISHER_PRIORITY when the track has none
EXT_DEFAULT_PUBLISHER_PRIORITY = 0x0E
DEFAULT_PUBLISHER_PRIORITY = 128
# Track extensions (d16 "DELIVERY TIMEOUT", "MAX CACHE DURATION"), milliseconds: the publisher's
# delivery timeout (a subscription uses the smaller of it and its own) and how long after it came
# a relay may start forwarding an object
EXT_DELIVERY_TIMEOUT = 0x02
EXT_MAX_CACHE_DURATION = 0x04
# Track extension (d16 "DEFAULT PUBLISHER GROUP ORDER"): which of a track's groups the publisher
# sends first, GROUP_ORDER_ASCENDING or _DESCENDING; absent, a reader takes Ascending
EXT_DEFAULT_PUBLISHER_GROUP_ORDER = 0x22
KNOWN_MESSAGE_PARAMS = frozenset({
    PARAM_DELIVERY_TIMEOUT, PARAM_AUTHORIZATION_TOKEN, PARAM_EXPIRES, PARAM_LARGEST_OBJECT, PARAM_FORWARD,
    PARAM_SUBSCRIBER_PRIORITY, PARAM_SUBSCRIPTION_FILTER, PARAM_GROUP_ORDER, PARAM_NEW_GROUP_REQUEST,
})

# Message parameters that may appear more than once in a message: decoded as a tuple of their
# values when repeated (a bare value otherwise); a tuple or list is encoded as repeats.
# (The setup parameter of the same number is also AUTHORIZATION TOKEN.)
REPEATABLE_PARAMS = frozenset({PARAM_AUTHORIZATION_TOKEN})


class AuthAliasType(IntEnum):
    """Alias Type of an AUTHORIZATION TOKEN's Token structure."""

    DELETE = 0x0  # alias only: retire it
    REGISTER = 0x1  # alias, type, value: remember the token under the alias
    USE_ALIAS = 0x2  # alias only: the token registered under it
    USE_VALUE = 0x3  # type and value, no alias


# Token Type 0: not in the IANA table, negotiated out of band (what rtmpq's JWTs are sent as).
TOKEN_TYPE_OUT_OF_BAND = 0x0

# Subscription filter types.
FILTER_NEXT_GROUP_START = 0x1
FILTER_LARGEST_OBJECT = 0x2
FILTER_ABSOLUTE_START = 0x3
FILTER_ABSOLUTE_RANGE = 0x4

# Group order (GROUP_ORDER parameter): how a FETCH response orders its groups.
GROUP_ORDER_ASCENDING = 0x1
GROUP_ORDER_DESCENDING = 0x2

# Fetch types.
FETCH_STANDALONE = 0x1
FETCH_RELATIVE_JOINING = 0x2
FETCH_ABSOLUTE_JOINING = 0x3

FETCH_HEADER = 0x05
# Serialization flags of a fetch stream that are not flags: range markers.
FETCH_END_OF_NON_EXISTENT_RANGE = 0x8C
FETCH_END_OF_UNKNOWN_RANGE = 0x10C
LARGEST_VARINT = (1 << 62) - 1


class MoqProtocolError(RemoteProtocolError):
    def __init__(self, message: str, code: int = SessionError.PROTOCOL_VIOLATION) -> None:
        super().__init__(message)
        self.code = int(code)


class MoqLimitExceeded(MoqProtocolError, LimitExceeded):
    """A peer went past one of our named limits (in bytes): closes the session with ``code``."""

    def __init__(self, what: str, limit: str, value: int, maximum: int,
                 code: int = SessionError.PROTOCOL_VIOLATION) -> None:
        LimitExceeded.__init__(self, limit, value, maximum)
        self.args = (f"{what}: {value} bytes, more than {limit} ({maximum})",)
        self.code = int(code)


# -- primitives -----------------------------------------------------------------------------------
def encode_varint(value: int) -> bytes:
    if value < 0x40:
        return bytes((value,))
    if value < 0x4000:
        return (value | 0x4000).to_bytes(2, "big")
    if value < 0x40000000:
        return (value | 0x80000000).to_bytes(4, "big")
    if value < 0x4000000000000000:
        return (value | 0xC000000000000000).to_bytes(8, "big")
    raise ValueError(f"{value} does not fit a QUIC varint")


def decode_varint(buf, pos: int):
    """(value, new position) or NEED_DATA."""
    if pos >= len(buf):
        return NEED_DATA
    first = buf[pos]
    size = 1 << (first >> 6)
    if len(buf) - pos < size:
        return NEED_DATA
    value = first & 0x3F
    for i in range(1, size):
        value = (value << 8) | buf[pos + i]
    return value, pos + size


class _Reader:
    """Reads a complete message payload; running out of bytes here is a malformed message."""

    __slots__ = ("buf", "pos", "end")

    def __init__(self, buf, pos: int = 0, end: int | None = None) -> None:
        self.buf = buf
        self.pos = pos
        self.end = len(buf) if end is None else end

    def varint(self) -> int:
        r = decode_varint(self.buf, self.pos)
        if r is NEED_DATA or r[1] > self.end:
            raise MoqProtocolError("message payload ends inside a varint")
        value, self.pos = r
        return value

    def raw(self, n: int) -> bytes:
        if n > self.end - self.pos:
            raise MoqProtocolError(f"field of {n} bytes runs past the message")
        out = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return out

    def u8(self) -> int:
        return self.raw(1)[0]

    def bytes_field(self, limit: int) -> bytes:
        n = self.varint()
        if n > limit:
            raise MoqProtocolError(f"field of {n} bytes exceeds {limit}")
        return self.raw(n)

    def reason(self) -> str:
        return self.bytes_field(MAX_REASON_PHRASE).decode("utf-8", "replace")

    def namespace(self, min_fields: int = 1) -> tuple[bytes, ...]:
        """A Track Namespace: 1 to 32 non-empty fields of 4,096 bytes at most in all (a prefix or
        a suffix, ``min_fields=0``, may have none)."""
        n = self.varint()
        if not min_fields <= n <= MAX_NAMESPACE_FIELDS:
            raise MoqProtocolError(f"track namespace of {n} fields ({min_fields} to {MAX_NAMESPACE_FIELDS})")
        ns = tuple(self.bytes_field(MAX_FULL_TRACK_NAME) for _ in range(n))
        if not all(ns):
            raise MoqProtocolError("an empty track namespace field")
        if sum(map(len, ns)) > MAX_FULL_TRACK_NAME:
            raise MoqProtocolError(f"track namespace longer than {MAX_FULL_TRACK_NAME} bytes")
        return ns

    def location(self) -> tuple[int, int]:
        return self.varint(), self.varint()

    def params(self, count: int | None = None, *, setup: bool = False) -> dict[int, int | bytes]:
        """Key-value pairs with delta-encoded types: even types carry a varint, odd a length+bytes.
        A type repeated is refused unless it may be (``REPEATABLE_PARAMS``) or ``setup``."""
        n = self.varint() if count is None else count
        if n > MAX_PARAMETERS:
            raise MoqProtocolError(f"{n} parameters (max {MAX_PARAMETERS})")
        out: dict[int, int | bytes] = {}
        kind = 0
        for _ in range(n):
            kind += self.varint()
            value = self.bytes_field(0xFFFF) if kind & 1 else self.varint()
            if kind in out and kind in REPEATABLE_PARAMS:
                previous = out[kind]
                value = (*previous, value) if isinstance(previous, tuple) else (previous, value)
            elif kind in out and not setup:  # draft 16: unknown setup parameters may repeat
                raise MoqProtocolError(f"parameter {kind:#x} twice in one message")
            out[kind] = value
        return out

    def kvp_until(self, end: int) -> dict[int, int | bytes]:
        out: dict[int, int | bytes] = {}
        kind = 0
        while self.pos < end:
            if len(out) >= MAX_PARAMETERS:
                raise MoqProtocolError("too many extension headers")
            kind += self.varint()
            out[kind] = self.bytes_field(0xFFFF) if kind & 1 else self.varint()
        if self.pos != end:
            raise MoqProtocolError("extension headers overrun their length")
        return out

    def done(self) -> None:
        if self.pos != self.end:
            raise MoqProtocolError(f"{self.end - self.pos} bytes left over in message")


def encode_bytes(b: bytes) -> bytes:
    return encode_varint(len(b)) + b


def encode_namespace(ns: tuple[bytes, ...]) -> bytes:
    return encode_varint(len(ns)) + b"".join(encode_bytes(f) for f in ns)


def encode_kvps(params: dict[int, int | bytes], *, with_count: bool = True) -> bytes:
    out = bytearray()
    previous = 0
    count = 0  # of pairs: a repeated parameter (a tuple of values) is one pair per value
    for kind in sorted(params):
        values = params[kind]
        if not isinstance(values, (tuple, list)):
            values = (values,)
        for value in values:
            out += encode_varint(kind - previous)
            previous = kind
            count += 1
            if kind & 1:
                out += encode_bytes(bytes(value))
            else:
                out += encode_varint(int(value))
    return encode_varint(count) + bytes(out) if with_count else bytes(out)


def encode_location(group: int, obj: int) -> bytes:
    return encode_varint(group) + encode_varint(obj)


def encode_filter(filter_type: int, start: tuple[int, int] | None = None, end_group: int | None = None) -> bytes:
    out = encode_varint(filter_type)
    if filter_type in (FILTER_ABSOLUTE_START, FILTER_ABSOLUTE_RANGE):
        out += encode_location(*(start or (0, 0)))
    if filter_type == FILTER_ABSOLUTE_RANGE:
        out += encode_varint(end_group or 0)
    return out


def decode_filter(data: bytes) -> tuple[int, tuple[int, int] | None, int | None]:
    r = _Reader(data)
    kind = r.varint()
    start = end = None
    if kind in (FILTER_ABSOLUTE_START, FILTER_ABSOLUTE_RANGE):
        start = r.location()
    if kind == FILTER_ABSOLUTE_RANGE:
        end = r.varint()
    if kind not in (FILTER_NEXT_GROUP_START, FILTER_LARGEST_OBJECT, FILTER_ABSOLUTE_START, FILTER_ABSOLUTE_RANGE):
        raise MoqProtocolError(f"unknown subscription filter type {kind}")
    r.done()
    return kind, start, end


@dataclass(frozen=True, slots=True)
class AuthToken:
    """The Token structure an AUTHORIZATION TOKEN parameter carries."""

    alias_type: int
    alias: int | None = None  # DELETE, REGISTER, USE_ALIAS
    token_type: int | None = None  # REGISTER, USE_VALUE
    value: bytes | None = field(default=None, repr=False)  # REGISTER, USE_VALUE (a secret: not in repr)

    def encode(self) -> bytes:
        out = encode_varint(self.alias_type)
        if self.alias_type != AuthAliasType.USE_VALUE:
            out += encode_varint(self.alias or 0)
        if self.alias_type in (AuthAliasType.REGISTER, AuthAliasType.USE_VALUE):
            out += encode_varint(self.token_type or 0) + bytes(self.value or b"")
        return out


def auth_token_param(value: str | bytes, token_type: int = TOKEN_TYPE_OUT_OF_BAND) -> bytes:
    """The AUTHORIZATION TOKEN parameter's bytes for a token sent as is (USE_VALUE)."""
    raw = value.encode() if isinstance(value, str) else bytes(value)
    if len(raw) > MAX_AUTH_TOKEN_BYTES:
        raise ValueError(f"authorization token of {len(raw)} bytes exceeds MAX_AUTH_TOKEN_BYTES ({MAX_AUTH_TOKEN_BYTES})")
    return AuthToken(AuthAliasType.USE_VALUE, None, token_type, raw).encode()


def decode_auth_token(data: bytes) -> AuthToken:
    """A Token structure; one that cannot be decoded closes the session with
    KEY_VALUE_FORMATTING_ERROR, a value over MAX_AUTH_TOKEN_BYTES with MALFORMED_AUTH_TOKEN."""
    r = _Reader(data)
    try:
        alias_type = r.varint()
        if alias_type in (AuthAliasType.DELETE, AuthAliasType.USE_ALIAS):
            token = AuthToken(alias_type, r.varint())
            r.done()
            return token
        if alias_type not in (AuthAliasType.REGISTER, AuthAliasType.USE_VALUE):
            raise MoqProtocolError(f"authorization token alias type {alias_type}")
        alias = r.varint() if alias_type == AuthAliasType.REGISTER else None
        token_type = r.varint()
    except MoqProtocolError as exc:
        raise MoqProtocolError(f"undecodable authorization token: {exc}", SessionError.KEY_VALUE_FORMATTING_ERROR) from None
    size = r.end - r.pos
    if size > MAX_AUTH_TOKEN_BYTES:
        raise MoqLimitExceeded("authorization token", "MAX_AUTH_TOKEN_BYTES", size, MAX_AUTH_TOKEN_BYTES,
                               SessionError.MALFORMED_AUTH_TOKEN)
    return AuthToken(alias_type, alias, token_type, r.raw(size))


def auth_tokens(params: dict, kind: int = PARAM_AUTHORIZATION_TOKEN) -> list[AuthToken]:
    """Every AUTHORIZATION TOKEN in a message's (or a setup message's) parameters, in order."""
    raw = params.get(kind)
    if raw is None:
        return []
    if isinstance(raw, int):  # an even type cannot be this parameter; only a wrong number gets here
        raise MoqProtocolError("authorization token is not a byte field", SessionError.KEY_VALUE_FORMATTING_ERROR)
    return [decode_auth_token(bytes(v)) for v in (raw if isinstance(raw, tuple) else (raw,))]


def decode_location_param(data: bytes) -> tuple[int, int]:
    r = _Reader(data)
    loc = r.location()
    r.done()
    return loc


# The PATH and AUTHORITY setup parameters follow RFC 3986: PATH is a path-abempty, then "?" and a
# query if the URI has one; AUTHORITY is [userinfo "@"] host [":" port] (draft 16, "PATH", "AUTHORITY").
_PCHAR = r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@]|%[0-9A-Fa-f]{2})"
_SETUP_PATH = re.compile(rf"(?:/{_PCHAR}*)*(?:\?(?:{_PCHAR}|[/?])*)?")
_SUB = r"(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})"  # unreserved / pct-encoded / sub-delims
_SETUP_AUTHORITY = re.compile(rf"(?:(?:{_SUB}|:)*@)?(?:\[(?:[0-9A-Fa-f:.]+|v[0-9A-Fa-f]+\.(?:{_SUB}|:)+)\]|{_SUB}*)"
                              r"(?::[0-9]*)?")


def check_setup_uri_parts(params: dict) -> None:
    """A CLIENT_SETUP's PATH and AUTHORITY: one that does not conform to RFC 3986 closes the session
    with MALFORMED_PATH / MALFORMED_AUTHORITY (draft 16 MUSTs)."""
    for kind, pattern, code in ((SETUP_PATH, _SETUP_PATH, SessionError.MALFORMED_PATH),
                                (SETUP_AUTHORITY, _SETUP_AUTHORITY, SessionError.MALFORMED_AUTHORITY)):
        value = params.get(kind)
        if value is None:
            continue
        if isinstance(value, int) or not pattern.fullmatch(bytes(value).decode("ascii", "replace")):
            raise MoqProtocolError(f"{code.name}: setup parameter {kind:#x} is not RFC 3986", code)


# -- control messages -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ClientSetup:
    params: dict = field(default_factory=dict)
    TYPE = MessageType.CLIENT_SETUP

    def payload(self) -> bytes:
        return encode_kvps(self.params)


@dataclass(frozen=True, slots=True)
class ServerSetup:
    params: dict = field(default_factory=dict)
    TYPE = MessageType.SERVER_SETUP

    def payload(self) -> bytes:
        return encode_kvps(self.params)


@dataclass(frozen=True, slots=True)
class Goaway:
    new_session_uri: str = ""
    TYPE = MessageType.GOAWAY

    def payload(self) -> bytes:
        return encode_bytes(self.new_session_uri.encode())


@dataclass(frozen=True, slots=True)
class MaxRequestId:
    request_id: int
    TYPE = MessageType.MAX_REQUEST_ID

    def payload(self) -> bytes:
        return encode_varint(self.request_id)


@dataclass(frozen=True, slots=True)
class RequestsBlocked:
    maximum_request_id: int
    TYPE = MessageType.REQUESTS_BLOCKED

    def payload(self) -> bytes:
        return encode_varint(self.maximum_request_id)


@dataclass(frozen=True, slots=True)
class RequestOk:
    request_id: int
    params: dict = field(default_factory=dict)
    TYPE = MessageType.REQUEST_OK

    def payload(self) -> bytes:
        return encode_varint(self.request_id) + encode_kvps(self.params)


@dataclass(frozen=True, slots=True)
class RequestErrorMessage:
    request_id: int
    error_code: int
    retry_interval: int = 0
    reason: str = ""
    TYPE = MessageType.REQUEST_ERROR

    def payload(self) -> bytes:
        return (encode_varint(self.request_id) + encode_varint(self.error_code)
                + encode_varint(self.retry_interval) + encode_bytes(self.reason.encode()[:MAX_REASON_PHRASE]))

    @property
    def retry_after(self) -> float | None:
        """Retry Interval in seconds; None for 0 ("SHOULD NOT be retried")."""
        return (self.retry_interval - 1) / 1000 if self.retry_interval else None


def retry_interval(retry_after: float | None) -> int:
    """REQUEST_ERROR's Retry Interval: the minimum milliseconds before a retry, plus one; 0: never."""
    return 0 if retry_after is None else round(retry_after * 1000) + 1


@dataclass(frozen=True, slots=True)
class Subscribe:
    request_id: int
    namespace: tuple[bytes, ...]
    track_name: bytes
    params: dict = field(default_factory=dict)
    TYPE = MessageType.SUBSCRIBE

    def payload(self) -> bytes:
        return (encode_varint(self.request_id) + encode_namespace(self.namespace)
                + encode_bytes(self.track_name) + encode_kvps(self.params))


@dataclass(frozen=True, slots=True)
class TrackStatus:
    """Same layout as SUBSCRIBE; answered with REQUEST_OK (carrying LARGEST_OBJECT) or REQUEST_ERROR."""

    request_id: int
    namespace: tuple[bytes, ...]
    track_name: bytes
    params: dict = field(default_factory=dict)
    TYPE = MessageType.TRACK_STATUS

    def payload(self) -> bytes:
        return (encode_varint(self.request_id) + encode_namespace(self.namespace)
                + encode_bytes(self.track_name) + encode_kvps(self.params))


@dataclass(frozen=True, slots=True)
class SubscribeOk:
    request_id: int
    track_alias: int
    params: dict = field(default_factory=dict)
    extensions: dict = field(default_factory=dict)  # track extension headers
    TYPE = MessageType.SUBSCRIBE_OK

    def payload(self) -> bytes:
        return (encode_varint(self.request_id) + encode_varint(self.track_alias) + encode_kvps(self.params)
                + encode_kvps(self.extensions, with_count=False))


@dataclass(frozen=True, slots=True)
class Publish:
    """A publisher pushes a track (the receiver answers PUBLISH_OK or REQUEST_ERROR)."""

    request_id: int
    namespace: tuple[bytes, ...]
    track_name: bytes
    track_alias: int
    params: dict = field(default_factory=dict)
    extensions: dict = field(default_factory=dict)
    TYPE = MessageType.PUBLISH

    def payload(self) -> bytes:
        return (encode_varint(self.request_id) + encode_namespace(self.namespace) + encode_bytes(self.track_name)
                + encode_varint(self.track_alias) + encode_kvps(self.params) + encode_kvps(self.extensions, with_count=False))


@dataclass(frozen=True, slots=True)
class PublishOk:
    request_id: int
    params: dict = field(default_factory=dict)
    TYPE = MessageType.PUBLISH_OK

    def payload(self) -> bytes:
        return encode_varint(self.request_id) + encode_kvps(self.params)


@dataclass(frozen=True, slots=True)
class RequestUpdate:
    request_id: int
    existing_request_id: int
    params: dict = field(default_factory=dict)
    TYPE = MessageType.REQUEST_UPDATE

    def payload(self) -> bytes:
        return encode_varint(self.request_id) + encode_varint(self.existing_request_id) + encode_kvps(self.params)


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    request_id: int
    TYPE = MessageType.UNSUBSCRIBE

    def payload(self) -> bytes:
        return encode_varint(self.request_id)


@dataclass(frozen=True, slots=True)
class PublishDone:
    request_id: int
    status: int
    stream_count: int
    reason: str = ""
    TYPE = MessageType.PUBLISH_DONE

    def payload(self) -> bytes:
        return (encode_varint(self.request_id) + encode_varint(self.status) + encode_varint(self.stream_count)
                + encode_bytes(self.reason.encode()[:MAX_REASON_PHRASE]))


@dataclass(frozen=True, slots=True)
class PublishNamespace:
    request_id: int
    namespace: tuple[bytes, ...]
    params: dict = field(default_factory=dict)
    TYPE = MessageType.PUBLISH_NAMESPACE

    def payload(self) -> bytes:
        return encode_varint(self.request_id) + encode_namespace(self.namespace) + encode_kvps(self.params)


@dataclass(frozen=True, slots=True)
class PublishNamespaceDone:
    request_id: int  # of the PUBLISH_NAMESPACE being withdrawn
    TYPE = MessageType.PUBLISH_NAMESPACE_DONE

    def payload(self) -> bytes:
        return encode_varint(self.request_id)


@dataclass(frozen=True, slots=True)
class PublishNamespaceCancel:
    """The subscriber side will send no more SUBSCRIBEs for a namespace it was given."""

    request_id: int  # of the PUBLISH_NAMESPACE being cancelled
    error_code: int  # a REQUEST_ERROR code
    reason: str = ""
    TYPE = MessageType.PUBLISH_NAMESPACE_CANCEL

    def payload(self) -> bytes:
        return (encode_varint(self.request_id) + encode_varint(self.error_code)
                + encode_bytes(self.reason.encode()[:MAX_REASON_PHRASE]))


# SUBSCRIBE_NAMESPACE options: which announcements the subscriber wants.
NAMESPACE_OPTION_PUBLISH = 0x0
NAMESPACE_OPTION_NAMESPACE = 0x1
NAMESPACE_OPTION_BOTH = 0x2


@dataclass(frozen=True, slots=True)
class SubscribeNamespace:
    """Sent on a new bidirectional stream of its own; answered on that stream."""

    request_id: int
    namespace_prefix: tuple[bytes, ...]
    options: int = NAMESPACE_OPTION_NAMESPACE
    params: dict = field(default_factory=dict)
    TYPE = MessageType.SUBSCRIBE_NAMESPACE

    def payload(self) -> bytes:
        return (encode_varint(self.request_id) + encode_namespace(self.namespace_prefix)
                + encode_varint(self.options) + encode_kvps(self.params))


@dataclass(frozen=True, slots=True)
class Namespace:
    suffix: tuple[bytes, ...]  # the namespace fields after the subscribed prefix
    TYPE = MessageType.NAMESPACE

    def payload(self) -> bytes:
        return encode_namespace(self.suffix)


@dataclass(frozen=True, slots=True)
class NamespaceDoneMessage:
    suffix: tuple[bytes, ...]
    TYPE = MessageType.NAMESPACE_DONE

    def payload(self) -> bytes:
        return encode_namespace(self.suffix)


@dataclass(frozen=True, slots=True)
class Fetch:
    """FETCH: standalone (namespace, track, start, end) or joining (a subscription, joining start)."""

    request_id: int
    fetch_type: int
    namespace: tuple[bytes, ...] = ()
    track_name: bytes = b""
    start: tuple[int, int] = (0, 0)
    end: tuple[int, int] = (0, 0)  # standalone: end location plus one (object 0: the whole group)
    joining_request_id: int = 0
    joining_start: int = 0
    params: dict = field(default_factory=dict)
    TYPE = MessageType.FETCH

    def payload(self) -> bytes:
        out = encode_varint(self.request_id) + encode_varint(self.fetch_type)
        if self.fetch_type == FETCH_STANDALONE:
            out += (encode_namespace(self.namespace) + encode_bytes(self.track_name)
                    + encode_location(*self.start) + encode_location(*self.end))
        else:
            out += encode_varint(self.joining_request_id) + encode_varint(self.joining_start)
        return out + encode_kvps(self.params)


@dataclass(frozen=True, slots=True)
class FetchOk:
    request_id: int
    end_of_track: bool
    end: tuple[int, int]
    params: dict = field(default_factory=dict)
    extensions: dict = field(default_factory=dict)
    TYPE = MessageType.FETCH_OK

    def payload(self) -> bytes:
        return (encode_varint(self.request_id) + bytes((1 if self.end_of_track else 0,)) + encode_location(*self.end)
                + encode_kvps(self.params) + encode_kvps(self.extensions, with_count=False))


@dataclass(frozen=True, slots=True)
class FetchCancel:
    request_id: int
    TYPE = MessageType.FETCH_CANCEL

    def payload(self) -> bytes:
        return encode_varint(self.request_id)


@dataclass(frozen=True, slots=True)
class UnknownMessage:
    """A message type we parse no further (it is refused or ignored by the session)."""

    type: int
    body: bytes


ControlMessage = (ClientSetup | ServerSetup | Goaway | MaxRequestId | RequestsBlocked | RequestOk
                  | RequestErrorMessage | Subscribe | TrackStatus | SubscribeOk | Publish | PublishOk
                  | RequestUpdate | Unsubscribe | PublishDone
                  | PublishNamespace | PublishNamespaceDone | PublishNamespaceCancel | SubscribeNamespace | Namespace
                  | NamespaceDoneMessage | Fetch | FetchOk | FetchCancel | UnknownMessage)


def encode_control_message(msg) -> bytes:
    payload = msg.payload()
    if len(payload) > MAX_CONTROL_MESSAGE:
        raise ValueError(f"control message of {len(payload)} bytes")
    return encode_varint(int(msg.TYPE)) + len(payload).to_bytes(2, "big") + payload


# Values a message parameter may take (draft 16 "Message Parameters": any other closes the
# session with PROTOCOL_VIOLATION), whatever message carries it.
_PARAM_VALUES = {
    PARAM_SUBSCRIBER_PRIORITY: ("SUBSCRIBER_PRIORITY", range(256)),
    PARAM_GROUP_ORDER: ("GROUP_ORDER", (GROUP_ORDER_ASCENDING, GROUP_ORDER_DESCENDING)),
    PARAM_FORWARD: ("FORWARD", (0, 1)),
    PARAM_DELIVERY_TIMEOUT: ("DELIVERY_TIMEOUT", range(1, LARGEST_VARINT + 1)),  # "greater than 0"
}


def _check_message_params(params: dict) -> dict:
    unknown = [k for k in params if k not in KNOWN_MESSAGE_PARAMS]
    if unknown:
        raise MoqProtocolError(f"unknown message parameter {unknown[0]:#x}")
    return _check_values(params, _PARAM_VALUES, "parameter")


def _check_values(pairs: dict, table: dict, what: str) -> dict:
    """``pairs`` (parameters or extensions), whose values of the types in ``table`` are allowed ones."""
    for kind, (name, allowed) in table.items():
        if kind in pairs and pairs[kind] not in allowed:
            raise MoqProtocolError(f"{name} {what} {pairs[kind]!r}")
    return pairs


# Values a Track Extension may take (draft 16 "Extension Headers": any other closes the session
# with PROTOCOL_VIOLATION); the others are carried as they come.
_TRACK_EXTENSION_VALUES = {
    EXT_DELIVERY_TIMEOUT: ("DELIVERY_TIMEOUT", range(1, LARGEST_VARINT + 1)),
    EXT_DEFAULT_PUBLISHER_PRIORITY: ("DEFAULT_PUBLISHER_PRIORITY", range(256)),
    EXT_DEFAULT_PUBLISHER_GROUP_ORDER: ("DEFAULT_PUBLISHER_GROUP_ORDER", (GROUP_ORDER_ASCENDING, GROUP_ORDER_DESCENDING)),
    0x30: ("DYNAMIC_GROUPS", (0, 1)),
}


def _track_extensions(rd: _Reader, end: int) -> dict:
    """The Track Extensions that end a SUBSCRIBE_OK, PUBLISH or FETCH_OK."""
    return _check_values(rd.kvp_until(end), _TRACK_EXTENSION_VALUES, "track extension")


def decode_control_message(buf, pos: int = 0):
    """(message, new position) or NEED_DATA."""
    r = decode_varint(buf, pos)
    if r is NEED_DATA:
        return NEED_DATA
    mtype, p = r
    if len(buf) - p < 2:
        return NEED_DATA
    length = (buf[p] << 8) | buf[p + 1]
    p += 2
    if len(buf) - p < length:
        return NEED_DATA
    end = p + length
    rd = _Reader(buf, p, end)
    if mtype == MessageType.CLIENT_SETUP:
        msg = ClientSetup(rd.params(setup=True))
    elif mtype == MessageType.SERVER_SETUP:
        msg = ServerSetup(rd.params(setup=True))
    elif mtype == MessageType.GOAWAY:
        msg = Goaway(rd.bytes_field(8192).decode("utf-8", "replace"))
    elif mtype == MessageType.MAX_REQUEST_ID:
        msg = MaxRequestId(rd.varint())
    elif mtype == MessageType.REQUESTS_BLOCKED:
        msg = RequestsBlocked(rd.varint())
    elif mtype == MessageType.REQUEST_OK:
        msg = RequestOk(rd.varint(), _check_message_params(rd.params()))
    elif mtype == MessageType.REQUEST_ERROR:
        msg = RequestErrorMessage(rd.varint(), rd.varint(), rd.varint(), rd.reason())
    elif mtype in (MessageType.SUBSCRIBE, MessageType.TRACK_STATUS):
        cls = Subscribe if mtype == MessageType.SUBSCRIBE else TrackStatus
        request_id = rd.varint()
        ns = rd.namespace()
        name = rd.bytes_field(MAX_FULL_TRACK_NAME)
        if sum(map(len, ns)) + len(name) > MAX_FULL_TRACK_NAME:
            raise MoqProtocolError("full track name longer than 4096 bytes")
        msg = cls(request_id, ns, name, _check_message_params(rd.params()))
    elif mtype == MessageType.SUBSCRIBE_OK:
        request_id = rd.varint()
        alias = rd.varint()
        params = _check_message_params(rd.params())
        msg = SubscribeOk(request_id, alias, params, _track_extensions(rd, end))
    elif mtype == MessageType.PUBLISH:
        request_id = rd.varint()
        ns = rd.namespace()
        name = rd.bytes_field(MAX_FULL_TRACK_NAME)
        alias = rd.varint()
        params = _check_message_params(rd.params())
        msg = Publish(request_id, ns, name, alias, params, _track_extensions(rd, end))
    elif mtype == MessageType.PUBLISH_OK:
        msg = PublishOk(rd.varint(), _check_message_params(rd.params()))
    elif mtype == MessageType.UNSUBSCRIBE:
        msg = Unsubscribe(rd.varint())
    elif mtype == MessageType.REQUEST_UPDATE:
        msg = RequestUpdate(rd.varint(), rd.varint(), _check_message_params(rd.params()))
    elif mtype == MessageType.PUBLISH_DONE:
        msg = PublishDone(rd.varint(), rd.varint(), rd.varint(), rd.reason())
    elif mtype == MessageType.PUBLISH_NAMESPACE:
        msg = PublishNamespace(rd.varint(), rd.namespace(), _check_message_params(rd.params()))
    elif mtype == MessageType.PUBLISH_NAMESPACE_DONE:
        msg = PublishNamespaceDone(rd.varint())
    elif mtype == MessageType.PUBLISH_NAMESPACE_CANCEL:
        msg = PublishNamespaceCancel(rd.varint(), rd.varint(), rd.reason())
    elif mtype == MessageType.SUBSCRIBE_NAMESPACE:
        msg = SubscribeNamespace(rd.varint(), rd.namespace(0), rd.varint(), _check_message_params(rd.params()))
    elif mtype == MessageType.NAMESPACE:
        msg = Namespace(rd.namespace(0))
    elif mtype == MessageType.NAMESPACE_DONE:
        msg = NamespaceDoneMessage(rd.namespace(0))
    elif mtype == MessageType.FETCH:
        msg = _decode_fetch(rd)
    elif mtype == MessageType.FETCH_OK:
        request_id = rd.varint()
        end_of_track = rd.u8()
        if end_of_track > 1:
            raise MoqProtocolError(f"FETCH_OK End Of Track {end_of_track}")
        loc = rd.location()
        params = _check_message_params(rd.params())
        msg = FetchOk(request_id, bool(end_of_track), loc, params, _track_extensions(rd, end))
    elif mtype == MessageType.FETCH_CANCEL:
        msg = FetchCancel(rd.varint())
    elif mtype in MessageType._value2member_map_:
        msg = UnknownMessage(mtype, bytes(buf[p:end]))
        rd.pos = end
    else:
        raise MoqProtocolError(f"unknown control message type {mtype:#x}")
    rd.done()
    return msg, end


def _decode_fetch(rd: _Reader) -> Fetch:
    request_id = rd.varint()
    kind = rd.varint()
    if kind == FETCH_STANDALONE:
        ns = rd.namespace()
        name = rd.bytes_field(MAX_FULL_TRACK_NAME)
        if sum(map(len, ns)) + len(name) > MAX_FULL_TRACK_NAME:
            raise MoqProtocolError("full track name longer than 4096 bytes")
        start, end = rd.location(), rd.location()
        return Fetch(request_id, kind, ns, name, start, end, params=_check_message_params(rd.params()))
    if kind in (FETCH_RELATIVE_JOINING, FETCH_ABSOLUTE_JOINING):
        joining, joining_start = rd.varint(), rd.varint()
        return Fetch(request_id, kind, joining_request_id=joining, joining_start=joining_start,
                     params=_check_message_params(rd.params()))
    raise MoqProtocolError(f"unknown fetch type {kind:#x}")


# -- data streams ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SubgroupHeader:
    track_alias: int
    group_id: int
    subgroup_id: int = 0
    priority: int | None = 128  # None: inherit the subscription's publisher priority
    extensions: bool = True  # objects carry an extension block
    end_of_group: bool = True  # this subgroup holds the group's last object

    def encode(self) -> bytes:
        kind = 0x10 | (0x01 if self.extensions else 0) | (0x08 if self.end_of_group else 0)
        explicit_subgroup = self.subgroup_id != 0
        if explicit_subgroup:
            kind |= 0x04  # SUBGROUP_ID_MODE 0b10: present
        if self.priority is None:
            kind |= 0x20
        out = encode_varint(kind) + encode_varint(self.track_alias) + encode_varint(self.group_id)
        if explicit_subgroup:
            out += encode_varint(self.subgroup_id)
        if self.priority is not None:
            out += bytes((self.priority,))
        return out


def encode_object(object_id_delta: int, payload, extensions: dict | None, *, with_extensions: bool,
                  status: int = 0) -> bytes:
    out = bytearray(encode_varint(object_id_delta))
    if with_extensions:
        ext = encode_kvps(extensions or {}, with_count=False)
        out += encode_varint(len(ext)) + ext
    out += encode_varint(len(payload))
    if not len(payload):
        out += encode_varint(status)
    return bytes(out)  # the payload follows: callers send it without copying it in here


@dataclass(frozen=True, slots=True)
class SubgroupObject:
    object_id: int
    payload: bytes | memoryview  # empty when ``status`` is not NORMAL (a status exists only without payload)
    extensions: dict
    status: int = ObjectStatus.NORMAL


class _StreamParser:
    """What both data stream parsers share: a buffer fed incrementally, a header parsed once, then
    items (objects, markers) until the bytes run out mid-item."""

    def __init__(self, *, max_object_size: int = MAX_OBJECT_SIZE) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._header_parsed = False
        self.max_object_size = max_object_size

    def feed(self, data) -> list:
        """The items these bytes complete (a subgroup stream's header first, once)."""
        self._buf += data
        out = []
        if not self._header_parsed:
            header = self._parse_header()
            if header is NEED_DATA:
                return out
            self._header_parsed = True
            if header is not None:
                out.append(header)
        while True:
            item = self._parse_item()
            if item is NEED_DATA:
                break
            out.append(item)
        if self._pos:  # drop what was parsed (payloads are copies), so ``buffered`` is what is held
            del self._buf[: self._pos]
            self._pos = 0
        return out

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def _parse_header(self):
        raise NotImplementedError

    def _parse_item(self):
        raise NotImplementedError

    def _extensions(self, p: int):
        """(extension headers, position after them) of a length-prefixed block at ``p``, or NEED_DATA."""
        r = decode_varint(self._buf, p)
        if r is NEED_DATA:
            return NEED_DATA
        ext_len, p = r
        if ext_len > 0xFFFF:
            raise MoqProtocolError("object extension block too long")
        if len(self._buf) - p < ext_len:
            return NEED_DATA
        return _Reader(self._buf, p, p + ext_len).kvp_until(p + ext_len), p + ext_len

    def _check_size(self, size: int) -> None:
        if size > self.max_object_size:
            raise MoqProtocolError(f"object of {size} bytes (max {self.max_object_size})")


class SubgroupStreamParser(_StreamParser):
    """Incremental parser of one unidirectional subgroup stream: header, then objects."""

    def __init__(self, *, max_object_size: int = MAX_OBJECT_SIZE) -> None:
        super().__init__(max_object_size=max_object_size)
        self.header: SubgroupHeader | None = None
        self._last_object: int | None = None
        self._first_object_subgroup = False

    def _parse_header(self):
        buf, p = self._buf, self._pos
        r = decode_varint(buf, p)
        if r is NEED_DATA:
            return NEED_DATA
        kind, p = r
        if not (0x10 <= kind <= 0x1F or 0x30 <= kind <= 0x3F) or (kind & 0x06) == 0x06:
            raise MoqProtocolError(f"unknown data stream type {kind:#x}")
        fields = []
        mode = (kind & 0x06) >> 1
        for _ in range(3 if mode == 2 else 2):
            r = decode_varint(buf, p)
            if r is NEED_DATA:
                return NEED_DATA
            fields.append(r[0])
            p = r[1]
        priority = None
        if not kind & 0x20:
            if p >= len(buf):
                return NEED_DATA
            priority = buf[p]
            p += 1
        subgroup = fields[2] if mode == 2 else 0
        self._first_object_subgroup = mode == 1
        self.header = SubgroupHeader(fields[0], fields[1], subgroup, priority, bool(kind & 0x01), bool(kind & 0x08))
        self._pos = p
        return self.header

    def _parse_item(self):
        buf, p = self._buf, self._pos
        r = decode_varint(buf, p)
        if r is NEED_DATA:
            return NEED_DATA
        delta, p = r
        extensions: dict = {}
        if self.header.extensions:
            r = self._extensions(p)
            if r is NEED_DATA:
                return NEED_DATA
            extensions, p = r
        r = decode_varint(buf, p)
        if r is NEED_DATA:
            return NEED_DATA
        size, p = r
        status = 0
        if size == 0:
            r = decode_varint(buf, p)
            if r is NEED_DATA:
                return NEED_DATA
            status, p = r
            if status not in OBJECT_STATUSES:
                raise MoqProtocolError(f"unknown object status {status:#x}")
            if status and extensions:  # draft 16, "Object Extension Headers": a MUST
                raise MoqProtocolError(f"extension headers on an object of status {ObjectStatus(status).name}")
        else:
            self._check_size(size)
        if len(buf) - p < size:
            return NEED_DATA
        payload = bytes(buf[p : p + size])
        self._pos = p + size
        object_id = delta if self._last_object is None else self._last_object + delta + 1
        self._last_object = object_id
        if self._first_object_subgroup:  # SUBGROUP_ID_MODE 0b01: the first object's ID, whatever the next ones are
            self._first_object_subgroup = False
            if object_id:
                self.header = SubgroupHeader(self.header.track_alias, self.header.group_id, object_id,
                                             self.header.priority, self.header.extensions, self.header.end_of_group)
        return SubgroupObject(object_id, payload, extensions, status)


# -- datagrams -------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ObjectDatagram:
    """One object in a QUIC datagram (Object Forwarding Preference Datagram)."""

    track_alias: int
    group_id: int
    object_id: int
    priority: int | None  # None: the subscription's publisher priority
    extensions: dict
    payload: bytes
    status: int = ObjectStatus.NORMAL
    end_of_group: bool = False  # no object of a larger ID exists in the group


def decode_object_datagram(data) -> ObjectDatagram:
    """An OBJECT_DATAGRAM (type 0b00X0XXXX: EXTENSIONS 0x01, END_OF_GROUP 0x02, ZERO_OBJECT_ID
    0x04, DEFAULT_PRIORITY 0x08, STATUS 0x20; STATUS with END_OF_GROUP is invalid). A datagram
    is whole: anything that does not parse closes the session with PROTOCOL_VIOLATION."""
    r = _Reader(data)
    kind = r.varint()
    if kind & ~0x2F or (kind & 0x22) == 0x22:
        raise MoqProtocolError(f"unknown datagram type {kind:#x}")
    alias, group = r.varint(), r.varint()
    object_id = 0 if kind & 0x04 else r.varint()
    priority = None if kind & 0x08 else r.u8()
    extensions: dict = {}
    if kind & 0x01:
        size = r.varint()
        if size == 0:
            raise MoqProtocolError("datagram with the EXTENSIONS bit and an Extension Headers Length of 0")
        if size > r.end - r.pos:
            raise MoqProtocolError("datagram extension headers run past its end")
        extensions = r.kvp_until(r.pos + size)
    status, payload = ObjectStatus.NORMAL, b""
    if kind & 0x20:
        status = r.varint()
        if status not in OBJECT_STATUSES:
            raise MoqProtocolError(f"unknown object status {status:#x}")
        if status and extensions:  # draft 16, "Object Extension Headers": a MUST
            raise MoqProtocolError("extension headers on a status object")
        r.done()
    else:
        payload = r.raw(r.end - r.pos)
    return ObjectDatagram(alias, group, object_id, priority, extensions, payload, status, bool(kind & 0x02))


def encode_object_datagram(track_alias: int, group_id: int, object_id: int, payload, extensions: dict | None = None,
                           *, priority: int | None = None, status: int = ObjectStatus.NORMAL,
                           end_of_group: bool = False) -> bytes:
    """An OBJECT_DATAGRAM (the inverse of ``decode_object_datagram``): the shortest type for what
    it carries (ZERO_OBJECT_ID for object 0, DEFAULT_PRIORITY when ``priority`` is None, STATUS
    for a status object, which has no payload, no extensions and no END_OF_GROUP)."""
    kind = 0x04 if object_id == 0 else 0
    if priority is None:
        kind |= 0x08
    if status:
        kind |= 0x20
    else:
        if extensions:
            kind |= 0x01
        if end_of_group:
            kind |= 0x02
    out = bytearray(encode_varint(kind) + encode_varint(track_alias) + encode_varint(group_id))
    if object_id:
        out += encode_varint(object_id)
    if priority is not None:
        out.append(priority)
    if kind & 0x01:
        ext = encode_kvps(extensions, with_count=False)
        out += encode_varint(len(ext)) + ext
    if status:
        out += encode_varint(status)
        return bytes(out)
    return b"".join((out, payload))


# -- fetch streams --------------------------------------------------------------------------------
def encode_fetch_header(request_id: int) -> bytes:
    return encode_varint(FETCH_HEADER) + encode_varint(request_id)


class FetchObjectEncoder:
    """Serializes the objects of one fetch stream, leaving out what repeats the prior object."""

    __slots__ = ("_group", "_subgroup", "_object", "_priority")

    def __init__(self) -> None:
        self._group = self._subgroup = self._object = self._priority = None

    def object_header(self, group: int, subgroup: int, object_id: int, priority: int, payload_len: int,
                      extensions: dict | None, *, datagram: bool = False) -> bytes:
        """Serialization flags and fields up to the payload length (the payload follows as is).
        ``datagram``: an object of Forwarding Preference Datagram (flag 0x40, no Subgroup ID)."""
        flags = 0
        fields = bytearray()
        if group != self._group:
            flags |= 0x08
            fields += encode_varint(group)
        if datagram:
            flags |= 0x40
            subgroup = None  # it has none: the next object states its own
        elif subgroup == 0:
            pass
        elif subgroup == self._subgroup and self._group is not None:
            flags |= 0x01
        elif self._subgroup is not None and subgroup == self._subgroup + 1:
            flags |= 0x02
        else:
            flags |= 0x03
            fields += encode_varint(subgroup)
        if self._object is None or group != self._group or object_id != self._object + 1:
            flags |= 0x04
            fields += encode_varint(object_id)
        if priority != self._priority:
            flags |= 0x10
            fields += bytes((priority,))
        if extensions:
            flags |= 0x20
            ext = encode_kvps(extensions, with_count=False)
            fields += encode_varint(len(ext)) + ext
        self._group, self._subgroup, self._object, self._priority = group, subgroup, object_id, priority
        return encode_varint(flags) + bytes(fields) + encode_varint(payload_len)

    def end_of_range(self, group: int, object_id: int, *, unknown: bool) -> bytes:
        """Every object after the prior one up to (group, object_id) inclusive is unknown or absent."""
        marker = FETCH_END_OF_UNKNOWN_RANGE if unknown else FETCH_END_OF_NON_EXISTENT_RANGE
        # a marker is no Object, and the flags refer to "the prior Object": the next object states
        # every field, so no reading of the draft takes it for another location
        self._group = self._subgroup = self._object = self._priority = None
        return encode_varint(marker) + encode_varint(group) + encode_varint(object_id)


@dataclass(frozen=True, slots=True)
class FetchObject:
    group_id: int
    subgroup_id: int
    object_id: int
    priority: int
    payload: bytes
    extensions: dict
    datagram: bool = False  # Forwarding Preference Datagram (flag 0x40): it has no Subgroup ID


@dataclass(frozen=True, slots=True)
class FetchRangeEnd:
    """A range marker: objects after the previous one up to this location are unknown (or absent)."""

    group_id: int
    object_id: int
    unknown: bool


class FetchStreamParser(_StreamParser):
    """Incremental parser of one fetch stream: FETCH_HEADER's request id, then objects and markers."""

    def __init__(self, *, max_object_size: int = MAX_OBJECT_SIZE) -> None:
        super().__init__(max_object_size=max_object_size)
        self.request_id: int | None = None
        self._prior: list | None = None  # group, subgroup, object, priority of the prior object

    def _parse_header(self):
        r = decode_varint(self._buf, 0)
        if r is NEED_DATA:
            return NEED_DATA
        if r[0] != FETCH_HEADER:
            raise MoqProtocolError(f"fetch stream of type {r[0]:#x}")
        r = decode_varint(self._buf, r[1])
        if r is NEED_DATA:
            return NEED_DATA
        self.request_id, self._pos = r
        return None  # nothing to report: the request id is an attribute

    def _varint(self, p: int):
        return decode_varint(self._buf, p)

    def _parse_item(self):
        buf = self._buf
        r = self._varint(self._pos)
        if r is NEED_DATA:
            return NEED_DATA
        flags, p = r
        if flags in (FETCH_END_OF_NON_EXISTENT_RANGE, FETCH_END_OF_UNKNOWN_RANGE):
            loc = []
            for _ in range(2):
                r = self._varint(p)
                if r is NEED_DATA:
                    return NEED_DATA
                loc.append(r[0])
                p = r[1]
            self._pos = p
            prior = self._prior
            self._prior = [loc[0], prior[1] if prior else None, loc[1], prior[3] if prior else None]
            return FetchRangeEnd(loc[0], loc[1], flags == FETCH_END_OF_UNKNOWN_RANGE)
        if flags >= 0x80:
            raise MoqProtocolError(f"fetch serialization flags {flags:#x}")
        prior = self._prior

        def from_prior(i: int, name: str) -> int:
            if prior is None or prior[i] is None:
                raise MoqProtocolError(f"fetch object takes its {name} from a prior object that was not sent")
            return prior[i]

        if flags & 0x08:
            r = self._varint(p)
            if r is NEED_DATA:
                return NEED_DATA
            group, p = r
        else:
            group = from_prior(0, "group")
        mode = flags & 0x03
        subgroup = 0
        if flags & 0x40:
            pass  # a datagram object: no subgroup
        elif mode == 0x03:
            r = self._varint(p)
            if r is NEED_DATA:
                return NEED_DATA
            subgroup, p = r
        elif mode == 0x01:
            subgroup = from_prior(1, "subgroup")
        elif mode == 0x02:
            subgroup = from_prior(1, "subgroup") + 1
        if flags & 0x04:
            r = self._varint(p)
            if r is NEED_DATA:
                return NEED_DATA
            object_id, p = r
        else:
            object_id = from_prior(2, "object id") + 1
        if flags & 0x10:
            if p >= len(buf):
                return NEED_DATA
            priority = buf[p]
            p += 1
        else:
            priority = from_prior(3, "priority")
        extensions: dict = {}
        if flags & 0x20:
            r = self._extensions(p)
            if r is NEED_DATA:
                return NEED_DATA
            extensions, p = r
        r = self._varint(p)
        if r is NEED_DATA:
            return NEED_DATA
        size, p = r
        self._check_size(size)
        if len(buf) - p < size:
            return NEED_DATA
        payload = bytes(buf[p : p + size])
        self._pos = p + size
        self._prior = [group, subgroup, object_id, priority]
        return FetchObject(group, subgroup, object_id, priority, payload, extensions, bool(flags & 0x40))
