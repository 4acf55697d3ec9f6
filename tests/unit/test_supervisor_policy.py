"""An agent server's supervision without processes and without sleeping:
the instance state table (``supervisor_states``) and the decisions
(``supervisor_policy``), driven by a fake clock (plain floats as ``now``).

The asyncio shell is tests/unit/test_supervisor.py's."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from edgedispatch.config.agents import AgentDefinition
from edgedispatch.errors import InternalError
from edgedispatch.runtime.supervisor_policy import (
    BACKOFF_MAX,
    CHECK_INTERVAL,
    REGISTER_TIMEOUT,
    STABLE_AFTER,
    Answer,
    JobCounts,
    Spawn,
    Supervision,
    Terminate,
    backoff,
)
from edgedispatch.runtime.supervisor_states import TRANSITIONS, Event, State, apply

S, E = State, Event

# Written out here, not read from the module: the moves the supervisor's
# users rely on.
MOVES = {
    (S.SPAWNING, E.SPAWNED, S.STARTING),
    (S.SPAWNING, E.SPAWN_FAILED, S.BACKOFF),  # counts as a crash
    (S.SPAWNING, E.RETIRE, S.STOPPING),  # stopped once it has a pid
    (S.STARTING, E.REGISTERED, S.REGISTERED),
    (S.STARTING, E.REGISTER_TIMEOUT, S.TIMED_OUT),
    (S.STARTING, E.EXITED, S.BACKOFF),  # an instant exit is a crash
    (S.STARTING, E.RETIRE, S.STOPPING),
    (S.REGISTERED, E.REGISTERED, S.REGISTERED),  # a second worker
    (S.REGISTERED, E.LOST, S.STARTING),  # reconnecting
    (S.REGISTERED, E.EXITED, S.BACKOFF),  # exit code 0 too
    (S.REGISTERED, E.RETIRE, S.STOPPING),
    (S.TIMED_OUT, E.REGISTERED, S.TIMED_OUT),
    (S.TIMED_OUT, E.LOST, S.TIMED_OUT),
    (S.TIMED_OUT, E.EXITED, S.BACKOFF),
    (S.TIMED_OUT, E.RETIRE, S.STOPPING),
    (S.STOPPING, E.SPAWNED, S.STOPPING),
    (S.STOPPING, E.SPAWN_FAILED, S.GONE),
    (S.STOPPING, E.REGISTERED, S.STOPPING),
    (S.STOPPING, E.LOST, S.STOPPING),
    (S.STOPPING, E.EXITED, S.GONE),
    (S.STOPPING, E.RETIRE, S.STOPPING),
    (S.BACKOFF, E.SPAWN, S.SPAWNING),
    (S.BACKOFF, E.RETIRE, S.CRASHED),
    (S.CRASHED, E.SPAWN, S.SPAWNING),
    (S.CRASHED, E.RETIRE, S.CRASHED),
}


def test_the_table_has_exactly_the_moves_relied_on() -> None:
    assert {(s, e, n) for (s, e), n in TRANSITIONS.items()} == MOVES


@pytest.mark.parametrize(("state", "event"), list(itertools.product(State, Event)))
def test_every_other_event_is_refused_naming_both(state: State, event: Event) -> None:
    legal = {(s, e): n for s, e, n in MOVES}
    if (state, event) in legal:
        assert apply(state, event, "i") is legal[state, event]
    else:
        with pytest.raises(InternalError, match=f"{event.name} in state {state.name}"):
            apply(state, event, "i")


# -- the policy, on a fake clock ------------------------------------------------


def definition(**kw: Any) -> AgentDefinition:
    return AgentDefinition(name="voice", tenant="acme", worker=["agent"], **kw)


class Harness:
    """The policy, and what a shell would have done with its actions."""

    def __init__(self, now: float = 0.0, **kw: Any) -> None:
        self.now = now
        enabled = kw.pop("enabled", True)
        self.sup = Supervision(definition(**kw), now, enabled=enabled)
        self.spawns: list[tuple[float, int]] = []  # (when, run)
        self.terminated: list[int] = []
        self.answers: dict[int, str] = {}
        self.jobs = JobCounts(0, 0)
        self.take()

    def take(self) -> None:
        for a in self.sup.actions():
            if isinstance(a, Spawn):
                self.spawns.append((self.now, a.run))
            elif isinstance(a, Terminate):
                self.terminated.append(a.run)
            elif isinstance(a, Answer):
                assert a.waiter not in self.answers, "answered twice"
                self.answers[a.waiter] = a.error

    @property
    def run(self) -> int:
        """The run of the last spawn."""
        return self.spawns[-1][1]

    def do(self, method: str, *args: Any) -> Any:
        result = getattr(self.sup, method)(*args, self.now)
        self.take()
        return result

    def start(self, timeout: float = 30.0) -> int:
        waiter = self.sup.start(self.now, timeout)
        self.take()
        return waiter

    def advance(self, to: float) -> None:
        """Fire every deadline up to ``to``, as the shell's timer would."""
        while True:
            deadline = self.sup.next_deadline()
            if deadline is None or deadline > to:
                break
            self.now = max(self.now, deadline)
            self.sup.on_timer(self.now, self.jobs)
            self.take()
        self.now = to

    def until_spawn(self) -> None:
        """Fire deadlines one by one until the next spawn."""
        n = len(self.spawns)
        while len(self.spawns) == n:
            deadline = self.sup.next_deadline()
            assert deadline is not None, "nothing will ever spawn"
            self.advance(max(self.now, deadline))

    def up(self, pid: int = 100) -> None:
        """The last spawned process starts and registers."""
        self.do("spawned", self.run, pid)
        self.do("registered", self.run, f"AW_{self.run}")

    def state(self) -> list[str]:
        return [i["state"] for i in self.sup.status(self.now, 1000.0 + self.now)]


