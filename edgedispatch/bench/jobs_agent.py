"""The native agent ``bench jobs`` runs (``edgedispatch.bench.jobs_agent:
entrypoint``): it records, on the monotonic clock all processes share, when
its entrypoint started.  ``lk_jobs_agent`` is the same as a livekit-agents app.
Kept free of heavy imports: every pool process imports it."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any


def record(job_id: str, metadata: str) -> None:
    started = time.monotonic()
    out = Path(os.environ["EDT_OUT"])
    tmp = out / f".{job_id}.tmp"
    tmp.write_text(f"{metadata} {started}")
    tmp.rename(out / f"{job_id}.t")  # whole, or not at all, when the bench looks


async def entrypoint(ctx: Any) -> None:
    record(ctx.job_id, ctx.metadata)
    ctx.shutdown()
