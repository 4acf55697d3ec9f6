"""Rooms and agent dispatches, per tenant: what the Twirp services manage.

Every room and dispatch belongs to exactly one tenant; a tenant's keys see
and touch only its own, and the same room name in two tenants names two
rooms.  Jobs are created and ended through the dispatcher.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import TYPE_CHECKING

from livekit.protocol import agent, agent_dispatch, models
from livekit.protocol import room as room_pb

from edgedispatch._core.codes import FailReason, RestartPolicy
from edgedispatch.dispatch import ids
from edgedispatch.dispatch.core import AgentKey
from edgedispatch.dispatch.records import DispatchRec, RoomRec, check_deployment, check_payload
from edgedispatch.wire.twirp import TwirpError

if TYPE_CHECKING:
    from edgedispatch.dispatch.dispatcher import Dispatcher

log = logging.getLogger("edgedispatch.dispatch.rooms")

IDEMPOTENCY_ENTRIES = 10_000


class RoomDirectory:
    def __init__(self, dispatcher: Dispatcher) -> None:
        self._d = dispatcher
        self.rooms: dict[tuple[str, str], RoomRec] = {}
        self.dispatches: dict[str, DispatchRec] = {}
        self._by_request_id: OrderedDict[tuple[str, str], str] = OrderedDict()

    # ------------------------------------------------------------------
    # Rooms.

    def create(
        self,
        tenant: str,
        name: str,
        empty_timeout: int = 0,
        departure_timeout: int = 0,
        max_participants: int = 0,
        metadata: str = "",
    ) -> RoomRec:
        rc = self._d.cfg.room
        room = RoomRec(
            sid=ids.new(ids.ROOM),
            name=name,
            tenant=tenant,
            created=self._d.wall(),
            empty_timeout=empty_timeout or rc.empty_timeout,
            departure_timeout=departure_timeout or rc.departure_timeout,
            max_participants=max_participants,
            metadata=metadata,
        )
        self.rooms[tenant, name] = room
        # Nobody joins rooms on this server yet, so a room lives for its
        # empty timeout, as a LiveKit room nobody joined does.
        if room.empty_timeout > 0:
            room.close_timer = self._d.loop.call_later(
                room.empty_timeout, self._close_idle, tenant, name
            )
        log.info("room created", extra={"room": name, "tenant": tenant})
        return room

    def get(self, tenant: str, name: str) -> RoomRec:
        room = self.rooms.get((tenant, name))
        if room is None:
            raise TwirpError("not_found", f"room {name!r} does not exist")
        return room

    def list_rooms(self, tenant: str, names: list[str]) -> list[models.Room]:
        wanted = set(names)
        return [
            r.proto()
            for (t, name), r in self.rooms.items()
            if t == tenant and (not wanted or name in wanted)
        ]

    def create_room(self, tenant: str, req: room_pb.CreateRoomRequest) -> models.Room:
        self._d.check_open()
        if not req.name:
            raise TwirpError("invalid_argument", "room name is required")
        existing = self.rooms.get((tenant, req.name))
        if existing is not None:
            return existing.proto()
        for d in req.agents:
            problem = check_deployment(d.deployment) or check_payload(
                d.metadata, dict(d.attributes)
            )
            if problem:
                raise TwirpError("invalid_argument", problem)
        room = self.create(
            tenant,
            req.name,
            req.empty_timeout,
            req.departure_timeout,
            req.max_participants,
            req.metadata,
        )
        for d in req.agents:
            self._new_dispatch(
                room, d.agent_name, d.metadata, dict(d.attributes), d.restart_policy, d.deployment
            )
        if not req.agents:
            self._auto_dispatch(room)
        self._d.step()
        return room.proto()

    def _auto_dispatch(self, room: RoomRec) -> None:
        """LiveKit's automatic dispatch: a room with no explicit dispatch gets
        one job for workers registered without an agent name — if any are
        registered (LiveKit does not dispatch to agents that do not exist)."""
        if self._d.has_workers(AgentKey(room.tenant, "", agent.JT_ROOM, "")):
            self._new_dispatch(room, "", "", {}, RestartPolicy.ON_FAILURE, "", implicit=True)

    def delete_room(self, tenant: str, name: str) -> None:
        room = self.get(tenant, name)
        self._end_room(room, FailReason.ROOM_CLOSED)
        log.info("room deleted", extra={"room": name, "tenant": tenant})

    def _close_idle(self, tenant: str, name: str) -> None:
        room = self.rooms.get((tenant, name))
        if room is not None:
            log.info("room closed (empty timeout)", extra={"room": name, "tenant": tenant})
            self._end_room(room, FailReason.ROOM_CLOSED)

    def _end_room(self, room: RoomRec, reason: FailReason) -> None:
        if room.close_timer is not None:
            room.close_timer.cancel()
        for dispatch_id in list(room.dispatch_ids):
            self._end_dispatch(self.dispatches[dispatch_id], reason)
        del self.rooms[room.tenant, room.name]

    # ------------------------------------------------------------------
    # Dispatches.

    def _new_dispatch(
        self,
        room: RoomRec,
        agent_name: str,
        metadata: str,
        attributes: dict[str, str],
        restart_policy: int,
        deployment: str,
        implicit: bool = False,
    ) -> DispatchRec:
        rec = DispatchRec(
            id=ids.new(ids.DISPATCH),
            agent_name=agent_name,
            room=room.name,
            tenant=room.tenant,
            metadata=metadata,
            attributes=attributes,
            restart_policy=restart_policy,
            deployment=deployment,
            created_ns=self._d.wall_ns(),
            implicit=implicit,
        )
        self.dispatches[rec.id] = rec
        room.dispatch_ids.append(rec.id)
        self._d.new_job(rec, room)
        log.debug(
            "dispatch created",
            extra={
                "dispatch": rec.id,
                "room": room.name,
                "agent": agent_name,
                "tenant": room.tenant,
            },
        )
        return rec

    def _end_dispatch(self, rec: DispatchRec, reason: FailReason) -> None:
        rec.deleted_ns = self._d.wall_ns()
        room = self.rooms.get((rec.tenant, rec.room))
        if room is not None and rec.id in room.dispatch_ids:
            room.dispatch_ids.remove(rec.id)
        del self.dispatches[rec.id]
        self._d.end_jobs(rec.job_ids, reason)

    def proto(self, rec: DispatchRec) -> agent_dispatch.AgentDispatch:
        jobs = self._d.jobs
        return rec.proto([jobs[j].proto() for j in rec.job_ids if j in jobs])

    def create_dispatch(
        self, tenant: str, req: agent_dispatch.CreateAgentDispatchRequest, request_id: str = ""
    ) -> agent_dispatch.AgentDispatch:
        self._d.check_open()
        if not req.room:
            raise TwirpError("invalid_argument", "room is required")
        if int(req.restart_policy) not in (RestartPolicy.ON_FAILURE, RestartPolicy.NEVER):
            raise TwirpError("invalid_argument", f"unknown restart_policy {req.restart_policy}")
        problem = check_deployment(req.deployment) or check_payload(
            req.metadata, dict(req.attributes)
        )
        if problem:
            raise TwirpError("invalid_argument", problem)
        if request_id and (tenant, request_id) in self._by_request_id:
            earlier = self.dispatches.get(self._by_request_id[tenant, request_id])
            if earlier is not None:
                return self.proto(earlier)
        room = self.rooms.get((tenant, req.room))
        if room is None:
            if not self._d.cfg.room.auto_create:
                raise TwirpError("not_found", f"room {req.room!r} does not exist")
            room = self.create(tenant, req.room)
        rec = self._new_dispatch(
            room,
            req.agent_name,
            req.metadata,
            dict(req.attributes),
            req.restart_policy,
            req.deployment,
        )
        if request_id:
            self._by_request_id[tenant, request_id] = rec.id
            if len(self._by_request_id) > IDEMPOTENCY_ENTRIES:
                self._by_request_id.popitem(last=False)
        self._d.step()
        return self.proto(rec)

    def list_dispatch(
        self, tenant: str, room: str, dispatch_id: str = ""
    ) -> list[agent_dispatch.AgentDispatch]:
        if not room:
            raise TwirpError("invalid_argument", "room is required")
        rec = self.rooms.get((tenant, room))
        if rec is None:
            return []
        self._d.refresh_wait_reasons()
        return [
            self.proto(self.dispatches[d])
            for d in rec.dispatch_ids
            if not dispatch_id or d == dispatch_id
        ]

    def delete_dispatch(
        self, tenant: str, room: str, dispatch_id: str
    ) -> agent_dispatch.AgentDispatch:
        rec = self.dispatches.get(dispatch_id)
        if rec is None or rec.room != room or rec.tenant != tenant:
            raise TwirpError("not_found", "dispatch ID not found")
        self._end_dispatch(rec, FailReason.CANCELLED)
        return self.proto(rec)
