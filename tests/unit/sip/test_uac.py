"""Outbound calls: our UAC against our UAS, in memory, on a fake clock (the
two ends of every exchange are checked against each other), and against a
silent or slow callee."""

from __future__ import annotations

import itertools

import pytest

from edgedispatch.sip.digest import DigestAuth, Verdict
from edgedispatch.sip.message import Request, Response, parse_datagram
from edgedispatch.sip.transaction import T1
from edgedispatch.sip.uac import Answered, Ended, Failed, Progress, UserAgentClient
from edgedispatch.sip.uas import UserAgentServer
from edgedispatch.sip.uas_calls import CallConfirmed, CallEnded, IncomingCall

US = ("127.0.0.1", 5060)
CALLEE = ("127.0.0.1", 5070)
OFFER = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
ANSWER = OFFER.replace(b"o=- 1 1", b"o=- 2 2")


def pair() -> tuple[UserAgentClient, UserAgentServer]:
    tags = (f"t{i}" for i in itertools.count())
    uac = UserAgentClient("sip:edge@127.0.0.1:5060", lambda: next(tags))
    callee = UserAgentServer("sip:callee@127.0.0.1:5070", lambda: next(tags))
    return uac, callee


def pump(uac: UserAgentClient, callee: UserAgentServer, now: float) -> None:
    """Carry every datagram both ways until both are quiet."""
    while True:
        moved = False
        for data, addr in uac.take_outgoing():
            assert addr == CALLEE
            callee.receive_datagram(data, US, now)
            moved = True
        for data, addr in callee.take_outgoing():
            assert addr == US
            msg = parse_datagram(data)
            if isinstance(msg, Response):
                uac.receive_response(msg, now)
            else:
                assert isinstance(msg, Request)
                callee.receive_datagram(uac.receive_request(msg, addr, now), US, now)
            moved = True
        if not moved:
            return


def dial(uac: UserAgentClient, **kw: str) -> str:
    return uac.dial("sip:+15550100@127.0.0.1:5070", CALLEE, "sip:+15550199@edge", OFFER, 0.0, **kw)


def test_a_call_rings_is_answered_and_hung_up_by_us() -> None:
    uac, callee = pair()
    call_id = dial(uac)
    pump(uac, callee, 0.0)
    (incoming,) = callee.take_events()
    assert isinstance(incoming, IncomingCall) and incoming.invite.body == OFFER
    callee.ring(call_id, 0.1)
    pump(uac, callee, 0.1)
    assert uac.take_events() == [Progress(call_id, 180)]
    callee.answer(call_id, ANSWER, 0.2)
    pump(uac, callee, 0.2)
    assert uac.take_events() == [Answered(call_id, ANSWER)]
    assert callee.take_events() == [CallConfirmed(call_id)]  # our ACK reached it
    uac.hang_up(call_id, 5.0)
    pump(uac, callee, 5.0)
    assert uac.take_events() == [Ended(call_id, "hung up")]
    assert callee.take_events() == [CallEnded(call_id, "bye")]
    assert uac.calls == {} and callee.calls == {}


def test_the_callee_hangs_up() -> None:
    uac, callee = pair()
    call_id = dial(uac)
    pump(uac, callee, 0.0)
    callee.answer(call_id, ANSWER, 0.1)
    pump(uac, callee, 0.1)
    uac.take_events(), callee.take_events()
    callee.hang_up(call_id, 3.0)
    pump(uac, callee, 3.0)
    assert uac.take_events() == [Ended(call_id, "bye")]
    callee.on_timer(10.0)
    assert callee.take_outgoing() == []  # our 200 stopped its BYE
    assert uac.calls == {} and callee.calls == {}


def test_a_busy_callee_fails_the_call_and_gets_its_ack() -> None:
    uac, callee = pair()
    call_id = dial(uac)
    pump(uac, callee, 0.0)
    callee.reject(call_id, 486, 0.1)
    pump(uac, callee, 0.1)
    assert uac.take_events() == [Failed(call_id, 486, "Busy Here")]
    callee.on_timer(0.1 + T1)
    assert callee.take_outgoing() == []  # ACKed: no Timer G repeats


