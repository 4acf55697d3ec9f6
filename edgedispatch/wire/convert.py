"""LiveKit's protobuf messages to and from the domain's specs and records.

The one place where domain records become ``livekit.protocol`` messages and
requests become specs, so that the domain never sees protobuf and every
protocol renders a record the same way.
"""

from __future__ import annotations

from livekit.protocol import agent, agent_dispatch, models
from livekit.protocol import room as room_pb

from edgedispatch._core.codes import FailReason, JobState, JobStatus, WorkerStatus
from edgedispatch.dispatch.compact import shrink
from edgedispatch.dispatch.records import (
    REASON_TEXT,
    WAIT_TEXT,
    Acceptance,
    DispatchRec,
    JobRec,
    ParticipantRec,
    RoomRec,
)
from edgedispatch.dispatch.specs import AgentSpec, DispatchSpec, RoomSpec, WorkerSpec

# ----------------------------------------------------------------------
# Records -> messages.

# How the core's job states read in LiveKit's JobStatus.
_STATUS = {
    JobState.QUEUED: agent.JS_PENDING,
    JobState.OFFERED: agent.JS_PENDING,
    JobState.ASSIGNED: agent.JS_RUNNING,
    JobState.RUNNING: agent.JS_RUNNING,
    JobState.ORPHANED: agent.JS_RUNNING,
    JobState.SUCCESS: agent.JS_SUCCESS,
    JobState.FAILED: agent.JS_FAILED,
    JobState.CANCELLED: agent.JS_CANCELLED,
}

_REASON = {
    FailReason.NO_CAPACITY: agent.JSR_NO_CAPACITY,
    FailReason.ROOM_CLOSED: agent.JSR_ROOM_CLOSED,
    FailReason.CANCELLED: agent.JSR_DISPATCH_DELETED,
}


#: Rendered rooms by sid, with the metadata they were rendered with: a
#: room's other fields never change, and each of its jobs' offers,
#: assignments and listings carries it.  A room's entry goes when it closes
#: (``forget_room``): entries left for closed rooms were long-lived objects
#: made in the middle of a churn of rooms, each pinning a pymalloc arena
#: that the churn's other objects had emptied (bench churn: 2,700 of them
#: kept ~35 MB of arenas after 100,000 rooms).  The bound is a backstop.
_ROOMS: dict[str, tuple[str, models.Room]] = {}
_ROOMS_MAX = 4096


def room_proto(room: RoomRec) -> models.Room:
    """The Room message of ``room``.  Shared: copy it (as a field of another
    message, say), do not change it."""
    cached = _ROOMS.get(room.sid)
    if cached is not None and cached[0] == room.metadata:
        return cached[1]
    if not room.sid:  # a stand-in for a room closed in this step: not kept
        return _render_room(room)
    if len(_ROOMS) >= _ROOMS_MAX:
        _ROOMS.clear()
    msg = _render_room(room)
    _ROOMS[room.sid] = (room.metadata, msg)
    return msg


def forget_room(room: RoomRec) -> None:
    """``room`` closed: its message is not wanted again."""
    if _ROOMS.pop(room.sid, None) is not None:
        shrink(_ROOMS)


def _render_room(room: RoomRec) -> models.Room:
    return models.Room(
        sid=room.sid,
        name=room.name,
        empty_timeout=room.empty_timeout,
        departure_timeout=room.departure_timeout,
        max_participants=room.max_participants,
        creation_time=int(room.created),
        creation_time_ms=int(room.created * 1000),
        metadata=room.metadata,
    )


def wait_text(job: JobRec) -> str:
    """Why a queued job waits, in words ("" if it does not wait).  Not put
    in LiveKit's ``JobState.error``, which clients read as a failure: a
    waiting job is JS_PENDING there, and edgedispatch's own
    ``DispatchService/ListJobWaits`` says why."""
    if job.state == JobState.QUEUED and job.wait in WAIT_TEXT:
        return WAIT_TEXT[job.wait].format(agent=job.key.agent_name)
    return ""


def job_state_proto(job: JobRec) -> agent.JobState:
    # A retried job keeps why its last attempt ended (with JSR_RETRYING).
    error = job.error or REASON_TEXT.get(job.reason, "")
    reason = _REASON.get(job.reason, agent.JSR_UNSPECIFIED)
    if job.state == JobState.QUEUED and job.reason != FailReason.NONE:
        reason = agent.JSR_RETRYING
    return agent.JobState(
        status=_STATUS[job.state],
        error=error,
        started_at=job.started_ns,
        ended_at=job.ended_ns,
        updated_at=job.updated_ns,
        participant_identity=job.identity,
        worker_id=job.worker_id,
        reason=reason,
    )


