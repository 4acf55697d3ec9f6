"""Control groups for tenant processes: a memory limit and a process limit
on a whole process tree, and a kill that reaches every process in it,
including those that called ``setsid`` or forked twice.

One *cell* per job, agent-server instance or native pool process: a cgroup
the process joins before it runs anything of the tenant's (``join_argv``
for a program we start; ``adopt`` for a native pool process, which waits
for the server to move it), so that everything it starts lands in the cell
too.  Cells live under one *tree* per run of a server,
``edgedispatch-<tag>/run-<pid>-<start time>``, beside the trees of the
server's earlier runs (the tag names the server: its data directory).  A
server that starts kills what is in the trees of runs whose process is
gone: what a crash left (its own, and any other edgedispatch server's on
the host: a dead run has nobody left to clean up after it).  A run still
alive (two servers started on one data directory, say) is left alone.

cgroup v2 is used when the unified hierarchy has the memory and pids
controllers for us; otherwise cgroup v1's memory, pids and freezer
hierarchies, when mounted and writable.  Everything here is file
operations on cgroupfs: it blocks for microseconds, not on the disk.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

log = logging.getLogger("edgedispatch.agents")

CGROUP_ROOT = Path("/sys/fs/cgroup")
_V1_CONTROLLERS = ("memory", "pids", "freezer")


class Cell(Protocol):
    """One cgroup, in every hierarchy it needs."""

    name: str

    def procs_files(self) -> list[str]:
        """The files a process writes its pid to, to join the cell."""
        ...

    def adopt(self, pid: int) -> None:
        """Move ``pid`` into the cell (its later children follow it)."""
        ...

    def pids(self) -> list[int]: ...

    def memory_bytes(self) -> int: ...

    def oom_kills(self) -> int:
        """How many processes the kernel killed for the memory limit."""
        ...

    def kill_all(self) -> None:
        """SIGKILL every process in the cell, none escaping by forking."""
        ...

    def remove(self) -> None:
        """Kill what is left, and delete the cell."""
        ...


class Tree(Protocol):
    """This server's cells."""

    version: str  # "v2" or "v1"
    path: str  # where, for the log

    def cell(self, name: str, *, memory_mb: float, max_procs: int) -> Cell: ...

    def kill_leftovers(self) -> int:
        """Kill and remove what dead earlier runs of this server left;
        how many processes were killed."""
        ...

    def remove(self) -> None:
        """Kill what is left in this run's cells, and remove its tree."""
        ...


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _read_int(path: Path, default: int = 0) -> int:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return default


def _read_pids(path: Path) -> list[int]:
    try:
        return [int(line) for line in path.read_text().split()]
    except (OSError, ValueError):
        return []


