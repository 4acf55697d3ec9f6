"""Transfers by REFER (RFC 3515), sans-IO on a fake clock: the REFER in an
incoming call's dialog and in a placed call's, the NOTIFYs answered, the
outcome, the hang-up a second after a success, digest answers, Timer E and
F, the transfer's deadline, and how an outcome is answered to the RPC."""

from __future__ import annotations

import itertools

import pytest

from edgedispatch.calls.transfer import transfer_error
from edgedispatch.errors import FailedPrecondition, InvalidArgument
from edgedispatch.sip.message import Request, Response, parse_datagram, render
from edgedispatch.sip.refer import TransferAccepted, TransferEnded, refer_target
from edgedispatch.sip.uac import Answered
from edgedispatch.sip.uas import UserAgentServer
from edgedispatch.sip.uas_calls import CallConfirmed, CallEnded, IncomingCall

CALLER = ("192.0.2.7", 5070)
CALL = "refer-call@192.0.2.7"
FROM = "<sip:+15550199@192.0.2.7>;tag=caller"


def ua() -> UserAgentServer:
    counter = itertools.count()
    return UserAgentServer("sip:edge@192.0.2.1:5060", lambda: f"t{next(counter)}")


def sent(u: UserAgentServer) -> list[Request | Response]:
    return [parse_datagram(data) for data, _ in u.take_outgoing()]


def request(method: str, cseq: int, body: bytes = b"", **extra: str) -> bytes:
    headers = [
        ("via", f"SIP/2.0/UDP 192.0.2.7:5070;branch=z9hG4bK{method}{cseq}"),
        ("from", FROM),
        ("to", "<sip:+15550100@192.0.2.1>" + extra.pop("to_tag", "")),
        ("call-id", CALL),
        ("cseq", f"{cseq} {method}"),
        ("contact", "<sip:caller@192.0.2.7:5070>"),
        ("max-forwards", "70"),
        *((k.replace("_", "-"), v) for k, v in extra.items()),
    ]
    return render(f"{method} sip:edge@192.0.2.1:5060 SIP/2.0", headers, body)


def answer_to(msg: Request, status: int, reason: str, **extra: str) -> bytes:
    head = [(k, msg.headers.get(k)) for k in ("via", "from", "to", "call-id", "cseq")]
    more = [(k.replace("_", "-"), v) for k, v in extra.items()]
    return render(f"SIP/2.0 {status} {reason}", head + more)


def notify(u: UserAgentServer, cseq: int, frag: str, tag: str, now: float) -> Response:
    body = f"SIP/2.0 {frag}\r\n".encode()
    u.receive_datagram(
        request("NOTIFY", cseq, body, to_tag=f";tag={tag}", event="refer",
                content_type="message/sipfrag"),
        CALLER, now,
    )  # fmt: skip
    (answer,) = sent(u)
    assert isinstance(answer, Response)
    return answer


def up_call(u: UserAgentServer) -> str:
    """An incoming call answered and ACKed; our To tag."""
    u.receive_datagram(request("INVITE", 1, b"v=0\r\n", content_type="application/sdp"), CALLER, 0)
    assert isinstance(u.take_events()[0], IncomingCall)
    u.answer(CALL, b"v=0\r\n", 0.0)
    tag = u.calls[CALL].local_tag
    u.receive_datagram(request("ACK", 1, to_tag=f";tag={tag}"), CALLER, 0.1)
    assert isinstance(u.take_events()[0], CallConfirmed)
    u.take_outgoing()
    return tag


