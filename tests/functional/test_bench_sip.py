"""``edgedispatch bench sip`` runs sipp against the server and reports each
rate's completed and failed calls and the INVITE's answer time: answered
calls (INVITE -> 200, through a trunk and rule into rooms) by default,
refused ones (404) with ``--refused``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [
    pytest.mark.once,
    pytest.mark.skipif(not shutil.which("sipp"), reason="sipp (sip-tester) missing"),
]


def bench_sip(cwd: Path, *args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "edgedispatch", "bench", "sip", *args, "--json"],
        capture_output=True, text=True, timeout=120, cwd=cwd,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    report: dict[str, Any] = json.loads(out.stdout)
    return report


def test_bench_sip_answers_calls_through_a_trunk_and_rule_and_times_them(tmp_path: Path) -> None:
    report = bench_sip(tmp_path, "--rate", "50", "--seconds", "1")
    assert (report["path"], report["rule"], report["hold_ms"]) == ("answered", "individual", 0)
    (row,) = report["rows"]
    assert row["rate"] == 50 and row["calls"] == row["successful"] == 50 and row["failed"] == 0
    assert 0 <= row["invite_ms"]["p50"] <= row["invite_ms"]["p99"] < 1000  # INVITE -> 200
    assert report["max_rate_with_0_failed"] == 50
    assert report["max_rate_with_0_failed_and_p99_within_target"] in (0, 50)
    assert report["met"] == {"cps_with_0_failed": False, "invite_p99_ms_at_100_cps": None}


def test_bench_sip_refused_reports_calls_and_latency(tmp_path: Path) -> None:
    report = bench_sip(
        tmp_path, "--refused", "--rate", "50", "200", "--seconds", "1", "--plot", "sip.png"
    )
    assert report["path"] == "refused"
    assert (tmp_path / "sip.png").read_bytes()[:4] == b"\x89PNG"  # each rate's latencies
    assert [r["rate"] for r in report["rows"]] == [50, 200]
    for row in report["rows"]:
        assert row["successful"] == row["calls"] and row["failed"] == 0
        assert 0 <= row["invite_ms"]["p50"] <= row["invite_ms"]["p99"] < 1000
        assert "latency_samples_ms" not in row  # plotted, not printed
    assert report["max_rate_with_0_failed"] == 200


def test_the_report_gives_each_figure_next_to_its_target() -> None:
    from edgedispatch.cli.bench import sip

    row = {"rate": 100, "calls": 500, "successful": 500, "failed": 0, "achieved_cps": 99.8,
           "invite_ms": {"p50": 0.0, "p99": 3.0}}  # fmt: skip
    report = {"path": "answered", "rule": "individual", "hold_ms": 0, "rows": [row],
              "max_rate_with_0_failed": 100, "targets": sip.TARGETS,
              "met": {"cps_with_0_failed": False, "invite_p99_ms_at_100_cps": True}}  # fmt: skip
    text = sip.render(report)
    assert "calls/s with 0 failed: 100/s (target >= 500: NOT met)" in text
    assert "INVITE -> 200 p99 at 100 calls/s: 3 ms (target <= 50 ms: met)" in text
    assert "| 100 | 500 | 500 | 0 | 99.8 | <4 ms | 3 ms |" in text
    refused = sip.render(report | {"path": "refused", "rule": None, "hold_ms": None})
    assert "INVITE -> 404 p99 at 100 calls/s: 3 ms (target <= 50 ms: met)" in refused


def test_bench_sip_media_bridges_calls_and_measures_them_at_the_caller(tmp_path: Path) -> None:
    """... with CreateDispatch load on the same server while they run."""
    report = bench_sip(
        tmp_path, "--media", "--calls", "3", "--seconds", "6", "--dispatch-rate", "200"
    )
    (row,) = report["rows"]
    assert row["calls"] == row["successful"] == row["answered_with_media"] == 3
    assert row["failed"] == 0
    assert 0 <= row["packet_loss"] <= row["frame_loss"] <= 1
    assert row["send_gap_p99_ms"] >= 15  # the server's 20 ms clock, seen by the phones
    # What the (lean) agents heard of the callers, counted as the phones count.
    assert row["agent_frame_loss"] is not None and 0 <= row["agent_frame_loss"] <= 1
    assert row["agents_kept_up"] > 0.5 and row["agents_clock_late_ms"]["max"] >= 0
    assert set(row["udp_drops"]) == {"phones", "server_rtp"}
    assert set(row["cpu_pct"]) == {
        "server",
        "media workers",
        "agents (load)",
        "phones (this process)",
        "sipp",
    }
    assert row["cpu_pct"]["media workers"] > 0
    beside = row["dispatch"]
    assert beside["rate"] == 200 and beside["errors"] == 0
    assert beside["sent"] > 200 and beside["completed"] == beside["sent"]
    assert 0 < beside["p50_ms"] <= beside["p99_ms"] < 1000
