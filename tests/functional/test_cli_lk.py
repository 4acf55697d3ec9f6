"""The lk-like CLI against a running server: ``token create``'s tokens are
accepted, with their grants, by the server and a real ``livekit`` rtc
client; ``agent add --command`` stores the program's own arguments."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable

import pytest
from livekit import rtc

from edgedispatch._testbase.fake_worker import FakeWorker
from edgedispatch.wire.tokens import Verifier

from .conftest import ServerThread
from .test_serve import ServeProcess, served  # noqa: F401  (a fixture)


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgedispatch", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_token_create_makes_a_token_the_server_verifies_with_its_grants() -> None:
    out = cli(
        "token", "create", "--room", "r1", "--identity", "alice", "--name", "Alice",
        "--join", "--admin", "--attribute", "tier=gold", "--metadata", '{"k": 1}',
        "--grant", '{"canPublish": false}', "--valid-for", "1h", "--json",
        env={"LIVEKIT_API_KEY": "k1", "LIVEKIT_API_SECRET": "s" * 32},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    made = json.loads(out.stdout)
    claims = Verifier({"k1": "s" * 32}).verify(made["access_token"], time.time())
    assert claims.identity == "alice" and claims.raw["name"] == "Alice"
    assert claims.video["room"] == "r1"
    assert claims.video["roomJoin"] is True and claims.video["roomAdmin"] is True
    assert claims.video["canPublish"] is False and "roomCreate" not in claims.video
    assert claims.raw["attributes"] == {"tier": "gold"} and claims.raw["metadata"] == '{"k": 1}'
    assert 3590 < claims.raw["exp"] - time.time() <= 3600
    assert made["grants"]["video"] == claims.video


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--room", "r1"], "--join needs --identity"),
        (["--identity", "a", "--admin"], "--join and --admin need --room"),
        (["--room", "r", "--identity", "a", "--valid-for", "soon"], "expected a duration"),
        (["--room", "r", "--identity", "a", "--grant", "{"], "--grant is not JSON"),
        (["--room", "r", "--identity", "a", "--grant", '{"fly": true}'], "unknown video grant"),
        (["--room", "r", "--identity", "a", "--grant", '{"roomAdmin": 1}'], "must be a JSON bool"),
        (["--room", "r", "--list", "--agent", "bot"], "it needs --join"),
    ],
)
def test_token_create_says_what_is_wrong(argv: list[str], says: str) -> None:
    out = cli("token", "create", "--dev", *argv)
    assert out.returncode == 2 and says in out.stderr and "Traceback" not in out.stderr


def test_a_token_with_an_agent_dispatches_it_when_its_participant_joins(
    start_server: Callable[..., ServerThread],
) -> None:
    srv = start_server()
    out = cli(
        "token", "create", "--dev", "--room", "support", "--identity", "user",
        "--agent", "helper", "--job-metadata", "from the token", "--token-only",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    jwt = out.stdout.strip()

    async def main() -> None:
        worker = FakeWorker(srv.url, agent_name="helper")
        await worker.connect()
        user = rtc.Room()
        await user.connect(srv.ws_url, jwt)  # no --join: assumed
        try:
            await worker.wait_for(lambda: len(worker.assigned) == 1, timeout=15)
            (assignment,) = worker.assigned.values()
            assert assignment.job.room.name == "support"
            assert assignment.job.metadata == "from the token"
            assert user.local_participant.identity == "user"
        finally:
            await user.disconnect()
            await worker.close()

    asyncio.run(asyncio.wait_for(main(), 60))


@pytest.mark.once  # the CLI's parsing of a command; the API it calls runs on both loops
@pytest.mark.parametrize(
    "command",
    [
        ["--command", "sh", "-c", "echo hi; exit 3"],
        ["--command", "--", "sh", "-c", "echo hi; exit 3"],
        ["--command", "sh -c 'echo hi; exit 3'"],
    ],
)
def test_agent_add_stores_the_command_with_its_arguments(
    served: list[ServeProcess],  # noqa: F811
    loop_kind: str,
    command: list[str],
) -> None:
    srv = ServeProcess(loop_kind)
    served.append(srv)
    empty = srv.cli("agent", "list")
    assert (empty.returncode, empty.stdout) == (0, "no agents in this tenant\n")
    added = srv.cli("agent", "add", "hi", "--slots", "2", *command)
    assert added.returncode == 0, added.stderr
    (listed,) = json.loads(srv.cli("agent", "list", "--json").stdout)["agents"]
    assert listed["command"] == ["sh", "-c", "echo hi; exit 3"] and listed["slots"] == 2
    table = srv.cli("agent", "list").stdout.splitlines()
    assert table[0].split() == ["NAME", "KIND", "STATE", "SOURCE", "RUNS"]
    assert table[1].split()[:2] == ["hi", "command"]
    assert table[1].endswith("sh -c 'echo hi; exit 3'")
