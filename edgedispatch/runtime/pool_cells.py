"""A native pool's containment (``runtime.contain``): its zygote started in
the tenant's sandbox and in a cell of the pool's, and each pool process put
in a cell of its own (the definition's memory limit and max_processes)
before it runs any of the agent's code.  Without a containment the zygote
still gets an environment built for it, not the server's.

The memory limit is checked here too, for the pool's sampler: with a cell
the kernel enforces it and this reads its count of kills; without one,
this sums the job's processes' RSS and kills a job over it."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Iterable, Sequence

from edgedispatch.runtime import messages as m
from edgedispatch.runtime.cgroups import Cell
from edgedispatch.runtime.contain import Containment
from edgedispatch.runtime.messages import SUBREAPER_ENV
from edgedispatch.runtime.pool_conn import PoolConn
from edgedispatch.runtime.pool_jobs import Child
from edgedispatch.runtime.process import base_env, memory_text, over_memory_limit

log = logging.getLogger("edgedispatch.agents")


class PoolCells:
    """:param binds: the definition's (read-only, read-write) paths."""

    def __init__(
        self,
        containment: Containment | None,
        *,
        name: str,
        tenant: str,
        env: dict[str, str],
        memory_mb: float,
        max_procs: int,
        idle: int,
        binds: tuple[list[str], list[str]],
        module_paths: Sequence[str] = (),
    ) -> None:
        self._contain = containment
        self._name = name
        self._tenant = tenant
        self._env = env
        self._memory_mb = memory_mb
        self._max_procs = max_procs
        self._idle = idle
        self._binds = binds
        # Where the agent's modules were found (``config.agents.locate_module``):
        # shown to the zygote, read-only, and put on its PYTHONPATH.
        self._module_paths = [p for p in module_paths if p]
        self.pool_cell: Cell | None = None
        self._made = 0  # cells made, for their names

    def zygote(
        self, cmd: list[str], socket_dir: str, socket_path: str
    ) -> tuple[list[str], dict[str, str]]:
        """The zygote's command and environment; the socket is made the
        tenant's to reach (and only the tenant's)."""
        contain = self._contain
        if contain is None:
            return cmd, base_env(self._env)
        uid = contain.sandbox.uid(self._tenant)
        if uid is not None:
            os.chown(socket_dir, uid, uid)  # 0700: no other tenant gets in
            os.chmod(socket_path, 0o777)
        pythonpath = [p for p in self._env.get("PYTHONPATH", "").split(os.pathsep) if p]
        pythonpath += [p for p in self._module_paths if p not in pythonpath]
        env = {**self._env, "PYTHONPATH": os.pathsep.join(pythonpath)} if pythonpath else self._env
        if contain.mode != "off" and contain.tree is None:
            env = {**env, SUBREAPER_ENV: "1"}
        launch = contain.launch(
            cmd,
            tenant=self._tenant,
            name=f"pool-{self._name}",
            env=env,
            cwd="",
            memory_mb=0,  # each pool process has the limit, in its own cell
            max_procs=self._max_procs * (self._idle + 2) + 64,
            read_only=self._binds[0] + pythonpath,
            read_write=[socket_dir, *self._binds[1]],
        )
        self.pool_cell = launch.cell
        return launch.argv, launch.env

    def contain(self, child: Child, conn: PoolConn) -> None:
        """Put the new pool process in a cell of its own, then let it run
        the agent's code (Go): what it starts stays in the cell."""
        if not child.orphan:
            try:
                child.cell = self.child(child.os_pid)
            except OSError as exc:  # gone meanwhile; its exit is on the way
                log.warning(
                    "native agent %r: cannot contain a pool process: %s", self._name, exc,
                    extra={"agent": self._name, "tenant": self._tenant},
                )  # fmt: skip
                return
        conn.send(m.Go())

    def child(self, os_pid: int) -> Cell | None:
        """A cell of its own for the new pool process ``os_pid``, which waits
        for the pool's Go; None without cgroups.  OSError if it is gone."""
        if self._contain is None:
            return None
        self._made += 1
        cell = self._contain.cell(
            f"pool-{self._name}-{self._made}", memory_mb=self._memory_mb, max_procs=self._max_procs
        )
        if cell is not None:
            try:
                cell.adopt(os_pid)
            except OSError:
                cell.remove()
                raise
        return cell

    def over_limit(self, child: Child, *, ended: bool = False) -> str:
        """Why ``child``'s job must fail for memory, or "".  With a cell the
        kernel enforces the limit on the whole tree, and its count of kills
        says whether it had to; without one, only the process's RSS is
        known (while it runs)."""
        if child.cell is not None:
            return memory_text(self._memory_mb) if child.cell.oom_kills() else ""
        if ended or self._memory_mb <= 0:
            return ""
        return over_memory_limit(child.os_pid, self._memory_mb)

    def kill_over_limit(self, children: Iterable[Child]) -> bool:
        """One look at the running jobs' memory: a job over the limit is
        killed (SIGKILL), with the reason its end reports.  True while
        some job runs (the sampler looks again)."""
        running = False
        for child in children:
            job = child.job
            if job is None or job._ended or child.code is not None:
                continue
            running = True
            reason = "" if job._reason else self.over_limit(child)
            if reason:
                job._reason = reason
                job._stopping = True
                child.send_signal(signal.SIGKILL)
        return running

    def release(self, child: Child, loop: asyncio.AbstractEventLoop) -> None:
        """``child`` left the pool: what its job left in its cell (a
        setsid'd grandchild, say) goes too; off the loop, as the removal
        waits for the killed to be gone."""
        if child.cell is not None:
            loop.run_in_executor(None, child.cell.remove)
            child.cell = None

    async def remove(self, loop: asyncio.AbstractEventLoop) -> None:
        """The pool is closed: its own cell goes, off the loop."""
        if self.pool_cell is not None:
            await loop.run_in_executor(None, self.pool_cell.remove)
            self.pool_cell = None
