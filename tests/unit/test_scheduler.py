"""Behaviour of the scheduling core, on both implementations (``impl``)."""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

import pytest

from edgedispatch._core.codes import (
    ActionKind,
    FailReason,
    JobState,
    JobStatus,
    RestartPolicy,
    WaitReason,
    WorkerStatus,
)
from edgedispatch.dispatch.core import Action, AgentKey, DispatchCore, JobSpec
from edgedispatch.errors import (
    DuplicateId,
    EdgeDispatchError,
    InvalidEvent,
    InvalidTransition,
    UnknownJob,
    UnknownWorker,
)

KEY = AgentKey("t1", "agent-a")
OTHER = AgentKey("t1", "agent-b")
INF = math.inf


def make(impl: ModuleType, **opts: Any) -> DispatchCore:
    return DispatchCore(impl, **opts)


def spec(job_id: str, key: AgentKey = KEY, deadline: float = INF, **kw: Any) -> JobSpec:
    return JobSpec(job_id=job_id, key=key, deadline=deadline, **kw)


def offers(actions: list[Action]) -> list[tuple[str, str | None]]:
    return [(a.job_id, a.worker_id) for a in actions if a.kind == ActionKind.OFFER]


def kinds(actions: list[Action], kind: ActionKind) -> list[Action]:
    return [a for a in actions if a.kind == kind]


def snapshot(core: DispatchCore, now: float) -> tuple[object, ...]:
    return (tuple(core.workers()), tuple(core.jobs(now)))


# ----------------------------------------------------------------------
# Selection


def test_offers_to_the_least_loaded_matching_worker(impl: ModuleType) -> None:
    core = make(impl)
    core.register_worker("w1", KEY, 4, now=0)
    core.register_worker("w2", KEY, 4, now=0)
    core.register_worker("w3", OTHER, 4, now=0)
    core.update_worker("w1", WorkerStatus.AVAILABLE, 0.5, now=0)
    core.update_worker("w2", WorkerStatus.AVAILABLE, 0.2, now=0)
    core.update_worker("w3", WorkerStatus.AVAILABLE, 0.0, now=0)
    core.process()
    core.submit(spec("j1"), now=1)
    acts = core.process()
    assert offers(acts) == [("j1", "w2")]
    assert acts[0].attempt == 1 and acts[0].deadline == pytest.approx(1 + 5.0)
    assert core.job("j1", 1).state == JobState.OFFERED


def test_full_overloaded_and_draining_workers_get_nothing(impl: ModuleType) -> None:
    core = make(impl, load_threshold=0.7)
    for w in ("full", "hot", "drain"):
        core.register_worker(w, KEY, 4, now=0)
    core.update_worker("full", WorkerStatus.FULL, 0.0, now=0)
    core.update_worker("hot", WorkerStatus.AVAILABLE, 0.7, now=0)  # at the threshold
    core.drain_worker("drain", now=0)
    core.submit(spec("j1"), now=1)
    acts = core.process()
    assert offers(acts) == []
    assert core.job("j1", 1).wait_reason == WaitReason.ALL_BUSY
    core.update_worker("hot", WorkerStatus.AVAILABLE, 0.69, now=2)
    assert offers(core.process()) == [("j1", "hot")]


def test_tie_break_is_deterministic_for_a_seed(impl: ModuleType) -> None:
    def first_choice(seed: int) -> str | None:
        core = make(impl, seed=seed)
        for i in range(8):
            core.register_worker(f"w{i}", KEY, 1, now=0)
        core.submit(spec("j"), now=0)
        return offers(core.process())[0][1]

    picks = {seed: first_choice(seed) for seed in range(12)}
    assert picks == {seed: first_choice(seed) for seed in range(12)}
    assert len(set(picks.values())) > 1  # the seed really steers the tie-break


