"""SIP over TLS: one edgedispatch places a call through a TLS trunk to
another's TLS listener (sipp has no TLS in Debian's build), which routes
it into a room by its trunk and rule; the trunk's certificate is checked,
name and all."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from livekit import api
from livekit.protocol import sip as pb

from edgedispatch.net import sip_tls

from .conftest import ServerThread
from .test_rooms import run
from .test_sip_calls import NUMBER, ROOM, add_rule, serve
from .test_sip_outbound import OUR_NUMBER, add_trunk


def certificates(tmp: Path) -> tuple[Path, Path, Path]:
    """A private CA, and a certificate it signed for localhost and
    127.0.0.1: (the CA's PEM, the certificate's, its key's)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test carrier CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    paths = tmp / "ca.pem", tmp / "sip.crt", tmp / "sip.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )  # fmt: skip
    )
    return paths


async def participants(srv: ServerThread, room: str) -> list[str]:
    async with api.LiveKitAPI(srv.url, "devkey", "secret") as lk:
        found = await lk.room.list_participants(api.ListParticipantsRequest(room=room))
        return [p.identity for p in found.participants]


def test_a_call_through_a_tls_trunk_is_answered_by_a_tls_listener_and_hung_up(
    start_server: Callable[..., ServerThread], tmp_path: Path
) -> None:
    """The callee's server listens for TLS with the certificate; the
    caller's trusts the CA that signed it (``tls_ca_file``) and dials
    "localhost", the name in the certificate.  The call is answered
    (wait_until_answered), its caller joins the callee's room as a SIP
    participant, and deleting the caller's room hangs up over TLS: the
    participant leaves."""
    ca, cert, key = certificates(tmp_path)
    callee = serve(start_server, tls_cert=str(cert), tls_key=str(key), tls_port=0)
    add_rule(callee)  # NUMBER's trunk, and a rule into ROOM
    caller = serve(start_server, tls_ca_file=str(ca))
    port = callee.server.sip_tls_port
    assert port

    async def main() -> tuple[pb.SIPParticipantInfo, list[str]]:
        trunk_id = await add_trunk(caller, port, "localhost", transport=pb.SIP_TRANSPORT_TLS)
        async with api.LiveKitAPI(caller.url, "devkey", "secret") as lk:
            info = await lk.sip.create_sip_participant(
                pb.CreateSIPParticipantRequest(
                    sip_trunk_id=trunk_id, sip_call_to=NUMBER, room_name="caller-room",
                    wait_until_answered=True,
                )
            )  # fmt: skip
            joined = await participants(callee, ROOM)
            await lk.room.delete_room(api.DeleteRoomRequest(room="caller-room"))
        left: list[str] = joined
        for _ in range(200):
            left = await participants(callee, ROOM)
            if not left:
                break
            await asyncio.sleep(0.05)
        assert left == [], left
        return info, joined

    info, joined = run(main)
    assert info.sip_call_id and info.participant_identity == f"sip_{NUMBER}"
    assert joined == [f"sip_{OUR_NUMBER}"]


def test_a_tls_trunk_whose_certificate_is_not_trusted_fails_the_call(
    start_server: Callable[..., ServerThread], tmp_path: Path
) -> None:
    """Without the private CA, the callee's certificate does not verify:
    the call fails ``unavailable``, saying why, and nothing reaches the
    callee's room."""
    _, cert, key = certificates(tmp_path)
    callee = serve(start_server, tls_cert=str(cert), tls_key=str(key), tls_port=0)
    add_rule(callee)
    caller = serve(start_server)  # the system's CAs only

    async def main() -> api.TwirpError:
        trunk_id = await add_trunk(
            caller, callee.server.sip_tls_port, "localhost", transport=pb.SIP_TRANSPORT_TLS
        )
        async with api.LiveKitAPI(caller.url, "devkey", "secret") as lk:
            try:
                await lk.sip.create_sip_participant(
                    pb.CreateSIPParticipantRequest(
                        sip_trunk_id=trunk_id, sip_call_to=NUMBER, room_name="caller-room",
                        wait_until_answered=True,
                    )
                )  # fmt: skip
            except api.TwirpError as exc:
                return exc
        raise AssertionError("the call went through an untrusted certificate")

    error = run(main)
    assert error.code == "unavailable", error
    assert "cannot reach the trunk over TLS" in error.message
    assert "CERTIFICATE_VERIFY_FAILED" in error.message


def options_over_tls(ca: Path, port: int, n: int) -> bytes:
    """An OPTIONS over a TLS connection to ``port`` (the certificate
    checked against ``ca``), and the first bytes of the answer."""
    context = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(
                b"OPTIONS sip:edge@127.0.0.1 SIP/2.0\r\n"
                b"Via: SIP/2.0/TLS 127.0.0.1:5999;branch=z9hG4bKprobe%d\r\n"
                b"From: <sip:probe@127.0.0.1>;tag=p%d\r\nTo: <sip:edge@127.0.0.1>\r\n"
                b"Call-ID: probe-%d\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
                b"Content-Length: 0\r\n\r\n" % (n, n, n)
            )
            return tls.recv(4096)


def test_a_connection_that_never_starts_tls_is_closed(
    start_server: Callable[..., ServerThread], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A peer that connects to the TLS port and sends nothing (or no
    handshake) is cut off after the handshake timeout, instead of holding
    its socket; a TLS client then still gets an answer to OPTIONS."""
    monkeypatch.setattr(sip_tls, "HANDSHAKE_TIMEOUT", 0.5)
    ca, cert, key = certificates(tmp_path)
    srv = serve(start_server, tls_cert=str(cert), tls_key=str(key), tls_port=0)
    port = srv.server.sip_tls_port
    with socket.create_connection(("127.0.0.1", port), timeout=5) as silent:
        started = time.monotonic()
        assert silent.recv(1) == b""  # closed by the server
        assert time.monotonic() - started < 4
    assert options_over_tls(ca, port, 1).startswith(b"SIP/2.0 200 ")


def test_connections_that_have_not_shaken_hands_count_against_the_caps(
    start_server: Callable[..., ServerThread], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flood of TLS connections that never finish their handshake cannot
    hold more sockets than the per-peer cap: each is counted when it is
    accepted, and one over the cap is closed at once, not after the
    handshake timeout.  Once they go, a TLS client is served again."""
    monkeypatch.setattr(sip_tls, "HANDSHAKE_TIMEOUT", 30.0)
    ca, cert, key = certificates(tmp_path)
    srv = serve(
        start_server, tls_cert=str(cert), tls_key=str(key), tls_port=0,
        max_connections=4, max_connections_per_peer=0.5,
    )  # fmt: skip
    port = srv.server.sip_tls_port
    silent = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(2)]
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as third:
            started = time.monotonic()
            assert third.recv(1) == b""  # refused: the peer's two are held
            assert time.monotonic() - started < 5
        for held in silent:  # still open, waiting for their handshakes
            held.settimeout(0.2)
            with pytest.raises(TimeoutError):
                held.recv(1)
    finally:
        for held in silent:
            held.close()
    deadline = time.monotonic() + 10
    while True:  # the server sees the two go, and uncounts them
        try:
            assert options_over_tls(ca, port, 2).startswith(b"SIP/2.0 200 ")
            break
        except (ssl.SSLError, ConnectionError):
            assert time.monotonic() < deadline, "the refused connections were never uncounted"
            time.sleep(0.1)
