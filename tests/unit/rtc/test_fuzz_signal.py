"""Fuzzed signal frames from one participant, sans-IO on a fake clock:
random bytes and SignalRequests with odd fields (aimed at the room's
tracks and people).  The session handles each or closes with a client's
close code and a reason; it never raises, and the others in the room stay
in it."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from livekit.protocol import models, rtc

from edgedispatch.wire.http import CloseCode
from tests.fuzzing import aim, fuzz_settings, messages, mutated
from tests.unit.rtc.test_rooms import World

CLIENT_CLOSES = {CloseCode.INVALID_PAYLOAD, CloseCode.POLICY_VIOLATION, CloseCode.NORMAL}


@st.composite
def frames(draw: st.DrawFn, targets: dict[str, str]) -> bytes:
    kind = draw(st.sampled_from(["random", "message", "mutated"]))
    if kind == "random":
        return draw(st.binary(max_size=100))
    msg = draw(messages(rtc.SignalRequest, list(targets.values())))
    if draw(st.booleans()):
        aim(msg, targets)
    data = msg.SerializeToString()
    return draw(mutated(data)) if kind == "mutated" else data


@given(st.data())
@fuzz_settings(60)
def test_fuzzed_signal_frames_never_raise_and_spare_the_others(data: st.DataObject) -> None:
    world = World()
    alice, bob = world.join("alice", 0.0), world.join("bob", 0.0)
    add = rtc.AddTrackRequest(cid="mic", name="mic", type=models.AUDIO)
    bob.request(0.5, add_track=add)
    (track,) = bob.of("track_published")
    targets = {
        "sid": track.track.sid,
        "track_sids": track.track.sid,
        "participant_sid": bob.session.info.sid,
        "identity": "bob",
        "destination_identities": "bob",
        "cid": "mic",
    }
    now = 1.0
    for _ in range(data.draw(st.integers(1, 8), label="frames")):
        now += 0.1
        alice.session.on_message(data.draw(frames(targets), label="frame"), now)
        if alice.sink.closed is not None:
            code, reason = alice.sink.closed
            assert code in CLIENT_CLOSES and reason, alice.sink.closed
            break
    # Bob is still in the room, with his track, and hears of the others.
    live = world.hub.find("", "r1")
    assert live is not None and live.sessions.get("bob") is bob.session
    assert [t.sid for t in bob.session.info.tracks] == [track.track.sid]
    assert bob.sink.closed is None
