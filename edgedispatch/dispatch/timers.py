"""The domain's deadline heap: rooms closing when nobody came, jobs running
past their maximum duration.

It sits beside the scheduling core's own timers; ``Domain.next_deadline()``
is the earlier of the two, and the shell arms one ``call_at`` for it.
Each (kind, key) has at most one live deadline: setting it again replaces
it, and the replaced heap entry is skipped when it reaches the top (the
core's generation trick).  Times are the caller's monotonic ``now``.
"""

from __future__ import annotations

import heapq
from enum import IntEnum

from edgedispatch.dispatch.compact import shrink


class TimerKind(IntEnum):
    ROOM_EMPTY = 1  #: key (tenant, room name): nobody joined within empty_timeout
    JOB_DURATION = 2  #: key (job id,): ran for max_job_duration
    ROOM_DEPARTURE = 3  #: key (tenant, room name): the last participant left


TimerKey = tuple[str, ...]


class Timers:
    __slots__ = ("heap", "_live", "_seq")

    def __init__(self) -> None:
        #: (when, sequence, kind, key); empty when nothing is set (callers
        #: test it before asking for the deadline: a step's hot path).
        self.heap: list[tuple[float, int, TimerKind, TimerKey]] = []
        #: (kind, key) -> the sequence number of its live heap entry
        self._live: dict[tuple[TimerKind, TimerKey], int] = {}
        self._seq = 0

    def __len__(self) -> int:
        return len(self._live)

    def set(self, when: float, kind: TimerKind, key: TimerKey) -> None:
        """Fire (kind, key) at ``when``, instead of any earlier setting."""
        self._seq += 1
        self._live[kind, key] = self._seq
        heapq.heappush(self.heap, (when, self._seq, kind, key))
        self._drop_dead()

    def clear(self, kind: TimerKind, key: TimerKey) -> None:
        if self._live.pop((kind, key), None) is not None:
            shrink(self._live)
            self._drop_dead()

    def _drop_dead(self) -> None:
        """Replaced and cleared entries stay in the heap until they reach its
        top; when they outnumber the live ones, rebuild it, so that a churn
        of rooms cannot grow it without bound.  Checked on clearing too: a
        room deleted before its empty timeout keeps its entry (and its key:
        the room's name) otherwise, for as long as an earlier live deadline
        stays on top (a long-lived room's), up to the timeout."""
        if len(self.heap) > 64 and len(self.heap) > 2 * len(self._live):
            live = self._live
            self.heap = [e for e in self.heap if live.get((e[2], e[3])) == e[1]]
            heapq.heapify(self.heap)

    def next_deadline(self) -> float | None:
        heap, live = self.heap, self._live
        while heap and live.get((heap[0][2], heap[0][3])) != heap[0][1]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def pop_due(self, now: float) -> list[tuple[TimerKind, TimerKey]]:
        """The timers due at or before ``now``, earliest first; each fires once."""
        due = []
        heap, live = self.heap, self._live
        while heap and heap[0][0] <= now:
            _, seq, kind, key = heapq.heappop(heap)
            if live.get((kind, key)) == seq:
                del live[kind, key]
                due.append((kind, key))
        if due:
            shrink(live)
        return due


class WallTime:
    """Wall-clock time for the records and tokens, from the monotonic ``now``
    every call is given: ``now + offset``.  The shell sets ``offset`` (wall
    minus monotonic) when it starts and refreshes it as it runs, so that the
    domain itself reads no clock; tests leave it at 0 or set it."""

    __slots__ = ("offset",)

    def __init__(self, offset: float = 0.0) -> None:
        self.offset = offset

    def __call__(self, now: float) -> float:
        return now + self.offset

    def ns(self, now: float) -> int:
        return int((now + self.offset) * 1e9)
