"""Token verification: what the official SDKs sign is accepted, and every
malformed or forged token is refused with a reason."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest
from livekit import api

from edgedispatch.wire.tokens import AuthError, Verifier, sign_hs256

KEYS = {"devkey": "secret", "other": "other-secret-of-some-length"}
NOW = 1_800_000_000.0


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _forge(header: object, payload: object, secret: str = "secret") -> str:
    import hashlib
    import hmac

    signing = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    sig = hmac.new(secret.encode(), signing.encode(), hashlib.sha256).digest()
    return f"{signing}.{_b64(sig)}"


def test_livekit_api_tokens_verify() -> None:
    token = (
        api.AccessToken("devkey", "secret")
        .with_identity("alice")
        .with_grants(api.VideoGrants(room_admin=True, room="r1"))
        .to_jwt()
    )
    claims = Verifier(KEYS, {"devkey": "acme"}).verify(token, time.time())
    assert claims.api_key == "devkey"
    assert claims.tenant == "acme"
    assert claims.identity == "alice"
    assert claims.video["roomAdmin"] is True and claims.video["room"] == "r1"


def test_our_tokens_verify_in_pyjwt() -> None:
    token = sign_hs256({"iss": "devkey", "sub": "agent", "exp": int(NOW) + 60}, "secret")
    decoded = jwt.decode(token, "secret", algorithms=["HS256"], options={"verify_exp": False})
    assert decoded["sub"] == "agent"
    assert Verifier(KEYS).verify(token, NOW).identity == "agent"


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("", "no access token"),
        ("abc", "not a compact JWT"),
        ("a.b.c.d", "not a compact JWT"),
        ("!!.e30.e30", "header is not base64url"),
        (f"{_b64(b'[1]')}.e30.e30", "header is not a JSON object"),
        (_forge({"alg": "none"}, {"iss": "devkey"}), "only HS256"),
        (_forge({"alg": "HS512"}, {"iss": "devkey"}), "only HS256"),
        (_forge({"alg": "HS256"}, ["iss"]), "payload is not a JSON object"),
        (_forge({"alg": "HS256"}, {"sub": "x"}), "no issuer"),
        (_forge({"alg": "HS256"}, {"iss": "nobody"}), "unknown API key 'nobody'"),
        (_forge({"alg": "HS256"}, {"iss": "devkey"}, "wrong"), "signature verification failed"),
        (_forge({"alg": "HS256"}, {"iss": "devkey", "exp": NOW - 61}), "expired"),
        (_forge({"alg": "HS256"}, {"iss": "devkey", "exp": "soon"}), "expired"),
        (_forge({"alg": "HS256"}, {"iss": "devkey", "exp": True}), "expired"),
        (_forge({"alg": "HS256"}, {"iss": "devkey", "nbf": NOW + 61}), "not valid yet"),
    ],
)
def test_bad_tokens_are_refused_with_the_reason(token: str, reason: str) -> None:
    with pytest.raises(AuthError, match=reason):
        Verifier(KEYS).verify(token, NOW)


def test_a_token_of_another_key_is_not_verified_with_its_issuers_secret() -> None:
    # Signed with key "other"'s secret but claiming to be "devkey".
    token = _forge({"alg": "HS256"}, {"iss": "devkey"}, KEYS["other"])
    with pytest.raises(AuthError, match="signature"):
        Verifier(KEYS).verify(token, NOW)


def test_a_tampered_payload_fails_the_signature() -> None:
    token = _forge({"alg": "HS256"}, {"iss": "devkey", "video": {"roomAdmin": False}})
    header, _, sig = token.split(".")
    payload = _b64(json.dumps({"iss": "devkey", "video": {"roomAdmin": True}}).encode())
    with pytest.raises(AuthError, match="signature"):
        Verifier(KEYS).verify(f"{header}.{payload}.{sig}", NOW)


def test_a_cached_token_still_expires() -> None:
    verifier = Verifier(KEYS)
    token = _forge({"alg": "HS256"}, {"iss": "devkey", "exp": NOW + 10})
    assert verifier.verify(token, NOW).api_key == "devkey"
    with pytest.raises(AuthError, match="expired"):
        verifier.verify(token, NOW + 100)


def test_a_key_added_at_run_time_belongs_to_its_tenant_until_removed() -> None:
    verifier = Verifier(KEYS, {"devkey": ""})
    verifier.add_key("EDI_1", "instance-secret", "acme")
    token = sign_hs256({"iss": "EDI_1", "exp": NOW + 60}, "instance-secret")
    claims = verifier.verify(token, NOW)
    assert claims.tenant == "acme" and claims.program and verifier.secret("EDI_1")
    assert not verifier.verify(_forge({"alg": "HS256"}, {"iss": "devkey"}), NOW).program
    verifier.remove_key("EDI_1")
    with pytest.raises(AuthError, match="unknown API key 'EDI_1'"):
        verifier.verify(token, NOW)  # cached, and still refused at once
    verifier.remove_key("devkey")  # a configured key is not removed
    assert verifier.secret("devkey") == "secret"
    with pytest.raises(ValueError, match="exists already"):
        verifier.add_key("devkey", "x", "acme")  # nor replaced
