"""SDP offer/answer for phone calls (RFC 3264, RFC 4566): the caller's
offer read, an answer chosen for G.711 and rendered; for the calls we
place, our offer and the callee's answer read.  Sans-IO.

We take PCMU or PCMA (the caller's first that we have: G.711 is what every
trunk offers and costs nothing to decode) and RFC 4733 telephone-event if
offered, for DTMF.  Each other media line (video, a second audio) is
refused with port 0, as RFC 3264 §6 says; an offer with no G.711 gets
``NotAcceptable`` (SIP 488).

Media encryption is SRTP with SDES keys (RFC 4568: ``RTP/SAVP`` and
``a=crypto`` lines), as livekit/sip does it, by the call's setting
(LiveKit's ``SIPMediaEncryption``): DISABLE takes plain RTP only, ALLOW
takes SRTP when it is offered (or answered) and plain RTP otherwise,
REQUIRE takes SRTP only.  We offer and take the two AES-128 suites; our
master key (key and salt, 30 bytes) is the caller's to make, so that this
module draws no random numbers.  An SRTP line where encryption is
disabled is refused like any other line we cannot take (LiveKit answers
it with plain RTP, which the caller cannot use).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field

from edgedispatch.errors import EdgeDispatchError, Malformed

#: Static payload types (RFC 3551) and the encodings we bridge.
STATIC = {0: "PCMU", 8: "PCMA"}
CODECS = ("PCMU", "PCMA")  #: our preference when the caller has no order
#: LiveKit's ``SIPMediaEncryption``.
DISABLE, ALLOW, REQUIRE = 0, 1, 2
#: The SDES suites we take, in our order of preference (pylibsrtp has them).
SUITES = ("AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32")
KEY_LENGTH = 30  #: an AES-128 suite's master key and salt


class NotAcceptable(EdgeDispatchError):
    """The offer has nothing we can use."""

    twirp_code = "invalid_argument"
    sip_status = 488


@dataclass
class MediaLine:
    kind: str  #: "audio", "video"...
    port: int
    proto: str  #: "RTP/AVP", "RTP/SAVP"...
    formats: list[int]
    rtpmap: dict[int, str] = field(default_factory=dict)  #: pt -> "PCMU/8000"
    fmtp: dict[int, str] = field(default_factory=dict)
    direction: str = "sendrecv"
    address: str = ""  #: its own c= line, if any
    ptime: int = 0
    #: Its ``a=crypto`` lines we can use: (tag, suite, master key).
    crypto: list[tuple[int, str, bytes]] = field(default_factory=list)

    def encoding(self, pt: int) -> str:
        """The encoding name of payload type ``pt`` (upper case)."""
        name = self.rtpmap.get(pt, "").split("/", 1)[0]
        return (name or STATIC.get(pt, "")).upper()


@dataclass
class Offer:
    address: str  #: the session's c= address
    media: list[MediaLine]


@dataclass
class Answer:
    """What we answer, and what the call's media then is."""

    sdp: bytes
    remote: tuple[str, int]  #: where the caller wants its audio
    payload_type: int  #: the G.711 payload type, both ways
    codec: str  #: "PCMU" or "PCMA"
    dtmf_payload_type: int | None  #: telephone-event's, if offered
    direction: str  #: ours
    ptime: int  #: the caller's packet time (ms), 20 if it did not say
    #: SRTP, if taken: (suite, the far end's master key, ours).
    srtp: tuple[str, bytes, bytes] | None = None


