"""Agent definitions are refused with the field and the reason."""

from __future__ import annotations

import math
import sys
from typing import Any

import pytest

from edgedispatch.config.agents import AgentDefinition, validate
from edgedispatch.errors import ConfigError

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
