"""Fuzzed Twirp bodies, in protobuf and JSON, through the sans-IO app: every
route answers success or a Twirp error a client made (never ``internal``,
never a 5xx), and another tenant's room, dispatch and running job are
untouched; a well-formed call works afterwards."""

from __future__ import annotations

import base64
import json
import math
import time
from typing import Any

import jwt
import msgspec
from google.protobuf import json_format
from google.protobuf.message import Message
from hypothesis import example, given
from hypothesis import strategies as st
from livekit.protocol import agent_dispatch as ad
from livekit.protocol import models, rtc
from livekit.protocol import room as rm

from edgedispatch._testbase.links import RecordingLink, RecordingSink
from edgedispatch.api import live_rooms, livekit
from edgedispatch.api.app import App
from edgedispatch.config import DispatchConfig, RoomConfig, RtcConfig, ServerConfig
from edgedispatch.dispatch.domain import Domain
from edgedispatch.dispatch.records import Acceptance
from edgedispatch.dispatch.specs import AgentSpec, DispatchSpec, WorkerSpec
from edgedispatch.rtc.room import RoomHub
from edgedispatch.rtc.session import SignalSession
from edgedispatch.wire import twirp
from edgedispatch.wire.http import Request, Response
from edgedispatch.wire.signal import Grant, JoinParams
from edgedispatch.wire.tokens import Verifier
from tests.fuzzing import (
    aim,
    deep_json,
    fuzz_settings,
    json_values,
    messages,
    mutated,
    text,
)
from tests.unit.rtc.test_rooms import FakeMedia

#: (service, method) -> request type, of every Twirp route the app serves.
ROUTES: dict[tuple[str, str], type[Message]] = {
    **{k: r.request for k, r in livekit.ROUTES.items()},
    **{k: r.request for k, r in live_rooms.ROUTES.items()},
}
ROUTE_KEYS = sorted(ROUTES)
ENCODINGS = [twirp.PROTOBUF, twirp.JSON]
WALL = time.time()


def token(room: str, secret: str = "secret", key: str = "devkey") -> str:
    grants = {"roomAdmin": True, "roomCreate": True, "roomList": True, "room": room}
    claims = {"iss": key, "sub": "fuzzer", "nbf": int(WALL) - 10, "exp": int(WALL) + 3600}
    return jwt.encode({**claims, "video": grants}, secret, algorithm="HS256")


