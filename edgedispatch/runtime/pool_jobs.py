"""What a native pool keeps track of: each job it was given
(``RunningJob``, the handle its caller holds) and each process it forked
(``Child``), and what a job's end is reported as (``job_outcome``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable

from edgedispatch.runtime import messages as m
from edgedispatch.runtime import pool_states
from edgedispatch.runtime.cgroups import Cell
from edgedispatch.runtime.messages import JobInfo
from edgedispatch.runtime.pool_conn import PoolConn
from edgedispatch.runtime.pool_states import ChildState
from edgedispatch.runtime.process import exit_text

log = logging.getLogger("edgedispatch.agents")

OnExit = Callable[[int | None, str], None]
#: How a job asks its pool to stop it: (job, signal, grace before SIGKILL).
StopJob = Callable[["RunningJob", int, float], None]


class RunningJob:
    """A job given to the pool.  ``pid`` is 0 until a child takes it."""

    def __init__(self, stop: StopJob, info: JobInfo, on_exit: OnExit) -> None:
        self.pid = 0
        self.job_id = info.job_id
        self.info = info
        self._stop = stop
        self._on_exit = on_exit
        self._child: Child | None = None
        self._ended = False
        self._stopping = False  # terminate/kill/limit asked: no retry elsewhere
        self._started = False
        self._attempts = 0  # children it lost before it started
        self._reason = ""  # why the pool stopped it; becomes the error
        self._timers: list[asyncio.TimerHandle] = []

    def terminate(self, grace: float = 10.0) -> None:
        """SIGTERM (the job shuts down), then SIGKILL after ``grace`` s."""
        self._stop(self, signal.SIGTERM, grace)

    def kill(self) -> None:
        self._stop(self, signal.SIGKILL, 0)

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


class Child:
    """One pool process, from the first word of it to its finalization
    (its states: ``pool_states``)."""

    def __init__(self, pid: int, orphan: bool) -> None:
        self.pid = pid  # as its zygote and itself say (the key: their namespace's)
        #: Its pid in the server's namespace, from its connection (the
        #: kernel's word); ``pid`` until it connects.
        self.os_pid = pid
        self.cell: Cell | None = None  # its cgroup, once it is in it
        self.state = ChildState.FORKED
        # Its zygote is not the current one: nobody will report its exit.
        self.orphan = orphan
        self.ctl: PoolConn | None = None
        self.out: PoolConn | None = None
        self.pidfd = -1
        self.job: RunningJob | None = None
        self.error = ""  # prewarm's traceback
        self.done: m.Done | None = None
        self.code: int | None = None  # from the zygote's Exited
        self.timer: asyncio.TimerHandle | None = None  # the exit grace

    def to(self, state: ChildState) -> None:
        self.state = pool_states.move(self.state, state, f"native pool child {self.pid}")

    def settled(self) -> bool:
        return pool_states.settled(
            self.state,
            exit_known=self.code is not None or self.orphan,
            connections_open=self.ctl is not None or self.out is not None,
        )

    def open_pidfd(self) -> None:
        if self.pidfd < 0:
            with contextlib.suppress(OSError):
                self.pidfd = os.pidfd_open(self.os_pid)

    def send_signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            if self.pidfd >= 0:
                signal.pidfd_send_signal(self.pidfd, sig)
            elif self.code is None and self.ctl is not None:
                # No pidfd (out of fds?): its open connection says it is
                # alive, so the pid is still its own.
                os.kill(self.os_pid, sig)

    def release(self) -> None:
        """It left the pool: no grace timer, no pidfd."""
        if self.timer is not None:
            self.timer.cancel()
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1


def job_outcome(reason: str, code: int | None, done: m.Done | None) -> tuple[int | None, str]:
    """What a job's ``on_exit`` is told, from why the pool stopped it (or
    ""), its child's exit status (None if unknown) and its ``Done``."""
    if code is None and done is not None:
        code = done.code
    if reason:
        # Stopped by the pool: a failure even if it shut down cleanly.
        return (-signal.SIGTERM if code == 0 else code), reason
    if code is None:
        return None, "exit status unknown: the pool's zygote died"
    if code == 0:
        return 0, ""
    if done is not None and done.error and code == done.code:
        return code, done.error
    return code, exit_text(code)
