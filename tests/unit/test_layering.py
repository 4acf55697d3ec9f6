"""The package's layers, checked from the imports (ruff cannot ban imports
per package, so this test reads the sources).

Imports point down only: cli -> server -> net -> api -> worker / rtc
(sessions) -> wire -> dispatch (the domain) -> _core.  Beside them: runtime (local job
processes, under server), store, obs, config.  Each package may import
only the packages its row allows; an arrow pointing up fails here, and so
does a sans-IO package that imports I/O or a clock.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "edgedispatch"

#: package (or top-level module) -> the edgedispatch packages it may import
ALLOW: dict[str, set[str]] = {
    "errors": set(),
    "_version": set(),
    "sched": set(),  # scheduler slices: the standard library only
    "agent": set(),  # the public SDK of native agents: the standard library only
    "_core": {"errors"},
    "config": {"errors"},
    "sip": {"errors"},  # sans-IO SIP: messages, transactions, dialogs
    # What the server does with a call: the SIP stack's events, the
    # tenants' trunks and rules, and the domain; an answered call's
    # participant joins its live room as a WebRTC one does (rtc, with the
    # wire's Grant), so calls sits just above the rtc sessions.
    "calls": {"_core", "config", "dispatch", "errors", "rtc", "sip", "wire"},
    "dispatch": {"_core", "config", "errors"},
    # The store follows the domain's events and writes its records; its
    # writer process logs as the server does (obs.logs) and talks to it in
    # the helper processes' frames (wire.frames).
    "store": {"_core", "dispatch", "errors", "obs", "sched", "wire"},
    "wire": {"_core", "dispatch", "errors"},
    "worker": {"_core", "_version", "config", "dispatch", "errors", "wire"},
    "rtc": {"_core", "_version", "config", "dispatch", "errors", "wire"},
    "api": {"_core", "_version", "config", "dispatch", "errors", "rtc", "sip", "wire", "worker"},
    "runtime": {"_core", "agent", "config", "dispatch", "errors", "store", "worker"},
    "obs": {"_core", "config", "dispatch", "errors"},
    # net.media (aiortc) reads the rtc config; the sessions it feeds are
    # given to it as Protocols, so it imports none of them.  Its media
    # worker processes log as the server does (obs.logs), as the store's
    # writer does.
    "net": {"config", "errors", "obs", "sched", "sip", "wire"},
    "_testbase": {"_core", "dispatch", "errors", "wire"},
    "server": {
        "_core",
        "api",
        "calls",
        "config",
        "dispatch",
        "errors",
        "net",
        "obs",
        "rtc",
        "runtime",
        "sched",
        "sip",
        "store",
        "wire",
        "worker",
    },
    "cli": set(),  # the top: anything (see test_cli_is_the_top)
    "__init__": {"_version"},
    "__main__": {"cli"},
}

#: Packages that run no I/O and read no clock: ``now`` is passed in.
SANS_IO = (
    "_core",
    "calls",
    "sip",
    "dispatch",
    "wire",
    "worker",
    "rtc",
    "api",
    "errors.py",
    "agent.py",
    # The native pool's decisions: its time is passed in, its I/O is the shell's.
    "runtime/pool_policy.py",
    "runtime/pool_states.py",
    # The agent-server supervision's decisions, likewise.
    "runtime/supervisor_policy.py",
    "runtime/supervisor_states.py",
)
FORBIDDEN_IN_SANS_IO = {
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
    "random",
    "os",
    "aiortc",
}
#: The domain is free of the wire too: no protobuf, no Twirp.
FORBIDDEN_IN_DOMAIN = {"livekit", "google", "httptools", "websockets", "jwt"}
#: Where a forbidden module is allowed anyway, and why.
EXCEPTIONS = {
    ("_core/__init__.py", "os"): "reads the EDGEDISPATCH_NO_EXTENSIONS switch once, at import",
    ("dispatch/ids.py", "os"): "os.urandom: entropy for ids, not I/O",
}
#: Third-party modules only one module may import (the adapter that owns them).
#: Third-party modules only one module of the server may import; besides
#: it, a bench load tool that plays clients of the server, in a process of
#: its own (``bench sip --media``'s agents, cheaper than the rtc SDK's).
OWNED = {
    "aiortc": {"net/media.py", "cli/bench/sip_lean_agents.py"},
    "aioice": {"net/media.py", "cli/bench/sip_lean_agents.py"},
}


def _sources() -> list[Path]:
    return sorted(p for p in PKG.rglob("*.py") if "__pycache__" not in p.parts)


def _layer(path: Path) -> str:
    first = path.relative_to(PKG).parts[0]
    return first.removesuffix(".py")


def _imports(path: Path) -> set[str]:
    """Every module the file imports, absolute (relative ones resolved)."""
    here = ".".join(path.relative_to(PKG.parent).with_suffix("").parts)
    package = here if path.name == "__init__.py" else here.rsplit(".", 1)[0]
    mods: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            mods |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            mods.add(base)
            mods |= {f"{base}.{a.name}" for a in node.names}
    return mods


def _our_layers(mods: set[str]) -> set[str]:
    return {m.split(".")[1] for m in mods if m.startswith("edgedispatch.") and m.count(".") >= 1}


def _rel(path: Path) -> str:
    return str(path.relative_to(PKG))


@pytest.mark.parametrize("path", _sources(), ids=_rel)
def test_imports_point_down(path: Path) -> None:
    layer = _layer(path)
    if layer == "cli":
        return
    assert layer in ALLOW, f"{_rel(path)}: add its package to the allow table"
    used = _our_layers(_imports(path)) - {layer}
    upward = used - ALLOW[layer]
    assert not upward, f"{_rel(path)} ({layer}) imports {sorted(upward)}: an arrow pointing up"


@pytest.mark.parametrize("path", [p for p in _sources() if _rel(p).startswith(SANS_IO)], ids=_rel)
def test_sans_io_layers_import_no_io_and_no_clock(path: Path) -> None:
    tops = {m.split(".")[0] for m in _imports(path)}
    forbidden = FORBIDDEN_IN_SANS_IO | (
        FORBIDDEN_IN_DOMAIN if _layer(path) == "dispatch" else set()
    )
    bad = {m for m in tops & forbidden if (_rel(path), m) not in EXCEPTIONS}
    assert not bad, f"{_rel(path)} imports {sorted(bad)}"


def test_owned_modules_have_one_importer() -> None:
    for module, owners in OWNED.items():
        importers = {
            _rel(p) for p in _sources() if module in {m.split(".")[0] for m in _imports(p)}
        }
        assert importers <= owners, f"{module} is imported by {sorted(importers - owners)}"


def test_cli_is_the_top() -> None:
    # Nothing below the command line imports it.
    for path in _sources():
        if _layer(path) not in ("cli", "__main__"):
            assert "cli" not in _our_layers(_imports(path)), f"{_rel(path)} imports cli"


def test_the_table_catches_an_upward_arrow() -> None:
    # The checker itself: a domain module importing the wire is refused.
    bad = PKG / "dispatch" / "rooms.py"
    mods = _imports(bad) | {"edgedispatch.wire.twirp"}
    assert _our_layers(mods) - {"dispatch"} - ALLOW["dispatch"] == {"wire"}


def test_the_core_is_checked_as_cython_too() -> None:
    # The .pyx ring wrapper: its import lines only (Cython syntax).
    for pyx in sorted((PKG / "_core").glob("*.pyx")):
        words = [line.split() for line in pyx.read_text().splitlines()]
        mods = {w[1].split(".")[0] for w in words if len(w) >= 2 and w[0] in ("import", "from")}
        assert not (mods & FORBIDDEN_IN_SANS_IO), f"{pyx.name} imports I/O or a clock"
