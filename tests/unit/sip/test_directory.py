"""The tenants' trunks and rules (``sip.directory``): LiveKit's updates,
filters and pagination, what one tenant's records do to another's, and the
records read back from the store."""

from __future__ import annotations

import itertools
import re

import pytest
from livekit.protocol import models
from livekit.protocol import sip as pb

from edgedispatch.errors import InvalidArgument, NoCallRoute, NotFound
from edgedispatch.sip.directory import Directory
from edgedispatch.sip.routing import Call
from edgedispatch.store import MemoryStore

WALL = 1_800_000_000.0


def _directory(store: MemoryStore | None = None) -> Directory:
    counter = itertools.count(1)
    return Directory(store or MemoryStore(), lambda prefix: f"{prefix}{next(counter):04d}")


def _rule_request(room: str, **fields: object) -> pb.CreateSIPDispatchRuleRequest:
    rule = pb.SIPDispatchRule(dispatch_rule_direct=pb.SIPDispatchRuleDirect(room_name=room))
    return pb.CreateSIPDispatchRuleRequest(
        dispatch_rule=pb.SIPDispatchRuleInfo(rule=rule, **fields)
    )


def test_list_updates_as_livekit_applies_them() -> None:
    d = _directory()
    trunk = d.create_inbound("t", pb.SIPInboundTrunkInfo(numbers=["+1", "+2"]), WALL)

    def update(**lists: models.ListUpdate) -> list[str]:
        req = pb.UpdateSIPInboundTrunkRequest(
            sip_trunk_id=trunk.sip_trunk_id, update=pb.SIPInboundTrunkUpdate(**lists)
        )
        return list(d.update_inbound("t", req, WALL).numbers)

    assert update(numbers=models.ListUpdate(add=["+3", "+1"], remove=["+2"])) == ["+1", "+3"]
    assert update(numbers=models.ListUpdate(set=["+9"])) == ["+9"]
    for bad, why in (
        (models.ListUpdate(), "unsupported list update operation"),
        (models.ListUpdate(clear=True, add=["+1"]), "cannot clear and change"),
        (models.ListUpdate(set=["+1"], add=["+2"]), "cannot set and change"),
        (models.ListUpdate(add=[""]), "empty element"),
    ):
        with pytest.raises(InvalidArgument, match=why):
            update(numbers=bad)
    # Clearing the only thing that says whose calls it takes is refused.
    with pytest.raises(InvalidArgument, match="for security"):
        update(numbers=models.ListUpdate(clear=True))
    assert list(d.inbound_trunk("t", trunk.sip_trunk_id).numbers) == ["+9"]


def test_replace_keeps_the_id_and_creation_time() -> None:
    d = _directory()
    made = d.create_rule("t", _rule_request("a", name="first"), WALL)
    replace = pb.SIPDispatchRuleInfo(
        rule=pb.SIPDispatchRule(dispatch_rule_callee=pb.SIPDispatchRuleCallee(room_prefix="c")),
        name="second",
    )
    req = pb.UpdateSIPDispatchRuleRequest(
        sip_dispatch_rule_id=made.sip_dispatch_rule_id, replace=replace
    )
    got = d.update_rule("t", req, WALL + 5)
    assert (got.sip_dispatch_rule_id, got.name) == (made.sip_dispatch_rule_id, "second")
    assert got.created_at == made.created_at and got.updated_at.seconds == int(WALL) + 5
    mismatch = pb.UpdateSIPDispatchRuleRequest(
        sip_dispatch_rule_id=made.sip_dispatch_rule_id,
        replace=pb.SIPDispatchRuleInfo(sip_dispatch_rule_id="SDR_other", rule=replace.rule),
    )
    with pytest.raises(InvalidArgument, match="must be empty or match"):
        d.update_rule("t", mismatch, WALL)
    with pytest.raises(InvalidArgument, match="missing or unsupported update action"):
        d.update_rule("t", pb.UpdateSIPDispatchRuleRequest(sip_dispatch_rule_id="x"), WALL)


