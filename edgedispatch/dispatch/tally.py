"""What the dispatch domain has done since start: counts of offers,
assignments, declines and ended jobs, and how long jobs waited to be
assigned.  Counted as it happens, at a few plain additions per job (the
hot path pays no lock, no label lookup and no metric object); read by the
metrics page when it is scraped (``obs.metrics``).
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter

from edgedispatch._core.codes import FailReason, JobState
from edgedispatch.dispatch.compact import shrink
from edgedispatch.dispatch.records import JobRec

#: Upper bounds (seconds) of the dispatch latency buckets: from a job's
#: creation to its assignment.  Sub-millisecond at the low end, where an
#: idle worker takes a job; up to the default queue timeout at the top.
LATENCY_BOUNDS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
)  # fmt: skip


class Tally:
    def __init__(self) -> None:
        self.offers = 0
        self.assignments = 0
        #: Offers that came back without an assignment: declined, or timed out.
        self.returned = 0
        self.declines = 0
        #: Jobs ended, by (tenant, state, reason).
        self.ended: Counter[tuple[str, JobState, FailReason]] = Counter()
        #: Dispatch latency: counts per bucket of ``LATENCY_BOUNDS`` (the
        #: last one is +Inf), and their sum in seconds.
        self.latency = [0] * (len(LATENCY_BOUNDS) + 1)
        self.latency_sum = 0.0
        #: Job records held now, by (tenant, state): kept as they change, so
        #: that a scrape does not walk every record (ended ones stay until
        #: their dispatch goes, and a scan of them cost 25 ms a scrape).
        self.states: Counter[tuple[str, JobState]] = Counter()
        #: The jobs queued now (their wait reasons are read at a scrape).
        self.queued: dict[str, JobRec] = {}

    def added(self, rec: JobRec) -> None:
        """A record is held (a new job, or one recovered after a restart)."""
        self._held(rec, rec.state, 1)

    def removed(self, rec: JobRec) -> None:
        """A record is dropped."""
        self._held(rec, rec.state, -1)

    def _held(self, rec: JobRec, state: JobState, delta: int) -> None:
        """``rec`` counts (1) or no longer counts (-1) as held in ``state``."""
        key = (rec.key.tenant, state)
        n = self.states[key] + delta
        if n:
            self.states[key] = n
        else:
            del self.states[key]
        if state == JobState.QUEUED:
            if delta > 0:
                self.queued[rec.id] = rec
            elif self.queued.pop(rec.id, None) is not None:
                shrink(self.queued)  # after a burst, not sized for its peak

    def transition(
        self, rec: JobRec, before: JobState, state: JobState, reason: FailReason, waited_ns: int
    ) -> None:
        """A job moved from ``before`` to ``state``; ``waited_ns``: since its
        creation, at its first assignment (else negative: a job assigned
        again after its worker was lost is not counted twice)."""
        if state == JobState.OFFERED:
            self.offers += 1
        elif state == JobState.ASSIGNED:
            self.assignments += 1
            if waited_ns >= 0:
                seconds = waited_ns / 1e9
                self.latency[bisect_left(LATENCY_BOUNDS, seconds)] += 1
                self.latency_sum += seconds
        elif before == JobState.OFFERED and state == JobState.QUEUED:
            self.returned += 1
        tenant = rec.key.tenant
        if state.terminal and not before.terminal:
            self.ended[tenant, state, reason] += 1
        self._held(rec, before, -1)
        self._held(rec, state, 1)

    @property
    def offer_timeouts(self) -> int:
        return max(0, self.returned - self.declines)
