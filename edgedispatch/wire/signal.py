"""What a LiveKit client asks for when it opens ``/rtc`` or ``/rtc/v1``.

v0 (``/rtc``, two peer connections) puts its options in the query string;
v1 (``/rtc/v1``, one peer connection, the SDKs' default since 2026) puts a
``WrappedJoinRequest`` there, base64url, usually gzip'd, carrying the
client's first SDP offer.  Both become one ``JoinParams``.  Pure functions
of the request: a malformed one raises ``Malformed`` with the reason.
"""

from __future__ import annotations

import binascii
import zlib
from typing import Any

import msgspec
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from livekit.protocol import models, rtc
from livekit.protocol import room as room_pb

from edgedispatch.errors import Malformed, PermissionDenied

#: A v1 join request inflates to at most this (a real one is ~15 kB of SDP):
#: a gzip bomb in a URL must not cost the server memory.
MAX_JOIN_REQUEST = 256 * 1024


class JoinParams(msgspec.Struct, frozen=True):
    single_pc: bool  #: v1: one peer connection, the client always offers
    auto_subscribe: bool = True
    #: The client asks to resume a session (``reconnect=1``): aiortc cannot
    #: restart ICE, so it is told to rejoin instead.
    reconnect: bool = False
    sdk: str = ""
    sdk_version: str = ""
    protocol: int = 0
    client_protocol: int = 0
    #: v1: the publisher PC's first offer, answered right after the join.
    offer_sdp: str = ""
    offer_id: int = 0
    room: str = ""  #: an explicit ``room=`` in the query (LiveKit's lk CLI sends it)


def _flag(query: dict[str, str], name: str, default: bool) -> bool:
    value = query.get(name)
    return default if value is None else value.lower() in ("1", "true")


def _int(query: dict[str, str], name: str) -> int:
    try:
        return int(query.get(name) or 0)
    except ValueError:
        raise Malformed(f"query parameter {name!r} is not a number") from None


def parse_join(path: str, query: dict[str, str]) -> JoinParams:
    """``query``: the decoded query parameters (first value of each)."""
    room = query.get("room", "")
    if path.rstrip("/").endswith("/v1"):
        wrapped = query.get("join_request", "")
        if not wrapped:
            raise Malformed("/rtc/v1 needs a join_request parameter")
        req = decode_join_request(wrapped)
        info = req.client_info
        settings = req.connection_settings
        return JoinParams(
            single_pc=True,
            auto_subscribe=settings.auto_subscribe if req.HasField("connection_settings") else True,
            reconnect=req.reconnect,
            sdk=rtc_sdk_name(info.sdk),
            sdk_version=info.version,
            protocol=info.protocol,
            client_protocol=info.client_protocol,
            offer_sdp=req.publisher_offer.sdp,
            offer_id=req.publisher_offer.id,
            room=room,
        )
    return JoinParams(
        single_pc=False,
        auto_subscribe=_flag(query, "auto_subscribe", True),
        reconnect=_flag(query, "reconnect", False),
        sdk=query.get("sdk", ""),
        sdk_version=query.get("version", ""),
        protocol=_int(query, "protocol"),
        client_protocol=_int(query, "client_protocol"),
        room=room,
    )


def decode_join_request(wrapped_b64: str) -> rtc.JoinRequest:
    try:
        padded = wrapped_b64.encode("ascii").translate(_FROM_URLSAFE)
        raw = binascii.a2b_base64(padded + b"=" * (-len(padded) % 4), strict_mode=True)
        wrapped = rtc.WrappedJoinRequest.FromString(raw)
    except (binascii.Error, ValueError, DecodeError):
        raise Malformed("join_request is not a base64url WrappedJoinRequest") from None
    data = wrapped.join_request
    if not data:
        raise Malformed("join_request carries no JoinRequest")
    if wrapped.compression == rtc.WrappedJoinRequest.GZIP:
        inflate = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            data = inflate.decompress(data, MAX_JOIN_REQUEST)
        except zlib.error:
            raise Malformed("join_request is not valid gzip") from None
        if inflate.unconsumed_tail:
            raise Malformed(f"join_request inflates to over {MAX_JOIN_REQUEST} bytes")
    elif wrapped.compression != rtc.WrappedJoinRequest.NONE:
        raise Malformed(f"unknown join_request compression {wrapped.compression}")
    try:
        return rtc.JoinRequest.FromString(data)
    except DecodeError:
        raise Malformed("join_request does not hold a JoinRequest") from None


