"""The phone side of media: RTP packets, G.711 both ways, DTMF digits."""

from __future__ import annotations

import math
from array import array

import pytest

from edgedispatch.errors import Malformed
from edgedispatch.sip.rtp import (
    ALAW_DECODE,
    ULAW_DECODE,
    DtmfReceiver,
    RtpPacket,
    decode,
    encode,
    parse_rtp,
)


def test_rtp_packets_read_back_and_odd_headers_are_skipped() -> None:
    pkt = RtpPacket(0, 65535, 2**32 - 160, 0xDEADBEEF, b"\xff" * 160, marker=True)
    assert parse_rtp(pkt.pack()) == pkt
    # Two CSRCs, a one-word extension and 3 bytes of padding around "abc".
    head = bytes([0x80 | 0x20 | 0x10 | 2, 8]) + (7).to_bytes(2, "big") + bytes(8)
    data = head + bytes(8) + b"\xbe\xde\x00\x01" + bytes(4) + b"abc" + b"\x00\x00\x03"
    got = parse_rtp(data)
    assert (got.payload_type, got.sequence, got.payload) == (8, 7, b"abc")


@pytest.mark.parametrize(
    "data", [b"", b"\x80\x00", bytes([0x40]) + bytes(11), bytes([0x8F]) + bytes(11)]
)
def test_bad_rtp_is_refused(data: bytes) -> None:
    with pytest.raises(Malformed):
        parse_rtp(data)


def test_g711_tables_are_the_standards() -> None:
    # ITU-T G.711: u-law 0xFF and A-law 0xD5 are the smallest positive
    # steps; 0x80 (u) and 0xAA (A) the loudest positive codes.
    assert (ULAW_DECODE[0xFF], ULAW_DECODE[0x7F], ULAW_DECODE[0x80]) == (0, 0, 32124)
    assert ULAW_DECODE[0x00] == -32124
    assert (ALAW_DECODE[0xD5], ALAW_DECODE[0x55], ALAW_DECODE[0xAA]) == (8, -8, 32256)


@pytest.mark.parametrize("codec", ["PCMU", "PCMA"])
def test_a_tone_survives_encode_and_decode(codec: str) -> None:
    tone = array("h", (round(12000 * math.sin(2 * math.pi * 440 * i / 8000)) for i in range(160)))
    back = decode(codec, encode(codec, tone))
    assert len(back) == 160
    # G.711 keeps about 3% of a sample's size (its segments are logarithmic).
    assert all(abs(a - b) <= max(64, abs(a) // 16) for a, b in zip(tone, back, strict=True))


def test_every_code_decodes_to_a_sample_that_encodes_to_it() -> None:
    assert encode("PCMA", decode("PCMA", bytes(range(256)))) == bytes(range(256))
    codes = bytes(c for c in range(256) if c != 0x7F)  # u-law 0x7F is -0, read back as +0 (0xFF)
    assert encode("PCMU", decode("PCMU", codes)) == codes


def test_a_dtmf_key_press_is_one_digit() -> None:
    rx = DtmfReceiver()
    # As sipp's play_dtmf sends "42": 13 packets per digit, the last three the end.
    got = []
    for n, (event, ts) in enumerate([(4, 1000), (2, 2600)]):
        for i in range(13):
            end = 0x80 if i >= 10 else 0
            payload = bytes([event, end | 10]) + (160 * (i + 1)).to_bytes(2, "big")
            got.append(rx.receive(RtpPacket(96, 100 * n + i, ts, 7, payload)))
    assert "".join(got) == "42"
    assert rx.receive(RtpPacket(96, 1, 5000, 7, b"\x10\x00\x00\xa0")) == ""  # event 16: no digit
