"""One agent worker's WebSocket at ``/agent``: LiveKit's worker protocol.

Frames are binary protobuf: ``WorkerMessage`` in, ``ServerMessage`` out.
The first message must be ``register``, within REGISTER_TIMEOUT, and the
register response is the first thing we send (a Node worker dies on any
other first frame).  A frame that is not a valid ``WorkerMessage`` closes
this connection with a reason; other workers are not affected.
"""

from __future__ import annotations

import asyncio
import logging
import time

from google.protobuf.message import DecodeError
from livekit.protocol import agent, models

from edgedispatch.dispatch.dispatcher import Dispatcher
from edgedispatch.errors import EdgeDispatchError
from edgedispatch.net import ws

log = logging.getLogger("edgedispatch.worker")

REGISTER_TIMEOUT = 10.0  # LiveKit's RegisterTimeout


class AgentConnection:
    """Implements ``dispatcher.WorkerLink`` and ``ws.MessageHandler``."""

    def __init__(
        self, conn: ws.WebSocketConnection, dispatcher: Dispatcher, api_key: str, tenant: str
    ) -> None:
        self._conn = conn
        self._dispatcher = dispatcher
        self.api_key = api_key
        self.tenant = tenant  # the worker gets only this tenant's jobs
        self.peer = conn.peer
        self.worker_id = ""
        self.version = ""
        self.reports_status = False
        self.permissions: models.ParticipantPermission | None = None
        loop = asyncio.get_running_loop()
        self._register_timer: asyncio.TimerHandle | None = loop.call_later(
            REGISTER_TIMEOUT, self._register_timeout
        )

    # WorkerLink ---------------------------------------------------------

    def send(self, msg: agent.ServerMessage) -> None:
        self._conn.send(msg.SerializeToString())

    # MessageHandler -----------------------------------------------------

    def on_message(self, data: bytes) -> None:
        msg = agent.WorkerMessage()
        try:
            msg.ParseFromString(data)
        except DecodeError:
            self._close(ws.INVALID_PAYLOAD, "not a protobuf WorkerMessage")
            return
        kind = msg.WhichOneof("message")
        try:
            self._handle(kind, msg)
        except EdgeDispatchError as exc:
            self._close(ws.POLICY_VIOLATION, f"bad {kind}: {exc.msg or exc}")
        except Exception:
            log.exception("worker message failed", extra={"worker": self.worker_id})
            self._close(ws.INTERNAL_ERROR, "internal error")

    def on_closed(self, code: int, reason: str) -> None:
        if self._register_timer is not None:
            self._register_timer.cancel()
            self._register_timer = None
        if self.worker_id:
            self._dispatcher.worker_closed(self)

    # ------------------------------------------------------------------

    def _handle(self, kind: str | None, msg: agent.WorkerMessage) -> None:
        d = self._dispatcher
        if not self.worker_id:
            if kind != "register":
                self._close(ws.POLICY_VIOLATION, f"expected register first, got {kind}")
                return
            if self._register_timer is not None:
                self._register_timer.cancel()
                self._register_timer = None
            self.version = msg.register.version
            self.send(d.register(self, msg.register))
            d.step()  # only now may offers go out to this worker
            return
        if kind == "availability":
            d.availability(self, msg.availability)
        elif kind == "update_worker":
            d.worker_update(self, msg.update_worker)
        elif kind == "update_job":
            d.job_update(self, msg.update_job)
        elif kind == "ping":
            out = agent.ServerMessage()
            out.pong.last_timestamp = msg.ping.timestamp
            out.pong.timestamp = int(time.time() * 1000)
            self.send(out)
        elif kind == "migrate_job":
            d.migrate(self, msg.migrate_job)
        elif kind == "simulate_job":
            d.simulate(self, msg.simulate_job)
        elif kind == "register":
            self._close(ws.POLICY_VIOLATION, "already registered")
        else:
            log.debug("ignored worker message %s", kind, extra={"worker": self.worker_id})

    def _register_timeout(self) -> None:
        self._register_timer = None
        if not self.worker_id:
            self._close(ws.POLICY_VIOLATION, f"no register within {REGISTER_TIMEOUT:g} s")

    def _close(self, code: int, reason: str) -> None:
        log.warning(
            "closing worker connection: %s", reason, extra={"worker": self.worker_id or None}
        )
        self._conn.close(code, reason)
