"""A trunk's custom headers as attributes and back (livekit/sip's
``HeadersToAttrs`` and ``AttrsToHeaders``)."""

from __future__ import annotations

from livekit.protocol import sip as pb

from edgedispatch.sip.header_maps import (
    ALL_HEADERS,
    NO_HEADERS,
    X_HEADERS,
    CallHeaders,
    attributes_of,
    headers_of,
)
from edgedispatch.sip.message import Headers, parse_datagram

INVITE = (
    b"INVITE sip:+15550100@edge SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1\r\n"
    b"f: <sip:+15550199@carrier>;tag=1\r\n"
    b"To: <sip:+15550100@edge>\r\n"
    b"Call-ID: c1\r\nCSeq: 1 INVITE\r\n"
    b"X-Customer-Id: 42\r\n"
    b"X-Twilio-CallSid: CA123\r\n"
    b"User-Agent: carrier-sbc\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def headers() -> Headers:
    return parse_datagram(INVITE).headers


def test_include_headers_picks_none_the_x_headers_or_all_by_lower_case_name() -> None:
    none = attributes_of(headers(), {}, NO_HEADERS)
    assert none == {"sip.twilio.callSid": "CA123"}  # the carriers' are always mapped
    x = attributes_of(headers(), {}, X_HEADERS)
    assert x["sip.h.x-customer-id"] == "42" and x["sip.h.x-twilio-callsid"] == "CA123"
    assert "sip.h.user-agent" not in x
    every = attributes_of(headers(), {}, ALL_HEADERS)
    assert every["sip.h.user-agent"] == "carrier-sbc"
    assert every["sip.h.from"] == "<sip:+15550199@carrier>;tag=1"  # compact form read


def test_headers_to_attributes_names_headers_in_any_case() -> None:
    mapped = attributes_of(headers(), {"x-CUSTOMER-id": "customer", "X-Missing": "gone"}, 0)
    assert mapped["customer"] == "42" and "gone" not in mapped


def test_attributes_to_headers_replace_fixed_ones_and_skip_unset_unsafe_or_stack_headers() -> None:
    out = headers_of(
        {"X-B": "2", "X-A": "1"},
        {"case": "4711", "site": "x\r\nVia: forged", "a": "one", "b": "mine"},
        {"case": "X-Case", "site": "X-Site", "a": "x-a", "unset": "X-Unset", "b": "Call-ID"},
    )
    assert out == [("x-a", "one"), ("X-B", "2"), ("X-Case", "4711")]


def test_a_placed_calls_request_headers_replace_its_trunks() -> None:
    trunk = pb.SIPOutboundTrunkInfo(
        headers={"X-Site": "paris", "X-Tier": "gold"},
        headers_to_attributes={"X-Account": "account"},
        attributes_to_headers={"case": "X-Case"},
        include_headers=pb.SIP_X_HEADERS,
    )
    headers = CallHeaders.of(trunk, {"x-site": "lyon"})
    assert dict(headers.fixed) == {"x-site": "lyon", "X-Tier": "gold"}
    assert headers.include == X_HEADERS and headers.to_headers == {"case": "X-Case"}
    inline = CallHeaders.of(pb.SIPOutboundConfig(headers_to_attributes={"X-A": "a"}))
    assert inline.fixed == {} and inline.to_attributes == {"X-A": "a"}
