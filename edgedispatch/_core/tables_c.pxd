# Declarations that compile tables_py.py into edgedispatch._core.tables_c.
# The Python source is the reference; keep names and signatures in step.

cdef int WS_AVAILABLE
cdef int WS_FULL
cdef double NEVER


cdef class KeyState:
    cdef int[:] heap
    cdef public int hsize
    cdef public int qhead
    cdef public int qtail
    cdef public int qlen
    cdef public int nworkers


cdef class Tables:
    cdef public double load_threshold
    cdef list _keys

    cdef int _wcap
    cdef signed char[:] _w_alive
    cdef signed char[:] _w_status
    cdef int[:] _w_key
    cdef int[:] _w_cap
    cdef int[:] _w_used
    cdef int[:] _w_pos
    cdef int[:] _w_jobcount
    cdef int[:] _w_jhead
    cdef double[:] _w_load
    cdef double[:] _w_score
    cdef int[:] _w_base
    cdef double[:] _w_perjob
    cdef signed char[:] _w_declined
    cdef unsigned long long[:] _w_tie
    cdef long long[:] _w_serial

    cdef int _jcap
    cdef signed char[:] _j_live
    cdef signed char[:] _j_state
    cdef signed char[:] _j_reason
    cdef signed char[:] _j_policy
    cdef signed char[:] _j_flags
    cdef int[:] _j_key
    cdef int[:] _j_worker
    cdef int[:] _j_attempts
    cdef int[:] _j_qprev
    cdef int[:] _j_qnext
    cdef int[:] _j_wprev
    cdef int[:] _j_wnext
    cdef int[:] _j_tgen
    cdef double[:] _j_deadline
    cdef double[:] _j_qtimeout
    cdef double[:] _j_retry_at
    cdef long long[:] _j_tried1
    cdef list _j_tried

    cdef int _tcap
    cdef int _tn
    cdef double[:] _t_when
    cdef int[:] _t_job
    cdef int[:] _t_gen

    cdef KeyState _key(self, int k)
    cdef int _hold(self, int j, int w) except -1
    cdef int _release(self, int j) except -1
    cdef int _unlink_worker_job(self, int j) noexcept
    cdef int _q_push_back(self, KeyState ks, int j) noexcept
    cdef int _q_push_front(self, KeyState ks, int j) noexcept
    cdef int _q_unlink(self, KeyState ks, int j) noexcept
    cdef double _predicted(self, int w) noexcept
    cdef bint _eligible(self, int w) noexcept
    cdef bint _better(self, int a, int b) noexcept
    cdef bint _refresh_worker(self, int w) except -1
    cdef int _heap_set(self, KeyState ks, int i, int w) noexcept
    cdef int _heap_push(self, KeyState ks, int w) except -1
    cdef int _heap_remove(self, KeyState ks, int pos) noexcept
    cdef int _heap_fix(self, KeyState ks, int pos) noexcept
    cdef int _sift_up(self, KeyState ks, int pos) noexcept
    cdef int _sift_down(self, KeyState ks, int pos) noexcept
    cdef int _set_timer(self, int j, double when) except -1
    cdef int _timer_pop(self) noexcept
    cdef bint _timer_live(self, int i) noexcept
    cdef int _purge_stale_timers(self) noexcept
