"""Unmodified official clients against edgedispatch: livekit-agents (Python)
and @livekit/agents (Node) workers, livekit-api and livekit-server-sdk.

Once, on uvloop: what these check is the SDKs' side of each exchange (they
register, run, end and decline jobs as edgedispatch expects).  The server's
side of the same exchanges runs on both loops in test_worker_protocol and
test_twirp_api, with the same frames (registration and assignment, decline,
termination on DeleteDispatch and DeleteRoom, a worker's lost connection,
automatic dispatch, Twirp in protobuf and JSON); and they cost 40 s a loop,
15 s of it the SDKs' own grace before they end a running entrypoint."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from livekit import api
from livekit.protocol import agent

from .clients import NODE_DIR, WorkerProcess, node_server_sdk, node_worker, py_worker
from .conftest import ServerThread

pytestmark = [pytest.mark.slow, pytest.mark.once]
HAVE_NODE = shutil.which("node") is not None and (NODE_DIR / "node_modules").is_dir()
needs_node = pytest.mark.skipif(not HAVE_NODE, reason="node and tests/node/node_modules needed")


@pytest.fixture
def workers() -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for w in started:
        w.close()


def lk_call(srv: ServerThread, fn: Callable[[api.LiveKitAPI], Any]) -> Any:
    async def main() -> Any:
        async with api.LiveKitAPI(srv.url, "devkey", "secret") as lk:
            return await fn(lk)

    return asyncio.run(main())


def wait_until(predicate: Callable[[], bool], timeout: float = 20, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def job_states(srv: ServerThread, room: str) -> list[Any]:
    dispatches = lk_call(srv, lambda lk: lk.agent_dispatch.list_dispatch(room))
    return [j.state for d in dispatches for j in d.state.jobs]


def test_livekit_agents_full_flow(
    start_server: Callable[..., ServerThread], tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    srv = start_server()
    metadata = json.dumps({"customer": "c-42", "lang": "fr"})
    # The dispatch comes first: it waits for the worker (LiveKit would drop it).
    created = lk_call(
        srv,
        lambda lk: lk.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(
                agent_name="test-agent",
                room="support-1",
                metadata=metadata,
                attributes={"tier": "gold"},
            )
        ),
    )
    (pending,) = job_states(srv, "support-1")
    assert pending.status == agent.JS_PENDING

    w = py_worker(srv, tmp_path)
    workers.append(w)
    (worker_id,) = w.wait_registered()
    wait_until(lambda: bool(w.records()), what="the entrypoint to run")
    (rec,) = w.records()
    assert rec["dispatch_id"] == created.id and rec["job_id"].startswith("AJ_")
    assert rec["room"] == rec["ctx_room"] == "support-1" and rec["room_sid"].startswith("RM_")
    assert json.loads(rec["metadata"]) == {"customer": "c-42", "lang": "fr"}
    assert rec["attributes"] == {"tier": "gold"} and rec["agent_name"] == "test-agent"
    assert rec["identity"] == f"agent-{rec['job_id']}" and rec["kind"] == "agent"
    assert rec["token_room"] == "support-1"
    assert rec["token_attributes"]["lk.agent_name"] == "test-agent"
    assert rec["token_attributes"]["seen.by"] == "py-agent"  # what the worker accepted with
    assert rec["url"] == srv.ws_url
    assert rec["pid"] != w.proc.pid  # the job ran in its own process

    # ListDispatch shows the job, which ctx.shutdown() ended.
    wait_until(
        lambda: job_states(srv, "support-1")[0].status == agent.JS_SUCCESS, what="JS_SUCCESS"
    )
    (state,) = job_states(srv, "support-1")
    assert state.worker_id == worker_id and state.started_at > 0 and state.ended_at > 0


def test_delete_dispatch_terminates_running_jobs_on_python_and_node_workers(
    start_server: Callable[..., ServerThread], tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    srv = start_server()
    sdks = [py_worker(srv, tmp_path, "py-sleeper", EDT_MODE="sleep")]
    if HAVE_NODE:
        sdks.append(node_worker(srv, tmp_path, "node-sleeper", EDT_MODE="sleep"))
    workers.extend(sdks)
    dispatch_ids = {}
    for w in sdks:
        w.wait_registered()
        d = lk_call(
            srv,
            lambda lk, name=w.agent_name: lk.agent_dispatch.create_dispatch(
                api.CreateAgentDispatchRequest(
                    agent_name=name, room=f"room-{name}", metadata="node-meta"
                )
            ),
        )
        dispatch_ids[w.agent_name] = d.id
    for w in sdks:
        wait_until(lambda w=w: bool(w.records()), what=f"{w.agent_name} to start its job")
        (rec,) = w.records()
        assert rec["metadata"] == "node-meta" and rec["dispatch_id"] == dispatch_ids[w.agent_name]
        assert rec["room"] == f"room-{w.agent_name}"
    for w in sdks:
        lk_call(
            srv,
            lambda lk, w=w: lk.agent_dispatch.delete_dispatch(
                dispatch_ids[w.agent_name], f"room-{w.agent_name}"
            ),
        )
    # Both SDKs give a running entrypoint 15 s before they end it.
    for w in sdks:
        (rec,) = w.records()
        w.wait_for_file(f"{rec['job_id']}.terminated", timeout=40)


def test_automatic_dispatch_on_create_room(
    start_server: Callable[..., ServerThread], tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    srv = start_server()
    w = py_worker(srv, tmp_path, agent_name="")
    workers.append(w)
    w.wait_registered()
    lk_call(srv, lambda lk: lk.room.create_room(api.CreateRoomRequest(name="lobby")))
    wait_until(lambda: bool(w.records()), what="the automatic job")
    (rec,) = w.records()
    assert rec["room"] == "lobby" and rec["agent_name"] == ""


def test_a_killed_worker_s_job_is_redispatched(
    start_server: Callable[..., ServerThread], tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    srv = start_server(dispatch={"reclaim_grace": 1.0})
    first = py_worker(srv, tmp_path, EDT_MODE="sleep")
    workers.append(first)
    first.wait_registered()
    lk_call(
        srv,
        lambda lk: lk.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(agent_name="test-agent", room="r")
        ),
    )
    wait_until(lambda: bool(first.records()), what="the job to start on the first worker")
    (job_id,) = [r["job_id"] for r in first.records()]
    second = py_worker(srv, tmp_path)
    workers.append(second)
    second.wait_registered(count=2)
    first.kill()
    wait_until(lambda: bool(second.records()), timeout=30, what="the job on the second worker")
    (rec,) = second.records()
    assert rec["job_id"] == job_id  # the same job, run again elsewhere
    done = (agent.JS_SUCCESS, agent.JS_FAILED)
    wait_until(lambda: job_states(srv, "r")[0].status in done, what="the job to end")
    status = job_states(srv, "r")[0].status
    assert status == agent.JS_SUCCESS, f"the second worker reported failure:\n{second.tail()}"
    (state,) = job_states(srv, "r")
    assert state.worker_id == second.worker_ids()[0]


def test_a_rejecting_worker_passes_the_job_on(
    start_server: Callable[..., ServerThread], tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    srv = start_server()
    no = py_worker(srv, tmp_path, EDT_MODE="reject", EDT_LOAD="0.0")
    yes = py_worker(srv, tmp_path, EDT_LOAD="0.4")
    workers.extend([no, yes])
    yes.wait_registered(count=2)

    def loads_reported() -> bool:
        views = srv.call(lambda: srv.domain.core.workers())
        return sorted(round(v.load, 1) for v in views) == [0.0, 0.4]

    wait_until(loads_reported, what="both workers to report their load")
    lk_call(
        srv,
        lambda lk: lk.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(agent_name="test-agent", room="r")
        ),
    )
    wait_until(lambda: bool(yes.records()), what="the job on the accepting worker")
    assert no.records() == []
    (job_id,) = [r["job_id"] for r in yes.records()]
    view = srv.call(lambda: srv.domain.core.job(job_id, 0.0))
    assert view.attempts == 2  # offered to the rejecting worker first


@needs_node
def test_node_worker_runs_a_dispatched_job(
    start_server: Callable[..., ServerThread], tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    srv = start_server()
    w = node_worker(srv, tmp_path)
    workers.append(w)
    w.wait_registered()
    d = lk_call(
        srv,
        lambda lk: lk.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(
                agent_name="node-agent",
                room="node-room",
                metadata='{"from": "python"}',
                attributes={"a": "1"},
            )
        ),
    )
    wait_until(lambda: bool(w.records()), what="the Node entrypoint")
    (rec,) = w.records()
    assert rec["dispatch_id"] == d.id and rec["room"] == "node-room"
    assert rec["metadata"] == '{"from": "python"}' and rec["attributes"] == {"a": "1"}
    # Node never reports job status: the job counts as running once assigned.
    (state,) = job_states(srv, "node-room")
    assert state.status == agent.JS_RUNNING


@needs_node
def test_node_server_sdk(start_server: Callable[..., ServerThread]) -> None:
    srv = start_server()
    out = node_server_sdk(srv)
    assert out["room"]["name"] == "node-room" and out["room"]["sid"].startswith("RM_")
    assert out["room"]["emptyTimeout"] == 120
    created = out["created"]
    assert created["id"].startswith("AD_") and created["agentName"] == "node-agent"
    assert created["metadata"] == '{"from":"node"}'
    assert out["listed"][0]["id"] == created["id"] and out["listed"][0]["jobs"][0].startswith("AJ_")
    assert out["got"] == created["id"] and out["rooms"] == ["node-room"]
    assert out["listedAfterDelete"] == 0 and out["roomsAfterDelete"] == 0
    assert out["deleteAgain"]["code"] == "not_found" and out["deleteAgain"]["status"] == 404
    assert out["wrongSecret"]["code"] == "unauthenticated"
