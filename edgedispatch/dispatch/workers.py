"""Workers as the domain sees them: links it drives, and what they report.

A worker is anything that registers for an agent and runs its jobs: a
remote LiveKit worker over ``/agent`` (``worker.session``) or a local
native/command agent (``worker.local``).  Both implement ``WorkerLink``:
the domain calls its typed hooks (offer, assign, terminate) while applying
the core's actions, and the link turns them into its own protocol.  What a
worker reports comes back through ``WorkerDesk``'s methods, as plain
values; each feeds the core one event.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Protocol

from edgedispatch._core.codes import FailReason, JobState, JobStatus, WorkerStatus
from edgedispatch.config import DispatchConfig
from edgedispatch.dispatch import ids
from edgedispatch.dispatch.core import AgentKey, DispatchCore
from edgedispatch.dispatch.events import EventBus, WorkerLost, WorkerRegistered
from edgedispatch.dispatch.jobs import JobLedger
from edgedispatch.dispatch.records import Acceptance, JobRec, RoomRec, job_fields
from edgedispatch.dispatch.specs import WorkerSpec
from edgedispatch.errors import EdgeDispatchError, InvalidArgument

log = logging.getLogger("edgedispatch.dispatch")

#: What a reconnecting worker that never reports job status (a Node worker)
#: is recognised by: its API key, agent key, address and version.
Fingerprint = tuple[str, AgentKey, str, str]


class WorkerLink(Protocol):
    """A worker connection, remote or local, as the domain drives it."""

    worker_id: str  #: given by the domain at registration
    tenant: str  #: the worker gets only this tenant's jobs
    api_key: str  #: the key it authenticated with
    peer: str  #: its address ("local" for local workers)
    version: str  #: its SDK's version, from its registration
    #: It reports job status (Python workers do; Node workers never do, and
    #: claim their jobs back by reconnecting from the same place instead).
    reports_status: bool

    def offer(self, job: JobRec, room: RoomRec, now: float) -> None:
        """Ask whether it takes ``job`` (LiveKit's AvailabilityRequest)."""

    def assign(self, job: JobRec, room: RoomRec, agent: Acceptance, now: float) -> None:
        """It took ``job``: start it, as ``agent`` (LiveKit's JobAssignment)."""

    def terminate(self, job: JobRec, reason: FailReason, now: float) -> None:
        """Stop ``job`` (LiveKit's JobTermination)."""


class WorkerDesk:
    """Registered workers, and the events they report."""

    def __init__(
        self, core: DispatchCore, cfg: DispatchConfig, jobs: JobLedger, bus: EventBus
    ) -> None:
        self._core = core
        self._cfg = cfg
        self._jobs = jobs
        self._bus = bus
        self.links: dict[str, WorkerLink] = {}
        self._keys: dict[str, AgentKey] = {}
        # Registered workers per (tenant, agent name), whatever their job
        # type or deployment: kept as they come and go, never scanned.
        self._agents: Counter[tuple[str, str]] = Counter()
        # Jobs whose worker vanished without ever reporting status, by its
        # fingerprint, until they leave ORPHANED (claimed, re-queued, failed).
        self._orphans: dict[Fingerprint, set[str]] = {}
        self._orphan_of: dict[str, Fingerprint] = {}

    def __len__(self) -> int:
        return len(self.links)

    def connected(self, tenant: str, agent_name: str) -> int:
        """Workers registered for this agent in this tenant."""
        return self._agents.get((tenant, agent_name), 0)

    def register(self, link: WorkerLink, spec: WorkerSpec, now: float, draining: bool) -> str:
        """A worker's registration; returns its new worker id.  Raises
        ``InvalidArgument`` (the connection is then closed) if it is invalid."""
        spec.check()
        key = AgentKey(link.tenant, spec.agent_name, spec.job_type, spec.deployment)
        slots = spec.slots
        if slots is None:
            slots = self._cfg.agent_slots.get(spec.agent_name, self._cfg.worker_slots)
        worker_id = ids.new(ids.WORKER)
        self._core.register_worker(worker_id, key, slots, now)
        link.worker_id = worker_id  # only once the core took it
        self.links[link.worker_id] = link
        self._keys[link.worker_id] = key
        self._agents[link.tenant, spec.agent_name] += 1
        if draining:
            self._core.drain_worker(link.worker_id, now)
        for job_id in sorted(self._orphans.pop(_fingerprint(link, key), ())):
            self._orphan_of.pop(job_id, None)
            self._claim(link, job_id, now)
        log.info(
            "worker registered (%s, %d slots)",
            spec.version or "?",
            slots,
            extra={
                "worker": link.worker_id,
                "agent": spec.agent_name,
                "tenant": link.tenant,
            },
        )
        if WorkerRegistered in self._bus.wanted:
            self._bus.emit(WorkerRegistered(link.worker_id, key, slots, link.api_key))
        return link.worker_id

    def key_of(self, worker_id: str) -> AgentKey:
        return self._keys[worker_id]

    def update(
        self,
        link: WorkerLink,
        status: WorkerStatus | None,
        load: float,
        job_count: int,
        now: float,
    ) -> None:
        """A status report: ``status`` None keeps the current one."""
        if status is None or status == WorkerStatus.DRAINING:
            status = self._core.worker_status(link.worker_id)
            if status == WorkerStatus.DRAINING:
                status = WorkerStatus.FULL  # the core keeps a drained worker drained
        if load != load:
            raise InvalidArgument("load is NaN")
        load = min(max(load, 0.0), 1.0)  # LiveKit's SDKs report a little over 1
        self._core.update_worker(link.worker_id, status, load, now, job_count)

    def _offered_to(self, link: WorkerLink, job_id: str) -> JobRec | None:
        """The job's record if it is out on offer to this worker, else None."""
        rec = self._jobs.get(job_id)
        if rec is None:
            return None
        state, worker_id = self._core.job_state(job_id)
        if state != JobState.OFFERED or worker_id != link.worker_id:
            log.info("late availability answer ignored", extra=job_fields(rec, link.worker_id))
            return None
        return rec

    def accept(self, link: WorkerLink, job_id: str, agent: Acceptance, now: float) -> None:
        rec = self._offered_to(link, job_id)
        if rec is not None:
            rec.identity = agent.identity
            self._jobs.accepted(job_id, agent)
            self._core.accept(job_id, link.worker_id, now)

    def decline(self, link: WorkerLink, job_id: str, terminate: bool, now: float) -> None:
        """``terminate``: the worker's "reject(terminate=True)", do not run
        it elsewhere either."""
        if self._offered_to(link, job_id) is None:
            return
        if terminate:
            self._core.cancel(job_id, now, FailReason.REJECTED)
        else:
            self._core.reject(job_id, link.worker_id, now)

    def job_status(
        self, link: WorkerLink, job_id: str, status: JobStatus, error: str, now: float
    ) -> None:
        rec = self._jobs.get(job_id)
        if rec is None or status == JobStatus.PENDING:
            return
        before = self._core.job_state(job_id) if error else None
        self._core.job_status(job_id, link.worker_id, status, now)
        if before is not None:
            # The core ignores a report on a job this worker does not hold
            # (a stale one, or a job id it guessed): its error must not
            # reach the job's record either, which its owner's ListDispatch
            # shows.
            after = self._core.job_state(job_id)
            if after != before and after[1] == link.worker_id:
                rec.error = error

    def claim(self, link: WorkerLink, job_ids: list[str], now: float) -> None:
        """MigrateJob: a reconnected worker claims back jobs it runs."""
        for job_id in job_ids:
            if self._jobs.get(job_id) is not None:
                self._claim(link, job_id, now)

    def _claim(self, link: WorkerLink, job_id: str, now: float) -> None:
        try:
            self._core.migrate(job_id, link.worker_id, now)
        except EdgeDispatchError as exc:
            rec = self._jobs.get(job_id)
            extra = job_fields(rec, link.worker_id) if rec is not None else {"job": job_id}
            extra["tenant"] = link.tenant
            log.warning("cannot claim job back: %s", exc, extra=extra)

    def closed(self, link: WorkerLink, now: float) -> None:
        """The worker's connection ended (or a local worker stopped)."""
        worker_id = link.worker_id
        if self.links.get(worker_id) is not link:
            return
        del self.links[worker_id]
        key = self._keys.pop(worker_id)
        self._agents[link.tenant, key.agent_name] -= 1
        if not self._agents[link.tenant, key.agent_name]:
            del self._agents[link.tenant, key.agent_name]
        held = [
            j
            for j in self._core.worker_jobs(worker_id)
            if self._core.job_state(j)[0] in (JobState.ASSIGNED, JobState.RUNNING)
        ]
        if not link.reports_status and held:
            fingerprint = _fingerprint(link, key)
            self._orphans.setdefault(fingerprint, set()).update(held)
            self._orphan_of.update(dict.fromkeys(held, fingerprint))
        self._core.disconnect_worker(worker_id, now)
        log.info(
            "worker disconnected (%d running jobs)",
            len(held),
            extra={"worker": worker_id, "agent": key.agent_name, "tenant": link.tenant},
        )
        if WorkerLost in self._bus.wanted:
            self._bus.emit(WorkerLost(worker_id, key, len(held), link.api_key))

    def job_moved(self, job_id: str, before: JobState, state: JobState) -> None:
        """A job changed state: once it leaves ORPHANED (claimed, re-queued,
        failed or cancelled), no reconnect can claim it any more."""
        if before == JobState.ORPHANED and state != JobState.ORPHANED:
            fingerprint = self._orphan_of.pop(job_id, None)
            if fingerprint is not None:
                waiting = self._orphans.get(fingerprint)
                if waiting is not None:
                    waiting.discard(job_id)
                    if not waiting:
                        del self._orphans[fingerprint]

    def orphans(self) -> int:
        """Jobs waiting for a worker that never reports status to come back."""
        return len(self._orphan_of)

    def drain(self, now: float) -> None:
        """Offer no worker any new work; running jobs go on."""
        for worker_id in list(self.links):
            self._core.drain_worker(worker_id, now)


def _fingerprint(link: WorkerLink, key: AgentKey) -> Fingerprint:
    return (link.api_key, key, link.peer, link.version)
