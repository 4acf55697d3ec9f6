"""G.711 <-> Opus for one call, once each way, in our own code (not
aiortc's codec path, which costs twice as much and loses 3 dB:
media-bridge.md §2.1).  FFmpeg through PyAV: libopus and libswresample.

- Caller to room: 8 kHz samples -> swr to 48 kHz mono -> libopus (mono,
  32 kb/s, "voip"), one 20 ms packet per 20 ms frame.
- Room to caller: Opus -> libopus (always 48 kHz, whatever it is told:
  §2.1) -> swr to 8 kHz (it low-passes) -> G.711.

Pure computation: no clock, no I/O.
"""

from __future__ import annotations

import fractions
from array import array
from typing import Any

import av
import numpy as np

from edgedispatch.sip.rtp import encode

OPUS_RATE = 48000
BIT_RATE = 32000
_TIME_BASE = fractions.Fraction(1, OPUS_RATE)


class CallerEncoder:
    """8 kHz 16-bit frames to Opus packets (with their 48 kHz offsets)."""

    def __init__(self) -> None:
        codec: Any = av.CodecContext.create("libopus", "w")
        codec.sample_rate = OPUS_RATE
        codec.layout = "mono"
        codec.format = "s16"
        codec.bit_rate = BIT_RATE
        codec.time_base = _TIME_BASE
        codec.options = {"application": "voip"}
        codec.open()
        self._codec = codec
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=OPUS_RATE)

    def encode(self, samples: array[int]) -> list[bytes]:
        """The Opus packets these samples complete (usually one per 20 ms;
        none for the very first frame, which fills the resampler)."""
        frame = av.AudioFrame.from_ndarray(
            np.frombuffer(samples, dtype=np.int16).reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = 8000
        packets: list[bytes] = []
        for resampled in self._resampler.resample(frame):
            resampled.pts = None
            packets += [bytes(p) for p in self._codec.encode(resampled)]
        return packets


class RoomDecoder:
    """Opus packets (any frame length) to G.711 for the caller."""

    def __init__(self, codec: str) -> None:
        self.codec = codec
        decoder: Any = av.CodecContext.create("libopus", "r")
        decoder.sample_rate = OPUS_RATE
        decoder.layout = "mono"
        self._decoder = decoder
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=8000)
        self.errors = 0

    def decode(self, payload: bytes) -> bytes:
        """G.711 bytes for the packet's audio ("" for a packet that does not decode)."""
        out = bytearray()
        try:
            frames = self._decoder.decode(av.Packet(payload))
        except av.error.FFmpegError:  # a corrupt packet from the room: skip it
            self.errors += 1
            return b""
        for frame in frames:
            frame.pts = None
            for low in self._resampler.resample(frame):
                samples = array("h", low.to_ndarray().astype(np.int16).tobytes())
                out += encode(self.codec, samples)
        return bytes(out)
