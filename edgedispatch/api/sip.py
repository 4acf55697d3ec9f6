"""The Twirp service ``livekit.SIP``: inbound and outbound trunks and
dispatch rules, as ``livekit-api``'s ``lkapi.sip`` and the Node SDK's
``SipClient`` manage them.

Grants as LiveKit checks them (livekit ``EnsureSIPAdminPermission``): every
trunk and rule call needs ``"sip": {"admin": true}`` in the token; placing
calls (``CreateSIPParticipant``, ``place_call``) needs ``sip.call``.  A
caller works on its key's tenant's trunks and rules only
(``sip.directory``), and places calls through its own tenant's trunks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, Protocol

from google.protobuf.message import Message
from livekit.protocol import sip as pb

from edgedispatch.errors import (
    EdgeDispatchError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from edgedispatch.rtc.room import RoomHub
from edgedispatch.sip.directory import Directory
from edgedispatch.sip.records import check_headers
from edgedispatch.sip.refer import TRANSFER_TIMEOUT, refer_target
from edgedispatch.wire.tokens import Claims

SERVICE = "livekit.SIP"


class Route(NamedTuple):
    request: type[Message]
    #: (directory, tenant, request, wall clock) -> the answer
    call: Callable[[Directory, str, Any, float], Message]
    grant: str = "admin"


Settle = Callable[[Message | EdgeDispatchError], None]


class Dialer(Protocol):
    """Places calls (``calls.outbound.OutboundCalls``)."""

    def place(
        self,
        tenant: str,
        req: pb.CreateSIPParticipantRequest,
        trunk: pb.SIPOutboundTrunkInfo | None,
        now: float,
        done: Settle | None = None,
    ) -> Any:
        """Starts the call (raises what refuses it); ``done`` gets the
        answer once the callee answers, or the error once the call fails.
        Returns an object whose ``info()`` is the ``SIPParticipantInfo``."""
        ...


class Transferer(Protocol):
    """Transfers calls (``calls.transfer.Transfers``)."""

    def transfer(
        self,
        tenant: str,
        session: object,
        call_id: str,
        refer_to: str,
        timeout: float,
        now: float,
        done: Settle,
        dialtone: bool = False,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """REFERs the participant's call, with ``headers`` (raises what
        refuses it at once);
        ``done`` gets the answer or the error once the outcome is known;
        ``dialtone``: the caller hears ringing meanwhile."""
        ...


class Waiting:
    """An answer that comes once the call is answered or failed."""

    def __init__(self) -> None:
        self.result: Message | EdgeDispatchError | None = None
        self._then: Settle | None = None

    def settle(self, result: Message | EdgeDispatchError) -> None:
        if self.result is not None:
            return
        self.result = result
        if self._then is not None:
            self._then(result)

    def then(self, fn: Settle) -> None:
        if self.result is not None:
            fn(self.result)
        else:
            self._then = fn


#: The methods that act on calls: method -> request type (``place_call``,
#: ``transfer_call``).
CALLS: dict[str, type[Message]] = {
    "CreateSIPParticipant": pb.CreateSIPParticipantRequest,
    "TransferSIPParticipant": pb.TransferSIPParticipantRequest,
}


def place_call(
    directory: Directory | None, dialer: Dialer | None, claims: Claims, req: Any, now: float
) -> Message | Waiting:
    """CreateSIPParticipant, checked as LiveKit checks it (its ``Validate``),
    then placed; with ``wait_until_answered``, answered once the callee is."""
    require_sip(claims, "call")
    if directory is None or dialer is None:
        raise Unavailable("outbound calls need SIP and rooms on this server")
    if not req.sip_trunk_id and not req.HasField("trunk"):
        raise InvalidArgument("missing sip trunk id")
    if not req.sip_call_to:
        raise InvalidArgument("missing sip callee number")
    if "@" in req.sip_call_to:
        raise InvalidArgument("SipCallTo should be a phone number or SIP user, not a full SIP URI")
    if not req.room_name:
        raise InvalidArgument("missing room name")
    trunk = None
    if req.sip_trunk_id:
        trunk = directory.outbound_trunk(claims.tenant, req.sip_trunk_id)
    elif not req.trunk.hostname:
        raise InvalidArgument("no outbound hostname specified")
    if not req.wait_until_answered:
        return dialer.place(claims.tenant, req, trunk, now).info()  # type: ignore[no-any-return]
    waiting = Waiting()
    dialer.place(claims.tenant, req, trunk, now, waiting.settle)
    return waiting


def transfer_call(
    rooms: RoomHub | None,
    transfers: Transferer | None,
    claims: Claims,
    req: Any,
    now: float,
) -> Message | Waiting:
    """TransferSIPParticipant, checked in LiveKit's order (livekit
    ``transferSIPParticipantRequest``): the room and identity named, the
    grants ``sip.call`` and ``roomAdmin`` for the room, ``transfer_to`` a
    sip:, sips: or tel: URI; then the participant, which must be the SIP
    participant of a call that is up here.  Answered once the transfer's
    outcome is known."""
    if not req.room_name:
        raise InvalidArgument("missing room name")
    if not req.participant_identity:
        raise InvalidArgument("missing participant identity")
    require_sip(claims, "call")
    claims.require("roomAdmin", room=req.room_name)
    refer_to = refer_target(req.transfer_to)
    check_headers(req.headers)
    live = rooms.find(claims.tenant, req.room_name) if rooms is not None else None
    session = live.sessions.get(req.participant_identity) if live is not None else None
    if session is None:
        raise NotFound(f"participant {req.participant_identity!r} is not in the room")
    call_id = session.info.attributes.get("sip.callID", "")
    if not call_id:
        raise InvalidArgument("no SIP session associated with participant")
    if transfers is None:
        raise Unavailable("transfers need SIP and rooms on this server")
    timeout = req.ringing_timeout.ToSeconds() if req.HasField("ringing_timeout") else 0
    waiting = Waiting()
    transfers.transfer(
        claims.tenant, session, call_id, refer_to, float(timeout or TRANSFER_TIMEOUT), now,
        waiting.settle, req.play_dialtone, dict(req.headers),
    )  # fmt: skip
    if isinstance(waiting.result, EdgeDispatchError):
        raise waiting.result
    return waiting.result if waiting.result is not None else waiting


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
