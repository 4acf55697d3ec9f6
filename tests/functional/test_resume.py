"""A client whose signal connection drops (a network change, say) tries to
resume its session; aiortc cannot restart ICE, so the server answers with
leave(RECONNECT) and the unmodified rtc SDK rejoins in full, by itself:
the others see it come back, and data flows again, in both modes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest
from livekit import rtc

from .conftest import ServerThread
from .test_rooms import MODES, joined, record_data, run, token, until

pytestmark = [pytest.mark.slow, pytest.mark.media]


@pytest.mark.parametrize("mode", MODES)
def test_a_dropped_signal_connection_ends_in_a_clean_rejoin(
    start_server: Callable[..., ServerThread], mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "edgedispatch")
    srv = start_server()

    def drop_signal(identity: str) -> str:
        """Cut ``identity``'s WebSocket without a close frame; its sid."""
        hub = srv.server.rooms
        assert hub is not None
        (room,) = hub.rooms.values()
        session = room.sessions[identity]
        session._sink._transport.abort()  # type: ignore[attr-defined]
        return session.sid

    async def main() -> None:
        mover, _ = await joined(srv, token("mover"), MODES[mode])
        stayer, _ = await joined(srv, token("stayer"), MODES[mode])
        got = record_data(stayer)
        states: list[str] = []
        for event in ("reconnecting", "reconnected", "disconnected"):
            mover.on(event, lambda *_, e=event: states.append(e))
        old_sid = srv.call(lambda: drop_signal("mover"))
        await until(lambda: "reconnected" in states, "the SDK's rejoin", 30)
        assert "disconnected" not in states
        # The SDK asked to resume first (and was told to rejoin).
        assert "a resume was answered with leave(RECONNECT)" in caplog.messages
        hub = srv.server.rooms
        assert hub is not None
        new_sid = srv.call(lambda: next(iter(hub.rooms.values())).sessions["mover"].sid)
        assert new_sid != old_sid  # a new session, not a resumed one
        assert "mover" in stayer.remote_participants
        await until(
            lambda: mover.connection_state == rtc.ConnectionState.CONN_CONNECTED, "connected"
        )
        for _ in range(50):  # the data channels reopen a moment after
            await mover.local_participant.publish_data(b"back", topic="t")
            if got:
                break
            await asyncio.sleep(0.1)
        assert ("mover", b"back", "t") in got
        await mover.disconnect()
        await stayer.disconnect()

    run(main)
