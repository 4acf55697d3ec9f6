"""The native pool's decisions, without processes and without sleeping:
its state tables (``pool_states``), its refill and failure policy
(``pool_policy``, driven by a fake clock: plain floats passed as ``now``)
and what a job's end is reported as (``pool_jobs.job_outcome``).

The process-level behaviour is tests/unit/test_native_pool.py's."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

from edgedispatch.errors import InternalError
from edgedispatch.runtime import messages as m
from edgedispatch.runtime.pool_jobs import job_outcome
from edgedispatch.runtime.pool_policy import MAX_ATTEMPTS, REFILL_QUIET, PoolPolicy, backoff
from edgedispatch.runtime.pool_states import ChildState, PoolState, move, settled

# -- the state tables --------------------------------------------------------------

P, C = PoolState, ChildState

# Written out here, not read from the module: these are the moves the pool's
# users rely on (a dead zygote is replaced; a broken pool can only close...).
POOL_MOVES = {
    (P.NEW, P.RUNNING),  # start() succeeded
    (P.NEW, P.CLOSED),  # start() failed, or close() before start()
    (P.RUNNING, P.RESTARTING),  # the zygote died
    (P.RUNNING, P.CLOSED),
    (P.RESTARTING, P.RUNNING),  # the new zygote loaded the agent
    (P.RESTARTING, P.BROKEN),  # it did not
    (P.RESTARTING, P.CLOSED),
    (P.BROKEN, P.CLOSED),
}
CHILD_MOVES = {
    (C.FORKED, C.CONNECTED),  # its control connection said Hello
    (C.FORKED, C.FINALIZED),  # died before it connected
    (C.CONNECTED, C.READY),  # prewarmed
    (C.CONNECTED, C.FINALIZED),  # prewarm failed, or retired
    (C.READY, C.BUSY),  # given a job
    (C.READY, C.FINALIZED),  # died idle, or retired when its zygote died
    (C.BUSY, C.FINALIZED),  # the job is over
}


def _all_pairs(states: type[PoolState] | type[ChildState]) -> list[tuple[object, object]]:
    return list(itertools.product(states, states))


@pytest.mark.parametrize(
    ("old", "new"),
    _all_pairs(PoolState) + _all_pairs(ChildState),
    ids=lambda s: s.name,
)
def test_a_move_is_allowed_exactly_when_the_table_has_it(old: P | C, new: P | C) -> None:
    legal = (old, new) in (POOL_MOVES if isinstance(old, PoolState) else CHILD_MOVES)
    if legal:
        assert move(old, new, "pool x") is new
    else:
        with pytest.raises(InternalError) as err:
            move(old, new, "pool x")
        # Whoever reads the log learns where, from what and to what.
        assert str(err.value) == f"pool x: illegal transition {old.name} -> {new.name}"


def test_closed_and_finalized_are_the_end() -> None:
    for state in (P.CLOSED, C.FINALIZED):
        for other in type(state):
            with pytest.raises(InternalError):
                move(state, other, "x")


def test_a_pool_states_value_is_what_a_refused_job_is_told() -> None:
    # run_job on a pool that is not running: "native pool 'x' is broken".
    assert [s.value for s in PoolState] == ["new", "running", "restarting", "broken", "closed"]


def _end(state: ChildState, events: list[str], *, orphan: bool = False) -> list[bool]:
    """Whether the child is settled after each of ``events`` arrives."""
    exit_known, ctl, out = orphan, state is not C.FORKED, True
    seen = []
    for event in events:
        if event == "Exited":
            exit_known = True
        elif event == "ctl closed":
            ctl = False
        elif event == "out closed":
            out = False
        seen.append(settled(state, exit_known=exit_known, connections_open=ctl or out))
    return seen


@pytest.mark.parametrize("state", [C.CONNECTED, C.READY, C.BUSY])
def test_a_child_is_settled_by_the_last_of_its_exit_and_its_two_connections(
    state: ChildState,
) -> None:
    # Every arrival order: settled exactly when the last one is in, so the
    # job's last output line and traceback are read before it ends.
    for order in itertools.permutations(["Exited", "ctl closed", "out closed"]):
        assert _end(state, list(order)) == [False, False, True], order


def test_a_child_reaped_before_it_connected_waits_for_the_grace_timer() -> None:
    # Its control connection may still be in the accept queue.
    assert _end(C.FORKED, ["out closed", "Exited"]) == [False, False]
    assert _end(C.FORKED, ["Exited", "out closed"]) == [False, False]


def test_an_orphan_needs_no_exit_status() -> None:
    # Its zygote is gone: nobody will say it was reaped.
    assert _end(C.BUSY, ["ctl closed", "out closed"], orphan=True) == [False, True]
    assert _end(C.FORKED, ["out closed"], orphan=True) == [False]


# -- the refill policy --------------------------------------------------------------


class Pool:
    """What the shell does with the policy, minus processes: counts of
    ready children and waiting jobs, and the forks asked for, by time."""

    def __init__(self, idle: int) -> None:
        self.policy = PoolPolicy(idle)
        self.ready = 0
        self.waiting = 0
        self.can_fork = True
        self.forks: list[tuple[float, int]] = []

    def _ask(self, decide: Callable[..., int], now: float) -> None:
        n = decide(now, ready=self.ready, waiting=self.waiting, can_fork=self.can_fork)
        if n:
            self.forks.append((round(now, 6), n))

    def refill(self, now: float) -> None:
        self._ask(self.policy.refill, now)

    def start(self, now: float = 0.0) -> None:
        """Started, and every child asked for got ready."""
        self.refill(now)
        self.children_ready(now, self.policy.pending)
        self.forks.clear()

    def job(self, now: float) -> None:
        """run_job: take a ready child, or wait for one."""
        self.run_timers(now)
        if self.ready:
            self.ready -= 1
            self._ask(self.policy.job_taken, now)
        else:
            self.waiting += 1
            self.refill(now)

    def children_ready(self, now: float, n: int) -> None:
        self.run_timers(now)
        for _ in range(n):
            self.policy.child_ready()
            if self.waiting:
                self.waiting -= 1
            else:
                self.ready += 1
            self.refill(now)

    def children_died_idle(self, now: float, n: int) -> None:
        """Ready children died (the OOM killer, say): Exited, then refill."""
        self.run_timers(now)
        self.ready -= n
        self.refill(now)

    def child_failed(self, now: float) -> bool:
        """A child died before Ready; True: the waiting jobs fail."""
        self.run_timers(now)
        give_up = self.policy.child_failed()
        self.refill(now)
        return give_up

    def run_timers(self, until: float) -> None:
        """The shell's call_at: on_timer at each deadline up to ``until``."""
        while (deadline := self.policy.next_deadline()) is not None and deadline <= until:
            self._ask(self.policy.on_timer, deadline)