def test_an_incoming_call_is_referred_notified_and_hung_up_a_second_after() -> None:
    u = ua()
    tag = up_call(u)
    u.transfer(CALL, "<sip:desk@example.com>", 1.0)
    (refer,) = sent(u)
    assert isinstance(refer, Request) and refer.method == "REFER"
    assert refer.uri == "sip:caller@192.0.2.7:5070"  # the caller's Contact
    assert refer.headers.get("refer-to") == "<sip:desk@example.com>"
    assert refer.cseq == (1, "REFER") and refer.call_id == CALL
    assert refer.headers.get("from").endswith(f";tag={tag}") and "tag=caller" in refer.headers.get(
        "to"
    )
    with pytest.raises(FailedPrecondition):  # one transfer at a time
        u.transfer(CALL, "tel:+1", 1.0)
    u.receive_datagram(answer_to(refer, 202, "Accepted"), CALLER, 1.1)
    assert u.take_events() == [TransferAccepted(CALL)]
    assert notify(u, 2, "100 Trying", tag, 1.2).status == 200
    assert u.take_events() == []
    assert notify(u, 3, "200 OK", tag, 1.3).status == 200
    assert u.take_events() == [TransferEnded(CALL, 200, "OK", False)]
    # The caller did not hang up within a second: we do, after our REFER's CSeq.
    assert u.next_deadline() == pytest.approx(2.3)
    u.on_timer(2.3)
    (bye,) = sent(u)
    assert isinstance(bye, Request) and (bye.method, bye.cseq) == ("BYE", (2, "BYE"))
    assert u.take_events() == [CallEnded(CALL, "hung up")]


def test_a_refused_refer_ends_the_transfer_and_leaves_the_call_up() -> None:
    u = ua()
    tag = up_call(u)
    u.transfer(CALL, "tel:+15550142", 1.0)
    (refer,) = sent(u)
    u.receive_datagram(answer_to(refer, 403, "Forbidden"), CALLER, 1.1)
    assert u.take_events() == [TransferEnded(CALL, 403, "Forbidden", True)]
    assert u.referrals.next_deadline() is None and CALL in u.calls  # no repeat, no hang-up
    # A late NOTIFY is still answered; a NOTIFY of another event is refused.
    assert notify(u, 2, "100 Trying", tag, 1.2).status == 200
    u.receive_datagram(request("NOTIFY", 3, to_tag=f";tag={tag}", event="presence"), CALLER, 1.3)
    assert [m.status for m in sent(u) if isinstance(m, Response)] == [489]


def test_a_failing_sipfrag_and_an_unanswered_refer() -> None:
    u = ua()
    tag = up_call(u)
    u.transfer(CALL, "tel:+1", 1.0, timeout=10.0)
    (refer,) = sent(u)
    u.on_timer(1.5)  # Timer E: the REFER again
    assert [m.cseq for m in sent(u)] == [(1, "REFER")]
    u.receive_datagram(answer_to(refer, 202, "Accepted"), CALLER, 1.6)
    u.take_events()
    assert notify(u, 2, "486 Busy Here", tag, 2.0).status == 200
    assert u.take_events() == [TransferEnded(CALL, 486, "Busy Here", False)]
    # A second transfer: nobody answers its REFER (Timer F, 32 s; its
    # deadline comes later).
    u.transfer(CALL, "tel:+2", 3.0, timeout=60.0)
    sent(u)
    now = 3.0
    while (deadline := u.next_deadline()) is not None and deadline < 40:
        now = deadline
        u.on_timer(now)
        repeats = sent(u)
        assert all(isinstance(m, Request) and m.cseq == (2, "REFER") for m in repeats)
    assert now == pytest.approx(35.0)
    assert u.take_events() == [TransferEnded(CALL, 408, "no answer to REFER", True)]
    # A third: accepted, then no final NOTIFY before its deadline.
    u.transfer(CALL, "tel:+3", 40.0, timeout=5.0)
    (refer,) = sent(u)
    u.receive_datagram(answer_to(refer, 202, "Accepted"), CALLER, 40.1)
    u.take_events()
    u.on_timer(45.0)
    (ended,) = u.take_events()
    assert isinstance(ended, TransferEnded) and (ended.status, ended.refused) == (408, False)


