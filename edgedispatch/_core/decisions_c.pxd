# Declarations that compile decisions_py.py into edgedispatch._core.decisions_c.
# The Python source is the reference; keep names and signatures in step.
from edgedispatch._core.ring_c cimport Ring
from edgedispatch._core.tables_c cimport KeyState, Tables

cdef int ACT_OFFER, ACT_FAILED, ACT_STATE
cdef int J_QUEUED, J_OFFERED, J_ASSIGNED, J_RUNNING, J_ORPHANED
cdef int J_SUCCESS, J_FAILED, J_CANCELLED
cdef int RP_ON_FAILURE
cdef int R_NONE, R_NO_CAPACITY, R_MAX_ATTEMPTS, R_WORKER_LOST
cdef int W_NOT_WAITING, W_NO_WORKERS, W_ALL_BUSY, W_ALL_TRIED, W_BACKOFF
cdef int F_TERMINATING


cdef class Decisions(Tables):
    cdef readonly Ring actions
    cdef object _overflow
    cdef public double offer_timeout
    cdef public int max_attempts
    cdef public double retry_base
    cdef public double retry_max
    cdef public long long decisions

    cdef int _emit(self, int kind, int job, int worker, int arg,
                   double value, double now, long long extra) except -1
    cdef int _check_worker(self, int w) except -1
    cdef int _check_job(self, int j) except -1
    cdef int _offer(self, int j, int w, double now) except -1
    cdef bint _tried(self, int j, int w) except -1
    cdef int _pick(self, KeyState ks, int j) except -2
    cdef int _untried(self, KeyState ks, int j) except -2
    cdef int _pump(self, int k, double now) except -1
    cdef int _retry(self, int j, double now, bint counted) except -1
    cdef int _requeue(self, int j, double now) except -1
    cdef int _finish(self, int j, int state, int reason, double now) except -1
    cdef int _fire_timers(self, double now) except -1
    cdef int _on_job_timer(self, int j, double now) except -1
