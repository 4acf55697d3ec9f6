"""A published track's fan-out: the publisher's RTP packets are taken where
aiortc's jitter buffer would take them (``net.media`` puts a fan-out in its
place), so nothing is decoded, and the encoded media goes to every
subscriber's forwarding track, which aiortc's sender packs again.

- Audio: each Opus packet is passed on as it comes (media-bridge.md §1.2);
  duplicates and packets older than the newest are dropped.
- Video (VP8): whole frames, in order, decodable (``wire.vp8``).  A
  subscriber's keyframe request (its PLI or FIR), a subscriber that has
  just started, and a frame lost for good each ask the publisher for a
  keyframe, through the return value of ``add``: aiortc's receiver sends
  the PLI when its jitter buffer says so.

No aiortc here (``net.media`` owns it): packets are read through
``RtpLike``, subscribers reached through ``Subscriber``.
"""

from __future__ import annotations

import fractions
from collections.abc import Callable
from typing import Any, Protocol

from av.packet import Packet

from edgedispatch.wire.rtp import Unwrapper
from edgedispatch.wire.vp8 import VIDEO_CLOCK, FrameAssembler

OPUS_TIME_BASE = fractions.Fraction(1, 48000)
VIDEO_TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK)
#: Packets received and forwarded by this process's fan-outs since closed
#: (a track unpublished, a peer gone): with the open ones', totals that
#: never go down, as Prometheus' counters must not.
CLOSED_TOTALS = [0, 0]


class RtpLike(Protocol):
    """What of aiortc's ``RtpPacket`` a fan-out reads."""

    sequence_number: int
    timestamp: int
    marker: int
    payload: bytes


class Subscriber(Protocol):
    def push(self, packet: Packet[Any], key: bool) -> bool:
        """Queue an encoded packet; False when it was refused because this
        subscriber needs a keyframe first."""
        ...

    def stop(self) -> None: ...


class Fanout:
    """One published track's packets, counted, for its subscribers."""

    kind = "audio"

    def __init__(self, track_sid: str, clock: Callable[[], float]) -> None:
        self.track_sid = track_sid
        self.tracks: set[Subscriber] = set()
        self.received = 0
        self.lost = 0
        #: Packets (video: frames) handed to subscribers, one per subscriber.
        self.forwarded = 0
        self.closed = False
        self._clock = clock
        self._last_seq: int | None = None
        self._ts = Unwrapper(32)

    def add(self, packet: RtpLike) -> tuple[bool, None]:
        """The jitter buffer's ``add``: (no PLI, no frame to decode)."""
        if not self._count(packet.sequence_number):
            return False, None  # a duplicate or a late packet
        ts = self._ts(packet.timestamp)
        if self.tracks and packet.payload:
            encoded = Packet(packet.payload)
            assert self._ts.first is not None
            encoded.pts = ts - self._ts.first
            encoded.time_base = OPUS_TIME_BASE
            self.forwarded += len(self.tracks)
            for track in self.tracks:
                track.push(encoded, True)
        return False, None

    def request_keyframe(self) -> None:
        """Audio has none to ask for."""

    def _count(self, seq: int) -> bool:
        """Counts a packet and the gap before it; False for a duplicate or
        a packet older than the newest."""
        if self._last_seq is not None:
            ahead = (seq - self._last_seq) & 0xFFFF
            if ahead == 0 or ahead >= 0x8000:
                return False
            self.lost += ahead - 1
        self._last_seq = seq
        self.received += 1
        return True

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            CLOSED_TOTALS[0] += self.received
            CLOSED_TOTALS[1] += self.forwarded
        for track in list(self.tracks):
            track.stop()
        self.tracks.clear()


class VideoFanout(Fanout):
    """One published VP8 track: frames, not packets, go to subscribers."""

    kind = "video"

    def __init__(self, track_sid: str, clock: Callable[[], float]) -> None:
        super().__init__(track_sid, clock)
        self.frames = FrameAssembler()

    def add(self, packet: RtpLike) -> tuple[bool, None]:
        # Late packets count too: a NACK's retransmission completes a frame.
        self._count(packet.sequence_number)
        frames = self.frames.add(
            packet.sequence_number, packet.timestamp, bool(packet.marker), packet.payload
        )
        for frame in frames:
            encoded = Packet(frame.data)
            encoded.pts = frame.pts
            encoded.time_base = VIDEO_TIME_BASE
            self.forwarded += len(self.tracks)
            for track in self.tracks:
                if not track.push(encoded, frame.key):
                    self.frames.request_key()
        return self.frames.key_wanted(self._clock()), None

    def request_keyframe(self) -> None:
        self.frames.request_key()


def make_fanout(kind: str, track_sid: str, clock: Callable[[], float]) -> Fanout:
    return VideoFanout(track_sid, clock) if kind == "video" else Fanout(track_sid, clock)
