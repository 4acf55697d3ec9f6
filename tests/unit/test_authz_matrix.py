"""The authorisation matrix: every Twirp RPC the server routes, called with
every grant set, on the caller's own tenant's room, dispatch and agent and
on another tenant's; each answer is checked against the table below, and
nothing of another tenant is ever in an answer or changed by one.

The table is LiveKit's rules (livekit/pkg/service/auth.go; the reference's
"Which grant each caller needs"): a token that does not verify is
``unauthenticated``; one without the grant the RPC needs is
``permission_denied``; then the call runs, on the caller's tenant only.
Each cell runs in a world of its own (``authz_world``), so a cell that
deletes a room does not change the next.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from typing import Any, NamedTuple

import pytest
from google.protobuf import struct_pb2
from google.protobuf.message import Message
from livekit.protocol import agent_dispatch as ad
from livekit.protocol import models
from livekit.protocol import room as rm
from livekit.protocol import sip as sp

from edgedispatch.api import agents as agents_api
from edgedispatch.api import livekit as livekit_api
from edgedispatch.api.app import twirp_methods
from edgedispatch.rtc.session import SignalSession
from edgedispatch.wire import twirp

from .authz_world import (
    ACME,
    GLOBEX,
    KEYS,
    OPERATOR,
    PROGRAM_KEY,
    SHARED,
    TAGS,
    UNIQUE,
    WALL,
    Seeded,
    World,
    token,
)

D, R, A = "livekit.AgentDispatchService", "livekit.RoomService", agents_api.SERVICE
S = "livekit.SIP"

# What an RPC needs (``Row.needs``) and what a grant set holds (``Grants.holds``).
CREATE, LIST, ADMIN, AGENTS = "roomCreate", "roomList", "roomAdmin+room", "agent.admin"
SIP = "sip.admin"
SIP_CALL = "sip.call"
OK, DENIED, UNAUTH, NOT_FOUND = "ok", "permission_denied", "unauthenticated", "not_found"

#: A row's check, given the world, the caller's own things by the names the
#: request used (its "lobby" for another tenant's "lobby"), the target, and
#: the answer's body.
Check = Callable[[World, Seeded, Seeded, bytes], None]


class Row(NamedTuple):
    """One RPC's expected answers, once its grant is held."""

    needs: str
    own: str  #: on the caller's own tenant's things
    other: str  #: on another tenant's, by names only that tenant has
    same: str  #: on another tenant's, by names the caller's tenant has too
    request: Callable[[Seeded], Message | dict[str, Any]]
    check: Check | None = None  #: what the caller notices when it is ``ok``


def _pb(cls: type[Message], body: bytes) -> Any:
    return cls.FromString(body)


def _named(mine: Seeded, t: Seeded) -> bool:
    """Whether the request's names are also the caller's own."""
    return mine.room == t.room


def _dispatch_created(w: World, mine: Seeded, t: Seeded, body: bytes) -> None:
    made = _pb(ad.AgentDispatch, body)
    # Another tenant's room name makes (or finds) a room of the caller's own.
    assert [x.id for x in w.domain.list_dispatch(mine.tenant, t.room, 0.0)][-1] == made.id


def _dispatches_listed(w: World, mine: Seeded, t: Seeded, body: bytes) -> None:
    listed = [x.id for x in _pb(ad.ListAgentDispatchResponse, body).agent_dispatches]
    assert listed == ([mine.dispatch_id] if _named(mine, t) else [])


def _waits_listed(w: World, mine: Seeded, t: Seeded, body: bytes) -> None:
    listed = _pb(struct_pb2.Struct, body)["jobs"]
    assert {x["dispatchId"] for x in listed} <= ({mine.dispatch_id} if _named(mine, t) else set())


def _room_created(w: World, mine: Seeded, t: Seeded, body: bytes) -> None:
    assert _pb(models.Room, body).sid == w.domain.rooms.get(mine.tenant, t.room).sid


