"""A call's media logic on a fake clock: what the caller's packets become,
what the caller is sent each 20 ms tick, and when a call must end."""

from __future__ import annotations

from array import array

import numpy as np
import pytest

from edgedispatch.sip import transcode
from edgedispatch.sip.bridge import (
    CAPACITY,
    FRAME,
    SILENCE,
    CallLimits,
    Playout,
    RingTone,
    RtpSender,
    SendClock,
    Uplink,
)
from edgedispatch.sip.rtp import DtmfReceiver, RtpPacket, decode, encode, parse_rtp
from edgedispatch.sip.transcode import _LIBOPUS, CallerEncoder, RoomDecoder


def pcmu(value: int, samples: int = FRAME) -> bytes:
    return encode("PCMU", array("h", [value] * samples))


def audio(seq: int, ts: int, payload: bytes, ssrc: int = 1, pt: int = 0) -> RtpPacket:
    return RtpPacket(pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc, payload)


def test_each_caller_packet_becomes_one_frame_on_the_timeline() -> None:
    up = Uplink("PCMU", 0, 101)
    got = [up.receive(audio(65534 + i, 2**32 - 320 + i * FRAME, pcmu(1000))) for i in range(4)]
    # Sequence and timestamp wraps are in order.
    assert [f[0][0] for f in (g.frames for g in got)] == [0, 160, 320, 480]
    assert all(len(g.frames[0][1]) == FRAME for g in got)


def test_late_and_duplicate_packets_are_dropped_and_a_gap_stays_a_gap() -> None:
    up = Uplink("PCMU", 0, None)
    assert up.receive(audio(10, 0, pcmu(0))).frames[0][0] == 0
    assert up.receive(audio(10, 0, pcmu(0))).frames == []  # a duplicate
    # Packets 11 and 12 were lost: the next frame starts 60 ms on, not 20.
    assert up.receive(audio(13, 3 * FRAME, pcmu(0))).frames[0][0] == 3 * FRAME
    assert up.receive(audio(12, 2 * FRAME, pcmu(0))).frames == []  # too late
    assert up.dropped == 2


def test_a_new_ssrc_continues_the_timeline() -> None:
    up = Uplink("PCMU", 0, None)
    up.receive(audio(1, 0, pcmu(0)))
    got = up.receive(audio(900, 123456, pcmu(0), ssrc=2))
    assert got.frames[0][0] == FRAME


def test_30_ms_packets_are_regrouped_into_20_ms_frames() -> None:
    up = Uplink("PCMA", 8, None)
    payload = encode("PCMA", array("h", [500] * 240))
    starts = []
    for i in range(4):
        starts += [at for at, _ in up.receive(audio(i, i * 240, payload, pt=8)).frames]
    assert starts == [0, 160, 320, 480, 640, 800]  # 4 x 30 ms = 6 x 20 ms


def test_digits_are_reported_once_and_unknown_payload_types_ignored() -> None:
    up = Uplink("PCMU", 0, 96)
    event = bytes([5, 10, 0, 160])
    first = up.receive(audio(1, 8000, event, ssrc=7, pt=96))
    again = up.receive(audio(2, 8000, bytes([5, 0x80 | 10, 1, 0]), ssrc=7, pt=96))
    noop = up.receive(audio(3, 8000, b"\x00" * 4, ssrc=7, pt=97))  # sipp's PT 97 no-ops
    assert (first.digit, again.digit, noop.digit, noop.frames) == ("5", "", "", [])


def test_playout_waits_for_40_ms_then_plays_and_fills_silence() -> None:
    out = Playout("PCMU")
    out.push(pcmu(1000))
    assert out.take() == SILENCE["PCMU"]  # 20 ms buffered: still prefetching
    out.push(pcmu(2000))
    assert out.take() == pcmu(1000) and out.take() == pcmu(2000)
    assert out.take() == SILENCE["PCMU"] and out.underruns == 1
    out.push(pcmu(3000))
    assert out.take() == SILENCE["PCMU"]  # prefetching again after the underrun


def test_playout_aligns_a_short_first_output_to_whole_frames() -> None:
    out = Playout("PCMU")
    out.push(pcmu(1000, 144))  # the resampler's first output is short
    out.push(pcmu(2000))
    assert len(out) == 2 * FRAME  # padded at the front: 40 ms, whole frames
    assert out.take() == SILENCE["PCMU"][:16] + pcmu(1000, 144)
    assert out.take() == pcmu(2000)


def test_playout_plays_a_part_frame_padded_instead_of_running_dry() -> None:
    out = Playout("PCMU")
    out.push(pcmu(1000) + pcmu(2000))
    assert out.take() == pcmu(1000)
    out.push(pcmu(3000, 80))  # 10 ms late audio: half a frame so far
    assert out.take() == pcmu(2000)
    assert out.take() == pcmu(3000, 80) + SILENCE["PCMU"][80:]
    assert out.underruns == 0


