"""Digest authentication of inbound calls (RFC 2617 / RFC 3261 §22), as
livekit/sip does it: 407 with ``Proxy-Authenticate``, MD5, qop=auth.

Nonces are stateless and bound to their call: ``<issued ms, hex>.<HMAC(
secret, issued|call id)>``, so a nonce from another call, a forged one and an old
one (past ``window``) are refused without a table of challenges.  A nonce
is good for one request: the ones used are remembered until they expire,
in a table bounded by ``max_used`` (full: answers are refused and
challenged again, never let through).  Sans-IO: the secret and ``now``
are given.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from collections import OrderedDict

from edgedispatch.sip.message import Request

REALM = "LiveKit"  # what livekit/sip says; some trunks are configured for it


class Verdict(enum.Enum):
    OK = "ok"
    MISSING = "missing"  # no credentials: challenge (407)
    STALE = "stale"  # an expired or used nonce with a right answer: challenge again
    WRONG = "wrong"  # refuse (401)


def _md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def parse_auth(value: str) -> dict[str, str]:
    """``Digest a="x", b=y`` -> {"a": "x", "b": "y"} (names lower-case)."""
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "digest":
        return {}
    params: dict[str, str] = {}
    i, n = 0, len(rest)
    while i < n:
        while i < n and rest[i] in " ,\t":
            i += 1
        eq = rest.find("=", i)
        if eq < 0:
            break
        name = rest[i:eq].strip().lower()
        i = eq + 1
        if i < n and rest[i] == '"':
            end = i + 1
            while end < n and rest[end] != '"':
                end += 2 if rest[end] == "\\" else 1
            params[name] = rest[i + 1 : end].replace('\\"', '"')
            i = end + 1
        else:
            end = rest.find(",", i)
            end = n if end < 0 else end
            params[name] = rest[i:end].strip()
            i = end
    return params


def response(
    username: str, password: str, realm: str, method: str, uri: str, nonce: str,
    qop: str = "", nc: str = "", cnonce: str = "",
) -> str:  # fmt: skip
    """The answer a client computes (RFC 2617 §3.2.2.1, MD5)."""
    ha1 = _md5(f"{username}:{realm}:{password}")
    ha2 = _md5(f"{method}:{uri}")
    if qop:
        return _md5(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")
    return _md5(f"{ha1}:{nonce}:{ha2}")


def authorization(
    challenge: str, username: str, password: str, method: str, uri: str, cnonce: str
) -> str:
    """The ``Authorization``/``Proxy-Authorization`` value that answers a
    401/407's ``challenge`` for a request of ours (MD5; qop=auth when offered)."""
    c = parse_auth(challenge)
    realm, nonce = c.get("realm", ""), c.get("nonce", "")
    qop = "auth" if "auth" in c.get("qop", "").split(",") else ""
    nc = "00000001"
    digest = response(username, password, realm, method, uri, nonce,
                      qop, nc if qop else "", cnonce if qop else "")  # fmt: skip
    value = (
        f'Digest username="{username}", realm="{realm}", nonce="{nonce}", '
        f'uri="{uri}", response="{digest}", algorithm=MD5'
    )
    if c.get("opaque"):
        value += f', opaque="{c["opaque"]}"'
    return value + (f', qop=auth, nc={nc}, cnonce="{cnonce}"' if qop else "")


class DigestAuth:
    def __init__(
        self, secret: bytes, realm: str = REALM, window: float = 30.0, max_used: int = 50_000
    ) -> None:
        self._secret = secret
        self.realm = realm
        self.window = window
        self._max_used = max_used
        self._used: OrderedDict[str, float] = OrderedDict()  # nonce -> when it expires

    def challenge(self, call_id: str, now: float, stale: bool = False) -> str:
        """A ``Proxy-Authenticate`` value for this call."""
        issued = f"{round(now * 1000):x}"  # milliseconds, hex
        nonce = f"{issued}.{self._sign(issued, call_id)}"
        extra = ", stale=true" if stale else ""
        return f'Digest realm="{self.realm}", nonce="{nonce}", algorithm=MD5, qop="auth"{extra}'

    def check(self, req: Request, username: str, password: str, now: float) -> Verdict:
        """The request's ``Proxy-Authorization`` against the trunk's
        credentials."""
        value = req.headers.get("proxy-authorization") or req.headers.get("authorization")
        creds = parse_auth(value) if value else {}
        if not creds.get("nonce") or "response" not in creds:
            return Verdict.MISSING
        nonce = creds["nonce"]
        issued, _, mac = nonce.rpartition(".")
        if not hmac.compare_digest(mac, self._sign(issued, req.call_id)):
            return Verdict.WRONG  # forged, or another call's
        if creds.get("username") != username or creds.get("realm") != self.realm:
            return Verdict.WRONG
        algorithm = creds.get("algorithm", "MD5").upper()
        qop = creds.get("qop", "")
        if algorithm != "MD5" or qop not in ("", "auth"):
            return Verdict.WRONG
        expected = response(
            username, password, self.realm, req.method, creds.get("uri", ""), nonce,
            qop, creds.get("nc", ""), creds.get("cnonce", ""),
        )  # fmt: skip
        if not hmac.compare_digest(expected, creds["response"].lower()):
            return Verdict.WRONG
        self._expire(now)
        until = int(issued, 16) / 1000 + self.window  # signed by us: a hex number
        if until <= now or nonce in self._used or len(self._used) >= self._max_used:
            return Verdict.STALE  # right password, but this nonce is spent
        self._used[nonce] = until
        return Verdict.OK

    def _sign(self, issued: str, call_id: str) -> str:
        msg = f"{issued}|{call_id}".encode()
        return hmac.new(self._secret, msg, hashlib.sha256).hexdigest()[:32]

    def _expire(self, now: float) -> None:
        used = self._used
        while used:
            nonce, until = next(iter(used.items()))
            if until > now:
                break
            del used[nonce]
