"""Live rooms and signal sessions on a fake clock, with in-memory peers:
no sockets, no aiortc.  ``now`` is a float the test moves."""

from __future__ import annotations

import base64
import gzip
from typing import Any

import pytest
from livekit.protocol import agent_dispatch, models, rtc
from livekit.protocol import room as room_pb

from edgedispatch._core.codes import FailReason, JobState
from edgedispatch._testbase.links import RecordingLink, RecordingSink
from edgedispatch.config import DispatchConfig, RoomConfig, RtcConfig
from edgedispatch.dispatch.domain import Domain
from edgedispatch.dispatch.specs import WorkerSpec
from edgedispatch.errors import Malformed, PermissionDenied, ResourceExhausted
from edgedispatch.rtc.room import RoomHub
from edgedispatch.rtc.session import SignalSession, State
from edgedispatch.wire import convert
from edgedispatch.wire.signal import Grant, JoinParams, join_grant, parse_join


class FakeMedia:
    """A participant's peer connection: records what the session asks."""

    def __init__(self, session: SignalSession) -> None:
        self.session = session
        self.offers: list[tuple[str, int]] = []
        self.candidates: list[str] = []
        self.data: list[tuple[models.DataPacket, int]] = []
        self.expected: dict[str, str] = {}  # AddTrack cid -> track sid
        self.kinds: dict[str, str] = {}  # track sid -> its media's kind
        self.answers: list[str] = []  # v0: answers to the subscriber offers
        self.subscribed: dict[str, str] = {}  # track sid -> msid stream id
        self.closed = False

    def negotiate(self, sdp: str, offer_id: int, target: int) -> None:
        self.offers.append((sdp, offer_id))

    def add_candidate(self, candidate_init: str, target: int) -> None:
        self.candidates.append(candidate_init)

    def send_data(self, packet: bytes, kind: int) -> None:
        self.data.append((models.DataPacket.FromString(packet), kind))

    def expect_track(self, cid: str, track_sid: str, kind: str) -> None:
        self.expected[cid] = track_sid
        self.kinds[track_sid] = kind

    def set_answer(self, sdp: str) -> None:
        self.answers.append(sdp)

    def subscribe(self, track_sid: str, publisher: object, stream_id: str) -> None:
        self.subscribed[track_sid] = stream_id

    def unsubscribe(self, track_sid: str) -> None:
        self.subscribed.pop(track_sid, None)

    def close(self) -> None:
        self.closed = True


class Peer:
    """One joined client: its sink (what it was sent) and its session."""

    def __init__(self, sink: RecordingSink, session: SignalSession) -> None:
        self.sink = sink
        self.session = session
        assert isinstance(session.media, FakeMedia)
        self.media = session.media  # kept: the session lets go of it when it ends

    def received(self) -> list[rtc.SignalResponse]:
        return [rtc.SignalResponse.FromString(d) for d in self.sink.sent]

    def of(self, kind: str) -> list[Any]:
        return [getattr(m, kind) for m in self.received() if m.WhichOneof("message") == kind]

    def updates(self) -> list[models.ParticipantInfo]:
        return [p for u in self.of("update") for p in u.participants]

    def request(self, now: float, **message: Any) -> None:
        self.session.on_message(rtc.SignalRequest(**message).SerializeToString(), now)


class World:
    def __init__(self, **room: Any) -> None:
        self.domain = Domain(DispatchConfig(), RoomConfig(**room))
        self.hub = RoomHub(self.domain, RtcConfig(), FakeMedia)

    def join(
        self,
        identity: str,
        now: float,
        room: str = "r1",
        tenant: str = "",
        offer: str = "",
        single_pc: bool = True,
        **grant: Any,
    ) -> Peer:
        sink = RecordingSink()
        params = JoinParams(single_pc=single_pc, offer_sdp=offer, offer_id=1)
        session = self.hub.join(
            sink, tenant, Grant(room=room, identity=identity, **grant), params, now
        )
        return Peer(sink, session)


