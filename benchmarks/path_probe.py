"""What one dispatch costs the server, counted: Python function calls,
transport writes (buffers handed to the kernel) and server CPU time, from
CreateDispatch to the job's JS_SUCCESS, with one worker that accepts each
job and reports it running and done.

Run it with the tree to measure on ``PYTHONPATH`` (it uses only what every
version of the server has: ``Server``, ``config.load`` and the fake
worker)::

    python benchmarks/path_probe.py [N]

The server runs in a thread with its own uvloop; only that thread is
profiled, so the client side is not counted.  Not part of the test run.

Instruction counts, which this noisy machine cannot disturb: run it under
callgrind with ``PATH_PROBE_NO_PROFILE=1`` for two values of N, and divide
the difference of the counts by the difference of the Ns (start-up and the
200 warm-up dispatches cancel out)::

    PATH_PROBE_NO_PROFILE=1 valgrind --tool=callgrind python benchmarks/path_probe.py 300
    PATH_PROBE_NO_PROFILE=1 valgrind --tool=callgrind python benchmarks/path_probe.py 600
"""

from __future__ import annotations

import asyncio
import cProfile
import os
import pstats
import sys
import threading
import time

import uvloop
from livekit.protocol import agent, agent_dispatch

from edgedispatch import config
from edgedispatch._testbase.fake_worker import FakeWorker
from edgedispatch.server import Server

PATH = "/twirp/livekit.AgentDispatchService/CreateDispatch"


def _token(room: str) -> str:
    import jwt

    now = int(time.time())
    claims = {
        "iss": "devkey",
        "nbf": now,
        "exp": now + 3600,
        "video": {"roomAdmin": True, "room": room},
    }
    return jwt.encode(claims, "secret", algorithm="HS256")


class ServerThread:
    def __init__(self) -> None:
        # PATH_PROBE_DATA_DIR: with the SQLite store in that directory.
        store = os.environ.get("PATH_PROBE_DATA_DIR")
        overrides = {"port": 0, **({"data_dir": store} if store else {})}
        cfg = config.load(dev=True, env={}, overrides=overrides)
        self.loop = uvloop.new_event_loop()
        self.server = Server(cfg)
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.server.start())
        self.ready.set()
        self.loop.run_forever()

    def in_thread(self, fn: object) -> object:
        done = threading.Event()
        out: list[object] = []

        def call() -> None:
            out.append(fn())  # type: ignore[operator]
            done.set()

        self.loop.call_soon_threadsafe(call)
        done.wait(10)
        return out[0]


async def drive(port: int, n: int, worker: FakeWorker) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    rooms = 256
    heads = [
        (
            f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/protobuf\r\n"
            f"Authorization: Bearer {_token(f'room-{r}')}\r\n"
        ).encode()
        for r in range(rooms)
    ]
    for i in range(n):
        body = agent_dispatch.CreateAgentDispatchRequest(
            agent_name="probe", room=f"room-{i % rooms}", metadata=str(i)
        ).SerializeToString()
        writer.write(heads[i % rooms] + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
    await worker.wait_for(lambda: len(worker.assigned) >= n, timeout=60)
    await asyncio.sleep(0.5)  # the last status reports
    writer.close()


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    srv = ServerThread()
    port = srv.server.port

    async def client() -> None:
        worker = FakeWorker(f"http://127.0.0.1:{port}", agent_name="probe")

        async def finish(assignment: agent.JobAssignment) -> None:
            await worker.job_status(assignment.job.id, agent.JS_SUCCESS)

        worker.on_assignment = lambda a: asyncio.get_running_loop().create_task(finish(a))
        await worker.connect()
        await drive(port, 200, worker)  # warm up: rooms, caches, specialisation
        worker.assigned.clear()

        if os.environ.get("PATH_PROBE_NO_PROFILE"):
            # Under valgrind: only the plain run, counted by the tool.
            await drive(port, n, worker)
            await worker.close()
            return
        profiler = cProfile.Profile()
        cpu0 = srv.in_thread(time.thread_time)
        srv.in_thread(profiler.enable)
        await drive(port, n, worker)
        srv.in_thread(profiler.disable)
        cpu_profiled = srv.in_thread(time.thread_time) - cpu0  # type: ignore[operator]

        worker.assigned.clear()
        cpu0 = srv.in_thread(time.thread_time)
        await drive(port, n, worker)
        cpu = srv.in_thread(time.thread_time) - cpu0  # type: ignore[operator]
        await worker.close()

        stats = pstats.Stats(profiler)
        dump = os.environ.get("PATH_PROBE_DUMP")
        if dump:
            stats.dump_stats(dump)
        total = sum(v[1] for v in stats.stats.values())  # type: ignore[attr-defined]
        # uvloop's transports are C: count our own write points instead, an
        # HTTP response written (``_write``, before: ``_respond``) and a
        # WebSocket flush (``_flush``: all frames of one loop pass, one write).
        http_writes = sum(
            v[1]
            for k, v in stats.stats.items()  # type: ignore[attr-defined]
            if k[0].endswith("net/http.py") and k[2] in ("_write", "_respond")
        )
        ws_flushes = sum(
            v[1]
            for k, v in stats.stats.items()  # type: ignore[attr-defined]
            if k[0].endswith("net/ws.py") and k[2] == "_flush"
        )
        print(f"dispatches: {n}")
        print(f"python calls per dispatch (CreateDispatch -> JS_SUCCESS): {total / n:.0f}")
        print(f"HTTP responses written per dispatch: {http_writes / n:.2f}")
        print(f"WebSocket flushes per dispatch (one write each): {ws_flushes / n:.2f}")
        per, profiled = cpu / n * 1e6, cpu_profiled / n * 1e6  # type: ignore[operator]
        print(f"server CPU per dispatch: {per:.0f} us (while profiled: {profiled:.0f} us)")
        top = sorted(
            stats.stats.items(),  # type: ignore[attr-defined]
            key=lambda kv: kv[1][1],
            reverse=True,
        )[:12]
        print("most called:")
        for (file, line, name), v in top:
            print(f"  {v[1] / n:6.1f}  {name}  ({file.rsplit('/', 2)[-2:][-1]}:{line})")

    asyncio.run(client())
    srv.loop.call_soon_threadsafe(srv.loop.stop)


if __name__ == "__main__":
    main()
