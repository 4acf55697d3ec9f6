"""What an installed copy needs at run time: no Cython, and every
third-party module edgedispatch imports provided by its runtime dependencies
(or, for the few modules that need one, by the extra that declares it).

``./dev test``'s wheel stage (``tests/smoke/wheel_smoke.py``) runs an
installed copy; these catch the same defects sooner, and in code paths that
the smoke run does not take."""

from __future__ import annotations

import ast
import importlib.metadata
import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "edgedispatch"

# Modules that need an extra, and which one.
NEEDS_EXTRA = {
    "edgedispatch/cli/bench/lk_jobs_agent.py": "bench",
    # bench rooms drives the rtc SDK (livekit-agents brings it, and numpy).
    "edgedispatch/cli/bench/rooms.py": "bench",
    "edgedispatch/cli/bench/rooms_clients.py": "bench",
    # bench --plot: matplotlib, checked for before the run (plot.available).
    "edgedispatch/cli/bench/plot.py": "bench",
    "edgedispatch/cli/bench/sip_agents.py": "bench",
    # bench sip --media's lean agents: aiortc (rtc) and the livekit API (bench).
    "edgedispatch/cli/bench/sip_lean_agents.py": "bench,rtc",
    "edgedispatch/cli/bench/sip_media.py": "bench",
    # Imported only when rooms are served, and then only if installed
    # (server.Server._rooms logs that rooms are off otherwise).
    "edgedispatch/net/media.py": "rtc",
    "edgedispatch/net/media_fanout.py": "rtc",  # PyAV's Packet, which aiortc brings
    # Phone calls' media, in the media workers: PyAV (libopus, swresample).
    "edgedispatch/net/sip_media.py": "rtc",
    "edgedispatch/sip/transcode.py": "rtc",
    # JobContext.connect() imports the rtc SDK when it is called.
    "edgedispatch/agent.py": "agents",
}
# Imported but never needed at run time: the pure core falls back to
# edgedispatch/_core/_cython_shim.py, and the compiled core imports nothing.
BUILD_ONLY = {"cython"}


def test_pure_core_runs_without_cython() -> None:
    code = (
        "import sys\n"
        "sys.modules['cython'] = None  # as in a venv with only the runtime dependencies\n"
        "from edgedispatch import _core\n"
        "from edgedispatch._core import scheduler_py, tables_py\n"
        "from edgedispatch.cli.bench import core\n"
        "result = core.measure(_core.implementations()['python'], workers=4, jobs=300)\n"
        "print(_core.COMPILED, scheduler_py.cython.__name__, tables_py.cython.__name__,\n"
        "      result['decisions_per_s'] > 0)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "EDGEDISPATCH_NO_EXTENSIONS": "1"},
    )
    assert out.returncode == 0, out.stderr
    shim = "edgedispatch._core._cython_shim"
    assert out.stdout.split() == ["False", shim, shim, "True"]


def _pyproject() -> dict[str, object]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        project: dict[str, object] = tomllib.load(f)["project"]
    return project


def _closure(requirements: list[str]) -> set[str]:
    """The distributions these requirements bring in, with theirs (as
    installed here), without any extras of theirs."""
    seen: set[str] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in seen or (req.marker is not None and not req.marker.evaluate({"extra": ""})):
            continue
        seen.add(name)
        todo += [Requirement(r) for r in importlib.metadata.requires(name) or []]
    return seen


def _module_owners() -> dict[str, str]:
    """Every importable module installed here -> its distribution."""
    owners: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        dist_name = canonicalize_name(dist.metadata["Name"])
        for file in dist.files or []:
            parts = file.parts
            if file.suffix not in (".py", ".so", ".pyd") or ".." in parts:
                continue
            name = [*parts[:-1], file.name.split(".")[0]]
            if name[-1] == "__init__":
                name.pop()
            if name:
                owners[".".join(name)] = dist_name
    return owners


def _imports(path: Path) -> Iterator[str]:
    """The absolute modules ``path`` imports, submodules first
    (``from livekit import api`` -> ``livekit.api``, then ``livekit``)."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield from (f"{node.module}.{alias.name}" for alias in node.names)
            yield node.module


def _owner(module: str, owners: dict[str, str]) -> str | None:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        owner = owners.get(".".join(parts[:n]))
        if owner is not None:
            return owner
    return None


def test_third_party_imports_are_runtime_dependencies() -> None:
    project = _pyproject()
    runtime = project["dependencies"]
    extras = project["optional-dependencies"]
    assert isinstance(runtime, list) and isinstance(extras, dict)
    owners = _module_owners()
    allowed = {
        needs: _closure(runtime + [r for extra in needs.split(",") for r in extras.get(extra, [])])
        for needs in {"", *NEEDS_EXTRA.values()}
    }
    missing = set()
    checked = 0
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        available = allowed[NEEDS_EXTRA.get(rel, "")]
        for module in _imports(path):
            top = module.split(".")[0]
            if top in sys.stdlib_module_names or top in ("edgedispatch", "__future__"):
                continue
            if top in BUILD_ONLY:
                continue
            owner = _owner(module, owners)
            if owner is None:
                # A namespace package ("livekit" of "from livekit import api",
                # checked as livekit.api) has no owner of its own.
                if not any(name.startswith(f"{module}.") for name in owners):
                    missing.add(f"{rel}: {module} (not installed)")
                continue
            checked += 1
            if owner not in available:
                missing.add(f"{rel}: {module} ({owner})")
    assert checked > 20  # the scan found the imports
    assert not missing, "imported, but not a runtime dependency:\n" + "\n".join(sorted(missing))
