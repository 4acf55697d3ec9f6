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
    ctx.shutdown()
