"""Server transactions on a fake clock: each request reaches the UAS core
once, answers are repeated as RFC 3261 says, and every transaction ends."""

from __future__ import annotations

import pytest

from edgedispatch.sip.message import Request, parse_datagram, response_to
from edgedispatch.sip.transaction import T1, T2, T4, BadTransition, ServerTransactions, State

PEER = ("127.0.0.1", 5061)


def request(method: str, branch: str = "z9hG4bK-1", cseq: int = 1) -> Request:
    data = (
        f"{method} sip:service@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5061;branch={branch}\r\n"
        "From: <sip:a@127.0.0.1>;tag=f1\r\nTo: <sip:service@127.0.0.1>\r\n"
        f"Call-ID: c1\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    msg = parse_datagram(data)
    assert isinstance(msg, Request)
    return msg


def answer(layer: ServerTransactions, req: Request, status: int, now: float) -> bytes:
    data = response_to(req, status, "X", to_tag="t1")
    layer.respond(req, PEER, status, data, now)
    return data


def test_an_invite_answered_2xx_absorbs_its_copies_and_passes_the_ack_on() -> None:
    layer = ServerTransactions()
    invite = request("INVITE")
    assert layer.receive(invite, PEER, reliable=False, now=0.0)
    trying = answer(layer, invite, 100, 0.0)
    assert layer.take_outgoing() == [(trying, PEER)]
    assert not layer.receive(invite, PEER, False, 0.3)  # a copy: the 100 again
    assert layer.take_outgoing() == [(trying, PEER)]
    answer(layer, invite, 200, 0.5)
    layer.take_outgoing()
    assert layer.state(invite, PEER) is State.ACCEPTED
    assert not layer.receive(invite, PEER, False, 1.0)  # absorbed, not answered
    assert layer.take_outgoing() == []
    # The ACK of a 2xx is a transaction of its own: the core's to see.
    assert layer.receive(request("ACK", branch="z9hG4bK-ack"), PEER, False, 1.1)
    layer.on_timer(0.5 + 64 * T1)  # Timer L
    assert len(layer) == 0 and layer.next_deadline() is None


def test_a_rejected_invite_is_repeated_until_its_ack_which_is_swallowed() -> None:
    layer = ServerTransactions()
    invite = request("INVITE")
    layer.receive(invite, PEER, False, 0.0)
    busy = answer(layer, invite, 486, 0.0)
    sent_at = [0.0]
    layer.take_outgoing()
    now = 0.0
    while now < 10.0:  # Timer G: T1, doubling, up to T2
        now = layer.next_deadline() or 99.0
        layer.on_timer(now)
        assert layer.take_outgoing() == [(busy, PEER)]
        sent_at.append(now)
    gaps = [b - a for a, b in zip(sent_at, sent_at[1:], strict=False)]
    assert gaps[:4] == [T1, 2 * T1, 4 * T1, T2] and max(gaps) == T2
    assert not layer.receive(request("ACK"), PEER, False, now)  # swallowed
    assert layer.state(invite, PEER) is State.CONFIRMED
    assert not layer.receive(request("ACK"), PEER, False, now + 0.1)  # its copy too
    layer.on_timer(now + T4)  # Timer I
    assert layer.take_outgoing() == [] and len(layer) == 0


def test_a_rejection_never_acked_times_out() -> None:
    layer = ServerTransactions()
    invite = request("INVITE")
    layer.receive(invite, PEER, False, 0.0)
    answer(layer, invite, 486, 0.0)
    while (deadline := layer.next_deadline()) is not None:
        layer.on_timer(deadline)
    assert deadline is None and [t.key for t in layer.timed_out] == [
        ("z9hG4bK-1", "127.0.0.1", "5061", "INVITE")
    ]


def test_a_bye_is_answered_again_for_each_copy_then_forgotten() -> None:
    layer = ServerTransactions()
    bye = request("BYE", cseq=2)
    assert layer.receive(bye, PEER, False, 0.0)
    ok = answer(layer, bye, 200, 0.0)
    layer.take_outgoing()
    assert not layer.receive(bye, PEER, False, 1.0)
    assert layer.take_outgoing() == [(ok, PEER)]
    layer.on_timer(64 * T1)  # Timer J
    assert len(layer) == 0
    # Over TCP nothing is repeated, so nothing is kept.
    tcp = ServerTransactions()
    tcp.receive(bye, PEER, reliable=True, now=0.0)
    answer(tcp, bye, 200, 0.0)
    tcp.on_timer(0.0)
    assert len(tcp) == 0


def test_a_cancel_is_a_transaction_of_its_own() -> None:
    layer = ServerTransactions()
    invite, cancel = request("INVITE"), request("CANCEL")
    assert layer.receive(invite, PEER, False, 0.0)
    assert layer.receive(cancel, PEER, False, 0.1)
    answer(layer, cancel, 200, 0.1)
    answer(layer, invite, 487, 0.1)
    assert layer.state(invite, PEER) is State.COMPLETED
    assert layer.state(cancel, PEER) is State.COMPLETED


def test_an_rfc2543_peer_is_matched_without_a_branch() -> None:
    layer = ServerTransactions()
    old = request("INVITE", branch="1")
    assert layer.receive(old, PEER, False, 0.0)
    assert not layer.receive(request("INVITE", branch="1"), PEER, False, 0.1)
    assert layer.receive(request("INVITE", branch="1", cseq=2), PEER, False, 0.2)


def test_an_answer_the_state_does_not_allow_is_refused() -> None:
    layer = ServerTransactions()
    invite = request("INVITE")
    layer.receive(invite, PEER, False, 0.0)
    answer(layer, invite, 200, 0.0)
    with pytest.raises(BadTransition, match="accepted -> proceeding"):
        answer(layer, invite, 180, 0.1)
    with pytest.raises(BadTransition, match="no transaction"):
        answer(layer, request("OPTIONS"), 200, 0.1)
