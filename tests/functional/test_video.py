"""Video with the unmodified ``livekit`` rtc SDK: a camera track (VP8, one
layer) is forwarded frame by frame, never decoded by the server, and a
subscriber that starts late gets a keyframe from the publisher at once
(its request is relayed; WebRTC encoders send keyframes only when asked)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np
import pytest
from livekit import rtc

from .conftest import ServerThread
from .test_rooms import MODES, joined, run, token

pytestmark = [pytest.mark.slow, pytest.mark.media]

WIDTH, HEIGHT, FPS = 320, 240, 30
COLOUR = (200, 40, 90)  #: what the camera shows, RGB


async def publish_camera(room: rtc.Room, simulcast: bool) -> asyncio.Task[None]:
    """A VP8 camera track of one colour, with a moving white bar (so that
    frames differ and the encoder sends delta frames), until cancelled.
    With ``simulcast`` (the SDK's default) the server takes one layer."""
    source = rtc.VideoSource(WIDTH, HEIGHT)
    track = rtc.LocalVideoTrack.create_video_track("cam", source)
    options = rtc.TrackPublishOptions(
        source=rtc.TrackSource.SOURCE_CAMERA, simulcast=simulcast, video_codec=rtc.VideoCodec.VP8
    )
    await room.local_participant.publish_track(track, options)
    image = np.zeros((HEIGHT, WIDTH, 4), dtype=np.uint8)
    image[:, :] = (*COLOUR, 255)

    async def play() -> None:
        n = 0
        while True:
            frame = image.copy()
            x = n * 4 % WIDTH
            frame[:, x : x + 8] = 255
            source.capture_frame(
                rtc.VideoFrame(WIDTH, HEIGHT, rtc.VideoBufferType.RGBA, frame.tobytes())
            )
            n += 1
            await asyncio.sleep(1 / FPS)

    return asyncio.create_task(play())


async def frames_sent(room: rtc.Room) -> int:
    """Frames the camera's encoder has sent so far (its WebRTC stats)."""
    stats = await room.get_rtc_stats()
    return sum(
        s.outbound_rtp.outbound.frames_sent
        for s in stats.publisher_stats
        if s.HasField("outbound_rtp")
    )


async def watch(track: rtc.Track, seconds: float) -> tuple[int, tuple[float, ...], int]:
    """(frames, mean colour of the left quarter, frame width) over ``seconds``."""
    stream = rtc.VideoStream(track, format=rtc.VideoBufferType.RGBA)
    frames, colour, width = 0, np.zeros(3), 0
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    try:
        while loop.time() < end:
            try:
                event = await asyncio.wait_for(anext(aiter(stream)), end - loop.time())
            except TimeoutError:
                break
            f = event.frame
            pixels = np.frombuffer(f.data, dtype=np.uint8).reshape(f.height, f.width, 4)
            colour += pixels[:, : f.width // 4, :3].reshape(-1, 3).mean(axis=0)
            frames += 1
            width = f.width
    finally:
        await stream.aclose()
    return frames, tuple(colour / max(frames, 1)), width


@pytest.mark.parametrize(("mode", "simulcast"), [("v1", False), ("v0", False), ("v1", True)])
def test_a_camera_is_forwarded_and_a_late_viewer_sees_it_at_once(
    start_server: Callable[..., ServerThread], mode: str, simulcast: bool
) -> None:
    srv = start_server()

    async def main() -> None:
        single = MODES[mode]
        viewer, _ = await joined(srv, token("viewer"), single)
        camera, _ = await joined(srv, token("camera"), single)
        seen: asyncio.Queue[rtc.Track] = asyncio.Queue()
        viewer.on("track_subscribed", lambda t, pub, who: seen.put_nowait(t))
        player = await publish_camera(camera, simulcast)
        try:
            track = await asyncio.wait_for(seen.get(), 10)
            assert track.kind == rtc.TrackKind.KIND_VIDEO
            await asyncio.sleep(1.0)  # the first keyframe, and the decoder's start
            sent = await frames_sent(camera)
            frames, colour, width = await watch(track, 3.0)
            sent = await frames_sent(camera) - sent
            # Every frame sent meanwhile is shown (the camera's own pace
            # depends on this busy host's CPU: it is not what is tested).
            assert frames >= sent - 3 and frames >= FPS, (frames, sent)
            assert width == WIDTH
            assert all(abs(c - e) < 20 for c, e in zip(colour, COLOUR, strict=True)), colour
            # Someone who joins now gets a keyframe within a moment, though
            # the camera has sent none since its first.
            late, _ = await joined(srv, token("late"), single)
            late_seen: asyncio.Queue[rtc.Track] = asyncio.Queue()
            late.on("track_subscribed", lambda t, pub, who: late_seen.put_nowait(t))
            late_track = await asyncio.wait_for(late_seen.get(), 10)
            sent = await frames_sent(camera)
            frames, colour, _ = await watch(late_track, 2.0)
            sent = await frames_sent(camera) - sent
            # Without the request relayed, nothing: the decoder waits for a key.
            assert frames >= sent / 2 and frames > 0, (frames, sent)
            assert all(abs(c - e) < 20 for c, e in zip(colour, COLOUR, strict=True)), colour
            await late.disconnect()
        finally:
            player.cancel()
            await camera.disconnect()
            await viewer.disconnect()

    run(main)
