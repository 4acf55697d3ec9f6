/* Two threads through one ed_ring: the producer pushes N numbered records,
 * the consumer pops them and checks that every one arrives once, in order,
 * with all fields intact.  Built and run by tests/unit/test_ring.py, also
 * under ThreadSanitizer when the compiler has it. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "ed_ring.h"

#define CAP 1024
static ed_record_t storage[CAP];
static ed_ring_t ring;
static long total;

static void *produce(void *arg) {
    (void)arg;
    for (long i = 0; i < total; i++) {
        ed_record_t r = {.kind = (int32_t)(i & 0x7fffffff), .job = (int32_t)(i % 1000003),
                         .worker = -1, .arg = 7, .value = (double)i * 0.5,
                         .now = (double)i, .extra = i * 3};
        while (!ed_ring_push(&ring, &r)) {
            /* full: spin until the consumer frees a slot */
        }
    }
    return NULL;
}

int main(int argc, char **argv) {
    total = argc > 1 ? atol(argv[1]) : 1000000;
    if (ed_ring_init(&ring, storage, 1000) != -1) {
        fprintf(stderr, "a capacity that is not a power of two was accepted\n");
        return 1;
    }
    if (ed_ring_init(&ring, storage, CAP) != 0) {
        return 1;
    }
    pthread_t t;
    pthread_create(&t, NULL, produce, NULL);
    ed_record_t r;
    for (long i = 0; i < total; i++) {
        while (!ed_ring_pop(&ring, &r)) {
        }
        if (r.kind != (int32_t)(i & 0x7fffffff) || r.job != (int32_t)(i % 1000003) ||
            r.worker != -1 || r.arg != 7 || r.value != (double)i * 0.5 ||
            r.now != (double)i || r.extra != i * 3) {
            fprintf(stderr, "record %ld arrived wrong or out of order\n", i);
            return 1;
        }
    }
    pthread_join(t, NULL);
    if (ed_ring_pop(&ring, &r) != 0 || ed_ring_size(&ring) != 0) {
        fprintf(stderr, "ring not empty at the end\n");
        return 1;
    }
    printf("ok %ld\n", total);
    return 0;
}
