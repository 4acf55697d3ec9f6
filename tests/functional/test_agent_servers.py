"""Agent servers edgedispatch runs, as their users see them: ``agent start``
and ``agent stop``, programs that crash or exit at once, what ``agent
list`` says of them, their log lines, and two tenants' livekit-agents
servers side by side."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from livekit import api

from .conftest import ServerThread
from .test_local_agents import AGENTS, _lk, admin_call, dispatch, records, writable
from .test_real_clients import wait_until

TENANTS = {"acme": {"acme-key": "acme-secret"}, "globex": {"globex-key": "globex-secret"}}
ACME = {"key": "acme-key", "secret": "acme-secret"}


def fake_server(name: str, **kw: Any) -> dict[str, Any]:
    """An agent server that registers within a fraction of a second."""
    return {
        "name": name,
        "worker": [sys.executable, str(AGENTS / "fake_server.py")],
        "env": {"EDT_AGENT": name},
        **kw,
    }


def counting(name: str, runs: Path, code: int, **kw: Any) -> dict[str, Any]:
    """A program that notes each run, says so, and exits at once."""
    script = f"echo run; echo run >> {runs}; exit {code}"
    binds = [f"{writable(runs.parent)}:rw"]
    return {"name": name, "worker": ["sh", "-c", script], "binds": binds, **kw}


def listed(srv: ServerThread, name: str, **who: str) -> dict[str, Any]:
    status, out = admin_call(srv, "ListAgents", {}, **who)
    assert status == 200, out
    (agent,) = [a for a in out["agents"] if a["name"] == name]
    return agent


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def runs_in(path: Path) -> int:
    return len(path.read_text().split()) if path.exists() else 0


def test_start_brings_an_enabled_agent_server_up_and_stop_stops_it(
    start_server: Callable[..., ServerThread],
) -> None:
    # Defect 4: StartAgent on an enabled definition answered {} and started nothing.
    srv = start_server(agents=[fake_server("helper")])
    assert listed(srv, "helper")["state"] == "idle"  # nothing runs until wanted
    status, out = admin_call(srv, "StartAgent", {"name": "helper"})
    assert status == 200, out
    (instance,) = out["agent"]["instances"]  # answered once it registered
    assert instance["state"] == "registered" and alive(instance["pid"])
    assert instance["workers"][0].startswith("AW_")
    assert out["agent"]["state"] == "running"
    status, out = admin_call(srv, "StopAgent", {"name": "helper"})
    assert status == 200 and out["agent"]["state"] == "stopped"
    assert out["agent"]["instances"] == [] and not alive(instance["pid"])
    status, out = admin_call(srv, "StartAgent", {"name": "helper"})
    (again,) = out["agent"]["instances"]
    assert status == 200 and again["state"] == "registered" and again["pid"] != instance["pid"]


def test_an_agent_server_that_exits_at_once_is_restarted_and_says_so(
    start_server: Callable[..., ServerThread], tmp_path: Path
) -> None:
    # Defect 5: one dispatch left `instances: 1` with no such process, and
    # nothing restarted it, not even stop and start.
    runs = tmp_path / "runs"
    srv = start_server(agents=[counting("quick", runs, 1)])
    dispatch(srv, "quick", "r")
    wait_until(lambda: runs_in(runs) >= 2, timeout=10, what="a restart")
    # Defect 9: a crash-looping agent server showed "running".
    agent = listed(srv, "quick")
    assert agent["state"] == "backing off"
    (instance,) = agent["instances"]
    assert instance["state"] in ("backing off", "starting")
    wait_until(
        lambda: listed(srv, "quick")["instances"][0]["state"] == "backing off", what="backoff"
    )
    (instance,) = listed(srv, "quick")["instances"]
    assert instance["exit_code"] == 1 and instance["last_exit"] == "exited with code 1"
    assert instance["next_attempt_at"] > time.time() - 1 and "pid" not in instance
    assert admin_call(srv, "StopAgent", {"name": "quick"})[0] == 200
    assert listed(srv, "quick")["state"] == "stopped"
    status, err = admin_call(srv, "StartAgent", {"name": "quick"})
    assert status == 503 and err["code"] == "unavailable"
    assert err["msg"] == (
        "agent 'quick' did not start: agent server instance 1 exited with code 1 "
        "before it registered"
    )


def test_an_exit_with_code_0_while_a_job_waits_backs_off_and_logs_carry_the_tenant(
    start_server: Callable[..., ServerThread],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Defect 7: restarted every 0.5 s with no backoff (146,000 log lines in 50 s).
    caplog.set_level(logging.INFO, logger="edgedispatch.agents")
    runs = tmp_path / "runs"
    srv = start_server(tenants=TENANTS, agents=[counting("zero", runs, 0, tenant="acme")])

    async def acme_dispatch(lk: api.LiveKitAPI) -> None:
        await lk.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(agent_name="zero", room="r")
        )

    _lk(srv, "acme-key", "acme-secret", acme_dispatch)
    wait_until(lambda: runs_in(runs) >= 1, timeout=10, what="the first run")
    time.sleep(2.5)  # restarts 1 s and 3 s after the first: one in this time
    assert runs_in(runs) == 2
    (instance,) = listed(srv, "zero", **ACME)["instances"]
    assert instance["exit_code"] == 0 and instance["crashes"] == 2
    # Defect 9: every log line of the agent carries its tenant.
    mine = [r for r in caplog.records if getattr(r, "agent", None) == "zero"]
    assert {r.getMessage() for r in mine} >= {
        "run",  # its own output
        "agent server exited with code 0; restarting in 1 s",
        "agent server exited with code 0; restarting in 2 s",
    }
    assert {getattr(r, "tenant", None) for r in mine} == {"acme"}
    assert {getattr(r, "instance", None) for r in mine if r.getMessage() == "run"} == {1}


@pytest.mark.slow
@pytest.mark.parametrize("loop_kind", ["uvloop"])  # the ports are the point, not the loop
def test_two_tenants_livekit_agents_servers_run_side_by_side(
    start_server: Callable[..., ServerThread], tmp_path: Path
) -> None:
    # livekit-agents binds its health server to 8081 unless the app says
    # otherwise: each instance gets a free PORT, which py_agent.py uses.
    outs = {t: tmp_path / t for t in TENANTS}
    definitions = [
        {
            "name": "voice",
            "tenant": tenant,
            "worker": [sys.executable, str(AGENTS / "py_agent.py"), "start"],
            "cwd": str(AGENTS),
            "env": {"EDT_OUT": str(out), "EDT_AGENT": "voice"},
            "binds": [f"{out}:rw"],
        }
        for tenant, out in outs.items()
    ]
    for out in outs.values():
        out.mkdir()
        writable(out)
    srv = start_server(tenants=TENANTS, agents=definitions)
    answers: dict[str, tuple[int, dict[str, Any]]] = {}

    def start(tenant: str) -> None:
        ((key, secret),) = TENANTS[tenant].items()
        body = {"name": "voice", "timeout": 90}
        answers[tenant] = admin_call(srv, "StartAgent", body, key=key, secret=secret)

    threads = [threading.Thread(target=start, args=(t,)) for t in TENANTS]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    pids = {}
    for tenant, (status, out) in answers.items():
        assert status == 200, out
        (instance,) = out["agent"]["instances"]
        assert instance["state"] == "registered"
        pids[tenant] = instance["pid"]
    assert all(alive(pid) for pid in pids.values())  # both at once
    for tenant, ((key, secret),) in ((t, TENANTS[t].items()) for t in TENANTS):

        async def create(lk: api.LiveKitAPI, room: str = f"room-{tenant}") -> None:
            await lk.agent_dispatch.create_dispatch(
                api.CreateAgentDispatchRequest(agent_name="voice", room=room)
            )

        _lk(srv, key, secret, create)
    for tenant, out in outs.items():
        wait_until(lambda out=out: bool(records(out)), timeout=60, what=f"{tenant}'s job")
        (rec,) = records(out)
        assert rec["room"] == f"room-{tenant}"  # its own tenant's job, on its own server
