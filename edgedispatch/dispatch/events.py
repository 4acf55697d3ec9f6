"""Domain events: one for each change of the domain's state.

Subscribers (the agent manager today; the store and the metrics later) get
each event synchronously, in the order the changes happened, during the
call that made the change.  A subscriber must not call back into the domain
from its handler (the domain is in the middle of a step); it may schedule
work for later.  The records carried are the live ones: read them in the
handler, copy what must outlive it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import msgspec

from edgedispatch._core.codes import JobState
from edgedispatch.dispatch.core import AgentKey
from edgedispatch.dispatch.records import DispatchRec, JobRec, RoomRec

log = logging.getLogger("edgedispatch.dispatch")


class RoomOpened(msgspec.Struct, frozen=True):
    room: RoomRec


class RoomClosed(msgspec.Struct, frozen=True):
    room: RoomRec
    reason: str  #: "deleted" or "empty timeout"


class DispatchCreated(msgspec.Struct, frozen=True):
    dispatch: DispatchRec


class DispatchDeleted(msgspec.Struct, frozen=True):
    dispatch: DispatchRec


class JobChanged(msgspec.Struct, frozen=True):
    """``job.state`` changed from ``before``; for a new job ``before`` is None."""

    job: JobRec
    before: JobState | None


class JobForgotten(msgspec.Struct, frozen=True):
    """The ended job's record was dropped (its dispatch is gone)."""

    job: JobRec


class WorkerRegistered(msgspec.Struct, frozen=True):
    worker_id: str
    key: AgentKey
    slots: int


class WorkerLost(msgspec.Struct, frozen=True):
    worker_id: str
    key: AgentKey
    held_jobs: int  #: assigned or running when it went


DomainEvent = (
    RoomOpened
    | RoomClosed
    | DispatchCreated
    | DispatchDeleted
    | JobChanged
    | JobForgotten
    | WorkerRegistered
    | WorkerLost
)

Subscriber = Callable[[DomainEvent], None]


class EventBus:
    """Delivers each event to every subscriber, in subscription order.  A
    subscriber that raises is logged; the others still get the event, and
    the domain goes on."""

    __slots__ = ("_subscribers",)

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.append(subscriber)

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.remove(subscriber)

    @property
    def active(self) -> bool:
        """Whether anyone listens (callers skip building events otherwise)."""
        return bool(self._subscribers)

    def emit(self, event: DomainEvent) -> None:
        for subscriber in self._subscribers:
            try:
                subscriber(event)
            except Exception:
                log.exception("a subscriber failed on %s", type(event).__name__)


__all__ = [
    "DispatchCreated",
    "DispatchDeleted",
    "DomainEvent",
    "EventBus",
    "JobChanged",
    "JobForgotten",
    "RoomClosed",
    "RoomOpened",
    "Subscriber",
    "WorkerLost",
    "WorkerRegistered",
]
