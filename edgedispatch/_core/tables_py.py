"""Storage of the scheduling core: the typed arrays behind worker, job and
timer handles, the per-key FIFO of queued jobs, the per-key heap of eligible
workers, and the timer heap.

Cython pure-Python mode, like ``scheduler_py.py``, which holds the policy and
subclasses ``Tables``.  Nothing here decides anything: these are the data
structures, with their own invariants:
  * arrays grow by doubling and a handle indexes them directly;
  * a held job is linked into its worker's job list and counted in ``used``;
  * a key's heap holds exactly its eligible workers, best first (``_better``);
  * a job has at most one live timer: bumping its generation makes older
    heap entries stale, and stale entries are dropped when they reach the top.
"""

from __future__ import annotations

import array

try:
    import cython
except ModuleNotFoundError:  # an installed wheel: Cython is a build requirement only
    from edgedispatch._core import _cython_shim as cython

from edgedispatch._core import codes

WS_AVAILABLE = int(codes.WorkerStatus.AVAILABLE)
WS_FULL = int(codes.WorkerStatus.FULL)
NEVER = 1e300  # deadlines beyond this (such as infinity) never fire


def _zeros(typecode: str, n: int) -> array.array:  # type: ignore[type-arg]
    return array.array(typecode, bytes(array.array(typecode).itemsize * n))


def _filled(typecode: str, n: int, value: int) -> array.array:  # type: ignore[type-arg]
    one: array.array[int] = array.array(typecode, [value])
    return one * n


class KeyState:
    """Per agent key: the heap of eligible workers and the FIFO of queued jobs."""

    def __init__(self) -> None:
        self.heap = _zeros("i", 8)
        self.hsize = 0
        self.qhead = -1
        self.qtail = -1
        self.qlen = 0
        self.nworkers = 0


