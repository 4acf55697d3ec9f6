"""A test tone for the rtc SDK: published by one participant, measured by
another (RMS and frequency), as a user would check that audio passes."""

from __future__ import annotations

import asyncio
import math

import numpy as np
from livekit import rtc

RATE = 48000
AMPLITUDE = 8000  #: of a full scale of 32767; its RMS is AMPLITUDE / sqrt(2)
FRAME = 480  #: 10 ms


async def publish_tone(room: rtc.Room, freq: float) -> asyncio.Task[None]:
    """Publish a microphone track playing ``freq`` Hz until the task is cancelled."""
    source = rtc.AudioSource(RATE, 1)
    track = rtc.LocalAudioTrack.create_audio_track("tone", source)
    options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
    await room.local_participant.publish_track(track, options)

    async def play() -> None:
        t = 0
        while True:
            n = np.arange(t, t + FRAME)
            samples = (AMPLITUDE * np.sin(2 * np.pi * freq * n / RATE)).astype(np.int16)
            t += FRAME
            await source.capture_frame(rtc.AudioFrame(samples.tobytes(), RATE, 1, FRAME))

    return asyncio.create_task(play())


async def listen(track: rtc.Track, seconds: float) -> tuple[float, float, int]:
    """(RMS, strongest frequency, frames) of ``seconds`` of ``track``, after
    the first half second (the decoder's start)."""
    stream = rtc.AudioStream(track, sample_rate=RATE, num_channels=1)
    chunks: list[np.ndarray] = []
    skip = 50
    try:
        async for event in stream:
            if skip:
                skip -= 1
                continue
            chunks.append(np.frombuffer(event.frame.data, dtype=np.int16).astype(np.float64))
            if len(chunks) * FRAME >= seconds * RATE:
                break
    finally:
        await stream.aclose()
    return measure(np.concatenate(chunks)) + (len(chunks),)


def measure(samples: np.ndarray) -> tuple[float, float]:
    rms = math.sqrt(float(np.mean(samples**2)))
    spectrum = np.abs(np.fft.rfft(samples))
    return rms, float(np.argmax(spectrum) * RATE / len(samples))
