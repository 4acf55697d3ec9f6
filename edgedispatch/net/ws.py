"""WebSocket connections on the sans-IO protocol of ``websockets``.

``websockets.server.ServerProtocol`` parses the handshake and frames,
answers pings and runs the closing handshake; this adapter only moves bytes
between it and the transport and hands whole messages to a handler.  Why
this and not aiohttp's WebSocket: it fits inside our own httptools protocol
(one object per connection, no task), and it costs a few kB per idle
connection, which matters for thousands of idle agent workers.

permessage-deflate is declined on purpose: its zlib contexts would cost
hundreds of kB per connection, and LiveKit's workers work without it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from websockets.datastructures import Headers
from websockets.exceptions import InvalidState
from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Request as Handshake
from websockets.protocol import State
from websockets.server import ServerProtocol

from edgedispatch.wire.http import CloseCode, Request

log = logging.getLogger("edgedispatch.ws")
# websockets logs every open and close at INFO; we log what matters ourselves.
logging.getLogger("edgedispatch.ws").setLevel(logging.WARNING)

CLOSE_TIMEOUT = 5.0


class MessageHandler(Protocol):
    """A session on an accepted WebSocket, sans-IO: each whole message with
    the time it arrived, the end of the connection, and its own timer (the
    aioquic shape: this adapter arms one ``call_at`` for ``next_deadline``
    after every message, and calls ``on_timer`` when it is due)."""

    def on_message(self, data: bytes, now: float) -> None: ...

    def on_closed(self, code: int, reason: str, now: float) -> None: ...

    def next_deadline(self) -> float | None: ...

    def on_timer(self, now: float) -> None: ...


class WebSocketConnection:
    """One accepted WebSocket.  Binary messages go to the handler; a text
    message closes the connection (1003), as no client of ours sends one."""

    def __init__(self, transport: asyncio.Transport, max_size: int, peer: str) -> None:
        self._transport: asyncio.Transport | None = transport
        # Looked up once: on Python 3.11 each get_running_loop() is a getpid().
        self._loop = asyncio.get_running_loop()
        self._max_size = max_size
        self.peer = peer
        # Open from the start: the HTTP layer parsed the handshake, and
        # ``open`` answers it (so this one parses frames only).
        self._ws = ServerProtocol(max_size=max_size, logger=log, state=State.OPEN)
        self._handler: MessageHandler | None = None
        self._parts: list[bytes] = []
        self._parts_size = 0
        self._closed_reported = False
        self._close_timer: asyncio.TimerHandle | None = None
        self._flush_scheduled = False
        self._ping_sent_at: float | None = None
        self._keepalive: asyncio.TimerHandle | None = None
        self._timer: asyncio.TimerHandle | None = None  # the handler's own deadline
        self._timer_at: float | None = None

    @property
    def is_open(self) -> bool:
        return self._transport is not None and self._ws.state is State.OPEN

    def open(
        self,
        request: Request,
        factory: Callable[[WebSocketConnection], MessageHandler],
        rest: bytes,
    ) -> None:
        """Run the handshake for ``request`` (already parsed by the HTTP
        layer), on its target exactly as sent."""
        handshake = Handshake(request.target, Headers(list(request.headers.items())))
        # A protocol object of its own checks the handshake and answers it.
        response = ServerProtocol(max_size=self._max_size, logger=log).accept(handshake)
        if self._transport is None:
            return
        self._transport.write(response.serialize())
        if response.status_code != 101:
            self._abort()
            return
        self._handler = factory(self)
        self._arm()
        if rest:
            self.data_received(rest)

    def data_received(self, data: bytes) -> None:
        self._ws.receive_data(data)
        for event in self._ws.events_received():
            if isinstance(event, Frame):
                self._on_frame(event)
        self._flush()

    def keepalive(self, interval: float, timeout: float) -> None:
        """Ping every ``interval`` seconds; drop the connection when a pong is
        ``timeout`` seconds late.  Node workers never ping, so without this a
        half-open connection would hold a dead worker's jobs forever."""
        self._keepalive = self._loop.call_later(interval, self._ping, interval, timeout)

    def _ping(self, interval: float, timeout: float) -> None:
        if not self.is_open:
            return
        now = self._loop.time()
        if self._ping_sent_at is None:
            self._ws.send_ping(b"")
            self._ping_sent_at = now
            self._flush()
        elif now - self._ping_sent_at >= timeout:
            log.warning("no pong for %.0f s: dropping %s", timeout, self.peer)
            self.close(CloseCode.POLICY_VIOLATION, "keepalive ping timeout")
            self._abort()
            return
        wait = interval if self._ping_sent_at is None else min(interval, timeout)
        self._keepalive = self._loop.call_later(wait, self._ping, interval, timeout)

    def connection_lost(self) -> None:
        self._ws.receive_eof()
        self._transport = None
        if self._keepalive is not None:
            self._keepalive.cancel()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._close_timer is not None:
            self._close_timer.cancel()
        self._report_closed()

    def send(self, data: bytes) -> None:
        """Send one binary message; dropped silently once closing.

        Messages sent during one event-loop pass leave in one write at its
        end: under load a worker often gets several, and each write is a
        system call."""
        if not self.is_open:
            return
        self._ws.send_binary(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def close(self, code: int, reason: str) -> None:
        """Start the closing handshake; the TCP connection ends when the peer
        answers, or after CLOSE_TIMEOUT."""
        if self._transport is None:
            return
        try:
            self._ws.send_close(code, reason[:120])
        except InvalidState:
            pass
        self._flush()

    # ------------------------------------------------------------------

    def _on_frame(self, frame: Frame) -> None:
        op = frame.opcode
        if op is Opcode.PONG:
            self._ping_sent_at = None
            return
        if op in (Opcode.PING, Opcode.CLOSE):
            return  # answered by the protocol itself
        if op is Opcode.TEXT or (op is Opcode.CONT and not self._parts):
            self.close(
                CloseCode.UNSUPPORTED_DATA, "text frames are not supported; send binary protobuf"
            )
            return
        self._parts.append(bytes(frame.data))
        self._parts_size += len(frame.data)
        if self._parts_size > self._max_size:
            self.close(CloseCode.TOO_BIG, f"message over {self._max_size} bytes")
            return
        if not frame.fin:
            return
        data = b"".join(self._parts)
        self._parts, self._parts_size = [], 0
        if self._handler is not None and self._ws.state is State.OPEN:
            self._handler.on_message(data, self._loop.time())
            self._arm()

    def _arm(self) -> None:
        """(Re-)arm the one timer for the handler's deadline."""
        if self._handler is None:
            return
        deadline = self._handler.next_deadline()
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = deadline
        if deadline is not None and self._transport is not None:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        if self._handler is not None and self._transport is not None:
            self._handler.on_timer(self._loop.time())
            self._arm()

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._transport is None:
            return
        chunks = self._ws.data_to_send()
        if chunks:
            data = b"".join(chunks)
            if data:
                self._transport.write(data)
            if not chunks[-1] and self._transport.can_write_eof():
                self._transport.write_eof()  # b"": the protocol is done; half-close
        if self._ws.state is State.CLOSED:
            self._abort()
        elif self._ws.close_expected() and self._close_timer is None:
            self._close_timer = self._loop.call_later(CLOSE_TIMEOUT, self._abort)

    def _abort(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def _report_closed(self) -> None:
        if self._closed_reported or self._handler is None:
            return
        self._closed_reported = True
        rcvd: Close | None = self._ws.close_rcvd
        sent: Close | None = self._ws.close_sent
        close = sent if sent is not None else rcvd
        code = close.code if close is not None else 1006
        reason = close.reason if close is not None else "connection lost"
        self._handler.on_closed(code, reason, self._loop.time())
