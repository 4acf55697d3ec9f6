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
import urllib.request
from pathlib import Path

from edgedispatch._testbase.fake_worker import FakeWorker
from edgedispatch.cli.bench.common import admin_token
from edgedispatch.store.sqlite import FILENAME, SCHEMA_VERSION

from .conftest import serve_once
from .test_serve import ServeProcess, served  # noqa: F401 (a fixture)

PATH = "/twirp/livekit.AgentDispatchService/CreateDispatch"


def create_dispatch(url: str, room: str, agent: str, request_id: str = "") -> str:
    headers = {
        "Authorization": f"Bearer {admin_token(room)}",
        "Content-Type": "application/json",
    }
    if request_id:
        headers["X-Livekit-Request-Id"] = request_id
    body = json.dumps({"room": room, "agent_name": agent, "metadata": room}).encode()
    req = urllib.request.Request(url + PATH, body, headers, method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return str(json.loads(resp.read())["id"])


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
