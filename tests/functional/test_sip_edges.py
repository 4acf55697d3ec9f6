"""SIP at its edges, against a real server: a draining server refuses new
calls and probes with 503, a flood of INVITEs from one address is cut,
a retransmitted or merged INVITE is answered once (sipp), and bad input
over UDP and TCP gets 400 or 513, or nothing, while the server stays up."""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgedispatch.sip.message import (
    MAX_HEADERS,
    Request,
    Response,
    StreamParser,
    parse_datagram,
    response_to,
)

from .conftest import ServerThread
from .test_sip import SCENARIOS, sipp

pytestmark = pytest.mark.skipif(not shutil.which("sipp"), reason="sipp (sip-tester) missing")


def request(method: str, call_id: str, extra: str = "", body: str = "", via: str = "UDP") -> bytes:
    return (
        f"{method} sip:+15550100@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/{via} 127.0.0.1:5999;branch=z9hG4bK-{call_id}\r\n"
        f"From: <sip:+15550199@127.0.0.1>;tag=a\r\nTo: <sip:+15550100@127.0.0.1>\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 1 {method}\r\nMax-Forwards: 70\r\n{extra}"
        f"Content-Length: {len(body)}\r\n\r\n{body}"
    ).encode()


@dataclass
class Answer:
    """A response, read leniently: a 400 echoes the bad value it refuses,
    which our own parser would refuse too."""

    status: int
    reason: str
    headers: dict[str, str]

    @classmethod
    def of(cls, data: bytes) -> Answer:
        lines = data.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")
        version, status, reason = (lines[0].split(" ", 2) + [""])[:3]
        assert version == "SIP/2.0"
        pairs = [line.partition(":") for line in lines[1:]]
        return cls(int(status), reason, {k.strip().lower(): v.strip() for k, _, v in pairs})


def udp_exchange(port: int, data: bytes, wait: float = 1.0) -> list[Answer]:
    """What the server answers to one datagram (within ``wait``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(wait)
        sock.sendto(data, ("127.0.0.1", port))
        answers: list[Answer] = []
        try:
            while True:
                answers.append(Answer.of(sock.recv(70_000)))
                sock.settimeout(0.2)
        except TimeoutError:
            return answers


def tcp_exchange(port: int, data: bytes) -> tuple[list[Response], bool]:
    """What the server answers on a TCP connection to ``data``, and
    whether it then closed the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        parser, got, closed = StreamParser(), b"", False
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                closed = True
                break
            got += chunk
            sock.settimeout(0.5)
    msgs = parser.feed(got)
    assert all(isinstance(m, Response) for m in msgs)
    return [m for m in msgs if isinstance(m, Response)], closed


def still_up(srv: ServerThread) -> None:
    (ok,) = udp_exchange(srv.server.sip_port, request("OPTIONS", f"alive-{time.time()}"))
    assert ok.status == 200


def test_a_draining_server_refuses_new_calls_and_probes_with_503(
    start_server: Callable[..., ServerThread], tmp_path: Path
) -> None:
    srv = start_server(sip={"enabled": True, "port": 0})
    # A call of ours still ringing (to a peer that never answers) holds the drain.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        drain_with_a_call_up(srv, silent, tmp_path)


def drain_with_a_call_up(srv: ServerThread, silent: socket.socket, tmp_path: Path) -> None:
    peer, srv_addr = silent.getsockname(), ("127.0.0.1", srv.server.sip_port)
    endpoint = srv.server.sip_endpoint
    assert endpoint is not None and endpoint.uas is not None
    uas = endpoint.uas
    srv.call(lambda: uas.outbound.dial("sip:+1@x", peer, "sip:edge@x", b"", srv.loop.time()))

    async def stop() -> None:
        srv.server.request_stop()

    asyncio.run_coroutine_threadsafe(stop(), srv.loop).result(5)
    options = tmp_path / "options_503.xml"
    text = (SCENARIOS / "options.xml").read_text()
    text = text.replace('response="200"', 'response="503"').replace("Allow:", "Retry-After:")
    options.write_text(text.replace('regexp="INVITE"', 'regexp="[0-9]+"'))
    invite = tmp_path / "invite_503.xml"
    invite.write_text((SCENARIOS / "invite_refused.xml").read_text().replace('"404"', '"503"'))
    for scenario in (options, invite):
        done = sipp(srv, scenario, calls=3)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert not srv.server._stop.is_set()  # the call we placed is still up
    dialled = parse_datagram(silent.recv(65536))  # and now its callee says busy
    assert isinstance(dialled, Request)
    silent.sendto(response_to(dialled, 486, "Busy Here", to_tag="b"), srv_addr)
    deadline = time.monotonic() + 5
    while not srv.server._stop.is_set() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert srv.server._stop.is_set()  # no call left: the drain is over


