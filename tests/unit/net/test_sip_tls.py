"""SIP's TLS settings: checked when the configuration is read, and files
that cannot be loaded named when the listener starts; the listener's own
accept loop."""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest

from edgedispatch.config import Config, SipConfig, validate
from edgedispatch.errors import ConfigError
from edgedispatch.net import sip_tls
from edgedispatch.net.sip import SipEndpoint

from .conftest import Runner


def test_a_certificate_without_its_key_is_refused() -> None:
    with pytest.raises(ConfigError, match="sip.tls_cert: tls_cert and tls_key go together"):
        validate(Config(sip=SipConfig(tls_cert="/etc/edgedispatch/sip.crt")))
    with pytest.raises(ConfigError, match="sip.tls_port"):
        validate(Config(sip=SipConfig(tls_port=70000)))


def test_files_that_cannot_be_loaded_are_named(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(ConfigError, match="sip.tls_cert: cannot load the certificate and key"):
        sip_tls.server_context(SipConfig(tls_cert=str(junk), tls_key=str(junk)))
    with pytest.raises(ConfigError, match="sip.tls_ca_file: cannot load the CA file"):
        sip_tls.client_context(SipConfig(tls_ca_file=str(tmp_path / "missing.pem")))
    context = sip_tls.client_context(SipConfig())  # the system's CAs
    assert context.check_hostname and context.minimum_version.name == "TLSv1_2"


class _FailsOnce:
    """A listening socket whose first accept fails as it does when the
    process is out of descriptors."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.failed = False

    def accept(self) -> tuple[socket.socket, Any]:
        if not self.failed:
            self.failed = True
            raise OSError(errno.EMFILE, "Too many open files")
        return self._sock.accept()

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        self._sock.close()


def test_a_failed_accept_pauses_the_listener_then_it_accepts_again(
    run: Runner[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Out of descriptors, the TLS listener stops watching its socket for a
    while instead of spinning on it, then takes the waiting connection;
    a connection that never shakes hands is uncounted when it goes."""
    monkeypatch.setattr(sip_tls, "ACCEPT_RETRY_DELAY", 0.2)

    async def main() -> list[int]:
        loop = asyncio.get_running_loop()
        endpoint = SipEndpoint(loop, lambda *_: None, "127.0.0.1")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        listener = sip_tls.TlsListener(endpoint, context, "127.0.0.1", 0)
        flaky = _FailsOnce(listener._sock)
        listener._sock = flaky  # type: ignore[assignment]
        counts = []
        with socket.create_connection(("127.0.0.1", listener.port)):
            await asyncio.sleep(0.1)
            counts.append(sum(endpoint.peers.values()))  # paused: not yet taken
            await asyncio.sleep(0.3)
            counts.append(sum(endpoint.peers.values()))  # taken, counted
        for _ in range(100):  # it goes without a handshake: uncounted
            if not endpoint.peers:
                break
            await asyncio.sleep(0.02)
        counts.append(sum(endpoint.peers.values()))
        assert flaky.failed
        listener.close()
        return counts

    assert run(main()) == [0, 1, 0]