def test_burst_spreads_over_workers_and_never_exceeds_slot_caps(impl: ModuleType) -> None:
    core = make(impl)
    for i in range(4):
        core.register_worker(f"w{i}", KEY, 3, now=0)
    for j in range(20):
        core.submit(spec(f"j{j}"), now=1)
    acts = core.process()
    per_worker: dict[str | None, int] = {}
    for _, w in offers(acts):
        per_worker[w] = per_worker.get(w, 0) + 1
    assert per_worker == {"w0": 3, "w1": 3, "w2": 3, "w3": 3}
    assert [j.state for j in core.jobs(1)].count(JobState.QUEUED) == 8
    assert all(w.used == 3 and not w.eligible for w in core.workers())


# ----------------------------------------------------------------------
# Offer, accept, reject, timeout


def test_accept_assigns_and_a_terminal_status_frees_the_slot(impl: ModuleType) -> None:
    core = make(impl)
    core.register_worker("w1", KEY, 1, now=0)
    core.submit(spec("j1"), now=0)
    core.submit(spec("j2"), now=0)
    core.process()
    core.accept("j1", "w1", now=0.1)
    acts = core.process()
    assert [(a.kind, a.job_id, a.worker_id) for a in acts] == [
        (ActionKind.ASSIGN, "j1", "w1"),
        (ActionKind.JOB_STATE, "j1", "w1"),
    ]
    core.job_status("j1", "w1", JobStatus.RUNNING, now=0.2)
    assert core.process()[0].state == JobState.RUNNING
    core.job_status("j1", "w1", JobStatus.SUCCESS, now=3)
    acts = core.process()
    assert acts[0].state == JobState.SUCCESS
    assert offers(acts) == [("j2", "w1")]  # the freed slot goes to the queued job


def test_reject_moves_the_job_to_the_next_worker(impl: ModuleType) -> None:
    core = make(impl)
    core.register_worker("w1", KEY, 1, now=0)
    core.register_worker("w2", KEY, 1, now=0)
    core.update_worker("w2", WorkerStatus.AVAILABLE, 0.3, now=0)
    core.submit(spec("j1"), now=0)
    assert offers(core.process()) == [("j1", "w1")]
    core.reject("j1", "w1", now=0.1)
    acts = core.process()
    assert offers(acts) == [("j1", "w2")]
    assert kinds(acts, ActionKind.OFFER)[0].attempt == 2


def test_offer_timeout_moves_on_and_a_late_accept_is_ignored(impl: ModuleType) -> None:
    core = make(impl, offer_timeout=5.0)
    core.register_worker("slow", KEY, 1, now=0)
    core.register_worker("fast", KEY, 1, now=0)
    core.update_worker("fast", WorkerStatus.AVAILABLE, 0.5, now=0)
    core.submit(spec("j1"), now=0)
    assert offers(core.process()) == [("j1", "slow")]
    assert core.next_deadline() == pytest.approx(5.0)
    assert offers(core.on_timer(4.9)) == []
    assert offers(core.on_timer(5.0)) == [("j1", "fast")]
    core.accept("j1", "slow", now=6)  # too late: must not produce an assignment
    assert core.process() == []
    assert core.scheduler.stale_events == 1
    assert core.worker("slow").used == 0


def test_a_declined_job_goes_out_again_at_once_and_then_waits_for_capacity(
    impl: ModuleType,
) -> None:
    core = make(impl, max_attempts=3, retry_base=0.5, retry_max=0.5)
    for w in ("w1", "w2"):
        core.register_worker(w, KEY, 4, now=0)
    core.submit(spec("j1", deadline=10), now=0)
    ((_, first),) = offers(core.process())
    core.reject("j1", first, now=1)
    ((_, second),) = offers(core.process())  # at once, to the other
    assert second != first
    core.reject("j1", second, now=1)
    assert offers(core.process()) == []
    # Both said "not now": it waits for capacity, not for a timer.
    assert core.job("j1", 1).wait_reason == WaitReason.ALL_BUSY
    assert core.next_deadline() == 10  # only its queue deadline
    assert core.worker(first).declined and not core.worker(first).eligible
    # A report is capacity news: the job goes out at once.  Declines are not
    # failures, so max_attempts never ends it...
    now, asked = 2.0, []
    while now < 9:
        core.update_worker(first, WorkerStatus.AVAILABLE, 0.0, now=now)
        ((_, w),) = offers(core.process())
        asked.append(w)
        core.reject("j1", w, now=now)
        assert offers(core.process()) == []
        now += 1
    assert asked == [first] * 7
    # ... its queue deadline does.
    acts = core.on_timer(10)
    assert kinds(acts, ActionKind.JOB_FAILED)[0].reason == FailReason.NO_CAPACITY


