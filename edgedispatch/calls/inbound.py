"""Inbound calls, decided: which tenant's trunk takes the call, whether the
caller proves the trunk's credentials, which rule routes it, and whether
the agents it names can run.  Sans-IO (``now`` and the random suffix maker
are given).

Each step refuses as livekit/sip does:
- no trunk or no rule: 404 "Does not match any SIP Trunks" (or the rule's
  reason); trunks or rules that are ambiguous: 500, with LiveKit's message;
- a trunk with credentials: 407 with a challenge (``sip.digest``), 401 for
  a wrong answer;
- a rule whose agent has no worker now: 480, never a silent room (LiveKit
  starts the room and nobody comes).
What is not built yet is said: a PIN rule, and a routed call (the media
bridge into rooms is to come) get 480 with the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from edgedispatch.calls.admission import Admission, Refusal
from edgedispatch.dispatch.domain import Domain
from edgedispatch.errors import EdgeDispatchError, Unauthenticated
from edgedispatch.sip.digest import DigestAuth, Verdict
from edgedispatch.sip.directory import Directory
from edgedispatch.sip.message import parse_name_addr, parse_uri
from edgedispatch.sip.outcome import NeedPin, evaluate
from edgedispatch.sip.routing import Call
from edgedispatch.sip.uac import Event as OutboundEvent
from edgedispatch.sip.uas import CallEnded, Event, IncomingCall, UserAgentServer

log = logging.getLogger("edgedispatch.sip")


class InboundCalls:
    def __init__(
        self,
        directory: Directory,
        domain: Domain,
        auth: DigestAuth,
        new_suffix: Callable[[], str],
        admission: Admission | None = None,
    ) -> None:
        self._directory = directory
        self._domain = domain
        self._auth = auth
        self._new_suffix = new_suffix
        #: Calls per source, tenant and in all (``calls.admission``).
        self.admission = admission or Admission()

    def on_event(self, ua: UserAgentServer, event: Event | OutboundEvent, now: float) -> None:
        if isinstance(event, IncomingCall):
            try:
                self._admit(ua, event, now)
            except EdgeDispatchError as exc:
                log.info("call %s refused: %s", event.call_id, exc.msg)
                ua.reject(event.call_id, exc.sip_status, now, exc.msg)
        elif isinstance(event, CallEnded):  # however it ended: its count ends
            self.admission.ended(event.call_id)

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
        outcome = evaluate(trunk, rule, call, call_id=event.call_id, suffix=self._new_suffix())
        if isinstance(outcome, NeedPin):
            self._refuse(ua, event, 480, "PIN rules are not served yet", now)
            return
        agents = outcome.room_config.agents if outcome.room_config is not None else []
        for wanted in agents:
            if not self._domain.workers.connected(tenant, wanted.agent_name):
                self._refuse(ua, event, 480, f"agent {wanted.agent_name!r} cannot run now", now)
                return
        log.info(
            "call routed to room %s (tenant %s, trunk %s, rule %s)",
            outcome.room, tenant or "-", outcome.trunk_id, outcome.rule_id,
        )  # fmt: skip
        self._refuse(ua, event, 480, "calls are not bridged into rooms yet", now)

    def _refuse_admission(
        self, ua: UserAgentServer, event: IncomingCall, refusal: Refusal, now: float
    ) -> None:
        if refusal.drop:  # a flood: one line per dropped INVITE would be a second one
            log.debug("call %s from %s dropped: %s", event.call_id, event.source[0], refusal.reason)
            ua.drop(event.call_id, now)
        else:
            log.info("call %s from %s refused: %s", event.call_id, event.source[0], refusal.reason)
            ua.reject(event.call_id, refusal.status, now, refusal.reason, refusal.headers())

    def _refuse(
        self, ua: UserAgentServer, event: IncomingCall, status: int, why: str, now: float
    ) -> None:
        log.info("call %s refused: %s", event.call_id, why)
        ua.reject(event.call_id, status, now, why)