def test_an_instant_exit_backs_off_and_restarts() -> None:
    # Defect 5: `worker = ["false"]` and one dispatch.
    h = Harness()
    assert h.spawns == []  # nothing until a job wants it
    h.do("demand")
    assert len(h.spawns) == 1
    h.do("spawned", h.run, 42)
    h.do("exited", h.run, 1, "exited with code 1")
    (item,) = h.sup.status(h.now, 1000.0)
    assert item["state"] == "backing off" and item["exit_code"] == 1
    assert item["last_exit"] == "exited with code 1" and "pid" not in item
    assert item["next_attempt_at"] == 1001.0 and h.sup.summary() == "backing off"
    assert h.sup.processes == 0
    h.do("demand")  # a job waiting does not cut the backoff short
    assert len(h.spawns) == 1
    h.advance(1.0)
    assert [t for t, _ in h.spawns] == [0.0, 1.0]
    assert h.state() == ["starting"]


def test_a_crash_loop_backs_off_doubling_up_to_30_s() -> None:
    h = Harness()
    h.jobs = JobCounts(busy=1, queued=1)  # a job keeps waiting all along
    h.do("demand")
    for _ in range(8):
        h.do("spawned", h.run, 42)
        h.do("exited", h.run, 3, "exited with code 3")
        h.until_spawn()
    gaps = [b - a for a, b in itertools.pairwise(t for t, _ in h.spawns)]
    # Each gap is the backoff (the check every 0.5 s starts nothing extra).
    assert gaps == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert backoff(20) == BACKOFF_MAX


def test_exit_code_0_while_a_job_waits_is_a_crash_too() -> None:
    # Defect 7: it was restarted every 0.5 s, with no backoff.
    h = Harness()
    h.jobs = JobCounts(busy=1, queued=1)
    h.do("demand")
    end = 50.0
    while h.now < end:
        if h.sup.processes:
            h.do("spawned", h.run, 42)
            h.do("exited", h.run, 0, "exited with code 0")
        deadline = h.sup.next_deadline()
        assert deadline is not None
        h.advance(min(deadline, end))
    # 0, 1, 3, 7, 15, 31 s: six starts in 50 s, not a hundred.
    assert [t for t, _ in h.spawns] == [0.0, 1.0, 3.0, 7.0, 15.0, 31.0]
    assert h.sup.status(h.now, 0)[0]["exit_code"] == 0


def test_a_crash_after_a_stable_run_restarts_after_the_base_delay() -> None:
    h = Harness()
    h.do("demand")
    for _ in range(3):  # three quick crashes: 1, 2, 4 s
        h.do("spawned", h.run, 42)
        h.do("exited", h.run, 1, "exited with code 1")
        h.until_spawn()
    h.do("spawned", h.run, 42)
    h.advance(h.now + STABLE_AFTER)  # ... then it ran for STABLE_AFTER
    h.do("exited", h.run, 1, "exited with code 1")
    (item,) = h.sup.status(h.now, 0.0)
    assert item["crashes"] == 1 and item["next_attempt_in"] == 1.0


