"""``calls.inbound``: a rule's agents must be able to run, or the call gets
480 and never a silent room.  An agent can run if a worker of it is
connected, or if an agent server of it would be started on demand (one
that is idle now: the call's dispatch starts it)."""

from __future__ import annotations

import itertools

from livekit.protocol import agent_dispatch
from livekit.protocol import room as room_pb
from livekit.protocol import sip as pb

from edgedispatch.calls.inbound import InboundCalls
from edgedispatch.config import DispatchConfig, RoomConfig
from edgedispatch.dispatch.domain import Domain
from edgedispatch.sip.digest import DigestAuth
from edgedispatch.sip.directory import Directory
from edgedispatch.sip.message import Response, parse_datagram
from edgedispatch.sip.uas import UserAgentServer
from edgedispatch.store import MemoryStore

from .test_admission import CALLER, invite

CANNOT = "SIP;cause=480;text=\"agent 'bot' cannot run now\""
NOT_BRIDGED = 'SIP;cause=480;text="calls are not bridged here: rooms are off"'


def reason_for(on_demand: set[tuple[str, str]] | None, tenant: str = "acme") -> str:
    """The final answer's Reason header to a call to ``tenant``'s number, whose rule
    names agent "bot" (no worker connected); ``on_demand``: the (tenant,
    agent) pairs with an agent server to start."""
    tags = (f"t{i}" for i in itertools.count())
    ua = UserAgentServer("sip:edge@127.0.0.1:5060", lambda: next(tags))
    directory = Directory(MemoryStore(), lambda prefix: f"{prefix}{next(tags)}")
    for name, number in (("acme", "+15550100"), ("globex", "+15550200")):
        trunk = directory.create_inbound(name, pb.SIPInboundTrunkInfo(numbers=[number]), 0)
        rule = pb.SIPDispatchRuleInfo(
            rule=pb.SIPDispatchRule(dispatch_rule_direct=pb.SIPDispatchRuleDirect(room_name="r")),
            trunk_ids=[trunk.sip_trunk_id],
            room_config=room_pb.RoomConfiguration(
                agents=[agent_dispatch.RoomAgentDispatch(agent_name="bot")]
            ),
        )
        directory.create_rule(name, pb.CreateSIPDispatchRuleRequest(dispatch_rule=rule), 0)
    calls = InboundCalls(
        directory,
        Domain(DispatchConfig(), RoomConfig()),
        DigestAuth(b"k" * 32),
        lambda: "x",
        on_demand=None if on_demand is None else lambda t, a: (t, a) in on_demand,
    )
    number = "+15550100" if tenant == "acme" else "+15550200"
    ua.receive_datagram(invite("c1", number), CALLER, 0.0)
    for event in ua.take_events():
        calls.on_event(ua, event, 0.0)
    answers = [parse_datagram(d) for d, _ in ua.take_outgoing()]
    (final,) = [a for a in answers if isinstance(a, Response) and a.status >= 200]
    assert final.status == 480
    return final.headers.get("reason")


def test_an_agent_with_no_worker_and_no_agent_server_refuses_the_call() -> None:
    assert reason_for(None) == CANNOT
    assert reason_for(set()) == CANNOT
    # Another tenant's agent server of the same name does not count.
    assert reason_for({("globex", "bot")}) == CANNOT


def test_an_idle_agent_server_of_the_tenant_takes_the_call() -> None:
    # Past the agents' check (this core has no rooms: the next refusal).
    assert reason_for({("acme", "bot")}) == NOT_BRIDGED
    assert reason_for({("acme", "bot")}, tenant="globex") == CANNOT
