"""The worker protocol at /agent, driven by scripted workers that speak the
real protobuf protocol over a real WebSocket, on both event loops."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

import jwt
import pytest
from livekit import api
from livekit.protocol import agent
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from edgedispatch._core.codes import JobState
from edgedispatch._testbase.fake_worker import FakeWorker, worker_token
from edgedispatch.worker import session as agent_ws

from .conftest import ServerThread


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a test's client side; close every worker it left open."""

    async def main() -> Any:
        try:
            return await coro
        finally:
            await FakeWorker.close_all()

    return asyncio.run(main())


async def dispatch(srv: ServerThread, agent_name: str, room: str = "room1", **kw: Any) -> Any:
    async with api.LiveKitAPI(srv.url, "devkey", "secret") as lk:
        return await lk.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(agent_name=agent_name, room=room, **kw)
        )


async def list_jobs(srv: ServerThread, room: str = "room1") -> list[Any]:
    async with api.LiveKitAPI(srv.url, "devkey", "secret") as lk:
        dispatches = await lk.agent_dispatch.list_dispatch(room)
    return [j for d in dispatches for j in d.state.jobs]


def kinds(worker: FakeWorker) -> list[str | None]:
    return [m.WhichOneof("message") for m in worker.received]


def test_register_assign_and_token(
    start_server: Callable[..., ServerThread], loop_kind: str
) -> None:
    srv = start_server(loop_kind, server={"public_url": "ws://sfu.example.internal:7880"})

    async def main() -> None:
        w = FakeWorker(srv.url, agent_name="alpha")
        worker_id = await w.connect()
        assert worker_id.startswith("AW_")
        d = await dispatch(srv, "alpha", metadata='{"k": 1}', attributes={"a": "b"})
        assert d.id.startswith("AD_")
        await w.wait_for(lambda: len(w.assigned) == 1)
        assert kinds(w) == ["availability", "assignment"]
        job = w.received[0].availability.job
        assert job.id.startswith("AJ_") and job.dispatch_id == d.id
        assert job.room.name == "room1" and job.room.sid.startswith("RM_")
        assert job.metadata == '{"k": 1}' and dict(job.attributes) == {"a": "b"}
        assert job.agent_name == "alpha" and job.state.worker_id == worker_id
        assignment = w.assigned[job.id]
        assert assignment.url == "ws://sfu.example.internal:7880"
        claims = jwt.decode(assignment.token, "secret", algorithms=["HS256"])
        assert claims["iss"] == "devkey" and claims["sub"] == f"agent-{job.id}"
        assert claims["kind"] == "agent"
        assert claims["video"]["room"] == "room1" and claims["video"]["roomJoin"] is True
        assert claims["video"]["agent"] is True
        assert claims["attributes"] == {"lk.agent.name": "alpha", "lk.agent_name": "alpha"}
        assert claims["exp"] - claims["nbf"] == 3600
        await w.wait_for(lambda: True)
        jobs = await list_jobs(srv)
        assert [j.state.status for j in jobs] == [agent.JS_RUNNING]
        await w.close()

    run(main())


def test_reject_goes_to_the_next_worker(start_server: Callable[..., ServerThread]) -> None:
    srv = start_server()

    async def main() -> None:
        no = FakeWorker(srv.url, agent_name="a", accept=lambda job: False)
        yes = FakeWorker(srv.url, agent_name="a")
        await no.connect()
        await yes.connect()
        await yes.update(load=0.5)  # "no" is less loaded, so it is asked first
        await asyncio.sleep(0.1)
        await dispatch(srv, "a")
        await yes.wait_for(lambda: len(yes.assigned) == 1)
        assert kinds(no) == ["availability"]
        await no.close()
        await yes.close()

    run(main())


