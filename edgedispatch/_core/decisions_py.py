"""The scheduling core's decisions and queries: offering a job to a
worker, retrying and requeueing it, finishing it, its timers, and what the
shell may ask about workers, jobs and keys.

Cython pure-Python mode, like ``tables_py.py`` below it and
``scheduler_py.py`` above it: this file runs as plain Python and is also
compiled, with ``decisions_c.pxd``, into ``edgedispatch._core.decisions_c``.
``Scheduler`` subclasses ``Decisions`` and turns events into these calls;
here nothing reads an event, and every state change is emitted as an
action.  The module docstring of ``scheduler_py.py`` gives the contract
and the invariants.
"""

from __future__ import annotations

from collections import deque

try:
    import cython
except ModuleNotFoundError:  # an installed wheel: Cython is a build requirement only
    from edgedispatch._core import _cython_shim as cython

from edgedispatch._core import codes
from edgedispatch.errors import InvalidTransition, UnknownJob, UnknownWorker

if cython.compiled:
    from cython.cimports.edgedispatch._core.ring_c import Ring
    from cython.cimports.edgedispatch._core.tables_c import KeyState, Tables
else:
    from edgedispatch._core.ring_py import Ring
    from edgedispatch._core.tables_py import KeyState, Tables

# The numbers come from codes.py; the compiled core reads them into C
# globals (declared in decisions_c.pxd) once, at import.
ACT_OFFER = int(codes.ActionKind.OFFER)
ACT_FAILED = int(codes.ActionKind.JOB_FAILED)
ACT_STATE = int(codes.ActionKind.JOB_STATE)

J_QUEUED = int(codes.JobState.QUEUED)
J_OFFERED = int(codes.JobState.OFFERED)
J_ASSIGNED = int(codes.JobState.ASSIGNED)
J_RUNNING = int(codes.JobState.RUNNING)
J_ORPHANED = int(codes.JobState.ORPHANED)
J_SUCCESS = int(codes.JobState.SUCCESS)
J_FAILED = int(codes.JobState.FAILED)
J_CANCELLED = int(codes.JobState.CANCELLED)

RP_ON_FAILURE = int(codes.RestartPolicy.ON_FAILURE)

R_NONE = int(codes.FailReason.NONE)
R_NO_CAPACITY = int(codes.FailReason.NO_CAPACITY)
R_MAX_ATTEMPTS = int(codes.FailReason.MAX_ATTEMPTS)
R_WORKER_LOST = int(codes.FailReason.WORKER_LOST)

W_NOT_WAITING = int(codes.WaitReason.NOT_WAITING)
W_NO_WORKERS = int(codes.WaitReason.NO_WORKERS)
W_ALL_BUSY = int(codes.WaitReason.ALL_BUSY)
W_ALL_TRIED = int(codes.WaitReason.ALL_TRIED)
W_BACKOFF = int(codes.WaitReason.BACKOFF)

F_TERMINATING = codes.JOB_TERMINATING


