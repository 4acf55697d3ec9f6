"""LiveKit's trunk and dispatch-rule matching, case by case: the cases of
livekit/protocol's ``sip/sip_test.go`` (and the reference's §5), written
as tables of inputs and the trunk, rule or error LiveKit gives for them."""

from __future__ import annotations

import re
from typing import Any

import pytest
from livekit.protocol import agent_dispatch as ad
from livekit.protocol import room as rm
from livekit.protocol import sip as pb

from edgedispatch.errors import (
    FailedPrecondition,
    InvalidArgument,
    NoCallRoute,
    PermissionDenied,
)
from edgedispatch.sip.outcome import Admit, NeedPin, evaluate
from edgedispatch.sip.routing import (
    Call,
    check_rule_conflicts,
    check_trunk_conflicts,
    match_trunk,
    normalize_number,
    rule_priority,
    select_rule,
)

N1, N2, N3 = "1111 1111", "2222 2222", "3333 3333"


@pytest.mark.parametrize(
    ("number", "normal"),
    [
        ("", ""),
        ("123", "+123"),
        ("+123", "+123"),
        ("user", "user"),
        ("(123) 456 7890", "+1234567890"),
    ],
)
def test_numbers_are_normalised_as_livekit_does(number: str, normal: str) -> None:
    assert normalize_number(number) == normal


def _trunk(tid: str, numbers: tuple[str, ...] = (), **fields: Any) -> pb.SIPInboundTrunkInfo:
    return pb.SIPInboundTrunkInfo(sip_trunk_id=tid, numbers=list(numbers), **fields)


#: name -> (trunks, call overrides, the trunk chosen (its id, None: no
#: trunk) or the error, whether LiveKit's conflict check refuses the set)
TRUNK_CASES: dict[str, tuple[list[pb.SIPInboundTrunkInfo], dict[str, str], Any, bool]] = {
    "no trunks": ([], {}, None, False),
    "one default": ([_trunk("aaa")], {}, "aaa", False),
    "the called number": ([_trunk("aaa", (N2,))], {}, "aaa", False),
    "the called number, the caller allowed": (
        [_trunk("aaa", (N2,), allowed_numbers=[N1])],
        {},
        "aaa",
        False,
    ),
    "another number": ([_trunk("aaa", (N3,))], {}, None, False),
    "the caller not allowed": (
        [_trunk("aaa", (N2,), allowed_numbers=[N1 + "1"])],
        {},
        None,
        False,
    ),
    "one of two": ([_trunk("aaa", (N3,)), _trunk("bbb", (N2,))], {}, "bbb", False),
    "two list the number": (
        [_trunk("aaa", (N3,)), _trunk("bbb", (N2,)), _trunk("ccc", (N2,))],
        {},
        FailedPrecondition('Multiple SIP Trunks matched for "2222 2222"'),
        True,
    ),
    # A specific trunk is chosen although the whole set is refused.
    "specific before two defaults": (
        [_trunk("aaa", (N3,)), _trunk("bbb"), _trunk("ccc", (N2,)), _trunk("ddd")],
        {},
        "ccc",
        True,
    ),
    "the other trunk does not allow the caller": (
        [
            _trunk("aaa", (N3,)),
            _trunk("bbb", (N2,)),
            _trunk("ccc", (N2,), allowed_numbers=[N1 + "1"]),
        ],
        {},
        "bbb",
        False,
    ),
    "two defaults": (
        [_trunk("aaa", (N3,)), _trunk("bbb"), _trunk("ccc")],
        {},
        FailedPrecondition('Multiple default SIP Trunks matched for "2222 2222"'),
        True,
    ),
    "the source address": (
        [_trunk("bbb", (N2,), allowed_addresses=["10.10.10.10", "1.1.1.1"])],
        {},
        "bbb",
        False,
    ),
    "another source address": (
        [_trunk("bbb", (N2,), allowed_addresses=["10.10.10.10"])],
        {},
        None,
        False,
    ),
    "the source's network": (
        [_trunk("bbb", (N2,), allowed_addresses=["10.10.10.0/24", "1.1.1.0/24"])],
        {},
        "bbb",
        False,
    ),
    "another network": (
        [_trunk("bbb", (N2,), allowed_addresses=["10.10.10.0/24"])],
        {},
        None,
        False,
    ),
    "the From host": (
        [_trunk("bbb", (N2,), allowed_addresses=["10.10.10.0/24", "sip.example.com"])],
        {},
        "bbb",
        False,
    ),
    "another host": ([_trunk("bbb", (N2,), allowed_addresses=["some.domain"])], {}, None, False),
    "a /0 network": ([_trunk("bbb", (N2,), allowed_addresses=["1.2.3.4/0"])], {}, "bbb", False),
    # Entries that cannot be an address, a network or a host are ignored.
    "an unusable entry beside a good one": (
        [_trunk("bbb", (N2,), allowed_addresses=["some.domain,1.1.1.1/24", "1.1.1.0/24"])],
        {},
        "bbb",
        False,
    ),
    "only unusable entries": (
        [_trunk("bbb", (N2,), allowed_addresses=["sip://x", "a, b"])],
        {},
        "bbb",
        False,
    ),
    # No address to check is no check (LiveKit's matchAddrMasks).
    "no source address": (
        [_trunk("bbb", (N2,), allowed_addresses=["10.0.0.1"])],
        {"source_ip": ""},
        "bbb",
        False,
    ),
    "numbers with a plus": (
        [_trunk("aaa", ("+" + N3,)), _trunk("bbb", ("+" + N2,))],
        {},
        "bbb",
        False,
    ),
    "a call with a plus": (
        [_trunk("aaa", (N3,)), _trunk("bbb", (N2,))],
        {"calling": "+" + N1, "called": "+" + N2},
        "bbb",
        False,
    ),
    "one trunk, the number twice in two forms": (
        [_trunk("aaa", ("+" + N2, N2))],
        {"called": "+" + N2},
        "aaa",
        False,
    ),
}


