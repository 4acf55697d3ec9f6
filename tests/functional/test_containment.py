"""Tenant code is hostile: each test runs an agent that tries to break out
(``tests/agents/hostile.py``), as a command job and as a native job, and
checks what it got.  Every attempt must fail or be cleaned up.

The protections come from the host (``runtime.contain``): a test that
needs one the host lacks says so and skips (CI's hosts have them all; the
test command installs bubblewrap)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from livekit import api
from livekit.protocol import agent

from edgedispatch.runtime.sandbox import Host

from .conftest import ServerThread, serve_argv
from .test_local_agents import AGENTS, _lk, records, writable
from .test_real_clients import wait_until

TENANTS = {"acme": {"acme-key": "acme-secret"}, "globex": {"globex-key": "globex-secret"}}


def hostile(kind: str, out: Path, **kw: Any) -> dict[str, Any]:
    """The attacker as a command agent or a native agent."""
    common = {"name": "hostile", "binds": [f"{writable(out)}:rw"], **kw}
    if kind == "command":
        cmd = [sys.executable, str(AGENTS / "hostile.py")]
        return {**common, "command": cmd, "env": {"EDT_OUT": str(out)}}
    env = {"EDT_OUT": str(out), "PYTHONPATH": str(AGENTS)}
    return {**common, "entrypoint": "hostile:entrypoint", "env": env, "idle": 1}


def require(srv: ServerThread, *protections: str) -> None:
    missing = srv.server.containment.missing()
    for want in protections:
        for line in missing:
            if line.startswith(want):
                pytest.skip(f"this host lacks {line}")


KEYS = {"": ("devkey", "secret"), "acme": ("acme-key", "acme-secret")}


def call(srv: ServerThread, tenant: str, fn: Callable[[Any], Any]) -> Any:
    key, secret = KEYS.get(tenant) or (f"{tenant}-key", f"{tenant}-secret")
    return _lk(srv, key, secret, fn)


def attack(
    srv: ServerThread, out: Path, kind: str, args: Any = None, room: str = "r", tenant: str = ""
) -> Any:
    """Dispatch one attack to the tenant's hostile agent; its record (what
    it found) and its job's state."""
    metadata = json.dumps({"kind": kind, "args": args})
    call(
        srv,
        tenant,
        lambda lk: lk.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(agent_name="hostile", room=room, metadata=metadata)
        ),
    )

    def state() -> Any:
        dispatches = call(srv, tenant, lambda lk: lk.agent_dispatch.list_dispatch(room))
        jobs = [j.state for d in dispatches for j in d.state.jobs]
        return jobs[0] if jobs else None

    def ended() -> bool:
        s = state()
        return s is not None and s.status in (agent.JS_SUCCESS, agent.JS_FAILED)

    wait_until(ended, timeout=30, what=f"the {kind} attack to end")
    found = records(out)
    return (found[-1] if found else None), state()


def processes_with(token: str) -> list[int]:
    """Host pids whose command line holds ``token`` (whatever namespace)."""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if token.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(int(pid))
            except OSError:
                pass
    return found


KINDS = ["command", "native"]

#: What holds a job's tree together: cells (and a PID namespace where the
#: host has bubblewrap), a PID namespace alone, or neither (runtime/reaper.py
#: and subreaper pool processes).
HOLDS = {
    "cells": {},
    "pidns": {"cgroups": False},
    "subreaper": {"cgroups": False, "bubblewrap": False},
}


def holding(srv: ServerThread, hold: str) -> None:
    if hold == "cells":
        require(srv, "cgroups")
    elif hold == "pidns":
        require(srv, "a filesystem view")


