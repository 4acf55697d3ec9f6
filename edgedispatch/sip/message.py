"""SIP messages (RFC 3261 §7, §18.3, §20, §25): parsed from bytes, rendered
to bytes, with no I/O.

Strict where a mistake would mis-route a call or let a peer hold memory:
- one size bound per message (``MAX_MESSAGE``) and per header count;
- the start line must be exactly a request line or a status line of
  SIP/2.0;
- a request must carry Via, From, To, Call-ID and CSeq, and its CSeq method
  must be its own;
- on a stream, Content-Length is required and frames the body; in a
  datagram a body shorter than it says is refused and a longer one is cut
  (§18.3).
Lenient where RFC 3261 and real peers are: compact header names (``v:``
for Via...), folded header lines, white space around the colon, several
Via values on one line or several lines, and a bare LF for a CRLF.

Every error is ``Malformed`` or ``TooLarge`` (each with its SIP status, and
a reason), never another exception: a peer's bytes cannot raise anything
else.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edgedispatch.errors import EdgeDispatchError, Malformed, TooLarge

MAX_MESSAGE = 64 * 1024  #: bytes per message, start line to end of body
MAX_HEADERS = 128  #: header lines per message

#: RFC 3261 §7.3.3 and later RFCs' one-letter header names.
COMPACT = {
    "a": "accept-contact",
    "b": "referred-by",
    "c": "content-type",
    "d": "request-disposition",
    "e": "content-encoding",
    "f": "from",
    "i": "call-id",
    "j": "reject-contact",
    "k": "supported",
    "l": "content-length",
    "m": "contact",
    "n": "identity-info",
    "o": "event",
    "r": "refer-to",
    "s": "subject",
    "t": "to",
    "u": "allow-events",
    "v": "via",
    "x": "session-expires",
    "y": "identity",
}
#: Headers whose values are comma-separated lists (§7.3.1): one per item.
LIST_HEADERS = frozenset(
    {
        "via", "route", "record-route", "contact", "allow", "supported", "require",
        "proxy-require", "unsupported", "accept", "accept-encoding", "accept-language",
        "allow-events", "content-encoding", "in-reply-to",
    }
)  # fmt: skip
#: How a header is written out (the rest: each word capitalised).
SPELLING = {
    "call-id": "Call-ID",
    "cseq": "CSeq",
    "www-authenticate": "WWW-Authenticate",
    "mime-version": "MIME-Version",
    "rack": "RAck",
    "rseq": "RSeq",
}
REQUIRED = ("via", "from", "to", "call-id", "cseq")
#: What a response copies from its request to find its way back (§8.2.6.2).
ROUTES = frozenset({"via", "from", "to", "call-id", "cseq"})
_ONCE = frozenset(REQUIRED[1:])  #: at most once in a message
_TOKEN = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~")
_SCHEME = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+-.")


@dataclass
class Headers:
    """Header fields in order, by lower-case full name (compact forms
    expanded), list headers split into one value per item."""

    items: list[tuple[str, str]] = field(default_factory=list)

    def get(self, name: str, default: str = "") -> str:
        for key, value in self.items:
            if key == name:
                return value
        return default

    def get_all(self, name: str) -> list[str]:
        return [value for key, value in self.items if key == name]

    def __contains__(self, name: object) -> bool:
        return any(key == name for key, _ in self.items)


class _Headed:
    """What requests and responses both read from their headers."""

    headers: Headers

    @property
    def call_id(self) -> str:
        return self.headers.get("call-id")

    @property
    def cseq(self) -> tuple[int, str]:
        return parse_cseq(self.headers.get("cseq"))


@dataclass
class Request(_Headed):
    method: str
    uri: str
    headers: Headers
    body: bytes = b""


@dataclass
class Response(_Headed):
    status: int
    reason: str
    headers: Headers
    body: bytes = b""


Message = Request | Response


# -- parsing -------------------------------------------------------------


def parse_datagram(data: bytes) -> Message:
    """One message from one UDP datagram."""
    if len(data) > MAX_MESSAGE:
        raise TooLarge(f"message of {len(data)} bytes is over {MAX_MESSAGE}")
    end, skip = _head_end(data)
    if end < 0:
        raise Malformed("no empty line ends the header")
    msg = _parse_head(data[:end])
    body = data[end + skip :]
    length = _content_length(msg.headers, required=False)
    if length is not None:
        if length > len(body):
            raise Malformed(f"Content-Length {length} is longer than the {len(body)} bytes sent")
        body = body[:length]  # §18.3: the rest of a datagram is dropped
    msg.body = body
    return msg


class StreamParser:
    """Messages from a byte stream (TCP, TLS), framed by Content-Length.
    After an error the stream cannot be resynchronised: close it.  The
    messages framed before the error in the same ``feed`` are returned, and
    the error is kept in ``error`` (raised by ``feed`` from then on)."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.error: Malformed | TooLarge | None = None

    @property
    def buffered(self) -> int:
        """Bytes received and not framed into a message yet."""
        return len(self._buf)

    def pending(self) -> bytes:
        """The start of what is not framed yet (after an error: the
        message that caused it, for ``refusal_of``)."""
        return bytes(self._buf[:8192])

    def feed(self, data: bytes) -> list[Message]:
        if self.error is not None:
            raise self.error
        out: list[Message] = []
        try:
            self._frame(data, out)
        except (Malformed, TooLarge) as exc:
            self.error = exc
            if not out:
                raise
        return out

    def _frame(self, data: bytes, out: list[Message]) -> None:
        self._buf += data
        while True:
            # CRLF keep-alives between messages (RFC 5626 §3.5.1) are skipped.
            while self._buf[:2] == b"\r\n" or self._buf[:1] == b"\n":
                del self._buf[: 2 if self._buf[:1] == b"\r" else 1]
            end, skip = _head_end(self._buf)
            if end < 0:
                if len(self._buf) > MAX_MESSAGE:
                    raise TooLarge(f"header over {MAX_MESSAGE} bytes")
                return
            msg = _parse_head(bytes(self._buf[:end]))
            length = _content_length(msg.headers, required=True)
            assert length is not None
            total = end + skip + length
            if total > MAX_MESSAGE:
                raise TooLarge(f"message of {total} bytes is over {MAX_MESSAGE}")
            if len(self._buf) < total:
                return
            msg.body = bytes(self._buf[end + skip : total])
            del self._buf[:total]
            out.append(msg)