@pytest.mark.parametrize("name", TRUNK_CASES)
def test_trunk_matching(name: str) -> None:
    trunks, overrides, expected, refused = TRUNK_CASES[name]
    fields = {"calling": N1, "called": N2, "source_ip": "1.1.1.1", "from_host": "sip.example.com"}
    call = Call(**{**fields, **overrides})
    if isinstance(expected, Exception):
        with pytest.raises(type(expected), match=re.escape(expected.msg)):
            match_trunk(trunks, call)
    else:
        got = match_trunk(trunks, call)
        assert (got.sip_trunk_id if got is not None else None) == expected
    if refused:
        with pytest.raises(InvalidArgument, match="Conflicting inbound SIP Trunks"):
            check_trunk_conflicts(trunks)
    else:
        check_trunk_conflicts(trunks)


@pytest.mark.parametrize(
    ("trunks", "refused"),
    [
        ([_trunk("aaa", ("+" + N2, N2))], False),
        ([_trunk("aaa", (N2,), allowed_numbers=["+" + N1, N1])], False),
        ([_trunk("aaa", ("+" + N2,)), _trunk("bbb", (N2,))], True),
        (
            [
                _trunk("aaa", (N2,), allowed_numbers=["+" + N1]),
                _trunk("bbb", (N2,), allowed_numbers=[N1]),
            ],
            True,
        ),
        # The same number for different callers is two trunks' business.
        (
            [
                _trunk("aaa", (N2,), allowed_numbers=[N1]),
                _trunk("bbb", (N2,), allowed_numbers=[N3]),
            ],
            False,
        ),
    ],
    ids=[
        "one trunk, two forms",
        "one trunk, a caller twice",
        "two forms",
        "a caller, two forms",
        "other callers",
    ],
)
def test_trunk_conflicts_compare_normalised_numbers(
    trunks: list[pb.SIPInboundTrunkInfo], refused: bool
) -> None:
    if refused:
        with pytest.raises(InvalidArgument):
            check_trunk_conflicts(trunks)
    else:
        check_trunk_conflicts(trunks)


def _direct(room: str, pin: str = "") -> pb.SIPDispatchRule:
    return pb.SIPDispatchRule(
        dispatch_rule_direct=pb.SIPDispatchRuleDirect(room_name=room, pin=pin)
    )


