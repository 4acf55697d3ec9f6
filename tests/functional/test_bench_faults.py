"""``edgedispatch bench faults``, the short profile: a dispatch load with
every kind of fault, and nothing the server accepted is lost or run twice
at once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.once]


def test_no_dispatch_is_lost_or_run_twice_under_faults(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "edgedispatch", "bench", "faults", "--duration", "12",
         "--rate", "20", "--workers", "3", "--json"],
        capture_output=True, text=True, timeout=240, cwd=tmp_path,
    )  # fmt: skip
    assert out.stdout, out.stderr[-2000:]
    report = json.loads(out.stdout)
    # Every kind of fault was injected (a full disk only where a tmpfs
    # could be mounted for the store).
    kinds = {"worker_kill", "ws_cut", "slow_worker", "server_kill", "server_drain", "burst"}
    if report["disk_full_tested"]:
        kinds.add("disk_full")
    assert set(report["faults"]) == kinds, report["faults"]
    assert report["accepted"] >= 150, report
    assert report["lost"] == 0, report["lost_ids"]
    assert report["run_twice_at_once"] == 0, report["twice"]
    assert report["gave_up"] == 0
    # One recovery per restart injected (a second round of faults may start
    # within the run, so there may be more than one of each).
    restarts = report["faults"]["server_kill"] + report["faults"]["server_drain"]
    assert report["recovery_s"]["count"] == restarts >= 2
    assert report["recovery_s"]["max"] < 5.0  # the target is 2 s; CI machines are slower
    assert out.returncode == 0