def test_a_join_is_answered_with_a_join_response_the_sdks_accept() -> None:
    world = World()
    alice = world.join("alice", 10.0, name="Alice", metadata="m", attributes={"a": "1"})
    first = alice.received()[0]
    assert first.WhichOneof("message") == "join"
    join = first.join
    assert join.room.sid.startswith("RM_") and join.room.name == "r1"
    assert join.participant.sid.startswith("PA_")
    assert (join.participant.identity, join.participant.name) == ("alice", "Alice")
    assert dict(join.participant.attributes) == {"a": "1"}
    # Zero would panic the Rust SDK; an empty version fails livekit-client.
    assert join.ping_interval > 0 and join.ping_timeout > join.ping_interval
    assert join.server_version and join.server_info.version and join.server_info.node_id
    assert not join.subscriber_primary
    # The room is the domain's: ListRooms sees the participant.
    assert list(world.domain.rooms.get("", "r1").participants) == ["alice"]


def test_the_v1_offer_in_the_join_request_is_answered_after_the_join() -> None:
    world = World()
    alice = world.join("alice", 0.0, offer="v=0 offer")
    assert alice.media.offers == [("v=0 offer", 1)]
    alice.session.on_answer("v=0 answer", 1, {})
    kinds = [m.WhichOneof("message") for m in alice.received()]
    assert kinds == ["join", "answer"]
    assert alice.of("answer")[0].sdp == "v=0 answer" and alice.of("answer")[0].id == 1


def test_joins_and_leaves_reach_the_others_at_once() -> None:
    world = World()
    alice = world.join("alice", 0.0)
    bob = world.join("bob", 1.0)
    # Bob sees Alice in his JoinResponse; Alice hears of Bob in the same step.
    assert [p.identity for p in bob.of("join")[0].other_participants] == ["alice"]
    (seen,) = alice.updates()
    assert (seen.identity, seen.state) == ("bob", models.ParticipantInfo.ACTIVE)
    bob.request(2.0, leave=rtc.LeaveRequest())
    assert bob.sink.closed is not None and bob.session.state is State.CLOSED
    gone = alice.updates()[-1]
    assert (gone.identity, gone.state) == ("bob", models.ParticipantInfo.DISCONNECTED)
    assert gone.disconnect_reason == models.DisconnectReason.CLIENT_INITIATED
    assert gone.version > seen.version  # the SDKs drop updates with an old version
    assert list(world.domain.rooms.get("", "r1").participants) == ["alice"]


def test_a_hidden_participant_is_not_announced() -> None:
    world = World()
    alice = world.join("alice", 0.0)
    world.join("recorder", 0.0, hidden=True)
    bob = world.join("bob", 0.0)
    assert [p.identity for p in alice.updates()] == ["bob"]
    assert [p.identity for p in bob.of("join")[0].other_participants] == ["alice"]


def test_data_is_stamped_with_its_sender_and_goes_where_it_is_addressed() -> None:
    world = World()
    alice, bob, carol = (world.join(n, 0.0) for n in ("alice", "bob", "carol"))
    packet = models.DataPacket(user=models.UserPacket(payload=b"hi", topic="chat"))
    alice.session.on_data(packet.SerializeToString(), 0, 1.0)
    for peer in (bob, carol):
        ((got, kind),) = peer.media.data
        assert (got.participant_identity, got.participant_sid) == ("alice", alice.session.sid)
        assert (got.user.payload, got.user.topic, kind) == (b"hi", "chat", 0)
    assert alice.media.data == []  # never echoed to the sender
    to_carol = models.DataPacket(
        destination_identities=["carol"], user=models.UserPacket(payload=b"x")
    )
    bob.session.on_data(to_carol.SerializeToString(), 1, 2.0)
    assert len(carol.media.data) == 2 and carol.media.data[-1][1] == 1  # lossy kept lossy
    assert len(alice.media.data) == 0 and len(bob.media.data) == 1