def test_a_worker_that_declined_rests_until_it_reports_or_a_job_of_its_ends(
    impl: ModuleType,
) -> None:
    core = make(impl, retry_base=0.25)
    core.register_worker("w1", KEY, 4, now=0)
    core.submit(spec("j0"), now=0)
    core.process()
    core.accept("j0", "w1", now=0)
    core.job_status("j0", "w1", JobStatus.RUNNING, now=0)
    core.submit(spec("j1"), now=1)
    assert offers(core.process()) == [("j1", "w1")]
    core.reject("j1", "w1", now=1)
    assert offers(core.process()) == []  # not straight back to the one that said no
    assert offers(core.on_timer(30)) == []  # and no timer brings it back
    core.job_status("j0", "w1", JobStatus.SUCCESS, now=31)
    assert offers(core.process()) == [("j1", "w1")]  # its job ended: room again
    core.accept("j1", "w1", now=31)
    core.process()
    assert core.job("j1", 31).state == JobState.ASSIGNED


def test_a_busy_worker_is_predicted_full_before_its_next_report(impl: ModuleType) -> None:
    """Workers report load every few seconds; the core counts the jobs it
    sent or saw end since, at the load per job the reports show."""
    core = make(impl, load_threshold=0.7)
    core.register_worker("w1", KEY, 10, now=0)
    core.submit(spec("j1"), now=0)
    core.process()
    core.accept("j1", "w1", now=0)
    core.job_status("j1", "w1", JobStatus.RUNNING, now=0)
    core.update_worker("w1", WorkerStatus.AVAILABLE, 0.4, job_count=1, now=1)
    core.process()
    assert core.worker("w1").predicted == pytest.approx(0.4)
    core.submit(spec("j2"), now=2)
    assert offers(core.process()) == [("j2", "w1")]  # 0.4 + 0.4: full from here
    assert core.worker("w1").predicted == pytest.approx(0.8)
    core.submit(spec("j3"), now=2)
    assert offers(core.process()) == []  # though its last report said 0.4
    assert core.job("j3", 2).wait_reason == WaitReason.ALL_BUSY
    core.accept("j2", "w1", now=2)
    core.job_status("j2", "w1", JobStatus.RUNNING, now=2)
    core.job_status("j1", "w1", JobStatus.SUCCESS, now=3)
    # One ended: room again at once, though its last report is older.
    assert offers(core.process()) == [("j3", "w1")]


def test_a_worker_that_said_full_takes_work_once_a_job_of_its_ends(impl: ModuleType) -> None:
    """FULL is what it was at its last report: a job that ended since makes
    room at once, without waiting seconds for the next report."""
    core = make(impl, load_threshold=0.7)
    core.register_worker("w1", KEY, 10, now=0)
    for j in ("j1", "j2"):
        core.submit(spec(j), now=0)
        core.process()
        core.accept(j, "w1", now=0)
        core.job_status(j, "w1", JobStatus.RUNNING, now=0)
    core.update_worker("w1", WorkerStatus.FULL, 0.8, job_count=2, now=1)
    core.submit(spec("j3"), now=1)
    assert offers(core.process()) == []
    core.job_status("j1", "w1", JobStatus.SUCCESS, now=2)
    assert offers(core.process()) == [("j3", "w1")]  # 0.8 - 0.4: room
    core.reject("j3", "w1", now=2)  # a worker may still say no...
    assert offers(core.process()) == []  # ...and then rests until it reports


