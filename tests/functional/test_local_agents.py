"""Agents edgedispatch runs itself: command agents, agent servers started on
demand, and the definitions API with its tenant isolation."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from livekit import api
from livekit.protocol import agent

from edgedispatch._core.codes import JobState
from edgedispatch.cli import agent_client as client

from .clients import stored_agents
from .conftest import ServerThread, serve_once
from .test_real_clients import job_states, lk_call, wait_until

AGENTS = Path(__file__).resolve().parents[1] / "agents"


def writable(out: Path) -> Path:
    """``out``, writable for a tenant's uid (the job writes its record there)."""
    out.chmod(0o777)
    return out


def command_agent(name: str, out: Path, **kw: Any) -> dict[str, Any]:
    env = {"EDT_OUT": str(out), **kw.pop("env", {})}
    return {
        "name": name,
        "command": [sys.executable, str(AGENTS / "cmd_agent.py")],
        "env": env,
        "binds": [f"{writable(out)}:rw"],
        **kw,
    }


def records(out: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("AJ_*.json"))]


def dispatch(srv: ServerThread, name: str, room: str, **kw: Any) -> Any:
    return lk_call(
        srv,
        lambda lk: lk.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(agent_name=name, room=room, **kw)
        ),
    )


def test_a_command_job_gets_its_environment_and_token(
    start_server: Callable[..., ServerThread], tmp_path: Path
) -> None:
    srv = start_server(agents=[command_agent("cmd", tmp_path)])
    d = dispatch(srv, "cmd", "call-7", metadata='{"lang": "de"}')
    wait_until(lambda: bool(records(tmp_path)), what="the command job")
    (rec,) = records(tmp_path)
    assert rec["room"] == "call-7" and rec["agent_name"] == "cmd"
    assert rec["metadata"] == '{"lang": "de"}' and rec["url"] == srv.ws_url
    claims = rec["claims"]
    assert claims["sub"] == f"agent-{rec['job_id']}" and claims["kind"] == "agent"
    assert claims["video"]["room"] == "call-7" and claims["video"]["roomJoin"] is True
    assert rec["secret_leaked"] is False
    # The token is valid: signed with the key of the agent's tenant.
    assert jwt.decode(rec["token"], "secret", algorithms=["HS256"])["sub"] == claims["sub"]
    wait_until(lambda: job_states(srv, "call-7")[0].status == agent.JS_SUCCESS, what="success")
    (job,) = lk_call(srv, lambda lk: lk.agent_dispatch.list_dispatch("call-7"))[0].state.jobs
    assert job.id == rec["job_id"] and job.dispatch_id == d.id


def test_a_crashing_command_job_fails_with_its_exit_code_and_spares_others(
    start_server: Callable[..., ServerThread], tmp_path: Path
) -> None:
    crash_out, ok_out = tmp_path / "crash", tmp_path / "ok"
    crash_out.mkdir()
    ok_out.mkdir()
    srv = start_server(
        agents=[
            command_agent("crasher", crash_out, env={"EDT_MODE": "crash"}),
            command_agent("steady", ok_out, env={"EDT_MODE": "sleep"}, max_duration=3),
        ]
    )
    dispatch(srv, "steady", "r1")
    wait_until(lambda: bool(records(ok_out)), what="the steady job")
    dispatch(srv, "crasher", "r2")
    wait_until(lambda: job_states(srv, "r2")[0].status == agent.JS_FAILED, what="the crash")
    (state,) = job_states(srv, "r2")
    assert "exited with code 3" in state.error
    assert job_states(srv, "r1")[0].status == agent.JS_RUNNING  # undisturbed
    # ... until its own maximum duration ends it
    wait_until(
        lambda: job_states(srv, "r1")[0].status == agent.JS_FAILED, timeout=10, what="max duration"
    )
    assert "ran longer than 3 s" in job_states(srv, "r1")[0].error


def test_a_job_over_its_memory_limit_fails_with_the_reason(
    start_server: Callable[..., ServerThread], tmp_path: Path
) -> None:
    srv = start_server(
        agents=[command_agent("hog", tmp_path, env={"EDT_MODE": "hog"}, memory_limit_mb=200)]
    )
    dispatch(srv, "hog", "r")
    wait_until(
        lambda: job_states(srv, "r")[0].status == agent.JS_FAILED,
        timeout=20,
        what="the memory limit",
    )
    error = job_states(srv, "r")[0].error
    assert "memory limit exceeded" in error and "> 200 MB" in error


def test_bad_definitions_stop_the_server(tmp_path: Path, loop_kind: str) -> None:
    cfg = tmp_path / "c.toml"

    def serve(definitions: str) -> subprocess.CompletedProcess[str]:
        cfg.write_text(definitions)
        return serve_once(loop_kind, "--config", str(cfg))

    out = serve('[[agents]]\nname = "x"\nentrypoint = "no_such_module_anywhere:main"\n')
    assert out.returncode == 2 and "unknown module 'no_such_module_anywhere'" in out.stderr
    out = serve(
        '[[agents]]\nname = "x"\ncommand = ["/nonexistent/program"]\n'
        '[[agents]]\nname = "x"\ncommand = ["true"]\n'
    )
    assert out.returncode == 2 and "missing command '/nonexistent/program'" in out.stderr


