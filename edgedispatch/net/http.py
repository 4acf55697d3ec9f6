"""HTTP/1.1 server protocol on httptools, with WebSocket upgrades.

One ``HttpProtocol`` per TCP connection, no task per request: a request is
parsed in ``data_received``, handed synchronously to the application, and
its response written back in the same callback (keep-alive supported).
Responses leave in the order their requests came, also when a pipelined
request behind a slow one (one whose answer is a coroutine) is answered
first.  An upgrade request is handed to ``WebSocketConnection``, which
takes over the transport.

Why httptools and not aiohttp: on this machine a hand-rolled httptools
protocol served 119k small Twirp-sized requests/s against aiohttp's 21k
(shared/reference/ecosystem.md §3), and its callback shape is the same as
our sans-IO layers.
"""

from __future__ import annotations

import asyncio
import math
import resource
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol, cast

import httptools

from edgedispatch.errors import TooLarge
from edgedispatch.net.ws import MessageHandler, WebSocketConnection
from edgedispatch.wire.http import Later, Request, Response

MAX_BODY = 2 * 1024 * 1024
MAX_HEAD = 64 * 1024
#: Answers waiting for the store a connection may have in line before it
#: is read no more (a client that pipelines must not queue without end).
PIPELINE = 16
#: File descriptors kept for everything but client connections (the store,
#: local job processes' pipes, media workers) when the limit is derived.
FD_RESERVE = 256
NEVER = math.inf


class Limits:
    """What one client may hold of the server (config ``[server]``), and the
    connections each peer address holds now.

    Why: found by a hostile probe, 2,000 connections that sent half a
    header were never closed, and under an fd limit of 1,200 normal
    clients got resets.  Each connection now has a deadline for what it
    owes (a request head, a promised body, or a next request at all),
    checked by ``expire`` every tick, with no timer per request; and one
    peer may hold only a share of the connections."""

    def __init__(
        self,
        max_body: int = MAX_BODY,
        header_timeout: float = 10.0,
        body_timeout: float = 30.0,
        idle_timeout: float = 120.0,
        max_connections: int = 0,
        per_peer: float = 0.5,
    ) -> None:
        self.max_body = max_body
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.idle_timeout = idle_timeout
        if max_connections <= 0:
            soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
            max_connections = max(64, soft - FD_RESERVE) if soft > 0 else 65536
        self.max_connections = max_connections
        self.peer_cap = max(1, int(max_connections * per_peer))
        self.peers: Counter[str] = Counter()


def expire(connections: Iterable[HttpProtocol], now: float) -> None:
    """Close the connections past their deadline (the server's tick)."""
    for conn in [c for c in connections if c.deadline <= now]:
        conn.expired()


class Application(Protocol):
    """What the HTTP layer serves (``api.app.App``)."""

    def handle_http(self, request: Request) -> Response | Later | Awaitable[Response | Later]: ...

    def handle_upgrade(
        self, request: Request
    ) -> Response | Callable[[WebSocketConnection], MessageHandler]:
        """A Response refuses the upgrade; a callable accepts it and is given
        the open connection to build its message handler."""
        ...


class _Slot:
    """A response not written yet, in its request's place in line."""

    __slots__ = ("response", "keep_alive")

    def __init__(self, keep_alive: bool) -> None:
        self.response: Response | None = None
        self.keep_alive = keep_alive


