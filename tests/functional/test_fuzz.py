"""Fuzzed input against a real server, on both event loops: bursts of bad
Twirp bodies over HTTP, and a worker sending bad frames over /agent.  The
server answers each with a client's error (a Twirp code, a close code and
reason), stays up, and a well-behaved client and worker on it carry on:
their dispatches are made, their jobs assigned and left running."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.request
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest
from hypothesis import given
from hypothesis import strategies as st
from livekit import api
from livekit.protocol import agent
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from edgedispatch._testbase.fake_worker import FakeWorker, worker_token
from edgedispatch.api import agents as agents_api
from edgedispatch.wire import twirp
from tests.fuzzing import fuzz_settings, messages, mutated
from tests.unit.test_fuzz_agent_service import bodies as agent_bodies
from tests.unit.test_fuzz_agent_service import token as acme_admin_token
from tests.unit.test_fuzz_twirp import ENCODINGS, ROUTE_KEYS, ROUTES, json_body, room_of, token
from tests.unit.worker.test_fuzz_session import frames

from .conftest import ServerThread
from .test_twirp_api import post

#: What a client's bad frames close with: bad data, bad payload, a policy
#: broken, a message too big.
CLIENT_CLOSES = {1003, 1007, 1008, 1009}
T = TypeVar("T")
MAX_MESSAGE = 4096


def check_error(status: int, ctype: str, body: bytes) -> None:
    """Success, or a Twirp error of the client's (not a 5xx, not internal)."""
    if status == 200:
        return
    assert ctype == "application/json", (status, ctype, body[:200])
    error = json.loads(body)
    assert error["code"] in twirp.STATUS and error["code"] != "internal", error
    assert status == twirp.STATUS[error["code"]] < 500, error


#: The bystander's tenant; the fuzzer calls with the default tenant's key
#: (and acme's, for the AgentService), naming the bystander's room too.
TENANTS = {"acme": {"acmekey": "acmesecret"}, "other": {"otherkey": "othersecret"}}
#: Nobody joins the bystander's room: it must outlast a long run.
ROOMS = {"empty_timeout": 3600}


class ClientLoop:
    """The clients' event loop, in a thread of its own: the bystander keeps
    answering the server's keepalive pings while a burst is sent."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def close(self) -> None:
        self.run(FakeWorker.close_all())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@pytest.fixture
def clients() -> Iterator[ClientLoop]:
    loop = ClientLoop()
    yield loop
    loop.close()


class Bystander:
    """A well-behaved worker with a running job, and the client that made
    it, of another tenant than the fuzzer's."""

    def __init__(self, srv: ServerThread) -> None:
        self.srv = srv
        self.worker = FakeWorker(srv.url, "otherkey", "othersecret", agent_name="a")
        self.rooms = 0

    async def start(self) -> None:
        await self.worker.connect()
        await self.dispatch()

    async def dispatch(self) -> str:
        """A new dispatch is made, listed, and its job assigned to the worker."""
        self.rooms += 1
        room = f"bystander-{self.rooms}"
        async with api.LiveKitAPI(self.srv.url, "otherkey", "othersecret") as lk:
            d = await lk.agent_dispatch.create_dispatch(
                api.CreateAgentDispatchRequest(agent_name="a", room=room)
            )
            listed = await lk.room.list_rooms(api.ListRoomsRequest(names=[room]))
        assert [r.name for r in listed.rooms] == [room]
        await self.worker.wait_for(lambda: any(a.job.dispatch_id == d.id for a in self.assigned))
        return room

    @property
    def assigned(self) -> list[agent.JobAssignment]:
        return list(self.worker.assigned.values())

    async def check(self) -> None:
        """The server is up, the first job still runs untouched, and a new
        dispatch reaches the worker."""
        with urllib.request.urlopen(f"{self.srv.url}/healthz", timeout=5) as resp:
            assert resp.status == 200
        async with api.LiveKitAPI(self.srv.url, "otherkey", "othersecret") as lk:
            (first,) = await lk.agent_dispatch.list_dispatch("bystander-1")
        (job,) = first.state.jobs
        assert (job.state.status, job.state.error) == (agent.JS_RUNNING, "")
        assert job.state.worker_id == self.worker.worker_id
        room = await self.dispatch()
        # Its room goes, which ends the job: the worker's slots stay free
        # however many checks a long run makes.
        async with api.LiveKitAPI(self.srv.url, "otherkey", "othersecret") as lk:
            await lk.room.delete_room(api.DeleteRoomRequest(room=room))


