"""Trunks and dispatch rules as the ``livekit.SIP`` service takes them:
LiveKit's checks of each one (``livekit/sip.go``'s ``Validate``) and its
partial updates (``ListUpdate``, optional fields, attribute diffs), on
LiveKit's own messages.  Pure: the service (``directory``) stores them.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableSequence
from typing import Any

from google.protobuf.message import Message
from livekit.protocol import models
from livekit.protocol import sip as pb

from edgedispatch.errors import InvalidArgument
from edgedispatch.sip.routing import pin_and_room

__all__ = [
    "apply_inbound_update",
    "apply_outbound_update",
    "apply_rule_update",
    "check_inbound",
    "check_list_update",
    "check_outbound",
    "check_rule",
    "legacy_rule",
]


# RFC 3261's token characters: what a header name may be made of.
_TOKEN = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-.!%*_+`'~")
#: Headers a trunk may not set: the SIP stack's own (LiveKit's list, with
#: the compact forms).
FORBIDDEN_HEADERS = frozenset(
    {
        "accept", "accept-encoding", "accept-language", "allow", "allow-events", "call-id",
        "contact", "content-encoding", "content-length", "content-type", "cseq", "event",
        "expires", "from", "max-forwards", "record-route", "refer-to", "reply-to",
        "k", "l", "m", "o", "r", "t", "u", "v",
    }
)  # fmt: skip
MAX_MEDIA_TIMEOUT = 600  #: seconds (LiveKit's MaxSIPMediaTimeout)


def _check_header_name(name: str, restrict: bool) -> None:
    # These headers go into SIP messages as they are: a CR, LF or colon
    # would let a trunk's settings add headers of their own.
    why = ""
    if not name:
        why = "header name cannot be empty"
    elif len(name) > 255:
        why = "header name too long (max 255 characters)"
    elif bad := next((c for c in name if c not in _TOKEN), None):
        why = f"header name {name} contains invalid characters: char {ord(bad)} not allowed"
    elif restrict and name.lower() in FORBIDDEN_HEADERS:
        why = f"header name {name} not supported"
    if why:
        raise InvalidArgument(f"invalid header name: {why}")


def _check_header_value(name: str, value: str) -> None:
    why = ""
    if len(value) > 1024:
        why = "value too long (max 1024 characters)"
    # Printable ASCII, tab, and anything beyond ASCII (UTF-8): no controls.
    elif bad := next(
        (c for c in value if ord(c) < 128 and not (c == "\t" or " " <= c <= "~")), None
    ):
        why = f"value: char {ord(bad)} not allowed"
    if why:
        raise InvalidArgument(f"invalid header value for {name}: header {name}: {why}")


def check_headers(headers: Mapping[str, str]) -> None:
    """Custom headers a trunk or a request adds to a call's messages
    (LiveKit's ``validateHeaders``)."""
    for name, value in headers.items():
        _check_header_name(name, restrict=True)
        _check_header_value(name, value)


def _check_headers(info: Any) -> None:
    """The headers a trunk adds to its calls, and those it maps to and from
    attributes (LiveKit's ``validateHeaders`` and the two maps' checks)."""
    check_headers(info.headers)
    for name in info.attributes_to_headers.values():
        _check_header_name(name, restrict=False)
    for name in info.headers_to_attributes:
        _check_header_name(name, restrict=False)


def check_media(info: Any) -> None:
    """Codec names and the media timeout of a trunk's or rule's ``media``."""
    if not info.HasField("media"):
        return
    for codec in info.media.codecs:
        if not codec.name:
            raise InvalidArgument("missing codec name")
        if any(c in codec.name for c in " \t\n\r"):
            raise InvalidArgument("invalid codec name")
        if "/" in codec.name:
            raise InvalidArgument("codec name must not contain '/'")
    if info.media.HasField("media_timeout"):
        timeout = info.media.media_timeout.ToTimedelta().total_seconds()
        if timeout < 0:
            raise InvalidArgument("media_timeout must not be negative")
        if timeout > MAX_MEDIA_TIMEOUT:
            raise InvalidArgument("media_timeout must not exceed 10m0s")


def check_inbound(trunk: pb.SIPInboundTrunkInfo) -> None:
    """An inbound trunk must say whose calls it takes: credentials, the
    addresses they come from, or the numbers called (LiveKit refuses a
    trunk open to any call from anywhere)."""
    has_auth = bool(trunk.auth_username or trunk.auth_password)
    if not (has_auth or trunk.allowed_addresses or trunk.numbers):
        raise InvalidArgument(
            "for security, one of the fields must be set: "
            "AuthUsername+AuthPassword, AllowedAddresses or Numbers"
        )
    check_media(trunk)
    _check_headers(trunk)


def _check_host(value: str, field: str) -> None:
    if "transport=" in value:
        raise InvalidArgument(f"{field} should not contain transport parameter")
    if "@" in value or ";" in value or value.startswith(("sip:", "sips:")):
        raise InvalidArgument(f"{field} should be a hostname or IP, not SIP URI")


def check_outbound(trunk: pb.SIPOutboundTrunkInfo) -> None:
    """An outbound trunk needs the numbers it calls from and where to call."""
    if not trunk.numbers:
        raise InvalidArgument("no trunk numbers specified")
    if not trunk.address:
        raise InvalidArgument("no outbound address specified")
    _check_host(trunk.address, "trunk address")
    _check_host(trunk.from_host, "from_host")
    _check_headers(trunk)
    check_media(trunk)


def check_rule(rule: pb.SIPDispatchRuleInfo) -> None:
    if not rule.HasField("rule") or rule.rule.WhichOneof("rule") is None:
        raise InvalidArgument("missing rule")
    pin_and_room(rule)
    check_media(rule)


def legacy_rule(req: pb.CreateSIPDispatchRuleRequest) -> pb.SIPDispatchRuleInfo:
    """The rule a create request describes: its ``dispatch_rule``, or the
    deprecated top-level fields older clients send."""
    if req.HasField("dispatch_rule"):
        rule = pb.SIPDispatchRuleInfo()
        rule.CopyFrom(req.dispatch_rule)
        if rule.sip_dispatch_rule_id:
            raise InvalidArgument("rule id must not be set")
        return rule
    rule = pb.SIPDispatchRuleInfo(
        trunk_ids=req.trunk_ids,
        hide_phone_number=req.hide_phone_number,
        inbound_numbers=req.inbound_numbers,
        name=req.name,
        metadata=req.metadata,
        attributes=req.attributes,
        room_preset=req.room_preset,
    )
    if req.HasField("rule"):
        rule.rule.CopyFrom(req.rule)
    if req.HasField("room_config"):
        rule.room_config.CopyFrom(req.room_config)
    return rule


def check_list_update(update: models.ListUpdate) -> None:
    """A list update either clears, sets, or adds and removes; never two of
    these, never nothing, and with no empty element."""
    change = bool(update.set or update.add or update.remove)
    if not update.clear and not change:
        raise InvalidArgument("unsupported list update operation")
    if update.clear and change:
        raise InvalidArgument("cannot clear and change the list at the same time")
    if update.set and (update.add or update.remove):
        raise InvalidArgument("cannot set and change the list at the same time")
    if any(v == "" for v in (*update.set, *update.add, *update.remove)):
        raise InvalidArgument("empty element in the list")


def _apply_list(target: MutableSequence[str], update: models.ListUpdate) -> None:
    if update.clear:
        del target[:]
    elif update.set:
        target[:] = list(update.set)
    else:
        values = list(target)
        for v in update.remove:
            if v in values:
                values.remove(v)
        values += [v for v in dict.fromkeys(update.add) if v not in values]
        target[:] = values


def _apply_lists(info: Message, update: Message, fields: tuple[str, ...]) -> None:
    for field in fields:
        if update.HasField(field):
            check_list_update(getattr(update, field))
    for field in fields:
        if update.HasField(field):
            _apply_list(getattr(info, field), getattr(update, field))


def _apply_scalars(info: Message, update: Message, fields: tuple[str, ...]) -> None:
    # The update's optional fields: set ones replace the record's.
    for field in fields:
        if update.HasField(field):
            setattr(info, field, getattr(update, field))


def _apply_media(info: Any, update: Any) -> None:
    if update.HasField("media"):
        info.media.CopyFrom(update.media)
    if update.HasField("media_encryption"):
        info.media_encryption = update.media_encryption


def apply_inbound_update(
    trunk: pb.SIPInboundTrunkInfo, update: pb.SIPInboundTrunkUpdate
) -> pb.SIPInboundTrunkInfo:
    """``trunk`` changed by ``update`` (a copy), checked."""
    new = pb.SIPInboundTrunkInfo()
    new.CopyFrom(trunk)
    _apply_lists(new, update, ("numbers", "allowed_addresses", "allowed_numbers"))
    _apply_scalars(
        new, update, ("auth_username", "auth_password", "auth_realm", "name", "metadata")
    )
    _apply_media(new, update)
    check_inbound(new)
    return new


def apply_outbound_update(
    trunk: pb.SIPOutboundTrunkInfo, update: pb.SIPOutboundTrunkUpdate
) -> pb.SIPOutboundTrunkInfo:
    new = pb.SIPOutboundTrunkInfo()
    new.CopyFrom(trunk)
    _apply_lists(new, update, ("numbers",))
    _apply_scalars(
        new,
        update,
        (
            "address",
            "transport",
            "destination_country",
            "auth_username",
            "auth_password",
            "name",
            "metadata",
            "from_host",
        ),
    )
    _apply_media(new, update)
    check_outbound(new)
    return new


def apply_rule_update(
    rule: pb.SIPDispatchRuleInfo, update: pb.SIPDispatchRuleUpdate
) -> pb.SIPDispatchRuleInfo:
    new = pb.SIPDispatchRuleInfo()
    new.CopyFrom(rule)
    _apply_lists(new, update, ("trunk_ids",))
    if update.HasField("rule"):
        new.rule.CopyFrom(update.rule)
    _apply_scalars(new, update, ("name", "metadata"))
    # An attribute given empty is removed.
    for key, value in update.attributes.items():
        if value:
            new.attributes[key] = value
        else:
            new.attributes.pop(key, None)
    _apply_media(new, update)
    check_rule(new)
    return new


def media_encryption(*settings: Any) -> int:
    """A call's media encryption (``sdp.DISABLE``, ``ALLOW`` or
    ``REQUIRE``) from its trunk's and then its rule's or request's
    settings, as LiveKit merges them (``SIPMediaConfig.Merge``): each one's
    ``media.encryption``, or its older ``media_encryption`` unless that is
    DISABLE (its zero: "not set"); a later setting wins unless it is
    DISABLE.  None stands for a setting that is not there."""
    found: int | None = None
    for info in settings:
        if info is None:
            continue
        if info.HasField("media") and info.media.HasField("encryption"):
            value: int | None = int(info.media.encryption)
        else:
            value = int(info.media_encryption) or None
        if value is not None and (found is None or value != pb.SIP_MEDIA_ENCRYPT_DISABLE):
            found = value
    return found or pb.SIP_MEDIA_ENCRYPT_DISABLE
