"""G.711 <-> Opus for one call, once each way, in our own code (not
aiortc's codec path, which costs twice as much and loses 3 dB:
media-bridge.md §2.1).  FFmpeg through PyAV, every step in C: its G.711
codecs (2-4 µs a frame, against 15-25 for ``sip.rtp``'s tables in
Python; FFmpeg's μ-law decoding is bit-identical to ours, its encoding
rounds 851 of 65,536 inputs one code differently, with equal error:
§2.1), libopus and libswresample.

- Caller to room: G.711 -> 16-bit 8 kHz -> libopus fed the 8 kHz directly
  (mono, 24 kb/s, "voip", complexity 1, unconstrained VBR, as FFmpeg's
  wrapper sets it), one 20 ms packet per 20 ms frame, called through
  ctypes as the decoder is: 25 µs a frame against 36 through PyAV's
  encoder (its frames and packets are Python objects), the same
  bitstream settings.
  A caller's audio has nothing above 4 kHz, so Opus's narrowband (SILK)
  carries all of it; at 48 kHz it spent time and bits on the empty bands
  (hybrid mode).  The encoder is the bridge's largest cost.  Complexity 1
  (libopus's default is 10; libwebrtc uses 5 on mobile) costs 45-48 µs a
  frame here against 91 at 5 (side by side, best of five), and on a
  voice-like test signal it keeps a segmental SNR of 12.9 dB against 13.1
  at 5 (``test_bridge``): SILK's higher complexities search harder for a
  few tenths of a dB.  RTP timestamps stay at 48 kHz, since the Opus
  bitstream does not depend on the input rate.
- Room to caller: Opus -> libopus at 8 kHz -> G.711.  FFmpeg's libopus
  wrapper always decodes at 48 kHz, whatever it is told (§2.1), and then
  swr had to bring it down (31 + 13 µs a frame); libopus itself decodes at
  8 kHz directly (its own band limiting), so it is called through ctypes:
  the copy PyAV's wheel carries, else the system's ``libopus.so.0``.  With
  neither, the FFmpeg paths both ways (``CallerEncoder(codec, native=False)``,
  ``RoomDecoder(codec, native=False)``).

Pure computation: no clock, no I/O; no numpy (an install with rooms but
not the bench has none).
"""

from __future__ import annotations

import ctypes
import fractions
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import av

OPUS_RATE = 48000
#: What the caller's encoder is fed (G.711's own rate), its bit rate and
#: its complexity (0-10).
CALLER_RATE = 8000
BIT_RATE = 24000
COMPLEXITY = 1
_CALLER_TIME_BASE = fractions.Fraction(1, CALLER_RATE)
#: FFmpeg's codec of each G.711 encoding.
G711 = {"PCMU": "pcm_mulaw", "PCMA": "pcm_alaw"}


def _g711(codec: str, mode: Literal["r", "w"]) -> Any:
    context: Any = av.CodecContext.create(G711.get(codec, "pcm_mulaw"), mode)
    context.sample_rate = 8000
    context.layout = "mono"
    if mode == "w":
        context.format = "s16"
    context.open()
    return context


class _LibopusCoder:
    """What the encoder and the decoder share: with ``native``, a libopus
    state leased from its spares and given back by ``close``."""

    native: bool
    _handle: int | None

    def _lease(self, spares: _Spares | None) -> None:
        if spares is None:  # no libopus was found
            raise RuntimeError("libopus was not found")
        self._handle, self._release = spares.lease(self)

    def close(self) -> None:
        """libopus's state back to the spares, for the next call (the call
        or its listener has ended: nothing is coded after this)."""
        if self.native:
            self._handle = None
            self._release()  # once; the garbage collector's call then does nothing


