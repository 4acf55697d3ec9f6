"""An answered phone call and its participant in the room, sans-IO.

A routed call (``calls.inbound``) opens its media in the media worker of
its room (``CallServices.open_media``), joins the room as a SIP
participant through ``rtc.room`` (as a WebRTC participant does: the
others are told at once; the rule's ``room_config.agents`` are dispatched
as a token's are), and publishes the caller's audio as its track.  Once
the worker says the call's RTP port is open, the INVITE is answered 200
with our SDP.  A PIN rule's call is answered first, with no room: the
digits the caller presses (RFC 4733 or SIP INFO) until ``#`` are matched
again with the PIN, and a wrong one hangs up.

The call ends, both ways, on the caller's BYE (or CANCEL, or no ACK), on
the room closing (BYE to the caller), on the media's limits (no RTP for
``media_timeout``, ``max_duration``: BYE), and its participant leaves
with ``sip.callStatus`` "hangup" (it is "ringing" until the caller's
ACK, then "active").

Time: the shell's events carry ``now``; where one cannot (the room's
close, whose ``now`` is not always given), ``CallServices.clock`` is read.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from livekit.protocol import models, rtc

from edgedispatch.errors import EdgeDispatchError, TwirpError
from edgedispatch.rtc.room import RoomHub
from edgedispatch.rtc.session import Media, SignalSession
from edgedispatch.sip import sdp
from edgedispatch.sip.header_maps import NO_CALL_HEADERS, CallHeaders, headers_of
from edgedispatch.sip.outcome import Admit
from edgedispatch.wire.signal import Grant, JoinParams

log = logging.getLogger("edgedispatch.sip")

CALL_STATUS = "sip.callStatus"
#: The AddTrack client id of the caller's audio.
CALLER_TRACK = "sip-caller"
#: Digits kept while a PIN is entered (a PIN is shorter).
MAX_PIN = 32


class CallMedia(Protocol):
    """A call's media in its worker (``net.media_pool.CallProxy``)."""

    def attach(self, session: SignalSession) -> Media: ...

    def set_remote(self, spec: dict[str, Any]) -> None: ...

    def ring_caller(self, on: bool) -> None: ...

    def confirm(self) -> None: ...

    def send_data(self, packet: bytes, kind: int) -> None: ...

    def close(self) -> None: ...


class CallEvents(Protocol):
    def on_rtp_ready(self, port: int, now: float) -> None: ...

    def on_digit(self, digit: str, now: float) -> None: ...

    def on_media_end(self, why: str, now: float) -> None: ...

    def fields(self) -> dict[str, object]:
        """The ``extra`` of the media's log lines (``obs.logs``)."""
        ...


def _no_key() -> bytes:
    raise TwirpError("unimplemented", "SRTP keys are not made here")


OpenMedia = Callable[[tuple[str, str], dict[str, Any], CallEvents], CallMedia]


class CallControl(Protocol):
    """The SIP user agent's decisions on a call (``sip.uas``)."""

    def answer(
        self, call_id: str, sdp: bytes, now: float, headers: Sequence[tuple[str, str]]
    ) -> None: ...

    def hang_up(self, call_id: str, now: float, headers: Sequence[tuple[str, str]]) -> None: ...


@dataclass
class CallServices:
    """What bridged calls need of the server (given by the shell)."""

    rooms: RoomHub
    open_media: OpenMedia
    clock: Callable[[], float]
    #: Sends what the user agent has to send, and hands on its events.
    flush: Callable[[float], None]
    media_address: str  #: the address our SDP names
    rtp_ports: tuple[int, int]
    media_timeout: float
    max_duration: float
    calls: dict[str, BridgedCall] = field(default_factory=dict)
    #: A fresh SRTP master key (key and salt, ``sdp.KEY_LENGTH`` bytes) for
    #: a call whose media is encrypted (the shell's randomness).
    new_key: Callable[[], bytes] = field(default=lambda: _no_key())


def listing(services: CallServices, tenant: str | None) -> list[dict[str, Any]]:
    """The calls up now (of ``tenant``; None: all), for the status page."""
    return [
        {
            "id": call.call_id,
            "tenant": call.tenant,
            "from": call.shown[0],
            "to": call.shown[1],
            "room": call.room,
            "state": call.state,
            "media": call.media_kind,
        }
        for call in services.calls.values()
        if tenant is None or call.tenant == tenant
    ]


