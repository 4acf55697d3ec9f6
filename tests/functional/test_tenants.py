"""Tenants: each sees and touches only its own rooms, dispatches and workers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from livekit import api

from edgedispatch._testbase.fake_worker import FakeWorker

from .conftest import ServerThread
from .test_worker_protocol import run

TENANTS = {"acme": {"acme-key": "acme-secret"}, "globex": {"globex-key": "globex-secret"}}


def test_tenants_are_isolated(start_server: Callable[..., ServerThread]) -> None:
    srv = start_server(tenants=TENANTS)

    async def main() -> None:
        acme_worker = FakeWorker(srv.url, "acme-key", "acme-secret", agent_name="bot")
        globex_worker = FakeWorker(srv.url, "globex-key", "globex-secret", agent_name="bot")
        await acme_worker.connect()
        await globex_worker.connect()
        async with (
            api.LiveKitAPI(srv.url, "acme-key", "acme-secret") as acme,
            api.LiveKitAPI(srv.url, "globex-key", "globex-secret") as globex,
        ):
            a = await acme.agent_dispatch.create_dispatch(
                api.CreateAgentDispatchRequest(agent_name="bot", room="shared", metadata="acme")
            )
            g = await globex.agent_dispatch.create_dispatch(
                api.CreateAgentDispatchRequest(agent_name="bot", room="shared", metadata="globex")
            )
            # Each job went to its own tenant's worker, though the agent names match.
            await acme_worker.wait_for(lambda: len(acme_worker.assigned) == 1)
            await globex_worker.wait_for(lambda: len(globex_worker.assigned) == 1)
            await asyncio.sleep(0.1)
            (acme_job,) = acme_worker.assigned.values()
            (globex_job,) = globex_worker.assigned.values()
            assert acme_job.job.metadata == "acme" and globex_job.job.metadata == "globex"
            # The same room name is two rooms.
            assert acme_job.job.room.sid != globex_job.job.room.sid
            (acme_room,) = (await acme.room.list_rooms(api.ListRoomsRequest())).rooms
            (globex_room,) = (await globex.room.list_rooms(api.ListRoomsRequest())).rooms
            assert acme_room.sid == acme_job.job.room.sid
            assert globex_room.sid == globex_job.job.room.sid
            # Nobody sees or deletes the other's dispatches.
            assert [d.id for d in await globex.agent_dispatch.list_dispatch("shared")] == [g.id]
            assert await globex.agent_dispatch.get_dispatch(a.id, "shared") is None
            with pytest.raises(api.TwirpError) as info:
                await globex.agent_dispatch.delete_dispatch(a.id, "shared")
            assert info.value.code == "not_found"
            await globex.room.delete_room(api.DeleteRoomRequest(room="shared"))
            assert [d.id for d in await acme.agent_dispatch.list_dispatch("shared")] == [a.id]
            assert acme_worker.terminated == []
            await globex_worker.wait_for(lambda: len(globex_worker.terminated) == 1)

    run(main())


def test_the_default_tenant_keys_still_work(start_server: Callable[..., ServerThread]) -> None:
    srv = start_server(tenants=TENANTS)

    async def main() -> None:
        async with api.LiveKitAPI(srv.url, "devkey", "secret") as dev:
            await dev.room.create_room(api.CreateRoomRequest(name="mine"))
        async with api.LiveKitAPI(srv.url, "acme-key", "acme-secret") as acme:
            assert list((await acme.room.list_rooms(api.ListRoomsRequest())).rooms) == []

    run(main())


def test_a_tenant_over_its_quota_gets_resource_exhausted_naming_it(
    start_server: Callable[..., ServerThread],
) -> None:
    acme = {"keys": TENANTS["acme"], "max_queued": 2}
    srv = start_server(tenants={"acme": acme, "globex": TENANTS["globex"]})

    async def main() -> None:
        async with api.LiveKitAPI(srv.url, "acme-key", "acme-secret") as lk:
            for room in ("r1", "r2"):
                await lk.agent_dispatch.create_dispatch(
                    api.CreateAgentDispatchRequest(agent_name="a", room=room)
                )
            with pytest.raises(api.TwirpError) as info:
                await lk.agent_dispatch.create_dispatch(
                    api.CreateAgentDispatchRequest(agent_name="a", room="r3")
                )
            assert info.value.code == "resource_exhausted"
            assert "max_queued" in info.value.message
        async with api.LiveKitAPI(srv.url, "globex-key", "globex-secret") as lk:
            for room in ("r1", "r2", "r3"):  # its own queue: untouched
                await lk.agent_dispatch.create_dispatch(
                    api.CreateAgentDispatchRequest(agent_name="a", room=room)
                )

    run(main())
