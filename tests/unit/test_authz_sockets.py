"""Who the WebSocket endpoints admit: ``/agent`` takes a worker only with the
``video.agent`` grant, ``/rtc`` (and ``/rtc/validate``) a client only with
``roomJoin`` for the room; and neither reaches into another tenant: a
worker gets its own tenant's jobs only, and a client that names another
tenant's room gets a room of its own tenant by that name (the same name in
two tenants names two rooms), with nobody of the other tenant in it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from livekit.protocol import agent, rtc

from edgedispatch._core.codes import JobState
from edgedispatch._testbase.links import RecordingSink
from edgedispatch.wire.http import Request, Response

from .authz_world import (
    ACME,
    GLOBEX,
    KEYS,
    OPERATOR,
    PROGRAM_KEY,
    SHARED,
    UNIQUE,
    WALL,
    World,
    token,
)

ACCEPT = "accepted"


class Socket(RecordingSink):
    """An accepted upgrade's connection, as the app sees it."""

    def keepalive(self, interval: float, timeout: float) -> None:
        pass


def _upgrade(w: World, path: str, tok: str | None, query: str = "", header: bool = True) -> Any:
    headers = {"authorization": f"Bearer {tok}"} if tok and header else {}
    if tok and not header:
        query = f"access_token={tok}" + (f"&{query}" if query else "")
    target = f"{path}?{query}" if query else path
    return w.app.handle_upgrade(
        Request("GET", target, path, query, headers, b"", "10.0.0.9", w.now)
    )


def _tok(tenant: str = ACME, secret: str | None = None, **claims: Any) -> str:
    key, right = KEYS[tenant]
    return token(key, secret or right, **claims)


def _world() -> World:
    async def make() -> World:
        return await World.make()

    return asyncio.run(make())


WORKER = {"video": {"agent": True}}
#: name -> (token, query, sent in the header) and what /agent answers.
AGENT_CALLERS: dict[str, tuple[str | None, bool, object]] = {
    "no token": (None, True, 401),
    "bad signature": (_tok(secret="wrong", **WORKER), True, 401),
    "expired": (_tok(exp=int(WALL) - 120, **WORKER), True, 401),
    "unknown key": (token("nobody", "x", **WORKER), True, 401),
    "empty video grant": (_tok(video={}), True, 401),
    "every room grant": (
        _tok(video={"roomCreate": True, "roomList": True, "roomAdmin": True, "roomJoin": True}),
        True,
        401,
    ),
    # The agent *admin* grant manages definitions; it is not a worker's.
    "agent admin": (_tok(agent={"admin": True}), True, 401),
    "video.agent as a string": (_tok(video={"agent": "true"}), True, 401),
    "video.agent": (_tok(**WORKER), True, ACCEPT),
    "video.agent in ?access_token=": (_tok(**WORKER), False, ACCEPT),
    "the operator's key, video.agent": (_tok(OPERATOR, **WORKER), True, ACCEPT),
    "an agent server's key, video.agent": (token(*PROGRAM_KEY, **WORKER), True, ACCEPT),
}


def test_agent_admits_only_a_verified_token_with_the_agent_grant() -> None:
    world = _world()
    wrong = []
    for name, (tok, header, want) in AGENT_CALLERS.items():
        answer = _upgrade(world, "/agent", tok, header=header)
        got = answer.status if isinstance(answer, Response) else ACCEPT
        if got != want:
            wrong.append(f"{name}: {got}, expected {want}")
    assert not wrong, "\n".join(wrong)


def _register(world: World, tenant: str, agent_name: str = "bot") -> Socket:
    accept = _upgrade(world, "/agent", _tok(tenant, **WORKER))
    conn = Socket()
    session = accept(conn)
    req = agent.RegisterWorkerRequest(type=agent.JT_ROOM, agent_name=agent_name, version="1.8.9")
    session.on_message(agent.WorkerMessage(register=req).SerializeToString(), world.now)
    return conn


def _jobs(world: World, tenant: str) -> list[str]:
    dispatches = world.domain.rooms.dispatches
    return [
        j for n in (UNIQUE, SHARED) for j in dispatches[world.seeded[tenant, n].dispatch_id].job_ids
    ]


