"""Rooms, dispatches and jobs as the server keeps them, and their LiveKit
protobuf forms.  Plain data: the rules live in ``dispatcher.py``."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from livekit.protocol import agent, agent_dispatch, models

from edgedispatch._core.codes import FailReason, JobState, WaitReason
from edgedispatch.dispatch.core import AgentKey

MAX_METADATA = 64 * 1024  # bytes, LiveKit's default limit for metadata
MAX_ATTRIBUTES = 64 * 1024  # bytes of keys and values together


@dataclass(eq=False)
class RoomRec:
    sid: str
    name: str
    tenant: str
    created: float  # wall clock, seconds
    empty_timeout: int
    departure_timeout: int
    max_participants: int = 0
    metadata: str = ""
    dispatch_ids: list[str] = field(default_factory=list)
    close_timer: asyncio.TimerHandle | None = None

    def proto(self) -> models.Room:
        return models.Room(
            sid=self.sid,
            name=self.name,
            empty_timeout=self.empty_timeout,
            departure_timeout=self.departure_timeout,
            max_participants=self.max_participants,
            creation_time=int(self.created),
            creation_time_ms=int(self.created * 1000),
            metadata=self.metadata,
        )


@dataclass(eq=False)
class DispatchRec:
    id: str
    agent_name: str
    room: str
    tenant: str
    metadata: str
    attributes: dict[str, str]
    restart_policy: int
    deployment: str
    created_ns: int
    implicit: bool = False  # LiveKit's automatic dispatch to unnamed workers
    deleted_ns: int = 0
    job_ids: list[str] = field(default_factory=list)

    def proto(self, jobs: list[agent.Job]) -> agent_dispatch.AgentDispatch:
        return agent_dispatch.AgentDispatch(
            id=self.id,
            agent_name=self.agent_name,
            room=self.room,
            metadata=self.metadata,
            restart_policy=self.restart_policy,  # type: ignore[arg-type]
            deployment=self.deployment,
            attributes=self.attributes,
            state=agent_dispatch.AgentDispatchState(
                jobs=jobs, created_at=self.created_ns, deleted_at=self.deleted_ns
            ),
        )


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

REASON_TEXT = {
    FailReason.NONE: "",
    FailReason.NO_CAPACITY: "no worker took the job before its queue deadline",
    FailReason.MAX_ATTEMPTS: "offered the maximum number of times; no worker accepted",
    FailReason.WORKER_LOST: "its worker disconnected and did not claim it back",
    FailReason.JOB_ERROR: "the worker reported the job failed",
    FailReason.CANCELLED: "dispatch deleted",
    FailReason.REJECTED: "a worker rejected it and asked that it not run elsewhere",
    FailReason.ROOM_CLOSED: "room closed",
    FailReason.MAX_DURATION: "ran longer than dispatch.max_job_duration",
}

WAIT_TEXT = {
    WaitReason.NO_WORKERS: "waiting: no worker is registered for agent {agent!r}",
    WaitReason.ALL_BUSY: "waiting: every worker for agent {agent!r} is full, draining "
    "or over the load threshold",
    WaitReason.ALL_TRIED: "waiting: every available worker for agent {agent!r} declined it",
    WaitReason.BACKOFF: "waiting: to be offered again after a declined or unanswered offer",
}


@dataclass(eq=False)
class JobRec:
    job: agent.Job  # what workers get in AvailabilityRequest and JobAssignment
    key: AgentKey
    dispatch_id: str
    state: JobState = JobState.QUEUED
    reason: FailReason = FailReason.NONE
    wait: WaitReason = WaitReason.NOT_WAITING
    worker_id: str = ""
    error: str = ""
    started_ns: int = 0
    ended_ns: int = 0
    updated_ns: int = 0
    identity: str = ""
    duration_timer: asyncio.TimerHandle | None = None

    @property
    def id(self) -> str:
        return self.job.id

    def state_proto(self) -> agent.JobState:
        error = self.error or REASON_TEXT.get(self.reason, "")
        if self.state == JobState.QUEUED and self.wait in WAIT_TEXT:
            error = WAIT_TEXT[self.wait].format(agent=self.key.agent_name)
        reason = _REASON.get(self.reason, agent.JSR_UNSPECIFIED)
        if self.state == JobState.QUEUED and self.reason != FailReason.NONE:
            reason = agent.JSR_RETRYING
        return agent.JobState(
            status=_STATUS[self.state],
            error=error,
            started_at=self.started_ns,
            ended_at=self.ended_ns,
            updated_at=self.updated_ns,
            participant_identity=self.identity,
            worker_id=self.worker_id,
            reason=reason,
        )

    def proto(self) -> agent.Job:
        out = agent.Job()
        out.CopyFrom(self.job)
        out.state.CopyFrom(self.state_proto())
        return out


def check_deployment(deployment: str) -> str | None:
    """LiveKit's rule for deployment names; an error text or None."""
    if len(deployment.encode()) > 64:
        return "deployment must be at most 64 bytes"
    if "_" in deployment or any(c.isspace() or ord(c) < 32 for c in deployment):
        return "deployment must not contain '_', whitespace or control characters"
    return None


def check_payload(metadata: str, attributes: dict[str, str]) -> str | None:
    if len(metadata.encode()) > MAX_METADATA:
        return f"metadata is over {MAX_METADATA} bytes"
    if sum(len(k.encode()) + len(v.encode()) for k, v in attributes.items()) > MAX_ATTRIBUTES:
        return f"attributes are over {MAX_ATTRIBUTES} bytes"
    return None