def test_a_declined_job_is_offered_again_to_the_only_worker(
    start_server: Callable[..., ServerThread],
) -> None:
    # LiveKit drops a job every worker declined; here a decline means "not
    # now" (livekit-agents declines while its reserved slots look full): the
    # job waits, and goes to the worker again at its next status report.
    srv = start_server(dispatch={"retry_base": 0.2})

    async def main() -> None:
        answers = iter([False, False, True])
        w = FakeWorker(srv.url, agent_name="a", accept=lambda job: next(answers))
        await w.connect()
        await dispatch(srv, "a")
        for n in (1, 2):
            await w.wait_for(lambda n=n: kinds(w).count("availability") == n)
            await asyncio.sleep(0.3)
            assert kinds(w).count("availability") == n  # no timer sends it again
            await w.update(load=0.0)  # its periodic report: room again
        await w.wait_for(lambda: len(w.assigned) == 1)
        assert kinds(w) == ["availability"] * 3 + ["assignment"]
        jobs = await list_jobs(srv)
        assert jobs[0].state.status == agent.JS_RUNNING
        await w.close()

    run(main())


def test_reject_with_terminate_ends_the_job(start_server: Callable[..., ServerThread]) -> None:
    srv = start_server()

    async def main() -> None:
        w = FakeWorker(srv.url, agent_name="a", accept=lambda job: None)
        other = FakeWorker(srv.url, agent_name="a")
        await w.connect()
        await other.connect()
        await other.update(load=0.5)
        await asyncio.sleep(0.1)
        await dispatch(srv, "a")
        await w.wait_for(lambda: len(w.received) == 1)
        await w.answer(w.received[0].availability.job.id, available=False, terminate=True)
        await asyncio.sleep(0.3)
        assert other.received == []  # LiveKit: "will not be assigned to another worker"
        (job,) = await list_jobs(srv)
        assert job.state.status == agent.JS_CANCELLED and "rejected" in job.state.error

    run(main())


def test_a_dispatch_waits_for_its_first_worker(start_server: Callable[..., ServerThread]) -> None:
    srv = start_server()

    async def main() -> None:
        await dispatch(srv, "late-agent")
        (job,) = await list_jobs(srv)
        assert (job.state.status, job.state.error) == (agent.JS_PENDING, "")
        w = FakeWorker(srv.url, agent_name="late-agent")
        await w.connect()
        await w.wait_for(lambda: len(w.assigned) == 1)
        await w.close()

    run(main())


def test_queue_deadline_fails_with_no_capacity(start_server: Callable[..., ServerThread]) -> None:
    srv = start_server(dispatch={"queue_timeout": 0.3})

    async def main() -> None:
        await dispatch(srv, "nobody")
        await asyncio.sleep(0.6)
        (job,) = await list_jobs(srv)
        assert job.state.status == agent.JS_FAILED
        assert job.state.reason == agent.JSR_NO_CAPACITY

    run(main())


def test_a_crashed_workers_job_is_redispatched(start_server: Callable[..., ServerThread]) -> None:
    srv = start_server(dispatch={"reclaim_grace": 0.3})

    async def main() -> None:
        first = FakeWorker(srv.url, agent_name="a")
        await first.connect()
        await dispatch(srv, "a")
        await first.wait_for(lambda: len(first.assigned) == 1)
        (job_id,) = first.assigned
        second = FakeWorker(srv.url, agent_name="a")
        await second.connect()
        first.abort()
        await second.wait_for(lambda: job_id in second.assigned, timeout=5)
        (job,) = await list_jobs(srv)
        assert job.state.status == agent.JS_RUNNING and job.state.worker_id == second.worker_id
        await second.close()

    run(main())


