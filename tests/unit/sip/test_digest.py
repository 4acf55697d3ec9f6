"""Digest auth of inbound calls: a caller with the trunk's password gets
in once per challenge; a wrong, forged, foreign, replayed or old answer
does not."""

from __future__ import annotations

from edgedispatch.sip.digest import DigestAuth, Verdict, parse_auth, response
from edgedispatch.sip.message import Request, parse_datagram


def invite(call_id: str = "c1", auth: str = "") -> Request:
    header = f"Proxy-Authorization: {auth}\r\n" if auth else ""
    msg = parse_datagram(
        (
            "INVITE sip:+15550100@edge SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\n"
            f"From: <sip:+15550199@trunk>;tag=a\r\nTo: <sip:+15550100@edge>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 2 INVITE\r\n{header}Content-Length: 0\r\n\r\n"
        ).encode()
    )
    assert isinstance(msg, Request)
    return msg


def answer(challenge: str, user: str = "trunk", password: str = "pw", nc: str = "00000001") -> str:
    """What a client (sipp -au/-ap) sends back."""
    c = parse_auth(challenge)
    uri = "sip:+15550100@edge"
    digest = response(user, password, c["realm"], "INVITE", uri, c["nonce"], "auth", nc, "cn1")
    return (
        f'Digest username="{user}", realm="{c["realm"]}", nonce="{c["nonce"]}", uri="{uri}", '
        f'response="{digest}", algorithm=MD5, qop=auth, nc={nc}, cnonce="cn1"'
    )


def test_the_right_answer_gets_in_once() -> None:
    auth = DigestAuth(b"k" * 32)
    assert auth.check(invite(), "trunk", "pw", 0.0) is Verdict.MISSING
    challenge = auth.challenge("c1", 0.0)
    assert challenge.startswith('Digest realm="LiveKit", nonce="') and 'qop="auth"' in challenge
    signed = invite(auth=answer(challenge))
    assert auth.check(signed, "trunk", "pw", 1.0) is Verdict.OK
    assert auth.check(signed, "trunk", "pw", 2.0) is Verdict.STALE  # replayed


def test_wrong_forged_and_foreign_answers_are_refused() -> None:
    auth = DigestAuth(b"k" * 32)
    challenge = auth.challenge("c1", 0.0)
    assert auth.check(invite(auth=answer(challenge, password="no")), "trunk", "pw", 1) is (
        Verdict.WRONG
    )
    assert auth.check(invite(auth=answer(challenge, user="x")), "trunk", "pw", 1) is Verdict.WRONG
    # A nonce made for another call, or by another server, is no good here.
    assert auth.check(invite("c2", answer(challenge)), "trunk", "pw", 1) is Verdict.WRONG
    other = DigestAuth(b"o" * 32).challenge("c1", 0.0)
    assert auth.check(invite(auth=answer(other)), "trunk", "pw", 1) is Verdict.WRONG


def test_an_old_nonce_is_stale_and_the_used_table_is_bounded() -> None:
    auth = DigestAuth(b"k" * 32, window=30.0, max_used=2)
    old = auth.challenge("c1", 0.0)
    assert auth.check(invite(auth=answer(old)), "trunk", "pw", 31.0) is Verdict.STALE
    assert "stale=true" in auth.challenge("c1", 31.0, stale=True)
    for i in range(2):
        fresh = auth.challenge("c1", 40.0 + i)
        assert auth.check(invite(auth=answer(fresh)), "trunk", "pw", 41.0 + i) is Verdict.OK
    full = auth.challenge("c1", 43.0)
    assert auth.check(invite(auth=answer(full)), "trunk", "pw", 43.5) is Verdict.STALE
    later = auth.challenge("c1", 80.0)  # the used ones expired: room again
    assert auth.check(invite(auth=answer(later)), "trunk", "pw", 80.5) is Verdict.OK


def test_auth_headers_are_read_with_quotes_and_commas() -> None:
    got = parse_auth('Digest username="a,b", realm="R \\"x\\"", nc=00000001, qop=auth')
    assert got == {"username": "a,b", "realm": 'R "x"', "nc": "00000001", "qop": "auth"}
    assert parse_auth("Basic abc") == {}
