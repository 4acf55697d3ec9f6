"""In-memory peers for the domain: a worker link that records what the
domain asks of it, and a message sink that records what a session sends."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from edgedispatch._core.codes import FailReason
from edgedispatch.dispatch.records import Acceptance, JobRec, RoomRec


class RecordingLink:
    """A ``WorkerLink`` whose hooks record their calls.

    :param on_offer: called with each offered job (to answer it, say).
    """

    def __init__(
        self,
        tenant: str = "",
        *,
        api_key: str = "devkey",
        peer: str = "10.0.0.1",
        version: str = "1.0",
        reports_status: bool = True,
        on_offer: Callable[[JobRec], Any] | None = None,
    ) -> None:
        self.worker_id = ""
        self.tenant = tenant
        self.api_key = api_key
        self.peer = peer
        self.version = version
        self.reports_status = reports_status
        self.offers: list[str] = []
        self.assigned: list[tuple[str, Acceptance]] = []
        self.terminated: list[tuple[str, FailReason]] = []
        self.rooms: list[RoomRec] = []
        self._on_offer = on_offer

    def offer(self, job: JobRec, room: RoomRec, now: float) -> None:
        self.offers.append(job.id)
        self.rooms.append(room)
        if self._on_offer is not None:
            self._on_offer(job)

    def assign(self, job: JobRec, room: RoomRec, agent: Acceptance, now: float) -> None:
        self.assigned.append((job.id, agent))

    def terminate(self, job: JobRec, reason: FailReason, now: float) -> None:
        self.terminated.append((job.id, reason))


class RecordingSink:
    """A session's connection: keeps the messages sent and how it closed."""

    def __init__(self, peer: str = "10.0.0.1") -> None:
        self.peer = peer
        self.sent: list[bytes] = []
        self.closed: tuple[int, str] | None = None

    def send(self, data: bytes) -> None:
        assert self.closed is None, "sent after close"
        self.sent.append(data)

    def close(self, code: int, reason: str) -> None:
        if self.closed is None:
            self.closed = (code, reason)
