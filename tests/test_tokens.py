"""Tokens (JWT, HS256): what a token grants, and every way one is refused without leaking it."""

import base64
import hashlib
import hmac
import json

import jwt
import pytest

from rtmpq.auth import tokens
from rtmpq.auth.tokens import (ACT_PUBLISH, ACT_RELAY, ACT_SUBSCRIBE, CLOCK_SKEW_LEEWAY, Claims, TokenError,
                               looks_like_jwt, mint_token, path_covered, verify_token)

SECRET = "0123456789abcdef0123456789abcdef-test"
NOW = 1_800_000_000.0


def refused(token: str, *, secret=SECRET, act=ACT_SUBSCRIBE, path="live/cam1", now=NOW) -> TokenError:
    with pytest.raises(TokenError) as info:
        verify_token(token, secret, act=act, path=path, now=now)
    exc = info.value
    # the token (or any part of it) is never in what an error shows or logs
    shown = [str(exc), repr(exc), *map(str, exc.args)]
    for part in [token, *token.split(".")]:
        if len(part) >= 8:
            assert not any(part in s for s in shown), (part, shown)
    assert exc.__cause__ is None and (exc.__context__ is None or exc.__suppress_context__)  # no PyJWT message chained
    return exc


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_a_minted_token_verifies_with_its_claims():
    token = mint_token(SECRET, "live/cam1", ACT_SUBSCRIBE, 60, now=NOW)
    assert looks_like_jwt(token)
    claims = verify_token(token, SECRET, act=ACT_SUBSCRIBE, path="live/cam1", now=NOW + 30)
    assert claims == Claims("live/cam1", ACT_SUBSCRIBE, int(NOW + 60))
    payload = jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_exp": False, "verify_iat": False})
    assert payload == {"sub": "live/cam1", "act": "subscribe", "iat": int(NOW), "exp": int(NOW + 60)}


def test_tokens_from_other_tools_verify():
    # what an operator's own tooling (PyJWT here, jwt.io, moq-token...) makes from the same claims
    token = jwt.encode({"sub": "live", "act": "publish", "exp": int(NOW) + 10}, SECRET, algorithm="HS256")
    assert verify_token(token, SECRET, act=ACT_PUBLISH, path="live/studio", now=NOW).sub == "live"


def test_expired_token_is_refused_after_the_leeway():
    token = mint_token(SECRET, "live/cam1", ACT_SUBSCRIBE, 60, now=NOW)
    verify_token(token, SECRET, act=ACT_SUBSCRIBE, path="live/cam1", now=NOW + 60 + CLOCK_SKEW_LEEWAY - 0.5)
    exc = refused(token, now=NOW + 60 + CLOCK_SKEW_LEEWAY)
    assert exc.reason == tokens.REASON_EXPIRED and "expired" in str(exc)
    no_exp = jwt.encode({"sub": "live", "act": "subscribe"}, SECRET, algorithm="HS256")
    assert refused(no_exp).reason == tokens.REASON_MALFORMED


def test_not_yet_valid_token_is_refused():
    token = jwt.encode({"sub": "live", "act": "subscribe", "exp": int(NOW) + 600, "nbf": int(NOW) + 300},
                       SECRET, algorithm="HS256")
    assert refused(token).reason == tokens.REASON_EXPIRED
    verify_token(token, SECRET, act=ACT_SUBSCRIBE, path="live/x", now=NOW + 300)


@pytest.mark.parametrize("prefix,path,covered", [
    ("live/cam1", "live/cam1", True),
    ("live/cam1", "live/cam1/video", True),
    ("live/cam1", "live/cam10", False),
    ("live/cam1", "live", False),
    ("live/cam1", "live/cam", False),
    ("live", "live/cam1", True),
    ("live", "lively/cam1", False),
    ("", "live/cam1", True),
    ("", "", True),
    ("/live/cam1/", "live/cam1", True),
    ("live/cam1", "/live/cam1/", True),
])
def test_path_prefix_on_segment_boundaries(prefix, path, covered):
    assert path_covered(prefix, path) is covered