class World:
    """An app with two tenants.  Tenant "acme" (the bystander) has a room
    with a dispatch whose job runs on its worker; the default tenant (the
    fuzzer's) has a live room with a participant, a dispatch and a room."""

    def __init__(self) -> None:
        self.now = 1.0
        self.domain = d = Domain(DispatchConfig(), RoomConfig())
        d.wall.offset = WALL - self.now
        verifier = Verifier({"devkey": "secret", "acmekey": "acme"}, {"acmekey": "acme"})
        self.app = App(d, verifier, ServerConfig())
        self.app.rooms = RoomHub(d, RtcConfig(), FakeMedia)
        self.worker = RecordingLink("acme")
        d.register_worker(self.worker, WorkerSpec(agent_name="a"), self.now)
        self.acme = d.create_dispatch("acme", DispatchSpec("r1", AgentSpec("a")), self.now)
        d.step(self.now)
        (self.acme_job,) = self.acme.job_ids
        d.accept(self.worker, self.acme_job, Acceptance("agent-1"), self.now)
        d.step(self.now)
        self.mine = d.create_dispatch("", DispatchSpec("r1", AgentSpec("b")), self.now)
        d.step(self.now)
        self.sinks: dict[str, RecordingSink] = {}
        alice = self.join("", "alice")
        self.join("", "bob")
        self.join("acme", "carol")
        add = rtc.AddTrackRequest(cid="mic", name="mic", type=models.AUDIO)
        alice.on_message(rtc.SignalRequest(add_track=add).SerializeToString(), self.now)
        (track,) = alice.info.tracks
        #: Fields a request is aimed at, to get past its lookups.
        self.targets: dict[str, str] = {
            "room": "r1",
            "identity": "alice",
            "track_sid": track.sid,
            "track_sids": track.sid,
            "dispatch_id": self.mine.id,
            "destination_identities": "bob",
        }
        self.before = self.bystander()

    def join(self, tenant: str, identity: str) -> SignalSession:
        grant = Grant(room="r1", identity=identity)
        self.sinks[identity] = sink = RecordingSink()
        assert self.app.rooms is not None
        return self.app.rooms.join(sink, tenant, grant, JoinParams(single_pc=True), self.now)

    def pool(self) -> list[str]:
        """Names and ids a fuzzed request may hit: the calls go deeper."""
        return ["r1", "alice", self.acme.id, self.mine.id, self.acme_job, "carol"]

    def bystander(self) -> tuple[Any, ...]:
        """What tenant acme's users see: its rooms, its dispatch, its job,
        and carol in its live room."""
        d = self.domain
        records = (
            d.rooms.list_rooms("acme", []),
            d.rooms.dispatches.get(self.acme.id),
            d.jobs.jobs[self.acme_job],
        )
        hub = self.app.rooms
        assert hub is not None
        live = hub.find("acme", "r1")
        people = {k: s.info.SerializeToString() for k, s in live.sessions.items()} if live else {}
        carol = self.sinks["carol"]
        # Encoded: the records are changed in place, so keeping them would
        # compare them with themselves.
        return msgspec.json.encode(records), people, carol.closed, len(carol.sent)

    def post(self, route: tuple[str, str], body: bytes, ctype: str, room: str) -> Response:
        self.now += 0.01
        path = f"/twirp/{route[0]}/{route[1]}"
        headers = {"content-type": ctype, "authorization": f"Bearer {token(room)}"}
        req = Request("POST", path, path, "", headers, body, "10.0.0.9", self.now)
        answer = self.app.handle_http(req)
        assert isinstance(answer, Response)  # no store: answered at once
        return answer


def check_answer(answer: Response, encoding: str) -> None:
    """Success in the request's encoding, or a client's Twirp error."""
    if answer.status == 200:
        assert answer.content_type == encoding
        if encoding == twirp.JSON:
            json.loads(answer.body)
        return
    assert answer.content_type == "application/json"
    error = json.loads(answer.body)
    assert error["code"] in twirp.STATUS and error["code"] != "internal", error
    assert answer.status == twirp.STATUS[error["code"]] < 500, error
    assert isinstance(error["msg"], str) and error["msg"]


def check_world(world: World) -> None:
    """The bystander is untouched, and a well-formed call still works."""
    assert world.bystander() == world.before
    assert world.worker.terminated == []
    req = ad.CreateAgentDispatchRequest(agent_name="c", room="after", metadata="m")
    route = ("livekit.AgentDispatchService", "CreateDispatch")
    for encoding in ENCODINGS:
        answer = world.post(route, twirp.encode(req, encoding), encoding, "after")
        assert answer.status == 200, answer.body
        made = twirp.decode(answer.body, encoding, ad.AgentDispatch)
        assert (made.room, made.agent_name, made.metadata) == ("after", "c", "m")
    listed = world.post(("livekit.RoomService", "ListRooms"), b"{}", twirp.JSON, "after")
    names = {r.name for r in twirp.decode(listed.body, twirp.JSON, rm.ListRoomsResponse).rooms}
    assert "after" in names and names == {r.name for r in world.domain.rooms.list_rooms("", [])}


def room_of(msg: Message) -> str:
    """The room the request names, which the fuzzer's token is made for."""
    for name in ("room", "name"):
        if name in msg.DESCRIPTOR.fields_by_name:
            value = getattr(msg, name)
            if isinstance(value, str):
                return value
    return "r1"


