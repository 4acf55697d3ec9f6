"""What a hostile client can hold of the server (the issue's probes): half
sent heads and promised bodies are timed out with 408, a huge body gets
413, and one peer gets only its share of the connections; clients that
behave are served throughout.  Real sockets against a server thread."""

from __future__ import annotations

import socket
import time
import urllib.request
from collections.abc import Callable

import pytest

from .conftest import ServerThread

FAST = {"header_timeout": 0.5, "body_timeout": 0.5, "idle_timeout": 2.0}


def connect(srv: ServerThread) -> socket.socket:
    return socket.create_connection(("127.0.0.1", srv.server.port), timeout=10)


def answer(sock: socket.socket) -> bytes:
    """What the server sent before it closed (or within 5 s)."""
    sock.settimeout(5)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return data


def healthy(srv: ServerThread) -> bool:
    with urllib.request.urlopen(f"{srv.url}/healthz", timeout=5) as resp:
        return bool(resp.status == 200)


def test_half_sent_heads_are_closed_with_408_and_others_are_served(
    start_server: Callable[..., ServerThread],
) -> None:
    srv = start_server(server=FAST)
    slow = [connect(srv) for _ in range(50)]
    for s in slow:
        s.sendall(b"POST /twirp/livekit.RoomService/ListRooms HTTP/1.1\r\nHost: x\r\nX-Slo")
    assert healthy(srv)  # a client that behaves is not held up
    started = time.monotonic()
    answers = [answer(s) for s in slow]
    assert all(a.startswith(b"HTTP/1.1 408") for a in answers), answers[0]
    assert time.monotonic() - started < 4  # half a second, checked every second
    for s in slow:
        s.close()


def test_a_body_promised_and_never_sent_is_timed_out(
    start_server: Callable[..., ServerThread],
) -> None:
    srv = start_server(server=FAST)
    s = connect(srv)
    s.sendall(b"POST /twirp/livekit.RoomService/ListRooms HTTP/1.1\r\nHost: x\r\n"
              b"Content-Length: 1000\r\n\r\n{\"a\":")  # fmt: skip
    assert answer(s).startswith(b"HTTP/1.1 408")
    s.close()


def test_an_idle_keep_alive_connection_is_closed_quietly(
    start_server: Callable[..., ServerThread],
) -> None:
    srv = start_server(server=FAST)
    s = connect(srv)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    first = s.recv(65536)
    assert first.startswith(b"HTTP/1.1 200")
    assert answer(s) == b""  # closed after idle_timeout, without a response
    s.close()


@pytest.mark.parametrize("chunked", [False, True])
def test_a_50_mb_body_gets_413(start_server: Callable[..., ServerThread], chunked: bool) -> None:
    srv = start_server()
    s = connect(srv)
    head = b"POST /twirp/livekit.RoomService/ListRooms HTTP/1.1\r\nHost: x\r\n"
    if chunked:
        s.sendall(head + b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"x" * (1 << 20)
        try:
            for _ in range(50):
                s.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused part way, as it should be
    else:
        s.sendall(head + b"Content-Length: %d\r\n\r\n" % (50 << 20))
    assert answer(s).startswith(b"HTTP/1.1 413")
    s.close()
    assert healthy(srv)


def test_one_peer_gets_only_its_share_of_the_connections(
    start_server: Callable[..., ServerThread],
) -> None:
    srv = start_server(server={"max_connections": 10, "max_connections_per_peer": 0.4})
    held = [connect(srv) for _ in range(4)]
    time.sleep(0.2)
    refused = connect(srv)
    assert answer(refused).startswith(b"HTTP/1.1 503")
    for s in held:
        s.close()
    time.sleep(0.2)
    assert healthy(srv)  # its share comes back as its connections close
    refused.close()
