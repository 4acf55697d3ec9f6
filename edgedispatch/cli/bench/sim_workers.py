"""Simulated agent workers for ``bench dispatch``: one process, many workers,
each speaking the real protobuf protocol over its own WebSocket.

Each reports JS_RUNNING as soon as the assignment arrives (recording when,
on the system-wide monotonic clock), and JS_SUCCESS after ``--hold``
seconds.  Prints ``ready`` once every worker is registered, and on SIGTERM
prints one JSON line: {"running_at": {metadata: monotonic time of
JS_RUNNING}, "declines": n}.

By default each accepts every job and reports load 0 once.  With
``--load-per-job L`` each reports load ``L x running jobs`` (and the count)
every ``--report-interval`` seconds, from a random phase, as livekit-agents
workers do; with ``--gate G`` it also declines an offer, and reports FULL,
while its load is G or more (livekit-agents' default gate, on its current
jobs rather than its last sample: the harder case for the server).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import json
import random
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

    running = {id(w): 0 for w in workers}
    declines = 0
    gate: float | None = args.gate if args.gate > 0 else None
    per_job: float = args.load_per_job

    def load(w: FakeWorker) -> float:
        return min(1.0, per_job * running[id(w)])

    def accept(w: FakeWorker) -> bool:
        nonlocal declines
        if gate is not None and load(w) >= gate:
            declines += 1
            return False
        return True

    async def report(w: FakeWorker) -> None:
        await asyncio.sleep(random.uniform(0, args.report_interval))
        while True:
            full = gate is not None and load(w) >= gate
            status = agent.WS_FULL if full else agent.WS_AVAILABLE
            await w.update(status=status, load=load(w), job_count=running[id(w)])
            await asyncio.sleep(args.report_interval)

    def ended(w: FakeWorker, job_id: str) -> None:
        running[id(w)] -= 1
        loop.create_task(w.job_status(job_id, agent.JS_SUCCESS))

    def on_assignment(worker: FakeWorker, assignment: agent.JobAssignment) -> None:
        job = assignment.job
        running_at[job.metadata] = time.monotonic()
        running[id(worker)] += 1
        loop.create_task(worker.job_status(job.id, agent.JS_RUNNING))
        loop.call_later(args.hold, ended, worker, job.id)

    reporters = []
    for start in range(0, len(workers), 200):  # connect in waves
        batch = workers[start : start + 200]
        await asyncio.gather(*(w.connect() for w in batch))
        for w in batch:
            w.on_assignment = lambda a, w=w: on_assignment(w, a)
            w.accept = functools.partial(lambda w, job: accept(w), w)
            await w.update(load=0.0)
            if args.load_per_job > 0:
                reporters.append(loop.create_task(report(w)))
    # No garbage collection while the load runs: a full collection here
    # stalled all of this process's workers for 40-60 ms, which the bench
    # then counted as the server's latency (the same instant in every run,
    # with the store and without).  A run is seconds long; its cycles wait.
    gc.freeze()
    gc.disable()
    print("ready", flush=True)
    await stop.wait()
    print(json.dumps({"running_at": running_at, "declines": declines}), flush=True)
    for w in workers:
        w.abort()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--agent-name", default="bench")
    parser.add_argument("--hold", type=float, default=0.5)
    parser.add_argument("--load-per-job", type=float, default=0.0)
    parser.add_argument("--report-interval", type=float, default=2.5)
    parser.add_argument("--gate", type=float, default=0.0)
    try:
        import uvloop

        uvloop.run(main(parser.parse_args()))
    except KeyboardInterrupt:
        sys.exit(0)
