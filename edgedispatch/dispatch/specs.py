"""What callers ask the domain for: plain, immutable specs.

The wire layer turns a Twirp request or a worker's registration into one of
these; the domain checks it (``check()`` raises ``InvalidArgument`` with the
reason) and acts on it.  No protobuf here, so that a SIP dispatch rule or a
participant's token can ask for the same things.
"""

from __future__ import annotations

import msgspec

from edgedispatch._core.codes import RestartPolicy
from edgedispatch.errors import InvalidArgument

MAX_METADATA = 64 * 1024  #: bytes, LiveKit's default limit for metadata
MAX_ATTRIBUTES = 64 * 1024  #: bytes of keys and values together
MAX_DEPLOYMENT = 64  #: bytes

#: LiveKit's JobType numbers.
JT_ROOM, JT_PUBLISHER, JT_PARTICIPANT = 0, 1, 2


class AgentSpec(msgspec.Struct, frozen=True):
    """One agent to dispatch into a room."""

    agent_name: str = ""
    metadata: str = ""
    attributes: dict[str, str] = msgspec.field(default_factory=dict)
    restart_policy: int = RestartPolicy.ON_FAILURE  #: a RestartPolicy number
    deployment: str = ""

    def check(self) -> None:
        if self.restart_policy not in (RestartPolicy.ON_FAILURE, RestartPolicy.NEVER):
            raise InvalidArgument(f"unknown restart_policy {self.restart_policy}")
        check_deployment(self.deployment)
        check_payload(self.metadata, self.attributes)


class RoomSpec(msgspec.Struct, frozen=True):
    name: str
    empty_timeout: int = 0  #: 0: the configured default
    departure_timeout: int = 0  #: 0: the configured default
    max_participants: int = 0
    metadata: str = ""
    agents: tuple[AgentSpec, ...] = ()

    def check(self) -> None:
        if not self.name:
            raise InvalidArgument("room name is required")
        if self.empty_timeout < 0 or self.departure_timeout < 0 or self.max_participants < 0:
            raise InvalidArgument("timeouts and max_participants must be >= 0")
        check_payload(self.metadata, {})
        for agent in self.agents:
            agent.check()


class DispatchSpec(msgspec.Struct, frozen=True):
    room: str
    agent: AgentSpec

    def check(self) -> None:
        if not self.room:
            raise InvalidArgument("room is required")
        self.agent.check()


class WorkerSpec(msgspec.Struct, frozen=True):
    """A worker's registration."""

    agent_name: str = ""
    job_type: int = JT_ROOM
    deployment: str = ""
    version: str = ""
    slots: int | None = None  #: None: the configured cap for its agent name

    def check(self) -> None:
        if self.job_type not in (JT_ROOM, JT_PUBLISHER, JT_PARTICIPANT):
            raise InvalidArgument(f"unknown job type {self.job_type}")
        check_deployment(self.deployment)


def check_deployment(deployment: str) -> None:
    """LiveKit's rule for deployment names."""
    if len(deployment.encode()) > MAX_DEPLOYMENT:
        raise InvalidArgument(f"deployment must be at most {MAX_DEPLOYMENT} bytes")
    if "_" in deployment or any(c.isspace() or ord(c) < 32 for c in deployment):
        raise InvalidArgument("deployment must not contain '_', whitespace or control characters")


def check_payload(metadata: str, attributes: dict[str, str]) -> None:
    if len(metadata.encode()) > MAX_METADATA:
        raise InvalidArgument(f"metadata is over {MAX_METADATA} bytes")
    if sum(len(k.encode()) + len(v.encode()) for k, v in attributes.items()) > MAX_ATTRIBUTES:
        raise InvalidArgument(f"attributes are over {MAX_ATTRIBUTES} bytes")