def test_rpc_and_streams_pass_opaquely() -> None:
    world = World()
    alice, bob = world.join("alice", 0.0), world.join("bob", 0.0)
    rpc = models.DataPacket(
        destination_identities=["bob"],
        rpc_request=models.RpcRequest(id="1", method="greet", payload="{}", version=1),
    )
    alice.session.on_data(rpc.SerializeToString(), 0, 1.0)
    ((got, _),) = bob.media.data
    assert got.rpc_request.method == "greet" and got.participant_identity == "alice"


def test_without_can_publish_data_nothing_is_forwarded() -> None:
    world = World()
    mute = world.join("mute", 0.0, can_publish_data=False)
    bob = world.join("bob", 0.0)
    mute.session.on_data(
        models.DataPacket(user=models.UserPacket(payload=b"x")).SerializeToString(), 0, 1.0
    )
    assert bob.media.data == []


def test_metadata_updates_need_the_grant_and_are_answered_and_broadcast() -> None:
    world = World()
    alice = world.join("alice", 0.0, attributes={"keep": "1", "drop": "2"})
    bob = world.join("bob", 0.0)
    alice.request(1.0, update_metadata=rtc.UpdateParticipantMetadata(metadata="x", request_id=7))
    (refused,) = alice.of("request_response")
    assert (refused.request_id, refused.reason) == (7, rtc.RequestResponse.NOT_ALLOWED)
    assert "canUpdateOwnMetadata" in refused.message

    carol = world.join(
        "carol", 2.0, can_update_metadata=True, attributes={"keep": "1", "drop": "2"}
    )
    carol.request(
        3.0,
        update_metadata=rtc.UpdateParticipantMetadata(
            metadata="busy", attributes={"drop": "", "new": "3"}, request_id=9
        ),
    )
    (ok,) = carol.of("request_response")
    assert (ok.request_id, ok.reason) == (9, rtc.RequestResponse.OK)
    for peer in (bob, carol):  # the others, and its own view
        latest = [p for p in peer.updates() if p.identity == "carol"][-1]
        assert latest.metadata == "busy"
        assert dict(latest.attributes) == {"keep": "1", "new": "3"}
    assert world.domain.rooms.get("", "r1").participants["carol"].metadata == "busy"


def test_both_kinds_of_ping_are_answered() -> None:
    world = World()
    alice = world.join("alice", 0.0)
    alice.request(1.0, ping=1234)
    alice.request(1.0, ping_req=rtc.Ping(timestamp=5678, rtt=3))
    assert alice.of("pong") == [1234]
    (pong,) = alice.of("pong_resp")
    assert pong.last_ping_timestamp == 5678 and pong.timestamp > 0


def test_a_silent_client_is_dropped_after_ping_timeout() -> None:
    world = World(departure_timeout=20)
    alice, bob = world.join("alice", 0.0), world.join("bob", 0.0)
    bob.request(10.0, ping=1)
    assert alice.session.next_deadline() == 15.0  # RtcConfig.ping_timeout
    alice.session.on_timer(14.9)
    assert alice.sink.closed is None
    alice.session.on_timer(15.0)
    assert alice.sink.closed is not None and "ping" in alice.sink.closed[1]
    assert bob.updates()[-1].state == models.ParticipantInfo.DISCONNECTED


def test_a_duplicate_identity_replaces_the_older_session() -> None:
    world = World()
    old, bob = world.join("alice", 0.0), world.join("bob", 0.0)
    new = world.join("alice", 1.0)
    (leave,) = old.of("leave")
    assert leave.reason == models.DisconnectReason.DUPLICATE_IDENTITY
    assert old.sink.closed is not None and old.media.closed
    assert new.session.state is State.JOINED
    room = world.domain.rooms.get("", "r1")
    assert room.participants["alice"].sid == new.session.sid
    # The old one going does not take the new one out of the room.
    old.session.on_closed(1000, "", 2.0)
    assert room.participants["alice"].sid == new.session.sid
    states = [(p.sid, p.state) for p in bob.updates() if p.identity == "alice"]
    assert states[-2:] == [
        (old.session.sid, models.ParticipantInfo.DISCONNECTED),
        (new.session.sid, models.ParticipantInfo.ACTIVE),
    ]


