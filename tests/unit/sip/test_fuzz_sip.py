"""The SIP parser and UAS core fuzzed (hypothesis): whatever a peer sends,
the parser gives a message or its own error (``Malformed``/``TooLarge``),
never another exception; what it reads, rendered again, reads the same;
a stream gives the same messages however it is cut; and the UAS core,
fed any datagrams over time, raises nothing and sends only answers that
start with a status line.  ``EDGEDISPATCH_FUZZ=long`` runs 50 times as
many examples."""

from __future__ import annotations

import itertools

from hypothesis import example, given
from hypothesis import strategies as st

from edgedispatch.errors import Malformed, TooLarge
from edgedispatch.sip.message import (
    Message,
    Request,
    StreamParser,
    parse_datagram,
    parse_name_addr,
    parse_uri,
    parse_via,
    render,
)
from edgedispatch.sip.uas import UserAgentServer
from tests.fuzzing import fuzz_settings
from tests.unit.sip.rfc4475 import CASES

SEEDS = [data for _, data, _ in CASES.values()]
#: Bytes that mean something to a SIP parser.
PIECES = [
    b"\r\n", b"\n", b"\r\n\r\n", b" ", b"\t", b":", b";", b",", b'"', b"\\", b"<", b">",
    b"@", b"?", b"%00", b"\x00", b"\xff", b"SIP/2.0", b"Via: ", b"v: ", b"CSeq: ",
    b"Content-Length: ", b"l: 99999", b"l: -1", b";branch=z9hG4bK", b";tag=", b"9" * 12,
    "\u202e".encode(), b"INVITE", b"ACK", b"CANCEL", b"BYE", b"\r\n ",
]  # fmt: skip


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A torture message with a few cuts, insertions and repeats."""
    data = draw(st.sampled_from(SEEDS))
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, len(data)))
        piece = draw(st.one_of(st.sampled_from(PIECES), st.binary(max_size=6)))
        cut = draw(st.integers(0, 6))
        data = data[:at] + piece + data[at + cut :]
    if draw(st.booleans()):
        data *= draw(st.integers(2, 3))
    return data


def parsed_or_refused(data: bytes) -> Message | None:
    try:
        return parse_datagram(data)
    except (Malformed, TooLarge):
        return None


def rendered(msg: Message) -> bytes:
    start = (
        f"{msg.method} {msg.uri} SIP/2.0"
        if isinstance(msg, Request)
        else f"SIP/2.0 {msg.status} {msg.reason}"
    )
    return render(start, msg.headers.items, msg.body)


def same(a: Message, b: Message) -> bool:
    """The same start line, headers (but the Content-Length we write) and body."""

    def key(m: Message) -> tuple[object, ...]:
        start = (m.method, m.uri) if isinstance(m, Request) else (m.status, m.reason)
        return type(m), start, [i for i in m.headers.items if i[0] != "content-length"], m.body

    return key(a) == key(b)


@fuzz_settings(400)
@given(st.one_of(mutated(), st.binary(max_size=3000)))
@example(b'INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h\r\nf: "\\\r\n\r\n')
def test_the_parser_gives_a_message_or_its_own_error(data: bytes) -> None:
    msg = parsed_or_refused(data)
    if msg is None:
        return
    # What the layers above read of a parsed message raises nothing else.
    for via in msg.headers.get_all("via"):
        parse_via(via)
    for name in ("from", "to"):
        if name in msg.headers:
            parse_name_addr(msg.headers.get(name))
    if isinstance(msg, Request):
        try:
            parse_uri(msg.uri)
        except Malformed:
            pass  # another scheme (416), or a host we cannot read
    # Round trip: rendered again, it parses to the same message.
    again = parse_datagram(rendered(msg))
    assert same(msg, again)


@fuzz_settings(200)
@given(st.lists(st.sampled_from(SEEDS), min_size=1, max_size=4), st.data())
def test_a_stream_gives_the_same_messages_however_it_is_cut(
    seeds: list[bytes], data: st.DataObject
) -> None:
    framed = [m for m in (parsed_or_refused(s) for s in seeds) if m is not None]
    stream = b"".join(rendered(m) for m in framed)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    parser, got = StreamParser(), []
    for start, end in itertools.pairwise([0, *cuts, len(stream)]):
        got += parser.feed(stream[start:end])
    assert len(got) == len(framed) and all(same(a, b) for a, b in zip(got, framed, strict=True))


@fuzz_settings(300)
@given(st.lists(st.tuples(st.one_of(mutated(), st.binary(max_size=500)), st.floats(0, 5)),
                max_size=12))  # fmt: skip
def test_the_uas_raises_nothing_and_answers_only_with_responses(
    datagrams: list[tuple[bytes, float]],
) -> None:
    tags = (f"t{i}" for i in itertools.count())
    ua = UserAgentServer("sip:edge@192.0.2.1:5060", lambda: next(tags))
    now = 0.0
    for data, wait in datagrams:
        now += wait
        ua.receive_datagram(data, ("192.0.2.10", 5060), now)
        for event in ua.take_events():
            call_id = getattr(event, "call_id", "")
            if call_id in ua.calls and ua.calls[call_id].state.value == "offered":
                ua.reject(call_id, 404, now)  # as calls.inbound refuses an unknown number
        deadline = ua.next_deadline()
        if deadline is not None and deadline <= now:
            ua.on_timer(now)
        for out, _ in ua.take_outgoing():
            assert out.startswith(b"SIP/2.0 ") or out.startswith(b"BYE ")
    ua.on_timer(now + 100)  # every timer runs out cleanly
    ua.take_outgoing()
