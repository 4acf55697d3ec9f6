"""One LiveKit client's signal connection (``/rtc``, ``/rtc/v1``), sans-IO.

Frames are binary protobuf: ``SignalRequest`` in, ``SignalResponse`` out
(shared/reference/rtc-signaling.md).  ``on_message(data, now)`` takes one
WebSocket message; what the session says goes out through its ``SignalSink``,
and what the peer connection must do goes to its ``Media`` port, whose
results come back as ``on_answer`` and ``on_data``.  The room fan-out is
its ``Room``'s (``rtc.room.LiveRoom``).

States, as a table (h11's way): a session is JOINED from the start (the
join happened at the upgrade), then CLOSED once it leaves, is kicked, times
out or its room closes.  Only a JOINED session takes requests.
"""

from __future__ import annotations

import logging
from enum import Enum
from typing import Any, Protocol

from google.protobuf.message import DecodeError
from livekit.protocol import models, rtc

from edgedispatch.dispatch.records import ParticipantRec
from edgedispatch.wire.http import CloseCode
from edgedispatch.wire.signal import Grant, JoinParams, subscription_track_sids

log = logging.getLogger("edgedispatch.rtc")

#: DataPacket.Kind
RELIABLE, LOSSY = models.DataPacket.RELIABLE, models.DataPacket.LOSSY


class SignalSink(Protocol):
    """The WebSocket, as the session needs it."""

    peer: str

    def send(self, data: bytes) -> None: ...

    def close(self, code: int, reason: str) -> None: ...


class Media(Protocol):
    """The participant's peer connection(s), driven by ``net.media``.

    Commands return at once; results come back through the session's
    ``on_answer`` / ``on_data`` / ``on_media_failed``."""

    def negotiate(self, sdp: str, offer_id: int, target: int) -> None:
        """Answer the client's offer (on the publisher PC; v1's only PC)."""
        ...

    def add_candidate(self, candidate_init: str, target: int) -> None: ...

    def send_data(self, packet: bytes, kind: int) -> None:
        """Deliver a DataPacket to this participant, reliable or lossy."""
        ...

    def expect_track(self, cid: str, track_sid: str, kind: str) -> None:
        """AddTrack: the client's next offer carries the track ``cid``."""
        ...

    def set_answer(self, sdp: str) -> None:
        """v0: the client's answer to the server's subscriber offer."""
        ...

    def subscribe(self, track_sid: str, publisher: object, stream_id: str) -> None:
        """Forward ``publisher``'s (its Media's) track to this participant."""
        ...

    def unsubscribe(self, track_sid: str) -> None: ...

    def close(self) -> None: ...


class Room(Protocol):
    """What a session asks of its room (``rtc.room.LiveRoom``): the room
    knows its sessions, a session knows only this."""

    @property
    def name(self) -> str: ...

    @property
    def tenant(self) -> str: ...

    def wall_ms(self, now: float) -> int: ...

    def remove(self, who: SignalSession, reason: int, now: float) -> None: ...

    def forward_data(self, sender: SignalSession, packet: models.DataPacket, kind: int) -> None: ...

    def add_track(self, who: SignalSession, req: rtc.AddTrackRequest, now: float) -> None: ...

    def track_received(self, who: SignalSession, track_sid: str, mid: str) -> None: ...

    def unpublish(self, who: SignalSession, track_sid: str) -> None: ...

    def mute_track(self, who: SignalSession, track_sid: str, muted: bool) -> bool: ...

    def set_subscriptions(self, sub: SignalSession, track_sids: list[str], on: bool) -> None: ...

    def update_participant(
        self,
        who: SignalSession,
        *,
        metadata: str | None = None,
        name: str | None = None,
        attributes: dict[str, str] | None = None,
    ) -> str: ...


class State(Enum):
    JOINED = "joined"
    CLOSED = "closed"