def test_garbage_closes_only_its_own_session() -> None:
    world = World()
    alice, bob = world.join("alice", 0.0), world.join("bob", 0.0)
    alice.session.on_message(b"\xff\xff\xff not protobuf", 1.0)
    assert alice.sink.closed is not None and alice.sink.closed[0] == 1007
    assert bob.sink.closed is None
    bob.request(2.0, ping=1)
    assert bob.of("pong") == [1]


def test_the_room_closes_departure_timeout_after_the_last_person_left() -> None:
    world = World(departure_timeout=5)
    link = RecordingLink()
    world.domain.register_worker(link, WorkerSpec(agent_name=""), 0.0)  # automatic dispatch
    world.domain.step(0.0)
    alice = world.join("alice", 0.0)
    (job_id,) = link.offers
    agent = world.join("agent-1", 0.5, kind=4)  # agents do not keep a room open
    alice.request(1.0, leave=rtc.LeaveRequest())
    world.domain.on_timer(5.9)
    assert world.domain.rooms.find("", "r1") is not None
    world.domain.on_timer(6.0)
    assert world.domain.rooms.find("", "r1") is None
    (leave,) = agent.of("leave")
    assert leave.reason == models.DisconnectReason.ROOM_CLOSED
    assert agent.sink.closed is not None
    job = world.domain.jobs.get(job_id)
    assert job is None or job.reason == FailReason.ROOM_CLOSED
    assert world.hub.find("", "r1") is None


def test_someone_coming_back_keeps_the_room_open() -> None:
    world = World(departure_timeout=5)
    alice = world.join("alice", 0.0)
    alice.request(1.0, leave=rtc.LeaveRequest())
    world.join("alice", 3.0)
    world.domain.on_timer(10.0)
    assert world.domain.rooms.find("", "r1") is not None


def test_deleting_a_room_disconnects_everyone_in_it() -> None:
    world = World()
    alice = world.join("alice", 0.0)
    other = world.join("bob", 0.0, room="r2")
    world.domain.delete_room("", "r1", 1.0)
    assert alice.of("leave")[0].reason == models.DisconnectReason.ROOM_CLOSED
    assert alice.sink.closed is not None and other.sink.closed is None


def test_a_token_s_agents_are_dispatched_when_the_join_creates_the_room() -> None:
    world = World()
    config = room_pb.RoomConfiguration(
        agents=[agent_dispatch.RoomAgentDispatch(agent_name="support", metadata="m")]
    )
    world.join("alice", 0.0, room_config=config)
    (d,) = world.domain.list_dispatch("", "r1", 0.0)
    assert (d.agent_name, d.metadata) == ("support", "m")
    assert world.domain.jobs.get(d.job_ids[0]).state == JobState.QUEUED


def test_a_token_s_agents_are_dispatched_into_an_existing_room_too() -> None:
    """LiveKit 1.13.5 ignores them when the room exists; we add each listed
    agent that has no dispatch there yet, once."""
    world = World()
    world.join("alice", 0.0)
    config = room_pb.RoomConfiguration(
        agents=[agent_dispatch.RoomAgentDispatch(agent_name="support")]
    )
    world.join("bob", 1.0, room_config=config)
    world.join("carol", 2.0, room_config=config)
    assert [d.agent_name for d in world.domain.list_dispatch("", "r1", 2.0)] == ["support"]


