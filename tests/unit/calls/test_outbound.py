"""Calls we place: what the RPC answers for each SIP status, the trunk's
address read, and our offer against the callee's answer."""

from __future__ import annotations

import pytest

from edgedispatch.calls.outbound import _address, twirp_error_of
from edgedispatch.errors import InvalidArgument
from edgedispatch.sip import sdp


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (486, "resource_exhausted"), (480, "resource_exhausted"), (600, "resource_exhausted"),
        (503, "failed_precondition"), (500, "failed_precondition"), (599, "failed_precondition"),
        (603, "permission_denied"), (401, "permission_denied"), (403, "permission_denied"),
        (407, "unauthenticated"), (408, "deadline_exceeded"), (504, "deadline_exceeded"),
        (404, "not_found"), (481, "not_found"), (484, "invalid_argument"),
        (488, "invalid_argument"), (499, "invalid_argument"), (699, "invalid_argument"),
        (487, "aborted"), (416, "out_of_range"),
    ],
)  # fmt: skip
def test_a_failed_calls_status_is_answered_as_livekit_maps_it(status: int, code: str) -> None:
    error = twirp_error_of(status, "Busy Here")
    assert error.twirp_code == code
    assert error.meta == {"sip_status_code": str(status), "sip_status": "Busy Here"}
    assert error.msg == f"sip status {status}: Busy Here"


def test_a_trunk_address_is_a_host_with_an_optional_port() -> None:
    assert _address("sip.example.com") == ("sip.example.com", 5060)
    assert _address("203.0.113.5:5080") == ("203.0.113.5", 5080)
    assert _address("[2001:db8::1]:5070") == ("2001:db8::1", 5070)
    for bad in ("", "host:port", "host:70000"):
        with pytest.raises(InvalidArgument):
            _address(bad)


def test_our_offer_is_read_back_and_the_callees_pcma_is_taken() -> None:
    offer = sdp.make_offer("192.0.2.1", 40000, 7)
    assert b"m=audio 40000 RTP/AVP 0 8 101" in offer
    mine = sdp.read_answer(offer)
    assert (mine.codec, mine.payload_type, mine.dtmf_payload_type) == ("PCMU", 0, 101)
    answer = offer.replace(b"RTP/AVP 0 8 101", b"RTP/AVP 8").replace(b"192.0.2.1", b"192.0.2.9")
    theirs = sdp.read_answer(answer)
    assert (theirs.codec, theirs.remote, theirs.dtmf_payload_type) == (
        "PCMA", ("192.0.2.9", 40000), None,
    )  # fmt: skip
    with pytest.raises(sdp.NotAcceptable):
        sdp.read_answer(offer.replace(b"RTP/AVP 0 8 101", b"RTP/AVP 18"))
