"""State survives a restart: a domain writes through the journal, a new
domain (a restarted server) recovers from the same store.  On a fake
clock; the "crash" leaves the first store unclosed, as kill -9 would."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
from pathlib import Path

import msgspec

from edgedispatch._core.codes import FailReason, JobState, JobStatus, RestartPolicy
from edgedispatch._testbase.links import RecordingLink
from edgedispatch.config import DispatchConfig, RoomConfig
from edgedispatch.dispatch.domain import Domain
from edgedispatch.dispatch.records import Acceptance
from edgedispatch.dispatch.specs import AgentSpec, DispatchSpec, WorkerSpec
from edgedispatch.store.journal import KINDS, Journal
from edgedispatch.store.sqlite import FILENAME, MIGRATIONS, SqliteStore


def boot(path: Path, now: float, wall: float, **cfg: float) -> Domain:
    """A server's start: open the store, recover, then journal from here."""
    domain = Domain(DispatchConfig(**cfg), RoomConfig())  # type: ignore[arg-type]
    domain.wall.offset = wall - now
    store = SqliteStore(path)
    Journal(store, domain.cfg.queue_timeout).recover_into(domain, now)
    return domain


def create(domain: Domain, room: str, agent: str, now: float, request_id: str = "") -> str:
    rec = domain.create_dispatch("t1", DispatchSpec(room, AgentSpec(agent)), now, request_id)
    domain.step(now)
    return rec.id


def test_queued_jobs_come_back_in_order_and_are_offered_again(tmp_path: Path) -> None:
    first = boot(tmp_path, now=0.0, wall=1000.0)
    made = [create(first, f"room-{i}", "support", now=float(i)) for i in range(5)]
    jobs = [first.rooms.dispatches[d].job_ids[0] for d in made]
    # kill -9: nothing closed.  The restart's monotonic clock starts afresh.
    second = boot(tmp_path, now=50.0, wall=1010.0)
    assert [second.jobs.jobs[j].state for j in jobs] == [JobState.QUEUED] * 5
    link = support_worker(second, 51.0)
    second.step(51.0)
    assert link.offers == jobs[:1]  # one slot: the oldest first
    (listed,) = second.list_dispatch("t1", "room-3", now=51.0)
    assert listed.id == made[3] and listed.job_ids == [jobs[3]]


def test_a_retried_create_dispatch_gets_the_original_after_a_restart(tmp_path: Path) -> None:
    first = boot(tmp_path, now=0.0, wall=1000.0)
    original = create(first, "r1", "support", now=0.0, request_id="req-1")
    second = boot(tmp_path, now=0.0, wall=1001.0)
    assert create(second, "r1", "support", now=1.0, request_id="req-1") == original
    assert len(second.list_dispatch("t1", "r1", now=1.0)) == 1


def test_queue_deadlines_count_from_their_original_time(tmp_path: Path) -> None:
    first = boot(tmp_path, now=0.0, wall=1000.0, queue_timeout=60.0)
    job = first.rooms.dispatches[create(first, "r1", "nobody", now=0.0)].job_ids[0]
    second = boot(tmp_path, now=7.0, wall=1040.0, queue_timeout=60.0)  # 40 s later
    assert second.next_deadline() == 7.0 + 20.0  # 20 s of its 60 left
    second.on_timer(27.0)
    assert second.jobs.jobs[job].state == JobState.FAILED


def serving(path: Path) -> tuple[Domain, SqliteStore]:
    """A running server's domain (on the running loop), journaling through
    a store whose writer process runs."""
    domain = Domain(DispatchConfig(reclaim_grace=10.0), RoomConfig())
    domain.wall.offset = 1000.0
    store = SqliteStore(path)
    domain.subscribe(Journal(store, domain.cfg.queue_timeout).on_event, *KINDS)
    store.start(asyncio.get_running_loop())
    return domain, store


def support_worker(domain: Domain, now: float = 0.0) -> RecordingLink:
    """A worker for agent "support" with one slot, registered."""
    link = RecordingLink(tenant="t1")
    domain.register_worker(link, WorkerSpec(agent_name="support", slots=1), now)
    return link