def test_a_worker_whose_load_is_not_per_job_is_not_predicted(impl: ModuleType) -> None:
    core = make(impl, load_threshold=0.7)
    core.register_worker("w1", KEY, 10, now=0)
    core.update_worker("w1", WorkerStatus.AVAILABLE, 0.5, job_count=0, now=0)
    for i in range(5):
        core.submit(spec(f"j{i}"), now=1)
    assert len(offers(core.process())) == 5  # no jobs in its reports: nothing learnt
    assert core.worker("w1").predicted == pytest.approx(0.5)


def test_unanswered_offers_count_towards_max_attempts(impl: ModuleType) -> None:
    core = make(impl, max_attempts=3, offer_timeout=1.0, retry_base=0.1)
    core.register_worker("w1", KEY, 1, now=0)
    core.submit(spec("j1"), now=0)
    now = 0.0
    failed: list[Action] = []
    for _ in range(10):
        acts = core.process() + core.on_timer(now)
        failed += kinds(acts, ActionKind.JOB_FAILED)
        if failed:
            break
        now = core.next_deadline() or now
    assert failed[0].reason == FailReason.MAX_ATTEMPTS
    assert core.job("j1", now).attempts == 3


def test_retry_backoff_grows_from_the_third_failed_offer(impl: ModuleType) -> None:
    core = make(impl, retry_base=0.5, retry_max=0.75, max_attempts=10, offer_timeout=1.0)
    for i in range(5):
        core.register_worker(f"w{i}", KEY, 1, now=0)
    core.submit(spec("j1"), now=0)
    assert len(offers(core.process())) == 1
    assert len(offers(core.on_timer(1))) == 1  # unanswered: the first retry goes out at once
    assert offers(core.on_timer(2)) == []  # unanswered again: a pause
    assert core.job("j1", 2).wait_reason == WaitReason.BACKOFF
    assert core.next_deadline() == pytest.approx(2.5)
    assert len(offers(core.on_timer(2.5))) == 1
    assert offers(core.on_timer(3.5)) == []
    assert core.next_deadline() == pytest.approx(4.25)  # 1.0 capped at retry_max


# ----------------------------------------------------------------------
# The queue


def test_a_job_waits_for_a_worker_and_runs_when_one_registers(impl: ModuleType) -> None:
    core = make(impl)
    core.submit(spec("j1", deadline=60), now=0)
    acts = core.process()
    assert [a.state for a in acts] == [JobState.QUEUED]
    assert core.job("j1", 0).wait_reason == WaitReason.NO_WORKERS
    assert core.next_deadline() == 60
    core.register_worker("w1", KEY, 1, now=10)
    assert offers(core.process()) == [("j1", "w1")]


def test_queue_deadline_fails_the_job_with_no_capacity(impl: ModuleType) -> None:
    core = make(impl)
    core.submit(spec("j1", deadline=60), now=0)
    core.process()
    assert core.on_timer(59.9) == []
    acts = core.on_timer(60)
    assert [(a.kind, a.reason) for a in acts] == [
        (ActionKind.JOB_FAILED, FailReason.NO_CAPACITY),
        (ActionKind.JOB_STATE, FailReason.NO_CAPACITY),
    ]
    assert core.job("j1", 60).state == JobState.FAILED
    assert core.next_deadline() is None


def test_queue_is_fifo_per_agent_key(impl: ModuleType) -> None:
    core = make(impl)
    for j in ("a", "b", "c"):
        core.submit(spec(j), now=0)
    core.submit(spec("x", key=OTHER), now=0)
    core.process()
    assert core.queued(KEY) == ["a", "b", "c"]
    core.register_worker("w1", KEY, 1, now=1)
    assert offers(core.process()) == [("a", "w1")]
    core.reject("a", "w1", now=2)
    # "a" keeps its place at the head; w1 said "not now" and rests.
    assert offers(core.process()) == []
    assert core.queued(KEY) == ["a", "b", "c"]
    core.register_worker("w2", KEY, 1, now=3)
    assert offers(core.process()) == [("a", "w2")]
    core.update_worker("w1", WorkerStatus.AVAILABLE, 0.0, now=4)
    assert offers(core.process()) == [("b", "w1")]
    assert core.queued(KEY) == ["c"]