def job_proto(job: JobRec, room: models.Room | RoomRec, *, with_state: bool = True) -> agent.Job:
    """The Job message workers get and ListDispatch shows.  ``room`` may be
    rendered once for many jobs of one room."""
    out = agent.Job(
        id=job.id,
        dispatch_id=job.dispatch_id,
        type=job.key.job_type,  # type: ignore[arg-type]
        room=room if isinstance(room, models.Room) else room_proto(room),
        metadata=job.metadata,
        agent_name=job.key.agent_name,
        deployment=job.key.deployment,
        attributes=job.attributes,
    )
    if job.participant is not None:
        out.participant.CopyFrom(participant_proto(job.participant))
    if with_state:
        out.state.CopyFrom(job_state_proto(job))
    return out


def participant_proto(p: ParticipantRec) -> models.ParticipantInfo:
    """What the domain knows of a participant, as LiveKit's ParticipantInfo
    (a live room's signal session keeps the fuller one)."""
    return models.ParticipantInfo(
        sid=p.sid,
        identity=p.identity,
        name=p.name,
        kind=p.kind,  # type: ignore[arg-type]
        metadata=p.metadata,
        attributes=p.attributes,
        state=models.ParticipantInfo.ACTIVE,
        joined_at=p.joined_ns // 1_000_000_000,
        joined_at_ms=p.joined_ns // 1_000_000,
        is_publisher=p.published,
    )


def dispatch_proto(
    rec: DispatchRec, jobs: list[JobRec], room: RoomRec | None
) -> agent_dispatch.AgentDispatch:
    room_msg = room_proto(room) if room is not None else models.Room(name=rec.room)
    return agent_dispatch.AgentDispatch(
        id=rec.id,
        agent_name=rec.agent_name,
        room=rec.room,
        metadata=rec.metadata,
        restart_policy=rec.restart_policy,  # type: ignore[arg-type]
        deployment=rec.deployment,
        attributes=rec.attributes,
        state=agent_dispatch.AgentDispatchState(
            jobs=[job_proto(j, room_msg) for j in jobs],
            created_at=rec.created_ns,
            deleted_at=rec.deleted_ns,
        ),
    )


# ----------------------------------------------------------------------
# Messages -> specs.


def agent_spec(
    msg: agent_dispatch.RoomAgentDispatch | agent_dispatch.CreateAgentDispatchRequest,
) -> AgentSpec:
    return AgentSpec(
        agent_name=msg.agent_name,
        metadata=msg.metadata,
        attributes=dict(msg.attributes),
        restart_policy=int(msg.restart_policy),
        deployment=msg.deployment,
    )


def room_spec(req: room_pb.CreateRoomRequest) -> RoomSpec:
    return RoomSpec(
        name=req.name,
        empty_timeout=req.empty_timeout,
        departure_timeout=req.departure_timeout,
        max_participants=req.max_participants,
        metadata=req.metadata,
        agents=tuple(agent_spec(a) for a in req.agents),
    )


def dispatch_spec(req: agent_dispatch.CreateAgentDispatchRequest) -> DispatchSpec:
    return DispatchSpec(room=req.room, agent=agent_spec(req))


def worker_spec(req: agent.RegisterWorkerRequest) -> WorkerSpec:
    return WorkerSpec(
        agent_name=req.agent_name,
        job_type=int(req.type),
        deployment=req.deployment,
        version=req.version,
    )


def worker_status(msg: agent.UpdateWorkerStatus) -> WorkerStatus | None:
    """None when the update carries no status (only a load)."""
    if not msg.HasField("status"):
        return None
    return WorkerStatus.FULL if msg.status == agent.WS_FULL else WorkerStatus.AVAILABLE


def acceptance(msg: agent.AvailabilityResponse) -> Acceptance:
    return Acceptance(
        identity=msg.participant_identity or f"agent-{msg.job_id}",
        name=msg.participant_name,
        metadata=msg.participant_metadata,
        attributes=dict(msg.participant_attributes),
    )


#: LiveKit's JobStatus -> the core's, for the statuses a worker may report.
JOB_STATUS = {
    agent.JS_PENDING: JobStatus.PENDING,
    agent.JS_RUNNING: JobStatus.RUNNING,
    agent.JS_SUCCESS: JobStatus.SUCCESS,
    agent.JS_FAILED: JobStatus.FAILED,
}