class CallerEncoder(_LibopusCoder):
    """The caller's G.711 frames to Opus packets.

    :param native: encode with libopus through ctypes (the default when it
        was found), else through PyAV's libopus encoder."""

    def __init__(self, codec: str, native: bool | None = None) -> None:
        self._g711 = _g711(codec, "r")
        self.native = _LIBOPUS is not None if native is None else native
        if self.native:
            self._lease(_ENCODERS)
            self._out = ctypes.create_string_buffer(_MAX_PACKET)
            self._pending = b""  # samples short of a 20 ms frame
            return
        opus: Any = av.CodecContext.create("libopus", "w")
        opus.sample_rate = CALLER_RATE
        opus.layout = "mono"
        opus.format = "s16"
        opus.bit_rate = BIT_RATE
        opus.time_base = _CALLER_TIME_BASE
        opus.options = {"application": "voip", "compression_level": str(COMPLEXITY)}
        opus.open()
        self._opus = opus

    def encode(self, g711: bytes) -> list[bytes]:
        """The Opus packets these samples complete (one per 20 ms frame)."""
        packets: list[bytes] = []
        if self.native:
            assert _LIBOPUS is not None
            handle = self._handle
            if handle is None:
                return packets  # closed: its state may be another call's now
            pcm = self._pending
            for frame in self._g711.decode(av.Packet(g711)):
                pcm += bytes(frame.planes[0])[: 2 * frame.samples]
            at = 0
            while len(pcm) - at >= _FRAME_BYTES:
                n = _LIBOPUS.opus_encode(
                    handle, pcm[at : at + _FRAME_BYTES], _FRAME_SAMPLES, self._out, _MAX_PACKET
                )
                if n > 0:  # (< 0: a bug of ours, never the caller's audio)
                    packets.append(ctypes.string_at(self._out, n))
                at += _FRAME_BYTES
            self._pending = pcm[at:]
            return packets
        for frame in self._g711.decode(av.Packet(g711)):
            frame.pts = None
            packets += [bytes(p) for p in self._opus.encode(frame)]
        return packets


#: libopus's encoder settings (opus_defines.h): the application, and the
#: requests of ``opus_encoder_ctl``.
_APPLICATION_VOIP = 2048
_SET_BITRATE, _SET_VBR, _SET_COMPLEXITY, _SET_VBR_CONSTRAINT = 4002, 4006, 4010, 4020
#: 20 ms at 8 kHz; the largest Opus packet is 1,275 bytes (RFC 6716 §3.4).
_FRAME_SAMPLES = 160
_FRAME_BYTES = 2 * _FRAME_SAMPLES
_MAX_PACKET = 1500
#: ``opus_encoder_ctl``/``opus_decoder_ctl``: the state as if new, the settings kept.
_RESET_STATE = 4028


def _native_encoder(lib: Any) -> int:
    """A libopus encoder set as FFmpeg's wrapper sets it for us: 24 kb/s,
    "voip", complexity 1, VBR (unconstrained)."""
    error = ctypes.c_int(0)
    handle = lib.opus_encoder_create(CALLER_RATE, 1, _APPLICATION_VOIP, ctypes.byref(error))
    if not handle or error.value != 0:
        raise RuntimeError(f"opus_encoder_create failed ({error.value})")
    # opus_encoder_ctl is variadic: its arguments go as C ints, untyped.
    for request, value in (
        (_SET_BITRATE, BIT_RATE), (_SET_VBR, 1), (_SET_COMPLEXITY, COMPLEXITY),
        (_SET_VBR_CONSTRAINT, 0),
    ):  # fmt: skip
        status = lib.opus_encoder_ctl(
            ctypes.c_void_p(handle), ctypes.c_int(request), ctypes.c_int32(value)
        )
        if status != 0:
            lib.opus_encoder_destroy(handle)
            raise RuntimeError(f"opus_encoder_ctl({request}, {value}) failed ({status})")
    return int(handle)


#: The longest Opus packet (120 ms) at 8 kHz, in samples.
_MAX_SAMPLES = 960


def _load_libopus() -> Any:
    """libopus's encoder and decoder functions, or None.  PyAV's wheel carries a copy
    (already loaded by its libavcodec); a Debian-packaged PyAV uses the
    system's.  No ``ctypes.util.find_library``: it runs a subprocess."""
    bundled = Path(av.__file__).resolve().parent.parent / "av.libs"
    for name in [*sorted(str(p) for p in bundled.glob("libopus*.so*")), "libopus.so.0"]:
        try:
            lib = ctypes.CDLL(name)
            lib.opus_decoder_create.restype = ctypes.c_void_p
            lib.opus_decoder_create.argtypes = [
                ctypes.c_int32, ctypes.c_int, ctypes.POINTER(ctypes.c_int)
            ]  # fmt: skip
            lib.opus_decode.restype = ctypes.c_int
            lib.opus_decode.argtypes = [
                ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int32,
                ctypes.POINTER(ctypes.c_int16), ctypes.c_int, ctypes.c_int,
            ]  # fmt: skip
            lib.opus_decoder_destroy.restype = None
            lib.opus_decoder_destroy.argtypes = [ctypes.c_void_p]
            lib.opus_decoder_ctl.restype = ctypes.c_int
            lib.opus_encoder_create.restype = ctypes.c_void_p
            lib.opus_encoder_create.argtypes = [
                ctypes.c_int32, ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_int)
            ]  # fmt: skip
            lib.opus_encode.restype = ctypes.c_int32
            lib.opus_encode.argtypes = [
                ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int32,
            ]  # fmt: skip
            lib.opus_encoder_ctl.restype = ctypes.c_int
            lib.opus_encoder_destroy.restype = None
            lib.opus_encoder_destroy.argtypes = [ctypes.c_void_p]
        except (OSError, AttributeError):
            continue
        return lib
    return None


