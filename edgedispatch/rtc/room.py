"""Live rooms: who is connected, what they publish, and the fan-out between
them, sans-IO.

The domain owns the room and participant records (the same whoever opened
the room: the API, a dispatch or a join) and their lifecycle; a ``LiveRoom``
holds the signal sessions of the participants connected to one room, and
sends each change to the others at once (LiveKit batches join and leave
notices for up to 3 s).  ``RoomHub`` finds a tenant's live room, admits a
join through the domain, and closes the sessions of a room the domain
closed.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

from livekit.protocol import models, rtc

from edgedispatch._version import __version__
from edgedispatch.config import RtcConfig
from edgedispatch.dispatch import ids
from edgedispatch.dispatch.domain import Domain
from edgedispatch.dispatch.events import DomainEvent, RoomClosed
from edgedispatch.dispatch.records import ParticipantRec, RoomRec
from edgedispatch.dispatch.specs import RoomSpec, check_payload
from edgedispatch.errors import EdgeDispatchError
from edgedispatch.rtc.session import Media, SignalSession, SignalSink, leave_message
from edgedispatch.wire import convert
from edgedispatch.wire.signal import Grant, JoinParams

log = logging.getLogger("edgedispatch.rtc")

#: The signal protocol version we report (ServerInfo.protocol): the one both
#: SDK families were verified against (rtc-signaling.md §1.2).
PROTOCOL = 16
#: The track types whose media is forwarded: (the media's kind, the codec
#: every subscriber gets).  Video is VP8 only, one layer (``net.media``).
FORWARDED = {models.AUDIO: ("audio", "audio/opus"), models.VIDEO: ("video", "video/VP8")}

MediaFactory = Callable[[SignalSession], Media]
TrackListener = Callable[["LiveRoom", SignalSession, models.TrackInfo, bool], None]


class LiveRoom:
    """The connected participants of one room (``rec``, the domain's)."""

    def __init__(self, hub: RoomHub, rec: RoomRec) -> None:
        self.hub = hub
        self.rec = rec
        self.sessions: dict[str, SignalSession] = {}  # identity -> session

    @property
    def name(self) -> str:
        return self.rec.name

    @property
    def tenant(self) -> str:
        return self.rec.tenant

    def wall_ms(self, now: float) -> int:
        return self.hub.domain.wall.ns(now) // 1_000_000

    # ------------------------------------------------------------------
    # Presence.

    def others(self, me: SignalSession) -> list[SignalSession]:
        return [s for s in self.sessions.values() if s is not me]

    def visible_infos(self, me: SignalSession) -> list[models.ParticipantInfo]:
        return [s.info for s in self.others(me) if not s.grant.hidden]

    def announce(self, who: SignalSession, info: models.ParticipantInfo | None = None) -> None:
        """Tell everyone else about ``who`` (its current info by default)."""
        if who.grant.hidden:
            return
        update = rtc.SignalResponse(update=rtc.ParticipantUpdate(participants=[info or who.info]))
        data = update.SerializeToString()
        for other in self.others(who):
            other.send_raw(data)

    def remove(self, who: SignalSession, reason: int, now: float) -> None:
        """``who`` is gone: drop it, tell the others, and tell the domain
        (unless the room itself is closing)."""
        if self.sessions.get(who.identity) is who:
            del self.sessions[who.identity]
        for other in self.sessions.values():
            if other.media is not None:
                for track in who.info.tracks:
                    other.media.unsubscribe(track.sid)
        for track in who.info.tracks:
            for listener in self.hub.track_listeners:
                listener(self, who, track, False)
        who.close_media()
        gone = models.ParticipantInfo()
        gone.CopyFrom(who.info)
        gone.state = models.ParticipantInfo.DISCONNECTED
        gone.disconnect_reason = reason  # type: ignore[assignment]
        gone.version += 1
        self.announce(who, gone)
        if not self.hub.closing(self):
            domain = self.hub.domain
            domain.leave_room(self.tenant, self.name, who.identity, who.sid, now)
            domain.step(now)
        if not self.sessions:
            self.hub.forget(self)

    def update_participant(
        self,
        who: SignalSession,
        *,
        metadata: str | None = None,
        name: str | None = None,
        attributes: dict[str, str] | None = None,
    ) -> str:
        """Change ``who``'s metadata, name or attributes (an empty attribute
        value deletes the key, as in LiveKit); tells everyone, ``who``
        included.  Returns an error message, or "" when done."""
        merged = dict(who.info.attributes)
        for key, value in (attributes or {}).items():
            if value:
                merged[key] = value
            else:
                merged.pop(key, None)
        try:
            check_payload(metadata if metadata is not None else who.info.metadata, merged)
        except EdgeDispatchError as exc:
            return exc.msg
        if metadata is not None:
            who.info.metadata = who.rec.metadata = metadata
        if name is not None:
            who.info.name = who.rec.name = name
        if attributes:
            who.info.ClearField("attributes")
            who.info.attributes.update(merged)
            who.rec.attributes = merged
        who.info.version += 1
        who.send(rtc.SignalResponse(update=rtc.ParticipantUpdate(participants=[who.info])))
        self.announce(who)
        return ""

    # ------------------------------------------------------------------
    # Tracks.

    def add_track(self, who: SignalSession, req: rtc.AddTrackRequest, now: float) -> None:
        """AddTrack: the track gets its sid and is announced; the client
        then renegotiates to send its media."""
        grant = who.grant
        allowed = grant.can_publish and (
            not grant.can_publish_sources or req.source in grant.can_publish_sources
        )
        if not allowed:
            message = "token does not allow publishing this track"
            who.respond(0, rtc.RequestResponse.NOT_ALLOWED, message, add_track=req)
            return
        track = models.TrackInfo(
            sid=req.sid or ids.new(ids.TRACK),
            type=req.type,
            name=req.name,
            muted=req.muted,
            width=req.width,
            height=req.height,
            source=req.source,
            disable_dtx=req.disable_dtx,
            stereo=req.stereo,
            disable_red=req.disable_red,
            stream=req.stream,
            mime_type=FORWARDED.get(req.type, ("", ""))[1],
        )
        who.info.tracks.append(track)
        who.info.is_publisher = True
        who.info.version += 1
        published = rtc.TrackPublishedResponse(cid=req.cid, track=track)
        who.send(rtc.SignalResponse(track_published=published))
        # The others learn of the track before any offer that carries it.
        self.announce(who)
        if who.media is not None and track.type in FORWARDED:
            who.media.expect_track(req.cid, track.sid, FORWARDED[track.type][0])
            for other in self.others(who):
                if other.params.auto_subscribe:
                    self.subscribe(other, who, track.sid)
        for listener in self.hub.track_listeners:
            listener(self, who, track, True)
        # A first publish starts the JT_PUBLISHER jobs.
        domain = self.hub.domain
        domain.track_published(self.tenant, self.name, who.identity, now)
        domain.step(now)

    def subscribe(self, sub: SignalSession, pub: SignalSession, track_sid: str) -> None:
        """Forward ``pub``'s track to ``sub``, if ``sub`` may receive it (on
        v1's one connection, or v0's server-offered subscriber connection)."""
        if sub.media is None or pub.media is None or not sub.grant.can_subscribe:
            return
        sub.media.subscribe(track_sid, pub.media, f"{pub.sid}|{track_sid}")

    def subscribe_all(self, sub: SignalSession) -> None:
        """A newcomer gets every track already published."""
        if not sub.params.auto_subscribe:
            return
        for pub in self.others(sub):
            for track in pub.info.tracks:
                if track.type in FORWARDED:
                    self.subscribe(sub, pub, track.sid)

    def set_subscriptions(self, sub: SignalSession, track_sids: list[str], on: bool) -> None:
        """UpdateSubscription: start or stop receiving these tracks."""
        owners = {t.sid: s for s in self.others(sub) for t in s.info.tracks}
        for sid in track_sids:
            pub = owners.get(sid)
            if pub is None:
                error = models.SubscriptionError.SE_TRACK_NOTFOUND
                response = rtc.SubscriptionResponse(track_sid=sid, err=error)
                sub.send(rtc.SignalResponse(subscription_response=response))
            elif on:
                self.subscribe(sub, pub, sid)
            elif sub.media is not None:
                sub.media.unsubscribe(sid)

    def track_received(self, who: SignalSession, track_sid: str, mid: str) -> None:
        for track in who.info.tracks:
            if track.sid == track_sid:
                track.mid = mid

    def unpublish(self, who: SignalSession, track_sid: str) -> None:
        """``who`` stopped sending a track: it is told, the others are told
        and stop receiving it."""
        track = next((t for t in who.info.tracks if t.sid == track_sid), None)
        if track is None:
            return
        who.info.tracks.remove(track)
        who.info.version += 1
        for other in self.others(who):
            if other.media is not None:
                other.media.unsubscribe(track_sid)
        gone = rtc.TrackUnpublishedResponse(track_sid=track_sid)
        who.send(rtc.SignalResponse(track_unpublished=gone))
        self.announce(who)
        for listener in self.hub.track_listeners:
            listener(self, who, track, False)

    def mute_track(self, who: SignalSession, track_sid: str, muted: bool) -> bool:
        """False if ``who`` publishes no such track."""
        for track in who.info.tracks:
            if track.sid == track_sid:
                if track.muted != muted:
                    track.muted = muted
                    who.info.version += 1
                    self.announce(who)
                return True
        return False

    # ------------------------------------------------------------------
    # Data.

    def forward_data(self, sender: SignalSession, packet: models.DataPacket, kind: int) -> None:
        """Stamp the sender on ``packet`` (clients may leave it empty) and
        deliver it to its destinations, or to everyone else."""
        packet.participant_identity = sender.identity
        packet.participant_sid = sender.sid
        if packet.HasField("user"):
            packet.user.participant_identity = sender.identity
            packet.user.participant_sid = sender.sid
        data = packet.SerializeToString()
        wanted = packet.destination_identities
        if wanted:
            targets = [self.sessions[i] for i in wanted if i in self.sessions]
        else:
            targets = self.others(sender)
        for target in targets:
            if target is not sender and target.grant.can_subscribe:
                target.deliver_data(data, kind)

    def send_data(self, packet: models.DataPacket, kind: int) -> None:
        """Data from the server (RoomService.SendData): no sender."""
        data = packet.SerializeToString()
        wanted = set(packet.destination_identities)
        for target in list(self.sessions.values()):
            if not wanted or target.identity in wanted:
                target.deliver_data(data, kind)


class RoomHub:
    """Every live room of the server, by (tenant, room name)."""

    def __init__(self, domain: Domain, cfg: RtcConfig, media: MediaFactory | None) -> None:
        self.domain = domain
        self.cfg = cfg
        self._media = media
        self.rooms: dict[tuple[str, str], LiveRoom] = {}
        self._closing: set[int] = set()
        #: Told of each track published (True) or gone (False): webhooks.
        self.track_listeners: list[TrackListener] = []
        domain.subscribe(self._on_event, RoomClosed)

    def track_counts(self) -> Counter[str]:
        """Tracks published in the live rooms, per tenant (``/metrics``)."""
        counts: Counter[str] = Counter()
        for (tenant, _), live in self.rooms.items():
            counts[tenant] += sum(len(s.info.tracks) for s in live.sessions.values())
        return counts

    def find(self, tenant: str, name: str) -> LiveRoom | None:
        return self.rooms.get((tenant, name))

    def closing(self, room: LiveRoom) -> bool:
        return id(room) in self._closing

    def forget(self, room: LiveRoom) -> None:
        if self.rooms.get((room.tenant, room.name)) is room:
            del self.rooms[room.tenant, room.name]

    def join(
        self,
        sink: SignalSink,
        tenant: str,
        grant: Grant,
        params: JoinParams,
        now: float,
        media: MediaFactory | None = None,
    ) -> SignalSession:
        """Admit a verified participant into its room: through the domain
        (which may create the room and dispatch its agents), then the
        JoinResponse, and the others are told.  Raises the domain's error
        (a full room, a draining server).  ``media``: the participant's own
        media, instead of a new peer connection (a phone call's bridge)."""
        rec = ParticipantRec(
            sid=ids.new(ids.PARTICIPANT),
            identity=grant.identity,
            name=grant.name,
            kind=grant.kind,
            metadata=grant.metadata,
            attributes=dict(grant.attributes),
            joined_ns=self.domain.wall.ns(now),
            hidden=grant.hidden,
        )
        room_rec, _replaced = self.domain.join_room(tenant, room_spec(grant), rec, now)
        key = (tenant, room_rec.name)
        live = self.rooms.get(key)
        if live is not None and live.rec is room_rec:
            older = live.sessions.get(grant.identity)
            if older is not None:
                older.kick(models.DisconnectReason.DUPLICATE_IDENTITY, "duplicate identity", now)
        else:
            live = LiveRoom(self, room_rec)
        self.rooms[key] = live
        session = SignalSession(
            sink, live, grant, params, rec, ping_timeout=self.cfg.ping_timeout, now=now
        )
        live.sessions[grant.identity] = session
        session.send(rtc.SignalResponse(join=self.join_response(live, session)))
        live.announce(session)
        factory = media or self._media
        if factory is not None:
            session.media = factory(session)
            live.subscribe_all(session)
            if params.offer_sdp:
                session.media.negotiate(params.offer_sdp, params.offer_id, rtc.PUBLISHER)
        self.domain.step(now)
        return session

    def join_response(self, live: LiveRoom, session: SignalSession) -> rtc.JoinResponse:
        cfg = self.cfg
        room = models.Room()
        room.CopyFrom(convert.room_proto(live.rec))
        room.num_participants = len(live.sessions)
        return rtc.JoinResponse(
            room=room,
            participant=session.info,
            other_participants=live.visible_infos(session),
            server_version=cfg.server_version,
            server_info=models.ServerInfo(
                edition=models.ServerInfo.Standard,
                version=cfg.server_version,
                protocol=PROTOCOL,
                node_id=self.domain.node_id,
                debug_info=f"edgedispatch {__version__}",
            ),
            ice_servers=[
                rtc.ICEServer(urls=s.urls, username=s.username, credential=s.credential)
                for s in cfg.ice_servers
            ],
            subscriber_primary=False,
            ping_interval=cfg.ping_interval,
            ping_timeout=cfg.ping_timeout,
        )

    def _on_event(self, event: DomainEvent) -> None:
        if isinstance(event, RoomClosed):
            live = self.rooms.pop((event.room.tenant, event.room.name), None)
            if live is None or live.rec is not event.room:
                return
            # The domain is mid-step: the sessions end without calling it back.
            self._closing.add(id(live))
            try:
                for session in list(live.sessions.values()):
                    session.kick(models.DisconnectReason.ROOM_CLOSED, "room closed", 0.0)
            finally:
                self._closing.discard(id(live))

    def close_all(self, now: float) -> None:
        """Server shutdown: everyone is told, nothing is kept."""
        for live in list(self.rooms.values()):
            self._closing.add(id(live))
            for session in list(live.sessions.values()):
                session.kick(models.DisconnectReason.SERVER_SHUTDOWN, "server shutting down", now)
        self.rooms.clear()
        self._closing.clear()


def room_spec(grant: Grant) -> RoomSpec:
    """The room a join creates when it does not exist: the token's
    ``roomConfig``, if it has one."""
    cfg = grant.room_config
    if cfg is None:
        return RoomSpec(name=grant.room)
    return RoomSpec(
        name=grant.room,
        empty_timeout=cfg.empty_timeout,
        departure_timeout=cfg.departure_timeout,
        max_participants=cfg.max_participants,
        metadata=cfg.metadata,
        agents=tuple(convert.agent_spec(a) for a in cfg.agents),
    )


def resume_refused() -> bytes:
    """The answer to a resume: aiortc cannot restart ICE, so the client is
    told to reconnect in full (new peer connections), which it does."""
    return leave_message(models.DisconnectReason.STATE_MISMATCH, True).SerializeToString()
