"""Domain events: one for each change of the domain's state.

Subscribers (the agent manager today; the store and the metrics later) get
each event synchronously, in the order the changes happened, during the
call that made the change.  A subscriber names the kinds it wants, and an
event nobody wants is not even built: the emitter checks ``kind in
bus.wanted`` first (a set lookup, on every job's every change).  A
subscriber must not call back into the domain from its handler (the domain
is in the middle of a step); it may schedule work for later.  The records
carried are the live ones: read them in the handler, copy what must
outlive it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import msgspec

from edgedispatch._core.codes import JobState
from edgedispatch.dispatch.core import AgentKey
from edgedispatch.dispatch.records import DispatchRec, JobRec, ParticipantRec, RoomRec

log = logging.getLogger("edgedispatch.dispatch")


class RoomOpened(msgspec.Struct, frozen=True):
    room: RoomRec


class RoomClosed(msgspec.Struct, frozen=True):
    room: RoomRec
    reason: str  #: "deleted", "empty timeout" or "departure timeout"


class ParticipantJoined(msgspec.Struct, frozen=True):
    room: RoomRec
    participant: ParticipantRec
    #: The older session of the same identity it replaced, if any.
    replaced: ParticipantRec | None = None


class ParticipantLeft(msgspec.Struct, frozen=True):
    room: RoomRec
    participant: ParticipantRec


class DispatchCreated(msgspec.Struct, frozen=True):
    dispatch: DispatchRec


class DispatchDeleted(msgspec.Struct, frozen=True):
    dispatch: DispatchRec


class JobChanged(msgspec.Struct, frozen=True):
    """``job.state`` changed from ``before``; for a new job ``before`` is None."""

    job: JobRec
    before: JobState | None


class JobWaiting(msgspec.Struct, frozen=True):
    """The job is queued because no worker of its agent is connected
    (``job.wait`` NO_WORKERS) or none has room (ALL_BUSY): capacity is
    wanted.  (It also gets its ``JobChanged``.)"""

    job: JobRec


class JobForgotten(msgspec.Struct, frozen=True):
    """The ended job's record was dropped (its dispatch is gone)."""

    job: JobRec


class WorkerRegistered(msgspec.Struct, frozen=True):
    worker_id: str
    key: AgentKey
    slots: int
    #: The API key it registered with: an agent server edgedispatch runs
    #: has one of its own, which tells its supervisor the worker is its.
    api_key: str


class WorkerLost(msgspec.Struct, frozen=True):
    worker_id: str
    key: AgentKey
    held_jobs: int  #: assigned or running when it went
    api_key: str  #: the one it registered with


DomainEvent = (
    RoomOpened
    | RoomClosed
    | ParticipantJoined
    | ParticipantLeft
    | DispatchCreated
    | DispatchDeleted
    | JobChanged
    | JobWaiting
    | JobForgotten
    | WorkerRegistered
    | WorkerLost
)

Subscriber = Callable[[DomainEvent], None]


class EventBus:
    """Delivers each event to the subscribers of its kind, in subscription
    order.  A subscriber that raises is logged; the others still get the
    event, and the domain goes on."""

    __slots__ = ("_subscribers", "wanted")

    def __init__(self) -> None:
        self._subscribers: dict[type[DomainEvent], list[Subscriber]] = {}
        #: The kinds someone subscribed to: emitters build only these.
        self.wanted: frozenset[type[DomainEvent]] = frozenset()

    def subscribe(self, subscriber: Subscriber, *kinds: type[DomainEvent]) -> None:
        """``subscriber(event)`` for every event of ``kinds`` (all if none)."""
        for kind in kinds or ALL_KINDS:
            self._subscribers.setdefault(kind, []).append(subscriber)
        self.wanted = frozenset(self._subscribers)

    def emit(self, event: DomainEvent) -> None:
        for subscriber in self._subscribers.get(type(event), ()):
            try:
                subscriber(event)
            except Exception:
                log.exception("a subscriber failed on %s", type(event).__name__)


ALL_KINDS: tuple[type[DomainEvent], ...] = (
    RoomOpened,
    RoomClosed,
    ParticipantJoined,
    ParticipantLeft,
    DispatchCreated,
    DispatchDeleted,
    JobChanged,
    JobWaiting,
    JobForgotten,
    WorkerRegistered,
    WorkerLost,
)


__all__ = [
    "DispatchCreated",
    "DispatchDeleted",
    "DomainEvent",
    "EventBus",
    "JobChanged",
    "JobForgotten",
    "JobWaiting",
    "ParticipantJoined",
    "ParticipantLeft",
    "RoomClosed",
    "RoomOpened",
    "Subscriber",
    "WorkerLost",
    "WorkerRegistered",
]