def test_start_asks_for_the_idle_children_once() -> None:
    pool = Pool(idle=4)
    pool.refill(0.0)
    pool.refill(0.001)  # the forks asked for count until they are ready
    assert pool.forks == [(0.0, 4)]


def test_nothing_is_forked_while_the_zygote_is_down() -> None:
    pool = Pool(idle=4)
    pool.refill(0.0)
    pool.can_fork = False
    pool.policy.zygote_lost()
    pool.refill(1.0)
    assert pool.forks == [(0.0, 4)]
    # The new zygote is asked for all of them: the old one's forks never came.
    pool.can_fork = True
    pool.refill(2.0)
    assert pool.forks == [(0.0, 4), (2.0, 4)]


def test_a_burst_forks_nothing_until_it_is_over() -> None:
    pool = Pool(idle=8)
    pool.start()
    for i in range(6):  # 8 ready -> 2: never below the low water
        pool.job(1.0 + i * 0.005)
    assert pool.policy.next_deadline() == pytest.approx(1.0 + REFILL_QUIET)
    pool.run_timers(1.2)
    # One fork request, REFILL_QUIET after the last job, for all six.
    assert pool.forks == [(round(1.025 + REFILL_QUIET, 6), 6)]
    assert pool.policy.next_deadline() is None


def test_a_quiet_refill_waits_for_the_burst_not_for_the_first_job() -> None:
    pool = Pool(idle=8)
    pool.start()
    pool.job(1.0)
    pool.job(1.04)
    pool.run_timers(1.05)  # the first job's deadline: the burst goes on
    assert pool.forks == []
    pool.run_timers(1.2)
    assert pool.forks == [(round(1.04 + REFILL_QUIET, 6), 2)]


def test_below_the_low_water_the_pool_refills_at_once() -> None:
    pool = Pool(idle=8)
    pool.start()
    for i in range(7):  # the 7th leaves 1 ready: fewer than 2
        pool.job(1.0 + i * 0.001)
    assert pool.forks == [(1.006, 7)]
    assert pool.policy.next_deadline() is None  # no quiet wait left over


def test_the_low_water_is_a_quarter_of_a_large_pool() -> None:
    pool = Pool(idle=16)
    pool.start()
    for i in range(12):  # 4 left: not yet below a quarter
        pool.job(1.0 + i * 0.001)
    assert pool.forks == []
    pool.job(1.02)  # 3 left
    assert pool.forks == [(1.02, 13)]