def media_spec(
    services: CallServices,
    chosen: sdp.Answer | None,
    max_duration: float = 0.0,
    ring_room: bool = False,
) -> dict[str, Any]:
    """The spec of a call's media (``net.sip_media.CallMedia``); without
    ``chosen``, a call we place, whose callee has not answered yet.
    :param max_duration: the call's own limit in seconds (its trunk's or
        its request's ``max_call_duration``; 0: none), within the server's.
    :param ring_room: the room hears the ringing tone until the answer
        (``play_dialtone``)."""
    limits = [each for each in (services.max_duration, max_duration) if each > 0]
    spec: dict[str, Any] = {
        "remote": None,
        "codec": "PCMU",
        "pt": 0,
        "dtmf_pt": None,
        "ports": list(services.rtp_ports),
        "media_timeout": services.media_timeout,
        "max_duration": min(limits) if limits else 0.0,
        "ring_room": ring_room,
    }
    if chosen is not None:
        spec.update(
            remote=list(chosen.remote), codec=chosen.codec, pt=chosen.payload_type,
            dtmf_pt=chosen.dtmf_payload_type,
        )  # fmt: skip
        if chosen.srtp is not None:  # (suite, the far end's key, ours), in hex
            suite, theirs, ours = chosen.srtp
            spec["srtp"] = [suite, theirs.hex(), ours.hex()]
    return spec


class CallSink:
    """The SIP participant's signal connection: a phone hears no
    signalling; the server closing it (room closed, removed) hangs up."""

    peer = "sip"

    def __init__(self, call: BridgedCall) -> None:
        self._call = call

    def send(self, data: bytes) -> None:
        pass

    def close(self, code: int, reason: str) -> None:
        self._call.room_left(reason)


