"""Native and command agents as a worker of the scheduler.

A ``LocalWorker`` is registered in the core like any remote worker, with the
definition's slot cap, so local and remote workers of the same agent share
one scheduler and one queue.  It answers offers itself (always accepting:
the core already kept it within its slots) and runs each assigned job
through its runner: the native warm pool, or one process per job.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from livekit.protocol import agent, models

from edgedispatch.config.agents import AgentDefinition
from edgedispatch.runtime.native import JobInfo

if TYPE_CHECKING:
    from edgedispatch.dispatch.dispatcher import Dispatcher

log = logging.getLogger("edgedispatch.runtime")

TERMINATE_GRACE = 10.0


class RunningJob(Protocol):
    def terminate(self, grace: float = 10.0) -> None: ...

    def kill(self) -> None: ...


class JobRunner(Protocol):
    def run_job(
        self, info: JobInfo, on_exit: Callable[[int | None, str], None], *, max_duration: float = 0
    ) -> RunningJob: ...


class LocalWorker:
    """Implements ``dispatcher.WorkerLink`` for a native or command agent."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        definition: AgentDefinition,
        runner: JobRunner,
        api_key: str,
        url: str,
    ) -> None:
        self._d = dispatcher
        self.definition = definition
        self._runner = runner
        self.api_key = api_key
        self.tenant = definition.tenant
        self.url = url
        self.worker_id = ""
        self.peer = "local"
        self.version = "edgedispatch-local"
        self.reports_status = True
        self.permissions: models.ParticipantPermission | None = None
        self.running: dict[str, RunningJob] = {}
        self._loop = asyncio.get_running_loop()

    def register(self) -> None:
        req = agent.RegisterWorkerRequest(
            agent_name=self.definition.name, type=agent.JT_ROOM, version=self.version
        )
        self._d.register(self, req, slots=self.definition.slots)
        self._d.step()

    def send(self, msg: agent.ServerMessage) -> None:
        # Called while the dispatcher applies the core's actions: answer
        # once they are applied, never from inside that step.
        kind = msg.WhichOneof("message")
        if kind == "availability":
            self._d.after_step(self._accept, msg.availability.job.id)
        elif kind == "assignment":
            self._start(msg.assignment)
        elif kind == "termination":
            job = self.running.get(msg.termination.job_id)
            if job is not None:
                job.terminate(TERMINATE_GRACE)

    def _accept(self, job_id: str) -> None:
        answer = agent.AvailabilityResponse(
            job_id=job_id, available=True, participant_identity=f"agent-{job_id}"
        )
        self._d.availability(self, answer)

    def _start(self, assignment: agent.JobAssignment) -> None:
        job = assignment.job
        info = JobInfo(
            job_id=job.id,
            dispatch_id=job.dispatch_id,
            room=job.room.name,
            metadata=job.metadata,
            attributes=dict(job.attributes),
            agent_name=job.agent_name,
            url=assignment.url or self.url,
            token=assignment.token,
        )
        self.running[job.id] = self._runner.run_job(
            info,
            lambda code, error: self._exited(job.id, code, error),
            max_duration=self.definition.max_duration,
        )
        self._d.after_step(self._report, job.id, agent.JS_RUNNING, "")

    def _exited(self, job_id: str, code: int | None, error: str) -> None:
        self.running.pop(job_id, None)
        if code != 0:
            log.warning(
                "local job failed: %s", error, extra={"job": job_id, "agent": self.definition.name}
            )
        status = agent.JS_SUCCESS if code == 0 else agent.JS_FAILED
        self._loop.call_soon(self._report, job_id, status, error)

    def _report(self, job_id: str, status: int, error: str) -> None:
        msg = agent.UpdateJobStatus(job_id=job_id, status=status, error=error)  # type: ignore[arg-type]
        self._d.job_update(self, msg)

    def close(self) -> None:
        for job in list(self.running.values()):
            job.kill()
        if self.worker_id:
            self._d.worker_closed(self)
