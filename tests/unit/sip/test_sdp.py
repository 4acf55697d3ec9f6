"""SDP offer/answer for calls: G.711 and DTMF taken from what trunks and
sipp offer, the rest refused as RFC 3264 says."""

from __future__ import annotations

import pytest

from edgedispatch.errors import Malformed
from edgedispatch.sip.sdp import NotAcceptable, answer, parse_offer

SIPP = (
    b"v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
    b"t=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)
TRUNK = (
    b"v=0\r\no=- 1 1 IN IP4 203.0.113.5\r\ns=call\r\nc=IN IP4 203.0.113.5\r\nt=0 0\r\n"
    b"m=audio 40000 RTP/AVP 8 0 18 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:18 G729/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:30\r\na=sendrecv\r\n"
    b"m=video 40002 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n"
)


def test_sipps_offer_gets_pcmu_on_our_port() -> None:
    got = answer(parse_offer(SIPP), "127.0.0.1", 20000, 7)
    assert (got.codec, got.payload_type, got.dtmf_payload_type) == ("PCMU", 0, None)
    assert got.remote == ("127.0.0.1", 6000) and got.ptime == 20
    text = got.sdp.decode()
    assert "m=audio 20000 RTP/AVP 0\r\n" in text and "c=IN IP4 127.0.0.1\r\n" in text
    assert text.endswith("a=sendrecv\r\n") and "o=edgedispatch 7 7 IN IP4" in text


def test_a_trunks_order_and_dtmf_are_kept_and_video_refused() -> None:
    got = answer(parse_offer(TRUNK), "192.0.2.1", 20002, 1)
    assert (got.codec, got.payload_type, got.dtmf_payload_type) == ("PCMA", 8, 101)
    assert got.remote == ("203.0.113.5", 40000) and got.ptime == 30
    text = got.sdp.decode()
    assert "m=audio 20002 RTP/AVP 8 101\r\n" in text and "a=fmtp:101 0-16" in text
    assert "m=video 0 RTP/AVP 96\r\n" in text  # refused, in its place


def test_direction_is_mirrored_and_a_media_level_address_wins() -> None:
    offer = SIPP.replace(b"a=rtpmap:0 PCMU/8000\r\n", b"c=IN IP4 10.1.1.1\r\na=sendonly\r\n")
    got = answer(parse_offer(offer), "127.0.0.1", 20000, 1)
    assert got.direction == "recvonly" and got.remote == ("10.1.1.1", 6000)


@pytest.mark.parametrize(
    ("sdp", "error"),
    [
        (SIPP.replace(b"RTP/AVP 0", b"RTP/AVP 18").replace(b"PCMU", b"G729"), NotAcceptable),
        (SIPP.replace(b"RTP/AVP", b"RTP/SAVP"), NotAcceptable),
        (SIPP.replace(b"m=audio 6000", b"m=audio 0"), NotAcceptable),
        (b"v=0\r\n", Malformed),
        (SIPP.replace(b"c=IN IP4 127.0.0.1\r\n", b""), Malformed),
        (SIPP.replace(b"6000", b"99999"), Malformed),
        (b"\xff", Malformed),
    ],
)
def test_what_cannot_be_answered_is_refused(sdp: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        answer(parse_offer(sdp), "127.0.0.1", 20000, 1)
