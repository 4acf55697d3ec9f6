"""The SIP transports, UDP, TCP and TLS: messages to the sans-IO user agent
(``sip.uas``) and its messages back to the network, in one synchronous
pass per datagram or read, with one ``call_at`` for its timers.  What a
call means (which room, which agent) is the application's, given as
``on_event``.

A message for an address with a live TCP connection goes over it (the
answers to what came in over TCP, and the calls we place through a trunk
whose transport is TCP or TLS: ``connect`` opens its connection first,
checking a TLS trunk's certificate against its name); anything else goes
by UDP.  A stream that cannot be framed (a bad header, no Content-Length)
is closed after a 400: it cannot be resynchronised.

A hostile peer cannot hold the port with connections: one that has not
sent a whole first message within ``FIRST_MESSAGE_TIMEOUT`` is closed,
and connections in all and per peer address are capped
(``sip.max_connections``); those we open to trunks are not counted.  A
TLS connection is counted when it is accepted, before its handshake
(``sip_tls.TlsListener``)."""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import secrets
import socket
import ssl
from collections import Counter
from collections.abc import Callable

from edgedispatch.errors import EdgeDispatchError, TooLarge
from edgedispatch.net.timer import DeadlineTimer
from edgedispatch.sip.message import StreamParser, refusal_of
from edgedispatch.sip.refer import Event as TransferEvent
from edgedispatch.sip.transaction import T1
from edgedispatch.sip.uac import Event as OutboundEvent
from edgedispatch.sip.uas import UserAgentServer
from edgedispatch.sip.uas_calls import Event, IncomingCall

log = logging.getLogger("edgedispatch.sip")
PARTIAL_TIMEOUT = 64 * T1
#: Seconds a new connection has to send its first whole message: one that
#: says nothing is not a SIP peer (a half-open scan, or a peer keeping
#: sockets), and would otherwise be kept for ever.
FIRST_MESSAGE_TIMEOUT = 10.0
#: Seconds a trunk's TCP connection may take to open.
CONNECT_TIMEOUT = 5.0


#: The lookups and connections under way (a task needs a reference).
_LOOKUPS: set[asyncio.Task[None]] = set()


