"""Simulated agent workers for ``bench dispatch``: one process, many workers,
each speaking the real protobuf protocol over its own WebSocket
(``lean_worker``: a protocol object each, no task per message, so that the
load takes as little as it can of the cores the server shares with it).

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

from edgedispatch._testbase.fake_worker import worker_token
from edgedispatch.cli.bench.lean_worker import LeanWorker
from edgedispatch.config import DEV_KEY, DEV_SECRET
from edgedispatch.server import raise_fd_limit


async def main(args: argparse.Namespace) -> None:
    raise_fd_limit()
    running_at: dict[str, float] = {}
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    declines = 0
    gate: float | None = args.gate if args.gate > 0 else None
    per_job: float = args.load_per_job

    def load(w: LeanWorker) -> float:
        return min(1.0, per_job * w.running)

    def accept(w: LeanWorker, job: agent.Job) -> bool:
        nonlocal declines
        if gate is not None and load(w) >= gate:
            declines += 1
            return False
        return True

    def report(w: LeanWorker) -> None:
        full = gate is not None and load(w) >= gate
        w.update(agent.WS_FULL if full else agent.WS_AVAILABLE, load(w), w.running)
        loop.call_later(args.report_interval, report, w)

    def ended(w: LeanWorker, job_id: str) -> None:
        w.running -= 1
        w.job_status(job_id, agent.JS_SUCCESS)

    def assigned(w: LeanWorker, assignment: agent.JobAssignment) -> None:
        running_at[assignment.job.metadata] = time.monotonic()
        loop.call_later(args.hold, ended, w, assignment.job.id)

    host, port = args.url.removeprefix("http://").removeprefix("ws://").split(":")
    ws_url = f"ws://{host}:{port}"
    token = worker_token(DEV_KEY, DEV_SECRET)
    workers: list[LeanWorker] = []
    for start in range(0, args.count, 200):  # connect in waves
        batch = [
            LeanWorker(ws_url, token, args.agent_name, accept, assigned)
            for _ in range(start, min(args.count, start + 200))
        ]
        await asyncio.gather(
            *(loop.create_connection(functools.partial(_itself, w), host, int(port)) for w in batch)
        )
        await asyncio.gather(*(w.registered for w in batch))
        for w in batch:
            w.update(agent.WS_AVAILABLE, 0.0, 0)
            if per_job > 0:  # from a random phase, as livekit-agents' workers
                loop.call_later(random.uniform(0, args.report_interval), report, w)
        workers += batch
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


def _itself(worker: LeanWorker) -> LeanWorker:
    return worker


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
