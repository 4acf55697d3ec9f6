"""AgentDispatchService and RoomService over Twirp, with the official Python
client (protobuf) and raw HTTP (JSON, and bad input)."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from livekit import api
from livekit.protocol import agent

from edgedispatch._testbase.fake_worker import FakeWorker
from edgedispatch.cli.client import job_waits

from .conftest import ServerThread
from .test_worker_protocol import run


def token(secret: str = "secret", key: str = "devkey", ttl: int = 600, **video: Any) -> str:
    now = int(time.time())
    return jwt.encode(
        {"iss": key, "sub": "", "nbf": now, "exp": now + ttl, "video": video},
        secret,
        algorithm="HS256",
    )


def post(
    srv: ServerThread,
    method: str,
    body: bytes,
    tok: str,
    content_type: str = "application/json",
) -> tuple[int, str, bytes]:
    req = urllib.request.Request(
        f"{srv.url}/twirp/{method}",
        data=body,
        method="POST",
        headers={"Content-Type": content_type, "Authorization": f"Bearer {tok}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read()


CREATE = "livekit.AgentDispatchService/CreateDispatch"
ADMIN = {"roomAdmin": True, "room": "r1"}


def test_dispatch_lifecycle_with_the_python_client(
    start_server: Callable[..., ServerThread], loop_kind: str
) -> None:
    srv = start_server(loop_kind)

    async def main() -> None:
        async with api.LiveKitAPI(srv.url, "devkey", "secret") as lk:
            d = await lk.agent_dispatch.create_dispatch(
                api.CreateAgentDispatchRequest(
                    agent_name="a", room="r1", metadata="m", attributes={"x": "y"}
                )
            )
            assert d.agent_name == "a" and d.room == "r1" and d.state.created_at > 0
            rooms = await lk.room.list_rooms(api.ListRoomsRequest())
            assert [r.name for r in rooms.rooms] == ["r1"]  # CreateDispatch made the room
            got = await lk.agent_dispatch.get_dispatch(d.id, "r1")
            assert got is not None and got.metadata == "m" and dict(got.attributes) == {"x": "y"}
            deleted = await lk.agent_dispatch.delete_dispatch(d.id, "r1")
            assert deleted.id == d.id and deleted.state.deleted_at > 0
            assert await lk.agent_dispatch.list_dispatch("r1") == []
            with pytest.raises(api.TwirpError) as info:
                await lk.agent_dispatch.delete_dispatch(d.id, "r1")
            assert info.value.code == "not_found" and info.value.status == 404

    run(main())


def test_create_dispatch_is_idempotent_on_the_request_id(
    start_server: Callable[..., ServerThread],
) -> None:
    srv = start_server()
    body = json.dumps({"agentName": "a", "room": "r1"}).encode()
    tok = token(**ADMIN)
    req = urllib.request.Request(
        f"{srv.url}/twirp/{CREATE}",
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "Authorization": f"Bearer {tok}",
            "X-Livekit-Request-Id": "req-123",
        },
    )
    first = json.loads(urllib.request.urlopen(req, timeout=5).read())
    second = json.loads(urllib.request.urlopen(req, timeout=5).read())
    assert first["id"] == second["id"]
    assert srv.call(lambda: len(srv.domain.rooms.dispatches)) == 1


def test_json_encoding_answers_in_json(start_server: Callable[..., ServerThread]) -> None:
    srv = start_server()
    status, ctype, body = post(
        srv,
        CREATE,
        json.dumps(
            {"agentName": "a", "room": "r1", "metadata": "hi", "attributes": {"k": "v"}}
        ).encode(),
        token(**ADMIN),
        content_type="application/json;charset=UTF-8",
    )
    assert status == 200 and ctype == "application/json"
    out = json.loads(body)
    assert out["agentName"] == "a" and out["metadata"] == "hi" and out["attributes"] == {"k": "v"}
    assert out["state"]["jobs"][0]["id"].startswith("AJ_")
    # snake_case field names are accepted too
    status, _, body = post(
        srv, CREATE, json.dumps({"agent_name": "b", "room": "r1"}).encode(), token(**ADMIN)
    )
    assert status == 200 and json.loads(body)["agentName"] == "b"


@pytest.mark.parametrize(
    "tok, code, status",
    [
        (token("wrong-secret", roomAdmin=True, room="r1"), "unauthenticated", 401),
        (token(ttl=-600, roomAdmin=True, room="r1"), "unauthenticated", 401),
        (token(key="nokey", roomAdmin=True, room="r1"), "unauthenticated", 401),
        ("garbage", "unauthenticated", 401),
        (token(roomAdmin=True, room="other-room"), "permission_denied", 403),
        (token(roomCreate=True), "permission_denied", 403),
    ],
    ids=["wrong-secret", "expired", "unknown-key", "garbage", "other-room", "missing-grant"],
)
def test_auth_errors(
    start_server: Callable[..., ServerThread], tok: str, code: str, status: int
) -> None:
    srv = start_server()
    got, ctype, body = post(srv, CREATE, b'{"agentName":"a","room":"r1"}', tok)
    assert (got, ctype) == (status, "application/json")
    assert json.loads(body)["code"] == code
    assert srv.call(lambda: len(srv.domain.rooms.dispatches)) == 0


def test_the_python_client_sees_auth_errors(start_server: Callable[..., ServerThread]) -> None:
    srv = start_server()

    async def main() -> None:
        async with api.LiveKitAPI(srv.url, "devkey", "not-the-secret") as lk:
            with pytest.raises(api.TwirpError) as info:
                await lk.room.list_rooms(api.ListRoomsRequest())
        assert info.value.code == "unauthenticated" and info.value.status == 401

    run(main())


@pytest.mark.parametrize(
    "body, content_type, code",
    [
        (b"\xff\xff\xff", "application/protobuf", "malformed"),
        (b"{not json", "application/json", "malformed"),
        (b'{"agentName": 5}', "application/json", "malformed"),
        (b"{}", "text/plain", "bad_route"),
        (
            b'{"agentName":"a","room":"r1","restartPolicy":7}',
            "application/json",
            "invalid_argument",
        ),
        (
            b'{"agentName":"a","room":"r1","deployment":"a_b"}',
            "application/json",
            "invalid_argument",
        ),
        (
            json.dumps({"agentName": "a", "room": "r1", "metadata": "x" * 70000}).encode(),
            "application/json",
            "invalid_argument",
        ),
    ],
    ids=[
        "bad-protobuf",
        "bad-json",
        "wrong-type",
        "content-type",
        "restart-policy",
        "deployment",
        "metadata-size",
    ],
)
def test_malformed_requests(
    start_server: Callable[..., ServerThread], body: bytes, content_type: str, code: str
) -> None:
    srv = start_server()
    status, ctype, out = post(srv, CREATE, body, token(**ADMIN), content_type)
    assert ctype == "application/json" and json.loads(out)["code"] == code
    assert status in (400, 404)


def test_room_service(start_server: Callable[..., ServerThread]) -> None:
    srv = start_server()

    async def main() -> None:
        async with api.LiveKitAPI(srv.url, "devkey", "secret") as lk:
            room = await lk.room.create_room(
                api.CreateRoomRequest(
                    name="talk",
                    empty_timeout=30,
                    metadata="md",
                    agents=[api.RoomAgentDispatch(agent_name="a", metadata="from-room")],
                )
            )
            assert room.sid.startswith("RM_") and room.empty_timeout == 30
            again = await lk.room.create_room(api.CreateRoomRequest(name="talk"))
            assert again.sid == room.sid  # an existing room is returned as is
            (d,) = await lk.agent_dispatch.list_dispatch("talk")
            assert d.agent_name == "a" and d.metadata == "from-room"
            updated = await lk.room.update_room_metadata(
                api.UpdateRoomMetadataRequest(room="talk", metadata="new")
            )
            assert updated.metadata == "new"
            parts = await lk.room.list_participants(api.ListParticipantsRequest(room="talk"))
            assert list(parts.participants) == []
            listed = await lk.room.list_rooms(api.ListRoomsRequest(names=["talk", "nope"]))
            assert [r.name for r in listed.rooms] == ["talk"]
            await lk.room.delete_room(api.DeleteRoomRequest(room="talk"))
            assert list((await lk.room.list_rooms(api.ListRoomsRequest())).rooms) == []
            with pytest.raises(api.TwirpError) as info:
                await lk.room.delete_room(api.DeleteRoomRequest(room="talk"))
            assert info.value.code == "not_found"

    run(main())


def test_delete_room_terminates_its_running_jobs(start_server: Callable[..., ServerThread]) -> None:
    srv = start_server()

    async def main() -> None:
        w = FakeWorker(srv.url, agent_name="a")
        await w.connect()
        async with api.LiveKitAPI(srv.url, "devkey", "secret") as lk:
            await lk.room.create_room(
                api.CreateRoomRequest(name="talk", agents=[api.RoomAgentDispatch(agent_name="a")])
            )
            await w.wait_for(lambda: len(w.assigned) == 1)
            (job_id,) = w.assigned
            await lk.room.delete_room(api.DeleteRoomRequest(room="talk"))
            await w.wait_for(lambda: bool(w.terminated))
            assert w.terminated == [job_id]  # the room's running job, once
            rooms = await lk.room.list_rooms(api.ListRoomsRequest())
            assert [r.name for r in rooms.rooms] == []
            assert await lk.agent_dispatch.list_dispatch("talk") == []
        assert srv.call(lambda: job_id not in srv.domain.jobs.jobs)  # its record is gone

    run(main())


def test_an_empty_room_closes_after_its_empty_timeout(
    start_server: Callable[..., ServerThread],
) -> None:
    srv = start_server()

    async def main() -> None:
        w = FakeWorker(srv.url, agent_name="a")
        await w.connect()
        async with api.LiveKitAPI(srv.url, "devkey", "secret") as lk:
            await lk.room.create_room(
                api.CreateRoomRequest(
                    name="brief", empty_timeout=1, agents=[api.RoomAgentDispatch(agent_name="a")]
                )
            )
            await w.wait_for(lambda: len(w.assigned) == 1)
            await w.wait_for(lambda: len(w.terminated) == 1, timeout=3)
            assert list((await lk.room.list_rooms(api.ListRoomsRequest())).rooms) == []

    run(main())


def test_automatic_dispatch_to_unnamed_workers(start_server: Callable[..., ServerThread]) -> None:
    srv = start_server()

    async def main() -> None:
        named = FakeWorker(srv.url, agent_name="named")
        unnamed = FakeWorker(srv.url)
        await named.connect()
        await unnamed.connect()
        async with api.LiveKitAPI(srv.url, "devkey", "secret") as lk:
            await lk.room.create_room(api.CreateRoomRequest(name="auto"))
            await unnamed.wait_for(lambda: len(unnamed.assigned) == 1)
            # A room with an explicit dispatch gets no automatic one.
            await lk.room.create_room(
                api.CreateRoomRequest(
                    name="explicit", agents=[api.RoomAgentDispatch(agent_name="named")]
                )
            )
            await named.wait_for(lambda: len(named.assigned) == 1)
        await asyncio.sleep(0.2)
        assert len(unnamed.assigned) == 1
        (job,) = unnamed.assigned.values()
        assert job.job.room.name == "auto" and job.job.agent_name == ""

    run(main())


def test_drain_refuses_new_work(start_server: Callable[..., ServerThread]) -> None:
    srv = start_server()

    async def main() -> None:
        w = FakeWorker(srv.url, agent_name="a")
        await w.connect()
        srv.step(lambda d, now: d.begin_drain(now))
        status, _, body = post(srv, CREATE, b'{"agentName":"a","room":"r1"}', token(**ADMIN))
        assert status == 503 and json.loads(body)["code"] == "unavailable"
        await asyncio.sleep(0.2)
        assert w.received == []

    run(main())


def test_list_dispatch_tells_why_a_job_waits(start_server: Callable[..., ServerThread]) -> None:
    srv = start_server()

    async def main() -> None:
        w = FakeWorker(srv.url, agent_name="busy")
        await w.connect()
        await w.update(status=agent.WS_FULL)
        await asyncio.sleep(0.1)
        async with api.LiveKitAPI(srv.url, "devkey", "secret") as lk:
            await lk.agent_dispatch.create_dispatch(
                api.CreateAgentDispatchRequest(agent_name="busy", room="r1")
            )
            (d,) = await lk.agent_dispatch.list_dispatch("r1")
            waits = await job_waits(srv.url, "devkey", "secret", "r1")
        (job,) = d.state.jobs
        # LiveKit's JobState has no wait field: pending, and no error, which
        # a client would read as a failure.  edgedispatch's own call says why.
        assert (job.state.status, job.state.error) == (agent.JS_PENDING, "")
        assert job.state.reason == agent.JSR_UNSPECIFIED
        assert "every worker for agent 'busy' is full" in waits[job.id]

    run(main())


def test_deleted_rooms_leave_nothing_in_the_server(
    start_server: Callable[..., ServerThread],
) -> None:
    """Memory comes back: rooms created (each with a dispatch) and deleted
    through RoomService leave no record, job or rendered message behind."""
    from edgedispatch.wire import convert

    srv = start_server()
    sids: list[str] = []

    async def main() -> None:
        async with api.LiveKitAPI(srv.url, "devkey", "secret") as lk:
            for i in range(100):
                room = await lk.room.create_room(
                    api.CreateRoomRequest(
                        name=f"churn-{i}", agents=[api.RoomAgentDispatch(agent_name="a")]
                    )
                )
                sids.append(room.sid)
            for i in range(100):
                await lk.room.delete_room(api.DeleteRoomRequest(room=f"churn-{i}"))

    run(main())
    kept = srv.call(
        lambda: (
            len(srv.domain.rooms.rooms),
            len(srv.domain.rooms.dispatches),
            len(srv.domain.jobs.jobs),
            [sid for sid in sids if sid in convert._ROOMS],
        )
    )
    assert kept == (0, 0, 0, [])
