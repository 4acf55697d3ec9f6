"""The Twirp services: ``livekit.AgentDispatchService`` and ``livekit.RoomService``.

Grants are checked as LiveKit checks them: dispatch calls need ``roomAdmin``
for the request's room; CreateRoom and DeleteRoom need ``roomCreate``;
ListRooms needs ``roomList``; per-room calls need ``roomAdmin`` + ``room``.
The calls on a room's participants are ``api.live_rooms``'.

``edgedispatch.DispatchService/ListJobWaits`` is edgedispatch's own: the
request and grants of ListDispatch, answering why each queued job of the
room waits (LiveKit's ``JobState`` has no field for it; ``dispatch list``
shows it).

Each route has a ``call`` (check the grants, turn the request into a spec,
ask the domain) and, where the answer shows what the domain's step decided
(a job's state), a ``render`` that runs after the step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from google.protobuf import struct_pb2
from google.protobuf.message import Message
from livekit.protocol import agent_dispatch as ad
from livekit.protocol import room as rm

from edgedispatch.dispatch.domain import Domain
from edgedispatch.dispatch.records import DispatchRec, RoomRec
from edgedispatch.errors import InvalidArgument
from edgedispatch.wire import convert
from edgedispatch.wire.http import Request
from edgedispatch.wire.tokens import Claims

#: edgedispatch's own dispatch calls, beside LiveKit's.
DISPATCH_SERVICE = "edgedispatch.DispatchService"


class Route(NamedTuple):
    request: type[Message]
    call: Callable[[Domain, Claims, Any, Request], Any]
    #: Turns what ``call`` returned into the answer, after the step.
    render: Callable[[Domain, Any], Message] | None = None


def _dispatch(d: Domain, rec: DispatchRec) -> ad.AgentDispatch:
    return convert.dispatch_proto(rec, d.jobs.of(rec), d.rooms.find(rec.tenant, rec.room))


def _create_dispatch(d: Domain, c: Claims, req: Any, r: Request) -> DispatchRec:
    c.require("roomAdmin", room=req.room)
    request_id = r.headers.get("x-livekit-request-id", "")
    return d.create_dispatch(c.tenant, convert.dispatch_spec(req), r.now, request_id)


def _list_dispatch(d: Domain, c: Claims, req: Any, r: Request) -> list[DispatchRec]:
    c.require("roomAdmin", room=req.room)
    if not req.room:
        raise InvalidArgument("room is required")
    return d.list_dispatch(c.tenant, req.room, r.now, req.dispatch_id)


def _render_list(d: Domain, recs: list[DispatchRec]) -> Message:
    return ad.ListAgentDispatchResponse(agent_dispatches=[_dispatch(d, rec) for rec in recs])


def _render_waits(d: Domain, recs: list[DispatchRec]) -> Message:
    """``{"jobs": [{"jobId", "dispatchId", "agentName", "waiting"}]}``: the
    room's waiting jobs, with why each waits."""
    waiting: list[dict[str, str]] = []
    for rec in recs:
        for job in d.jobs.of(rec):
            text = convert.wait_text(job)
            if text:
                waiting.append(
                    {"jobId": job.id, "dispatchId": rec.id, "agentName": rec.agent_name,
                     "waiting": text}
                )  # fmt: skip
    answer = struct_pb2.Struct()
    answer.update({"jobs": waiting})
    return answer


def _delete_dispatch(d: Domain, c: Claims, req: Any, r: Request) -> DispatchRec:
    c.require("roomAdmin", room=req.room)
    return d.delete_dispatch(c.tenant, req.room, req.dispatch_id, r.now)


def _create_room(d: Domain, c: Claims, req: Any, r: Request) -> RoomRec:
    c.require("roomCreate")
    return d.create_room(c.tenant, convert.room_spec(req), r.now)


def _list_rooms(d: Domain, c: Claims, req: Any, r: Request) -> Message:
    c.require("roomList")
    rooms = d.rooms.list_rooms(c.tenant, list(req.names))
    return rm.ListRoomsResponse(rooms=[convert.room_proto(room) for room in rooms])


def _delete_room(d: Domain, c: Claims, req: Any, r: Request) -> Message:
    c.require("roomCreate")
    d.delete_room(c.tenant, req.room, r.now)
    return rm.DeleteRoomResponse()


def _update_room_metadata(d: Domain, c: Claims, req: Any, r: Request) -> RoomRec:
    c.require("roomAdmin", room=req.room)
    return d.rooms.update_metadata(c.tenant, req.room, req.metadata)


def _room(d: Domain, room: RoomRec) -> Message:
    return convert.room_proto(room)


#: (service, method) -> route
ROUTES: dict[tuple[str, str], Route] = {
    ("livekit.AgentDispatchService", "CreateDispatch"): Route(
        ad.CreateAgentDispatchRequest, _create_dispatch, _dispatch
    ),
    ("livekit.AgentDispatchService", "ListDispatch"): Route(
        ad.ListAgentDispatchRequest, _list_dispatch, _render_list
    ),
    (DISPATCH_SERVICE, "ListJobWaits"): Route(
        ad.ListAgentDispatchRequest, _list_dispatch, _render_waits
    ),
    ("livekit.AgentDispatchService", "DeleteDispatch"): Route(
        ad.DeleteAgentDispatchRequest, _delete_dispatch, _dispatch
    ),
    ("livekit.RoomService", "CreateRoom"): Route(rm.CreateRoomRequest, _create_room, _room),
    ("livekit.RoomService", "ListRooms"): Route(rm.ListRoomsRequest, _list_rooms),
    ("livekit.RoomService", "DeleteRoom"): Route(rm.DeleteRoomRequest, _delete_room),
    ("livekit.RoomService", "UpdateRoomMetadata"): Route(
        rm.UpdateRoomMetadataRequest, _update_room_metadata, _room
    ),
}
