"""An HTTP request and response as values, sans-IO.

``net.http`` parses bytes into a ``Request`` and writes a ``Response`` back;
``api`` routes one to the other.  Neither side needs the other's types.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import parse_qs

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
    """One parsed request.

    :param target: the request target exactly as sent (path and query,
        still percent-encoded): a WebSocket handshake is checked against it.
    :param now: when the request was read, on the server's monotonic clock.
    """

    __slots__ = ("method", "target", "path", "query", "headers", "body", "peer", "now")

    def __init__(
        self,
        method: str,
        target: str,
        path: str,
        raw_query: str,
        headers: dict[str, str],
        body: bytes,
        peer: str,
        now: float,
    ) -> None:
        self.method = method
        self.target = target
        self.path = path or "/"
        #: Decoded query parameters; the first value of each name.
        self.query = {k: v[0] for k, v in parse_qs(raw_query).items()} if raw_query else {}
        self.headers = headers  #: lower-case names; repeated headers joined by ", "
        self.body = body
        self.peer = peer
        self.now = now


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


class Later:
    """A response that is not ready yet (one that waits for the store's
    commit): ``settle`` it once it is.  The HTTP layer waits for it with a
    callback, without a task or a coroutine."""

    __slots__ = ("response", "_then")

    def __init__(self) -> None:
        self.response: Response | None = None
        self._then: Callable[[Response], None] | None = None

    def settle(self, response: Response) -> None:
        self.response = response
        if self._then is not None:
            then, self._then = self._then, None
            then(response)

    def then(self, fn: Callable[[Response], None]) -> None:
        """Call ``fn`` with the response once settled (at once if it is)."""
        if self.response is not None:
            fn(self.response)
        else:
            self._then = fn


class CloseCode:
    """WebSocket close codes (RFC 6455 §7.4.1) that sessions close with."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    INVALID_PAYLOAD = 1007
    POLICY_VIOLATION = 1008
    TOO_BIG = 1009
    INTERNAL_ERROR = 1011
