"""A tenant's phone lines, with livekit-api's ``lkapi.sip`` and the
tenant's own key (``LIVEKIT_URL``, ``LIVEKIT_API_KEY``,
``LIVEKIT_API_SECRET``), as in the README's "A two-tenant phone set-up".

    python phone_lines.py add NUMBER --agent NAME [--prefix P]
        an inbound trunk for NUMBER and a dispatch rule putting each call
        into a room of its own (P_<caller>_<random>) with agent NAME
    python phone_lines.py list
        the tenant's trunks and rules
    python phone_lines.py calls
        the tenant's rooms, who is in each, and what its agents say
"""

import argparse
import asyncio

from livekit import api


async def add(lk: api.LiveKitAPI, number: str, agent: str, prefix: str) -> None:
    trunk = await lk.sip.create_inbound_trunk(
        api.CreateSIPInboundTrunkRequest(
            trunk=api.SIPInboundTrunkInfo(name=f"line {number}", numbers=[number])
        )
    )
    rule = await lk.sip.create_dispatch_rule(
        api.CreateSIPDispatchRuleRequest(
            dispatch_rule=api.SIPDispatchRuleInfo(
                rule=api.SIPDispatchRule(
                    dispatch_rule_individual=api.SIPDispatchRuleIndividual(room_prefix=prefix)
                ),
                trunk_ids=[trunk.sip_trunk_id],
                room_config=api.RoomConfiguration(agents=[api.RoomAgentDispatch(agent_name=agent)]),
            )
        )
    )
    print(f"trunk {trunk.sip_trunk_id} for {number}; rule {rule.sip_dispatch_rule_id} -> {agent}")


async def show(lk: api.LiveKitAPI) -> None:
    trunks = await lk.sip.list_inbound_trunk(api.ListSIPInboundTrunkRequest())
    for t in trunks.items:
        print(f"trunk {t.sip_trunk_id} {t.name!r} numbers {list(t.numbers)}")
    rules = await lk.sip.list_dispatch_rule(api.ListSIPDispatchRuleRequest())
    for r in rules.items:
        agents = [a.agent_name for a in r.room_config.agents]
        print(f"rule {r.sip_dispatch_rule_id} trunks {list(r.trunk_ids)} agents {agents}")


async def calls(lk: api.LiveKitAPI) -> None:
    rooms = (await lk.room.list_rooms(api.ListRoomsRequest())).rooms
    if not rooms:
        print("no rooms")
    for room in rooms:
        print(room.name)
        people = await lk.room.list_participants(api.ListParticipantsRequest(room=room.name))
        for p in people.participants:
            kind = api.ParticipantInfo.Kind.Name(p.kind)
            said = {k: v for k, v in p.attributes.items() if k.startswith("answered.")}
            print(f"  {kind:<6} {p.identity}  {said or ''}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    a = sub.add_parser("add")
    a.add_argument("number")
    a.add_argument("--agent", required=True)
    a.add_argument("--prefix", default="call")
    sub.add_parser("list")
    sub.add_parser("calls")
    args = parser.parse_args()
    async with api.LiveKitAPI() as lk:  # LIVEKIT_URL, LIVEKIT_API_KEY, LIVEKIT_API_SECRET
        if args.action == "add":
            await add(lk, args.number, args.agent, args.prefix)
        elif args.action == "list":
            await show(lk)
        else:
            await calls(lk)


if __name__ == "__main__":
    asyncio.run(main())