class Decisions(Tables):
    """What ``Scheduler`` decides with: its offers, retries, requeues and
    ends of jobs, the jobs' timers, the action ring, and the queries."""

    def __init__(
        self,
        load_threshold: float,
        offer_timeout: float,
        max_attempts: int,
        retry_base: float,
        retry_max: float,
        ring_capacity: int,
    ) -> None:
        Tables.__init__(self, load_threshold)
        self.actions = Ring(ring_capacity)
        self._overflow: deque[tuple[int, int, int, int, float, float, int]] = deque()
        self.offer_timeout = offer_timeout
        self.max_attempts = max_attempts
        self.retry_base = retry_base
        self.retry_max = retry_max
        self.decisions = 0

    def _emit(
        self,
        kind: cython.int,
        job: cython.int,
        worker: cython.int,
        arg: cython.int,
        value: cython.double,
        now: cython.double,
        extra: cython.longlong,
    ) -> cython.int:
        # Once anything waits in the overflow, everything after it must too,
        # or actions would be delivered out of order.
        if not self._overflow and self.actions.push(kind, job, worker, arg, value, now, extra):
            return 0
        self._overflow.append((kind, job, worker, arg, value, now, extra))
        return 0

    def _check_worker(self, w: cython.int) -> cython.int:
        if w < 0 or w >= self._wcap or not self._w_alive[w]:
            raise UnknownWorker(f"unknown worker handle {w}")
        return 0

    def _check_job(self, j: cython.int) -> cython.int:
        if j < 0 or j >= self._jcap or not self._j_live[j]:
            raise UnknownJob(f"unknown job handle {j}")
        return 0

    # ------------------------------------------------------------------
    # Decisions.

    def _offer(self, j: cython.int, w: cython.int, now: cython.double) -> cython.int:
        """Offer job ``j`` to eligible worker ``w`` and hold one slot for it."""
        deadline: cython.double = now + self.offer_timeout
        serial: cython.longlong = self._w_serial[w]
        tried: set[int] | None
        if self._j_tried1[j] < 0:
            self._j_tried1[j] = serial
        else:
            tried = self._j_tried[j]
            if tried is None:
                self._j_tried[j] = {serial}
            else:
                tried.add(serial)
        self._j_state[j] = J_OFFERED
        self._j_attempts[j] += 1
        self._hold(j, w)
        self._set_timer(j, deadline)
        self.decisions += 1
        self._emit(ACT_OFFER, j, w, self._j_attempts[j], deadline, now, 0)
        self._emit(ACT_STATE, j, w, J_OFFERED, 0.0, now, R_NONE)
        return 0

    def _tried(self, j: cython.int, w: cython.int) -> cython.bint:
        serial: cython.longlong = self._w_serial[w]
        if self._j_tried1[j] < 0:
            return False
        if self._j_tried1[j] == serial:
            return True
        tried: set[int] | None = self._j_tried[j]
        return tried is not None and serial in tried

    def _pick(self, ks: KeyState, j: cython.int) -> cython.int:
        """The best eligible worker for ``j``, or -1.  Workers that have not
        tried ``j`` come first; once every eligible worker has, a new round
        begins (the caller has waited out ``j``'s backoff): a worker that
        declined may have room now."""
        w: cython.int = self._untried(ks, j)
        if w < 0 and ks.hsize > 0:
            self._j_tried1[j] = -1
            self._j_tried[j] = None
            w = ks.heap[0]
        return w

    def _untried(self, ks: KeyState, j: cython.int) -> cython.int:
        """The best eligible worker that has not tried ``j``, or -1."""
        if ks.hsize == 0:
            return -1
        if self._j_tried1[j] < 0:
            return ks.heap[0]
        best: cython.int = -1
        i: cython.int
        w: cython.int
        for i in range(ks.hsize):
            w = ks.heap[i]
            if not self._tried(j, w) and (best < 0 or self._better(w, best)):
                best = w
        return best

    def _pump(self, k: cython.int, now: cython.double) -> cython.int:
        """Offer queued jobs of key ``k``, oldest first, while workers can take them."""
        ks: KeyState = self._keys[k]
        j: cython.int = ks.qhead
        nxt: cython.int
        w: cython.int
        while j >= 0 and ks.hsize > 0:
            nxt = self._j_qnext[j]
            if self._j_retry_at[j] <= now:
                w = self._pick(ks, j)
                if w >= 0:
                    self._q_unlink(ks, j)
                    self._offer(j, w, now)
            j = nxt
        return 0

    def _retry(self, j: cython.int, now: cython.double, counted: cython.bint) -> cython.int:
        """An offer failed (a reject, or a timeout or disconnect: ``counted``
        towards max_attempts): queue ``j`` again."""
        attempts: cython.int = self._j_attempts[j]
        if counted and attempts >= self.max_attempts:
            self._finish(j, J_FAILED, R_MAX_ATTEMPTS, now)
            return 0
        if self._j_deadline[j] <= now:
            self._finish(j, J_FAILED, R_NO_CAPACITY, now)
            return 0
        ks: KeyState = self._keys[self._j_key[j]]
        delay: cython.double = 0.0
        if counted and attempts >= 2:
            delay = self.retry_base * (2.0 ** (attempts - 2))
            if delay > self.retry_max:
                delay = self.retry_max
        elif counted and self._untried(ks, j) < 0:
            delay = self.retry_base  # the next offer would repeat one: not at once
        self._j_state[j] = J_QUEUED
        self._j_worker[j] = -1
        self._j_retry_at[j] = now + delay
        # It is older than anything that queued while it was out on offer.
        self._q_push_front(ks, j)
        self._set_timer(
            j, self._j_deadline[j] if delay <= 0.0 else min(now + delay, self._j_deadline[j])
        )
        self._emit(ACT_STATE, j, -1, J_QUEUED, 0.0, now, R_NONE)
        if delay <= 0.0:
            self._pump(self._j_key[j], now)
        return 0

    def _requeue(self, j: cython.int, now: cython.double) -> cython.int:
        """A running job's worker failed it or went away: run it again."""
        ks: KeyState = self._keys[self._j_key[j]]
        self._j_state[j] = J_QUEUED
        self._j_worker[j] = -1
        self._j_retry_at[j] = now
        self._j_deadline[j] = now + self._j_qtimeout[j]
        self._q_push_front(ks, j)
        self._set_timer(j, self._j_deadline[j])
        self._emit(ACT_STATE, j, -1, J_QUEUED, 0.0, now, self._j_reason[j])
        self._pump(self._j_key[j], now)
        return 0

    def _finish(
        self, j: cython.int, state: cython.int, reason: cython.int, now: cython.double
    ) -> cython.int:
        """Move ``j`` to a terminal state.  It must hold no slot and be in no FIFO."""
        w: cython.int = self._j_worker[j]
        self._j_state[j] = state
        self._j_reason[j] = reason
        self._j_tgen[j] += 1
        self._j_tried[j] = None
        if state == J_FAILED:
            self._emit(ACT_FAILED, j, w, reason, 0.0, now, 0)
        self._emit(ACT_STATE, j, w, state, 0.0, now, reason)
        # The handle stays live (queryable) until the caller releases it.
        return 0

    def release_job(self, j: cython.int) -> None:
        """Forget terminal job ``j`` so its handle can be reused."""
        self._check_job(j)
        if self._j_state[j] < J_SUCCESS:
            raise InvalidTransition(f"job {j} is still pending")
        self._j_live[j] = 0

    def _fire_timers(self, now: cython.double) -> cython.int:
        j: cython.int
        while self._tn > 0 and self._t_when[0] <= now:
            j = self._t_job[0]
            if not self._timer_live(0):
                self._timer_pop()
                continue
            self._timer_pop()
            self._j_tgen[j] += 1
            self._on_job_timer(j, now)
        return 0

    def _on_job_timer(self, j: cython.int, now: cython.double) -> cython.int:
        st: cython.int = self._j_state[j]
        k: cython.int = self._j_key[j]
        if st == J_OFFERED:
            # Offer timeout: a reject from that worker, but counted.
            self._release(j)
            self._retry(j, now, True)
            self._pump(k, now)
        elif st == J_QUEUED:
            if self._j_deadline[j] <= now:
                self._q_unlink(self._keys[k], j)
                self._finish(j, J_FAILED, R_NO_CAPACITY, now)
            else:
                # Its backoff is over: it may go out now, and it still
                # needs a wake-up at its queue deadline.
                self._set_timer(j, self._j_deadline[j])
                self._pump(k, now)
        elif st == J_ORPHANED:
            if self._j_policy[j] == RP_ON_FAILURE and self._j_attempts[j] < self.max_attempts:
                self._j_reason[j] = R_WORKER_LOST
                self._requeue(j, now)
            else:
                self._finish(j, J_FAILED, R_WORKER_LOST, now)
        elif (st == J_ASSIGNED or st == J_RUNNING) and self._j_flags[j] & F_TERMINATING:
            w: cython.int = self._j_worker[j]
            self._w_declined[w] = 0
            self._release(j)
            self._finish(j, J_CANCELLED, self._j_reason[j], now)
            self._pump(self._w_key[w], now)
        return 0

    # ------------------------------------------------------------------
    # Queries.

    def worker_info(self, w: cython.int) -> codes.WorkerInfo:
        """A registered worker's agent key, status, load, slots and so on."""
        self._check_worker(w)
        return codes.WorkerInfo(
            self._w_key[w],
            self._w_status[w],
            self._w_load[w],
            self._w_cap[w],
            self._w_used[w],
            self._w_jobcount[w],
            self._w_serial[w],
            self._w_pos[w] >= 0,
            self._predicted(w),
            self._w_declined[w] != 0,
        )

    def job_info(self, j: cython.int) -> codes.JobInfo:
        """A known job's state, agent key, worker (or -1) and so on."""
        self._check_job(j)
        return codes.JobInfo(
            self._j_state[j],
            self._j_key[j],
            self._j_worker[j],
            self._j_attempts[j],
            self._j_reason[j],
            self._j_deadline[j],
            (self._j_flags[j] & F_TERMINATING) != 0,
        )

    def wait_reason(self, j: cython.int, now: cython.double) -> cython.int:
        """Why job ``j`` is not running yet (a ``codes.WaitReason``)."""
        self._check_job(j)
        if self._j_state[j] != J_QUEUED:
            return W_NOT_WAITING
        ks: KeyState = self._keys[self._j_key[j]]
        if self._j_retry_at[j] > now:
            return W_BACKOFF
        if ks.nworkers == 0:
            return W_NO_WORKERS
        if ks.hsize == 0:
            return W_ALL_BUSY
        return W_ALL_TRIED

    def key_info(self, k: cython.int) -> codes.KeyInfo:
        """Registered workers, eligible workers and queued jobs of agent key ``k``."""
        if k < 0 or k >= len(self._keys):
            return codes.KeyInfo(0, 0, 0)
        ks: KeyState = self._keys[k]
        return codes.KeyInfo(ks.nworkers, ks.hsize, ks.qlen)

    def queued_jobs(self, k: cython.int) -> list[int]:
        """Queued jobs of agent key ``k``, in the order they will be offered."""
        out: list[int] = []
        if k < 0 or k >= len(self._keys):
            return out
        ks: KeyState = self._keys[k]
        j: cython.int = ks.qhead
        while j >= 0:
            out.append(j)
            j = self._j_qnext[j]
        return out

    def worker_jobs(self, w: cython.int) -> list[int]:
        """Jobs holding a slot on worker ``w``."""
        self._check_worker(w)
        out: list[int] = []
        j: cython.int = self._w_jhead[w]
        while j >= 0:
            out.append(j)
            j = self._j_wnext[j]
        return out