def test_a_full_room_refuses_the_join() -> None:
    world = World()
    config = room_pb.RoomConfiguration(max_participants=1)
    world.join("alice", 0.0, room_config=config)
    with pytest.raises(ResourceExhausted):
        world.join("bob", 0.0)


def test_rooms_of_two_tenants_never_meet() -> None:
    world = World()
    acme = world.join("alice", 0.0, tenant="acme")
    globex = world.join("bob", 0.0, tenant="globex")
    acme.session.on_data(
        models.DataPacket(user=models.UserPacket(payload=b"x")).SerializeToString(), 0, 1.0
    )
    assert globex.media.data == [] and acme.updates() == []


def test_add_track_is_answered_with_its_sid_and_announced() -> None:
    world = World()
    alice, bob = world.join("alice", 0.0), world.join("bob", 0.0)
    alice.request(
        1.0,
        add_track=rtc.AddTrackRequest(
            cid="mic-1", name="mic", type=models.AUDIO, source=models.MICROPHONE
        ),
    )
    (published,) = alice.of("track_published")
    assert published.cid == "mic-1" and published.track.sid.startswith("TR_")
    (track,) = bob.updates()[-1].tracks
    assert track.sid == published.track.sid and track.source == models.MICROPHONE
    alice.request(2.0, mute=rtc.MuteTrackRequest(sid=track.sid, muted=True))
    assert bob.updates()[-1].tracks[0].muted


def test_publishing_is_refused_without_the_grant() -> None:
    world = World()
    viewer = world.join("viewer", 0.0, can_publish=False)
    mic_only = world.join("mic", 0.0, can_publish_sources=(models.MICROPHONE,))
    viewer.request(1.0, add_track=rtc.AddTrackRequest(cid="c", type=models.AUDIO))
    mic_only.request(
        1.0, add_track=rtc.AddTrackRequest(cid="cam", type=models.VIDEO, source=models.CAMERA)
    )
    for peer in (viewer, mic_only):
        assert peer.of("track_published") == []
        assert peer.of("request_response")[0].reason == rtc.RequestResponse.NOT_ALLOWED


# ----------------------------------------------------------------------
# What the client asks for at the upgrade (wire.signal).


def _wrapped(req: rtc.JoinRequest, compress: bool = True) -> str:
    data = req.SerializeToString()
    wrapped = rtc.WrappedJoinRequest(
        join_request=gzip.compress(data) if compress else data,
        compression=rtc.WrappedJoinRequest.GZIP if compress else rtc.WrappedJoinRequest.NONE,
    )
    return base64.urlsafe_b64encode(wrapped.SerializeToString()).decode().rstrip("=")


def test_a_v1_join_request_is_read_with_its_offer() -> None:
    req = rtc.JoinRequest(
        publisher_offer=rtc.SessionDescription(type="offer", sdp="v=0 x", id=3),
        client_info=models.ClientInfo(protocol=17, client_protocol=2),
    )
    for compress in (True, False):
        params = parse_join("/rtc/v1", {"join_request": _wrapped(req, compress)})
        assert params.single_pc and (params.offer_sdp, params.offer_id) == ("v=0 x", 3)
        assert (params.protocol, params.client_protocol) == (17, 2)
    v0 = parse_join("/rtc", {"reconnect": "1", "auto_subscribe": "0", "protocol": "16"})
    assert not v0.single_pc and v0.reconnect and not v0.auto_subscribe and v0.protocol == 16


@pytest.mark.parametrize(
    "query",
    [
        {},
        {"join_request": "!!!"},
        {"join_request": base64.urlsafe_b64encode(b"\x0a\x05junk!").decode()},
    ],
)
def test_a_malformed_join_request_is_refused(query: dict[str, str]) -> None:
    with pytest.raises(Malformed):
        parse_join("/rtc/v1", query)


