"""SDP offer/answer for calls: G.711 and DTMF taken from what trunks and
sipp offer, the rest refused as RFC 3264 says."""

from __future__ import annotations

import base64

import pytest
from livekit.protocol import sip as pb

from edgedispatch.errors import Malformed
from edgedispatch.sip import records, sdp
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


# -- SRTP (SDES) --------------------------------------------------------------

KEY_THEIRS = bytes(range(30))
KEY_OURS = bytes(range(30, 60))
SAVP_OFFER = (
    b"v=0\r\no=- 1 1 IN IP4 192.0.2.9\r\ns=-\r\nc=IN IP4 192.0.2.9\r\nt=0 0\r\n"
    b"m=audio 4000 RTP/SAVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n"
    b"a=crypto:1 AES_256_CM_HMAC_SHA1_80 inline:" + base64.b64encode(bytes(46)) + b"\r\n"
    b"a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:" + base64.b64encode(KEY_THEIRS) + b"|2^31\r\n"
    b"a=crypto:3 AES_CM_128_HMAC_SHA1_80 inline:" + base64.b64encode(KEY_THEIRS) + b"\r\n"
)


def test_an_srtp_offer_is_answered_with_our_key_for_the_best_suite_we_share() -> None:
    got = sdp.answer(sdp.parse_offer(SAVP_OFFER), "198.51.100.1", 20000, 1, sdp.ALLOW, KEY_OURS)
    assert b"m=audio 20000 RTP/SAVP 0 101" in got.sdp
    ours = base64.b64encode(KEY_OURS).decode()
    assert f"a=crypto:3 AES_CM_128_HMAC_SHA1_80 inline:{ours}".encode() in got.sdp
    assert got.srtp == ("AES_CM_128_HMAC_SHA1_80", KEY_THEIRS, KEY_OURS)


def test_encryption_decides_which_lines_can_be_taken() -> None:
    plain = sdp.parse_offer(SAVP_OFFER.replace(b"RTP/SAVP", b"RTP/AVP"))
    assert sdp.answer(plain, "198.51.100.1", 20000, 1, sdp.ALLOW, KEY_OURS).srtp is None
    with pytest.raises(sdp.NotAcceptable, match="RTP/SAVP with an AES-128 crypto line"):
        sdp.answer(plain, "198.51.100.1", 20000, 1, sdp.REQUIRE, KEY_OURS)
    with pytest.raises(sdp.NotAcceptable, match="over RTP/AVP"):
        sdp.answer(sdp.parse_offer(SAVP_OFFER), "198.51.100.1", 20000, 1)  # disabled
    no_usable_key = SAVP_OFFER.split(b"a=crypto:2")[0]  # only the AES-256 suite
    with pytest.raises(sdp.NotAcceptable):
        sdp.answer(sdp.parse_offer(no_usable_key), "198.51.100.1", 20000, 1, sdp.ALLOW)


def test_our_srtp_offer_and_the_callees_answer_agree_on_a_suite_and_keys() -> None:
    offer = sdp.make_offer("192.0.2.1", 40000, 7, sdp.ALLOW, KEY_OURS)
    assert b"RTP/SAVP 0 8 101" in offer and offer.count(b"a=crypto:") == 2
    callee = sdp.answer(sdp.parse_offer(offer), "192.0.2.2", 50000, 9, sdp.REQUIRE, KEY_THEIRS)
    mine = sdp.read_answer(callee.sdp, sdp.ALLOW, KEY_OURS)
    assert mine.srtp == ("AES_CM_128_HMAC_SHA1_80", KEY_THEIRS, KEY_OURS)
    assert callee.srtp == ("AES_CM_128_HMAC_SHA1_80", KEY_OURS, KEY_THEIRS)
    plain = sdp.answer(sdp.parse_offer(sdp.make_offer("192.0.2.1", 40000, 7)), "192.0.2.2", 1, 1)
    with pytest.raises(sdp.NotAcceptable):
        sdp.read_answer(plain.sdp, sdp.ALLOW, KEY_OURS)  # we offered SRTP alone


def test_media_encryption_merges_the_trunks_then_the_rules_as_livekit_does() -> None:
    enc = records.media_encryption
    allow, require = pb.SIP_MEDIA_ENCRYPT_ALLOW, pb.SIP_MEDIA_ENCRYPT_REQUIRE
    trunk = pb.SIPInboundTrunkInfo(media_encryption=require)
    rule = pb.SIPDispatchRuleInfo(media=pb.SIPMediaConfig(encryption=allow))
    assert enc(None, pb.SIPDispatchRuleInfo()) == pb.SIP_MEDIA_ENCRYPT_DISABLE
    assert enc(trunk, pb.SIPDispatchRuleInfo()) == require
    assert enc(trunk, rule) == allow  # the later one wins ...
    disabled = pb.SIPDispatchRuleInfo(media=pb.SIPMediaConfig(encryption=0))
    assert enc(trunk, disabled) == require  # ... unless it is DISABLE


def test_crypto_lines_our_sessions_could_not_read_are_not_taken() -> None:
    """An MKI, a second key, or session parameters: not usable, so the
    line falls back to the next crypto line (here none: refused)."""
    key = base64.b64encode(KEY_THEIRS).decode()
    for params in (
        f"inline:{key}|2^20|1:4",
        f"inline:{key};inline:{key}",
        f"inline:{key} UNENCRYPTED_SRTP",
    ):
        offer = SAVP_OFFER.split(b"a=crypto:1")[0] + (
            f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 {params}\r\n".encode()
        )
        with pytest.raises(sdp.NotAcceptable):
            sdp.answer(sdp.parse_offer(offer), "198.51.100.1", 20000, 1, sdp.REQUIRE, KEY_OURS)
    lifetime = SAVP_OFFER.split(b"a=crypto:1")[0] + (
        f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{key}|2^31\r\n".encode()
    )
    got = sdp.answer(sdp.parse_offer(lifetime), "198.51.100.1", 1, 1, sdp.REQUIRE, KEY_OURS)
    assert got.srtp == ("AES_CM_128_HMAC_SHA1_80", KEY_THEIRS, KEY_OURS)
