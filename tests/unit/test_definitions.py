"""Agent definitions are refused with the field and the reason."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import pytest

from edgedispatch.config.agents import AgentDefinition, authorize, locate_module, validate
from edgedispatch.errors import ConfigError, PermissionDenied

OK: dict[str, Any] = {"name": "a", "command": [sys.executable]}


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        ({"name": ""}, "agent.name", "needs a name"),
        ({"name": "x" * 129}, "agent.name", "at most 128 bytes"),
        ({"name": "bad\nname"}, "agent.name", "control characters"),
        ({"command": [], "entrypoint": "json:loads", "worker": ["x"]}, "agent", "exactly one"),
        ({"command": ["/no/such/program"]}, "agent.command", "missing command"),
        ({"command": [], "entrypoint": "no_such_module_x:main"}, "agent.entrypoint", "unknown"),
        ({"command": [], "entrypoint": "json"}, "agent.entrypoint", "pkg.module:function"),
        ({"slots": 0}, "agent.slots", "1..10000"),
        ({"idle": 1001}, "agent.idle", "0..1000"),
        ({"memory_limit_mb": -1.0}, "agent.memory_limit_mb", ">= 0"),
        ({"memory_limit_mb": math.nan}, "agent.memory_limit_mb", ">= 0"),
        ({"max_duration": math.inf}, "agent.max_duration", ">= 0"),
        ({"min_instances": 2, "max_instances": 1}, "agent", "min_instances <= max_instances"),
    ],
)
def test_bad_definitions(change: dict[str, Any], field: str, reason: str) -> None:
    d = AgentDefinition(**{**OK, **change})
    with pytest.raises(ConfigError, match=reason) as info:
        validate(d)
    assert field in str(info.value)


def test_a_good_definition_passes() -> None:
    d = AgentDefinition(name="voice agent é", command=[sys.executable], memory_limit_mb=500)
    assert validate(d) is d


# -- who may add what (config.agents.authorize) -----------------------------------

APPROVED = ["acme_agents", "shared.voice"]
KINDS: dict[str, dict[str, Any]] = {
    "native, approved": {"entrypoint": "acme_agents.support:main"},
    "native, not approved": {"entrypoint": "json:loads"},
    "command": {"command": ["sh", "-c", "echo hi"]},
    "worker": {"worker": ["python", "agent.py", "start"]},
}
CALLERS = {
    "operator": {"operator": True, "allow_code": False},
    "tenant": {"operator": False, "allow_code": False},
    "tenant with allow_code": {"operator": False, "allow_code": True},
}
#: (caller, kind) -> the refusal, or None: allowed.
MATRIX: dict[tuple[str, str], str | None] = {
    ("operator", "native, approved"): None,
    ("operator", "native, not approved"): None,
    ("operator", "command"): None,
    ("operator", "worker"): None,
    ("tenant", "native, approved"): None,
    ("tenant", "native, not approved"): (
        "adding a native agent from module 'json' needs the operator's key, allow_code, "
        "or the module in native_modules for tenant 'acme'"
    ),
    ("tenant", "command"): (
        "adding a command agent needs the operator's key or allow_code for tenant 'acme'"
    ),
    ("tenant", "worker"): (
        "adding an agent server (worker) needs the operator's key or allow_code for tenant 'acme'"
    ),
    ("tenant with allow_code", "native, approved"): None,
    ("tenant with allow_code", "native, not approved"): None,
    ("tenant with allow_code", "command"): None,
    ("tenant with allow_code", "worker"): None,
}


@pytest.mark.parametrize(("caller", "kind"), list(MATRIX))
def test_who_may_add_what(caller: str, kind: str) -> None:
    d = AgentDefinition(name="a", tenant="acme", **KINDS[kind])
    refusal = MATRIX[caller, kind]
    if refusal is None:
        authorize(d, native_modules=APPROVED, **CALLERS[caller])
    else:
        with pytest.raises(PermissionDenied) as info:
            authorize(d, native_modules=APPROVED, **CALLERS[caller])
        assert info.value.msg == refusal


@pytest.mark.parametrize(
    ("change", "refused"),
    [
        ({"entrypoint": "shared.voice:main"}, None),  # the module itself
        ({"entrypoint": "shared.voice.de.bot:main"}, None),  # in the package
        ({"entrypoint": "shared.voicemail:main"}, "module 'shared.voicemail'"),  # not a prefix
        ({"entrypoint": "shared:main"}, "module 'shared'"),  # the parent is not approved
        ({"prewarm": "json:loads"}, "module 'json'"),  # prewarm is code too
        ({"env": {"PYTHONPATH": "/tmp"}}, "setting PYTHONPATH"),  # other code by that name
        ({"env": {"LD_PRELOAD": "/tmp/x.so"}}, "setting LD_PRELOAD"),
        ({"env": {"HOME": "/tmp"}}, "setting HOME"),  # the user site-packages
        ({"env": {"LANG": "de_DE.UTF-8"}}, None),
        ({"cwd": "/tmp"}, "setting cwd"),
    ],
)
def test_a_tenant_native_agent_cannot_choose_other_code(
    change: dict[str, Any], refused: str | None
) -> None:
    d = AgentDefinition(**{"name": "a", "tenant": "acme", "entrypoint": "acme_agents:x", **change})
    grants = {"operator": False, "allow_code": False, "native_modules": APPROVED}
    if refused is None:
        authorize(d, **grants)
    else:
        with pytest.raises(PermissionDenied, match=refused):
            authorize(d, **grants)


def test_validating_a_native_agent_runs_none_of_its_code(tmp_path: Path) -> None:
    # find_spec("pkg.mod") would import pkg: a tenant's code, in the server.
    pkg = tmp_path / "evilpkg"
    pkg.mkdir()
    marker = tmp_path / "ran"
    (pkg / "__init__.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    (pkg / "mod.py").write_text("async def main(ctx): pass\n")
    d = AgentDefinition(name="n", entrypoint="evilpkg.mod:main", env={"PYTHONPATH": str(tmp_path)})
    validate(d)
    assert not marker.exists()
    assert locate_module("evilpkg.mod", [str(tmp_path)]) == str(tmp_path)
    assert locate_module("evilpkg.nope", [str(tmp_path)]) is None
    with pytest.raises(ConfigError, match="unknown module"):
        validate(AgentDefinition(name="n", entrypoint="evilpkg.nope:main"))


def test_a_module_behind_an_import_hook_is_found_without_running_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An editable install puts its package behind a finder on sys.meta_path,
    # not on sys.path: the server's own bench agent lives there in a checkout.
    import importlib.abc
    import importlib.util

    pkg = tmp_path / "site" / "hookedpkg"
    pkg.mkdir(parents=True)
    marker = tmp_path / "ran"
    (pkg / "__init__.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    (pkg / "agent.py").write_text("async def main(ctx): pass\n")

    class Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
            if name != "hookedpkg":
                return None
            return importlib.util.spec_from_file_location(
                name, pkg / "__init__.py", submodule_search_locations=[str(pkg)]
            )

    monkeypatch.setattr(sys, "meta_path", [*sys.meta_path, Finder()])
    monkeypatch.chdir(tmp_path)
    assert locate_module("hookedpkg.agent", []) == str(tmp_path / "site")
    assert locate_module("hookedpkg.missing", []) is None
    validate(AgentDefinition(name="n", entrypoint="hookedpkg.agent:main"))
    assert not marker.exists()
