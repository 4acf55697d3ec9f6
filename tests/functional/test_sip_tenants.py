"""The headline of phone calls: two tenants on one server, each with its
own number, inbound trunk, dispatch rule and agent server, all made with
the tenant's own key.  A call to a tenant's number (sipp) reaches a room
of that tenant, where that tenant's agent, started on demand (an
unmodified livekit-agents app, ``examples/phone_agent.py``), hears of
the caller; the other tenant's agent is never started, and the other
tenant's key sees none of it."""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from livekit import api
from livekit.protocol import sip as pb

from .conftest import ServerThread
from .test_local_agents import admin_call
from .test_rooms import run
from .test_sip_calls import CALLER, ok, sipp_call

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
#: The agents' code is the tenants' own (allow_code): each adds its agent.
TENANTS = {
    "acme": {"keys": {"acme-key": "acme-secret"}, "allow_code": True},
    "globex": {"keys": {"globex-key": "globex-secret"}, "allow_code": True},
}
KEYS = {"acme": ("acme-key", "acme-secret"), "globex": ("globex-key", "globex-secret")}
NUMBERS = {"acme": "+15550100", "globex": "+15550200"}
OTHER = {"acme": "globex", "globex": "acme"}

pytestmark = [
    pytest.mark.skipif(not shutil.which("sipp"), reason="sipp (sip-tester) missing"),
    pytest.mark.media,
]


def agent(srv: ServerThread, tenant: str) -> dict[str, Any]:
    """The tenant's receptionist, as ``agent list`` shows it to the tenant."""
    key, secret = KEYS[tenant]
    status, out = admin_call(srv, "ListAgents", {}, key=key, secret=secret)
    assert status == 200, out
    (mine,) = out["agents"]  # its own only
    return mine


def set_up(srv: ServerThread, tenant: str) -> tuple[str, str]:
    """What a tenant does, with its own key: adds its agent server, an
    inbound trunk for its number and a rule that dispatches the agent into
    a room per call.  Returns (trunk id, rule id)."""
    key, secret = KEYS[tenant]
    definition = {
        "name": "receptionist",
        "worker": [sys.executable, str(EXAMPLES / "phone_agent.py"), "start"],
        "cwd": str(EXAMPLES),
        "env": {"COMPANY": tenant},
    }
    status, out = admin_call(srv, "AddAgent", {"agent": definition}, key=key, secret=secret)
    assert status == 200, out

    async def sip() -> tuple[str, str]:
        async with api.LiveKitAPI(srv.url, key, secret) as lk:
            trunk = await lk.sip.create_inbound_trunk(
                pb.CreateSIPInboundTrunkRequest(
                    trunk=pb.SIPInboundTrunkInfo(name=f"{tenant} line", numbers=[NUMBERS[tenant]])
                )
            )
            individual = pb.SIPDispatchRuleIndividual(room_prefix=f"{tenant}-call")
            rule = await lk.sip.create_dispatch_rule(
                pb.CreateSIPDispatchRuleRequest(
                    dispatch_rule=pb.SIPDispatchRuleInfo(
                        rule=pb.SIPDispatchRule(dispatch_rule_individual=individual),
                        trunk_ids=[trunk.sip_trunk_id],
                        room_config=api.RoomConfiguration(
                            agents=[api.RoomAgentDispatch(agent_name="receptionist")]
                        ),
                    )
                )
            )
            return trunk.sip_trunk_id, rule.sip_dispatch_rule_id

    return run(sip)


SIP = api.ParticipantInfo.Kind.SIP  # type: ignore[attr-defined]
AGENT = api.ParticipantInfo.Kind.AGENT  # type: ignore[attr-defined]


