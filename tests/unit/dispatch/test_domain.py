"""The domain on a fake clock, with in-memory worker links: no sockets, no
loop, no sleeping.  ``now`` is a plain float the test moves."""

from __future__ import annotations

from typing import Any

import pytest

from edgedispatch._core.codes import FailReason, JobState, JobStatus, WaitReason, WorkerStatus
from edgedispatch._testbase.links import RecordingLink
from edgedispatch.config import DispatchConfig, RoomConfig
from edgedispatch.dispatch.domain import Domain
from edgedispatch.dispatch.events import (
    DispatchCreated,
    DispatchDeleted,
    DomainEvent,
    JobChanged,
    JobForgotten,
    RoomClosed,
    RoomOpened,
    WorkerLost,
    WorkerRegistered,
)
from edgedispatch.dispatch.records import Acceptance
from edgedispatch.dispatch.specs import AgentSpec, DispatchSpec, RoomSpec, WorkerSpec
from edgedispatch.errors import InvalidArgument, NotFound, Unavailable


def make(**dispatch: Any) -> tuple[Domain, list[DomainEvent], list[float | None]]:
    room = dispatch.pop("room", {})
    domain = Domain(DispatchConfig(**dispatch), RoomConfig(**room))
    events: list[DomainEvent] = []
    told: list[float | None] = []
    domain.subscribe(events.append)
    domain.on_deadline = told.append
    return domain, events, told


def dispatch(domain: Domain, room: str, agent: str, now: float, tenant: str = "") -> str:
    rec = domain.create_dispatch(tenant, DispatchSpec(room, AgentSpec(agent)), now)
    domain.step(now)
    return rec.job_ids[0]


def register(domain: Domain, link: RecordingLink, agent: str, now: float, **kw: Any) -> str:
    worker_id = domain.register_worker(link, WorkerSpec(agent_name=agent, **kw), now)
    domain.step(now)
    return worker_id


def test_a_job_waits_for_a_worker_and_runs_when_one_registers() -> None:
    domain, _, _ = make()
    # Events carry the live record: read it when the event arrives.
    states: list[JobState] = []
    domain.subscribe(lambda e: states.append(e.job.state) if isinstance(e, JobChanged) else None)
    job_id = dispatch(domain, "r1", "support", now=0.0)
    job = domain.jobs.jobs[job_id]
    assert (job.state, job.wait) == (JobState.QUEUED, WaitReason.NO_WORKERS)
    assert domain.agent_jobs("", "support") == (1, 1)

    link = RecordingLink()
    register(domain, link, "support", now=1.0)
    assert link.offers == [job_id] and link.rooms[0].name == "r1"
    assert job.state == JobState.OFFERED and job.worker_id == link.worker_id
    assert domain.workers.connected("", "support") == 1

    domain.accept(link, job_id, Acceptance("agent-x", name="X"), now=1.1)
    domain.step(1.1)
    assert link.assigned == [(job_id, Acceptance("agent-x", name="X"))]
    assert job.identity == "agent-x" and job.state == JobState.ASSIGNED

    domain.job_status(link, job_id, JobStatus.RUNNING, now=1.2)
    domain.step(1.2)
    domain.job_status(link, job_id, JobStatus.SUCCESS, now=5.0)
    domain.step(5.0)
    assert job.state == JobState.SUCCESS
    assert domain.agent_jobs("", "support") == (0, 0)
    assert domain.running_jobs() == 0
    assert states == [
        JobState.QUEUED,  # the new record
        JobState.QUEUED,  # the core queued it (no worker)
        JobState.OFFERED,
        JobState.ASSIGNED,
        JobState.RUNNING,
        JobState.SUCCESS,
    ]


def test_events_follow_each_change_in_order() -> None:
    domain, events, _ = make()
    link = RecordingLink()
    register(domain, link, "a", now=0.0)
    job_id = dispatch(domain, "r1", "a", now=0.0)
    domain.delete_room("", "r1", now=1.0)
    domain.step(1.0)
    kinds = [type(e) for e in events]
    assert kinds[:4] == [WorkerRegistered, RoomOpened, DispatchCreated, JobChanged]
    assert events[0].api_key == link.api_key  # whose worker it is
    assert kinds[-4:] == [DispatchDeleted, RoomClosed, JobChanged, JobForgotten]
    assert link.terminated == []  # an offered job is simply withdrawn
    assert job_id not in domain.jobs.jobs  # forgotten once it ended


def test_the_queue_deadline_runs_on_the_fake_clock() -> None:
    domain, _, told = make(queue_timeout=30.0)
    job_id = dispatch(domain, "r1", "nobody", now=100.0)
    assert domain.next_deadline() == 130.0 and told[-1] == 130.0
    domain.on_timer(129.9)
    assert domain.jobs.jobs[job_id].state == JobState.QUEUED
    domain.on_timer(130.0)
    job = domain.jobs.jobs[job_id]
    assert (job.state, job.reason) == (JobState.FAILED, FailReason.NO_CAPACITY)