def test_a_freed_slot_or_a_lower_load_pulls_from_the_queue(impl: ModuleType) -> None:
    core = make(impl)
    core.register_worker("w1", KEY, 1, now=0)
    core.update_worker("w1", WorkerStatus.AVAILABLE, 0.9, now=0)
    core.submit(spec("j1"), now=0)
    assert offers(core.process()) == []
    core.update_worker("w1", WorkerStatus.AVAILABLE, 0.1, now=1)
    assert offers(core.process()) == [("j1", "w1")]


# ----------------------------------------------------------------------
# Disconnects, migration, restarts


def _running(core: DispatchCore, job: str, worker: str, now: float = 0) -> None:
    core.submit(spec(job), now=now)
    acts = core.process()
    assert offers(acts) == [(job, worker)], acts
    core.accept(job, worker, now=now)
    core.job_status(job, worker, JobStatus.RUNNING, now=now)
    core.process()


def test_a_reconnected_worker_claims_its_running_job_back(impl: ModuleType) -> None:
    core = make(impl, reclaim_grace=10)
    core.register_worker("old", KEY, 2, now=0)
    _running(core, "j1", "old")
    core.disconnect_worker("old", now=1)
    acts = core.process()
    assert [(a.state, a.reason) for a in acts] == [(JobState.ORPHANED, FailReason.WORKER_LOST)]
    core.register_worker("new", KEY, 2, now=2)
    core.migrate("j1", "new", now=2)
    acts = core.process()
    assert [(a.state, a.worker_id) for a in acts] == [(JobState.RUNNING, "new")]
    assert core.on_timer(20) == []  # the grace timer no longer applies
    core.job_status("j1", "new", JobStatus.SUCCESS, now=21)
    assert core.process()[0].state == JobState.SUCCESS


def test_a_status_report_after_reconnect_is_a_claim(impl: ModuleType) -> None:
    core = make(impl)
    core.register_worker("old", KEY, 1, now=0)
    _running(core, "j1", "old")
    core.disconnect_worker("old", now=1)
    core.register_worker("new", KEY, 1, now=2)
    core.job_status("j1", "new", JobStatus.SUCCESS, now=3)
    states = [a.state for a in core.process() if a.job_id == "j1"]
    assert states == [JobState.ORPHANED, JobState.RUNNING, JobState.SUCCESS]


def test_unclaimed_jobs_are_redispatched_after_the_grace(impl: ModuleType) -> None:
    core = make(impl, reclaim_grace=10)
    core.register_worker("w1", KEY, 1, now=0)
    core.register_worker("w2", KEY, 1, now=0)
    core.update_worker("w2", WorkerStatus.AVAILABLE, 0.5, now=0)
    _running(core, "j1", "w1")
    core.disconnect_worker("w1", now=1)
    core.process()
    assert offers(core.on_timer(10.9)) == []
    acts = core.on_timer(11)
    assert acts[0].state == JobState.QUEUED and acts[0].reason == FailReason.WORKER_LOST
    assert offers(acts) == [("j1", "w2")]


def test_never_restart_fails_with_worker_lost(impl: ModuleType) -> None:
    core = make(impl, reclaim_grace=1)
    core.register_worker("w1", KEY, 1, now=0)
    core.submit(spec("j1", restart_policy=RestartPolicy.NEVER), now=0)
    core.process()
    core.accept("j1", "w1", now=0)
    core.disconnect_worker("w1", now=1)
    core.process()
    acts = core.on_timer(2)
    assert kinds(acts, ActionKind.JOB_FAILED)[0].reason == FailReason.WORKER_LOST


def test_an_outstanding_offer_moves_on_at_once_when_its_worker_dies(impl: ModuleType) -> None:
    core = make(impl)
    core.register_worker("w1", KEY, 1, now=0)
    core.register_worker("w2", KEY, 1, now=0)
    core.update_worker("w2", WorkerStatus.AVAILABLE, 0.5, now=0)
    core.submit(spec("j1"), now=0)
    assert offers(core.process()) == [("j1", "w1")]
    core.disconnect_worker("w1", now=1)
    assert offers(core.process()) == [("j1", "w2")]


