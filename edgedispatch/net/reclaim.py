"""Giving memory back to the system after a mass deletion.

Measured with ``edgedispatch bench churn`` (100,000 rooms created and
deleted): once the domain keeps nothing of the rooms, the server's RSS still
stays ~20 MB above its baseline, in two allocators that do not give memory
back by themselves:

* pymalloc frees a 1 MiB arena only when every object in it is gone; the
  interpreter's free lists (tuples, floats, dicts...) keep the last objects
  freed, which are spread over the arenas the churn used, and so pin
  them.  A full ``gc.collect()`` clears the free lists (and collects any
  cycles): ~15 MB came back after the churn, where ``malloc_trim`` alone
  gave ~2 MB.
* glibc keeps freed heap memory (dict tables, protobuf arenas, buffers) for
  reuse; ``malloc_trim(0)`` hands its free pages back.

Both cost time in proportion to what is live (a full collection walks every
tracked object that start-up did not freeze), so they run only after much
was freed: ``check()``, called every second by the server, compares
pymalloc's block count and glibc's free bytes with what they were and acts
on a large drop, once, and only when the freeing has stopped (a look that
finds the counts steady): a reclaim in the middle of a mass deletion gave
little back, and the rest of the deletion then fell short of the threshold
(bench churn: 84 MB after, against 57 MB when it ran after the deletion).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import sys

log = logging.getLogger("edgedispatch.server")

#: Act after this many pymalloc blocks were freed since the peak (~6 MB of
#: small objects; 100,000 rooms are ~1.5 million blocks)...
BLOCKS_FREED = 100_000
#: ...or glibc's free heap grew by this much (bytes).
HEAP_FREED = 8 << 20
#: Steady: fewer blocks than this freed since the last look.
STEADY_BLOCKS = 10_000


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _glibc() -> ctypes.CDLL | None:
    """glibc with malloc_trim and mallinfo2 (2.33+), or None (musl, macOS...)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.malloc_trim.restype = ctypes.c_int
        libc.mallinfo2.argtypes = []
        libc.mallinfo2.restype = _MallInfo2
    except (OSError, AttributeError):
        return None
    return libc


class Reclaimer:
    """See the module docstring."""

    def __init__(self) -> None:
        self._libc = _glibc()
        self._peak_blocks = sys.getallocatedblocks()
        # The least free glibc heap seen since the last trim: what was freed
        # since is what grew above it (reused memory lowers it again).
        self._least_free = self._heap_free()
        self._last_blocks = self._peak_blocks
        self._last_free = self._least_free
        self.reclaims = 0

    def _heap_free(self) -> int:
        return int(self._libc.mallinfo2().fordblks) if self._libc is not None else 0

    def check(self) -> bool:
        """Give memory back if much was freed since the last look; True if it did."""
        blocks = sys.getallocatedblocks()
        self._peak_blocks = max(self._peak_blocks, blocks)
        free = self._heap_free()
        self._least_free = min(self._least_free, free)
        freed_blocks = self._peak_blocks - blocks
        steady = (
            self._last_blocks - blocks < STEADY_BLOCKS and free - self._last_free < HEAP_FREED // 8
        )
        self._last_blocks, self._last_free = blocks, free
        if not steady or (freed_blocks < BLOCKS_FREED and free - self._least_free < HEAP_FREED):
            return False
        if freed_blocks >= BLOCKS_FREED:
            gc.collect()  # clears the free lists too
        if self._libc is not None:
            self._libc.malloc_trim(0)
        self._peak_blocks = self._last_blocks = sys.getallocatedblocks()
        self._least_free = self._last_free = self._heap_free()
        self.reclaims += 1
        log.debug(
            "memory given back: %d pymalloc blocks freed since the peak, %d kB of free heap",
            freed_blocks,
            free // 1024,
        )
        return True