#: event -> (state it is allowed in -> next state).  Anything else is ignored
#: (a request after the session closed) or refused.
TRANSITIONS: dict[str, dict[State, State]] = {
    "request": {State.JOINED: State.JOINED},
    "leave": {State.JOINED: State.CLOSED},
    "kick": {State.JOINED: State.CLOSED},
    "closed": {State.JOINED: State.CLOSED},
    "timeout": {State.JOINED: State.CLOSED},
}

#: Requests the SDKs send that need nothing from a server that forwards
#: everything to everyone (no simulcast layers, no per-track quality).
IGNORED = frozenset(
    {
        "subscription_permission",
        "track_setting",
        "update_layers",
        "sync_state",
        "simulate",
        "update_audio_track",
        "update_video_track",
        "update_data_subscription",
    }
)


class SignalSession:
    """A participant's signal connection; ``info`` is its ParticipantInfo
    (with a version bumped on each change: the SDKs drop stale updates)."""

    def __init__(
        self,
        sink: SignalSink,
        room: Room,
        grant: Grant,
        params: JoinParams,
        participant: ParticipantRec,
        *,
        ping_timeout: float,
        now: float,
    ) -> None:
        self._sink = sink
        self.room = room
        self.grant = grant
        self.params = params
        self.rec = participant
        self.media: Media | None = None
        self.state = State.JOINED
        self._ping_timeout = ping_timeout
        self._last_heard = now
        self.info = models.ParticipantInfo(
            sid=participant.sid,
            identity=participant.identity,
            name=participant.name,
            state=models.ParticipantInfo.ACTIVE,
            metadata=participant.metadata,
            attributes=participant.attributes,
            joined_at=participant.joined_ns // 1_000_000_000,
            joined_at_ms=participant.joined_ns // 1_000_000,
            version=1,
            permission=grant.permission(),
            kind=participant.kind,  # type: ignore[arg-type]
            client_protocol=params.client_protocol,
        )

    @property
    def identity(self) -> str:
        return self.rec.identity

    @property
    def sid(self) -> str:
        return self.rec.sid

    # ------------------------------------------------------------------
    # The connection's handler (net.ws).

    def on_message(self, data: bytes, now: float) -> None:
        if self.state is not State.JOINED:
            return
        self._last_heard = now
        try:
            req = rtc.SignalRequest.FromString(data)
        except DecodeError:
            self._close_bad("frame is not a SignalRequest")
            return
        which = req.WhichOneof("message")
        if which is None:
            return  # a field this protocol version does not know: skip it
        handler = _HANDLERS.get(which)
        if handler is not None:
            handler(self, req, now)
        elif which not in IGNORED:
            log.debug("ignored signal request %s", which, extra=self.fields())

    def on_closed(self, code: int, reason: str, now: float) -> None:
        if self._move("closed"):
            self.room.remove(self, models.DisconnectReason.CLIENT_INITIATED, now)

    def next_deadline(self) -> float | None:
        if self.state is not State.JOINED:
            return None
        return self._last_heard + self._ping_timeout

    def on_timer(self, now: float) -> None:
        if self.state is State.JOINED and now >= self._last_heard + self._ping_timeout:
            self._move("timeout")
            self._sink.close(CloseCode.POLICY_VIOLATION, "no ping within ping_timeout")
            self.room.remove(self, models.DisconnectReason.SIGNAL_CLOSE, now)

    # ------------------------------------------------------------------
    # From the media port.

    def on_answer(self, sdp: str, offer_id: int, mid_to_track: dict[str, str]) -> None:
        if self.state is State.JOINED:
            answer = rtc.SessionDescription(
                type="answer", sdp=sdp, id=offer_id, mid_to_track_id=mid_to_track
            )
            self.send(rtc.SignalResponse(answer=answer))

    def on_data(self, payload: bytes, kind: int, now: float) -> None:
        """A DataPacket from this participant's data channel."""
        if self.state is not State.JOINED:
            return
        if not self.grant.can_publish_data:
            return  # LiveKit drops it as well
        try:
            packet = models.DataPacket.FromString(payload)
        except DecodeError:
            log.info("dropped a data packet that is not a DataPacket", extra=self.fields())
            return
        self.room.forward_data(self, packet, kind)

    def on_track_received(self, track_sid: str, mid: str) -> None:
        """A track announced with AddTrack arrived in an offer."""
        if self.state is State.JOINED:
            self.room.track_received(self, track_sid, mid)

    @property
    def single_pc(self) -> bool:
        return self.params.single_pc

    @property
    def room_key(self) -> tuple[str, str]:
        """(tenant, room name): the media of a room stays in one place."""
        return (self.room.tenant, self.room.name)

    def on_offer(self, sdp: str, offer_id: int) -> None:
        if self.state is State.JOINED:
            offer = rtc.SessionDescription(type="offer", sdp=sdp, id=offer_id)
            self.send(rtc.SignalResponse(offer=offer))

    def on_track_unpublished(self, track_sid: str) -> None:
        if self.state is State.JOINED:
            self.room.unpublish(self, track_sid)

    def request_offer(self, num_audios: int, num_videos: int) -> None:
        """Ask the client for a new offer, with at least this many more
        receive sections (v1: the client always offers)."""
        if self.state is State.JOINED and self.params.single_pc:
            requirement = rtc.MediaSectionsRequirement(num_audios=num_audios, num_videos=num_videos)
            self.send(rtc.SignalResponse(media_sections_requirement=requirement))

    def on_offer_refused(self, offer_id: int, why: str) -> None:
        """A malformed offer: the client is told, the session goes on."""
        self.respond(offer_id, rtc.RequestResponse.INVALID_REQUEST, f"bad offer: {why}")

    def on_media_failed(self, why: str, now: float) -> None:
        """The peer connection failed or could not take an offer."""
        if self.state is State.JOINED:
            log.info("media failed: %s", why, extra=self.fields())
            self.kick(models.DisconnectReason.MEDIA_FAILURE, why, now, reconnect=True)

    # ------------------------------------------------------------------
    # What the room or the server does to this session.

    def send(self, msg: rtc.SignalResponse) -> None:
        if self.state is State.JOINED:
            self._sink.send(msg.SerializeToString())

    def send_raw(self, data: bytes) -> None:
        """A SignalResponse serialized once for many receivers."""
        if self.state is State.JOINED:
            self._sink.send(data)

    def deliver_data(self, packet: bytes, kind: int) -> None:
        if self.state is State.JOINED and self.media is not None:
            self.media.send_data(packet, kind)

    def kick(self, reason: int, why: str, now: float, *, reconnect: bool = False) -> None:
        """End the session from the server's side: the client is told to
        leave (or, ``reconnect``, to rejoin afresh), the connection closes,
        and the room lets the others know."""
        if self.state is not State.JOINED:
            return
        self.send(leave_message(reason, reconnect))
        self._move("kick")
        self._sink.close(CloseCode.NORMAL, why)
        self.room.remove(self, reason, now)

    def close_media(self) -> None:
        if self.media is not None:
            self.media.close()
            self.media = None

    # ------------------------------------------------------------------
    # Requests.

    def _offer(self, req: rtc.SignalRequest, now: float) -> None:
        if self.media is not None:
            self.media.negotiate(req.offer.sdp, req.offer.id, rtc.PUBLISHER)

    def _answer(self, req: rtc.SignalRequest, now: float) -> None:
        if self.media is not None and not self.params.single_pc:
            self.media.set_answer(req.answer.sdp)

    def _trickle(self, req: rtc.SignalRequest, now: float) -> None:
        if self.media is not None:
            target = rtc.PUBLISHER if self.params.single_pc else req.trickle.target
            self.media.add_candidate(req.trickle.candidateInit, target)

    def _add_track(self, req: rtc.SignalRequest, now: float) -> None:
        self.room.add_track(self, req.add_track, now)

    def _subscription(self, req: rtc.SignalRequest, now: float) -> None:
        update = req.subscription
        self.room.set_subscriptions(self, subscription_track_sids(update), update.subscribe)

    def _mute(self, req: rtc.SignalRequest, now: float) -> None:
        if not self.room.mute_track(self, req.mute.sid, req.mute.muted):
            message = f"no track {req.mute.sid!r} of yours"
            self.respond(0, rtc.RequestResponse.NOT_FOUND, message, mute=req.mute)

    def _leave(self, req: rtc.SignalRequest, now: float) -> None:
        if self._move("leave"):
            self._sink.close(CloseCode.NORMAL, "left")
            self.room.remove(self, models.DisconnectReason.CLIENT_INITIATED, now)

    def _ping(self, req: rtc.SignalRequest, now: float) -> None:
        self.send(rtc.SignalResponse(pong=req.ping))

    def _ping_req(self, req: rtc.SignalRequest, now: float) -> None:
        pong = rtc.Pong(
            last_ping_timestamp=req.ping_req.timestamp, timestamp=self.room.wall_ms(now)
        )
        self.send(rtc.SignalResponse(pong_resp=pong))

    def _update_metadata(self, req: rtc.SignalRequest, now: float) -> None:
        update = req.update_metadata
        if not self.grant.can_update_metadata:
            self.respond(
                update.request_id,
                rtc.RequestResponse.NOT_ALLOWED,
                "token lacks the grant canUpdateOwnMetadata",
            )
            return
        error = self.room.update_participant(
            self,
            metadata=update.metadata if update.metadata else None,
            name=update.name if update.name else None,
            attributes=dict(update.attributes),
        )
        if error:
            self.respond(update.request_id, rtc.RequestResponse.INVALID_REQUEST, error)
        else:
            self.respond(update.request_id, rtc.RequestResponse.OK, "")

    def respond(self, request_id: int, reason: int, message: str, **request: Any) -> None:
        """A RequestResponse; ``request`` names the request it answers
        (``mute=``, ``add_track=``) where it has no request id."""
        self.send(
            rtc.SignalResponse(
                request_response=rtc.RequestResponse(
                    request_id=request_id,
                    reason=reason,  # type: ignore[arg-type]
                    message=message,
                    **request,
                )
            )
        )

    # ------------------------------------------------------------------

    def _move(self, event: str) -> bool:
        """Take the transition for ``event``; False if the state has none."""
        nxt = TRANSITIONS[event].get(self.state)
        if nxt is None:
            return False
        self.state = nxt
        return True

    def _close_bad(self, why: str) -> None:
        log.info("closing a signal connection: %s", why, extra=self.fields())
        self._sink.close(CloseCode.INVALID_PAYLOAD, why)

    def fields(self) -> dict[str, object]:
        """The ``extra`` of a log line about this participant (``obs.logs``),
        here and in the media worker that holds its peer connection."""
        return {
            "room": self.room.name,
            "tenant": self.room.tenant,
            "participant": self.identity,
        }


def leave_message(reason: int, reconnect: bool) -> rtc.SignalResponse:
    action = rtc.LeaveRequest.RECONNECT if reconnect else rtc.LeaveRequest.DISCONNECT
    return rtc.SignalResponse(
        leave=rtc.LeaveRequest(
            can_reconnect=reconnect,
            reason=reason,  # type: ignore[arg-type]
            action=action,
        )
    )


_HANDLERS = {
    "offer": SignalSession._offer,
    "answer": SignalSession._answer,
    "trickle": SignalSession._trickle,
    "add_track": SignalSession._add_track,
    "mute": SignalSession._mute,
    "subscription": SignalSession._subscription,
    "leave": SignalSession._leave,
    "ping": SignalSession._ping,
    "ping_req": SignalSession._ping_req,
    "update_metadata": SignalSession._update_metadata,
}
