"""One tenant's burst does not hold up another tenant's jobs: a tenant's
jobs queue for its own workers only, so another tenant's next job waits for
nothing but its own queue, even while 10,000 dispatches arrive and wait."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable

import pytest
from livekit import api
from livekit.protocol import agent, agent_dispatch

from edgedispatch._testbase.fake_worker import FakeWorker
from edgedispatch.cli.bench.common import read_response
from edgedispatch.wire.tokens import sign_hs256

from .conftest import ServerThread
from .test_worker_protocol import run

pytestmark = [pytest.mark.slow, pytest.mark.once]

TENANTS = {"acme": {"acme-key": "acme-secret"}, "globex": {"globex-key": "globex-secret"}}
BURST = 10_000
PATH = "/twirp/livekit.AgentDispatchService/CreateDispatch"


def acme_request(room: str, seq: int) -> bytes:
    now = int(time.time())
    token = sign_hs256(
        {
            "iss": "acme-key",
            "nbf": now,
            "exp": now + 600,
            "video": {"roomAdmin": True, "room": room},
        },
        "acme-secret",
    )
    body = agent_dispatch.CreateAgentDispatchRequest(
        agent_name="bot", room=room, metadata=str(seq)
    ).SerializeToString()
    head = (
        f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/protobuf\r\n"
        f"Authorization: Bearer {token}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def burst(port: int, count: int, connections: int = 8) -> int:
    """``count`` CreateDispatch calls from acme over keep-alive connections;
    returns how many were answered 200."""
    requests = [acme_request(f"acme-{i % 16}", i) for i in range(count)]
    answered = 0

    async def connection(mine: list[bytes]) -> None:
        nonlocal answered
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for request in mine:
            writer.write(request)
            head, _ = await read_response(reader)
            answered += head.startswith(b"HTTP/1.1 200")
        writer.close()

    await asyncio.gather(*(connection(requests[i::connections]) for i in range(connections)))
    return answered


def test_a_burst_from_one_tenant_does_not_delay_another_tenants_next_job(
    start_server: Callable[..., ServerThread],
) -> None:
    srv = start_server(tenants=TENANTS, dispatch={"agent_slots": {"bot": 1}})

    async def main() -> None:
        # acme's only worker has one slot and keeps its job: acme's burst queues.
        acme_worker = FakeWorker(srv.url, "acme-key", "acme-secret", agent_name="bot")
        await acme_worker.connect()
        # globex's worker has one slot too, and ends each job at once.
        globex_worker = FakeWorker(srv.url, "globex-key", "globex-secret", agent_name="bot")
        assigned_at: dict[str, float] = {}

        def on_assignment(a: agent.JobAssignment) -> None:
            assigned_at[a.job.metadata] = time.monotonic()
            asyncio.get_running_loop().create_task(
                globex_worker.job_status(a.job.id, agent.JS_SUCCESS)
            )

        globex_worker.on_assignment = on_assignment
        await globex_worker.connect()

        async with api.LiveKitAPI(srv.url, "globex-key", "globex-secret") as globex:

            async def globex_job(tag: str) -> float:
                """Seconds from CreateDispatch to the job's assignment."""
                t0 = time.monotonic()
                await globex.agent_dispatch.create_dispatch(
                    api.CreateAgentDispatchRequest(agent_name="bot", room="g", metadata=tag)
                )
                await globex_worker.wait_for(lambda: tag in assigned_at, timeout=10)
                return assigned_at[tag] - t0

            alone = [await globex_job(f"alone-{i}") for i in range(10)]
            flood = asyncio.get_running_loop().create_task(burst(srv.server.port, BURST))
            during: list[float] = []
            while not flood.done():
                during.append(await globex_job(f"during-{len(during)}"))
                await asyncio.sleep(0.05)
            answered = await flood

        assert answered == BURST
        queued = srv.call(lambda: srv.domain.agent_jobs("acme", "bot"))
        assert queued == (BURST, BURST - 1)  # all of acme's wait for its one slot
        assert len(during) >= 5  # globex asked all through the burst
        # globex's jobs went out as they came: behind nothing of acme's.  The
        # two share one event loop, so the HTTP calls wait their turn; that
        # is all (10,000 jobs ahead would be a wait with no end here).
        assert max(during) < 1.0, (statistics.median(alone), during)
        await FakeWorker.close_all()

    run(main())
