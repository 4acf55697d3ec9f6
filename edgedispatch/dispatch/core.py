"""``DispatchCore``: the scheduling core behind string ids.

The scheduler (``edgedispatch._core``) works on integer handles.  This
adapter is what the domain talks to: it maps worker, job and agent-key ids
to handles, keeps each job's spec, and turns action records back into
``Action`` objects with ids.  It is sans-IO: every call takes ``now``, in
whatever monotonic clock the caller uses.

The event ring
--------------
Events reach the scheduler through its event ring (``ed_ring.h``, a
single-producer/single-consumer ring) and actions leave through its action
ring.  Today both ends live on the event loop's thread: ``DispatchCore`` is
the one producer, and it runs the consumer (``Scheduler.process``) right
after each push, so that the caller learns the scheduler's verdict on that
event at once (an exception, with the state as before it) and every query
sees the current state.  The ring is kept as the seam across which a later
shell will feed the core from several processes; a producer there cannot
wait for a verdict, so the scheduler is, already now, the one place that
validates events.  This adapter checks only what the scheduler cannot see:
ids (unknown, duplicate, empty), the Python types the ring would coerce,
and that ``now`` is a finite number.  Actions wait in the action ring until
``process()`` drains them, once per domain step.

Handles are recycled only after ``process()`` has drained every action that
could name them, so an action never names the wrong worker or job.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import msgspec

from edgedispatch import _core
from edgedispatch._core.codes import (
    SUBMIT_RESTORED_HELD,
    ActionKind,
    EventKind,
    FailReason,
    JobState,
    JobStatus,
    RestartPolicy,
    WaitReason,
    WorkerStatus,
)
from edgedispatch.dispatch.compact import shrink
from edgedispatch.errors import (
    DuplicateId,
    EdgeDispatchError,
    InternalError,
    InvalidEvent,
    UnknownJob,
    UnknownWorker,
)

# Number -> enum member, without IntEnum's slow constructor on the hot path.
_ACTION_KINDS = {int(k): k for k in ActionKind}
_STATES = {int(s): s for s in JobState}
_REASONS = {int(r): r for r in FailReason}
_WAITS = {int(w): w for w in WaitReason}


class AgentKey(msgspec.Struct, frozen=True, order=True, gc=False):
    """Which workers may run a job: tenant + agent name + job type + deployment."""

    tenant: str = ""
    agent_name: str = ""
    job_type: int = 0  #: LiveKit JobType: JT_ROOM=0, JT_PUBLISHER=1, JT_PARTICIPANT=2
    deployment: str = ""


class JobSpec(msgspec.Struct, frozen=True, gc=False):
    """What a job is.  The core reads only ``key``, ``restart_policy`` and
    ``deadline``; the rest rides along for the shell.  Untracked by the
    cyclic GC, as the records are (``records``): what it holds must never
    refer back to it."""

    job_id: str
    key: AgentKey
    deadline: float  #: queue deadline: fail NO_CAPACITY if no worker took it by then
    dispatch_id: str = ""
    room: str = ""
    participant: str | None = None
    metadata: str = ""
    restart_policy: RestartPolicy = RestartPolicy.ON_FAILURE
    payload: Any = None  #: anything else the shell wants back (nothing that refers to the spec)
    #: Recovered after a restart from a worker that held it: it waits
    #: ``reclaim_grace`` to be claimed back (ORPHANED), and is not offered.
    restored_held: bool = False


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
    predicted: float = 0.0  #: its load now, as the core predicts it
    declined: bool = False  #: resting after a decline, until it reports or a job ends


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
        # C ints, not int objects: a list of freed handles held an int
        # object (28 bytes) per handle above 256, each made in the middle of
        # a churn of jobs and kept after it, and they pinned most of the
        # pymalloc arenas the churn had used (bench churn --dispatch).
        self._free = array("i")
        self._freeing = array("i")

    def add(self, ident: str) -> int:
        if self._free:
            h = self._free.pop()
            self.ids[h] = ident
        else:
            h = len(self.ids)
            self.ids.append(ident)
        self.by_id[ident] = h
        return h

    def undo_add(self, ident: str) -> None:
        """Forget an ``add`` whose event the scheduler refused: nothing can
        name its handle, so it is free at once."""
        h = self.by_id.pop(ident)
        self.ids[h] = None
        self._free.append(h)

    def drop(self, ident: str) -> int:
        """Forget ``ident``; its handle still names it until ``recycle()``."""
        h = self.by_id.pop(ident)
        shrink(self.by_id)
        self._freeing.append(h)
        return h

    def recycle(self) -> None:
        if self._freeing:
            for h in self._freeing:
                self.ids[h] = None  # the id string goes now, not at reuse
            self._free.extend(self._freeing)
            del self._freeing[:]


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
    # Events.  Each is handled by the scheduler before the call returns; an
    # event it refuses raises here and changes nothing.

    def _push(
        self, kind: int, job: int, worker: int, arg: int, value: float, now: float, extra: int
    ) -> None:
        if not self._s.events.push(kind, job, worker, arg, value, now, extra):
            raise InternalError("event ring is full; it is drained after every push")
        self._s.process()

    @staticmethod
    def _check_now(now: float) -> None:
        # The scheduler orders its timers by ``now``: a NaN would corrupt them.
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

    def register_worker(self, worker_id: str, key: AgentKey, slots: int, now: float) -> None:
        """A worker connected and registered for ``key`` with ``slots`` job slots."""
        self._check_now(now)
        if not worker_id:
            raise InvalidEvent("worker id must not be empty")
        if worker_id in self._workers.by_id:
            raise DuplicateId(f"worker {worker_id!r} is already registered", worker_id=worker_id)
        if type(slots) is not int:  # the ring would coerce True or 2.5
            raise InvalidEvent(f"slot cap must be an integer, got {slots!r}")
        k = self._key_handle(key)
        h = self._workers.add(worker_id)
        try:
            self._push(EventKind.WORKER_REGISTER, -1, h, k, 0.0, now, slots)
        except EdgeDispatchError:
            self._workers.undo_add(worker_id)
            raise
        self._worker_keys[worker_id] = key

    def update_worker(
        self, worker_id: str, status: WorkerStatus, load: float, now: float, job_count: int = 0
    ) -> None:
        """A worker reported its status, load (0..1) and job count."""
        self._check_now(now)
        h = self._worker(worker_id)
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
        self._push(EventKind.WORKER_DISCONNECT, -1, h, 0, 0.0, now, 0)
        self._workers.drop(worker_id)
        self._worker_keys.pop(worker_id, None)

    def submit(self, spec: JobSpec, now: float) -> None:
        """A new job.  It is offered at once if a worker can take it, else queued."""
        self._check_now(now)
        if not spec.job_id:
            raise InvalidEvent("job id must not be empty")
        if spec.job_id in self._jobs.by_id:
            raise DuplicateId(f"job {spec.job_id!r} already exists", job_id=spec.job_id)
        k = self._key_handle(spec.key)
        h = self._jobs.add(spec.job_id)
        if h >= len(self._specs):
            self._specs.extend([None] * (h + 1 - len(self._specs)))
        self._specs[h] = spec
        policy = int(spec.restart_policy)
        if spec.restored_held:
            policy |= SUBMIT_RESTORED_HELD
        try:
            self._push(EventKind.JOB_SUBMIT, h, -1, k, float(spec.deadline), now, policy)
        except EdgeDispatchError:
            self._jobs.undo_add(spec.job_id)
            self._specs[h] = None
            raise

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
        j, w = self._job(job_id), self._worker(worker_id)
        self._push(EventKind.JOB_STATUS, j, w, int(status), 0.0, now, 0)

    def cancel(self, job_id: str, now: float, reason: FailReason = FailReason.CANCELLED) -> None:
        """Stop a job: a pending one ends CANCELLED now; a running one gets a
        TERMINATE and ends when its worker confirms or ``terminate_grace`` passes."""
        self._check_now(now)
        self._push(EventKind.JOB_CANCEL, self._job(job_id), -1, int(reason), 0.0, now, 0)

    def migrate(self, job_id: str, worker_id: str, now: float) -> None:
        """A reconnected worker claims back a job it was running (MigrateJob).
        Raises ``InvalidTransition`` if the job is not waiting to be claimed
        by a worker of its agent with a free slot."""
        self._check_now(now)
        j, w = self._job(job_id), self._worker(worker_id)
        try:
            self._push(EventKind.JOB_MIGRATE, j, w, 0, 0.0, now, 0)
        except EdgeDispatchError as exc:
            # The scheduler names handles; say which job and worker.
            raise type(exc)(f"{job_id} on {worker_id}: {exc.msg}") from None

    def reclaim_by(self, job_id: str, when: float, now: float) -> None:
        """A job waiting to be claimed back (recovered held) waits until
        ``when`` rather than a whole ``reclaim_grace`` from ``now``: its wait
        began before the restart.  Raises ``InvalidTransition`` if it is not
        waiting."""
        self._check_now(now)
        try:
            self._push(EventKind.JOB_RECLAIM_BY, self._job(job_id), -1, 0, float(when), now, 0)
        except EdgeDispatchError as exc:
            raise type(exc)(f"{job_id}: {exc.msg}") from None

    def forget(self, job_id: str) -> None:
        """Drop a finished job's record so its id and memory can be reused
        (``InvalidTransition`` if it has not finished)."""
        j = self._job(job_id)
        self._s.release_job(j)
        self._jobs.drop(job_id)
        self._specs[j] = None

    # ------------------------------------------------------------------
    # Running the core.

    def process(self) -> list[Action]:
        """The actions decided since the last call, in order."""
        actions = list(self._drain())
        self._workers.recycle()
        self._jobs.recycle()
        return actions

    def on_timer(self, now: float) -> list[Action]:
        """Fire due timers (offer timeouts, queue deadlines, backoff, grace)."""
        self._check_now(now)
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
    # Queries: they see the state after the last event.

    def worker(self, worker_id: str) -> WorkerView:
        w = self._worker(worker_id)
        info = self._s.worker_info(w)
        jobs = [self._jobs.ids[j] for j in self._s.worker_jobs(w)]
        return WorkerView(
            worker_id,
            self._key_list[info.key],
            WorkerStatus(info.status),
            info.load,
            info.slots,
            info.used,
            info.job_count,
            bool(info.eligible),
            [j for j in jobs if j is not None],
            info.predicted,
            bool(info.declined),
        )

    def workers(self) -> list[WorkerView]:
        return [self.worker(w) for w in sorted(self._workers.by_id)]

    def job(self, job_id: str, now: float) -> JobView:
        j = self._job(job_id)
        info = self._s.job_info(j)
        spec = self._specs[j]
        assert spec is not None
        return JobView(
            spec,
            JobState(info.state),
            self._workers.ids[info.worker] if info.worker >= 0 else None,
            info.attempts,
            FailReason(info.reason),
            WaitReason(self._s.wait_reason(j, now)),
            bool(info.terminating),
        )

    def job_state(self, job_id: str) -> tuple[JobState, str | None]:
        """A job's state and worker: the cheap part of ``job()``."""
        info = self._s.job_info(self._job(job_id))
        return _STATES[info.state], self._workers.ids[info.worker] if info.worker >= 0 else None

    def wait_reason(self, job_id: str, now: float) -> WaitReason:
        """Why a job waits (NOT_WAITING unless it is queued): cheaper than ``job()``."""
        return _WAITS[self._s.wait_reason(self._job(job_id), now)]

    def worker_status(self, worker_id: str) -> WorkerStatus:
        """A worker's status: the cheap part of ``worker()``."""
        return WorkerStatus(self._s.worker_info(self._worker(worker_id)).status)

    def worker_jobs(self, worker_id: str) -> list[str]:
        """The jobs holding a slot on a worker (offered, assigned or running)."""
        ids = self._jobs.ids
        return [j for h in self._s.worker_jobs(self._worker(worker_id)) if (j := ids[h])]

    def key_workers(self, key: AgentKey) -> int:
        """How many workers are registered for ``key`` (no scan)."""
        k = self._keys.get(key)
        return 0 if k is None else int(self._s.key_info(k).workers)

    def jobs(self, now: float) -> list[JobView]:
        return [self.job(j, now) for j in sorted(self._jobs.by_id)]

    def queued(self, key: AgentKey) -> list[str]:
        """Queued job ids of ``key``, in the order they will be offered."""
        k = self._keys.get(key)
        if k is None:
            return []
        return [jid for j in self._s.queued_jobs(k) if (jid := self._jobs.ids[j]) is not None]

    def has_job(self, job_id: str) -> bool:
        return job_id in self._jobs.by_id
