"""Rooms, dispatches and jobs as the domain keeps them.

Plain data (mutable ``msgspec.Struct``s): no protobuf, no timer handles, no
references to connections, so that a store can write them as they are and
the wire layer can render them in any protocol.  Nor do they refer to one
another in a circle, so the cyclic GC does not track them (``gc=False``):
under load the server holds tens of thousands, and walking them made each
full collection a pause of 20-65 ms.  Times are wall-clock
(``*_ns`` in nanoseconds, ``created`` in seconds), as LiveKit's messages
carry them; the domain's timers live in its deadline heap, not here.
"""

from __future__ import annotations

import msgspec

from edgedispatch._core.codes import FailReason, JobState, RestartPolicy, WaitReason
from edgedispatch.dispatch.core import AgentKey


class ParticipantRec(msgspec.Struct, kw_only=True, gc=False):
    """Someone in a room (a client, an agent, later a caller)."""

    sid: str
    identity: str
    name: str = ""
    kind: int = 0  #: LiveKit's ParticipantInfo.Kind (0 standard, 4 agent)
    metadata: str = ""
    attributes: dict[str, str] = msgspec.field(default_factory=dict)
    joined_ns: int = 0
    hidden: bool = False
    published: bool = False  #: has published a track (JT_PUBLISHER jobs start then)

    @property
    def is_agent(self) -> bool:
        return self.kind == KIND_AGENT


#: LiveKit's ParticipantInfo.Kind numbers the domain tells apart.
KIND_STANDARD, KIND_SIP, KIND_AGENT = 0, 3, 4


class RoomRec(msgspec.Struct, kw_only=True, gc=False):
    sid: str
    name: str
    tenant: str
    created: float  #: wall clock, seconds
    empty_timeout: int
    departure_timeout: int
    max_participants: int = 0
    metadata: str = ""
    dispatch_ids: list[str] = msgspec.field(default_factory=list)
    #: identity -> who is in the room now, in joining order
    participants: dict[str, ParticipantRec] = msgspec.field(default_factory=dict)
    #: Whether anyone other than an agent has joined since it opened (its
    #: empty timeout then no longer applies; the departure timeout does).
    joined: bool = False

    def humans(self) -> int:
        """Participants that keep the room open: all but agents."""
        return sum(1 for p in self.participants.values() if not p.is_agent)


class DispatchRec(msgspec.Struct, kw_only=True, gc=False):
    id: str
    agent_name: str
    room: str
    tenant: str
    metadata: str = ""
    attributes: dict[str, str] = msgspec.field(default_factory=dict)
    restart_policy: RestartPolicy = RestartPolicy.ON_FAILURE
    deployment: str = ""
    created_ns: int = 0
    implicit: bool = False  #: LiveKit's automatic dispatch to unnamed workers
    #: LiveKit's JobType: JT_ROOM (0), or one job per participant that joins
    #: (JT_PARTICIPANT, 2) or first publishes (JT_PUBLISHER, 1), whose
    #: record ``participant`` is (as it was then).
    job_type: int = 0
    participant: ParticipantRec | None = None
    deleted_ns: int = 0
    job_ids: list[str] = msgspec.field(default_factory=list)
    #: The client's X-Livekit-Request-Id: a retried CreateDispatch gets this one.
    request_id: str = ""


class JobRec(msgspec.Struct, kw_only=True, gc=False):
    id: str
    dispatch_id: str
    key: AgentKey  #: tenant, agent name, job type and deployment
    room: str  #: the room's name, in the key's tenant
    metadata: str = ""
    attributes: dict[str, str] = msgspec.field(default_factory=dict)
    state: JobState = JobState.QUEUED
    reason: FailReason = FailReason.NONE
    wait: WaitReason = WaitReason.NOT_WAITING
    worker_id: str = ""
    error: str = ""  #: what the worker reported when it failed the job
    identity: str = ""  #: the agent's participant identity, once accepted
    #: JT_PARTICIPANT / JT_PUBLISHER: the participant the job is for.
    participant: ParticipantRec | None = None
    created_ns: int = 0
    started_ns: int = 0
    ended_ns: int = 0
    updated_ns: int = 0
    #: Its dispatch is gone: the record is dropped as soon as the job ends.
    orphaned: bool = False

    @property
    def tenant(self) -> str:
        return self.key.tenant

    @property
    def agent_name(self) -> str:
        return self.key.agent_name


def job_fields(rec: JobRec, worker: str | None = None) -> dict[str, object]:
    """The ``extra`` of a log line about a job: its tenant ("" for the
    default one), room, dispatch, job, agent and its worker (``worker``, or
    the record's once it has one); ``obs.logs`` prints them as fields.
    Add to the dict what the line adds (``reason``...)."""
    return {
        "tenant": rec.key.tenant,
        "room": rec.room,
        "dispatch": rec.dispatch_id,
        "job": rec.id,
        "agent": rec.key.agent_name,
        "worker": worker or rec.worker_id or None,
    }


class Acceptance(msgspec.Struct, frozen=True):
    """Who the agent will be in the room, as the worker said when it accepted
    the job (LiveKit's AvailabilityResponse)."""

    identity: str
    name: str = ""
    metadata: str = ""
    attributes: dict[str, str] = msgspec.field(default_factory=dict)


#: Why a job ended without success, in words (the wire layer puts it in
#: LiveKit's ``JobState.error``).
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

#: Why a queued job waits, in words ({agent} is its agent name).
WAIT_TEXT = {
    WaitReason.NO_WORKERS: "waiting: no worker is registered for agent {agent!r}",
    WaitReason.ALL_BUSY: "waiting: every worker for agent {agent!r} is full, draining "
    "or over the load threshold",
    WaitReason.ALL_TRIED: "waiting: every available worker for agent {agent!r} declined it",
    WaitReason.BACKOFF: "waiting: to be offered again after a declined or unanswered offer",
}