def _individual(prefix: str, pin: str = "", random: bool = False) -> pb.SIPDispatchRule:
    return pb.SIPDispatchRule(
        dispatch_rule_individual=pb.SIPDispatchRuleIndividual(
            room_prefix=prefix, pin=pin, no_randomness=not random
        )
    )


def _callee(prefix: str, pin: str = "", random: bool = False) -> pb.SIPDispatchRule:
    return pb.SIPDispatchRule(
        dispatch_rule_callee=pb.SIPDispatchRuleCallee(room_prefix=prefix, pin=pin, randomize=random)
    )


def _rule(
    rule: pb.SIPDispatchRule,
    trunks: tuple[str, ...] = (),
    inbound: tuple[str, ...] = (),
    numbers: tuple[str, ...] = (),
) -> pb.SIPDispatchRuleInfo:
    return pb.SIPDispatchRuleInfo(
        rule=rule, trunk_ids=list(trunks), inbound_numbers=list(inbound), numbers=list(numbers)
    )


TRUNK = _trunk("aaa", (N2,))
A, B = "aaa", "bbb"

#: name -> (the trunk the call came on, the rules, the PIN sent, the index
#: of the rule chosen or the error, whether the rules conflict).  As in
#: LiveKit's test, a case that chooses a rule with a PIN sent chooses the
#: same rule with no PIN sent (so that the PIN can be asked for).
RULE_CASES: dict[
    str, tuple[pb.SIPInboundTrunkInfo | None, list[pb.SIPDispatchRuleInfo], str, Any, bool]
] = {
    "no rules, no trunk": (None, [], "", NoCallRoute, False),
    "no rules": (TRUNK, [], "", NoCallRoute, False),
    "a catch-all rule, no trunk": (None, [_rule(_direct("sip"))], "", 0, False),
    "a catch-all rule": (TRUNK, [_rule(_direct("sip"))], "", 0, False),
    "a rule for the trunk": (TRUNK, [_rule(_direct("sip"), (A, B))], "", 0, False),
    "a rule for another trunk": (TRUNK, [_rule(_direct("sip"), ("zzz",))], "", NoCallRoute, False),
    "a rule for the trunk, no trunk matched": (
        None,
        [_rule(_direct("sip"), (A,))],
        "",
        NoCallRoute,
        False,
    ),
    "the right PIN": (
        TRUNK,
        [_rule(_direct("sip", "123"), (A,)), _rule(_direct("sip", "456"), (B,))],
        "123",
        0,
        False,
    ),
    "a wrong PIN": (
        TRUNK,
        [_rule(_direct("sip", "123"), (A,)), _rule(_direct("sip", "456"), (B,))],
        "zzz",
        NoCallRoute,
        False,
    ),
    "one PIN, two rules for the trunk": (
        TRUNK,
        [_rule(_direct("sip1", "123"), (A,)), _rule(_direct("sip2", "123"), (A, B))],
        "123",
        InvalidArgument,
        True,
    ),
    "one PIN, rules for two trunks": (
        TRUNK,
        [_rule(_direct("sip1", "123"), (A,)), _rule(_direct("sip2", "123"), (B,))],
        "123",
        0,
        False,
    ),
    "the trunk's rule before the catch-all, PINs": (
        TRUNK,
        [_rule(_direct("sip1", "123")), _rule(_direct("sip2", "123"), (A,))],
        "123",
        1,
        False,
    ),
    "the trunk's rule before the catch-all": (
        TRUNK,
        [_rule(_direct("sip1")), _rule(_direct("sip2"), (A,))],
        "",
        1,
        False,
    ),
    "the trunk's open rule before a catch-all with a PIN": (
        TRUNK,
        [_rule(_direct("sip1", "123")), _rule(_direct("sip2"), (A,))],
        "",
        1,
        False,
    ),
    "the trunk's rule with a PIN before an open catch-all": (
        TRUNK,
        [_rule(_direct("sip1")), _rule(_direct("sip2", "123"), (A,))],
        "",
        1,
        False,
    ),
    "two catch-alls": (
        TRUNK,
        [_rule(_direct("sip1")), _rule(_direct("sip2"))],
        "",
        InvalidArgument,
        True,
    ),
    "the caller's rule first": (
        TRUNK,
        [_rule(_direct("sip1")), _rule(_direct("sip2"), inbound=(N1,))],
        "",
        1,
        False,
    ),
    "the caller's rule first, PINs": (
        TRUNK,
        [_rule(_direct("sip1", "123")), _rule(_direct("sip2", "123"), inbound=(N1,))],
        "",
        1,
        False,
    ),
    "two rules for the caller": (
        TRUNK,
        [_rule(_direct("sip1"), inbound=(N1,)), _rule(_direct("sip2"), inbound=(N1, N2))],
        "",
        InvalidArgument,
        True,
    ),
    # A personal room: the owner's number gets in without the PIN others need.
    "the caller's open rule before a PIN for everyone": (
        TRUNK,
        [_rule(_direct("sip1", "123")), _rule(_direct("sip2"), inbound=(N1,))],
        "",
        1,
        False,
    ),
    "individual and direct, one PIN": (
        TRUNK,
        [_rule(_individual("pref_", "123")), _rule(_direct("sip", "123"))],
        "",
        InvalidArgument,
        True,
    ),
    "individual and direct, open": (
        TRUNK,
        [_rule(_individual("pref_")), _rule(_direct("sip"))],
        "",
        InvalidArgument,
        True,
    ),
    "the PIN chooses direct over individual": (
        TRUNK,
        [_rule(_individual("pref_", "123")), _rule(_direct("sip", "456"))],
        "456",
        1,
        False,
    ),
    "the number's rule first": (
        TRUNK,
        [_rule(_direct("sip_1")), _rule(_direct("sip_2"), numbers=(N2,))],
        "",
        1,
        False,
    ),
    "the number's rule first, PINs": (
        TRUNK,
        [_rule(_direct("sip_1", "123")), _rule(_direct("sip_2", "123"), numbers=(N2,))],
        "",
        1,
        False,
    ),
    "two rules for a number": (
        TRUNK,
        [_rule(_direct("sip_1"), numbers=(N1,)), _rule(_direct("sip_2"), numbers=(N1, N2))],
        "",
        InvalidArgument,
        True,
    ),
    "two rules for a number and caller": (
        TRUNK,
        [
            _rule(_direct("sip_1"), numbers=(N1,), inbound=(N1,)),
            _rule(_direct("sip_2"), numbers=(N1, N2), inbound=(N1,)),
        ],
        "",
        InvalidArgument,
        True,
    ),
    "the number's open rule before a PIN for everyone": (
        TRUNK,
        [_rule(_direct("sip_1", "123")), _rule(_direct("sip_2"), numbers=(N2,))],
        "",
        1,
        False,
    ),
    "the number and caller's open rule before a PIN for everyone": (
        TRUNK,
        [_rule(_direct("sip_1", "123")), _rule(_direct("sip_2"), numbers=(N2,), inbound=(N1,))],
        "",
        1,
        False,
    ),
    # Numbers in rules compare exactly (trunks' are normalised).
    "a rule's number in another form": (
        TRUNK,
        [_rule(_direct("sip"), numbers=("+" + N2,))],
        "",
        NoCallRoute,
        False,
    ),
    "a rule's caller in another form": (
        TRUNK,
        [_rule(_direct("sip"), inbound=("+" + N1,))],
        "",
        NoCallRoute,
        False,
    ),
    "a rule for the caller and number before one for the number": (
        TRUNK,
        [
            _rule(_direct("alpha"), numbers=(N2,)),
            _rule(_direct("zeta"), inbound=(N1,), numbers=(N2,)),
        ],
        "",
        1,
        False,
    ),
    # Same priority (no PIN sent yet: both PIN rules stay): the smaller room
    # name wins, whatever the order; the same name, the first by id.
    "the tie-break": (
        TRUNK,
        [_rule(_direct("zeta", "1")), _rule(_direct("alpha", "2"))],
        "",
        1,
        False,
    ),
    "the tie-break, the same room": (
        TRUNK,
        [_rule(_direct("same", "1")), _rule(_direct("same", "2"))],
        "",
        0,
        False,
    ),
}


