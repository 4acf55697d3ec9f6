"""The SIP adapter (``net.sip``) on real loopback sockets: a call whose
handler fails is refused with 500 rather than left waiting forever (and
counted against the call limits), and the server goes on serving."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from edgedispatch.net import sip
from edgedispatch.net.sip import SipEndpoint
from edgedispatch.sip.uac import Event as OutboundEvent
from edgedispatch.sip.uas import UserAgentServer
from edgedispatch.sip.uas_calls import Event, IncomingCall

from .conftest import Runner


def invite(call_id: str) -> bytes:
    return (
        "INVITE sip:+15550100@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK-{call_id}\r\n"
        "From: <sip:+15550199@127.0.0.1>;tag=a\r\nTo: <sip:+15550100@127.0.0.1>\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def test_a_call_whose_handler_fails_is_refused_500(run: Runner[Any]) -> None:
    async def main() -> list[bytes]:
        loop = asyncio.get_running_loop()

        def broken(ua: UserAgentServer, event: Event | OutboundEvent, now: float) -> None:
            if isinstance(event, IncomingCall) and event.call_id == "boom":
                raise RuntimeError("a bug in the call handler")
            if isinstance(event, IncomingCall):
                ua.reject(event.call_id, 404, now)

        transport, endpoint = await loop.create_datagram_endpoint(
            lambda: SipEndpoint(loop, broken, "127.0.0.1"), local_addr=("127.0.0.1", 0)
        )
        port = transport.get_extra_info("sockname")[1]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            peer.bind(("127.0.0.1", 0))
            peer.setblocking(False)
            got = []
            for call_id in ("boom", "fine"):
                peer.sendto(invite(call_id), ("127.0.0.1", port))
                got.append(await asyncio.wait_for(loop.sock_recv(peer, 65536), 5))
        assert endpoint.uas is not None and endpoint.uas.calls == {}
        transport.close()
        return got

    boom, fine = run(main())
    assert boom.startswith(b"SIP/2.0 500 ") and b"Call-ID: boom" in boom
    assert fine.startswith(b"SIP/2.0 404 ")


def test_a_tcp_peer_that_stops_mid_message_is_cut_off(run: Runner[Any]) -> None:
    """A message must arrive whole within ``partial_timeout``; whole
    messages, and a connection idle between them, are left alone."""

    async def main() -> tuple[bytes, bytes, float]:
        loop = asyncio.get_running_loop()

        def refuse(ua: UserAgentServer, event: Event | OutboundEvent, now: float) -> None:
            if isinstance(event, IncomingCall):
                ua.reject(event.call_id, 404, now)

        transport, endpoint = await loop.create_datagram_endpoint(
            lambda: SipEndpoint(loop, refuse, "127.0.0.1"), local_addr=("127.0.0.1", 0)
        )
        endpoint.partial_timeout = 0.3
        server = await loop.create_server(endpoint.stream, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(invite("whole").replace(b"/UDP", b"/TCP"))
        answer = await asyncio.wait_for(reader.read(65536), 5)
        await asyncio.sleep(0.5)  # idle between messages: kept
        writer.write(invite("half")[:60])
        began = loop.time()
        rest = await asyncio.wait_for(reader.read(65536), 5)  # b"": closed by the server
        waited = loop.time() - began
        writer.close()
        server.close()
        transport.close()
        return answer, rest, waited

    answer, rest, waited = run(main())
    assert answer.startswith(b"SIP/2.0 404 ") and rest == b""
    assert 0.25 <= waited < 2  # its own time from its first byte, not the idle before


def test_a_tcp_trunks_closed_connection_is_opened_again_for_what_follows(
    run: Runner[Any],
) -> None:
    """A trunk we call over TCP closed its connection (an idle timeout):
    the next INVITE to it opens a new one, rather than going by UDP."""

    async def main() -> tuple[list[bytes], str | None]:
        loop = asyncio.get_running_loop()
        received: list[bytes] = []
        connections: list[asyncio.StreamWriter] = []

        async def trunk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            connections.append(writer)
            received.append(await reader.read(65536))

        server = await asyncio.start_server(trunk, "127.0.0.1", 0)
        address = ("127.0.0.1", server.sockets[0].getsockname()[1])
        transport, endpoint = await loop.create_datagram_endpoint(
            lambda: SipEndpoint(loop, lambda *_: None, "127.0.0.1"), local_addr=("127.0.0.1", 0)
        )
        opened: asyncio.Future[str | None] = loop.create_future()
        endpoint.connect(address, opened.set_result)
        error = await asyncio.wait_for(opened, 5)
        for _ in range(100):  # the trunk's side is up
            if connections:
                break
            await asyncio.sleep(0.01)
        connections[0].close()  # the trunk closes it
        for _ in range(100):
            if address not in endpoint.streams:
                break
            await asyncio.sleep(0.01)
        assert address not in endpoint.streams
        assert endpoint.uas is not None
        endpoint.uas.outbound.dial(
            "sip:+15550100@127.0.0.1;transport=tcp", address, "sip:+15550199@edge", b"",
            loop.time(), transport="TCP",
        )  # fmt: skip
        endpoint.flush(loop.time())
        for _ in range(200):
            if received and received[-1].startswith(b"INVITE "):
                break
            await asyncio.sleep(0.01)
        endpoint.close_streams()  # as the server does when it stops
        for writer in connections:
            writer.close()
        transport.close()
        server.close()
        await asyncio.sleep(0.05)  # the streams' close callbacks
        return received, error

    received, error = run(main())
    assert error is None
    assert len(received) == 2 and received[0] == b""  # the first: closed, unused
    assert received[1].startswith(b"INVITE sip:+15550100@127.0.0.1;transport=tcp SIP/2.0")
    assert b"Via: SIP/2.0/TCP " in received[1]


def test_connections_are_capped_per_peer_and_a_silent_one_is_closed(
    run: Runner[Any], monkeypatch: Any
) -> None:
    """A peer may hold its share of the connections (2 of 4 here): the
    third is closed as it opens, and a place frees when one closes.  A
    connection that sends no whole message in time is closed; one that
    did stays open however long it idles after."""
    monkeypatch.setattr(sip, "FIRST_MESSAGE_TIMEOUT", 0.3)

    async def main() -> tuple[bytes, bytes, bytes, bytes, bytes]:
        loop = asyncio.get_running_loop()

        def refuse(ua: UserAgentServer, event: Event | OutboundEvent, now: float) -> None:
            if isinstance(event, IncomingCall):
                ua.reject(event.call_id, 404, now)

        transport, endpoint = await loop.create_datagram_endpoint(
            lambda: SipEndpoint(loop, refuse, "127.0.0.1", max_connections=4, per_peer=0.5),
            local_addr=("127.0.0.1", 0),
        )
        server = await loop.create_server(endpoint.stream, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        talker = await asyncio.open_connection("127.0.0.1", port)
        talker[1].write(invite("first").replace(b"/UDP", b"/TCP"))
        answered = await asyncio.wait_for(talker[0].read(65536), 5)
        silent = await asyncio.open_connection("127.0.0.1", port)
        third = await asyncio.open_connection("127.0.0.1", port)  # over this peer's 2
        refused = await asyncio.wait_for(third[0].read(65536), 5)
        closed_silent = await asyncio.wait_for(silent[0].read(65536), 5)  # after 0.3 s
        await asyncio.sleep(0.2)
        fourth = await asyncio.open_connection("127.0.0.1", port)  # the silent one's place
        fourth[1].write(invite("fourth").replace(b"/UDP", b"/TCP"))
        later = await asyncio.wait_for(fourth[0].read(65536), 5)
        await asyncio.sleep(0.5)  # past the first-message time: both talked, both kept
        talker[1].write(invite("again").replace(b"/UDP", b"/TCP"))
        again = await asyncio.wait_for(talker[0].read(65536), 5)
        for _, writer in (talker, silent, third, fourth):
            writer.close()
        server.close()
        transport.close()
        return answered, refused, closed_silent, later, again

    answered, refused, closed_silent, later, again = run(main())
    assert answered.startswith(b"SIP/2.0 404 ") and refused == b"" and closed_silent == b""
    assert later.startswith(b"SIP/2.0 404 ") and again.startswith(b"SIP/2.0 404 ")