def test_a_job_its_worker_reports_failed_ends_failed(impl: ModuleType) -> None:
    """The restart policy covers lost workers; a job whose own code failed
    is not run again (it would most likely fail the same way)."""
    core = make(impl)
    core.register_worker("w1", KEY, 2, now=0)
    core.register_worker("w2", KEY, 2, now=0)
    core.update_worker("w2", WorkerStatus.AVAILABLE, 0.5, now=0)
    _running(core, "j1", "w1")
    core.job_status("j1", "w1", JobStatus.FAILED, now=1)
    acts = core.process()
    assert offers(acts) == []
    assert kinds(acts, ActionKind.JOB_FAILED)[0].reason == FailReason.JOB_ERROR
    assert core.job("j1", 1).state == JobState.FAILED
    assert core.worker("w1").used == 0


# ----------------------------------------------------------------------
# Cancel and terminate


def test_cancel_in_each_state(impl: ModuleType) -> None:
    core = make(impl, terminate_grace=20)
    core.register_worker("w1", KEY, 3, now=0)
    core.submit(spec("queued", key=OTHER), now=0)
    _running(core, "running", "w1")
    core.submit(spec("offered"), now=0)
    core.process()
    core.cancel("queued", now=1)
    core.cancel("offered", now=1)
    core.cancel("running", now=1)
    acts = core.process()
    assert [(a.kind, a.job_id) for a in acts] == [
        (ActionKind.JOB_STATE, "queued"),
        (ActionKind.JOB_STATE, "offered"),
        (ActionKind.TERMINATE, "running"),
    ]
    assert core.job("queued", 1).state == JobState.CANCELLED
    core.accept("offered", "w1", now=2)  # never assigned after a cancel
    assert core.process() == []
    assert core.job("running", 2).terminating
    core.job_status("running", "w1", JobStatus.SUCCESS, now=3)
    assert core.process()[0].state == JobState.CANCELLED
    assert core.worker("w1").used == 0


def test_a_terminated_job_that_never_confirms_ends_after_the_grace(impl: ModuleType) -> None:
    core = make(impl, terminate_grace=15)
    core.register_worker("node", KEY, 1, now=0)
    _running(core, "j1", "node")
    core.cancel("j1", now=1)
    core.process()
    assert core.on_timer(15.9) == []
    acts = core.on_timer(16)
    assert acts[0].state == JobState.CANCELLED
    assert core.worker("node").used == 0


# ----------------------------------------------------------------------
# Bad events


@pytest.mark.parametrize(
    "bad_call, error",
    [
        (lambda c: c.update_worker("nobody", WorkerStatus.AVAILABLE, 0.1, now=0), UnknownWorker),
        (lambda c: c.accept("nojob", "w1", now=0), UnknownJob),
        (lambda c: c.accept("j1", "nobody", now=0), UnknownWorker),
        (lambda c: c.register_worker("w1", KEY, 1, now=0), DuplicateId),
        (lambda c: c.submit(spec("j1"), now=0), DuplicateId),
        (lambda c: c.update_worker("w1", WorkerStatus.AVAILABLE, math.nan, now=0), InvalidEvent),
        (lambda c: c.update_worker("w1", WorkerStatus.AVAILABLE, 1.5, now=0), InvalidEvent),
        (lambda c: c.update_worker("w1", WorkerStatus.AVAILABLE, -0.1, now=0), InvalidEvent),
        (lambda c: c.update_worker("w1", WorkerStatus.DRAINING, 0.1, now=0), InvalidEvent),
        (lambda c: c.register_worker("w9", KEY, 0, now=0), InvalidEvent),
        (lambda c: c.submit(spec("j9", deadline=math.nan), now=0), InvalidEvent),
        (lambda c: c.submit(spec("j9"), now=math.nan), InvalidEvent),
        (lambda c: c.job_status("j1", "w1", JobStatus.PENDING, now=0), InvalidEvent),
        (lambda c: c.migrate("j1", "w1", now=0), InvalidTransition),
        (lambda c: c.forget("j1"), InvalidTransition),
    ],
)
def test_bad_events_raise_typed_errors_and_change_nothing(
    impl: ModuleType, bad_call: Any, error: type[EdgeDispatchError]
) -> None:
    core = make(impl)
    core.register_worker("w1", KEY, 2, now=0)
    core.submit(spec("j1"), now=0)
    core.submit(spec("j2", key=OTHER), now=0)
    core.process()
    before = snapshot(core, 0)
    with pytest.raises(error) as info:
        bad_call(core)
    assert isinstance(info.value, EdgeDispatchError)
    assert core.process() == []
    assert snapshot(core, 0) == before