def test_a_timer_that_fires_early_is_armed_again() -> None:
    # uvloop fires call_at timers up to a millisecond early; the domain must
    # ask for the same deadline again, or the job would wait forever.
    domain, _, told = make(queue_timeout=30.0)
    dispatch(domain, "r1", "nobody", now=0.0)
    assert told == [30.0]
    domain.on_timer(29.999)  # nothing due yet
    assert told == [30.0, 30.0]


def test_a_room_nobody_joined_closes_after_its_empty_timeout() -> None:
    domain, events, _ = make(room={"empty_timeout": 300})
    domain.create_room("", RoomSpec("lobby", empty_timeout=5), now=0.0)
    domain.step(0.0)
    job_id = dispatch(domain, "lobby", "a", now=1.0)
    domain.on_timer(4.9)
    assert domain.rooms.find("", "lobby") is not None
    domain.on_timer(5.0)
    assert domain.rooms.find("", "lobby") is None
    assert job_id not in domain.jobs.jobs
    closed = [e for e in events if isinstance(e, RoomClosed)]
    assert [(e.room.name, e.reason) for e in closed] == [("lobby", "empty timeout")]


def test_a_job_past_max_job_duration_is_terminated() -> None:
    domain, _, _ = make(max_job_duration=60.0, terminate_grace=5.0)
    link = RecordingLink(on_offer=lambda job: None)
    register(domain, link, "a", now=0.0)
    job_id = dispatch(domain, "r1", "a", now=0.0)
    domain.accept(link, job_id, Acceptance("agent"), now=0.0)
    domain.step(0.0)
    assert domain.next_deadline() == 60.0
    domain.on_timer(60.0)
    assert link.terminated == [(job_id, FailReason.MAX_DURATION)]
    domain.on_timer(65.0)  # the worker never confirmed: ended after the grace
    assert domain.jobs.jobs[job_id].state == JobState.CANCELLED


def test_a_local_style_worker_answers_in_the_same_step() -> None:
    domain, _, _ = make()
    link = RecordingLink()

    def accept_after(job: Any) -> None:
        domain.after_step(lambda now, j: domain.accept(link, j, Acceptance("me"), now), job.id)

    link._on_offer = accept_after
    register(domain, link, "local", now=0.0)
    job_id = dispatch(domain, "r1", "local", now=0.0)
    assert link.assigned == [(job_id, Acceptance("me"))]  # no second input needed


def test_after_step_outside_a_step_asks_the_shell_for_one() -> None:
    domain, _, told = make()
    called: list[float] = []
    domain.after_step(lambda now: called.append(now))
    assert told[-1] < 0  # any time in the past: at once
    domain.on_timer(7.0)
    assert called == [7.0]


def test_draining_refuses_new_work_and_offers_nothing_more() -> None:
    domain, _, _ = make()
    link = RecordingLink()
    register(domain, link, "a", now=0.0, slots=1)
    running = dispatch(domain, "r1", "a", now=0.0)
    domain.accept(link, running, Acceptance("agent"), now=0.0)
    waiting = dispatch(domain, "r2", "a", now=0.0)  # no free slot: queued
    domain.begin_drain(now=1.0)
    domain.step(1.0)
    with pytest.raises(Unavailable) as info:
        domain.create_dispatch("", DispatchSpec("r1", AgentSpec("a")), now=1.0)
    assert (info.value.twirp_code, info.value.sip_status) == ("unavailable", 503)
    domain.job_status(link, running, JobStatus.SUCCESS, now=2.0)
    domain.step(2.0)  # the slot is free, but the worker is draining
    assert link.offers == [running]
    assert domain.jobs.jobs[waiting].state == JobState.QUEUED
    assert domain.running_jobs() == 0


def test_create_dispatch_is_idempotent_on_the_request_id() -> None:
    domain, _, _ = make()
    spec = DispatchSpec("r1", AgentSpec("a"))
    first = domain.create_dispatch("", spec, now=0.0, request_id="req-1")
    again = domain.create_dispatch("", spec, now=1.0, request_id="req-1")
    other_tenant = domain.create_dispatch("acme", spec, now=1.0, request_id="req-1")
    assert again is first and other_tenant is not first
    assert len(domain.rooms.dispatches) == 2


def test_tenants_see_only_their_own_rooms() -> None:
    domain, _, _ = make()
    domain.create_room("acme", RoomSpec("shared"), now=0.0)
    domain.create_room("acme", RoomSpec("other"), now=0.0)
    domain.create_room("globex", RoomSpec("shared"), now=0.0)
    assert [r.name for r in domain.rooms.list_rooms("acme", [])] == ["shared", "other"]
    assert [r.tenant for r in domain.rooms.list_rooms("globex", ["shared", "x"])] == ["globex"]
    domain.delete_room("acme", "shared", now=1.0)
    assert [r.name for r in domain.rooms.list_rooms("acme", [])] == ["other"]
    assert domain.rooms.find("globex", "shared") is not None
    with pytest.raises(NotFound) as info:
        domain.delete_room("acme", "shared", now=1.0)
    assert (info.value.twirp_code, info.value.sip_status) == ("not_found", 404)


