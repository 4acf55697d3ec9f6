"""The SIP user agent's core (RFC 3261 §8.2, §12-15), sans-IO: as a server it
answers what needs no decision (OPTIONS, BYE, CANCEL, INFO, unknown
methods, bad requests) and reports calls as events; the application
decides each call with ``ring``, ``answer``, ``reject`` and ``hang_up``.

Datagrams in with ``now``; datagrams out (``take_outgoing``); one deadline
(``next_deadline``/``on_timer``).  What a call does over time:
- INVITE: 100 Trying at once (unless the application answers in the
  same pass), then the application's answers.  A 2xx is
  sent again (T1 doubling to T2) until its ACK; with no ACK within
  ``ACK_WAIT`` the call is hung up (§13.3.1.4).
- CANCEL of a pending INVITE: 200, then 487 to the INVITE; of an answered
  one: 200 and nothing else (the race is lost; the caller sends BYE).
- BYE: 200 and the call ends; 481 if no call has that dialog.
- A BYE we send is repeated (Timer E) until answered or Timer F.
Calls we place go through ``outbound`` (``sip.uac``), on the same
transport: messages of its calls go to it.  Tags come from ``new_tag``,
which the shell gives (random, without a clock or ``os`` here).
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections import Counter
from collections.abc import Callable, Sequence

from edgedispatch.errors import EdgeDispatchError, FailedPrecondition, Malformed, TooLarge
from edgedispatch.sip.message import (
    Request,
    Response,
    contact_for,
    parse_datagram,
    parse_name_addr,
    parse_via,
    refusal_of,
    render,
    response_to,
)
from edgedispatch.sip.refer import Dialog, Referrals
from edgedispatch.sip.refer import Event as TransferEvent
from edgedispatch.sip.transaction import T1, T2, Address, ServerTransactions, State, key_of
from edgedispatch.sip.uac import Ended, Failed, Phase, UserAgentClient
from edgedispatch.sip.uac import Event as OutboundEvent
from edgedispatch.sip.uas_calls import (
    REASONS,
    Call,
    CallConfirmed,
    CallEnded,
    CallState,
    Dtmf,
    Event,
    IncomingCall,
)

log = logging.getLogger("edgedispatch.sip")

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, NOTIFY"
MAX_TRANSACTIONS = 100_000
#: Seconds a 200 waits for its ACK before the call is hung up: livekit/sip's
#: 5 s (its ``inviteOkAckTimeout``), not RFC 3261's 64·T1 (32 s).  The 200
#: goes four times by then; a call never ACKed (a caller gone, or an INVITE
#: with a forged source) holds an RTP port and a call slot six times less.
ACK_WAIT = 5.0
#: Seconds a caller is told to wait while the server drains: about a
#: restart's time, not the drain's (which may be hours, and would keep a
#: proxy that honours it away from the restarted server).
DRAIN_RETRY_AFTER = 30


class UserAgentServer:
    """One transport's UAS (UDP for now).

    :param contact: our Contact URI, e.g. ``sip:edge@192.0.2.1:5060``.
    :param new_tag: a fresh random token (To tags, BYE branches)."""

    def __init__(self, contact: str, new_tag: Callable[[], str]) -> None:
        self.contact = contact
        self._new_tag = new_tag
        self.transactions = ServerTransactions()
        self.calls: dict[str, Call] = {}
        #: (resend_at, n, call id): the calls' timers, a heap checked lazily
        #: (an entry whose call is gone or re-armed is dropped when it comes
        #: up), so that the next deadline costs no walk of every call.
        self._timers: list[tuple[float, int, str]] = []
        self._timer_seq = itertools.count()
        self._events: list[Event] = []
        self._out: list[tuple[bytes, Address]] = []
        self._trying: list[tuple[Call, float]] = []  # INVITEs that may need a 100
        #: The calls we place (``outbound.dial``), on the same transport.
        self.outbound = UserAgentClient(contact, new_tag)
        #: Transfers (REFER) of the calls, incoming and placed (``transfer``).
        self.referrals = Referrals(self._sent_by(), contact, new_tag)
        #: Our Contact URI for calls over TLS ("" while TLS is off).
        self.tls_contact = ""
        #: Transactions kept at most (each lives up to 64*T1 = 32 s): past
        #: it, a new request gets a stateless 503 (2,000 calls/s fit).
        self.max_transactions = MAX_TRANSACTIONS
        #: Set by ``drain``: the Retry-After of the 503 that new calls and
        #: probes get (0: not draining).
        self.draining_retry_after = 0
        #: Final answers to the INVITEs of incoming calls, by status (for
        #: /metrics: the calls answered, and those refused, and why).
        self.call_answers: Counter[int] = Counter()

    def drain(self, retry_after: int = DRAIN_RETRY_AFTER) -> None:
        """Take no new calls: a new INVITE gets 503 with Retry-After, and so
        does OPTIONS (RFC 3261 §11.2: a probe is answered as an INVITE would
        be, and Kamailio's dispatcher counts only a 200 as up, so probers
        take the server out of rotation).  Calls already offered or up go on
        to their end: their ACK, BYE, CANCEL, INFO and re-INVITEs are served."""
        self.draining_retry_after = max(1, retry_after)

    def is_offered(self, call_id: str) -> bool:
        """Whether the call waits for the application's answer."""
        call = self.calls.get(call_id)
        return call is not None and call.state is CallState.OFFERED

    def live_calls(self) -> int:
        """Calls not ended yet, incoming and placed (what a drain waits for)."""
        incoming = sum(1 for c in self.calls.values() if c.state is not CallState.ENDED)
        return incoming + sum(1 for c in self.outbound.calls.values() if c.phase is not Phase.ENDED)

    # -- input -----------------------------------------------------------

    def receive_datagram(self, data: bytes, source: Address, now: float) -> None:
        if not data.strip():
            return  # a keep-alive (RFC 5626)
        try:
            msg = parse_datagram(data)
        except (Malformed, TooLarge) as exc:
            self._refuse_unparsed(data, source, exc)
            return
        self.receive(msg, source, now)

    def receive(
        self, msg: Request | Response, source: Address, now: float, reliable: bool = False
    ) -> None:
        """A parsed message (from a stream: ``reliable``, so that nothing
        is repeated or kept for copies)."""
        if isinstance(msg, Response):
            try:
                refer = msg.cseq[1] == "REFER"
            except Malformed:
                return  # no transaction of ours can match it: dropped
            if refer:
                self.referrals.receive_response(msg, now)
                return
        notify = isinstance(msg, Request) and msg.method == "NOTIFY"
        if self.outbound.handles(msg.call_id) and not notify:  # a call we placed
            if isinstance(msg, Response):
                self.outbound.receive_response(msg, now)
            else:
                self._out.append((self.outbound.receive_request(msg, source, now), source))
            return
        if isinstance(msg, Response):
            self._response(msg)
            return
        try:
            if len(self.transactions) >= self.max_transactions and msg.method != "ACK":
                if self.transactions.state(msg, source) is None:
                    # A flood: answered without keeping anything (no Timer G
                    # repeats to an address that may be forged, no memory).
                    head = [("retry-after", "5")]
                    self._out.append((response_to(msg, 503, "Service Unavailable", head), source))
                    if msg.method == "INVITE":
                        self.call_answers[503] += 1
                    return
            if self.transactions.receive(msg, source, reliable=reliable, now=now):
                self._request(msg, source, now)
        except EdgeDispatchError as exc:  # e.g. a bad Via: no one to answer to
            log.info("SIP %s from %s:%d refused: %s", msg.method, *source, exc.msg)

    def _refuse_unparsed(self, data: bytes, source: Address, exc: EdgeDispatchError) -> None:
        log.info("SIP message from %s:%d refused: %s", *source, exc.msg)
        answer = refusal_of(data, exc)
        if answer:
            self._out.append((answer, source))

    def _response(self, msg: Response) -> None:
        """An answer to a BYE we sent: it stops the repeats."""
        call = self.calls.get(msg.call_id)
        if call is not None and call.bye and msg.status >= 200:
            call.bye = b""
            self._forget(call)

    def _request(self, req: Request, source: Address, now: float) -> None:
        method = req.method
        if method not in ("ACK", "CANCEL") and self._refused_before_the_method(req, source, now):
            return
        if method == "INVITE":
            self._invite(req, source, now)
        elif method == "ACK":
            self._ack(req, now)
        elif method == "CANCEL":
            self._cancel(req, source, now)
        elif method == "BYE":
            self._bye(req, source, now)
        elif method == "OPTIONS":
            headers = [("allow", ALLOW), ("accept", "application/sdp"), ("supported", "")]
            if self.draining_retry_after:
                headers.append(("retry-after", str(self.draining_retry_after)))
                self._reply(req, source, 503, now, headers, to_tag=self._new_tag())
                return
            self._reply(req, source, 200, now, headers, to_tag=self._new_tag())
        elif method == "INFO":
            self._info(req, source, now)
        elif method == "NOTIFY":  # how a transfer of ours goes (RFC 3515)
            status, reason = self.referrals.receive_notify(req, now)
            self._reply(req, source, status, now, reason=reason)
        else:
            self._reply(req, source, 405, now, [("allow", ALLOW)])

    def _refused_before_the_method(self, req: Request, source: Address, now: float) -> bool:
        """§8.2.2 and §8.2.3: what is refused whatever the method: a
        Request-URI we cannot read (416), an extension required of us (420,
        we support none), a body of a type we cannot read (415; an INVITE
        carries SDP, or a multipart body with SDP in it, as carriers send)."""
        if req.uri.partition(":")[0].lower() not in ("sip", "sips", "tel"):
            self._reply(req, source, 416, now)
            return True
        required = [option for option in req.headers.get_all("require") if option]
        if required:
            self._reply(req, source, 420, now, [("unsupported", ", ".join(required))])
            return True
        kind = req.headers.get("content-type").split(";", 1)[0].strip().lower()
        if req.method == "INVITE" and req.body and kind != "application/sdp":
            if not kind.startswith("multipart/"):
                self._reply(req, source, 415, now, [("accept", "application/sdp")])
                return True
        return False

    def _invite(self, req: Request, source: Address, now: float) -> None:
        call = self.calls.get(req.call_id)
        if self.transactions.merged(req, source) or (
            call is not None and req.cseq == call.invite.cseq
        ):
            # The same INVITE by another path (a new branch: forked by a
            # proxy upstream), §8.2.2.2: refused, the first copy goes on,
            # or has been answered (its transaction still remembers it).
            self._reply(req, source, 482, now)
            return
        if call is None and self.draining_retry_after:
            head = [("retry-after", str(self.draining_retry_after))]
            self._reply(req, source, 503, now, head, to_tag=self._new_tag())
            return
        if call is not None:  # a re-INVITE in the call: the same session again
            if call.state is CallState.CONFIRMED and call.answer:
                self._reply(req, source, 200, now, self._session_headers(call), call.answer_sdp)
            else:
                self._reply(req, source, 491 if call.state is CallState.ANSWERED else 500, now)
            return
        call = Call(req.call_id, req, source, self._new_tag())
        self.calls[req.call_id] = call
        # 100 Trying goes out with this pass's datagrams only if nothing
        # else answers the INVITE in the pass (a call refused or rung at
        # once needs none: one packet less, to an address that may be forged).
        self._trying.append((call, now))
        self._events.append(IncomingCall(req.call_id, req, source))

    def _ack(self, req: Request, now: float) -> None:
        call = self.calls.get(req.call_id)
        if call is None or call.state is not CallState.ANSWERED:
            return  # a late or stray ACK: nothing answers an ACK
        call.state = CallState.CONFIRMED
        call.resend_at = None
        self._events.append(CallConfirmed(call.call_id))

    def _cancel(self, req: Request, source: Address, now: float) -> None:
        call = self.calls.get(req.call_id)
        if call is None or key_of(call.invite, call.source)[:3] != key_of(req, source)[:3]:
            self._reply(req, source, 481, now)
            return
        self._reply(req, source, 200, now, to_tag=call.local_tag)
        if call.state is CallState.OFFERED:
            self._final(call, 487, now)
            self._end(call, "cancel")

    def _bye(self, req: Request, source: Address, now: float) -> None:
        call = self.calls.get(req.call_id)
        tag = parse_name_addr(req.headers.get("to")).tag
        if call is None or call.state is CallState.OFFERED or tag != call.local_tag:
            self._reply(req, source, 481, now)
            return
        self._reply(req, source, 200, now)
        self._end(call, "bye")
        self._forget(call)

    def _info(self, req: Request, source: Address, now: float) -> None:
        call = self.calls.get(req.call_id)
        if call is None or call.state is CallState.ENDED:
            self._reply(req, source, 481, now)
            return
        self._reply(req, source, 200, now)
        kind = req.headers.get("content-type").lower()
        if kind.startswith("application/dtmf-relay") or kind.startswith("application/dtmf"):
            digit = _dtmf_digit(req.body)
            if digit:
                self._events.append(Dtmf(call.call_id, digit))

    # -- the application's decisions ---------------------------------------

    def ring(self, call_id: str, now: float) -> None:
        call = self._offered(call_id)
        call.rang = True
        self._reply(call.invite, call.source, 180, now, to_tag=call.local_tag)

    def answer(
        self, call_id: str, sdp: bytes, now: float, headers: Sequence[tuple[str, str]] = ()
    ) -> None:
        """200 with our SDP (and ``headers``: the trunk's custom ones), sent
        again until the caller's ACK."""
        call = self._offered(call_id)
        call.answer_sdp = sdp
        call.answer = self._reply(
            call.invite, call.source, 200, now, self._session_headers(call) + list(headers), sdp,
            call.local_tag,
        )  # fmt: skip
        call.state = CallState.ANSWERED
        call.interval = T1
        self._arm(call, now + T1)
        call.give_up = now + ACK_WAIT

    def reject(
        self,
        call_id: str,
        status: int,
        now: float,
        reason: str = "",
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        """A final answer of 300-699 (``headers``: e.g. a 407's challenge)."""
        call = self._offered(call_id)
        self._final(call, status, now, reason, headers)
        self._end(call, "rejected")

    def drop(self, call_id: str, now: float) -> None:
        """Refuse an offered call without a word (a flood over UDP, whose
        source may be forged: no answer is reflected at it).  Over TCP the
        peer's address is proven, so it gets a 503 instead (else it would
        wait out its Timer B)."""
        call = self._offered(call_id)
        if self.transactions.reliable(call.invite, call.source):
            self.reject(call_id, 503, now, "too many calls from this address")
            return
        self.transactions.forget(call.invite, call.source)
        self._end(call, "dropped")

    def hang_up(self, call_id: str, now: float, headers: Sequence[tuple[str, str]] = ()) -> None:
        """End a call from our side: BYE (with ``headers``) if it was
        answered, else 480."""
        call = self.calls.get(call_id)
        if call is None or call.state is CallState.ENDED:
            return
        if call.state is CallState.OFFERED:
            self.reject(call_id, 480, now)
            return
        self._send_bye(call, now, headers)
        self._end(call, "hung up")

    def transfer(
        self,
        call_id: str,
        refer_to: str,
        now: float,
        timeout: float = 0.0,
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        """REFER the call (up: ACKed, or answered if we placed it) to
        ``refer_to`` (a Refer-To value), with ``headers``; a placed call
        answers a challenge with its trunk's credentials.  Raises
        FailedPrecondition."""
        if self.referrals.pending(call_id):
            raise FailedPrecondition("the call is being transferred already")
        call = self.calls.get(call_id)
        if call is not None and call.state is CallState.CONFIRMED:
            inv = call.invite.headers
            ours = parse_name_addr(inv.get("to")).uri
            remote = parse_name_addr(inv.get("contact") or inv.get("from")).uri
            transport = parse_via(inv.get("via")).transport
            dialog = Dialog(call_id, remote, f"<{ours}>;tag={call.local_tag}", inv.get("from"),
                            call.source, transport)  # fmt: skip

            def next_cseq() -> int:
                assert call is not None
                call.local_cseq += 1
                return call.local_cseq

            self.referrals.start(dialog, refer_to, next_cseq, now, timeout, headers=headers)
            return
        placed = self.outbound.dialog(call_id)
        if placed is None:
            raise FailedPrecondition("can't transfer a call that is not up")
        out = self.outbound.calls[call_id]
        self.referrals.start(
            placed, refer_to, lambda: self.outbound.next_cseq(call_id), now, timeout,
            out.username, out.password, headers,
        )  # fmt: skip

    # -- time ----------------------------------------------------------------

    def _arm(self, call: Call, at: float) -> None:
        call.resend_at = at
        heapq.heappush(self._timers, (at, next(self._timer_seq), call.call_id))

    def _due(self, entry: tuple[float, int, str]) -> Call | None:
        """The call a timer entry is still for, or None if it is stale."""
        call = self.calls.get(entry[2])
        return call if call is not None and call.resend_at == entry[0] else None

    def next_deadline(self) -> float | None:
        heap = self._timers
        while heap and self._due(heap[0]) is None:
            heapq.heappop(heap)
        times = [heap[0][0]] if heap else []
        times += [
            t
            for t in (
                self.transactions.next_deadline(),
                self.outbound.next_deadline(),
                self.referrals.next_deadline(),
            )
            if t
        ]
        return min(times) if times else None

    def on_timer(self, now: float) -> None:
        self.transactions.on_timer(now)
        self.outbound.on_timer(now)
        for call_id in self.referrals.on_timer(now):  # transferred: the far side stayed
            if call_id in self.calls:
                self.hang_up(call_id, now)
            else:
                self.outbound.hang_up(call_id, now)
        heap, due = self._timers, {}  # a call armed twice for one time: once
        while heap and heap[0][0] <= now:
            call = self._due(heapq.heappop(heap))
            if call is not None:
                due[call.call_id] = call
        for call in due.values():
            if call.state is CallState.ANSWERED:
                if now >= call.give_up:  # no ACK: hang up (§13.3.1.4)
                    self._send_bye(call, now)
                    self._end(call, "no ack")
                    continue
                self._out.append((call.answer, call.source))
            elif call.bye:
                if now >= call.give_up:  # Timer F: give the BYE up
                    call.bye = b""
                    self._forget(call)
                    continue
                self._out.append((call.bye, call.source))
            else:
                call.resend_at = None
                continue
            call.interval = min(2 * call.interval, T2)
            self._arm(call, min(now + call.interval, call.give_up))

    def take_outgoing(self) -> list[tuple[bytes, Address]]:
        for call, at in self._trying:
            state = self.transactions.state(call.invite, call.source)
            if call.state is CallState.OFFERED and state is State.PROCEEDING and not call.rang:
                self._reply(call.invite, call.source, 100, at)
        self._trying.clear()
        out = self.transactions.take_outgoing() + self._out + self.outbound.take_outgoing()
        self._out = []
        return out + self.referrals.take_outgoing()

    def take_events(self) -> list[Event | OutboundEvent | TransferEvent]:
        """What happened to calls, incoming and ``outbound``, and to their
        transfers."""
        events: list[Event | OutboundEvent | TransferEvent] = [
            *self._events, *self.outbound.take_events(), *self.referrals.take_events(),
        ]  # fmt: skip
        self._events = []
        for event in events:
            if isinstance(event, (CallEnded, Ended, Failed)):
                self.referrals.forget(event.call_id)
        return events

    # -- helpers -------------------------------------------------------------

    def _offered(self, call_id: str) -> Call:
        call = self.calls.get(call_id)
        if call is None or call.state is not CallState.OFFERED:
            raise Malformed(f"call {call_id} is not waiting for an answer")
        return call

    def listen_tls(self, port: int) -> None:
        """SIP over TLS is served on ``port`` (of our host): the calls that
        come or go over it name it as our Contact."""
        base = self.contact.split(";", 1)[0].rsplit(":", 1)[0]  # sip:user@host
        self.tls_contact = f"{base}:{port};transport=tls"
        self.outbound.tls_contact = self.referrals.tls_contact = self.tls_contact

    def _session_headers(self, call: Call) -> list[tuple[str, str]]:
        """A 200's: our Contact for the call's transport (where the caller
        sends what follows in the dialog), Allow, Content-Type."""
        transport = parse_via(call.invite.headers.get("via")).transport
        contact = contact_for(self.contact, transport, self.tls_contact)
        return [
            ("contact", f"<{contact}>"),
            ("allow", ALLOW),
            ("content-type", "application/sdp"),
        ]

    def _reply(
        self,
        req: Request,
        source: Address,
        status: int,
        now: float,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        to_tag: str = "",
        reason: str = "",
    ) -> bytes:
        call = self.calls.get(req.call_id)
        if not to_tag and status > 100:
            to_tag = call.local_tag if call is not None else self._new_tag()
        reason = reason or REASONS.get(status, "Unknown")
        if status >= 200 and req.method == "INVITE" and (call is None or call.invite is req):
            self.call_answers[status] += 1  # a call's answer (not a re-INVITE's)
        data = response_to(req, status, reason, headers, body, to_tag)
        self.transactions.respond(req, source, status, data, now)
        return data

    def _final(
        self,
        call: Call,
        status: int,
        now: float,
        reason: str = "",
        extra: list[tuple[str, str]] | None = None,
    ) -> None:
        headers = [("reason", f'SIP;cause={status};text="{reason}"')] if reason else []
        self._reply(
            call.invite, call.source, status, now, headers + (extra or []), to_tag=call.local_tag
        )

    def _send_bye(self, call: Call, now: float, extra: Sequence[tuple[str, str]] = ()) -> None:
        """BYE within the dialog (§15.1.1): its From is our To and its To
        the caller's From; it goes where the INVITE came from."""
        inv = call.invite.headers
        via = parse_via(inv.get("via"))
        ours = parse_name_addr(inv.get("to"))
        remote = parse_name_addr(inv.get("contact") or inv.get("from"))
        call.local_cseq += 1
        call.bye_cseq = call.local_cseq
        call.bye = render(
            f"BYE {remote.uri} SIP/2.0",
            [
                (
                    "via",
                    f"SIP/2.0/{via.transport} {self._sent_by()};branch=z9hG4bK{self._new_tag()}",
                ),
                ("max-forwards", "70"),
                ("from", f"<{ours.uri}>;tag={call.local_tag}"),
                ("to", inv.get("from")),
                ("call-id", call.call_id),
                ("cseq", f"{call.bye_cseq} BYE"),
                *extra,
            ],
        )
        self._out.append((call.bye, call.source))
        call.interval = T1
        self._arm(call, now + T1)
        call.give_up = now + 64 * T1

    def _sent_by(self) -> str:
        return self.contact.split("@", 1)[-1].split(";", 1)[0].removeprefix("sip:")

    def _end(self, call: Call, why: str) -> None:
        """The call is over for the application; its record stays only
        while a BYE of ours still needs repeating (copies of requests are
        the transactions' to absorb)."""
        if call.state is CallState.ENDED:
            return
        call.state = CallState.ENDED
        if not call.bye:
            call.resend_at = None
        self._events.append(CallEnded(call.call_id, why))
        self._forget(call)

    def _forget(self, call: Call) -> None:
        if call.state is CallState.ENDED and not call.bye:
            self.calls.pop(call.call_id, None)


def _dtmf_digit(body: bytes) -> str:
    """``Signal=5`` (application/dtmf-relay) or a bare digit."""
    text = body.decode("utf-8", "replace")
    for line in text.splitlines():
        name, _, value = line.partition("=")
        if name.strip().lower() == "signal":
            text = value
            break
    digit = text.strip()[:1]
    return digit if digit and digit in "0123456789*#ABCDabcd" else ""
