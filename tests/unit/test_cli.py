"""The ``edgedispatch`` command line."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from edgedispatch import __version__, _core
from edgedispatch.cli import build_parser, client, main


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
        assert "latency_samples_ms" not in r  # for --plot, not printed
    for m in report["memory"]:
        assert 0 < m["bytes_per_worker"] < 1000 and 0 < m["bytes_per_pending_job"] < 1000


def test_bench_core_plots_each_rows_decision_times(tmp_path: Any) -> None:
    pytest.importorskip("matplotlib")
    png = tmp_path / "core.png"
    argv = ["bench", "core", "--workers", "4", "--jobs", "2000", "--python-jobs", "200"]
    assert main([*argv, "--impl", "python", "--plot", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_bench_core_rejects_bad_numbers() -> None:
    out = run_cli("bench", "core", "--workers", "0")
    assert out.returncode == 2 and "--workers" in out.stderr


def test_bench_dispatch_paired_compares_medians_of_alternating_runs() -> None:
    from edgedispatch.cli.bench import dispatch

    order: list[str] = []

    def report(kind: str, rate: float, p99: float) -> dict[str, Any]:
        order.append(kind)
        cpu = 1e6 / rate  # a saturated core
        return {
            "dispatches_per_s": rate, "server_cpu_us_per_dispatch": cpu,
            "latency_ms": {"p99": p99}, "errors": 0,
        }  # fmt: skip

    plain = iter([3000.0, 3600.0, 3300.0])
    stored = iter([2400.0, 3000.0, 2900.0])
    result = dispatch.paired(
        3,
        "store",
        run_variant=lambda: report("store", next(stored), 8.0),
        run_plain=lambda: report("plain", next(plain), 5.0),
    )
    # Alternating, so that a slow spell of the machine hits both sides.
    assert order == ["plain", "store"] * 3
    assert (result["plain_median"], result["variant_median"]) == (3300.0, 2900.0)
    assert result["ratio"] == round(2900 / 3300, 3) and result["target_ratio"] == 0.8
    table = dispatch.render_paired(result)
    assert "| median | 3,300 | 2,900 | 0.879 |" in table
    assert "88% of the plain server's throughput (median of 3 alternating pairs" in table
    assert result["cpu_ratio"] == round((1e6 / 3300) / (1e6 / 2900), 3)
    assert "88% of the plain throughput if only its core limited it" in table


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
def test_bench_dispatch_runs_one_after_another_each_get_the_server_its_own_core() -> None:
    """Found measuring the store: the second run of ``--paired`` found only
    the load's core left to this process, and put the server there too."""
    from edgedispatch.cli.bench import dispatch

    own = os.sched_getaffinity(0)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        for _ in range(2):  # two runs of a pair
            unpin = dispatch.pin_apart(sleeper.pid)
            assert os.sched_getaffinity(sleeper.pid) == {min(own)}
            assert os.sched_getaffinity(0) == own - {min(own)}
            unpin()  # the end of the run
            assert os.sched_getaffinity(0) == own
            os.sched_setaffinity(sleeper.pid, own)  # the next run's server
    finally:
        os.sched_setaffinity(0, own)
        sleeper.kill()
        sleeper.wait()


def test_bench_dispatch_paired_needs_one_variant() -> None:
    out = run_cli("bench", "dispatch", "--paired", "2")
    assert out.returncode == 2 and "--store or --scrape" in out.stderr


