"""A call's RTP socket (``net.sip_media.bind_call``): a free port of the
range (``RtpPorts``, as a worker sees it), on the address it is given,
whether an IP address (a socket of our own) or a host name (resolved by
the loop), given back as the call's socket closes."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from edgedispatch.cli.bench.common import free_port
from edgedispatch.net.sip_media import RtpPorts, bind_call


class Call(asyncio.DatagramProtocol):
    """What ``bind_call`` needs of a ``CallMedia``."""

    def __init__(self) -> None:
        self.got: asyncio.Queue[bytes] = asyncio.Queue()
        self.transport: Any = None
        self.held: tuple[RtpPorts, int] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.got.put_nowait(data)

    def holds(self, ports: RtpPorts, port: int) -> None:
        self.held = (ports, port)

    def close_socket(self) -> None:  # as CallMedia's
        self.transport.close()
        if self.held is not None:
            self.held[0].free.append(self.held[1])


async def bound(host: str, ports: RtpPorts) -> tuple[int, Call]:
    call = Call()
    port = await bind_call(call, ports, host)  # type: ignore[arg-type]
    assert call.held == (ports, port)
    return port, call


async def hears(call: Call) -> None:
    """A datagram sent to the call's socket (on whatever address it took) arrives."""
    sock = call.transport.get_extra_info("socket")
    with socket.socket(sock.family, socket.SOCK_DGRAM) as phone:
        phone.sendto(b"rtp", call.transport.get_extra_info("sockname")[:2])
        assert await asyncio.wait_for(call.got.get(), 5) == b"rtp"


def test_a_call_gets_a_free_port_of_the_range_and_gives_it_back() -> None:
    async def main() -> None:
        first = free_port(udp_too=True)
        taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        taken.bind(("127.0.0.1", first))  # another process holds one of the two
        ports = RtpPorts(first, first + 1)
        try:
            port, call = await bound("127.0.0.1", ports)
            assert port == first + 1
            await hears(call)
            # The other port is still held elsewhere: the call is told so.
            with pytest.raises(OSError, match=f"no free RTP port in {first}-{first + 1}"):
                await bound("127.0.0.1", ports)
            call.close_socket()
            await asyncio.sleep(0.05)  # the loop closes the socket
            again, later = await bound("127.0.0.1", ports)
            assert again == first + 1  # given back, and taken again
            later.close_socket()
        finally:
            taken.close()

    asyncio.run(main())


def test_ports_held_elsewhere_go_to_the_back_and_a_full_range_fails_after_a_few_tries() -> None:
    async def main() -> None:
        first = free_port(udp_too=True) - 39  # the range's last port is free
        ports = RtpPorts(first, first + 39)
        assert sorted(ports.free) == list(range(first, first + 40))
        assert list(ports.free) != sorted(ports.free)  # in a random order
        held = []  # another worker's sockets on all but the range's last port
        for port in range(first, first + 39):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            held.append(sock)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                pass  # another process has it: held all the same
        try:
            ports.free.remove(first + 39)
            ports.free.appendleft(first + 39)  # tried first: a free one is found at once
            port, call = await bound("127.0.0.1", ports)
            assert port == first + 39
            # The rest are all held: a call fails after ATTEMPTS tries, not 39,
            # and the ports it tried wait at the back.
            tried = list(ports.free)[: RtpPorts.ATTEMPTS]
            with pytest.raises(OSError, match="no free RTP port"):
                await bound("127.0.0.1", ports)
            assert list(ports.free)[-RtpPorts.ATTEMPTS :] == tried
            assert len(ports.free) == 39
            call.close_socket()
        finally:
            for sock in held:
                sock.close()

    asyncio.run(main())


def test_a_host_name_is_resolved_by_the_loop() -> None:
    async def main() -> None:
        first = free_port(udp_too=True)
        port, call = await bound("localhost", RtpPorts(first, first))
        assert port == first
        await hears(call)
        call.close_socket()

    asyncio.run(main())


def test_an_ipv6_address_gets_an_ipv6_socket() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no ::1 here")

    async def main() -> None:
        first = free_port(udp_too=True)
        port, call = await bound("::1", RtpPorts(first, first))
        assert call.transport.get_extra_info("socket").family == socket.AF_INET6
        assert port == first
        await hears(call)
        call.close_socket()

    asyncio.run(main())
