"""Rooms and agent dispatches, per tenant.

Every room and dispatch belongs to exactly one tenant; a tenant sees and
touches only its own, and the same room name in two tenants names two
rooms.  A room gets the same record and events whoever opened it: the API,
a dispatch that created it, or a participant's join.

A room closes ``empty_timeout`` after it opened if nobody joined it, and
``departure_timeout`` after the last participant other than an agent left:
agents never keep a room open.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable

import msgspec

from edgedispatch._core.codes import FailReason, RestartPolicy
from edgedispatch.config import RoomConfig
from edgedispatch.dispatch import ids
from edgedispatch.dispatch.compact import shrink
from edgedispatch.dispatch.core import AgentKey
from edgedispatch.dispatch.events import (
    DispatchCreated,
    DispatchDeleted,
    EventBus,
    ParticipantJoined,
    ParticipantLeft,
    RoomClosed,
    RoomOpened,
)
from edgedispatch.dispatch.jobs import JobLedger
from edgedispatch.dispatch.quotas import QuotaDesk
from edgedispatch.dispatch.records import DispatchRec, ParticipantRec, RoomRec
from edgedispatch.dispatch.specs import (
    JT_PARTICIPANT,
    JT_PUBLISHER,
    JT_ROOM,
    AgentSpec,
    DispatchSpec,
    RoomSpec,
    check_payload,
)
from edgedispatch.dispatch.timers import TimerKind, Timers, WallTime
from edgedispatch.errors import NotFound, ResourceExhausted

log = logging.getLogger("edgedispatch.rooms")

#: CreateDispatch request ids remembered per server, for idempotent retries.
IDEMPOTENCY_ENTRIES = 10_000


class RoomDirectory:
    """:param has_workers: whether any worker is registered for an agent key
    (LiveKit dispatches automatically only to agents that exist)."""

    def __init__(
        self,
        cfg: RoomConfig,
        jobs: JobLedger,
        timers: Timers,
        bus: EventBus,
        wall: WallTime,
        has_workers: Callable[[AgentKey], bool],
    ) -> None:
        self._cfg = cfg
        self._jobs = jobs
        self._timers = timers
        self._bus = bus
        self._wall = wall
        self._has_workers = has_workers
        self.quotas = QuotaDesk()
        self.rooms: dict[tuple[str, str], RoomRec] = {}
        # The same rooms per tenant, so that listing one tenant's rooms does
        # not walk every tenant's.
        self._by_tenant: dict[str, dict[str, RoomRec]] = {}
        self.dispatches: dict[str, DispatchRec] = {}
        self._by_request_id: OrderedDict[tuple[str, str], str] = OrderedDict()

    # ------------------------------------------------------------------
    # Rooms.

    def find(self, tenant: str, name: str) -> RoomRec | None:
        return self.rooms.get((tenant, name))

    def get(self, tenant: str, name: str) -> RoomRec:
        room = self.rooms.get((tenant, name))
        if room is None:
            raise NotFound(f"room {name!r} does not exist")
        return room

    def list_rooms(self, tenant: str, names: list[str]) -> list[RoomRec]:
        """A tenant's rooms (those of ``names`` only, if given), oldest first."""
        mine = self._by_tenant.get(tenant, {})
        if not names:
            return list(mine.values())
        wanted = set(names)
        return [room for name, room in mine.items() if name in wanted]

    def open(self, tenant: str, spec: RoomSpec, now: float) -> RoomRec:
        """A new room, with no dispatches yet (within the tenant's quota)."""
        self.quotas.check_room(tenant, len(self._by_tenant.get(tenant, ())))
        room = RoomRec(
            sid=ids.new(ids.ROOM),
            name=spec.name,
            tenant=tenant,
            created=self._wall(now),
            empty_timeout=spec.empty_timeout or self._cfg.empty_timeout,
            departure_timeout=spec.departure_timeout or self._cfg.departure_timeout,
            max_participants=spec.max_participants,
            metadata=spec.metadata,
        )
        self.rooms[tenant, spec.name] = room
        self._by_tenant.setdefault(tenant, {})[spec.name] = room
        # A room nobody joins lives for its empty timeout, as in LiveKit.
        if room.empty_timeout > 0:
            self._timers.set(now + room.empty_timeout, TimerKind.ROOM_EMPTY, (tenant, spec.name))
        log.info("room created", extra={"room": spec.name, "tenant": tenant})
        if RoomOpened in self._bus.wanted:
            self._bus.emit(RoomOpened(room))
        return room

    def create(self, tenant: str, spec: RoomSpec, now: float) -> RoomRec:
        """CreateRoom: an existing room is returned as it is; a new one gets
        its agents dispatched (or LiveKit's automatic dispatch)."""
        spec.check()
        existing = self.rooms.get((tenant, spec.name))
        if existing is not None:
            return existing
        room = self.open(tenant, spec, now)
        for agent in spec.agents:
            self._new_dispatch(room, agent, now)
        if not spec.agents:
            self._auto_dispatch(room, now)
        return room

    def _auto_dispatch(self, room: RoomRec, now: float) -> None:
        """LiveKit's automatic dispatch: a room with no explicit dispatch gets
        one job for workers registered without an agent name, if any are
        registered (LiveKit does not dispatch to agents that do not exist)."""
        if self._has_workers(AgentKey(room.tenant, "", JT_ROOM, "")):
            self._new_dispatch(room, AgentSpec(), now, implicit=True)

    def _per_participant(self, room: RoomRec, who: ParticipantRec, kind: int, now: float) -> None:
        """LiveKit's JT_PARTICIPANT (on joining) and JT_PUBLISHER (on the
        first publish) jobs: one per participant other than an agent, for
        the workers registered for that job type without an agent name."""
        if not who.is_agent and self._has_workers(AgentKey(room.tenant, "", kind, "")):
            self._new_dispatch(room, AgentSpec(), now, implicit=True, kind=kind, who=who)

    def published(self, tenant: str, name: str, identity: str, now: float) -> None:
        """``identity`` published a track: its first one starts JT_PUBLISHER jobs."""
        room = self.rooms.get((tenant, name))
        who = room.participants.get(identity) if room is not None else None
        if room is None or who is None or who.published:
            return
        who.published = True
        self._per_participant(room, who, JT_PUBLISHER, now)

    def update_metadata(self, tenant: str, name: str, metadata: str) -> RoomRec:
        room = self.get(tenant, name)
        check_payload(metadata, {})
        room.metadata = metadata
        return room

    def delete(self, tenant: str, name: str, now: float) -> None:
        room = self.get(tenant, name)
        self._close(room, "deleted", now)

    def on_empty_timeout(self, tenant: str, name: str, now: float) -> None:
        room = self.rooms.get((tenant, name))
        if room is not None and not room.joined:
            self._close(room, "empty timeout", now)

    def on_departure_timeout(self, tenant: str, name: str, now: float) -> None:
        room = self.rooms.get((tenant, name))
        if room is not None and room.humans() == 0:
            self._close(room, "departure timeout", now)

    # ------------------------------------------------------------------
    # Participants.

    def join(
        self, tenant: str, spec: RoomSpec, who: ParticipantRec, now: float
    ) -> tuple[RoomRec, ParticipantRec | None]:
        """``who`` joins the room ``spec.name``; a join that creates the room
        creates it with ``spec``'s settings.  Returns the room, and the
        earlier participant of the same identity that ``who`` replaces.

        ``spec.agents`` (a token's ``RoomConfiguration.agents``) are
        dispatched when the join creates the room, and also, unlike LiveKit,
        into an existing room for each listed agent not dispatched there
        yet.  A room a join creates without agents gets the automatic
        dispatch, as one made by CreateRoom does."""
        spec.check()
        room = self.rooms.get((tenant, spec.name))
        created = room is None
        if room is None:
            room = self.open(tenant, spec, now)
        replaced = room.participants.get(who.identity)
        if (
            replaced is None
            and room.max_participants
            and len(room.participants) >= room.max_participants
        ):
            raise ResourceExhausted(f"room {spec.name!r} is full")
        if replaced is not None:
            del room.participants[who.identity]
        room.participants[who.identity] = who
        key = (tenant, room.name)
        if not who.is_agent:
            room.joined = True
            self._timers.clear(TimerKind.ROOM_EMPTY, key)
            self._timers.clear(TimerKind.ROOM_DEPARTURE, key)
        log.info(
            "participant joined",
            extra={"room": room.name, "tenant": tenant, "participant": who.identity},
        )
        if ParticipantJoined in self._bus.wanted:
            self._bus.emit(ParticipantJoined(room, who, replaced))
        if created:
            for agent in spec.agents:
                self._new_dispatch(room, agent, now)
            if not spec.agents:
                self._auto_dispatch(room, now)
        self._per_participant(room, who, JT_PARTICIPANT, now)
        if not created:
            present = {self.dispatches[d].agent_name for d in room.dispatch_ids}
            for agent in spec.agents:
                if agent.agent_name not in present:
                    present.add(agent.agent_name)
                    self._new_dispatch(room, agent, now)
        return room, replaced

    def leave(self, tenant: str, name: str, identity: str, sid: str, now: float) -> None:
        """The participant ``identity`` (session ``sid``) left; nothing if a
        newer session of the same identity replaced it, or the room is gone."""
        room = self.rooms.get((tenant, name))
        if room is None:
            return
        who = room.participants.get(identity)
        if who is None or who.sid != sid:
            return
        del room.participants[identity]
        log.info(
            "participant left",
            extra={"room": name, "tenant": tenant, "participant": identity},
        )
        if ParticipantLeft in self._bus.wanted:
            self._bus.emit(ParticipantLeft(room, who))
        if not who.is_agent and room.humans() == 0:
            self._timers.set(now + room.departure_timeout, TimerKind.ROOM_DEPARTURE, (tenant, name))

    def _close(self, room: RoomRec, why: str, now: float) -> None:
        self._timers.clear(TimerKind.ROOM_EMPTY, (room.tenant, room.name))
        self._timers.clear(TimerKind.ROOM_DEPARTURE, (room.tenant, room.name))
        for dispatch_id in list(room.dispatch_ids):
            self._end_dispatch(self.dispatches[dispatch_id], FailReason.ROOM_CLOSED, now)
        del self.rooms[room.tenant, room.name]
        shrink(self.rooms)
        mine = self._by_tenant[room.tenant]
        del mine[room.name]
        if mine:
            shrink(mine)
        else:
            del self._by_tenant[room.tenant]
        message = "room deleted" if why == "deleted" else f"room closed ({why})"
        log.info(message, extra={"room": room.name, "tenant": room.tenant})
        if RoomClosed in self._bus.wanted:
            self._bus.emit(RoomClosed(room, why))

    # ------------------------------------------------------------------
    # Dispatches.

    def _new_dispatch(
        self,
        room: RoomRec,
        agent: AgentSpec,
        now: float,
        implicit: bool = False,
        kind: int = JT_ROOM,
        who: ParticipantRec | None = None,
        request_id: str = "",
    ) -> DispatchRec:
        rec = DispatchRec(
            id=ids.new(ids.DISPATCH),
            agent_name=agent.agent_name,
            room=room.name,
            tenant=room.tenant,
            metadata=agent.metadata,
            attributes=dict(agent.attributes),
            restart_policy=RestartPolicy(agent.restart_policy),
            deployment=agent.deployment,
            created_ns=self._wall.ns(now),
            implicit=implicit,
            job_type=kind,
            participant=msgspec.structs.replace(who) if who is not None else None,
            request_id=request_id,
        )
        self.dispatches[rec.id] = rec
        room.dispatch_ids.append(rec.id)
        if log.isEnabledFor(logging.DEBUG):  # one per dispatch: no dict at INFO
            extra = {"dispatch": rec.id, "room": room.name, "agent": agent.agent_name}
            extra["tenant"] = room.tenant
            log.debug("dispatch created", extra=extra)
        if DispatchCreated in self._bus.wanted:
            self._bus.emit(DispatchCreated(rec))
        self._jobs.new_job(rec, now)
        return rec

    def _end_dispatch(self, rec: DispatchRec, reason: FailReason, now: float) -> None:
        rec.deleted_ns = self._wall.ns(now)
        room = self.rooms.get((rec.tenant, rec.room))
        if room is not None and rec.id in room.dispatch_ids:
            room.dispatch_ids.remove(rec.id)
        del self.dispatches[rec.id]
        shrink(self.dispatches)
        if DispatchDeleted in self._bus.wanted:
            self._bus.emit(DispatchDeleted(rec))
        self._jobs.end(rec.job_ids, reason, now)

    def create_dispatch(
        self, tenant: str, spec: DispatchSpec, request_id: str, now: float
    ) -> DispatchRec:
        """CreateDispatch, idempotent on ``request_id`` (the client's
        X-Livekit-Request-Id) while the dispatch exists."""
        spec.check()
        if request_id:
            earlier = self.dispatches.get(self._by_request_id.get((tenant, request_id), ""))
            # A retry names the same room; the same id for another room is
            # a new call (its caller may hold no grant for the first room).
            if earlier is not None and earlier.room == spec.room:
                return earlier
        self.quotas.check_dispatch(tenant, self._jobs.tenant_jobs, now)
        room = self.rooms.get((tenant, spec.room))
        if room is None:
            if not self._cfg.auto_create:
                raise NotFound(f"room {spec.room!r} does not exist")
            room = self.open(tenant, RoomSpec(spec.room), now)
        rec = self._new_dispatch(room, spec.agent, now, request_id=request_id)
        if request_id:
            self._remember_request(tenant, request_id, rec.id)
        return rec

    def _remember_request(self, tenant: str, request_id: str, dispatch_id: str) -> None:
        self._by_request_id[tenant, request_id] = dispatch_id
        if len(self._by_request_id) > IDEMPOTENCY_ENTRIES:
            self._by_request_id.popitem(last=False)

    def restore(self, rooms: list[RoomRec], dispatches: list[DispatchRec], now: float) -> None:
        """After a restart: the rooms and dispatches the store kept, with
        their timeouts counted from their original times (the wall clock),
        and the request ids of their CreateDispatch calls."""
        wall_now = self._wall(now)
        for room in rooms:
            room.participants = {}
            room.dispatch_ids = []
            self.rooms[room.tenant, room.name] = room
            self._by_tenant.setdefault(room.tenant, {})[room.name] = room
            if room.joined and room.departure_timeout > 0:
                # Everyone left with the restart: the departure clock runs.
                when = now + room.departure_timeout
                self._timers.set(when, TimerKind.ROOM_DEPARTURE, (room.tenant, room.name))
            elif not room.joined and room.empty_timeout > 0:
                when = now + max(0.0, room.created + room.empty_timeout - wall_now)
                self._timers.set(when, TimerKind.ROOM_EMPTY, (room.tenant, room.name))
        for rec in dispatches:
            home = self.rooms.get((rec.tenant, rec.room))
            if home is None:
                continue  # its room closed: the dispatch went with it
            rec.job_ids = []
            self.dispatches[rec.id] = rec
            home.dispatch_ids.append(rec.id)
            if rec.request_id:
                self._remember_request(rec.tenant, rec.request_id, rec.id)

    def list_dispatch(self, tenant: str, room: str, dispatch_id: str = "") -> list[DispatchRec]:
        rec = self.rooms.get((tenant, room))
        if rec is None:
            return []
        return [self.dispatches[d] for d in rec.dispatch_ids if not dispatch_id or d == dispatch_id]

    def delete_dispatch(self, tenant: str, room: str, dispatch_id: str, now: float) -> DispatchRec:
        rec = self.dispatches.get(dispatch_id)
        if rec is None or rec.room != room or rec.tenant != tenant:
            raise NotFound("dispatch ID not found")
        self._end_dispatch(rec, FailReason.CANCELLED, now)
        return rec
