"""Who may add which agents through the API: the operator anything; a
tenant native agents from the modules the operator approved for it, and
programs of its own only with ``allow_code``.  Refusals are 403 and name
the permission missing."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .clients import stored_agents
from .conftest import ServerThread
from .test_local_agents import admin_call

APPROVED = "tests.agents.native_agent"
TENANTS: dict[str, Any] = {
    "acme": {"keys": {"acme-key": "acme-secret"}, "native_modules": [APPROVED]},
    "globex": {"keys": {"globex-key": "globex-secret"}, "allow_code": True},
}
CALLERS = {
    "operator": {"key": "devkey", "secret": "secret"},
    "tenant": {"key": "acme-key", "secret": "acme-secret"},
    "tenant with allow_code": {"key": "globex-key", "secret": "globex-secret"},
}
KINDS: dict[str, dict[str, Any]] = {
    "native, approved": {"entrypoint": f"{APPROVED}:entrypoint", "idle": 0},
    "native, not approved": {"entrypoint": "tests.agents.native_sample:entrypoint", "idle": 0},
    "command": {"command": ["sh", "-c", "echo hi"]},
    "worker": {"worker": [sys.executable, "-c", "pass"]},
}
REFUSED = {
    ("tenant", "native, not approved"): (
        "adding a native agent from module 'tests.agents.native_sample' needs the operator's "
        "key, allow_code, or the module in native_modules for tenant 'acme'"
    ),
    ("tenant", "command"): (
        "adding a command agent needs the operator's key or allow_code for tenant 'acme'"
    ),
    ("tenant", "worker"): (
        "adding an agent server (worker) needs the operator's key or allow_code for tenant 'acme'"
    ),
}


def test_who_may_add_what(start_server: Callable[..., ServerThread]) -> None:
    srv = start_server(tenants=TENANTS)
    for caller, who in CALLERS.items():
        for i, (kind, fields) in enumerate(KINDS.items()):
            status, out = admin_call(srv, "AddAgent", {"agent": {"name": f"a{i}", **fields}}, **who)
            refusal = REFUSED.get((caller, kind))
            if refusal is None:
                assert status == 200, (caller, kind, out)
            else:
                assert (status, out["code"], out["msg"]) == (403, "permission_denied", refusal)
    # Tenants may always list, start and stop their own definitions.
    acme = CALLERS["tenant"]
    assert [a["name"] for a in admin_call(srv, "ListAgents", {}, **acme)[1]["agents"]] == ["a0"]
    assert admin_call(srv, "StopAgent", {"name": "a0"}, **acme)[1]["agent"]["state"] == "stopped"
    assert admin_call(srv, "StartAgent", {"name": "a0"}, **acme)[1]["agent"]["state"] == "running"
    # ... and a native agent may not choose other code by its environment.
    sneaky = {"name": "s", "entrypoint": f"{APPROVED}:entrypoint", "env": {"PYTHONPATH": "/tmp"}}
    status, out = admin_call(srv, "AddAgent", {"agent": sneaky}, **acme)
    assert status == 403 and out["msg"] == (
        "setting PYTHONPATH needs the operator's key or allow_code for tenant 'acme'"
    )


def test_an_agent_servers_own_key_manages_no_agents(
    start_server: Callable[..., ServerThread],
) -> None:
    # Its key acts for its tenant (the operator's here), but it is a
    # program's: it must not add programs of its own.
    srv = start_server()
    keys = srv.server.agents._keys
    srv.call(lambda: keys.add_key("EDI_test", "instance-secret", ""))
    status, out = admin_call(srv, "ListAgents", {}, key="EDI_test", secret="instance-secret")
    assert (status, out["msg"]) == (403, "an agent server's own API key cannot manage agents")


@pytest.mark.parametrize("loop_kind", ["uvloop"])  # nothing here depends on the loop
def test_a_stored_definition_no_longer_allowed_is_not_started(
    start_server: Callable[..., ServerThread], tmp_path: Path
) -> None:
    data = {"data_dir": str(tmp_path)}
    allowed = {"globex": TENANTS["globex"]}
    srv = start_server(tenants=allowed, server=data)
    who = CALLERS["tenant with allow_code"]
    assert (
        admin_call(srv, "AddAgent", {"agent": {"name": "c", **KINDS["command"]}}, **who)[0] == 200
    )
    taken_back = {"globex": {**TENANTS["globex"], "allow_code": False}}
    again = start_server(tenants=taken_back, server=data)
    assert admin_call(again, "ListAgents", {}, **who) == (200, {"agents": []})
    # It is kept, for the day the operator allows it again.
    assert list(stored_agents(tmp_path)) == ["globex/c"]
