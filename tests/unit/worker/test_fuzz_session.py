"""Fuzzed frames from one worker, sans-IO on a fake clock: random bytes,
mutated WorkerMessages, odd loads and job ids (another worker's among
them).  The session either answers or closes with a client's close code
and a reason (never 1011, an internal error), and the well-behaved worker
beside it keeps its running job and still gets the next one."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st
from livekit.protocol import agent

from edgedispatch._core.codes import JobState, JobStatus
from edgedispatch._testbase.links import RecordingLink, RecordingSink
from edgedispatch.config import DispatchConfig, RoomConfig
from edgedispatch.dispatch.domain import Domain
from edgedispatch.dispatch.records import Acceptance
from edgedispatch.dispatch.specs import AgentSpec, DispatchSpec, WorkerSpec
from edgedispatch.wire.http import CloseCode
from edgedispatch.worker.session import WorkerSession
from tests.fuzzing import aim, fuzz_settings, messages, mutated

#: What a client's bad frames close with: bad payload, or a policy broken.
CLIENT_CLOSES = {CloseCode.INVALID_PAYLOAD, CloseCode.POLICY_VIOLATION}


class World:
    """A domain with a good worker running one job of agent "a", and the
    fuzzed worker's session beside it."""

    def __init__(self) -> None:
        self.now = 0.0
        self.domain = d = Domain(DispatchConfig(), RoomConfig())
        self.good = RecordingLink()
        d.register_worker(self.good, WorkerSpec(agent_name="a"), self.now)
        rec = d.create_dispatch("", DispatchSpec("r1", AgentSpec("a")), self.now)
        d.step(self.now)
        (self.job,) = rec.job_ids
        d.accept(self.good, self.job, Acceptance("agent-1"), self.now)
        d.step(self.now)
        d.job_status(self.good, self.job, JobStatus.RUNNING, self.now)
        d.step(self.now)
        # A job waiting for an agent nobody serves: a target the fuzzer may name.
        self.queued = d.create_dispatch("", DispatchSpec("r2", AgentSpec("z")), self.now)
        d.step(self.now)
        self.sink = RecordingSink()
        self.session = WorkerSession(
            self.sink, d, api_key="devkey", secret="secret", tenant="", public_url="", now=0.0
        )

    def pool(self) -> list[str]:
        return ["a", "z", "r1", self.job, self.queued.job_ids[0], self.good.worker_id]

    def send(self, data: bytes, dt: float) -> None:
        self.now += dt
        self.session.on_timer(self.now)
        self.domain.on_timer(self.now)
        if self.sink.closed is None:
            self.session.on_message(data, self.now)

    def check_closed_well(self) -> None:
        if self.sink.closed is not None:
            code, reason = self.sink.closed
            assert code in CLIENT_CLOSES and reason, self.sink.closed

    def check_the_good_worker(self) -> None:
        """Its job still runs, untouched; the next job of "a" reaches it."""
        d = self.domain
        self.session.on_closed(1006, "gone", self.now)
        job = d.jobs.jobs[self.job]
        assert (job.state, job.worker_id, job.error) == (JobState.RUNNING, self.good.worker_id, "")
        assert self.good.terminated == []
        rec = d.create_dispatch("", DispatchSpec("r3", AgentSpec("a")), self.now)
        d.step(self.now)
        assert self.good.offers[-1] == rec.job_ids[0]


def register() -> bytes:
    req = agent.RegisterWorkerRequest(type=agent.JT_ROOM, agent_name="a", version="1")
    return agent.WorkerMessage(register=req).SerializeToString()


@st.composite
def frames(draw: st.DrawFn, pool: list[str]) -> bytes:
    kind = draw(st.sampled_from(["random", "message", "mutated"]))
    if kind == "random":
        return draw(st.binary(max_size=100))
    msg = draw(messages(agent.WorkerMessage, pool))
    if draw(st.booleans()):
        # At a job that exists: the good worker's, or one queued.
        aim(msg, {"job_id": draw(st.sampled_from(pool[3:5])), "job_ids": pool[3]})
    if msg.WhichOneof("message") == "update_worker" and draw(st.booleans()):
        # The loads that have broken schedulers.
        msg.update_worker.load = draw(st.sampled_from([math.nan, math.inf, -math.inf, -1.0, 2.0]))
    data = msg.SerializeToString()
    return draw(mutated(data)) if kind == "mutated" else data


@given(st.data(), st.booleans())
@fuzz_settings(100)
def test_fuzzed_frames_close_one_worker_with_a_reason_and_spare_the_other(
    data: st.DataObject, registered: bool
) -> None:
    world = World()
    if registered:
        world.send(register(), 0.0)
        assert world.session.worker_id
    for _ in range(data.draw(st.integers(1, 8), label="frames")):
        frame = data.draw(frames(world.pool()), label="frame")
        world.send(frame, data.draw(st.sampled_from([0.0, 0.5, 3.0, 11.0]), label="dt"))
        world.check_closed_well()
    world.check_the_good_worker()


def test_a_report_on_another_workers_job_leaves_its_error_alone() -> None:
    # Found by the fuzzer: the core ignored the stale report, but its error
    # text was written to the job's record first, and ListDispatch showed it.
    world = World()
    world.send(register(), 0.0)
    report = agent.UpdateJobStatus(job_id=world.job, status=agent.JS_FAILED, error="forged")
    world.send(agent.WorkerMessage(update_job=report).SerializeToString(), 0.1)
    world.check_the_good_worker()
    # The job's own worker still reports its failure, with its reason.
    world.domain.job_status(world.good, world.job, JobStatus.FAILED, world.now, "crashed")
    world.domain.step(world.now)
    job = world.domain.jobs.jobs[world.job]
    assert (job.state, job.error) == (JobState.FAILED, "crashed")
