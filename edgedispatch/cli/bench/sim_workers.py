"""Simulated agent workers for ``bench dispatch``: one process, many workers,
each speaking the real protobuf protocol over its own WebSocket.

Each accepts every job, reports JS_RUNNING as soon as the assignment arrives
(recording when, on the system-wide monotonic clock), and JS_SUCCESS after
``--hold`` seconds.  Prints ``ready`` once every worker is registered, and on
SIGTERM prints one JSON line: {metadata: monotonic time of JS_RUNNING}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time

from livekit.protocol import agent

from edgedispatch._testbase.fake_worker import FakeWorker
from edgedispatch.server import raise_fd_limit


async def main(args: argparse.Namespace) -> None:
    raise_fd_limit()
    running_at: dict[str, float] = {}
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    workers = [
        FakeWorker(args.url, agent_name=args.agent_name, report=False) for _ in range(args.count)
    ]

    def on_assignment(worker: FakeWorker, assignment: agent.JobAssignment) -> None:
        job = assignment.job
        running_at[job.metadata] = time.monotonic()
        loop.create_task(worker.job_status(job.id, agent.JS_RUNNING))
        loop.call_later(
            args.hold, lambda: loop.create_task(worker.job_status(job.id, agent.JS_SUCCESS))
        )

    for start in range(0, len(workers), 200):  # connect in waves
        batch = workers[start : start + 200]
        await asyncio.gather(*(w.connect() for w in batch))
        for w in batch:
            w.on_assignment = lambda a, w=w: on_assignment(w, a)
            await w.update(load=0.0)
    print("ready", flush=True)
    await stop.wait()
    print(json.dumps(running_at), flush=True)
    for w in workers:
        w.abort()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--agent-name", default="bench")
    parser.add_argument("--hold", type=float, default=0.5)
    try:
        import uvloop

        uvloop.run(main(parser.parse_args()))
    except KeyboardInterrupt:
        sys.exit(0)
