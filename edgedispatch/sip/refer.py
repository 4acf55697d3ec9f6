"""Call transfer by REFER (RFC 3515), sans-IO, as livekit/sip does it for
TransferSIPParticipant: in the call's dialog we send ``REFER`` with
``Refer-To: <transfer_to>``; the far side accepts it (202, or any 2xx),
then tells how the transfer goes in ``NOTIFY``s with ``Event: refer`` and
``message/sipfrag`` bodies (``SIP/2.0 100 Trying``, then a final status),
each answered 200.

- The REFER is a non-INVITE client transaction (RFC 3261 §17.1.2): sent
  again on Timer E over UDP, given up on Timer F (408).  A 401/407 is
  answered once with the credentials given (a placed call's trunk's).
- A 300-699 to the REFER: the transfer is refused (``refused``).
- A final sipfrag: 2xx, the transfer succeeded; 300-699, it failed.
- Nothing final before the transfer's deadline: it failed (408).
- After a success the far side has ``BYE_AFTER`` (livekit/sip's one
  second) to hang up; then ``on_timer`` names the call for us to hang up.

Events: ``TransferAccepted`` (the REFER got a 2xx) and ``TransferEnded``
(the outcome).  A call that ends is ``forget``-ed, with no event: its
end is the application's news.  Time is given (``now``).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from edgedispatch.errors import InvalidArgument
from edgedispatch.sip.digest import authorization
from edgedispatch.sip.message import Request, Response, contact_for, render
from edgedispatch.sip.transaction import T1, T2, Address

#: Seconds from REFER to the final NOTIFY, unless the request says
#: (LiveKit's default for TransferSIPParticipant).
TRANSFER_TIMEOUT = 30.0
#: Seconds the far side has to hang up after a transfer succeeded (livekit/sip).
BYE_AFTER = 1.0
#: What we say we allow in a REFER (we take NOTIFY in the dialog).
ALLOW = "INVITE, ACK, CANCEL, BYE, NOTIFY, OPTIONS, INFO"


def refer_target(transfer_to: str) -> str:
    """``transfer_to`` as a Refer-To value, checked as LiveKit checks it
    (``TransferSIPParticipantRequest.Validate``): a sip: or sips: URI is
    sent as a name-addr (``<sip:...>``), a tel: URI bare; anything else
    (a bare number too) is refused."""
    inner = transfer_to.strip()
    if inner.startswith("<") and inner.endswith(">"):
        inner = inner[1:-1]
    if not inner:
        raise InvalidArgument("missing transfer to")
    if not inner.startswith(("sip:", "sips:", "tel:")):
        raise InvalidArgument("transfer_to must be a valid SIP(s) or TEL URI (sip:, sips: or tel:)")
    if any(c in inner for c in "\r\n<>") or len(inner) > 256:
        raise InvalidArgument("transfer_to is not a URI")
    return inner if inner.startswith("tel:") else f"<{inner}>"


def sipfrag_status(body: bytes) -> tuple[int, str] | None:
    """The status line of a ``message/sipfrag`` body (``SIP/2.0 200 OK``)."""
    line = body.decode("utf-8", "replace").strip().split("\n", 1)[0].strip()
    version, _, rest = line.partition(" ")
    code, _, reason = rest.partition(" ")
    if version.upper() != "SIP/2.0" or not code.isdigit() or not 100 <= int(code) < 700:
        return None
    return int(code), reason.strip()


@dataclass
class Dialog:
    """What an in-dialog request of ours needs (RFC 3261 §12.2.1.1)."""

    call_id: str
    target: str  #: the Request-URI: the far side's Contact
    local: str  #: our From: our URI and tag
    remote: str  #: our To: theirs and their tag
    peer: Address
    transport: str = "UDP"


@dataclass
class TransferAccepted:
    call_id: str


@dataclass
class TransferEnded:
    call_id: str
    status: int  #: the sipfrag's final status (2xx: transferred), or the REFER's refusal
    reason: str
    refused: bool = False  #: the REFER itself was refused (else: the transfer failed)


Event = TransferAccepted | TransferEnded


class Phase(enum.Enum):
    SENT = "sent"  # REFER out, no final answer yet
    ACCEPTED = "accepted"  # 2xx to the REFER: NOTIFYs tell the rest
    DONE = "done"  # an outcome was reported


@dataclass
class Referral:
    dialog: Dialog
    refer_to: str
    next_cseq: Callable[[], int]
    deadline: float
    username: str = ""
    password: str = ""
    phase: Phase = Phase.SENT
    cseq: int = 0
    request: bytes = b""
    resend_at: float | None = None
    interval: float = T1
    give_up: float = 0.0  #: Timer F
    authed: bool = False
    hang_up_at: float | None = None
    #: Custom headers (the request's, and the trunk's mapped attributes).
    headers: tuple[tuple[str, str], ...] = ()


class Referrals:
    """The transfers of one user agent's calls, one at a time per call.

    :param sent_by: our Via sent-by (host:port); :param contact: our Contact URI;
    :param new_tag: a fresh random token (branches, cnonces)."""

    def __init__(self, sent_by: str, contact: str, new_tag: Callable[[], str]) -> None:
        self._sent_by = sent_by
        self._contact = contact
        self.tls_contact = ""  #: ours over TLS, once it is served (``uas.listen_tls``)
        self._new_tag = new_tag
        self.referrals: dict[str, Referral] = {}
        self._events: list[Event] = []
        self._out: list[tuple[bytes, Address]] = []

    def pending(self, call_id: str) -> bool:
        """Whether the call has a transfer whose outcome is not known yet."""
        referral = self.referrals.get(call_id)
        return referral is not None and referral.phase is not Phase.DONE

    def start(
        self,
        dialog: Dialog,
        refer_to: str,
        next_cseq: Callable[[], int],
        now: float,
        timeout: float = TRANSFER_TIMEOUT,
        username: str = "",
        password: str = "",
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        """Send REFER (with ``headers``) in ``dialog``; ``next_cseq`` gives
        our next CSeq in it."""
        referral = Referral(
            dialog, refer_to, next_cseq, now + (timeout or TRANSFER_TIMEOUT), username, password,
            headers=tuple(headers),
        )  # fmt: skip
        self.referrals[dialog.call_id] = referral
        self._send(referral, now)

    # -- input -----------------------------------------------------------

    def receive_response(self, msg: Response, now: float) -> None:
        """A response to a REFER of ours."""
        referral = self.referrals.get(msg.call_id)
        if referral is None or msg.cseq[0] != referral.cseq or referral.phase is not Phase.SENT:
            return  # a copy, or an answer to a REFER we replaced
        if msg.status < 200:
            referral.interval = T2  # §17.1.2.2: Proceeding repeats at T2
            return
        referral.resend_at = None
        if msg.status < 300:
            referral.phase = Phase.ACCEPTED
            self._events.append(TransferAccepted(msg.call_id))
            return
        if msg.status in (401, 407) and not referral.authed and referral.username:
            name = "proxy-authenticate" if msg.status == 407 else "www-authenticate"
            challenge = msg.headers.get(name)
            if challenge:
                referral.authed = True
                self._send(referral, now, (msg.status, challenge))
                return
        self._end(referral, msg.status, msg.reason, now, refused=True)

    def receive_notify(self, req: Request, now: float) -> tuple[int, str]:
        """A NOTIFY in a call's dialog: the status to answer it with."""
        referral = self.referrals.get(req.call_id)
        if referral is None:
            return 481, "Subscription Does Not Exist"
        event, _, params = req.headers.get("event").partition(";")
        if event.strip().lower() != "refer":
            return 489, "Bad Event"
        ref_id = params.strip().lower().removeprefix("id=").strip()
        if ref_id.isdigit() and int(ref_id) != referral.cseq:
            return 200, "OK"  # about another REFER of ours (an earlier one)
        frag = sipfrag_status(req.body)
        if frag is None:
            return 400, "Bad sipfrag body"
        if referral.phase is Phase.DONE:
            return 200, "OK"
        if referral.phase is Phase.SENT:  # the NOTIFY overtook the 202
            referral.phase = Phase.ACCEPTED
            referral.resend_at = None
            self._events.append(TransferAccepted(req.call_id))
        status, reason = frag
        if status >= 200:
            self._end(referral, status, reason, now)
        return 200, "OK"

    def forget(self, call_id: str) -> None:
        """The call ended: its transfer goes with it (no event)."""
        self.referrals.pop(call_id, None)

    # -- time ----------------------------------------------------------------

    def next_deadline(self) -> float | None:
        times: list[float] = []
        for r in self.referrals.values():
            if r.phase is Phase.DONE:
                if r.hang_up_at is not None:
                    times.append(r.hang_up_at)
                continue
            times.append(r.deadline)
            if r.phase is Phase.SENT:
                times.append(r.give_up)
                if r.resend_at is not None:
                    times.append(r.resend_at)
        return min(times) if times else None

    def on_timer(self, now: float) -> list[str]:
        """Repeats and give-ups; returns the calls to hang up now (their
        transfer succeeded and the far side did not hang up)."""
        hang_up = []
        for r in list(self.referrals.values()):
            if r.phase is Phase.DONE:
                if r.hang_up_at is not None and r.hang_up_at <= now:
                    r.hang_up_at = None
                    hang_up.append(r.dialog.call_id)
                continue
            if now >= r.deadline:
                self._end(r, 408, "the transfer did not complete in time", now)
            elif r.phase is Phase.SENT and now >= r.give_up:  # Timer F
                self._end(r, 408, "no answer to REFER", now, refused=True)
            elif r.phase is Phase.SENT and r.resend_at is not None and r.resend_at <= now:
                self._out.append((r.request, r.dialog.peer))  # Timer E
                r.interval = min(2 * r.interval, T2)
                r.resend_at = now + r.interval
        return hang_up

    def take_outgoing(self) -> list[tuple[bytes, Address]]:
        out, self._out = self._out, []
        return out

    def take_events(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    # -- helpers -------------------------------------------------------------

    def _send(self, r: Referral, now: float, challenge: tuple[int, str] | None = None) -> None:
        d = r.dialog
        r.cseq = r.next_cseq()
        headers = [
            ("via", f"SIP/2.0/{d.transport} {self._sent_by};branch=z9hG4bK{self._new_tag()}"),
            ("max-forwards", "70"),
            ("from", d.local),
            ("to", d.remote),
            ("call-id", d.call_id),
            ("cseq", f"{r.cseq} REFER"),
            ("contact", f"<{contact_for(self._contact, d.transport, self.tls_contact)}>"),
            ("refer-to", r.refer_to),
            ("allow", ALLOW),
            *r.headers,
        ]
        if challenge is not None:
            status, value = challenge
            auth = authorization(value, r.username, r.password, "REFER", d.target, self._new_tag())
            headers.append(("proxy-authorization" if status == 407 else "authorization", auth))
        r.request = render(f"REFER {d.target} SIP/2.0", headers)
        self._out.append((r.request, d.peer))
        r.phase = Phase.SENT
        r.interval = T1
        r.resend_at = now + T1 if d.transport.upper() == "UDP" else None
        r.give_up = now + 64 * T1

    def _end(
        self, r: Referral, status: int, reason: str, now: float, refused: bool = False
    ) -> None:
        r.phase = Phase.DONE
        r.resend_at = None
        if 200 <= status < 300:
            r.hang_up_at = now + BYE_AFTER
        self._events.append(TransferEnded(r.dialog.call_id, status, reason, refused))