@pytest.mark.parametrize("name", RULE_CASES)
def test_rule_matching(name: str) -> None:
    trunk, rules, pin, expected, refused = RULE_CASES[name]
    for i, rule in enumerate(rules):
        rule.sip_dispatch_rule_id = f"rule_{i}"
    pins = [pin, ""] if pin and isinstance(expected, int) else [pin]
    for sent in pins:
        call = Call(calling=N1, called=N2, pin=sent)
        if isinstance(expected, int):
            assert select_rule(trunk, rules, call).sip_dispatch_rule_id == f"rule_{expected}"
        else:
            with pytest.raises(expected):
                select_rule(trunk, rules, call)
    if refused:
        with pytest.raises(InvalidArgument, match="already exists in dispatch rule"):
            check_rule_conflicts(rules)
    else:
        check_rule_conflicts(rules)


def test_no_pin_mode_skips_pin_rules() -> None:
    rules = [_rule(_direct("locked", "123"), (A,)), _rule(_direct("open"))]
    for i, rule in enumerate(rules):
        rule.sip_dispatch_rule_id = f"rule_{i}"
    call = Call(calling=N1, called=N2)
    assert select_rule(TRUNK, rules, call).sip_dispatch_rule_id == "rule_0"
    no_pin = call._replace(no_pin=True)
    assert select_rule(TRUNK, rules, no_pin).sip_dispatch_rule_id == "rule_1"


