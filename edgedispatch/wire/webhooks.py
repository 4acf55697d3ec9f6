"""LiveKit's webhooks, as values: the ``WebhookEvent`` JSON body and the
token that signs it (``Authorization``, an HS256 JWT of the tenant's key
whose ``sha256`` claim is the body's digest, which ``livekit-api``'s
``WebhookReceiver`` checks).  Sans-IO: ``net.webhooks`` POSTs them.
"""

from __future__ import annotations

import base64
import hashlib

from google.protobuf import json_format
from livekit.protocol import models, webhook

from edgedispatch.dispatch import ids
from edgedispatch.wire.tokens import sign_hs256

CONTENT_TYPE = "application/webhook+json"
TOKEN_TTL = 600  #: seconds a webhook's token is valid (a retry signs afresh)
EVENT = "EV_"


def event_body(
    event: str,
    created_at: int,
    *,
    room: models.Room | None = None,
    participant: models.ParticipantInfo | None = None,
    track: models.TrackInfo | None = None,
) -> bytes:
    """The JSON body of one event (LiveKit's names: ``room_started``,
    ``room_finished``, ``participant_joined``, ``participant_left``,
    ``track_published``, ``track_unpublished``)."""
    msg = webhook.WebhookEvent(event=event, id=ids.new(EVENT), created_at=created_at)
    if room is not None:
        msg.room.CopyFrom(room)
    if participant is not None:
        msg.participant.CopyFrom(participant)
    if track is not None:
        msg.track.CopyFrom(track)
    return json_format.MessageToJson(msg, indent=None).encode()


def sign(body: bytes, api_key: str, secret: str, now_wall: float) -> str:
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    claims = {
        "iss": api_key,
        "nbf": int(now_wall),
        "exp": int(now_wall) + TOKEN_TTL,
        "sha256": digest,
    }
    return sign_hs256(claims, secret)
