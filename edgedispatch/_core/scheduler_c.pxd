# Declarations that compile scheduler_py.py into edgedispatch._core.scheduler_c.
# The Python source is the reference; keep names and signatures in step.
from edgedispatch._core.decisions_c cimport Decisions
from edgedispatch._core.ring_c cimport Record, Ring
from edgedispatch._core.tables_c cimport KeyState

cdef int EV_REGISTER, EV_UPDATE, EV_DISCONNECT, EV_DRAIN, EV_SUBMIT
cdef int EV_ACCEPT, EV_REJECT, EV_STATUS, EV_CANCEL, EV_MIGRATE, EV_RECLAIM_BY
cdef int ACT_ASSIGN, ACT_TERMINATE, ACT_STATE
cdef int WS_AVAILABLE, WS_FULL, WS_DRAINING
cdef int J_QUEUED, J_OFFERED, J_ASSIGNED, J_RUNNING, J_ORPHANED
cdef int J_SUCCESS, J_FAILED, J_CANCELLED
cdef int JS_RUNNING, JS_SUCCESS, JS_FAILED
cdef int R_NONE, R_NO_CAPACITY, R_WORKER_LOST, R_JOB_ERROR
cdef int R_CANCELLED, R_LAST
cdef int F_TERMINATING
cdef int F_RESTORED_HELD
cdef unsigned long long U64

cpdef unsigned long long _splitmix64(unsigned long long x) noexcept


cdef class Scheduler(Decisions):
    cdef readonly Ring events
    cdef public double reclaim_grace
    cdef public double terminate_grace
    cdef Record _rec
    cdef unsigned long long _rng
    cdef long long _serial
    cdef public long long stale_events

    cpdef int process(self, int max_events=*) except -1
    cpdef bint pop_action(self, Record rec) except -1
    cdef int _on_event(self, Record rec) except -1
    cdef int _on_register(self, int w, int k, long long slots, double now) except -1
    cdef int _on_update(self, int w, int status, double load, long long job_count,
                        double now) except -1
    cdef int _on_drain(self, int w, double now) except -1
    cdef int _on_disconnect(self, int w, double now) except -1
    cdef int _on_submit(self, int j, int k, double deadline, double now,
                        long long policy) except -1
    cdef int _on_accept(self, int j, int w, double now) except -1
    cdef int _on_reject(self, int j, int w, double now) except -1
    cdef int _on_status(self, int j, int w, int status, double now) except -1
    cdef int _on_cancel(self, int j, int reason, double now) except -1
    cdef int _on_migrate(self, int j, int w, double now) except -1
    cdef int _on_reclaim_by(self, int j, double when, double now) except -1
