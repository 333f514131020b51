"""Access decisions from the [publish] and [auth] settings: which public name a stream key
publishes, and whether a token allows an action on a path. Sans-I/O: the time is passed in.

A playback token is checked when playback starts, on HLS as on MoQ: a MoQ subscription goes on
past its token's expiry, and an HLS viewer whose token an edge accepts gets playlists whose URIs
carry a session token of the edge's (``may_play_hls``) in place of the viewer's own, good for
that one broadcast for [auth] playback_session seconds, so the player's reloads outlive the
viewer's token.

The node is *open* when neither ``[publish.keys]`` nor ``[auth] secret`` is set: any key
publishes, the key is the public name, and nobody needs a token (as before this module).
"""

import re

import jwt

from ..config import AuthConfig, PublishConfig
from ..errors import RtmpqError
from .tokens import (ACT_PUBLISH, ACT_RELAY, ACT_SUBSCRIBE, Claims, TokenError, looks_like_jwt, mint_session_token,
                     verify_token)

__all__ = ["AccessDenied", "Access", "ACT_PUBLISH", "ACT_RELAY", "ACT_SUBSCRIBE"]


# A public broadcast name: app/name, each part as the RTMP layer allows app names and keys.
BROADCAST_NAME_PATTERN = re.compile(r"[A-Za-z0-9_.~-]{1,64}/[A-Za-z0-9_.~-]{1,128}")


class AccessDenied(RtmpqError):
    """Refused; the message is safe to show the peer and to log (it never holds a key or token).
    ``reason``: what was refused, as metrics count it (``unknown_key``, ``token_refused``)."""

    def __init__(self, message: str, reason: str = "token_refused") -> None:
        super().__init__(message)
        self.reason = reason


class Access:
    def __init__(self, publish: PublishConfig | None = None, auth: AuthConfig | None = None) -> None:
        self.publish = publish or PublishConfig()
        self.auth = auth or AuthConfig()

    @property
    def open(self) -> bool:
        """No keys and no secret: anyone publishes anything, key = public name."""
        return not self.publish.restricted and not self.auth.enabled

    # -- publish --------------------------------------------------------------------------------
    def publish_name(self, app: str, key: str, query: str, now: float) -> str:
        """The public broadcast name (``app/name``) a publish to ``app/key?query`` may use."""
        if self.open:
            return f"{app}/{key}"
        name = self.publish.keys.get(key)
        if name is not None:
            return name if "/" in name else f"{app}/{name}"  # the config checked its shape
        token = _query_token(query)
        if self.auth.enabled and (token is not None or looks_like_jwt(key)):
            if token is not None:  # rtmp://HOST/app/<name>?token=<JWT>
                path = f"{app}/{key}"
            else:  # the key is the token; its subject names the broadcast
                token, path = key, _subject_path(key, app)
            self.check(ACT_PUBLISH, path, token, now)
            return path
        raise AccessDenied("unknown stream key", "unknown_key")

    # -- tokens ---------------------------------------------------------------------------------
    def check(self, act: str, path: str, token: str | None, now: float, *, session_ok: bool = False) -> Claims:
        """The claims of ``token`` if it allows ``act`` on ``path`` (a playback session token only
        if ``session_ok``); AccessDenied otherwise."""
        if not self.auth.enabled:
            raise AccessDenied("tokens are not accepted here (no [auth] secret)")
        if not token:
            raise AccessDenied(f"a token is required to {act} {path}")
        try:
            return verify_token(token, self.auth.secret, act=act, path=path, now=now, session_ok=session_ok)
        except TokenError as exc:
            raise AccessDenied(f"token refused: {exc.reason}") from None

    def may_subscribe(self, path: str, token: str | None, now: float) -> None:
        """Viewers (HLS, MoQ SUBSCRIBE/FETCH) need a token only when [auth] says so."""
        if self.auth.require_playback_token:
            self.check(ACT_SUBSCRIBE, path, token, now)

    def may_play_hls(self, path: str, token: str | None, now: float) -> str | None:
        """An HLS request for broadcast ``path`` (a playlist, init segment, part or segment):
        AccessDenied unless it may be served; else the token the URIs of a playlist served for it
        carry (None: no token needed). A viewer's token yields a new session token, so the
        viewer's own, perhaps wider and shorter-lived, token is never copied into a playlist; a
        session token yields itself, so reloading never extends a session."""
        if not self.auth.require_playback_token:
            return None
        claims = self.check(ACT_SUBSCRIBE, path, token, now, session_ok=True)
        if claims.session:
            return token
        return mint_session_token(self.auth.secret, path, self.auth.playback_session, now=now)

    def may_list(self, prefix: str, token: str | None, now: float) -> None:
        """SUBSCRIBE_NAMESPACE: a viewer's token covers waiting for its one broadcast; listing a
        prefix above broadcasts (``live``) needs a node token when tokens are required."""
        if not self.auth.require_playback_token:
            return
        if prefix.count("/") >= 1:  # app/name: one broadcast (or below)
            self.check(ACT_SUBSCRIBE, prefix, token, now)
        else:
            self.check(ACT_RELAY, prefix, token, now)

    def may_publish_over_moq(self, path: str, token: str | None, now: float) -> None:
        """PUBLISH_NAMESPACE / PUBLISH from a peer: open nodes take any; otherwise a node token
        (act=relay) or a publish token for the path."""
        if self.open:
            return
        self.check(ACT_PUBLISH, path, token, now)


def _query_token(query: str) -> str | None:
    for item in query.split("&"):
        name, _, value = item.partition("=")
        if name == "token" and value:
            return value
    return None


def _subject_path(token: str, app: str) -> str:
    """The broadcast a publish token names (its ``sub``), before the signature is checked (which
    ``check`` then does against this very path)."""
    try:
        sub = jwt.decode(token, options={"verify_signature": False}).get("sub")
    except jwt.PyJWTError:
        raise AccessDenied("token refused: malformed") from None
    if not isinstance(sub, str) or not sub.strip("/"):
        raise AccessDenied("token refused: it names no broadcast (sub); publish to "
                           f"rtmp://HOST/{app}/<name>?token=<token> instead")
    path = sub.strip("/")
    if "/" not in path:  # an app ("live"): it covers many names and names none of them
        raise AccessDenied(f"token refused: its sub {path!r} covers an app, not one broadcast; publish to "
                           f"rtmp://HOST/{path}/<name>?token=<token> instead")
    if not BROADCAST_NAME_PATTERN.fullmatch(path):
        raise AccessDenied("token refused: its sub is not a broadcast name (app/name)")
    return path