def _rooms_listed(w: World, mine: Seeded, t: Seeded, body: bytes) -> None:
    listed = [r.name for r in _pb(rm.ListRoomsResponse, body).rooms]
    assert listed == ([mine.room] if _named(mine, t) else [])


def _session(w: World, mine: Seeded) -> SignalSession:
    session = w.session(mine)
    assert session is not None
    return session


def _participants_listed(w: World, mine: Seeded, t: Seeded, body: bytes) -> None:
    listed = _pb(rm.ListParticipantsResponse, body).participants
    assert [p.sid for p in listed] == [_session(w, mine).sid]


def _participant_got(w: World, mine: Seeded, t: Seeded, body: bytes) -> None:
    assert _pb(models.ParticipantInfo, body).sid == _session(w, mine).sid


def _data_received(w: World, mine: Seeded) -> list[bytes]:
    return [packet.user.payload for packet, _ in getattr(_session(w, mine).media, "data", [])]


def _not_subscribed(w: World, mine: Seeded, t: Seeded, body: bytes) -> None:
    assert t.track_sid not in getattr(_session(w, mine).media, "subscribed", {})


def _agents(w: World, tenant: str) -> dict[str, str]:
    return {a["name"]: a["state"] for a in w.manager.list(tenant)}


def _agents_listed(w: World, mine: Seeded, t: Seeded, body: bytes) -> None:
    listed = [a["name"] for a in json.loads(body)["agents"]]
    assert listed == sorted({w.seeded[mine.tenant, n].agent for n in (UNIQUE, SHARED)})


def _agent_state(state: str) -> Check:
    def check(w: World, mine: Seeded, t: Seeded, body: bytes) -> None:
        assert json.loads(body)["agent"]["state"] == state
        assert _agents(w, mine.tenant)[mine.agent] == state

    return check


def _mine(check: Callable[[World, Seeded], bool]) -> Check:
    def run(w: World, mine: Seeded, t: Seeded, body: bytes) -> None:
        assert check(w, mine)

    return run


def _sip_listed(kind: str) -> Check:
    """A list by the target's id has the caller's own record, or nothing."""

    def check(w: World, mine: Seeded, t: Seeded, body: bytes) -> None:
        response = {"in": sp.ListSIPInboundTrunkResponse, "out": sp.ListSIPOutboundTrunkResponse}
        cls = response.get(kind, sp.ListSIPDispatchRuleResponse)
        items = _pb(cls, body).items
        own = {"in": mine.inbound_id, "out": mine.outbound_id, "rule": mine.rule_id}[kind]
        ids = [
            getattr(x, "sip_trunk_id", "") or getattr(x, "sip_dispatch_rule_id", "") for x in items
        ]
        assert ids == ([own] if t is mine else [])

    return check


def _sip_trunks_listed(w: World, mine: Seeded, t: Seeded, body: bytes) -> None:
    listed = {x.sip_trunk_id for x in _pb(sp.ListSIPTrunkResponse, body).items}
    own = {s.inbound_id for k, s in w.seeded.items() if k[0] == mine.tenant}
    own |= {s.outbound_id for k, s in w.seeded.items() if k[0] == mine.tenant}
    assert listed == own


def _sip_made(w: World, mine: Seeded, t: Seeded, body: bytes) -> None:
    assert b"made-by-matrix" in b"".join(
        x.SerializeToString()
        for x in (*w.sip.inbound_trunks(mine.tenant), *w.sip.outbound_trunks(mine.tenant))
        + tuple(w.sip.rules(mine.tenant))
    )


def _sip_named(w: World, mine: Seeded) -> bool:
    records = (*w.sip.inbound_trunks(mine.tenant), *w.sip.outbound_trunks(mine.tenant))
    return any(r.name == "renamed" for r in (*records, *w.sip.rules(mine.tenant)))