class BridgedCall:
    """One answered (or being answered) call."""

    def __init__(
        self,
        services: CallServices,
        ua: CallControl,
        call_id: str,
        tenant: str,
        offer: sdp.Offer | None,
        room: str,
        *,
        admit: Admit | None = None,
        on_pin: Callable[[BridgedCall, str, float], Admit | None] | None = None,
        shown: tuple[str, str] = ("", ""),
        max_duration: float = 0.0,
        headers: CallHeaders = NO_CALL_HEADERS,
        encryption: int = sdp.DISABLE,
    ) -> None:
        self.services = services
        #: The call's media encryption (``sdp``), and our SRTP master key.
        self.encryption = encryption
        self.key = services.new_key() if encryption != sdp.DISABLE else b""
        #: The trunk's custom headers (``sip.header_maps``).
        self.headers = headers
        #: Seconds the call may last once answered (0: the server's limit).
        self.max_duration = max_duration
        self._ua = ua
        self.call_id = call_id
        self.tenant = tenant
        self._offer = offer
        self.room = room
        self._admit = admit
        self._on_pin = on_pin
        self.digits = ""
        self.session: SignalSession | None = None
        self.answered = False
        self.confirmed = False  #: the caller ACKed our answer
        self.ended = False
        self.answer: sdp.Answer | None = None
        #: (from, to) as the status page shows them (a hidden number masked).
        self.shown = shown
        spec = self._media_spec()
        services.calls[call_id] = self
        self.media = services.open_media((tenant, room), spec, self)

    def _media_spec(self) -> dict[str, Any]:
        """What the media worker needs to open the call's RTP."""
        if self._offer is None:  # a call we place: the callee's answer tells
            return media_spec(self.services, None, self.max_duration)
        chosen = sdp.answer(  # not the port yet
            self._offer, self.services.media_address, 0, 0, self.encryption, self.key
        )
        return media_spec(self.services, chosen, self.max_duration)

    def join(self, admit: Admit, now: float) -> None:
        """The caller's participant joins ``admit.room``; raises the
        domain's refusal (a full room, a draining server)."""
        attributes = dict(admit.attributes)
        attributes[CALL_STATUS] = self.status
        grant = Grant(
            room=admit.room,
            identity=admit.identity,
            name=admit.name,
            kind=models.ParticipantInfo.SIP,
            metadata=admit.metadata,
            attributes=attributes,
            room_config=admit.room_config,
        )
        params = JoinParams(single_pc=True, sdk="sip")
        self.room = admit.room
        rooms = self.services.rooms
        self.session = session = rooms.join(
            CallSink(self), self.tenant, grant, params, now, media=self.media.attach
        )
        track = rtc.AddTrackRequest(
            cid=CALLER_TRACK, name="phone", type=models.AUDIO, source=models.MICROPHONE
        )
        session.room.add_track(session, track, now)
        log.info(
            "call %s joined room %s as %s", self.call_id, admit.room, admit.identity,
            extra={**self.fields(), "participant": admit.identity},
        )  # fmt: skip

    def sip_headers(self, fixed: Mapping[str, str]) -> list[tuple[str, str]]:
        """``fixed`` headers, and the trunk's ``attributes_to_headers`` of
        the participant's attributes as they are now."""
        session = self.session
        if session is not None:
            attributes: Mapping[str, str] = session.info.attributes
        else:
            attributes = self._admit.attributes if self._admit is not None else {}
        return headers_of(fixed, attributes, self.headers.to_headers)

    def fields(self) -> dict[str, object]:
        """The ``extra`` of a log line about this call (``obs.logs``): its
        SIP Call-ID, its tenant and, once it has one, its room."""
        return {"call": self.call_id, "room": self.room or None, "tenant": self.tenant}

    @property
    def media_kind(self) -> str:
        """What its media is, once answered: "PCMU over SRTP", "PCMA"..."""
        chosen = self.answer
        if chosen is None:
            return ""
        return chosen.codec + (" over SRTP" if chosen.srtp is not None else "")

    @property
    def status(self) -> str:
        """Its participant's ``sip.callStatus`` while it is in the room."""
        return "active" if self.confirmed else "ringing"

    @property
    def state(self) -> str:
        if self.ended:
            return "ended"
        if self.session is not None:
            return "active" if self.confirmed else "ringing"
        return "entering PIN" if self.answered else "answering"

    # -- the media worker's news ------------------------------------------

    def on_rtp_ready(self, port: int, now: float) -> None:
        if self.ended or self.answered or self._offer is None:
            return
        self.answer = sdp.answer(
            self._offer, self.services.media_address, port, port, self.encryption, self.key
        )
        self.answered = True
        try:
            headers = self.sip_headers(self.headers.fixed)
            self._ua.answer(self.call_id, self.answer.sdp, now, headers)
        except EdgeDispatchError:  # cancelled meanwhile: its end is on its way
            return
        self.services.flush(now)

    def on_digit(self, digit: str, now: float) -> None:
        if self.ended:
            return
        session = self.session
        if session is not None:
            code = "0123456789*#ABCD".find(digit.upper())
            packet = models.DataPacket(
                kind=models.DataPacket.RELIABLE,
                sip_dtmf=models.SipDTMF(code=max(code, 0), digit=digit),
            )
            session.on_data(packet.SerializeToString(), models.DataPacket.RELIABLE, now)
            return
        if self._on_pin is None or not self.answered:
            return
        if digit != "#":
            self.digits = (self.digits + digit)[-MAX_PIN:]
            return
        admit = self._on_pin(self, self.digits, now)
        if admit is None:
            self.hang_up("wrong PIN", now)
            return
        try:
            self.join(admit, now)
        except EdgeDispatchError as exc:
            self.hang_up(exc.msg, now)

    def on_confirmed(self, now: float) -> None:
        """The caller's ACK: the call is up (``sip.callStatus`` "active")."""
        self.confirmed = True
        if not self.ended:
            self.media.confirm()  # audio to the caller from now on
        session = self.session
        if session is not None and not self.ended:
            session.room.update_participant(session, attributes={CALL_STATUS: "active"})

    def on_media_end(self, why: str, now: float) -> None:
        self.hang_up(why, now)

    # -- ends ---------------------------------------------------------------

    def hang_up(self, why: str, now: float) -> None:
        """End the call from our side: BYE (or 480 before the answer)."""
        if self.ended:
            return
        log.info("call %s hung up: %s", self.call_id, why, extra=self.fields())
        self._ua.hang_up(self.call_id, now, self.sip_headers({}))
        self.services.flush(now)  # its CallEnded comes back through ``ended_by_sip``
        self.end(now)

    def room_left(self, why: str) -> None:
        """The room closed or removed the participant."""
        session, self.session = self.session, None
        if session is not None and not self.ended:
            self.hang_up(f"the room let the call go ({why})", self.services.clock())

    def end(self, now: float) -> None:
        """The call is over: its participant leaves, its media closes."""
        if self.ended:
            return
        self.ended = True
        self.services.calls.pop(self.call_id, None)
        session, self.session = self.session, None
        if session is not None:
            session.room.update_participant(session, attributes={CALL_STATUS: "hangup"})
            session.on_closed(1000, "the call ended", now)
        self.media.close()