def test_a_stop_during_start_up_stops_it_once_it_has_a_pid() -> None:
    h = Harness()
    waiter = h.start()
    assert len(h.spawns) == 1
    h.do("stop")  # still SPAWNING: nothing to signal yet
    assert h.terminated == [] and h.state() == ["stopping"]
    assert h.answers == {waiter: "the agent was stopped before it registered"}
    h.do("spawned", h.run, 42)
    assert h.terminated == [h.run]
    h.do("registered", h.run, "AW_late")  # late: changes nothing
    h.do("exited", h.run, -15, "killed by signal 15 (SIGTERM)")
    assert h.sup.instances == {} and h.sup.summary() == "stopped"
    h.do("demand")  # a stopped agent starts nothing on demand
    h.advance(h.now + 100)
    assert len(h.spawns) == 1


def test_a_stop_while_starting_or_registered_terminates_every_instance() -> None:
    h = Harness(max_instances=2, min_instances=2)
    first, second = (run for _, run in h.spawns)
    h.do("spawned", first, 1)
    h.do("registered", first, "AW_1")
    h.do("spawned", second, 2)
    h.do("stop")
    assert sorted(h.terminated) == [first, second]
    h.do("exited", first, 0, "exited with code 0")  # asked to: not a crash
    h.do("exited", second, -15, "killed by signal 15 (SIGTERM)")
    assert h.sup.instances == {}
    h.advance(h.now + 100)
    assert len(h.spawns) == 2  # min_instances does not apply to a stopped agent


def test_a_restart_of_the_server_starts_min_instances_afresh() -> None:
    # A fresh supervisor (the server restarted) brings min_instances up at once.
    h = Harness(now=5000.0, min_instances=2, max_instances=3)
    assert [t for t, _ in h.spawns] == [5000.0, 5000.0]
    assert h.state() == ["starting", "starting"]
    # ... unless the agent had been stopped.
    stopped = Harness(now=5000.0, min_instances=2, max_instances=3, enabled=False)
    assert stopped.spawns == [] and stopped.sup.summary() == "stopped"


def test_start_is_answered_once_an_instance_registered() -> None:
    # Defect 4: start on an enabled agent with no instance started nothing.
    h = Harness()
    assert h.sup.enabled and h.sup.summary() == "idle"
    waiter = h.start()
    assert len(h.spawns) == 1 and waiter not in h.answers
    h.do("spawned", h.run, 7)
    assert waiter not in h.answers and h.state() == ["starting"]
    h.do("registered", h.run, "AW_x")
    assert h.answers == {waiter: ""} and h.state() == ["registered"]
    again = h.start()  # already up: answered at once
    assert h.answers[again] == "" and len(h.spawns) == 1


def test_start_waits_for_min_instances() -> None:
    h = Harness(min_instances=2, max_instances=2)
    waiter = h.start()
    runs = [run for _, run in h.spawns]
    h.do("spawned", runs[0], 1)
    h.do("registered", runs[0], "AW_1")
    assert waiter not in h.answers
    h.do("spawned", runs[1], 2)
    h.do("registered", runs[1], "AW_2")
    assert h.answers == {waiter: ""}


def test_start_is_answered_with_the_crash_and_its_exit_code() -> None:
    h = Harness()
    waiter = h.start()
    h.do("spawned", h.run, 7)
    h.do("exited", h.run, 2, "exited with code 2")
    assert h.answers == {waiter: "agent server instance 1 exited with code 2 before it registered"}
    assert h.state() == ["backing off"]
    # A start asked for now does not wait for the backoff.
    h.start()
    assert len(h.spawns) == 2 and h.now == 0.0


def test_start_times_out_with_what_the_instances_are_doing() -> None:
    h = Harness()
    waiter = h.start(timeout=5.0)
    h.do("spawned", h.run, 7)
    h.advance(5.0)
    assert h.answers == {waiter: "no instance registered within 5 s (now: starting)"}


