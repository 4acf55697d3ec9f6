"""``edgedispatch bench rooms`` runs end to end with rtc SDK clients and
reports what the rooms issue asks for."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.media]


@pytest.mark.parametrize("loop_kind", ["uvloop"], indirect=True)
def test_bench_rooms_json(loop_kind: str, tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "edgedispatch", "bench", "rooms",
         "--joins", "3", "--rooms", "1", "--seconds", "2", "--dispatch-rate", "100", "--json",
         "--plot", str(tmp_path / "rooms.png")],
        capture_output=True, text=True, timeout=180, check=True, cwd=tmp_path,
    )  # fmt: skip
    report = json.loads(out.stdout)
    assert (tmp_path / "rooms.png").read_bytes()[:4] == b"\x89PNG"
    assert "latency_samples_ms" not in report  # plotted, not printed
    assert 0 < report["join_p50_ms"] <= report["join_p99_ms"] < 5000
    assert 0 < report["data_rtt_p50_ms"] <= report["data_rtt_p99_ms"] < 1000
    assert 0 < report["data_one_way_p50_ms"] <= report["data_rtt_p50_ms"]
    assert report["data_round_trips"] == 1000
    assert report["notice_p99_ms"] >= 0
    (step,) = report["audio"]
    assert step["rooms"] == 1 and step["frame_loss"] <= 0.01  # loopback, one room
    assert step["heard_streams"] == 2 and step["off_tone_frames"] == 0  # room 0's ears
    assert step["sides_without_rtp"] == [] and step["sides_without_track"] == 0
    assert 0 <= step["jitter_p50_ms"] <= step["jitter_p99_ms"] < 30
    assert step["load_cpu_pct"] > 0
    assert 0 < step["cpu_pct_per_stream"] < 100
    assert report["audio_rooms"] == 1
    beside = report["dispatch_beside_rooms"]
    assert beside["rooms"] == 1 and beside["sent"] == 1000
    assert beside["completed"] == beside["sent"]  # every dispatch ran beside the room
    assert 0 < beside["latency_ms"]["p50"] <= beside["latency_ms"]["p99"]
