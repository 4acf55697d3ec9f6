"""A full disk under a running server: new work is refused with
``unavailable`` naming the cause, reads go on, nothing accepted is lost, and
the server takes work again once there is room, without a restart.  A real
filesystem that fills (a small tmpfs), a real server process, raw Twirp."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgedispatch.cli.bench.tmpfs import SmallDisk

from .test_serve import ServeProcess, served  # noqa: F401 (a fixture)
from .test_store import call
from .test_store import listed as store_listed


def listed(url: str, room: str) -> list[str]:
    return [d["id"] for d in store_listed(url, room)]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    """A 2 MiB tmpfs (this needs root, as in CI's container)."""
    disk = SmallDisk(tmp_path / "data", size_mb=2)
    if not disk.mounted:
        pytest.skip("cannot mount a tmpfs to fill (needs root)")
    try:
        yield disk
    finally:
        disk.close()


def test_a_full_disk_refuses_new_work_keeps_what_was_taken_and_recovers(
    served: list[ServeProcess],  # noqa: F811
    loop_kind: str,
    small_disk: SmallDisk,
) -> None:
    srv = ServeProcess(loop_kind, "--data-dir", str(small_disk.path))
    served.append(srv)
    answered = {}  # room -> dispatch id, for every success the client saw
    for i in range(3):
        status, answer = call(srv.url, "CreateDispatch", f"before-{i}", agent_name="support")
        assert status == 200, answer
        answered[f"before-{i}"] = answer["id"]

    small_disk.fill()
    # Taken in memory, then its commit fails: the client is told
    # unavailable (its write stays queued, and lands later).
    status, answer = call(srv.url, "CreateDispatch", "during", "req-during", agent_name="support")
    assert status == 503 and answer["code"] == "unavailable", answer
    assert "full" in answer["msg"]
    # From now on new work is refused at once, naming the cause...
    status, answer = call(srv.url, "CreateDispatch", "refused", agent_name="support")
    assert status == 503 and "full" in answer["msg"], answer
    # ...reads go on, and the server is up.
    assert listed(srv.url, "before-0") == [answer_id := answered["before-0"]]
    assert listed(srv.url, "refused") == []  # refused before it changed anything
    assert answer_id

    small_disk.free()
    deadline = time.monotonic() + 10
    while True:  # the client retries, with the same request id
        status, answer = call(
            srv.url, "CreateDispatch", "during", "req-during", agent_name="support"
        )
        if status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert status == 200, answer
    assert listed(srv.url, "during") == [answer["id"]]  # the original: no second dispatch
    answered["during"] = answer["id"]
    status, answer = call(srv.url, "CreateDispatch", "after", agent_name="support")
    assert status == 200, answer
    answered["after"] = answer["id"]

    srv.proc.send_signal(signal.SIGKILL)
    _, err = srv.proc.communicate(timeout=20)
    assert "store commit of" in err and "failed (kept, retried)" in err
    assert "store commits again" in err

    again = ServeProcess(loop_kind, "--data-dir", str(small_disk.path))
    served.append(again)
    for room, dispatch_id in answered.items():
        assert listed(again.url, room) == [dispatch_id], room
    assert listed(again.url, "refused") == []
