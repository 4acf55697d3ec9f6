"""The scheduling core: which worker gets which job.

Written in Cython pure-Python mode.  This file runs as plain Python (the
reference and the test oracle) and is also compiled, with the declarations in
``scheduler_c.pxd``, into ``edgedispatch._core.scheduler_c``.  Both must
produce the same actions and the same state for the same events; a property
test checks it.  ``Scheduler`` turns each event into decisions, which its base
class ``Decisions`` (``decisions_py.py``) makes, on the storage of ``Tables``
(``tables_py.py``).

Theory of operation
-------------------
The core is sans-IO: it owns no sockets, tasks or clocks.  The shell pushes
event records onto ``events`` (a single-producer/single-consumer ring), calls
``process()``, and pops action records with ``pop_action()``.  Every event
carries ``now``; timers due at or before an event's ``now`` fire before that
event is handled, so the outcome depends only on the order and times of the
events.  ``next_deadline()`` and ``on_timer(now)`` let the shell drive time.

Workers, jobs and agent keys are small integer handles chosen by the caller
(``core.py`` maps string ids to them).  Per-handle state lives in typed
arrays so that the compiled core's decision path touches no Python objects.

Invariants (checked by tests after every step):
  * a worker's held slots (``used``) never exceed its cap;
  * a job is held by at most one worker, and a held job is OFFERED,
    ASSIGNED or RUNNING on that worker;
  * a job is pending (QUEUED, OFFERED, ASSIGNED, RUNNING, ORPHANED) or in
    exactly one terminal state (SUCCESS, FAILED, CANCELLED), which is final;
  * a QUEUED job is in its agent key's FIFO, and no other job is;
  * the eligible heap of a key holds exactly its workers that are alive,
    AVAILABLE, not waiting after a decline, under the load threshold (as
    predicted: ``Tables._predicted``) and have a free slot.

Waiting for capacity is not failing
-----------------------------------
A decline means "not now": the job goes back to the front of its queue
and out again at once to another worker, and the worker that declined gets
no offer until it reports again or a job of its ends.  Those capacity
events pump the queue at once.  Backoff is only for workers that fail (an
offer unanswered, a worker lost), so that a broken worker is not hammered.
"""

from __future__ import annotations

try:
    import cython
except ModuleNotFoundError:  # an installed wheel: Cython is a build requirement only
    from edgedispatch._core import _cython_shim as cython

from edgedispatch._core import codes
from edgedispatch.errors import InvalidEvent, InvalidTransition

if cython.compiled:
    from cython.cimports.edgedispatch._core.decisions_c import Decisions
    from cython.cimports.edgedispatch._core.ring_c import Record, Ring
    from cython.cimports.edgedispatch._core.tables_c import KeyState
else:
    from edgedispatch._core.decisions_py import Decisions
    from edgedispatch._core.ring_py import Record, Ring
    from edgedispatch._core.tables_py import KeyState

# The numbers come from codes.py; the compiled core reads them into C
# globals (declared in scheduler_c.pxd) once, at import.
EV_REGISTER = int(codes.EventKind.WORKER_REGISTER)
EV_UPDATE = int(codes.EventKind.WORKER_UPDATE)
EV_DISCONNECT = int(codes.EventKind.WORKER_DISCONNECT)
EV_DRAIN = int(codes.EventKind.WORKER_DRAIN)
EV_SUBMIT = int(codes.EventKind.JOB_SUBMIT)
EV_ACCEPT = int(codes.EventKind.JOB_ACCEPT)
EV_REJECT = int(codes.EventKind.JOB_REJECT)
EV_STATUS = int(codes.EventKind.JOB_STATUS)
EV_CANCEL = int(codes.EventKind.JOB_CANCEL)
EV_MIGRATE = int(codes.EventKind.JOB_MIGRATE)
EV_RECLAIM_BY = int(codes.EventKind.JOB_RECLAIM_BY)

ACT_ASSIGN = int(codes.ActionKind.ASSIGN)
ACT_TERMINATE = int(codes.ActionKind.TERMINATE)
ACT_STATE = int(codes.ActionKind.JOB_STATE)

WS_AVAILABLE = int(codes.WorkerStatus.AVAILABLE)
WS_FULL = int(codes.WorkerStatus.FULL)
WS_DRAINING = int(codes.WorkerStatus.DRAINING)

