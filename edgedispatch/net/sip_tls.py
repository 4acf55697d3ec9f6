"""The TLS contexts of SIP: the listener's (``sip.tls_cert`` and
``tls_key``: the certificate carriers check when they call in over TLS)
and the one that checks the trunks we call over TLS (the system's CAs, or
``sip.tls_ca_file`` for a carrier with a private CA).

Trunks' certificates are always checked, name included: a carrier's SIP
carries phone numbers and digest answers, and a TLS trunk that accepted
any certificate would hand them to whoever sits on the path.  TLS 1.2 is
the oldest version either side speaks (RFC 8996; carriers' SBCs all have
it)."""

from __future__ import annotations

import ssl

from edgedispatch.config import SipConfig
from edgedispatch.errors import ConfigError

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