def worker_takes_a_job(domain: Domain) -> tuple[RecordingLink, str]:
    """A worker registers and accepts a new job (ASSIGNED): its link, the job."""
    link = support_worker(domain)
    job = domain.rooms.dispatches[create(domain, "r1", "support", now=0.0)].job_ids[0]
    domain.accept(link, job, Acceptance("agent-1"), now=0.1)
    domain.step(0.1)
    return link, job


def test_a_running_job_waits_for_its_worker_to_claim_it_back(tmp_path: Path) -> None:
    first = boot(tmp_path, now=0.0, wall=1000.0, reclaim_grace=10.0)
    link, job = worker_takes_a_job(first)
    first.job_status(link, job, JobStatus.RUNNING, now=0.2)
    first.step(0.2)

    second = boot(tmp_path, now=0.0, wall=1001.0, reclaim_grace=10.0)
    assert second.jobs.jobs[job].state == JobState.ORPHANED  # not offered to anyone
    again = support_worker(second, 1.0)
    second.step(1.0)
    assert again.offers == []
    second.claim(again, [job], now=2.0)  # MigrateJob, after its reconnect
    second.step(2.0)
    assert second.jobs.jobs[job].state == JobState.RUNNING
    assert second.running_jobs() == 1


def test_an_unclaimed_running_job_is_dispatched_again(tmp_path: Path) -> None:
    first = boot(tmp_path, now=0.0, wall=1000.0, reclaim_grace=10.0)
    _, job = worker_takes_a_job(first)

    second = boot(tmp_path, now=0.0, wall=1001.0, reclaim_grace=10.0)
    other = support_worker(second, 1.0)
    second.step(1.0)
    second.on_timer(10.0)  # reclaim_grace over: JRP_ON_FAILURE runs it again
    assert other.offers == [job]


def test_restarts_more_often_than_the_grace_do_not_keep_a_job_waiting(tmp_path: Path) -> None:
    """Its wait to be claimed back counts from when it began, not from the
    last restart (bench faults: restarts under 10 s apart kept jobs waiting
    for their lost workers for 70 s)."""
    cfg = {"reclaim_grace": 10.0}
    first = boot(tmp_path, now=0.0, wall=1000.0, **cfg)
    _, job = worker_takes_a_job(first)
    second = boot(tmp_path, now=0.0, wall=1001.0, **cfg)  # the wait begins: until 1011
    assert second.next_deadline() == 10.0
    third = boot(tmp_path, now=0.0, wall=1007.0, **cfg)  # 6 s of it gone
    assert third.jobs.jobs[job].state == JobState.ORPHANED
    assert third.next_deadline() == 4.0
    fourth = boot(tmp_path, now=0.0, wall=1009.0, **cfg)
    other = support_worker(fourth, 1.0)
    fourth.step(1.0)
    assert other.offers == []  # still its worker's, for 1 s more
    fourth.on_timer(2.0)  # wall 1011: the grace is over, JRP_ON_FAILURE runs it again
    assert other.offers == [job]


def test_a_job_whose_grace_ran_out_while_down_goes_out_at_start(tmp_path: Path) -> None:
    cfg = {"reclaim_grace": 10.0}
    first = boot(tmp_path, now=0.0, wall=1000.0, **cfg)
    _, job = worker_takes_a_job(first)
    boot(tmp_path, now=0.0, wall=1001.0, **cfg)  # waiting since 1001
    second = boot(tmp_path, now=5.0, wall=1030.0, **cfg)
    assert second.next_deadline() == 5.0  # over already: at the first timer
    other = support_worker(second, 5.0)
    second.on_timer(5.0)
    assert other.offers == [job]
    third = boot(tmp_path, now=0.0, wall=1031.0, **cfg)  # written: offered, not waiting
    assert third.jobs.jobs[job].state == JobState.ORPHANED
    assert third.next_deadline() == 10.0  # a new wait, for the worker it was offered to


