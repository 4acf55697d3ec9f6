"""VP8 frames are assembled from RTP packets in order and only decodable
ones are passed on (``wire.vp8``), on a fake clock."""

from __future__ import annotations

import pytest

from edgedispatch.wire.vp8 import MAX_PENDING, PLI_INTERVAL, FrameAssembler, descriptor

KEY = b"\x00\x9d\x01\x2a"  # a key frame's tag (bit 0 clear)
DELTA = b"\x01\x00\x00\x00"


def packets(seq: int, ts: int, frame: bytes, parts: int = 2) -> list[tuple[int, int, bool, bytes]]:
    """A frame split over ``parts`` packets, with the X/I descriptor the
    SDKs send (15-bit picture id)."""
    size = -(-len(frame) // parts)
    out = []
    for i in range(parts):
        first = 0x90 if i == 0 else 0x80  # X, and S on the first
        payload = bytes([first, 0x80, 0x80, 0x01]) + frame[i * size : (i + 1) * size]
        out.append(((seq + i) & 0xFFFF, ts & 0xFFFFFFFF, i == parts - 1, payload))
    return out


def feed(asm: FrameAssembler, pkts: list[tuple[int, int, bool, bytes]]) -> list[bytes]:
    out: list[tuple[int, int, bool, bytes]] = []
    for p in pkts:
        out.extend(f.data for f in asm.add(*p))
    return out


def test_descriptor_forms() -> None:
    assert descriptor(b"\x10abc") == (True, b"abc")  # S, partition 0
    assert descriptor(b"\x00abc") == (False, b"abc")
    assert descriptor(b"\x11abc") == (False, b"abc")  # S on partition 1
    assert descriptor(b"\x90\x80\x05abc") == (True, b"abc")  # 7-bit picture id
    assert descriptor(b"\x90\x80\x85\x01abc") == (True, b"abc")  # 15-bit
    assert descriptor(b"\x90\xf0\x85\x01\x07\x20abc") == (True, b"abc")  # I, L, T, K
    for bad in (b"", b"\x80", b"\x90\x80"):
        with pytest.raises(ValueError):
            descriptor(bad)


def test_frames_pass_whole_on_their_marker() -> None:
    asm = FrameAssembler()
    key = KEY + b"k" * 10
    first = packets(100, 9000, key, parts=3)
    assert feed(asm, first[:2]) == []  # no marker yet: not one frame later either
    assert feed(asm, first[2:]) == [key]
    frames = asm.add(*packets(103, 12000, DELTA + b"d")[0]) + asm.add(
        *packets(103, 12000, DELTA + b"d")[1]
    )
    assert [(f.data, f.pts, f.key) for f in frames] == [(DELTA + b"d", 3000, False)]
    assert asm.frames == 2 and asm.keyframes == 1 and asm.dropped == 0


def test_no_frame_before_a_keyframe_and_a_throttled_request() -> None:
    asm = FrameAssembler()
    assert feed(asm, packets(1, 0, DELTA)) == []  # joined mid-stream: undecodable
    assert asm.dropped == 1
    assert asm.key_wanted(10.0) is True
    asm.request_key()
    assert asm.key_wanted(10.0 + PLI_INTERVAL / 2) is False  # throttled, still asked
    assert asm.key_wanted(10.0 + PLI_INTERVAL) is True
    assert asm.key_wanted(20.0) is False  # nothing asked since
    assert feed(asm, packets(3, 3000, KEY)) == [KEY]
    assert feed(asm, packets(5, 6000, DELTA)) == [DELTA]


def test_reordered_and_duplicated_packets() -> None:
    asm = FrameAssembler()
    key = KEY + b"0123456789"
    a, b, c = packets(10, 0, key, parts=3)
    assert feed(asm, [c, a, a]) == []
    assert feed(asm, [b, b]) == [key]
    assert feed(asm, [c]) == []  # late, after its frame went
    assert asm.frames == 1


def test_a_lost_packet_holds_later_frames_until_it_is_retransmitted() -> None:
    asm = FrameAssembler()
    feed(asm, packets(0, 0, KEY))
    lost, kept = packets(2, 3000, DELTA + b"x")
    assert feed(asm, [kept]) == []
    assert feed(asm, packets(4, 6000, DELTA + b"y")) == []  # complete, but after a gap
    assert feed(asm, [lost]) == [DELTA + b"x", DELTA + b"y"]  # the NACK's answer
    assert asm.dropped == 0


def test_a_gap_that_never_fills_waits_for_a_keyframe() -> None:
    asm = FrameAssembler()
    feed(asm, packets(0, 0, KEY))
    feed(asm, packets(2, 3000, DELTA)[1:])  # its first packet never comes
    out = []
    seq, ts = 4, 6000
    for _ in range(MAX_PENDING + 2):
        out += feed(asm, packets(seq, ts, DELTA))
        seq, ts = seq + 2, ts + 3000
    assert out == []  # never a frame that refers to the lost one
    assert asm.need_key and asm.key_wanted(0.0)
    assert feed(asm, packets(seq, ts, KEY)) == [KEY]
    assert feed(asm, packets(seq + 2, ts + 3000, DELTA)) == [DELTA]


def test_a_later_complete_keyframe_ends_the_wait_at_once() -> None:
    asm = FrameAssembler()
    feed(asm, packets(0, 0, KEY))
    feed(asm, packets(2, 3000, DELTA)[1:])  # incomplete
    assert feed(asm, packets(4, 6000, KEY)) == [KEY]
    assert asm.dropped == 1


def test_sequence_numbers_and_timestamps_wrap() -> None:
    asm = FrameAssembler()
    seq, ts = 65533, 0xFFFFFFFF - 3000
    got = feed(asm, packets(seq, ts, KEY, parts=3))
    for _ in range(3):
        seq, ts = seq + 2 if seq != 65533 else seq + 3, ts + 3000
        got += feed(asm, packets(seq, ts, DELTA))
    assert got == [KEY, DELTA, DELTA, DELTA]


def test_garbage_payloads_are_ignored() -> None:
    asm = FrameAssembler()
    assert asm.add(1, 0, True, b"") == [] and asm.add(2, 0, True, b"\x80") == []
    assert feed(asm, packets(3, 0, KEY)) == [KEY]
