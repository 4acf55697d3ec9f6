"""A phone call's media between its RTP peer and its room, sans-IO: what
the caller's packets become, what the caller is sent on each tick of the
shared 20 ms clock, and when the call has gone quiet or on too long.
Time is always passed in; the codecs (``sip.transcode``) and the socket
(``net.sip_media``) are elsewhere.

Caller to room (media-bridge.md §2.5): no buffering.  Each G.711 packet
is passed on at once, cut into 20 ms frames (ptimes other than 20 ms are
regrouped; G.711 is a byte a sample) stamped on one output timeline, so that a
sequence gap becomes a timestamp gap the subscribers' jitter buffers
conceal.  Late and duplicate packets are dropped; a new SSRC (sipp sends
its DTMF on one) starts a new stream on the same timeline; payload types
we did not negotiate are ignored.

Room to caller: decoded, re-encoded G.711 goes into a small FIFO that
starts playing once 40 ms are buffered, is kept near 40 ms (a surplus
that lasted a second goes) and holds at most 200 ms (the oldest go);
every tick takes one 20 ms frame, or silence when the FIFO ran dry (then
it waits for 40 ms again).  DTMF digits for the caller are
sent as RFC 4733 events in place of audio.

Ringing (``RingTone``): the ETSI ringing tone (425 Hz, 1 s on, 4 s off),
at half of full scale as livekit/sip plays it: into the room while a
call we place rings (``play_dialtone``), to the caller while a transfer
is under way.
"""

from __future__ import annotations

import math
from array import array
from collections import deque
from dataclasses import dataclass, field

from edgedispatch.sip.rtp import DIGITS, DtmfReceiver, RtpPacket, encode

#: Samples of one 20 ms frame at 8 kHz.
FRAME = 160
#: The FIFO towards the caller: prefetch before playing, and cap.
PREFETCH = 2 * FRAME
CAPACITY = 10 * FRAME
#: A timestamp jump larger than this (5 s) is a restart, not a gap.
MAX_GAP = 5 * 8000
#: RFC 4733 events we send: ticks of the key held down, then its end x3.
DIGIT_TICKS = 8
END_REPEATS = 3
SILENCE = {"PCMU": b"\xff" * FRAME, "PCMA": b"\xd5" * FRAME}


@dataclass
class CallerAudio:
    """What one caller packet gave: 20 ms frames of G.711 (160 bytes) with
    their place on the output timeline (in samples), and a digit pressed."""

    frames: list[tuple[int, bytes]] = field(default_factory=list)
    digit: str = ""


class Uplink:
    """The caller's RTP, in arrival order, to frames and digits."""

    def __init__(self, codec: str, payload_type: int, dtmf_payload_type: int | None) -> None:
        self.codec = codec
        self.payload_type = payload_type
        self.dtmf_payload_type = dtmf_payload_type
        self._dtmf = DtmfReceiver()
        self._ssrc: int | None = None
        self._seq = 0
        self._next_ts = 0  #: the RTP timestamp the next packet should have
        self._out = 0  #: the output timeline's next sample
        self._pending = b""  #: samples short of a whole frame
        self.received = 0
        self.dropped = 0

    def receive(self, packet: RtpPacket) -> CallerAudio:
        got = CallerAudio()
        if packet.payload_type == self.dtmf_payload_type and self.dtmf_payload_type is not None:
            got.digit = self._dtmf.receive(packet)
            return got
        if packet.payload_type != self.payload_type or not packet.payload:
            return got  # sipp's PT 97 no-ops, comfort noise, anything not ours
        if packet.ssrc != self._ssrc:
            self._ssrc = packet.ssrc
            self._pending = b""
        else:
            ahead = (packet.sequence - self._seq) & 0xFFFF
            if ahead == 0 or ahead >= 0x8000:
                self.dropped += 1  # a duplicate, or later than one already played
                return got
            gap = (packet.timestamp - self._next_ts) & 0xFFFFFFFF
            if 0 < gap <= MAX_GAP:
                # Lost packets: a hole on the timeline, for the far end to conceal.
                self._pending = b""
                self._out += gap
        self._seq = packet.sequence
        samples = packet.payload  # G.711: one byte a sample
        self._next_ts = (packet.timestamp + len(samples)) & 0xFFFFFFFF
        self.received += 1
        start = self._out - len(self._pending)
        pending = self._pending + samples if self._pending else samples
        whole = len(pending) - len(pending) % FRAME
        for at in range(0, whole, FRAME):
            got.frames.append((start + at, pending[at : at + FRAME]))
        self._pending = pending[whole:]
        self._out += len(samples)
        return got