def _own_cgroup(controller: str) -> str:
    """This process's cgroup path in ``controller``'s hierarchy ("" for v2)."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return "/"
    for line in lines:
        _, names, path = line.split(":", 2)
        if controller in names.split(",") or (controller == "" and names == ""):
            return path
    return "/"


# ----------------------------------------------------------------------
# cgroup v2


class _CellV2:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = path.name

    def procs_files(self) -> list[str]:
        return [str(self.path / "cgroup.procs")]

    def adopt(self, pid: int) -> None:
        _write(self.path / "cgroup.procs", str(pid))

    def pids(self) -> list[int]:
        return _read_pids(self.path / "cgroup.procs")

    def memory_bytes(self) -> int:
        return _read_int(self.path / "memory.current")

    def oom_kills(self) -> int:
        try:
            for line in (self.path / "memory.events").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            pass
        return 0

    def kill_all(self) -> None:
        with contextlib.suppress(OSError):
            _write(self.path / "cgroup.kill", "1")

    def remove(self) -> None:
        self.kill_all()
        _rmdir_when_empty(self.path, self.pids)


class _TreeV2:
    version = "v2"

    def __init__(self, root: Path) -> None:
        self.root = root  # this run's tree, in the server's
        self.path = str(root)

    def cell(self, name: str, *, memory_mb: float, max_procs: int) -> Cell:
        path = self.root / name
        path.mkdir(exist_ok=True)
        if memory_mb > 0:
            _write(path / "memory.max", str(int(memory_mb * 1024 * 1024)))
            with contextlib.suppress(OSError):
                _write(path / "memory.swap.max", "0")
        _write(path / "pids.max", str(max_procs))
        return _CellV2(path)

    def kill_leftovers(self) -> int:
        killed = 0
        for run in _dead_runs(self.root.parent):
            killed += _remove_cells(run, _CellV2)
            _rmdir_when_empty(run, lambda: [])
            with contextlib.suppress(OSError):
                run.parent.rmdir()
        return killed

    def remove(self) -> None:
        _remove_cells(self.root, _CellV2)
        _rmdir_when_empty(self.root, lambda: [])
        with contextlib.suppress(OSError):  # the server's, if no other run is in it
            self.root.parent.rmdir()


# ----------------------------------------------------------------------
# cgroup v1: one directory per controller, the same name in each


class _CellV1:
    def __init__(self, paths: dict[str, Path]) -> None:
        self.paths = paths
        self.name = paths["pids"].name

    def procs_files(self) -> list[str]:
        return [str(p / "cgroup.procs") for p in self.paths.values()]

    def adopt(self, pid: int) -> None:
        for path in self.paths.values():
            _write(path / "cgroup.procs", str(pid))

    def pids(self) -> list[int]:
        return _read_pids(self.paths["pids"] / "cgroup.procs")

    def memory_bytes(self) -> int:
        return _read_int(self.paths["memory"] / "memory.usage_in_bytes")

    def oom_kills(self) -> int:
        try:
            for line in (self.paths["memory"] / "memory.oom_control").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            pass
        # Kernels without the counter: a limit hit that failed to reclaim.
        return 1 if _read_int(self.paths["memory"] / "memory.failcnt") > 0 else 0

    def kill_all(self) -> None:
        # Frozen, nothing in it can fork between the reading of its pids and
        # the kill: every process gets the signal.
        freezer = self.paths["freezer"]
        with contextlib.suppress(OSError):
            _write(freezer / "freezer.state", "FROZEN")
            for _ in range(100):  # FREEZING until every task is frozen
                if (freezer / "freezer.state").read_text().strip() == "FROZEN":
                    break
                time.sleep(0.001)
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            _write(freezer / "freezer.state", "THAWED")  # the kills take effect

    def remove(self) -> None:
        self.kill_all()
        _rmdir_when_empty(self.paths["pids"], self.pids)
        for controller, path in self.paths.items():
            if controller != "pids":
                _rmdir_when_empty(path, lambda: [])


class _TreeV1:
    version = "v1"

    def __init__(self, roots: dict[str, Path]) -> None:
        self.roots = roots
        self.path = ", ".join(str(p) for p in roots.values())

    def cell(self, name: str, *, memory_mb: float, max_procs: int) -> Cell:
        paths = {c: root / name for c, root in self.roots.items()}
        for path in paths.values():
            path.mkdir(exist_ok=True)
        memory = paths["memory"]
        # Memory a process brought along counts where it now is, so that a
        # pool process moved into its cell is charged there.
        with contextlib.suppress(OSError):
            _write(memory / "memory.move_charge_at_immigrate", "3")
        if memory_mb > 0:
            limit = str(int(memory_mb * 1024 * 1024))
            _write(memory / "memory.limit_in_bytes", limit)
            with contextlib.suppress(OSError):  # without swap accounting: no such file
                _write(memory / "memory.memsw.limit_in_bytes", limit)
        _write(paths["pids"] / "pids.max", str(max_procs))
        return _CellV1(paths)

    def kill_leftovers(self) -> int:
        killed = 0
        for run in _dead_runs(self.roots["pids"].parent):
            # The same run in each hierarchy (its server's directory too).
            runs = {
                c: root.parent.parent / run.parent.name / run.name for c, root in self.roots.items()
            }
            killed += _remove_cells(run, _v1_cells(runs))
            for path in runs.values():
                _rmdir_when_empty(path, lambda: [])
                with contextlib.suppress(OSError):
                    path.parent.rmdir()
        return killed

    def remove(self) -> None:
        roots = self.roots
        _remove_cells(roots["pids"], _v1_cells(roots))
        for root in roots.values():
            _rmdir_when_empty(root, lambda: [])
            with contextlib.suppress(OSError):  # the server's, if no other run is in it
                root.parent.rmdir()


def _v1_cells(runs: dict[str, Path]) -> Callable[[Path], Cell]:
    """A v1 cell of a run, from its directory in one hierarchy."""

    def cell(path: Path) -> Cell:
        return _CellV1({c: run / path.name for c, run in runs.items()})

    return cell


def _remove_cells(run: Path, cell_of: Callable[[Path], Cell]) -> int:
    """Kill and remove every cell of a run's tree; how many processes."""
    killed = 0
    with contextlib.suppress(OSError):
        for path in sorted(p for p in run.iterdir() if p.is_dir()):
            cell = cell_of(path)
            killed += len(cell.pids())
            cell.remove()
    return killed


