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
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from livekit.protocol import agent, agent_dispatch, models

from edgedispatch import auth, ids
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
from edgedispatch.core import Action, AgentKey, DispatchCore, JobSpec
from edgedispatch.errors import EdgeDispatchError, InvalidEvent
from edgedispatch.records import (
    REASON_TEXT,
    DispatchRec,
    JobRec,
    RoomRec,
    check_deployment,
    check_payload,
)
from edgedispatch.twirp import TwirpError

log = logging.getLogger("edgedispatch.dispatch")

IDEMPOTENCY_ENTRIES = 10_000


class WorkerLink(Protocol):
    """What the dispatcher needs from a worker's connection."""

    worker_id: str
    api_key: str
    peer: str
    version: str
    reports_status: bool
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
        self.rooms: dict[str, RoomRec] = {}
        self.dispatches: dict[str, DispatchRec] = {}
        self.jobs: dict[str, JobRec] = {}
        self.workers: dict[str, WorkerLink] = {}
        self.draining = False
        self.node_id = ids.new(ids.NODE)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._by_request_id: OrderedDict[str, str] = OrderedDict()
        # Jobs whose worker vanished, by the worker's fingerprint, for
        # workers that never report job status (Node): see register().
        self._orphans: dict[tuple[str, AgentKey, str, str], set[str]] = {}
        # What a worker said when it accepted: name, metadata, attributes.
        self._accepted: dict[str, tuple[str, str, dict[str, str]]] = {}
        self._simulated: dict[str, WorkerLink] = {}
        self._sim_jobs: dict[str, agent.Job] = {}

    def now(self) -> float:
        return self._loop.time()

    def wall_ns(self) -> int:
        return int(self._wall() * 1e9)

    # ------------------------------------------------------------------
    # Running the core.

    def _step(self, actions: list[Action] | None = None) -> None:
        for action in self.core.process() if actions is None else actions:
            try:
                self._apply(action)
            except Exception:  # one bad action must not stop the others
                log.exception("applying %s failed", action.kind.name, extra={"job": action.job_id})
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
        rec.state, rec.updated_ns = state, now_ns
        if reason != FailReason.NONE:
            rec.reason = reason
        if worker_id and state in (JobState.OFFERED, JobState.ASSIGNED, JobState.RUNNING):
            rec.worker_id = worker_id
        if state == JobState.QUEUED:
            rec.wait = self.core.job(rec.id, self.now()).wait_reason
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

    def register(self, link: WorkerLink, req: agent.RegisterWorkerRequest) -> agent.ServerMessage:
        """A worker's first message.  Returns the register response, which the
        caller sends before calling ``step()``; raises InvalidEvent (the
        connection is closed) if the registration is invalid."""
        if req.type not in agent.JobType.values():
            raise InvalidEvent(f"unknown job type {req.type}")
        problem = check_deployment(req.deployment)
        if problem:
            raise InvalidEvent(problem)
        key = AgentKey("", req.agent_name, req.type, req.deployment)
        slots = self.cfg.dispatch.agent_slots.get(req.agent_name, self.cfg.dispatch.worker_slots)
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
        fingerprint = (link.api_key, key, link.peer, link.version)
        for job_id in sorted(self._orphans.pop(fingerprint, set())):
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
            if sim is link and msg.available:
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
        room = self.rooms.get(name) or self._create_room(name)
        job = agent.Job(
            id=ids.new(ids.JOB),
            type=agent.JT_PUBLISHER if msg.HasField("participant") else agent.JT_ROOM,
            room=room.proto(),
            agent_name=self.core.worker(link.worker_id).key.agent_name,
        )
        if msg.HasField("participant"):
            job.participant.CopyFrom(msg.participant)
        self._simulated[job.id] = link
        out = agent.ServerMessage()
        out.availability.job.CopyFrom(job)
        link.send(out)
        self._sim_jobs[job.id] = job

    def _assign_simulated(self, link: WorkerLink, msg: agent.AvailabilityResponse) -> None:
        job = self._sim_jobs.pop(msg.job_id)
        self._simulated.pop(msg.job_id, None)
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
            fingerprint = (
                link.api_key,
                self.core.worker(link.worker_id).key,
                link.peer,
                link.version,
            )
            self._orphans.setdefault(fingerprint, set()).update(held)
        self.core.disconnect_worker(link.worker_id, self.now())
        log.info(
            "worker disconnected (%d running jobs)", len(held), extra={"worker": link.worker_id}
        )
        self._step()

    # ------------------------------------------------------------------
    # Rooms and dispatches (the Twirp services call these).

    def _check_open(self) -> None:
        if self.draining:
            raise TwirpError("unavailable", "the server is draining; it takes no new work")

    def _create_room(
        self,
        name: str,
        empty_timeout: int = 0,
        departure_timeout: int = 0,
        max_participants: int = 0,
        metadata: str = "",
    ) -> RoomRec:
        rc = self.cfg.room
        room = RoomRec(
            sid=ids.new(ids.ROOM),
            name=name,
            created=self._wall(),
            empty_timeout=empty_timeout or rc.empty_timeout,
            departure_timeout=departure_timeout or rc.departure_timeout,
            max_participants=max_participants,
            metadata=metadata,
        )
        self.rooms[name] = room
        # Nobody joins rooms on this server yet, so a room lives for its
        # empty timeout, as a LiveKit room nobody joined does.
        if room.empty_timeout > 0:
            room.close_timer = self._loop.call_later(room.empty_timeout, self._close_room, name)
        log.info("room created", extra={"room": name})
        return room

    def _close_room(self, name: str) -> None:
        room = self.rooms.get(name)
        if room is not None:
            log.info("room closed (empty timeout)", extra={"room": name})
            self._end_room(room, FailReason.ROOM_CLOSED)
            self._step()

    def _end_room(self, room: RoomRec, reason: FailReason) -> None:
        if room.close_timer is not None:
            room.close_timer.cancel()
        for dispatch_id in list(room.dispatch_ids):
            self._end_dispatch(self.dispatches[dispatch_id], reason)
        del self.rooms[room.name]

    def _end_dispatch(self, rec: DispatchRec, reason: FailReason) -> None:
        rec.deleted_ns = self.wall_ns()
        now = self.now()
        for job_id in rec.job_ids:
            job = self.jobs[job_id]
            if not job.state.terminal:
                self.core.cancel(job_id, now, reason)
        room = self.rooms.get(rec.room)
        if room is not None and rec.id in room.dispatch_ids:
            room.dispatch_ids.remove(rec.id)
        del self.dispatches[rec.id]
        self._step()
        # Records of jobs that ended go now; running ones go when they end.
        for job_id in rec.job_ids:
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

    def _new_dispatch(
        self,
        room: RoomRec,
        agent_name: str,
        metadata: str,
        attributes: dict[str, str],
        restart_policy: int,
        deployment: str,
        implicit: bool = False,
    ) -> DispatchRec:
        rec = DispatchRec(
            id=ids.new(ids.DISPATCH),
            agent_name=agent_name,
            room=room.name,
            metadata=metadata,
            attributes=attributes,
            restart_policy=restart_policy,
            deployment=deployment,
            created_ns=self.wall_ns(),
            implicit=implicit,
        )
        self.dispatches[rec.id] = rec
        room.dispatch_ids.append(rec.id)
        self._new_job(rec, room)
        log.debug(
            "dispatch created", extra={"dispatch": rec.id, "room": room.name, "agent": agent_name}
        )
        return rec

    def _new_job(self, dispatch: DispatchRec, room: RoomRec) -> JobRec:
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
        key = AgentKey("", dispatch.agent_name, agent.JT_ROOM, dispatch.deployment)
        rec = JobRec(job=job, key=key, dispatch_id=dispatch.id, updated_ns=self.wall_ns())
        self.jobs[job.id] = rec
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

    def dispatch_proto(self, rec: DispatchRec) -> agent_dispatch.AgentDispatch:
        return rec.proto([self.jobs[j].proto() for j in rec.job_ids if j in self.jobs])

    def create_dispatch(
        self, req: agent_dispatch.CreateAgentDispatchRequest, request_id: str = ""
    ) -> agent_dispatch.AgentDispatch:
        self._check_open()
        if not req.room:
            raise TwirpError("invalid_argument", "room is required")
        if int(req.restart_policy) not in (RestartPolicy.ON_FAILURE, RestartPolicy.NEVER):
            raise TwirpError("invalid_argument", f"unknown restart_policy {req.restart_policy}")
        problem = check_deployment(req.deployment) or check_payload(
            req.metadata, dict(req.attributes)
        )
        if problem:
            raise TwirpError("invalid_argument", problem)
        if request_id and request_id in self._by_request_id:
            earlier = self.dispatches.get(self._by_request_id[request_id])
            if earlier is not None:
                return self.dispatch_proto(earlier)
        room = self.rooms.get(req.room)
        if room is None:
            if not self.cfg.room.auto_create:
                raise TwirpError("not_found", f"room {req.room!r} does not exist")
            room = self._create_room(req.room)
        rec = self._new_dispatch(
            room,
            req.agent_name,
            req.metadata,
            dict(req.attributes),
            req.restart_policy,
            req.deployment,
        )
        if request_id:
            self._by_request_id[request_id] = rec.id
            if len(self._by_request_id) > IDEMPOTENCY_ENTRIES:
                self._by_request_id.popitem(last=False)
        self._step()
        return self.dispatch_proto(rec)

    def list_dispatch(self, room: str, dispatch_id: str = "") -> list[agent_dispatch.AgentDispatch]:
        if not room:
            raise TwirpError("invalid_argument", "room is required")
        rec = self.rooms.get(room)
        if rec is None:
            return []
        for job in self.jobs.values():  # refresh why waiting jobs wait
            if job.state == JobState.QUEUED:
                job.wait = self.core.job(job.id, self.now()).wait_reason
        return [
            self.dispatch_proto(self.dispatches[d])
            for d in rec.dispatch_ids
            if not dispatch_id or d == dispatch_id
        ]

    def delete_dispatch(self, room: str, dispatch_id: str) -> agent_dispatch.AgentDispatch:
        rec = self.dispatches.get(dispatch_id)
        if rec is None or rec.room != room:
            raise TwirpError("not_found", "dispatch ID not found")
        self._end_dispatch(rec, FailReason.CANCELLED)
        return self.dispatch_proto(rec)

    def create_room(self, req: models.Room | object) -> models.Room:
        from livekit.protocol import room as room_pb

        assert isinstance(req, room_pb.CreateRoomRequest)
        self._check_open()
        if not req.name:
            raise TwirpError("invalid_argument", "room name is required")
        existing = self.rooms.get(req.name)
        if existing is not None:
            return existing.proto()
        for d in req.agents:
            problem = check_deployment(d.deployment) or check_payload(
                d.metadata, dict(d.attributes)
            )
            if problem:
                raise TwirpError("invalid_argument", problem)
        room = self._create_room(
            req.name, req.empty_timeout, req.departure_timeout, req.max_participants, req.metadata
        )
        for d in req.agents:
            self._new_dispatch(
                room, d.agent_name, d.metadata, dict(d.attributes), d.restart_policy, d.deployment
            )
        if not req.agents:
            self._auto_dispatch(room)
        self._step()
        return room.proto()

    def _auto_dispatch(self, room: RoomRec) -> None:
        """LiveKit's automatic dispatch: a room with no explicit dispatch gets
        one job for workers registered without an agent name — if any are
        registered (LiveKit does not dispatch to agents that do not exist)."""
        key = AgentKey("", "", agent.JT_ROOM, "")
        if any(w.key == key for w in self.core.workers()):
            self._new_dispatch(room, "", "", {}, RestartPolicy.ON_FAILURE, "", implicit=True)

    def delete_room(self, name: str) -> None:
        room = self.rooms.get(name)
        if room is None:
            raise TwirpError("not_found", f"room {name!r} does not exist")
        self._end_room(room, FailReason.ROOM_CLOSED)
        self._step()
        log.info("room deleted", extra={"room": name})

    def room(self, name: str) -> RoomRec:
        room = self.rooms.get(name)
        if room is None:
            raise TwirpError("not_found", f"room {name!r} does not exist")
        return room

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
