"""SIP's TLS settings: checked when the configuration is read, and files
that cannot be loaded named when the listener starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgedispatch.config import Config, SipConfig, validate
from edgedispatch.errors import ConfigError
from edgedispatch.net import sip_tls


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
