"""The job ledger: every job's record, kept in step with the core.

A job is created for a dispatch (``new_job``) and submitted to the core;
from then on its record changes only when the core says so (``on_state``,
from a JOB_STATE action), so the record and the core never disagree.  The
ledger also keeps, per (tenant, agent name), how many jobs are live and how
many of those are queued, so that nobody has to scan the jobs to ask.
"""

from __future__ import annotations

import logging
from collections import Counter

from edgedispatch._core.codes import FailReason, JobState, RestartPolicy, WaitReason
from edgedispatch.config import DispatchConfig
from edgedispatch.dispatch import ids
from edgedispatch.dispatch.compact import shrink
from edgedispatch.dispatch.core import AgentKey, DispatchCore, JobSpec
from edgedispatch.dispatch.events import EventBus, JobChanged, JobForgotten, JobWaiting
from edgedispatch.dispatch.records import Acceptance, DispatchRec, JobRec, job_fields
from edgedispatch.dispatch.tally import Tally
from edgedispatch.dispatch.timers import TimerKind, Timers, WallTime

log = logging.getLogger("edgedispatch.dispatch")

#: The states in which a worker holds a job (the store writes a job's
#: return to the queue from one with a fresh queue deadline).
HELD = (JobState.ASSIGNED, JobState.RUNNING, JobState.ORPHANED)
_ENDED = frozenset(s for s in JobState if s.terminal)
_WANTS_CAPACITY = (WaitReason.NO_WORKERS, WaitReason.ALL_BUSY)