def test_a_job_whose_queue_deadline_passed_while_down_fails_once_for_good(
    tmp_path: Path,
) -> None:
    """Its failure, made while the state is put back, is written: the next
    restart finds it failed, instead of failing it again (found by bench
    faults: it failed at every restart, and its dispatch was never done)."""
    first = boot(tmp_path, now=0.0, wall=1000.0, queue_timeout=60.0)
    job = first.rooms.dispatches[create(first, "r1", "nobody", now=0.0)].job_ids[0]
    second = boot(tmp_path, now=0.0, wall=1100.0, queue_timeout=60.0)  # down past it
    assert second.jobs.jobs[job].state == JobState.FAILED
    assert second.jobs.jobs[job].reason == FailReason.NO_CAPACITY
    rows = sqlite3.connect(tmp_path / FILENAME).execute("SELECT state FROM jobs").fetchall()
    assert rows == [(int(JobState.FAILED),)]
    third = boot(tmp_path, now=0.0, wall=1110.0, queue_timeout=60.0)
    assert third.jobs.jobs[job].state == JobState.FAILED
    # Failed then (wall 1100), not again now (1110).
    assert third.jobs.jobs[job].updated_ns == second.jobs.jobs[job].updated_ns


def test_a_running_job_past_its_queue_deadline_is_still_run_again(tmp_path: Path) -> None:
    """Its wait in the queue ended when it was assigned: if its worker never
    claims it back, it queues afresh (found by bench faults: restarts kept
    restarting its reclaim grace past the original queue deadline, and it
    then failed NO_CAPACITY without an offer)."""
    first = boot(tmp_path, now=0.0, wall=1000.0, reclaim_grace=10.0, queue_timeout=60.0)
    _, job = worker_takes_a_job(first)

    second = boot(tmp_path, now=0.0, wall=1200.0, reclaim_grace=10.0, queue_timeout=60.0)
    second.on_timer(10.0)  # unclaimed, and no worker free at that moment
    assert second.jobs.jobs[job].state == JobState.QUEUED
    other = support_worker(second, 11.0)
    second.step(11.0)
    assert other.offers == [job]
    assert second.jobs.jobs[job].state == JobState.OFFERED


def test_a_held_job_queued_again_keeps_its_fresh_wait_across_a_restart(tmp_path: Path) -> None:
    """Queued afresh when its worker never claimed it, it is written with
    its new queue deadline: a restart after the original deadline finds it
    queued with the rest of its new wait (found by bench faults: with the
    original one in the store, the next restart failed it at once)."""
    cfg = {"reclaim_grace": 10.0, "queue_timeout": 60.0}
    first = boot(tmp_path, now=0.0, wall=1000.0, **cfg)
    _, job = worker_takes_a_job(first)
    second = boot(tmp_path, now=0.0, wall=1200.0, **cfg)  # past its first wait
    second.on_timer(10.0)  # unclaimed: queued afresh at wall 1210, until 1270
    assert second.jobs.jobs[job].state == JobState.QUEUED
    third = boot(tmp_path, now=0.0, wall=1230.0, **cfg)
    assert third.jobs.jobs[job].state == JobState.QUEUED
    assert third.next_deadline() == 40.0  # 40 s of its new 60 left
    other = support_worker(third, 1.0)
    third.step(1.0)
    assert other.offers == [job]


def test_ended_and_deleted_work_does_not_come_back(tmp_path: Path) -> None:
    first = boot(tmp_path, now=0.0, wall=1000.0)
    gone = create(first, "r1", "support", now=0.0)
    first.delete_dispatch("t1", "r1", gone, now=1.0)
    first.step(1.0)
    first.delete_room("t1", "r1", now=2.0)
    first.step(2.0)
    second = boot(tmp_path, now=0.0, wall=1003.0)
    assert second.rooms.dispatches == {} and second.jobs.jobs == {}
    assert second.rooms.find("t1", "r1") is None


