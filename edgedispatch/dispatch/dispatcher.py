"""The dispatcher: rooms, dispatches, jobs and worker sessions around the core.

Every input (a Twirp call, a worker message, a timer) runs synchronously:
it updates the records, feeds events to ``DispatchCore``, and ``_step()``
applies the core's actions (send an availability request, an assignment or
a termination) before the callback returns.  One ``loop.call_at`` timer is
re-armed to the core's next deadline after each step (aioquic's style).

LiveKit's semantics are the default; where we do better (queueing, retries,
re-dispatch, idempotent CreateDispatch) the core decides.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Protocol

from livekit.protocol import agent, models

from edgedispatch._core.codes import (
    ActionKind,
    FailReason,
    JobState,
    JobStatus,
    RestartPolicy,
    WaitReason,
    WorkerStatus,
)
from edgedispatch._version import __version__
from edgedispatch.config import Config
from edgedispatch.dispatch import ids
from edgedispatch.dispatch.core import Action, AgentKey, DispatchCore, JobSpec
from edgedispatch.dispatch.records import (
    REASON_TEXT,
    DispatchRec,
    JobRec,
    RoomRec,
    check_deployment,
)
from edgedispatch.dispatch.rooms import RoomDirectory
from edgedispatch.errors import EdgeDispatchError, InvalidEvent
from edgedispatch.wire import tokens as auth
from edgedispatch.wire.twirp import TwirpError

log = logging.getLogger("edgedispatch.dispatch")


class WorkerLink(Protocol):
    """What the dispatcher needs from a worker's connection."""

    worker_id: str
    api_key: str
    peer: str
    version: str
    reports_status: bool
    tenant: str
    permissions: models.ParticipantPermission | None  # from its registration

    def send(self, msg: agent.ServerMessage) -> None: ...


