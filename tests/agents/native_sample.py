"""A native agent for the pool's tests (tests/unit/test_native_pool.py).

The job's metadata is JSON: ``out`` is a folder for the files the job
writes, ``mode`` what it does:

  record       write <job id>.json with what it saw, and return
  shutdown     record, then call ctx.shutdown() and wait to be cancelled
  raise        raise ValueError("boom")
  exit3        os._exit(3)
  sleep        write <job id>.started, sleep; on shutdown write <job id>.stopped
  ignore_term  like sleep, but ignore SIGTERM
  alloc        touch ``mb`` megabytes, then sleep
  output       print a line and write one to fd 2 with os.write
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

from edgedispatch.agent import JobContext

PREWARMED: list[int] = []  # pids prewarm ran in (one per process)


def prewarm() -> None:
    PREWARMED.append(os.getpid())


def not_async(ctx: JobContext) -> None:
    """Not a valid entrypoint: not a coroutine function."""


async def entrypoint(ctx: JobContext) -> None:
    started = time.monotonic()
    meta = json.loads(ctx.metadata)
    out = Path(meta["out"])
    mode = meta.get("mode", "record")
    record = {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "started": started,
        "prewarmed": list(PREWARMED),
        "job_id": ctx.job_id,
        "dispatch_id": ctx.dispatch_id,
        "room": ctx.room,
        "metadata": ctx.metadata,
        "attributes": ctx.attributes,
        "agent_name": ctx.agent_name,
        "url": ctx.url,
        "token": ctx.token,
    }
    if mode in ("record", "shutdown"):
        (out / f"{ctx.job_id}.json").write_text(json.dumps(record))
        if mode == "shutdown":
            ctx.shutdown("done")
            await asyncio.sleep(30)
    elif mode == "raise":
        raise ValueError("boom")
    elif mode == "exit3":
        os._exit(3)
    elif mode in ("sleep", "ignore_term"):
        if mode == "ignore_term":
            signal.signal(signal.SIGTERM, signal.SIG_IGN)

        async def stopped(reason: str) -> None:
            (out / f"{ctx.job_id}.stopped").write_text(reason)

        ctx.add_shutdown_callback(stopped)
        (out / f"{ctx.job_id}.started").write_text(str(os.getpid()))
        await asyncio.sleep(60)
    elif mode == "alloc":
        block = b"x" * (meta["mb"] << 20)  # written, so it is resident
        (out / f"{ctx.job_id}.started").write_text(str(len(block)))
        await asyncio.sleep(60)
    elif mode == "output":
        print(f"hello from {ctx.job_id}")
        os.write(2, f"raw fd 2 from {ctx.job_id}\n".encode())


def failing_prewarm() -> None:
    raise RuntimeError("no model")
