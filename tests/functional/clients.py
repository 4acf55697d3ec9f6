"""Real LiveKit clients as subprocesses: livekit-agents (Python) and
@livekit/agents (Node) workers, and the Node server SDK."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from edgedispatch.cli.bench.common import free_port

from .conftest import ServerThread

ROOT = Path(__file__).resolve().parents[2]
NODE_DIR = ROOT / "tests" / "node"
PY_AGENT = ROOT / "tests" / "agents" / "py_agent.py"


class WorkerProcess:
    """An agent worker process (and its job processes, in its own group)."""

    def __init__(
        self,
        srv: ServerThread,
        argv: list[str],
        cwd: Path,
        out: Path,
        agent_name: str,
        log: Path,
        **env: str,
    ) -> None:
        self.srv, self.out, self.agent_name = srv, out, agent_name
        self.log_path = log
        environ = {
            **os.environ,
            "LIVEKIT_URL": srv.ws_url,
            "LIVEKIT_API_KEY": "devkey",
            "LIVEKIT_API_SECRET": "secret",
            "EDT_OUT": str(out),
            "EDT_AGENT": agent_name,
            "PORT": "0",  # its health server: any free port
            **env,
        }
        self._log = open(log, "wb")
        self.proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=environ,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def worker_ids(self) -> list[str]:
        return self.srv.call(
            lambda: [
                w.worker_id
                for w in self.srv.domain.core.workers()
                if w.key.agent_name == self.agent_name
            ]
        )

    def wait_registered(self, count: int = 1, timeout: float = 60) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ids = self.worker_ids()
            if len(ids) >= count:
                return ids
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"worker did not register; its log:\n{self.tail()}")

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(p.read_text()) for p in sorted(self.out.glob("AJ_*.json"))]

    def wait_for_file(self, name: str, timeout: float = 30) -> Path:
        path = self.out / name
        deadline = time.monotonic() + timeout
        while not path.exists():
            if time.monotonic() > deadline:
                raise AssertionError(f"{name} never appeared; worker log:\n{self.tail()}")
            time.sleep(0.05)
        return path

    def tail(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-3000:]

    def kill(self) -> None:
        """SIGKILL the worker and every process it started."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.kill()
        self._log.close()


def py_worker(
    srv: ServerThread, tmp: Path, agent_name: str = "test-agent", **env: str
) -> WorkerProcess:
    out = tmp / f"py-{agent_name or 'unnamed'}-{len(list(tmp.glob('py-*')))}"
    out.mkdir()
    return WorkerProcess(
        srv,
        [sys.executable, str(PY_AGENT), "start"],
        PY_AGENT.parent,
        out,
        agent_name,
        out.with_suffix(".log"),
        **env,
    )


def node_worker(
    srv: ServerThread, tmp: Path, agent_name: str = "node-agent", **env: str
) -> WorkerProcess:
    out = tmp / f"node-{agent_name}-{len(list(tmp.glob('node-*')))}"
    out.mkdir()
    return WorkerProcess(
        srv,
        ["node", "agent.mjs", "start"],
        NODE_DIR,
        out,
        agent_name,
        out.with_suffix(".log"),
        EDT_PORT=str(free_port()),
        **env,
    )


def node_server_sdk(srv: ServerThread) -> dict[str, Any]:
    env = {
        **os.environ,
        "LIVEKIT_URL": srv.url,
        "LIVEKIT_API_KEY": "devkey",
        "LIVEKIT_API_SECRET": "secret",
    }
    result = subprocess.run(
        ["node", "server_sdk.mjs"],
        cwd=NODE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    out: dict[str, Any] = json.loads(result.stdout)
    return out


def stored_agents(data_dir: Path) -> dict[str, object]:
    """The agent definitions the server keeps in its store (SQLite)."""
    import sqlite3

    from edgedispatch.store.sqlite import FILENAME

    db = sqlite3.connect(data_dir / FILENAME)
    try:
        rows = db.execute("SELECT key, value FROM kv WHERE namespace = 'agents'").fetchall()
    finally:
        db.close()
    return {key: json.loads(value) for key, value in rows}
