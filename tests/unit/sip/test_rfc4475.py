"""RFC 4475's torture messages (our transcription, ``rfc4475.py``) through
the parser and the UAS core: the valid ones are read with the right
fields and survive a render-and-parse round trip; the others are answered
with the status RFC 4475 asks for, or dropped when nothing can be
answered, and never raise anything but the parser's own errors."""

from __future__ import annotations

import pytest

from edgedispatch.sip.message import (
    Request,
    Response,
    StreamParser,
    parse_datagram,
    parse_name_addr,
    parse_uri,
    parse_via,
    render,
)
from edgedispatch.sip.uas import UserAgentServer
from tests.unit.sip.rfc4475 import CASES, Answered, Dropped, Valid

PEER = ("192.0.2.10", 5060)
VALID = sorted(name for name, (_, _, want) in CASES.items() if isinstance(want, Valid))
OTHERS = sorted(name for name in CASES if name not in VALID)


def read(msg: Request | Response, key: str) -> object:
    """One of the fields a case names, as the layers above read it."""
    h = msg.headers
    readers = {
        "method": lambda: msg.method if isinstance(msg, Request) else None,
        "uri": lambda: msg.uri if isinstance(msg, Request) else None,
        "uri-user": lambda: parse_uri(msg.uri).user if isinstance(msg, Request) else None,
        "uri-host": lambda: parse_uri(msg.uri).host if isinstance(msg, Request) else None,
        "status": lambda: msg.status if isinstance(msg, Response) else None,
        "reason": lambda: msg.reason if isinstance(msg, Response) else None,
        "reason-starts": lambda: msg.reason[:16] if isinstance(msg, Response) else None,
        "cseq": lambda: msg.cseq,
        "body": lambda: msg.body,
        "body-starts": lambda: msg.body[:21],
        "to-tag": lambda: parse_name_addr(h.get("to")).tag,
        "from-tag": lambda: parse_name_addr(h.get("from")).tag,
        "from-display": lambda: parse_name_addr(h.get("from")).display,
        "to-user": lambda: parse_uri(parse_name_addr(h.get("to")).uri).user,
        "via-count": lambda: len(h.get_all("via")),
        "vias": lambda: [(v.transport, v.host, v.branch) for v in map(parse_via, h.get_all("via"))],
        "transports": lambda: [parse_via(v).transport for v in h.get_all("via")],
    }
    return readers[key]() if key in readers else h.get(key)


def rendered(msg: Request | Response) -> bytes:
    if isinstance(msg, Request):
        start = f"{msg.method} {msg.uri} SIP/2.0"
    else:
        start = f"SIP/2.0 {msg.status} {msg.reason}"
    return render(start, msg.headers.items, msg.body)


@pytest.mark.parametrize("name", VALID)
def test_a_valid_torture_message_is_read_with_its_fields(name: str) -> None:
    section, data, want = CASES[name]
    assert isinstance(want, Valid)
    msg = parse_datagram(data)
    for key, value in want.fields.items():
        assert read(msg, key) == value, f"{name} (RFC 4475 {section}): {key}"
    # Rendered again, it reads the same (values are kept as sent).
    again = parse_datagram(rendered(msg))
    assert type(again) is type(msg) and again.body == msg.body
    strip = [(k, v) for k, v in msg.headers.items if k != "content-length"]
    assert [(k, v) for k, v in again.headers.items if k != "content-length"] == strip
    # The same bytes on a stream give the same first message.
    if "content-length" in msg.headers:
        first = StreamParser().feed(data)[0]
        assert first.headers.items == msg.headers.items and first.body == msg.body


@pytest.mark.parametrize("name", VALID + OTHERS)
def test_the_uas_answers_or_drops_each_torture_message_as_rfc_4475_asks(name: str) -> None:
    section, data, want = CASES[name]
    tags = iter(range(10_000))
    ua = UserAgentServer("sip:edge@192.0.2.1:5060", lambda: f"t{next(tags)}")
    ua.receive_datagram(data, PEER, 0.0)
    events = ua.take_events()
    # Only the status line is read: a 400 echoes the bad From, To or Via.
    statuses = [int(d.split(b" ", 2)[1]) for d, _ in ua.take_outgoing()]
    if isinstance(want, Answered):
        assert statuses[:1] == [want.status], f"{name} (RFC 4475 {section})"
        assert events == []
    elif isinstance(want, Dropped):
        assert (statuses, events) == ([], []), f"{name} (RFC 4475 {section})"
    elif isinstance(parse_datagram(data), Request):  # an INVITE is offered, the rest answered
        assert events or statuses, f"{name} (RFC 4475 {section})"
    else:  # a valid response, but to nothing of ours
        assert (statuses, events) == ([], [])
