"""VP8 over RTP (RFC 7741), for forwarding without decoding: whole frames
are assembled from a publisher's packets, in order, and keyframes are
recognised, so that a subscriber never gets a frame it cannot decode.

Sans-IO: packets go in with ``now``; frames come out, and ``key_wanted``
says when a keyframe request (PLI) should go to the publisher.  The
adapter (``net.media``) packs each frame again for every subscriber.

Why whole frames: aiortc's sender takes encoded frames, not packets, and
repacketizes them with its own sequence numbers and picture ids; so a
frame that misses a packet must never be passed on (the subscriber would
decode garbage instead of asking for a keyframe).  Frames are emitted as
soon as their last packet (the marker) is in, not one frame later as
aiortc's jitter buffer does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edgedispatch.wire.rtp import Unwrapper

#: Frames waiting for a missing packet (a NACK's retransmission) before
#: the gap is given up and a keyframe asked for: ~0.3 s at 30 frames/s.
MAX_PENDING = 10
#: The least time between two keyframe requests to a publisher (LiveKit
#: throttles PLIs likewise): each one costs the publisher a large frame.
PLI_INTERVAL = 0.5
VIDEO_CLOCK = 90000


def descriptor(payload: bytes) -> tuple[bool, bytes]:
    """(starts a frame, the VP8 bytes) of an RTP payload: RFC 7741 §4.2.
    Raises ValueError on a truncated descriptor."""
    if not payload:
        raise ValueError("empty VP8 payload")
    first = payload[0]
    pos = 1
    if first & 0x80:  # X: extension byte
        if len(payload) < 2:
            raise ValueError("truncated VP8 descriptor")
        ext = payload[1]
        pos = 2
        if ext & 0x80:  # I: picture id, 7 or 15 bits
            if len(payload) <= pos:
                raise ValueError("truncated VP8 picture id")
            pos += 2 if payload[pos] & 0x80 else 1
        if ext & 0x40:  # L: TL0PICIDX
            pos += 1
        if ext & 0x30:  # T or K: TID/KEYIDX
            pos += 1
    if pos > len(payload):
        raise ValueError("truncated VP8 descriptor")
    starts = bool(first & 0x10) and (first & 0x07) == 0  # S, partition 0
    return starts, payload[pos:]


def is_keyframe(frame: bytes) -> bool:
    """RFC 6386 §9.1: the frame tag's first bit is 0 on a key frame."""
    return bool(frame) and not frame[0] & 0x01


@dataclass
class _Frame:
    parts: dict[int, bytes] = field(default_factory=dict)  # extended seq -> bytes
    first: int | None = None  # the extended seq that starts it
    last: int | None = None  # the extended seq with the marker

    def complete(self) -> bool:
        if self.first is None or self.last is None:
            return False
        return len(self.parts) == self.last - self.first + 1

    def data(self) -> bytes:
        return b"".join(self.parts[s] for s in sorted(self.parts))


@dataclass(frozen=True)
class Frame:
    data: bytes
    pts: int  # in 1/90000 s from the first packet seen
    key: bool


class FrameAssembler:
    """One published VP8 track's frames, in order, decodable."""

    def __init__(self) -> None:
        self._pending: dict[int, _Frame] = {}  # unwrapped timestamp -> parts
        self._seq = Unwrapper(16)
        self._done = -1  # last extended seq of the last frame passed on
        self._done_ts = -1
        self._ts = Unwrapper(32)
        self.need_key = True  # nothing decodable passed yet
        self._key_asked = False
        self._last_pli = -PLI_INTERVAL
        self.frames = 0
        self.dropped = 0  # frames not passed on (incomplete, or no keyframe yet)
        self.keyframes = 0
        self.plis = 0

    def request_key(self) -> None:
        """A subscriber cannot decode (its PLI or FIR, or it just joined)."""
        self._key_asked = True

    def key_wanted(self, now: float) -> bool:
        """Whether to send the publisher a PLI now (at most every
        ``PLI_INTERVAL``); clears the request when it says yes."""
        if not self._key_asked or now - self._last_pli < PLI_INTERVAL:
            return False
        self._key_asked = False
        self._last_pli = now
        self.plis += 1
        return True

    def add(self, seq: int, timestamp: int, marker: bool, payload: bytes) -> list[Frame]:
        """A packet: the frames it completes, in order (often none or one)."""
        try:
            starts, data = descriptor(payload)
        except ValueError:
            return []
        ext = self._seq(seq)
        ts = self._ts(timestamp)
        if ext <= self._done or ts <= self._done_ts:
            return []  # late: its frame was passed on or given up
        frame = self._pending.setdefault(ts, _Frame())
        if ext in frame.parts:
            return []  # a duplicate (a retransmission that crossed the original)
        frame.parts[ext] = data
        if starts:
            frame.first = ext
        if marker:
            frame.last = ext
        return self._ready()

    def _ready(self) -> list[Frame]:
        out: list[Frame] = []
        while self._pending:
            ts = min(self._pending)
            frame = self._pending[ts]
            if frame.complete():
                assert frame.first is not None and frame.last is not None
                contiguous = frame.first == self._done + 1 or self._done < 0
                data = frame.data()
                key = is_keyframe(data)
                if contiguous or key:
                    self._pass(ts, frame.last)
                    if not contiguous:
                        self.need_key = True  # a gap: only a keyframe mends it
                    self._emit(out, data, ts, key)
                    continue
            # The oldest frame waits for a packet: give up on it when a
            # complete keyframe follows, or when too many frames wait.
            later_key = any(
                f.complete() and is_keyframe(f.data()) for t, f in self._pending.items() if t != ts
            )
            if later_key or len(self._pending) > MAX_PENDING:
                self._give_up(ts, frame)
                continue
            break
        return out

    def _emit(self, out: list[Frame], data: bytes, ts: int, key: bool) -> None:
        if key:
            self.need_key = False
            self.keyframes += 1
        if self.need_key:
            self.dropped += 1
            self.request_key()
            return
        self.frames += 1
        assert self._ts.first is not None
        out.append(Frame(data, ts - self._ts.first, key))

    def _give_up(self, ts: int, frame: _Frame) -> None:
        del self._pending[ts]
        self.dropped += 1
        self.need_key = True
        self.request_key()
        last = max(frame.parts)
        self._done = max(self._done, last)
        self._done_ts = max(self._done_ts, ts)

    def _pass(self, ts: int, last: int) -> None:
        del self._pending[ts]
        self._done = last
        self._done_ts = ts
