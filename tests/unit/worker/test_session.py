"""LiveKit's worker protocol, sans-IO: frames in with ``now``, frames out
through an in-memory sink, a real domain in between.  No sockets."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jwt
from livekit.protocol import agent, models

from edgedispatch._core.codes import JobState
from edgedispatch._testbase.links import RecordingSink
from edgedispatch.config import DispatchConfig, RoomConfig
from edgedispatch.dispatch.domain import Domain
from edgedispatch.dispatch.specs import AgentSpec, DispatchSpec
from edgedispatch.wire.http import CloseCode
from edgedispatch.worker import session as session_mod
from edgedispatch.worker.session import REGISTER_TIMEOUT, WorkerSession

SECRET = "secret"


def make(
    public_url: str = "",
    wall: float = 1_800_000_000.0,
    after_commit: Callable[[Callable[[], None], str], None] | None = None,
    **cfg: Any,
) -> tuple[Domain, RecordingSink, WorkerSession]:
    domain = Domain(DispatchConfig(**cfg), RoomConfig())
    domain.wall.offset = wall
    sink = RecordingSink()
    session = WorkerSession(
        sink, domain, api_key="devkey", secret=SECRET, tenant="", public_url=public_url, now=0.0,
        after_commit=after_commit,
    )  # fmt: skip
    return domain, sink, session


def frame(**kw: Any) -> bytes:
    return agent.WorkerMessage(**kw).SerializeToString()


def sent(sink: RecordingSink) -> list[agent.ServerMessage]:
    return [agent.ServerMessage.FromString(data) for data in sink.sent]


def register(session: WorkerSession, now: float = 0.0, **kw: Any) -> None:
    req = agent.RegisterWorkerRequest(type=agent.JT_ROOM, version="1.8.9", **kw)
    session.on_message(frame(register=req), now)


def test_the_register_response_is_the_first_frame_even_with_jobs_waiting() -> None:
    domain, sink, session = make()
    domain.create_dispatch("", DispatchSpec("r1", AgentSpec("a")), now=0.0)
    domain.step(0.0)
    register(session, agent_name="a")
    first, second = sent(sink)
    assert first.WhichOneof("message") == "register"
    assert first.register.worker_id == session.worker_id
    assert first.register.server_info.protocol == session_mod.PROTOCOL
    assert second.availability.job.room.name == "r1"
    assert second.availability.job.state.worker_id == session.worker_id


def test_a_worker_must_register_first_and_in_time() -> None:
    _, sink, session = make()
    assert session.next_deadline() == REGISTER_TIMEOUT
    session.on_message(frame(ping=agent.WorkerPing(timestamp=1)), 1.0)
    assert sink.closed == (CloseCode.POLICY_VIOLATION, "expected register first, got ping")

    _, sink, session = make()
    session.on_timer(REGISTER_TIMEOUT - 0.1)
    assert sink.closed is None
    session.on_timer(REGISTER_TIMEOUT)
    assert sink.closed == (CloseCode.POLICY_VIOLATION, "no register within 10 s")
    assert session.next_deadline() is None  # nothing more to wait for


def test_garbage_and_bad_registrations_close_with_a_reason() -> None:
    _, sink, session = make()
    session.on_message(b"\xff\xff not protobuf", 0.0)
    assert sink.closed == (CloseCode.INVALID_PAYLOAD, "not a protobuf WorkerMessage")

    domain, sink, session = make()
    register(session, deployment="a b")
    assert sink.closed is not None and sink.closed[0] == CloseCode.POLICY_VIOLATION
    assert "deployment" in sink.closed[1]
    assert len(domain.workers) == 0 and not session.worker_id


def test_an_accepted_job_is_assigned_with_the_agents_room_token() -> None:
    domain, sink, session = make(public_url="wss://edge.example")
    register(session, agent_name="a", allowed_permissions=models.ParticipantPermission(
        can_publish=True, can_subscribe=True, hidden=True
    ))  # fmt: skip
    rec = domain.create_dispatch("", DispatchSpec("r1", AgentSpec("a")), now=1.0)
    domain.step(1.0)
    job_id = rec.job_ids[0]
    answer = agent.AvailabilityResponse(
        job_id=job_id, available=True, participant_identity="bot", participant_name="Bot"
    )
    session.on_message(frame(availability=answer), 1.5)
    msg = sent(sink)[-1]
    assert msg.assignment.job.id == job_id and msg.assignment.url == "wss://edge.example"
    # Signed with the worker's key; its times come from the fake wall clock.
    options = {"verify_nbf": False, "verify_exp": False}
    claims = jwt.decode(msg.assignment.token, SECRET, algorithms=["HS256"], options=options)
    assert claims["sub"] == "bot" and claims["name"] == "Bot" and claims["iss"] == "devkey"
    assert claims["video"]["room"] == "r1" and claims["video"]["hidden"] is True
    assert claims["nbf"] == int(domain.wall(1.5))
    assert domain.jobs.jobs[job_id].state == JobState.ASSIGNED


def test_a_decline_sends_the_job_on_and_terminate_stops_it() -> None:
    domain, sink, session = make()
    register(session, agent_name="a")
    rec = domain.create_dispatch("", DispatchSpec("r1", AgentSpec("a")), now=0.0)
    domain.step(0.0)
    answer = agent.AvailabilityResponse(job_id=rec.job_ids[0], available=False, terminate=True)
    session.on_message(frame(availability=answer), 0.1)
    job = domain.jobs.jobs[rec.job_ids[0]]
    assert job.state == JobState.CANCELLED  # "do not run it anywhere"


def test_ping_is_answered_with_the_domains_wall_clock() -> None:
    _, sink, session = make(wall=1000.0)
    register(session)
    session.on_message(frame(ping=agent.WorkerPing(timestamp=42)), 5.0)
    pong = sent(sink)[-1].pong
    assert (pong.last_timestamp, pong.timestamp) == (42, 1_005_000)


def test_simulated_jobs_are_answered_and_bounded() -> None:
    domain, sink, session = make()
    register(session, agent_name="a")
    for _ in range(session_mod.SIMULATED_MAX + 10):  # a worker that never answers
        session.on_message(frame(simulate_job=agent.SimulateJobRequest()), 1.0)
    assert len(session._simulated) == session_mod.SIMULATED_MAX
    offered = sent(sink)[-1].availability.job
    answer = agent.AvailabilityResponse(job_id=offered.id, available=False)
    session.on_message(frame(availability=answer), 2.0)
    assert offered.id not in session._simulated  # a decline forgets it
    session.on_message(frame(simulate_job=agent.SimulateJobRequest()), 3.0)
    job = sent(sink)[-1].availability.job
    session.on_message(
        frame(availability=agent.AvailabilityResponse(job_id=job.id, available=True)), 3.0
    )  # noqa: E501
    assert sent(sink)[-1].assignment.job.id == job.id
    assert job.id not in domain.jobs.jobs  # outside the scheduler, as in LiveKit


def test_a_closed_worker_leaves_the_domain_and_its_offer_goes_back() -> None:
    domain, sink, session = make()
    register(session, agent_name="a")
    rec = domain.create_dispatch("", DispatchSpec("r1", AgentSpec("a")), now=0.0)
    domain.step(0.0)
    session.on_closed(1006, "connection lost", 0.5)
    assert len(domain.workers) == 0
    assert domain.jobs.jobs[rec.job_ids[0]].state == JobState.QUEUED


def test_an_assignment_waits_for_the_store_and_nothing_overtakes_it() -> None:
    """The worker starts a job only once the store says it is this
    worker's: a crash in between must not leave it queued in the store."""
    commits: list[Callable[[], None]] = []
    keys: list[str] = []

    def after_commit(fn: Callable[[], None], key: str) -> None:
        commits.append(fn)
        keys.append(key)

    domain, sink, session = make(after_commit=after_commit)
    register(session, agent_name="a")
    rec = domain.create_dispatch("", DispatchSpec("r1", AgentSpec("a")), now=1.0)
    domain.step(1.0)
    job_id = rec.job_ids[0]
    answer = agent.AvailabilityResponse(job_id=job_id, available=True, participant_identity="b")
    session.on_message(frame(availability=answer), 1.5)
    session.on_message(frame(ping=agent.WorkerPing(timestamp=7)), 1.6)
    kinds = [m.WhichOneof("message") for m in sent(sink)]
    assert kinds == ["register", "availability"]  # held: not committed yet
    (release,) = commits
    release()
    kinds = [m.WhichOneof("message") for m in sent(sink)]
    assert kinds == ["register", "availability", "assignment", "pong"]  # in order
    assert sent(sink)[2].assignment.job.id == job_id
    assert keys == [job_id]  # it waits for the write its job's offer marked


def test_a_second_assignment_waits_for_its_own_commit_not_the_first_ones() -> None:
    """Found by bench faults: an assignment made while the first still
    waited went out with it, though its own write was never committed (the
    store had closed for a shutdown), and the job ran again elsewhere after
    the restart."""
    commits: list[Callable[[], None]] = []
    domain, sink, session = make(after_commit=lambda fn, key: commits.append(fn))
    register(session, agent_name="a")
    jobs = []
    for i, room in enumerate(("r1", "r2")):
        rec = domain.create_dispatch("", DispatchSpec(room, AgentSpec("a")), now=1.0 + i)
        domain.step(1.0 + i)
        jobs.append(rec.job_ids[0])
        answer = agent.AvailabilityResponse(
            job_id=jobs[-1], available=True, participant_identity=room
        )
        session.on_message(frame(availability=answer), 1.5 + i)
    first, _second = commits
    first()  # the first's commit came; the second's never will
    assigned = [m.assignment.job.id for m in sent(sink) if m.WhichOneof("message") == "assignment"]
    assert assigned == [jobs[0]]