def test_a_placed_call_answers_the_refers_challenge_with_its_trunks_credentials() -> None:
    u = ua()
    callee = ("198.51.100.5", 5060)
    call_id = u.outbound.dial(
        "sip:+15550123@198.51.100.5", callee, "sip:+15550100@192.0.2.1", b"v=0\r\n", 0.0,
        "user", "pass", call_id="placed@edge",
    )  # fmt: skip
    (invite,) = sent(u)
    ok = answer_to(invite, 200, "OK", contact="<sip:callee@198.51.100.5:5060>")
    ok = ok.replace(b"To: <sip:+15550123@198.51.100.5>", b"To: <sip:+15550123@198.51.100.5>;tag=ce")
    u.receive_datagram(ok, callee, 0.2)
    assert isinstance(u.take_events()[0], Answered)
    sent(u)  # the ACK
    u.transfer(call_id, "<sip:desk@example.com>", 1.0)
    (refer,) = sent(u)
    assert isinstance(refer, Request) and refer.uri == "sip:callee@198.51.100.5:5060"
    assert refer.cseq == (2, "REFER") and refer.headers.get("to").endswith(";tag=ce")
    challenge = 'Digest realm="carrier", nonce="n1", qop="auth"'
    u.receive_datagram(
        answer_to(refer, 407, "Proxy Authentication Required", proxy_authenticate=challenge),
        callee, 1.1,
    )  # fmt: skip
    (again,) = sent(u)
    assert isinstance(again, Request) and again.cseq == (3, "REFER")
    assert 'username="user"' in again.headers.get("proxy-authorization")
    assert 'uri="sip:callee@198.51.100.5:5060"' in again.headers.get("proxy-authorization")
    u.receive_datagram(answer_to(again, 202, "Accepted"), callee, 1.2)
    assert u.take_events() == [TransferAccepted(call_id)]
    # The callee hangs up once transferred: the transfer goes with the call.
    bye = render(
        "BYE sip:edge@192.0.2.1:5060 SIP/2.0",
        [("via", "SIP/2.0/UDP 198.51.100.5:5060;branch=z9hG4bKbye"),
         ("from", again.headers.get("to")), ("to", again.headers.get("from")),
         ("call-id", call_id), ("cseq", "9 BYE")],
    )  # fmt: skip
    u.receive_datagram(bye, callee, 1.5)
    assert [type(e).__name__ for e in u.take_events()] == ["Ended"]
    assert u.referrals.referrals == {} and u.next_deadline() is None


def test_only_a_call_that_is_up_is_transferred_and_a_stray_notify_gets_481() -> None:
    u = ua()
    with pytest.raises(FailedPrecondition):
        u.transfer("nobody", "tel:+1", 0.0)
    u.receive_datagram(request("NOTIFY", 5, event="refer"), CALLER, 0.0)
    assert [m.status for m in sent(u) if isinstance(m, Response)] == [481]


def test_transfer_to_is_checked_as_livekit_checks_it() -> None:
    assert refer_target("sip:desk@example.com") == "<sip:desk@example.com>"
    assert refer_target("<sips:desk@example.com>") == "<sips:desk@example.com>"
    assert refer_target("tel:+15550142") == "tel:+15550142"
    for bad in ("", "+15550142", "http://x", "sip:a\r\nX: y"):
        with pytest.raises(InvalidArgument):
            refer_target(bad)


@pytest.mark.parametrize(
    ("ended", "code"),
    [
        # LiveKit's mapping of the status since protocol 1.46 (its
        # internal/unavailable override for a sipfrag no longer applies).
        (TransferEnded(CALL, 403, "Forbidden", True), "permission_denied"),
        (TransferEnded(CALL, 501, "Not Implemented", True), "failed_precondition"),
        (TransferEnded(CALL, 503, "Service Unavailable", False), "failed_precondition"),
        (TransferEnded(CALL, 486, "Busy Here", False), "resource_exhausted"),
        (TransferEnded(CALL, 603, "Decline", False), "permission_denied"),
        (TransferEnded(CALL, 404, "Not Found", False), "not_found"),
        (TransferEnded(CALL, 408, "the transfer did not complete in time"), "deadline_exceeded"),
    ],
)
def test_a_failed_transfer_is_answered_as_livekit_answers_it(
    ended: TransferEnded, code: str
) -> None:
    error = transfer_error(ended, "STR_x")
    assert error.twirp_code == code
    assert error.meta["sip_status_code"] == str(ended.status)
    assert error.meta["sip_transfer_id"] == "STR_x"


def test_a_refer_carries_the_custom_headers_given() -> None:
    """TransferSIPParticipant's ``headers`` (and the trunk's mapped
    attributes) go with the REFER, as the user spelled them."""
    u = ua()
    up_call(u)
    u.transfer(CALL, "<sip:desk@example.com>", 1.0, headers=[("X-Transfer-Reason", "sales")])
    (refer,) = sent(u)
    assert isinstance(refer, Request) and refer.method == "REFER"
    assert refer.headers.get("x-transfer-reason") == "sales"