def test_playout_trims_a_lasting_surplus_back_to_40_ms() -> None:
    out = Playout("PCMU")
    for value in range(7):  # a burst: 140 ms at once
        out.push(pcmu(value * 100))
    taken = []
    for tick in range(Playout.TRIM_TICKS + 5):
        taken.append(out.take())
        out.push(pcmu(1000 + tick))  # then 20 ms a tick, steadily
    # A second at 120 ms or more: all but 40 ms went, once, in whole frames.
    assert out.trimmed == 5 and len(out) == 2 * FRAME
    assert taken[Playout.TRIM_TICKS] == pcmu(1000 + Playout.TRIM_TICKS - 2)
    assert out.underruns == out.overflows == 0


def test_playout_keeps_what_jitter_needs() -> None:
    out = Playout("PCMU")
    out.push(pcmu(1))
    out.push(pcmu(2))
    for tick in range(3 * Playout.TRIM_TICKS):
        out.take()
        if tick % 25 == 0:  # a late packet now and then: it dips to 20 ms
            out.take()
            out.push(pcmu(3))
        out.push(pcmu(3))
    assert out.trimmed == 0 and out.underruns == 0


def test_playout_drops_the_oldest_beyond_its_capacity() -> None:
    out = Playout("PCMA")
    for value in range(CAPACITY // FRAME + 3):
        out.push(encode("PCMA", array("h", [value * 100] * FRAME)))
    assert len(out) == CAPACITY and out.overflows == 3
    assert out.take() == encode("PCMA", array("h", [300] * FRAME))


def test_the_sender_numbers_packets_and_sends_digits_as_rfc4733() -> None:
    send = RtpSender(0, 101, ssrc=0x1234)
    first = parse_rtp(send.next_packet(pcmu(0)))
    assert first.marker and first.payload_type == 0 and len(first.payload) == FRAME
    assert send.queue_digit("#") and not send.queue_digit("x")
    events = [parse_rtp(send.next_packet(pcmu(0))) for _ in range(11)]
    assert {e.payload_type for e in events} == {101}
    assert {e.timestamp for e in events} == {first.timestamp + FRAME}  # one event, one start
    assert events[0].marker and not events[1].marker
    assert [e.payload[1] >> 7 for e in events] == [0] * 8 + [1] * 3  # the end, three times
    assert int.from_bytes(events[-1].payload[2:], "big") == 8 * FRAME
    receiver = DtmfReceiver()
    assert [receiver.receive(e) for e in events].count("#") == 1
    after = parse_rtp(send.next_packet(pcmu(0)))
    assert after.payload_type == 0 and after.timestamp == first.timestamp + 12 * FRAME
    assert [p.sequence - first.sequence for p in [*events, after]] == list(range(1, 13))
    assert not RtpSender(0, None, 1).queue_digit("1")  # no telephone-event negotiated


def test_limits_end_a_silent_call_and_a_long_one() -> None:
    limits = CallLimits(100.0, media_timeout=15, max_duration=60)
    limits.heard(110.0)
    assert limits.expired(124.9) == ""
    assert "no media" in limits.expired(125.0)
    for t in range(125, 161, 5):
        limits.heard(float(t))
    assert "maximum duration" in limits.expired(160.0)
    assert CallLimits(0.0, 0, 0).expired(1e9) == ""


def test_the_send_clock_keeps_its_schedule_and_resyncs_when_far_behind() -> None:
    clock = SendClock(0.0)
    assert not clock.tick(0.010)
    assert clock.tick(0.021) and abs(clock.next_at - 0.040) < 1e-9  # a late tick: no drift
    assert clock.tick(0.040)
    assert clock.tick(0.500) and abs(clock.next_at - 0.520) < 1e-9  # far behind: no burst
    assert abs(clock.max_late - 0.440) < 1e-9 and clock.ticks == 3


#: The room's audio decoded by libopus at 8 kHz (the default), and by the
#: FFmpeg path it falls back to without one.
DECODERS = [
    pytest.param(True, id="libopus", marks=pytest.mark.skipif(_LIBOPUS is None, reason="none")),
    pytest.param(False, id="ffmpeg"),
]


#: The caller's audio encoded by libopus through ctypes (the default), and
#: by PyAV's encoder, the fallback.
ENCODERS = [
    pytest.param(True, id="enc-libopus", marks=pytest.mark.skipif(_LIBOPUS is None, reason="none")),
    pytest.param(False, id="enc-pyav"),
]


def test_libopus_is_called_directly_both_ways_where_pyav_carries_it() -> None:
    assert _LIBOPUS is not None  # PyAV's wheel has it: the tests' install is one
    assert RoomDecoder("PCMU").native and CallerEncoder("PCMU").native


@pytest.mark.parametrize("native_encoder", ENCODERS)
@pytest.mark.parametrize("native", DECODERS)
@pytest.mark.parametrize("codec", ["PCMU", "PCMA"])
def test_the_codecs_carry_a_tone_both_ways(codec: str, native: bool, native_encoder: bool) -> None:
    """G.711 -> Opus -> G.711, with its pitch and level."""
    n = np.arange(8000)
    tone = (12000 * np.sin(2 * np.pi * 440 * n / 8000)).astype(np.int16)
    enc, dec = CallerEncoder(codec, native_encoder), RoomDecoder(codec, native)
    back = bytearray()
    for i in range(0, len(tone), FRAME):
        for packet in enc.encode(encode(codec, array("h", tone[i : i + FRAME].tobytes()))):
            back += dec.decode(packet)
    samples = np.array(decode(codec, bytes(back)), dtype=np.float64)[1600:]
    spectrum = np.abs(np.fft.rfft(samples))
    assert abs(np.argmax(spectrum) * 8000 / len(samples) - 440) < 5
    assert 6000 < np.sqrt(np.mean(samples**2)) < 10000  # 12000 / sqrt(2), give or take
    assert dec.decode(b"\xff\xfe garbage") == b""  # a bad packet from the room never raises
    assert dec.errors == 1 and dec.decode(b"") == b""


def speech_like(seconds: float) -> np.ndarray:
    """A voice, roughly: a glottal pulse train with a gliding pitch
    (90-210 Hz) through two moving formants, in syllables, at 8 kHz."""
    rng = np.random.default_rng(1)
    t = np.arange(int(8000 * seconds)) / 8000
    f0 = 150 + 60 * np.sin(2 * np.pi * 0.7 * t)
    phase = np.cumsum(f0 / 8000)
    excitation = (np.diff(np.floor(phase), prepend=0.0) > 0) + 0.02 * rng.standard_normal(len(t))
    voice = excitation
    for centre, swing, rate in ((600, 200, 2.1), (1400, 400, 1.3)):
        w = 2 * np.pi * (centre + swing * np.sin(2 * np.pi * rate * t)) / 8000
        out, y1, y2 = np.empty(len(t)), 0.0, 0.0
        for i, (x, c) in enumerate(zip(voice, 2 * 0.97 * np.cos(w), strict=True)):
            y1, y2 = x + c * y1 - 0.97**2 * y2, y1
            out[i] = y1
        voice = out
    voice *= np.sqrt(np.maximum(0.0, np.sin(2 * np.pi * 2.5 * t)))
    return (12000 * voice / np.max(np.abs(voice))).astype(np.int16)


@pytest.mark.parametrize("native_encoder", ENCODERS)
@pytest.mark.parametrize("native", DECODERS)
def test_the_callers_voice_crosses_the_bridge_with_its_waveform(
    native: bool, native_encoder: bool
) -> None:
    """G.711 -> Opus -> G.711 keeps a voice's waveform: segmental SNR
    against what the caller sent, over the voiced 20 ms segments.  Opus's
    narrowband at complexity 1 measures about 12.9 dB here with the FFmpeg
    decoder and swr (complexity 5: 13.1), 14.5 with libopus decoding at
    8 kHz; a wrong bandwidth, rate or bit rate falls far below the floor."""
    codec = "PCMU"
    sent = np.array(decode(codec, encode(codec, array("h", speech_like(4.0).tobytes()))))
    enc, dec = CallerEncoder(codec, native_encoder), RoomDecoder(codec, native)
    back = bytearray()
    for i in range(0, len(sent), FRAME):
        for packet in enc.encode(encode(codec, array("h", sent[i : i + FRAME].tobytes()))):
            back += dec.decode(packet)
    got = np.array(decode(codec, bytes(back)), dtype=np.float64)
    ref = sent.astype(np.float64)
    # The codecs' delay (a few ms): the lag that best lines the two up.
    lag = max(range(200), key=lambda k: float(np.dot(ref[:8000], got[k : k + 8000])))
    n = (min(len(ref), len(got) - lag) // FRAME) * FRAME
    a, b = ref[:n].reshape(-1, FRAME), got[lag : lag + n].reshape(-1, FRAME)
    signal, error = np.sum(a**2, axis=1), np.sum((a - b) ** 2, axis=1)
    voiced = signal > FRAME * 300**2
    snr = np.mean(10 * np.log10(signal[voiced] / np.maximum(error[voiced], 1.0)))
    assert 0 < lag < 200 and voiced.sum() > 50  # half of the 200 segments
    assert snr > 11.0, snr


@pytest.mark.skipif(_LIBOPUS is None, reason="no libopus")
def test_libopus_called_directly_encodes_what_pyavs_encoder_does_byte_for_byte() -> None:
    """The same settings (rate, bit rate, application, complexity, VBR):
    the same packets, so the cheaper path changes nothing the room hears."""
    voice = encode("PCMU", array("h", speech_like(2.0).tobytes()))
    native, pyav = CallerEncoder("PCMU", True), CallerEncoder("PCMU", False)
    frames = [voice[i : i + FRAME] for i in range(0, len(voice), FRAME)]
    ours = [p for f in frames for p in native.encode(f)]
    theirs = [p for f in frames for p in pyav.encode(f)]
    assert len(ours) == len(frames) == 100 and ours == theirs


@pytest.mark.skipif(_LIBOPUS is None, reason="no libopus")
def test_a_calls_libopus_states_serve_the_next_call_as_if_new() -> None:
    """A call's encoder and decoder go back to the spares when it ends,
    reset, and the next call's start from there: the same packets and the
    same audio as new ones; the ended call's objects do nothing more."""
    voice = encode("PCMU", array("h", speech_like(1.0).tobytes()))
    frames = [voice[i : i + FRAME] for i in range(0, len(voice), FRAME)]
    pyav = CallerEncoder("PCMU", False)
    fresh = [p for f in frames for p in pyav.encode(f)]

    def one_call() -> tuple[CallerEncoder, RoomDecoder, list[bytes], bytes]:
        enc, dec = CallerEncoder("PCMU", True), RoomDecoder("PCMU", True)
        packets = [p for f in frames for p in enc.encode(f)]
        return enc, dec, packets, b"".join(dec.decode(p) for p in packets)

    first_enc, first_dec, packets, heard = one_call()
    assert packets == fresh
    states = (first_enc._handle, first_dec._handle)
    first_enc.close()
    first_dec.close()
    again_enc, again_dec, packets_again, heard_again = one_call()
    assert (again_enc._handle, again_dec._handle) == states  # the same two, reused
    assert packets_again == fresh and heard_again == heard
    # The ended call's coders touch nothing now: their states are the new call's.
    assert first_enc.encode(frames[0]) == [] and first_dec.decode(packets[0]) == b""
    first_enc.close()  # a second close does nothing
    assert again_enc.encode(frames[0]) and again_dec.decode(packets[0])


def test_the_spares_are_bounded_and_the_rest_destroyed() -> None:
    made = iter(range(1000))
    destroyed: list[int] = []
    pool = transcode._Spares(lambda: next(made), lambda handle, request: 0, destroyed.append)
    handles = [pool.take() for _ in range(pool.KEEP + 3)]
    for h in handles:
        pool.give(h)
    assert len(pool.spare) == pool.KEEP and destroyed == handles[pool.KEEP :]
    assert pool.take() == handles[pool.KEEP - 1] and next(made) == pool.KEEP + 3  # none made
    # A state libopus will not reset is destroyed, not kept.
    broken = transcode._Spares(lambda: next(made), lambda handle, request: -1, destroyed.append)
    broken.give(broken.take())
    assert not broken.spare and len(destroyed) == 4


@pytest.mark.parametrize("native_encoder", ENCODERS)
def test_the_encoder_sends_a_packet_per_20_ms_whatever_the_pieces(native_encoder: bool) -> None:
    """A packet for each whole 20 ms the caller's audio completes: pieces
    of 30 and 10 ms give one packet, then another; a 60 ms piece three."""
    enc = CallerEncoder("PCMA", native_encoder)
    piece = encode("PCMA", array("h", [1000, -1000] * 240))  # 60 ms
    counts = [len(enc.encode(piece[:240])), len(enc.encode(piece[240:320])), len(enc.encode(piece))]
    assert counts == [1, 1, 3]
    assert all(0 < len(p) <= 1275 for p in enc.encode(piece))


@pytest.mark.parametrize("codec", ["PCMU", "PCMA"])
def test_the_ringing_tone_is_etsis_425_hz_one_second_in_five(codec: str) -> None:
    ring = RingTone(codec)
    frames = [ring.next_frame() for _ in range(2 * 250)]
    assert all(len(f) == FRAME for f in frames)
    on = [max(map(abs, decode(codec, f))) > 1000 for f in frames]
    assert on == ([True] * 50 + [False] * 200) * 2  # 1 s of tone, 4 s of silence, again
    tone = np.array(decode(codec, b"".join(frames[:50])), dtype=np.float64)
    spectrum = np.abs(np.fft.rfft(tone))
    assert abs(np.argmax(spectrum) * 8000 / len(tone) - 425) < 2
    # Half of full scale (livekit/sip's level), in one piece across frames.
    assert 15000 < np.max(np.abs(tone)) < 17000
    # A sine's steepest step is 2 pi 425 / 8000 of its peak (~5,500): no
    # click where frames join.
    assert np.max(np.abs(np.diff(tone))) < 6000