class Tables:
    """Arrays indexed by worker and job handles, plus the heaps and FIFOs."""

    def __init__(self, load_threshold: float) -> None:
        self.load_threshold = load_threshold
        self._keys: list[KeyState] = []
        self._wcap = 0
        self._w_alive = _zeros("b", 0)
        self._w_status = _zeros("b", 0)
        self._w_key = _zeros("i", 0)
        self._w_cap = _zeros("i", 0)
        self._w_used = _zeros("i", 0)
        self._w_pos = _zeros("i", 0)
        self._w_jobcount = _zeros("i", 0)
        self._w_jhead = _zeros("i", 0)
        self._w_load = _zeros("d", 0)
        self._w_score = _zeros("d", 0)
        self._w_base = _zeros("i", 0)
        self._w_perjob = _zeros("d", 0)
        self._w_declined = _zeros("b", 0)
        self._w_tie = _zeros("Q", 0)
        self._w_serial = _zeros("q", 0)

        self._jcap = 0
        self._j_live = _zeros("b", 0)
        self._j_state = _zeros("b", 0)
        self._j_reason = _zeros("b", 0)
        self._j_policy = _zeros("b", 0)
        self._j_flags = _zeros("b", 0)
        self._j_key = _zeros("i", 0)
        self._j_worker = _zeros("i", 0)
        self._j_attempts = _zeros("i", 0)
        self._j_qprev = _zeros("i", 0)
        self._j_qnext = _zeros("i", 0)
        self._j_wprev = _zeros("i", 0)
        self._j_wnext = _zeros("i", 0)
        self._j_tgen = _zeros("i", 0)
        self._j_deadline = _zeros("d", 0)
        self._j_qtimeout = _zeros("d", 0)
        self._j_retry_at = _zeros("d", 0)
        self._j_tried1 = _zeros("q", 0)
        self._j_tried: list[set[int] | None] = []

        self._tcap = 0
        self._tn = 0
        self._t_when = _zeros("d", 0)
        self._t_job = _zeros("i", 0)
        self._t_gen = _zeros("i", 0)

    def reserve_workers(self, n: cython.int) -> None:
        if n <= self._wcap:
            return
        cap: cython.int = max(n, 2 * self._wcap, 16)
        old: cython.int = self._wcap
        i: cython.int
        w_alive: cython.schar[:] = _zeros("b", cap)
        w_status: cython.schar[:] = _zeros("b", cap)
        w_key: cython.int[:] = _zeros("i", cap)
        w_cap: cython.int[:] = _zeros("i", cap)
        w_used: cython.int[:] = _zeros("i", cap)
        w_pos: cython.int[:] = _filled("i", cap, -1)
        w_jobcount: cython.int[:] = _zeros("i", cap)
        w_jhead: cython.int[:] = _filled("i", cap, -1)
        w_load: cython.double[:] = _zeros("d", cap)
        w_score: cython.double[:] = _zeros("d", cap)
        w_base: cython.int[:] = _zeros("i", cap)
        w_perjob: cython.double[:] = _zeros("d", cap)
        w_declined: cython.schar[:] = _zeros("b", cap)
        w_tie: cython.ulonglong[:] = _zeros("Q", cap)
        w_serial: cython.longlong[:] = _zeros("q", cap)
        for i in range(old):
            w_alive[i] = self._w_alive[i]
            w_status[i] = self._w_status[i]
            w_key[i] = self._w_key[i]
            w_cap[i] = self._w_cap[i]
            w_used[i] = self._w_used[i]
            w_pos[i] = self._w_pos[i]
            w_jobcount[i] = self._w_jobcount[i]
            w_jhead[i] = self._w_jhead[i]
            w_load[i] = self._w_load[i]
            w_score[i] = self._w_score[i]
            w_base[i] = self._w_base[i]
            w_perjob[i] = self._w_perjob[i]
            w_declined[i] = self._w_declined[i]
            w_tie[i] = self._w_tie[i]
            w_serial[i] = self._w_serial[i]
        self._w_alive = w_alive
        self._w_status = w_status
        self._w_key = w_key
        self._w_cap = w_cap
        self._w_used = w_used
        self._w_pos = w_pos
        self._w_jobcount = w_jobcount
        self._w_jhead = w_jhead
        self._w_load = w_load
        self._w_score = w_score
        self._w_base = w_base
        self._w_perjob = w_perjob
        self._w_declined = w_declined
        self._w_tie = w_tie
        self._w_serial = w_serial
        self._wcap = cap

    def reserve_jobs(self, n: cython.int) -> None:
        if n <= self._jcap:
            return
        cap: cython.int = max(n, 2 * self._jcap, 16)
        old: cython.int = self._jcap
        i: cython.int
        j_live: cython.schar[:] = _zeros("b", cap)
        j_state: cython.schar[:] = _zeros("b", cap)
        j_reason: cython.schar[:] = _zeros("b", cap)
        j_policy: cython.schar[:] = _zeros("b", cap)
        j_flags: cython.schar[:] = _zeros("b", cap)
        j_key: cython.int[:] = _zeros("i", cap)
        j_worker: cython.int[:] = _filled("i", cap, -1)
        j_attempts: cython.int[:] = _zeros("i", cap)
        j_qprev: cython.int[:] = _filled("i", cap, -1)
        j_qnext: cython.int[:] = _filled("i", cap, -1)
        j_wprev: cython.int[:] = _filled("i", cap, -1)
        j_wnext: cython.int[:] = _filled("i", cap, -1)
        j_tgen: cython.int[:] = _zeros("i", cap)
        j_deadline: cython.double[:] = _zeros("d", cap)
        j_qtimeout: cython.double[:] = _zeros("d", cap)
        j_retry_at: cython.double[:] = _zeros("d", cap)
        j_tried1: cython.longlong[:] = _filled("q", cap, -1)
        for i in range(old):
            j_live[i] = self._j_live[i]
            j_state[i] = self._j_state[i]
            j_reason[i] = self._j_reason[i]
            j_policy[i] = self._j_policy[i]
            j_flags[i] = self._j_flags[i]
            j_key[i] = self._j_key[i]
            j_worker[i] = self._j_worker[i]
            j_attempts[i] = self._j_attempts[i]
            j_qprev[i] = self._j_qprev[i]
            j_qnext[i] = self._j_qnext[i]
            j_wprev[i] = self._j_wprev[i]
            j_wnext[i] = self._j_wnext[i]
            j_tgen[i] = self._j_tgen[i]
            j_deadline[i] = self._j_deadline[i]
            j_qtimeout[i] = self._j_qtimeout[i]
            j_retry_at[i] = self._j_retry_at[i]
            j_tried1[i] = self._j_tried1[i]
        self._j_live = j_live
        self._j_state = j_state
        self._j_reason = j_reason
        self._j_policy = j_policy
        self._j_flags = j_flags
        self._j_key = j_key
        self._j_worker = j_worker
        self._j_attempts = j_attempts
        self._j_qprev = j_qprev
        self._j_qnext = j_qnext
        self._j_wprev = j_wprev
        self._j_wnext = j_wnext
        self._j_tgen = j_tgen
        self._j_deadline = j_deadline
        self._j_qtimeout = j_qtimeout
        self._j_retry_at = j_retry_at
        self._j_tried1 = j_tried1
        self._j_tried.extend([None] * (cap - old))
        self._jcap = cap

    def reserve_keys(self, n: cython.int) -> None:
        while len(self._keys) < n:
            self._keys.append(KeyState())

    def _key(self, k: cython.int) -> KeyState:
        if k >= len(self._keys):
            self.reserve_keys(k + 1)
        ks: KeyState = self._keys[k]
        return ks

    def _hold(self, j: cython.int, w: cython.int) -> cython.int:
        self._j_worker[j] = w
        head: cython.int = self._w_jhead[w]
        self._j_wprev[j] = -1
        self._j_wnext[j] = head
        if head >= 0:
            self._j_wprev[head] = j
        self._w_jhead[w] = j
        self._w_used[w] += 1
        self._refresh_worker(w)
        return 0

    def _release(self, j: cython.int) -> cython.int:
        """Give back the slot ``j`` holds.  Its FIFO is pumped by the caller."""
        w: cython.int = self._j_worker[j]
        self._unlink_worker_job(j)
        self._w_used[w] -= 1
        self._refresh_worker(w)
        return 0

    def _unlink_worker_job(self, j: cython.int) -> cython.int:
        w: cython.int = self._j_worker[j]
        p: cython.int = self._j_wprev[j]
        n: cython.int = self._j_wnext[j]
        if p >= 0:
            self._j_wnext[p] = n
        else:
            self._w_jhead[w] = n
        if n >= 0:
            self._j_wprev[n] = p
        self._j_wprev[j] = -1
        self._j_wnext[j] = -1
        return 0

    def _q_push_back(self, ks: KeyState, j: cython.int) -> cython.int:
        self._j_qnext[j] = -1
        self._j_qprev[j] = ks.qtail
        if ks.qtail >= 0:
            self._j_qnext[ks.qtail] = j
        else:
            ks.qhead = j
        ks.qtail = j
        ks.qlen += 1
        return 0

    def _q_push_front(self, ks: KeyState, j: cython.int) -> cython.int:
        self._j_qprev[j] = -1
        self._j_qnext[j] = ks.qhead
        if ks.qhead >= 0:
            self._j_qprev[ks.qhead] = j
        else:
            ks.qtail = j
        ks.qhead = j
        ks.qlen += 1
        return 0

    def _q_unlink(self, ks: KeyState, j: cython.int) -> cython.int:
        p: cython.int = self._j_qprev[j]
        n: cython.int = self._j_qnext[j]
        if p >= 0:
            self._j_qnext[p] = n
        else:
            ks.qhead = n
        if n >= 0:
            self._j_qprev[n] = p
        else:
            ks.qtail = p
        self._j_qprev[j] = -1
        self._j_qnext[j] = -1
        ks.qlen -= 1
        return 0

    def _predicted(self, w: cython.int) -> cython.double:
        """The worker's load now: as last reported, plus what the jobs taken
        or ended since then are expected to add or remove (the load per job
        is learnt from its reports; until one with jobs, nothing is added).
        So offers stop before a stale report would let them overfill it."""
        load: cython.double = (
            self._w_load[w] + (self._w_used[w] - self._w_base[w]) * self._w_perjob[w]
        )
        return load if load > 0.0 else 0.0

    def _eligible(self, w: cython.int) -> cython.bint:
        return (
            self._w_alive[w] != 0
            and (
                self._w_status[w] == WS_AVAILABLE
                # FULL was true when it reported; a job ended since frees room.
                or (self._w_status[w] == WS_FULL and self._w_used[w] < self._w_base[w])
            )
            and self._w_declined[w] == 0
            and self._predicted(w) < self.load_threshold
            and self._w_used[w] < self._w_cap[w]
        )

    def _better(self, a: cython.int, b: cython.int) -> cython.bint:
        """Least loaded first: predicted load or slot use, whichever is higher;
        then fewer held slots; then the seeded tie-break."""
        if self._w_score[a] != self._w_score[b]:
            return self._w_score[a] < self._w_score[b]
        if self._w_used[a] != self._w_used[b]:
            return self._w_used[a] < self._w_used[b]
        if self._w_tie[a] != self._w_tie[b]:
            return self._w_tie[a] < self._w_tie[b]
        return self._w_serial[a] < self._w_serial[b]

    def _refresh_worker(self, w: cython.int) -> cython.bint:
        """Re-rank ``w`` after any change; True if it can take work now.

        It never pumps: callers that free capacity pump afterwards, so that a
        pump never runs inside another one."""
        ks: KeyState = self._keys[self._w_key[w]]
        cap: cython.double = self._w_cap[w]
        used_share: cython.double = self._w_used[w] / cap
        load: cython.double = self._predicted(w)
        self._w_score[w] = load if load > used_share else used_share
        pos: cython.int = self._w_pos[w]
        if self._eligible(w):
            if pos < 0:
                self._heap_push(ks, w)
            else:
                self._heap_fix(ks, pos)
            return True
        if pos >= 0:
            self._heap_remove(ks, pos)
        return False

    def _heap_set(self, ks: KeyState, i: cython.int, w: cython.int) -> cython.int:
        ks.heap[i] = w
        self._w_pos[w] = i
        return 0

    def _heap_push(self, ks: KeyState, w: cython.int) -> cython.int:
        i: cython.int
        if ks.hsize == len(ks.heap):
            heap: cython.int[:] = _zeros("i", 2 * ks.hsize)
            for i in range(ks.hsize):
                heap[i] = ks.heap[i]
            ks.heap = heap
        self._heap_set(ks, ks.hsize, w)
        ks.hsize += 1
        self._sift_up(ks, ks.hsize - 1)
        return 0

    def _heap_remove(self, ks: KeyState, pos: cython.int) -> cython.int:
        w: cython.int = ks.heap[pos]
        last: cython.int = ks.heap[ks.hsize - 1]
        ks.hsize -= 1
        self._w_pos[w] = -1
        if pos < ks.hsize:
            self._heap_set(ks, pos, last)
            self._heap_fix(ks, pos)
        return 0

    def _heap_fix(self, ks: KeyState, pos: cython.int) -> cython.int:
        if pos > 0 and self._better(ks.heap[pos], ks.heap[(pos - 1) >> 1]):
            self._sift_up(ks, pos)
        else:
            self._sift_down(ks, pos)
        return 0

    def _sift_up(self, ks: KeyState, pos: cython.int) -> cython.int:
        w: cython.int = ks.heap[pos]
        parent: cython.int
        while pos > 0:
            parent = (pos - 1) >> 1
            if not self._better(w, ks.heap[parent]):
                break
            self._heap_set(ks, pos, ks.heap[parent])
            pos = parent
        self._heap_set(ks, pos, w)
        return 0

    def _sift_down(self, ks: KeyState, pos: cython.int) -> cython.int:
        w: cython.int = ks.heap[pos]
        n: cython.int = ks.hsize
        child: cython.int
        while True:
            child = 2 * pos + 1
            if child >= n:
                break
            if child + 1 < n and self._better(ks.heap[child + 1], ks.heap[child]):
                child += 1
            if not self._better(ks.heap[child], w):
                break
            self._heap_set(ks, pos, ks.heap[child])
            pos = child
        self._heap_set(ks, pos, w)
        return 0

    def _set_timer(self, j: cython.int, when: cython.double) -> cython.int:
        self._j_tgen[j] += 1
        if when > NEVER:
            return 0  # no deadline: nothing to wake up for
        i: cython.int
        if self._tn == self._tcap:
            cap: cython.int = max(64, 2 * self._tcap)
            t_when: cython.double[:] = _zeros("d", cap)
            t_job: cython.int[:] = _zeros("i", cap)
            t_gen: cython.int[:] = _zeros("i", cap)
            for i in range(self._tn):
                t_when[i] = self._t_when[i]
                t_job[i] = self._t_job[i]
                t_gen[i] = self._t_gen[i]
            self._t_when = t_when
            self._t_job = t_job
            self._t_gen = t_gen
            self._tcap = cap
        pos: cython.int = self._tn
        self._tn += 1
        parent: cython.int
        while pos > 0:
            parent = (pos - 1) >> 1
            if self._t_when[parent] <= when:
                break
            self._t_when[pos] = self._t_when[parent]
            self._t_job[pos] = self._t_job[parent]
            self._t_gen[pos] = self._t_gen[parent]
            pos = parent
        self._t_when[pos] = when
        self._t_job[pos] = j
        self._t_gen[pos] = self._j_tgen[j]
        return 0

    def _timer_pop(self) -> cython.int:
        self._tn -= 1
        n: cython.int = self._tn
        if n == 0:
            return 0
        when: cython.double = self._t_when[n]
        job: cython.int = self._t_job[n]
        gen: cython.int = self._t_gen[n]
        pos: cython.int = 0
        child: cython.int
        while True:
            child = 2 * pos + 1
            if child >= n:
                break
            if child + 1 < n and self._t_when[child + 1] < self._t_when[child]:
                child += 1
            if self._t_when[child] >= when:
                break
            self._t_when[pos] = self._t_when[child]
            self._t_job[pos] = self._t_job[child]
            self._t_gen[pos] = self._t_gen[child]
            pos = child
        self._t_when[pos] = when
        self._t_job[pos] = job
        self._t_gen[pos] = gen
        return 0

    def _timer_live(self, i: cython.int) -> cython.bint:
        j: cython.int = self._t_job[i]
        return self._j_live[j] != 0 and self._j_tgen[j] == self._t_gen[i]

    def _purge_stale_timers(self) -> cython.int:
        while self._tn > 0 and not self._timer_live(0):
            self._timer_pop()
        return 0