def _sip_trunk_deleted(w: World, mine: Seeded, t: Seeded, body: bytes) -> None:
    kept = {x.sip_trunk_id for x in w.sip.inbound_trunks(mine.tenant)}
    assert _pb(sp.SIPTrunkInfo, body).sip_trunk_id == t.inbound_id
    assert (mine.inbound_id in kept) == (t is not mine)


_DIRECT = sp.SIPDispatchRule(dispatch_rule_direct=sp.SIPDispatchRuleDirect(room_name="made"))

#: livekit.SIP: ``sip.admin`` for every trunk and rule call; records are
#: found by id, so another tenant's (by names shared or not) are not found.
#: DeleteSIPTrunk of an id the caller does not have answers ok with nothing
#: deleted, as LiveKit answers an id that is not there.
SIP_ROWS: dict[tuple[str, str], Row] = {
    (S, "CreateSIPInboundTrunk"): Row(
        SIP,
        OK,
        OK,
        OK,
        lambda t: sp.CreateSIPInboundTrunkRequest(
            trunk=sp.SIPInboundTrunkInfo(numbers=["+19990000"], metadata="made-by-matrix")
        ),
        _sip_made,
    ),
    (S, "CreateSIPOutboundTrunk"): Row(
        SIP,
        OK,
        OK,
        OK,
        lambda t: sp.CreateSIPOutboundTrunkRequest(
            trunk=sp.SIPOutboundTrunkInfo(numbers=["+1"], address="x", metadata="made-by-matrix")
        ),
        _sip_made,
    ),
    (S, "UpdateSIPInboundTrunk"): Row(
        SIP,
        OK,
        NOT_FOUND,
        NOT_FOUND,
        lambda t: sp.UpdateSIPInboundTrunkRequest(
            sip_trunk_id=t.inbound_id, update=sp.SIPInboundTrunkUpdate(name="renamed")
        ),
        _mine(_sip_named),
    ),
    (S, "UpdateSIPOutboundTrunk"): Row(
        SIP,
        OK,
        NOT_FOUND,
        NOT_FOUND,
        lambda t: sp.UpdateSIPOutboundTrunkRequest(
            sip_trunk_id=t.outbound_id, update=sp.SIPOutboundTrunkUpdate(name="renamed")
        ),
        _mine(_sip_named),
    ),
    (S, "GetSIPInboundTrunk"): Row(
        SIP,
        OK,
        NOT_FOUND,
        NOT_FOUND,
        lambda t: sp.GetSIPInboundTrunkRequest(sip_trunk_id=t.inbound_id),
    ),
    (S, "GetSIPOutboundTrunk"): Row(
        SIP,
        OK,
        NOT_FOUND,
        NOT_FOUND,
        lambda t: sp.GetSIPOutboundTrunkRequest(sip_trunk_id=t.outbound_id),
    ),
    (S, "ListSIPInboundTrunk"): Row(
        SIP,
        OK,
        OK,
        OK,
        lambda t: sp.ListSIPInboundTrunkRequest(trunk_ids=[t.inbound_id]),
        _sip_listed("in"),
    ),
    (S, "ListSIPOutboundTrunk"): Row(
        SIP,
        OK,
        OK,
        OK,
        lambda t: sp.ListSIPOutboundTrunkRequest(trunk_ids=[t.outbound_id]),
        _sip_listed("out"),
    ),
    (S, "CreateSIPTrunk"): Row(
        SIP,
        OK,
        OK,
        OK,
        lambda t: sp.CreateSIPTrunkRequest(outbound_number="+19990001", metadata="made-by-matrix"),
        _sip_made,
    ),
    (S, "ListSIPTrunk"): Row(
        SIP, OK, OK, OK, lambda t: sp.ListSIPTrunkRequest(), _sip_trunks_listed
    ),
    (S, "DeleteSIPTrunk"): Row(
        SIP,
        OK,
        OK,
        OK,
        lambda t: sp.DeleteSIPTrunkRequest(sip_trunk_id=t.inbound_id),
        _sip_trunk_deleted,
    ),
    (S, "CreateSIPDispatchRule"): Row(
        SIP,
        OK,
        OK,
        OK,
        lambda t: sp.CreateSIPDispatchRuleRequest(
            dispatch_rule=sp.SIPDispatchRuleInfo(rule=_DIRECT, metadata="made-by-matrix")
        ),
        _sip_made,
    ),
    (S, "UpdateSIPDispatchRule"): Row(
        SIP,
        OK,
        NOT_FOUND,
        NOT_FOUND,
        lambda t: sp.UpdateSIPDispatchRuleRequest(
            sip_dispatch_rule_id=t.rule_id, update=sp.SIPDispatchRuleUpdate(name="renamed")
        ),
        _mine(_sip_named),
    ),
    (S, "ListSIPDispatchRule"): Row(
        SIP,
        OK,
        OK,
        OK,
        lambda t: sp.ListSIPDispatchRuleRequest(dispatch_rule_ids=[t.rule_id]),
        _sip_listed("rule"),
    ),
    # Placing a call needs sip.call (not sip.admin), and the caller's own trunk.
    (S, "CreateSIPParticipant"): Row(
        SIP_CALL,
        OK,
        NOT_FOUND,
        NOT_FOUND,
        lambda t: sp.CreateSIPParticipantRequest(
            sip_trunk_id=t.outbound_id, sip_call_to="+15550123", room_name=t.room
        ),
        _mine(
            lambda w, mine: [c[:2] for c in w.dialer.placed] == [(mine.tenant, mine.outbound_id)]
        ),
    ),
    # Transferring a call needs sip.call and roomAdmin for the room (LiveKit's
    # transferSIPParticipantRequest); the participant is found in the
    # caller's own room, by its sip.callID.
    (S, "TransferSIPParticipant"): Row(
        f"{SIP_CALL} & {ADMIN}",
        OK,
        NOT_FOUND,
        OK,
        lambda t: sp.TransferSIPParticipantRequest(
            room_name=t.room, participant_identity=t.identity, transfer_to="tel:+15550142"
        ),
        _mine(
            lambda w, mine: (
                w.dialer.transferred
                == [(mine.tenant, f"call-{TAGS[mine.tenant]}-{mine.names}", "tel:+15550142")]
            )
        ),
    ),
    (S, "DeleteSIPDispatchRule"): Row(
        SIP,
        OK,
        NOT_FOUND,
        NOT_FOUND,
        lambda t: sp.DeleteSIPDispatchRuleRequest(sip_dispatch_rule_id=t.rule_id),
        _mine(
            lambda w, mine: (
                mine.rule_id not in {r.sip_dispatch_rule_id for r in w.sip.rules(mine.tenant)}
            )
        ),
    ),
}


