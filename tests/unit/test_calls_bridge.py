"""A bridged call's life in the room, sans-IO: the user agent and the
media worker are in-memory stand-ins (their real selves are driven by
sipp in tests/functional/test_sip_calls.py); the room and the domain
are the real ones, on a fake clock."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from livekit.protocol import models, rtc
from livekit.protocol import sip as pb

from edgedispatch._testbase.links import RecordingSink
from edgedispatch.calls.bridge import BridgedCall, CallEvents, CallServices, listing
from edgedispatch.config import DispatchConfig, RoomConfig, RtcConfig
from edgedispatch.dispatch.domain import Domain
from edgedispatch.rtc.room import RoomHub
from edgedispatch.rtc.session import SignalSession
from edgedispatch.sip import sdp
from edgedispatch.sip.header_maps import CallHeaders
from edgedispatch.sip.outcome import Admit, evaluate
from edgedispatch.sip.routing import Call
from edgedispatch.wire.signal import Grant, JoinParams

OFFER = (
    b"v=0\r\no=- 1 1 IN IP4 192.0.2.9\r\ns=-\r\nc=IN IP4 192.0.2.9\r\nt=0 0\r\n"
    b"m=audio 4000 RTP/AVP 8 0 101\r\na=rtpmap:101 telephone-event/8000\r\n"
)


class UserAgent:
    def __init__(self) -> None:
        self.answers: list[bytes] = []
        self.hung_up: list[str] = []
        #: The custom headers of each answer and BYE.
        self.headers: list[list[tuple[str, str]]] = []

    def answer(
        self, call_id: str, sdp: bytes, now: float, headers: Sequence[tuple[str, str]]
    ) -> None:
        self.answers.append(sdp)
        self.headers.append(list(headers))

    def hang_up(self, call_id: str, now: float, headers: Sequence[tuple[str, str]]) -> None:
        self.hung_up.append(call_id)
        self.headers.append(list(headers))


class WorkerMedia:
    """The call's media in its worker, as the server sees it."""

    def __init__(self, room: tuple[str, str], spec: dict[str, Any], events: CallEvents) -> None:
        self.room, self.spec, self.events = room, spec, events
        self.session: SignalSession | None = None
        self.closed = False
        self.tracks: list[str] = []
        self.digits: list[str] = []
        self.confirmed = False

    def attach(self, session: SignalSession) -> Any:
        self.session = session
        return self

    def expect_track(self, cid: str, track_sid: str, kind: str) -> None:
        self.tracks.append(kind)

    def subscribe(self, track_sid: str, publisher: object, stream_id: str) -> None:
        pass

    def unsubscribe(self, track_sid: str) -> None:
        pass

    def send_data(self, packet: bytes, kind: int) -> None:
        pass

    def ring_caller(self, on: bool) -> None:
        self.ringing = on

    def confirm(self) -> None:
        self.confirmed = True

    def close(self) -> None:
        self.closed = True


class World:
    def __init__(self) -> None:
        self.now = 10.0
        self.domain = Domain(DispatchConfig(), RoomConfig())
        self.rooms = RoomHub(self.domain, RtcConfig(), None)
        self.media: list[WorkerMedia] = []
        self.flushed = 0
        self.ua = UserAgent()

        def open_media(room: tuple[str, str], spec: dict[str, Any], events: CallEvents) -> Any:
            self.media.append(WorkerMedia(room, spec, events))
            return self.media[-1]

        self.services = CallServices(
            rooms=self.rooms, open_media=open_media, clock=lambda: self.now,
            flush=self._flush, media_address="198.51.100.1", rtp_ports=(20000, 20009),
            media_timeout=15.0, max_duration=60.0,
        )  # fmt: skip

    def _flush(self, now: float) -> None:
        self.flushed += 1

    def call(self, admit: Admit | None = None, **kw: Any) -> BridgedCall:
        offer = sdp.parse_offer(OFFER)
        room = admit.room if admit else "pin-room"
        return BridgedCall(self.services, self.ua, "SCL_1", "", offer, room, admit=admit, **kw)

    def watcher(self, room: str) -> RecordingSink:
        sink = RecordingSink()
        grant = Grant(room=room, identity="watcher")
        self.rooms.join(sink, "", grant, JoinParams(single_pc=True), self.now)
        return sink


def admit(room: str = "support") -> Admit:
    rule = pb.SIPDispatchRuleInfo(
        sip_dispatch_rule_id="SDR_1",
        rule=pb.SIPDispatchRule(dispatch_rule_direct=pb.SIPDispatchRuleDirect(room_name=room)),
        attributes={"team": "blue"},
    )
    outcome = evaluate(None, rule, Call("+15550199", "+15550100"), call_id="SCL_1", suffix="x")
    assert isinstance(outcome, Admit)
    return outcome