def _head_end(data: bytes | bytearray) -> tuple[int, int]:
    """Where the header ends and how long its blank line is (-1 if not yet)."""
    crlf = data.find(b"\r\n\r\n")
    lf = data.find(b"\n\n")
    if crlf >= 0 and (lf < 0 or crlf < lf):
        return crlf, 4
    return (lf, 2) if lf >= 0 else (-1, 0)


def _parse_head(head: bytes) -> Message:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        raise Malformed("the header is not UTF-8") from None
    lines = text.replace("\r\n", "\n").split("\n")
    start = lines[0]
    msg = _status_line(start) if start.startswith("SIP/") else _request_line(start)
    fields: list[str] = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t"):  # folded onto the line before (§7.3.1)
            if not fields:
                raise Malformed("a folded line before any header")
            fields[-1] += " " + line.strip()
        else:
            fields.append(line)
    if len(fields) > MAX_HEADERS:
        raise TooLarge(f"more than {MAX_HEADERS} header lines")
    headers = msg.headers
    for line in fields:
        name, colon, value = line.partition(":")
        name = name.strip().lower()
        if not colon or not name or not name.isascii() or not _TOKEN.issuperset(name.encode()):
            raise Malformed(f"bad header line {line[:60]!r}")
        name = COMPACT.get(name, name)
        value = value.strip()
        if name in LIST_HEADERS:
            headers.items.extend((name, item) for item in split_list(value) if item)
        else:
            headers.items.append((name, value))
    _check(msg)
    return msg


