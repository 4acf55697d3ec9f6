"""The agent side of ``bench sip --media``, cheap enough to share 2 cores
with the server: one LiveKit participant per call's room, on aiortc,
publishing pre-encoded Opus and hearing the caller without decoding it
during the run.

The rtc SDK (``sip_agents``) cost about 5% of a core per participant here
(libwebrtc encoding each track's tone, decoding the caller's audio into a
synthetic playout device, its threads), more than the server spent on the
call: at 20 calls the load process, not the server, ran out of CPU.  What
the server does for a participant does not depend on who sends it the
packets: the same SRTP, the same Opus payloads every 20 ms, the same
subscription to the caller's track.  So this process:

- speaks LiveKit's v0 signalling (``/rtc``: AddTrack, the publisher
  connection's offer, the subscriber connection's offers answered, pings);
- sends one second of a 660 Hz tone encoded once with libopus (50 packets
  of 20 ms, whole periods, looped), from one 20 ms clock for all
  participants, as ``av.Packet``s that aiortc's sender packs without
  encoding;
- taps each subscribed track where aiortc's jitter buffer would take its
  packets (as the server does), recording arrival time, sequence number
  and payload; nothing is decoded until the run is over;
- runs with the cyclic GC frozen and off once everyone is connected.

``python -m edgedispatch.cli.bench.sip_lean_agents URL KEY SECRET FREQ ROOM...``
prints "ready" once every participant publishes, then reads one line from
stdin: ``window T0 T1`` (``time.monotonic()`` of the bench process, the
same clock) and runs until stdin closes.  It then prints one JSON line:
``kept_up`` (the share of real time its clock sent), how late its
clock's ticks ran (p99, max), and what the agents
heard of the callers' 440 Hz in the window: 20 ms frames expected,
received, and received but not carrying the tone (decoded afterwards).
"""

from __future__ import annotations

import asyncio
import fractions
import gc
import json
import sys
import time
from collections import deque
from typing import Any
from urllib.parse import urlencode

import aioice.ice
import av
import numpy as np
import websockets
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCSessionDescription,
)
from av.packet import Packet
from livekit.protocol import models, rtc

from edgedispatch.cli.bench.common import agent_join_token

RATE = 48000
FRAME = 960  #: 20 ms at 48 kHz
AMPLITUDE = 8000
TIME_BASE = fractions.Fraction(1, RATE)
#: aiortc's receiver's jitter buffer, replaced by the tap (as ``net.media`` does).
JITTER_BUFFER = "_RTCRtpReceiver__jitter_buffer"
CALLER_TONE = 440.0


