"""Calls we place (``CreateSIPParticipant``), sans-IO: the callee's
participant and its media, and the SIP user agent client that dials.

As livekit/sip does it, the callee's participant joins the room at once
(``sip.callStatus`` "dialing"), so that the room sees the call coming;
then, once the media worker has opened the call's RTP port, the INVITE
goes out with our offer (PCMU, PCMA, telephone-event) through the trunk's
address (``sip.uac``: digest auth when challenged, CANCEL, BYE).  A
provisional answer makes it "ringing"; the 200 "active", with the media
bridged as an inbound call's is (``calls.bridge``: the same worker, the
same transcoding).  A final refusal, our ringing timeout or no answer at
all end the call, and its participant leaves.

``wait_until_answered``: the caller's ``done`` is called once the call is
answered (with the ``SIPParticipantInfo``) or failed (with the error:
LiveKit's mapping of the SIP status, ``twirp_error_of``); without it, the
RPC is answered as soon as the participant has joined.

Removing the participant or closing its room hangs up: CANCEL while it
rings (RFC 3261 §9.1: once a provisional answer came), BYE once answered.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Callable, Sequence

from google.protobuf.message import Message
from livekit.protocol import models
from livekit.protocol import sip as pb

from edgedispatch.calls.admission import Admission
from edgedispatch.calls.bridge import BridgedCall, CallServices, media_spec
from edgedispatch.errors import EdgeDispatchError, InvalidArgument, ResourceExhausted, TwirpError
from edgedispatch.sip import sdp
from edgedispatch.sip.header_maps import CALL_ID_FULL, NO_CALL_HEADERS, CallHeaders, headers_of
from edgedispatch.sip.message import Headers
from edgedispatch.sip.outcome import Admit
from edgedispatch.sip.records import check_headers, media_encryption
from edgedispatch.sip.uac import Answered, Ended, Event, Failed, Progress, UserAgentClient

log = logging.getLogger("edgedispatch.sip")

#: What a number (``sip_call_to``, ``sip_number``) may hold: a SIP URI's
#: user part without its escapes or parameters.
NUMBER = re.compile(r"[A-Za-z0-9+\-_.!~*'()&=$,]{1,64}")
#: Seconds we let a call ring, unless the request says (livekit/sip's).
RINGING_TIMEOUT = 180.0
SIP_PORT = 5060
SIPS_PORT = 5061  #: a TLS trunk's, when its address names none

Done = Callable[[Message | EdgeDispatchError], None]
#: (host, then): calls ``then`` with the host's IP address, or None.
Resolve = Callable[[str, Callable[[str | None], None]], None]
#: ((ip, port), then, tls): opens a TCP connection to the address (or finds
#: one open), with TLS whose certificate must be valid for the name ``tls``
#: unless it is None, then calls ``then`` with None, or with why it could not.
Connect = Callable[[tuple[str, int], Callable[[str | None], None], str | None], None]


#: A callee's final SIP status -> the RPC's Twirp code, as LiveKit maps it
#: since protocol 1.46 (``SIPStatus.GRPCStatus``: busy is
#: ``resource_exhausted``, a 5xx from the far end ``failed_precondition``).
_CODE_OF_STATUS: dict[int, str] = {
    status: code
    for code, statuses in {
        "aborted": (487, 491),
        "deadline_exceeded": (408, 504),
        "failed_precondition": (409, 412, 482, 483, 500, 501, 502, 503),
        "not_found": (301, 302, 404, 410, 481, 604),
        "out_of_range": (416,),
        "permission_denied": (401, 402, 403, 433, 470, 603, 607, 608),
        "resource_exhausted": (440, 480, 486, 600),
        "unauthenticated": (407, 428, 436, 437, 438, 494),
    }.items()
    for status in statuses
}


def twirp_error_of(status: int, reason: str) -> TwirpError:
    """A failed INVITE's final status as the RPC's error, as LiveKit maps
    it (``_CODE_OF_STATUS``; any other 3xx, 4xx or 6xx is
    ``invalid_argument``, any other 5xx ``failed_precondition``); the meta
    carries the SIP status (livekit-api's ``SipCallError``)."""
    code = _CODE_OF_STATUS.get(status)
    if code is None:
        code = "failed_precondition" if 500 <= status < 600 else "invalid_argument"
    return TwirpError(
        code, f"sip status {status}: {reason}", sip_status_code=str(status), sip_status=reason
    )


def _address(host_port: str, port: int = SIP_PORT) -> tuple[str, int]:
    """``host`` or ``host:port`` (an IPv6 address in brackets); ``port``
    when it names none."""
    host = host_port.strip()
    if host.startswith("["):
        inside, _, rest = host[1:].partition("]")
        host = inside
        if rest.startswith(":") and rest[1:].isdigit():
            port = int(rest[1:])
    elif host.count(":") == 1:
        host, _, digits = host.partition(":")
        if not digits.isdigit() or not 0 < int(digits) < 65536:
            raise InvalidArgument(f"bad port in the trunk address {host_port!r}")
        port = int(digits)
    if not host:
        raise InvalidArgument("no outbound address specified")
    return host, port


def _number(value: str, what: str) -> str:
    if not NUMBER.fullmatch(value):
        raise InvalidArgument(f"{what} {value[:70]!r} is not a phone number or SIP user")
    return value


class _Client:
    """The UAC, as a bridged call's control (``calls.bridge.CallControl``)."""

    def __init__(self, calls: OutboundCalls) -> None:
        self._calls = calls

    def answer(
        self, call_id: str, sdp: bytes, now: float, headers: Sequence[tuple[str, str]]
    ) -> None:
        raise TwirpError("internal", "a call we placed is not answered by us")

    def hang_up(self, call_id: str, now: float, headers: Sequence[tuple[str, str]]) -> None:
        uac = self._calls.uac()
        if uac is not None:
            uac.hang_up(call_id, now, headers)


class PlacedCall(BridgedCall):
    """One call we place, from the RPC to its end."""

    def __init__(
        self,
        calls: OutboundCalls,
        call_id: str,
        tenant: str,
        admit: Admit,
        dial: tuple[str, str, str, str, float, str],
        target: tuple[str, int],
        done: Done | None,
        dtmf: str,
        max_duration: float = 0.0,
        dialtone: bool = False,
        headers: CallHeaders = NO_CALL_HEADERS,
        encryption: int = sdp.DISABLE,
    ) -> None:
        #: (Request-URI, From URI, auth username, password, ringing timeout,
        #: transport: "UDP", "TCP" or "TLS")
        self._dial = dial
        self._target = target
        self._done = done
        self._dtmf = dtmf
        self._dialtone = dialtone
        self._calls = calls
        self.phase = "dialing"
        self.dialled = False
        number = admit.attributes.get("sip.phoneNumber", "")
        super().__init__(
            calls.services, _Client(calls), call_id, tenant, None, admit.room, admit=admit,
            shown=(dial[1], number), max_duration=max_duration, headers=headers,
            encryption=encryption,
        )  # fmt: skip

    def _media_spec(self) -> dict[str, object]:
        return media_spec(self.services, None, self.max_duration, self._dialtone)

    @property
    def status(self) -> str:
        return self.phase

    @property
    def state(self) -> str:
        return "ended" if self.ended else self.phase

    def info(self) -> pb.SIPParticipantInfo:
        session = self.session
        return pb.SIPParticipantInfo(
            participant_id=session.sid if session is not None else "",
            participant_identity=self._admit.identity if self._admit else "",
            room_name=self.room,
            sip_call_id=self.call_id,
        )

    # -- the media worker's news ------------------------------------------

    def on_rtp_ready(self, port: int, now: float) -> None:
        """Our RTP port is open: now the INVITE can offer it."""
        if self.ended or self.dialled:
            return
        self.dialled = True
        host, _ = self._target
        self._calls.resolve(host, lambda ip: self._dial_to(ip, port))

    def _dial_to(self, ip: str | None, port: int) -> None:
        if self.ended:
            return
        if ip is None:
            self.fail(InvalidArgument(f"cannot resolve the trunk's address {self._target[0]!r}"))
            return
        wire = self._dial[5]
        if wire in ("TCP", "TLS"):  # the connection first: the INVITE goes over it
            address = (ip, self._target[1])
            name = self._target[0] if wire == "TLS" else None  # what its certificate names
            self._calls.connect(address, lambda error: self._dial_over(ip, port, error), name)
            return
        self._dial_over(ip, port, None)

    def _dial_over(self, ip: str, port: int, error: str | None) -> None:
        now = self.services.clock()
        if self.ended:
            return
        if error is not None:
            wire = self._dial[5]
            self.fail(TwirpError("unavailable", f"cannot reach the trunk over {wire}: {error}"))
            return
        uac = self._calls.uac()
        if uac is None:
            self.fail(TwirpError("unavailable", "SIP is not listening"))
            return
        uri, from_uri, username, password, ringing, transport = self._dial
        offer = sdp.make_offer(self.services.media_address, port, port, self.encryption, self.key)
        uac.dial(
            uri, (ip, self._target[1]), from_uri, offer, now, username, password, ringing,
            call_id=self.call_id, transport=transport, headers=headers_of(self.headers.fixed),
        )  # fmt: skip
        log.info(
            "call %s: dialling %s via %s:%d", self.call_id, uri, ip, self._target[1],
            extra=self.fields(),
        )  # fmt: skip
        self.services.flush(now)

    # -- the UAC's news -----------------------------------------------------

    def on_progress(self, status: int, now: float) -> None:
        if self.phase == "dialing" and not self.ended:
            self._set_phase("ringing")

    def on_answered(self, body: bytes, now: float, headers: Headers | None = None) -> None:
        if self.ended:
            return
        try:
            chosen = sdp.read_answer(body, self.encryption, self.key)
        except EdgeDispatchError as exc:
            log.info(
                "call %s: the callee's answer is not usable: %s", self.call_id, exc.msg,
                extra=self.fields(),
            )  # fmt: skip
            self._settle(twirp_error_of(488, f"the callee's SDP answer: {exc.msg}"))
            self.hang_up("no usable media in the answer", now)
            return
        self.answer = chosen
        self.media.set_remote(media_spec(self.services, chosen, self.max_duration))
        self.answered = self.confirmed = True
        attributes = self.headers.attributes(headers or Headers())
        attributes[CALL_ID_FULL] = self.call_id
        self._set_phase("active", attributes)
        log.info("call %s answered (%s)", self.call_id, chosen.codec, extra=self.fields())
        if self._dtmf:
            self._send_digits(self._dtmf)
        self._settle(self.info())

    def on_failed(self, status: int, reason: str, now: float) -> None:
        log.info("call %s failed: %d %s", self.call_id, status, reason, extra=self.fields())
        self.fail(twirp_error_of(status, reason), now)

    def fail(self, error: EdgeDispatchError, now: float | None = None) -> None:
        self._settle(error)
        self.end(self.services.clock() if now is None else now)

    # -- ends ---------------------------------------------------------------

    def end(self, now: float) -> None:
        if self.ended:
            return
        super().end(now)
        self._calls.admission.ended(self.call_id)
        self._settle(TwirpError("canceled", "the call ended before it was answered"))

    def abandon(self, now: float) -> None:
        """Refused before it started (its RPC gets the error): its media goes."""
        self._done = None
        self.end(now)

    def _settle(self, result: Message | EdgeDispatchError) -> None:
        done, self._done = self._done, None
        if done is not None:
            done(result)

    def _set_phase(self, phase: str, attributes: dict[str, str] | None = None) -> None:
        """``sip.callStatus``, with ``attributes`` (those of the 200's headers)."""
        self.phase = phase
        session = self.session
        if session is not None:
            changed = {**(attributes or {}), "sip.callStatus": phase}
            error = session.room.update_participant(session, attributes=changed)
            if error and attributes:  # too large with the headers': the status alone
                log.info("call %s: the answer's headers not kept as attributes: %s",
                         self.call_id, error, extra=self.fields())  # fmt: skip
                session.room.update_participant(session, attributes={"sip.callStatus": phase})

    def _send_digits(self, digits: str) -> None:
        """The request's ``dtmf``, sent as RFC 4733 events once answered
        (``w``, livekit/sip's half-second pause, is skipped)."""
        keys = "".join(d for d in digits if d in "0123456789*#ABCDabcd")
        if keys:
            packet = models.DataPacket(sip_dtmf=models.SipDTMF(digit=keys))
            self.media.send_data(packet.SerializeToString(), models.DataPacket.RELIABLE)


class OutboundCalls:
    """:param uac: the SIP listener's UAC (None while SIP is not up).
    :param resolve: the trunk's host to an IP address (the shell's DNS).
    :param new_id: a fresh random token (Call-IDs).
    :param connect: opens the TCP connection of a trunk whose transport is
        TCP (the shell's sockets)."""

    def __init__(
        self,
        services: CallServices,
        uac: Callable[[], UserAgentClient | None],
        resolve: Resolve,
        new_id: Callable[[], str],
        admission: Admission | None = None,
        connect: Connect | None = None,
    ) -> None:
        self.services = services
        self.uac = uac
        self.resolve = resolve
        self.connect: Connect = connect or (lambda _address, then, _tls: then("no TCP transport"))
        self._new_id = new_id
        self.admission = admission or Admission()

    def place(
        self,
        tenant: str,
        req: pb.CreateSIPParticipantRequest,
        trunk: pb.SIPOutboundTrunkInfo | None,
        now: float,
        done: Done | None = None,
    ) -> PlacedCall:
        """Start a call (``trunk``, or the request's own ``trunk``); raises
        what refuses it before anything is sent."""
        call_to = _number(req.sip_call_to, "sip_call_to")
        if trunk is not None:
            address, numbers = trunk.address, list(trunk.numbers)
            username, password = trunk.auth_username, trunk.auth_password
            transport, from_host = trunk.transport, trunk.from_host
            trunk_id = trunk.sip_trunk_id
        else:
            inline = req.trunk
            address, numbers = inline.hostname, []
            username, password = inline.auth_username, inline.auth_password
            transport, from_host = inline.transport, inline.from_host
            trunk_id = ""
        check_headers(req.headers)
        headers = CallHeaders.of(trunk if trunk is not None else req.trunk, req.headers)
        if req.include_headers:
            headers = headers._replace(include=int(req.include_headers))
        # AUTO is UDP, as livekit/sip's default.
        wire = {pb.SIP_TRANSPORT_TCP: "TCP", pb.SIP_TRANSPORT_TLS: "TLS"}.get(transport, "UDP")
        target = _address(address, SIPS_PORT if wire == "TLS" else SIP_PORT)
        number = req.sip_number or (numbers[0] if numbers else "")
        if not number:
            raise InvalidArgument("no numbers on outbound trunk")
        number = _number(number, "sip_number")
        uac = self.uac()
        if uac is None:
            raise TwirpError("unavailable", "SIP is not listening")
        own_host = uac.contact.split("@", 1)[-1]
        host = f"[{target[0]}]" if ":" in target[0] else target[0]
        uri = f"sip:{call_to}@{host}" + (f":{target[1]}" if target[1] != SIP_PORT else "")
        if wire != "UDP":
            uri += f";transport={wire.lower()}"
        from_uri = f"sip:{number}@{from_host or own_host}"
        call_id = f"{self._new_id()}@edgedispatch"
        attributes = dict(req.participant_attributes)
        attributes.update({"sip.callID": call_id, "sip.trunkID": trunk_id})
        if not req.hide_phone_number:
            attributes.update({
                "sip.phoneNumber": call_to, "sip.hostname": target[0],
                "sip.trunkPhoneNumber": number,
            })  # fmt: skip
        admit = Admit(
            trunk_id, "", req.room_name, req.participant_identity or f"sip_{call_to}",
            req.participant_name, req.participant_metadata, attributes, None, "",
        )  # fmt: skip
        refusal = self.admission.admit(tenant, call_id)
        if refusal is not None:
            raise ResourceExhausted(refusal.reason)
        ringing = req.ringing_timeout.ToSeconds() if req.HasField("ringing_timeout") else 0
        dial = (uri, from_uri, username, password, float(ringing or RINGING_TIMEOUT), wire)
        longest = req.max_call_duration.ToSeconds() if req.HasField("max_call_duration") else 0
        call = PlacedCall(
            self, call_id, tenant, admit, dial, target, done, req.dtmf, float(max(longest, 0)),
            req.play_dialtone or req.play_ringtone, headers,
            media_encryption(trunk, req),
        )  # fmt: skip
        try:
            call.join(admit, now)
        except EdgeDispatchError:
            call.abandon(now)
            raise
        log.info(
            "call %s to %s placed for room %s", call_id, call_to, req.room_name,
            extra=call.fields(),
        )  # fmt: skip
        return call

    def on_event(self, event: Event, now: float) -> None:
        call = self.services.calls.get(event.call_id)
        if not isinstance(call, PlacedCall):
            return
        if isinstance(event, Progress):
            call.on_progress(event.status, now)
        elif isinstance(event, Answered):
            call.on_answered(event.sdp, now, event.headers)
        elif isinstance(event, Failed):
            call.on_failed(event.status, event.reason, now)
        elif isinstance(event, Ended):
            log.info("call %s ended: %s", event.call_id, event.why, extra=call.fields())
            call.end(now)


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