def _check(msg: Message) -> None:
    """What every layer above reads is read once here, so that a bad value
    is refused with the message, not met later by a layer that cannot
    answer: each Via; From, To, Call-ID and CSeq once each (RFC 4475
    multi01), From and To well formed; a request's CSeq method its own."""
    seen: dict[str, str] = {}
    for name, value in msg.headers.items:
        if name == "via":
            parse_via(value)
            seen.setdefault("via", value)
        elif name in _ONCE:
            if name in seen:
                raise Malformed(f"{spell(name)} more than once")
            seen[name] = value
    if isinstance(msg, Request):
        for name in REQUIRED:
            if name not in seen:
                raise Malformed(f"missing {spell(name)} header")
    for name in ("from", "to"):
        if name in seen:
            parse_name_addr(seen[name])
    if "cseq" in seen:
        _, cseq_method = parse_cseq(seen["cseq"])
        if isinstance(msg, Request) and cseq_method != msg.method:
            raise Malformed(f"CSeq method {cseq_method} is not the request's {msg.method}")


class UnsupportedVersion(Malformed):
    """A request of another SIP version: 505 Version Not Supported (§21.5.7)."""

    sip_status = 505


def _request_line(start: str) -> Request:
    parts = start.split(" ")
    if len(parts) == 3 and parts[2].startswith("SIP/") and parts[2] != "SIP/2.0":
        raise UnsupportedVersion(f"SIP version {parts[2][4:20]!r} is not supported")
    if len(parts) != 3 or parts[2] != "SIP/2.0":
        raise Malformed(f"bad request line {start[:80]!r}")
    method, uri, _ = parts
    scheme, colon, _ = uri.partition(":")
    if (
        not method
        or not _TOKEN.issuperset(method.encode())
        or not colon
        or not scheme[:1].isalpha()
        or not _SCHEME.issuperset(scheme.encode())
    ):
        raise Malformed(f"bad request line {start[:80]!r}")
    # §19.1.1: no headers in a Request-URI ("?" may be in the user part).
    if scheme.lower() in ("sip", "sips") and "?" in uri.rpartition("@")[2]:
        raise Malformed(f"headers in the Request-URI {uri[:60]!r}")
    return Request(method, uri, Headers())


def _status_line(start: str) -> Response:
    parts = start.split(" ", 2)
    if len(parts) < 2 or parts[0] != "SIP/2.0" or not parts[1].isdigit():
        raise Malformed(f"bad status line {start[:80]!r}")
    status = int(parts[1])
    if not 100 <= status <= 699 or len(parts[1]) != 3:
        raise Malformed(f"bad status code {parts[1]!r}")
    return Response(status, parts[2] if len(parts) == 3 else "", Headers())


def _content_length(headers: Headers, required: bool) -> int | None:
    values = headers.get_all("content-length")
    if not values:
        if required:
            raise Malformed("Content-Length is required on a stream")
        return None
    if len(set(values)) > 1 or not values[0].isdigit() or not values[0].isascii():
        raise Malformed(f"bad Content-Length {values[0][:20]!r}")
    length = int(values[0])
    if length > MAX_MESSAGE:
        raise TooLarge(f"Content-Length {length} is over {MAX_MESSAGE}")
    return length


def split_list(value: str) -> list[str]:
    """A list header's items: commas outside quotes and <>."""
    items, depth, quoted, start, i = [], 0, False, 0, 0
    while i < len(value):
        c = value[i]
        if quoted:
            if c == "\\":
                i += 1
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c == "<":
            depth += 1
        elif c == ">":
            depth = max(0, depth - 1)
        elif c == "," and depth == 0:
            items.append(value[start:i].strip())
            start = i + 1
        i += 1
    items.append(value[start:].strip())
    return items


def parse_cseq(value: str) -> tuple[int, str]:
    number, _, method = value.strip().partition(" ")
    method = method.strip()
    if not number.isdigit() or not number.isascii() or len(number) > 10 or not method:
        raise Malformed(f"bad CSeq {value[:40]!r}")
    seq = int(number)
    if seq >= 2**31:  # §8.1.1.5: less than 2**31
        raise Malformed(f"bad CSeq {value[:40]!r}")
    return seq, method