def _loopback_only(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    return ["127.0.0.1"]


def encode_tone(freq: float) -> list[bytes]:
    """One second of ``freq`` (whole periods for 660 Hz), 50 Opus packets."""
    n = np.arange(RATE)
    pcm = (AMPLITUDE * np.sin(2 * np.pi * freq * n / RATE)).astype(np.int16)
    # Twice round, keeping the second: the encoder has settled by then.
    pcm = np.concatenate([pcm, pcm])
    encoder: Any = av.CodecContext.create("libopus", "w")
    encoder.sample_rate = RATE
    encoder.layout = "mono"
    encoder.format = "s16"
    encoder.bit_rate = 32000
    encoder.time_base = TIME_BASE
    packets: list[bytes] = []
    for i in range(0, len(pcm), FRAME):
        frame = av.AudioFrame.from_ndarray(pcm[None, i : i + FRAME], format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = i
        packets += [bytes(p) for p in encoder.encode(frame)]
    return packets[-50:]


class ToneTrack(MediaStreamTrack):
    """A published track whose id is its AddTrack cid (the server finds the
    track by it), fed encoded packets by the shared clock."""

    kind = "audio"

    def __init__(self, cid: str) -> None:
        super().__init__()
        self._cid = cid
        self._queue: deque[Packet[Any]] = deque(maxlen=3)
        self._waiter: asyncio.Future[None] | None = None

    @property
    def id(self) -> str:
        return self._cid

    def push(self, payload: bytes, pts: int) -> None:
        packet = av.Packet(payload)
        packet.pts = pts
        packet.time_base = TIME_BASE
        self._queue.append(packet)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def recv(self) -> Packet[Any]:
        while not self._queue:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return self._queue.popleft()


class Ear:
    """A subscribed track's packets, as they arrive (``add`` is the jitter
    buffer's: no PLI, nothing to decode)."""

    def __init__(self) -> None:
        self.arrivals: list[tuple[float, int, bytes]] = []

    def add(self, packet: Any) -> tuple[bool, None]:
        self.arrivals.append((time.monotonic(), packet.sequence_number, packet.payload))
        return False, None

    def heard(self, start: float, end: float) -> dict[str, int]:
        """Frames in the window: expected, received, and received without
        the caller's tone (decoded in order, from the first packet)."""
        decoder: Any = av.CodecContext.create("libopus", "r")
        decoder.sample_rate = RATE
        decoder.layout = "mono"
        phase = 2 * np.pi * CALLER_TONE * np.arange(FRAME) / RATE
        basis = np.stack([np.cos(phase), np.sin(phase)], axis=1)
        received = off_tone = 0
        for at, _, payload in self.arrivals:
            try:
                frames = decoder.decode(av.Packet(payload))
            except av.error.FFmpegError:
                frames = []
            if not start <= at <= end:
                continue
            received += 1
            pcm = np.concatenate([f.to_ndarray().reshape(-1) for f in frames]) if frames else None
            if pcm is None or len(pcm) < FRAME:
                off_tone += 1
                continue
            amp = np.hypot(*(pcm[:FRAME].astype(np.float64) @ basis)) * (2 / FRAME)
            # The caller's tone is 8000 peak in G.711; 30% of it at least.
            off_tone += bool(amp < 0.3 * 8000)
        times = [at for at, _, _ in self.arrivals if start <= at <= end]
        return {
            # A frame every 20 ms from the first packet in the window to the
            # last (not from its edges: a packet just outside is not lost).
            "expected": round((times[-1] - times[0]) / 0.020) + 1 if times else 1,
            "received": received,
            "off_tone": off_tone,
        }


class Agent:
    """One participant: its signal connection and two peer connections."""

    def __init__(self, url: str, token: str, cid: str) -> None:
        self.url = url
        self.token = token
        self.track = ToneTrack(cid)
        self.ear = Ear()
        self.ws: Any = None
        self.publisher = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.subscriber = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.subscriber.on("track", self._on_track)
        self._answered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._tasks: list[asyncio.Task[None]] = []

    async def join(self) -> None:
        query = urlencode(
            {"access_token": self.token, "auto_subscribe": "1", "protocol": "15", "sdk": "python"}
        )
        self.ws = await websockets.connect(f"{self.url}/rtc?{query}", max_size=None)
        join = rtc.SignalResponse.FromString(await self.ws.recv())
        interval = join.join.ping_interval or 5
        self._tasks.append(asyncio.ensure_future(self._read()))
        self._tasks.append(asyncio.ensure_future(self._ping(interval)))
        await self._send(
            rtc.SignalRequest(
                add_track=rtc.AddTrackRequest(
                    cid=self.track.id,
                    name="voice",
                    type=models.TrackType.AUDIO,
                    source=models.TrackSource.MICROPHONE,
                )
            )
        )
        self.publisher.addTransceiver(self.track, direction="sendonly")
        await self.publisher.setLocalDescription(await self.publisher.createOffer())
        offer = rtc.SessionDescription(type="offer", sdp=self.publisher.localDescription.sdp, id=1)
        await self._send(rtc.SignalRequest(offer=offer))
        await asyncio.wait_for(self._answered, 30)

    async def _send(self, req: rtc.SignalRequest) -> None:
        await self.ws.send(req.SerializeToString())

    async def _ping(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            await self._send(rtc.SignalRequest(ping=int(time.time() * 1000)))

    async def _read(self) -> None:
        async for data in self.ws:
            msg = rtc.SignalResponse.FromString(data)
            which = msg.WhichOneof("message")
            if which == "answer":
                await self.publisher.setRemoteDescription(
                    RTCSessionDescription(sdp=msg.answer.sdp, type="answer")
                )
                if not self._answered.done():
                    self._answered.set_result(None)
            elif which == "offer":
                sub = self.subscriber
                offered = RTCSessionDescription(sdp=msg.offer.sdp, type="offer")
                await sub.setRemoteDescription(offered)
                await sub.setLocalDescription(await sub.createAnswer())
                answer = rtc.SessionDescription(
                    type="answer", sdp=sub.localDescription.sdp, id=msg.offer.id
                )
                await self._send(rtc.SignalRequest(answer=answer))

    def _on_track(self, track: MediaStreamTrack) -> None:
        for transceiver in self.subscriber.getTransceivers():
            if transceiver.receiver.track is track:
                assert isinstance(transceiver.receiver, RTCRtpReceiver)
                setattr(transceiver.receiver, JITTER_BUFFER, self.ear)

    async def leave(self) -> None:
        for task in self._tasks:
            task.cancel()
        try:
            await self._send(rtc.SignalRequest(leave=rtc.LeaveRequest()))
            await self.ws.close()
        except Exception:  # noqa: BLE001 - the server may have gone first
            pass
        await self.publisher.close()
        await self.subscriber.close()


async def main(url: str, key: str, secret: str, freq: float, rooms: list[str]) -> None:
    aioice.ice.get_host_addresses = _loopback_only
    tone = encode_tone(freq)
    agents: list[Agent] = []
    for i, name in enumerate(rooms):
        token = agent_join_token(key, secret, i, name)
        agent = Agent(url, token, f"TR_tone{i}")
        await agent.join()
        agents.append(agent)
    loop = asyncio.get_running_loop()
    ticks = 0
    stopped = asyncio.Event()
    late: list[float] = []  # how late each tick of the clock ran (s)

    async def clock() -> None:
        nonlocal ticks
        next_at = loop.time()
        while not stopped.is_set():
            late.append(loop.time() - next_at)
            payload = tone[ticks % len(tone)]
            pts = ticks * FRAME
            for agent in agents:
                agent.track.push(payload, pts)
            ticks += 1
            next_at += FRAME / RATE
            await asyncio.sleep(max(0.0, next_at - loop.time()))

    # Everything made so far lives to the end: no collection walks it, and
    # none pauses the clock while the calls run.
    gc.collect()
    gc.freeze()
    gc.disable()
    started = loop.time()
    sending = asyncio.ensure_future(clock())
    print("ready", flush=True)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    window = (0.0, 0.0)
    while line := await reader.readline():
        words = line.split()
        if words[:1] == [b"window"]:
            window = (float(words[1]), float(words[2]))
    stopped.set()
    elapsed = loop.time() - started
    await sending
    gc.enable()
    heard = [a.ear.heard(*window) for a in agents]
    print(
        json.dumps(
            {
                "kept_up": round(ticks * FRAME / RATE / elapsed, 3) if elapsed else 0.0,
                "expected": sum(h["expected"] for h in heard),
                "received": sum(min(h["received"], h["expected"]) for h in heard),
                "off_tone": sum(h["off_tone"] for h in heard),
                "silent_agents": sum(1 for h in heard if h["received"] == 0),
                # The agents' own send jitter (a real far end's is not ours).
                "clock_late_p99_ms": round(1000 * float(np.percentile(late, 99)), 1),
                "clock_late_max_ms": round(1000 * max(late), 1),
            }
        ),
        flush=True,
    )
    for agent in agents:
        await agent.leave()


if __name__ == "__main__":
    url, key, secret, freq, *names = sys.argv[1:]
    asyncio.run(main(url, key, secret, float(freq), names))