@pytest.mark.parametrize("kind", KINDS)
def test_tenant_code_cannot_read_the_config_the_data_or_another_tenants_files(
    start_server: Callable[..., ServerThread], tmp_path: Path, kind: str
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    # The server's own files, where the agent's bound directory holds them,
    # and where it does not.
    config = out / "edgedispatch.toml"
    config.write_text('[tenants.keys]\nglobex-key = "globex-secret"\n')
    data = out / "data"
    outside = tmp_path / "elsewhere.toml"
    outside.write_text("secret")
    tls_key = out / "sip.key"  # SIP's TLS private key
    tls_key.write_text("-----BEGIN PRIVATE KEY-----\nsecret\n")
    srv = start_server(
        agents=[hostile(kind, out, tenant="acme")],
        tenants=TENANTS,
        source=str(config),
        server={"data_dir": str(data)},
        sip={"tls_cert": str(out / "sip.crt"), "tls_key": str(tls_key)},
    )
    require(srv, "a filesystem view")
    (data / "agents.json").write_text('{"secret": 1}')
    theirs = srv.server.containment.sandbox.tenant_dir("globex")
    (theirs / "notes").write_text("globex's")
    paths = [str(config), str(data / "agents.json"), str(data / "edgedispatch.db")]
    paths += [str(outside), str(theirs / "notes"), str(tls_key)]
    rec, state = attack(srv, out, "read", paths + [str(data)], tenant="acme")
    assert state.status == agent.JS_SUCCESS, state.error
    assert all(not v.startswith("ok:") for v in rec["read"].values()), rec
    assert "secret" not in json.dumps(rec)
    assert not rec["read"][str(data) + "/"].startswith("listed:agents")


def test_tenant_code_cannot_signal_the_server_or_another_tenant(
    start_server: Callable[..., ServerThread], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    theirs = {**hostile("command", tmp_path, tenant="globex"), "name": "sleeper"}
    theirs["command"] = [sys.executable, "-c", "import time; time.sleep(60)"]
    srv = start_server(agents=[hostile("command", out, tenant="acme"), theirs], tenants=TENANTS)
    require(srv, "a filesystem view", "a uid per tenant")
    call(
        srv,
        "globex",
        lambda lk: lk.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(agent_name="sleeper", room="g")
        ),
    )
    wait_until(lambda: bool(_running_pids(srv, "globex")), what="globex's job")
    targets = [os.getpid(), 1, *_running_pids(srv, "globex")]
    rec, state = attack(srv, out, "signal", targets, room="a", tenant="acme")
    assert state.status == agent.JS_SUCCESS, state.error
    assert all(v != "ok" for pid, v in rec["signal"].items() if int(pid) != rec["my_pid"]), rec
    assert rec["uid"] == srv.server.containment.sandbox.uid("acme") != 0
    assert _running_pids(srv, "globex")  # still running


def _running_pids(srv: ServerThread, tenant: str) -> list[int]:
    agents = srv.server.agents
    pids = []
    for (t, _), active in list(agents._agents.items()):
        if t == tenant and active.command is not None:
            pids += [job.pid for job in active.command._jobs.values() if job.pid]
    return pids


@pytest.mark.parametrize("kind", KINDS)
def test_a_fork_bomb_stops_at_max_processes(
    start_server: Callable[..., ServerThread], tmp_path: Path, kind: str
) -> None:
    srv = start_server(agents=[hostile(kind, tmp_path, max_processes=40)])
    require(srv, "cgroups")
    rec, state = attack(srv, tmp_path, "fork")
    assert state.status == agent.JS_SUCCESS, state.error
    assert rec["error"] == "BlockingIOError" and 0 < rec["forked"] < 40, rec


@pytest.mark.parametrize("hold", HOLDS)
@pytest.mark.parametrize("kind", KINDS)
def test_a_child_over_the_memory_limit_fails_the_job(
    start_server: Callable[..., ServerThread], tmp_path: Path, kind: str, hold: str
) -> None:
    agents = [hostile(kind, tmp_path, memory_limit_mb=100)]
    srv = start_server(agents=agents, sandbox=HOLDS[hold])
    holding(srv, hold)
    _, state = attack(srv, tmp_path, "hog", 300)
    assert state.status == agent.JS_FAILED
    assert "memory limit exceeded" in state.error and "100 MB" in state.error, state.error


@pytest.mark.parametrize("hold", HOLDS)
@pytest.mark.parametrize("kind", KINDS)
def test_processes_that_escape_die_with_their_job(
    start_server: Callable[..., ServerThread], tmp_path: Path, kind: str, hold: str
) -> None:
    srv = start_server(agents=[hostile(kind, tmp_path)], sandbox=HOLDS[hold])
    holding(srv, hold)
    token = f"escapee-{uuid.uuid4().hex}"
    rec, state = attack(srv, tmp_path, "escape", token)
    assert rec["escaped"] and state.status == agent.JS_SUCCESS, state.error
    wait_until(lambda: not processes_with(token), timeout=5, what="the escaped process to die")


def test_tenant_code_gets_nothing_of_the_servers_environment(
    start_server: Callable[..., ServerThread], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDT_CANARY_TOKEN", "server-only")
    monkeypatch.setenv("EDGEDISPATCH_KEYS", "k: s")
    srv = start_server(agents=[hostile("command", tmp_path)])
    rec, state = attack(srv, tmp_path, "env")
    assert state.status == agent.JS_SUCCESS, state.error
    assert "EDT_CANARY_TOKEN" not in rec["env"] and "EDGEDISPATCH_KEYS" not in rec["env"]
    assert {"PATH", "HOME", "LIVEKIT_TOKEN", "EDT_OUT"} <= set(rec["env"])


@pytest.mark.parametrize("hold", HOLDS)
@pytest.mark.parametrize("kind", KINDS)
def test_nothing_outlives_a_kill_9_of_the_server(
    tmp_path: Path, loop_kind: str, kind: str, hold: str
) -> None:
    if hold == "pidns" and Host.probe().bwrap is None:
        pytest.skip("this host lacks bubblewrap")
    token = f"survivor-{uuid.uuid4().hex}"
    (tmp_path / "out").mkdir()
    out = writable(tmp_path / "out")
    cfg = tmp_path / "edgedispatch.toml"
    sandbox = "".join(f"{k} = false\n" for k in HOLDS[hold])
    if kind == "command":
        how = f'command = ["{sys.executable}", "{AGENTS / "hostile.py"}"]\n'
        how += f'env = {{ EDT_OUT = "{out}" }}\n'
    else:
        how = 'entrypoint = "hostile:entrypoint"\n'
        how += f'env = {{ EDT_OUT = "{out}", PYTHONPATH = "{AGENTS}" }}\n'
    cfg.write_text(
        f'[server]\ndata_dir = "{tmp_path / "data"}"\n'
        f"[sandbox]\n{sandbox}"
        "[[agents]]\n"
        'name = "hostile"\n'
        f"{how}"
        f'binds = ["{out}:rw"]\n'
    )
    server = subprocess.Popen(
        serve_argv(loop_kind, "--config", str(cfg)), stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        url = server.stdout.readline().split()[-1]
        metadata = json.dumps({"kind": "escape", "args": token})
        env = {**os.environ, "LIVEKIT_URL": url}
        subprocess.run(
            [sys.executable, "-m", "edgedispatch", "dispatch", "create", "--dev", "--url", url]
            + ["--room", "r", "--agent-name", "hostile", "--metadata", metadata],
            env=env,
            check=True,
            capture_output=True,
        )
        wait_until(lambda: bool(processes_with(token)), what="the escaped process")
    finally:
        server.send_signal(signal.SIGKILL)
        server.communicate()
    # In its PID namespace it dies with the server's sandbox at once, and under
    # a subreaper that sees the server die; in a cell alone (no bubblewrap
    # here), the next run of the server kills it.
    if hold == "cells" and Host.probe().bwrap is None:
        again = subprocess.Popen(
            serve_argv(loop_kind, "--config", str(cfg)), stdout=subprocess.PIPE, text=True
        )
        try:
            assert again.stdout is not None
            again.stdout.readline()
            wait_until(lambda: not processes_with(token), timeout=5, what="the leftover to die")
        finally:
            again.send_signal(signal.SIGKILL)
            again.communicate()
    wait_until(lambda: not processes_with(token), timeout=3, what="the escaped process to die")