def test_rule_field_updates_and_attribute_removal() -> None:
    d = _directory()
    made = d.create_rule("t", _rule_request("a", attributes={"keep": "1", "drop": "2"}), WALL)
    update = pb.SIPDispatchRuleUpdate(
        metadata="m", attributes={"drop": "", "new": "3"}, trunk_ids=models.ListUpdate(add=["ST_x"])
    )
    req = pb.UpdateSIPDispatchRuleRequest(
        sip_dispatch_rule_id=made.sip_dispatch_rule_id, update=update
    )
    got = d.update_rule("t", req, WALL)
    assert dict(got.attributes) == {"keep": "1", "new": "3"}
    assert (got.metadata, list(got.trunk_ids)) == ("m", ["ST_x"])


def test_an_update_that_would_conflict_is_refused_and_changes_nothing() -> None:
    d = _directory()
    d.create_rule("t", _rule_request("a", numbers=["+1"]), WALL)
    second = d.create_rule("t", _rule_request("b", numbers=["+2"]), WALL)
    req = pb.UpdateSIPDispatchRuleRequest(
        sip_dispatch_rule_id=second.sip_dispatch_rule_id,
        replace=pb.SIPDispatchRuleInfo(rule=second.rule, numbers=["+1"]),
    )
    with pytest.raises(InvalidArgument, match="already exists in dispatch rule"):
        d.update_rule("t", req, WALL)
    assert list(d.rule("t", second.sip_dispatch_rule_id).numbers) == ["+2"]


def test_filters_and_pages() -> None:
    d = _directory()
    a = d.create_inbound("t", pb.SIPInboundTrunkInfo(numbers=["+1 555 0100"]), WALL)
    b = d.create_inbound("t", pb.SIPInboundTrunkInfo(numbers=["+15550200"]), WALL)
    c = d.create_inbound("t", pb.SIPInboundTrunkInfo(allowed_addresses=["10.0.0.1"]), WALL)
    ids = [a.sip_trunk_id, b.sip_trunk_id, c.sip_trunk_id]

    def listed(**req: object) -> list[str]:
        got = d.list_inbound("t", pb.ListSIPInboundTrunkRequest(**req))
        return [t.sip_trunk_id for t in got]

    # Inbound numbers compare normalised; a trunk for any number is listed too.
    assert listed(numbers=["+15550100"]) == [ids[0], ids[2]]
    assert listed(trunk_ids=[ids[1]]) == [ids[1]]
    assert listed(page=models.Pagination(limit=2)) == ids[:2]
    assert listed(page=models.Pagination(after_id=ids[0])) == ids[1:]
    r1 = d.create_rule("t", _rule_request("r1", trunk_ids=[ids[0]]), WALL)
    r2 = d.create_rule("t", _rule_request("r2", trunk_ids=[ids[1]]), WALL)
    r3 = d.create_rule("t", _rule_request("r3"), WALL)
    by_trunk = d.list_rules("t", pb.ListSIPDispatchRuleRequest(trunk_ids=[ids[0]]))
    # A rule for every trunk is a rule for the trunk asked about.
    assert [r.sip_dispatch_rule_id for r in by_trunk] == [
        r1.sip_dispatch_rule_id,
        r3.sip_dispatch_rule_id,
    ]
    by_id = d.list_rules(
        "t", pb.ListSIPDispatchRuleRequest(dispatch_rule_ids=[r2.sip_dispatch_rule_id])
    )
    assert [r.name for r in by_id] == [r2.name]


def test_outbound_trunks_need_numbers_and_an_address_not_a_uri() -> None:
    d = _directory()
    for trunk, why in (
        (pb.SIPOutboundTrunkInfo(address="x"), "no trunk numbers specified"),
        (pb.SIPOutboundTrunkInfo(numbers=["+1"]), "no outbound address specified"),
        (pb.SIPOutboundTrunkInfo(numbers=["+1"], address="sip:x@y"), "not SIP URI"),
        (pb.SIPOutboundTrunkInfo(numbers=["+1"], address="x;transport=tcp"), "transport"),
        (
            pb.SIPOutboundTrunkInfo(numbers=["+1"], address="x", sip_trunk_id="ST_1"),
            "trunk id must not be set",
        ),
    ):
        with pytest.raises(InvalidArgument, match=why):
            d.create_outbound("t", trunk, WALL)


