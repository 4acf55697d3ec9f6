"""The agent side of ``bench sip --media``, in a load process of its own:
one ``livekit`` rtc participant per call's room, each publishing a tone
(what the caller should hear), all fed from one 20 ms loop.

``python -m edgedispatch.cli.bench.sip_agents URL KEY SECRET FREQ ROOM...``
prints "ready" once every participant is connected and publishing, runs
until its standard input closes, then prints "kept_up R": the share of
real time its tones were produced in.
"""

from __future__ import annotations

import asyncio
import sys

import numpy as np
from livekit import rtc

from edgedispatch.cli.bench.common import agent_join_token

RATE = 48000
FRAME = 960  #: 20 ms
AMPLITUDE = 8000


async def main(url: str, key: str, secret: str, freq: float, rooms: list[str]) -> None:
    joined: list[rtc.Room] = []
    sources: list[rtc.AudioSource] = []
    for i, name in enumerate(rooms):
        token = agent_join_token(key, secret, i, name)
        room = rtc.Room()
        await room.connect(url, token)
        source = rtc.AudioSource(RATE, 1)
        track = rtc.LocalAudioTrack.create_audio_track("voice", source)
        options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        await room.local_participant.publish_track(track, options)
        joined.append(room)
        sources.append(source)
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    done = loop.run_in_executor(None, sys.stdin.read)
    t = 0
    started = next_at = loop.time()
    while not done.done():
        n = np.arange(t, t + FRAME)
        frame = rtc.AudioFrame(
            (AMPLITUDE * np.sin(2 * np.pi * freq * n / RATE)).astype(np.int16).tobytes(),
            RATE,
            1,
            FRAME,
        )
        t += FRAME
        await asyncio.gather(*(s.capture_frame(frame) for s in sources))
        next_at += FRAME / RATE
        await asyncio.sleep(max(0.0, next_at - loop.time()))
    # How much of real time the tones kept up with (a load process that
    # falls behind starves the callers of audio: not the server's loss).
    elapsed = loop.time() - started
    print(f"kept_up {t / RATE / elapsed if elapsed else 0.0:.3f}", flush=True)
    for room in joined:
        await room.disconnect()


if __name__ == "__main__":
    url, key, secret, freq, *names = sys.argv[1:]
    asyncio.run(main(url, key, secret, float(freq), names))
