"""Command agents: any program, started once per job, contained
(``runtime.contain``): in a cell of its own, with the definition's memory
and process limits on its whole tree, killed whole when the job ends.

Its environment carries the job: LIVEKIT_URL, LIVEKIT_TOKEN (the agent's room
token), LIVEKIT_ROOM, LIVEKIT_AGENT_NAME, EDGEDISPATCH_JOB_ID and
EDGEDISPATCH_JOB_METADATA, and nothing of the server's.  Exit code 0 is
success; anything else fails the job with the exit code or signal in its
error.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

from edgedispatch.config.agents import AgentDefinition
from edgedispatch.runtime.contain import Containment
from edgedispatch.runtime.native import JobInfo
from edgedispatch.runtime.process import (
    MEMORY_POLL,
    ChildProcess,
    exit_text,
    memory_text,
    over_memory_limit,
    too_long,
    wait_for_exits,
)

log = logging.getLogger("edgedispatch.agents")


class CommandJob:
    """One running command job (the runner's handle on it)."""

    def __init__(self, info: JobInfo, on_exit: Callable[[int | None, str], None]) -> None:
        self.job_id = info.job_id
        self.proc: ChildProcess | None = None
        self._on_exit = on_exit
        self._error = ""
        self._done = False
        self._terminate_grace: float | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0

    def terminate(self, grace: float = 10.0) -> None:
        if self.proc is None:
            self._terminate_grace = grace  # once it has started
        else:
            self.proc.terminate(grace)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()

    def fail(self, error: str) -> None:
        """Kill it, and report ``error`` as the reason it failed."""
        self._error = error
        self.kill()

    def started(self, proc: ChildProcess) -> None:
        self.proc = proc
        if self._terminate_grace is not None:
            proc.terminate(self._terminate_grace)

    def exited(self, code: int | None, error: str = "") -> None:
        if self._done:
            return
        self._done = True
        if code == 0 and not self._error:
            self._on_exit(0, "")
        elif self._error and code == 0:
            # Stopped for a limit (its tree's memory, its duration), it may
            # still have exited 0: a job stopped is never a success.
            self._on_exit(-signal.SIGKILL, self._error)
        else:
            self._on_exit(code, self._error or error or exit_text(code or 0))


class CommandRunner:
    def __init__(
        self,
        definition: AgentDefinition,
        on_output: Callable[[str, str], None],
        containment: Containment,
    ) -> None:
        self.definition = definition
        self._on_output = on_output
        self._contain = containment
        self._jobs: dict[str, CommandJob] = {}
        self._loop = asyncio.get_running_loop()
        self._poll: asyncio.TimerHandle | None = None

    def run_job(
        self, info: JobInfo, on_exit: Callable[[int | None, str], None], *, max_duration: float = 0
    ) -> CommandJob:
        job = CommandJob(info, on_exit)
        self._jobs[info.job_id] = job
        self._loop.create_task(self._start(job, info, max_duration))
        if self.definition.memory_limit_mb > 0 and self._poll is None:
            self._poll = self._loop.call_later(MEMORY_POLL, self._check_memory)
        return job

    async def _start(self, job: CommandJob, info: JobInfo, max_duration: float) -> None:
        d = self.definition
        env = dict(d.env)
        env.update(
            LIVEKIT_URL=info.url,
            LIVEKIT_TOKEN=info.token,
            LIVEKIT_ROOM=info.room,
            LIVEKIT_AGENT_NAME=info.agent_name,
            EDGEDISPATCH_JOB_ID=info.job_id,
            EDGEDISPATCH_JOB_METADATA=info.metadata,
        )

        def on_exit(code: int) -> None:
            self._jobs.pop(job.job_id, None)
            if job.proc is not None and job.proc.oom_killed() and not job._error:
                job._error = memory_text(d.memory_limit_mb)
            job.exited(code)

        try:
            proc = await self._contain.spawn(
                d.command,
                env,
                d.cwd,
                lambda line: self._on_output(job.job_id, line),
                on_exit,
                tenant=d.tenant,
                name=f"cmd-{d.name}-{info.job_id}",
                memory_mb=d.memory_limit_mb,
                max_procs=d.max_processes,
                read_only=d.bound()[0],
                read_write=d.bound()[1],
            )
        except OSError as exc:
            self._jobs.pop(job.job_id, None)
            job.exited(None, f"cannot start {d.command[0]!r}: {exc.strerror or exc}")
            return
        job.started(proc)
        if max_duration > 0:
            self._loop.call_later(max_duration, self._too_long, job, max_duration)

    def _too_long(self, job: CommandJob, limit: float) -> None:
        if job.proc is not None and job.proc.running:
            job._error = too_long(limit)
            job.terminate(5.0)

    def _check_memory(self) -> None:
        # With a cell the kernel enforces the limit on the whole tree; a
        # kill there fails the job (the rest of it may go on otherwise).
        # Without one, the main process's RSS is all that is checked.
        self._poll = None
        limit = self.definition.memory_limit_mb
        for job in list(self._jobs.values()):
            proc = job.proc
            if proc is None or not proc.running:
                continue
            if proc.cell is not None:
                reason = memory_text(limit) if proc.oom_killed() else ""
            else:
                reason = over_memory_limit(proc.pid, limit)
            if reason:
                job.fail(reason)
        if self._jobs:
            self._poll = self._loop.call_later(MEMORY_POLL, self._check_memory)

    async def close(self) -> None:
        had_jobs = bool(self._jobs)
        for job in list(self._jobs.values()):
            job.kill()
        if self._poll is not None:
            self._poll.cancel()
        if had_jobs:
            await wait_for_exits(lambda: not self._jobs)