def parse_offer(body: bytes) -> Offer:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise Malformed("the SDP is not UTF-8") from None
    address = ""
    media: list[MediaLine] = []
    for raw in text.replace("\r\n", "\n").split("\n"):
        line = raw.strip()
        if len(line) < 2 or line[1] != "=":
            continue
        kind, value = line[0], line[2:]
        if kind == "c":
            parts = value.split()
            if len(parts) != 3 or parts[0] != "IN":
                raise Malformed(f"bad SDP c= line {line[:60]!r}")
            addr = parts[2].split("/", 1)[0]
            if media:
                media[-1].address = addr
            else:
                address = addr
        elif kind == "m":
            parts = value.split()
            if len(parts) < 3 or not parts[1].split("/", 1)[0].isdigit():
                raise Malformed(f"bad SDP m= line {line[:60]!r}")
            formats = [int(f) for f in parts[3:] if f.isdigit() and int(f) < 128]
            port = int(parts[1].split("/", 1)[0])
            if port > 65535:
                raise Malformed(f"bad SDP port in {line[:60]!r}")
            media.append(MediaLine(parts[0], port, parts[2], formats))
        elif kind == "a" and media:
            _attribute(media[-1], value)
    if not media:
        raise Malformed("the SDP has no media line")
    return Offer(address, media)


def _attribute(m: MediaLine, value: str) -> None:
    name, _, rest = value.partition(":")
    if name in ("sendrecv", "sendonly", "recvonly", "inactive"):
        m.direction = name
    elif name in ("rtpmap", "fmtp"):
        pt, _, what = rest.partition(" ")
        if pt.isdigit():
            (m.rtpmap if name == "rtpmap" else m.fmtp)[int(pt)] = what.strip()
    elif name == "ptime" and rest.strip().isdigit():
        m.ptime = int(rest.strip())
    elif name == "crypto":
        crypto = _crypto(rest)
        if crypto is not None:
            m.crypto.append(crypto)


def _crypto(value: str) -> tuple[int, str, bytes] | None:
    """``tag suite inline:key||salt[|lifetime]`` (RFC 4568 §9.1), if its
    suite is one of ours and its key reads (else None: not usable).  A
    line with an MKI, more than one key, or session parameters is not
    usable either: its packets would not be what our sessions read."""
    parts = value.split()
    if len(parts) != 3 or not parts[0].isdigit() or parts[1] not in SUITES:
        return None
    method, _, params = parts[2].partition(":")
    fields = params.split("|")
    if method != "inline" or ";" in params or any(":" in f for f in fields[1:]):
        return None
    try:
        key = base64.b64decode(fields[0], validate=True)
    except (binascii.Error, ValueError):
        return None
    return (int(parts[0]), parts[1], key) if len(key) == KEY_LENGTH else None


def _crypto_line(tag: int, suite: str, key: bytes) -> str:
    return f"a=crypto:{tag} {suite} inline:{base64.b64encode(key).decode()}"


_MIRROR = {"sendrecv": "sendrecv", "sendonly": "recvonly", "recvonly": "sendonly"}


#: The payload type we offer telephone-event on (a dynamic one, as livekit/sip's).
OUR_DTMF_PT = 101


def make_offer(
    address: str, port: int, session_id: int, encryption: int = DISABLE, key: bytes = b""
) -> bytes:
    """Our offer for a call we place: PCMU, PCMA and telephone-event, at
    ``address``:``port``; SRTP with master ``key`` unless ``encryption``
    is DISABLE (LiveKit offers SRTP alone then, ALLOW or REQUIRE)."""
    srtp = encryption != DISABLE
    proto = "RTP/SAVP" if srtp else "RTP/AVP"
    lines = [
        "v=0",
        f"o=edgedispatch {session_id} {session_id} IN IP4 {address}",
        "s=edgedispatch",
        f"c=IN IP4 {address}",
        "t=0 0",
        f"m=audio {port} {proto} 0 8 {OUR_DTMF_PT}",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:8 PCMA/8000",
        f"a=rtpmap:{OUR_DTMF_PT} telephone-event/8000",
        f"a=fmtp:{OUR_DTMF_PT} 0-16",
    ]
    if srtp:
        lines += [_crypto_line(tag, suite, key) for tag, suite in enumerate(SUITES, 1)]
    lines += ["a=ptime:20", "a=sendrecv"]
    return ("\r\n".join(lines) + "\r\n").encode()


