"""A native agent: ``entrypoint = "native_agent:entrypoint"``,
``prewarm = "native_agent:prewarm"``.  Records what it saw in EDT_OUT."""

import json
import os
from pathlib import Path

from edgedispatch.agent import JobContext

PREWARMED_IN: int | None = None


def prewarm() -> None:
    global PREWARMED_IN
    PREWARMED_IN = os.getpid()


async def entrypoint(ctx: JobContext) -> None:
    out = Path(os.environ["EDT_OUT"])
    record = {
        "job_id": ctx.job_id,
        "dispatch_id": ctx.dispatch_id,
        "room": ctx.room,
        "metadata": ctx.metadata,
        "attributes": ctx.attributes,
        "agent_name": ctx.agent_name,
        "url": ctx.url,
        "token": ctx.token,
        "pid": os.getpid(),
        "prewarmed_in": PREWARMED_IN,
    }
    (out / f".{ctx.job_id}.tmp").write_text(json.dumps(record))
    os.rename(out / f".{ctx.job_id}.tmp", out / f"{ctx.job_id}.json")
    print(f"native agent handled {ctx.job_id}", flush=True)
    if os.environ.get("EDT_MODE") == "connect":
        await converse(ctx, out)
    ctx.shutdown()


async def converse(ctx: JobContext, out: Path) -> None:
    """Join the room, greet it, and stay until the room is gone."""
    import asyncio

    async def ended(reason: str) -> None:
        # The room's close ends the job: the runtime cancels this entrypoint
        # and runs the shutdown callbacks.
        tmp = out / f".{ctx.job_id}.left.tmp"  # whole at once: a test reads it when it appears
        tmp.write_text(reason or "room closed")
        tmp.rename(out / f"{ctx.job_id}.left")

    ctx.add_shutdown_callback(ended)
    room = await ctx.connect()
    left = asyncio.get_running_loop().create_future()
    room.on("disconnected", lambda reason: left.done() or left.set_result(str(reason)))
    await room.local_participant.publish_data(f"native {ctx.job_id}".encode(), topic="greeting")
    await left
