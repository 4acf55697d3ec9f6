"""Call admission (``calls.admission``) on a fake clock: INVITEs per source
address, concurrent calls per tenant and in all; and, through the UAS core
and ``calls.inbound``, what a trunk sees (486, 503 with Retry-After,
silence) and that a call's count ends with the call, however it ends."""

from __future__ import annotations

import itertools

from livekit.protocol import sip as pb

from edgedispatch.calls.admission import Admission, Refusal
from edgedispatch.calls.inbound import InboundCalls
from edgedispatch.config import Config, DispatchConfig, RoomConfig, SipConfig, TenantConfig
from edgedispatch.dispatch.domain import Domain
from edgedispatch.sip.digest import DigestAuth
from edgedispatch.sip.directory import Directory
from edgedispatch.sip.message import Response, parse_datagram
from edgedispatch.sip.uas import UserAgentServer
from edgedispatch.store import MemoryStore


def test_a_source_gets_its_burst_then_its_rate_then_503_with_retry_after() -> None:
    adm = Admission(rate=2.0, burst=3)
    assert [adm.arrived("10.0.0.1", 0.0) for _ in range(3)] == [None, None, None]
    refused = adm.arrived("10.0.0.1", 0.0)
    assert refused is not None and refused.status == 503 and not refused.drop
    assert refused.retry_after == 1 and refused.headers() == [("retry-after", "1")]
    assert adm.arrived("10.0.0.2", 0.0) is None  # another source is untouched
    # Its debt (one INVITE sent while refused) is paid back first: 1.5 s at 2/s.
    assert adm.arrived("10.0.0.1", 0.9) is not None
    assert adm.arrived("10.0.0.1", 3.0) is None


def test_a_source_that_keeps_sending_is_dropped_and_comes_back_when_it_stops() -> None:
    adm = Admission(rate=1.0, burst=2)
    results = [adm.arrived("198.51.100.7", 0.0) for _ in range(8)]
    assert results[:2] == [None, None]
    assert [r.drop for r in results[2:] if r is not None] == [False, False, True, True, True, True]
    assert adm.arrived("198.51.100.7", 0.5) is not None  # still in debt
    assert adm.arrived("198.51.100.7", 10.0) is None  # paid back: welcome again


def test_the_source_table_is_bounded_and_forgets_the_least_recently_seen() -> None:
    adm = Admission(rate=1.0, burst=1, max_sources=3)
    for i in range(3):
        adm.arrived(f"10.0.0.{i}", 0.0)
    adm.arrived("10.0.0.0", 0.1)  # seen again: now the most recent
    adm.arrived("10.0.0.9", 0.2)
    assert adm.sources() == 3
    # 10.0.0.1 was forgotten (a fresh bucket); 10.0.0.0 was not (still empty).
    assert adm.arrived("10.0.0.1", 0.3) is None
    assert adm.arrived("10.0.0.0", 0.3) is not None


def test_no_rate_limit_when_the_rate_is_zero() -> None:
    adm = Admission(rate=0.0)
    assert all(adm.arrived("127.0.0.1", 0.0) is None for _ in range(10_000))
    assert adm.sources() == 0


def test_a_tenant_over_its_calls_gets_486_and_the_server_over_its_own_503() -> None:
    adm = Admission(max_calls=3, max_calls_per_tenant=2)
    assert adm.admit("acme", "a1") is None and adm.admit("acme", "a2") is None
    busy = adm.admit("acme", "a3")
    assert busy == Refusal(486, "the tenant's calls are all in use")
    assert adm.admit("globex", "g1") is None  # another tenant's line is free
    full = adm.admit("globex", "g2")
    assert full is not None and full.status == 503 and full.retry_after > 0
    assert (adm.calls(), adm.calls("acme"), adm.calls("globex")) == (3, 2, 1)
    adm.ended("a1")
    adm.ended("a1")  # twice: counted once
    adm.ended("never-admitted")
    assert (adm.calls(), adm.calls("acme")) == (2, 1)
    assert adm.admit("acme", "a3") is None
    assert adm.admit("acme", "a3") is None  # the same call again: not counted twice
    assert adm.calls("acme") == 2


def test_defaults_are_finite_and_a_tenant_may_have_its_own_limit() -> None:
    adm = Admission.from_config(Config())
    assert adm.max_calls > 0 and adm.max_calls_per_tenant > 0 and adm.rate > 0
    cfg = Config(
        sip=SipConfig(max_calls_per_tenant=1),
        tenants=[TenantConfig("big", max_calls=3), TenantConfig("open", max_calls=0)],
    )
    adm = Admission.from_config(cfg)
    assert [adm.admit("big", f"b{i}") for i in range(4)][-1] == Refusal(
        486, "the tenant's calls are all in use"
    )
    assert all(adm.admit("open", f"o{i}") is None for i in range(50))
    assert adm.admit("small", "s1") is None and adm.admit("small", "s2") is not None


# -- through the UAS core and calls.inbound -------------------------------

CALLER = ("203.0.113.5", 5061)


