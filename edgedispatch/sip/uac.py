"""Outbound calls: the SIP user agent client (RFC 3261 §8.1, §13.2, §17.1),
sans-IO, for CreateSIPParticipant.

``dial`` sends an INVITE with our SDP offer through an INVITE client
transaction: repeated on Timer A until a response, given up on Timer B
(408).  A 401/407 challenge is answered once with the trunk's credentials
(a new INVITE, CSeq + 1); a 2xx is ACKed (and its copies ACKed again) and
the call is up; a 300-699 is ACKed and the call failed.  ``cancel`` stops a
ringing call (CANCEL, only once a provisional answer came, §9.1),
``hang_up`` ends an answered one (BYE, repeated on Timer E until
answered).  The callee's BYE ends it too.  Events tell the application
what happened; Record-Route is not followed (a trunk is one hop away).

Over TCP (``transport="TCP"``: the trunk asks for it; the shell opens the
connection before ``dial``) nothing is repeated (§17.1.1.2: Timers A and E
are for unreliable transports), and Timers B, D and F still give up.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from edgedispatch.sip.digest import authorization
from edgedispatch.sip.message import (
    Headers,
    Request,
    Response,
    contact_for,
    parse_name_addr,
    render,
    response_to,
)
from edgedispatch.sip.refer import Dialog
from edgedispatch.sip.transaction import T1, T2, Address


class Phase(enum.Enum):
    CALLING = "calling"  # INVITE sent, nothing back yet
    RINGING = "ringing"  # a provisional answer came
    ACTIVE = "active"  # 2xx: the call is up
    ENDED = "ended"


@dataclass
class Progress:
    call_id: str
    status: int  #: 180, 183...


@dataclass
class Answered:
    call_id: str
    sdp: bytes
    #: The 200's headers (``sip.header_maps`` makes attributes of them).
    headers: Headers = field(default_factory=Headers, compare=False)


@dataclass
class Failed:
    call_id: str
    status: int  #: the callee's final answer, or 408 (no answer), 487 (cancelled)
    reason: str


@dataclass
class Ended:
    call_id: str
    why: str  #: "bye" (the callee hung up), "hung up"


Event = Progress | Answered | Failed | Ended
#: The event classes, for ``isinstance`` (the application's dispatch).
OUTBOUND_EVENTS = (Progress, Answered, Failed, Ended)


@dataclass
class OutboundCall:
    call_id: str
    target: str  #: the Request-URI: sip:+15550100@trunk
    peer: Address
    from_uri: str
    local_tag: str
    sdp: bytes
    username: str
    password: str
    phase: Phase = Phase.CALLING
    cseq: int = 1
    branch: str = ""
    invite: bytes = b""  #: the INVITE as last sent
    authed: bool = False
    remote_tag: str = ""
    remote_target: str = ""  #: the callee's Contact
    ack: bytes = b""  #: the ACK of its 2xx, sent again for each copy
    resend: bytes = b""  #: what Timer A or E repeats
    resend_at: float | None = None
    interval: float = T1
    give_up: float = 0.0
    cancelling: bool = False
    bye: bool = False
    ringing_timeout: float = 180.0  #: livekit/sip's default
    transport: str = "UDP"  #: or "TCP", "TLS"
    #: Custom headers: the INVITE's (``dial``), and our BYE's or CANCEL's
    #: (as the application gives them when it ends the call).
    headers: tuple[tuple[str, str], ...] = ()
    end_headers: tuple[tuple[str, str], ...] = ()

    @property
    def reliable(self) -> bool:
        return self.transport != "UDP"


class UserAgentClient:
    """:param contact: our Contact URI; its host:port is our Via sent-by.
    :param new_tag: a fresh random token (tags, branches, Call-IDs)."""

    def __init__(self, contact: str, new_tag: Callable[[], str]) -> None:
        self.contact = contact
        self.tls_contact = ""  #: ours over TLS, once it is served (``uas.listen_tls``)
        self._sent_by = contact.split("@", 1)[-1].removeprefix("sip:")
        self._new_tag = new_tag
        self.calls: dict[str, OutboundCall] = {}
        self._events: list[Event] = []
        self._out: list[tuple[bytes, Address]] = []
        #: How the calls we placed ended up, by status: the callee's final
        #: answer, or 408/487 for no answer or our CANCEL (for /metrics).
        self.call_outcomes: Counter[int] = Counter()

    def dial(
        self,
        target: str,
        peer: Address,
        from_uri: str,
        sdp: bytes,
        now: float,
        username: str = "",
        password: str = "",
        ringing_timeout: float = 180.0,
        call_id: str = "",
        transport: str = "UDP",
        headers: Sequence[tuple[str, str]] = (),
    ) -> str:
        """Place a call; returns its Call-ID (``call_id``, or a new one).
        :param transport: "UDP", or "TCP" or "TLS" over a connection to
        ``peer`` that the shell has opened.
        :param headers: custom headers for the INVITE."""
        if transport not in ("UDP", "TCP", "TLS"):
            raise ValueError(f"no SIP transport {transport!r}")
        call_id = call_id or f"{self._new_tag()}@edgedispatch"
        call = OutboundCall(
            call_id, target, peer, from_uri, self._new_tag(), sdp, username, password,
            ringing_timeout=ringing_timeout, transport=transport, headers=tuple(headers),
        )  # fmt: skip
        self.calls[call_id] = call
        self._send_invite(call, now)
        return call_id

    def handles(self, call_id: str) -> bool:
        return call_id in self.calls

    # -- input -----------------------------------------------------------

    def receive_response(self, msg: Response, now: float) -> None:
        call = self.calls.get(msg.call_id)
        if call is None:
            return
        number, method = msg.cseq
        if method == "BYE":
            if msg.status >= 200 and call.bye:
                self._forget(call)
            return
        if method != "INVITE" or number != call.cseq:
            return  # an answer to a CANCEL, or to an INVITE we replaced
        status = msg.status
        if status < 200:
            if call.phase is Phase.CALLING:
                call.phase = Phase.RINGING  # Timer A and B stop (§17.1.1.2)
                call.resend_at = now + call.ringing_timeout
                if call.cancelling:  # asked before anything came back
                    self._send_cancel(call)
            if status > 100:
                self._events.append(Progress(call.call_id, status))
            return
        if status < 300:
            self._answered(call, msg, now)
            return
        self._out.append((self._ack_failure(call, msg), call.peer))
        if call.phase is Phase.ENDED:
            return  # a copy of a final answer: ACKed again, nothing more
        if status in (401, 407) and not call.authed and call.username:
            challenge = msg.headers.get(
                "proxy-authenticate" if status == 407 else "www-authenticate"
            )
            if challenge:
                call.authed = True
                call.cseq += 1
                self._send_invite(call, now, (status, challenge))
                return
        self._fail(call, status, _reason_of(msg), now)

    def receive_request(self, req: Request, source: Address, now: float) -> bytes:
        """An in-dialog request from the callee (BYE): our answer."""
        call = self.calls.get(req.call_id)
        if call is None or call.phase is not Phase.ACTIVE or req.method != "BYE":
            return response_to(req, 481, "Call/Transaction Does Not Exist")
        call.phase = Phase.ENDED
        call.resend_at = None
        self._events.append(Ended(call.call_id, "bye"))
        self._forget(call)
        return response_to(req, 200, "OK")

    # -- the application's --------------------------------------------------

    def cancel(self, call_id: str, now: float, headers: Sequence[tuple[str, str]] = ()) -> None:
        """Stop a call that has not been answered (CANCEL with ``headers``)."""
        call = self.calls.get(call_id)
        if call is None or call.phase in (Phase.ACTIVE, Phase.ENDED) or call.cancelling:
            return
        call.cancelling = True
        call.end_headers = tuple(headers)
        if call.phase is Phase.CALLING:
            # §9.1: no CANCEL before a provisional answer; Timer B or the
            # answer decides, and a late 2xx is then hung up.
            return
        self._send_cancel(call)

    def hang_up(self, call_id: str, now: float, headers: Sequence[tuple[str, str]] = ()) -> None:
        """End the call: BYE once answered, else CANCEL (with ``headers``)."""
        call = self.calls.get(call_id)
        if call is None or call.phase is Phase.ENDED:
            return
        if call.phase is not Phase.ACTIVE:
            self.cancel(call_id, now, headers)
            return
        call.end_headers = tuple(headers)
        self._send_bye(call, now)
        self._events.append(Ended(call.call_id, "hung up"))

    def dialog(self, call_id: str) -> Dialog | None:
        """An answered call's dialog, for a request of ours in it (REFER)."""
        call = self.calls.get(call_id)
        if call is None or call.phase is not Phase.ACTIVE:
            return None
        tag = f";tag={call.remote_tag}" if call.remote_tag else ""
        return Dialog(
            call_id, call.remote_target, f"<{call.from_uri}>;tag={call.local_tag}",
            f"<{call.target}>{tag}", call.peer, call.transport,
        )  # fmt: skip

    def next_cseq(self, call_id: str) -> int:
        call = self.calls[call_id]
        call.cseq += 1
        return call.cseq

    # -- time ----------------------------------------------------------------

    def next_deadline(self) -> float | None:
        times = [c.resend_at for c in self.calls.values() if c.resend_at is not None]
        return min(times) if times else None

    def on_timer(self, now: float) -> None:
        for call in [c for c in self.calls.values() if c.resend_at and c.resend_at <= now]:
            if call.phase is Phase.CALLING:
                if now >= call.give_up:  # Timer B: nobody answered at all
                    self._fail(call, 487 if call.cancelling else 408, "no answer", now)
                    continue
                if not call.reliable:  # (over TCP, only Timer B runs)
                    self._out.append((call.resend, call.peer))  # Timer A: doubling
                call.interval *= 2
                call.resend_at = min(now + call.interval, call.give_up)
            elif call.phase is Phase.RINGING:  # rang too long: give up
                self._send_cancel(call)
                self._fail(call, 408, "no answer before the ringing timeout", now)
            elif call.bye and now < call.give_up:
                if not call.reliable:
                    self._out.append((call.resend, call.peer))  # Timer E
                call.interval = min(call.interval * 2, T2)
                call.resend_at = min(now + call.interval, call.give_up)
            else:  # Timer F (our BYE unanswered) or D (copies of a final answer)
                self._forget(call)

    def take_outgoing(self) -> list[tuple[bytes, Address]]:
        out, self._out = self._out, []
        return out

    def take_events(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    # -- helpers -------------------------------------------------------------

    def _via(self, call: OutboundCall) -> str:
        call.branch = f"z9hG4bK{self._new_tag()}"
        return f"SIP/2.0/{call.transport} {self._sent_by};branch={call.branch}"

    def _contact(self, call: OutboundCall) -> str:
        """Where the callee sends its requests: over the same transport."""
        tls = self.tls_contact or f"{self.contact};transport=tls"
        return f"<{contact_for(self.contact, call.transport, tls)}>"

    def _send_invite(
        self, call: OutboundCall, now: float, challenge: tuple[int, str] | None = None
    ) -> None:
        headers = [
            ("via", self._via(call)),
            ("max-forwards", "70"),
            ("from", f"<{call.from_uri}>;tag={call.local_tag}"),
            ("to", f"<{call.target}>"),
            ("call-id", call.call_id),
            ("cseq", f"{call.cseq} INVITE"),
            ("contact", self._contact(call)),
            ("allow", "INVITE, ACK, CANCEL, BYE, OPTIONS"),
            ("content-type", "application/sdp"),
            *call.headers,
        ]
        if challenge is not None:
            status, value = challenge
            name = "proxy-authorization" if status == 407 else "authorization"
            headers.append((name, self._credentials(call, value)))
        call.invite = render(f"INVITE {call.target} SIP/2.0", headers, call.sdp)
        call.resend = call.invite
        self._out.append((call.invite, call.peer))
        call.phase = Phase.CALLING
        call.interval = T1
        call.give_up = now + 64 * T1  # Timer B
        call.resend_at = call.give_up if call.reliable else now + T1

    def _credentials(self, call: OutboundCall, challenge: str) -> str:
        return authorization(
            challenge, call.username, call.password, "INVITE", call.target, self._new_tag()
        )

    def _answered(self, call: OutboundCall, msg: Response, now: float) -> None:
        first = not call.ack
        if first and call.phase is not Phase.ENDED:  # (one that crossed our CANCEL counted 487)
            self.call_outcomes[msg.status] += 1
        if first:
            to = parse_name_addr(msg.headers.get("to"))
            call.remote_tag = to.tag
            contact = msg.headers.get("contact")
            call.remote_target = parse_name_addr(contact).uri if contact else call.target
            call.ack = self._in_dialog(call, "ACK", call.cseq)
        self._out.append((call.ack, call.peer))  # and again for each copy of the 2xx
        if not first:
            return
        if call.phase is Phase.ENDED:  # it crossed our CANCEL or gave up: hang up
            self._send_bye(call, now)
            return
        call.phase = Phase.ACTIVE
        call.resend_at = None
        if call.cancelling:  # answered after all: hang it up (§9.1)
            self._send_bye(call, now)
            self._fail(call, 487, "cancelled", now)
            return
        self._events.append(Answered(call.call_id, msg.body, msg.headers))

    def _ack_failure(self, call: OutboundCall, msg: Response) -> bytes:
        """The ACK of a 300-699 (§17.1.1.3): the INVITE's branch, the
        response's To."""
        return render(
            f"ACK {call.target} SIP/2.0",
            [
                ("via", f"SIP/2.0/{call.transport} {self._sent_by};branch={call.branch}"),
                ("max-forwards", "70"),
                ("from", f"<{call.from_uri}>;tag={call.local_tag}"),
                ("to", msg.headers.get("to")),
                ("call-id", call.call_id),
                ("cseq", f"{msg.cseq[0]} ACK"),
            ],
        )

    def _in_dialog(
        self, call: OutboundCall, method: str, cseq: int, extra: Sequence[tuple[str, str]] = ()
    ) -> bytes:
        tag = f";tag={call.remote_tag}" if call.remote_tag else ""
        return render(
            f"{method} {call.remote_target} SIP/2.0",
            [
                ("via", self._via(call)),
                ("max-forwards", "70"),
                ("from", f"<{call.from_uri}>;tag={call.local_tag}"),
                ("to", f"<{call.target}>{tag}"),
                ("call-id", call.call_id),
                ("cseq", f"{cseq} {method}"),
                *extra,
            ],
        )

    def _send_cancel(self, call: OutboundCall) -> None:
        cancel = render(
            f"CANCEL {call.target} SIP/2.0",
            [
                ("via", f"SIP/2.0/{call.transport} {self._sent_by};branch={call.branch}"),
                ("max-forwards", "70"),
                ("from", f"<{call.from_uri}>;tag={call.local_tag}"),
                ("to", f"<{call.target}>"),
                ("call-id", call.call_id),
                ("cseq", f"{call.cseq} CANCEL"),
                *call.end_headers,
            ],
        )
        self._out.append((cancel, call.peer))

    def _send_bye(self, call: OutboundCall, now: float) -> None:
        call.cseq += 1
        call.resend = self._in_dialog(call, "BYE", call.cseq, call.end_headers)
        call.bye = True
        call.phase = Phase.ENDED
        self._out.append((call.resend, call.peer))
        call.interval = T1
        call.give_up = now + 64 * T1  # Timer F
        call.resend_at = call.give_up if call.reliable else now + T1

    def _fail(self, call: OutboundCall, status: int, reason: str, now: float) -> None:
        if call.phase is not Phase.ENDED:
            self._events.append(Failed(call.call_id, status, reason))
            self.call_outcomes[status] += 1
        call.phase = Phase.ENDED
        if not call.bye:
            # Kept for Timer D: copies of its final answer still get an ACK,
            # and a 2xx that crosses our CANCEL is hung up.
            call.give_up = now + 64 * T1
            call.resend_at = call.give_up

    def _forget(self, call: OutboundCall) -> None:
        self.calls.pop(call.call_id, None)


def _reason_of(msg: Response) -> str:
    """A refusal's reason phrase, with the text of its Reason header
    (RFC 3326) when it gives one: why, not only what."""
    text = msg.headers.get("reason").partition('text="')[2].partition('"')[0]
    return f"{msg.reason} ({text})" if text else msg.reason