def test_a_trunks_challenge_is_answered_with_the_credentials() -> None:
    uac, callee = pair()
    auth = DigestAuth(b"s" * 32)
    call_id = dial(uac, username="acme", password="pw")
    pump(uac, callee, 0.0)
    (first,) = callee.take_events()
    assert isinstance(first, IncomingCall)
    assert auth.check(first.invite, "acme", "pw", 0.0) is Verdict.MISSING
    challenge = [("proxy-authenticate", auth.challenge(call_id, 0.0))]
    callee.reject(call_id, 407, 0.0, headers=challenge)
    pump(uac, callee, 0.0)
    (_, second) = callee.take_events()  # the first call's end, then the new INVITE
    assert isinstance(second, IncomingCall) and second.invite.cseq == (2, "INVITE")
    assert auth.check(second.invite, "acme", "pw", 0.1) is Verdict.OK
    callee.answer(call_id, ANSWER, 0.2)
    pump(uac, callee, 0.2)
    assert uac.take_events() == [Answered(call_id, ANSWER)]


def test_a_ringing_call_is_cancelled() -> None:
    uac, callee = pair()
    call_id = dial(uac)
    pump(uac, callee, 0.0)
    callee.ring(call_id, 0.1)
    pump(uac, callee, 0.1)
    uac.take_events()
    uac.cancel(call_id, 1.0)
    pump(uac, callee, 1.0)
    assert uac.take_events() == [Failed(call_id, 487, "Request Terminated")]
    assert callee.take_events()[-1] == CallEnded(call_id, "cancel")


def test_a_silent_callee_gets_the_invite_again_then_the_call_fails_408() -> None:
    uac, _ = pair()
    call_id = dial(uac)
    uac.take_outgoing()
    resent: list[float] = []
    events: list[object] = []
    while not events:
        now = uac.next_deadline()
        assert now is not None
        uac.on_timer(now)
        resent += [now] * len(uac.take_outgoing())
        events = list(uac.take_events())
    assert resent[:4] == [T1, 3 * T1, 7 * T1, 15 * T1]  # Timer A doubles
    assert events == [Failed(call_id, 408, "no answer")] and now == 64 * T1  # Timer B


def test_over_tcp_the_messages_say_so_and_nothing_is_repeated() -> None:
    """A TCP trunk: Via and Contact name TCP, and an unanswered INVITE or
    BYE is not sent again (the transport repeats, §17.1.1.2); Timers B and
    F still give up."""
    uac, callee = pair()
    call_id = dial(uac, transport="TCP")
    ((invite, _),) = uac.take_outgoing()
    msg = parse_datagram(invite)
    assert isinstance(msg, Request)
    assert msg.headers.get("via").startswith("SIP/2.0/TCP 127.0.0.1:5060;branch=")
    assert msg.headers.get("contact") == "<sip:edge@127.0.0.1:5060;transport=tcp>"
    assert uac.next_deadline() == 64 * T1  # Timer B only
    uac.on_timer(64 * T1)
    assert uac.take_outgoing() == []
    assert uac.take_events() == [Failed(call_id, 408, "no answer")]

    call_id = dial(uac, transport="TCP")
    callee.receive(parse_datagram(uac.take_outgoing()[0][0]), US, 0.0, reliable=True)
    callee.take_events()
    callee.answer(call_id, ANSWER, 0.1)
    pump(uac, callee, 0.1)
    assert uac.take_events() == [Answered(call_id, ANSWER)]
    uac.hang_up(call_id, 1.0)
    ((bye, _),) = uac.take_outgoing()  # the callee never answers it
    assert parse_datagram(bye).headers.get("via").startswith("SIP/2.0/TCP ")
    assert uac.next_deadline() == 1.0 + 64 * T1  # Timer F only
    uac.on_timer(1.0 + 64 * T1)
    assert uac.take_outgoing() == [] and call_id not in uac.calls


def test_a_transport_other_than_udp_tcp_or_tls_is_refused() -> None:
    uac, _ = pair()
    with pytest.raises(ValueError, match="SCTP"):
        dial(uac, transport="SCTP")
    assert uac.calls == {}


def test_a_call_over_tls_names_tls_in_its_via_and_contact() -> None:
    """Over TLS the callee must send what follows in the dialog to our
    TLS port (our Contact says so), and nothing is repeated (a reliable
    transport); the callee's 200 names its TLS contact too."""
    uac, callee = pair()
    callee.listen_tls(5061)
    uac.tls_contact = "sip:edge@127.0.0.1:5061;transport=tls"
    call_id = dial(uac, transport="TLS")
    ((invite, _),) = uac.take_outgoing()
    msg = parse_datagram(invite)
    assert msg.headers.get("via").startswith("SIP/2.0/TLS ")
    assert msg.headers.get("contact") == "<sip:edge@127.0.0.1:5061;transport=tls>"
    assert uac.next_deadline() == 64 * T1  # Timer B alone: no Timer A over TLS
    callee.receive_datagram(invite, US, 0.0)
    callee.take_events()
    callee.answer(call_id, ANSWER, 0.1)
    ((ok, _),) = callee.take_outgoing()
    assert b"Contact: <sip:callee@127.0.0.1:5061;transport=tls>" in ok