#: (service, method) -> its row.  Where edgedispatch differs from LiveKit:
#: - a token without the grant gets ``permission_denied`` (403); LiveKit
#:   answers ``unauthenticated`` for both (twirpAuthError), which tells a
#:   caller with a valid key nothing about what is missing;
#: - a token that does not verify gets Twirp JSON ``unauthenticated`` (401);
#:   LiveKit's middleware answers 401 with a plain-text body;
#: - LiveKit has no tenants: another tenant's room is a room that does not
#:   exist (``not_found``, or a room of the caller's own where LiveKit would
#:   create one), never a ``permission_denied`` that would confirm it exists;
#:   and a name the caller's tenant has too names the caller's own (so
#:   DeleteRoom "lobby" deletes the caller's lobby, never another's), while
#:   another tenant's ids (a dispatch, a track) are not found in it.
ROWS: dict[tuple[str, str], Row] = {
    # CreateDispatch creates the room if it does not exist (LiveKit's
    # auto_create): another tenant's room name gives the caller its own room.
    (D, "CreateDispatch"): Row(
        ADMIN,
        OK,
        OK,
        OK,
        lambda t: ad.CreateAgentDispatchRequest(agent_name="bot", room=t.room),
        _dispatch_created,
    ),
    (D, "ListDispatch"): Row(
        ADMIN, OK, OK, OK, lambda t: ad.ListAgentDispatchRequest(room=t.room), _dispatches_listed
    ),
    (livekit_api.DISPATCH_SERVICE, "ListJobWaits"): Row(
        ADMIN, OK, OK, OK, lambda t: ad.ListAgentDispatchRequest(room=t.room), _waits_listed
    ),
    (D, "DeleteDispatch"): Row(
        ADMIN,
        OK,
        NOT_FOUND,
        NOT_FOUND,
        lambda t: ad.DeleteAgentDispatchRequest(room=t.room, dispatch_id=t.dispatch_id),
        _mine(lambda w, mine: mine.dispatch_id not in w.domain.rooms.dispatches),
    ),
    # CreateRoom of an existing room returns it, as LiveKit does.
    (R, "CreateRoom"): Row(
        CREATE, OK, OK, OK, lambda t: rm.CreateRoomRequest(name=t.room), _room_created
    ),
    (R, "ListRooms"): Row(
        LIST, OK, OK, OK, lambda t: rm.ListRoomsRequest(names=[t.room]), _rooms_listed
    ),
    (R, "DeleteRoom"): Row(
        CREATE,
        OK,
        NOT_FOUND,
        OK,
        lambda t: rm.DeleteRoomRequest(room=t.room),
        _mine(lambda w, mine: w.domain.rooms.find(mine.tenant, mine.room) is None),
    ),
    (R, "UpdateRoomMetadata"): Row(
        ADMIN,
        OK,
        NOT_FOUND,
        OK,
        lambda t: rm.UpdateRoomMetadataRequest(room=t.room, metadata="new"),
        _mine(lambda w, mine: w.domain.rooms.get(mine.tenant, mine.room).metadata == "new"),
    ),
    (R, "ListParticipants"): Row(
        ADMIN,
        OK,
        NOT_FOUND,
        OK,
        lambda t: rm.ListParticipantsRequest(room=t.room),
        _participants_listed,
    ),
    (R, "GetParticipant"): Row(
        ADMIN,
        OK,
        NOT_FOUND,
        OK,
        lambda t: rm.RoomParticipantIdentity(room=t.room, identity=t.identity),
        _participant_got,
    ),
    (R, "RemoveParticipant"): Row(
        ADMIN,
        OK,
        NOT_FOUND,
        OK,
        lambda t: rm.RoomParticipantIdentity(room=t.room, identity=t.identity),
        _mine(lambda w, mine: w.session(mine) is None and bool(w.sinks[mine[:2]].closed)),
    ),
    (R, "UpdateParticipant"): Row(
        ADMIN,
        OK,
        NOT_FOUND,
        OK,
        lambda t: rm.UpdateParticipantRequest(room=t.room, identity=t.identity, metadata="new"),
        _mine(lambda w, mine: _session(w, mine).info.metadata == "new"),
    ),
    (R, "MutePublishedTrack"): Row(
        ADMIN,
        OK,
        NOT_FOUND,
        NOT_FOUND,
        lambda t: rm.MuteRoomTrackRequest(
            room=t.room, identity=t.identity, track_sid=t.track_sid, muted=True
        ),
        _mine(lambda w, mine: _session(w, mine).info.tracks[0].muted),
    ),
    # A track the room does not have is answered in the participant's
    # signal stream (SE_TRACK_NOTFOUND), as LiveKit does: the call is ok.
    (R, "UpdateSubscriptions"): Row(
        ADMIN,
        OK,
        NOT_FOUND,
        OK,
        lambda t: rm.UpdateSubscriptionsRequest(
            room=t.room, identity=t.identity, track_sids=[t.track_sid], subscribe=True
        ),
        _not_subscribed,
    ),
    (R, "SendData"): Row(
        ADMIN,
        OK,
        NOT_FOUND,
        OK,
        lambda t: rm.SendDataRequest(room=t.room, data=b"hello"),
        _mine(lambda w, mine: _data_received(w, mine) == [b"hello"]),
    ),
    # edgedispatch's own service: LiveKit's agent admin grant, and the
    # caller's tenant only (a definition names no tenant but the token's).
    (A, "ListAgents"): Row(AGENTS, OK, OK, OK, lambda t: {}, _agents_listed),
    (A, "AddAgent"): Row(
        AGENTS,
        OK,
        DENIED,
        DENIED,
        lambda t: {
            "agent": {"name": "added", "command": [sys.executable, "-c", ""], "tenant": t.tenant}
        },
        _mine(lambda w, mine: "added" in _agents(w, mine.tenant)),
    ),
    (A, "RemoveAgent"): Row(
        AGENTS,
        OK,
        NOT_FOUND,
        OK,
        lambda t: {"name": t.agent},
        _mine(lambda w, mine: mine.agent not in _agents(w, mine.tenant)),
    ),
    (A, "StartAgent"): Row(
        AGENTS,
        OK,
        NOT_FOUND,
        OK,
        lambda t: {"name": t.agent, "timeout": 1},
        _agent_state("running"),
    ),
    (A, "StopAgent"): Row(
        AGENTS, OK, NOT_FOUND, OK, lambda t: {"name": t.agent}, _agent_state("stopped")
    ),
    **SIP_ROWS,
}