class Dispatcher:
    def __init__(
        self,
        cfg: Config,
        loop: asyncio.AbstractEventLoop,
        verifier: auth.Verifier,
        wall: Callable[[], float] = time.time,
    ) -> None:
        d = cfg.dispatch
        self.cfg = cfg
        self._loop = loop
        self._wall = wall
        self._verifier = verifier
        self.core = DispatchCore(
            seed=d.seed,
            load_threshold=d.load_threshold,
            offer_timeout=d.offer_timeout,
            max_attempts=d.max_attempts,
            retry_base=d.retry_base,
            retry_max=d.retry_max,
            reclaim_grace=d.reclaim_grace,
            terminate_grace=d.terminate_grace,
        )
        self.rooms = RoomDirectory(self)
        self.jobs: dict[str, JobRec] = {}
        self.workers: dict[str, WorkerLink] = {}
        self.draining = False
        #: Called with a job's agent key when it queues because no worker of
        #: that agent is connected, or none has room.
        self.on_demand: Callable[[AgentKey], None] | None = None
        self.node_id = ids.new(ids.NODE)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        # Jobs whose worker vanished, by the worker's fingerprint, for
        # workers that never report job status (Node): see register().
        self._orphans: dict[tuple[str, AgentKey, str, str], set[str]] = {}
        # What a worker said when it accepted: name, metadata, attributes.
        self._accepted: dict[str, tuple[str, str, dict[str, str]]] = {}
        # SimulateJob's jobs, outside the scheduler: job id -> (asker, job).
        self._simulated: dict[str, tuple[WorkerLink, agent.Job]] = {}
        # Jobs not ended, and of those the queued ones, per (tenant, agent
        # name): kept as states change, so that nobody scans ``jobs``.
        self._live: Counter[tuple[str, str]] = Counter()
        self._queued: Counter[tuple[str, str]] = Counter()
        # Calls queued by after_step(), and whether a step is applying.
        self._after: deque[tuple[Callable[..., None], tuple[object, ...]]] = deque()
        self._stepping = False

    def now(self) -> float:
        return self._loop.time()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def wall(self) -> float:
        return self._wall()

    def wall_ns(self) -> int:
        return int(self._wall() * 1e9)

    # ------------------------------------------------------------------
    # Running the core.

    def after_step(self, fn: Callable[..., None], *args: object) -> None:
        """Call ``fn(*args)`` once the actions being applied are all applied,
        in the same pass: a local worker answers an offer this way, so that
        its job starts before the loop turns (no round trip through it),
        without feeding the core from inside its own step."""
        self._after.append((fn, args))
        if not self._stepping:
            self._loop.call_soon(self._step)

    def _step(self, actions: list[Action] | None = None) -> None:
        outer = not self._stepping
        self._stepping = True
        try:
            batch = self.core.process() if actions is None else actions
            while True:
                for action in batch:
                    try:
                        self._apply(action)
                    except Exception:  # one bad action must not stop the others
                        log.exception(
                            "applying %s failed", action.kind.name, extra={"job": action.job_id}
                        )
                if not self._after or not outer:
                    break  # the outermost step runs the calls: no recursion
                fn, args = self._after.popleft()
                try:
                    fn(*args)  # may feed the core: its actions are the next batch
                except Exception:
                    log.exception("a call after a dispatch step failed")
                batch = self.core.process()
        finally:
            self._stepping = not outer
        self._arm_timer()

    def _arm_timer(self) -> None:
        deadline = self.core.next_deadline()
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = deadline
        if deadline is not None:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        self._step(self.core.on_timer(self.now()))

    def _apply(self, a: Action) -> None:
        rec = self.jobs.get(a.job_id)
        if rec is None:
            return
        if a.kind == ActionKind.JOB_STATE and a.state is not None:
            self._on_state(rec, a.state, a.reason, a.worker_id)
            return
        extra = {
            "job": a.job_id,
            "worker": a.worker_id,
            "room": rec.job.room.name,
            "dispatch": rec.dispatch_id,
        }
        if a.kind == ActionKind.OFFER:
            link = self.workers[a.worker_id or ""]
            msg = agent.ServerMessage()
            job = msg.availability.job
            job.CopyFrom(rec.job)
            job.state.status = agent.JS_RUNNING
            job.state.worker_id = link.worker_id
            job.state.updated_at = job.state.started_at = self.wall_ns()
            link.send(msg)
            log.debug("offered job (attempt %d)", a.attempt, extra=extra)
        elif a.kind == ActionKind.ASSIGN:
            self._assign(rec, self.workers[a.worker_id or ""])
            log.info("assigned job", extra={**extra, "agent": rec.job.agent_name})
        elif a.kind == ActionKind.TERMINATE:
            self._terminate_on(rec, a.worker_id)
            log.info("terminating job", extra={**extra, "reason": a.reason.name})
        elif a.kind == ActionKind.JOB_FAILED:
            log.warning(
                "job failed: %s",
                REASON_TEXT.get(a.reason, a.reason.name),
                extra={**extra, "reason": a.reason.name},
            )

    def _on_state(
        self, rec: JobRec, state: JobState, reason: FailReason, worker_id: str | None
    ) -> None:
        now_ns = self.wall_ns()
        if state != rec.state:
            agent_of = (rec.key.tenant, rec.key.agent_name)
            self._queued[agent_of] += (state == JobState.QUEUED) - (rec.state == JobState.QUEUED)
            if state.terminal and not rec.state.terminal:
                self._live[agent_of] -= 1
        rec.state, rec.updated_ns = state, now_ns
        if reason != FailReason.NONE:
            rec.reason = reason
        if worker_id and state in (JobState.OFFERED, JobState.ASSIGNED, JobState.RUNNING):
            rec.worker_id = worker_id
        if state == JobState.QUEUED:
            rec.wait = self.core.job(rec.id, self.now()).wait_reason
            if self.on_demand is not None and rec.wait in (
                WaitReason.NO_WORKERS,
                WaitReason.ALL_BUSY,
            ):
                self.on_demand(rec.key)
        else:
            rec.wait = WaitReason.NOT_WAITING
        if state in (JobState.ASSIGNED, JobState.RUNNING) and not rec.started_ns:
            rec.started_ns = now_ns
        if state.terminal:
            rec.ended_ns = now_ns
            if rec.duration_timer is not None:
                rec.duration_timer.cancel()
                rec.duration_timer = None
            log.log(
                logging.INFO if state != JobState.SUCCESS else logging.DEBUG,
                "job ended %s",
                state.name,
                extra={
                    "job": rec.id,
                    "room": rec.job.room.name,
                    "dispatch": rec.dispatch_id,
                    "reason": rec.reason.name,
                },
            )

    def _assign(self, rec: JobRec, link: WorkerLink) -> None:
        name, metadata, attributes = self._accepted.pop(rec.id, ("", "", {}))
        self._send_assignment(link, rec.proto(), rec.identity, name, metadata, attributes)
        limit = self.cfg.dispatch.max_job_duration
        if limit > 0 and rec.duration_timer is None:
            rec.duration_timer = self._loop.call_later(limit, self._job_too_long, rec.id)

    def _send_assignment(
        self,
        link: WorkerLink,
        job: agent.Job,
        identity: str,
        name: str,
        metadata: str,
        attributes: dict[str, str],
    ) -> None:
        """JobAssignment with the agent's room token, signed with the key the
        worker connected with (LiveKit's dev re-signing expects that key)."""
        msg = agent.ServerMessage()
        msg.assignment.job.CopyFrom(job)
        msg.assignment.token = auth.agent_token(
            api_key=link.api_key,
            secret=self._verifier.secret(link.api_key) or "",
            now=self._wall(),
            room=job.room.name,
            identity=identity,
            name=name,
            metadata=metadata,
            attributes=attributes,
            agent_name=job.agent_name,
            permissions=link.permissions,
        )
        if self.cfg.server.public_url:
            msg.assignment.url = self.cfg.server.public_url
        link.send(msg)

    def _job_too_long(self, job_id: str) -> None:
        rec = self.jobs.get(job_id)
        if rec is None or rec.state.terminal:
            return
        rec.duration_timer = None
        self.core.cancel(job_id, self.now(), FailReason.MAX_DURATION)
        self._step()

    def _terminate_on(self, rec: JobRec, worker_id: str | None) -> None:
        msg = agent.ServerMessage()
        msg.termination.job_id = rec.id
        link = self.workers.get(worker_id or "")
        if link is not None:
            link.send(msg)

    # ------------------------------------------------------------------
    # Workers.

    def register(
        self, link: WorkerLink, req: agent.RegisterWorkerRequest, slots: int | None = None
    ) -> agent.ServerMessage:
        """A worker's first message.  Returns the register response, which the
        caller sends before calling ``step()``; raises InvalidEvent (the
        connection is closed) if the registration is invalid."""
        if req.type not in agent.JobType.values():
            raise InvalidEvent(f"unknown job type {req.type}")
        problem = check_deployment(req.deployment)
        if problem:
            raise InvalidEvent(problem)
        key = AgentKey(link.tenant, req.agent_name, req.type, req.deployment)
        if slots is None:
            slots = self.cfg.dispatch.agent_slots.get(
                req.agent_name, self.cfg.dispatch.worker_slots
            )
        perms = req.allowed_permissions if req.HasField("allowed_permissions") else None
        link.worker_id = ids.new(ids.WORKER)
        link.permissions = perms
        now = self.now()
        self.core.register_worker(link.worker_id, key, slots, now, permissions=perms)
        self.workers[link.worker_id] = link
        if self.draining:
            self.core.drain_worker(link.worker_id, now)
        # A worker that never reports job status (Node) does not send
        # MigrateJob either: its reconnect claims the jobs its previous
        # connection from the same place was running.
        for job_id in sorted(self._orphans.pop(_fingerprint(link, key), set())):
            self._claim(link, job_id)
        msg = agent.ServerMessage()
        msg.register.worker_id = link.worker_id
        info = msg.register.server_info
        info.version = __version__
        info.protocol = 17
        info.agent_protocol = 1
        info.node_id = self.node_id
        log.info(
            "worker registered (%s, %d slots)",
            req.version or "?",
            slots,
            extra={"worker": link.worker_id, "agent": req.agent_name},
        )
        # No _step() here: the register response must be the first frame the
        # worker gets (a Node worker dies otherwise), so the caller sends it
        # and then calls step().
        return msg

    def step(self) -> None:
        """Apply whatever the core decided since the last step."""
        self._step()

    def _claim(self, link: WorkerLink, job_id: str) -> None:
        try:
            self.core.migrate(job_id, link.worker_id, self.now())
        except EdgeDispatchError as exc:
            log.warning(
                "cannot claim job back: %s", exc, extra={"job": job_id, "worker": link.worker_id}
            )

    def worker_update(self, link: WorkerLink, msg: agent.UpdateWorkerStatus) -> None:
        if msg.HasField("status"):
            status = WorkerStatus.FULL if msg.status == agent.WS_FULL else WorkerStatus.AVAILABLE
        else:
            status = self.core.worker_status(link.worker_id)
        if status == WorkerStatus.DRAINING:
            status = WorkerStatus.FULL
        load = msg.load if 0.0 <= msg.load <= 1.0 else min(max(msg.load, 0.0), 1.0)
        if load != load:  # NaN
            raise InvalidEvent("load is NaN")
        self.core.update_worker(link.worker_id, status, load, self.now(), msg.job_count)
        self._step()

    def availability(self, link: WorkerLink, msg: agent.AvailabilityResponse) -> None:
        rec = self.jobs.get(msg.job_id)
        if rec is None:
            sim = self._simulated.get(msg.job_id)
            if sim is not None and sim[0] is link and msg.available:
                self._assign_simulated(link, msg)
            return
        state, worker_id = self.core.job_state(msg.job_id)
        if state != JobState.OFFERED or worker_id != link.worker_id:
            log.info(
                "late availability answer ignored",
                extra={"job": msg.job_id, "worker": link.worker_id},
            )
            return
        now = self.now()
        if msg.available:
            rec.identity = msg.participant_identity or f"agent-{rec.id}"
            self._accepted[rec.id] = (
                msg.participant_name,
                msg.participant_metadata,
                dict(msg.participant_attributes),
            )
            self.core.accept(msg.job_id, link.worker_id, now)
        elif msg.terminate:
            # The worker's "reject(terminate=True)": do not run it elsewhere.
            self.core.cancel(msg.job_id, now, FailReason.REJECTED)
        else:
            self.core.reject(msg.job_id, link.worker_id, now)
        self._step()

    def job_update(self, link: WorkerLink, msg: agent.UpdateJobStatus) -> None:
        link.reports_status = True
        rec = self.jobs.get(msg.job_id)
        if rec is None or msg.status == agent.JS_PENDING:
            return
        if msg.status not in (agent.JS_RUNNING, agent.JS_SUCCESS, agent.JS_FAILED):
            return
        if msg.error:
            rec.error = msg.error
        status = (
            JobStatus.RUNNING
            if msg.status == agent.JS_RUNNING
            else (JobStatus.SUCCESS if msg.status == agent.JS_SUCCESS else JobStatus.FAILED)
        )
        self.core.job_status(msg.job_id, link.worker_id, status, self.now())
        self._step()

    def migrate(self, link: WorkerLink, msg: agent.MigrateJobRequest) -> None:
        for job_id in list(msg.job_ids) + [j.id for j in msg.jobs]:
            if job_id in self.jobs:
                self._claim(link, job_id)
        self._step()

    def simulate(self, link: WorkerLink, msg: agent.SimulateJobRequest) -> None:
        """``lk``/Node ``connect --room``: a job straight to this worker,
        outside the scheduler, as LiveKit does."""
        name = msg.room.name or ids.new("sim_")
        try:
            room = self.rooms.get(link.tenant, name)
        except TwirpError:
            room = self.rooms.create(link.tenant, name)
        job = agent.Job(
            id=ids.new(ids.JOB),
            type=agent.JT_PUBLISHER if msg.HasField("participant") else agent.JT_ROOM,
            room=room.proto(),
            agent_name=self.core.worker(link.worker_id).key.agent_name,
        )
        if msg.HasField("participant"):
            job.participant.CopyFrom(msg.participant)
        self._simulated[job.id] = (link, job)
        out = agent.ServerMessage()
        out.availability.job.CopyFrom(job)
        link.send(out)

    def _assign_simulated(self, link: WorkerLink, msg: agent.AvailabilityResponse) -> None:
        _, job = self._simulated.pop(msg.job_id)
        identity = msg.participant_identity or f"agent-{job.id}"
        self._send_assignment(
            link,
            job,
            identity,
            msg.participant_name,
            msg.participant_metadata,
            dict(msg.participant_attributes),
        )

    def worker_closed(self, link: WorkerLink) -> None:
        if link.worker_id not in self.workers:
            return
        del self.workers[link.worker_id]
        held = [
            j
            for j in self.core.worker(link.worker_id).jobs
            if self.core.job(j, self.now()).state in (JobState.ASSIGNED, JobState.RUNNING)
        ]
        if not link.reports_status and held:
            fingerprint = _fingerprint(link, self.core.worker(link.worker_id).key)
            self._orphans.setdefault(fingerprint, set()).update(held)
        self.core.disconnect_worker(link.worker_id, self.now())
        log.info(
            "worker disconnected (%d running jobs)", len(held), extra={"worker": link.worker_id}
        )
        self._step()

    # ------------------------------------------------------------------
    # Jobs (rooms.py creates and ends them).

    def check_open(self) -> None:
        if self.draining:
            raise TwirpError("unavailable", "the server is draining; it takes no new work")

    def new_job(self, dispatch: DispatchRec, room: RoomRec) -> JobRec:
        job = agent.Job(
            id=ids.new(ids.JOB),
            dispatch_id=dispatch.id,
            type=agent.JT_ROOM,
            room=room.proto(),
            metadata=dispatch.metadata,
            agent_name=dispatch.agent_name,
            deployment=dispatch.deployment,
            attributes=dispatch.attributes,
        )
        key = AgentKey(room.tenant, dispatch.agent_name, agent.JT_ROOM, dispatch.deployment)
        rec = JobRec(job=job, key=key, dispatch_id=dispatch.id, updated_ns=self.wall_ns())
        self.jobs[job.id] = rec
        self._live[room.tenant, dispatch.agent_name] += 1
        self._queued[room.tenant, dispatch.agent_name] += 1  # (a new JobRec is QUEUED)
        dispatch.job_ids.append(job.id)
        now = self.now()
        self.core.submit(
            JobSpec(
                job.id,
                key,
                now + self.cfg.dispatch.queue_timeout,
                dispatch_id=dispatch.id,
                room=room.name,
                metadata=dispatch.metadata,
                restart_policy=RestartPolicy(dispatch.restart_policy),
            ),
            now,
        )
        return rec

    def agent_jobs(self, tenant: str, agent_name: str) -> tuple[int, int]:
        """(jobs not ended, of which queued) of one agent in one tenant."""
        return self._live[tenant, agent_name], self._queued[tenant, agent_name]

    def end_jobs(self, job_ids: list[str], reason: FailReason) -> None:
        """Cancel these jobs (running ones are terminated) and forget each
        record once its job has ended."""
        now = self.now()
        for job_id in job_ids:
            if not self.jobs[job_id].state.terminal:
                self.core.cancel(job_id, now, reason)
        self._step()
        for job_id in job_ids:
            self._forget_when_done(job_id)

    def _forget_when_done(self, job_id: str) -> None:
        rec = self.jobs.get(job_id)
        if rec is None:
            return
        if rec.state.terminal:
            self.core.forget(job_id)
            del self.jobs[job_id]
        else:
            self._loop.call_later(1.0, self._forget_when_done, job_id)

    def refresh_wait_reasons(self) -> None:
        now = self.now()
        for job in self.jobs.values():
            if job.state == JobState.QUEUED:
                job.wait = self.core.job(job.id, now).wait_reason

    def has_workers(self, key: AgentKey) -> bool:
        return any(w.key == key for w in self.core.workers())

    # ------------------------------------------------------------------
    # Drain.

    def begin_drain(self) -> None:
        """Take no new dispatches and offer no new work; running jobs go on."""
        self.draining = True
        now = self.now()
        for worker_id in list(self.workers):
            self.core.drain_worker(worker_id, now)
        self._step()

    def running_jobs(self) -> int:
        return sum(
            1
            for j in self.jobs.values()
            if j.state in (JobState.ASSIGNED, JobState.RUNNING, JobState.ORPHANED)
        )


def _fingerprint(link: WorkerLink, key: AgentKey) -> tuple[str, AgentKey, str, str]:
    """What a reconnecting worker that never reports job status (Node) is
    recognised by: the same key, agent, address and version."""
    return (link.api_key, key, link.peer, link.version)
