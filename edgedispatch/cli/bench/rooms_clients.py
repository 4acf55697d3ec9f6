"""One load process of ``bench rooms``: k two-party audio rooms of rtc SDK
clients, each side publishing a tone and hearing the other's.

``python -m edgedispatch.cli.bench.rooms_clients URL KEY SECRET FIRST COUNT
SECONDS [NICE]`` joins rooms FIRST..FIRST+COUNT-1, prints ``measuring`` once
every side hears the other (after a warm-up), measures for SECONDS, prints
the result as JSON, and leaves.  With SECONDS 0 it prints ``ready`` and
holds the rooms until its stdin closes (dispatch measured beside them).
NICE (default 0) lowers the process's scheduling priority first, threads of
the SDK included.  Clients run apart from the process that drives dispatch,
so that its GIL does not slow the driver.

What is measured, per receiving side (one per participant):

- the receive statistics of its remote track (WebRTC ``inbound-rtp``, read
  with ``Track.get_stats()`` every ``STATS_PERIOD``): samples played out and
  how many of them the jitter buffer concealed (packets lost or late: what
  the listener hears as a glitch), packets received and lost, and the RFC
  3550 interarrival jitter the receiver computes from RTP timestamps;
- on the sides of every ``HEAR_EVERY``-th room, the decoded audio itself:
  each 20 ms frame must carry the other side's tone (440 or 660 Hz) at 30%
  of its amplitude or more.

Cost per room is what limits a 2-core machine, so: all sides publish one of
two shared sources (the same 440 Hz or 660 Hz tone, one capture call per
100 ms for all of them; each track still has its own Opus encoder), and
only the sampled rooms bring decoded audio into Python (each such stream
costs an FFI event per chunk, which the SDK hands to every stream of the
process).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

import numpy as np
from livekit import api, rtc

RATE = 48000
FRAME_MS = 20  #: the unit of loss: one Opus packet's worth
FRAME = RATE * FRAME_MS // 1000
CAPTURE_MS = 100  #: each capture call feeds this much tone to every track
HEAR_MS = 500  #: decoded audio reaches Python in chunks this long
HEAR_EVERY = 5  #: rooms 0, 5, 10, ... are heard in Python as well
STATS_PERIOD = 1.0
AMPLITUDE = 8000
TONES = {"a": 440.0, "b": 660.0}
WARMUP = 3.0


def token(identity: str, room: str, key: str, secret: str) -> str:
    grants = api.VideoGrants(room_join=True, room=room)
    return api.AccessToken(key, secret).with_identity(identity).with_grants(grants).to_jwt()


async def play(source: rtc.AudioSource, freq: float) -> None:
    """The tone, forever (every track on ``source`` sends it)."""
    n = RATE * CAPTURE_MS // 1000
    wave = (AMPLITUDE * np.sin(2 * np.pi * freq * np.arange(RATE) / RATE)).astype(np.int16)
    wave = np.concatenate([wave, wave[:n]])  # a second of tone holds whole periods
    t = 0
    while True:
        await source.capture_frame(rtc.AudioFrame(wave[t : t + n].tobytes(), RATE, 1, n))
        t = (t + n) % RATE


class Ear:
    """One side's decoded audio: 20 ms frames heard in the window, and how
    many did not carry the other side's tone."""

    def __init__(self, freq: float) -> None:
        phase = 2 * np.pi * freq * np.arange(FRAME) / RATE
        self.basis = np.stack([np.cos(phase), np.sin(phase)], axis=1).astype(np.float32)
        self.frames = self.off_tone = 0
        self.first = self.last = 0.0  # arrival of the first/last chunk counted

    async def listen(self, track: rtc.Track, window: list[float]) -> None:
        stream = rtc.AudioStream(track, sample_rate=RATE, num_channels=1, frame_size_ms=HEAR_MS)
        async for event in stream:
            now = time.monotonic()
            if not window[0] <= now <= window[1]:
                continue
            samples = np.frombuffer(event.frame.data, dtype=np.int16).astype(np.float32)
            frames = samples[: len(samples) // FRAME * FRAME].reshape(-1, FRAME)
            # the tone's amplitude in each frame, whatever its phase
            amps = np.hypot(*(frames @ self.basis).T) * (2 / FRAME)
            if not self.first:
                self.first = now  # the first chunk marks where counting starts
            else:
                self.frames += len(amps)
                self.off_tone += int(np.count_nonzero(amps < 0.3 * AMPLITUDE))
            self.last = now

    def missing(self) -> float:
        """Frames that should have arrived between the first and last chunk
        but did not (negative: more arrived, a chunk's timing noise)."""
        return (self.last - self.first) * 1000 / FRAME_MS - self.frames if self.first else 0.0


def inbound(stats: list[Any]) -> Any:
    return next((s.inbound_rtp for s in stats if s.WhichOneof("stats") == "inbound_rtp"), None)


async def packets_sent(track: rtc.LocalAudioTrack) -> int:
    """What the publisher sent (where a listener heard nothing: whose fault)."""
    stats = await track.get_stats()
    return sum(s.outbound_rtp.sent.packets_sent for s in stats if s.HasField("outbound_rtp"))


class Receipts:
    """Snapshots of one side's remote track's inbound-rtp statistics."""

    def __init__(self, track: rtc.Track, side: str) -> None:
        self.track, self.side = track, side
        self.snaps: list[tuple[float, int, int, int, int]] = []
        self.jitter_ms: list[float] = []
        self.missed = 0  # sweeps before its first packet (no inbound-rtp yet)

    async def snap(self) -> None:
        s = inbound(await self.track.get_stats())
        if s is None:  # libwebrtc has none until a packet arrives
            self.missed += not self.snaps
            return
        i, r = s.inbound, s.received
        self.snaps.append(
            (s.rtc.timestamp / 1e6, i.total_samples_received, i.concealed_samples,
             r.packets_received, r.packets_lost)
        )  # fmt: skip
        if len(self.snaps) > 1:  # jitter as of each snapshot inside the window
            self.jitter_ms.append(r.jitter * 1000)

    def totals(self, seconds: float) -> dict[str, float]:
        if len(self.snaps) < 2:  # no packet (or one reading) in the window
            return {"streams": 1, "due_samples": seconds * RATE, "lost_samples": seconds * RATE}
        (t0, s0, c0, r0, l0), (t1, s1, c1, r1, l1) = self.snaps[0], self.snaps[-1]
        due = (t1 - t0) * RATE
        # playout that fell behind by more than a frame counts as concealed
        concealed = c1 - c0 + max(0.0, due - (s1 - s0) - FRAME)
        # packets neither received nor counted lost (the stream stopped):
        # more than two of them count whole, if concealment shows less
        unheard = max(0.0, (t1 - t0) * 1000 / FRAME_MS - (r1 - r0) - (l1 - l0) - 2) * FRAME
        late = min(self.missed * STATS_PERIOD, seconds) * RATE  # before its first packet
        return {
            "streams": 1,
            "due_samples": due + late,
            "lost_samples": max(concealed, unheard) + late,
            "concealed_samples": c1 - c0,
            "packets": (r1 - r0) + (l1 - l0),
            "packets_lost": l1 - l0,
        }


async def main(
    url: str, key: str, secret: str, first: int, count: int, seconds: float, nice: int = 0
) -> None:
    if nice:
        os.nice(nice)  # before the SDK starts its threads, so they inherit it
    sources = {side: rtc.AudioSource(RATE, 1) for side in TONES}
    players = [asyncio.create_task(play(sources[s], f)) for s, f in TONES.items()]
    rooms: list[rtc.Room] = []
    listeners: list[asyncio.Task[None]] = []
    receipts: list[Receipts] = []
    ears: list[Ear] = []
    published: dict[str, rtc.LocalAudioTrack] = {}
    window = [np.inf, np.inf]  # measuring from, until

    for r in range(first, first + count):
        for side in TONES:
            room = rtc.Room()
            ear = Ear(TONES["b" if side == "a" else "a"]) if r % HEAR_EVERY == 0 else None

            def subscribed(
                track: rtc.Track, _: Any, who: Any, ear: Ear | None = ear, me: str = f"{side}{r}"
            ) -> None:
                receipts.append(Receipts(track, f"{who.identity}>{me}"))
                if ear is not None:
                    ears.append(ear)
                    listeners.append(asyncio.ensure_future(ear.listen(track, window)))

            room.on("track_subscribed", subscribed)
            await room.connect(url, token(f"{side}{r}", f"bench-audio-{r}", key, secret))
            rooms.append(room)
            track = published[f"{side}{r}"] = rtc.LocalAudioTrack.create_audio_track(
                "tone", sources[side]
            )
            options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
            await room.local_participant.publish_track(track, options)
    deadline = time.monotonic() + 30
    while len(receipts) < len(rooms) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await asyncio.sleep(WARMUP)
    if seconds > 0:
        window[0] = time.monotonic()
        window[1] = window[0] + seconds
        print("measuring", flush=True)
        while True:
            for rec in receipts:
                await rec.snap()
            left = window[1] - time.monotonic()
            if left <= 0:
                break
            await asyncio.sleep(min(STATS_PERIOD, left))
        # a side whose track never arrived lost all it should have heard
        dead = len(rooms) - len(receipts)
        totals = {"streams": dead, "due_samples": dead * seconds * RATE}
        totals["lost_samples"] = totals["due_samples"]
        for rec in receipts:
            for name, value in rec.totals(seconds).items():
                totals[name] = totals.get(name, 0) + value
        result = {
            **totals,
            "dead": dead,
            "silent": [
                f"{rec.side} ({await packets_sent(published[rec.side.split('>')[0]])} sent)"
                for rec in receipts
                if len(rec.snaps) < 2
            ],
            "jitter_ms": [j for rec in receipts for j in rec.jitter_ms],
            "heard": len(ears),
            "heard_frames": sum(e.frames for e in ears),
            "off_tone_frames": sum(e.off_tone for e in ears),
            "missing_frames": sum(e.missing() for e in ears),
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
    url, key, secret, first, count, seconds, *nice = sys.argv[1:]
    asyncio.run(main(url, key, secret, int(first), int(count), float(seconds), *map(int, nice)))