def test_bench_sip_media_passes_each_option_on(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--media-nice`` was parsed and then dropped: runs said to be at
    nice 5 ran at 0."""
    from edgedispatch.cli.bench import sip_media

    seen: list[tuple[Any, ...]] = []

    def run(*args: Any) -> dict[str, Any]:
        seen.append(args)
        return {"rows": []}

    monkeypatch.setattr(sip_media, "run", run)
    argv = ["bench", "sip", "--media", "--calls", "10", "20", "--seconds", "8"]
    main([*argv, "--dispatch-rate", "1000", "--sdk-agents", "--media-nice", "5",
          "--sched-slice", "0", "--json"])  # fmt: skip
    assert seen == [([10, 20], 8.0, 1000.0, True, 5, 0.0)]
    assert json.loads(capsys.readouterr().out) == {"rows": []}


def test_bench_dispatch_gives_its_server_the_slice_asked_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pathlib import Path

    from edgedispatch.cli.bench import dispatch

    seen: list[tuple[str, ...]] = []

    def start_server(*args: str, **kwargs: Any) -> Any:
        seen.append(args)
        raise RuntimeError("not this far")

    monkeypatch.setattr(dispatch, "start_server", start_server)
    for sched_slice in (None, 0.0):
        with pytest.raises(RuntimeError, match="not this far"):
            dispatch.run(1, 10.0, 0.1, sched_slice=sched_slice)
    assert "--config" not in seen[0]  # the server's default
    config = Path(seen[1][seen[1].index("--config") + 1]).read_text()
    assert config == "[server]\nsched_slice = 0.0\n"


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


PROD = {
    "LIVEKIT_URL": "wss://prod.example.com",
    "LIVEKIT_API_KEY": "prod-key",
    "LIVEKIT_API_SECRET": "prod-secret",
}


@pytest.mark.parametrize(
    "command", [["dispatch", "list", "--room", "r"], ["room", "list"], ["agent", "list"]]
)
def test_dev_flag_uses_the_dev_server_over_the_environment(command: list[str]) -> None:
    args = build_parser().parse_args([*command, "--dev"])
    client.resolve_connection(args, env=PROD)
    assert (args.url, args.api_key, args.api_secret) == (
        "http://127.0.0.1:7880",
        "devkey",
        "secret",
    )


def test_explicit_flags_win_over_dev() -> None:
    args = build_parser().parse_args(
        ["room", "list", "--dev", "--url", "http://h:1", "--api-key", "k", "--api-secret", "s"]
    )
    client.resolve_connection(args, env=PROD)
    assert (args.url, args.api_key, args.api_secret) == ("http://h:1", "k", "s")
    args = build_parser().parse_args(["room", "list", "--dev", "--api-key", "k"])
    client.resolve_connection(args, env=PROD)
    assert (args.api_key, args.api_secret) == ("k", "secret")


def test_without_dev_the_environment_gives_the_connection() -> None:
    args = build_parser().parse_args(["dispatch", "list", "--room", "r"])
    client.resolve_connection(args, env=PROD)
    assert (args.url, args.api_key, args.api_secret) == (
        "wss://prod.example.com",
        "prod-key",
        "prod-secret",
    )
    args = build_parser().parse_args(["dispatch", "list", "--room", "r"])
    client.resolve_connection(args, env={})
    assert (args.url, args.api_key, args.api_secret) == ("http://127.0.0.1:7880", None, None)


@pytest.mark.parametrize("command", [["room", "list"], ["agent", "list"]])
def test_client_without_keys_says_how_to_get_them(
    command: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for var in PROD:
        monkeypatch.delenv(var, raising=False)
    assert main(command) == 2
    err = capsys.readouterr().err
    assert "--api-key" in err and "--dev" in err


def test_bench_jobs_knows_whether_livekit_agents_is_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from edgedispatch.cli.bench import jobs

    assert jobs.livekit_agents_installed()  # the test extra includes the bench extra
    monkeypatch.setitem(sys.modules, "livekit.agents", None)
    assert not jobs.livekit_agents_installed()


def test_bench_jobs_without_livekit_agents_skips_its_rows_and_says_why() -> None:
    code = (
        "import sys\n"
        "sys.modules['livekit.agents'] = None  # as without the bench extra\n"
        "from edgedispatch.cli import main\n"
        "sys.exit(main(['bench', 'jobs', '--burst', '1', '--json']))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    report = json.loads(out.stdout)
    assert [(r["runtime"], r["burst"], r["samples"]) for r in report["rows"]] == [
        ("edgedispatch", 1, 3)
    ]
    assert report["skipped"] == [
        "livekit-agents is not installed: pip install 'edgedispatch[bench]'; its rows "
        "(livekit-agents, agent-server cold start) are skipped"
    ]
    from edgedispatch.cli.bench import jobs

    text = jobs.render(report)
    assert "skipped: livekit-agents is not installed" in text and "nan" not in text
    assert "| runtime | burst | p50 | p99 | req p50 | req p99 | n |" in text
    assert "| edgedispatch | 1 |" in text


def _parsers(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, Any]]:
    """Every parser of the command tree, with its command line."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{path} {name}")


def test_every_flag_and_argument_has_help() -> None:
    missing = [
        f"{path}: {'/'.join(action.option_strings) or action.dest}"
        for path, parser in _parsers(build_parser(), "edgedispatch")
        for action in parser._actions
        if not action.help and not isinstance(action, argparse._SubParsersAction)
    ]
    assert missing == []
    commands = {path for path, _ in _parsers(build_parser(), "edgedispatch")}
    assert {"edgedispatch token create", "edgedispatch doctor"} <= commands  # reaches the leaves
