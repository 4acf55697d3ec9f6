"""One agent worker's connection at ``/agent``: LiveKit's worker protocol.

Sans-IO: ``on_message(data, now)`` takes one WebSocket message, and what
the session says goes out through its ``MessageSink`` (``send``, ``close``).
Frames are binary protobuf: ``WorkerMessage`` in, ``ServerMessage`` out.
The session is the domain's ``WorkerLink`` for this worker, and the adapter
that steps the domain once after each message.

The first message must be ``register``, within REGISTER_TIMEOUT (the
session's ``next_deadline``), and the register response is the first thing
we send (a Node worker dies on any other first frame).  A frame that is not
a valid ``WorkerMessage`` closes this connection with a reason; other
workers are not affected.
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any, Protocol

from google.protobuf.message import DecodeError
from livekit.protocol import agent, models

from edgedispatch._core.codes import FailReason
from edgedispatch._version import __version__
from edgedispatch.dispatch import ids
from edgedispatch.dispatch.domain import Domain
from edgedispatch.dispatch.records import Acceptance, JobRec, RoomRec
from edgedispatch.dispatch.specs import JT_PUBLISHER, JT_ROOM, RoomSpec
from edgedispatch.errors import EdgeDispatchError
from edgedispatch.wire import convert, tokens
from edgedispatch.wire.http import CloseCode

log = logging.getLogger("edgedispatch.worker")

REGISTER_TIMEOUT = 10.0  # LiveKit's RegisterTimeout
#: SimulateJob jobs a worker may leave unanswered; older ones are forgotten.
SIMULATED_MAX = 64
PROTOCOL = 17  # LiveKit's signal protocol version we speak
AGENT_PROTOCOL = 1


class MessageSink(Protocol):
    """What a session needs of its connection."""

    peer: str

    def send(self, data: bytes) -> None: ...

    def close(self, code: int, reason: str) -> None: ...


class WorkerSession:
    """Implements ``dispatch.workers.WorkerLink`` (for the domain) and the
    message handler of ``net.ws`` (for the connection).

    :param secret: the secret of ``api_key``, which signs the agents' room
        tokens (LiveKit's dev re-signing expects the worker's own key).
    :param public_url: JobAssignment.url; empty: the worker's own LIVEKIT_URL.
    """

    def __init__(
        self,
        sink: MessageSink,
        domain: Domain,
        *,
        api_key: str,
        secret: str,
        tenant: str,
        public_url: str,
        now: float,
        after_commit: Callable[[Callable[[], None], str], None] | None = None,
    ) -> None:
        self._sink = sink
        self._after_commit = after_commit
        # Frames held back while an assignment waits for the store's commit
        # (``_send_when_durable``), in order, each [frame, ready]: a frame
        # goes once it and every frame before it are ready.
        self._outbox: deque[list[Any]] = deque()
        self._domain = domain
        self._secret = secret
        self._public_url = public_url
        self.api_key = api_key
        self.tenant = tenant
        self.peer = sink.peer
        self.worker_id = ""
        self.version = ""
        self.reports_status = False
        self.permissions: models.ParticipantPermission | None = None
        self._agent_name = ""
        # The Job message of the last offer, for its assignment (an accept
        # most often answers the offer just made).
        self._offered: tuple[str, agent.Job] | None = None
        self._register_by: float | None = now + REGISTER_TIMEOUT
        # SimulateJob's jobs, outside the scheduler (as in LiveKit), until
        # the worker answers: bounded, and gone with the connection.
        self._simulated: OrderedDict[str, agent.Job] = OrderedDict()

    # WorkerLink ---------------------------------------------------------

    def offer(self, job: JobRec, room: RoomRec, now: float) -> None:
        out = agent.ServerMessage()
        msg = out.availability.job
        msg.MergeFrom(convert.job_proto(job, room, with_state=False))
        self._offered = (job.id, msg)  # the assignment that follows reuses it
        msg.state.status = agent.JS_RUNNING
        msg.state.worker_id = self.worker_id
        msg.state.updated_at = msg.state.started_at = self._domain.wall.ns(now)
        self._send(out)

    def assign(self, job: JobRec, room: RoomRec, agent_: Acceptance, now: float) -> None:
        offered = self._offered
        self._offered = None
        if offered is not None and offered[0] == job.id:
            msg = offered[1]  # the offer's Job: only its state differs
            msg.state.CopyFrom(convert.job_state_proto(job))
        else:
            msg = convert.job_proto(job, room)
        self._send_assignment(msg, agent_, now, durable=True)

    def terminate(self, job: JobRec, reason: FailReason, now: float) -> None:
        self._send(agent.ServerMessage(termination=agent.JobTermination(job_id=job.id)))

    def _send_assignment(
        self, job: agent.Job, who: Acceptance, now: float, durable: bool = False
    ) -> None:
        msg = agent.ServerMessage()
        msg.assignment.job.CopyFrom(job)
        msg.assignment.token = tokens.agent_token(
            api_key=self.api_key,
            secret=self._secret,
            now=self._domain.wall(now),
            room=job.room.name,
            identity=who.identity,
            name=who.name,
            metadata=who.metadata,
            attributes=who.attributes,
            agent_name=job.agent_name,
            permissions=self.permissions,
        )
        if self._public_url:
            msg.assignment.url = self._public_url
        if durable and self._after_commit is not None:
            self._send_when_durable(msg)
        else:
            self._send(msg)

    def _send_when_durable(self, msg: agent.ServerMessage) -> None:
        """A JobAssignment goes out once the store has committed that the
        job is this worker's: the offer to it, which a restarted server
        leaves to this worker to claim back (``store.journal``).  Sent
        before, a crash between the two would leave the job queued in the
        store, to be offered again after the restart while this worker runs
        it: twice at once.  Frames that follow wait behind it, so none
        overtakes it."""
        assert self._after_commit is not None
        entry: list[Any] = [msg.SerializeToString(), False]
        self._outbox.append(entry)

        def committed() -> None:
            # Its own commit: an assignment queued behind an earlier one is
            # not released with it (its write may not be in that commit;
            # bench faults saw one made during a shutdown ride along).
            entry[1] = True
            self._release()

        # Keyed by the job: it waits for the write that named this worker
        # (the offer's), not for the rest of this pass.
        self._after_commit(committed, msg.assignment.job.id)

    def _release(self) -> None:
        outbox = self._outbox
        while outbox and outbox[0][1]:
            self._sink.send(outbox.popleft()[0])

    def _send(self, msg: agent.ServerMessage) -> None:
        if self._outbox:
            self._outbox.append([msg.SerializeToString(), True])
        else:
            self._sink.send(msg.SerializeToString())

    # The connection's message handler -------------------------------------

    def on_message(self, data: bytes, now: float) -> None:
        msg = agent.WorkerMessage()
        try:
            msg.ParseFromString(data)
        except DecodeError:
            self._close(CloseCode.INVALID_PAYLOAD, "not a protobuf WorkerMessage")
            return
        kind = msg.WhichOneof("message")
        try:
            self._handle(kind, msg, now)
        except EdgeDispatchError as exc:
            self._close(CloseCode.POLICY_VIOLATION, f"bad {kind}: {exc.msg or exc}")
        except Exception:
            log.exception("worker message failed", extra=self._fields())
            self._close(CloseCode.INTERNAL_ERROR, "internal error")
        finally:
            self._domain.step(now)

    def on_closed(self, code: int, reason: str, now: float) -> None:
        self._register_by = None
        if self.worker_id:
            self._domain.worker_closed(self, now)
            self._domain.step(now)

    def next_deadline(self) -> float | None:
        return self._register_by

    def on_timer(self, now: float) -> None:
        if self._register_by is not None and now >= self._register_by:
            self._register_by = None
            self._close(CloseCode.POLICY_VIOLATION, f"no register within {REGISTER_TIMEOUT:g} s")

    # ------------------------------------------------------------------

    def _handle(self, kind: str | None, msg: agent.WorkerMessage, now: float) -> None:
        d = self._domain
        if not self.worker_id:
            if kind != "register":
                self._close(CloseCode.POLICY_VIOLATION, f"expected register first, got {kind}")
                return
            self._register(msg.register, now)
        elif kind == "availability":
            self._availability(msg.availability, now)
        elif kind == "update_worker":
            update = msg.update_worker
            d.update_worker(self, convert.worker_status(update), update.load, update.job_count, now)
        elif kind == "update_job":
            self.reports_status = True
            status = convert.JOB_STATUS.get(msg.update_job.status)
            if status is not None:
                d.job_status(self, msg.update_job.job_id, status, now, msg.update_job.error)
        elif kind == "ping":
            out = agent.ServerMessage()
            out.pong.last_timestamp = msg.ping.timestamp
            out.pong.timestamp = int(d.wall(now) * 1000)
            self._send(out)
        elif kind == "migrate_job":
            claim = msg.migrate_job
            d.claim(self, list(claim.job_ids) + [j.id for j in claim.jobs], now)
        elif kind == "simulate_job":
            self._simulate(msg.simulate_job, now)
        elif kind == "register":
            self._close(CloseCode.POLICY_VIOLATION, "already registered")
        else:
            log.debug("ignored worker message %s", kind, extra=self._fields())

    def _register(self, req: agent.RegisterWorkerRequest, now: float) -> None:
        spec = convert.worker_spec(req)
        self.version = spec.version
        self.permissions = req.allowed_permissions if req.HasField("allowed_permissions") else None
        self._domain.register_worker(self, spec, now)
        self._register_by = None
        self._agent_name = spec.agent_name
        out = agent.ServerMessage()
        out.register.worker_id = self.worker_id
        info = out.register.server_info
        info.version = __version__
        info.protocol = PROTOCOL
        info.agent_protocol = AGENT_PROTOCOL
        info.node_id = self._domain.node_id
        # Sent before the step that follows this message: the register
        # response must be the first frame the worker gets.
        self._send(out)

    def _availability(self, msg: agent.AvailabilityResponse, now: float) -> None:
        simulated = self._simulated.pop(msg.job_id, None)
        if simulated is not None:
            if msg.available:
                self._send_assignment(simulated, convert.acceptance(msg), now)
        elif msg.available:
            self._domain.accept(self, msg.job_id, convert.acceptance(msg), now)
        else:
            self._domain.decline(self, msg.job_id, now, terminate=msg.terminate)

    def _simulate(self, msg: agent.SimulateJobRequest, now: float) -> None:
        """``lk``/Node ``connect --room``: a job straight to this worker,
        outside the scheduler, as LiveKit does."""
        name = msg.room.name or ids.new("sim_")
        rooms = self._domain.rooms
        room = rooms.find(self.tenant, name) or rooms.open(self.tenant, RoomSpec(name), now)
        job = agent.Job(
            id=ids.new(ids.JOB),
            type=JT_PUBLISHER if msg.HasField("participant") else JT_ROOM,  # type: ignore[arg-type]
            room=convert.room_proto(room),
            agent_name=self._agent_name,
        )
        if msg.HasField("participant"):
            job.participant.CopyFrom(msg.participant)
        self._simulated[job.id] = job
        while len(self._simulated) > SIMULATED_MAX:
            self._simulated.popitem(last=False)
        self._send(agent.ServerMessage(availability=agent.AvailabilityRequest(job=job)))

    def _close(self, code: int, reason: str) -> None:
        log.warning("closing worker connection: %s", reason, extra=self._fields())
        self._sink.close(code, reason)

    def _fields(self) -> dict[str, object]:
        """The ``extra`` of a log line about this worker (``obs.logs``)."""
        return {"worker": self.worker_id or None, "tenant": self.tenant}