class Grants(NamedTuple):
    """A caller: whose key signs, with which claims (given the room the
    request names), and which of the needs it holds (None: not verified)."""

    tenant: str
    claims: Callable[[str], dict[str, Any]] | None  #: None: no token at all
    holds: frozenset[str] | None
    key: tuple[str, str] | None = None  #: default: the tenant's key
    secret: str | None = None  #: a wrong secret for that key


def _video(**video: Any) -> Callable[[str], dict[str, Any]]:
    def claims(room: str) -> dict[str, Any]:
        return {"video": {k: (room if v is ROOM else v) for k, v in video.items()}}

    return claims


ROOM = object()  #: stands for the room the request names
EVERY_VIDEO = {"roomCreate": True, "roomList": True, "roomAdmin": True, "room": ROOM}
ADMIN_GRANT = {"agent": {"admin": True}}
SIP_GRANT = {"sip": {"admin": True}}


def _every(room: str) -> dict[str, Any]:
    return {**_video(**EVERY_VIDEO)(room), **ADMIN_GRANT, **SIP_GRANT}


ALL = frozenset({CREATE, LIST, ADMIN, AGENTS, SIP})
NONE: frozenset[str] = frozenset()
GRANTS: dict[str, Grants] = {
    "no token": Grants(ACME, None, None),
    "bad signature": Grants(ACME, _every, None, secret="not-the-secret"),
    "unknown key": Grants(ACME, _every, None, key=("nobody", "acme-secret")),
    "expired": Grants(ACME, lambda room: {**_every(room), "exp": int(WALL) - 120}, None),
    "not yet valid": Grants(ACME, lambda room: {**_every(room), "nbf": int(WALL) + 120}, None),
    "no video grant": Grants(ACME, lambda room: {}, NONE),
    "empty video grant": Grants(ACME, _video(), NONE),
    "roomCreate": Grants(ACME, _video(roomCreate=True), frozenset({CREATE})),
    "roomList": Grants(ACME, _video(roomList=True), frozenset({LIST})),
    "roomAdmin, no room": Grants(ACME, _video(roomAdmin=True), NONE),
    "roomAdmin, this room": Grants(ACME, _video(roomAdmin=True, room=ROOM), frozenset({ADMIN})),
    "roomAdmin, another room": Grants(ACME, _video(roomAdmin=True, room="elsewhere"), NONE),
    "roomJoin, this room": Grants(ACME, _video(roomJoin=True, room=ROOM), NONE),
    # Grants LiveKit has that give nothing here.
    "roomRecord, ingressAdmin": Grants(ACME, _video(roomRecord=True, ingressAdmin=True), NONE),
    "video.agent (a worker's)": Grants(ACME, _video(agent=True, roomJoin=True), NONE),
    "sip admin and call": Grants(
        ACME, lambda room: {"sip": {"admin": True, "call": True}}, frozenset({SIP, SIP_CALL})
    ),
    "sip call": Grants(ACME, lambda room: {"sip": {"call": True}}, frozenset({SIP_CALL})),
    # What livekit-api's transfer_sip_participant puts in its token.
    "sip call, roomAdmin this room": Grants(
        ACME,
        lambda room: {**_video(roomAdmin=True, room=ROOM)(room), "sip": {"call": True}},
        frozenset({SIP_CALL, ADMIN}),
    ),
    "sip call, roomAdmin another room": Grants(
        ACME,
        lambda room: {**_video(roomAdmin=True, room="elsewhere")(room), "sip": {"call": True}},
        frozenset({SIP_CALL}),
    ),
    "agent admin": Grants(ACME, lambda room: ADMIN_GRANT, frozenset({AGENTS})),
    # Truthy is not true.  LiveKit cannot parse such a token into its
    # claims and answers unauthenticated; edgedispatch verifies it and
    # finds no grant: refused either way.
    "grants as strings": Grants(
        ACME,
        lambda room: {
            "video": {"roomCreate": "true", "roomList": 1, "roomAdmin": "yes", "room": room},
            "agent": {"admin": "true"},
            "sip": {"admin": "true"},
        },
        NONE,
    ),
    "every grant, another room": Grants(
        ACME, lambda room: {**_every("elsewhere")}, frozenset({CREATE, LIST, AGENTS, SIP})
    ),
    "every grant": Grants(ACME, _every, ALL),
    # The operator's keys are the default tenant's: for rooms, dispatches
    # and agents, the other tenants' are as invisible to it as to anyone.
    "the operator's key, every grant": Grants(OPERATOR, _every, ALL),
    # An agent server's own key acts for its tenant, but manages no agents.
    "an agent server's key, every grant": Grants(
        ACME, _every, frozenset({CREATE, LIST, ADMIN, SIP}), key=PROGRAM_KEY
    ),
}


