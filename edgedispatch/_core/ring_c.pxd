# C-level API of the compiled ring (ring_c.pyx) over _core/include/ed_ring.h.
# ring_py.py is the pure-Python twin with the same Python API.
cimport cython
from libc.stdint cimport int32_t, int64_t, uint64_t


cdef extern from "ed_ring.h" nogil:
    ctypedef struct ed_record_t:
        int32_t kind
        int32_t job
        int32_t worker
        int32_t arg
        double value
        double now
        int64_t extra

    ctypedef struct ed_ring_t:
        pass

    int ed_ring_init(ed_ring_t *r, ed_record_t *storage, uint64_t capacity)
    uint64_t ed_ring_capacity(const ed_ring_t *r)
    uint64_t ed_ring_size(ed_ring_t *r)
    int ed_ring_push(ed_ring_t *r, const ed_record_t *rec)
    int ed_ring_pop(ed_ring_t *r, ed_record_t *out)
    void ed_ring_clear(ed_ring_t *r)


@cython.final
cdef class Record:
    cdef public int kind
    cdef public int job
    cdef public int worker
    cdef public int arg
    cdef public double value
    cdef public double now
    cdef public long long extra


@cython.final
cdef class Ring:
    cdef ed_ring_t *_ring
    cdef ed_record_t *_slots

    cpdef bint push(self, int kind, int job, int worker, int arg,
                    double value, double now, long long extra)
    cpdef bint push_record(self, Record rec)
    cpdef bint pop_into(self, Record rec)
    cpdef void clear(self)
