"""``edgedispatch.AgentService``: manage agent definitions at run time.

Twirp-style JSON over HTTP, at ``/twirp/edgedispatch.AgentService/<Method>``:
ListAgents ``{}``, AddAgent ``{"agent": {...definition...}}``, and
RemoveAgent, StartAgent, StopAgent ``{"name": ...}``.

Auth: a LiveKit access token signed with one of the tenant's keys that
carries LiveKit's agent admin grant, ``"agent": {"admin": true}`` (what
``livekit.api.AccessToken().with_agent_grants(AgentGrants(admin=True))``
mints).  A tenant's token sees and changes only that tenant's agents.
"""

from __future__ import annotations

from typing import Any, Protocol

import msgspec

from edgedispatch.errors import InvalidArgument, Malformed, PermissionDenied, TwirpError
from edgedispatch.wire.tokens import Claims

SERVICE = "edgedispatch.AgentService"


class AgentAdmin(Protocol):
    """What the service manages: ``runtime.AgentManager`` (given to the API
    by the server, so that the API does not depend on the runtime)."""

    def list(self, tenant: str) -> list[dict[str, Any]]: ...

    async def add(self, tenant: str, raw: dict[str, Any]) -> dict[str, Any]: ...

    async def remove(self, tenant: str, name: str) -> None: ...

    async def set_running(self, tenant: str, name: str, running: bool) -> None: ...


def _require_admin(claims: Claims) -> None:
    grant = claims.raw.get("agent")
    if not isinstance(grant, dict) or grant.get("admin") is not True:
        raise PermissionDenied('token lacks the agent admin grant ("agent": {"admin": true})')


def _name(body: dict[str, Any]) -> str:
    name = body.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidArgument("name is required")
    return name


async def handle(manager: AgentAdmin, method: str, claims: Claims, body: bytes) -> bytes:
    """Run one method; returns the JSON answer, raises EdgeDispatchError."""
    _require_admin(claims)
    try:
        req = msgspec.json.decode(body or b"{}")
    except msgspec.DecodeError as exc:
        raise Malformed(f"the request body is not JSON: {exc}") from exc
    if not isinstance(req, dict):
        raise Malformed("the request body must be a JSON object")
    tenant = claims.tenant
    out: dict[str, Any]
    if method == "ListAgents":
        out = {"agents": manager.list(tenant)}
    elif method == "AddAgent":
        definition = req.get("agent")
        if not isinstance(definition, dict):
            raise InvalidArgument("agent (a definition object) is required")
        out = {"agent": await manager.add(tenant, definition)}
    elif method == "RemoveAgent":
        await manager.remove(tenant, _name(req))
        out = {}
    elif method in ("StartAgent", "StopAgent"):
        await manager.set_running(tenant, _name(req), method == "StartAgent")
        out = {}
    else:
        raise TwirpError("bad_route", f"no such method: {method}")
    return msgspec.json.encode(out)