def test_a_job_assigned_in_the_pass_that_made_it_is_written_once_as_held(
    tmp_path: Path,
) -> None:
    async def main() -> tuple[int, int]:
        domain, store = serving(tmp_path)
        # Passes go by first (each hands its writes over)...
        for i in range(3):
            create(domain, f"other-{i}", "nobody", now=0.0)
            await store.flushed()
        link = support_worker(domain)
        job = domain.rooms.dispatches[create(domain, "r1", "support", now=0.0)].job_ids[0]
        made = store.written
        domain.accept(link, job, Acceptance("agent-1"), now=0.0)
        domain.step(0.0)
        folded = store.written - made  # the job's row, still in the outbox, took it
        await store.flushed()
        create(domain, "other-3", "nobody", now=0.5)  # ...and after
        await store.flushed()
        made = store.written
        # Its row is with the writer now: a change is an UPDATE.
        domain.job_status(link, job, JobStatus.SUCCESS, now=1.0)
        domain.step(1.0)
        await store.flushed()
        ended = store.written - made
        store.close()
        return folded, ended

    assert asyncio.run(main()) == (0, 1)
    second = boot(tmp_path, now=0.0, wall=1002.0)
    states = {j.state for j in second.jobs.jobs.values()}
    assert states == {JobState.SUCCESS, JobState.QUEUED}
    assert len(second.jobs.jobs) == 5


def test_a_job_assigned_before_its_row_went_to_the_writer_is_written_once(
    tmp_path: Path,
) -> None:
    """While a frame is at the writer, a new job's row waits in the server
    (``store.link``): its assignment, passes later, goes into that row
    rather than into an UPDATE, and the row comes back held."""

    async def main() -> int:
        domain, store = serving(tmp_path)
        writer = store.writer_pid
        os.kill(writer, signal.SIGSTOP)  # a slow disk: the first frame stays there
        try:
            create(domain, "other", "nobody", now=0.0)
            await asyncio.sleep(0)  # sent
            link = support_worker(domain)
            job = domain.rooms.dispatches[create(domain, "r1", "support", now=0.0)].job_ids[0]
            await asyncio.sleep(0)  # handed over, not sent: the writer has a frame
            sends, made = store.sends, store.written
            domain.accept(link, job, Acceptance("agent-1"), now=0.0)
            domain.step(0.0)
            await asyncio.sleep(0)
            assert store.sends == sends
            folded = store.written - made
        finally:
            os.kill(writer, signal.SIGCONT)
        await store.flushed()
        store.close()
        return folded

    assert asyncio.run(main()) == 0
    second = boot(tmp_path, now=0.0, wall=1001.0, reclaim_grace=10.0)
    states = sorted(j.state for j in second.jobs.jobs.values())
    assert states == sorted([JobState.QUEUED, JobState.ORPHANED])


def offered_then_killed(tmp_path: Path, policy: RestartPolicy) -> tuple[Domain, str]:
    """A job offered to a worker, the offer committed, then kill -9 before
    anything else: the restarted domain, and the job's id."""

    async def main() -> str:
        domain, store = serving(tmp_path)
        support_worker(domain)  # the worker it is offered to
        spec = DispatchSpec("r1", AgentSpec("support", restart_policy=policy))
        rec = domain.create_dispatch("t1", spec, 0.0)
        domain.step(0.0)
        await store.flushed()  # the offer to the worker is committed
        os.kill(store.writer_pid, signal.SIGKILL)  # kill -9 before anything else
        store.close()
        return rec.job_ids[0]

    job = asyncio.run(main())
    return boot(tmp_path, now=0.0, wall=1001.0, reclaim_grace=10.0), job


def test_a_job_offered_to_a_worker_waits_for_it_then_goes_out_again(tmp_path: Path) -> None:
    """The assignment waits only for the offer's write: a crash before its
    ASSIGNED commits leaves OFFERED to W in the store.  W may be running
    it, so it gets ``reclaim_grace`` to claim it back; unclaimed, a
    JRP_ON_FAILURE job is offered again."""
    second, job = offered_then_killed(tmp_path, RestartPolicy.ON_FAILURE)
    assert second.jobs.jobs[job].state == JobState.ORPHANED
    other = support_worker(second, 1.0)
    second.step(1.0)
    assert other.offers == []  # its worker may claim it back
    second.on_timer(10.5)  # nobody did: it goes out again
    assert other.offers == [job]