def admin_call(
    srv: ServerThread,
    method: str,
    body: dict[str, Any],
    key: str = "devkey",
    secret: str = "secret",
    admin: bool = True,
) -> tuple[int, dict[str, Any]]:
    return client.call(srv.url, key, secret, method, body, admin=admin)


def test_definitions_api_is_per_tenant_and_persists(
    start_server: Callable[..., ServerThread], tmp_path: Path
) -> None:
    tenants = {
        "acme": {"keys": {"acme-key": "acme-secret"}, "allow_code": True},
        "globex": {"globex-key": "globex-secret"},
    }
    srv = start_server(tenants=tenants, server={"data_dir": str(tmp_path / "data")})
    # A tenant's job writes to its tenant's own directory (binds are the
    # operator's to give).
    out = srv.server.containment.sandbox.tenant_dir("acme")
    helper = command_agent("helper", out)
    del helper["binds"]
    acme = {"key": "acme-key", "secret": "acme-secret"}
    globex = {"key": "globex-key", "secret": "globex-secret"}
    status, added = admin_call(srv, "AddAgent", {"agent": helper}, **acme)
    assert status == 200 and added["agent"]["kind"] == "command"
    status, err = admin_call(srv, "AddAgent", {"agent": helper}, **acme)
    assert status == 409 and err["code"] == "already_exists"
    status, err = admin_call(
        srv, "AddAgent", {"agent": {"name": "bad", "entrypoint": "nope_mod:main"}}, **acme
    )
    assert status == 400 and "unknown module" in err["msg"]
    status, err = admin_call(
        srv, "AddAgent", {"agent": {"name": "bad", "command": ["/no/x"]}}, **acme
    )
    assert status == 400 and "missing command" in err["msg"]
    status, err = admin_call(srv, "ListAgents", {}, admin=False, **acme)
    assert status == 403 and err["code"] == "permission_denied"
    # acme's token cannot add a definition to globex
    theirs = {**helper, "name": "spy", "tenant": "globex"}
    status, err = admin_call(srv, "AddAgent", {"agent": theirs}, **acme)
    assert status == 403 and err["code"] == "permission_denied"
    # globex sees nothing of acme's, and cannot remove it
    assert admin_call(srv, "ListAgents", {}, **globex) == (200, {"agents": []})
    status, err = admin_call(srv, "RemoveAgent", {"name": "helper"}, **globex)
    assert status == 404
    # globex's dispatch to "helper" does not reach acme's agent
    lk_globex = lambda fn: _lk(srv, "globex-key", "globex-secret", fn)  # noqa: E731
    lk_globex(
        lambda lk: lk.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(agent_name="helper", room="g")
        )
    )
    lk_acme = lambda fn: _lk(srv, "acme-key", "acme-secret", fn)  # noqa: E731
    lk_acme(
        lambda lk: lk.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(agent_name="helper", room="a")
        )
    )
    wait_until(lambda: bool(records(out)), what="acme's job")
    time.sleep(0.3)
    assert [r["room"] for r in records(out)] == ["a"]
    # kept across a restart
    assert list(stored_agents(tmp_path / "data")) == ["acme/helper"]
    again = start_server(tenants=tenants, server={"data_dir": str(tmp_path / "data")})
    (listed,) = admin_call(again, "ListAgents", {}, **acme)[1]["agents"]
    assert listed["name"] == "helper" and listed["source"] == "api"
    assert admin_call(again, "RemoveAgent", {"name": "helper"}, **acme)[0] == 200
    assert stored_agents(tmp_path / "data") == {}


def _lk(srv: ServerThread, key: str, secret: str, fn: Callable[[Any], Any]) -> Any:
    async def main() -> Any:
        async with api.LiveKitAPI(srv.url, key, secret) as lk:
            return await fn(lk)

    return asyncio.run(main())


@pytest.mark.slow
def test_an_agent_server_starts_on_demand_and_stops_when_idle(
    start_server: Callable[..., ServerThread], tmp_path: Path
) -> None:
    definition = {
        "name": "ondemand",
        "worker": [sys.executable, str(AGENTS / "py_agent.py"), "start"],
        "cwd": str(AGENTS),
        "env": {"EDT_OUT": str(tmp_path), "EDT_AGENT": "ondemand"},
        "binds": [f"{writable(tmp_path)}:rw"],
        "idle_timeout": 2,
    }
    srv = start_server(agents=[definition])
    sup = lambda: srv.server.agents._agents["", "ondemand"].supervisor  # noqa: E731
    assert sup().processes == 0  # nothing runs until a job needs it
    dispatch(srv, "ondemand", "first")
    wait_until(lambda: len(records(tmp_path)) == 1, timeout=60, what="the first job")
    assert sup().starts == 1
    wait_until(lambda: not sup().processes, timeout=30, what="the idle agent server to stop")
    dispatch(srv, "ondemand", "second")
    wait_until(lambda: len(records(tmp_path)) == 2, timeout=60, what="the second job")
    assert sup().starts == 2
    assert {r["room"] for r in records(tmp_path)} == {"first", "second"}


