"""RFC 4475's SIP torture messages, our own transcription: each keeps what
its test is about (the odd white space, the escapes, the bad value), with
names, addresses and bodies of our own, so the text is not the RFC's.

``msg(lines, body)`` joins the lines with CRLF; ``{len}`` in a line is
replaced by the body's length (the transcriptions that are about a wrong
Content-Length write theirs out).

Each case says what must happen to it here:
- ``Valid``: parses, with the fields its test is about;
- ``Answered(status)``: a request the UAS answers with ``status`` (400 for
  what cannot be parsed, or the status RFC 4475 asks for, or what our UAS
  answers to a valid request that is about another layer);
- ``Dropped``: nothing can be answered (a response, or no Via to answer
  by): it is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SDP = (
    "v=0\r\no=mhandley 29739 7272939 IN IP4 192.0.2.3\r\ns=-\r\nc=IN IP4 192.0.2.3\r\n"
    "t=0 0\r\nm=audio 49217 RTP/AVP 0 12\r\nm=video 3227 RTP/AVP 31\r\n"
    "a=rtpmap:31 LPC\r\n"
)


def msg(lines: list[str], body: str | bytes = b"") -> bytes:
    raw = body.encode() if isinstance(body, str) else body
    head = "\r\n".join(lines).replace("{len}", str(len(raw)))
    return head.encode() + b"\r\n\r\n" + raw


@dataclass(frozen=True)
class Valid:
    #: header (or "method", "uri", "status", "reason", "body") -> the value read
    fields: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Answered:
    status: int


@dataclass(frozen=True)
class Dropped:
    pass


Expect = Valid | Answered | Dropped

VIA = "Via: SIP/2.0/UDP 192.0.2.10;branch=z9hG4bK-torture"

#: name (RFC 4475's) -> (section, message, what must happen)
CASES: dict[str, tuple[str, bytes, Expect]] = {
    # -- 3.1.1 valid messages ---------------------------------------------
    "wsinv": (
        "3.1.1.1",
        msg(
            [
                "INVITE sip:dave@torture.example.com;unknownparam SIP/2.0",
                "TO :",
                " sip:dave@torture.example.com ;   tag    = 1a2b3c4d",
                'from   : "Ann Smith \\\\\\""       <sip:ann@example.com>',
                "  ;",
                "  tag = 55xyz",
                "MaX-fOrWaRdS: 0068",
                "Call-ID: wsinv.kjdf87@192.0.2.10",
                "Content-Length   : {len}",
                "cseq: 0009",
                "  INVITE",
                "Via  : SIP  /   2.0",
                " /UDP",
                "    192.0.2.10;branch=z9hG4bKk9s8d7",
                "s :",
                "NewFangledHeader:   newfangled value",
                " continued newfangled value",
                "UnknownHeaderWithUnusualValue: ;;,,;;,;",
                "Content-Type: application/sdp",
                "Route:",
                " <sip:services.example.com;lr;unknownwith=value;unknown-no-value>",
                "v:  SIP  / 2.0  / TCP     spindle.example.com   ;",
                "  branch  =   z9hG4bK9ikj8  ,",
                " SIP  /    2.0   / UDP  192.168.255.111   ; branch=",
                " z9hG4bK30239",
                'm:"Quoted string \\"\\"" <sip:ann@example.com> ; newparam =',
                "      newvalue ;",
                "  secondparam ; q = 0.33",
            ],
            SDP,
        ),
        Valid(
            {
                "method": "INVITE",
                "cseq": (9, "INVITE"),
                "to-tag": "1a2b3c4d",
                "from-tag": "55xyz",
                "vias": [
                    ("UDP", "192.0.2.10", "z9hG4bKk9s8d7"),
                    ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
                    ("UDP", "192.168.255.111", "z9hG4bK30239"),
                ],
                "newfangledheader": "newfangled value continued newfangled value",
                "body": SDP.encode(),
            }
        ),
    ),
    "intmeth": (
        "3.1.1.2",
        msg(
            [
                "!interesting-Method0123456789_*+`.%indeed'~ "
                "sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too."
                "(doesn't-it)@example.com SIP/2.0",
                "Via: SIP/2.0/TCP host1.example.com;branch=z9hG4bK-.!%66*_+`'~",
                'To: "BEL:\\\x07 NUL:\\\x00 DEL:\\\x7f" <sip:1_unusual.URI~(to-be!sure)&isn\'t+it$'
                "/crazy?,/;;*@example.com>",
                "From: token1~` token2'+_ token3*%!.- <sip:mundane@example.com>"
                ";fromParam''~+*_!.-%=\"\u0440\u0430\u0431\u043e\u0442\u0430\u044e\u0449\u0438\u0439\""
                ";tag=_token~1'+`*%!-.",
                "Call-ID: intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{",
                "CSeq: 139122385 !interesting-Method0123456789_*+`.%indeed'~",
                "Max-Forwards: 255",
                "extensionHeader-!.%*+_`'~:\ufeff\u5927\u505c\u96fb",
                "Content-Length: {len}",
            ]
        ),
        Valid(
            {
                "method": "!interesting-Method0123456789_*+`.%indeed'~",
                "from-tag": "_token~1'+`*%!-.",
                "extensionheader-!.%*+_`'~": "\ufeff\u5927\u505c\u96fb",
            }
        ),
    ),
    "esc01": (
        "3.1.1.3",
        msg(
            [
                "INVITE sip:sips%3Auser%40example.com@example.net SIP/2.0",
                "To: sip:%75se%72@example.com",
                "From: <sip:I%20have%20spaces@example.net>;tag=938",
                "Max-Forwards: 87",
                "i: esc01.239409asdfakjkn23onasd0-3234",
                "CSeq: 234234 INVITE",
                VIA,
                "C: application/sdp",
                "Contact:",
                "  <sip:cal%6Cer@192.0.2.10:5060;%6C%72;n%61me=v%61lue%25%34%31>",
                "Content-Length: {len}",
            ],
            SDP,
        ),
        # Escapes are kept as sent: a URI is compared unescaped, not rewritten.
        Valid({"uri": "sip:sips%3Auser%40example.com@example.net", "to-user": "%75se%72"}),
    ),
    "escnull": (
        "3.1.1.4",
        msg(
            [
                "REGISTER sip:example.com SIP/2.0",
                "To: sip:null-%00-null@example.com",
                "From: sip:null-%00-null@example.com;tag=839923423",
                "Max-Forwards: 70",
                "Call-ID: escnull.39203ndfvkjdasfkq3w4otrq0adsfdfnavd",
                "CSeq: 14398234 REGISTER",
                VIA,
                "Contact: <sip:%00@host5.example.com>",
                "Contact: <sip:%00%00@host5.example.com>",
                "L:0",
            ]
        ),
        Valid({"method": "REGISTER", "to-user": "null-%00-null"}),
    ),
    "esc02": (
        "3.1.1.5",
        msg(
            [
                "RE%47IST%45R sip:registrar.example.com SIP/2.0",
                'To: "%Z%45" <sip:resource@example.com>',
                'From: "%Z%45" <sip:resource@example.com>;tag=f232jadfj23',
                "Call-ID: esc02.asdfnqwo34rq23i34jrjasdcnl23nrlknsdf",
                VIA,
                "CSeq: 29344 RE%47IST%45R",
                "Max-Forwards: 70",
                "Contact: <sip:alias1@host1.example.com>",
                "C%6Fntact: <sip:alias2@host2.example.com>",
                "Contact: <sip:alias3@host3.example.com>",
                "l: 0",
            ]
        ),
        # %47 is not decoded in a method: this is not REGISTER.
        Valid({"method": "RE%47IST%45R", "c%6fntact": "<sip:alias2@host2.example.com>"}),
    ),
    "lwsdisp": (
        "3.1.1.6",
        msg(
            [
                "OPTIONS sip:user@example.com SIP/2.0",
                "To: sip:user@example.com",
                "From: caller<sip:caller@example.com>;tag=323",
                "Max-Forwards: 70",
                "Call-ID: lwsdisp.1234abcd@funky.example.com",
                "CSeq: 60 OPTIONS",
                VIA,
                "l: 0",
            ]
        ),
        Valid({"from-display": "caller", "from-tag": "323"}),
    ),
    "longreq": (
        "3.1.1.7",
        msg(
            [
                "INVITE sip:user@example.com SIP/2.0",
                'To: "I have a user name of '
                + "extreme" * 10
                + ' proportion" <sip:user@example.com:'
                "6000;unknownparam1=very"
                + "long" * 20
                + "value;longparam"
                + "name" * 25
                + "=shortvalue>",
                "F: sip:"
                + "amazinglylongcallername" * 5
                + "@example.net;tag=12"
                + "982" * 50
                + "424",
                "Call-ID: longreq." + "onereallyreallyreallyreallylongcallid" * 8,
                "CSeq: 3882340 INVITE",
                "Unknown-"
                + "Long" * 25
                + "-Name: unknown-"
                + "long" * 25
                + "-value; unknown-"
                + "long" * 25
                + "-parameter-name = unknown-"
                + "long" * 25
                + "-parameter-value",
                *[
                    f"Via: SIP/2.0/TCP sip{i}.example.com;branch=z9hG4bK{'x' * 40}{i}"
                    for i in range(30)
                ],
                "Max-Forwards: 70",
                "Contact: <sip:" + "amazinglylongcallername" * 5 + "@host5.example.net>",
                "Content-Type: application/sdp",
                "l: {len}",
            ],
            SDP,
        ),
        Valid({"via-count": 30, "cseq": (3882340, "INVITE")}),
    ),
    "dblreq": (
        "3.1.1.8",
        msg(
            [
                "REGISTER sip:example.com SIP/2.0",
                "To: sip:j.user@example.com",
                "From: sip:j.user@example.com;tag=43251j3j324",
                "Max-Forwards: 8",
                "I: dblreq.0ha0isndaksdj99sdfafnl3lk233412",
                "Contact: sip:j.user@host.example.com",
                "CSeq: 8 REGISTER",
                VIA,
                "Content-Length: 0",
            ],
            # A second request in the same datagram, past Content-Length: cut.
            msg(
                [
                    "INVITE sip:joe@example.com SIP/2.0",
                    "t: sip:joe@example.com",
                    "From: sip:caller@example.net;tag=141334",
                    "Max-Forwards: 8",
                    "Call-ID: dblreq.0ha0isnda977644900765@192.0.2.15",
                    "CSeq: 8 INVITE",
                    "Via: SIP/2.0/UDP 192.0.2.15;branch=z9hG4bKkdjuw380234",
                    "Content-Length: 0",
                ]
            ),
        ),
        Valid({"method": "REGISTER", "body": b""}),
    ),
    "semiuri": (
        "3.1.1.9",
        msg(
            [
                "OPTIONS sip:user;par=u%40example.net@example.com SIP/2.0",
                "To: sip:j_user@example.com",
                "From: sip:caller@example.org;tag=33242",
                "Max-Forwards: 3",
                VIA,
                "Accept: application/sdp",
                "Call-ID: semiuri.0ha0isndaksdj",
                "CSeq: 8 OPTIONS",
                "l: 0",
            ]
        ),
        Valid({"uri-user": "user;par=u%40example.net", "uri-host": "example.com"}),
    ),
    "transports": (
        "3.1.1.10",
        msg(
            [
                "OPTIONS sip:user@example.com SIP/2.0",
                "To: sip:user@example.com",
                "From: <sip:caller@example.com>;tag=323",
                "Max-Forwards: 70",
                "Call-ID:  transports.kijh4akdnaqjkwendsasfdj",
                "Accept: application/sdp",
                "CSeq: 60 OPTIONS",
                "Via: SIP/2.0/UDP t1.example.com;branch=z9hG4bKkdjuw",
                "Via: SIP/2.0/SCTP t2.example.com;branch=z9hG4bKklasjdhf",
                "Via: SIP/2.0/TLS t3.example.com;branch=z9hG4bK2980unddj",
                "Via: SIP/2.0/UNKNOWN t4.example.com;branch=z9hG4bKasd0f3en",
                "Via: SIP/2.0/TCP t5.example.com;branch=z9hG4bK0a9idfnee",
                "l: 0",
            ]
        ),
        Valid({"transports": ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]}),
    ),
    "mpart01": (
        "3.1.1.11",
        msg(
            [
                "MESSAGE sip:kumiko@example.org SIP/2.0",
                "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-444-1",
                "Max-Forwards: 70",
                "From: <sip:fluffy@example.com>;tag=ab8asdasd9",
                "To: <sip:kumiko@example.org>",
                "Call-ID: mpart01@example.com",
                "CSeq: 1 MESSAGE",
                'Content-Type: multipart/signed;protocol="application/pkcs7-signature";'
                'micalg=sha1;boundary="----edge-boundary"',
                "Content-Length: {len}",
            ],
            b"------edge-boundary\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
            b"------edge-boundary\r\nContent-Type: application/pkcs7-signature\r\n"
            b"Content-Transfer-Encoding: binary\r\n\r\n\x30\x82\x01\x00\xff\x00\r\n"
            b"------edge-boundary--\r\n",
        ),
        Valid({"method": "MESSAGE", "body-starts": b"------edge-boundary\r\n"}),
    ),
    "unreason": (
        "3.1.1.12",
        msg(
            [
                "SIP/2.0 200 = 2**3 * 5**2 \u043d\u043e \u0441\u0442\u043e "
                "\u0434\u0435\u0432\u044f\u043d\u043e\u0441\u0442\u043e - "
                "\u043f\u0440\u043e\u0441\u0442\u043e\u0435",
                "Via: SIP/2.0/UDP 192.0.2.198;branch=z9hG4bK1324923",
                "Call-ID: unreason.1234ksdfak3j2erwedfsASdf",
                "CSeq: 35 INVITE",
                "From: sip:user@example.com;tag=11141343",
                "To: sip:user@example.edu;tag=2229",
                "Content-Length: {len}",
                "Content-Type: application/sdp",
                "Contact: <sip:user@host198.example.com>",
            ],
            SDP,
        ),
        Valid({"status": 200, "reason-starts": "= 2**3 * 5**2 \u043d\u043e"}),
    ),
    "noreason": (
        "3.1.1.13",
        msg(
            [
                "SIP/2.0 100 ",
                "Via: SIP/2.0/UDP 192.0.2.105;branch=z9hG4bK2398ndaoe",
                "Call-ID: noreason.asndj203insdf99223ndf",
                "CSeq: 35 INVITE",
                "From: <sip:user@example.com>;tag=39ansfi3",
                "To: <sip:user@example.edu>;tag=902jndnke3",
                "Content-Length: 0",
                "Contact: <sip:user@host105.example.com>",
            ]
        ),
        Valid({"status": 100, "reason": ""}),
    ),
    # -- 3.1.2 invalid messages -------------------------------------------
    "badinv01": (
        "3.1.2.1",
        msg(
            [
                "INVITE sip:user@example.com SIP/2.0",
                "To: sip:j.user@example.com",
                "From: sip:caller@example.net;tag=134161461246",
                "Max-Forwards: 7",
                "Call-ID: badinv01.0ha0isndaksdjasdf3234nas",
                "CSeq: 8 INVITE",
                "Via: SIP/2.0/UDP 192.0.2.15;;,;,,",
                'Contact: "Joe" <sip:joe@example.org>;;;;',
                "Content-Length: {len}",
                "Content-Type: application/sdp",
            ],
            SDP,
        ),
        Answered(400),
    ),
    "clerr": (
        "3.1.2.2",
        msg(
            [
                "INVITE sip:user@example.com SIP/2.0",
                "Max-Forwards: 80",
                "To: sip:j.user@example.com",
                "From: sip:caller@example.net;tag=93942939o2",
                "Contact: <sip:caller@hungry.example.net>",
                "Call-ID: clerr.0ha0isndaksdjweiafasdk3",
                "CSeq: 8 INVITE",
                "Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bK-39234-23523",
                "Content-Type: application/sdp",
                "Content-Length: 9999",
            ],
            SDP,
        ),
        Answered(400),
    ),
    "ncl": (
        "3.1.2.3",
        msg(
            [
                "INVITE sip:user@example.com SIP/2.0",
                "Max-Forwards: 254",
                "To: sip:j.user@example.com",
                "From: sip:caller@example.net;tag=32394234",
                "Call-ID: ncl.0ha0isndaksdj2193423r542w35",
                "CSeq: 0 INVITE",
                "Via: SIP/2.0/UDP 192.0.2.53;branch=z9hG4bKkdjuw",
                "Contact: <sip:caller@example53.example.net>",
                "Content-Type: application/sdp",
                "Content-Length: -999",
            ],
            SDP,
        ),
        Answered(400),
    ),
    "scalar02": (
        "3.1.2.4",
        msg(
            [
                "REGISTER sip:example.com SIP/2.0",
                "Via: SIP/2.0/TCP host129.example.com;branch=z9hG4bK342sdfoi3",
                "To: <sip:user@example.com>",
                "From: <sip:user@example.com>;tag=239232jh3",
                "CSeq: 36893488147419103232 REGISTER",
                "Call-ID: scalar02.23o0pd9vanlq3wnrlnewofjas9ui32",
                "Max-Forwards: 300",
                "Expires: 1000000000000000000000000000000000000000000000000000",
                "Contact: <sip:user@host129.example.com>;expires=280297596632815",
                "Content-Length: 0",
            ]
        ),
        Answered(400),
    ),
    "scalarlg": (
        "3.1.2.5",
        msg(
            [
                "SIP/2.0 503 Service Unavailable",
                "Via: SIP/2.0/TCP host129.example.com;branch=z9hG4bKzzxdiwo34sw"
                ";received=192.0.2.129",
                "To: <sip:user@example.com>",
                "From: <sip:other@example.net>;tag=2easdjfejw",
                "CSeq: 9292394834772304023312 OPTIONS",
                "Call-ID: scalarlg.noase0of0234hn2qofoaf0232aewf2394r",
                "Retry-After: 949302838503028349304023988",
                'Warning: 1812 overture "In Progress"',
                "Content-Length: 0",
            ]
        ),
        Dropped(),
    ),
    "quotbal": (
        "3.1.2.6",
        msg(
            [
                "INVITE sip:user@example.com SIP/2.0",
                'To: "Mr. J. User <sip:j.user@example.com>',
                "From: sip:caller@example.net;tag=93334",
                "Max-Forwards: 10",
                "Call-ID: quotbal.aksdj",
                "Contact: <sip:caller@host59.example.net>",
                "CSeq: 8 INVITE",
                "Via: SIP/2.0/UDP 192.0.2.59:5050;branch=z9hG4bKkdjuw39234",
                "Content-Type: application/sdp",
                "Content-Length: {len}",
            ],
            SDP,
        ),
        Answered(400),
    ),
    "ltgtruri": (
        "3.1.2.7",
        msg(
            [
                "INVITE <sip:user@example.com> SIP/2.0",
                "To: sip:user@example.com",
                "From: sip:caller@example.net;tag=39291",
                "Max-Forwards: 23",
                "Call-ID: ltgtruri.1@192.0.2.5",
                "CSeq: 1 INVITE",
                "Via: SIP/2.0/UDP 192.0.2.5",
                "Contact: <sip:caller@host5.example.net>",
                "Content-Type: application/sdp",
                "Content-Length: {len}",
            ],
            SDP,
        ),
        Answered(400),
    ),
    "lwsruri": (
        "3.1.2.8",
        msg(
            [
                "INVITE sip:user@example.com; lr SIP/2.0",
                "To: sip:user@example.com;tag=3xfe-9921883-z9f",
                "From: sip:caller@example.net;tag=231413434",
                "Max-Forwards: 5",
                "Call-ID: lwsruri.asdfasdoeoi2323-asdfwrn23-asd834rk423",
                "CSeq: 2130706432 INVITE",
                "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKkdjuw2395",
                "Contact: <sip:caller@host1.example.net>",
                "Content-Type: application/sdp",
                "Content-Length: {len}",
            ],
            SDP,
        ),
        Answered(400),
    ),
    "lwsstart": (
        "3.1.2.9",
        msg(
            [
                "INVITE  sip:user@example.com  SIP/2.0",
                "Max-Forwards: 8",
                "To: sip:user@example.com",
                "From: sip:caller@example.net;tag=8814",
                "Call-ID: lwsstart.dfknq234oi243099adsdfnawe3@example.com",
                "CSeq: 1893884 INVITE",
                "Via: SIP/2.0/UDP host1.example.com;branch=z9hG4bKkdjuw3923",
                "Contact: <sip:caller@host1.example.net>",
                "Content-Type: application/sdp",
                "Content-Length: {len}",
            ],
            SDP,
        ),
        Answered(400),
    ),
    "trws": (
        "3.1.2.10",
        msg(
            [
                "OPTIONS sip:remote-target@example.com SIP/2.0  ",
                "Via: SIP/2.0/TCP host1.example.com;branch=z9hG4bK299342093",
                "To: <sip:remote-target@example.com>",
                "From: <sip:local-resource@example.com>;tag=329429089",
                "Call-ID: trws.oicu34958239neffasdhr2345r",
                "Accept: application/sdp",
                "CSeq: 238923 OPTIONS",
                "Max-Forwards: 70",
                "Content-Length: 0",
            ]
        ),
        Answered(400),
    ),
    "escruri": (
        "3.1.2.11",
        msg(
            [
                "INVITE sip:user@example.com?Route=%3Csip:example.com%3E SIP/2.0",
                "To: sip:user@example.com",
                "From: sip:caller@example.net;tag=341518",
                "Max-Forwards: 7",
                "Contact: <sip:caller@host39923.example.net>",
                "Call-ID: escruri.23940-asdfhj-aje3br-234q098w-fawerh2q-h4n5",
                "CSeq: 149209342 INVITE",
                "Via: SIP/2.0/UDP host-of-the-hour.example.com;branch=z9hG4bKkdjuw",
                "Content-Type: application/sdp",
                "Content-Length: {len}",
            ],
            SDP,
        ),
        Answered(400),
    ),
    "baddate": (
        "3.1.2.12",
        msg(
            [
                "OPTIONS sip:user@example.com SIP/2.0",
                "To: sip:user@example.com",
                "From: sip:caller@example.net;tag=2234923",
                "Max-Forwards: 70",
                "Call-ID: baddate.239423mnsadf3j23lj42--sedfnm234",
                "CSeq: 1392934 OPTIONS",
                "Via: SIP/2.0/UDP host.example.com;branch=z9hG4bKkdjuw",
                "Date: Fri, 01 Jan 2010 16:00:00 EST",
                "Content-Length: 0",
            ]
        ),
        # RFC 4475 lets an element ignore a Date it does not use: we do.
        Valid({"date": "Fri, 01 Jan 2010 16:00:00 EST"}),
    ),
    "badaspec": (
        "3.1.2.14",
        msg(
            [
                "OPTIONS sip:user@example.org SIP/2.0",
                "Via: SIP/2.0/UDP host4.example.com:5060;branch=z9hG4bKkdju43234",
                "Max-Forwards: 70",
                'From: "Bell, Alexander" <sip:a.g.bell@example.com >;tag=433423',
                'To: "Watson, Thomas" < sip:t.watson@example.org >',
                "Call-ID: badaspec.sdf0234n2nds0a099u23h3hnnw009cdkne3",
                "Accept: application/sdp",
                "CSeq: 3923239 OPTIONS",
                "l: 0",
            ]
        ),
        Answered(400),
    ),
    "baddn": (
        "3.1.2.15",
        msg(
            [
                "OPTIONS sip:t.watson@example.org SIP/2.0",
                "Via: SIP/2.0/UDP c.example.com:5060;branch=z9hG4bKkdjuw",
                "Max-Forwards: 70",
                "From:    Bell, Alexander <sip:a.g.bell@example.com>;tag=43",
                "To:      Watson, Thomas <sip:t.watson@example.org>",
                "Call-ID: baddn.31415@c.example.com",
                "Accept: application/sdp",
                "CSeq: 3923239 OPTIONS",
                "l: 0",
            ]
        ),
        Answered(400),
    ),
    "badvers": (
        "3.1.2.16",
        msg(
            [
                "OPTIONS sip:t.watson@example.org SIP/7.0",
                "Via:     SIP/7.0/UDP c.example.com;branch=z9hG4bKkdjuw",
                "Max-Forwards:     70",
                "From:    A. Bell <sip:a.g.bell@example.com>;tag=qweoiqpe",
                "To:      T. Watson <sip:t.watson@example.org>",
                "Call-ID: badvers.31417@c.example.com",
                "CSeq:    1 OPTIONS",
                "l: 0",
            ]
        ),
        Answered(505),
    ),
    "mismatch01": (
        "3.1.2.17",
        msg(
            [
                "OPTIONS sip:user@example.com SIP/2.0",
                "To: sip:j.user@example.com",
                "From: sip:caller@example.net;tag=34525",
                "Max-Forwards: 6",
                "Call-ID: mismatch01.dj0234sxdfl3",
                "CSeq: 8 INVITE",
                "Via: SIP/2.0/UDP host.example.com;branch=z9hG4bKkdjuw",
                "l: 0",
            ]
        ),
        Answered(400),
    ),
    "mismatch02": (
        "3.1.2.18",
        msg(
            [
                "NEWMETHOD sip:user@example.com SIP/2.0",
                "To: sip:j.user@example.com",
                "From: sip:caller@example.net;tag=34525",
                "Max-Forwards: 6",
                "Call-ID: mismatch02.dj0234sxdfl3",
                "CSeq: 8 INVITE",
                "Contact: <sip:caller@host.example.net>",
                "Via: SIP/2.0/UDP host.example.net;branch=z9hG4bKkdjuw",
                "Content-Type: application/sdp",
                "l: {len}",
            ],
            SDP,
        ),
        Answered(400),
    ),
    "bigcode": (
        "3.1.2.19",
        msg(
            [
                "SIP/2.0 4294967301 better not break the receiver",
                "Via: SIP/2.0/UDP 192.0.2.105;branch=z9hG4bK2398ndaoe",
                "Call-ID: bigcode.asdof3uj203asdnf3429uasdhfas3ehjasdfas9i",
                "CSeq: 353494 INVITE",
                "From: <sip:user@example.com>;tag=39ansfi3",
                "To: <sip:user@example.edu>;tag=902jndnke3",
                "Content-Length: 0",
                "Contact: <sip:user@host105.example.com>",
            ]
        ),
        Dropped(),
    ),
    # -- 3.2 transaction layer, 3.3 application layer, 3.4 RFC 2543 --------
    "badbranch": (
        "3.2.1",
        msg(
            [
                "OPTIONS sip:user@example.com SIP/2.0",
                "To: sip:user@example.com",
                "From: sip:caller@example.org;tag=33242",
                "Max-Forwards: 3",
                "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK",
                "Accept: application/sdp",
                "Call-ID: badbranch.sadonfo23i420jv0as0derf3j3n",
                "CSeq: 8 OPTIONS",
                "l: 0",
            ]
        ),
        Answered(200),  # answered: the bare cookie is still a branch to match on
    ),
    "insuf": (
        "3.3.1",
        msg(
            [
                "INVITE sip:user@example.com SIP/2.0",
                "CSeq: 193942 INVITE",
                "Via: SIP/2.0/UDP 192.0.2.95;branch=z9hG4bKkdj.insuf",
                "Content-Type: application/sdp",
                "l: {len}",
            ],
            SDP,
        ),
        Answered(400),
    ),
    "unkscm": (
        "3.3.2",
        msg(
            [
                "OPTIONS nobodyKnowsThisScheme:totallyopaquecontent SIP/2.0",
                "To: sip:user@example.com",
                "From: sip:caller@example.net;tag=384",
                "Max-Forwards: 3",
                "Call-ID: unkscm.nasdfasser0q239nwsdfasdkl34",
                "CSeq: 3923423 OPTIONS",
                "Via: SIP/2.0/TCP host9.example.com;branch=z9hG4bKkdjuw39234",
                "Content-Length: 0",
            ]
        ),
        Answered(416),
    ),
    "novelsc": (
        "3.3.3",
        msg(
            [
                "OPTIONS soap.beep://192.0.2.103:3002 SIP/2.0",
                "To: sip:user@example.com",
                "From: sip:caller@example.net;tag=384",
                "Max-Forwards: 3",
                "Call-ID: novelsc.asdfasser0q239nwsdfasdkl34",
                "CSeq: 3923423 OPTIONS",
                "Via: SIP/2.0/TCP host9.example.com;branch=z9hG4bKkdjuw39234",
                "Content-Length: 0",
            ]
        ),
        Answered(416),
    ),
    "unksm2": (
        "3.3.4",
        msg(
            [
                "REGISTER sip:example.com SIP/2.0",
                "To: isbn:2983792873",
                "From: <http://www.example.com>;tag=3234233",
                "Call-ID: unksm2.daksdj@hyphenated-host.example.com",
                "CSeq: 234902 REGISTER",
                "Max-Forwards: 70",
                "Via: SIP/2.0/UDP 192.0.2.21:5060;branch=z9hG4bKkdjuw",
                "Contact: <name:John_Smith>",
                "l: 0",
            ]
        ),
        Answered(405),  # parsed (any scheme in To/From); we take no REGISTER
    ),
    "bext01": (
        "3.3.5",
        msg(
            [
                "OPTIONS sip:user@example.com SIP/2.0",
                "To: sip:j_user@example.com",
                "From: sip:caller@example.net;tag=242etr",
                "Max-Forwards: 6",
                "Call-ID: bext01.0ha0isndaksdj",
                "Require: nothingSupportedHere",
                "Proxy-Require: noProxiesSupportThis, nothingSupportedHere",
                "Proxy-Require: LowPriority",
                "CSeq: 8 OPTIONS",
                "Via: SIP/2.0/TLS fold-and-staple.example.com;branch=z9hG4bKkdjuw",
                "Content-Length: 0",
            ]
        ),
        Answered(420),  # Proxy-Require is a proxy's to read, Require ours
    ),
    "invut": (
        "3.3.6",
        msg(
            [
                "INVITE sip:user@example.com SIP/2.0",
                "Contact: <sip:caller@host5.example.net>",
                "To: sip:j.user@example.com",
                "From: sip:caller@example.net;tag=8392034",
                "Max-Forwards: 70",
                "Call-ID: invut.0ha0isndaksdjadsfij34n23d",
                "CSeq: 235448 INVITE",
                "Via: SIP/2.0/UDP somehost.example.com;branch=z9hG4bKkdjuw",
                "Content-Type: application/unknownformat",
                "Content-Length: {len}",
            ],
            '<audio> <pcmu port="443"/> </audio>\r\n',
        ),
        Answered(415),
    ),
    "mcl01": (
        "3.3.9",
        msg(
            [
                "OPTIONS sip:user@example.com SIP/2.0",
                "Via: SIP/2.0/UDP host5.example.net;branch=z9hG4bK293423",
                "To: <sip:user@example.com>",
                "From: <sip:other@example.net>;tag=3923942",
                "Call-ID: mcl01.fhn2323orihawfdoa3o4r52o3irsdf",
                "CSeq: 15932 OPTIONS",
                "Content-Length: 13",
                "Max-Forwards: 60",
                "Content-Length: 5",
                "Content-Type: text/plain",
            ],
            "There's no way to know how many octets are supposed to be here.",
        ),
        Answered(400),
    ),
    "multi01": (
        "3.3.8",
        msg(
            [
                "INVITE sip:user@company.com SIP/2.0",
                "Contact: <sip:caller@host25.example.net>",
                "Via: SIP/2.0/UDP 192.0.2.25;branch=z9hG4bKkdjuw",
                "Max-Forwards: 70",
                "CSeq: 5 INVITE",
                "Call-ID: multi01.98asdh@192.0.2.1",
                "CSeq: 59 INVITE",
                "Call-ID: multi01.98asdh@192.0.2.2",
                "From: sip:caller@example.com;tag=3413415",
                "To: sip:user@example.com",
                "To: sip:other@example.net",
                "From: sip:caller@example.net;tag=2923420123",
                "Content-Type: application/sdp",
                "l: {len}",
            ],
            SDP,
        ),
        Answered(400),
    ),
    "bcast": (
        "3.3.10",
        msg(
            [
                "SIP/2.0 200 OK",
                "Via: SIP/2.0/UDP 192.0.2.198;branch=z9hG4bK1324923",
                "Via: SIP/2.0/UDP 255.255.255.255;branch=z9hG4bK1saber23",
                "Call-ID: bcast.0384840201234ksdfak3j2erwedfsASdf",
                "CSeq: 35 INVITE",
                "From: sip:user@example.com;tag=11141343",
                "To: sip:user@example.edu;tag=2229",
                "Content-Length: 0",
            ]
        ),
        Dropped(),  # a response to nothing of ours
    ),
    "zeromf": (
        "3.3.11",
        msg(
            [
                "OPTIONS sip:user@example.com SIP/2.0",
                "To: sip:user@example.com",
                "From: sip:caller@example.net;tag=3ghsd41",
                "Call-ID: zeromf.jfasdlfnm2o2l43r5u0asdfas",
                "CSeq: 39234321 OPTIONS",
                "Via: SIP/2.0/UDP host1.example.com;branch=z9hG4bKkdjuw2349i",
                "Max-Forwards: 0",
                "Content-Length: 0",
            ]
        ),
        Answered(200),  # addressed to us, a UAS: answered (483 is a proxy's)
    ),
    "inv2543": (
        "3.4.1",
        msg(
            [
                "INVITE sip:UserB@example.com SIP/2.0",
                "Via: SIP/2.0/UDP iftgw.example.com",
                "From: <sip:+13035551111@ift.client.example.net;user=phone>",
                "Record-Route: <sip:UserB@example.com;maddr=ss1.example.com>",
                "To: sip:+16505552222@ss1.example.net;user=phone",
                "Call-ID: inv2543.1717@ift.client.example.com",
                "CSeq: 56 INVITE",
                "Content-Type: application/sdp",
                "Content-Length: {len}",
            ],
            SDP,
        ),
        Valid({"method": "INVITE", "vias": [("UDP", "iftgw.example.com", "")]}),
    ),
}