def test_bad_specs_are_refused_with_the_reason() -> None:
    domain, _, _ = make()
    with pytest.raises(InvalidArgument, match="deployment"):
        domain.create_dispatch("", DispatchSpec("r", AgentSpec("a", deployment="a_b")), now=0.0)
    with pytest.raises(InvalidArgument, match="restart_policy"):
        domain.create_dispatch("", DispatchSpec("r", AgentSpec("a", restart_policy=9)), now=0.0)
    with pytest.raises(InvalidArgument, match="job type"):
        domain.register_worker(RecordingLink(), WorkerSpec(job_type=7), now=0.0)
    assert domain.rooms.rooms == {} and len(domain.workers) == 0


def test_a_worker_that_never_reports_claims_its_jobs_by_reconnecting() -> None:
    domain, _, _ = make(reclaim_grace=10.0)
    node = RecordingLink(reports_status=False, version="node-1")
    register(domain, node, "n", now=0.0)
    job_id = dispatch(domain, "r1", "n", now=0.0)
    domain.accept(node, job_id, Acceptance("agent"), now=0.0)
    domain.step(0.0)
    domain.worker_closed(node, now=1.0)
    domain.step(1.0)
    assert domain.jobs.jobs[job_id].state == JobState.ORPHANED
    assert domain.workers.orphans() == 1

    again = RecordingLink(reports_status=False, version="node-1")  # same place
    register(domain, again, "n", now=2.0)
    job = domain.jobs.jobs[job_id]
    assert (job.state, job.worker_id) == (JobState.RUNNING, again.worker_id)
    assert domain.workers.orphans() == 0


def test_orphans_of_a_worker_that_never_returns_are_not_kept() -> None:
    # Before: the Node fingerprint map was never cleared for such a worker.
    domain, events, _ = make(reclaim_grace=10.0)
    node = RecordingLink(reports_status=False)
    register(domain, node, "n", now=0.0)
    job_id = dispatch(domain, "r1", "n", now=0.0)
    domain.accept(node, job_id, Acceptance("agent"), now=0.0)
    domain.step(0.0)
    domain.worker_closed(node, now=1.0)
    domain.step(1.0)
    assert domain.workers.orphans() == 1
    domain.on_timer(11.0)  # reclaim_grace over: the job is queued again
    assert domain.jobs.jobs[job_id].state == JobState.QUEUED
    assert domain.workers.orphans() == 0
    lost = [e for e in events if isinstance(e, WorkerLost)]
    assert [(e.held_jobs, e.api_key) for e in lost] == [(1, node.api_key)]


def test_load_reports_move_the_scheduler_without_scans() -> None:
    domain, _, _ = make()
    link = RecordingLink()
    register(domain, link, "a", now=0.0)
    domain.update_worker(link, WorkerStatus.FULL, 1.3, 0, now=1.0)  # load clamped to 1
    domain.step(1.0)
    view = domain.core.worker(link.worker_id)
    assert (view.status, view.load) == (WorkerStatus.FULL, 1.0)
    job_id = dispatch(domain, "r1", "a", now=2.0)
    assert domain.jobs.jobs[job_id].wait == WaitReason.ALL_BUSY
    with pytest.raises(InvalidArgument, match="NaN"):
        domain.update_worker(link, None, float("nan"), 0, now=3.0)


def test_list_dispatch_brings_wait_reasons_up_to_now() -> None:
    domain, _, _ = make(retry_base=1.0, offer_timeout=1.0)
    silent = RecordingLink()
    register(domain, silent, "a", now=0.0)
    job_id = dispatch(domain, "r1", "a", now=0.0)
    domain.on_timer(1.0)  # unanswered: back off before asking it again
    assert domain.jobs.jobs[job_id].wait == WaitReason.BACKOFF
    (listed,) = domain.list_dispatch("", "r1", now=50.0)
    assert domain.jobs.jobs[listed.job_ids[0]].wait != WaitReason.BACKOFF


def test_a_failing_subscriber_does_not_stop_the_domain() -> None:
    domain, _, _ = make()

    def broken(event: DomainEvent) -> None:
        raise RuntimeError("subscriber bug")

    domain.subscribe(broken)
    job_id = dispatch(domain, "r1", "a", now=0.0)
    assert domain.jobs.jobs[job_id].state == JobState.QUEUED


def test_records_encode_as_they_are_for_a_store() -> None:
    # No timer handles or connections inside: msgspec writes and reads them.
    import msgspec

    from edgedispatch.dispatch.records import DispatchRec, JobRec, RoomRec

    domain, _, _ = make()
    link = RecordingLink()
    register(domain, link, "a", now=0.0)
    job_id = dispatch(domain, "r1", "a", now=0.0)
    domain.accept(link, job_id, Acceptance("agent", attributes={"k": "v"}), now=1.0)
    domain.step(1.0)
    room = domain.rooms.get("", "r1")
    (rec,) = domain.rooms.list_dispatch("", "r1")
    job = domain.jobs.jobs[job_id]
    for value, kind in ((room, RoomRec), (rec, DispatchRec), (job, JobRec)):
        assert msgspec.json.decode(msgspec.json.encode(value), type=kind) == value
