"""Tokens: JWTs signed with HS256 and a shared secret, one format for HLS, MoQ and node links.

Claims: ``sub`` is a path prefix (``live/cam1``, ``live`` for a whole app, ``""`` for
everything), ``act`` is what the holder may do there (``publish``, ``subscribe``, or ``relay``:
a node token, which covers both), ``exp`` and ``iat`` are seconds since the epoch.

A *playback session token* (``mint_session_token``) is what an HLS edge puts in the URIs of the
playlists it serves a viewer whose token it accepted: ``act`` subscribe, ``sub`` exactly one
broadcast, its own expiry, and ``aud`` SESSION_AUDIENCE. RFC 7519 (4.1.3) has a verifier that is
not named in a token's ``aud`` refuse the token, so only the HLS edge takes one
(``verify_token(..., session_ok=True)``): not MoQ, not a publisher, not another JWT tool, not an
rtmpq from before session tokens.

No clock of its own: the time is passed in. A token is a secret, so no error message, log line
or repr here ever contains one.
"""

import re
import warnings
from dataclasses import dataclass

import jwt

from ..errors import RtmpqError

ACT_PUBLISH, ACT_SUBSCRIBE, ACT_RELAY = "publish", "subscribe", "relay"
ACTIONS = frozenset({ACT_PUBLISH, ACT_SUBSCRIBE, ACT_RELAY})
ALGORITHM = "HS256"  # the only algorithm accepted (never "none", never one chosen by the token)

# Seconds a token stays valid past its ``exp`` (and may be early for its ``nbf``): clock skew
# between the node that minted it and the one checking it.
CLOCK_SKEW_LEEWAY = 5.0
# Longest token we look at, in bytes: anything longer is refused before it is parsed
# (the same as MoQ's MAX_AUTH_TOKEN_BYTES).
MAX_TOKEN_BYTES = 4096
# RFC 7518 3.2: an HS256 secret should be at least as long as the hash (32 bytes). Shorter ones
# still work; ``weak_secret`` lets the configuration warn about them.
MIN_SECRET_BYTES = 32
# Largest ``exp``/``nbf`` taken, in seconds since the epoch (the year 9999, as far as
# ``datetime`` goes): past it a claim is malformed, never a token that does not expire.
MAX_TIME_CLAIM = 253_402_300_799
# The ``aud`` that marks a playback session token (see the module docstring).
SESSION_AUDIENCE = "rtmpq-hls-session"

# TokenError.reason values: what is wrong with a token (MoQ maps EXPIRED and MALFORMED to the
# draft's EXPIRED_AUTH_TOKEN / MALFORMED_AUTH_TOKEN, the others to UNAUTHORIZED).
REASON_EXPIRED = "expired"
REASON_BAD_SIGNATURE = "bad signature"
REASON_WRONG_PATH = "wrong path"
REASON_WRONG_ACTION = "wrong action"
REASON_MALFORMED = "malformed"

_JWT_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


class TokenError(RtmpqError):
    """A token that does not grant what was asked. The message says why, never what the token is."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Claims:
    sub: str  # the path prefix the token covers
    act: str
    exp: int | None
    session: bool = False  # a playback session token (HLS of one broadcast only)


def _secret_bytes(secret: str) -> bytes:
    if not secret:
        raise ValueError("an empty token secret signs nothing")
    return secret.encode()


def weak_secret(secret: str) -> bool:
    """True when ``secret`` is shorter than MIN_SECRET_BYTES (worth a warning at start)."""
    return len(secret.encode()) < MIN_SECRET_BYTES


def _normalize(path: str) -> str:
    return path.strip("/")


def path_covered(prefix: str, path: str) -> bool:
    """Whether ``prefix`` covers ``path`` on path-segment boundaries: ``live/cam1`` covers
    ``live/cam1`` and ``live/cam1/video`` but not ``live/cam10``; ``""`` covers everything."""
    prefix, path = _normalize(prefix), _normalize(path)
    if not prefix:
        return True
    return path == prefix or path.startswith(prefix + "/")


def looks_like_jwt(text: str) -> bool:
    """Three base64url parts separated by dots (as opposed to a plain stream key)."""
    return len(text) <= MAX_TOKEN_BYTES and _JWT_SHAPE.fullmatch(text) is not None


def mint_token(secret: str, sub: str, act: str, ttl: float, *, now: float) -> str:
    """A token that lets its holder ``act`` on ``sub`` and the paths under it for ``ttl`` seconds."""
    if act not in ACTIONS:
        raise ValueError(f"unknown action {act!r} (expected one of {', '.join(sorted(ACTIONS))})")
    if ttl <= 0:
        raise ValueError(f"token lifetime {ttl} must be positive")
    return _encode(secret, {"sub": _normalize(sub), "act": act, "iat": int(now), "exp": int(now + ttl)})


def mint_session_token(secret: str, path: str, ttl: float, *, now: float) -> str:
    """A playback session token: lets its holder fetch the HLS playlists and media of exactly the
    broadcast ``path`` (nothing under or beside it) for ``ttl`` seconds, and nothing else."""
    if ttl <= 0:
        raise ValueError(f"session lifetime {ttl} must be positive")
    return _encode(secret, {"sub": _normalize(path), "act": ACT_SUBSCRIBE, "aud": SESSION_AUDIENCE,
                            "iat": int(now), "exp": int(now + ttl)})


def _encode(secret: str, claims: dict) -> str:
    with warnings.catch_warnings():  # PyJWT warns on every call about a short secret
        warnings.simplefilter("ignore", jwt.InsecureKeyLengthWarning)
        return jwt.encode(claims, _secret_bytes(secret), algorithm=ALGORITHM)


_DECODE_OPTIONS = {
    # the time checks are ours, against the ``now`` we are given
    "verify_exp": False, "verify_nbf": False, "verify_iat": False,
    "verify_aud": False,  # checked below: only SESSION_AUDIENCE, and only where session_ok
    "require": ["sub", "act", "exp"],
}


def _claim_types(payload: dict) -> tuple:
    """(sub, act, exp, nbf) of decoded claims; TokenError (malformed) if one is of the wrong type."""
    sub, granted, exp = payload["sub"], payload["act"], payload["exp"]
    if not isinstance(sub, str) or not isinstance(granted, str):
        raise TokenError(REASON_MALFORMED, "token sub and act must be strings")
    if not _is_time(exp):
        raise TokenError(REASON_MALFORMED, "token exp must be a number of seconds")
    nbf = payload.get("nbf")
    if nbf is not None and not _is_time(nbf):
        raise TokenError(REASON_MALFORMED, "token nbf must be a number of seconds")
    return sub, granted, exp, nbf


def _is_time(value) -> bool:
    """A JSON number that is a time: JSON as Python reads it also gives NaN, Infinity (1e999) and
    integers too large for a float, which no comparison with the clock may see (NaN never
    expires; the others raised past every check, a 500 on HLS, an unanswered MoQ request)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return abs(value) <= MAX_TIME_CLAIM  # False for NaN


