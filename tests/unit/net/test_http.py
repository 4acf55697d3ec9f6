"""``net.http.HttpProtocol`` on a MockTransport: requests in as bytes,
responses out in order, limits enforced, the connection never dropped
without an answer."""

from __future__ import annotations

import asyncio
from typing import Any

from edgedispatch._testbase.mock_transport import MockTransport
from edgedispatch.net.http import MAX_BODY, PIPELINE, HttpProtocol
from edgedispatch.wire.http import Later, Request, Response

from .conftest import Runner


class App:
    """Answers each request with its path; ``/slow`` waits for ``release``."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.gate: asyncio.Future[None] | None = None
        self.later: list[Later] = []  #: answers of /later, settled by the test

    def handle_http(self, request: Request) -> Any:
        self.requests.append(request)
        if request.path == "/slow":
            return self._slow(request)
        if request.path == "/later":
            self.later.append(Later())
            return self.later[-1]
        if request.path == "/boom":
            raise RuntimeError("a bug in the application")
        return Response(200, request.path.encode())

    async def _slow(self, request: Request) -> Response:
        self.gate = asyncio.get_running_loop().create_future()
        await self.gate
        return Response(200, b"/slow")

    def handle_upgrade(self, request: Request) -> Any:
        self.requests.append(request)
        return Response(401, b"no\n")


def connect(app: App) -> tuple[HttpProtocol, MockTransport]:
    transport = MockTransport()
    protocol = HttpProtocol(app, 1 << 20, set())  # type: ignore[arg-type]
    transport.connect(protocol)
    return protocol, transport


def get(path: str, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: edge\r\n{extra}\r\n".encode()


def bodies(raw: bytes) -> list[bytes]:
    """The bodies of the responses in ``raw``, in order."""
    out = []
    for chunk in raw.split(b"HTTP/1.1 ")[1:]:
        out.append(chunk.split(b"\r\n\r\n", 1)[1])
    return out


def test_a_request_is_answered_in_the_same_callback(run: Runner[None]) -> None:
    async def main() -> None:
        app = App()
        protocol, transport = connect(app)
        before = asyncio.get_running_loop().time()
        protocol.data_received(get("/healthz"))
        assert bodies(transport.take()) == [b"/healthz"]  # no loop turn needed
        (request,) = app.requests
        assert request.now >= before and request.peer == "127.0.0.1"
        assert not transport.closed  # keep-alive

    run(main())


def test_pipelined_responses_keep_their_requests_order(run: Runner[None]) -> None:
    async def main() -> None:
        app = App()
        protocol, transport = connect(app)
        protocol.data_received(get("/slow") + get("/fast") + get("/third"))
        assert transport.take() == b""  # /fast is ready, but /slow comes first
        assert not transport.reading  # nothing more is read meanwhile
        await asyncio.sleep(0)  # the slow answer starts
        assert app.gate is not None and transport.take() == b""
        app.gate.set_result(None)
        for _ in range(3):
            await asyncio.sleep(0)
        assert bodies(transport.take()) == [b"/slow", b"/fast", b"/third"]
        assert transport.reading

    run(main())


def test_query_values_keep_their_special_characters(run: Runner[None]) -> None:
    # LiveKit's /rtc/v1 carries base64 with '+', '/' and '=' in its query.
    async def main() -> None:
        app = App()
        protocol, _ = connect(app)
        protocol.data_received(get("/q?a=x%2By%3Dz&b=c%26d&join_request=ab+c%3D%3D"))
        (request,) = app.requests
        assert request.target == "/q?a=x%2By%3Dz&b=c%26d&join_request=ab+c%3D%3D"
        assert request.query == {"a": "x+y=z", "b": "c&d", "join_request": "ab c=="}

    run(main())


def test_a_body_over_the_limit_gets_413_before_it_is_read(run: Runner[None]) -> None:
    async def main() -> None:
        app = App()
        protocol, transport = connect(app)
        head = f"POST /twirp/x HTTP/1.1\r\nHost: e\r\nContent-Length: {50 << 20}\r\n\r\n"
        protocol.data_received(head.encode() + b"x" * 1000)
        out = transport.take()
        assert out.startswith(b"HTTP/1.1 413 ")
        assert transport.closed and app.requests == []

    run(main())


def test_a_chunked_body_over_the_limit_gets_413(run: Runner[None]) -> None:
    async def main() -> None:
        app = App()
        protocol, transport = connect(app)
        head = b"POST /twirp/x HTTP/1.1\r\nHost: e\r\nTransfer-Encoding: chunked\r\n\r\n"
        chunk = b"%x\r\n%s\r\n" % (MAX_BODY + 1, b"x" * (MAX_BODY + 1))
        protocol.data_received(head + chunk)
        assert transport.take().startswith(b"HTTP/1.1 413 ")
        assert transport.closed

    run(main())


def test_garbage_gets_400_and_the_connection_closes(run: Runner[None]) -> None:
    async def main() -> None:
        app = App()
        protocol, transport = connect(app)
        protocol.data_received(b"\x16\x03\x01 not http at all\r\n\r\n")
        assert transport.take().startswith(b"HTTP/1.1 400 ")
        assert transport.closed

    run(main())


def test_an_application_error_is_a_500_not_a_dropped_connection(run: Runner[None]) -> None:
    async def main() -> None:
        app = App()
        protocol, transport = connect(app)
        protocol.data_received(get("/boom") + get("/after"))
        out = transport.take()
        assert out.startswith(b"HTTP/1.1 500 ") and bodies(out)[1] == b"/after"

    run(main())


def test_connection_close_is_honoured(run: Runner[None]) -> None:
    async def main() -> None:
        app = App()
        protocol, transport = connect(app)
        protocol.data_received(get("/bye", "Connection: close\r\n"))
        out = transport.take()
        assert b"Connection: close" in out and transport.closed

    run(main())


def test_a_refused_upgrade_gets_the_applications_answer(run: Runner[None]) -> None:
    async def main() -> None:
        app = App()
        protocol, transport = connect(app)
        protocol.data_received(
            get(
                "/agent",
                "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n",
            )
        )
        assert transport.take().startswith(b"HTTP/1.1 401 ")
        assert transport.closed and app.requests[0].path == "/agent"

    run(main())


def test_an_answer_that_waits_for_the_store_keeps_its_place_without_a_task(
    run: Runner[None],
) -> None:
    async def main() -> None:
        app = App()
        protocol, transport = connect(app)
        protocol.data_received(get("/later") + get("/fast"))
        assert transport.take() == b"" and transport.reading  # still reading
        app.later[0].settle(Response(200, b"/later"))  # the commit came
        assert bodies(transport.take()) == [b"/later", b"/fast"]
        # A client that pipelines more than PIPELINE of them is read no more
        # until they are answered.
        protocol.data_received(b"".join(get("/later") for _ in range(PIPELINE + 1)))
        assert not transport.reading
        for later in app.later[1:]:
            later.settle(Response(200, b"ok"))
        assert len(bodies(transport.take())) == PIPELINE + 1 and transport.reading

    run(main())