def test_the_scheduler_itself_rejects_bad_records(impl: ModuleType) -> None:
    from edgedispatch._core.codes import EventKind

    s = impl.Scheduler()
    s.events.push(EventKind.WORKER_UPDATE, -1, 3, 0, 0.5, 0.0, 0)
    with pytest.raises(UnknownWorker):
        s.process()
    s.events.push(99, -1, -1, 0, 0.0, 0.0, 0)
    with pytest.raises(InvalidEvent):
        s.process()
    s.events.push(EventKind.WORKER_REGISTER, -1, 0, 0, 0.0, 0.0, 1)
    s.events.push(EventKind.WORKER_UPDATE, -1, 0, 0, math.nan, 0.0, 0)
    with pytest.raises(InvalidEvent):
        s.process()
    assert s.worker_info(0)[2] == 0.0  # the NaN load was not stored


def test_forget_recycles_a_finished_job(impl: ModuleType) -> None:
    core = make(impl)
    core.submit(spec("j1", deadline=1), now=0)
    core.on_timer(1)
    core.forget("j1")
    assert not core.has_job("j1")
    core.submit(spec("j1", deadline=5), now=2)  # the id is free again
    assert core.process()[0].state == JobState.QUEUED


def test_a_forgotten_job_s_id_is_not_kept(impl: ModuleType) -> None:
    """Memory comes back after churn: a forgotten job's id string goes at
    once, not when its handle is next reused."""
    core = make(impl)
    for i in range(100):
        core.submit(spec(f"j{i}"), now=0)
        core.cancel(f"j{i}", now=0)
        core.process()
        core.forget(f"j{i}")
    core.process()
    assert not [i for i in core._jobs.ids if i is not None]


def test_a_recovered_held_job_waits_only_the_rest_of_its_grace(impl: ModuleType) -> None:
    core = make(impl, reclaim_grace=10.0)
    core.submit(spec("j1", deadline=100, restored_held=True), now=0)
    core.reclaim_by("j1", 4.0, now=0)  # its wait began 6 s before the restart
    assert [a.state for a in core.process()] == [JobState.ORPHANED]
    assert core.next_deadline() == 4.0
    core.register_worker("w1", KEY, 1, now=1)
    assert offers(core.process()) == []  # still its lost worker's
    assert offers(core.on_timer(4.0)) == [("j1", "w1")]


def test_only_a_job_waiting_to_be_claimed_can_have_its_wait_moved(impl: ModuleType) -> None:
    core = make(impl, reclaim_grace=10.0)
    core.submit(spec("j1", deadline=100), now=0)
    core.process()
    with pytest.raises(InvalidTransition, match="j1"):
        core.reclaim_by("j1", 4.0, now=0)
    core.submit(spec("j2", deadline=100, restored_held=True), now=0)
    with pytest.raises(InvalidEvent, match="NaN"):
        core.reclaim_by("j2", math.nan, now=0)
    core.process()
    assert core.next_deadline() == 10.0  # j2's whole grace: the refusal changed nothing
    core.reclaim_by("j2", -5.0, now=1)  # over already: at the next timer
    assert core.next_deadline() == 1.0
