"""The ``edgedispatch`` command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from edgedispatch import __version__, _core
from edgedispatch.cli import main


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgedispatch", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_version() -> None:
    out = run_cli("--version")
    assert out.returncode == 0
    assert out.stdout.strip() == f"edgedispatch {__version__}"


def test_unknown_command_is_a_usage_error() -> None:
    out = run_cli("frobnicate")
    assert out.returncode == 2 and "invalid choice" in out.stderr


def test_bench_core_json_reports_every_row(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            [
                "bench",
                "core",
                "--workers",
                "4",
                "64",
                "--jobs",
                "3000",
                "--python-jobs",
                "500",
                "--json",
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    impls = ["compiled", "python"] if _core.BUILT else ["python"]
    rows = {(r["impl"], r["workers"]) for r in report["results"]}
    assert rows == {(i, n) for i in impls for n in (4, 64)}
    for r in report["results"]:
        assert set(r) >= {"impl", "workers", "decisions_per_s", "p50_ns", "p99_ns"}
        assert r["decisions_per_s"] > 0 and 0 < r["p50_ns"] <= r["p99_ns"]
    for m in report["memory"]:
        assert 0 < m["bytes_per_worker"] < 1000 and 0 < m["bytes_per_pending_job"] < 1000


def test_bench_core_rejects_bad_numbers() -> None:
    out = run_cli("bench", "core", "--workers", "0")
    assert out.returncode == 2 and "--workers" in out.stderr


def test_no_extensions_switch_selects_the_python_core() -> None:
    code = "import edgedispatch._core as c; print(c.COMPILED, c.Scheduler.__module__)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "EDGEDISPATCH_NO_EXTENSIONS": "1"},
    )
    assert out.stdout.split() == ["False", "edgedispatch._core.scheduler_py"]
    if _core.BUILT:
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            env={**os.environ, "EDGEDISPATCH_NO_EXTENSIONS": ""},
        )
        assert out.stdout.split() == ["True", "edgedispatch._core.scheduler_c"]