def test_wrong_path_is_refused():
    token = mint_token(SECRET, "live/cam1", ACT_SUBSCRIBE, 60, now=NOW)
    exc = refused(token, path="live/cam10")
    assert exc.reason == tokens.REASON_WRONG_PATH and "live/cam10" in str(exc)
    assert refused(token, path="other/cam1").reason == tokens.REASON_WRONG_PATH
    everything = mint_token(SECRET, "", ACT_SUBSCRIBE, 60, now=NOW)
    assert verify_token(everything, SECRET, act=ACT_SUBSCRIBE, path="any/where", now=NOW).sub == ""


def test_wrong_action_is_refused():
    viewer = mint_token(SECRET, "live/cam1", ACT_SUBSCRIBE, 60, now=NOW)
    exc = refused(viewer, act=ACT_PUBLISH)
    assert exc.reason == tokens.REASON_WRONG_ACTION and "publish" in str(exc)
    publisher = mint_token(SECRET, "live/cam1", ACT_PUBLISH, 60, now=NOW)
    assert refused(publisher, act=ACT_SUBSCRIBE).reason == tokens.REASON_WRONG_ACTION
    assert refused(publisher, act=ACT_RELAY).reason == tokens.REASON_WRONG_ACTION
    odd = jwt.encode({"sub": "live", "act": "admin", "exp": int(NOW) + 60}, SECRET, algorithm="HS256")
    assert refused(odd).reason == tokens.REASON_MALFORMED


def test_a_relay_token_covers_publish_and_subscribe():
    node = mint_token(SECRET, "", ACT_RELAY, 60, now=NOW)
    for act in (ACT_PUBLISH, ACT_SUBSCRIBE, ACT_RELAY):
        assert verify_token(node, SECRET, act=act, path="live/cam1", now=NOW).act == ACT_RELAY
    scoped = mint_token(SECRET, "live", ACT_RELAY, 60, now=NOW)
    assert refused(scoped, path="vod/x").reason == tokens.REASON_WRONG_PATH


def test_bad_signature_is_refused():
    token = mint_token(SECRET, "live/cam1", ACT_SUBSCRIBE, 60, now=NOW)
    exc = refused(token, secret="another secret of enough length......")
    assert exc.reason == tokens.REASON_BAD_SIGNATURE
    header, payload, signature = token.split(".")
    forged = b64(json.dumps({"sub": "", "act": "relay", "exp": int(NOW) + 60}).encode())
    assert refused(f"{header}.{forged}.{signature}").reason == tokens.REASON_BAD_SIGNATURE


def test_alg_none_and_other_algorithms_are_refused():
    claims = b64(json.dumps({"sub": "", "act": "relay", "exp": int(NOW) + 60}).encode())
    for alg in ("none", "None", "NONE"):
        header = b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
        for token in (f"{header}.{claims}.", f"{header}.{claims}.c2ln"):
            with pytest.raises(TokenError) as info:
                verify_token(token, SECRET, act=ACT_SUBSCRIBE, path="live/x", now=NOW)
            assert info.value.reason in (tokens.REASON_BAD_SIGNATURE, tokens.REASON_MALFORMED)
    hs512 = jwt.encode({"sub": "", "act": "relay", "exp": int(NOW) + 60}, SECRET * 2, algorithm="HS512")
    assert refused(hs512).reason == tokens.REASON_BAD_SIGNATURE


@pytest.mark.parametrize("garbage", [
    "", "sk-1f9c2a", "a.b", "a.b.c.d", "not a token at all", "eyJ.eyJ.sig", "....",
    "x" * 5000, "a" * 3000 + "." + "b" * 3000 + ".c",
    b64(b"\xff\xfe") + "." + b64(b"{}") + "." + b64(b"sig"),
    b64(b'{"alg":"HS256"}') + "." + b64(b"\xff\xfe not json") + "." + b64(b"signature-bytes"),
])
def test_garbage_is_malformed(garbage):
    with pytest.raises(TokenError) as info:
        verify_token(garbage, SECRET, act=ACT_SUBSCRIBE, path="live/x", now=NOW)
    assert info.value.reason in (tokens.REASON_MALFORMED, tokens.REASON_BAD_SIGNATURE)
    if len(garbage) >= 8:
        assert garbage not in str(info.value)


def test_claims_of_the_wrong_type_are_malformed():
    for claims in ({"sub": ["live"], "act": "subscribe", "exp": int(NOW) + 60},
                   {"sub": "live", "act": "subscribe", "exp": "tomorrow"},
                   {"sub": "live", "act": 1, "exp": int(NOW) + 60}):
        token = jwt.encode(claims, SECRET, algorithm="HS256")
        assert refused(token, path="live").reason == tokens.REASON_MALFORMED


