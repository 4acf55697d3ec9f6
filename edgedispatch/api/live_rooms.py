"""``livekit.RoomService`` calls on the people in a room: list and get
participants, remove them, update their metadata, attributes and
permissions, mute their tracks, change their subscriptions, and send them
data.  Each needs ``roomAdmin`` for the request's room, as in LiveKit, and
acts on the tenant's own room only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import msgspec
from google.protobuf.message import Message
from livekit.protocol import models, rtc
from livekit.protocol import room as rm

from edgedispatch.dispatch.domain import Domain
from edgedispatch.errors import InvalidArgument, NotFound
from edgedispatch.rtc.room import LiveRoom, RoomHub
from edgedispatch.rtc.session import SignalSession
from edgedispatch.wire import signal
from edgedispatch.wire.http import Request
from edgedispatch.wire.tokens import Claims

#: Bytes of data one SendData may carry (LiveKit's limit for a data packet).
MAX_DATA = 64 * 1024


class LiveRoute(NamedTuple):
    request: type[Message]
    call: Callable[[Domain, RoomHub | None, Claims, Any, Request], Message]


def _live(d: Domain, hub: RoomHub | None, c: Claims, room: str) -> LiveRoom | None:
    """The tenant's room (NotFound if it has no such room), live or not."""
    c.require("roomAdmin", room=room)
    d.rooms.get(c.tenant, room)
    return hub.find(c.tenant, room) if hub is not None else None


def _participant(live: LiveRoom | None, identity: str) -> SignalSession:
    session = live.sessions.get(identity) if live is not None else None
    if session is None:
        raise NotFound(f"participant {identity!r} is not in the room")
    return session


def _list_participants(d: Domain, hub: RoomHub | None, c: Claims, req: Any, r: Request) -> Message:
    live = _live(d, hub, c, req.room)
    infos = [s.info for s in live.sessions.values()] if live is not None else []
    return rm.ListParticipantsResponse(participants=infos)


def _get_participant(d: Domain, hub: RoomHub | None, c: Claims, req: Any, r: Request) -> Message:
    return _participant(_live(d, hub, c, req.room), req.identity).info


def _remove_participant(d: Domain, hub: RoomHub | None, c: Claims, req: Any, r: Request) -> Message:
    session = _participant(_live(d, hub, c, req.room), req.identity)
    session.kick(models.DisconnectReason.PARTICIPANT_REMOVED, "removed by the server", r.now)
    return rm.RemoveParticipantResponse()


def _update_participant(d: Domain, hub: RoomHub | None, c: Claims, req: Any, r: Request) -> Message:
    session = _participant(_live(d, hub, c, req.room), req.identity)
    live = session.room
    if req.HasField("permission"):
        p = req.permission
        session.grant = msgspec.structs.replace(
            session.grant,
            can_subscribe=p.can_subscribe,
            can_publish=p.can_publish,
            can_publish_data=p.can_publish_data,
            can_publish_sources=tuple(int(s) for s in p.can_publish_sources),
            can_update_metadata=p.can_update_metadata,
            hidden=p.hidden,
        )
        session.info.permission.CopyFrom(session.grant.permission())
    error = live.update_participant(
        session,
        metadata=req.metadata if req.metadata else None,
        name=req.name if req.name else None,
        attributes=dict(req.attributes),
    )
    if error:
        raise InvalidArgument(error)
    return session.info


def _mute_published_track(
    d: Domain, hub: RoomHub | None, c: Claims, req: Any, r: Request
) -> Message:
    session = _participant(_live(d, hub, c, req.room), req.identity)
    live = session.room
    track = next((t for t in session.info.tracks if t.sid == req.track_sid), None)
    if track is None:
        raise NotFound(f"track {req.track_sid!r} is not published by {req.identity!r}")
    # The publisher's SDK mutes itself on this; the others are told.
    session.send(rtc.SignalResponse(mute=rtc.MuteTrackRequest(sid=track.sid, muted=req.muted)))
    live.mute_track(session, track.sid, req.muted)
    return rm.MuteRoomTrackResponse(track=track)


def _update_subscriptions(
    d: Domain, hub: RoomHub | None, c: Claims, req: Any, r: Request
) -> Message:
    session = _participant(_live(d, hub, c, req.room), req.identity)
    live = session.room
    live.set_subscriptions(session, signal.subscription_track_sids(req), req.subscribe)
    return rm.UpdateSubscriptionsResponse()


def _send_data(d: Domain, hub: RoomHub | None, c: Claims, req: Any, r: Request) -> Message:
    live = _live(d, hub, c, req.room)
    if len(req.data) > MAX_DATA:
        raise InvalidArgument(f"data over {MAX_DATA} bytes")
    packet = models.DataPacket(
        kind=req.kind,
        destination_identities=list(req.destination_identities),
        user=models.UserPacket(
            payload=req.data,
            topic=req.topic if req.HasField("topic") else None,
            nonce=req.nonce,
            destination_identities=list(req.destination_identities),
        ),
    )
    if live is not None:
        live.send_data(packet, int(req.kind))
    return rm.SendDataResponse()


_S = "livekit.RoomService"
ROUTES: dict[tuple[str, str], LiveRoute] = {
    (_S, "ListParticipants"): LiveRoute(rm.ListParticipantsRequest, _list_participants),
    (_S, "GetParticipant"): LiveRoute(rm.RoomParticipantIdentity, _get_participant),
    (_S, "RemoveParticipant"): LiveRoute(rm.RoomParticipantIdentity, _remove_participant),
    (_S, "UpdateParticipant"): LiveRoute(rm.UpdateParticipantRequest, _update_participant),
    (_S, "MutePublishedTrack"): LiveRoute(rm.MuteRoomTrackRequest, _mute_published_track),
    (_S, "UpdateSubscriptions"): LiveRoute(rm.UpdateSubscriptionsRequest, _update_subscriptions),
    (_S, "SendData"): LiveRoute(rm.SendDataRequest, _send_data),
}
