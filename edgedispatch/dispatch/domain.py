"""The domain: rooms, dispatches, jobs and workers around the scheduling core.

Sans-IO, in aioquic's manner.  Every input (an API call, a worker's
message, a timer) is a method call that takes ``now`` (monotonic seconds);
it updates the records and feeds the core events.  The adapter that
delivered the input then calls ``step(now)`` once, which applies the core's
actions: it calls the workers' hooks (offer, assign, terminate), updates
the job records, and emits domain events.  Time moves through
``next_deadline()`` and ``on_timer(now)``; the shell arms one timer for
them, told of each change of the deadline through ``on_deadline``.

The domain reads no clock and imports no asyncio, sockets or protobuf.
Wall-clock times for records and tokens are ``now`` plus an offset the
shell keeps (``wall``).

LiveKit's semantics are the default; where we do better (queueing, retries,
re-dispatch, idempotent CreateDispatch) the core decides.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable

from edgedispatch._core.codes import ActionKind, JobState, JobStatus, WorkerStatus
from edgedispatch.config import DispatchConfig, RoomConfig
from edgedispatch.dispatch import ids
from edgedispatch.dispatch.core import Action, AgentKey, DispatchCore
from edgedispatch.dispatch.events import DomainEvent, EventBus, Subscriber
from edgedispatch.dispatch.jobs import JobLedger
from edgedispatch.dispatch.records import (
    REASON_TEXT,
    Acceptance,
    DispatchRec,
    JobRec,
    ParticipantRec,
    RoomRec,
    job_fields,
)
from edgedispatch.dispatch.rooms import RoomDirectory
from edgedispatch.dispatch.specs import DispatchSpec, RoomSpec, WorkerSpec
from edgedispatch.dispatch.timers import TimerKind, Timers, WallTime
from edgedispatch.dispatch.workers import WorkerDesk, WorkerLink
from edgedispatch.errors import Unavailable

log = logging.getLogger("edgedispatch.dispatch")

AfterStep = Callable[..., None]


class Domain:
    """See the module docstring.

    :param core: the scheduling core (tests pass one built on a chosen
        implementation); by default one configured from ``dispatch``.
    """

    def __init__(
        self, dispatch: DispatchConfig, room: RoomConfig, *, core: DispatchCore | None = None
    ) -> None:
        self.cfg = dispatch
        self.core = core or DispatchCore(
            seed=dispatch.seed,
            load_threshold=dispatch.load_threshold,
            offer_timeout=dispatch.offer_timeout,
            max_attempts=dispatch.max_attempts,
            retry_base=dispatch.retry_base,
            retry_max=dispatch.retry_max,
            reclaim_grace=dispatch.reclaim_grace,
            terminate_grace=dispatch.terminate_grace,
        )
        self.wall = WallTime()
        self.node_id = ids.new(ids.NODE)
        self.draining = False
        #: Told the new deadline (or None) whenever it changes: the shell
        #: arms its one timer for ``on_timer`` there.
        self.on_deadline: Callable[[float | None], None] | None = None
        self._bus = EventBus()
        self._timers = Timers()
        self.jobs = JobLedger(self.core, dispatch, self._timers, self._bus, self.wall)
        self.workers = WorkerDesk(self.core, dispatch, self.jobs, self._bus)
        self.rooms = RoomDirectory(
            room, self.jobs, self._timers, self._bus, self.wall, self._has_workers
        )
        self._rooms = self.rooms.rooms  # (tenant, name) -> record, for the actions
        self._after: deque[tuple[AfterStep, tuple[object, ...]]] = deque()
        self._stepping = False
        self._deadline: float | None = None

    def subscribe(self, subscriber: Subscriber, *kinds: type[DomainEvent]) -> None:
        """Get the domain events of ``kinds``, or all (see ``dispatch.events``)."""
        self._bus.subscribe(subscriber, *kinds)

    def _has_workers(self, key: AgentKey) -> bool:
        return self.core.key_workers(key) > 0

    # ------------------------------------------------------------------
    # Stepping and time.

    @property
    def stepping(self) -> bool:
        """Whether a step is applying actions now (see ``after_step``)."""
        return self._stepping

    def step(self, now: float) -> None:
        """Apply whatever the core decided since the last step."""
        self._apply_all(self.core.process(), now)

    def after_step(self, fn: AfterStep, *args: object) -> None:
        """Call ``fn(now, *args)`` once the actions being applied are all
        applied, in the same step: a local worker answers an offer this way,
        so that its job starts before the loop turns, without feeding the
        core from inside the hook the core's action called.  Outside a step
        it runs at the next one; the shell is asked for one at once."""
        self._after.append((fn, args))
        if not self._stepping and self.on_deadline is not None:
            self._deadline = -1.0
            self.on_deadline(-1.0)  # any time in the past: now

    def next_deadline(self) -> float | None:
        """When ``on_timer`` next has work, or None."""
        if self._after:
            return -1.0
        core, own = self.core.next_deadline(), self._timers.next_deadline()
        if core is None:
            return own
        return core if own is None or core < own else own

    def on_timer(self, now: float) -> None:
        """Fire what is due at ``now``: the domain's timers, then the core's."""
        # The shell's timer fired, so none is armed now; the next deadline is
        # told afresh even if it did not change (uvloop fires up to a
        # millisecond early, when nothing is due yet).
        self._deadline = None
        for kind, key in self._timers.pop_due(now):
            if kind == TimerKind.ROOM_EMPTY:
                self.rooms.on_empty_timeout(key[0], key[1], now)
            elif kind == TimerKind.ROOM_DEPARTURE:
                self.rooms.on_departure_timeout(key[0], key[1], now)
            elif kind == TimerKind.JOB_DURATION:
                self.jobs.started_too_long(key[0], now)
        self._apply_all(self.core.on_timer(now), now)

    def _apply_all(self, batch: list[Action], now: float) -> None:
        outer = not self._stepping
        self._stepping = True
        try:
            while True:
                for action in batch:
                    try:
                        self._apply(action)
                    except Exception:  # one bad action must not stop the others
                        rec = self.jobs.get(action.job_id)
                        extra = job_fields(rec) if rec is not None else {"job": action.job_id}
                        log.exception("applying %s failed", action.kind.name, extra=extra)
                if not self._after or not outer:
                    break  # the outermost step runs the calls: no recursion
                fn, args = self._after.popleft()
                try:
                    fn(now, *args)  # may feed the core: its actions are the next batch
                except Exception:
                    log.exception("a call after a dispatch step failed")
                batch = self.core.process()
        finally:
            self._stepping = not outer
        if outer:  # tell the shell if the deadline moved (next_deadline, inline)
            core = self.core.next_deadline()
            own = self._timers.next_deadline() if self._timers.heap else None
            deadline = own if core is None else core if own is None or core < own else own
            if deadline != self._deadline:
                self._deadline = deadline
                if self.on_deadline is not None:
                    self.on_deadline(deadline)

    def _room_of(self, job: JobRec) -> RoomRec:
        room = self._rooms.get((job.key.tenant, job.room))
        if room is None:  # closed in this very step: the job is being cancelled
            room = RoomRec(
                sid="", name=job.room, tenant=job.key.tenant, created=0, empty_timeout=0,
                departure_timeout=0,
            )  # fmt: skip
        return room

    def _apply(self, a: Action) -> None:
        rec = self.jobs.get(a.job_id)
        if rec is None:
            return
        if a.kind == ActionKind.JOB_STATE and a.state is not None:
            before = self.jobs.on_state(rec, a.state, a.reason, a.worker_id, a.now)
            if before == JobState.ORPHANED:
                self.workers.job_moved(rec.id, before, a.state)
            return
        # Each line's ids are built only for a line that is printed (an
        # offer's is DEBUG): one dict per dispatch at INFO, no more.
        if a.kind == ActionKind.OFFER:
            self.workers.links[a.worker_id or ""].offer(rec, self._room_of(rec), a.now)
            if log.isEnabledFor(logging.DEBUG):
                extra = job_fields(rec, a.worker_id)
                log.debug("offered job (attempt %d)", a.attempt, extra=extra)
        elif a.kind == ActionKind.ASSIGN:
            link = self.workers.links[a.worker_id or ""]
            link.assign(rec, self._room_of(rec), self.jobs.take_acceptance(rec.id), a.now)
            limit = self.cfg.max_job_duration
            if limit > 0:
                self._timers.set(a.now + limit, TimerKind.JOB_DURATION, (rec.id,))
            log.info("assigned job", extra=job_fields(rec, a.worker_id))
        elif a.kind == ActionKind.TERMINATE:
            link_or_none = self.workers.links.get(a.worker_id or "")
            if link_or_none is not None:
                link_or_none.terminate(rec, a.reason, a.now)
            extra = job_fields(rec, a.worker_id)
            extra["reason"] = a.reason.name
            log.info("terminating job", extra=extra)
        elif a.kind == ActionKind.JOB_FAILED:
            extra = job_fields(rec, a.worker_id)
            extra["reason"] = a.reason.name
            log.warning("job failed: %s", REASON_TEXT.get(a.reason, a.reason.name), extra=extra)

    # ------------------------------------------------------------------
    # What the API asks (each takes the caller's tenant).

    def _check_open(self) -> None:
        if self.draining:
            raise Unavailable("the server is draining; it takes no new work")

    def restore(
        self,
        rooms: list[RoomRec],
        dispatches: list[DispatchRec],
        jobs: list[tuple[JobRec, int]],
        now: float,
    ) -> None:
        """After a restart, before anyone connects: the state the store
        kept, oldest first (see ``RoomDirectory.restore``, ``JobLedger.restore``)."""
        self.rooms.restore(rooms, dispatches, now)
        for rec, deadline_ns in jobs:
            dispatch = self.rooms.dispatches.get(rec.dispatch_id)
            if dispatch is not None:
                self.jobs.restore(dispatch, rec, deadline_ns, now)
        self.step(now)

    def create_room(self, tenant: str, spec: RoomSpec, now: float) -> RoomRec:
        self._check_open()
        return self.rooms.create(tenant, spec, now)

    def delete_room(self, tenant: str, name: str, now: float) -> None:
        self.rooms.delete(tenant, name, now)

    def join_room(
        self, tenant: str, spec: RoomSpec, who: ParticipantRec, now: float
    ) -> tuple[RoomRec, ParticipantRec | None]:
        """A participant joins (``RoomDirectory.join``).  A draining server
        takes no new rooms, but people may still join the rooms it has."""
        if self.draining and self.rooms.find(tenant, spec.name) is None:
            raise Unavailable("the server is draining; it opens no new rooms")
        return self.rooms.join(tenant, spec, who, now)

    def leave_room(self, tenant: str, room: str, identity: str, sid: str, now: float) -> None:
        self.rooms.leave(tenant, room, identity, sid, now)

    def track_published(self, tenant: str, room: str, identity: str, now: float) -> None:
        self.rooms.published(tenant, room, identity, now)

    def create_dispatch(
        self, tenant: str, spec: DispatchSpec, now: float, request_id: str = ""
    ) -> DispatchRec:
        self._check_open()
        return self.rooms.create_dispatch(tenant, spec, request_id, now)

    def list_dispatch(
        self, tenant: str, room: str, now: float, dispatch_id: str = ""
    ) -> list[DispatchRec]:
        dispatches = self.rooms.list_dispatch(tenant, room, dispatch_id)
        for d in dispatches:
            self.jobs.refresh_wait(d.job_ids, now)
        return dispatches

    def delete_dispatch(self, tenant: str, room: str, dispatch_id: str, now: float) -> DispatchRec:
        return self.rooms.delete_dispatch(tenant, room, dispatch_id, now)

    # ------------------------------------------------------------------
    # What workers report (``link`` is the reporting worker).

    def register_worker(self, link: WorkerLink, spec: WorkerSpec, now: float) -> str:
        """Returns the worker id.  The caller sends its own answer (the
        register response must be a worker's first frame) before the step
        that may offer it jobs."""
        return self.workers.register(link, spec, now, self.draining)

    def update_worker(
        self, link: WorkerLink, status: WorkerStatus | None, load: float, job_count: int, now: float
    ) -> None:
        self.workers.update(link, status, load, job_count, now)

    def accept(self, link: WorkerLink, job_id: str, agent: Acceptance, now: float) -> None:
        self.workers.accept(link, job_id, agent, now)

    def decline(self, link: WorkerLink, job_id: str, now: float, terminate: bool = False) -> None:
        self.workers.decline(link, job_id, terminate, now)
        self.jobs.tally.declines += 1

    def job_status(
        self, link: WorkerLink, job_id: str, status: JobStatus, now: float, error: str = ""
    ) -> None:
        self.workers.job_status(link, job_id, status, error, now)

    def claim(self, link: WorkerLink, job_ids: list[str], now: float) -> None:
        self.workers.claim(link, job_ids, now)

    def worker_closed(self, link: WorkerLink, now: float) -> None:
        self.workers.closed(link, now)

    # ------------------------------------------------------------------
    # Drain.

    def begin_drain(self, now: float) -> None:
        """Take no new dispatches and offer no new work; running jobs go on."""
        self.draining = True
        self.workers.drain(now)

    def queued_jobs(self) -> int:
        """Jobs waiting for a worker (queued or out on offer)."""
        return self.jobs.pending() - self.jobs.running()

    def running_jobs(self) -> int:
        """Jobs assigned, running or waiting to be claimed back."""
        return self.jobs.running()

    def local_running_jobs(self) -> int:
        """Jobs running on local workers: they stop when the server does."""
        local = {w for w, link in self.workers.links.items() if link.peer == "local"}
        return self.jobs.held_by(local) if local else 0

    def agent_jobs(self, tenant: str, agent_name: str) -> tuple[int, int]:
        """(jobs not ended, of which queued) of one agent in one tenant."""
        return self.jobs.agent_jobs(tenant, agent_name)

    def job_is_live(self, job_id: str) -> bool:
        rec = self.jobs.get(job_id)
        return rec is not None and rec.state != JobState.QUEUED and not rec.state.terminal