def test_an_offered_jrp_never_job_unclaimed_after_a_crash_fails_and_never_runs_twice(
    tmp_path: Path,
) -> None:
    """Its worker may have started it and died, or be cut off for longer
    than the grace while it runs: a JRP_NEVER job runs at most once, so
    unclaimed it fails (WORKER_LOST) instead of going to another worker."""
    second, job = offered_then_killed(tmp_path, RestartPolicy.NEVER)
    other = support_worker(second, 1.0)
    second.step(1.0)
    second.on_timer(10.5)
    assert other.offers == []
    rec = second.jobs.jobs[job]
    assert (rec.state, rec.reason) == (JobState.FAILED, FailReason.WORKER_LOST)


def test_a_job_held_in_the_pass_that_made_it_comes_back_held(tmp_path: Path) -> None:
    async def main() -> None:
        domain = Domain(DispatchConfig(reclaim_grace=10.0), RoomConfig())
        store = SqliteStore(tmp_path)
        domain.subscribe(Journal(store, domain.cfg.queue_timeout).on_event, *KINDS)
        store.start(asyncio.get_running_loop())
        worker_takes_a_job(domain)
        await store.flushed()
        # kill -9 of the server and its writer: nothing more is written.
        os.kill(store.writer_pid, signal.SIGKILL)
        store.close()

    asyncio.run(main())
    second = boot(tmp_path, now=0.0, wall=1001.0, reclaim_grace=10.0)
    assert [j.state for j in second.jobs.jobs.values()] == [JobState.ORPHANED]


def test_a_store_of_schema_1_is_migrated_and_its_work_comes_back(tmp_path: Path) -> None:
    """A store written by an edgedispatch of schema 1 (rows keyed by their
    text ids): its queued job comes back, and what happens to it after the
    upgrade is written to its migrated row."""
    old = sqlite3.connect(tmp_path / FILENAME, isolation_level=None)
    for statement in MIGRATIONS[1]:
        old.execute(statement)
    old.execute("PRAGMA user_version=1")
    # The rows schema 1's journal wrote for one queued dispatch.
    made = Domain(DispatchConfig(), RoomConfig())
    dispatch = made.rooms.dispatches[create(made, "r1", "support", now=0.0)]
    job = made.jobs.jobs[dispatch.job_ids[0]]
    encode = msgspec.json.encode
    room = made.rooms.find("t1", "r1")
    assert room is not None
    old.execute(
        "INSERT INTO rooms (tenant, name, record) VALUES (?, ?, ?)", ("t1", "r1", encode(room))
    )
    old.execute(
        "INSERT INTO dispatches (id, seq, record) VALUES (?, ?, ?)",
        (dispatch.id, 1, encode(dispatch)),
    )
    old.execute(
        "INSERT INTO jobs (id, seq, record, deadline_ns, state, worker_id, reason, updated_ns)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (job.id, 2, encode(job), 2**62, int(JobState.QUEUED), "", 0, job.updated_ns),
    )
    old.close()

    second = boot(tmp_path, now=0.0, wall=1000.0)
    assert second.jobs.jobs[job.id].state == JobState.QUEUED
    link = support_worker(second, 1.0)
    second.step(1.0)
    second.accept(link, job.id, Acceptance("agent-1"), now=1.1)
    second.job_status(link, job.id, JobStatus.SUCCESS, now=2.0)
    second.step(2.0)

    third = boot(tmp_path, now=0.0, wall=1010.0)
    assert third.jobs.jobs[job.id].state == JobState.SUCCESS  # ended: not run again
    assert [d.id for d in third.list_dispatch("t1", "r1", now=0.0)] == [dispatch.id]
    again = support_worker(third, 1.0)
    third.step(1.0)
    assert again.offers == []
