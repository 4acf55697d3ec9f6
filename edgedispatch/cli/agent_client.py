"""A client for ``edgedispatch.AgentService`` (used by the CLI, the
benchmark and the tests): mints a token with the agent admin grant and
posts one JSON call."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

from edgedispatch.api.agents import SERVICE
from edgedispatch.wire.tokens import sign_hs256


def call(
    url: str,
    api_key: str,
    secret: str,
    method: str,
    body: dict[str, Any],
    admin: bool = True,
    timeout: float = 60,
) -> tuple[int, dict[str, Any]]:
    """(HTTP status, decoded JSON answer).  OSError if the server is unreachable."""
    now = int(time.time())
    claims: dict[str, Any] = {"iss": api_key, "nbf": now, "exp": now + 600}
    if admin:
        claims["agent"] = {"admin": True}
    base = url.replace("ws://", "http://").replace("wss://", "https://").rstrip("/")
    req = urllib.request.Request(
        f"{base}/twirp/{SERVICE}/{method}",
        data=json.dumps(body).encode(),
        headers={
            "Content-Type": "application/json",
            "Authorization": f"Bearer {sign_hs256(claims, secret)}",
        },
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as err:
        raw = err.read()
        try:
            return err.code, json.loads(raw)
        except ValueError:
            return err.code, {"code": "unknown", "msg": raw.decode(errors="replace")}
