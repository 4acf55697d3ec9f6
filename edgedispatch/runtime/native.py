"""Native agent jobs: one OS process per job, from a warm pool.

A ``NativePool`` serves one agent definition.  ``start`` launches its zygote
(``edgedispatch.runtime.zygote``), which imports the agent's module once; the
pool keeps ``idle`` prewarmed children forked from it, so a job starts by
sending one message to a process that is already waiting (~1 ms).  Taken
children are replaced once the burst that took them has passed; a burst
beyond them waits for forks, which the pool then asks for at once.

Nothing here blocks the event loop: the zygote is spawned in an executor,
every socket is an asyncio transport, signals go through pidfds (a pidfd
names one process, so a reused pid is never hit), and the memory sampler
reads ``/proc`` (no disk I/O).

Who knows what:

- the zygote reaps the children and reports each exit status (``Exited``);
- each child reports ``Ready``, ``Started`` and ``Done`` (its exit code and
  the entrypoint's traceback) on its control connection;
- each child's fds 1 and 2 are its output connection, cut into lines for
  ``on_output``.

These arrive on different sockets, in any order.  A child is finalized once
it is reaped and both its connections are read to the end (so its last
output line and its traceback come before ``on_exit``), or ``_EXIT_GRACE``
after the reaping if a grandchild keeps its output open.

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
import subprocess
import sys
import tempfile
import weakref
from collections import deque
from collections.abc import Callable

from edgedispatch.errors import ConfigError
from edgedispatch.runtime import messages as m
from edgedispatch.runtime.listener import UnixListener
from edgedispatch.runtime.messages import JobInfo
from edgedispatch.runtime.pool_conn import PoolConn
from edgedispatch.runtime.process import (
    MEMORY_POLL,
    exit_text,
    over_memory_limit,
    proc_status,
    read_memory,
    too_long,
)

__all__ = ["JobInfo", "NativePool", "RunningJob"]

log = logging.getLogger("edgedispatch.runtime")

OnExit = Callable[[int | None, str], None]
OnOutput = Callable[[str, str], None]

_EXIT_GRACE = 1.0  # how long a reaped child's output may still trail in
_MAX_ATTEMPTS = 3  # children a job may lose before it started (see _finalize)
_RESTART_DELAY = 1.0  # before replacing a zygote that died
# Taken children are replaced once no job has been taken for this long (a
# fork and a child's start-up take milliseconds of CPU: not during a burst),
# or at once when fewer than a quarter of the pool (or 2) are left ready.
_REFILL_QUIET = 0.05


class RunningJob:
    """A job given to the pool.  ``pid`` is 0 until a child takes it."""

    def __init__(self, pool: NativePool, info: JobInfo, on_exit: OnExit) -> None:
        self.pid = 0
        self.job_id = info.job_id
        self.info = info
        self._pool = pool
        self._on_exit = on_exit
        self._child: _Child | None = None
        self._ended = False
        self._stopping = False  # terminate/kill/limit asked: no retry elsewhere
        self._started = False
        self._attempts = 0
        self._reason = ""  # why the pool stopped it; becomes the error
        self._timers: list[asyncio.TimerHandle] = []

    def terminate(self, grace: float = 10.0) -> None:
        """SIGTERM (the job shuts down), then SIGKILL after ``grace`` s."""
        self._pool._stop_job(self, signal.SIGTERM, grace)

    def kill(self) -> None:
        self._pool._stop_job(self, signal.SIGKILL, 0)

    def _end(self, code: int | None, error: str) -> None:
        if self._ended:
            return
        self._ended = True
        for timer in self._timers:
            timer.cancel()
        try:
            self._on_exit(code, error)
        except Exception:
            log.exception("on_exit of native job %s failed", self.job_id)

    def __repr__(self) -> str:
        return f"RunningJob({self.job_id!r}, pid={self.pid})"


class _Child:
    """One pool process, from its fork to its finalization."""

    def __init__(self, pid: int, orphan: bool) -> None:
        self.pid = pid
        # Not from the current zygote: nobody will report its exit status.
        self.orphan = orphan
        self.ctl: PoolConn | None = None
        self.out: PoolConn | None = None
        self.pidfd = -1
        self.connected = False  # its control connection said Hello
        self.ready = False  # said Ready at least once
        self.job: RunningJob | None = None
        self.error = ""  # prewarm's traceback
        self.done: m.Done | None = None
        self.code: int | None = None  # from the zygote's Exited
        self.timer: asyncio.TimerHandle | None = None


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
        self._loop: asyncio.AbstractEventLoop | None = None
        self._state = "new"  # new, running, restarting, broken, closed
        self._dir = ""
        self._path = ""
        self._listener: UnixListener | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._popen: asyncio.Future[subprocess.Popen[bytes]] | None = None
        self._zygote: PoolConn | None = None
        self._loaded: asyncio.Future[int] | None = None
        self._conns: set[PoolConn] = set()
        self._children: dict[int, _Child] = {}
        self._ready: deque[_Child] = deque()
        self._waiting: deque[RunningJob] = deque()
        self._pending = 0  # forks asked for whose child is not ready or dead yet
        self._failures = 0  # children in a row that died before Ready
        self._last_take = 0.0  # when a job last took a ready child (loop time)
        self._refill_timer: asyncio.TimerHandle | None = None
        self._sampler: asyncio.TimerHandle | None = None
        self._restart: asyncio.Task[None] | None = None
        self._old_procs: list[subprocess.Popen[bytes]] = []
        self._cleanup: weakref.finalize[[str, bool], NativePool] | None = None

    # -- the interface -----------------------------------------------------

    async def start(self) -> None:
        """Start the zygote and fill the pool in the background.  Raises
        ``ConfigError`` if the agent's module or functions are unusable."""
        if self._state != "new":
            raise RuntimeError(f"native pool {self.name!r} was already started")
        self._loop = asyncio.get_running_loop()
        # Short: a Unix socket path is limited to 108 bytes.
        self._dir = tempfile.mkdtemp(prefix="edn-", dir="/tmp" if os.path.isdir("/tmp") else None)
        self._path = os.path.join(self._dir, "s")
        # Removed by close(), or at exit if the pool is never closed.
        self._cleanup = weakref.finalize(self, shutil.rmtree, self._dir, True)
        try:
            self._listener = UnixListener(
                self._loop, self._path, lambda: PoolConn(self), f"native agent {self.name!r}"
            )
            await self._spawn()
        except BaseException:
            await self.close()
            raise
        self._state = "running"
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
        rj = RunningJob(self, job, on_exit)
        if self._state not in ("running", "restarting"):
            loop.call_soon(rj._end, None, f"native pool {self.name!r} is {self._state}")
            return rj
        if max_duration > 0:
            reason = too_long(max_duration)
            rj._timers.append(loop.call_later(max_duration, self._expire, rj, reason, grace))
        child = self._take_ready()
        if child is not None:
            self._assign(rj, child)
            self._last_take = loop.time()
            self._refill_soon()
        else:
            self._waiting.append(rj)
            self._refill()
        return rj

    def unique_memory_kb(self) -> list[int]:
        """USS of each ready idle child, in kB."""
        out = []
        for child in self._ready:
            with contextlib.suppress(OSError):
                out.append(read_memory(child.pid).uss_kb)
        return out

    def pids(self) -> list[int]:
        """The zygote's pid (first, if running) and every child's."""
        head = [self._proc.pid] if self._proc is not None else []
        return head + list(self._children)

    async def close(self) -> None:
        """Kill the zygote and every child, and remove the socket."""
        if self._state == "closed":
            return
        self._state = "closed"  # from here no job starts, and _finalize ends none
        for handle in (self._refill_timer, self._sampler):
            if handle is not None:
                handle.cancel()
        children = list(self._children.values())
        for child in children:
            self._signal(child, signal.SIGKILL)
        ended = [c.job for c in children if c.job is not None] + list(self._waiting)
        self._waiting.clear()
        try:
            await self._stop_processes()
        finally:
            for child in [*children, *self._children.values()]:
                self._drop(child)
            for job in ended:
                job._end(None, f"native pool {self.name!r} was closed")
            if self._cleanup is not None:
                self._cleanup()

    async def _stop_processes(self) -> None:
        if self._restart is not None:
            self._restart.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._restart
        if self._popen is not None:
            with contextlib.suppress(OSError):
                proc = await self._popen
                if proc is not self._proc:
                    self._old_procs.append(proc)
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
        # The zygote kills and reaps what is left when its connection closes.
        for conn in list(self._conns):
            conn.close()
        procs = self._old_procs + ([self._proc] if self._proc is not None else [])
        self._old_procs, self._proc = [], None
        for proc in procs:
            await _wait_exit(proc)
        # Let the transports' close callbacks run (their sockets close there).
        await asyncio.sleep(0)

    # -- the zygote ----------------------------------------------------------

    async def _spawn(self) -> None:
        loop = self._loop
        assert loop is not None
        cmd = [self.python, "-m", "edgedispatch.runtime.zygote", self._path, self.entrypoint]
        if self.prewarm:
            cmd.append(self.prewarm)
        where = f"native agent {self.name!r}"
        self._loaded = loaded = loop.create_future()
        # Popen forks and waits for the exec: off the loop.  Shielded, so that
        # close() during a restart still learns of the process, to reap it.
        self._popen = loop.run_in_executor(None, _popen, cmd, {**os.environ, **self.env})
        try:
            proc = await asyncio.shield(self._popen)
        except OSError as exc:
            raise ConfigError(f"{where}: cannot run {self.python}: {exc}") from None
        self._proc = proc
        deadline = loop.time() + self.start_timeout
        exited_at = 0.0
        try:
            while not loaded.done():
                await asyncio.wait([loaded], timeout=0.05)
                now = loop.time()
                if loaded.done():
                    break
                if self._zygote is None and proc.poll() is not None:
                    # Give its last connection a moment to be accepted and read.
                    exited_at = exited_at or now
                    if now - exited_at > 0.5:
                        raise ConfigError(
                            f"{where}: the zygote exited with code {proc.returncode} "
                            "before loading the agent (see the server's stderr)"
                        )
                if now > deadline:
                    raise ConfigError(
                        f"{where}: the agent did not load in {self.start_timeout:g} s"
                    )
            threads = loaded.result()
        finally:
            self._loaded = None
            loaded.cancel()
        if threads > 1:
            log.warning(
                "%s: importing %s started %d threads; forking it may deadlock children",
                where,
                self.entrypoint,
                threads - 1,
            )

    def _on_zygote_lost(self) -> None:
        self._zygote = None
        where = f"native agent {self.name!r}"
        if self._loaded is not None and not self._loaded.done():
            self._loaded.set_exception(ConfigError(f"{where}: the zygote exited while loading"))
        if self._state != "running":
            return
        log.error("%s: the zygote exited; restarting it", where)
        self._state = "restarting"
        self._pending = 0
        assert self._loop is not None
        for child in list(self._children.values()):
            child.orphan = True
            if child.ctl is not None and child.job is None:
                child.ctl.close()  # idle: from the dead zygote's image, retire it
            elif not child.connected and child.timer is None:
                child.timer = self._loop.call_later(_EXIT_GRACE, self._force_finalize, child)
            self._maybe_finalize(child)
        self._ready.clear()
        self._restart = self._loop.create_task(self._respawn())

    async def _respawn(self) -> None:
        if self._proc is not None:
            self._old_procs.append(self._proc)
            self._proc = None
        await asyncio.sleep(_RESTART_DELAY)
        for proc in self._old_procs:
            await _wait_exit(proc)  # its connection closed: it is (about to be) dead
        self._old_procs.clear()
        try:
            await self._spawn()
        except ConfigError as exc:
            log.error("%s", exc)
            self._state = "broken"
            self._fail_waiting(str(exc))
            return
        self._state = "running"
        self._restart = None
        self._refill()

    # -- children --------------------------------------------------------------

    # -- connections (PoolConn's ConnOwner) ---------------------------------

    def conn_made(self, conn: PoolConn) -> bool:
        if self._state == "closed":
            return False  # accepted just before the pool closed
        self._conns.add(conn)
        return True

    def hello(self, conn: PoolConn) -> None:
        if self._state == "closed":
            conn.close()
            return
        if conn.role == "zygote":
            if self._zygote is not None:
                conn.close()
            else:
                self._zygote = conn
            return
        if conn.role == "zygote-output":
            return
        # The first message from a child may come on any of three
        # connections, in any order.
        child = self._children.get(conn.pid)
        if child is None:
            zygote = self._proc.pid if self._zygote is not None and self._proc else -1
            child = _Child(conn.pid, orphan=proc_status(conn.pid, "PPid") != zygote)
            self._children[conn.pid] = child
        if conn.role == "child":
            child.ctl = conn
            child.connected = True
        else:
            child.out = conn
        if child.pidfd < 0:
            with contextlib.suppress(OSError):
                child.pidfd = os.pidfd_open(conn.pid)

    def message(self, conn: PoolConn, msg: m.Message) -> None:
        if conn.role == "zygote":
            if isinstance(msg, m.Forked):
                self._children.setdefault(msg.pid, _Child(msg.pid, orphan=False))
            elif isinstance(msg, m.Exited):
                self._on_exited(msg.pid, msg.code)
            elif isinstance(msg, m.ForkFailed):
                self._pending = max(0, self._pending - 1)
                self._child_failed(f"fork failed: {msg.error}")
            elif self._loaded is not None and not self._loaded.done():
                if isinstance(msg, m.Loaded):
                    self._loaded.set_result(msg.threads)
                elif isinstance(msg, m.LoadFailed):
                    error = ConfigError(f"native agent {self.name!r}: {msg.reason}")
                    self._loaded.set_exception(error)
            return
        child = self._children.get(conn.pid)
        if child is None:
            return
        if isinstance(msg, m.Ready):
            self._on_ready(child)
        elif isinstance(msg, m.Started) and child.job is not None:
            child.job._started = True
        elif isinstance(msg, m.Failed):
            child.error = msg.error
        elif isinstance(msg, m.Done):
            child.done = msg

    def _on_ready(self, child: _Child) -> None:
        if child.orphan or self._state != "running":
            if child.ctl is not None:
                child.ctl.close()
            return
        child.ready = True
        self._pending = max(0, self._pending - 1)
        self._failures = 0
        if self._waiting:
            self._assign(self._waiting.popleft(), child)
        else:
            self._ready.append(child)
        self._refill()

    def _on_exited(self, pid: int, code: int) -> None:
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

    def _child_failed(self, error: str) -> None:
        self._failures += 1
        log.error("native agent %r: %s", self.name, error)
        # A prewarm that always fails must not keep jobs waiting forever.
        if self._failures >= _MAX_ATTEMPTS:
            self._fail_waiting(f"pool processes fail before taking a job: {error}")

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

    def _maybe_finalize(self, child: _Child) -> None:
        # Done once it is reaped (or nobody will say so) and its connections
        # are read to the end.  One never seen to connect may still have its
        # connection in the accept queue: the Exited timer decides.
        if (child.code is not None or child.orphan) and child.ctl is None and child.out is None:
            if child.connected:
                self._finalize(child)

    def _force_finalize(self, child: _Child) -> None:
        # A grandchild holds the output open: the job is over regardless.
        for conn in (child.ctl, child.out):
            if conn is not None:
                conn.close()
        child.ctl = child.out = None
        self._finalize(child)

    def _finalize(self, child: _Child) -> None:
        if self._children.get(child.pid) is not child:
            return
        self._drop(child)
        if not child.ready and not child.orphan and self._state == "running":
            # Counted here, not on Exited: its traceback may come after.
            self._pending = max(0, self._pending - 1)
            why = child.error or exit_text(child.code or 0)
            self._child_failed(f"a pool process failed before it was ready: {why}")
            self._refill()
        job = child.job
        if job is None or job._ended or self._state == "closed":
            return  # (close() ends its jobs itself)
        job._child = None
        code, done = child.code, child.done
        if code is None and done is not None:
            code = done.code
        if not job._started and not job._stopping and job._attempts < _MAX_ATTEMPTS:
            # Its child died between Ready and the job (the OOM killer took
            # an idle process, say): the job never ran, give it another.
            job._attempts += 1
            job.pid = 0
            self._waiting.appendleft(job)
            self._refill()
            return
        if job._reason:
            # Stopped by the pool: a failure even if it shut down cleanly.
            error = job._reason
            code = -signal.SIGTERM if code == 0 else code
        elif code is None:
            error = "exit status unknown: the pool's zygote died"
        elif code == 0:
            error = ""
        elif done is not None and done.error and code == done.code:
            error = done.error
        else:
            error = exit_text(code)
        job._end(code, error)

    def _drop(self, child: _Child) -> None:
        self._children.pop(child.pid, None)
        if child.timer is not None:
            child.timer.cancel()
        if child.pidfd >= 0:
            os.close(child.pidfd)
            child.pidfd = -1

    # -- jobs ------------------------------------------------------------------

    def _take_ready(self) -> _Child | None:
        while self._ready:
            child = self._ready.popleft()
            if child.ctl is not None and child.code is None:
                return child
        return None

    def _assign(self, job: RunningJob, child: _Child) -> None:
        assert child.ctl is not None
        child.job = job
        job._child = child
        job.pid = child.pid
        child.ctl.send(m.Job(info=job.info))
        if self.memory_limit_mb > 0 and self._sampler is None and self._loop is not None:
            self._sampler = self._loop.call_later(MEMORY_POLL, self._sample)

    def _refill(self, *, now: bool = False) -> None:
        if self._state != "running" or self._zygote is None:
            return
        if self._refill_timer is not None and not now:
            return
        want = self.idle + len(self._waiting) - len(self._ready) - self._pending
        if want <= 0:
            return
        if self._failures and not now and self._loop is not None:
            # Children keep dying before Ready: back off instead of spinning.
            delay = min(0.1 * 2 ** (self._failures - 1), 5.0)
            self._refill_timer = self._loop.call_later(delay, self._refill_later)
            return
        self._pending += want
        self._zygote.send(m.Fork(n=want))

    def _refill_soon(self) -> None:
        low = len(self._ready) < max(2, self.idle // 4)
        if low and self._refill_timer is not None and not self._failures:
            self._refill_timer.cancel()  # a quiet wait: no longer
            self._refill_timer = None
        if low:
            self._refill()
        elif self._refill_timer is None and self._loop is not None:
            self._refill_timer = self._loop.call_later(_REFILL_QUIET, self._refill_later)

    def _refill_later(self) -> None:
        self._refill_timer = None
        assert self._loop is not None
        quiet = self._loop.time() - self._last_take
        if quiet < _REFILL_QUIET and not self._waiting and not self._failures:
            # Still in a burst.
            self._refill_timer = self._loop.call_later(_REFILL_QUIET - quiet, self._refill_later)
            return
        self._refill(now=True)

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
        self._signal(child, sig)
        if sig == signal.SIGTERM and self._loop is not None:
            job._timers.append(self._loop.call_later(grace, job.kill))

    def _expire(self, job: RunningJob, reason: str, grace: float) -> None:
        job._reason = job._reason or reason
        job.terminate(grace)

    def _signal(self, child: _Child, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            if child.pidfd >= 0:
                signal.pidfd_send_signal(child.pidfd, sig)
            elif child.code is None and child.ctl is not None:
                # No pidfd (out of fds?): its open connection says it is
                # alive, so the pid is still its own.
                os.kill(child.pid, sig)

    def _sample(self) -> None:
        self._sampler = None
        running = False
        for child in self._children.values():
            job = child.job
            if job is None or job._ended or child.code is not None:
                continue
            running = True
            reason = "" if job._reason else over_memory_limit(child.pid, self.memory_limit_mb)
            if reason:
                job._reason = reason
                job._stopping = True
                self._signal(child, signal.SIGKILL)
        if running and self._state != "closed" and self._loop is not None:
            self._sampler = self._loop.call_later(MEMORY_POLL, self._sample)

    # -- output ------------------------------------------------------------------

    def output(self, conn: PoolConn, lines: list[str]) -> None:
        child = self._children.get(conn.pid)
        for line in lines:
            self._emit(child, line)

    def _emit(self, child: _Child | None, line: str) -> None:
        job_id = child.job.job_id if child is not None and child.job is not None else ""
        if self.on_output is None:
            log.info("[%s %s] %s", self.name, job_id, line)
            return
        try:
            self.on_output(job_id, line)
        except Exception:
            log.exception("on_output of native agent %r failed", self.name)


def _popen(cmd: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    # A new session keeps the terminal's Ctrl-C away from the pool: the
    # server decides when jobs stop.
    return subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, start_new_session=True)


async def _wait_exit(proc: subprocess.Popen[bytes]) -> None:
    # Popen.wait blocks: in an executor.  The zygote exits promptly once its
    # connection closes; SIGKILL if it does not.
    loop = asyncio.get_running_loop()
    try:
        await loop.run_in_executor(None, proc.wait, 5.0)
    except subprocess.TimeoutExpired:
        proc.kill()
        await loop.run_in_executor(None, proc.wait)