def expected(row: Row, grants: Grants, mine: Seeded, t: Seeded) -> str:
    if grants.holds is None:
        return UNAUTH
    if not all(need in grants.holds for need in row.needs.split(" & ")):
        return DENIED
    if t is mine:
        return row.own
    return row.same if t.names == SHARED else row.other


def _token(grants: Grants, room: str) -> str | None:
    if grants.claims is None:
        return None
    key, secret = grants.key or KEYS[grants.tenant]
    return token(key, grants.secret or secret, **grants.claims(room))


async def _cell(rpc: tuple[str, str], name: str, target: tuple[str, str]) -> list[str]:
    """One call in a fresh world; what went wrong, if anything."""
    row, grants = ROWS[rpc], GRANTS[name]
    w = await World.make()
    try:
        t = w.seeded[target]
        # The caller's own things by the names the request uses.
        mine = w.seeded[grants.tenant, t.names]
        others = [x for x in TAGS if x != grants.tenant]
        before = {x: w.snapshot(x) for x in others}
        request = row.request(t)
        if isinstance(request, Message):
            body, ctype = request.SerializeToString(), twirp.PROTOBUF
        else:
            body, ctype = json.dumps(request).encode(), twirp.JSON
        answer = await w.call(f"/twirp/{rpc[0]}/{rpc[1]}", body, _token(grants, t.room), ctype)
        got = OK if answer.status == 200 else json.loads(answer.body)["code"]
        want = expected(row, grants, mine, t)
        where = f"{rpc[1]} by {name!r} on {t.tenant or 'operator'}'s {t.room}"
        problems = []
        if got != want:
            problems.append(f"{where}: {got} ({answer.body[:120]!r}), expected {want}")
        elif got != OK and answer.status != twirp.STATUS[got]:
            problems.append(f"{where}: HTTP {answer.status} for {got}")
        # What the request itself named may be echoed (in a not_found message).
        marks = [m.encode() for x in others for m in w.marks(x)]
        leaked = [m for m in marks if m in answer.body and m not in body]
        if leaked:
            problems.append(f"{where}: the answer shows another tenant's {leaked}")
        changed = [x or "operator" for x in others if w.snapshot(x) != before[x]]
        if changed:
            problems.append(f"{where}: changed tenant {changed}")
        if got == want == OK and row.check is not None:
            try:
                row.check(w, mine, t, answer.body)
            except (AssertionError, IndexError) as exc:
                problems.append(f"{where}: succeeded without its effect ({exc!r})")
        return problems
    finally:
        await w.close()