def check_token_shape(token: str) -> None:
    """TokenError (malformed) if ``token`` is not one that ``verify_token`` could accept with the
    right secret: not a JWT, not HS256, claims missing or of the wrong type, an unknown act. The
    signature and the times are not checked (a node's token is signed with its upstream's secret)."""
    if not isinstance(token, str) or not looks_like_jwt(token):
        raise TokenError(REASON_MALFORMED, "token is not a JWT (three base64url parts separated by dots)")
    try:
        alg = jwt.get_unverified_header(token).get("alg")
        payload = jwt.decode(token, options={**_DECODE_OPTIONS, "verify_signature": False})
    except jwt.MissingRequiredClaimError as exc:
        raise TokenError(REASON_MALFORMED, f"token has no {exc.claim!r} claim") from None
    except jwt.InvalidTokenError:
        raise TokenError(REASON_MALFORMED, "token header or claims are not valid JSON") from None
    if alg != ALGORITHM:
        raise TokenError(REASON_MALFORMED, f"token is not signed with {ALGORITHM}")
    if _claim_types(payload)[1] not in ACTIONS:
        raise TokenError(REASON_MALFORMED, "token act is not publish, subscribe or relay")


def verify_token(token: str, secret: str, *, act: str, path: str, now: float, session_ok: bool = False) -> Claims:
    """The claims of ``token`` if it is signed with ``secret``, unexpired at ``now``, grants
    ``act`` (a ``relay`` token grants publish and subscribe too) and covers ``path``;
    TokenError otherwise. A playback session token is refused unless ``session_ok`` (an HLS
    request), and then covers its one broadcast ``path`` only."""
    key = _secret_bytes(secret)
    if not isinstance(token, str) or not looks_like_jwt(token):
        raise TokenError(REASON_MALFORMED, "token is not a JWT")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError:
        raise TokenError(REASON_MALFORMED, "token header is not valid") from None
    if header.get("alg") != ALGORITHM:
        # alg "none" or any other: refused before anything in the token is trusted
        raise TokenError(REASON_BAD_SIGNATURE, f"token is not signed with {ALGORITHM}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", jwt.InsecureKeyLengthWarning)
            payload = jwt.decode(token, key, algorithms=[ALGORITHM], options=_DECODE_OPTIONS)
    except jwt.InvalidSignatureError:
        raise TokenError(REASON_BAD_SIGNATURE, "token signature does not match the secret") from None
    except jwt.MissingRequiredClaimError as exc:
        raise TokenError(REASON_MALFORMED, f"token has no {exc.claim!r} claim") from None
    except jwt.InvalidTokenError:
        # PyJWT's own messages may quote decoded bytes of the token: say it in our words
        raise TokenError(REASON_MALFORMED, "token claims are not valid") from None
    sub, granted, exp, nbf = _claim_types(payload)
    if exp + CLOCK_SKEW_LEEWAY <= now:
        raise TokenError(REASON_EXPIRED, f"token expired {now - exp:.0f} s ago")
    if nbf is not None and nbf - CLOCK_SKEW_LEEWAY > now:
        raise TokenError(REASON_EXPIRED, "token is not valid yet")
    if granted not in ACTIONS:
        raise TokenError(REASON_MALFORMED, "token act is not publish, subscribe or relay")
    aud = payload.get("aud")
    session = aud == SESSION_AUDIENCE
    if aud is not None and not session:
        raise TokenError(REASON_MALFORMED, "token is meant for another service (aud)")
    if session and not session_ok:
        raise TokenError(REASON_WRONG_ACTION, "a playback session token is good for HLS only")
    if session and granted != ACT_SUBSCRIBE:
        raise TokenError(REASON_MALFORMED, "a playback session token grants subscribe only")
    if session and _normalize(sub) != _normalize(path):
        raise TokenError(REASON_WRONG_PATH, "a playback session token covers its own broadcast only")
    if granted != act and granted != ACT_RELAY:
        raise TokenError(REASON_WRONG_ACTION, f"token grants {granted}, not {act}")
    if not path_covered(sub, path):
        raise TokenError(REASON_WRONG_PATH, f"token for {_normalize(sub) or '/'!r} does not cover {_normalize(path)!r}")
    return Claims(_normalize(sub), granted, int(exp), session)
