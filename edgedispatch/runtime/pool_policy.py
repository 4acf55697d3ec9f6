"""When a native pool forks, and what it does when its children fail.

Sans-IO: the policy is told what happened, with the loop's time passed in
as ``now``, and answers how many children to ask the zygote for.  It reads
no clock, sleeps never and touches no process.  Its one timer is pulled, as
in aioquic (``get_timer``/``handle_timer``): after every call the shell
(``NativePool``) reads ``next_deadline()`` and keeps one ``call_at`` armed
for it, which calls ``on_timer(now)``.  So tests drive it with plain floats.

Every call that may fork takes the pool's counts as it is now: ``ready``
children waiting for a job, ``waiting`` jobs waiting for a child, and
``can_fork`` (the zygote is up and the pool is running).  The shell owns
those; keeping a second count of them here could only drift.

The rules, and why:

- The pool keeps ``idle`` children ready, plus one for each waiting job
  (counting the forks asked for and not yet ready).
- A taken child is replaced once no job has been taken for ``REFILL_QUIET``:
  a fork and a child's start-up take milliseconds of CPU, which in a burst
  would delay the jobs starting on the children already there.
- ...unless fewer than a quarter of ``idle`` (or 2) are left ready: then
  the next jobs would wait for forks anyway, so they are asked for at once.
- Children dying before ``Ready`` (a prewarm that raises, a fork that
  fails) make the pool back off: ``backoff(n)`` after the n-th in a row,
  0.1 s doubling up to 5 s.  A child that gets ready resets the count.
- After ``MAX_ATTEMPTS`` such deaths in a row the waiting jobs fail, with
  the last death's reason: a prewarm that always fails must not keep jobs
  waiting forever.
- A job whose child died after ``Ready`` but before the job started (the
  OOM killer took an idle process, say) never ran: it is given another
  child, ``MAX_ATTEMPTS`` times at most.
"""

from __future__ import annotations

__all__ = ["MAX_ATTEMPTS", "REFILL_QUIET", "PoolPolicy", "backoff", "low_water"]

REFILL_QUIET = 0.05  # s without a job taken before taken children are replaced
MAX_ATTEMPTS = 3  # for both of the last two rules above
_BACKOFF_FIRST = 0.1
_BACKOFF_MAX = 5.0


def backoff(failures: int) -> float:
    """Seconds to wait before forking after ``failures`` (>= 1) children in
    a row died before they were ready."""
    return min(_BACKOFF_FIRST * 2.0 ** (failures - 1), _BACKOFF_MAX)


def low_water(idle: int) -> int:
    """Below this many ready children, taken ones are replaced at once."""
    return max(2, idle // 4)


class PoolPolicy:
    """Refill and failure decisions for a pool that keeps ``idle`` children
    ready.  Methods returning ``int`` return how many children to fork now
    (0: none)."""

    def __init__(self, idle: int) -> None:
        self.idle = idle
        #: Forks asked for whose child is neither ready nor dead yet.
        self.pending = 0
        #: Children in a row that died before they were ready.
        self.failures = 0
        self._last_take = 0.0
        # One deadline serves two waits: the end of a burst (quiet refill)
        # and the end of a backoff.  Either way, on_timer refills.
        self._deadline: float | None = None

    def next_deadline(self) -> float | None:
        """When the shell must call ``on_timer``; None: no timer."""
        return self._deadline

    def refill(self, now: float, *, ready: int, waiting: int, can_fork: bool) -> int:
        """Something changed the counts (a child got ready or died, a job
        came to wait, the zygote came up): top the pool up, unless a quiet
        wait or a backoff is running."""
        return self._refill(now, ready, waiting, can_fork, force=False)

    def job_taken(self, now: float, *, ready: int, waiting: int, can_fork: bool) -> int:
        """A job took a ready child; ``ready`` is what is left."""
        self._last_take = now
        if ready < low_water(self.idle):
            if not self.failures:
                self._deadline = None  # a quiet wait: no longer
            return self._refill(now, ready, waiting, can_fork, force=False)
        if self._deadline is None:
            self._deadline = now + REFILL_QUIET
        return 0

    def on_timer(self, now: float, *, ready: int, waiting: int, can_fork: bool) -> int:
        """The deadline passed: refill, unless a burst is still going on."""
        self._deadline = None
        quiet_until = self._last_take + REFILL_QUIET
        if now < quiet_until and not waiting and not self.failures:
            # Still in a burst.  (Compared with the deadline itself, so that
            # a timer that fires exactly then refills: no re-arming for
            # rounding's sake.)
            self._deadline = quiet_until
            return 0
        return self._refill(now, ready, waiting, can_fork, force=True)

    def _refill(self, now: float, ready: int, waiting: int, can_fork: bool, force: bool) -> int:
        if not can_fork:
            return 0
        if self._deadline is not None and not force:
            return 0  # the timer will refill
        want = self.idle + waiting - ready - self.pending
        if want <= 0:
            return 0
        if self.failures and not force:
            self._deadline = now + backoff(self.failures)
            return 0
        self.pending += want
        return want

    def child_ready(self) -> None:
        """A child of the current zygote said Ready."""
        self.pending = max(0, self.pending - 1)
        self.failures = 0

    def child_failed(self) -> bool:
        """A fork failed, or a child of the current zygote died before it
        was ready.  True: the waiting jobs must fail now."""
        self.pending = max(0, self.pending - 1)
        self.failures += 1
        return self.failures >= MAX_ATTEMPTS

    def zygote_lost(self) -> None:
        """The zygote died: the forks it was asked for will not come."""
        self.pending = 0

    def retry_job(self, attempts: int, *, started: bool, stopping: bool) -> bool:
        """A job's child died.  True: give the job another child.  Only a
        job that never started and that nobody stopped is retried, and
        only after fewer than ``MAX_ATTEMPTS`` retries (``attempts``)."""
        return not started and not stopping and attempts < MAX_ATTEMPTS
