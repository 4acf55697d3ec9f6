"""``edgedispatch agent ...``: every definition field has a flag, a command
keeps its own arguments, and ``agent list`` prints a table."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from edgedispatch.cli import build_parser
from edgedispatch.cli.agent_commands import format_agents, request
from edgedispatch.config.agents import AgentDefinition


def body(*argv: str) -> tuple[str, dict[str, Any]]:
    return request(build_parser().parse_args(["agent", *argv]))


def test_a_command_keeps_its_own_arguments() -> None:
    # Before: `--command sh -c 'echo hi'` failed, argparse taking -c for an option.
    _, b = body("add", "hi", "--command", "sh -c 'echo hi; exit 3'")
    assert b["agent"]["command"] == ["sh", "-c", "echo hi; exit 3"]
    _, b = body("add", "voice", "--worker", "python agent.py start --log-level debug")
    assert b["agent"]["worker"] == ["python", "agent.py", "start", "--log-level", "debug"]


@pytest.mark.parametrize(
    "argv",
    [
        ["--command", "sh", "-c", "echo hi; exit 3"],
        ["--command", "--", "sh", "-c", "echo hi; exit 3"],
        ["--command", "sh -c 'echo hi; exit 3'"],
        ["--slots", "2", "--command", "sh", "-c", "echo hi; exit 3"],
    ],
)
def test_a_command_is_the_rest_of_the_line_or_one_quoted_string(argv: list[str]) -> None:
    # Before: `--command sh -c 'echo hi'` failed, argparse taking -c for an option.
    _, b = body("add", "hi", *argv)
    assert b["agent"]["command"] == ["sh", "-c", "echo hi; exit 3"]


def test_a_program_keeps_arguments_that_look_like_our_flags() -> None:
    _, b = body("add", "voice", "--slots", "2", "--worker", "--", "agent", "--slots", "9", "--")
    assert b["agent"] == {"name": "voice", "worker": ["agent", "--slots", "9", "--"], "slots": 2}


def test_every_definition_field_has_a_flag() -> None:
    method, b = body(
        "add", "voice", "--worker", "python agent.py start",
        "--min-instances", "1", "--max-instances", "3", "--idle-timeout", "60",
        "--slots", "4", "--idle", "1", "--memory-limit-mb", "512", "--max-duration", "600",
        "--max-processes", "64", "--env", "A=1", "--env", "B=x=y", "--cwd", "/srv/agent",
        "--prewarm", "agent:prewarm", "--bind", "/srv/models", "--bind", "/var/rec:rw",
    )  # fmt: skip
    assert method == "AddAgent"
    assert b["agent"] == {
        "name": "voice", "worker": ["python", "agent.py", "start"], "min_instances": 1,
        "max_instances": 3, "idle_timeout": 60.0, "slots": 4, "idle": 1,
        "memory_limit_mb": 512.0, "max_duration": 600.0, "max_processes": 64,
        "env": {"A": "1", "B": "x=y"}, "cwd": "/srv/agent", "prewarm": "agent:prewarm",
        "binds": ["/srv/models", "/var/rec:rw"],
    }  # fmt: skip
    # ... every field of a definition but its tenant (the key's) has one.
    fields = {f.name for f in msgspec.structs.fields(AgentDefinition)} - {"tenant"}
    _, native = body("add", "n", "--entrypoint", "m:f")
    assert fields == set(b["agent"]) | {"entrypoint", "command"}
    assert native["agent"] == {"name": "n", "entrypoint": "m:f"}
    assert msgspec.convert(b["agent"], AgentDefinition).max_instances == 3


@pytest.mark.parametrize(
    "argv",
    [
        ["add", "x", "--command", "sh -c 'unterminated"],
        ["add", "x", "--command", ""],
        ["add", "x", "--env", "NOEQUALS", "--command", "true"],
        ["add", "x", "--worker", "python a.py", "--command", "true"],
        ["add", "x", "--command", "--"],
    ],
)
def test_bad_flags_are_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["agent", *argv])
    assert info.value.code == 2 and "error:" in capsys.readouterr().err


def test_start_and_stop_name_their_method() -> None:
    assert body("start", "voice", "--timeout", "90") == (
        "StartAgent",
        {"name": "voice", "timeout": 90.0},
    )
    assert body("start", "voice")[1]["timeout"] == 30.0
    assert body("stop", "voice") == ("StopAgent", {"name": "voice"})


def test_the_list_is_a_table_with_each_instance() -> None:
    agents = [
        {"name": "support", "kind": "native", "state": "running", "source": "config",
         "entrypoint": "acme.support:main"},
        {"name": "voice", "kind": "server", "state": "backing off", "source": "api",
         "worker": ["python", "agent.py", "start"],
         "instances": [
             {"instance": 1, "state": "registered", "pid": 41, "workers": ["AW_a"]},
             {"instance": 2, "state": "backing off", "last_exit": "exited with code 1",
              "exit_code": 1, "crashes": 3, "next_attempt_at": 1000.0 + 4},
         ]},
    ]  # fmt: skip
    lines = format_agents(agents, now=1000.0).splitlines()
    assert lines[0].split() == ["NAME", "KIND", "STATE", "SOURCE", "RUNS"]
    assert lines[1].split() == ["support", "native", "running", "config", "acme.support:main"]
    assert lines[2].split()[:2] == ["voice", "server"] and "python agent.py start" in lines[2]
    assert lines[3] == "  instance 1: registered, pid 41, worker AW_a"
    assert lines[4].startswith(
        "  instance 2: backing off, exited with code 1, 3 crashes in a row, next attempt at "
    )
    assert lines[4].endswith("(in 4 s)")
    assert lines[0].index("STATE") == lines[2].index("backing off")  # aligned
    assert format_agents([], now=0) == "no agents in this tenant\n"
