"""The agents ``bench jobs`` runs: each records, on the monotonic clock all
processes share, when its entrypoint started.

Native: ``edgedispatch.bench.jobs_agent:entrypoint``.  As a livekit-agents
app: ``python -m edgedispatch.bench.jobs_agent start``."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any


def _record(job_id: str, metadata: str) -> None:
    started = time.monotonic()
    out = Path(os.environ["EDT_OUT"])
    (out / f"{job_id}.t").write_text(f"{metadata} {started}")


async def entrypoint(ctx: Any) -> None:
    _record(ctx.job_id, ctx.metadata)
    ctx.shutdown()


def main() -> None:
    from livekit.agents import AgentServer, JobContext, cli

    # Defaults, but for the load gate: it reads whole-machine CPU, and the
    # benchmark itself keeps the machine busy.
    server = AgentServer(load_fnc=lambda: 0.0, port=0)

    @server.rtc_session(agent_name=os.environ.get("EDT_AGENT", "bench-lk"))
    async def lk_entrypoint(ctx: JobContext) -> None:
        _record(ctx.job.id, ctx.job.metadata)
        ctx.shutdown()

    cli.run_app(server)


if __name__ == "__main__":
    main()