def read_answer(body: bytes, encryption: int = DISABLE, key: bytes = b"") -> Answer:
    """The callee's answer to ``make_offer`` (with ``encryption`` and our
    ``key``): the codec it took (its first G.711 format), its
    telephone-event type, where it wants its audio, and the SRTP suite and
    key it chose.  ``NotAcceptable`` if it took nothing we offered."""
    offered = DISABLE if encryption == DISABLE else REQUIRE  # we offered SAVP alone
    got = answer(parse_offer(body), "0.0.0.0", 0, 0, offered, key)
    return Answer(b"", got.remote, got.payload_type, got.codec, got.dtmf_payload_type,
                  got.direction, got.ptime, got.srtp)  # fmt: skip


def _usable(m: MediaLine, encryption: int) -> bool:
    """Whether we can take line ``m`` (its transport, and its keys)."""
    if m.proto == "RTP/AVP":
        return encryption != REQUIRE
    if m.proto == "RTP/SAVP":
        return encryption != DISABLE and bool(m.crypto)
    return False


def answer(
    offer: Offer,
    address: str,
    port: int,
    session_id: int,
    encryption: int = DISABLE,
    key: bytes = b"",
) -> Answer:
    """Our answer: the first offered audio line with G.711 that
    ``encryption`` lets us take is taken, on ``address``:``port`` (over
    SRTP, with our master ``key``, if it is RTP/SAVP); every other line is
    refused with port 0."""
    chosen: tuple[MediaLine, int, int | None] | None = None
    srtp: tuple[str, bytes, bytes] | None = None
    lines = []
    for m in offer.media:
        pick = None
        if chosen is None and m.kind == "audio" and m.port and _usable(m, encryption):
            pick = next((pt for pt in m.formats if m.encoding(pt) in CODECS), None)
        if pick is None:
            fmt = " ".join(str(f) for f in m.formats) or "0"
            lines.append(f"m={m.kind} 0 {m.proto} {fmt}")
            continue
        dtmf = next((pt for pt in m.formats if m.encoding(pt) == "TELEPHONE-EVENT"), None)
        chosen = (m, pick, dtmf)
        formats = f"{pick}" + (f" {dtmf}" if dtmf is not None else "")
        lines += [
            f"m=audio {port} {m.proto} {formats}",
            f"a=rtpmap:{pick} {m.encoding(pick)}/8000",
        ]
        if dtmf is not None:
            lines += [f"a=rtpmap:{dtmf} telephone-event/8000", f"a=fmtp:{dtmf} 0-16"]
        if m.proto == "RTP/SAVP":  # the first of its keys in our order of suites
            tag, suite, theirs = min(m.crypto, key=lambda c: SUITES.index(c[1]))
            srtp = (suite, theirs, key)
            lines.append(_crypto_line(tag, suite, key))
        lines += ["a=ptime:20", f"a={_MIRROR.get(m.direction, 'inactive')}"]
    if chosen is None:
        wanted = {DISABLE: "RTP/AVP", ALLOW: "RTP/AVP or RTP/SAVP", REQUIRE: "RTP/SAVP"}
        raise NotAcceptable(
            f"the offer has no PCMU or PCMA audio over {wanted.get(encryption, 'RTP/AVP')}"
            + (" with an AES-128 crypto line" if encryption == REQUIRE else "")
        )
    m, pt, dtmf = chosen
    head = [
        "v=0",
        f"o=edgedispatch {session_id} {session_id} IN IP4 {address}",
        "s=edgedispatch",
        f"c=IN IP4 {address}",
        "t=0 0",
    ]
    sdp = ("\r\n".join(head + lines) + "\r\n").encode()
    remote = (m.address or offer.address, m.port)
    if not remote[0]:
        raise Malformed("the SDP names no address for its audio")
    return Answer(
        sdp, remote, pt, m.encoding(pt), dtmf, _MIRROR.get(m.direction, "inactive"),
        m.ptime or 20, srtp,
    )  # fmt: skip