@dataclass
class Via:
    transport: str  #: "UDP", "TCP", "TLS"...
    host: str
    port: int  #: 0 when the value names none
    params: dict[str, str]

    @property
    def branch(self) -> str:
        return self.params.get("branch", "")


def parse_via(value: str) -> Via:
    """One Via value: ``SIP/2.0/UDP host[:port][;param[=value]]...``."""
    # White space may surround the slashes (§25.1 SLASH): "SIP / 2.0 / UDP host".
    protocol = value.split("/", 2)
    if len(protocol) != 3:
        raise Malformed(f"bad Via {value[:60]!r}")
    transport, _, rest = protocol[2].strip().partition(" ")
    rest = rest.strip()
    if (
        protocol[0].strip() != "SIP"
        or protocol[1].strip() != "2.0"
        or not transport
        or not _TOKEN.issuperset(transport.encode())
        or not rest
    ):
        raise Malformed(f"bad Via {value[:60]!r}")
    hostport, params = _params(rest)
    host, port = _hostport(hostport.strip(), value)
    return Via(transport.upper(), host, port, params)


@dataclass
class NameAddr:
    display: str
    uri: str
    params: dict[str, str]  #: the header's parameters (``tag``), not the URI's

    @property
    def tag(self) -> str:
        return self.params.get("tag", "")


def parse_name_addr(value: str) -> NameAddr:
    """From, To, Contact: ``"Name" <uri>;params`` or ``uri;params``."""
    value = value.strip()
    quoted = value.startswith('"')
    end = _quote_end(value) if quoted else 0
    lt = value.find("<", end)
    if lt >= 0:
        gt = value.find(">", lt)
        if gt < 0:
            raise Malformed(f"unclosed <> in {value[:60]!r}")
        display = value[1 : end - 1] if quoted else value[:lt].strip()
        if quoted and value[end:lt].strip():
            raise Malformed(f"bad display name in {value[:60]!r}")
        if not quoted and not _TOKEN.issuperset(display.replace(" ", "").encode()):
            raise Malformed(f"bad display name in {value[:60]!r}")  # RFC 4475 baddn
        uri = value[lt + 1 : gt]
        if uri != uri.strip() or " " in uri or "\t" in uri:
            raise Malformed(f"white space in the URI of {value[:60]!r}")  # RFC 4475 badaspec
        _, params = _params(value[gt + 1 :])
    else:  # addr-spec: its parameters are the header's (§20.10)
        display = ""
        uri, params = _params(value)
    if ":" not in uri:
        raise Malformed(f"no URI in {value[:60]!r}")
    return NameAddr(display, uri.strip(), params)


def _quote_end(value: str) -> int:
    """Where the quoted string at the start of ``value`` ends (after its
    closing quote); a string never closed is refused (RFC 4475 quotbal)."""
    i = 1
    while i < len(value):
        if value[i] == "\\":
            i += 2
            continue
        if value[i] == '"':
            return i + 1
        i += 1
    raise Malformed(f"unterminated quoted string in {value[:60]!r}")


@dataclass
class SipUri:
    scheme: str  #: "sip", "sips" or "tel"
    user: str
    host: str
    port: int
    params: dict[str, str]


def parse_uri(value: str) -> SipUri:
    """``sip:user@host:port;params?headers`` (the headers are dropped)."""
    scheme, colon, rest = value.strip().partition(":")
    scheme = scheme.lower()
    if not colon or scheme not in ("sip", "sips", "tel"):
        raise Malformed(f"not a SIP URI: {value[:60]!r}")
    if scheme == "tel":
        rest = rest.split("?", 1)[0]
        number, params = _params(rest)
        return SipUri(scheme, number, "", 0, params)
    userinfo, at, hostpart = rest.rpartition("@")
    hostport, params = _params(hostpart.split("?", 1)[0])  # "?" in a user part is a user's
    host, port = _hostport(hostport, value)
    user = userinfo.split(":", 1)[0] if at else ""
    return SipUri(scheme, user, host, port, params)


