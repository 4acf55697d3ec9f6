"""Native and command agents as workers of the scheduler.

A ``LocalWorker`` is registered in the core like any remote worker, with the
definition's slot cap, so local and remote workers of the same agent share
one scheduler and one queue.  It is the domain's ``WorkerLink`` for the
agent, with no protocol in between: it answers offers itself (always
accepting: the core already kept it within its slots) and runs each
assigned job through its runner (the native warm pool, or one process per
job).  Everything it tells the domain goes in after the step that asked
(``Domain.after_step``), never from inside a hook.
"""

from __future__ import annotations

import logging

from edgedispatch._core.codes import FailReason, JobStatus
from edgedispatch.config.agents import AgentDefinition
from edgedispatch.dispatch.domain import Domain
from edgedispatch.dispatch.records import Acceptance, JobRec, RoomRec, job_fields
from edgedispatch.dispatch.specs import JT_ROOM, WorkerSpec
from edgedispatch.wire import tokens
from edgedispatch.worker.runner import JobInfo, JobRunner, RunningJob

log = logging.getLogger("edgedispatch.agents")

TERMINATE_GRACE = 10.0
VERSION = "edgedispatch-local"


class LocalWorker:
    """:param url: the server URL the agents join rooms at.
    :param secret: the secret of ``api_key``, which signs the jobs' tokens."""

    def __init__(
        self,
        domain: Domain,
        definition: AgentDefinition,
        runner: JobRunner,
        api_key: str,
        secret: str,
        url: str,
    ) -> None:
        self._domain = domain
        self.definition = definition
        self._runner = runner
        self.api_key = api_key
        self._secret = secret
        self.tenant = definition.tenant
        self.url = url
        self.worker_id = ""
        self.peer = "local"
        self.version = VERSION
        self.reports_status = True
        self.running: dict[str, RunningJob] = {}

    def register(self, now: float) -> None:
        spec = WorkerSpec(
            agent_name=self.definition.name,
            job_type=JT_ROOM,
            version=self.version,
            slots=self.definition.slots,
        )
        self._domain.register_worker(self, spec, now)
        self._domain.step(now)

    # WorkerLink ---------------------------------------------------------

    def offer(self, job: JobRec, room: RoomRec, now: float) -> None:
        self._domain.after_step(self._accept, job.id)

    def _accept(self, now: float, job_id: str) -> None:
        self._domain.accept(self, job_id, Acceptance(identity=f"agent-{job_id}"), now)

    def assign(self, job: JobRec, room: RoomRec, agent: Acceptance, now: float) -> None:
        token = tokens.agent_token(
            api_key=self.api_key,
            secret=self._secret,
            now=self._domain.wall(now),
            room=job.room,
            identity=agent.identity,
            name=agent.name,
            metadata=agent.metadata,
            attributes=agent.attributes,
            agent_name=job.key.agent_name,
        )
        info = JobInfo(
            job_id=job.id,
            dispatch_id=job.dispatch_id,
            room=job.room,
            metadata=job.metadata,
            attributes=dict(job.attributes),
            agent_name=job.key.agent_name,
            url=self.url,
            token=token,
        )
        job_id = job.id
        self.running[job_id] = self._runner.run_job(
            info,
            lambda code, error: self._exited(job_id, code, error),
            max_duration=self.definition.max_duration,
        )
        self._domain.after_step(self._report, job_id, JobStatus.RUNNING, "")

    def terminate(self, job: JobRec, reason: FailReason, now: float) -> None:
        running = self.running.get(job.id)
        if running is not None:
            running.terminate(TERMINATE_GRACE)

    # ------------------------------------------------------------------

    def _exited(self, job_id: str, code: int | None, error: str) -> None:
        # Called by the runner from its own callbacks: report at the next
        # step, not from inside them (the report may start the next job on
        # the same runner).
        self.running.pop(job_id, None)
        if code != 0:
            rec = self._domain.jobs.get(job_id)
            extra = job_fields(rec) if rec is not None else {"job": job_id}
            extra.update(agent=self.definition.name, tenant=self.tenant)
            log.warning("local job failed: %s", error, extra=extra)
        status = JobStatus.SUCCESS if code == 0 else JobStatus.FAILED
        self._domain.after_step(self._report, job_id, status, error)

    def _report(self, now: float, job_id: str, status: JobStatus, error: str) -> None:
        self._domain.job_status(self, job_id, status, now, error)

    def close(self, now: float) -> None:
        """Stop taking jobs: running ones are killed, and the domain is told
        the worker is gone."""
        for job in list(self.running.values()):
            job.kill()
        if self.worker_id:
            self._domain.worker_closed(self, now)
            self._domain.step(now)
            self.worker_id = ""