def resolve_host(host: str, then: Callable[[str | None], None]) -> None:
    """Calls ``then`` with ``host``'s IPv4 address (at once for an IP
    address, else after a lookup off the loop's thread), or None."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        then(host)
        return
    loop = asyncio.get_running_loop()

    async def look_up() -> None:
        try:
            infos = await loop.getaddrinfo(
                host, None, family=socket.AF_INET, type=socket.SOCK_DGRAM
            )
            address: str | None = str(infos[0][4][0]) if infos else None
        except OSError as exc:
            log.info("SIP: cannot resolve %s: %s", host, exc)
            address = None
        try:
            then(address)
        except Exception:
            log.exception("a resolved call could not go on")

    task = loop.create_task(look_up())
    _LOOKUPS.add(task)
    task.add_done_callback(_LOOKUPS.discard)


class SipEndpoint(asyncio.DatagramProtocol):
    """:param on_event: called with each event of the UAS core and the
    loop's time; it may decide calls at once (``uas.reject`` ...)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_event: Callable[[UserAgentServer, Event | OutboundEvent | TransferEvent, float], None],
        host: str,
        client_tls: ssl.SSLContext | None = None,
        max_connections: int = 1000,
        per_peer: float = 0.1,
    ) -> None:
        self.loop = loop
        #: Connections peers may open (TCP and TLS), in all and per address.
        self.max_connections = max_connections
        self.peer_cap = max(1, int(max_connections * per_peer))
        #: peer address -> its connections to us (not those we opened)
        self.peers: Counter[str] = Counter()
        self._on_event = on_event
        self._host = host
        #: How a TLS trunk's certificate is checked (the CAs trusted).
        self._client_tls = client_tls
        self.uas: UserAgentServer | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._timer = DeadlineTimer(loop, self._on_timer)
        self.streams: dict[tuple[str, int], SipStream] = {}  # peer -> its TCP connection
        #: Seconds a TCP message may take from its first byte to its last
        #: (64*T1, the longest a transaction waits): a peer that trickles
        #: bytes or stops mid-message is cut off, instead of holding its
        #: buffer (up to 64 KiB) for ever.
        self.partial_timeout = PARTIAL_TIMEOUT
        #: address -> who waits for the TCP connection being opened to it
        self._connecting: dict[tuple[str, int], list[Callable[[str | None], None]]] = {}
        #: The trunks we call over TCP or TLS (-> the name their certificate
        #: must have, None for TCP): what goes there after their connection
        #: closed opens it again (never a datagram).
        self._tcp_peers: dict[tuple[str, int], str | None] = {}

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
        now = self.loop.time()
        uas.receive_datagram(data, (str(addr[0]), int(addr[1])), now)
        self.flush(now)

    def flush(self, now: float) -> None:
        """Send what the core has to send, hand its events on, and re-arm
        its timer (after anything that may have changed them)."""
        uas = self.uas
        transport = self._transport
        if uas is None or transport is None:
            return
        # A handler's decision may make events of its own (a refusal ends
        # the call): they are handed on in the same pass.
        while events := uas.take_events():
            for event in events:
                try:
                    self._on_event(uas, event, now)
                except Exception:
                    log.exception("a SIP event's handler failed")
                    # A call left undecided would wait forever (and hold its
                    # place in the call limits): refused instead.
                    if isinstance(event, IncomingCall) and uas.is_offered(event.call_id):
                        uas.reject(event.call_id, 500, now, "the call could not be handled")
        for data, addr in uas.take_outgoing():
            stream = self.streams.get(addr)
            if stream is not None:
                stream.write(data)
            elif addr in self._tcp_peers:
                resend = functools.partial(self._resend, addr, data)
                self.connect(addr, resend, self._tcp_peers[addr])
            else:
                transport.sendto(data, addr)
        self._timer.arm(uas.next_deadline())

    def stream(self) -> SipStream:
        """A protocol for one TCP connection a peer opened."""
        return SipStream(self)

    def admit(self, host: str, port: int) -> bool:
        """Count a connection from ``host``, or say it is one too many."""
        if sum(self.peers.values()) >= self.max_connections or self.peers[host] >= self.peer_cap:
            log.info("SIP connection from %s:%d refused: too many connections", host, port)
            return False
        self.peers[host] += 1
        return True

    def release(self, host: str) -> None:
        """A counted connection from ``host`` ended."""
        self.peers[host] -= 1
        if self.peers[host] <= 0:
            del self.peers[host]

    def outbound_stream(self) -> SipStream:
        """A protocol for one connection we open (to a trunk)."""
        return SipStream(self, ours=True)

    def connect(
        self,
        address: tuple[str, int],
        then: Callable[[str | None], None],
        tls_name: str | None = None,
    ) -> None:
        """Open a TCP connection to ``address`` (an IP address and port),
        or find it open, then call ``then`` with None or why it could not.
        With ``tls_name``, TLS over it, whose certificate must be valid for
        that name (the trunk's host).  It stays open for the calls that
        follow (its peer may close it)."""
        if tls_name is not None and self._client_tls is None:
            then("TLS is not set up on this server")
            return
        self._tcp_peers[address] = tls_name
        open_stream = self.streams.get(address)
        if open_stream is not None:
            if open_stream.secure == (tls_name is not None):
                then(None)
            else:
                then("a connection to that address is open, with" + ("out" * bool(tls_name))
                     + " TLS")  # fmt: skip
            return
        waiting = self._connecting.get(address)
        if waiting is not None:
            waiting.append(then)
            return
        self._connecting[address] = [then]

        async def open_connection() -> None:
            error: str | None = None
            context = self._client_tls if tls_name else None
            try:
                await asyncio.wait_for(
                    self.loop.create_connection(
                        self.outbound_stream, *address, ssl=context, server_hostname=tls_name
                    ),
                    CONNECT_TIMEOUT,
                )
            except (TimeoutError, OSError) as exc:  # ssl.SSLError is an OSError
                error = str(exc) or type(exc).__name__
                kind = "TLS" if tls_name else "TCP"
                log.info("SIP: no %s connection to %s:%d: %s", kind, *address, error)
            for each in self._connecting.pop(address, []):
                try:
                    each(error)
                except Exception:
                    log.exception("a call waiting for its TCP connection could not go on")

        task = self.loop.create_task(open_connection())
        _LOOKUPS.add(task)
        task.add_done_callback(_LOOKUPS.discard)

    def close_streams(self) -> None:
        """Close every TCP connection (the server stops)."""
        for stream in list(self.streams.values()):
            stream.close()

    def abort_streams(self) -> None:
        """Drop what ``close_streams`` left open, last: a TLS connection
        closes only once its peer answers our close_notify, which a
        stopping server does not wait for."""
        for stream in list(self.streams.values()):
            stream.abort()

    def _resend(self, address: tuple[str, int], data: bytes, error: str | None) -> None:
        stream = self.streams.get(address)
        if stream is not None:
            stream.write(data)
        # else: lost, as a datagram can be; the transaction's timer gives up

    def _on_timer(self, now: float) -> None:
        if self.uas is not None:
            self.uas.on_timer(now)
            self.flush(now)

    def error_received(self, exc: Exception) -> None:
        log.debug("SIP socket error: %s", exc)  # an ICMP unreachable for a datagram we sent

    def connection_lost(self, exc: Exception | None) -> None:
        self._timer.cancel()
        self._transport = None