@pytest.mark.parametrize(
    ("rule", "priority"),
    [
        (_rule(_direct("r", "1"), inbound=(N1,), numbers=(N2,)), 0),
        (_rule(_individual("r", "1"), inbound=(N1,), numbers=(N2,)), 1),
        (_rule(_callee("r", "1"), inbound=(N1,), numbers=(N2,)), 2),
        (_rule(_direct("r"), inbound=(N1,), numbers=(N2,)), 100),
        (_rule(_individual("r"), inbound=(N1,), numbers=(N2,)), 101),
        (_rule(_callee("r"), inbound=(N1,), numbers=(N2,)), 102),
        (_rule(_direct("r"), numbers=(N2,)), 1100),
        (_rule(_direct("r"), inbound=(N1,)), 1100),
        (_rule(_callee("r", "1")), 2002),
        (pb.SIPDispatchRuleInfo(), 2**31 - 1),
    ],
)
def test_dispatch_rule_priority(rule: pb.SIPDispatchRuleInfo, priority: int) -> None:
    assert rule_priority(rule) == priority


def test_the_conflict_error_names_the_earlier_rule() -> None:
    first = _rule(_direct("a"))
    first.sip_dispatch_rule_id, first.name = "SDR_first", "main line"
    with pytest.raises(InvalidArgument) as caught:
        check_rule_conflicts([first, _rule(_direct("b"))])
    assert caught.value.msg == (
        "Dispatch rule for the same trunk, inbound number, number, and PIN combination "
        'already exists in dispatch rule "SDR_first" "main line"'
    )


# -- the outcome -------------------------------------------------------------------

CALLER, CALLEE, PREFIX = "+15551234567", "+3333", "testPrefix"
OUT_TRUNK = _trunk("trunk")
CALL = Call(calling=CALLER, called=CALLEE, from_host="sip.example.com")

#: name -> (the rule, the room it gives; None: it asks for the PIN)
ROOM_CASES: dict[str, tuple[pb.SIPDispatchRule, str | None]] = {
    "direct": (_direct("room"), "room"),
    "individual": (_individual(""), CALLER),
    "individual, prefix": (_individual(PREFIX), f"{PREFIX}_{CALLER}"),
    "individual, random": (_individual("", random=True), f"{CALLER}_XYZ"),
    "individual, prefix and random": (_individual(PREFIX, random=True), f"{PREFIX}_{CALLER}_XYZ"),
    "individual, PIN": (_individual("", "123"), None),
    "individual, prefix and PIN": (_individual(PREFIX, "123"), None),
    "individual, random and PIN": (_individual("", "123", True), None),
    "individual, everything": (_individual(PREFIX, "123", True), None),
    "callee": (_callee(""), CALLEE),
    "callee, prefix": (_callee(PREFIX), f"{PREFIX}_{CALLEE}"),
    "callee, random": (_callee(PREFIX, random=True), f"{PREFIX}_{CALLEE}_XYZ"),
    "direct, PIN": (_direct("room", "123"), None),
}


