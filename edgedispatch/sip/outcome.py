"""What a dispatch rule does with the call it took: LiveKit's
``EvaluateDispatchRule`` (livekit/protocol ``sip/sip.go``), as a pure
function.

The answer is either ``NeedPin`` (the rule has a PIN the caller has not
entered yet) or ``Admit``: the room the caller joins, the SIP participant
it joins as, and the agents the rule's ``room_config`` dispatches there.
Randomness is the caller's: a room that needs a random part is given one
(``suffix``), so that the same inputs always give the same outcome.
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple

from livekit.protocol.room import RoomConfiguration
from livekit.protocol.sip import SIPDispatchRuleInfo, SIPInboundTrunkInfo

from edgedispatch.errors import PermissionDenied
from edgedispatch.sip.routing import Call, pin_and_room

__all__ = ["Admit", "NeedPin", "evaluate"]

# The participant attributes LiveKit sets on a SIP participant (livekit/attrs.go).
CALL_ID = "sip.callID"
TRUNK_ID = "sip.trunkID"
RULE_ID = "sip.ruleID"
PHONE_NUMBER = "sip.phoneNumber"
HOSTNAME = "sip.hostname"
TRUNK_PHONE_NUMBER = "sip.trunkPhoneNumber"


class NeedPin(NamedTuple):
    """The rule wants a PIN: prompt the caller, and match again with it."""

    trunk_id: str
    rule_id: str


class Admit(NamedTuple):
    """The caller joins ``room`` as a SIP participant."""

    trunk_id: str
    rule_id: str
    room: str
    identity: str
    name: str
    metadata: str
    attributes: dict[str, str]
    #: The rule's room configuration (its ``agents`` are dispatched into the room).
    room_config: RoomConfiguration | None
    room_preset: str

    @property
    def agents(self) -> list[str]:
        """The names of the agents the rule dispatches into the room."""
        return [a.agent_name for a in self.room_config.agents] if self.room_config else []


def identity_of(number: str, hide: bool) -> str:
    """``sip_<number>``, or with ``hide`` ``sip_`` and the first 8 bytes of
    the number's SHA-256 in hex (16 characters), as LiveKit hashes it."""
    if hide:
        return "sip_" + hashlib.sha256(number.encode()).digest()[:8].hex()
    return "sip_" + number


def shown_number(number: str, hide: bool) -> str:
    """The caller's number as names and rooms show it: all of it, or with
    ``hide`` its last 4 digits (the last one, for a number of 4 or fewer)."""
    if not hide:
        return number
    keep = 4 if len(number) > 4 else 1
    return number[-keep:]


def evaluate(
    trunk: SIPInboundTrunkInfo | None,
    rule: SIPDispatchRuleInfo,
    call: Call,
    *,
    call_id: str,
    suffix: str,
    extra_attributes: dict[str, str] | None = None,
) -> Admit | NeedPin:
    """What ``rule`` (chosen by ``routing.select_rule``) does with ``call``.

    :param call_id: LiveKit's id of the call (``SCL_...``), for ``sip.callID``.
    :param suffix: the random part of a room name, for the rules that want
        one (individual unless ``no_randomness``; callee with ``randomize``).
    :raises PermissionDenied: the caller entered a PIN that is not the rule's.
    """
    trunk_id = trunk.sip_trunk_id if trunk is not None else ""
    rule_id = rule.sip_dispatch_rule_id
    pin, room = pin_and_room(rule)
    if pin and not call.pin:
        return NeedPin(trunk_id, rule_id)
    if pin and call.pin != pin:
        raise PermissionDenied("Incorrect PIN for SIP room")
    # (A PIN entered for a rule that has none is taken as a stray key press.)
    hide = rule.hide_phone_number
    caller = shown_number(call.calling, hide)
    kind = rule.rule.WhichOneof("rule")
    if kind == "dispatch_rule_individual":
        individual = rule.rule.dispatch_rule_individual
        room = f"{room}_{caller}" if room else caller
        if not individual.no_randomness:
            room += "_" + suffix
    elif kind == "dispatch_rule_callee":
        callee = rule.rule.dispatch_rule_callee
        room = f"{room}_{call.called}" if room else call.called
        if callee.randomize:
            room += "_" + suffix

    attributes = dict(rule.attributes)
    attributes.update(extra_attributes or {})
    attributes[CALL_ID] = call_id
    attributes[TRUNK_ID] = trunk_id
    if not hide:
        attributes[PHONE_NUMBER] = call.calling
        attributes[HOSTNAME] = call.from_host
        attributes[TRUNK_PHONE_NUMBER] = call.called
    attributes[RULE_ID] = rule_id
    return Admit(
        trunk_id=trunk_id,
        rule_id=rule_id,
        room=room,
        identity=identity_of(call.calling, hide),
        name="Phone " + caller,
        metadata=rule.metadata,
        attributes=attributes,
        room_config=rule.room_config if rule.HasField("room_config") else None,
        room_preset=rule.room_preset,
    )
