"""Which events become webhooks, for whom: LiveKit's room, participant and
track events, each POSTed to its tenant's URLs and signed with its key.

Sans-IO: the events come from the domain (rooms and participants) and the
live rooms (tracks); what to send goes to ``post(url, body, token)``, the
``net.webhooks`` sender, which returns at once.
"""

from __future__ import annotations

from collections.abc import Callable

from livekit.protocol import models

from edgedispatch.dispatch.domain import Domain
from edgedispatch.dispatch.events import (
    DomainEvent,
    ParticipantJoined,
    ParticipantLeft,
    RoomClosed,
    RoomOpened,
)
from edgedispatch.dispatch.records import RoomRec
from edgedispatch.rtc.room import LiveRoom, RoomHub
from edgedispatch.rtc.session import SignalSession
from edgedispatch.wire import convert, webhooks

Post = Callable[[str, bytes, str], None]


class WebhookNotifier:
    """:param targets: tenant -> (URLs, API key, secret) (``Config.webhooks``)."""

    def __init__(
        self,
        domain: Domain,
        hub: RoomHub | None,
        targets: dict[str, tuple[list[str], str, str]],
        post: Post,
        wall: Callable[[], float],
    ) -> None:
        self._targets = targets
        self._post = post
        self._wall = wall
        self._domain = domain
        domain.subscribe(self._on_event, RoomOpened, RoomClosed, ParticipantJoined, ParticipantLeft)
        if hub is not None:
            hub.track_listeners.append(self._on_track)

    def _send(self, tenant: str, event: str, **parts: object) -> None:
        target = self._targets.get(tenant)
        if target is None:
            return
        urls, key, secret = target
        now = self._wall()
        body = webhooks.event_body(event, int(now), **parts)  # type: ignore[arg-type]
        token = webhooks.sign(body, key, secret, now)
        for url in urls:
            self._post(url, body, token)

    @staticmethod
    def _room(room: RoomRec) -> models.Room:
        msg = models.Room()
        msg.CopyFrom(convert.room_proto(room))
        msg.num_participants = len(room.participants)
        return msg

    def _on_event(self, event: DomainEvent) -> None:
        if isinstance(event, RoomOpened):
            self._send(event.room.tenant, "room_started", room=self._room(event.room))
        elif isinstance(event, RoomClosed):
            self._send(event.room.tenant, "room_finished", room=self._room(event.room))
        elif isinstance(event, ParticipantJoined | ParticipantLeft):
            name = (
                "participant_joined" if isinstance(event, ParticipantJoined) else "participant_left"
            )
            info = convert.participant_proto(event.participant)
            if isinstance(event, ParticipantLeft):
                info.state = models.ParticipantInfo.DISCONNECTED
            self._send(event.room.tenant, name, room=self._room(event.room), participant=info)

    def _on_track(
        self, live: LiveRoom, who: SignalSession, track: models.TrackInfo, published: bool
    ) -> None:
        name = "track_published" if published else "track_unpublished"
        self._send(live.tenant, name, room=self._room(live.rec), participant=who.info, track=track)