def test_tenants_route_by_number_and_never_see_each_other() -> None:
    d = _directory()
    acme = d.create_inbound("acme", pb.SIPInboundTrunkInfo(numbers=["+15550100"]), WALL)
    globex = d.create_inbound("globex", pb.SIPInboundTrunkInfo(numbers=["+15550200"]), WALL)
    # The same rule in two tenants is no conflict: each is a project of its own.
    acme_rule = d.create_rule("acme", _rule_request("lobby"), WALL)
    globex_rule = d.create_rule("globex", _rule_request("lobby"), WALL)
    for tenant, number, trunk, rule in (
        ("acme", "+15550100", acme, acme_rule),
        ("globex", "+1 (555) 0200", globex, globex_rule),
    ):
        got = d.route(Call(calling="+1999", called=number))
        assert got == (tenant, trunk, rule)
    with pytest.raises(NoCallRoute, match="Does not match any SIP Trunks"):
        d.route(Call(calling="+1999", called="+15550300"))
    with pytest.raises(NotFound):
        d.inbound_trunk("globex", acme.sip_trunk_id)
    with pytest.raises(NotFound):
        d.delete_rule("globex", acme_rule.sip_dispatch_rule_id)
    # A number one tenant takes is refused to another, naming no trunk of it.
    with pytest.raises(InvalidArgument, match="another tenant's") as caught:
        d.create_inbound("globex", pb.SIPInboundTrunkInfo(numbers=["15550100"]), WALL)
    assert acme.sip_trunk_id not in caught.value.msg
    # Without the rule, acme's calls are not routed to globex's.
    d.delete_rule("acme", acme_rule.sip_dispatch_rule_id)
    with pytest.raises(NoCallRoute, match="No SIP Dispatch Rules defined"):
        d.route(Call(calling="+1999", called="+15550100"))


def test_records_are_read_back_from_the_store() -> None:
    store = MemoryStore()
    d = _directory(store)
    trunk = d.create_inbound("acme", pb.SIPInboundTrunkInfo(numbers=["+1"], name="in"), WALL)
    out = d.create_outbound("acme", pb.SIPOutboundTrunkInfo(numbers=["+1"], address="x"), WALL)
    legacy = d.create_legacy("acme", pb.CreateSIPTrunkRequest(outbound_number="+2"), WALL)
    rule = d.create_rule("globex", _rule_request("lobby", metadata="m"), WALL)
    d.delete_trunk("acme", out.sip_trunk_id)
    again = Directory(store, lambda prefix: prefix + "new")
    assert again.inbound_trunks("acme") == [trunk, d.inbound_trunk("acme", legacy.sip_trunk_id)]
    assert again.outbound_trunks("acme") == d.outbound_trunks("acme")
    assert again.rules("globex") == [rule] and again.rules("acme") == []


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        (
            {"headers": {"X-Ok": "a\r\nVia: x"}},
            "invalid header value for X-Ok: header X-Ok: value: char 13",
        ),
        ({"headers": {"X Bad": "1"}}, "header name X Bad contains invalid characters: char 32"),
        ({"headers": {"Call-ID": "1"}}, "invalid header name: header name Call-ID not supported"),
        ({"headers": {"X-Long": "v" * 1025}}, "value too long"),
        ({"headers_to_attributes": {"": "attr"}}, "header name cannot be empty"),
        ({"attributes_to_headers": {"attr": "X:Y"}}, "contains invalid characters: char 58"),
        (
            {"media": pb.SIPMediaConfig(codecs=[pb.SIPCodec(name="PCMU/8000")])},
            "must not contain '/'",
        ),
        ({"media": pb.SIPMediaConfig(codecs=[pb.SIPCodec()])}, "missing codec name"),
    ],
)
def test_headers_and_media_are_checked_as_livekit_checks_them(
    fields: dict[str, object], why: str
) -> None:
    d = _directory()
    with pytest.raises(InvalidArgument, match=re.escape(why)):
        d.create_inbound("t", pb.SIPInboundTrunkInfo(numbers=["+1"], **fields), WALL)
    # A header of its own, with UTF-8 in its value, is fine.
    fine = {"X-Customer": "Zoë"}
    assert d.create_inbound("t", pb.SIPInboundTrunkInfo(numbers=["+1"], headers=fine), WALL)