def test_an_invite_flood_from_one_address_gets_503_then_silence(
    start_server: Callable[..., ServerThread], caplog: pytest.LogCaptureFixture
) -> None:
    srv = start_server(sip={"enabled": True, "port": 0, "invite_rate": 0.01, "invite_burst": 2})
    port = srv.server.sip_port
    with caplog.at_level(logging.INFO, logger="edgedispatch.sip"):
        answers = [udp_exchange(port, request("INVITE", f"f{i}"), 0.5) for i in range(6)]
    statuses = [[a.status for a in got] for got in answers]
    assert statuses[:2] == [[404], [404]]  # no trunk takes the number: admitted, then 404
    assert statuses[2:4] == [[503], [503]]
    assert answers[2][0].headers.get("retry-after")
    assert statuses[4:] == [[], []]  # past the hard limit: dropped, nothing reflected
    assert "too many calls from this address" in caplog.text
    still_up(srv)  # OPTIONS is not rate limited


@pytest.mark.once  # sipp's losses, not the loop, are its subject
def test_retransmitted_invites_are_absorbed_and_each_call_decided_once(
    start_server: Callable[..., ServerThread], caplog: pytest.LogCaptureFixture
) -> None:
    """sipp loses 5% of the datagrams it sends and receives: INVITEs and
    404s go missing, sipp sends its INVITE again, we send the 404 again
    (Timer G or the copy's answer), and every call still completes.  (At
    5% of 60 calls: a 0.2% chance that no copy is sent, and 0.05% that a
    call loses five tries in a row and passes sipp's 15 s.)"""
    srv = start_server(sip={"enabled": True, "port": 0})
    with caplog.at_level(logging.INFO, logger="edgedispatch.sip"):
        done = sipp(srv, SCENARIOS / "invite_refused.xml", "-lost", "5", calls=60)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    # (Whether sipp sent copies is not asserted: reading its screen's Retrans
    # column flaked, and a copy-free run is possible, if rare.)
    # Each call was decided once, however many copies of its INVITE came.
    assert caplog.text.count("refused: Does not match any SIP Trunks") == 60


@pytest.mark.parametrize("transport", ["u1", "t1"], ids=["udp", "tcp"])
def test_a_merged_invite_is_refused_482_and_the_call_decided_once(
    start_server: Callable[..., ServerThread], transport: str, caplog: pytest.LogCaptureFixture
) -> None:
    srv = start_server(sip={"enabled": True, "port": 0})
    with caplog.at_level(logging.INFO, logger="edgedispatch.sip"):
        done = sipp(srv, SCENARIOS / "invite_merged.xml", calls=5, transport=transport)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert caplog.text.count("refused: Does not match any SIP Trunks") == 5


def test_bad_datagrams_get_400_or_513_or_nothing_and_the_server_stays_up(
    start_server: Callable[..., ServerThread], caplog: pytest.LogCaptureFixture
) -> None:
    srv = start_server(sip={"enabled": True, "port": 0})
    port = srv.server.sip_port
    with caplog.at_level(logging.INFO, logger="edgedispatch.sip"):
        (bad,) = udp_exchange(port, request("INVITE", "b1").replace(b"CSeq: 1 INVITE", b"CSeq: x"))
        assert bad.status == 400 and "bad CSeq" in bad.reason and bad.headers["call-id"] == "b1"
        flood = "".join(f"X-H{i}: {i}\r\n" for i in range(MAX_HEADERS + 1))
        (big,) = udp_exchange(port, request("OPTIONS", "b2", extra=flood))
        assert big.status == 513
        short = request("INVITE", "b3", body="v=0\r\n").replace(b"Length: 5", b"Length: 500")
        (cut,) = udp_exchange(port, short)
        assert cut.status == 400 and "Content-Length" in cut.reason
        for junk in (b"\x00\xff" * 50, b"SIP/2.0 200 OK\r\n\r\n", b"GET / HTTP/1.1\r\n\r\n"):
            assert udp_exchange(port, junk, 0.3) == []  # nowhere to answer: dropped
    assert caplog.text.count("refused:") >= 4  # each one logged
    still_up(srv)


@pytest.mark.parametrize(
    ("data", "status", "reason"),
    [
        (request("OPTIONS", "t1", extra="Content-Length: abc\r\n"), 400, "Content-Length"),
        (request("OPTIONS", "t2").replace(b"Content-Length: 0\r\n", b""), 400, "required"),
        (request("OPTIONS", "t3").replace(b"Length: 0", b"Length: 99999999"), 513, "over"),
        (
            request("OPTIONS", "t4", extra="".join(f"X-H{i}: {i}\r\n" for i in range(200))),
            513,
            "header lines",
        ),
        (b"OPTIONS sip:a@b SIP/2.0\r\n" + b"X-Pad: " + b"p" * 70_000, 513, "header over"),
    ],
    ids=["bad-content-length", "no-content-length", "oversized", "header-flood", "endless-header"],
)
def test_a_bad_tcp_stream_gets_its_answer_and_is_closed_and_the_server_stays_up(
    start_server: Callable[..., ServerThread], data: bytes, status: int, reason: str
) -> None:
    srv = start_server(sip={"enabled": True, "port": 0})
    good = request("OPTIONS", "before", via="TCP")
    answers, closed = tcp_exchange(srv.server.sip_port, good + data)
    assert [a.status for a in answers] == [200, status] and closed
    assert reason in answers[1].reason
    still_up(srv)