_FROM_URLSAFE = bytes.maketrans(b"-_", b"+/")


def rtc_sdk_name(sdk: int) -> str:
    try:
        return str(models.ClientInfo.SDK.Name(sdk)).lower()
    except ValueError:
        return str(sdk)


#: A token's ``kind`` -> LiveKit's ParticipantInfo.Kind.
KINDS = {"": 0, "standard": 0, "ingress": 1, "egress": 2, "sip": 3, "agent": 4}
#: canPublishSources names -> TrackSource numbers.
SOURCES = {"camera": 1, "microphone": 2, "screen_share": 3, "screen_share_audio": 4}


class Grant(msgspec.Struct, frozen=True):
    """What a participant's token lets it be and do in its room."""

    room: str
    identity: str
    name: str = ""
    kind: int = 0
    metadata: str = ""
    attributes: dict[str, str] = msgspec.field(default_factory=dict)
    can_publish: bool = True
    can_subscribe: bool = True
    can_publish_data: bool = True
    #: TrackSource numbers it may publish; empty: any.
    can_publish_sources: tuple[int, ...] = ()
    can_update_metadata: bool = False
    hidden: bool = False
    #: The token's ``roomConfig`` (a RoomConfiguration), used when its join
    #: creates the room, and for its ``agents``.
    room_config: room_pb.RoomConfiguration | None = None

    def permission(self) -> models.ParticipantPermission:
        return models.ParticipantPermission(
            can_subscribe=self.can_subscribe,
            can_publish=self.can_publish,
            can_publish_data=self.can_publish_data,
            can_publish_sources=list(self.can_publish_sources),  # type: ignore[arg-type]
            hidden=self.hidden,
            can_update_metadata=self.can_update_metadata,
            agent=self.kind == KINDS["agent"],
        )


def _bool(video: dict[str, Any], name: str, default: bool) -> bool:
    value = video.get(name)
    return value if isinstance(value, bool) else default


def join_grant(raw: dict[str, Any], video: dict[str, Any], identity: str) -> Grant:
    """The grant of a verified token's claims (``raw``; ``video`` its video
    grant).  Raises PermissionDenied when it does not allow joining a room."""
    if video.get("roomJoin") is not True:
        raise PermissionDenied("token lacks the grant roomJoin")
    room = video.get("room")
    if not isinstance(room, str) or not room:
        raise PermissionDenied("token names no room")
    if not identity:
        raise PermissionDenied("token has no identity (sub)")
    kind = KINDS.get(str(raw.get("kind") or ""), 0)
    sources = video.get("canPublishSources")
    if not isinstance(sources, list):
        sources = []  # (a number here raised TypeError: the join got a 500)
    attributes = raw.get("attributes") or {}
    config = raw.get("roomConfig")
    room_config = None
    if isinstance(config, dict):
        try:
            room_config = json_format.ParseDict(
                config, room_pb.RoomConfiguration(), ignore_unknown_fields=True
            )
        except json_format.ParseError as exc:
            raise Malformed(f"token roomConfig is not a RoomConfiguration: {exc}") from None
    return Grant(
        room=room,
        identity=identity,
        name=str(raw.get("name") or ""),
        kind=kind,
        metadata=str(raw.get("metadata") or ""),
        attributes={str(k): str(v) for k, v in attributes.items()}
        if isinstance(attributes, dict)
        else {},
        can_publish=_bool(video, "canPublish", True),
        can_subscribe=_bool(video, "canSubscribe", True),
        can_publish_data=_bool(video, "canPublishData", True),
        can_publish_sources=tuple(
            SOURCES[s] for s in sources if isinstance(s, str) and s in SOURCES
        ),
        can_update_metadata=_bool(video, "canUpdateOwnMetadata", False),
        hidden=_bool(video, "hidden", False),
        room_config=room_config,
    )


def subscription_track_sids(msg: Any) -> list[str]:
    """The track sids of a subscription change, given one by one or by
    participant (the client's UpdateSubscription, RoomService's
    UpdateSubscriptionsRequest)."""
    return list(msg.track_sids) + [sid for pt in msg.participant_tracks for sid in pt.track_sids]
