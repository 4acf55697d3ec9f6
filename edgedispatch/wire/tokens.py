"""LiveKit access tokens: verify what callers present, mint what agents get.

Pure functions of (token, keys, now): no clock is read here.  Verified
tokens are cached (a check costs ~15 µs, a cache hit well under 1 µs); a
cached token is still re-checked against ``now``.  Only HS256 exists here,
as in LiveKit, so both directions are a few lines of hmac rather than PyJWT
(which the tests use to cross-check them).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import jwt
import msgspec

from edgedispatch.errors import PermissionDenied, Unauthenticated

LEEWAY = 60.0  # seconds of clock skew tolerated, as LiveKit does
AGENT_TOKEN_TTL = 3600

# LiveKit's dev secret ("secret") is shorter than PyJWT likes; so are many
# real deployments' secrets, which LiveKit accepts.
warnings.filterwarnings("ignore", category=jwt.warnings.InsecureKeyLengthWarning)


class AuthError(Unauthenticated):
    """The caller presented no valid token."""


class Claims:
    """A verified token: its API key (``iss``), identity and grants.
    ``program``: the key is one edgedispatch made for a program it runs
    (an agent-server instance), not one of the configured keys."""

    __slots__ = ("api_key", "tenant", "program", "identity", "video", "raw", "exp")

    def __init__(
        self, api_key: str, tenant: str, raw: dict[str, Any], program: bool = False
    ) -> None:
        self.api_key = api_key
        self.tenant = tenant
        self.program = program
        self.raw = raw
        sub = raw.get("sub")
        # Not a string (a list, say): no identity, which a join refuses.
        self.identity: str = sub if isinstance(sub, str) else ""
        video = raw.get("video")
        self.video: dict[str, Any] = video if isinstance(video, dict) else {}
        exp = raw.get("exp")
        self.exp: float | None = float(exp) if isinstance(exp, int | float) else None

    def grant(self, name: str) -> Any:
        return self.video.get(name)

    def require(self, *grants: str, room: str | None = None) -> None:
        """Raise PermissionDenied unless every grant is true (and, when
        ``room`` is given, the token's ``video.room`` is that room)."""
        missing = [g for g in grants if self.video.get(g) is not True]
        if missing:
            raise PermissionDenied(f"token lacks the grant {', '.join(missing)}")
        if room is not None and self.video.get("room") != room:
            raise PermissionDenied(f"token is not valid for room {room!r}")


class Verifier:
    """Checks HS256 tokens against the configured keys, with a small cache.

    Keys may also be added and removed while the server runs: the agent
    servers edgedispatch starts get one each, for as long as they run
    (``add_key``, ``remove_key``).  A removed key's tokens fail at once,
    cached or not.

    :param keys: API key -> secret.
    :param tenants: API key -> the tenant it belongs to (default tenant "").
    """

    def __init__(
        self,
        keys: Mapping[str, str],
        tenants: Mapping[str, str] | None = None,
        cache_size: int = 4096,
    ) -> None:
        self._keys = dict(keys)
        self._tenants = dict(tenants or {})
        self._programs: set[str] = set()
        self._cache: OrderedDict[str, Claims] = OrderedDict()
        self._cache_size = cache_size

    def secret(self, api_key: str) -> str | None:
        return self._keys.get(api_key)

    def add_key(self, api_key: str, secret: str, tenant: str) -> None:
        """A program's key, of ``tenant``, valid until ``remove_key``."""
        if api_key in self._keys:
            raise ValueError(f"API key {api_key!r} exists already")
        self._keys[api_key] = secret
        self._tenants[api_key] = tenant
        self._programs.add(api_key)

    def remove_key(self, api_key: str) -> None:
        """Revoke a key given by ``add_key`` (configured keys stay)."""
        if api_key in self._programs:
            self._programs.discard(api_key)
            del self._keys[api_key]
            del self._tenants[api_key]

    def verify(self, token: str, now: float) -> Claims:
        if not token:
            raise AuthError("no access token")
        claims = self._cache.get(token)
        if claims is None:
            claims = self._decode(token, now)
            self._cache[token] = claims
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        elif claims.exp is not None and now > claims.exp + LEEWAY:
            del self._cache[token]
            raise AuthError("token is expired")
        elif claims.program and claims.api_key not in self._keys:
            del self._cache[token]
            raise AuthError(f"unknown API key {claims.api_key!r}")  # revoked
        return claims

    def _decode(self, token: str, now: float) -> Claims:
        # Our own HS256 check, not PyJWT's general one: it is on every API
        # call's path (a per-room token is rarely seen twice), and PyJWT's
        # three JSON parses and key preparation cost ~10x this.
        parts = token.split(".")
        if len(parts) != 3:
            raise AuthError("invalid token: not a compact JWT")
        header_b64, payload_b64, signature_b64 = parts
        header = _json_segment(header_b64, "header")
        if header.get("alg") != "HS256":
            raise AuthError("only HS256 tokens are accepted")
        raw = _json_segment(payload_b64, "payload")
        api_key = raw.get("iss")
        if not isinstance(api_key, str) or not api_key:
            raise AuthError("token has no issuer (API key)")
        secret = self._keys.get(api_key)
        if secret is None:
            raise AuthError(f"unknown API key {api_key!r}")
        signed = f"{header_b64}.{payload_b64}".encode()
        expected = hmac.new(secret.encode(), signed, hashlib.sha256).digest()
        if not hmac.compare_digest(expected, _b64url(signature_b64, "signature")):
            raise AuthError("signature verification failed")
        exp, nbf = raw.get("exp"), raw.get("nbf")
        if exp is not None and (not _is_number(exp) or now > exp + LEEWAY):
            raise AuthError("token is expired")
        if nbf is not None and (not _is_number(nbf) or now < nbf - LEEWAY):
            raise AuthError("token is not valid yet")
        return Claims(api_key, self._tenants.get(api_key, ""), raw, api_key in self._programs)


def _is_number(value: object) -> bool:
    """A time in seconds: a JSON number that a float holds (the checks add
    LEEWAY to it; an integer of 400 digits would raise OverflowError)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and -1e300 < value < 1e300


def _b64url(segment: str, what: str) -> bytes:
    try:
        data = segment.encode("ascii").translate(_FROM_URLSAFE)
        return binascii.a2b_base64(data + b"=" * (-len(data) % 4), strict_mode=True)
    except (UnicodeEncodeError, binascii.Error):
        raise AuthError(f"invalid token: its {what} is not base64url") from None


def _json_segment(segment: str, what: str) -> dict[str, Any]:
    try:
        value = _json_object.decode(_b64url(segment, what))
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        # msgspec raises the other two for a string that is not UTF-8 and
        # for objects nested past the recursion limit: an unsigned token's
        # bytes are anyone's to choose.
        raise AuthError(f"invalid token: its {what} is not a JSON object") from None
    return value


_FROM_URLSAFE = bytes.maketrans(b"-_", b"+/")
_json_object = msgspec.json.Decoder(dict[str, Any])


def bearer(authorization: str | None, query_token: str | None = None) -> str:
    """The token from ``Authorization: Bearer ...`` or ``?access_token=``."""
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer":
            return token.strip()
    return query_token or ""


# TrackSource enum names as LiveKit's token grants spell them.
_SOURCES = {1: "camera", 2: "microphone", 3: "screen_share", 4: "screen_share_audio"}


def agent_token(
    *,
    api_key: str,
    secret: str,
    now: float,
    room: str,
    identity: str,
    name: str = "",
    metadata: str = "",
    attributes: Mapping[str, str] | None = None,
    agent_name: str = "",
    permissions: Any = None,
) -> str:
    """The token an agent joins its job's room with (LiveKit's BuildAgentToken).

    :param permissions: the worker's registered ``ParticipantPermission``;
        None gives LiveKit's defaults (publish, subscribe, data, metadata).
    """
    video: dict[str, Any] = {"roomJoin": True, "room": room, "agent": True}
    if permissions is None:
        video.update(
            canSubscribe=True, canPublish=True, canPublishData=True, canUpdateOwnMetadata=True
        )
    else:
        video.update(
            canSubscribe=permissions.can_subscribe,
            canPublish=permissions.can_publish,
            canPublishData=permissions.can_publish_data,
            canUpdateOwnMetadata=permissions.can_update_metadata,
            hidden=permissions.hidden,
            canSubscribeMetrics=permissions.can_subscribe_metrics,
        )
        sources = [_SOURCES[s] for s in permissions.can_publish_sources if s in _SOURCES]
        if sources:
            video["canPublishSources"] = sources
    claims: dict[str, Any] = {
        "iss": api_key,
        "sub": identity,
        "nbf": int(now),
        "exp": int(now) + AGENT_TOKEN_TTL,
        "kind": "agent",
        "video": video,
        "attributes": {**(attributes or {}), "lk.agent_name": agent_name},
    }
    if name:
        claims["name"] = name
    if metadata:
        claims["metadata"] = metadata
    return sign_hs256(claims, secret)


_HS256_HEADER = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=")


def sign_hs256(claims: Mapping[str, Any], secret: str) -> str:
    """A compact HS256 JWT.  Minting is on every assignment's path, where
    PyJWT's generality (key checks, stdlib json) costs ~10x this."""
    payload = base64.urlsafe_b64encode(msgspec.json.encode(claims)).rstrip(b"=")
    signing_input = _HS256_HEADER + b"." + payload
    digest = hmac.new(secret.encode(), signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + base64.urlsafe_b64encode(digest).rstrip(b"=")).decode()
