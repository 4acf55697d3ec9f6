"""A full disk under a running server: new work is refused with
``unavailable`` naming the cause, reads go on, nothing accepted is lost, and
the server takes work again once there is room, without a restart.  A real
filesystem that fills (a small tmpfs), a real server process, raw Twirp."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgedispatch.cli.bench.common import admin_token

from .test_serve import ServeProcess, served  # noqa: F401 (a fixture)

SERVICE = "/twirp/livekit.AgentDispatchService/"


def call(url: str, method: str, room: str, request_id: str = "") -> tuple[int, dict[str, Any]]:
    """A dispatch call on ``room``: (HTTP status, JSON answer)."""
    headers = {"Authorization": f"Bearer {admin_token(room)}", "Content-Type": "application/json"}
    if request_id:
        headers["X-Livekit-Request-Id"] = request_id
    body: dict[str, str] = {"room": room}
    if method == "CreateDispatch":
        body["agent_name"] = "support"
    req = urllib.request.Request(url + SERVICE + method, json.dumps(body).encode(), headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def listed(url: str, room: str) -> list[str]:
    status, answer = call(url, "ListDispatch", room)
    assert status == 200, answer
    return [d["id"] for d in answer.get("agentDispatches", answer.get("agent_dispatches", []))]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs (this needs root, as in CI's container)."""
    mount = tmp_path / "data"
    mount.mkdir()
    out = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
        capture_output=True, text=True,
    )  # fmt: skip
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill (needs root): {out.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(path: Path) -> None:
    """Write ``path`` until the filesystem has no room left."""
    with open(path, "wb", buffering=0) as f:
        block = b"\0" * 65536
        try:
            while True:
                f.write(block)
        except OSError:
            pass
        try:
            while True:
                f.write(b"\0" * 512)
        except OSError:
            pass


def test_a_full_disk_refuses_new_work_keeps_what_was_taken_and_recovers(
    served: list[ServeProcess],  # noqa: F811
    loop_kind: str,
    small_disk: Path,
) -> None:
    srv = ServeProcess(loop_kind, "--data-dir", str(small_disk))
    served.append(srv)
    answered = {}  # room -> dispatch id, for every success the client saw
    for i in range(3):
        status, answer = call(srv.url, "CreateDispatch", f"before-{i}")
        assert status == 200, answer
        answered[f"before-{i}"] = answer["id"]

    filler = small_disk / "filler"
    fill(filler)
    # Taken in memory, then its commit fails: the client is told
    # unavailable (its write stays queued, and lands later).
    status, answer = call(srv.url, "CreateDispatch", "during", request_id="req-during")
    assert status == 503 and answer["code"] == "unavailable", answer
    assert "full" in answer["msg"]
    # From now on new work is refused at once, naming the cause...
    status, answer = call(srv.url, "CreateDispatch", "refused")
    assert status == 503 and "full" in answer["msg"], answer
    # ...reads go on, and the server is up.
    assert listed(srv.url, "before-0") == [answer_id := answered["before-0"]]
    assert listed(srv.url, "refused") == []  # refused before it changed anything
    assert answer_id

    filler.unlink()
    deadline = time.monotonic() + 10
    while True:  # the client retries, with the same request id
        status, answer = call(srv.url, "CreateDispatch", "during", request_id="req-during")
        if status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert status == 200, answer
    assert listed(srv.url, "during") == [answer["id"]]  # the original: no second dispatch
    answered["during"] = answer["id"]
    status, answer = call(srv.url, "CreateDispatch", "after")
    assert status == 200, answer
    answered["after"] = answer["id"]

    srv.proc.send_signal(signal.SIGKILL)
    _, err = srv.proc.communicate(timeout=20)
    assert "store commit of" in err and "failed (kept, retried)" in err
    assert "store commits again" in err

    again = ServeProcess(loop_kind, "--data-dir", str(small_disk))
    served.append(again)
    for room, dispatch_id in answered.items():
        assert listed(again.url, room) == [dispatch_id], room
    assert listed(again.url, "refused") == []