def _run_name() -> str:
    """This run's tree: the pid and its start time (a reused pid differs)."""
    return f"run-{os.getpid()}-{_start_time(os.getpid())}"


def _start_time(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "?"


def _dead_runs(server: Path) -> list[Path]:
    """The trees of runs whose process is gone: this server's, and any
    other edgedispatch server's on this host (a dead run has nobody left
    to clean up after it)."""
    dead = []
    with contextlib.suppress(OSError):
        servers = [s for s in server.parent.iterdir() if s.name.startswith("edgedispatch-")]
        for tree in servers:
            for run in tree.iterdir():
                parts = run.name.split("-")
                if run.is_dir() and len(parts) == 3 and parts[0] == "run" and parts[1].isdigit():
                    if _start_time(int(parts[1])) != parts[2]:
                        dead.append(run)
    return dead


def _rmdir_when_empty(path: Path, pids: object, timeout: float = 1.0) -> None:
    """Remove the cgroup directory once the killed processes are gone (a
    cgroup with members cannot be removed)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() > deadline:
                log.warning("cgroup %s still has processes %s; left in place", path, pids())  # type: ignore[operator]
                return
            time.sleep(0.005)


# ----------------------------------------------------------------------
# Finding what this host offers.


def _enable_v2(base: Path) -> None:
    """Hand the memory and pids controllers to ``base``'s children.  A v2
    cgroup that holds processes cannot ("no internal processes"): as a
    systemd service with ``Delegate=`` does, the server first moves itself
    into a leaf of its own cgroup, ``base/server``."""
    try:
        _write(base / "cgroup.subtree_control", "+memory +pids")
    except OSError:
        leaf = base / "server"
        leaf.mkdir(exist_ok=True)
        _write(leaf / "cgroup.procs", str(os.getpid()))  # ours only; others stay
        _write(base / "cgroup.subtree_control", "+memory +pids")


def unified_hierarchy() -> Path:
    """Where cgroup v2's hierarchy is mounted: ``/sys/fs/cgroup`` itself,
    or its ``unified`` beside v1's hierarchies (a hybrid host)."""
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        return CGROUP_ROOT
    return CGROUP_ROOT / "unified"


def own_unified_cgroup() -> Path:
    """This process's cgroup in the v2 hierarchy."""
    return unified_hierarchy() / _own_cgroup("").lstrip("/")


def open_tree(tag: str) -> tuple[Tree | None, str]:
    """This server's tree of cells, or None, and why not."""
    name = f"edgedispatch-{tag}"
    try:
        available = (unified_hierarchy() / "cgroup.controllers").read_text().split()
    except OSError:
        available = []
    if {"memory", "pids"} <= set(available):
        base = own_unified_cgroup()
        try:
            _enable_v2(base)
            server = base / name
            server.mkdir(exist_ok=True)
            _write(server / "cgroup.subtree_control", "+memory +pids")
            root = server / _run_name()
            root.mkdir(exist_ok=True)
            _write(root / "cgroup.subtree_control", "+memory +pids")
            return _TreeV2(root), ""
        except OSError as exc:
            v2_problem = f"cgroup v2 at {base} is not ours to use ({exc.strerror})"
    else:
        v2_problem = "cgroup v2 has no memory and pids controllers here"
    roots: dict[str, Path] = {}
    for controller in _V1_CONTROLLERS:
        mount = CGROUP_ROOT / controller
        if not (mount / "cgroup.procs").exists():
            return None, f"{v2_problem}; cgroup v1 {controller} is not mounted"
        root = mount / _own_cgroup(controller).lstrip("/") / name / _run_name()
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return None, f"{v2_problem}; cgroup v1 {controller} is not writable ({exc.strerror})"
        roots[controller] = root
    return _TreeV1(roots), ""