def test_migrate_after_reconnect_keeps_the_job(start_server: Callable[..., ServerThread]) -> None:
    srv = start_server(dispatch={"reclaim_grace": 2.0})

    async def main() -> None:
        w = FakeWorker(srv.url, agent_name="a")
        await w.connect()
        d = await dispatch(srv, "a")
        await w.wait_for(lambda: len(w.assigned) == 1)
        (job_id,) = w.assigned
        await w.close()
        again = FakeWorker(srv.url, agent_name="a")
        await again.connect()
        msg = agent.WorkerMessage()
        msg.migrate_job.job_ids.append(job_id)
        await again.send(msg)
        await asyncio.sleep(2.5)  # past the grace: the claim must have held
        assert again.received == []
        (job,) = await list_jobs(srv)
        assert job.state.worker_id == again.worker_id
        async with api.LiveKitAPI(srv.url, "devkey", "secret") as lk:
            await lk.agent_dispatch.delete_dispatch(d.id, "room1")
        await again.wait_for(lambda: again.terminated == [job_id])
        await again.close()

    run(main())


def test_a_node_style_worker_reconnect_claims_its_jobs(
    start_server: Callable[..., ServerThread],
) -> None:
    """A worker that never reports job status (Node) sends no MigrateJob:
    its reconnect from the same place claims its jobs, so nothing runs twice."""
    srv = start_server(dispatch={"reclaim_grace": 0.5, "terminate_grace": 0.5})

    async def main() -> None:
        w = FakeWorker(srv.url, agent_name="n", report=False, version="1.9.0")
        await w.connect()
        d = await dispatch(srv, "n")
        await w.wait_for(lambda: len(w.assigned) == 1)
        (job_id,) = w.assigned
        w.abort()
        await asyncio.sleep(0.1)
        again = FakeWorker(srv.url, agent_name="n", report=False, version="1.9.0")
        await again.connect()
        await asyncio.sleep(1.0)
        assert again.received == []  # not offered again: it is still running
        async with api.LiveKitAPI(srv.url, "devkey", "secret") as lk:
            await lk.agent_dispatch.delete_dispatch(d.id, "room1")
        await again.wait_for(lambda: again.terminated == [job_id])
        await asyncio.sleep(0.8)  # no status ever comes: the grace ends it
        view = srv.call(lambda: srv.domain.core.worker(again.worker_id))
        assert view.used == 0
        await again.close()

    run(main())


def test_late_accept_never_gets_an_assignment(start_server: Callable[..., ServerThread]) -> None:
    # retry_base: the job is not offered to it again (a new round) before
    # its late answer to the first offer arrives.
    srv = start_server(dispatch={"offer_timeout": 0.3, "retry_base": 5.0})

    async def main() -> None:
        slow = FakeWorker(srv.url, agent_name="a", accept=lambda job: None)
        await slow.connect()
        await dispatch(srv, "a")
        await slow.wait_for(lambda: len(slow.received) == 1)
        await asyncio.sleep(0.5)
        await slow.answer(slow.received[0].availability.job.id, available=True)
        await asyncio.sleep(0.3)
        assert kinds(slow) == ["availability"]
        await slow.close()

    run(main())


def test_full_workers_and_slot_caps(start_server: Callable[..., ServerThread]) -> None:
    srv = start_server(dispatch={"agent_slots": {"capped": 2}})

    async def main() -> None:
        w = FakeWorker(srv.url, agent_name="capped", report=False)
        await w.connect()
        for room in ("r1", "r2", "r3"):
            await dispatch(srv, "capped", room=room)
        await w.wait_for(lambda: len(w.assigned) == 2)
        await asyncio.sleep(0.2)
        assert len(w.assigned) == 2  # its cap, though it keeps saying AVAILABLE
        full = FakeWorker(srv.url, agent_name="f")
        await full.connect()
        await full.update(status=agent.WS_FULL)
        await asyncio.sleep(0.1)
        await dispatch(srv, "f", room="r4")
        await asyncio.sleep(0.3)
        assert full.received == []
        await full.update(status=agent.WS_AVAILABLE, load=0.1)
        await full.wait_for(lambda: len(full.assigned) == 1)

    run(main())