J_QUEUED = int(codes.JobState.QUEUED)
J_OFFERED = int(codes.JobState.OFFERED)
J_ASSIGNED = int(codes.JobState.ASSIGNED)
J_RUNNING = int(codes.JobState.RUNNING)
J_ORPHANED = int(codes.JobState.ORPHANED)
J_SUCCESS = int(codes.JobState.SUCCESS)
J_FAILED = int(codes.JobState.FAILED)
J_CANCELLED = int(codes.JobState.CANCELLED)

JS_RUNNING = int(codes.JobStatus.RUNNING)
JS_SUCCESS = int(codes.JobStatus.SUCCESS)
JS_FAILED = int(codes.JobStatus.FAILED)

R_NONE = int(codes.FailReason.NONE)
R_NO_CAPACITY = int(codes.FailReason.NO_CAPACITY)
R_WORKER_LOST = int(codes.FailReason.WORKER_LOST)
R_JOB_ERROR = int(codes.FailReason.JOB_ERROR)
R_CANCELLED = int(codes.FailReason.CANCELLED)
R_LAST = max(int(r) for r in codes.FailReason)

# Job flags.
F_TERMINATING = codes.JOB_TERMINATING
F_RESTORED_HELD = codes.SUBMIT_RESTORED_HELD

U64 = 0xFFFFFFFFFFFFFFFF


def _splitmix64(x: cython.ulonglong) -> cython.ulonglong:
    """One step of SplitMix64; the masks keep plain Python at 64 bits."""
    z: cython.ulonglong = (x + 0x9E3779B97F4A7C15) & U64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & U64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & U64
    return z ^ (z >> 31)