def test_a_call_that_rings_too_long_is_cancelled() -> None:
    uac, callee = pair()
    call_id = uac.dial("sip:x@127.0.0.1:5070", CALLEE, "sip:y@edge", OFFER, 0.0,
                       ringing_timeout=30.0)  # fmt: skip
    pump(uac, callee, 0.0)
    callee.ring(call_id, 0.1)
    pump(uac, callee, 0.1)
    uac.take_events()
    uac.on_timer(30.1)
    assert uac.take_events() == [Failed(call_id, 408, "no answer before the ringing timeout")]
    pump(uac, callee, 30.1)
    assert callee.take_events()[-1] == CallEnded(call_id, "cancel")


def test_a_user_agent_takes_the_answers_to_the_calls_it_placed() -> None:
    """One transport for both directions: the messages of a call we placed
    reach ``outbound``, the others the server side."""
    tags = (f"u{i}" for i in itertools.count())
    edge = UserAgentServer("sip:edge@127.0.0.1:5060", lambda: next(tags))
    phone = UserAgentServer("sip:phone@127.0.0.1:5070", lambda: next(tags))

    def carry(now: float) -> None:
        while True:
            a, b = edge.take_outgoing(), phone.take_outgoing()
            for data, _ in a:
                phone.receive_datagram(data, US, now)
            for data, _ in b:
                edge.receive_datagram(data, CALLEE, now)
            if not a and not b:
                return

    call_id = edge.outbound.dial("sip:+1@127.0.0.1:5070", CALLEE, "sip:+2@edge", OFFER, 0.0)
    carry(0.0)
    assert [type(e) for e in phone.take_events()] == [IncomingCall]
    phone.answer(call_id, ANSWER, 0.1)
    carry(0.1)
    assert edge.take_events() == [Answered(call_id, ANSWER)]
    phone.hang_up(call_id, 1.0)
    carry(1.0)
    assert edge.take_events() == [Ended(call_id, "bye")]
    assert edge.outbound.calls == {} and phone.calls == {} and edge.calls == {}


def test_custom_headers_go_with_the_invite_the_answer_and_each_bye() -> None:
    """A trunk's headers: ours on the INVITE (as the user spelled them),
    the callee's on its 200 (handed on with Answered, for attributes),
    and each end's on its BYE."""
    uac, callee = pair()
    call_id = uac.dial(
        "sip:+15550100@127.0.0.1:5070", CALLEE, "sip:+15550199@edge", OFFER, 0.0,
        headers=[("X-Customer-ID", "42")],
    )  # fmt: skip
    ((invite, _),) = uac.take_outgoing()
    assert b"\r\nX-Customer-ID: 42\r\n" in invite
    callee.receive_datagram(invite, US, 0.0)
    (incoming,) = callee.take_events()
    assert isinstance(incoming, IncomingCall)
    assert incoming.invite.headers.get("x-customer-id") == "42"
    callee.answer(call_id, ANSWER, 0.1, [("X-Account", "A1")])
    pump(uac, callee, 0.1)
    (answered,) = uac.take_events()
    assert isinstance(answered, Answered) and answered.headers.get("x-account") == "A1"
    uac.hang_up(call_id, 1.0, [("X-Reason", "done")])
    ((bye, _),) = uac.take_outgoing()
    assert bye.startswith(b"BYE ") and b"\r\nX-Reason: done\r\n" in bye
    assert b"X-Customer-ID" not in bye  # the INVITE's are not the BYE's


def test_our_bye_to_a_caller_carries_the_headers_given() -> None:
    uac, callee = pair()
    call_id = dial(uac)
    pump(uac, callee, 0.0)
    callee.take_events()
    callee.answer(call_id, ANSWER, 0.1)
    pump(uac, callee, 0.1)
    callee.hang_up(call_id, 1.0, [("X-Case", "4711")])
    ((bye, _),) = callee.take_outgoing()
    assert bye.startswith(b"BYE ") and b"\r\nX-Case: 4711\r\n" in bye