def test_a_worker_gets_only_its_tenants_jobs_and_cannot_touch_anothers() -> None:
    world = _world()
    theirs = _jobs(world, GLOBEX)
    assert [world.domain.core.job_state(j)[0] for j in theirs] == [JobState.QUEUED] * 2
    before = world.snapshot(GLOBEX)
    conn = _register(world, ACME)
    sent = [agent.ServerMessage.FromString(m) for m in conn.sent]
    offered = [m.availability.job for m in sent if m.WhichOneof("message") == "availability"]
    # The same agent name in globex waits there.
    assert offered and {j.id for j in offered} <= set(_jobs(world, ACME))
    acme_rooms = {r.sid for r in world.domain.rooms.list_rooms(ACME, [])}
    assert {j.room.sid for j in offered} <= acme_rooms
    # Nor can it claim, report on or answer for globex's jobs.
    session = _upgrade(world, "/agent", _tok(ACME, **WORKER))(Socket())
    for msg in (
        agent.WorkerMessage(register=agent.RegisterWorkerRequest(agent_name="bot")),
        agent.WorkerMessage(migrate_job=agent.MigrateJobRequest(job_ids=theirs)),
        agent.WorkerMessage(
            update_job=agent.UpdateJobStatus(job_id=theirs[0], status=agent.JS_SUCCESS)
        ),
        agent.WorkerMessage(
            availability=agent.AvailabilityResponse(job_id=theirs[0], available=True)
        ),
    ):
        session.on_message(msg.SerializeToString(), world.now)
    assert world.snapshot(GLOBEX) == before


def _join(room: str = "room-acme", identity: str = "u", **video: Any) -> str:
    return _tok(sub=identity, video={"roomJoin": True, "room": room, **video})


#: name -> (token, query) and what /rtc (and /rtc/validate) answer.  Where
#: edgedispatch differs from LiveKit (rtcservice.go, validateInternal):
#: - a verified token that may not join is 403; LiveKit answers 401 (and
#:   400 for an empty identity), as for a token that does not verify;
#: - a token must name its room: LiveKit lets ``roomJoin`` without ``room``
#:   join any room the query names;
#: - a ``?room=`` other than the token's is refused; LiveKit joins the
#:   token's room and ignores the query's.
RTC_CALLERS: dict[str, tuple[str | None, str, object]] = {
    "no token": (None, "", 401),
    "bad signature": (_tok(secret="wrong", sub="u", video={"roomJoin": True}), "", 401),
    "expired": (_tok(sub="u", exp=int(WALL) - 120, video={"roomJoin": True}), "", 401),
    "roomJoin, no room": (_tok(sub="u", video={"roomJoin": True}), "", 403),
    "roomJoin, no identity": (_join(identity=""), "", 403),
    "roomAdmin for the room, no roomJoin": (
        _tok(sub="u", video={"roomAdmin": True, "room": "room-acme"}),
        "",
        403,
    ),
    "video.agent, no roomJoin": (_tok(sub="u", video={"agent": True, "room": "x"}), "", 403),
    "roomJoin as a string": (_tok(sub="u", video={"roomJoin": "true", "room": "x"}), "", 403),
    "roomJoin, another room than asked": (_join("elsewhere"), "room=room-acme", 403),
    "roomJoin for the room": (_join(), "", ACCEPT),
    "roomJoin for the room, asked by name": (_join(), "room=room-acme", ACCEPT),
}


@pytest.mark.parametrize("path", ["/rtc", "/rtc/validate"])
def test_rtc_admits_only_a_verified_token_that_may_join_the_room(path: str) -> None:
    world = _world()
    wrong = []
    for name, (tok, query, want) in RTC_CALLERS.items():
        if path.endswith("validate"):
            headers = {"authorization": f"Bearer {tok}"} if tok else {}
            target = f"{path}?{query}" if query else path
            req = Request("GET", target, path, query, headers, b"", "10.0.0.9", world.now)
            answer = world.app.handle_http(req)
            assert isinstance(answer, Response)
            got: object = ACCEPT if answer.status == 200 else answer.status
        else:
            answer = _upgrade(world, path, tok, query)
            got = answer.status if isinstance(answer, Response) else ACCEPT
        if got != want:
            wrong.append(f"{name}: {got}, expected {want}")
    assert not wrong, "\n".join(wrong)


def _joined(world: World, room: str, identity: str) -> rtc.JoinResponse:
    conn = Socket()
    _upgrade(world, "/rtc", _join(room, identity))(conn)
    assert conn.closed is None
    return rtc.SignalResponse.FromString(conn.sent[0]).join


def test_a_client_naming_another_tenants_room_gets_its_own_room() -> None:
    world = _world()
    theirs = world.seeded[GLOBEX, UNIQUE]
    before = world.snapshot(GLOBEX)
    # acme's token, for globex's room name and globex's participant's identity.
    join = _joined(world, theirs.room, theirs.identity)
    assert join.room.name == theirs.room
    assert join.room.sid == world.domain.rooms.get(ACME, theirs.room).sid
    assert join.room.sid != world.domain.rooms.get(GLOBEX, theirs.room).sid
    assert list(join.other_participants) == []
    # A room name both tenants have: acme's room, with acme's people only.
    join = _joined(world, "lobby", "newcomer")
    assert join.room.sid == world.domain.rooms.get(ACME, "lobby").sid
    ours = world.session(world.seeded[ACME, SHARED])
    assert ours is not None
    assert [p.sid for p in join.other_participants] == [ours.sid]
    # globex's participants were neither replaced nor told.
    assert world.snapshot(GLOBEX) == before
