"""Random event sequences: the compiled core must act exactly like the
pure-Python reference, and both must keep the core's invariants after every
step (see the docstring of ``edgedispatch/_core/scheduler_py.py``)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgedispatch import _core
from edgedispatch._core.codes import (
    ActionKind,
    JobState,
    JobStatus,
    RestartPolicy,
    WaitReason,
    WorkerStatus,
)
from edgedispatch.dispatch.core import Action, AgentKey, DispatchCore, JobSpec
from edgedispatch.errors import EdgeDispatchError

KEYS = [AgentKey("t", "a"), AgentKey("t", "b")]
WORKERS = [f"w{i}" for i in range(5)]
JOBS = [f"j{i}" for i in range(8)]
PENDING = {
    JobState.QUEUED,
    JobState.OFFERED,
    JobState.ASSIGNED,
    JobState.RUNNING,
    JobState.ORPHANED,
}
HELD = {JobState.OFFERED, JobState.ASSIGNED, JobState.RUNNING}
OPTIONS = dict(
    seed=7,
    offer_timeout=5.0,
    max_attempts=4,
    retry_base=0.5,
    retry_max=2.0,
    reclaim_grace=3.0,
    terminate_grace=4.0,
    ring_capacity=8,  # tiny, so the overflow path runs too
)

worker = st.sampled_from(WORKERS)
job = st.sampled_from(JOBS)
pick = st.integers(0, 7)  # which matching job an op picks (see resolve)
register = st.tuples(
    st.just("register"), worker, st.integers(0, 1), st.sampled_from([0, 1, 1, 2, 3])
)
submit = st.tuples(
    st.just("submit"),
    job,
    st.integers(0, 1),
    st.sampled_from([0.0, 0.5, 3.0, 12.0, math.inf]),
    st.sampled_from([RestartPolicy.ON_FAILURE, RestartPolicy.NEVER]),
    st.sampled_from([False, False, False, True]),  # recovered held after a restart
)
update = st.tuples(
    st.just("update"),
    worker,
    st.sampled_from([WorkerStatus.AVAILABLE, WorkerStatus.FULL, WorkerStatus.DRAINING]),
    st.sampled_from([0.0, 0.2, 0.5, 0.69, 0.7, 0.95, 1.0, math.nan, 1.5, -0.5]),
)
status = st.sampled_from(
    [JobStatus.PENDING, JobStatus.RUNNING, JobStatus.RUNNING, JobStatus.SUCCESS, JobStatus.FAILED]
)
ops = st.one_of(
    register,
    register,
    submit,
    submit,
    submit,
    update,
    # Ops on whatever job is in a given state now, so that sequences reach
    # deep states instead of mostly naming unknown ids.
    st.tuples(st.just("accept_offer"), pick),
    st.tuples(st.just("accept_offer"), pick),
    st.tuples(st.just("reject_offer"), pick),
    st.tuples(st.just("report_held"), pick, status),
    st.tuples(st.just("report_held"), pick, status),
    st.tuples(st.just("report_other"), pick, worker, status),
    st.tuples(st.just("claim_orphan"), pick, worker),
    st.tuples(st.just("reclaim_orphan_by"), pick, st.sampled_from([-1.0, 0.0, 0.5, 2.0, 5.0])),
    st.tuples(st.just("cancel_any"), pick),
    st.tuples(st.just("disconnect"), worker),
    st.tuples(st.just("drain"), worker),
    # Raw ops with arbitrary ids: mostly refused, which must change nothing.
    st.tuples(st.just("forget_done"), pick),
    st.one_of(
        st.tuples(st.just("accept"), job, worker),
        st.tuples(st.just("reject"), job, worker),
        st.tuples(st.just("status"), job, worker, status),
        st.tuples(st.just("migrate"), job, worker),
        st.tuples(st.just("reclaim_by"), job, st.sampled_from([0.5, math.nan])),
        st.tuples(st.just("forget"), job),
    ),
)
steps = st.lists(
    st.tuples(ops, st.sampled_from([0.0, 0.0, 0.0, 0.1, 0.5, 1.0, 2.5, 6.0])),
    min_size=20,
    max_size=80,
)


def resolve(core: DispatchCore, op: tuple[Any, ...], now: float) -> tuple[Any, ...]:
    """Turn a state-relative op into a raw one, from the core's own state."""
    name = op[0]
    states = {
        "accept_offer": {JobState.OFFERED},
        "reject_offer": {JobState.OFFERED},
        "report_held": HELD,
        "report_other": HELD | {JobState.ORPHANED},
        "claim_orphan": {JobState.ORPHANED},
        "reclaim_orphan_by": {JobState.ORPHANED},
        "cancel_any": PENDING,
        "forget_done": set(JobState) - PENDING,
    }.get(name)
    if states is None:
        return op
    views = [v for v in core.jobs(now) if v.state in states]
    if not views:
        return ("noop",)
    v = views[op[1] % len(views)]
    jid, wid = v.spec.job_id, v.worker_id or "none"
    if name == "accept_offer":
        return ("accept", jid, wid)
    if name == "reject_offer":
        return ("reject", jid, wid)
    if name == "report_held":
        return ("status", jid, wid, op[2])
    if name == "report_other":
        return ("status", jid, op[2], op[3])
    if name == "claim_orphan":
        return ("migrate", jid, op[2])
    if name == "reclaim_orphan_by":
        return ("reclaim_by", jid, op[2])
    if name == "forget_done":
        return ("forget", jid)
    return ("cancel", jid)


