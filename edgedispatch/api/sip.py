"""The Twirp service ``livekit.SIP``: inbound and outbound trunks and
dispatch rules, as ``livekit-api``'s ``lkapi.sip`` and the Node SDK's
``SipClient`` manage them.

Grants as LiveKit checks them (livekit ``EnsureSIPAdminPermission``): every
trunk and rule call needs ``"sip": {"admin": true}`` in the token; placing
calls (``CreateSIPParticipant``, not served yet) needs ``sip.call``.  A
caller works on its key's tenant's trunks and rules only
(``sip.directory``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from google.protobuf.message import Message
from livekit.protocol import sip as pb

from edgedispatch.errors import InvalidArgument, PermissionDenied, Unavailable
from edgedispatch.sip.directory import Directory
from edgedispatch.wire.tokens import Claims

SERVICE = "livekit.SIP"


class Route(NamedTuple):
    request: type[Message]
    #: (directory, tenant, request, wall clock) -> the answer
    call: Callable[[Directory, str, Any, float], Message]
    grant: str = "admin"


def require_sip(claims: Claims, grant: str) -> None:
    """``sip.<grant>`` must be true in the token (truthy is not true)."""
    sip = claims.raw.get("sip")
    if not isinstance(sip, dict) or sip.get(grant) is not True:
        raise PermissionDenied(f'token lacks the grant sip.{grant} ("sip": {{"{grant}": true}})')


def handle(directory: Directory | None, method: str, claims: Claims, msg: Any, wall: float) -> Any:
    route = ROUTES[method]
    require_sip(claims, route.grant)
    if directory is None:
        raise Unavailable("SIP is not set up on this server")
    return route.call(directory, claims.tenant, msg, wall)


def _create_inbound(d: Directory, tenant: str, req: Any, wall: float) -> Message:
    if not req.HasField("trunk"):
        raise InvalidArgument("missing trunk")
    return d.create_inbound(tenant, req.trunk, wall)


def _create_outbound(d: Directory, tenant: str, req: Any, wall: float) -> Message:
    if not req.HasField("trunk"):
        raise InvalidArgument("missing trunk")
    return d.create_outbound(tenant, req.trunk, wall)


def _get_inbound(d: Directory, tenant: str, req: Any, wall: float) -> Message:
    return pb.GetSIPInboundTrunkResponse(trunk=d.inbound_trunk(tenant, req.sip_trunk_id))


def _get_outbound(d: Directory, tenant: str, req: Any, wall: float) -> Message:
    return pb.GetSIPOutboundTrunkResponse(trunk=d.outbound_trunk(tenant, req.sip_trunk_id))


def _list_inbound(d: Directory, tenant: str, req: Any, wall: float) -> Message:
    return pb.ListSIPInboundTrunkResponse(items=d.list_inbound(tenant, req))


def _list_outbound(d: Directory, tenant: str, req: Any, wall: float) -> Message:
    return pb.ListSIPOutboundTrunkResponse(items=d.list_outbound(tenant, req))


def _list_legacy(d: Directory, tenant: str, req: Any, wall: float) -> Message:
    return pb.ListSIPTrunkResponse(items=d.list_legacy(tenant, req))


def _list_rules(d: Directory, tenant: str, req: Any, wall: float) -> Message:
    return pb.ListSIPDispatchRuleResponse(items=d.list_rules(tenant, req))


#: method -> route (a table, so that the authorisation matrix has a row for each)
ROUTES: dict[str, Route] = {
    "CreateSIPInboundTrunk": Route(pb.CreateSIPInboundTrunkRequest, _create_inbound),
    "CreateSIPOutboundTrunk": Route(pb.CreateSIPOutboundTrunkRequest, _create_outbound),
    "UpdateSIPInboundTrunk": Route(
        pb.UpdateSIPInboundTrunkRequest, lambda d, t, req, wall: d.update_inbound(t, req, wall)
    ),
    "UpdateSIPOutboundTrunk": Route(
        pb.UpdateSIPOutboundTrunkRequest, lambda d, t, req, wall: d.update_outbound(t, req, wall)
    ),
    "GetSIPInboundTrunk": Route(pb.GetSIPInboundTrunkRequest, _get_inbound),
    "GetSIPOutboundTrunk": Route(pb.GetSIPOutboundTrunkRequest, _get_outbound),
    "ListSIPInboundTrunk": Route(pb.ListSIPInboundTrunkRequest, _list_inbound),
    "ListSIPOutboundTrunk": Route(pb.ListSIPOutboundTrunkRequest, _list_outbound),
    "ListSIPTrunk": Route(pb.ListSIPTrunkRequest, _list_legacy),
    # Deprecated, and gone from the protocol's service, but the Node SDK's
    # createSipTrunk still calls it.
    "CreateSIPTrunk": Route(
        pb.CreateSIPTrunkRequest, lambda d, t, req, wall: d.create_legacy(t, req, wall)
    ),
    "DeleteSIPTrunk": Route(
        pb.DeleteSIPTrunkRequest, lambda d, t, req, wall: d.delete_trunk(t, req.sip_trunk_id)
    ),
    "CreateSIPDispatchRule": Route(
        pb.CreateSIPDispatchRuleRequest, lambda d, t, req, wall: d.create_rule(t, req, wall)
    ),
    "UpdateSIPDispatchRule": Route(
        pb.UpdateSIPDispatchRuleRequest, lambda d, t, req, wall: d.update_rule(t, req, wall)
    ),
    "ListSIPDispatchRule": Route(pb.ListSIPDispatchRuleRequest, _list_rules),
    "DeleteSIPDispatchRule": Route(
        pb.DeleteSIPDispatchRuleRequest,
        lambda d, t, req, wall: d.delete_rule(t, req.sip_dispatch_rule_id),
    ),
}
