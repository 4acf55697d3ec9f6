# cython: language_level=3
"""The compiled event/action ring: a thin owner of an ``ed_ring_t``.

See ``_core/include/ed_ring.h`` for the memory-ordering contract.  The
single producer and the single consumer may live on different threads; the
methods below take no locks.
"""

from libc.stdlib cimport free
from libc.string cimport memset


cdef extern from "<stdlib.h>" nogil:
    int posix_memalign(void **memptr, size_t alignment, size_t size)


cdef class Record:
    """One event or action, reused to move records without allocation."""

    def __init__(self, int kind=0, int job=-1, int worker=-1, int arg=0,
                 double value=0.0, double now=0.0, long long extra=0):
        self.kind = kind
        self.job = job
        self.worker = worker
        self.arg = arg
        self.value = value
        self.now = now
        self.extra = extra

    def astuple(self):
        return (self.kind, self.job, self.worker, self.arg,
                self.value, self.now, self.extra)

    def __repr__(self):
        return "Record%r" % (self.astuple(),)


cdef class Ring:
    """Bounded SPSC ring of records.  ``capacity`` must be a power of two."""

    def __cinit__(self, capacity=4096):
        cdef void *mem = NULL
        cdef unsigned long long cap = capacity
        if cap < 2 or (cap & (cap - 1)) != 0:
            raise ValueError("ring capacity must be a power of two >= 2, got %r" % (capacity,))
        # The ring header is cache-line aligned (see ed_ring.h), which a
        # field inside a Python object cannot guarantee, so it is allocated.
        if posix_memalign(&mem, 64, sizeof(ed_ring_t)) != 0:
            raise MemoryError()
        memset(mem, 0, sizeof(ed_ring_t))
        self._ring = <ed_ring_t *>mem
        mem = NULL
        if posix_memalign(&mem, 64, cap * sizeof(ed_record_t)) != 0:
            raise MemoryError()
        self._slots = <ed_record_t *>mem
        ed_ring_init(self._ring, self._slots, cap)

    def __dealloc__(self):
        free(self._slots)
        free(self._ring)

    @property
    def capacity(self):
        return ed_ring_capacity(self._ring)

    def __len__(self):
        return ed_ring_size(self._ring)

    cpdef bint push(self, int kind, int job, int worker, int arg,
                    double value, double now, long long extra):
        cdef ed_record_t r
        r.kind = kind
        r.job = job
        r.worker = worker
        r.arg = arg
        r.value = value
        r.now = now
        r.extra = extra
        return ed_ring_push(self._ring, &r)

    cpdef bint push_record(self, Record rec):
        return self.push(rec.kind, rec.job, rec.worker, rec.arg,
                         rec.value, rec.now, rec.extra)

    cpdef bint pop_into(self, Record rec):
        cdef ed_record_t r
        if not ed_ring_pop(self._ring, &r):
            return False
        rec.kind = r.kind
        rec.job = r.job
        rec.worker = r.worker
        rec.arg = r.arg
        rec.value = r.value
        rec.now = r.now
        rec.extra = r.extra
        return True

    def pop(self):
        """Return the oldest record as a tuple, or None if the ring is empty."""
        cdef ed_record_t r
        if not ed_ring_pop(self._ring, &r):
            return None
        return (r.kind, r.job, r.worker, r.arg, r.value, r.now, r.extra)

    cpdef void clear(self):
        ed_ring_clear(self._ring)