def test_a_gzip_bomb_in_the_url_is_refused() -> None:
    bomb = rtc.WrappedJoinRequest(
        join_request=gzip.compress(b"\0" * (64 * 1024 * 1024)),
        compression=rtc.WrappedJoinRequest.GZIP,
    )
    query = {"join_request": base64.urlsafe_b64encode(bomb.SerializeToString()).decode()}
    with pytest.raises(Malformed, match="inflates"):
        parse_join("/rtc/v1", query)


def test_grants_come_from_the_token() -> None:
    raw: dict[str, Any] = {
        "kind": "agent",
        "name": "Bot",
        "attributes": {"lk.agent_name": "support"},
        "roomConfig": {"departureTimeout": 3, "agents": [{"agentName": "a"}]},
    }
    video = {"roomJoin": True, "room": "r", "canPublishSources": ["microphone"], "hidden": True}
    grant = join_grant(raw, video, "bot")
    assert (grant.kind, grant.name, grant.hidden) == (4, "Bot", True)
    assert grant.can_publish and grant.can_subscribe and not grant.can_update_metadata
    assert grant.can_publish_sources == (models.MICROPHONE,)
    assert grant.room_config is not None and grant.room_config.departure_timeout == 3
    assert grant.permission().agent
    with pytest.raises(PermissionDenied, match="roomJoin"):
        join_grant({}, {"room": "r"}, "u")
    with pytest.raises(PermissionDenied, match="room"):
        join_grant({}, {"roomJoin": True}, "u")


def _publish_mic(peer: Peer, now: float, cid: str = "mic-1") -> str:
    peer.request(
        now,
        add_track=rtc.AddTrackRequest(
            cid=cid, name="mic", type=models.AUDIO, source=models.MICROPHONE
        ),
    )
    sid: str = peer.of("track_published")[-1].track.sid
    return sid


def test_audio_is_subscribed_by_everyone_else_and_unsubscribed_when_its_owner_leaves() -> None:
    world = World()
    alice, bob = world.join("alice", 0.0), world.join("bob", 0.0)
    muted = world.join("deaf", 0.0, can_subscribe=False)
    sid = _publish_mic(alice, 1.0)
    assert alice.media.expected == {"mic-1": sid}  # the next offer carries it
    assert alice.media.kinds == {sid: "audio"}
    assert bob.media.subscribed == {sid: f"{alice.session.sid}|{sid}"}
    assert muted.media.subscribed == {} and alice.media.subscribed == {}
    late = world.join("late", 2.0)  # a newcomer gets what is already published
    assert sid in late.media.subscribed
    alice.session.on_track_received(sid, "3")
    assert late.of("join")[0].other_participants[0].tracks[0].sid == sid
    alice.request(3.0, leave=rtc.LeaveRequest())
    assert bob.media.subscribed == {} and late.media.subscribed == {}


def test_video_is_forwarded_as_vp8_and_data_tracks_are_not() -> None:
    world = World()
    alice, bob = world.join("alice", 0.0), world.join("bob", 0.0)
    for cid, kind in (("cam-1", models.VIDEO), ("data-1", models.DATA)):
        alice.request(1.0, add_track=rtc.AddTrackRequest(cid=cid, name=cid, type=kind))
    cam, data = (p.track for p in alice.of("track_published"))
    assert cam.mime_type == "video/VP8" and not data.mime_type
    assert alice.media.kinds == {cam.sid: "video"}  # the data track has no media
    assert list(bob.media.subscribed) == [cam.sid]
    assert {t.sid for t in bob.updates()[-1].tracks} == {cam.sid, data.sid}  # both listed


def test_update_subscription_stops_and_restarts_a_track() -> None:
    world = World()
    alice, bob = world.join("alice", 0.0), world.join("bob", 0.0)
    sid = _publish_mic(alice, 1.0)
    bob.request(2.0, subscription=rtc.UpdateSubscription(track_sids=[sid], subscribe=False))
    assert bob.media.subscribed == {}
    bob.request(3.0, subscription=rtc.UpdateSubscription(track_sids=[sid], subscribe=True))
    assert sid in bob.media.subscribed