def test_each_job_beyond_the_ready_children_asks_for_its_fork_at_once() -> None:
    pool = Pool(idle=2)
    pool.start()
    for i in range(5):
        pool.job(1.0 + i * 0.001)
    # Two taken (each replaced at once: a small pool is always low), then
    # three that wait, one fork each.
    assert pool.forks == [(1.0, 1), (1.001, 1), (1.002, 1), (1.003, 1), (1.004, 1)]
    assert (pool.ready, pool.waiting) == (0, 3)
    pool.children_ready(1.1, 5)
    assert (pool.ready, pool.waiting) == (2, 0)
    assert len(pool.forks) == 5  # nothing more: the pool is full again


def test_a_waiting_job_does_not_wait_for_the_burst_to_end() -> None:
    pool = Pool(idle=8)
    pool.start()
    pool.job(1.0)  # a quiet wait starts, until 1.05
    pool.job(1.04)
    pool.children_died_idle(1.045, 6)
    pool.job(1.046)  # finds no child: waits
    pool.run_timers(1.2)
    # At the first deadline, though the burst goes on until 1.09.
    assert pool.forks == [(1.05, 9)]


def test_backoff_doubles_from_a_tenth_of_a_second_up_to_five() -> None:
    assert [backoff(n) for n in range(1, 10)] == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0]


def test_children_dying_before_ready_slow_the_forks_down() -> None:
    pool = Pool(idle=1)
    pool.refill(0.0)
    now, gaps = 0.0, []
    for _ in range(6):
        pool.child_failed(now)  # its replacement waits for the backoff...
        deadline = pool.policy.next_deadline()
        assert deadline is not None
        pool.run_timers(deadline)  # ...then is forked
        gaps.append(round(pool.forks[-1][0] - now, 6))
        now = deadline
    assert gaps == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2]


def test_a_child_that_gets_ready_resets_the_backoff() -> None:
    pool = Pool(idle=1)
    pool.refill(0.0)
    pool.child_failed(0.0)
    pool.run_timers(0.1)
    pool.child_failed(0.1)
    pool.run_timers(0.3)
    pool.children_ready(0.4, 1)
    assert pool.policy.failures == 0
    pool.job(1.0)  # its replacement is forked at once
    assert pool.forks[-1] == (1.0, 1)
    pool.child_failed(1.1)  # and a new failure waits the first backoff again
    assert pool.policy.next_deadline() == pytest.approx(1.1 + backoff(1))


def test_waiting_jobs_fail_after_max_attempts_failures_in_a_row() -> None:
    pool = Pool(idle=1)
    pool.refill(0.0)
    pool.job(0.0)
    assert [pool.child_failed(t) for t in (0.1, 0.2)] == [False, False]
    pool.children_ready(0.3, 1)  # one success: the count starts over
    in_a_row = [pool.child_failed(float(t)) for t in range(1, MAX_ATTEMPTS + 1)]
    assert in_a_row == [False] * (MAX_ATTEMPTS - 1) + [True]


def test_a_job_whose_child_died_before_it_started_is_retried_then_failed() -> None:
    policy = PoolPolicy(2)
    attempts, children = 0, 1
    while policy.retry_job(attempts, started=False, stopping=False):
        attempts += 1
        children += 1
    assert (attempts, children) == (MAX_ATTEMPTS, MAX_ATTEMPTS + 1)
    # What it is then told: how its last child died.
    assert job_outcome("", -9, None) == (-9, "killed by signal 9 (SIGKILL)")


def test_a_job_that_started_or_was_stopped_is_never_retried() -> None:
    policy = PoolPolicy(2)
    assert not policy.retry_job(0, started=True, stopping=False)
    assert not policy.retry_job(0, started=False, stopping=True)


# -- what a job's end is reported as -------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "code", "done", "expected"),
    [
        ("", 0, m.Done(code=0, error=""), (0, "")),
        ("", 3, None, (3, "exited with code 3")),
        ("", 1, m.Done(code=1, error="Traceback..."), (1, "Traceback...")),
        # The zygote's status wins; Done's traceback only goes with its code.
        ("", -9, m.Done(code=1, error="Traceback..."), (-9, "killed by signal 9 (SIGKILL)")),
        # The zygote died: the child's own Done is all there is.
        ("", None, m.Done(code=0, error=""), (0, "")),
        ("", None, None, (None, "exit status unknown: the pool's zygote died")),
        # Stopped by the pool: never a success, even after a clean shutdown.
        ("ran longer than 0.3 s", 0, None, (-15, "ran longer than 0.3 s")),
        (
            "memory limit exceeded: 300 MB > 100 MB",
            -9,
            None,
            (-9, "memory limit exceeded: 300 MB > 100 MB"),
        ),
    ],
)
def test_a_jobs_end_is_reported_with_its_code_and_error(
    reason: str, code: int | None, done: m.Done | None, expected: tuple[int | None, str]
) -> None:
    assert job_outcome(reason, code, done) == expected