def invite(call_id: str, number: str = "+15550100", transport: str = "UDP") -> bytes:
    return (
        f"INVITE sip:{number}@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} 203.0.113.5:5061;branch=z9hG4bK-{call_id}\r\n"
        f"From: <sip:+15550199@203.0.113.5>;tag=caller\r\nTo: <sip:{number}@127.0.0.1>\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:caller@203.0.113.5:5061>\r\n"
        "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()


class Edge:
    """A UAS with ``calls.inbound`` deciding, driven as ``net.sip`` does."""

    def __init__(self, admission: Admission) -> None:
        tags = (f"t{i}" for i in itertools.count())
        self.ua = UserAgentServer("sip:edge@127.0.0.1:5060", lambda: next(tags))
        directory = Directory(MemoryStore(), lambda prefix: f"{prefix}{next(tags)}")
        for tenant, number in (("acme", "+15550100"), ("globex", "+15550200")):
            trunk = directory.create_inbound(tenant, pb.SIPInboundTrunkInfo(numbers=[number]), 0)
            rule = pb.SIPDispatchRule(dispatch_rule_direct=pb.SIPDispatchRuleDirect(room_name="r"))
            directory.create_rule(
                tenant,
                pb.CreateSIPDispatchRuleRequest(
                    dispatch_rule=pb.SIPDispatchRuleInfo(rule=rule, trunk_ids=[trunk.sip_trunk_id])
                ),
                0,
            )
        domain = Domain(DispatchConfig(), RoomConfig())
        self.calls = InboundCalls(
            directory, domain, DigestAuth(b"k" * 32), lambda: "x", admission=admission
        )

    def send(self, data: bytes, now: float, source: tuple[str, int] = CALLER) -> list[Response]:
        self.ua.receive_datagram(data, source, now)
        while events := self.ua.take_events():
            for event in events:
                self.calls.on_event(self.ua, event, now)
        answers = [parse_datagram(d) for d, _ in self.ua.take_outgoing()]
        return [a for a in answers if isinstance(a, Response)]


def test_an_invite_flood_from_one_address_gets_503_then_silence() -> None:
    edge = Edge(Admission(rate=1.0, burst=2))
    statuses = [[a.status for a in edge.send(invite(f"c{i}"), 0.0)] for i in range(7)]
    # Two calls go through admission (and are refused further on, as every
    # routed call is until the bridge), then 503, then nothing at all.
    assert statuses[:2] == [[480], [480]]
    assert statuses[2:4] == [[503], [503]]
    assert statuses[4:] == [[], [], []]
    (busy,) = edge.send(invite("c99"), 0.1, source=("203.0.113.6", 5061))
    assert busy.status == 480  # another address is served
    assert edge.ua.calls == {} and edge.calls.admission.calls() == 0
    # A dropped INVITE leaves nothing behind: its copy is a new request.
    assert len(edge.ua.transactions) == 5


def test_a_503_for_the_rate_carries_retry_after() -> None:
    edge = Edge(Admission(rate=0.5, burst=1))
    edge.send(invite("c1"), 0.0)
    (refused,) = edge.send(invite("c2"), 0.0)
    assert refused.status == 503 and refused.headers.get("retry-after") == "4"
    assert "too many calls" in refused.headers.get("reason")


def test_a_dropped_invite_over_tcp_still_gets_its_503() -> None:
    edge = Edge(Admission(rate=1.0, burst=1))
    edge.send(invite("c1"), 0.0)
    for i in range(2, 4):
        tcp = parse_datagram(invite(f"c{i}", transport="TCP"))
        edge.ua.receive(tcp, CALLER, 0.0, reliable=True)
        for event in edge.ua.take_events():
            edge.calls.on_event(edge.ua, event, 0.0)
    sent = [parse_datagram(d) for d, _ in edge.ua.take_outgoing()]
    assert [m.status for m in sent if isinstance(m, Response)] == [503, 503]


def test_quotas_count_calls_until_they_end() -> None:
    """A call counts from its admission to its end; refused calls end at
    once today (calls are not bridged yet), so the count goes back to 0."""
    adm = Admission(max_calls=1, max_calls_per_tenant=1, rate=0.0)
    edge = Edge(adm)
    # Held open as an answered call would be: admitted, not decided yet.
    edge.ua.receive_datagram(invite("held"), CALLER, 0.0)
    (incoming,) = edge.ua.take_events()
    assert adm.admit("acme", incoming.call_id) is None  # type: ignore[attr-defined]
    edge.ua.take_outgoing()  # its 100 Trying
    (full,) = edge.send(invite("c2", number="+15550200"), 0.1)
    assert full.status == 503 and full.headers.get("retry-after")
    adm.max_calls = 0
    (busy,) = edge.send(invite("c3"), 0.2)
    assert busy.status == 486  # acme's one line is taken
    (other,) = edge.send(invite("c4", number="+15550200"), 0.3)
    assert other.status == 480  # globex's is free: admitted, then refused further on
    assert adm.calls() == 1
    edge.ua.hang_up("held", 0.4)  # the held call ends (480 to its INVITE)
    edge.send(b"", 0.5)
    assert adm.calls() == 0 and edge.send(invite("c5"), 0.6)[0].status == 480