def test_an_instance_that_never_registers_is_stopped_and_backs_off() -> None:
    h = Harness()
    h.do("demand")
    h.do("spawned", h.run, 7)
    h.advance(REGISTER_TIMEOUT)
    assert h.terminated == [h.run] and h.state() == ["stopping"]
    h.do("exited", h.run, -15, "killed by signal 15 (SIGTERM)")
    (item,) = h.sup.status(h.now, 0.0)
    assert item["state"] == "backing off"
    assert item["last_exit"].startswith(f"did not register within {REGISTER_TIMEOUT:g} s")


def test_a_lost_worker_makes_it_starting_until_it_registers_again() -> None:
    h = Harness()
    h.do("demand")
    h.up()
    h.do("lost", h.run, "AW_someone_else")  # not its worker: nothing
    assert h.state() == ["registered"]
    h.do("lost", h.run, f"AW_{h.run}")
    assert h.state() == ["starting"]
    h.do("registered", h.run, "AW_back")
    assert h.state() == ["registered"]


def test_events_of_an_earlier_process_are_ignored() -> None:
    h = Harness()
    h.do("demand")
    old = h.run
    h.do("spawned", old, 1)
    h.do("exited", old, 1, "exited with code 1")
    h.advance(1.0)
    h.up(pid=2)
    h.do("exited", old, 1, "exited with code 1")  # again: late
    h.do("lost", old, f"AW_{old}")
    assert h.state() == ["registered"] and h.sup.status(h.now, 0)[0]["pid"] == 2


def test_scales_up_to_max_instances_once_every_instance_registered() -> None:
    h = Harness(max_instances=2)
    h.jobs = JobCounts(busy=3, queued=2)
    h.do("demand")
    h.do("demand")  # the first has not registered: it will take the job
    assert len(h.spawns) == 1
    h.up()
    h.advance(h.now + CHECK_INTERVAL)  # jobs still wait: one more
    assert len(h.spawns) == 2
    h.up(pid=101)
    h.do("demand")
    h.advance(h.now + 5)
    assert len(h.spawns) == 2  # max_instances


def test_idle_instances_stop_down_to_min_instances() -> None:
    h = Harness(max_instances=2, min_instances=1, idle_timeout=10.0)
    h.up(pid=1)
    h.jobs = JobCounts(busy=1, queued=1)
    h.do("demand")
    h.up(pid=2)
    second = h.run
    h.jobs = JobCounts(0, 0)
    h.advance(h.now + 9.0)
    assert h.terminated == []
    h.advance(h.now + 2.0)
    assert h.terminated == [second]  # the newest goes; min_instances stays
    h.do("exited", second, 0, "exited with code 0")
    assert h.state() == ["registered"]


def test_an_instance_still_starting_is_not_idle() -> None:
    h = Harness(idle_timeout=2.0)
    waiter = h.start(timeout=10.0)
    h.do("spawned", h.run, 1)
    h.advance(h.now + 20)  # a slow start, no jobs: not stopped for idleness
    assert h.terminated == [] and h.answers[waiter].startswith("no instance registered")
    h.do("registered", h.run, "AW_1")
    h.advance(h.now + 3)
    assert h.terminated == [h.run]


def test_an_idle_crash_loop_is_given_up_and_shows_crashed() -> None:
    h = Harness(idle_timeout=5.0)
    h.do("demand")
    while h.now < 60:  # each start crashes at once
        if h.sup.processes:
            h.do("spawned", h.run, 1)
            h.do("exited", h.run, 9, "exited with code 9")
        deadline = h.sup.next_deadline()
        if deadline is None:
            break
        h.advance(deadline)
    assert h.state() == ["crashed"] and h.sup.summary() == "crashed"
    (item,) = h.sup.status(h.now, 0)
    assert item["exit_code"] == 9 and "next_attempt_at" not in item
    n = len(h.spawns)
    h.advance(h.now + 100)
    assert len(h.spawns) == n  # given up: nothing restarts it
    h.do("demand")  # ... until a job wants it
    assert len(h.spawns) == n + 1


def test_close_stops_everything_sooner_and_starts_nothing() -> None:
    h = Harness(min_instances=1)
    h.up()
    waiter = h.start()
    assert h.answers[waiter] == ""
    h.do("close")
    assert h.terminated == [h.run]
    h.do("exited", h.run, -15, "killed by signal 15 (SIGTERM)")
    h.advance(h.now + 100)
    assert len(h.spawns) == 1 and h.sup.next_deadline() is None
    late = h.start()
    assert h.answers[late] == "the server is shutting down"
