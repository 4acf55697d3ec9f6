"""SIP messages: what real peers send is read, what would mis-route a call
or hold memory is refused with a 400 or 513-class error naming it, and
nothing a peer sends raises anything else."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgedispatch.errors import Malformed, TooLarge
from edgedispatch.sip.message import (
    MAX_HEADERS,
    MAX_MESSAGE,
    Request,
    Response,
    StreamParser,
    parse_datagram,
    parse_name_addr,
    parse_uri,
    parse_via,
    response_to,
)

SDP = (
    b"v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\n"
    b"c=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)
# What sipp's built-in uac scenario sends (its variables filled in).
INVITE = (
    b"INVITE sip:service@127.0.0.1:5060 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-1-0\r\n"
    b"From: sipp <sip:sipp@127.0.0.1:5061>;tag=1\r\n"
    b"To: service <sip:service@127.0.0.1:5060>\r\n"
    b"Call-ID: 1-1234@127.0.0.1\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Contact: sip:sipp@127.0.0.1:5061\r\n"
    b"Max-Forwards: 70\r\n"
    b"Subject: Performance Test\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: " + str(len(SDP)).encode() + b"\r\n\r\n" + SDP
)


def test_a_sipp_invite_is_read_whole() -> None:
    msg = parse_datagram(INVITE)
    assert isinstance(msg, Request)
    assert (msg.method, msg.uri) == ("INVITE", "sip:service@127.0.0.1:5060")
    assert msg.call_id == "1-1234@127.0.0.1" and msg.cseq == (1, "INVITE")
    assert msg.body == SDP
    via = parse_via(msg.headers.get("via"))
    assert (via.transport, via.host, via.port, via.branch) == (
        "UDP",
        "127.0.0.1",
        5061,
        "z9hG4bK-1-0",
    )
    sender = parse_name_addr(msg.headers.get("from"))
    assert (sender.display, sender.uri, sender.tag) == ("sipp", "sip:sipp@127.0.0.1:5061", "1")
    assert parse_name_addr(msg.headers.get("to")).tag == ""
    uri = parse_uri(msg.uri)
    assert (uri.user, uri.host, uri.port) == ("service", "127.0.0.1", 5060)


def test_compact_names_folded_lines_and_many_vias_are_read() -> None:
    data = (
        b"OPTIONS sip:edge.example.com SIP/2.0\r\n"
        b"v: SIP/2.0/UDP a.example.com;branch=z9hG4bK1, SIP/2.0/TCP b.example.com:5070"
        b";branch=z9hG4bK2;received=10.0.0.2\r\n"
        b"Via  :   SIP/2.0/UDP c.example.com\r\n  ;branch=z9hG4bK3\r\n"
        b'f: "Doe, John" <sip:john@example.com>;tag=abc\r\n'
        b"t: <sip:edge.example.com>\r\n"
        b"i: folded\r\n\tcall-id\r\n"
        b"CSeq: 7 OPTIONS\r\n"
        b"l: 0\r\n\r\n"
    )
    msg = parse_datagram(data)
    vias = [parse_via(v) for v in msg.headers.get_all("via")]
    assert [v.branch for v in vias] == ["z9hG4bK1", "z9hG4bK2", "z9hG4bK3"]
    assert vias[1].port == 5070 and vias[1].params["received"] == "10.0.0.2"
    # A comma inside a quoted display name does not split the header.
    assert parse_name_addr(msg.headers.get("from")).display == "Doe, John"
    assert msg.call_id == "folded call-id"


def test_a_bare_lf_is_read_as_crlf() -> None:
    msg = parse_datagram(INVITE.replace(b"\r\n", b"\n").replace(SDP.replace(b"\r\n", b"\n"), SDP))
    assert isinstance(msg, Request) and msg.headers.get("subject") == "Performance Test"


def test_a_stream_is_framed_by_content_length_in_any_chunks() -> None:
    two = INVITE + b"\r\n\r\n" + INVITE  # with a keep-alive between
    parser = StreamParser()
    got = [m for i in range(len(two)) for m in parser.feed(two[i : i + 1])]
    assert len(got) == 2 and all(isinstance(m, Request) and m.body == SDP for m in got)
    assert StreamParser().feed(two) != []
    with pytest.raises(Malformed, match="Content-Length is required"):
        StreamParser().feed(INVITE.replace(b"Content-Length", b"X-Length"))


def test_a_datagram_body_is_cut_to_its_length_and_never_read_past_it() -> None:
    assert parse_datagram(INVITE + b"junk").body == SDP
    with pytest.raises(Malformed, match="longer than"):
        parse_datagram(INVITE[:-10])


@pytest.mark.parametrize(
    ("data", "error", "reason"),
    [
        (b"INVITE sip:a@b SIP/3.0\r\n\r\n", Malformed, "SIP version .3.0. is not supported"),
        (b"INVITE  SIP/2.0\r\n\r\n", Malformed, "bad request line"),
        (b"SIP/2.0 99 Odd\r\n\r\n", Malformed, "bad status code"),
        (b"SIP/2.0 2000 OK\r\n\r\n", Malformed, "bad status code"),
        (INVITE.replace(b"Call-ID: 1-1234@127.0.0.1\r\n", b""), Malformed, "missing Call-ID"),
        (INVITE.replace(b"CSeq: 1 INVITE", b"CSeq: 1 BYE"), Malformed, "CSeq method BYE"),
        (INVITE.replace(b"CSeq: 1 INVITE", b"CSeq: 99999999999 INVITE"), Malformed, "bad CSeq"),
        (INVITE.replace(b"Content-Length: ", b"Content-Length: -"), Malformed, "Content-Length"),
        (INVITE.replace(b"Max-Forwards: 70", b"Max Forwards: 70"), Malformed, "bad header"),
        (b" folded\r\nINVITE sip:a@b SIP/2.0\r\n\r\n", Malformed, "bad request line"),
        (INVITE[:200], Malformed, "no empty line"),
        (INVITE.replace(b"sipp", "s\u00e9".encode("latin-1")), Malformed, "not UTF-8"),
        (b"X" * (MAX_MESSAGE + 1), TooLarge, "over"),
        (
            INVITE.replace(b"Max-Forwards: 70\r\n", b"X-A: 1\r\n" * MAX_HEADERS),
            TooLarge,
            "header lines",
        ),
    ],
)
def test_bad_messages_are_refused_with_the_reason(
    data: bytes, error: type[Exception], reason: str
) -> None:
    with pytest.raises(error, match=reason):
        parse_datagram(data)


def test_a_stream_that_never_ends_its_header_is_refused() -> None:
    parser = StreamParser()
    parser.feed(b"INVITE sip:a@b SIP/2.0\r\n")
    with pytest.raises(TooLarge):
        for _ in range(MAX_MESSAGE // 1000 + 2):
            parser.feed(b"X-Pad: " + b"p" * 1000 + b"\r\n")


def test_a_response_copies_what_routes_it_back_and_reads_back() -> None:
    req = parse_datagram(INVITE)
    assert isinstance(req, Request)
    data = response_to(req, 180, "Ringing", [("contact", "<sip:edge@127.0.0.1>")], to_tag="t9")
    msg = parse_datagram(data)
    assert isinstance(msg, Response) and (msg.status, msg.reason) == (180, "Ringing")
    assert msg.headers.get_all("via") == req.headers.get_all("via")
    assert parse_name_addr(msg.headers.get("to")).tag == "t9"
    assert msg.call_id == req.call_id and msg.cseq == (1, "INVITE")
    assert b"\r\nCall-ID: " in data and b"\r\nCSeq: 1 INVITE" in data
    # A To that has its tag keeps it.
    tagged = parse_datagram(INVITE.replace(b"5060>\r\n", b"5060>;tag=x1\r\n"))
    assert isinstance(tagged, Request)
    assert parse_name_addr(parse_datagram(response_to(tagged, 200, "OK", to_tag="t2"))
                           .headers.get("to")).tag == "x1"  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_random_bytes_give_a_message_or_a_clear_error(data: bytes) -> None:
    try:
        parse_datagram(data)
    except (Malformed, TooLarge):
        pass


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(INVITE) - 1), st.binary(min_size=1, max_size=8), st.integers(0, 8))
def test_mutated_invites_give_a_message_or_a_clear_error(at: int, insert: bytes, cut: int) -> None:
    data = INVITE[:at] + insert + INVITE[at + cut :]
    for parse in (parse_datagram, lambda d: StreamParser().feed(d)):
        try:
            parse(data)
        except (Malformed, TooLarge):
            pass