def test_looks_like_jwt_tells_tokens_from_stream_keys():
    assert looks_like_jwt(mint_token(SECRET, "live/x", ACT_PUBLISH, 60, now=NOW))
    for key in ("sk-1f9c2a", "cam1", "a.b", "a..b", "a.b.c.d", "a b.c.d", "a.b.c=", ""):
        assert not looks_like_jwt(key), key


def test_minting_refuses_nonsense():
    with pytest.raises(ValueError):
        mint_token(SECRET, "live", "admin", 60, now=NOW)
    with pytest.raises(ValueError):
        mint_token(SECRET, "live", ACT_PUBLISH, 0, now=NOW)
    with pytest.raises(ValueError):
        mint_token("", "live", ACT_PUBLISH, 60, now=NOW)
    assert tokens.weak_secret("short") and not tokens.weak_secret(SECRET)
    # a short secret works (the configuration warns about it), without PyJWT warning on every call
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        token = mint_token("short", "live", ACT_PUBLISH, 60, now=NOW)
        verify_token(token, "short", act=ACT_PUBLISH, path="live", now=NOW)


def test_a_session_token_covers_its_one_broadcast_over_hls_and_nothing_else():
    token = tokens.mint_session_token(SECRET, "live/cam1", 600, now=NOW)
    claims = verify_token(token, SECRET, act=ACT_SUBSCRIBE, path="live/cam1", now=NOW + 300, session_ok=True)
    assert claims == Claims("live/cam1", ACT_SUBSCRIBE, int(NOW + 600), session=True)
    # not as a viewer's token (MoQ), not to publish, not for another broadcast or one under it
    assert refused(token).reason == tokens.REASON_WRONG_ACTION
    assert refused(token, act=ACT_PUBLISH).reason == tokens.REASON_WRONG_ACTION
    for path in ("live/cam2", "live/cam1/video", "live"):
        with pytest.raises(TokenError) as info:
            verify_token(token, SECRET, act=ACT_SUBSCRIBE, path=path, now=NOW, session_ok=True)
        assert info.value.reason == tokens.REASON_WRONG_PATH
    with pytest.raises(TokenError) as info:
        verify_token(token, SECRET, act=ACT_SUBSCRIBE, path="live/cam1", now=NOW + 600 + CLOCK_SKEW_LEEWAY,
                     session_ok=True)
    assert info.value.reason == tokens.REASON_EXPIRED
    # any JWT verifier that is not an HLS edge (PyJWT's default here) refuses it: its aud
    with pytest.raises(jwt.InvalidAudienceError):
        jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_exp": False, "verify_iat": False})
    # an aud of another service's is refused everywhere, as before
    foreign = jwt.encode({"sub": "live", "act": "subscribe", "exp": int(NOW) + 10, "aud": "elsewhere"}, SECRET,
                         algorithm="HS256")
    with pytest.raises(TokenError) as info:
        verify_token(foreign, SECRET, act=ACT_SUBSCRIBE, path="live/cam1", now=NOW, session_ok=True)
    assert info.value.reason == tokens.REASON_MALFORMED


@pytest.mark.parametrize("exp", ["NaN", "Infinity", "-Infinity", "1e999", "9" * 400])
def test_a_signed_time_that_is_no_time_is_malformed(exp):
    """JSON as Python reads it gives NaN, Infinity and integers past a float: a token signed with
    the secret (a buggy minting tool) whose exp or nbf is one is refused as malformed (was: NaN never
    expired, the others raised past every check: HLS 500, a MoQ request never answered)."""
    header = b64(b'{"alg":"HS256","typ":"JWT"}')
    for claim in ("exp", "nbf"):
        times = {"exp": str(int(NOW) + 60), claim: exp}
        payload = b64(f'{{"sub":"live/cam1","act":"subscribe","exp":{times["exp"]},"nbf":{times.get("nbf", int(NOW))}}}'.encode())
        signature = b64(hmac.new(SECRET.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest())
        assert refused(f"{header}.{payload}.{signature}").reason == tokens.REASON_MALFORMED, claim
