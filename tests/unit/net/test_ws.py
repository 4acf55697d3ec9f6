"""``net.ws.WebSocketConnection`` behind ``HttpProtocol`` on a
MockTransport, with the sans-IO client of ``websockets`` as the peer: the
handshake, messages to the session with their time, the session's own
deadline, and the close codes."""

from __future__ import annotations

import asyncio
from typing import Any

from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response as HandshakeResponse
from websockets.protocol import State
from websockets.uri import parse_uri

from edgedispatch._testbase.mock_transport import MockTransport
from edgedispatch.net.http import HttpProtocol
from edgedispatch.net.ws import WebSocketConnection
from edgedispatch.wire.http import CloseCode, Request, Response

from .conftest import Runner


class Session:
    """A message handler that records what it gets and echoes messages."""

    def __init__(self, conn: WebSocketConnection, deadline: float | None) -> None:
        self.conn = conn
        self.messages: list[tuple[bytes, float]] = []
        self.closed: list[tuple[int, str]] = []
        self.timers: list[float] = []
        self.deadline = deadline

    def on_message(self, data: bytes, now: float) -> None:
        self.messages.append((data, now))
        self.conn.send(b"echo:" + data)

    def on_closed(self, code: int, reason: str, now: float) -> None:
        self.closed.append((code, reason))

    def next_deadline(self) -> float | None:
        return self.deadline

    def on_timer(self, now: float) -> None:
        self.timers.append(now)
        self.deadline = None


class App:
    def __init__(self, deadline_in: float | None = None) -> None:
        self.sessions: list[Session] = []
        self.requests: list[Request] = []
        self.deadline_in = deadline_in

    def handle_http(self, request: Request) -> Response:
        return Response(404)

    def handle_upgrade(self, request: Request) -> Any:
        self.requests.append(request)
        deadline = None if self.deadline_in is None else request.now + self.deadline_in

        def accept(conn: WebSocketConnection) -> Session:
            self.sessions.append(Session(conn, deadline))
            return self.sessions[-1]

        return accept


class Peer:
    """The client side, in memory."""

    def __init__(self, app: App, path: str = "/agent?access_token=a%2Bb%3D%3D") -> None:
        self.transport = MockTransport()
        self.server = HttpProtocol(app, 1024, set())  # type: ignore[arg-type]
        self.transport.connect(self.server)
        self.client = ClientProtocol(parse_uri(f"ws://edge{path}"))
        self.client.send_request(self.client.connect())
        self._pump()

    def _pump(self) -> None:
        for data in self.client.data_to_send():
            if data:
                self.server.data_received(data)
        reply = self.transport.take()
        if reply:
            self.client.receive_data(reply)

    def send(self, data: bytes, text: bool = False) -> None:
        if text:
            self.client.send_text(data)
        else:
            self.client.send_binary(data)
        self._pump()

    def flush(self) -> None:
        self._pump()

    def events(self) -> list[Any]:
        return self.client.events_received()


def test_the_handshake_and_messages_with_their_time(run: Runner[None]) -> None:
    async def main() -> None:
        app = App()
        peer = Peer(app)
        (handshake,) = peer.events()
        assert isinstance(handshake, HandshakeResponse) and handshake.status_code == 101
        assert app.requests[0].query == {"access_token": "a+b=="}  # checked on the raw target
        before = asyncio.get_running_loop().time()
        peer.send(b"hello")
        (session,) = app.sessions
        ((data, now),) = session.messages
        assert data == b"hello" and now >= before
        await asyncio.sleep(0)  # sends of one loop pass leave in one write
        peer.flush()
        (echo,) = peer.events()
        assert isinstance(echo, Frame) and echo.data == b"echo:hello"

    run(main())


def test_a_text_frame_closes_with_1003(run: Runner[None]) -> None:
    async def main() -> None:
        app = App()
        peer = Peer(app)
        peer.events()
        peer.send(b"{}", text=True)
        (close,) = [e for e in peer.events() if isinstance(e, Frame)]
        assert close.opcode is Opcode.CLOSE
        assert int.from_bytes(close.data[:2], "big") == CloseCode.UNSUPPORTED_DATA
        assert app.sessions[0].messages == []

    run(main())


def test_a_message_over_the_limit_closes_with_1009(run: Runner[None]) -> None:
    async def main() -> None:
        app = App()
        peer = Peer(app)
        peer.events()
        peer.send(b"x" * 5000)
        frames = [e for e in peer.events() if isinstance(e, Frame)]
        assert int.from_bytes(frames[-1].data[:2], "big") == CloseCode.TOO_BIG

    run(main())


def test_the_sessions_deadline_is_driven_by_one_timer(run: Runner[None]) -> None:
    async def main() -> None:
        app = App(deadline_in=0.05)
        Peer(app)
        (session,) = app.sessions
        await asyncio.sleep(0.15)
        assert len(session.timers) == 1 and session.deadline is None

    run(main())


def test_the_session_hears_the_close_once(run: Runner[None]) -> None:
    async def main() -> None:
        app = App()
        peer = Peer(app)
        peer.events()
        peer.client.send_close(1000, "bye")
        peer.flush()  # the server answers the close and half-closes ...
        assert peer.client.state is State.CLOSING and peer.transport.eof_written
        peer.server.connection_lost(None)  # ... and the client ends TCP
        peer.server.connection_lost(None)
        assert app.sessions[0].closed == [(1000, "bye")]

    run(main())
