"""Smoke test of an installed edgedispatch: what a new user's first commands
need, run the way they would run it.

``./dev test``'s wheel stage builds the wheel, installs it into a fresh venv
that gets only the runtime dependencies, and runs this script with that
venv's python, isolated (``-I``), from a directory outside the source tree::

    cd /tmp/somewhere && /tmp/somewhere/venv/bin/python -I .../tests/smoke/wheel_smoke.py

Not a pytest module (pytest would run it from the source tree, with .venv).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path

import edgedispatch
from edgedispatch import _core

BIN = Path(sys.executable).parent
# The installed commands, not .venv's; without PYTHON* or LIVEKIT_* settings
# of the caller's that could bring in the source tree or another server.
ENV = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "LIVEKIT_"))}


def run(*args: str) -> str:
    """``edgedispatch ARGS`` from this venv; its stdout."""
    out = subprocess.run(
        [str(BIN / "edgedispatch"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=ENV,
    )
    assert out.returncode == 0, f"edgedispatch {' '.join(args)}: {out.returncode}\n{out.stderr}"
    return out.stdout


def check_installed_copy() -> None:
    site = {Path(sysconfig.get_paths()[k]).resolve() for k in ("purelib", "platlib")}
    # The compiled core's four extensions, each from the installed copy.
    compiled = [
        importlib.import_module(f"edgedispatch._core.{name}_c")
        for name in ("ring", "tables", "decisions", "scheduler")
    ]
    for module in [edgedispatch, _core, *compiled]:
        path = Path(str(getattr(module, "__file__", ""))).resolve()
        assert any(path.is_relative_to(s) for s in site), f"{module.__name__} from {path}"
        if module in compiled:
            assert path.suffix == ".so", f"{module.__name__} is not compiled: {path}"
    assert _core.COMPILED and _core.BUILT, "the wheel's compiled core did not load"
    assert _core.Scheduler.__module__ == "edgedispatch._core.scheduler_c"
    # Only the runtime dependencies: so the pure core below runs on the shim.
    for extra in ("cython", "pytest", "livekit.agents"):
        assert importlib.util.find_spec(extra) is None, f"{extra} is installed here"
    pure = subprocess.run(
        [
            sys.executable,
            "-I",
            "-c",
            "import edgedispatch._core as c; print(c.COMPILED, c.Scheduler.__module__)",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**ENV, "EDGEDISPATCH_NO_EXTENSIONS": "1"},
    )
    assert pure.stdout.split() == ["False", "edgedispatch._core.scheduler_py"], pure.stderr
    print(f"installed copy: {Path(edgedispatch.__file__).parent}, compiled core loaded")


def check_version() -> None:
    out = run("--version").strip()
    assert out == f"edgedispatch {edgedispatch.__version__}", out
    print(out)


def check_bench_core() -> None:
    report = json.loads(
        run(
            "bench",
            "core",
            "--workers",
            "4",
            "64",
            "--jobs",
            "2000",
            "--python-jobs",
            "500",
            "--json",
        )
    )
    rows = {(r["impl"], r["workers"]) for r in report["results"]}
    assert rows == {(i, n) for i in ("compiled", "python") for n in (4, 64)}, rows
    assert all(r["decisions_per_s"] > 0 for r in report["results"])
    print(f"bench core: {len(rows)} rows, both cores")


def check_serve_and_dispatch() -> None:
    """``serve --dev`` on a free port, and one CreateDispatch through the
    installed client (livekit-api), with --dev's keys."""
    server = subprocess.Popen(
        [str(BIN / "edgedispatch"), "serve", "--dev", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        match = re.search(r"listening on (http://\S+)", line)
        assert match, f"serve --dev printed {line!r}"
        url = match.group(1)
        conn = ("--dev", "--url", url, "--json")
        created = json.loads(
            run("dispatch", "create", "--room", "smoke", "--agent-name", "smoke-agent", *conn)
        )
        assert len(created) == 1 and created[0]["id"].startswith("AD_"), created
        assert (created[0]["room"], created[0]["agentName"]) == ("smoke", "smoke-agent")
        listed = json.loads(run("dispatch", "list", "--room", "smoke", *conn))
        assert [d["id"] for d in listed] == [created[0]["id"]], listed
        # Package data: the status page ships in the wheel; and /metrics.
        with urllib.request.urlopen(f"{url}/status", timeout=10) as resp:
            assert b"<title>edgedispatch status</title>" in resp.read()
        with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
            assert b"edgedispatch_dispatch_latency_seconds_count 0.0" in resp.read()
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            _, err = server.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            _, err = server.communicate()
    assert server.returncode == 0, f"serve exited {server.returncode}\n{err}"
    print(f"serve --dev: CreateDispatch and ListDispatch through the CLI at {url}")


def main() -> None:
    started = time.monotonic()
    check_installed_copy()
    check_version()
    check_bench_core()
    check_serve_and_dispatch()
    print(f"wheel smoke passed in {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
