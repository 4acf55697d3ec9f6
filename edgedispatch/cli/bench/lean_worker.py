"""One simulated agent worker for ``bench dispatch``, as cheap as it can be:
an asyncio protocol on ``websockets``' sans-IO client, each message handled
in the transport's callback and answered in the same pass.

The bench's load shares the machine with the server it measures (and
beside calls, with their media): every microsecond it spends is one the
server waits for a core.  ``FakeWorker`` (the tests' worker, on
``websockets``' asyncio client) took ~170 µs of CPU per dispatch: a reader
task, a queue and a task per answer.  This takes what the protocol needs
and no more; the tests keep ``FakeWorker``, which records everything.

It speaks the same protocol: register, answer AvailabilityRequests, report
JS_RUNNING on an assignment and JS_SUCCESS when the job ends, load reports;
``websockets`` answers the server's pings.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

from livekit.protocol import agent
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from edgedispatch._testbase.fake_worker import availability, job_update, status_update

#: (worker, job) -> accept it?
Accept = Callable[["LeanWorker", agent.Job], bool]
#: (worker, assignment) on each JobAssignment
Assigned = Callable[["LeanWorker", agent.JobAssignment], None]


class LeanWorker(asyncio.Protocol):
    """:param url: the server's ``ws://host:port``.
    :param token: the worker's access token (an ``agent`` grant)."""

    def __init__(
        self, url: str, token: str, agent_name: str, accept: Accept, assigned: Assigned
    ) -> None:
        self._ws = ClientProtocol(parse_uri(f"{url.rstrip('/')}/agent"), max_size=None)
        self._token = token
        self._agent_name = agent_name
        self._accept, self._assigned = accept, assigned
        self._transport: asyncio.Transport | None = None
        #: Set with the worker id once registered, or with why not.
        self.registered: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.running = 0  # jobs assigned and not ended

    # The transport's callbacks --------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport's subclasses.
        self._transport = cast(asyncio.Transport, transport)
        request = self._ws.connect()
        request.headers["Authorization"] = f"Bearer {self._token}"
        self._ws.send_request(request)
        self._flush()

    def data_received(self, data: bytes) -> None:
        self._ws.receive_data(data)
        for event in self._ws.events_received():
            if isinstance(event, Response):
                if event.status_code != 101:
                    self._fail(f"handshake refused: {event.status_code}")
                    return
                msg = agent.WorkerMessage()
                msg.register.agent_name = self._agent_name
                msg.register.type = agent.JT_ROOM
                msg.register.version = "bench-1.0"
                self._send(msg)
            elif isinstance(event, Frame) and event.opcode == Opcode.BINARY:
                self._on_message(agent.ServerMessage.FromString(bytes(event.data)))
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._fail(f"connection lost: {exc}")

    # The protocol -------------------------------------------------------

    def _on_message(self, msg: agent.ServerMessage) -> None:
        kind = msg.WhichOneof("message")
        if kind == "availability":
            job = msg.availability.job
            self._send(availability(job.id, self._accept(self, job), self._agent_name))
        elif kind == "assignment":
            self.running += 1
            self._assigned(self, msg.assignment)
            self._send(job_update(msg.assignment.job.id, agent.JS_RUNNING))
        elif kind == "termination":
            self._send(job_update(msg.termination.job_id, agent.JS_SUCCESS))
        elif kind == "register" and not self.registered.done():
            self.registered.set_result(msg.register.worker_id)

    def job_status(self, job_id: str, status: int) -> None:
        self.send(job_update(job_id, status))

    def update(self, status: int, load: float, job_count: int) -> None:
        self.send(status_update(status, load, job_count))

    def send(self, msg: agent.WorkerMessage) -> None:
        """Send at once (outside the transport's callbacks)."""
        self._send(msg)
        self._flush()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _send(self, msg: agent.WorkerMessage) -> None:
        """Queue: written by the next ``_flush``."""
        self._ws.send_binary(msg.SerializeToString())

    def _flush(self) -> None:
        transport = self._transport
        if transport is None:
            return
        for chunk in self._ws.data_to_send():
            if chunk:
                transport.write(chunk)
            else:  # the protocol says: close the TCP connection
                transport.close()

    def _fail(self, why: str) -> None:
        if not self.registered.done():
            self.registered.set_exception(ConnectionError(why))
