"""``DispatchCore``: the scheduling core behind string ids.

The scheduler (``edgedispatch._core``) works on integer handles and typed
records.  This adapter is what the shell talks to: it maps worker, job and
agent-key ids to handles, validates every event before it reaches the core
(so a bad event raises here and changes nothing), keeps each job's payload,
and turns action records back into ``Action`` objects with ids.

It is still sans-IO: no sockets, no tasks, no clock.  Every call takes
``now``, in whatever monotonic clock the caller uses.

Handles are recycled only after ``process()`` has drained every action that
could name them, so an action never names the wrong worker or job.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import msgspec

from edgedispatch import _core
from edgedispatch._core.codes import (
    ActionKind,
    EventKind,
    FailReason,
    JobState,
    JobStatus,
    RestartPolicy,
    WaitReason,
    WorkerStatus,
)
from edgedispatch.errors import (
    DuplicateId,
    EdgeDispatchError,
    InternalError,
    InvalidEvent,
    InvalidTransition,
    UnknownJob,
    UnknownWorker,
)

# Number -> enum member, without IntEnum's slow constructor on the hot path.
_ACTION_KINDS = {int(k): k for k in ActionKind}
_STATES = {int(s): s for s in JobState}
_REASONS = {int(r): r for r in FailReason}


class AgentKey(msgspec.Struct, frozen=True, order=True):
    """Which workers may run a job: tenant + agent name + job type + deployment."""

    tenant: str = ""
    agent_name: str = ""
    job_type: int = 0  #: LiveKit JobType: JT_ROOM=0, JT_PUBLISHER=1, JT_PARTICIPANT=2
    deployment: str = ""


class JobSpec(msgspec.Struct, frozen=True):
    """What a job is.  The core reads only ``key``, ``restart_policy`` and
    ``deadline``; the rest rides along for the shell."""

    job_id: str
    key: AgentKey
    deadline: float  #: queue deadline: fail NO_CAPACITY if no worker took it by then
    dispatch_id: str = ""
    room: str = ""
    participant: str | None = None
    metadata: str = ""
    restart_policy: RestartPolicy = RestartPolicy.ON_FAILURE
    payload: Any = None  #: anything else the shell wants back (e.g. the Job proto)


class Action(msgspec.Struct, frozen=True):
    """One thing the shell must do or know, in the order the core decided it."""

    kind: ActionKind
    job_id: str
    worker_id: str | None
    state: JobState | None = None  #: for JOB_STATE
    reason: FailReason = FailReason.NONE
    deadline: float = 0.0  #: for OFFER: answer by then
    attempt: int = 0  #: for OFFER: 1 for the first offer of this job
    now: float = 0.0


class WorkerView(msgspec.Struct, frozen=True):
    worker_id: str
    key: AgentKey
    status: WorkerStatus
    load: float
    slots: int
    used: int
    job_count: int
    eligible: bool
    jobs: list[str]
    permissions: Any = None


class JobView(msgspec.Struct, frozen=True):
    spec: JobSpec
    state: JobState
    worker_id: str | None
    attempts: int
    reason: FailReason
    wait_reason: WaitReason
    terminating: bool


class _Handles:
    """Ids to small integer handles, recycling freed handles only when told."""

    def __init__(self) -> None:
        self.by_id: dict[str, int] = {}
        self.ids: list[str | None] = []
        self._free: list[int] = []
        self._freeing: list[int] = []

    def add(self, ident: str) -> int:
        if self._free:
            h = self._free.pop()
            self.ids[h] = ident
        else:
            h = len(self.ids)
            self.ids.append(ident)
        self.by_id[ident] = h
        return h

    def drop(self, ident: str) -> int:
        """Forget ``ident``; its handle still names it until ``recycle()``."""
        h = self.by_id.pop(ident)
        self._freeing.append(h)
        return h

    def recycle(self) -> None:
        if self._freeing:
            self._free.extend(self._freeing)
            self._freeing.clear()


class DispatchCore:
    """See the module docstring.

    :param impl: a scheduler module from ``_core.implementations()``; by
        default the one ``_core`` selected (compiled unless disabled).
    :param scheduler_options: passed to the scheduler (``seed``,
        ``load_threshold``, ``offer_timeout``, ``max_attempts``, ...).
    """

    def __init__(self, impl: ModuleType | None = None, **scheduler_options: Any) -> None:
        cls = impl.Scheduler if impl is not None else _core.Scheduler
        self._s = cls(**scheduler_options)
        self._rec = self._record_type(impl)()
        self._workers = _Handles()
        self._jobs = _Handles()
        self._keys: dict[AgentKey, int] = {}
        self._key_list: list[AgentKey] = []
        self._specs: list[JobSpec | None] = []
        self._permissions: dict[str, Any] = {}
        self._worker_keys: dict[str, AgentKey] = {}

    @staticmethod
    def _record_type(impl: ModuleType | None) -> type:
        if impl is None:
            return _core.Record  # type: ignore[no-any-return]
        if impl is _core.scheduler_py:
            return _core.ring_py.Record
        assert _core.ring_c is not None
        return _core.ring_c.Record  # type: ignore[no-any-return]

    @property
    def scheduler(self) -> Any:
        """The underlying handle-level scheduler (for benchmarks and tests)."""
        return self._s

    # ------------------------------------------------------------------
    # Events.  Each validates first and raises without changing anything.

    def _push(
        self, kind: int, job: int, worker: int, arg: int, value: float, now: float, extra: int
    ) -> None:
        if not self._s.events.push(kind, job, worker, arg, value, now, extra):
            self._s.process()  # full: make room; the actions wait in the core
            if not self._s.events.push(kind, job, worker, arg, value, now, extra):
                raise InternalError("event ring is full after processing it")

    @staticmethod
    def _check_now(now: float) -> None:
        if not math.isfinite(now):
            raise InvalidEvent(f"now must be a finite number, got {now!r}")

    def _key_handle(self, key: AgentKey) -> int:
        h = self._keys.get(key)
        if h is None:
            h = self._keys[key] = len(self._key_list)
            self._key_list.append(key)
        return h

    def _worker(self, worker_id: str) -> int:
        h = self._workers.by_id.get(worker_id)
        if h is None:
            raise UnknownWorker(f"unknown worker {worker_id!r}", worker_id=worker_id)
        return h

    def _job(self, job_id: str) -> int:
        h = self._jobs.by_id.get(job_id)
        if h is None:
            raise UnknownJob(f"unknown job {job_id!r}", job_id=job_id)
        return h

    def register_worker(
        self, worker_id: str, key: AgentKey, slots: int, now: float, permissions: Any = None
    ) -> None:
        """A worker connected and registered for ``key`` with ``slots`` job slots."""
        self._check_now(now)
        if not worker_id:
            raise InvalidEvent("worker id must not be empty")
        if worker_id in self._workers.by_id:
            raise DuplicateId(f"worker {worker_id!r} is already registered", worker_id=worker_id)
        if not isinstance(slots, int) or isinstance(slots, bool) or not 1 <= slots <= 1_000_000:
            raise InvalidEvent(f"slot cap must be an integer in 1..1000000, got {slots!r}")
        k = self._key_handle(key)
        h = self._workers.add(worker_id)
        self._permissions[worker_id] = permissions
        self._worker_keys[worker_id] = key
        self._push(EventKind.WORKER_REGISTER, -1, h, k, 0.0, now, slots)

    def update_worker(
        self, worker_id: str, status: WorkerStatus, load: float, now: float, job_count: int = 0
    ) -> None:
        """A worker reported its status, load (0..1) and job count."""
        self._check_now(now)
        h = self._worker(worker_id)
        if not isinstance(load, int | float) or not 0.0 <= load <= 1.0:  # NaN fails too
            raise InvalidEvent(f"load must be within 0..1, got {load!r}")
        if status not in (WorkerStatus.AVAILABLE, WorkerStatus.FULL):
            raise InvalidEvent(f"worker status must be AVAILABLE or FULL, got {status!r}")
        if job_count < 0:
            raise InvalidEvent(f"job count must be >= 0, got {job_count!r}")
        self._push(EventKind.WORKER_UPDATE, -1, h, int(status), float(load), now, job_count)

    def drain_worker(self, worker_id: str, now: float) -> None:
        """Offer ``worker_id`` no new work; its running jobs go on."""
        self._check_now(now)
        self._push(EventKind.WORKER_DRAIN, -1, self._worker(worker_id), 0, 0.0, now, 0)

    def disconnect_worker(self, worker_id: str, now: float) -> None:
        """The worker is gone.  Its offers are retried elsewhere; its running
        jobs wait ``reclaim_grace`` to be claimed back (``migrate``)."""
        self._check_now(now)
        h = self._worker(worker_id)
        self._workers.drop(worker_id)
        self._permissions.pop(worker_id, None)
        self._worker_keys.pop(worker_id, None)
        self._push(EventKind.WORKER_DISCONNECT, -1, h, 0, 0.0, now, 0)

    def submit(self, spec: JobSpec, now: float) -> None:
        """A new job.  It is offered at once if a worker can take it, else queued."""
        self._check_now(now)
        if not spec.job_id:
            raise InvalidEvent("job id must not be empty")
        if spec.job_id in self._jobs.by_id:
            raise DuplicateId(f"job {spec.job_id!r} already exists", job_id=spec.job_id)
        if math.isnan(spec.deadline):
            raise InvalidEvent("queue deadline is NaN")
        policy = RestartPolicy(spec.restart_policy)
        k = self._key_handle(spec.key)
        h = self._jobs.add(spec.job_id)
        if h >= len(self._specs):
            self._specs.extend([None] * (h + 1 - len(self._specs)))
        self._specs[h] = spec
        self._push(EventKind.JOB_SUBMIT, h, -1, k, float(spec.deadline), now, int(policy))

    def accept(self, job_id: str, worker_id: str, now: float) -> None:
        """The worker accepted the offer (AvailabilityResponse available=true)."""
        self._check_now(now)
        self._push(EventKind.JOB_ACCEPT, self._job(job_id), self._worker(worker_id), 0, 0.0, now, 0)

    def reject(self, job_id: str, worker_id: str, now: float) -> None:
        """The worker declined the offer (AvailabilityResponse available=false)."""
        self._check_now(now)
        self._push(EventKind.JOB_REJECT, self._job(job_id), self._worker(worker_id), 0, 0.0, now, 0)

    def job_status(self, job_id: str, worker_id: str, status: JobStatus, now: float) -> None:
        """The worker reported JS_RUNNING, JS_SUCCESS or JS_FAILED for a job."""
        self._check_now(now)
        if status not in (JobStatus.RUNNING, JobStatus.SUCCESS, JobStatus.FAILED):
            raise InvalidEvent(f"job status must be RUNNING, SUCCESS or FAILED, got {status!r}")
        j, w = self._job(job_id), self._worker(worker_id)
        self._push(EventKind.JOB_STATUS, j, w, int(status), 0.0, now, 0)

    def cancel(self, job_id: str, now: float, reason: FailReason = FailReason.CANCELLED) -> None:
        """Stop a job: a pending one ends CANCELLED now; a running one gets a
        TERMINATE and ends when its worker confirms or ``terminate_grace`` passes."""
        self._check_now(now)
        self._push(EventKind.JOB_CANCEL, self._job(job_id), -1, int(reason), 0.0, now, 0)

    def migrate(self, job_id: str, worker_id: str, now: float) -> None:
        """A reconnected worker claims back a job it was running (MigrateJob)."""
        self._check_now(now)
        j, w = self._job(job_id), self._worker(worker_id)
        self._s.process()  # the checks below need the current state
        state, *_ = self._s.job_info(j)
        if state in (JobState.ASSIGNED, JobState.RUNNING) and self._s.job_info(j)[2] == w:
            return
        if state != JobState.ORPHANED:
            raise InvalidTransition(f"job {job_id!r} is {JobState(state).name}, not orphaned")
        spec = self._specs[j]
        assert spec is not None
        if self._worker_keys[worker_id] != spec.key:
            raise InvalidTransition(f"worker {worker_id!r} serves another agent than {job_id!r}")
        _, _, _, slots, used, *_ = self._s.worker_info(w)
        if used >= slots:
            raise InvalidTransition(f"worker {worker_id!r} has no free slot for {job_id!r}")
        self._push(EventKind.JOB_MIGRATE, j, w, 0, 0.0, now, 0)

    def forget(self, job_id: str) -> None:
        """Drop a finished job's record so its id and memory can be reused."""
        j = self._job(job_id)
        self._s.process()
        if not JobState(self._s.job_info(j)[0]).terminal:
            raise InvalidTransition(f"job {job_id!r} has not finished")
        self._s.release_job(j)
        self._jobs.drop(job_id)
        self._specs[j] = None

    # ------------------------------------------------------------------
    # Running the core.

    def process(self) -> list[Action]:
        """Handle every queued event and return the actions, in order."""
        try:
            self._s.process()
        except EdgeDispatchError as exc:  # the checks above should make this impossible
            raise InternalError(f"scheduler refused a validated event: {exc}") from exc
        actions = list(self._drain())
        self._workers.recycle()
        self._jobs.recycle()
        return actions

    def on_timer(self, now: float) -> list[Action]:
        """Fire due timers (offer timeouts, queue deadlines, backoff, grace)."""
        self._check_now(now)
        self._s.process()
        self._s.on_timer(now)
        return self.process()

    def next_deadline(self) -> float | None:
        """When ``on_timer`` next has work, or None."""
        result: float | None = self._s.next_deadline()
        return result

    def _drain(self) -> Iterator[Action]:
        rec = self._rec
        wids, jids = self._workers.ids, self._jobs.ids
        while self._s.pop_action(rec):
            kind = _ACTION_KINDS[rec.kind]
            job_id = jids[rec.job]
            worker_id = wids[rec.worker] if rec.worker >= 0 else None
            assert job_id is not None
            if kind == ActionKind.OFFER:
                yield Action(
                    kind, job_id, worker_id, deadline=rec.value, attempt=rec.arg, now=rec.now
                )
            elif kind == ActionKind.JOB_STATE:
                yield Action(
                    kind, job_id, worker_id, _STATES[rec.arg], _REASONS[rec.extra], now=rec.now
                )
            elif kind in (ActionKind.JOB_FAILED, ActionKind.TERMINATE):
                yield Action(kind, job_id, worker_id, reason=_REASONS[rec.arg], now=rec.now)
            else:
                yield Action(kind, job_id, worker_id, now=rec.now)

    # ------------------------------------------------------------------
    # Queries (they see the state after the last process()).

    def worker(self, worker_id: str) -> WorkerView:
        w = self._worker(worker_id)
        k, status, load, slots, used, job_count, _serial, eligible = self._s.worker_info(w)
        jobs = [self._jobs.ids[j] for j in self._s.worker_jobs(w)]
        return WorkerView(
            worker_id,
            self._key_list[k],
            WorkerStatus(status),
            load,
            slots,
            used,
            job_count,
            bool(eligible),
            [j for j in jobs if j is not None],
            self._permissions.get(worker_id),
        )

    def workers(self) -> list[WorkerView]:
        return [self.worker(w) for w in sorted(self._workers.by_id)]

    def job(self, job_id: str, now: float) -> JobView:
        j = self._job(job_id)
        state, _k, w, attempts, reason, _deadline, terminating = self._s.job_info(j)
        spec = self._specs[j]
        assert spec is not None
        return JobView(
            spec,
            JobState(state),
            self._workers.ids[w] if w >= 0 else None,
            attempts,
            FailReason(reason),
            WaitReason(self._s.wait_reason(j, now)),
            bool(terminating),
        )

    def job_state(self, job_id: str) -> tuple[JobState, str | None]:
        """A job's state and worker: the cheap part of ``job()``."""
        j = self._job(job_id)
        state, _k, w, *_ = self._s.job_info(j)
        return _STATES[state], self._workers.ids[w] if w >= 0 else None

    def worker_status(self, worker_id: str) -> WorkerStatus:
        """A worker's status: the cheap part of ``worker()``."""
        return WorkerStatus(self._s.worker_info(self._worker(worker_id))[1])

    def jobs(self, now: float) -> list[JobView]:
        return [self.job(j, now) for j in sorted(self._jobs.by_id)]

    def queued(self, key: AgentKey) -> list[str]:
        """Queued job ids of ``key``, in the order they will be offered."""
        k = self._keys.get(key)
        if k is None:
            return []
        return [jid for j in self._s.queued_jobs(k) if (jid := self._jobs.ids[j]) is not None]

    def was_tried(self, job_id: str, worker_id: str) -> bool:
        """Whether ``worker_id`` was already offered ``job_id``."""
        return bool(self._s.was_tried(self._job(job_id), self._worker(worker_id)))

    def has_job(self, job_id: str) -> bool:
        return job_id in self._jobs.by_id

    def has_worker(self, worker_id: str) -> bool:
        return worker_id in self._workers.by_id