class SipStream(asyncio.Protocol):
    """One TCP connection (TLS or not): messages framed by Content-Length."""

    def __init__(
        self, endpoint: SipEndpoint, ours: bool = False, counted: tuple[str, int] | None = None
    ) -> None:
        self._endpoint = endpoint
        self._ours = ours  #: we opened it (to a trunk): not capped, not timed
        #: already counted against the caps (a TLS connection, at its
        #: accept: ``counted`` is its peer)
        self._counted = counted is not None
        self._first: asyncio.TimerHandle | None = None  #: until its first message
        self._parser = StreamParser()
        self._transport: asyncio.Transport | None = None
        self._peer: tuple[str, int] = counted or ("", 0)
        self._partial_since: float | None = None  # when the unframed bytes began
        self._expiry: asyncio.TimerHandle | None = None
        self.secure = False  #: over TLS

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self.secure = transport.get_extra_info("ssl_object") is not None
        host, port = transport.get_extra_info("peername")[:2]
        self._peer = (str(host), int(port))
        endpoint = self._endpoint
        if not self._ours:
            if not self._counted:
                if not endpoint.admit(*self._peer):
                    transport.close()
                    return
                self._counted = True
            self._first = endpoint.loop.call_later(FIRST_MESSAGE_TIMEOUT, self._silent)
        endpoint.streams[self._peer] = self

    def _silent(self) -> None:
        """Its first message did not come in time: not a SIP peer."""
        self._first = None
        if self._transport is None:
            return
        log.info("SIP connection from %s:%d closed: no message in %g s",
                 *self._peer, FIRST_MESSAGE_TIMEOUT)  # fmt: skip
        self._transport.close()

    def data_received(self, data: bytes) -> None:
        endpoint = self._endpoint
        uas = endpoint.uas
        if uas is None:
            return
        now = endpoint.loop.time()
        try:
            messages = self._parser.feed(data)
        except EdgeDispatchError as exc:
            self._refuse(exc)
            return
        if messages and self._first is not None:
            self._first.cancel()
            self._first = None
        for msg in messages:
            uas.receive(msg, self._peer, now, reliable=True)
        endpoint.flush(now)
        if self._parser.error is not None:  # after the messages framed before it
            self._refuse(self._parser.error)
        elif not self._parser.buffered:
            self._partial_since = None
        elif self._partial_since is None or messages:  # a new message began
            self._partial_since = now
            if self._expiry is None:
                self._expiry = endpoint.loop.call_later(endpoint.partial_timeout, self._expire)

    def _expire(self) -> None:
        self._expiry = None
        if self._partial_since is None or self._transport is None:
            return
        loop = self._endpoint.loop
        left = self._partial_since + self._endpoint.partial_timeout - loop.time()
        if left > 0:  # the message in progress began later: wait for its own time
            self._expiry = loop.call_later(left, self._expire)
            return
        log.info("SIP stream from %s:%d closed: a message unfinished for %g s",
                 *self._peer, self._endpoint.partial_timeout)  # fmt: skip
        self._transport.close()

    def _refuse(self, exc: EdgeDispatchError) -> None:
        """A stream that cannot be framed any further: answered, closed."""
        log.info("SIP stream from %s:%d closed: %s", *self._peer, exc.msg)
        # The answer a datagram would get, if it names where to go; else
        # a bare status line, so that the peer reads why it is closed.
        status = 513 if isinstance(exc, TooLarge) else 400
        bare = f"SIP/2.0 {status} {exc.msg[:100]}\r\nContent-Length: 0\r\n\r\n"
        self.write(refusal_of(self._parser.pending(), exc) or bare.encode())
        if self._transport is not None:
            self._transport.close()

    def write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def uncount(self) -> None:
        """Give its place under the caps back, once: when it closes, or
        when its TLS handshake failed (then it never began)."""
        if self._counted:
            self._counted = False
            self._endpoint.release(self._peer[0])

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._expiry, self._first):
            if timer is not None:
                timer.cancel()
        self._expiry = self._first = None
        self.uncount()
        if self._endpoint.streams.get(self._peer) is self:
            del self._endpoint.streams[self._peer]
        self._transport = None
