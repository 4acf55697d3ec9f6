"""HTTP/1.1 server protocol on httptools, with WebSocket upgrades.

One ``HttpProtocol`` per TCP connection, no task per request: a request is
parsed in ``data_received``, handed synchronously to the application, and
its response written back in the same callback (keep-alive supported).
An upgrade request is handed to ``WebSocketConnection``, which takes over
the transport.

Why httptools and not aiohttp: on this machine a hand-rolled httptools
protocol served 119k small Twirp-sized requests/s against aiohttp's 21k
(shared/reference/ecosystem.md §3), and its callback shape is the same as
our sans-IO layers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, cast
from urllib.parse import parse_qs

import httptools

from edgedispatch.net.ws import WebSocketConnection

MAX_BODY = 2 * 1024 * 1024
MAX_HEAD = 64 * 1024

REASONS = {
    101: "Switching Protocols",
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    412: "Precondition Failed",
    413: "Payload Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
}


class Request:
    __slots__ = ("method", "path", "query", "headers", "body", "peer")

    def __init__(
        self, method: str, url: bytes, headers: dict[str, str], body: bytes, peer: str
    ) -> None:
        parsed = httptools.parse_url(url)
        self.method = method
        self.path = (parsed.path or b"/").decode("latin-1")
        self.query = {k: v[0] for k, v in parse_qs((parsed.query or b"").decode("latin-1")).items()}
        self.headers = headers
        self.body = body
        self.peer = peer


class Response:
    __slots__ = ("status", "body", "content_type", "headers")

    def __init__(
        self,
        status: int,
        body: bytes = b"",
        content_type: str = "text/plain; charset=utf-8",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers or {}

    def serialize(self, keep_alive: bool) -> bytes:
        head = [f"HTTP/1.1 {self.status} {REASONS.get(self.status, 'Status')}"]
        head.append(f"Content-Type: {self.content_type}")
        head.append(f"Content-Length: {len(self.body)}")
        if not keep_alive:
            head.append("Connection: close")
        head += [f"{k}: {v}" for k, v in self.headers.items()]
        return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + self.body


class Application(Protocol):
    """What the HTTP layer serves."""

    def handle_http(self, request: Request) -> Response | Coroutine[Any, Any, Response]: ...

    def handle_upgrade(
        self, request: Request
    ) -> Response | Callable[[WebSocketConnection], object]:
        """A Response refuses the upgrade; a callable accepts it and is given
        the open connection to build its message handler."""
        ...


class HttpProtocol(asyncio.Protocol):
    def __init__(
        self, app: Application, max_message_size: int, connections: set[HttpProtocol]
    ) -> None:
        self._app = app
        self._connections = connections
        self._max_message = max_message_size
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._peer = ""
        self._ws: WebSocketConnection | None = None
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
        self._connections.add(self)
        peer = transport.get_extra_info("peername")
        self._peer = peer[0] if isinstance(peer, tuple) else str(peer or "")

    def data_received(self, data: bytes) -> None:
        if self._ws is not None:
            self._ws.data_received(data)
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._upgrade(data[exc.args[0] :])
        except (httptools.HttpParserError, _TooLarge) as exc:
            status = 413 if isinstance(exc, _TooLarge) else 400
            self._write_and_close(Response(status, f"bad request: {exc}\n".encode()))

    def connection_lost(self, exc: Exception | None) -> None:
        self._connections.discard(self)
        if self._ws is not None:
            self._ws.connection_lost()
        self._transport = None

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    # httptools callbacks ----------------------------------------------

    def on_message_begin(self) -> None:
        self._reset()

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value))
        key = name.decode("latin-1").lower()
        val = value.decode("latin-1")
        self._headers[key] = f"{self._headers[key]}, {val}" if key in self._headers else val

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > MAX_BODY:
            raise _TooLarge(f"body over {MAX_BODY} bytes")
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._transport is None or self._parser.should_upgrade():
            return  # an upgrade: handled by _upgrade
        request = self._request(b"".join(self._body))
        keep_alive = self._parser.should_keep_alive()
        try:
            response = self._app.handle_http(request)
        except Exception:  # the application must answer; never drop the connection
            response = Response(500, b"internal error\n")
        if isinstance(response, Response):
            self._respond(response, keep_alive)
            return
        # A slow operation (starting agent processes): answer when it is done,
        # reading nothing more from this connection until then.
        self._transport.pause_reading()
        task = asyncio.get_running_loop().create_task(response)
        task.add_done_callback(lambda t: self._respond_later(t, keep_alive))

    def _respond_later(self, task: asyncio.Task[Response], keep_alive: bool) -> None:
        if self._transport is None:
            return
        exc = task.exception()
        self._respond(Response(500, b"internal error\n") if exc else task.result(), keep_alive)
        if keep_alive and self._transport is not None:
            self._transport.resume_reading()

    def _respond(self, response: Response, keep_alive: bool) -> None:
        assert self._transport is not None
        if keep_alive:
            self._transport.write(response.serialize(True))
        else:
            self._write_and_close(response)

    # helpers ------------------------------------------------------------

    def _count_head(self, n: int) -> None:
        self._head_size += n
        if self._head_size > MAX_HEAD:
            raise _TooLarge(f"request head over {MAX_HEAD} bytes")

    def _request(self, body: bytes) -> Request:
        method = self._parser.get_method().decode("latin-1")
        return Request(method, self._url, self._headers, body, self._peer)

    def _write_and_close(self, response: Response) -> None:
        if self._transport is not None:
            self._transport.write(response.serialize(False))
            self._transport.close()

    def _upgrade(self, rest: bytes) -> None:
        assert self._transport is not None
        request = self._request(b"")
        if self._headers.get("upgrade", "").lower() != "websocket":
            self._write_and_close(Response(400, b"only WebSocket upgrades are supported\n"))
            return
        answer = self._app.handle_upgrade(request)
        if isinstance(answer, Response):
            self._write_and_close(answer)
            return
        self._ws = WebSocketConnection(self._transport, self._max_message, request.peer)
        self._ws.open(request, answer, rest)


class _TooLarge(Exception):
    pass
