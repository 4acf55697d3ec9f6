"""``edgedispatch bench sip`` runs sipp against the server and reports each
rate's completed and failed calls and the INVITE's answer time."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.once,
    pytest.mark.skipif(not shutil.which("sipp"), reason="sipp (sip-tester) missing"),
]


def test_bench_sip_reports_calls_and_latency(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "edgedispatch", "bench", "sip", "--rate", "50", "200",
         "--seconds", "1", "--json"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    assert [r["rate"] for r in report["rows"]] == [50, 200]
    for row in report["rows"]:
        assert row["successful"] == row["calls"] and row["failed"] == 0
        assert 0 <= row["invite_ms"]["p50"] <= row["invite_ms"]["p99"] < 1000
    assert report["max_rate_with_0_failed"] == 200
    assert report["met"] == {"cps_with_0_failed": False, "invite_p99_ms_at_100_cps": None}


def test_the_report_gives_each_figure_next_to_its_target() -> None:
    from edgedispatch.cli.bench import sip

    row = {"rate": 100, "calls": 500, "successful": 500, "failed": 0, "achieved_cps": 99.8,
           "invite_ms": {"p50": 0.0, "p99": 3.0}}  # fmt: skip
    text = sip.render(
        {"rows": [row], "max_rate_with_0_failed": 100, "targets": sip.TARGETS,
         "met": {"cps_with_0_failed": False, "invite_p99_ms_at_100_cps": True}}
    )  # fmt: skip
    assert "calls/s with 0 failed: 100/s (target >= 500: NOT met)" in text
    assert "INVITE -> final p99 at 100 calls/s: 3 ms (target <= 50 ms: met)" in text


def test_bench_sip_media_bridges_calls_and_measures_them_at_the_caller(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "edgedispatch", "bench", "sip", "--media", "--calls", "3",
         "--seconds", "6", "--json"],
        capture_output=True, text=True, timeout=180, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    (row,) = json.loads(out.stdout)["rows"]
    assert row["calls"] == row["successful"] == row["answered_with_media"] == 3
    assert row["failed"] == 0
    assert 0 <= row["packet_loss"] <= row["frame_loss"] <= 1
    assert row["send_gap_p99_ms"] >= 15  # the server's 20 ms clock, seen by the phones