class JobLedger:
    def __init__(
        self, core: DispatchCore, cfg: DispatchConfig, timers: Timers, bus: EventBus, wall: WallTime
    ) -> None:
        self._core = core
        self._cfg = cfg
        self._timers = timers
        self._bus = bus
        self._wall = wall
        self.jobs: dict[str, JobRec] = {}
        #: The record of a job id, or None (the dict's own lookup: no frame).
        self.get = self.jobs.get
        # Jobs not ended, and of those the queued ones, per (tenant, agent name).
        self._live: Counter[tuple[str, str]] = Counter()
        self._queued: Counter[tuple[str, str]] = Counter()
        # Jobs assigned, running or orphaned: what a drain waits for.
        self._held = 0
        # What a worker said when it accepted, until the assignment goes out.
        self._accepted: dict[str, Acceptance] = {}
        self.tally = Tally()

    def __len__(self) -> int:
        return len(self.jobs)

    def of(self, dispatch: DispatchRec) -> list[JobRec]:
        """A dispatch's jobs that still have records, oldest first."""
        return [rec for j in dispatch.job_ids if (rec := self.jobs.get(j)) is not None]

    def new_job(self, dispatch: DispatchRec, now: float) -> JobRec:
        """A job for ``dispatch``, submitted to the core: offered at once if a
        worker can take it, queued otherwise."""
        key = AgentKey(dispatch.tenant, dispatch.agent_name, dispatch.job_type, dispatch.deployment)
        rec = JobRec(
            id=ids.new(ids.JOB),
            dispatch_id=dispatch.id,
            key=key,
            room=dispatch.room,
            metadata=dispatch.metadata,
            attributes=dispatch.attributes,
            participant=dispatch.participant,
        )
        rec.created_ns = rec.updated_ns = self._wall.ns(now)
        self.jobs[rec.id] = rec
        self.tally.added(rec)
        agent = (key.tenant, key.agent_name)
        self._live[agent] += 1
        self._queued[agent] += 1  # (a new record is QUEUED)
        dispatch.job_ids.append(rec.id)
        if JobChanged in self._bus.wanted:
            self._bus.emit(JobChanged(rec, None))
        deadline = now + self._cfg.queue_timeout
        policy = RestartPolicy(dispatch.restart_policy)
        self._core.submit(JobSpec(rec.id, key, deadline, restart_policy=policy), now)
        return rec

    def restore(self, dispatch: DispatchRec, rec: JobRec, deadline_ns: int, now: float) -> None:
        """After a restart: a job the store kept.  An ended one is kept (for
        ListDispatch); a pending one goes back to the core, queued with its
        original queue deadline or, if a worker held it, waiting
        ``reclaim_grace`` for that worker to claim it back (its wait in the
        queue ended when it was assigned: unclaimed, it queues afresh or
        fails by its restart policy, as after a worker loss).  A job already
        waiting when the server stopped (ORPHANED, since ``updated_ns``)
        waits only what is left of its grace: restarts that come more often
        than ``reclaim_grace`` would otherwise keep it waiting (bench faults)."""
        self.jobs[rec.id] = rec
        dispatch.job_ids.append(rec.id)
        if rec.state.terminal:
            self.tally.added(rec)
            return
        # Offered to a worker: it may have been assigned too, its ASSIGNED
        # not yet committed (the assignment waits only for the offer's
        # write), so it waits for that worker as a held job does, and so
        # does its restart policy: unclaimed, JRP_ON_FAILURE queues it
        # again, JRP_NEVER fails it (WORKER_LOST).  The worker may have
        # started it and died, or be cut off longer than the grace and
        # still running it: a JRP_NEVER job runs at most once.
        offered = rec.state == JobState.OFFERED and bool(rec.worker_id)
        held = rec.state in HELD or offered
        # Already waiting to be claimed back: it stays ORPHANED throughout
        # (the core's first action leaves it so), and so the store keeps
        # when its wait began (``store.journal``).
        waiting = rec.state == JobState.ORPHANED
        agent = (rec.key.tenant, rec.key.agent_name)
        self._live[agent] += 1
        if waiting:
            self._held += 1
        else:
            self._queued[agent] += 1
            rec.state = JobState.QUEUED  # the core's first action moves it on
        self.tally.added(rec)
        if held:
            deadline = now + self._cfg.queue_timeout  # its wait, if it goes back
        else:
            deadline = now + (deadline_ns - self._wall.ns(now)) / 1e9
        policy = RestartPolicy(dispatch.restart_policy)
        spec = JobSpec(rec.id, rec.key, deadline, restart_policy=policy, restored_held=held)
        self._core.submit(spec, now)
        waited = (self._wall.ns(now) - rec.updated_ns) / 1e9 if waiting else 0.0
        if waited > 0.0:
            self._core.reclaim_by(rec.id, now + max(0.0, self._cfg.reclaim_grace - waited), now)

    def accepted(self, job_id: str, acceptance: Acceptance) -> None:
        self._accepted[job_id] = acceptance

    def take_acceptance(self, job_id: str) -> Acceptance:
        return self._accepted.pop(job_id, None) or Acceptance(identity=f"agent-{job_id}")

    def on_state(
        self, rec: JobRec, state: JobState, reason: FailReason, worker_id: str | None, now: float
    ) -> JobState:
        """The core moved ``rec`` to ``state``; returns the state before."""
        before = rec.state
        now_ns = self._wall.ns(now)
        if state != before:
            agent = (rec.key.tenant, rec.key.agent_name)
            self._queued[agent] += (state == JobState.QUEUED) - (before == JobState.QUEUED)
            self._held += (state in HELD) - (before in HELD)
            if state in _ENDED and before not in _ENDED:
                self._live[agent] -= 1
                if not self._live[agent]:
                    del self._live[agent], self._queued[agent]
        rec.state, rec.updated_ns = state, now_ns
        if reason != FailReason.NONE:
            rec.reason = reason
        if worker_id and state in (JobState.OFFERED, JobState.ASSIGNED, JobState.RUNNING):
            rec.worker_id = worker_id
        rec.wait = (
            self._core.wait_reason(rec.id, now)
            if state == JobState.QUEUED
            else WaitReason.NOT_WAITING
        )
        waited_ns = -1
        if state in (JobState.ASSIGNED, JobState.RUNNING) and not rec.started_ns:
            rec.started_ns = now_ns
            waited_ns = now_ns - rec.created_ns if rec.created_ns else -1
        if state != before:
            self.tally.transition(rec, before, state, rec.reason, waited_ns)
        ended = state in _ENDED
        if ended:
            rec.ended_ns = now_ns
            self._timers.clear(TimerKind.JOB_DURATION, (rec.id,))
            self._accepted.pop(rec.id, None)
            level = logging.INFO if state != JobState.SUCCESS else logging.DEBUG
            if log.isEnabledFor(level):  # a success is DEBUG: no dict for it at INFO
                extra = job_fields(rec)
                extra["reason"] = rec.reason.name
                log.log(level, "job ended %s", state.name, extra=extra)
        if JobChanged in self._bus.wanted:
            self._bus.emit(JobChanged(rec, before))
        if rec.wait in _WANTS_CAPACITY and JobWaiting in self._bus.wanted:
            self._bus.emit(JobWaiting(rec))
        if ended and rec.orphaned:
            self.forget(rec)
        return before

    def end(self, job_ids: list[str], reason: FailReason, now: float) -> None:
        """Their dispatch is gone: cancel each job (a running one is
        terminated) and drop each record once its job has ended."""
        for job_id in job_ids:
            rec = self.jobs.get(job_id)
            if rec is None:
                continue
            rec.orphaned = True
            if rec.state.terminal:
                self.forget(rec)
            else:
                self._core.cancel(job_id, now, reason)

    def forget(self, rec: JobRec) -> None:
        self._core.forget(rec.id)
        del self.jobs[rec.id]
        self.tally.removed(rec)
        shrink(self.jobs)  # in place: ``self.get`` is its bound method
        if JobForgotten in self._bus.wanted:
            self._bus.emit(JobForgotten(rec))

    def refresh_wait(self, job_ids: list[str], now: float) -> None:
        """Bring the wait reasons of these jobs up to ``now`` (a backoff
        ends without an event)."""
        for job_id in job_ids:
            rec = self.jobs.get(job_id)
            if rec is not None and rec.state == JobState.QUEUED:
                rec.wait = self._core.wait_reason(job_id, now)

    def tenant_jobs(self, tenant: str) -> tuple[int, int]:
        """(jobs not ended, of which queued) of one tenant, all agents."""
        live = sum(n for (t, _), n in self._live.items() if t == tenant)
        queued = sum(n for (t, _), n in self._queued.items() if t == tenant)
        return live, queued

    def agent_jobs(self, tenant: str, agent_name: str) -> tuple[int, int]:
        """(jobs not ended, of which queued) of one agent in one tenant."""
        agent = (tenant, agent_name)
        return self._live.get(agent, 0), self._queued.get(agent, 0)

    def pending(self) -> int:
        """Jobs not ended."""
        return sum(self._live.values())

    def running(self) -> int:
        """Jobs assigned, running, or waiting to be claimed back."""
        return self._held

    def held_by(self, worker_ids: set[str]) -> int:
        """Jobs assigned to or running on one of these workers."""
        return sum(
            1 for rec in self.jobs.values() if rec.state in HELD and rec.worker_id in worker_ids
        )

    def started_too_long(self, job_id: str, now: float) -> None:
        """Its max_job_duration passed: end it."""
        rec = self.jobs.get(job_id)
        if rec is not None and not rec.state.terminal:
            self._core.cancel(job_id, now, FailReason.MAX_DURATION)