def test_every_routed_rpc_has_a_row() -> None:
    assert set(ROWS) == twirp_methods(), "an RPC without its expected answers, or a stale row"


@pytest.mark.parametrize("rpc", sorted(ROWS), ids=lambda rpc: rpc[1])
def test_each_caller_gets_the_expected_answer_and_nothing_crosses_tenants(
    rpc: tuple[str, str],
) -> None:
    async def main() -> list[str]:
        problems: list[str] = []
        for name, grants in GRANTS.items():
            # The caller's own tenant; globex's, by its own names and by
            # names the caller has too; and the third tenant's.
            third = OPERATOR if grants.tenant != OPERATOR else ACME
            targets = [(grants.tenant, UNIQUE), (GLOBEX, UNIQUE), (GLOBEX, SHARED), (third, UNIQUE)]
            for target in targets:
                problems += await _cell(rpc, name, target)
        return problems

    problems = asyncio.run(main())
    assert not problems, "\n".join(problems)


def test_an_rpc_not_routed_is_bad_route_whatever_the_token() -> None:
    async def main() -> None:
        w = await World.make()
        try:
            unrouted = (f"/twirp/{R}/ForwardParticipant", f"/twirp/{A}/DeleteEverything")
            for path in unrouted:
                tok = token(*KEYS[OPERATOR], **_every("r"))
                answer = await w.call(path, b"{}", tok, twirp.JSON)
                assert (answer.status, json.loads(answer.body)["code"]) == (404, "bad_route")
        finally:
            await w.close()

    asyncio.run(main())


def test_a_retried_request_id_answers_only_for_its_room_and_tenant() -> None:
    # X-Livekit-Request-Id makes CreateDispatch idempotent; the same id
    # sent for another room (or by another tenant) is not that retry, and
    # must not answer with a dispatch the caller holds no grant for.
    async def main() -> None:
        w = await World.make()
        try:
            made = []
            for tenant, room in ((ACME, "room-acme"), (ACME, "lobby"), (GLOBEX, "room-acme")):
                tok = token(*KEYS[tenant], **_video(roomAdmin=True, room=ROOM)(room))
                request = ad.CreateAgentDispatchRequest(agent_name="bot", room=room)
                answer = await w.call(
                    f"/twirp/{D}/CreateDispatch",
                    request.SerializeToString(),
                    tok,
                    twirp.PROTOBUF,
                    **{"x-livekit-request-id": "same-id"},
                )
                assert answer.status == 200, answer.body
                dispatch = _pb(ad.AgentDispatch, answer.body)
                assert dispatch.room == room
                made.append(dispatch.id)
            assert len(set(made)) == 3
        finally:
            await w.close()

    asyncio.run(main())