async def answered(lk: api.LiveKitAPI) -> tuple[api.Room, list[api.ParticipantInfo]]:
    """The tenant's call room, once an agent there has said whom it
    answered: (the room, its participants)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for room in (await lk.room.list_rooms(api.ListRoomsRequest())).rooms:
            people = await lk.room.list_participants(api.ListParticipantsRequest(room=room.name))
            if any("answered.for" in p.attributes for p in people.participants):
                return room, list(people.participants)
        await asyncio.sleep(0.1)
    raise AssertionError("no agent answered a call within 30 s")


def test_each_tenants_number_reaches_its_own_agent_started_on_demand(
    start_server: Callable[..., ServerThread], tmp_path: Path
) -> None:
    srv = start_server(
        tenants=TENANTS,
        sip={"enabled": True, "port": 0, "rtp_port_min": 40000, "rtp_port_max": 40999},
        rtc={"media_workers": 1},
    )
    ids = {tenant: set_up(srv, tenant) for tenant in KEYS}
    for tenant in KEYS:  # nothing runs until a call wants it
        assert agent(srv, tenant)["state"] == "idle"

    for tenant, other in OTHER.items():

        async def place(tenant: str = tenant) -> tuple[api.Room, list[api.ParticipantInfo]]:
            key, secret = KEYS[tenant]
            call = asyncio.create_task(
                asyncio.to_thread(
                    sipp_call, srv, tmp_path, "call_server_hangs_up", number=NUMBERS[tenant]
                )
            )
            async with api.LiveKitAPI(srv.url, key, secret) as lk:
                seen = asyncio.ensure_future(answered(lk))
                await asyncio.wait([seen, call], return_when=asyncio.FIRST_COMPLETED)
                if not seen.done():  # the call ended first (a 480?): sipp says why
                    seen.cancel()
                    ok(call.result())
                room, people = seen.result()
                # The tenant hangs up by closing its room: the caller gets a BYE.
                await lk.room.delete_room(api.DeleteRoomRequest(room=room.name))
            ok(await call)
            return room, people

        room, people = run(place)
        # The call reached a room of the tenant's rule: the caller, through
        # the tenant's trunk and rule, and one agent ...
        assert room.name.startswith(f"{tenant}-call_{CALLER}_")
        assert sorted(p.kind for p in people) == sorted([SIP, AGENT])
        (phone,) = [p for p in people if p.kind == SIP]
        assert phone.identity == f"sip_{CALLER}"
        assert phone.attributes["sip.trunkID"] == ids[tenant][0]
        assert phone.attributes["sip.ruleID"] == ids[tenant][1]
        # ... the tenant's own, started for the call, which saw that caller
        # call the tenant's number.
        (receptionist,) = [p for p in people if p.kind == AGENT]
        assert receptionist.attributes["lk.agent.name"] == "receptionist"
        said = {k: v for k, v in receptionist.attributes.items() if k.startswith("answered.")}
        assert said == {
            "answered.for": tenant,
            "answered.caller": f"sip_{CALLER}",
            "answered.number": NUMBERS[tenant],
        }
        (instance,) = agent(srv, tenant)["instances"]
        assert instance["state"] == "registered"
        if other == "globex":  # the other tenant's agent was not started by it
            untouched = agent(srv, other)
            assert untouched["state"] == "idle" and untouched["instances"] == []

    # Neither tenant's key sees, or touches, the other's trunks, rules and rooms.
    async def isolated() -> None:
        for tenant, other in OTHER.items():
            key, secret = KEYS[tenant]
            trunk_id, rule_id = ids[tenant]
            other_trunk, other_rule = ids[other]
            async with api.LiveKitAPI(srv.url, key, secret) as lk:
                trunks = await lk.sip.list_inbound_trunk(pb.ListSIPInboundTrunkRequest())
                assert [t.sip_trunk_id for t in trunks.items] == [trunk_id]
                rules = await lk.sip.list_dispatch_rule(pb.ListSIPDispatchRuleRequest())
                assert [r.sip_dispatch_rule_id for r in rules.items] == [rule_id]
                asked = await lk.sip.list_inbound_trunk(
                    pb.ListSIPInboundTrunkRequest(trunk_ids=[other_trunk])
                )
                assert [t.sip_trunk_id for t in asked.items if t.sip_trunk_id] == []
                with pytest.raises(api.TwirpError) as info:
                    await lk.sip.delete_dispatch_rule(
                        pb.DeleteSIPDispatchRuleRequest(sip_dispatch_rule_id=other_rule)
                    )
                assert info.value.code == "not_found"
                rooms = (await lk.room.list_rooms(api.ListRoomsRequest())).rooms
                assert not any(r.name.startswith(f"{other}-call") for r in rooms)

    run(isolated)
