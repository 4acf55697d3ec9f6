"""The server's containment of tenant code: built once at start-up from the
configuration and what the host offers (``sandbox.Host``, ``cgroups``), and
asked by every runner how to start a tenant's process (``launch``).

At start-up it kills what a crashed earlier run of this server left in its
cells (``start``), and says which protections are active and which are
missing, and why (``describe``): a host without one gets a log line that
says so, never a pretence.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import NamedTuple

from edgedispatch.config import Config
from edgedispatch.errors import ConfigError
from edgedispatch.runtime import cgroups
from edgedispatch.runtime.cgroups import Cell, Tree
from edgedispatch.runtime.process import ChildProcess
from edgedispatch.runtime.sandbox import Host, Sandbox

log = logging.getLogger("edgedispatch.agents")

REAPER = str(Path(__file__).with_name("reaper.py"))
_serial = itertools.count(1)  # per process: test servers share one pid


class Launch(NamedTuple):
    """How to start one contained process (``subprocess.Popen``'s terms)."""

    argv: list[str]
    env: dict[str, str]
    cwd: str  #: for Popen: "" when the sandbox sets the directory itself
    cell: Cell | None  #: its cgroup, to kill all of it and read its memory
    sandboxed: bool  #: runs under bubblewrap: signal the program, not bwrap
    reaped: bool  #: runs under ``reaper.py``: it forwards signals, and keeps the tree


class Containment:
    """:param tag: names this server's cells, so that its next run finds
    them (derived from the data directory when there is one)."""

    def __init__(self, cfg: Config, *, host: Host | None = None, tag: str = "") -> None:
        mode = cfg.sandbox.mode
        self.mode = mode
        self.tag = tag or server_tag(cfg.server.data_dir)
        self.host = host or (
            Host.probe() if mode != "off" else Host(bwrap=None, setpriv=None, root=False)
        )
        self._bwrap_wanted = cfg.sandbox.bubblewrap
        if not cfg.sandbox.bubblewrap:
            self.host = Host(bwrap=None, setpriv=self.host.setpriv, root=self.host.root)
        self.tree: Tree | None = None
        self._why_no_cells = "sandbox.mode is off"
        if mode != "off" and not cfg.sandbox.cgroups:
            self._why_no_cells = "sandbox.cgroups is false"
        elif mode != "off":
            self.tree, self._why_no_cells = cgroups.open_tree(self.tag)
        tenants = [""] + [t.name for t in cfg.tenants]
        data_dir = cfg.server.data_dir
        #: Made for this run only (no data directory): removed on close.
        self._scratch = ""
        root = cfg.sandbox.tenant_dirs or (os.path.join(data_dir, "tenants") if data_dir else "")
        if not root:
            root = self._scratch = _run_dir(self.tag)
        self.sandbox = Sandbox(
            self.host,
            enabled=mode != "off",
            tenants=tenants,
            uid_base=cfg.sandbox.uid_base,
            tenant_root=Path(root),
            hidden=[cfg.source, data_dir, cfg.sip.tls_key],
        )
        if mode == "required":
            missing = self.missing()
            if missing:
                raise ConfigError(
                    "the host lacks " + "; ".join(missing) + " (sandbox.mode is 'required')",
                    "sandbox.mode",
                )

    def missing(self) -> list[str]:
        """The protections this host does not give, with the reason."""
        out = []
        if not self.sandbox.fs_view:
            why = "not installed or no namespaces" if self._bwrap_wanted else "turned off"
            out.append(f"a filesystem view (bubblewrap: {why})")
        if not self.sandbox.own_uids:
            out.append("a uid per tenant (needs root and bubblewrap and setpriv)")
        if self.tree is None:
            out.append(f"cgroups ({self._why_no_cells}): no process-count limit")
        return out

    @property
    def reaper(self) -> bool:
        """Whether each process starts under ``runtime/reaper.py``: where
        neither a cell nor a PID namespace holds its tree together."""
        return self.mode != "off" and self.tree is None and not self.sandbox.fs_view

    def describe(self) -> list[str]:
        """One line per protection: active, or missing and why."""
        if self.mode == "off":
            return ["containment is off (sandbox.mode): tenant code runs as the server"]
        lines = [
            "environment: built for each process; nothing of the server's is passed on",
        ]
        if self.sandbox.fs_view:
            lines.append(
                "filesystem view and PID namespace: bubblewrap (the system, Python, the "
                "agent's directory and its tenant's directory only; dies with the server)"
            )
        if self.sandbox.own_uids:
            lines.append("a uid per tenant, from sandbox.uid_base, without capabilities")
        if self.tree is not None:
            lines.append(
                f"cgroup {self.tree.version} cells at {self.tree.path}: memory and process "
                "limits on each whole tree, and a kill that reaches all of it"
            )
        elif self.sandbox.fs_view:
            lines.append(
                "no cgroups: each tree dies with its PID namespace, and its memory "
                "is the sum of its processes' RSS, checked every 0.25 s"
            )
        else:
            lines.append(
                "no cgroups and no PID namespace: each process starts under a "
                "subreaper that keeps its whole tree, kills what is left when the "
                "program ends and everything when the server dies; memory is the "
                "sum of the tree's RSS, checked every 0.25 s"
            )
        lines += [f"missing: {m}" for m in self.missing()]
        return lines

    def start(self) -> None:
        """Kill what a crashed earlier run of this server left, and log
        what protects tenant code here."""
        if self.tree is not None:
            killed = self.tree.kill_leftovers()
            if killed:
                log.warning("killed %d processes left by an earlier run of this server", killed)
        for line in self.describe():
            (log.warning if line.startswith("missing") else log.info)("containment: %s", line)

    def cell(self, name: str, *, memory_mb: float, max_procs: int) -> Cell | None:
        if self.tree is None:
            return None
        return self.tree.cell(_safe(name), memory_mb=memory_mb, max_procs=max_procs)

    def launch(
        self,
        program: list[str],
        *,
        tenant: str,
        name: str,
        env: Mapping[str, str],
        cwd: str,
        memory_mb: float,
        max_procs: int,
        read_only: Iterable[str] = (),
        read_write: Iterable[str] = (),
    ) -> Launch:
        """How to start ``program`` for ``tenant``, contained: in a cell
        named ``name`` (unique), with the environment ``env`` added to the
        one built for the tenant."""
        cell = self.cell(name, memory_mb=memory_mb, max_procs=max_procs)
        read_only = list(read_only)
        if os.path.isabs(program[0]):
            read_only.append(os.path.dirname(program[0]))
        argv = self.sandbox.argv(
            program,
            tenant=tenant,
            cwd=cwd,
            read_only=read_only,
            read_write=read_write,
            cell=cell,
        )
        full_env = self.sandbox.env(tenant, env)
        sandboxed = self.sandbox.fs_view
        if self.reaper:
            if getattr(sys, "frozen", False):  # the binary runs modules (packaging/entry.py)
                argv = [sys.executable, "-m", "edgedispatch.runtime.reaper", *argv]
            else:
                argv = [sys.executable, "-I", "-S", REAPER, *argv]
        return Launch(argv, full_env, "" if sandboxed else cwd, cell, sandboxed, self.reaper)

    def env(self, tenant: str, extra: Mapping[str, str]) -> dict[str, str]:
        return self.sandbox.env(tenant, extra)

    async def spawn(
        self,
        program: list[str],
        env: Mapping[str, str],
        cwd: str,
        on_line: Callable[[str], None],
        on_exit: Callable[[int], None],
        *,
        tenant: str,
        name: str,
        memory_mb: float = 0,
        max_procs: int = 512,
        read_only: Iterable[str] = (),
        read_write: Iterable[str] = (),
    ) -> ChildProcess:
        """Start ``program`` contained (see ``launch``); ``ChildProcess.start``'s
        first five arguments, so that it can stand in for it."""
        launch = self.launch(
            program,
            tenant=tenant,
            name=f"{name}-{next(_serial)}",
            env=env,
            cwd=cwd,
            memory_mb=memory_mb,
            max_procs=max_procs,
            read_only=read_only,
            read_write=read_write,
        )
        try:
            return await ChildProcess.start(
                launch.argv,
                launch.env,
                launch.cwd,
                on_line,
                on_exit,
                cell=launch.cell,
                sandboxed=launch.sandboxed,
                reaped=launch.reaped,
            )
        except BaseException:
            if launch.cell is not None:
                launch.cell.remove()
            raise

    def close(self) -> None:
        """Kill what is left in this run's cells and remove them (blocks
        while the killed go: call it off the loop)."""
        if self.tree is not None:
            self.tree.remove()
        if self._scratch:
            shutil.rmtree(os.path.dirname(self._scratch), ignore_errors=True)


def server_tag(data_dir: str) -> str:
    """Names this server's cells: from its data directory, so that its
    next run finds what a crash of this one left (servers without one
    share "dev")."""
    if data_dir:
        digest = hashlib.sha1(os.path.realpath(data_dir).encode()).hexdigest()[:12]
        return f"d{digest}"
    return "dev"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:200]


def _run_dir(tag: str) -> str:
    for base in ("/run", tempfile.gettempdir()):
        with contextlib.suppress(OSError):
            path = os.path.join(
                base, f"edgedispatch-{tag}-{os.getpid()}-{next(_serial)}", "tenants"
            )
            os.makedirs(path, mode=0o711, exist_ok=True)
            return path
    raise ConfigError("no writable directory for tenants' own directories", "sandbox.tenant_dirs")
