"""A server in-process, with the same things in three tenants, for the
authorisation matrix: the sans-IO ``App`` over a real domain, live rooms
(fake media) and the real agent manager (command agents, never started).

Each tenant (the operator's "", "acme", "globex") has, twice, a room with
a dispatch to agent "bot", a participant in it who published a microphone,
and an agent definition: once by names of its own, once by names every
tenant has (the same room name in two tenants names two rooms).
Everything a tenant owns carries marks (its ids, its metadata) that must
never appear in another tenant's answers; and ``snapshot`` is what must
not change when another tenant calls.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable
from typing import Any, NamedTuple, cast

import msgspec
from livekit.protocol import models, rtc
from livekit.protocol import sip as sip_pb

from edgedispatch import config
from edgedispatch._testbase.links import RecordingSink
from edgedispatch.api.app import App
from edgedispatch.dispatch import ids
from edgedispatch.dispatch.domain import Domain
from edgedispatch.dispatch.specs import AgentSpec, DispatchSpec, RoomSpec
from edgedispatch.rtc.room import RoomHub
from edgedispatch.rtc.session import SignalSession
from edgedispatch.runtime.contain import Containment
from edgedispatch.runtime.manager import AgentManager
from edgedispatch.sip.directory import Directory
from edgedispatch.store import MemoryStore
from edgedispatch.wire.http import Request, Response
from edgedispatch.wire.signal import Grant, JoinParams
from edgedispatch.wire.tokens import Verifier, sign_hs256

from .rtc.test_rooms import FakeMedia

WALL = 1_800_000_000.0  #: the wall clock at ``World.now`` (tokens' exp and nbf)
OPERATOR, ACME, GLOBEX = "", "acme", "globex"
#: tenant -> (API key, secret)
KEYS = {
    OPERATOR: ("devkey", "secret"),
    ACME: ("acme-key", "acme-secret"),
    GLOBEX: ("globex-key", "globex-secret"),
}
#: The key edgedispatch makes for an agent server it runs, of tenant acme.
PROGRAM_KEY = ("EDI_acme", "instance-secret")
TAGS = {OPERATOR: "op", ACME: "acme", GLOBEX: "globex"}
UNIQUE, SHARED = "unique", "shared"


class Seeded(NamedTuple):
    """What one tenant was given: the names a request uses, and its marks."""

    tenant: str
    names: str  #: UNIQUE or SHARED
    room: str
    dispatch_id: str
    identity: str
    track_sid: str
    agent: str
    marks: tuple[str, ...]  #: strings only this tenant's data contains
    inbound_id: str = ""  #: its SIP inbound trunk
    outbound_id: str = ""  #: its SIP outbound trunk
    rule_id: str = ""  #: its SIP dispatch rule


def token(key: str, secret: str, **claims: Any) -> str:
    return sign_hs256({"iss": key, "nbf": int(WALL) - 10, "exp": int(WALL) + 600, **claims}, secret)


class FakeDialer:
    """Places no call: records (tenant, trunk id, room) of each it is asked
    for; transfers none: records (tenant, call id, Refer-To) and succeeds."""

    def __init__(self) -> None:
        self.placed: list[tuple[str, str, str]] = []
        self.transferred: list[tuple[str, str, str]] = []

    def transfer(
        self, tenant: str, session: Any, call_id: str, refer_to: str, timeout: float,
        now: float, done: Any, dialtone: bool = False, headers: Any = None,
    ) -> None:  # fmt: skip
        self.transferred.append((tenant, call_id, refer_to))
        done(sip_pb.TransferSIPParticipantResponse(transfer_id="STR_fake"))

    def place(self, tenant: str, req: Any, trunk: Any, now: float, done: Any = None) -> Any:
        self.placed.append((tenant, trunk.sip_trunk_id, req.room_name))
        info = sip_pb.SIPParticipantInfo(room_name=req.room_name, sip_call_id="fake")
        return type("Placed", (), {"info": staticmethod(lambda: info)})()


class World:
    """Build with ``await World.make()`` (the agent manager needs a loop)."""

    def __init__(self) -> None:
        base = config.load(dev=True, env={}, overrides={"port": 0})
        tenants = [
            config.TenantConfig(t, {KEYS[t][0]: KEYS[t][1]}, allow_code=True)
            for t in (ACME, GLOBEX)
        ]
        self.cfg = config.validate(msgspec.structs.replace(base, tenants=tenants))
        self.domain = Domain(self.cfg.dispatch, self.cfg.room)
        #: The server's monotonic clock during the calls: the loop's, as
        #: the agent manager reads it when it registers a local worker.
        self.now = 0.0
        self.verifier = Verifier(self.cfg.secrets(), self.cfg.key_tenants())
        self.verifier.add_key(*PROGRAM_KEY, ACME)
        self.app = App(self.domain, self.verifier, self.cfg.server)
        self.hub = self.app.rooms = RoomHub(self.domain, self.cfg.rtc, FakeMedia)
        # Command agents start no process until a job comes: no containment.
        self.manager = AgentManager(
            self.domain, self.cfg, "ws://x", MemoryStore(), self.verifier, cast(Containment, None)
        )
        self.app.agents = self.manager
        self.sip = self.app.sip = Directory(MemoryStore(), ids.new)
        self.dialer = FakeDialer()
        self.app.dialer = self.dialer
        self.app.transfers = self.dialer
        #: (tenant, names) -> what it was given: by names of its own
        #: (``UNIQUE``: "room-acme", "user-acme", "helper-acme") and by
        #: names every tenant has (``SHARED``: "lobby", "guest", "helper").
        self.seeded: dict[tuple[str, str], Seeded] = {}
        self.sinks: dict[tuple[str, str], RecordingSink] = {}

    @classmethod
    async def make(cls) -> World:
        world = cls()
        for tenant, tag in TAGS.items():
            for agent in (f"helper-{tag}", "helper"):
                command = [sys.executable, "-c", "pass", f"cmd-mark-{tag}"]
                await world.manager.add(tenant, {"name": agent, "command": command})
        world.now = now = asyncio.get_running_loop().time()
        world.domain.wall.offset = WALL - now
        for tenant, tag in TAGS.items():
            world._seed(tenant, UNIQUE, f"room-{tag}", f"user-{tag}", f"helper-{tag}", now)
            world._seed(tenant, SHARED, "lobby", "guest", "helper", now)
        return world

    def _seed(self, tenant: str, names: str, room: str, who: str, agent: str, now: float) -> None:
        tag = f"{TAGS[tenant]}-{names}"
        d = self.domain
        d.create_room(tenant, RoomSpec(room, metadata=f"room-meta-{tag}"), now)
        spec = DispatchSpec(room, AgentSpec("bot", metadata=f"dispatch-meta-{tag}"))
        dispatch = d.create_dispatch(tenant, spec, now)
        d.step(now)
        sink = self.sinks[tenant, names] = RecordingSink()
        # Each participant says it is a phone call's (TransferSIPParticipant
        # finds the call by it).
        grant = Grant(
            room=room, identity=who, metadata=f"user-meta-{tag}",
            attributes={"sip.callID": f"call-{tag}"},
        )  # fmt: skip
        session = self.hub.join(sink, tenant, grant, JoinParams(single_pc=True), now)
        add = rtc.AddTrackRequest(cid="mic", name=f"mic-{tag}", type=models.AUDIO)
        session.on_message(rtc.SignalRequest(add_track=add).SerializeToString(), now)
        (track,) = session.info.tracks
        sip = self._seed_sip(tenant, tag, now)
        marks = (
            *sip,
            f"sip-meta-{tag}",
            d.rooms.get(tenant, room).sid,
            dispatch.id,
            *dispatch.job_ids,
            f"room-meta-{tag}",
            f"dispatch-meta-{tag}",
            session.sid,
            f"user-meta-{tag}",
            track.sid,
            f"cmd-mark-{TAGS[tenant]}",
        )
        self.seeded[tenant, names] = Seeded(
            tenant, names, room, dispatch.id, who, track.sid, agent, marks, *sip
        )

    def _seed_sip(self, tenant: str, tag: str, now: float) -> tuple[str, str, str]:
        """An inbound trunk for a number of its own, an outbound trunk and
        a dispatch rule: their ids."""
        number = f"+1555{len(self.seeded):04d}"
        meta = f"sip-meta-{tag}"
        wall = self.domain.wall(now)
        inbound = sip_pb.SIPInboundTrunkInfo(numbers=[number], metadata=meta)
        outbound = sip_pb.SIPOutboundTrunkInfo(
            numbers=[number], address="sip.example", metadata=meta
        )
        rule = sip_pb.CreateSIPDispatchRuleRequest(
            dispatch_rule=sip_pb.SIPDispatchRuleInfo(
                rule=sip_pb.SIPDispatchRule(
                    dispatch_rule_direct=sip_pb.SIPDispatchRuleDirect(room_name=f"sip-{tag}")
                ),
                numbers=[number],
                metadata=meta,
            )
        )
        return (
            self.sip.create_inbound(tenant, inbound, wall).sip_trunk_id,
            self.sip.create_outbound(tenant, outbound, wall).sip_trunk_id,
            self.sip.create_rule(tenant, rule, wall).sip_dispatch_rule_id,
        )

    def marks(self, tenant: str) -> tuple[str, ...]:
        return self.seeded[tenant, UNIQUE].marks + self.seeded[tenant, SHARED].marks

    def session(self, seeded: Seeded) -> SignalSession | None:
        live = self.hub.find(seeded.tenant, seeded.room)
        return live.sessions.get(seeded.identity) if live is not None else None

    def snapshot(self, tenant: str) -> Any:
        """Everything of ``tenant`` a call by another tenant could see or change."""
        d = self.domain
        rooms = []
        for room in d.rooms.list_rooms(tenant, []):
            dispatches = [d.rooms.dispatches[i] for i in room.dispatch_ids]
            rooms.append(
                (
                    msgspec.to_builtins(msgspec.structs.replace(room, participants={})),
                    sorted(room.participants),
                    [(x.id, x.metadata, x.deleted_ns, list(x.job_ids)) for x in dispatches],
                    [(j, d.core.job_state(j)) for x in dispatches for j in x.job_ids],
                )
            )
        live = []
        for (t, name), lr in sorted(self.hub.rooms.items()):
            if t == tenant:
                for s in lr.sessions.values():
                    live.append((name, s.info.SerializeToString(), msgspec.to_builtins(s.grant)))
        received = []
        for names in (UNIQUE, SHARED):
            sink = self.sinks[tenant, names]
            session = self.session(self.seeded[tenant, names])
            media = session.media if session is not None else None
            received.append((len(sink.sent), sink.closed, list(getattr(media, "data", []))))
        workers = sorted(
            (w, d.workers.key_of(w)) for w, link in d.workers.links.items() if link.tenant == tenant
        )
        sip = [
            [x.SerializeToString(deterministic=True) for x in records]
            for records in (
                self.sip.inbound_trunks(tenant),
                self.sip.outbound_trunks(tenant),
                self.sip.rules(tenant),
            )
        ]
        return rooms, live, received, workers, self.manager.list(tenant), sip

    async def call(
        self, path: str, body: bytes, tok: str | None, ctype: str, **more: str
    ) -> Response:
        headers = {"content-type": ctype, **more}
        if tok is not None:
            headers["authorization"] = f"Bearer {tok}"
        req = Request("POST", path, path, "", headers, body, "10.0.0.9", self.now)
        answer = self.app.handle_http(req)
        if isinstance(answer, Awaitable):
            answer = await answer
        return answer

    async def close(self) -> None:
        await self.manager.close()
