"""An unmodified livekit-agents worker, as a user would write one.

Driven by environment variables set by the tests:
  EDT_OUT    folder where each job writes <job id>.json with what it saw
  EDT_AGENT  the agent name it registers (default "test-agent")
  EDT_MODE   record (default): record and shut down; sleep: record, then
             run until terminated; reject: decline every job (terminate=False)
"""

import asyncio
import json
import os
from pathlib import Path

from livekit.agents import AgentServer, JobContext, JobRequest, cli

OUT = Path(os.environ.get("EDT_OUT", "."))
MODE = os.environ.get("EDT_MODE", "record")

# The default load gate reads whole-machine CPU; a busy test box would make
# the worker refuse work, so the tests pin the load.
server = AgentServer(load_fnc=lambda: 0.0, load_threshold=0.9, num_idle_processes=1, port=0)


async def on_request(req: JobRequest) -> None:
    if MODE == "reject":
        await req.reject(terminate=False)
    else:
        await req.accept(attributes={"seen.by": "py-agent"})


@server.rtc_session(agent_name=os.environ.get("EDT_AGENT", "test-agent"), on_request=on_request)
async def entrypoint(ctx: JobContext) -> None:
    job = ctx.job
    record = {
        "job_id": job.id,
        "dispatch_id": job.dispatch_id,
        "agent_name": job.agent_name,
        "room": job.room.name,
        "room_sid": job.room.sid,
        "ctx_room": ctx.room.name,
        "metadata": job.metadata,
        "attributes": dict(job.attributes),
        "claims": ctx.token_claims().__dict__ if hasattr(ctx, "token_claims") else {},
        "identity": ctx.token_claims().identity,
        "url": ctx._info.url,
        "pid": os.getpid(),
        "worker_pid": os.getppid(),
    }
    tmp = OUT / f".{job.id}.tmp"
    tmp.write_text(json.dumps(record, default=str))
    tmp.rename(OUT / f"{job.id}.json")
    if MODE == "sleep":
        await asyncio.sleep(3600)
    ctx.shutdown()


if __name__ == "__main__":
    cli.run_app(server)