def attributes_seen(sink: RecordingSink) -> list[str]:
    """sip.callStatus of each update of the phone the watcher was sent."""
    seen = []
    for data in sink.sent:
        msg = rtc.SignalResponse.FromString(data)
        for p in msg.update.participants if msg.HasField("update") else []:
            if p.identity == "sip_+15550199":
                seen.append(p.attributes["sip.callStatus"])
    return seen


def test_a_call_rings_in_the_room_is_answered_when_its_port_opens_and_leaves_at_its_end() -> None:
    world = World()
    watcher = world.watcher("support")
    call = world.call(admit())
    (media,) = world.media
    assert media.room == ("", "support")
    assert media.spec["codec"] == "PCMA" and media.spec["pt"] == 8  # the caller's first
    assert media.spec["dtmf_pt"] == 101 and media.spec["remote"] == ["192.0.2.9", 4000]
    call.join(admit(), world.now)
    assert media.tracks == ["audio"]  # the caller's voice, published
    assert world.ua.answers == []  # not before the RTP port is open
    media.events.on_rtp_ready(20004, world.now)
    (answer,) = world.ua.answers
    assert b"m=audio 20004 RTP/AVP 8 101" in answer and b"c=IN IP4 198.51.100.1" in answer
    assert not media.confirmed  # no audio to the caller before its ACK
    call.on_confirmed(world.now)
    assert media.confirmed
    assert listing(world.services, None)[0]["state"] == "active"
    assert listing(world.services, None)[0]["media"] == "PCMA"
    call.end(world.now)
    seen = attributes_seen(watcher)  # joined, published its track, ACKed, hung up, left
    assert [s for i, s in enumerate(seen) if i == 0 or seen[i - 1] != s] == [
        "ringing", "active", "hangup",
    ]  # fmt: skip
    assert media.closed and world.services.calls == {}
    room = world.domain.rooms.find("", "support")
    assert room is not None and set(room.participants) == {"watcher"}


def test_a_trunks_max_call_duration_limits_its_call_within_the_servers() -> None:
    """The call's own limit (its trunk's or its request's
    ``max_call_duration``) goes to the media worker, which hangs up when it
    passes; never beyond the server's own (60 s here)."""
    world = World()
    world.call(admit())
    world.call(admit(), max_duration=5.0)
    world.call(admit(), max_duration=600.0)
    assert [m.spec["max_duration"] for m in world.media] == [60.0, 5.0, 60.0]


def test_the_room_closing_hangs_the_call_up() -> None:
    world = World()
    call = world.call(admit())
    call.join(admit(), world.now)
    world.media[0].events.on_rtp_ready(20001, world.now)
    world.domain.delete_room("", "support", world.now)
    world.domain.step(world.now)
    assert world.ua.hung_up == ["SCL_1"] and call.ended and world.media[0].closed


def test_a_pin_is_collected_up_to_the_hash_and_a_wrong_one_hangs_up() -> None:
    world = World()
    tried: list[str] = []

    def check(bridged: BridgedCall, pin: str, now: float) -> Admit | None:
        tried.append(pin)
        return admit("pin-room") if pin == "4321" else None

    wrong = world.call(on_pin=check)
    wrong.on_digit("1", world.now)  # before the answer: not a PIN yet
    world.media[0].events.on_rtp_ready(20002, world.now)
    for digit in "12#":
        wrong.on_digit(digit, world.now)
    assert tried == ["12"] and world.ua.hung_up == ["SCL_1"] and wrong.ended

    world.ua.hung_up.clear()
    right = world.call(on_pin=check)
    world.media[1].events.on_rtp_ready(20003, world.now)
    for digit in "4321#":
        right.on_digit(digit, world.now)
    assert tried[-1] == "4321" and world.ua.hung_up == []
    assert right.session is not None and right.session.rec.kind == models.ParticipantInfo.SIP


def test_the_trunks_headers_and_mapped_attributes_go_with_the_answer_and_the_bye() -> None:
    """The 200 carries the trunk's fixed headers and its
    ``attributes_to_headers`` of the participant's attributes; the BYE the
    mapped attributes alone, as they are when it goes (an agent changed
    one meanwhile).  A value with a CR LF is never sent: it would forge
    a header."""
    world = World()
    headers = CallHeaders(
        fixed={"X-Site": "paris"},
        to_headers={"team": "X-Team", "case": "X-Case", "evil": "X-Evil"},
    )
    call = world.call(admit(), headers=headers)
    call.join(admit(), world.now)
    world.media[0].events.on_rtp_ready(20001, world.now)
    assert world.ua.headers == [[("X-Site", "paris"), ("X-Team", "blue")]]
    assert call.session is not None
    change = {"case": "4711", "evil": "x\r\nContact: <sip:attacker@192.0.2.66>"}
    assert call.session.room.update_participant(call.session, attributes=change) == ""
    call.hang_up("done", world.now)
    assert world.ua.headers[1] == [("X-Team", "blue"), ("X-Case", "4711")]
