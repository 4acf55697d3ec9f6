"""The TLS contexts of SIP: the listener's (``sip.tls_cert`` and
``tls_key``: the certificate carriers check when they call in over TLS)
and the one that checks the trunks we call over TLS (the system's CAs, or
``sip.tls_ca_file`` for a carrier with a private CA).

Trunks' certificates are always checked, name included: a carrier's SIP
carries phone numbers and digest answers, and a TLS trunk that accepted
any certificate would hand them to whoever sits on the path.  TLS 1.2 is
the oldest version either side speaks (RFC 8996; carriers' SBCs all have
it).

The listener accepts connections itself (``TlsListener``) and counts each
against the endpoint's caps before its handshake: asyncio's own TLS server
tells its protocol of a connection only once the handshake is done, so a
flood of connections that never finish it would hold sockets that no cap
sees, each for the handshake timeout."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl

from edgedispatch.config import SipConfig
from edgedispatch.errors import ConfigError
from edgedispatch.net.sip import SipEndpoint, SipStream

log = logging.getLogger("edgedispatch.sip")

#: Seconds a caller's TLS handshake may take (asyncio's default is 60: a
#: peer that connects and says nothing would hold its socket that long).
HANDSHAKE_TIMEOUT = 10.0


def server_context(sip: SipConfig) -> ssl.SSLContext:
    """The listener's; raises ConfigError for a certificate or key that
    cannot be loaded."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(sip.tls_cert, sip.tls_key or None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the certificate and key: {exc}", "sip.tls_cert") from None
    return context


def client_context(sip: SipConfig) -> ssl.SSLContext:
    """How a TLS trunk's certificate is checked; raises ConfigError for a
    CA file that cannot be loaded."""
    try:
        context = ssl.create_default_context(cafile=sip.tls_ca_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the CA file: {exc}", "sip.tls_ca_file") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


#: Connections accepted per readiness callback, at most (then the loop's
#: other work runs, and the rest wait in the backlog).
ACCEPT_BATCH = 64
#: Seconds the listener stops accepting after an accept failed.
ACCEPT_RETRY_DELAY = 1.0


class TlsListener:
    """The SIP TLS port: connections counted at their accept (refused over
    the caps at once), then handed to asyncio's TLS with the handshake
    timeout; what cannot shake hands in time is closed and uncounted."""

    def __init__(
        self, endpoint: SipEndpoint, context: ssl.SSLContext, host: str, port: int
    ) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.create_server((host, port), family=family, backlog=socket.SOMAXCONN)
        self._sock.setblocking(False)
        self.port: int = self._sock.getsockname()[1]
        self._endpoint = endpoint
        self._context = context
        self._handshakes: set[asyncio.Task[None]] = set()
        endpoint.loop.add_reader(self._sock.fileno(), self._accept)

    def _accept(self) -> None:
        loop = self._endpoint.loop
        for _ in range(ACCEPT_BATCH):
            try:
                conn, address = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # Out of descriptors, say: the socket stays readable, so
                # stop watching it for a while (as asyncio's servers do)
                # rather than spin on it.
                log.warning("SIP TLS: accept failed, retried in %g s: %s", ACCEPT_RETRY_DELAY, exc)
                loop.remove_reader(self._sock.fileno())
                loop.call_later(ACCEPT_RETRY_DELAY, self._resume)
                return
            peer = (str(address[0]), int(address[1]))
            if not self._endpoint.admit(*peer):
                conn.close()
                continue
            task = loop.create_task(self._handshake(conn, peer))
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)

    def _resume(self) -> None:
        if self._sock.fileno() >= 0:  # not closed meanwhile
            self._endpoint.loop.add_reader(self._sock.fileno(), self._accept)

    async def _handshake(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        stream = SipStream(self._endpoint, counted=peer)
        try:
            await self._endpoint.loop.connect_accepted_socket(
                lambda: stream, conn, ssl=self._context, ssl_handshake_timeout=HANDSHAKE_TIMEOUT
            )
        except (OSError, ssl.SSLError) as exc:  # asyncio's handshake timeout is an OSError
            log.info("SIP TLS connection from %s:%d closed: no handshake (%s)", *peer, exc)
            conn.close()
            stream.uncount()

    def close(self) -> None:
        self._endpoint.loop.remove_reader(self._sock.fileno())
        self._sock.close()
        for task in list(self._handshakes):
            task.cancel()