def _params(text: str) -> tuple[str, dict[str, str]]:
    """``head;a=1;b`` -> ("head", {"a": "1", "b": ""}), names lower-case."""
    head, *rest = text.split(";")
    params = {}
    for item in rest:
        name, _, val = item.partition("=")
        if name.strip():
            params[name.strip().lower()] = val.strip().strip('"')
    return head.strip(), params


def _hostport(hostport: str, whole: str) -> tuple[str, int]:
    if hostport.startswith("["):  # IPv6 reference
        host, _, port = hostport[1:].partition("]")
        port = port.removeprefix(":")
    else:
        host, _, port = hostport.partition(":")
    if not host or (port and (not port.isdigit() or not port.isascii() or int(port) > 65535)):
        raise Malformed(f"bad host in {whole[:60]!r}")
    return host.lower(), int(port) if port else 0


# -- rendering -----------------------------------------------------------


def contact_for(contact: str, transport: str, tls_contact: str) -> str:
    """Our Contact URI for a dialog over ``transport`` (UDP, TCP or TLS):
    where the far end sends what follows in it, the same way.  Over TLS,
    ``tls_contact`` (the TLS port's) when there is one."""
    transport = transport.upper()
    if transport == "TLS" and tls_contact:
        return tls_contact
    return f"{contact};transport=tcp" if transport == "TCP" else contact


def spell(name: str) -> str:
    """How a header's name is written: ours (lower case) as RFC 3261
    spells them; one a user named (a trunk's custom header) as given."""
    if name != name.lower():
        return name
    return SPELLING.get(name) or "-".join(part.capitalize() for part in name.split("-"))


def render(start: str, headers: list[tuple[str, str]], body: bytes = b"") -> bytes:
    """A message: its start line, the headers as given (Content-Length
    added), and the body."""
    lines = [start]
    lines += [f"{spell(name)}: {value}" for name, value in headers if name != "content-length"]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def response_to(
    req: Request,
    status: int,
    reason: str,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    to_tag: str = "",
) -> bytes:
    """A response to ``req`` (§8.2.6.2): its Via values, From, To (with
    ``to_tag`` if it has no tag yet), Call-ID and CSeq, then ``headers``."""
    to = req.headers.get("to")
    if to_tag and ";tag=" not in to.replace(" ", "").lower():
        to = f"{to};tag={to_tag}"
    copied = [("via", via) for via in req.headers.get_all("via")]
    copied += [
        ("from", req.headers.get("from")),
        ("to", to),
        ("call-id", req.headers.get("call-id")),
        ("cseq", req.headers.get("cseq")),
    ]
    return render(f"SIP/2.0 {status} {reason}", copied + list(headers or ()), body)


def refusal_of(data: bytes, exc: EdgeDispatchError) -> bytes:
    """The answer to a request we could not parse: 400 (513 if too large)
    with the reason, if it names where to send it (only what routes a
    response is read); b"" for a response, an ACK or bytes with no Via."""
    head = data.split(b"\r\n\r\n", 1)[0][:8192].decode("utf-8", "replace")
    lines = head.replace("\r\n", "\n").split("\n")
    method = lines[0].split(" ", 1)[0]
    if lines[0].startswith("SIP/") or not method.isalpha() or method == "ACK":
        return b""  # a response, or not even a request line
    fields = []
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        name = name.strip().lower()
        name = COMPACT.get(name, name)
        if colon and name in ROUTES:
            fields.append((name, value.strip()))
    if not any(name == "via" for name, _ in fields):
        return b""
    status = 400
    if isinstance(exc, (TooLarge, UnsupportedVersion)):
        status = 513 if isinstance(exc, TooLarge) else 505
    reason = "".join(c if c.isprintable() else " " for c in exc.msg[:100])
    return render(f"SIP/2.0 {status} {reason}", fields)
