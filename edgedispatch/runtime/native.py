"""Native agent jobs: one OS process per job, from a warm pool.

A ``NativePool`` serves one agent definition.  ``start`` launches its zygote
(``edgedispatch.runtime.zygote``), which imports the agent's module once; the
pool keeps ``idle`` prewarmed children forked from it, so a job starts by
sending one message to a process that is already waiting (~1 ms).  Taken
children are replaced once the burst that took them has passed; a burst
beyond them waits for forks, which the pool then asks for at once.

This module is the asyncio shell.  What it decides with lives elsewhere:

- ``pool_states``: the states of the pool and of each child, and the only
  moves between them (read its theory of operation first);
- ``pool_policy``: when to fork, how to back off when children die, when a
  job gets another child (sans-IO: the loop's time is passed in);
- ``pool_conn``: the connections, and what each message means;
- ``pool_jobs``: a job given to the pool, a child, and how a job's end is
  reported;
- ``zygote_process``: starting, restarting and reaping the zygote process;
- ``pool_cells``: the containment (cells, sandbox) and the memory limit.

What is left here is the doing: sending, signalling, timers, and the memory
sampler.  Nothing blocks the event loop: the zygote is spawned in an
executor, every socket is an asyncio transport, signals go through pidfds (a
pidfd names one process, so a reused pid is never hit), and the memory
sampler reads ``/proc`` (no disk I/O).

Who knows what:

- the zygote reaps the children and reports each exit status (``Exited``);
- each child reports ``Ready``, ``Started`` and ``Done`` (its exit code and
  the entrypoint's traceback) on its control connection;
- each child's fds 1 and 2 are its output connection, cut into lines for
  ``on_output``.

If the zygote dies, a new one is started; the old one's children finish
their jobs, reported by their own ``Done`` (nobody reaps them for us now).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol

from edgedispatch.errors import ConfigError, Malformed
from edgedispatch.runtime import messages as m
from edgedispatch.runtime.contain import Containment
from edgedispatch.runtime.listener import UnixListener
from edgedispatch.runtime.messages import JobInfo
from edgedispatch.runtime.pool_cells import PoolCells
from edgedispatch.runtime.pool_conn import CHILD, PoolConn
from edgedispatch.runtime.pool_jobs import Child, OnExit, RunningJob, job_outcome
from edgedispatch.runtime.pool_policy import PoolPolicy
from edgedispatch.runtime.pool_states import ChildState, PoolState, move
from edgedispatch.runtime.process import (
    MEMORY_POLL,
    exit_text,
    proc_status,
    read_memory,
    too_long,
)
from edgedispatch.runtime.zygote_process import ZygoteProcess

__all__ = ["JobInfo", "NativePool", "RunningJob"]

log = logging.getLogger("edgedispatch.agents")

OnOutput = Callable[[str, str], None]

_EXIT_GRACE = 1.0  # how long a reaped child's output may still trail in
_RESTART_DELAY = 1.0  # before replacing a zygote that died

_RUNNING, _RESTARTING, _CLOSED = PoolState.RUNNING, PoolState.RESTARTING, PoolState.CLOSED
_FORKED, _CONNECTED, _READY = ChildState.FORKED, ChildState.CONNECTED, ChildState.READY


class _Decision(Protocol):
    """A ``PoolPolicy`` method that answers how many children to fork."""

    def __call__(self, now: float, *, ready: int, waiting: int, can_fork: bool) -> int: ...


class NativePool:
    """A warm pool of processes for one native agent definition.

    ``env`` is added to the server's environment for the zygote and its
    children.  ``on_output(job_id, line)`` gets every line the children
    write to stdout or stderr; lines written before a child has a job (by
    prewarm, or by the zygote while importing) carry job id "".
    """

    def __init__(
        self,
        name: str,
        entrypoint: str,
        prewarm: str | None = None,
        *,
        idle: int = 2,
        env: dict[str, str] | None = None,
        memory_limit_mb: float = 0,
        on_output: OnOutput | None = None,
        python: str = sys.executable,
        start_timeout: float = 60.0,
        containment: Containment | None = None,
        tenant: str = "",
        max_procs: int = 512,
        binds: tuple[list[str], list[str]] = ([], []),
        module_paths: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.entrypoint = entrypoint
        self.prewarm = prewarm
        self.idle = max(0, idle)
        self.env = dict(env or {})
        self.memory_limit_mb = memory_limit_mb
        self.on_output = on_output
        self.python = python
        self.start_timeout = start_timeout
        self.tenant = tenant
        self._fields: dict[str, object] = {"agent": name, "tenant": tenant}  # log lines' extra
        self._cells = PoolCells(
            containment,
            name=name,
            tenant=tenant,
            env=self.env,
            memory_mb=memory_limit_mb,
            max_procs=max_procs,
            idle=self.idle,
            binds=binds,
            module_paths=list(module_paths),
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._state = PoolState.NEW
        self._policy = PoolPolicy(self.idle)
        self._dir = ""
        self._path = ""
        self._listener: UnixListener | None = None
        self._zygote_proc: ZygoteProcess | None = None
        self._zygote: PoolConn | None = None
        self._conns: set[PoolConn] = set()
        self._children: dict[int, Child] = {}
        self._ready: deque[Child] = deque()
        self._waiting: deque[RunningJob] = deque()
        self._refill_timer: asyncio.TimerHandle | None = None
        self._refill_at: float | None = None  # the deadline it is armed for
        self._sampler: asyncio.TimerHandle | None = None
        self._restart: asyncio.Task[None] | None = None
        self._cleanup: weakref.finalize[[str, bool], NativePool] | None = None

    # -- the interface -----------------------------------------------------

    async def start(self) -> None:
        """Start the zygote and fill the pool in the background.  Raises
        ``ConfigError`` if the agent's module or functions are unusable."""
        if self._state is not PoolState.NEW:
            raise RuntimeError(f"native pool {self.name!r} was already started")
        self._loop = loop = asyncio.get_running_loop()
        # Short: a Unix socket path is limited to 108 bytes.
        self._dir = tempfile.mkdtemp(prefix="edn-", dir="/tmp" if os.path.isdir("/tmp") else None)
        self._path = os.path.join(self._dir, "s")
        # Removed by close(), or at exit if the pool is never closed.
        self._cleanup = weakref.finalize(self, shutil.rmtree, self._dir, True)
        where = f"native agent {self.name!r}"
        cmd = [self.python, "-m", "edgedispatch.runtime.zygote", self._path, self.entrypoint]
        if self.prewarm:
            cmd.append(self.prewarm)
        try:
            self._listener = UnixListener(loop, self._path, lambda: PoolConn(self), where)
            cmd, env = self._cells.zygote(cmd, self._dir, self._path)
            timeout = self.start_timeout
            self._zygote_proc = ZygoteProcess(loop, cmd, env, where, self.python, timeout)
            await self._spawn()
        except BaseException:
            await self.close()
            raise
        if self._state is _CLOSED:
            return  # close() was called while it started: it stays closed
        self._set_state(_RUNNING)
        self._refill()

    def ready(self) -> int:
        """Children prewarmed and waiting for a job now."""
        return len(self._ready)

    def run_job(
        self, job: JobInfo, on_exit: OnExit, *, max_duration: float = 0, grace: float = 10.0
    ) -> RunningJob:
        """Start ``job`` on a ready child, or on the next one to be ready.
        ``on_exit(code, error)`` is called once, on the loop: code 0 and
        error "" is success; code is the exit code, -N for signal N, or None
        when the job never ran or its exit status is unknown.  A job the
        pool stopped (``max_duration``, memory limit) is never a success: if
        it shut down cleanly on SIGTERM, its code is -15."""
        loop = self._loop
        if loop is None:
            raise RuntimeError(f"native pool {self.name!r} is not started")
        rj = RunningJob(self._stop_job, job, on_exit)
        if self._state is not _RUNNING and self._state is not _RESTARTING:
            loop.call_soon(rj._end, None, f"native pool {self.name!r} is {self._state.value}")
            return rj
        if max_duration > 0:
            reason = too_long(max_duration)
            rj._timers.append(loop.call_later(max_duration, self._expire, rj, reason, grace))
        child = self._take_ready()
        if child is not None:
            self._assign(rj, child)
            self._ask(self._policy.job_taken)
        else:
            self._waiting.append(rj)
            self._refill()
        return rj

    def unique_memory_kb(self) -> list[int]:
        """USS of each ready idle child, in kB."""
        out = []
        for child in self._ready:
            with contextlib.suppress(OSError):
                out.append(read_memory(child.os_pid).uss_kb)
        return out

    def pids(self) -> list[int]:
        """The zygote's pid (first, if running) and every child's, in the
        server's PID namespace."""
        zygote = self._zygote
        pid = zygote.os_pid if zygote is not None and zygote.os_pid else 0
        if not pid and self._zygote_proc is not None:
            pid = self._zygote_proc.pid
        return ([pid] if pid else []) + [c.os_pid for c in self._children.values()]

    async def close(self) -> None:
        """Kill the zygote and every child, and remove the socket."""
        if self._state is _CLOSED:
            return
        self._set_state(_CLOSED)  # from here no job starts, and _finalize ends none
        for handle in (self._refill_timer, self._sampler):
            if handle is not None:
                handle.cancel()
        self._refill_timer = self._refill_at = None
        children = list(self._children.values())
        for child in children:
            child.send_signal(signal.SIGKILL)
        ended = [c.job for c in children if c.job is not None] + list(self._waiting)
        self._waiting.clear()
        try:
            await self._stop_processes()
        finally:
            for child in [*children, *self._children.values()]:
                self._drop(child)
            for job in ended:
                job._end(None, f"native pool {self.name!r} was closed")
            if self._loop is not None:
                await self._cells.remove(self._loop)
            if self._cleanup is not None:
                self._cleanup()

    async def _stop_processes(self) -> None:
        if self._restart is not None:
            self._restart.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._restart
        if self._zygote_proc is not None:
            await self._zygote_proc.settle()
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
        # The zygote kills and reaps what is left when its connection closes.
        for conn in list(self._conns):
            conn.close()
        if self._zygote_proc is not None:
            self._zygote_proc.retire()
            await self._zygote_proc.reap()
        # Let the transports' close callbacks run (their sockets close there).
        await asyncio.sleep(0)

    def _set_state(self, state: PoolState) -> None:
        self._state = move(self._state, state, f"native pool {self.name!r}")

    # -- the zygote ----------------------------------------------------------

    async def _spawn(self) -> None:
        assert self._zygote_proc is not None
        threads = await self._zygote_proc.spawn(lambda: self._zygote is not None)
        if threads > 1:
            log.warning(
                "%s: importing %s started %d threads; forking it may deadlock children",
                f"native agent {self.name!r}",
                self.entrypoint,
                threads - 1,
                extra=self._fields,
            )

    def _on_zygote_lost(self) -> None:
        self._zygote = None
        assert self._zygote_proc is not None and self._loop is not None
        self._zygote_proc.lost()
        if self._state is not _RUNNING:
            return
        log.error("native agent %r: zygote exited; restarting it", self.name, extra=self._fields)
        self._set_state(_RESTARTING)
        self._policy.zygote_lost()
        for child in list(self._children.values()):
            child.orphan = True
            if child.state in (_CONNECTED, _READY) and child.ctl is not None:
                child.ctl.close()  # idle: from the dead zygote's image, retire it
            elif child.state is _FORKED and child.timer is None:
                child.timer = self._loop.call_later(_EXIT_GRACE, self._force_finalize, child)
            self._maybe_finalize(child)
        self._ready.clear()
        self._restart = self._loop.create_task(self._respawn())

    async def _respawn(self) -> None:
        assert self._zygote_proc is not None
        self._zygote_proc.retire()
        await asyncio.sleep(_RESTART_DELAY)
        await self._zygote_proc.reap()  # its connection closed: it is (about to be) dead
        try:
            await self._spawn()
        except ConfigError as exc:
            log.error("%s", exc, extra=self._fields)
            self._set_state(PoolState.BROKEN)
            self._fail_waiting(str(exc))
            return
        self._set_state(_RUNNING)
        self._restart = None
        self._refill()

    # -- connections (PoolConn's ConnOwner) ---------------------------------

    def accepting(self) -> bool:
        return self._state is not _CLOSED

    def conn_made(self, conn: PoolConn) -> None:
        self._conns.add(conn)

    def zygote_hello(self, conn: PoolConn) -> bool:
        if self._zygote is not None:
            return False
        self._zygote = conn
        return True

    def loaded(self, threads: int) -> None:
        if self._zygote_proc is not None:
            self._zygote_proc.loaded(threads)

    def load_failed(self, reason: str) -> None:
        if self._zygote_proc is not None:
            self._zygote_proc.load_failed(f"native agent {self.name!r}: {reason}")

    def forked(self, pid: int) -> None:
        if pid not in self._children:
            self._children[pid] = Child(pid, orphan=False)

    def fork_failed(self, error: str) -> None:
        self._child_failed(f"fork failed: {error}")

    def child_hello(self, conn: PoolConn) -> None:
        # A child's first word may come on any of three connections (its
        # two, and the zygote's Forked), in any order.
        os_pid = conn.os_pid or conn.pid
        child = self._children.get(conn.pid)
        if child is None:
            zygote = self._zygote.os_pid if self._zygote is not None else 0
            # (proc_status is 0 for a process that is gone: an orphan too.)
            child = Child(conn.pid, orphan=proc_status(os_pid, "PPid") != (zygote or -1))
            self._children[conn.pid] = child
        if child.os_pid != os_pid:
            if child.state is not _FORKED or child.ctl is not None or child.out is not None:
                raise Malformed(f"pid {conn.pid} is another process than before")
            child.os_pid = os_pid
        if conn.role == CHILD:
            if child.state is not _FORKED:
                raise Malformed("a second control connection")
            child.ctl = conn
            child.to(_CONNECTED)
            self._cells.contain(child, conn)
        else:
            if child.out is not None:
                raise Malformed("a second output connection")
            child.out = conn
        child.open_pidfd()

    def child_ready(self, pid: int) -> None:
        child = self._children.get(pid)
        if child is None:
            return
        if child.state is not _CONNECTED:
            raise Malformed(f"Ready while {child.state.value}")
        if child.orphan or self._state is not _RUNNING:
            if child.ctl is not None:
                child.ctl.close()  # retired: it exits without a job
            return
        child.to(_READY)
        self._policy.child_ready()
        if self._waiting:
            self._assign(self._waiting.popleft(), child)
        else:
            self._ready.append(child)
        self._refill()

    def job_started(self, pid: int) -> None:
        child = self._children.get(pid)
        if child is not None and child.job is not None:
            child.job._started = True

    def prewarm_failed(self, pid: int, error: str) -> None:
        child = self._children.get(pid)
        if child is not None:
            child.error = error

    def job_done(self, pid: int, done: m.Done) -> None:
        child = self._children.get(pid)
        if child is not None:
            child.done = done

    def exited(self, pid: int, code: int) -> None:
        child = self._children.get(pid)
        if child is None:
            return
        child.code = code
        with contextlib.suppress(ValueError):
            self._ready.remove(child)
        self._maybe_finalize(child)
        if child.pid in self._children and self._loop is not None:
            child.timer = self._loop.call_later(_EXIT_GRACE, self._force_finalize, child)
        self._refill()

    def conn_lost(self, conn: PoolConn) -> None:
        self._conns.discard(conn)
        if conn is self._zygote:
            self._on_zygote_lost()
            return
        child = self._children.get(conn.pid)
        if child is None:
            return
        if conn is child.ctl:
            child.ctl = None
            with contextlib.suppress(ValueError):
                self._ready.remove(child)
        elif conn is child.out:
            child.out = None
        self._maybe_finalize(child)

    def output(self, conn: PoolConn, lines: list[str]) -> None:
        child = self._children.get(conn.pid)
        job_id = child.job.job_id if child is not None and child.job is not None else ""
        for line in lines:
            self._emit(job_id, line)

    # -- the end of a child ----------------------------------------------------

    def _maybe_finalize(self, child: Child) -> None:
        if child.settled():
            self._finalize(child)

    def _force_finalize(self, child: Child) -> None:
        # A grandchild holds the output open: the job is over regardless.
        for conn in (child.ctl, child.out):
            if conn is not None:
                conn.close()
        child.ctl = child.out = None
        self._finalize(child)

    def _finalize(self, child: Child) -> None:
        if self._children.get(child.pid) is not child:
            return
        got_to = child.state
        child.to(ChildState.FINALIZED)
        over = self._cells.over_limit(child, ended=True)  # before its cell goes
        self._drop(child)
        if got_to in (_FORKED, _CONNECTED) and not child.orphan and self._state is _RUNNING:
            # Counted here, not on Exited: its traceback may come after.
            why = child.error or exit_text(child.code or 0)
            self._child_failed(f"a pool process failed before it was ready: {why}")
            self._refill()
        job = child.job
        if job is None or job._ended or self._state is _CLOSED:
            return  # (close() ends its jobs itself)
        job._child = None
        job._reason = job._reason or over
        if self._policy.retry_job(job._attempts, started=job._started, stopping=job._stopping):
            job._attempts += 1
            job.pid = 0
            self._waiting.appendleft(job)
            self._refill()
            return
        job._end(*job_outcome(job._reason, child.code, child.done))

    def _drop(self, child: Child) -> None:
        self._children.pop(child.pid, None)
        child.release()
        if self._loop is not None:
            self._cells.release(child, self._loop)

    def _child_failed(self, error: str) -> None:
        give_up = self._policy.child_failed()
        log.error("native agent %r: %s", self.name, error, extra=self._fields)
        if give_up:
            self._fail_waiting(f"pool processes fail before taking a job: {error}")

    # -- jobs ------------------------------------------------------------------

    def _take_ready(self) -> Child | None:
        while self._ready:
            child = self._ready.popleft()
            if child.ctl is not None and child.code is None:
                return child
        return None

    def _assign(self, job: RunningJob, child: Child) -> None:
        assert child.ctl is not None
        child.to(ChildState.BUSY)
        child.job = job
        job._child = child
        job.pid = child.pid
        child.ctl.send(m.Job(info=job.info))
        if self.memory_limit_mb > 0 and self._sampler is None and self._loop is not None:
            self._sampler = self._loop.call_later(MEMORY_POLL, self._sample)

    def _fail_waiting(self, error: str) -> None:
        while self._waiting:
            self._waiting.popleft()._end(None, error)

    def _stop_job(self, job: RunningJob, sig: int, grace: float) -> None:
        if job._ended:
            return
        child = job._child
        if child is None:
            try:
                self._waiting.remove(job)
            except ValueError:
                return  # its end is already on the way
            job._stopping = True
            assert self._loop is not None
            # Not from inside terminate(): the caller gets on_exit after.
            self._loop.call_soon(job._end, None, job._reason or "stopped before it started")
            return
        job._stopping = True
        child.send_signal(sig)
        if sig == signal.SIGTERM and self._loop is not None:
            job._timers.append(self._loop.call_later(grace, job.kill))

    def _expire(self, job: RunningJob, reason: str, grace: float) -> None:
        job._reason = job._reason or reason
        job.terminate(grace)

    def _sample(self) -> None:
        self._sampler = None
        running = self._cells.kill_over_limit(self._children.values())
        if running and self._state is not _CLOSED and self._loop is not None:
            self._sampler = self._loop.call_later(MEMORY_POLL, self._sample)

    # -- refill: the policy's decisions, carried out ---------------------------

    def _refill(self) -> None:
        self._ask(self._policy.refill)

    def _ask(self, decide: _Decision) -> None:
        assert self._loop is not None
        forks = decide(
            self._loop.time(),
            ready=len(self._ready),
            waiting=len(self._waiting),
            can_fork=self._state is _RUNNING and self._zygote is not None,
        )
        if forks and self._zygote is not None:
            self._zygote.send(m.Fork(n=forks))
        deadline = self._policy.next_deadline()
        if deadline == self._refill_at or self._state is _CLOSED:
            return
        if self._refill_timer is not None:
            self._refill_timer.cancel()
        self._refill_timer, self._refill_at = None, deadline
        if deadline is not None:
            self._refill_timer = self._loop.call_at(deadline, self._on_refill_timer)

    def _on_refill_timer(self) -> None:
        self._refill_timer = self._refill_at = None
        self._ask(self._policy.on_timer)

    # -- output ------------------------------------------------------------------

    def _emit(self, job_id: str, line: str) -> None:
        if self.on_output is None:
            log.info("[%s %s] %s", self.name, job_id, line, extra={**self._fields, "job": job_id})
            return
        try:
            self.on_output(job_id, line)
        except Exception:
            log.exception("on_output of native agent %r failed", self.name, extra=self._fields)