def test_job_counts_per_agent_follow_the_job_states(
    start_server: Callable[..., ServerThread],
) -> None:
    # What on-demand agent servers scale on: kept as states change.
    srv = start_server(dispatch={"agent_slots": {"c": 1}, "queue_timeout": 1.0})

    def counts() -> tuple[tuple[int, int], tuple[int, int]]:
        def both() -> tuple[tuple[int, int], tuple[int, int]]:
            jobs = [j for j in srv.domain.jobs.jobs.values() if j.key.agent_name == "c"]
            live = sum(not j.state.terminal for j in jobs)
            queued = sum(j.state == JobState.QUEUED for j in jobs)
            return srv.domain.agent_jobs("", "c"), (live, queued)

        return srv.call(both)

    async def main() -> None:
        w = FakeWorker(srv.url, agent_name="c")
        await w.connect()
        for room in ("r1", "r2", "r3"):
            await dispatch(srv, "c", room=room)
        await w.wait_for(lambda: len(w.assigned) == 1)
        assert counts() == ((3, 2), (3, 2))
        await asyncio.sleep(1.3)  # the two queued ones pass their deadline
        assert counts() == ((1, 0), (1, 0))
        await w.job_status(next(iter(w.assigned)), agent.JS_SUCCESS)
        await asyncio.sleep(0.2)
        assert counts() == ((0, 0), (0, 0))

    run(main())


def test_pings_are_answered(start_server: Callable[..., ServerThread], loop_kind: str) -> None:
    srv = start_server(loop_kind)

    async def main() -> None:
        w = FakeWorker(srv.url)
        await w.connect()
        msg = agent.WorkerMessage()
        msg.ping.timestamp = 12345
        await w.send(msg)
        await w.wait_for(lambda: len(w.received) == 1)
        pong = w.received[0].pong
        assert pong.last_timestamp == 12345 and abs(pong.timestamp - time.time() * 1000) < 5000
        assert w.ws is not None
        await asyncio.wait_for(await w.ws.ping(), 2)  # WebSocket-level ping too
        await w.close()

    run(main())


def test_simulate_job_goes_to_the_asking_worker(start_server: Callable[..., ServerThread]) -> None:
    srv = start_server()

    async def main() -> None:
        w = FakeWorker(srv.url, agent_name="sim")
        await w.connect()
        msg = agent.WorkerMessage()
        msg.simulate_job.type = agent.JT_PUBLISHER
        msg.simulate_job.room.name = "sim-room"
        await w.send(msg)
        await w.wait_for(lambda: len(w.assigned) == 1)
        (assignment,) = w.assigned.values()
        assert assignment.job.room.name == "sim-room" and assignment.token

    run(main())


# ----------------------------------------------------------------------
# Bad input on /agent: the bad connection is closed with a reason; others go on.


async def raw_socket(srv: ServerThread) -> Any:
    auth = {"Authorization": f"Bearer {worker_token('devkey', 'secret')}"}
    return await connect(
        f"{srv.ws_url}/agent", max_size=None, compression=None, additional_headers=auth
    )


@pytest.mark.parametrize(
    "frame, code, reason",
    [
        ("hello", 1003, "text frames are not supported"),
        (b"\xff\xff\xff\xff garbage", 1007, "not a protobuf WorkerMessage"),
        (b"\x00" * (2 * 1024 * 1024 + 1), 1009, ""),
        (
            agent.WorkerMessage(ping=agent.WorkerPing(timestamp=1)).SerializeToString(),
            1008,
            "expected register first",
        ),
    ],
    ids=["text", "garbage", "oversize", "not-register-first"],
)
def test_bad_frames_close_only_that_connection(
    start_server: Callable[..., ServerThread], loop_kind: str, frame: Any, code: int, reason: str
) -> None:
    srv = start_server(loop_kind)

    async def main() -> None:
        good = FakeWorker(srv.url, agent_name="good")
        await good.connect()
        bad = await raw_socket(srv)
        await bad.send(frame)
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(bad.recv(), 5)
        assert info.value.rcvd is not None and info.value.rcvd.code == code
        assert reason in info.value.rcvd.reason
        await dispatch(srv, "good")
        await good.wait_for(lambda: len(good.assigned) == 1)
        await good.close()

    run(main())


