"""Media encryption (SRTP with SDES keys): one edgedispatch places a call
whose media must be encrypted to another that requires it (sipp in
Debian's build has no SRTP), and each room hears the other's tone through
the two media workers' SRTP sessions; a callee that requires SRTP refuses
a plain offer."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from livekit import api, rtc
from livekit.protocol import sip as pb

from .conftest import ServerThread
from .test_rooms import joined, run, token
from .test_sip_calls import NUMBER, ROOM, add_rule, debug_state, serve
from .test_sip_outbound import add_trunk
from .tones import listen, publish_tone

CALLER_ROOM = "caller-room"
REQUIRE = pb.SIP_MEDIA_ENCRYPT_REQUIRE
DISABLE = pb.SIP_MEDIA_ENCRYPT_DISABLE


async def first_track(room: rtc.Room) -> rtc.Track:
    got: asyncio.Queue[rtc.Track] = asyncio.Queue()
    room.on("track_subscribed", lambda t, pub, who: got.put_nowait(t))
    return await asyncio.wait_for(got.get(), 20)


@pytest.mark.media
def test_a_call_over_srtp_carries_each_rooms_tone_to_the_other(
    start_server: Callable[..., ServerThread],
) -> None:
    callee = serve(start_server)
    add_rule(callee, media_encryption=REQUIRE)  # its trunk takes SRTP calls only
    caller = serve(start_server)

    async def main() -> tuple[float, float, float, float, list[str]]:
        trunk_id = await add_trunk(
            caller, callee.server.sip_port, media=pb.SIPMediaConfig(encryption=REQUIRE)
        )
        here, _ = await joined(caller, token("agent-like", CALLER_ROOM), True)
        there, _ = await joined(callee, token("support", ROOM), True)
        players = [await publish_tone(here, 440.0), await publish_tone(there, 660.0)]
        try:
            heard_here = asyncio.ensure_future(first_track(here))
            heard_there = asyncio.ensure_future(first_track(there))
            async with api.LiveKitAPI(caller.url, "devkey", "secret") as lk:
                await lk.sip.create_sip_participant(
                    pb.CreateSIPParticipantRequest(
                        sip_trunk_id=trunk_id, sip_call_to=NUMBER, room_name=CALLER_ROOM,
                        wait_until_answered=True,
                    )
                )  # fmt: skip
                rms_there, pitch_there, _ = await listen(await heard_there, seconds=1.5)
                rms_here, pitch_here, _ = await listen(await heard_here, seconds=1.5)
                media = [
                    call["media"]
                    for srv in (caller, callee)
                    for call in (await asyncio.to_thread(debug_state, srv))["sip_calls"]
                ]
                await lk.room.delete_room(api.DeleteRoomRequest(room=CALLER_ROOM))
            return rms_there, pitch_there, rms_here, pitch_here, media
        finally:
            for player in players:
                player.cancel()
            await here.disconnect()
            await there.disconnect()

    rms_there, pitch_there, rms_here, pitch_here, media = run(main)
    assert media == ["PCMU over SRTP", "PCMU over SRTP"]  # as the status page shows
    assert abs(pitch_there - 440.0) < 5 and rms_there > 2000, (pitch_there, rms_there)
    assert abs(pitch_here - 660.0) < 5 and rms_here > 2000, (pitch_here, rms_here)


def test_a_callee_that_requires_srtp_refuses_a_plain_offer(
    start_server: Callable[..., ServerThread],
) -> None:
    callee = serve(start_server)
    add_rule(callee, media_encryption=REQUIRE)
    caller = serve(start_server)

    async def main() -> api.TwirpError:
        trunk_id = await add_trunk(
            caller, callee.server.sip_port, media=pb.SIPMediaConfig(encryption=DISABLE)
        )
        async with api.LiveKitAPI(caller.url, "devkey", "secret") as lk:
            with pytest.raises(api.TwirpError) as refused:
                await lk.sip.create_sip_participant(
                    pb.CreateSIPParticipantRequest(
                        sip_trunk_id=trunk_id, sip_call_to=NUMBER, room_name=CALLER_ROOM,
                        wait_until_answered=True,
                    )
                )  # fmt: skip
        return refused.value

    error = run(main)
    assert error.metadata.get("sip_status_code") == "488", error
    assert "RTP/SAVP" in error.message