class HttpProtocol(asyncio.Protocol):
    def __init__(
        self,
        app: Application,
        max_message_size: int,
        connections: set[HttpProtocol],
        limits: Limits | None = None,
    ) -> None:
        self._app = app
        self._connections = connections
        self._max_message = max_message_size
        self._limits = limits or Limits()
        self._max_body = self._limits.max_body
        #: Loop time by which the client owes its next bytes (see Limits).
        self.deadline = NEVER
        self._in_request = False
        self._counted = False
        self._too_large = ""
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._peer = ""
        self._ws: WebSocketConnection | None = None
        self._line: deque[_Slot] = deque()  # responses waiting for one before them
        self._paused = False  # reading paused until the line is answered
        self._reset()

    def _reset(self) -> None:
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._size = 0
        self._head_size = 0

    # asyncio callbacks ------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport is not an asyncio.Transport subclass: no isinstance.
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self._peer = peer[0] if isinstance(peer, tuple) else str(peer or "")
        limits = self._limits
        if (
            len(self._connections) >= limits.max_connections
            or limits.peers[self._peer] >= limits.peer_cap
        ):
            self._transport.write(Response(503, b"too many connections\n").serialize(False))
            self._transport.close()
            return
        limits.peers[self._peer] += 1
        self._counted = True
        self._connections.add(self)
        self.deadline = self._loop.time() + limits.header_timeout

    def data_received(self, data: bytes) -> None:
        if self._ws is not None:
            self._ws.data_received(data)
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._upgrade(data[exc.args[0] :])
        except httptools.HttpParserError as exc:
            # httptools reports a callback's error as its own ("the on_body
            # callback failed"): what was too large is in the flag.
            if self._too_large:
                self._refuse(Response(413, f"request too large: {self._too_large}\n".encode()))
            else:
                self._refuse(Response(400, f"bad request: {exc}\n".encode()))

    def expired(self) -> None:
        """Its deadline passed: 408 if it was sending a request, else (idle
        between requests) it just closes."""
        self.deadline = NEVER
        if self._transport is None or self._ws is not None:
            return
        if self._in_request:
            self._refuse(Response(408, b"request timeout\n"))
        elif not self._line:
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._connections.discard(self)
        if self._counted:
            self._counted = False
            peers = self._limits.peers
            peers[self._peer] -= 1
            if peers[self._peer] <= 0:
                del peers[self._peer]
        if self._ws is not None:
            self._ws.connection_lost()
        self._transport = None

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    # httptools callbacks ----------------------------------------------

    def on_message_begin(self) -> None:
        self._reset()
        self._in_request = True
        self.deadline = self._loop.time() + self._limits.header_timeout

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value))
        key = name.decode("latin-1").lower()
        val = value.decode("latin-1")
        self._headers[key] = f"{self._headers[key]}, {val}" if key in self._headers else val

    def on_headers_complete(self) -> None:
        # Refuse a body promised too large before reading any of it.
        length = self._headers.get("content-length", "")
        if length.isdigit() and int(length) > self._max_body:
            raise self._too_big(f"body over {self._max_body} bytes")
        self.deadline = self._loop.time() + self._limits.body_timeout

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self._max_body:
            raise self._too_big(f"body over {self._max_body} bytes")
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._in_request = False
        if self._transport is None or self._parser.should_upgrade():
            return  # an upgrade: handled by _upgrade
        self.deadline = self._loop.time() + self._limits.idle_timeout
        request = self._request(b"".join(self._body))
        keep_alive = self._parser.should_keep_alive()
        try:
            response = self._app.handle_http(request)
        except Exception:  # the application must answer; never drop the connection
            response = Response(500, b"internal error\n")
        if isinstance(response, Response) and not self._line:
            self._write(response, keep_alive)  # the common case: nothing waits
            return
        slot = _Slot(keep_alive)
        self._line.append(slot)
        if isinstance(response, Response):
            slot.response = response
        elif isinstance(response, Later):
            # An answer that waits for the store's commit (a few ms): go on
            # reading, unless a client pipelines more than PIPELINE of them.
            if len(self._line) > PIPELINE:
                self._pause()
            response.then(lambda r: self._settled(slot, r))
        else:
            # A slow operation (starting agent processes): read nothing more
            # from this connection until it is answered.
            self._pause()
            task = self._loop.create_task(_answer(response))
            task.add_done_callback(lambda t: self._answered(slot, t))
        self._write_ready()

    # responses in order -------------------------------------------------

    def _answered(self, slot: _Slot, task: asyncio.Task[Response | Later]) -> None:
        result = task.result()
        if isinstance(result, Later):
            result.then(lambda r: self._settled(slot, r))
        else:
            self._settled(slot, result)

    def _settled(self, slot: _Slot, response: Response) -> None:
        slot.response = response
        self.deadline = self._loop.time() + self._limits.idle_timeout
        self._write_ready()
        transport = self._transport
        if self._paused and not self._line and transport is not None and not transport.is_closing():
            self._paused = False
            transport.resume_reading()

    def _pause(self) -> None:
        if not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()

    def _write_ready(self) -> None:
        """Write every answered response at the head of the line."""
        line = self._line
        while line and line[0].response is not None and self._transport is not None:
            slot = line.popleft()
            assert slot.response is not None
            self._write(slot.response, slot.keep_alive)
            if not slot.keep_alive:
                line.clear()

    def _write(self, response: Response, keep_alive: bool) -> None:
        assert self._transport is not None
        if keep_alive:
            self._transport.write(response.serialize(True))
        else:
            self._transport.write(response.serialize(False))
            self._transport.close()

    # helpers ------------------------------------------------------------

    def _count_head(self, n: int) -> None:
        self._head_size += n
        if self._head_size > MAX_HEAD:
            raise self._too_big(f"request head over {MAX_HEAD} bytes")

    def _too_big(self, what: str) -> TooLarge:
        """The error to raise from a parser callback, kept for ``data_received``
        (httptools reports a callback's error as its own)."""
        self._too_large = what
        return TooLarge(what)

    def _request(self, body: bytes) -> Request:
        method = self._parser.get_method().decode("latin-1")
        target = self._url.decode("latin-1")
        path, _, query = target.partition("?")
        return Request(
            method, target, path, query, self._headers, body, self._peer, self._loop.time()
        )

    def _refuse(self, response: Response) -> None:
        """Answer a request that cannot be read, and close: the stream's
        framing is lost, and no response waiting in line can follow."""
        self._line.clear()
        if self._transport is not None:
            self._transport.write(response.serialize(False))
            self._transport.close()

    def _upgrade(self, rest: bytes) -> None:
        assert self._transport is not None
        request = self._request(b"")
        if self._headers.get("upgrade", "").lower() != "websocket":
            self._refuse(Response(400, b"only WebSocket upgrades are supported\n"))
            return
        answer = self._app.handle_upgrade(request)
        if isinstance(answer, Response):
            self._refuse(answer)
            return
        self.deadline = NEVER  # the WebSocket keeps its own time (pings)
        self._in_request = False
        self._ws = WebSocketConnection(self._transport, self._max_message, request.peer)
        self._ws.open(request, answer, rest)


async def _answer(response: Awaitable[Response | Later]) -> Response | Later:
    try:
        return await response
    except Exception:  # the application must answer; never drop the connection
        return Response(500, b"internal error\n")
