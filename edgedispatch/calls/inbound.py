"""Inbound calls, decided: which tenant's trunk takes the call, whether the
caller proves the trunk's credentials, which rule routes it, and whether
the agents it names can run.  Sans-IO (``now`` and the random suffix maker
are given).

First the limits (``calls.admission``): INVITEs per source address, calls
per tenant and in all.  Then each step refuses as livekit/sip does:
- no trunk or no rule: 404 "Does not match any SIP Trunks" (or the rule's
  reason); trunks or rules that are ambiguous: 500, with LiveKit's message;
- a trunk with credentials: 407 with a challenge (``sip.digest``), 401 for
  a wrong answer;
- a rule whose agent has no worker now, and no agent server to start on
  demand: 480, never a silent room (LiveKit starts the room and nobody
  comes).
A routed call is answered and bridged into its room (``calls.bridge``);
without rooms (``rtc.enabled`` off, or media in the server's process) it
gets 480 with the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from edgedispatch.calls.admission import Admission, Refusal
from edgedispatch.calls.bridge import BridgedCall, CallServices
from edgedispatch.dispatch.domain import Domain
from edgedispatch.errors import EdgeDispatchError, PermissionDenied, Unauthenticated
from edgedispatch.sip import sdp
from edgedispatch.sip.digest import DigestAuth, Verdict
from edgedispatch.sip.directory import Directory
from edgedispatch.sip.header_maps import CALL_ID_FULL, CALL_TAG, CallHeaders
from edgedispatch.sip.message import parse_name_addr, parse_uri
from edgedispatch.sip.outcome import Admit, NeedPin, evaluate, shown_number
from edgedispatch.sip.records import media_encryption
from edgedispatch.sip.routing import Call, pin_and_room
from edgedispatch.sip.uac import Event as OutboundEvent
from edgedispatch.sip.uas import UserAgentServer
from edgedispatch.sip.uas_calls import CallConfirmed, CallEnded, Dtmf, Event, IncomingCall

log = logging.getLogger("edgedispatch.sip")


class InboundCalls:
    def __init__(
        self,
        directory: Directory,
        domain: Domain,
        auth: DigestAuth,
        new_suffix: Callable[[], str],
        bridge: CallServices | None = None,
        admission: Admission | None = None,
        on_demand: Callable[[str, str], bool] | None = None,
    ) -> None:
        self._directory = directory
        self._domain = domain
        self._auth = auth
        self._new_suffix = new_suffix
        #: None: calls cannot be bridged here (no rooms, or no media workers).
        self.bridge = bridge
        #: Calls per source, tenant and in all (``calls.admission``).
        self.admission = admission or Admission()
        #: (tenant, agent name) -> whether an agent server of it would be
        #: started for a job (one that is idle now can still take the call).
        self._on_demand = on_demand

    def on_event(self, ua: UserAgentServer, event: Event | OutboundEvent, now: float) -> None:
        if isinstance(event, IncomingCall):
            try:
                self._admit(ua, event, now)
            except EdgeDispatchError as exc:
                log.info("call %s refused: %s", event.call_id, exc.msg, extra=_fields(event))
                self._drop(event.call_id)
                if ua.calls.get(event.call_id) is not None:
                    ua.reject(event.call_id, exc.sip_status, now, exc.msg)
            return
        if isinstance(event, CallEnded):  # however it ended: its count ends
            self.admission.ended(event.call_id)
        call = self.bridge.calls.get(event.call_id) if self.bridge is not None else None
        if call is None:
            return
        if isinstance(event, CallEnded):
            log.info("call %s ended: %s", event.call_id, event.why, extra=call.fields())
            call.end(now)
        elif isinstance(event, CallConfirmed):
            call.on_confirmed(now)
        elif isinstance(event, Dtmf):
            call.on_digit(event.digit, now)

    def _drop(self, call_id: str) -> None:
        """A call refused while being set up: its media and participant go."""
        call = self.bridge.calls.get(call_id) if self.bridge is not None else None
        if call is not None and self.bridge is not None:
            call.end(self.bridge.clock())

    def _admit(self, ua: UserAgentServer, event: IncomingCall, now: float) -> None:
        refusal = self.admission.arrived(event.source[0], now)  # before any lookup
        if refusal is not None:
            self._refuse_admission(ua, event, refusal, now)
            return
        invite = event.invite
        caller = parse_uri(parse_name_addr(invite.headers.get("from")).uri)
        called = parse_uri(parse_name_addr(invite.headers.get("to")).uri)
        call = Call(
            calling=caller.user, called=called.user, source_ip=event.source[0],
            from_host=caller.host,
        )  # fmt: skip
        tenant, trunk, rule = self._directory.route(call)
        refusal = self.admission.admit(tenant, event.call_id)  # counted until CallEnded
        if refusal is not None:
            self._refuse_admission(ua, event, refusal, now)
            return
        if trunk.auth_username or trunk.auth_password:
            verdict = self._auth.check(invite, trunk.auth_username, trunk.auth_password, now)
            if verdict is Verdict.WRONG:
                raise Unauthenticated("wrong credentials for the SIP trunk")  # 401
            if verdict is not Verdict.OK:
                challenge = self._auth.challenge(event.call_id, now, verdict is Verdict.STALE)
                ua.reject(event.call_id, 407, now, headers=[("proxy-authenticate", challenge)])
                return
        headers = CallHeaders.of(trunk)
        extra = headers.attributes(invite.headers)
        extra[CALL_ID_FULL] = event.call_id
        offered = ua.calls.get(event.call_id)
        if offered is not None:
            extra[CALL_TAG] = offered.local_tag
        outcome = evaluate(
            trunk, rule, call, call_id=event.call_id, suffix=self._new_suffix(),
            extra_attributes=extra,
        )  # fmt: skip
        if isinstance(outcome, Admit) and not self._agents_can_run(ua, event, tenant, outcome, now):
            return
        if isinstance(outcome, Admit):
            log.info(
                "call routed to room %s (tenant %s, trunk %s, rule %s)",
                outcome.room, tenant or "-", outcome.trunk_id, outcome.rule_id,
                extra={**_fields(event), "room": outcome.room, "tenant": tenant},
            )  # fmt: skip
        bridge = self.bridge
        if bridge is None:
            self._refuse(ua, event, 480, "calls are not bridged here: rooms are off", now)
            return
        if not invite.body.strip():
            raise sdp.NotAcceptable("an INVITE without an SDP offer is not served")
        offer = sdp.parse_offer(invite.body)
        encryption = media_encryption(trunk, rule)
        sdp.answer(offer, bridge.media_address, 0, 0, encryption)  # 488 now if nothing fits
        ua.ring(event.call_id, now)
        shown = (shown_number(call.calling, rule.hide_phone_number), call.called)
        longest = trunk.max_call_duration.ToSeconds() if trunk.HasField("max_call_duration") else 0
        longest = max(longest, 0)
        if isinstance(outcome, NeedPin):
            # The media goes where the rule's room will be (a direct rule's
            # room; for the others, their prefix: see the README).
            room = pin_and_room(rule)[1]
            BridgedCall(
                bridge, ua, event.call_id, tenant, offer, room,
                on_pin=self._pin_entered(call, extra), shown=shown, max_duration=longest,
                headers=headers, encryption=encryption,
            )  # fmt: skip
            return
        bridged = BridgedCall(
            bridge, ua, event.call_id, tenant, offer, outcome.room, admit=outcome, shown=shown,
            max_duration=longest, headers=headers, encryption=encryption,
        )  # fmt: skip
        bridged.join(outcome, now)

    def _agents_can_run(
        self, ua: UserAgentServer, event: IncomingCall, tenant: str, outcome: Admit, now: float
    ) -> bool:
        for name in outcome.agents:
            if not self._can_run(tenant, name):
                self._refuse(ua, event, 480, f"agent {name!r} cannot run now", now)
                return False
        return True

    def _can_run(self, tenant: str, name: str) -> bool:
        """A worker of the agent is connected, or one will be started."""
        if self._domain.workers.connected(tenant, name):
            return True
        return self._on_demand is not None and self._on_demand(tenant, name)

    def _pin_entered(
        self, call: Call, extra: dict[str, str]
    ) -> Callable[[BridgedCall, str, float], Admit | None]:
        """The call's PIN check: routed again with the digits entered;
        None for a wrong PIN (or a rule whose agent cannot run now).
        ``extra``: the attributes the INVITE's headers gave."""

        def check(bridged: BridgedCall, pin: str, now: float) -> Admit | None:
            try:
                tenant, trunk, rule = self._directory.route(call._replace(pin=pin))
                outcome = evaluate(
                    trunk, rule, call._replace(pin=pin), call_id=bridged.call_id,
                    suffix=self._new_suffix(), extra_attributes=extra,
                )  # fmt: skip
            except (PermissionDenied, EdgeDispatchError) as exc:
                log.info(
                    "call %s: PIN refused: %s", bridged.call_id, exc.msg, extra=bridged.fields()
                )
                return None
            if not isinstance(outcome, Admit) or tenant != bridged.tenant:
                return None
            if any(not self._can_run(tenant, a) for a in outcome.agents):
                log.info(
                    "call %s: the PIN rule's agent cannot run now", bridged.call_id,
                    extra=bridged.fields(),
                )  # fmt: skip
                return None
            return outcome

        return check

    def _refuse_admission(
        self, ua: UserAgentServer, event: IncomingCall, refusal: Refusal, now: float
    ) -> None:
        if refusal.drop:  # a flood: one line per dropped INVITE would be a second one
            log.debug(
                "call %s from %s dropped: %s", event.call_id, event.source[0], refusal.reason,
                extra=_fields(event),
            )  # fmt: skip
            ua.drop(event.call_id, now)
        else:
            log.info(
                "call %s from %s refused: %s", event.call_id, event.source[0], refusal.reason,
                extra=_fields(event),
            )  # fmt: skip
            ua.reject(event.call_id, refusal.status, now, refusal.reason, refusal.headers())

    def _refuse(
        self, ua: UserAgentServer, event: IncomingCall, status: int, why: str, now: float
    ) -> None:
        log.info("call %s refused: %s", event.call_id, why, extra=_fields(event))
        ua.reject(event.call_id, status, now, why)


def _fields(event: IncomingCall) -> dict[str, object]:
    """The ``extra`` of a log line about a call not yet routed to a tenant."""
    return {"call": event.call_id, "peer": event.source[0]}