def apply(core: DispatchCore, op: tuple[Any, ...], now: float) -> tuple[str, list[Action]]:
    """Fire the timers due by ``now``, then run one op.  Returns the name of
    the error the op raised ("" if none) and the actions.  (The scheduler
    fires due timers before it handles any event, refused or not: firing
    them first leaves a refused op nothing to change.)"""
    fired = core.on_timer(now)
    name, *args = op
    try:
        if name == "register":
            core.register_worker(args[0], KEYS[args[1]], args[2], now)
        elif name == "update":
            core.update_worker(args[0], args[1], args[2], now)
        elif name == "drain":
            core.drain_worker(args[0], now)
        elif name == "disconnect":
            core.disconnect_worker(args[0], now)
        elif name == "submit":
            j, k, dl, policy, held = args
            spec = JobSpec(j, KEYS[k], now + dl, restart_policy=policy, restored_held=held)
            core.submit(spec, now)
        elif name == "accept":
            core.accept(args[0], args[1], now)
        elif name == "reject":
            core.reject(args[0], args[1], now)
        elif name == "status":
            core.job_status(args[0], args[1], args[2], now)
        elif name == "cancel":
            core.cancel(args[0], now)
        elif name == "migrate":
            core.migrate(args[0], args[1], now)
        elif name == "reclaim_by":
            core.reclaim_by(args[0], now + args[1], now)
        elif name == "forget":
            core.forget(args[0])
        elif name == "noop":
            pass
    except EdgeDispatchError as exc:
        assert core.process() == []  # a refused event changes nothing
        return type(exc).__name__, fired
    return "", fired + core.process()


class Checker:
    """Invariants, checked against one core after each step."""

    def __init__(self) -> None:
        self.final: dict[str, JobState] = {}
        self.offer_to: dict[str, str | None] = {}

    def check(self, core: DispatchCore, actions: list[Action], now: float) -> None:
        for a in actions:
            assert a.job_id not in self.final, f"action {a} for finished job"
            if a.kind == ActionKind.OFFER:
                assert a.job_id not in self.offer_to, "two offers out for one job"
                self.offer_to[a.job_id] = a.worker_id
            elif a.kind == ActionKind.ASSIGN:
                assert self.offer_to.pop(a.job_id) == a.worker_id, "assigned without an offer"
            elif a.kind == ActionKind.JOB_STATE and a.state not in (
                JobState.OFFERED,
                JobState.ASSIGNED,
                JobState.RUNNING,
            ):
                self.offer_to.pop(a.job_id, None)
                if a.state is not None and a.state not in PENDING:
                    self.final[a.job_id] = a.state

        held: dict[str, str] = {}
        thr = core.scheduler.load_threshold
        for w in core.workers():
            assert w.used <= w.slots, f"{w.worker_id} over its slot cap"
            assert w.used == len(w.jobs)
            fits = not w.declined and w.predicted < thr and w.used < w.slots
            if w.status == WorkerStatus.FULL:
                # Eligible again only once a job of its ended since it said FULL.
                assert not w.eligible or fits
            else:
                assert w.eligible == (w.status == WorkerStatus.AVAILABLE and fits)
            for j in w.jobs:
                assert j not in held, f"{j} held by two workers"
                held[j] = w.worker_id

        for view in core.jobs(now):
            jid = view.spec.job_id
            if jid in self.final:
                assert view.state == self.final[jid], "a terminal state changed"
            if view.state in HELD:
                assert held.get(jid) == view.worker_id
            else:
                assert jid not in held
            if view.state == JobState.QUEUED and view.wait_reason != WaitReason.BACKOFF:
                # Out of its backoff, it waits only while no worker can take
                # it: one that declined it before is asked again.
                for w in core.workers():
                    assert not (w.key == view.spec.key and w.eligible), f"{jid} left waiting"

    def forgot(self, job_id: str) -> None:
        self.final.pop(job_id, None)


def run(impl: Any, script: list[tuple[tuple[Any, ...], float]]) -> list[object]:
    core = DispatchCore(impl, **OPTIONS)
    checker = Checker()
    now = 0.0
    trace: list[object] = []
    for op, dt in script:
        now += dt
        raw = resolve(core, op, now)
        error, actions = apply(core, raw, now)
        if raw[0] in ("forget", "submit") and not error:
            # A submit the core takes starts the id afresh: the core accepts
            # an ended job's id again (the domain never reuses ids).
            checker.forgot(raw[1])
        checker.check(core, actions, now)
        trace.append((error, actions))
        trace.append((tuple(core.workers()), tuple(core.jobs(now)), core.next_deadline()))
    return trace


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps)
def test_python_core_keeps_its_invariants(script: list[tuple[tuple[Any, ...], float]]) -> None:
    run(_core.scheduler_py, script)


@pytest.mark.skipif(_core.scheduler_c is None, reason="compiled core not built")
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps)
def test_compiled_core_matches_the_python_reference(
    script: list[tuple[tuple[Any, ...], float]],
) -> None:
    assert run(_core.scheduler_c, script) == run(_core.scheduler_py, script)
