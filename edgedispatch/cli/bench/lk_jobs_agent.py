"""``bench jobs``'s agent as an unmodified livekit-agents app:
``python -m edgedispatch.cli.bench.lk_jobs_agent start``.  Default settings but
for the load gate, which reads whole-machine CPU while the benchmark keeps
the machine busy."""

from __future__ import annotations

import asyncio
import os

from livekit.agents import AgentServer, JobContext, cli

from edgedispatch.cli.bench.jobs_agent import hold, record

server = AgentServer(load_fnc=lambda: 0.0, port=0)


@server.rtc_session(agent_name=os.environ.get("EDT_AGENT", "bench-lk"))
async def entrypoint(ctx: JobContext) -> None:
    record(ctx.job.id, ctx.job.metadata)
    await asyncio.sleep(hold())
    ctx.shutdown()


if __name__ == "__main__":
    cli.run_app(server)
