"""The UAS core against an in-memory caller, on a fake clock: what a phone
or trunk sees for each step of a call, and what the application hears."""

from __future__ import annotations

import itertools

import pytest

from edgedispatch.errors import Malformed
from edgedispatch.sip.message import Request, Response, parse_datagram, parse_name_addr
from edgedispatch.sip.transaction import T1, T2
from edgedispatch.sip.uas import ACK_WAIT, UserAgentServer
from edgedispatch.sip.uas_calls import CallConfirmed, CallEnded, Dtmf, IncomingCall

CALLER = ("127.0.0.1", 5061)
SDP = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"


def uas() -> UserAgentServer:
    tags = (f"tag{i}" for i in itertools.count())
    return UserAgentServer("sip:edge@127.0.0.1:5060", lambda: next(tags))


def req(
    method: str,
    branch: str = "z9hG4bK-inv",
    cseq: int = 1,
    to_tag: str = "",
    body: bytes = b"",
    extra: str = "",
    call_id: str = "call-1",
) -> bytes:
    to = "<sip:+15550100@127.0.0.1>" + (f";tag={to_tag}" if to_tag else "")
    return (
        f"{method} sip:+15550100@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5061;branch={branch}\r\n"
        f"From: <sip:+15550199@127.0.0.1>;tag=caller\r\nTo: {to}\r\n"
        f"Call-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n"
        f"Contact: <sip:caller@127.0.0.1:5061>\r\nMax-Forwards: 70\r\n{extra}"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def out(ua: UserAgentServer) -> list[Request | Response]:
    sent = ua.take_outgoing()
    assert all(addr == CALLER for _, addr in sent)
    return [parse_datagram(data) for data, _ in sent]


def statuses(msgs: list[Request | Response]) -> list[object]:
    return [m.status if isinstance(m, Response) else m.method for m in msgs]


def answered_call(ua: UserAgentServer) -> str:
    """A call through INVITE, 180, 200 and ACK; returns our To tag."""
    ua.receive_datagram(
        req("INVITE", body=SDP, extra="Content-Type: application/sdp\r\n"), CALLER, 0.0
    )
    ua.ring("call-1", 0.01)
    ua.answer("call-1", SDP, 0.02)
    msgs = out(ua)
    assert statuses(msgs) == [180, 200]  # decided at once: no 100 needed
    tag = parse_name_addr(msgs[-1].headers.get("to")).tag
    ua.receive_datagram(req("ACK", branch="z9hG4bK-ack", to_tag=tag), CALLER, 0.05)
    return tag


def test_options_is_answered_with_what_we_allow() -> None:
    ua = uas()
    ua.receive_datagram(req("OPTIONS", branch="z9hG4bK-o"), CALLER, 0.0)
    (ok,) = out(ua)
    assert isinstance(ok, Response) and ok.status == 200
    assert "INVITE" in ok.headers.get_all("allow") and "BYE" in ok.headers.get_all("allow")
    assert ua.take_events() == []


def test_a_call_is_offered_answered_confirmed_and_hung_up_by_the_caller() -> None:
    ua = uas()
    ua.receive_datagram(
        req("INVITE", body=SDP, extra="Content-Type: application/sdp\r\n"), CALLER, 0.0
    )
    assert statuses(out(ua)) == [100]  # at once
    (incoming,) = ua.take_events()
    assert isinstance(incoming, IncomingCall) and incoming.invite.body == SDP
    ua.receive_datagram(req("INVITE", body=SDP), CALLER, 0.2)  # a copy: absorbed
    assert statuses(out(ua)) == [100] and ua.take_events() == []
    ua.ring("call-1", 0.3)
    ua.answer("call-1", SDP, 0.4)
    ringing, ok = out(ua)
    assert isinstance(ok, Response) and ok.body == SDP
    tag = parse_name_addr(ok.headers.get("to")).tag
    assert tag and parse_name_addr(ringing.headers.get("to")).tag == tag
    assert ok.headers.get("contact") == "<sip:edge@127.0.0.1:5060>"
    ua.on_timer(0.4 + T1)  # no ACK yet: the 200 again
    assert statuses(out(ua)) == [200]
    ua.receive_datagram(req("ACK", branch="z9hG4bK-ack", to_tag=tag), CALLER, 1.0)
    assert ua.take_events() == [CallConfirmed("call-1")]
    ua.on_timer(10.0)
    assert out(ua) == []  # the ACK stopped the repeats
    bye = req("BYE", branch="z9hG4bK-bye", cseq=2, to_tag=tag)
    ua.receive_datagram(bye, CALLER, 11.0)
    assert statuses(out(ua)) == [200]
    assert ua.take_events() == [CallEnded("call-1", "bye")]
    ua.receive_datagram(bye, CALLER, 11.5)  # a copy of the BYE: answered, not reported
    assert statuses(out(ua)) == [200] and ua.take_events() == []
    assert ua.calls == {}


def test_a_cancel_before_the_answer_ends_the_invite_with_487() -> None:
    ua = uas()
    ua.receive_datagram(req("INVITE"), CALLER, 0.0)
    out(ua), ua.take_events()
    ua.receive_datagram(req("CANCEL"), CALLER, 0.5)
    msgs = out(ua)
    assert [(m.status, m.cseq[1]) for m in msgs if isinstance(m, Response)] == [
        (200, "CANCEL"),
        (487, "INVITE"),
    ]
    assert ua.take_events() == [CallEnded("call-1", "cancel")]
    ua.receive_datagram(req("ACK"), CALLER, 0.6)  # the 487's ACK: swallowed
    assert out(ua) == [] and ua.take_events() == []


def test_a_cancel_that_loses_the_race_changes_nothing() -> None:
    ua = uas()
    answered_call(ua)
    ua.take_events()
    ua.receive_datagram(req("CANCEL"), CALLER, 1.0)
    assert statuses(out(ua)) == [200]
    assert ua.take_events() == [] and "call-1" in ua.calls
    ua.receive_datagram(req("CANCEL", call_id="nope", branch="z9hG4bK-n"), CALLER, 1.0)
    assert statuses(out(ua)) == [481]


def test_an_unknown_dialog_gets_481_and_an_unknown_method_405() -> None:
    ua = uas()
    ua.receive_datagram(req("BYE", branch="z9hG4bK-b", to_tag="x"), CALLER, 0.0)
    ua.receive_datagram(req("SUBSCRIBE", branch="z9hG4bK-s"), CALLER, 0.0)
    bye, sub = out(ua)
    assert isinstance(sub, Response) and (bye.status, sub.status) == (481, 405)  # type: ignore[union-attr]
    assert "INVITE" in sub.headers.get_all("allow")


def test_no_ack_for_the_200_hangs_the_call_up_with_a_bye_repeated_until_answered() -> None:
    ua = uas()
    ua.receive_datagram(req("INVITE"), CALLER, 0.0)
    ua.answer("call-1", SDP, 0.0)
    out(ua), ua.take_events()
    sent, now, repeated = [], 0.0, []
    while not any(isinstance(m, Request) for m in sent):
        now = ua.next_deadline() or 99.0
        ua.on_timer(now)
        sent = out(ua)
        repeated += [now for m in sent if isinstance(m, Response) and m.status == 200]
    assert repeated == [T1, 3 * T1, 7 * T1]  # then no ACK by 5 s: BYE
    assert now == ACK_WAIT == 5.0  # livekit/sip's wait, not 64*T1
    (bye,) = [m for m in sent if isinstance(m, Request)]
    assert bye.method == "BYE" and bye.uri == "sip:caller@127.0.0.1:5061"
    assert parse_name_addr(bye.headers.get("to")).tag == "caller"
    assert ua.take_events() == [CallEnded("call-1", "no ack")]
    ua.on_timer(now + T1)
    assert statuses(out(ua)) == ["BYE"]  # Timer E
    ok = (
        "SIP/2.0 200 OK\r\n" + "\r\n".join(f"{k}: {v}" for k, v in bye.headers.items)
        + "\r\nContent-Length: 0\r\n\r\n"
    ).encode()  # fmt: skip
    ua.receive_datagram(ok, CALLER, now + 0.6)
    ua.on_timer(now + 10)
    assert out(ua) == [] and ua.calls == {}


def test_the_application_hangs_up_and_rejects() -> None:
    ua = uas()
    tag = answered_call(ua)
    ua.hang_up("call-1", 2.0)
    (bye,) = out(ua)
    assert isinstance(bye, Request) and bye.method == "BYE"
    assert parse_name_addr(bye.headers.get("from")).tag == tag
    assert ua.take_events()[-1] == CallEnded("call-1", "hung up")
    ua = uas()
    ua.receive_datagram(req("INVITE", call_id="call-2", branch="z9hG4bK-2"), CALLER, 3.0)
    ua.reject("call-2", 486, 3.1)
    assert statuses(out(ua)) == [486]  # refused at once: no 100 before it
    ua.receive_datagram(req("INVITE", call_id="call-2", branch="z9hG4bK-2"), CALLER, 3.2)
    assert statuses(out(ua)) == [486]  # a late copy: the answer again
    ua.on_timer(3.1 + T1)
    assert statuses(out(ua)) == [486]  # Timer G, until its ACK
    assert T2 > T1


def test_dtmf_by_info_reaches_the_application() -> None:
    ua = uas()
    tag = answered_call(ua)
    ua.take_events()
    info = req(
        "INFO", branch="z9hG4bK-i", cseq=3, to_tag=tag, body=b"Signal=5\r\nDuration=160\r\n",
        extra="Content-Type: application/dtmf-relay\r\n",
    )  # fmt: skip
    ua.receive_datagram(info, CALLER, 1.0)
    assert statuses(out(ua)) == [200]
    assert ua.take_events() == [Dtmf("call-1", "5")]


def test_a_request_that_cannot_be_parsed_gets_400_with_the_reason() -> None:
    ua = uas()
    bad = req("INVITE").replace(b"Call-ID: call-1\r\n", b"")
    ua.receive_datagram(bad, CALLER, 0.0)
    (answer,) = out(ua)
    assert isinstance(answer, Response) and answer.status == 400
    assert "missing Call-ID" in answer.reason
    ua.receive_datagram(b"\xff\xfe garbage", CALLER, 0.0)
    ua.receive_datagram(b"\r\n\r\n", CALLER, 0.0)  # a keep-alive
    assert out(ua) == [] and ua.take_events() == []


def test_a_flood_past_the_transaction_bound_gets_a_stateless_503() -> None:
    ua = uas()
    ua.max_transactions = 2
    for i in range(3):
        ua.receive_datagram(req("OPTIONS", branch=f"z9hG4bK-{i}", call_id=f"c{i}"), CALLER, 0.0)
    answers = out(ua)
    assert statuses(answers) == [200, 200, 503]
    assert answers[2].headers.get("retry-after") == "5"
    assert len(ua.transactions) == 2  # the third left nothing behind
    ua.on_timer(64 * T1)  # the first two end: room again
    ua.receive_datagram(req("OPTIONS", branch="z9hG4bK-9", call_id="c9"), CALLER, 40.0)
    assert statuses(out(ua)) == [200]


def test_a_merged_invite_by_another_path_is_refused_482_and_the_first_goes_on() -> None:
    ua = uas()
    ua.receive_datagram(req("INVITE"), CALLER, 0.0)
    out(ua)
    ua.receive_datagram(req("INVITE", branch="z9hG4bK-fork"), CALLER, 0.1)  # same CSeq
    assert statuses(out(ua)) == [482]
    assert [type(e) for e in ua.take_events()] == [IncomingCall]  # reported once
    ua.answer("call-1", SDP, 0.2)
    assert statuses(out(ua)) == [200]


def test_while_draining_new_calls_and_probes_get_503_and_calls_up_go_on() -> None:
    ua = uas()
    tag = answered_call(ua)
    ua.take_events()
    ua.drain(retry_after=30)
    assert ua.live_calls() == 1
    ua.receive_datagram(req("INVITE", call_id="new", branch="z9hG4bK-new"), CALLER, 1.0)
    ua.receive_datagram(req("OPTIONS", branch="z9hG4bK-o"), CALLER, 1.0)
    new, probe = out(ua)
    assert isinstance(new, Response) and isinstance(probe, Response)
    assert (new.status, probe.status) == (503, 503)
    assert new.headers.get("retry-after") == probe.headers.get("retry-after") == "30"
    assert ua.take_events() == [] and "new" not in ua.calls  # never offered
    ua.receive_datagram(req("ACK", call_id="new", branch="z9hG4bK-new"), CALLER, 1.1)
    assert out(ua) == []  # the 503's ACK: swallowed
    # The call that was up goes on: a re-INVITE, then its BYE.
    reinvite = req("INVITE", branch="z9hG4bK-re", cseq=2, to_tag=tag)
    ua.receive_datagram(reinvite, CALLER, 2.0)
    assert statuses(out(ua)) == [200]
    ua.receive_datagram(req("BYE", branch="z9hG4bK-bye", cseq=3, to_tag=tag), CALLER, 3.0)
    assert statuses(out(ua)) == [200]
    assert ua.take_events() == [CallEnded("call-1", "bye")] and ua.live_calls() == 0


def test_a_merged_invite_after_the_first_was_answered_is_still_refused_482() -> None:
    """The first copy was refused at once (its call record is gone), but its
    transaction remembers it: the copy by another path is not a new call."""
    ua = uas()
    ua.receive_datagram(req("INVITE"), CALLER, 0.0)
    (incoming,) = ua.take_events()
    ua.reject("call-1", 404, 0.0)
    assert statuses(out(ua)) == [404]
    ua.receive_datagram(req("INVITE", branch="z9hG4bK-fork"), CALLER, 0.1)
    assert statuses(out(ua)) == [482]
    assert ua.take_events() == [CallEnded("call-1", "rejected")]  # and no second call
    ua.receive_datagram(req("INVITE"), CALLER, 0.2)  # a plain retransmission
    assert statuses(out(ua)) == [404] and ua.take_events() == []
    # Once the first transaction is over, the same Call-ID may call anew
    # (e.g. after a 407, with credentials and a new CSeq).
    ua.on_timer(100.0)
    ua.receive_datagram(req("INVITE", branch="z9hG4bK-again", cseq=2), CALLER, 100.0)
    assert [type(e) for e in ua.take_events()] == [IncomingCall]


def test_a_cancel_racing_the_200_before_its_ack_changes_nothing() -> None:
    """The 200 went out, the caller's CANCEL crossed it: CANCEL gets 200, the
    INVITE keeps its 200 (no 487), and the call waits for its ACK."""
    ua = uas()
    ua.receive_datagram(req("INVITE"), CALLER, 0.0)
    ua.answer("call-1", SDP, 0.0)
    (ok,) = out(ua)
    ua.take_events()
    ua.receive_datagram(req("CANCEL"), CALLER, 0.05)
    answers = out(ua)
    assert [(m.status, m.cseq[1]) for m in answers if isinstance(m, Response)] == [(200, "CANCEL")]
    assert ua.take_events() == []
    tag = parse_name_addr(ok.headers.get("to")).tag
    ua.receive_datagram(req("ACK", branch="z9hG4bK-ack", to_tag=tag), CALLER, 0.1)
    assert ua.take_events() == [CallConfirmed("call-1")]


def test_an_answer_that_loses_the_race_to_a_cancel_is_never_sent() -> None:
    """The CANCEL came first: 487 went out, and the application's late
    answer is refused (an error to it), never a 200 after the 487."""
    ua = uas()
    ua.receive_datagram(req("INVITE"), CALLER, 0.0)
    out(ua), ua.take_events()
    ua.receive_datagram(req("CANCEL"), CALLER, 0.5)
    assert statuses(out(ua)) == [200, 487]
    with pytest.raises(Malformed, match="not waiting for an answer"):
        ua.answer("call-1", SDP, 0.6)
    with pytest.raises(Malformed):
        ua.ring("call-1", 0.6)
    ua.hang_up("call-1", 0.6)  # harmless
    assert out(ua) == []
    ua.receive_datagram(req("CANCEL"), CALLER, 0.7)  # a copy of the CANCEL
    assert statuses(out(ua)) == [200]


def test_a_flooded_invite_can_be_dropped_without_a_word() -> None:
    ua = uas()
    ua.receive_datagram(req("INVITE"), CALLER, 0.0)
    ua.take_events()
    ua.drop("call-1", 0.0)
    assert out(ua) == [] and ua.calls == {} and len(ua.transactions) == 0
    assert ua.take_events() == [CallEnded("call-1", "dropped")]


def test_a_required_extension_gets_420_and_a_body_we_cannot_read_415() -> None:
    ua = uas()
    ua.receive_datagram(req("OPTIONS", branch="z9hG4bK-r", extra="Require: 100rel\r\n"), CALLER, 0)
    (bad_ext,) = out(ua)
    assert isinstance(bad_ext, Response) and bad_ext.status == 420
    assert bad_ext.headers.get_all("unsupported") == ["100rel"]
    xml = req("INVITE", body=b"<x/>", extra="Content-Type: application/xml\r\n")
    ua.receive_datagram(xml, CALLER, 0.0)
    (media,) = out(ua)
    assert isinstance(media, Response) and media.status == 415
    assert media.headers.get("accept") == "application/sdp" and ua.take_events() == []
    # SDP inside a multipart body (as carriers send it with ISUP) is offered.
    mixed = req("INVITE", branch="z9hG4bK-m", call_id="c2", body=SDP,
                extra="Content-Type: multipart/mixed;boundary=b\r\n")  # fmt: skip
    ua.receive_datagram(mixed, CALLER, 0.0)
    assert [type(e) for e in ua.take_events()] == [IncomingCall]


def test_a_call_answered_and_hung_up_at_once_repeats_its_bye_once_per_timer() -> None:
    # The calls' timers are a heap: the 200's timer and the BYE's, armed
    # for the same instant, fire once.
    ua = uas()
    ua.receive_datagram(
        req("INVITE", body=SDP, extra="Content-Type: application/sdp\r\n"), CALLER, 0.0
    )
    ua.answer("call-1", SDP, 0.0)
    ua.hang_up("call-1", 0.0)
    assert statuses(out(ua)) == [200, "BYE"]
    assert ua.next_deadline() == T1
    ua.on_timer(T1)
    assert statuses(out(ua)) == ["BYE"]
    assert ua.next_deadline() == 3 * T1  # doubled


def test_the_next_deadline_is_the_earliest_live_calls() -> None:
    ua = uas()
    for n in range(3):
        ua.receive_datagram(
            req("INVITE", branch=f"z9hG4bK-{n}", body=SDP, call_id=f"c{n}",
                extra="Content-Type: application/sdp\r\n"),
            CALLER, n * 0.1,
        )  # fmt: skip
        ua.answer(f"c{n}", SDP, n * 0.1)
    out(ua)
    assert ua.next_deadline() == pytest.approx(T1)
    tag = parse_name_addr(parse_datagram(ua.calls["c0"].answer).headers.get("to")).tag
    ua.receive_datagram(req("ACK", branch="z9hG4bK-a", to_tag=tag, call_id="c0"), CALLER, 0.2)
    assert ua.next_deadline() == pytest.approx(0.1 + T1)  # c0's timer is gone
