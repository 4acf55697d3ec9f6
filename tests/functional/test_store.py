"""State survives the server: ``serve --data-dir``, killed with SIGKILL or
stopped, then started again on the same directory.  Real processes, real
protocol workers, and the CLI's ``store backup`` / ``store check``."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from livekit.protocol import agent

from edgedispatch._testbase.fake_worker import FakeWorker
from edgedispatch.cli.bench.common import admin_token
from edgedispatch.store.sqlite import FILENAME, SCHEMA_VERSION

from .conftest import serve_once
from .test_serve import ServeProcess, served  # noqa: F401 (a fixture)

SERVICE = "/twirp/livekit.AgentDispatchService/"


def call(
    url: str, method: str, room: str, request_id: str = "", **fields: str
) -> tuple[int, dict[str, Any]]:
    """An AgentDispatchService call on ``room`` (JSON), with the dev key's
    token: (HTTP status, JSON answer)."""
    headers = {"Authorization": f"Bearer {admin_token(room)}", "Content-Type": "application/json"}
    if request_id:
        headers["X-Livekit-Request-Id"] = request_id
    body = json.dumps({"room": room, **fields}).encode()
    req = urllib.request.Request(url + SERVICE + method, body, headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def create_dispatch(url: str, room: str, agent: str, request_id: str = "") -> str:
    status, answer = call(url, "CreateDispatch", room, request_id, agent_name=agent, metadata=room)
    assert status == 200, answer
    return str(answer["id"])


def listed(url: str, room: str) -> list[dict[str, Any]]:
    """The room's dispatches, as ListDispatch shows them."""
    status, answer = call(url, "ListDispatch", room)
    assert status == 200, answer
    dispatches: list[dict[str, Any]] = answer.get("agentDispatches", [])
    return dispatches


def list_jobs(url: str, room: str) -> list[dict[str, Any]]:
    """The jobs of the room's dispatches, as ListDispatch shows them."""
    return [job for d in listed(url, room) for job in d["state"]["jobs"]]


def test_queued_dispatches_survive_sigkill_and_run_in_order(
    served: list[ServeProcess],  # noqa: F811
    loop_kind: str,
    tmp_path: Path,
) -> None:
    first = ServeProcess(loop_kind, "--data-dir", str(tmp_path))
    served.append(first)
    # No worker yet: the dispatches queue.  Each answer came after its commit.
    made = [create_dispatch(first.url, f"room-{i}", "support") for i in range(5)]
    retried = create_dispatch(first.url, "room-r", "support", request_id="req-42")
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait()

    second = ServeProcess(loop_kind, "--data-dir", str(tmp_path))
    served.append(second)
    # The client retries after the crash: it gets the original dispatch.
    assert create_dispatch(second.url, "room-r", "support", request_id="req-42") == retried

    async def main() -> list[str]:
        rooms: list[str] = []
        worker = FakeWorker(second.url, agent_name="support", report=True)
        worker.on_assignment = lambda a: rooms.append(a.job.room.name)
        await worker.connect()
        await worker.wait_for(lambda: len(rooms) == 6, timeout=20)
        await FakeWorker.close_all()
        return rooms

    rooms = asyncio.run(main())
    assert rooms == [f"room-{i}" for i in range(5)] + ["room-r"]  # in their order
    err = second.stop()
    assert "recovered 6 rooms, 6 dispatches, 6 pending jobs" in err
    assert len(made) == 5


def test_the_store_can_be_backed_up_and_checked_while_serving(
    served: list[ServeProcess],  # noqa: F811
    loop_kind: str,
    tmp_path: Path,
) -> None:
    srv = ServeProcess(loop_kind, "--data-dir", str(tmp_path / "data"))
    served.append(srv)
    create_dispatch(srv.url, "r1", "support")
    cli = [sys.executable, "-m", "edgedispatch", "store"]
    backup = tmp_path / "copy.db"
    out = subprocess.run(
        [*cli, "backup", str(backup), "--data-dir", str(tmp_path / "data")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    db = sqlite3.connect(backup)
    assert db.execute("SELECT COUNT(*) FROM dispatches").fetchone()[0] == 1
    db.close()
    out = subprocess.run(
        [*cli, "check", "--data-dir", str(tmp_path / "data")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0 and out.stdout.strip().endswith(": ok"), out


def test_a_store_from_a_newer_version_stops_the_server(loop_kind: str, tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / FILENAME)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 5}")
    db.close()
    out = serve_once(loop_kind, "--data-dir", str(tmp_path))
    assert out.returncode == 2
    assert "cannot open the store" in out.stderr and "newer edgedispatch" in out.stderr


def test_a_drain_with_a_store_leaves_remote_jobs_running_for_their_workers(
    served: list[ServeProcess],  # noqa: F811
    loop_kind: str,
    tmp_path: Path,
) -> None:
    """An upgrade's restart does not wait for the longest call: the worker's
    job goes on, and the worker claims it back from the new server."""
    first = ServeProcess(loop_kind, "--data-dir", str(tmp_path))
    served.append(first)

    async def take_a_job() -> str:
        worker = FakeWorker(first.url, agent_name="support", report=True)
        await worker.connect()
        create_dispatch(first.url, "room-1", "support")
        await worker.wait_for(lambda: len(worker.assigned) == 1)
        first.proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        while first.proc.poll() is None and time.monotonic() - t0 < 5:
            await asyncio.sleep(0.05)
        assert first.proc.poll() == 0  # it did not wait for the running job
        worker.abort()
        (job_id,) = worker.assigned
        return job_id

    job_id = asyncio.run(take_a_job())
    second = ServeProcess(loop_kind, "--data-dir", str(tmp_path))
    served.append(second)

    async def claim_it_back() -> None:
        worker = FakeWorker(second.url, agent_name="support", report=True)
        other = FakeWorker(second.url, agent_name="support", report=True)
        await worker.connect()
        await other.connect()
        claim = agent.WorkerMessage()
        claim.migrate_job.job_ids.append(job_id)
        await worker.send(claim)
        await worker.job_status(job_id, agent.JS_SUCCESS)
        await asyncio.sleep(0.3)
        (job,) = list_jobs(second.url, "room-1")
        assert job["id"] == job_id and job["state"]["workerId"] == worker.worker_id
        assert job["state"]["status"] == "JS_SUCCESS"
        # Ended by its worker: the job is not run again anywhere.
        assert not other.assigned and not worker.assigned
        await FakeWorker.close_all()

    asyncio.run(claim_it_back())
    err = second.stop()
    assert "recovered 1 rooms, 1 dispatches, 1 pending jobs" in err, err[-2000:]
