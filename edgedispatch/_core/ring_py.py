"""Pure-Python twin of ``ring_c``: the same API over a deque.

It is the reference the compiled ring is tested against, and what runs when
``EDGEDISPATCH_NO_EXTENSIONS=1`` or the extension is not built.
"""

from __future__ import annotations

from collections import deque

RecordTuple = tuple[int, int, int, int, float, float, int]


class Record:
    """One event or action, reused to move records without allocation."""

    __slots__ = ("kind", "job", "worker", "arg", "value", "now", "extra")

    def __init__(
        self,
        kind: int = 0,
        job: int = -1,
        worker: int = -1,
        arg: int = 0,
        value: float = 0.0,
        now: float = 0.0,
        extra: int = 0,
    ) -> None:
        self.kind = kind
        self.job = job
        self.worker = worker
        self.arg = arg
        self.value = float(value)
        self.now = float(now)
        self.extra = extra

    def astuple(self) -> RecordTuple:
        return (self.kind, self.job, self.worker, self.arg, self.value, self.now, self.extra)

    def __repr__(self) -> str:
        return f"Record{self.astuple()!r}"


class Ring:
    """Bounded FIFO of records.  ``capacity`` must be a power of two."""

    def __init__(self, capacity: int = 4096) -> None:
        if capacity < 2 or capacity & (capacity - 1):
            raise ValueError(f"ring capacity must be a power of two >= 2, got {capacity!r}")
        self._cap = capacity
        self._q: deque[RecordTuple] = deque()

    @property
    def capacity(self) -> int:
        return self._cap

    def __len__(self) -> int:
        return len(self._q)

    def push(
        self, kind: int, job: int, worker: int, arg: int, value: float, now: float, extra: int
    ) -> bool:
        if len(self._q) >= self._cap:
            return False
        # Coerce like the C struct does, so both rings hand back equal tuples.
        self._q.append(
            (int(kind), int(job), int(worker), int(arg), float(value), float(now), int(extra))
        )
        return True

    def push_record(self, rec: Record) -> bool:
        return self.push(rec.kind, rec.job, rec.worker, rec.arg, rec.value, rec.now, rec.extra)

    def pop_into(self, rec: Record) -> bool:
        if not self._q:
            return False
        (rec.kind, rec.job, rec.worker, rec.arg, rec.value, rec.now, rec.extra) = self._q.popleft()
        return True

    def pop(self) -> RecordTuple | None:
        return self._q.popleft() if self._q else None

    def clear(self) -> None:
        self._q.clear()