#: ETSI's ringing tone (ETS 300 512): 425 Hz, 1 s on, 4 s off.
RING_HZ = 425
RING_ON, RING_PERIOD = 50, 250  # frames: 1 s of tone in every 5 s
RING_LEVEL = 32767 // 2


class RingTone:
    """The ringing tone, 20 ms of G.711 per ``next_frame``, cadence and
    phase carried from one frame to the next (made once per codec)."""

    def __init__(self, codec: str) -> None:
        frames = _RING_CYCLES.get(codec)
        if frames is None:
            frames = _RING_CYCLES[codec] = _ring_cycle(codec)
        self._frames = frames
        self._i = 0

    def next_frame(self) -> bytes:
        frame = self._frames[self._i]
        self._i = (self._i + 1) % RING_PERIOD
        return frame


_RING_CYCLES: dict[str, list[bytes]] = {}  #: codec -> its 5 s cycle, made once


def _ring_cycle(codec: str) -> list[bytes]:
    """One 5 s cycle, the sine's phase running on from frame to frame."""
    silence = SILENCE.get(codec, SILENCE["PCMU"])
    step = 2 * math.pi * RING_HZ / 8000
    frames = []
    for i in range(RING_PERIOD):
        if i >= RING_ON:
            frames.append(silence)
            continue
        start = i * FRAME
        samples = array(
            "h", (round(RING_LEVEL * math.sin(step * (start + n))) for n in range(FRAME))
        )
        frames.append(encode(codec, samples))
    return frames


class Playout:
    """G.711 bytes for the caller, 20 ms per ``take``: a ~40 ms buffer.

    - It starts (and starts again after running dry) once ``PREFETCH`` is
      buffered, with the first bytes padded to a whole frame (the
      resampler's first output is short, and a FIFO 16 bytes off its frames
      ran dry a tick early whenever a packet came late).
    - A part-frame left when the room's audio runs late is played padded
      with silence, rather than a whole frame of silence and 40 ms of
      prefetch again.
    - It holds ~40 ms, not what bursts left: when for ``TRIM_TICKS`` (1 s)
      it never held less than a frame more than ``PREFETCH``, the surplus
      goes (``trimmed`` frames).  Measured before: a burst of the agents'
      late packets left the FIFO at its 200 ms cap for the rest of the call.
    - ``CAPACITY`` (200 ms) still bounds it; the oldest bytes go first.
    """

    #: Ticks over which the lowest level is watched before trimming.
    TRIM_TICKS = 50

    def __init__(self, codec: str) -> None:
        self._silence = SILENCE.get(codec, SILENCE["PCMU"])
        self._fifo = bytearray()
        self._playing = False
        self._lowest = CAPACITY  #: the lowest level at a tick since the last trim
        self._ticks = 0
        self.underruns = 0
        self.overflows = 0
        self.trimmed = 0

    def __len__(self) -> int:
        return len(self._fifo)

    def push(self, payload: bytes) -> None:
        fifo = self._fifo
        if not fifo and not self._playing and len(payload) % FRAME:
            fifo += self._silence[: FRAME - len(payload) % FRAME]
        fifo += payload
        if len(fifo) > CAPACITY:
            self.overflows += 1
            del fifo[: len(fifo) - CAPACITY]

    def take(self) -> bytes:
        fifo = self._fifo
        level = len(fifo)
        if not self._playing:
            if level < PREFETCH:
                return self._silence
            self._playing = True
            self._lowest, self._ticks = level, 0
        if level < FRAME:
            if level:  # a part-frame: played, padded
                frame = bytes(fifo) + self._silence[level:]
                fifo.clear()
                return frame
            self._playing = False
            self.underruns += 1
            return self._silence
        self._lowest = min(self._lowest, level)
        self._ticks += 1
        if self._ticks >= self.TRIM_TICKS:
            surplus = (self._lowest - PREFETCH) // FRAME * FRAME
            if surplus >= FRAME:
                del fifo[:surplus]
                self.trimmed += surplus // FRAME
            self._lowest, self._ticks = CAPACITY, 0
        frame = bytes(fifo[:FRAME])
        del fifo[:FRAME]
        return frame


