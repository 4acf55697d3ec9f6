"""Memory comes back after rooms go: once a churn of rooms (each with a
dispatch whose job is queued, offered or running) is deleted, the domain
keeps no record, timer, index entry or handle of them, and its tables have
shrunk (a server runs for months; bench churn measures its RSS)."""

from __future__ import annotations

import gc
import random
import sys
import tracemalloc
from types import ModuleType

from edgedispatch._core.codes import JobStatus
from edgedispatch._testbase.links import RecordingLink
from edgedispatch.config import DispatchConfig, RoomConfig
from edgedispatch.dispatch.core import DispatchCore
from edgedispatch.dispatch.domain import Domain
from edgedispatch.dispatch.records import Acceptance
from edgedispatch.dispatch.specs import AgentSpec, RoomSpec, WorkerSpec

ROOMS = 2000


def churn(domain: Domain, link: RecordingLink, now: float) -> None:
    """ROOMS rooms with a dispatch each; the worker runs the first of the
    jobs, as many as it takes; then every room goes, in no particular order."""
    names = [f"churn-{i}" for i in range(ROOMS)]
    for name in names:
        domain.create_room("", RoomSpec(name, agents=(AgentSpec("a"),)), now)
        domain.step(now)
    for job_id in list(domain.jobs.jobs)[: ROOMS // 10]:
        if domain.jobs.jobs[job_id].worker_id:  # offered to the worker
            domain.accept(link, job_id, Acceptance(identity=f"agent-{job_id}"), now)
            domain.step(now)
            domain.job_status(link, job_id, JobStatus.RUNNING, now)
            domain.step(now)
    random.Random(7).shuffle(names)
    for name in names:
        domain.delete_room("", name, now + 1)
        domain.step(now + 1)
    # The running jobs were told to end; the worker says they did.
    for job_id, _ in link.terminated:
        domain.job_status(link, job_id, JobStatus.SUCCESS, now + 2)
        domain.step(now + 2)
    for recorded in (link.offers, link.assigned, link.terminated, link.rooms):
        recorded.clear()  # the test's own records are not the domain's


def test_a_churn_of_rooms_leaves_nothing_behind(impl: ModuleType) -> None:
    cfg = DispatchConfig(max_job_duration=3600)
    domain = Domain(cfg, RoomConfig(), core=DispatchCore(impl))
    link = RecordingLink()
    domain.register_worker(link, WorkerSpec(agent_name="a"), 0.0)
    domain.step(0.0)
    # A room that stays: its deadline sits on top of the timer heap.
    domain.create_room("", RoomSpec("stays", agents=(AgentSpec("a"),)), 0.0)
    domain.step(0.0)
    churn(domain, link, 1.0)  # first, so that lazily built things are built
    before = (len(domain.jobs.jobs), len(domain._timers))
    tracemalloc.start()
    try:
        # (A full collection empties the interpreter's free lists, which
        # keep freed tuples and such for reuse: the server's reclaim does.)
        gc.collect()
        kept_before = tracemalloc.get_traced_memory()[0]
        churn(domain, link, 10.0)
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - kept_before
    finally:
        tracemalloc.stop()

    rooms = domain.rooms
    assert list(rooms.rooms) == [("", "stays")]
    assert len(rooms.dispatches) == 1
    assert (len(domain.jobs.jobs), len(domain._timers)) == before
    assert len(domain._timers.heap) <= 2 * len(domain._timers) + 64
    assert len(domain.core._jobs.by_id) == before[0]
    # The tables shrank back: no dict sized for the churn's peak.
    for table in (rooms.rooms, rooms.dispatches, domain.jobs.jobs, domain.core._jobs.by_id):
        assert sys.getsizeof(table) < 4096
    # What the second churn kept (traced Python memory): a few kB, not the
    # ~1 kB per room it takes while they exist.
    assert kept < 64 * 1024, kept
