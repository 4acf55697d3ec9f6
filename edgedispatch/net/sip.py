"""The SIP transport over UDP: datagrams to the sans-IO UAS core
(``sip.uas``) and its datagrams back to the network, in one synchronous
pass per datagram, with one ``call_at`` for its timers.  What a call means
(which room, which agent) is the application's, given as ``on_event``."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable

from edgedispatch.net.timer import DeadlineTimer
from edgedispatch.sip.uac import Event as OutboundEvent
from edgedispatch.sip.uas import Event, UserAgentServer

log = logging.getLogger("edgedispatch.sip")


class SipEndpoint(asyncio.DatagramProtocol):
    """:param on_event: called with each event of the UAS core and the
    loop's time; it may decide calls at once (``uas.reject`` ...)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_event: Callable[[UserAgentServer, Event | OutboundEvent, float], None],
        host: str,
    ) -> None:
        self._loop = loop
        self._on_event = on_event
        self._host = host
        self.uas: UserAgentServer | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._timer = DeadlineTimer(loop, self._on_timer)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not an isinstance check: uvloop's UDP transport is no subclass
        # of asyncio.DatagramTransport.
        self._transport = transport  # type: ignore[assignment]
        port = transport.get_extra_info("sockname")[1]
        self.uas = UserAgentServer(f"sip:edge@{self._host}:{port}", lambda: secrets.token_hex(8))

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        uas = self.uas
        if uas is None:
            return
        now = self._loop.time()
        uas.receive_datagram(data, (str(addr[0]), int(addr[1])), now)
        self.flush(now)

    def flush(self, now: float) -> None:
        """Send what the core has to send, hand its events on, and re-arm
        its timer (after anything that may have changed them)."""
        uas = self.uas
        transport = self._transport
        if uas is None or transport is None:
            return
        for event in uas.take_events():
            try:
                self._on_event(uas, event, now)
            except Exception:
                log.exception("a SIP event's handler failed")
        for data, addr in uas.take_outgoing():
            transport.sendto(data, addr)
        self._timer.arm(uas.next_deadline())

    def _on_timer(self, now: float) -> None:
        if self.uas is not None:
            self.uas.on_timer(now)
            self.flush(now)

    def error_received(self, exc: Exception) -> None:
        log.debug("SIP socket error: %s", exc)  # an ICMP unreachable for a datagram we sent

    def connection_lost(self, exc: Exception | None) -> None:
        self._timer.cancel()
        self._transport = None
