"""A call's SRTP sessions (``net.sip_media.srtp_sessions``): the two ends'
keys as the SDP exchanged them, each end's packets readable by the other
alone."""

from __future__ import annotations

import pylibsrtp
import pytest

from edgedispatch.net.sip_media import srtp_sessions
from edgedispatch.sip.bridge import RtpSender
from edgedispatch.sip.rtp import parse_rtp

CALLER_KEY, OUR_KEY = bytes(range(30)), bytes(range(30, 60))


@pytest.mark.parametrize("suite", ["AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32"])
def test_each_end_reads_the_others_packets_and_nothing_forged(suite: str) -> None:
    ours = srtp_sessions([suite, CALLER_KEY.hex(), OUR_KEY.hex()])
    caller = srtp_sessions([suite, OUR_KEY.hex(), CALLER_KEY.hex()])
    assert ours is not None and caller is not None
    plain = RtpSender(0, None, 1234).next_packet(b"\xff" * 160)
    sent = ours[1].protect(plain)
    assert sent != plain and plain[12:] not in sent  # the payload is encrypted
    assert caller[0].unprotect(sent) == plain
    back = caller[1].protect(plain)
    assert parse_rtp(ours[0].unprotect(back)).payload == b"\xff" * 160
    forged = bytearray(caller[1].protect(RtpSender(0, None, 99).next_packet(b"\x00" * 160)))
    forged[20] ^= 1
    with pytest.raises(pylibsrtp.Error):
        ours[0].unprotect(bytes(forged))
    with pytest.raises(pylibsrtp.Error):
        ours[0].unprotect(plain)  # plain RTP is not let in
    assert srtp_sessions(None) is None