@pytest.mark.parametrize("name", ROOM_CASES)
def test_the_room_a_rule_gives(name: str) -> None:
    rule, room = ROOM_CASES[name]
    info = pb.SIPDispatchRuleInfo(sip_dispatch_rule_id="rule", rule=rule)
    got = evaluate(OUT_TRUNK, info, CALL, call_id="SCL_1", suffix="XYZ")
    if room is None:
        assert got == NeedPin("trunk", "rule")
    else:
        assert isinstance(got, Admit)
        assert got.room == room


def test_the_sip_participant_as_livekit_makes_it() -> None:
    rule = pb.SIPDispatchRuleInfo(
        sip_dispatch_rule_id="rule",
        rule=_direct("room"),
        metadata="rule-meta",
        attributes={"rule-attr": "1", "sip.callID": "overridden"},
        room_config=rm.RoomConfiguration(agents=[ad.RoomAgentDispatch(agent_name="receptionist")]),
    )
    call = Call(calling="+11112222", called="+3333", from_host="sip.example.com")
    got = evaluate(
        OUT_TRUNK, rule, call, call_id="call-id", suffix="", extra_attributes={"prov-attr": "1"}
    )
    assert isinstance(got, Admit)
    assert (got.room, got.identity, got.name, got.metadata) == (
        "room",
        "sip_+11112222",
        "Phone +11112222",
        "rule-meta",
    )
    assert got.attributes == {
        "rule-attr": "1",
        "prov-attr": "1",
        "sip.callID": "call-id",
        "sip.trunkID": "trunk",
        "sip.ruleID": "rule",
        "sip.phoneNumber": "+11112222",
        "sip.trunkPhoneNumber": "+3333",
        "sip.hostname": "sip.example.com",
    }
    assert got.agents == ["receptionist"]


def test_a_hidden_number_is_hashed_and_cut_to_four_digits() -> None:
    rule = pb.SIPDispatchRuleInfo(
        sip_dispatch_rule_id="rule", rule=_individual("", random=False), hide_phone_number=True
    )
    call = Call(calling="+11112222", called="+3333", from_host="sip.example.com")
    got = evaluate(OUT_TRUNK, rule, call, call_id="call-id", suffix="")
    assert isinstance(got, Admit)
    # LiveKit's own expected identity for "+11112222" (sip_test.go).
    assert (got.identity, got.name, got.room) == ("sip_c15a31c71649a522", "Phone 2222", "2222")
    assert set(got.attributes) == {"sip.callID", "sip.trunkID", "sip.ruleID"}
    short = evaluate(OUT_TRUNK, rule, call._replace(calling="123"), call_id="c", suffix="")
    assert isinstance(short, Admit) and short.name == "Phone 3"


def test_a_pin_is_asked_for_then_checked() -> None:
    rule = pb.SIPDispatchRuleInfo(sip_dispatch_rule_id="rule", rule=_direct("vault", "4321"))
    assert evaluate(None, rule, CALL, call_id="c", suffix="") == NeedPin("", "rule")
    admitted = evaluate(None, rule, CALL._replace(pin="4321"), call_id="c", suffix="")
    assert isinstance(admitted, Admit) and admitted.room == "vault"
    assert admitted.attributes["sip.trunkID"] == ""
    with pytest.raises(PermissionDenied, match="Incorrect PIN"):
        evaluate(None, rule, CALL._replace(pin="0000"), call_id="c", suffix="")
    # A PIN entered where none is needed is a stray key press.
    open_rule = pb.SIPDispatchRuleInfo(sip_dispatch_rule_id="r2", rule=_direct("lobby"))
    assert isinstance(
        evaluate(None, open_rule, CALL._replace(pin="9"), call_id="c", suffix=""), Admit
    )
