"""A few cells of the authorisation matrix (tests/unit/test_authz_matrix.py)
through the real ``livekit-api`` client and a real server: what the SDK's
user sees for a missing grant, a wrong secret, a grant for another room,
and another tenant's room, dispatch and participants."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from livekit import api

from .conftest import ServerThread
from .test_worker_protocol import run

TENANTS = {"acme": {"acme-key": "acme-secret"}, "globex": {"globex-key": "globex-secret"}}


def _token(**grants: Any) -> str:
    return (
        api.AccessToken("acme-key", "acme-secret").with_grants(api.VideoGrants(**grants)).to_jwt()
    )


async def _refused(call: Awaitable[Any]) -> tuple[str, int]:
    with pytest.raises(api.TwirpError) as info:
        await call
    return info.value.code, info.value.status


def test_livekit_api_callers_get_what_their_grants_allow_and_never_another_tenants(
    start_server: Callable[..., ServerThread],
) -> None:
    srv = start_server(tenants=TENANTS)

    async def main() -> None:
        async with api.LiveKitAPI(srv.url, "globex-key", "globex-secret") as globex:
            room = await globex.room.create_room(api.CreateRoomRequest(name="g", metadata="mine"))
            made = await globex.agent_dispatch.create_dispatch(
                api.CreateAgentDispatchRequest(agent_name="bot", room="g", metadata="theirs")
            )
        # A valid key, without the grant: permission_denied (LiveKit says
        # unauthenticated for both; edgedispatch tells them apart).
        async with api.LiveKitAPI(srv.url, token=_token(room_create=True)) as lk:
            assert await _refused(lk.room.list_rooms(api.ListRoomsRequest())) == (
                "permission_denied",
                403,
            )
        async with api.LiveKitAPI(srv.url, token=_token(room_admin=True, room="a")) as lk:
            listing = lk.agent_dispatch.list_dispatch("g")  # roomAdmin for another room
            assert await _refused(listing) == ("permission_denied", 403)
        async with api.LiveKitAPI(srv.url, "acme-key", "not-the-secret") as lk:
            listing = lk.room.list_rooms(api.ListRoomsRequest())
            assert await _refused(listing) == ("unauthenticated", 401)
        # acme's own key, with every grant the SDK mints, on globex's names.
        async with api.LiveKitAPI(srv.url, "acme-key", "acme-secret") as acme:
            assert list((await acme.room.list_rooms(api.ListRoomsRequest(names=["g"]))).rooms) == []
            assert await acme.agent_dispatch.list_dispatch("g") == []
            update = api.UpdateRoomMetadataRequest(room="g", metadata="defaced")
            assert await _refused(acme.room.update_room_metadata(update)) == ("not_found", 404)
            people = acme.room.list_participants(api.ListParticipantsRequest(room="g"))
            assert await _refused(people) == ("not_found", 404)
            deleting = acme.agent_dispatch.delete_dispatch(made.id, "g")
            assert await _refused(deleting) == ("not_found", 404)
        async with api.LiveKitAPI(srv.url, "globex-key", "globex-secret") as globex:
            (kept,) = (await globex.room.list_rooms(api.ListRoomsRequest())).rooms
            assert (kept.sid, kept.metadata) == (room.sid, "mine")
            assert [d.id for d in await globex.agent_dispatch.list_dispatch("g")] == [made.id]

    run(main())