@st.composite
def twirp_calls(draw: st.DrawFn) -> tuple[str, str, bytes, str]:
    """(method path, content type, body, token) of a fuzzed call."""
    if draw(st.integers(0, 5)) == 0:
        method = draw(st.sampled_from(["ListAgents", "AddAgent", "RemoveAgent", "StartAgent"]))
        return (
            f"{agents_api.SERVICE}/{method}",
            twirp.JSON,
            draw(agent_bodies()),
            acme_admin_token(),
        )
    route = draw(st.sampled_from(ROUTE_KEYS))
    encoding = draw(st.sampled_from(ENCODINGS))
    msg = draw(messages(ROUTES[route], ["bystander-1", "r1"]))
    if encoding == twirp.PROTOBUF:
        body = draw(mutated(msg.SerializeToString()))
    else:
        body = draw(json_body(msg))
    # A token for the request's room, unless that room name would take the
    # token over the 64 KiB a request head may have (the server's 413).
    room = room_of(msg)
    return f"{route[0]}/{route[1]}", encoding, body, token(room if len(room) < 1000 else "r1")


def test_a_burst_of_fuzzed_twirp_calls_spares_the_other_clients(
    start_server: Callable[..., ServerThread], clients: ClientLoop
) -> None:
    srv = start_server(tenants=TENANTS, room=ROOMS)
    bystander = Bystander(srv)
    clients.run(bystander.start())

    @given(st.lists(twirp_calls(), min_size=30, max_size=30))
    @fuzz_settings(5)
    def burst(calls: list[tuple[str, str, bytes, str]]) -> None:
        for method, ctype, body, tok in calls:
            check_error(*post(srv, method, body, tok, ctype))
        clients.run(bystander.check())

    burst()


async def fuzzed_worker(srv: ServerThread, sent: list[bytes | str]) -> tuple[int, str]:
    """Send the frames until the server closes; returns its code and reason."""
    async with connect(
        f"{srv.ws_url}/agent",
        additional_headers={"Authorization": f"Bearer {worker_token('devkey', 'secret')}"},
        max_size=None,
        ping_interval=None,
        compression=None,
    ) as ws:
        try:
            for frame in sent:
                await ws.send(frame)
            await asyncio.wait_for(ws.wait_closed(), 5)
        except ConnectionClosed:
            pass
        assert ws.close_code is not None
        return ws.close_code, ws.close_reason or ""


@pytest.fixture
def worker_server(start_server: Callable[..., ServerThread]) -> ServerThread:
    return start_server(server={"max_message_size": MAX_MESSAGE}, tenants=TENANTS, room=ROOMS)


def test_a_fuzzed_worker_is_closed_with_a_reason_and_the_other_keeps_its_jobs(
    worker_server: ServerThread, clients: ClientLoop
) -> None:
    srv = worker_server
    bystander = Bystander(srv)
    clients.run(bystander.start())
    register = agent.WorkerMessage(
        register=agent.RegisterWorkerRequest(type=agent.JT_ROOM, agent_name="a", version="1")
    ).SerializeToString()
    # What ends each connection if nothing before did: a text frame, a frame
    # over max_message_size, or bytes that are no WorkerMessage.
    enders: list[bytes | str] = ["not protobuf", b"\x00" * (MAX_MESSAGE + 1), b"\xff\xff"]

    @given(st.data(), st.sampled_from(enders))
    @fuzz_settings(8)
    def session(data: st.DataObject, ender: bytes | str) -> None:
        # Aimed at the bystander's running job too (frames() takes job ids
        # from pool[3:5]).
        job = bystander.assigned[0].job.id
        pool = ["a", "z", "bystander-1", job, job, bystander.worker.worker_id]
        sent: list[bytes | str] = [register]
        sent += data.draw(st.lists(frames(pool), max_size=6), label="frames")
        code, reason = clients.run(fuzzed_worker(srv, [*sent, ender]))
        assert code in CLIENT_CLOSES and reason, (code, reason)
        clients.run(bystander.check())

    session()