@st.composite
def json_body(draw: st.DrawFn, msg: Message) -> bytes:
    """The message as protobuf-JSON, or with a field of the wrong type, an
    unknown field, or not an object at all."""
    data: Any = json_format.MessageToDict(msg)
    kind = draw(st.sampled_from(["valid", "wrong_type", "unknown", "any", "deep", "bytes"]))
    fields = list(msg.DESCRIPTOR.fields)
    if kind == "wrong_type" and fields:
        field = draw(st.sampled_from(fields))
        name = draw(st.sampled_from([field.json_name, field.name]))
        data[name] = draw(json_values)
    elif kind == "unknown":
        data[draw(st.text(max_size=10))] = draw(json_values)
    elif kind == "any":
        data = draw(json_values)
    elif kind == "deep":
        return deep_json(draw(st.sampled_from([50, 5000, 100_000])), draw(st.sampled_from("[{")))
    elif kind == "bytes":
        return draw(mutated(json.dumps(data).encode()))
    return json.dumps(data).encode()


@given(
    st.data(),
    st.sampled_from(ROUTE_KEYS),
    st.sampled_from(ENCODINGS),
    st.sampled_from(["random", "mutated", "valid"]),
)
@fuzz_settings(200)
def test_fuzzed_bodies_get_a_client_error_and_touch_no_one_else(
    data: st.DataObject, route: tuple[str, str], encoding: str, kind: str
) -> None:
    world = World()
    for _ in range(data.draw(st.integers(1, 3), label="calls")):
        msg = data.draw(messages(ROUTES[route], world.pool()), label="message")
        if data.draw(st.booleans(), label="aimed"):
            aim(msg, world.targets)
        if kind == "random":
            body = data.draw(st.binary(max_size=200), label="body")
        elif encoding == twirp.PROTOBUF:
            body = msg.SerializeToString()
            if kind == "mutated":
                body = data.draw(mutated(body), label="body")
        else:
            body = data.draw(json_body(msg), label="body")
        answer = world.post(route, body, encoding, room_of(msg))
        check_answer(answer, encoding)
    check_world(world)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@st.composite
def tokens(draw: st.DrawFn) -> str:
    """Not a token; segments that are not JSON, not UTF-8 or nested deep;
    or a token signed with the right key whose claims have odd types."""
    kind = draw(st.sampled_from(["text", "segments", "signed"]))
    if kind == "text":
        return draw(text())
    if kind == "segments":
        segment = draw(
            st.one_of(
                st.binary(max_size=40),
                st.sampled_from([b'{"alg":"\xff"}', deep_json(100_000, "{"), b"[]", b"null"]),
            )
        )
        header = b64(segment) if draw(st.booleans()) else b64(b'{"alg":"HS256"}')
        return f"{header}.{b64(segment)}.{b64(draw(st.binary(max_size=32)))}"
    fields = st.sampled_from(["sub", "nbf", "exp", "video", "x"])
    claims: dict[str, Any] = draw(st.dictionaries(fields, json_values))
    claims["iss"] = "devkey"
    if draw(st.booleans()):
        claims["video"] = {"roomAdmin": True, "roomCreate": True, "roomList": True, "room": "r1"}
        claims["video"].update(draw(st.dictionaries(st.sampled_from(["room"]), json_values)))
    odd_times = st.sampled_from([10**400, -(10**400), 1e308, math.inf, math.nan, "soon", True])
    claims.update(draw(st.dictionaries(st.sampled_from(["nbf", "exp"]), odd_times)))
    return jwt.encode(claims, "secret", algorithm="HS256")


@given(tokens(), st.sampled_from(ROUTE_KEYS))
@example("eyJhbGciOiJIUzI1NiJ9." + b64(b'{"iss":"\xff"}') + ".c2ln", ROUTE_KEYS[0])
@fuzz_settings(100)
def test_fuzzed_tokens_get_a_client_error(tok: str, route: tuple[str, str]) -> None:
    world = World()
    path = f"/twirp/{route[0]}/{route[1]}"
    headers = {"content-type": twirp.JSON, "authorization": f"Bearer {tok}"}
    answer = world.app.handle_http(Request("POST", path, path, "", headers, b"{}", "x", 1.5))
    assert isinstance(answer, Response)
    check_answer(answer, twirp.JSON)
    check_world(world)
