"""``edgedispatch.AgentService``: manage agent definitions at run time.

Twirp-style JSON over HTTP, at ``/twirp/edgedispatch.AgentService/<Method>``:
ListAgents ``{}``, AddAgent ``{"agent": {...definition...}}``, RemoveAgent
and StopAgent ``{"name": ...}``, StartAgent ``{"name": ..., "timeout": s}``
(the README's "The AgentService" has the answers and errors).

Auth: a LiveKit access token signed with one of the tenant's keys that
carries LiveKit's agent admin grant, ``"agent": {"admin": true}`` (what
``livekit.api.AccessToken().with_agent_grants(AgentGrants(admin=True))``
mints).  A tenant's token sees and changes only that tenant's agents.  What
it may add is the manager's to decide (``config.agents.authorize``); the
key of an agent server edgedispatch runs may manage nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
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

    async def start_agent(self, tenant: str, name: str, timeout: float) -> dict[str, Any]: ...

    async def stop_agent(self, tenant: str, name: str) -> dict[str, Any]: ...


#: Seconds StartAgent waits for an agent server to register, unless told.
START_TIMEOUT = 30.0


def _require_admin(claims: Claims) -> None:
    if claims.program:
        # A program edgedispatch runs acts for its tenant towards LiveKit's
        # APIs, but manages no agents: it would add code of its own.
        raise PermissionDenied("an agent server's own API key cannot manage agents")
    grant = claims.raw.get("agent")
    if not isinstance(grant, dict) or grant.get("admin") is not True:
        raise PermissionDenied('token lacks the agent admin grant ("agent": {"admin": true})')


def _name(body: dict[str, Any]) -> str:
    name = body.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidArgument("name is required")
    return name


def _timeout(body: dict[str, Any]) -> float:
    timeout = body.get("timeout", START_TIMEOUT)
    if not isinstance(timeout, int | float) or isinstance(timeout, bool):
        raise InvalidArgument("timeout must be a number of seconds")
    return float(timeout)


async def _list_agents(manager: AgentAdmin, tenant: str, req: dict[str, Any]) -> dict[str, Any]:
    return {"agents": manager.list(tenant)}


async def _add_agent(manager: AgentAdmin, tenant: str, req: dict[str, Any]) -> dict[str, Any]:
    definition = req.get("agent")
    if not isinstance(definition, dict):
        raise InvalidArgument("agent (a definition object) is required")
    return {"agent": await manager.add(tenant, definition)}


async def _remove_agent(manager: AgentAdmin, tenant: str, req: dict[str, Any]) -> dict[str, Any]:
    await manager.remove(tenant, _name(req))
    return {}


async def _start_agent(manager: AgentAdmin, tenant: str, req: dict[str, Any]) -> dict[str, Any]:
    return {"agent": await manager.start_agent(tenant, _name(req), _timeout(req))}


async def _stop_agent(manager: AgentAdmin, tenant: str, req: dict[str, Any]) -> dict[str, Any]:
    return {"agent": await manager.stop_agent(tenant, _name(req))}


#: method -> what it does, for the caller's tenant (a table, so that the
#: routes can be enumerated: the authorisation matrix covers each).
METHODS: dict[str, Callable[[AgentAdmin, str, dict[str, Any]], Awaitable[dict[str, Any]]]] = {
    "ListAgents": _list_agents,
    "AddAgent": _add_agent,
    "RemoveAgent": _remove_agent,
    "StartAgent": _start_agent,
    "StopAgent": _stop_agent,
}


async def handle(manager: AgentAdmin, method: str, claims: Claims, body: bytes) -> bytes:
    """Run one method; returns the JSON answer, raises EdgeDispatchError."""
    _require_admin(claims)
    try:
        req = msgspec.json.decode(body or b"{}")
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        # (msgspec raises UnicodeDecodeError for a string that is not UTF-8.)
        raise Malformed(f"the request body is not JSON: {exc}") from exc
    except RecursionError as exc:
        # msgspec raises this, not DecodeError, for arrays or objects nested
        # deeper than the interpreter's recursion limit (a few KB of "[").
        raise Malformed("the request body is not JSON: nested too deeply") from exc
    if not isinstance(req, dict):
        raise Malformed("the request body must be a JSON object")
    run = METHODS.get(method)
    if run is None:
        raise TwirpError("bad_route", f"no such method: {method}")
    return msgspec.json.encode(await run(manager, claims.tenant, req))