def test_a_subscriber_is_asked_for_a_new_offer_only_over_one_peer_connection() -> None:
    world = World()
    v1 = world.join("v1", 0.0)
    v0 = world.join("v0", 0.0, single_pc=False)
    v1.session.request_offer(1, 0)
    v0.session.request_offer(1, 0)
    (need,) = v1.of("media_sections_requirement")
    assert need.num_audios == 1
    assert v0.of("media_sections_requirement") == []
    # v0: the server offers the subscriber connection, the client answers.
    v0.session.on_offer("v=0 sub", 1)
    (offer,) = v0.of("offer")
    assert (offer.type, offer.sdp, offer.id) == ("offer", "v=0 sub", 1)
    v0.request(1.0, answer=rtc.SessionDescription(type="answer", sdp="v=0 ans", id=1))
    assert v0.media.answers == ["v=0 ans"]


def test_participant_and_publisher_jobs_start_per_participant() -> None:
    """LiveKit's JT_PARTICIPANT jobs start when someone other than an agent
    joins, JT_PUBLISHER jobs at their first publish; each carries its
    participant."""
    world = World()
    per_join, per_publish = RecordingLink(), RecordingLink()
    world.domain.register_worker(per_join, WorkerSpec(agent_name="", job_type=2), 0.0)
    world.domain.register_worker(per_publish, WorkerSpec(agent_name="", job_type=1), 0.0)
    world.domain.step(0.0)
    alice = world.join("alice", 1.0)
    world.join("bot", 1.0, kind=4)  # agents get none
    assert len(per_join.offers) == 1 and per_publish.offers == []
    job = world.domain.jobs.get(per_join.offers[0])
    assert job is not None and job.participant is not None
    assert (job.participant.identity, job.participant.sid) == ("alice", alice.session.sid)
    _publish_mic(alice, 2.0)
    _publish_mic(alice, 3.0, cid="mic-2")  # only the first publish counts
    (pub_job,) = per_publish.offers
    rendered = convert.job_proto(world.domain.jobs.jobs[pub_job], world.domain.rooms.get("", "r1"))
    assert rendered.type == 1 and rendered.participant.identity == "alice"


def test_unknown_tracks_and_refused_offers_get_an_error_response() -> None:
    world = World()
    alice, bob = world.join("alice", 0.0), world.join("bob", 0.0)
    alice.request(1.0, mute=rtc.MuteTrackRequest(sid="TR_nope", muted=True))
    (refused,) = alice.of("request_response")
    assert refused.reason == rtc.RequestResponse.NOT_FOUND and refused.mute.sid == "TR_nope"
    alice.request(1.0, subscription=rtc.UpdateSubscription(track_sids=["TR_nope"], subscribe=True))
    (missing,) = alice.of("subscription_response")
    assert missing.track_sid == "TR_nope"
    assert missing.err == models.SubscriptionError.SE_TRACK_NOTFOUND
    alice.session.on_offer_refused(4, "ValueError: bad SDP")
    bad = alice.of("request_response")[-1]
    assert (bad.request_id, bad.reason) == (4, rtc.RequestResponse.INVALID_REQUEST)
    assert alice.session.state is State.JOINED and alice.sink.closed is None
    assert bob.of("request_response") == [] and bob.sink.closed is None


def test_a_track_the_client_stops_sending_is_unpublished_for_everyone() -> None:
    world = World()
    alice, bob = world.join("alice", 0.0), world.join("bob", 0.0)
    sid = _publish_mic(alice, 1.0)
    assert sid in bob.media.subscribed
    alice.session.on_track_unpublished(sid)
    (gone,) = alice.of("track_unpublished")
    assert gone.track_sid == sid
    assert bob.media.subscribed == {}
    assert list(bob.updates()[-1].tracks) == []