def test_an_agent_server_scales_up_to_max_instances_while_jobs_wait(
    start_server: Callable[..., ServerThread],
) -> None:
    definition = {
        "name": "scaler",
        "worker": [sys.executable, str(AGENTS / "fake_server.py")],
        "env": {"EDT_AGENT": "scaler"},
        "max_instances": 2,
    }
    # One job per worker: the second job finds the first instance full.
    srv = start_server(agents=[definition], dispatch={"agent_slots": {"scaler": 1}})
    sup = lambda: srv.server.agents._agents["", "scaler"].supervisor  # noqa: E731
    for room in ("r1", "r2", "r3"):
        dispatch(srv, "scaler", room)

    def running() -> list[str]:
        return [
            room
            for room in ("r1", "r2", "r3")
            if [s.status for s in job_states(srv, room)] == [agent.JS_RUNNING]
        ]

    wait_until(lambda: len(running()) == 2, timeout=30, what="two jobs on two instances")
    time.sleep(1.0)  # a third instance would have started by now
    assert sup().starts == 2 and sup().processes == 2
    assert len(running()) == 2  # the third job waits: max_instances is 2


def test_a_native_job_runs_with_its_metadata_and_attributes(
    start_server: Callable[..., ServerThread], tmp_path: Path
) -> None:
    definition = {
        "name": "native",
        "entrypoint": "native_agent:entrypoint",
        "prewarm": "native_agent:prewarm",
        "env": {"EDT_OUT": str(tmp_path), "PYTHONPATH": str(AGENTS)},
        "binds": [f"{writable(tmp_path)}:rw"],
        "idle": 2,
    }
    srv = start_server(agents=[definition])
    d = dispatch(srv, "native", "room-n", metadata="native-meta", attributes={"tier": "1"})
    wait_until(lambda: bool(records(tmp_path)), what="the native entrypoint")
    (rec,) = records(tmp_path)
    assert rec["dispatch_id"] == d.id and rec["room"] == "room-n"
    assert rec["metadata"] == "native-meta" and rec["attributes"] == {"tier": "1"}
    assert rec["agent_name"] == "native" and rec["url"] == srv.ws_url
    assert rec["prewarmed_in"] == rec["pid"] != os.getpid()  # prewarm ran in its own process
    claims = jwt.decode(rec["token"], "secret", algorithms=["HS256"])
    assert claims["video"]["room"] == "room-n" and claims["kind"] == "agent"
    wait_until(lambda: job_states(srv, "room-n")[0].status == agent.JS_SUCCESS, what="success")


class _Runner:
    """A JobRunner that starts nothing: records each job and keeps it running."""

    def __init__(self) -> None:
        self.jobs: list[str] = []

    def run_job(self, info: Any, on_exit: Any, *, max_duration: float = 0) -> Any:
        self.jobs.append(info.job_id)
        return self

    def terminate(self, grace: float = 10.0) -> None: ...

    def kill(self) -> None: ...


def test_a_local_worker_takes_a_thousand_queued_jobs_in_one_pass(
    start_server: Callable[..., ServerThread],
) -> None:
    # Each offer to a local worker is answered after the step that made it,
    # in the same pass: the answers must not nest one step inside another.
    from edgedispatch.config.agents import AgentDefinition
    from edgedispatch.dispatch.domain import Domain
    from edgedispatch.dispatch.specs import AgentSpec, DispatchSpec
    from edgedispatch.worker.local import LocalWorker

    n = 1200
    srv = start_server(dispatch={"worker_slots": 2000})
    d = srv.domain

    def queue(domain: Domain, now: float) -> None:
        for i in range(n):
            spec = DispatchSpec(room=f"r{i}", agent=AgentSpec(agent_name="bulk"))
            domain.create_dispatch("", spec, now)

    srv.step(queue)
    runner = _Runner()
    definition = AgentDefinition(name="bulk", command=["true"], slots=n)
    local = LocalWorker(d, definition, runner, "devkey", "secret", srv.url)
    srv.call(lambda: local.register(srv.now()))
    assert len(runner.jobs) == n  # in that one call
    wait_until(
        lambda: srv.call(lambda: d.agent_jobs("", "bulk")) == (n, 0),
        timeout=10,
        what="every job out of the queue",
    )
    states = srv.call(lambda: {j.state for j in d.jobs.jobs.values()})
    assert states == {JobState.RUNNING}
