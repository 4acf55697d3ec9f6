"""One agent worker for ``bench faults``, in a process of its own so that
the fault suite can kill it with SIGKILL mid-job.

It speaks the real protobuf protocol and behaves as livekit-agents' worker
does where faults are concerned:
- it takes as many jobs as it has slots, reserving a slot when it accepts;
- it reports its load every ``--report-interval`` seconds;
- when its connection drops, its jobs keep running; it reconnects (with a
  short backoff) and claims them back with MigrateJob, and sends the status
  of jobs that ended while it was away;
- a JobTermination stops the job.

Faults on cue: SIGUSR1 cuts the connection for 1 to 8 s (a network cut
under 10 s); SIGUSR2 makes it answer its next offer only after the offer
timeout (a slow worker).

Every start and end of a job is appended to ``--log`` as one JSON line, with
``time.monotonic()`` (CLOCK_MONOTONIC, shared by every process), written
with one ``write`` on an O_APPEND descriptor: a record survives SIGKILL.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import time
from typing import Any

from livekit.protocol import agent
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

from edgedispatch._testbase.fake_worker import worker_token


class FaultWorker:
    def __init__(self, args: argparse.Namespace) -> None:
        self.url = args.url.replace("http://", "ws://").rstrip("/") + "/agent"
        self.agent_name: str = args.agent_name
        self.slots: int = args.slots
        self.hold: float = args.hold
        self.report_interval: float = args.report_interval
        self.slow_delay: float = args.slow_delay
        self._log = os.open(args.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.ws: ClientConnection | None = None
        self.running: dict[str, asyncio.TimerHandle] = {}  # job id -> its end
        self.dispatch_of: dict[str, str] = {}
        self.reserved: dict[str, float] = {}  # accepted, not yet assigned -> when
        self.unsent: list[agent.WorkerMessage] = []  # statuses while disconnected
        self.cut_until = 0.0
        self.slow_next = False

    def record(self, event: str, job_id: str, **more: Any) -> None:
        line = {"e": event, "job": job_id, "pid": os.getpid(), "t": time.monotonic(), **more}
        os.write(self._log, (json.dumps(line) + "\n").encode())

    # -- connection ------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, self.cut)
        loop.add_signal_handler(signal.SIGUSR2, self.slow)
        first = True
        while True:
            wait = self.cut_until - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                await self._session(first)
                first = False
            except (TimeoutError, OSError, WebSocketException):
                pass
            self.ws = None
            await asyncio.sleep(random.uniform(0.05, 0.25))

    async def _session(self, first: bool) -> None:
        token = worker_token("devkey", "secret")
        async with asyncio.timeout(5):
            ws = await connect(
                self.url,
                additional_headers={"Authorization": f"Bearer {token}"},
                compression=None,
                ping_interval=None,
            )
        try:
            msg = agent.WorkerMessage()
            msg.register.agent_name = self.agent_name
            msg.register.type = agent.JT_ROOM
            msg.register.version = "faults-1.0"
            await ws.send(msg.SerializeToString())
            async with asyncio.timeout(5):
                reply = agent.ServerMessage.FromString(await ws.recv())  # type: ignore[arg-type]
            if reply.WhichOneof("message") != "register":
                return
            self.ws = ws
            if self.running:  # claim back what ran on while we were away
                claim = agent.WorkerMessage()
                claim.migrate_job.job_ids.extend(self.running)
                await ws.send(claim.SerializeToString())
            unsent, self.unsent = self.unsent, []
            for pending in unsent:
                await ws.send(pending.SerializeToString())
            if first:
                print("ready", flush=True)
            reporter = asyncio.get_running_loop().create_task(self._report())
            try:
                async for data in ws:
                    self._handle(agent.ServerMessage.FromString(data))  # type: ignore[arg-type]
            finally:
                reporter.cancel()
        finally:
            self.ws = None
            ws.transport.abort()

    def cut(self) -> None:
        """SIGUSR1: the network goes away for a while, the jobs run on."""
        self.cut_until = time.monotonic() + random.uniform(1.0, 8.0)
        if self.ws is not None:
            self.ws.transport.abort()

    def slow(self) -> None:
        self.slow_next = True

    def send(self, msg: agent.WorkerMessage, keep: bool = False) -> None:
        """Send now, or (``keep``) once connected again."""
        if self.ws is not None:
            asyncio.get_running_loop().create_task(self._send(self.ws, msg))
        elif keep:
            self.unsent.append(msg)

    @staticmethod
    async def _send(ws: ClientConnection, msg: agent.WorkerMessage) -> None:
        try:
            await ws.send(msg.SerializeToString())
        except WebSocketException:
            pass

    async def _report(self) -> None:
        await asyncio.sleep(random.uniform(0, self.report_interval))
        while True:
            self.send(self._status())
            await asyncio.sleep(self.report_interval)

    def _status(self) -> agent.WorkerMessage:
        msg = agent.WorkerMessage()
        busy = len(self.running)
        msg.update_worker.status = agent.WS_FULL if busy >= self.slots else agent.WS_AVAILABLE
        msg.update_worker.load = min(1.0, busy / self.slots)
        msg.update_worker.job_count = busy
        return msg

    # -- jobs ------------------------------------------------------------

    def _handle(self, msg: agent.ServerMessage) -> None:
        kind = msg.WhichOneof("message")
        if kind == "availability":
            self._offered(msg.availability.job)
        elif kind == "assignment":
            self._start(msg.assignment.job)
        elif kind == "termination":
            self._stop(msg.termination.job_id)

    def _offered(self, job: agent.Job) -> None:
        now = time.monotonic()
        for job_id, at in list(self.reserved.items()):
            if now - at > 10.0:  # the assignment never came
                del self.reserved[job_id]
        take = len(self.running) + len(self.reserved) < self.slots
        if take:
            self.reserved[job.id] = now
        answer = agent.WorkerMessage()
        answer.availability.job_id = job.id
        answer.availability.available = take
        if take:
            answer.availability.participant_identity = f"agent-{job.id}"
        if self.slow_next and take:
            self.slow_next = False
            self.record("slow", job.id)
            asyncio.get_running_loop().call_later(self.slow_delay, self.send, answer)
        else:
            self.send(answer)

    def _start(self, job: agent.Job) -> None:
        self.reserved.pop(job.id, None)
        if job.id in self.running:
            return
        self.record("start", job.id, dispatch=job.dispatch_id, room=job.room.name)
        self.dispatch_of[job.id] = job.dispatch_id
        self.running[job.id] = asyncio.get_running_loop().call_later(self.hold, self._end, job.id)
        self.send(self._job_status(job.id, agent.JS_RUNNING))

    def _end(self, job_id: str) -> None:
        del self.running[job_id]
        self.record("end", job_id, dispatch=self.dispatch_of.pop(job_id))
        self.send(self._job_status(job_id, agent.JS_SUCCESS), keep=True)

    def _stop(self, job_id: str) -> None:
        timer = self.running.pop(job_id, None)
        if timer is not None:
            timer.cancel()
            self.record("stop", job_id, dispatch=self.dispatch_of.pop(job_id))
            self.send(self._job_status(job_id, agent.JS_SUCCESS), keep=True)

    @staticmethod
    def _job_status(job_id: str, status: int) -> agent.WorkerMessage:
        msg = agent.WorkerMessage()
        msg.update_job.job_id = job_id
        msg.update_job.status = status  # type: ignore[assignment]
        return msg


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--agent-name", default="faults")
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--hold", type=float, default=1.0)
    parser.add_argument("--report-interval", type=float, default=2.5)
    parser.add_argument("--slow-delay", type=float, default=2.0)
    parser.add_argument("--log", required=True)
    args = parser.parse_args()
    import uvloop

    try:
        uvloop.run(FaultWorker(args).run())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
