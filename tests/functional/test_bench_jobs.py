"""``edgedispatch bench jobs`` runs end to end and reports what the issue
asks for: rows of runtime, burst, p50_ms and p99_ms, and pool memory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.once]  # a benchmark run, not about the loop


def test_bench_jobs_json(loop_kind: str, tmp_path: Path) -> None:
    # From elsewhere than the checkout, as a user runs it (an editable
    # install's package is then found only through its import hook).
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgedispatch",
            "bench",
            "jobs",
            "--burst",
            "2",
            "--no-livekit-agents",
            "--loop",
            loop_kind,
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
        cwd=tmp_path,
    )
    report = json.loads(out.stdout)
    rows = {(r["runtime"], r["burst"]): r for r in report["rows"]}
    native = rows["edgedispatch", 2]
    assert native["samples"] == 6  # every job of 3 rounds started
    assert 0 < native["p50_ms"] <= native["p99_ms"]
    # The request came first.  The two read different clocks (the request's
    # is this machine's monotonic one; the creation's is the server's wall
    # clock, mapped from its monotonic time at start-up, against the agent's
    # wall clock): allow a millisecond between them (1.52 ms against 1.34
    # failed once in CI, jobs starting ~1.3 ms after their request).
    assert native["p50_ms"] <= native["request_p50_ms"] + 1.0
    cold = rows["agent-server cold start", 1]
    assert cold["samples"] == 1 and cold["p50_ms"] > native["p99_ms"]
    assert report["pool_uss_kb"] and max(report["pool_uss_kb"]) < 30 * 1024
