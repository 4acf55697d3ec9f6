"""A LiveKit agent worker in a few lines: the real protobuf protocol over a
real WebSocket, with scripted answers.  Tests use it where a real SDK worker
would be slow or could not misbehave on cue; ``bench dispatch`` runs
thousands of them."""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Callable
from typing import Any

import jwt
from livekit.protocol import agent
from websockets.asyncio.client import ClientConnection, connect


def worker_token(api_key: str, secret: str, ttl: int = 6 * 3600, **video: Any) -> str:
    now = int(time.time())
    grants = {"agent": True, **video}
    return jwt.encode(
        {"iss": api_key, "nbf": now, "exp": now + ttl, "video": grants}, secret, algorithm="HS256"
    )


def status_update(status: int, load: float, job_count: int) -> agent.WorkerMessage:
    msg = agent.WorkerMessage()
    msg.update_worker.status = status  # type: ignore[assignment]
    msg.update_worker.load = load
    msg.update_worker.job_count = job_count
    return msg


def job_update(job_id: str, status: int, error: str = "") -> agent.WorkerMessage:
    msg = agent.WorkerMessage()
    msg.update_job.job_id = job_id
    msg.update_job.status = status  # type: ignore[assignment]
    msg.update_job.error = error
    return msg


def availability(
    job_id: str, available: bool, agent_name: str, terminate: bool = False
) -> agent.WorkerMessage:
    """An AvailabilityResponse; an accepted job's participant as
    livekit-agents names it."""
    msg = agent.WorkerMessage()
    msg.availability.job_id = job_id
    msg.availability.available = available
    msg.availability.terminate = terminate
    if available:
        msg.availability.participant_identity = f"agent-{job_id}"
        msg.availability.participant_attributes["lk.agent.name"] = agent_name
    return msg


class FakeWorker:
    """Registers, answers availability requests, and reports job status.

    :param accept: called with each AvailabilityRequest's job; return True to
        accept, False to reject, None to stay silent (a worker that never answers).
    :param report: send JS_RUNNING after an assignment (a Python worker
        does; a Node worker does not).
    """

    #: Every worker not closed yet, so a test can close what it left open.
    live: weakref.WeakSet[FakeWorker] = weakref.WeakSet()

    def __init__(
        self,
        url: str,
        api_key: str = "devkey",
        secret: str = "secret",
        agent_name: str = "",
        job_type: int = agent.JT_ROOM,
        accept: Callable[[agent.Job], bool | None] = lambda job: True,
        report: bool = True,
        version: str = "fake-1.0",
    ) -> None:
        self.url = url.replace("http://", "ws://").replace("https://", "wss://").rstrip("/")
        self.api_key, self.secret = api_key, secret
        self.agent_name, self.job_type = agent_name, job_type
        self.accept, self.report, self.version = accept, report, version
        self.worker_id = ""
        self.ws: ClientConnection | None = None
        self.received: list[agent.ServerMessage] = []
        self.assigned: dict[str, agent.JobAssignment] = {}
        self.terminated: list[str] = []
        self.on_assignment: Callable[[agent.JobAssignment], None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        FakeWorker.live.add(self)

    async def connect(self, **register: Any) -> str:
        token = worker_token(self.api_key, self.secret)
        self.ws = await connect(
            f"{self.url}/agent",
            additional_headers={"Authorization": f"Bearer {token}"},
            max_size=None,
            compression=None,
            ping_interval=None,
        )
        msg = agent.WorkerMessage()
        msg.register.agent_name = self.agent_name
        msg.register.type = self.job_type  # type: ignore[assignment]
        msg.register.version = self.version
        for k, v in register.items():
            setattr(msg.register, k, v)
        await self.ws.send(msg.SerializeToString())
        first = agent.ServerMessage.FromString(await self.ws.recv())  # type: ignore[arg-type]
        assert first.WhichOneof("message") == "register", first
        self.worker_id = first.register.worker_id
        self._reader = asyncio.create_task(self._read())
        return self.worker_id

    async def send(self, msg: agent.WorkerMessage) -> None:
        assert self.ws is not None
        await self.ws.send(msg.SerializeToString())

    async def update(
        self, status: int = agent.WS_AVAILABLE, load: float = 0.0, job_count: int = 0
    ) -> None:
        await self.send(status_update(status, load, job_count))

    async def job_status(self, job_id: str, status: int, error: str = "") -> None:
        await self.send(job_update(job_id, status, error))

    async def answer(self, job_id: str, available: bool, terminate: bool = False) -> None:
        await self.send(availability(job_id, available, self.agent_name, terminate))

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    async def close(self) -> None:
        FakeWorker.live.discard(self)
        if self._reader is not None:
            self._reader.cancel()
        if self.ws is not None:
            await self.ws.close()

    @classmethod
    async def close_all(cls) -> None:
        for worker in list(cls.live):
            await worker.close()

    def abort(self) -> None:
        """Drop the TCP connection without a closing handshake (a crash)."""
        if self._reader is not None:
            self._reader.cancel()
        if self.ws is not None:
            self.ws.transport.abort()

    async def _read(self) -> None:
        assert self.ws is not None
        try:
            async for data in self.ws:
                msg = agent.ServerMessage.FromString(data)  # type: ignore[arg-type]
                self.received.append(msg)
                await self._handle(msg)
                self._changed.set()
        except Exception:
            pass
        finally:
            self._changed.set()

    async def _handle(self, msg: agent.ServerMessage) -> None:
        kind = msg.WhichOneof("message")
        if kind == "availability":
            verdict = self.accept(msg.availability.job)
            if verdict is not None:
                await self.answer(msg.availability.job.id, verdict)
        elif kind == "assignment":
            self.assigned[msg.assignment.job.id] = msg.assignment
            if self.on_assignment is not None:
                self.on_assignment(msg.assignment)
            if self.report:
                await self.job_status(msg.assignment.job.id, agent.JS_RUNNING)
        elif kind == "termination":
            self.terminated.append(msg.termination.job_id)
            if self.report:
                await self.job_status(msg.termination.job_id, agent.JS_SUCCESS)
