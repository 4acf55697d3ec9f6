"""The phone side of a call's media, sans-IO: RTP packets (RFC 3550) read
and written, G.711 (PCMU, PCMA) to and from 16-bit PCM, and RFC 4733
telephone events turned into digits.

G.711 is table-driven: 256 samples to decode, and 65,536 codes to encode
(built once, on first use); a 20 ms frame is 160 table look-ups in C
(``array``/``bytes`` over ``map``), about 11 µs each way here, so no numpy and no
FFmpeg on this path.
"""

from __future__ import annotations

import struct
from array import array
from dataclasses import dataclass

from edgedispatch.errors import Malformed

_HEADER = struct.Struct("!BBHII")

#: Digits of RFC 4733 §3.2 events 0-15.
DIGITS = "0123456789*#ABCD"


@dataclass
class RtpPacket:
    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes
    marker: bool = False

    def pack(self) -> bytes:
        first = 0x80  # version 2, no padding, extension or CSRC
        second = (0x80 if self.marker else 0) | (self.payload_type & 0x7F)
        head = _HEADER.pack(first, second, self.sequence & 0xFFFF, self.timestamp & 0xFFFFFFFF,
                            self.ssrc & 0xFFFFFFFF)  # fmt: skip
        return head + self.payload


def parse_rtp(data: bytes) -> RtpPacket:
    """One RTP packet; its CSRCs, header extension and padding skipped."""
    if len(data) < 12:
        raise Malformed("RTP packet shorter than its header")
    first, second, seq, ts, ssrc = _HEADER.unpack_from(data)
    if first >> 6 != 2:
        raise Malformed("not RTP version 2")
    start = 12 + 4 * (first & 0x0F)
    if first & 0x10:  # a header extension: 4 bytes, then its length in words
        if len(data) < start + 4:
            raise Malformed("RTP header extension cut short")
        start += 4 + 4 * int.from_bytes(data[start + 2 : start + 4], "big")
    end = len(data)
    if first & 0x20:  # padding: its count is the last byte
        end -= data[-1] if data else 0
    if start > end:
        raise Malformed("RTP header longer than the packet")
    return RtpPacket(second & 0x7F, seq, ts, ssrc, bytes(data[start:end]), bool(second & 0x80))


# -- G.711 ---------------------------------------------------------------


def _ulaw_sample(code: int) -> int:
    code = ~code & 0xFF
    magnitude = (((code & 0x0F) << 3) + 0x84) << ((code & 0x70) >> 4)
    return (0x84 - magnitude) if code & 0x80 else (magnitude - 0x84)


def _alaw_sample(code: int) -> int:
    code ^= 0x55
    exponent = (code & 0x70) >> 4
    mantissa = code & 0x0F
    magnitude = (
        (mantissa << 4) + 8 if exponent == 0 else ((mantissa << 4) + 0x108) << (exponent - 1)
    )
    return magnitude if code & 0x80 else -magnitude


ULAW_DECODE = [_ulaw_sample(c) for c in range(256)]
ALAW_DECODE = [_alaw_sample(c) for c in range(256)]
_ENCODE: dict[str, bytes] = {}


def _ulaw_code(sample: int) -> int:
    sign = 0x80 if sample < 0 else 0
    magnitude = min(-sample if sample < 0 else sample, 32635) + 0x84
    exponent = max(0, magnitude.bit_length() - 8)
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def _alaw_code(sample: int) -> int:
    sign = 0x80 if sample >= 0 else 0
    magnitude = min(-sample - 1 if sample < 0 else sample, 32767) >> 3
    if magnitude < 32:
        code = magnitude >> 1
    else:
        exponent = magnitude.bit_length() - 5
        code = (exponent << 4) | ((magnitude >> exponent) & 0x0F)
    return (sign | code) ^ 0x55


def _encode_table(codec: str) -> bytes:
    """Code of every 16-bit sample, indexed by the sample as unsigned."""
    table = _ENCODE.get(codec)
    if table is None:
        fn = _ulaw_code if codec == "PCMU" else _alaw_code
        table = _ENCODE[codec] = bytes(fn(s - 65536 if s >= 32768 else s) for s in range(65536))
    return table


def decode(codec: str, payload: bytes) -> array[int]:
    """G.711 bytes -> 16-bit samples."""
    table = ULAW_DECODE if codec == "PCMU" else ALAW_DECODE
    return array("h", map(table.__getitem__, payload))


def encode(codec: str, samples: array[int]) -> bytes:
    """16-bit samples -> G.711 bytes."""
    table = _encode_table(codec)
    return bytes(map(table.__getitem__, array("H", samples.tobytes())))


# -- RFC 4733 --------------------------------------------------------------


class DtmfReceiver:
    """Digits from telephone-event packets.  An event's packets share its
    RTP timestamp and its end is sent three times; the digit is reported
    once, at its first packet (so the agent hears it without waiting for
    the key to be released)."""

    def __init__(self) -> None:
        self._seen: set[tuple[int, int]] = set()  # (ssrc, timestamp) of events reported

    def receive(self, packet: RtpPacket) -> str:
        """The digit this packet starts, or ""."""
        data = packet.payload
        if len(data) < 4 or data[0] >= len(DIGITS):
            return ""
        key = (packet.ssrc, packet.timestamp)
        if key in self._seen:
            return ""
        if len(self._seen) > 64:  # a call's recent events only
            self._seen.clear()
        self._seen.add(key)
        return DIGITS[data[0]]