def test_register_timeout(start_server: Callable[..., ServerThread], monkeypatch: Any) -> None:
    monkeypatch.setattr(agent_ws, "REGISTER_TIMEOUT", 0.3)
    srv = start_server()

    async def main() -> None:
        sock = await raw_socket(srv)
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(sock.recv(), 5)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1008
        assert "no register within" in info.value.rcvd.reason

    run(main())


def test_a_bad_registration_is_refused(start_server: Callable[..., ServerThread]) -> None:
    srv = start_server()

    async def main() -> None:
        sock = await raw_socket(srv)
        msg = agent.WorkerMessage()
        msg.register.deployment = "has_underscore"
        await sock.send(msg.SerializeToString())
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(sock.recv(), 5)
        assert info.value.rcvd is not None and "deployment" in info.value.rcvd.reason

    run(main())


@pytest.mark.parametrize(
    "token",
    [
        "",
        "not-a-jwt",
        worker_token("devkey", "wrong-secret"),
        worker_token("nokey", "secret"),
        worker_token("devkey", "secret", ttl=-3600),
        jwt.encode({"iss": "devkey", "video": {"roomJoin": True}}, "secret", algorithm="HS256"),
    ],
    ids=["none", "garbage", "wrong-secret", "unknown-key", "expired", "no-agent-grant"],
)
def test_workers_need_a_valid_agent_token(
    start_server: Callable[..., ServerThread], token: str
) -> None:
    srv = start_server()

    async def main() -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        with pytest.raises(InvalidStatus) as info:
            await connect(f"{srv.ws_url}/agent", additional_headers=headers)
        assert info.value.response.status_code == 401

    run(main())


def test_max_job_duration_ends_jobs_that_never_report(
    start_server: Callable[..., ServerThread],
) -> None:
    """Node workers never say a job ended: the maximum duration frees its slot."""
    srv = start_server(
        dispatch={"max_job_duration": 0.3, "terminate_grace": 0.3, "agent_slots": {"n": 1}}
    )

    async def main() -> None:
        w = FakeWorker(srv.url, agent_name="n", report=False)
        await w.connect()
        await dispatch(srv, "n", room="r1")
        await dispatch(srv, "n", room="r2")
        await w.wait_for(lambda: len(w.assigned) == 1)
        (first,) = w.assigned
        await w.wait_for(lambda: w.terminated == [first], timeout=3)
        await w.wait_for(lambda: len(w.assigned) == 2, timeout=3)  # the slot came back
        (job,) = await list_jobs(srv, "r1")
        assert job.state.status == agent.JS_CANCELLED
        assert "max_job_duration" in job.state.error

    run(main())


def test_a_silent_half_open_worker_is_dropped(start_server: Callable[..., ServerThread]) -> None:
    """A peer that stops answering pings (a dead host, a half-open TCP
    connection) is dropped, so its jobs can be re-dispatched."""
    srv = start_server(
        server={"ping_interval": 0.2, "ping_timeout": 0.3}, dispatch={"reclaim_grace": 0.1}
    )

    async def main() -> None:
        healthy = FakeWorker(srv.url, agent_name="a")
        await healthy.connect()
        auth = {"Authorization": f"Bearer {worker_token('devkey', 'secret')}"}
        # A client that never reads: it cannot answer pings.
        mute = await connect(f"{srv.ws_url}/agent", additional_headers=auth, ping_interval=None)
        msg = agent.WorkerMessage()
        msg.register.agent_name = "a"
        await mute.send(msg.SerializeToString())
        mute.transport.pause_reading()
        await asyncio.sleep(0.2)
        assert len(srv.call(lambda: srv.domain.workers.links)) == 2
        await asyncio.sleep(1.0)
        assert list(srv.call(lambda: srv.domain.workers.links)) == [healthy.worker_id]
        mute.transport.abort()

    run(main())
