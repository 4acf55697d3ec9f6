"""The Twirp services: ``livekit.AgentDispatchService`` and ``livekit.RoomService``.

Grants are checked as LiveKit checks them: dispatch calls need ``roomAdmin``
for the request's room; CreateRoom and DeleteRoom need ``roomCreate``;
ListRooms needs ``roomList``; per-room calls need ``roomAdmin`` + ``room``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.protobuf.message import Message
from livekit.protocol import agent_dispatch as ad
from livekit.protocol import room as rm

from edgedispatch.dispatch.dispatcher import Dispatcher
from edgedispatch.wire.tokens import Claims
from edgedispatch.wire.twirp import TwirpError

Handler = Callable[[Dispatcher, Claims, Any, dict[str, str]], Message]


def _create_dispatch(d: Dispatcher, c: Claims, req: Any, headers: dict[str, str]) -> Message:
    c.require("roomAdmin", room=req.room)
    return d.rooms.create_dispatch(c.tenant, req, headers.get("x-livekit-request-id", ""))


def _list_dispatch(d: Dispatcher, c: Claims, req: Any, headers: dict[str, str]) -> Message:
    c.require("roomAdmin", room=req.room)
    dispatches = d.rooms.list_dispatch(c.tenant, req.room, req.dispatch_id)
    return ad.ListAgentDispatchResponse(agent_dispatches=dispatches)


def _delete_dispatch(d: Dispatcher, c: Claims, req: Any, headers: dict[str, str]) -> Message:
    c.require("roomAdmin", room=req.room)
    return d.rooms.delete_dispatch(c.tenant, req.room, req.dispatch_id)


def _create_room(d: Dispatcher, c: Claims, req: Any, headers: dict[str, str]) -> Message:
    c.require("roomCreate")
    return d.rooms.create_room(c.tenant, req)


def _list_rooms(d: Dispatcher, c: Claims, req: Any, headers: dict[str, str]) -> Message:
    c.require("roomList")
    return rm.ListRoomsResponse(rooms=d.rooms.list_rooms(c.tenant, list(req.names)))


def _delete_room(d: Dispatcher, c: Claims, req: Any, headers: dict[str, str]) -> Message:
    c.require("roomCreate")
    d.rooms.delete_room(c.tenant, req.room)
    return rm.DeleteRoomResponse()


def _list_participants(d: Dispatcher, c: Claims, req: Any, headers: dict[str, str]) -> Message:
    c.require("roomAdmin", room=req.room)
    d.rooms.get(c.tenant, req.room)
    return rm.ListParticipantsResponse()  # nobody joins rooms on this server yet


def _update_room_metadata(d: Dispatcher, c: Claims, req: Any, headers: dict[str, str]) -> Message:
    c.require("roomAdmin", room=req.room)
    room = d.rooms.get(c.tenant, req.room)
    if len(req.metadata.encode()) > 64 * 1024:
        raise TwirpError("invalid_argument", "metadata is over 65536 bytes")
    room.metadata = req.metadata
    return room.proto()


#: (service, method) → (request class, handler)
ROUTES: dict[tuple[str, str], tuple[type[Message], Handler]] = {
    ("livekit.AgentDispatchService", "CreateDispatch"): (
        ad.CreateAgentDispatchRequest,
        _create_dispatch,
    ),
    ("livekit.AgentDispatchService", "ListDispatch"): (ad.ListAgentDispatchRequest, _list_dispatch),
    ("livekit.AgentDispatchService", "DeleteDispatch"): (
        ad.DeleteAgentDispatchRequest,
        _delete_dispatch,
    ),
    ("livekit.RoomService", "CreateRoom"): (rm.CreateRoomRequest, _create_room),
    ("livekit.RoomService", "ListRooms"): (rm.ListRoomsRequest, _list_rooms),
    ("livekit.RoomService", "DeleteRoom"): (rm.DeleteRoomRequest, _delete_room),
    ("livekit.RoomService", "ListParticipants"): (rm.ListParticipantsRequest, _list_participants),
    ("livekit.RoomService", "UpdateRoomMetadata"): (
        rm.UpdateRoomMetadataRequest,
        _update_room_metadata,
    ),
}