_LIBOPUS = _load_libopus()


class _Spares:
    """libopus states of one kind (encoders or decoders) that calls have
    ended with, reset for the next call.  Creating one takes 70 µs (an
    encoder) or 120 µs (a decoder: libopus 1.5 and later set up their
    neural models then); OPUS_RESET_STATE a microsecond.  At 1,000 calls
    a second the creating was a tenth of a media worker's time."""

    #: Kept at most: 2 MB of encoders, 1.2 MB of decoders.
    KEEP = 64

    def __init__(self, create: Callable[[], int], ctl: Any, destroy: Any) -> None:
        self._create, self._ctl, self._destroy = create, ctl, destroy
        self.spare: list[int] = []

    def take(self) -> int:
        return self.spare.pop() if self.spare else self._create()

    def lease(self, owner: object) -> tuple[int, weakref.finalize[[int], object]]:
        """A state for ``owner``, given back when the returned finalizer is
        called (once), or else when ``owner`` is collected."""
        handle = self.take()
        return handle, weakref.finalize(owner, self.give, handle)

    def give(self, handle: int) -> None:
        reset = self._ctl(ctypes.c_void_p(handle), ctypes.c_int(_RESET_STATE))
        if reset == 0 and len(self.spare) < self.KEEP:
            self.spare.append(handle)
        else:
            self._destroy(handle)


def _native_decoder(lib: Any) -> int:
    """A libopus decoder of 8 kHz mono."""
    error = ctypes.c_int(0)
    handle = lib.opus_decoder_create(CALLER_RATE, 1, ctypes.byref(error))
    if not handle or error.value != 0:
        raise RuntimeError(f"opus_decoder_create failed ({error.value})")
    return int(handle)


_ENCODERS = _DECODERS = None
if _LIBOPUS is not None:
    _ENCODERS = _Spares(
        lambda: _native_encoder(_LIBOPUS), _LIBOPUS.opus_encoder_ctl, _LIBOPUS.opus_encoder_destroy
    )
    _DECODERS = _Spares(
        lambda: _native_decoder(_LIBOPUS), _LIBOPUS.opus_decoder_ctl, _LIBOPUS.opus_decoder_destroy
    )


class RoomDecoder(_LibopusCoder):
    """Opus packets (any frame length) to G.711 for the caller.

    :param native: decode with libopus at 8 kHz (the default when it was
        found), else FFmpeg's libopus at 48 kHz and swr."""

    def __init__(self, codec: str, native: bool | None = None) -> None:
        self.codec = codec
        self._g711 = _g711(codec, "w")
        self.errors = 0
        self.native = _LIBOPUS is not None if native is None else native
        if self.native:
            self._lease(_DECODERS)
            self._pcm = (ctypes.c_int16 * _MAX_SAMPLES)()
            return
        decoder: Any = av.CodecContext.create("libopus", "r")
        decoder.sample_rate = OPUS_RATE
        decoder.layout = "mono"
        self._decoder = decoder
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=8000)

    def decode(self, payload: bytes) -> bytes:
        """G.711 bytes for the packet's audio (none for a packet that does not decode)."""
        if self.native:
            return self._decode_native(payload)
        out = bytearray()
        try:
            frames = self._decoder.decode(av.Packet(payload))
        except av.error.FFmpegError:  # a corrupt packet from the room: skip it
            self.errors += 1
            return b""
        for frame in frames:
            frame.pts = None
            for low in self._resampler.resample(frame):
                low.pts = None
                for packet in self._g711.encode(low):
                    out += bytes(packet)
        return bytes(out)

    def _decode_native(self, payload: bytes) -> bytes:
        if not payload:  # libopus would conceal a lost packet: 120 ms of it
            return b""
        assert _LIBOPUS is not None
        handle = self._handle
        if handle is None:
            return b""  # closed: its state may be another call's now
        n = _LIBOPUS.opus_decode(handle, payload, len(payload), self._pcm, _MAX_SAMPLES, 0)
        if n <= 0:  # a corrupt packet from the room: skip it
            self.errors += n < 0
            return b""
        frame = av.AudioFrame(format="s16", layout="mono", samples=n)
        frame.planes[0].update(ctypes.string_at(self._pcm, 2 * n))
        frame.sample_rate = CALLER_RATE
        return b"".join(bytes(p) for p in self._g711.encode(frame))
