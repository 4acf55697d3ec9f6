"""The core is sans-IO: it must not import I/O, event loops or clocks.

Ruff cannot ban imports per package, so this test reads the sources."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "edgedispatch"
SANS_IO = ["_core", "dispatch/core.py", "errors.py"]
FORBIDDEN = {
    "asyncio",
    "uvloop",
    "socket",
    "selectors",
    "ssl",
    "time",
    "datetime",
    "threading",
    "subprocess",
    "multiprocessing",
    "os",
    "random",
}
# The native pool's decisions: its time is passed in, its I/O is the shell's.
SANS_IO += ["runtime/pool_policy.py", "runtime/pool_states.py"]


def _sources() -> list[Path]:
    files: list[Path] = []
    for name in SANS_IO:
        path = PKG / name
        files += sorted(path.glob("*.py")) + sorted(path.glob("*.pyx")) if path.is_dir() else [path]
    return files


def _imports(path: Path) -> set[str]:
    text = path.read_text()
    if path.suffix == ".pyx":  # Cython syntax: check the import lines only
        mods = set()
        for line in text.splitlines():
            words = line.split()
            if len(words) >= 2 and words[0] in ("import", "from"):
                mods.add(words[1].split(".")[0])
        return mods
    mods = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            mods |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            mods.add(node.module.split(".")[0])
    return mods


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(PKG)))
def test_core_imports_no_io_and_no_clock(path: Path) -> None:
    # _core/__init__.py reads one environment switch at import; nothing else may.
    allowed = {"os"} if path.name == "__init__.py" and path.parent.name == "_core" else set()
    assert not (_imports(path) & (FORBIDDEN - allowed)), f"{path.name} imports I/O or a clock"