class Scheduler(Decisions):
    """The decision engine.  See the module docstring for the contract.

    :param seed: seeds the tie-break between equally loaded workers.
    :param load_threshold: a worker reporting this load or more gets no offers.
    :param offer_timeout: seconds a worker has to accept or reject an offer.
    :param max_attempts: offers a job may get before it fails MAX_ATTEMPTS.
    :param retry_base: backoff before the third failed offer (unanswered, or
        its worker lost); it doubles after that.  The first retry goes out
        at once, and a declined job never waits for a timer.
    :param retry_max: the backoff never exceeds this.
    :param reclaim_grace: seconds a disconnected worker's running jobs wait
        to be claimed back before they are re-queued or failed.
    :param terminate_grace: seconds a terminated job's worker has to confirm
        the end before the core ends it (CANCELLED) and frees its slot.
    :param ring_capacity: size of the event and action rings (power of two).
    """

    def __init__(
        self,
        seed: int = 0,
        load_threshold: float = 0.7,
        offer_timeout: float = 5.0,
        max_attempts: int = 5,
        retry_base: float = 0.1,
        retry_max: float = 2.0,
        reclaim_grace: float = 10.0,
        terminate_grace: float = 20.0,
        ring_capacity: int = 65536,
    ) -> None:
        if not (load_threshold > 0.0):
            raise InvalidEvent("load_threshold must be > 0")
        if not (offer_timeout > 0.0) or not (reclaim_grace >= 0.0) or not (terminate_grace >= 0.0):
            raise InvalidEvent("timeouts must be positive numbers")
        if max_attempts < 1:
            raise InvalidEvent("max_attempts must be >= 1")
        if not (retry_base >= 0.0) or not (retry_max >= 0.0):
            raise InvalidEvent("retry backoff must be >= 0")
        self.events = Ring(ring_capacity)
        Decisions.__init__(
            self, load_threshold, offer_timeout, max_attempts, retry_base, retry_max, ring_capacity
        )
        self._rec = Record()
        self._rng = _splitmix64(seed & U64)
        self.reclaim_grace = reclaim_grace
        self.terminate_grace = terminate_grace
        self._serial = 0
        self.stale_events = 0

    # ------------------------------------------------------------------
    # Event loop.

    def process(self, max_events: cython.int = -1) -> cython.int:
        """Handle queued events in order.  Returns how many were handled.

        An event that breaks the core's rules raises; it is consumed, the
        state is as before it, and the events behind it stay queued.
        """
        n: cython.int = 0
        rec: Record = self._rec
        while max_events < 0 or n < max_events:
            if not self.events.pop_into(rec):
                break
            n += 1
            if self._tn > 0 and self._t_when[0] <= rec.now:
                self._fire_timers(rec.now)
            self._on_event(rec)
        return n

    def on_timer(self, now: cython.double) -> None:
        """Handle queued events, then fire every timer due at or before ``now``."""
        self.process()
        self._fire_timers(now)

    def next_deadline(self) -> float | None:
        """The earliest time ``on_timer`` has work to do, or None."""
        self._purge_stale_timers()
        if self._tn == 0:
            return None
        return float(self._t_when[0])

    def pop_action(self, rec: Record) -> cython.bint:
        """Move the oldest action into ``rec``; False when there is none."""
        if self.actions.pop_into(rec):
            return True
        if self._overflow:
            (rec.kind, rec.job, rec.worker, rec.arg, rec.value, rec.now, rec.extra) = (
                self._overflow.popleft()
            )
            return True
        return False

    def _on_event(self, rec: Record) -> cython.int:
        kind: cython.int = rec.kind
        if kind == EV_SUBMIT:
            self._on_submit(rec.job, rec.arg, rec.value, rec.now, rec.extra)
        elif kind == EV_ACCEPT:
            self._on_accept(rec.job, rec.worker, rec.now)
        elif kind == EV_REJECT:
            self._on_reject(rec.job, rec.worker, rec.now)
        elif kind == EV_STATUS:
            self._on_status(rec.job, rec.worker, rec.arg, rec.now)
        elif kind == EV_UPDATE:
            self._on_update(rec.worker, rec.arg, rec.value, rec.extra, rec.now)
        elif kind == EV_REGISTER:
            self._on_register(rec.worker, rec.arg, rec.extra, rec.now)
        elif kind == EV_DISCONNECT:
            self._on_disconnect(rec.worker, rec.now)
        elif kind == EV_DRAIN:
            self._on_drain(rec.worker, rec.now)
        elif kind == EV_CANCEL:
            self._on_cancel(rec.job, rec.arg, rec.now)
        elif kind == EV_MIGRATE:
            self._on_migrate(rec.job, rec.worker, rec.now)
        elif kind == EV_RECLAIM_BY:
            self._on_reclaim_by(rec.job, rec.value, rec.now)
        else:
            raise InvalidEvent(f"unknown event kind {kind}")
        return 0

    # ------------------------------------------------------------------
    # Worker events.

    def _on_register(
        self, w: cython.int, k: cython.int, slots: cython.longlong, now: cython.double
    ) -> cython.int:
        if w < 0 or k < 0:
            raise InvalidEvent("worker and agent key handles must be >= 0")
        if slots < 1 or slots > 1_000_000:
            raise InvalidEvent(f"slot cap must be 1..1000000, got {slots}")
        if w < self._wcap and self._w_alive[w]:
            raise InvalidEvent(f"worker handle {w} is already registered")
        if w >= self._wcap:
            self.reserve_workers(w + 1)
        ks: KeyState = self._key(k)
        self._serial += 1
        self._rng = _splitmix64(self._rng)
        self._w_alive[w] = 1
        self._w_status[w] = WS_AVAILABLE
        self._w_key[w] = k
        self._w_cap[w] = slots
        self._w_used[w] = 0
        self._w_pos[w] = -1
        self._w_jobcount[w] = 0
        self._w_jhead[w] = -1
        self._w_load[w] = 0.0
        self._w_score[w] = 0.0
        self._w_base[w] = 0
        self._w_perjob[w] = 0.0
        self._w_declined[w] = 0
        self._w_tie[w] = self._rng
        self._w_serial[w] = self._serial
        ks.nworkers += 1
        if self._refresh_worker(w):
            self._pump(k, now)
        return 0

    def _on_update(
        self,
        w: cython.int,
        status: cython.int,
        load: cython.double,
        job_count: cython.longlong,
        now: cython.double,
    ) -> cython.int:
        self._check_worker(w)
        if not (load >= 0.0 and load <= 1.0):
            raise InvalidEvent(f"load must be within 0..1, got {load}")
        if status != WS_AVAILABLE and status != WS_FULL:
            raise InvalidEvent(f"worker status must be AVAILABLE or FULL, got {status}")
        if job_count < 0:
            raise InvalidEvent("job count must be >= 0")
        # A drained worker stays drained: its later updates only move the load.
        if self._w_status[w] != WS_DRAINING:
            self._w_status[w] = status
        self._w_load[w] = load
        self._w_jobcount[w] = job_count
        # What it holds now is what this report counts; what it takes or
        # ends from now on moves its predicted load by the load per job,
        # learnt from reports that have jobs in them.
        self._w_base[w] = self._w_used[w]
        if job_count > 0 and load > 0.0:
            self._w_perjob[w] = load / job_count
        self._w_declined[w] = 0
        if self._refresh_worker(w):
            self._pump(self._w_key[w], now)
        return 0

    def _on_drain(self, w: cython.int, now: cython.double) -> cython.int:
        self._check_worker(w)
        self._w_status[w] = WS_DRAINING
        self._refresh_worker(w)
        return 0

    def _on_disconnect(self, w: cython.int, now: cython.double) -> cython.int:
        self._check_worker(w)
        k: cython.int = self._w_key[w]
        ks: KeyState = self._keys[k]
        self._w_alive[w] = 0
        self._refresh_worker(w)  # leaves the heap
        ks.nworkers -= 1
        j: cython.int = self._w_jhead[w]
        nxt: cython.int
        st: cython.int
        while j >= 0:
            nxt = self._j_wnext[j]
            self._unlink_worker_job(j)
            self._w_used[w] -= 1
            st = self._j_state[j]
            if st == J_OFFERED:
                self._retry(j, now, True)
            elif self._j_flags[j] & F_TERMINATING:
                self._finish(j, J_CANCELLED, self._j_reason[j], now)
            else:
                self._j_state[j] = J_ORPHANED
                self._set_timer(j, now + self.reclaim_grace)
                self._emit(ACT_STATE, j, w, J_ORPHANED, 0.0, now, R_WORKER_LOST)
                self._j_worker[j] = -1
            j = nxt
        self._w_jhead[w] = -1
        self._pump(k, now)
        return 0

    # ------------------------------------------------------------------
    # Job events.

    def _on_submit(
        self,
        j: cython.int,
        k: cython.int,
        deadline: cython.double,
        now: cython.double,
        policy: cython.longlong,
    ) -> cython.int:
        if j < 0 or k < 0:
            raise InvalidEvent("job and agent key handles must be >= 0")
        if j < self._jcap and self._j_live[j]:
            raise InvalidEvent(f"job handle {j} is already in use")
        if deadline != deadline:
            raise InvalidEvent("queue deadline is NaN")
        held: cython.bint = (policy & F_RESTORED_HELD) != 0
        policy = policy & ~F_RESTORED_HELD
        if policy < 0 or policy > 1:
            raise InvalidEvent(f"unknown restart policy {policy}")
        if j >= self._jcap:
            self.reserve_jobs(j + 1)
        ks: KeyState = self._key(k)
        self._j_live[j] = 1
        self._j_state[j] = J_QUEUED
        self._j_reason[j] = R_NONE
        self._j_policy[j] = policy
        self._j_flags[j] = 0
        self._j_key[j] = k
        self._j_worker[j] = -1
        self._j_attempts[j] = 0
        self._j_qprev[j] = -1
        self._j_qnext[j] = -1
        self._j_wprev[j] = -1
        self._j_wnext[j] = -1
        self._j_deadline[j] = deadline
        self._j_qtimeout[j] = deadline - now if deadline > now else 0.0
        self._j_retry_at[j] = now
        self._j_tried1[j] = -1  # _j_tried[j] is None: _finish cleared it
        if held:
            # Recovered after a restart, it was running: it waits, as after
            # a worker loss, for its worker to claim it back.
            self._j_state[j] = J_ORPHANED
            self._set_timer(j, now + self.reclaim_grace)
            self._emit(ACT_STATE, j, -1, J_ORPHANED, 0.0, now, R_WORKER_LOST)
            return 0
        # Fast path: a free worker exists, so the FIFO holds only jobs that
        # cannot use it (see _pump), and this job goes straight out.
        if ks.hsize > 0:
            self._offer(j, ks.heap[0], now)
            return 0
        if deadline <= now:
            self._finish(j, J_FAILED, R_NO_CAPACITY, now)
            return 0
        self._q_push_back(ks, j)
        self._set_timer(j, deadline)
        self._emit(ACT_STATE, j, -1, J_QUEUED, 0.0, now, R_NONE)
        return 0

    def _on_accept(self, j: cython.int, w: cython.int, now: cython.double) -> cython.int:
        self._check_job(j)
        self._check_worker(w)
        if self._j_state[j] != J_OFFERED or self._j_worker[j] != w:
            # A late answer to an offer we already gave up on.  No assignment
            # is ever sent for it (a Node worker would start the job).
            self.stale_events += 1
            return 0
        self._j_state[j] = J_ASSIGNED
        self._j_tgen[j] += 1
        self._emit(ACT_ASSIGN, j, w, 0, 0.0, now, 0)
        self._emit(ACT_STATE, j, w, J_ASSIGNED, 0.0, now, R_NONE)
        return 0

    def _on_reject(self, j: cython.int, w: cython.int, now: cython.double) -> cython.int:
        self._check_job(j)
        self._check_worker(w)
        if self._j_state[j] != J_OFFERED or self._j_worker[j] != w:
            self.stale_events += 1
            return 0
        # A decline says "not now" of the worker, not "this job is broken":
        # the worker rests until it reports or a job of its ends, and the
        # job goes out again at once (it does not count towards
        # max_attempts; its queue deadline bounds it).
        self._w_declined[w] = 1
        self._release(j)
        self._retry(j, now, False)
        self._pump(self._w_key[w], now)
        return 0

    def _on_status(
        self, j: cython.int, w: cython.int, status: cython.int, now: cython.double
    ) -> cython.int:
        self._check_job(j)
        self._check_worker(w)
        if status != JS_RUNNING and status != JS_SUCCESS and status != JS_FAILED:
            raise InvalidEvent(f"job status must be RUNNING, SUCCESS or FAILED, got {status}")
        st: cython.int = self._j_state[j]
        if (
            st == J_ORPHANED
            and self._w_key[w] == self._j_key[j]
            and self._w_used[w] < self._w_cap[w]
        ):
            # A reconnected worker reports on a job it did not claim first:
            # the report is the claim.
            self._on_migrate(j, w, now)
            st = self._j_state[j]
        if (st != J_ASSIGNED and st != J_RUNNING) or self._j_worker[j] != w:
            self.stale_events += 1
            return 0
        if status == JS_RUNNING:
            if st == J_ASSIGNED:
                self._j_state[j] = J_RUNNING
                self._emit(ACT_STATE, j, w, J_RUNNING, 0.0, now, R_NONE)
            return 0
        self._w_declined[w] = 0  # a job ended: it has room again
        self._release(j)
        if self._j_flags[j] & F_TERMINATING:
            self._finish(j, J_CANCELLED, self._j_reason[j], now)
        elif status == JS_SUCCESS:
            self._finish(j, J_SUCCESS, R_NONE, now)
        else:
            # The job's own code failed (an exception, a crash, a memory
            # limit): running it again would most likely fail the same way.
            # The restart policy is for jobs whose *worker* is lost.
            self._finish(j, J_FAILED, R_JOB_ERROR, now)
        self._pump(self._w_key[w], now)
        return 0

    def _on_cancel(self, j: cython.int, reason: cython.int, now: cython.double) -> cython.int:
        self._check_job(j)
        if reason <= R_NONE or reason > R_LAST:
            reason = R_CANCELLED
        st: cython.int = self._j_state[j]
        w: cython.int = self._j_worker[j]
        if st == J_QUEUED:
            self._q_unlink(self._keys[self._j_key[j]], j)
            self._finish(j, J_CANCELLED, reason, now)
        elif st == J_OFFERED:
            self._release(j)
            self._finish(j, J_CANCELLED, reason, now)
            self._pump(self._w_key[w], now)
        elif st == J_ASSIGNED or st == J_RUNNING:
            if not (self._j_flags[j] & F_TERMINATING):
                self._j_flags[j] |= F_TERMINATING
                self._j_reason[j] = reason
                self._set_timer(j, now + self.terminate_grace)
                self._emit(ACT_TERMINATE, j, w, reason, 0.0, now, 0)
        elif st == J_ORPHANED:
            self._finish(j, J_CANCELLED, reason, now)
        return 0

    def _on_migrate(self, j: cython.int, w: cython.int, now: cython.double) -> cython.int:
        self._check_job(j)
        self._check_worker(w)
        st: cython.int = self._j_state[j]
        if (st == J_ASSIGNED or st == J_RUNNING) and self._j_worker[j] == w:
            return 0  # already bound there: a repeated claim is harmless
        if st != J_ORPHANED:
            raise InvalidTransition(f"job {j} is not waiting to be claimed back")
        if self._w_key[w] != self._j_key[j]:
            raise InvalidTransition(f"worker {w} serves another agent than job {j}")
        if self._w_used[w] >= self._w_cap[w]:
            raise InvalidTransition(f"worker {w} has no free slot to take job {j} back")
        self._j_tgen[j] += 1
        self._j_state[j] = J_RUNNING
        self._hold(j, w)
        self._emit(ACT_STATE, j, w, J_RUNNING, 0.0, now, R_NONE)
        return 0

    def _on_reclaim_by(self, j: cython.int, when: cython.double, now: cython.double) -> cython.int:
        """A job waiting to be claimed back waits until ``when`` instead (a
        wait that began before a restart goes on counting from then; a
        ``when`` already past ends it at the next ``on_timer``)."""
        self._check_job(j)
        if when != when:
            raise InvalidEvent("reclaim deadline is NaN")
        if self._j_state[j] != J_ORPHANED:
            raise InvalidTransition(f"job {j} is not waiting to be claimed back")
        self._set_timer(j, when if when > now else now)
        return 0
