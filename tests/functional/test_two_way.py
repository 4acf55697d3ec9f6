"""Two participants who both publish hear each other, in both modes, when
the second publishes only after it already receives the first: its SDK
then sends its microphone on the receive-only section it added for the
first's track (addTrack reuses it), and the server must take it there."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from livekit import rtc

from .conftest import ServerThread
from .test_rooms import MODES, joined, run, token
from .tones import listen, publish_tone

pytestmark = [pytest.mark.slow, pytest.mark.media]


@pytest.mark.parametrize("at_once", [False, True])
@pytest.mark.parametrize("mode", MODES)
def test_a_late_publisher_is_heard_on_the_section_it_reused(
    start_server: Callable[..., ServerThread], mode: str, at_once: bool
) -> None:
    """``at_once``: the second publishes as soon as it has joined, while the
    server is asking it for a section to receive the first's track on."""
    srv = start_server()

    async def main() -> tuple[float, float]:
        first, _ = await joined(srv, token("first"), MODES[mode])
        first_heard: asyncio.Queue[rtc.Track] = asyncio.Queue()
        first.on("track_subscribed", lambda t, pub, who: first_heard.put_nowait(t))
        players = [await publish_tone(first, 440.0)]
        second, _ = await joined(srv, token("second"), MODES[mode])
        second_heard: asyncio.Queue[rtc.Track] = asyncio.Queue()
        second.on("track_subscribed", lambda t, pub, who: second_heard.put_nowait(t))
        try:
            if at_once:
                players.append(await publish_tone(second, 660.0))
            from_first = await asyncio.wait_for(second_heard.get(), 10)
            if not at_once:  # only now (its receive section exists)
                players.append(await publish_tone(second, 660.0))
            from_second = await asyncio.wait_for(first_heard.get(), 10)
            (_, pitch_b, _), (_, pitch_a, _) = await asyncio.gather(
                listen(from_second, seconds=1.0), listen(from_first, seconds=1.0)
            )
            return pitch_a, pitch_b
        finally:
            for p in players:
                p.cancel()
            await second.disconnect()
            await first.disconnect()

    pitch_a, pitch_b = run(main)
    assert abs(pitch_a - 440.0) < 5 and abs(pitch_b - 660.0) < 5, (pitch_a, pitch_b)
