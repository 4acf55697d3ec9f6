"""One load process of ``bench rooms``: k two-party audio rooms of rtc SDK
clients, each side publishing a tone and hearing the other's.

``python -m edgedispatch.cli.bench.rooms_clients URL KEY SECRET FIRST COUNT
SECONDS`` joins rooms FIRST..FIRST+COUNT-1, prints ``measuring`` once the
audio flows (after a warm-up), counts for SECONDS the 20 ms frames heard and
those below 30% of the tone's level, prints them as JSON, and leaves.  With
SECONDS 0 it prints ``ready`` and holds the rooms until its stdin closes
(dispatch measured beside them).  Clients run apart from the process that
drives dispatch, so that its GIL does not slow the driver.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
import time
from typing import Any

import numpy as np
from livekit import api, rtc

RATE = 48000
FRAME_MS = 20  #: the unit of loss: one Opus packet's worth
FRAME = RATE * FRAME_MS // 1000
#: Audio moves through the SDK in chunks of this many frames: each chunk is
#: a Python call and an FFI round trip, and with 20 ms ones the load
#: processes, not the server, ran out of CPU first on a 2-core box.
CHUNK = 5
AMPLITUDE = 8000
WARMUP = 3.0


def token(identity: str, room: str, key: str, secret: str) -> str:
    grants = api.VideoGrants(room_join=True, room=room)
    return api.AccessToken(key, secret).with_identity(identity).with_grants(grants).to_jwt()


async def tone(room: rtc.Room, freq: float) -> asyncio.Task[None]:
    source = rtc.AudioSource(RATE, 1)
    track = rtc.LocalAudioTrack.create_audio_track("tone", source)
    options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
    await room.local_participant.publish_track(track, options)
    wave = (AMPLITUDE * np.sin(2 * np.pi * freq * np.arange(RATE) / RATE)).astype(np.int16)

    async def play() -> None:
        t, n = 0, FRAME * CHUNK
        while True:
            chunk = np.take(wave, range(t, t + n), mode="wrap")
            t = (t + n) % RATE
            await source.capture_frame(rtc.AudioFrame(chunk.tobytes(), RATE, 1, n))

    return asyncio.create_task(play())


async def main(url: str, key: str, secret: str, first: int, count: int, seconds: float) -> None:
    rooms: list[rtc.Room] = []
    players: list[asyncio.Task[None]] = []
    listeners: list[asyncio.Task[None]] = []
    counters: list[list[int]] = []  # per listener: [frames, silent]
    window = [math.inf, math.inf]  # measuring from, until
    quiet = 0.3 * AMPLITUDE / math.sqrt(2)

    async def listen(track: rtc.Track, counts: list[int]) -> None:
        stream = rtc.AudioStream(
            track, sample_rate=RATE, num_channels=1, frame_size_ms=FRAME_MS * CHUNK
        )
        async for event in stream:
            now = time.monotonic()
            if now > window[1]:
                break
            if now >= window[0]:
                samples = np.frombuffer(event.frame.data, dtype=np.int16).astype(np.float32)
                frames = samples[: len(samples) // FRAME * FRAME].reshape(-1, FRAME)
                levels = np.sqrt(np.mean(frames * frames, axis=1))
                counts[0] += len(levels)
                counts[1] += int(np.count_nonzero(levels < quiet))
        await stream.aclose()

    for r in range(first, first + count):
        for side, freq in (("a", 440.0), ("b", 660.0)):
            room = rtc.Room()
            counts = [0, 0]
            counters.append(counts)

            def subscribed(track: rtc.Track, *_: Any, c: list[int] = counts) -> None:
                listeners.append(asyncio.ensure_future(listen(track, c)))

            room.on("track_subscribed", subscribed)
            await room.connect(url, token(f"{side}{r}", f"bench-audio-{r}", key, secret))
            rooms.append(room)
            players.append(await tone(room, freq))
    await asyncio.sleep(WARMUP)
    if seconds > 0:
        window[0] = time.monotonic()
        window[1] = window[0] + seconds
        print("measuring", flush=True)
        await asyncio.sleep(seconds + 0.3)
        result = {
            "frames": sum(c[0] for c in counters),
            "silent": sum(c[1] for c in counters),
            "expected": len(counters) * seconds * 1000 / FRAME_MS,
        }
        print(json.dumps(result), flush=True)
    else:
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for task in players + listeners:
        task.cancel()
    for room in rooms:
        await room.disconnect()


if __name__ == "__main__":
    url, key, secret, first, count, seconds = sys.argv[1:7]
    asyncio.run(main(url, key, secret, int(first), int(count), float(seconds)))
