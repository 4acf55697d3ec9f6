"""Which inbound trunk and which dispatch rule take a call: LiveKit's
matching (livekit/protocol ``sip/sip.go``), as pure functions.

Sans-IO: trunks and rules are LiveKit's own messages
(``livekit.protocol.sip``), given by the caller with the call; nothing
here reads a store, a clock or a random source.

Theory of operation, as LiveKit has it:

1. **Trunk** (``match_trunk``).  A trunk that does not allow the calling
   number (``allowed_numbers``) or the source address (``allowed_addresses``:
   an IP, a CIDR or the From host) is skipped.  A trunk whose ``numbers``
   list the called number is *specific*; one with no ``numbers`` is a
   *default*.  Two specific trunks, or no specific one and two defaults, are
   an ambiguity (``failed_precondition``).  Trunk numbers compare raw or
   normalised (``normalize_number``).  No trunk at all is not an error: the
   call can still match a rule that names no trunk.
2. **Rule** (``select_rule``).  The rules are first checked for conflicts
   (``check_rule_conflicts``).  A rule is skipped if its ``inbound_numbers``
   (callers) or ``numbers`` (called) do not list the call's number, compared
   *exactly* (not normalised, unlike trunks); then by PIN: ``no_pin`` drops
   PIN rules, a sent PIN keeps only the rules with that PIN.  A rule naming
   the matched trunk in ``trunk_ids`` beats every rule naming none; within
   each set the lowest ``rule_priority`` wins, ties to the smaller room
   name or prefix, then to the first in id order.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from typing import NamedTuple

from livekit.protocol.sip import SIPDispatchRuleInfo, SIPInboundTrunkInfo

from edgedispatch.errors import FailedPrecondition, InvalidArgument, NoCallRoute

__all__ = [
    "Call",
    "check_rule_conflicts",
    "check_trunk_conflicts",
    "match_trunk",
    "normalize_number",
    "pin_and_room",
    "rule_priority",
    "select_rule",
]


class Call(NamedTuple):
    """What matching knows of an inbound call."""

    calling: str  #: the caller's number (the From user)
    called: str  #: the number called (the To user)
    source_ip: str = ""  #: where the INVITE came from
    from_host: str = ""  #: the From URI's host
    pin: str = ""  #: the PIN the caller has entered, if any
    no_pin: bool = False  #: the caller cannot enter a PIN: PIN rules are skipped


_NUMBER = re.compile(r"\+?[\d\- ()]+")
_FORMATTING = str.maketrans("", "", " -()")


def normalize_number(number: str) -> str:
    """``+`` and the digits of a phone number (``"(555) 010-1234"`` ->
    ``"+5550101234"``); anything that is not a number is kept as it is."""
    if not number or not _NUMBER.fullmatch(number):
        return number
    number = number.translate(_FORMATTING)
    return number if number.startswith("+") else "+" + number


def _number_allowed(number: str, allowed: Iterable[str]) -> bool:
    allowed = list(allowed)
    if not allowed:
        return True
    norm = normalize_number(number)
    return any(number == a or norm == normalize_number(a) for a in allowed)


def _usable_mask(mask: str) -> bool:
    # LiveKit ignores entries that cannot be an address, a CIDR or a host
    # name (a URI, a list), rather than refusing every call.
    return not any(c in mask for c in "()+*;, \t\n\r") and "://" not in mask


def _address_allowed(source_ip: str, from_host: str, masks: Iterable[str]) -> bool:
    try:
        ip = ipaddress.ip_address(source_ip)
    except ValueError:
        return True  # as LiveKit: no source address to check is no check
    usable = [m for m in masks if _usable_mask(m)]
    if not usable:
        return True
    for mask in usable:
        if mask == from_host:
            return True
        try:
            if "/" in mask:
                if ip in ipaddress.ip_network(mask, strict=False):
                    return True
            elif ip == ipaddress.ip_address(mask):
                return True
        except ValueError:
            continue  # a host name that is not the From host
    return False


def _lists_called(trunk: SIPInboundTrunkInfo, called: str) -> bool:
    norm = normalize_number(called)
    return any(n == called or normalize_number(n) == norm for n in trunk.numbers)


def match_trunk(trunks: Iterable[SIPInboundTrunkInfo], call: Call) -> SIPInboundTrunkInfo | None:
    """The inbound trunk that takes ``call``, or None when none does.

    :raises FailedPrecondition: two trunks list the called number, or no
        trunk lists it and two default trunks allow the call.
    """
    specific: SIPInboundTrunkInfo | None = None
    defaults: list[SIPInboundTrunkInfo] = []
    for trunk in trunks:
        if not _number_allowed(call.calling, trunk.allowed_numbers):
            continue
        if not _address_allowed(call.source_ip, call.from_host, trunk.allowed_addresses):
            continue
        if not trunk.numbers:
            defaults.append(trunk)
        elif _lists_called(trunk, call.called):
            if specific is not None:
                raise FailedPrecondition(f'Multiple SIP Trunks matched for "{call.called}"')
            specific = trunk
    if specific is not None:
        return specific
    if len(defaults) > 1:
        raise FailedPrecondition(f'Multiple default SIP Trunks matched for "{call.called}"')
    return defaults[0] if defaults else None


def pin_and_room(rule: SIPDispatchRuleInfo) -> tuple[str, str]:
    """The rule's PIN and its room name (direct) or room prefix.

    :raises InvalidArgument: the rule has no kind (direct, individual, callee).
    """
    kind = rule.rule.WhichOneof("rule")
    if kind == "dispatch_rule_direct":
        direct = rule.rule.dispatch_rule_direct
        return direct.pin, direct.room_name
    if kind == "dispatch_rule_individual":
        individual = rule.rule.dispatch_rule_individual
        return individual.pin, individual.room_prefix
    if kind == "dispatch_rule_callee":
        callee = rule.rule.dispatch_rule_callee
        return callee.pin, callee.room_prefix
    raise InvalidArgument("missing rule: set one of dispatch_rule_direct, _individual or _callee")


#: A rule's base priority by kind, with a PIN and without (lower wins).
_BASE_PRIORITY = {
    "dispatch_rule_direct": (0, 100),
    "dispatch_rule_individual": (1, 101),
    "dispatch_rule_callee": (2, 102),
}
LAST = 2**31 - 1  #: a rule of no kind: after every other


def rule_priority(rule: SIPDispatchRuleInfo) -> int:
    """LiveKit's ``DispatchRulePriority``: PIN rules first (direct 0,
    individual 1, callee 2), then open ones (100, 101, 102); 1000 more for
    a rule that lists no callers, and 1000 more for one that lists no
    called numbers (a rule for particular numbers beats a catch-all)."""
    kind = rule.rule.WhichOneof("rule")
    if kind not in _BASE_PRIORITY:
        return LAST
    pin, _ = pin_and_room(rule)
    with_pin, open_ = _BASE_PRIORITY[kind]
    priority = with_pin if pin else open_
    if not rule.inbound_numbers:
        priority += 1000
    if not rule.numbers:
        priority += 1000
    return priority


def _order(rule: SIPDispatchRuleInfo) -> tuple[int, str]:
    return rule_priority(rule), pin_and_room(rule)[1]


def _quoted(value: str, blank: str) -> str:
    return f'"{value or blank}"'


def check_rule_conflicts(rules: Iterable[SIPDispatchRuleInfo]) -> None:
    """Refuse two rules that would take the same calls: the same PIN for
    the same trunk, caller and called number (numbers normalised here; a
    rule listing none stands for "any", and conflicts only with another
    that lists none).

    :raises InvalidArgument: naming the rule the later one conflicts with.
    """
    seen: dict[tuple[str, str, str, str], SIPDispatchRuleInfo] = {}
    for rule in rules:
        pin, _ = pin_and_room(rule)
        for trunk in rule.trunk_ids or [""]:
            for caller in rule.inbound_numbers or [""]:
                for called in rule.numbers or [""]:
                    key = (pin, trunk, normalize_number(caller), normalize_number(called))
                    other = seen.get(key)
                    if other is not None:
                        raise InvalidArgument(
                            "Dispatch rule for the same trunk, inbound number, number, and PIN "
                            "combination already exists in dispatch rule "
                            f"{_quoted(other.sip_dispatch_rule_id, '<new>')} "
                            f"{_quoted(other.name, '<blank name>')}"
                        )
                    seen[key] = rule


def _shown(numbers: Iterable[str]) -> str:
    listed = list(numbers)
    return "[" + " ".join(f'"{n}"' for n in listed) + "]" if listed else "<any>"


def check_trunk_conflicts(trunks: Iterable[SIPInboundTrunkInfo]) -> None:
    """Refuse two inbound trunks that would take the same calls: a called
    number (or "any", for trunks listing none) shared by two trunks that
    both allow every caller, or that allow the same caller.

    :raises InvalidArgument: naming both trunks.
    """
    # called number ("" for any) -> caller ("" for any) -> trunk
    by_called: dict[str, dict[str, SIPInboundTrunkInfo]] = {}
    for trunk in trunks:
        called_keys = dict.fromkeys(normalize_number(n) for n in trunk.numbers) or {"": None}
        # (the key, and how LiveKit words the clash) for each caller it takes
        callers = [
            (normalize_number(caller), f'and AllowedNumber "{caller}"')
            for caller in dict.fromkeys(trunk.allowed_numbers)
        ] or [("", "without AllowedNumbers set")]
        for called in called_keys:
            by_caller = by_called.setdefault(called, {})
            for key, clash in callers:
                other = by_caller.get(key)
                if other is not None and other.sip_trunk_id != trunk.sip_trunk_id:
                    raise InvalidArgument(
                        "Conflicting inbound SIP Trunks: "
                        f"{_quoted(trunk.sip_trunk_id, '<new>')} and "
                        f"{_quoted(other.sip_trunk_id, '<new>')}, using the same number(s) "
                        f"{_shown(trunk.numbers)} {clash}"
                    )
                by_caller[key] = trunk


def select_rule(
    trunk: SIPInboundTrunkInfo | None, rules: Iterable[SIPDispatchRuleInfo], call: Call
) -> SIPDispatchRuleInfo:
    """The dispatch rule that takes ``call``, arrived on ``trunk`` (None:
    no trunk matched; only rules that name no trunk can take it).

    :param rules: the tenant's rules, in id order (the last tie-break).
    :raises InvalidArgument: two rules conflict (``check_rule_conflicts``).
    :raises NoCallRoute: no rule takes the call.
    """
    rules = list(rules)
    check_rule_conflicts(rules)
    specific: SIPDispatchRuleInfo | None = None
    default: SIPDispatchRuleInfo | None = None
    for rule in rules:
        if rule.inbound_numbers and call.calling not in rule.inbound_numbers:
            continue
        if rule.numbers and call.called not in rule.numbers:
            continue
        pin, _ = pin_and_room(rule)
        if call.no_pin and pin:
            continue
        # A PIN sent selects the rules with that PIN, never an open rule.
        if not call.no_pin and call.pin and pin != call.pin:
            continue
        if not rule.trunk_ids:
            if default is None or _order(rule) < _order(default):
                default = rule
        elif trunk is not None and trunk.sip_trunk_id in rule.trunk_ids:
            if specific is None or _order(rule) < _order(specific):
                specific = rule
    chosen = specific or default
    if chosen is not None:
        return chosen
    # LiveKit says "No SIP Dispatch Rules defined" whatever the reason; the
    # call's number and whether a trunk took it say more.
    if not rules:
        raise NoCallRoute("No SIP Dispatch Rules defined")
    if trunk is None:
        raise NoCallRoute(f'No SIP Trunk or Dispatch Rules matched for "{call.called}"')
    raise NoCallRoute(f'No SIP Dispatch Rules matched for "{call.called}"')
