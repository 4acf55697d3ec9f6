/*
 * ed_ring.h: a bounded single-producer/single-consumer ring of fixed-size
 * records, used for the events that enter the scheduling core and the
 * actions that leave it.
 *
 * Theory of operation
 * -------------------
 * `head` is written only by the producer and `tail` only by the consumer.
 * Both are free-running 64-bit counters; the slot of counter c is
 * c & (capacity - 1), so capacity must be a power of two, and
 * head - tail is the number of records in the ring (never above capacity).
 *
 * Memory ordering: the producer writes the record and then publishes it
 * with a release store of `head`; the consumer's acquire load of `head`
 * makes the record visible before it reads it.  Symmetrically the consumer
 * releases the slot with a release store of `tail`, which the producer
 * acquires before it overwrites that slot.  Each side reads its own index
 * relaxed, because nobody else writes it.
 *
 * The two indices sit on separate cache lines so that the producer and
 * consumer threads do not false-share.  Nothing here allocates: the owner
 * passes in storage for `capacity` records.
 */
#ifndef ED_RING_H
#define ED_RING_H

#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

#define ED_CACHE_LINE 64

/* One event or action.  Field meaning depends on `kind`; see
 * edgedispatch/_core/codes.py, which is the single source of the kinds. */
typedef struct ed_record {
    int32_t kind;
    int32_t job;     /* job handle, or -1 */
    int32_t worker;  /* worker handle, or -1 */
    int32_t arg;     /* agent key, status, state, reason or slot cap */
    double  value;   /* load or a deadline, in the caller's clock */
    double  now;     /* the caller's clock when the event happened */
    int64_t extra;   /* job count, restart policy, or a second reason */
} ed_record_t;

typedef struct ed_ring {
    _Alignas(ED_CACHE_LINE) _Atomic uint64_t head;
    char _pad_head[ED_CACHE_LINE - sizeof(uint64_t)];
    _Alignas(ED_CACHE_LINE) _Atomic uint64_t tail;
    char _pad_tail[ED_CACHE_LINE - sizeof(uint64_t)];
    uint64_t mask;
    ed_record_t *slots;
} ed_ring_t;

/* Returns 0, or -1 when capacity is not a power of two >= 2. */
static inline int ed_ring_init(ed_ring_t *r, ed_record_t *storage, uint64_t capacity) {
    if (capacity < 2 || (capacity & (capacity - 1)) != 0) {
        return -1;
    }
    atomic_store_explicit(&r->head, 0, memory_order_relaxed);
    atomic_store_explicit(&r->tail, 0, memory_order_relaxed);
    r->mask = capacity - 1;
    r->slots = storage;
    return 0;
}

static inline uint64_t ed_ring_capacity(const ed_ring_t *r) {
    return r->mask + 1;
}

/* Either side may call this; the answer is exact only on the calling side. */
static inline uint64_t ed_ring_size(ed_ring_t *r) {
    uint64_t tail = atomic_load_explicit(&r->tail, memory_order_acquire);
    uint64_t head = atomic_load_explicit(&r->head, memory_order_acquire);
    return head - tail;
}

/* Producer side.  Returns 1 if the record was queued, 0 if the ring is full. */
static inline int ed_ring_push(ed_ring_t *r, const ed_record_t *rec) {
    uint64_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
    uint64_t tail = atomic_load_explicit(&r->tail, memory_order_acquire);
    if (head - tail > r->mask) {
        return 0;
    }
    r->slots[head & r->mask] = *rec;
    atomic_store_explicit(&r->head, head + 1, memory_order_release);
    return 1;
}

/* Consumer side.  Returns 1 and fills *out, or 0 if the ring is empty. */
static inline int ed_ring_pop(ed_ring_t *r, ed_record_t *out) {
    uint64_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
    uint64_t head = atomic_load_explicit(&r->head, memory_order_acquire);
    if (tail == head) {
        return 0;
    }
    *out = r->slots[tail & r->mask];
    atomic_store_explicit(&r->tail, tail + 1, memory_order_release);
    return 1;
}

/* Consumer side: drop everything queued. */
static inline void ed_ring_clear(ed_ring_t *r) {
    uint64_t head = atomic_load_explicit(&r->head, memory_order_acquire);
    atomic_store_explicit(&r->tail, head, memory_order_release);
}

#endif /* ED_RING_H */