class RtpSender:
    """Our RTP stream to the caller: one packet per tick, audio or an
    RFC 4733 event while a digit is being sent."""

    def __init__(self, payload_type: int, dtmf_payload_type: int | None, ssrc: int) -> None:
        self.payload_type = payload_type
        self.dtmf_payload_type = dtmf_payload_type
        self.ssrc = ssrc
        self._seq = ssrc & 0x7FFF
        self._ts = (ssrc >> 7) & 0xFFFFFF
        self._digits: deque[int] = deque()
        self._event: tuple[int, int, int] | None = None  # (code, start ts, ticks sent)
        self._marker = True  # the first packet of the stream
        self.sent = 0

    def queue_digit(self, digit: str) -> bool:
        """False if the digit cannot be sent (not a key, no telephone-event)."""
        code = DIGITS.find(digit.upper()) if len(digit) == 1 else -1
        if code < 0 or self.dtmf_payload_type is None or len(self._digits) > 32:
            return False
        self._digits.append(code)
        return True

    def next_packet(self, audio: bytes) -> bytes:
        """The packet of this tick: ``audio`` (20 ms of G.711) unless a
        digit is playing."""
        if self._event is None and self._digits:
            self._event = (self._digits.popleft(), self._ts, 0)
        if self._event is not None and self.dtmf_payload_type is not None:
            return self._event_packet(self.dtmf_payload_type)
        packet = RtpPacket(self.payload_type, self._seq, self._ts, self.ssrc, audio, self._marker)
        self._marker = False
        self._seq += 1
        self._ts += FRAME
        self.sent += 1
        return packet.pack()

    def _event_packet(self, pt: int) -> bytes:
        assert self._event is not None
        code, start, ticks = self._event
        ticks += 1
        end = ticks > DIGIT_TICKS
        duration = min(ticks, DIGIT_TICKS) * FRAME
        volume = 10
        payload = bytes([code, (0x80 if end else 0) | volume]) + duration.to_bytes(2, "big")
        packet = RtpPacket(pt, self._seq, start, self.ssrc, payload, ticks == 1)
        self._seq += 1
        self._ts += FRAME  # the event's packets share its start; audio resumes in time
        self.sent += 1
        self._event = None if ticks >= DIGIT_TICKS + END_REPEATS else (code, start, ticks)
        return packet.pack()


class CallLimits:
    """When a call should be hung up: no media for ``media_timeout``
    seconds, or on for ``max_duration`` (0: no limit)."""

    def __init__(self, now: float, media_timeout: float, max_duration: float) -> None:
        self.started = now
        self.last_heard = now
        self.media_timeout = media_timeout
        self.max_duration = max_duration

    def heard(self, now: float) -> None:
        self.last_heard = now

    def expired(self, now: float) -> str:
        """Why the call must end now, or ""."""
        if self.media_timeout > 0 and now - self.last_heard >= self.media_timeout:
            return f"no media for {self.media_timeout:g} s"
        if self.max_duration > 0 and now - self.started >= self.max_duration:
            return f"the call reached its maximum duration ({self.max_duration:g} s)"
        return ""


class SendClock:
    """One 20 ms clock for every call of a process: when the next tick is
    due, and how late each tick ran (its jitter).  A tick more than
    ``RESYNC`` late starts the schedule again from now instead of sending
    a burst to catch up."""

    PERIOD = 0.020
    RESYNC = 0.100

    def __init__(self, now: float) -> None:
        self.next_at = now + self.PERIOD
        self.ticks = 0
        self.max_late = 0.0
        self.late: deque[float] = deque(maxlen=3000)  # the last minute's lateness

    def tick(self, now: float) -> bool:
        """Called at (or after) ``next_at``: True if a frame is due now."""
        if now < self.next_at:
            return False
        late = now - self.next_at
        self.late.append(late)
        self.max_late = max(self.max_late, late)
        self.ticks += 1
        self.next_at = now + self.PERIOD if late > self.RESYNC else self.next_at + self.PERIOD
        return True

    def jitter_p99(self) -> float:
        """The 99th percentile of the ticks' lateness (seconds)."""
        if not self.late:
            return 0.0
        ordered = sorted(self.late)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
