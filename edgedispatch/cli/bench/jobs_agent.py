"""The native agent ``bench jobs`` runs (``edgedispatch.cli.bench.jobs_agent:
entrypoint``): it records when its entrypoint started, on both the monotonic
and the wall clock, then stays ``EDT_HOLD`` seconds, as a job in a room
would, so that a burst's starts are not measured among jobs ending.
``lk_jobs_agent`` is the same as a livekit-agents app.  Kept free of heavy
imports: every pool process imports it."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

_fd = -1


def record(job_id: str, metadata: str) -> None:
    started, wall = time.monotonic(), time.time()
    global _fd
    if _fd < 0:
        path = os.path.join(os.environ["EDT_OUT"], "started")
        _fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    # One short O_APPEND write: whole lines even with many writers.
    os.write(_fd, f"{metadata} {started} {wall}\n".encode())


def hold() -> float:
    return float(os.environ.get("EDT_HOLD", "0"))


async def entrypoint(ctx: Any) -> None:
    record(ctx.job_id, ctx.metadata)
    await asyncio.sleep(hold())
    ctx.shutdown()
