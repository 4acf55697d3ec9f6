"""``edgedispatch bench faults``: a steady dispatch load, and a fault every
second, then an account of every dispatch the server accepted.

The server runs as a process with a SQLite store on a fixed port, so it can
be killed and started again; its workers are ``fault_worker`` processes
(the real protocol, one worker per process, so one can be killed mid-job),
and one more worker with a single slot takes the bursts.  The load sends
CreateDispatch at ``rate`` per second, each with its own
``X-LiveKit-Request-Id``, and retries a failed call with the same id (as a
client that must not create twice does) until it is answered.

The faults, one a second, each kind once a round in a random order:
- ``worker_kill``: SIGKILL of a worker process (a new one takes its place);
- ``ws_cut``: a worker's connection cut for 1 to 8 s, its jobs running on;
- ``slow_worker``: a worker accepts its next offer after the offer timeout;
- ``server_kill``: SIGKILL of the server, then a restart;
- ``server_drain``: SIGTERM (drain), then a restart;
- ``burst``: 100 dispatches at once for the one-slot worker's agent;
- ``disk_full``: the store's file system is filled for 2 s (when a small
  tmpfs can be mounted for it: as root, or in a user namespace).

The account, from the workers' logs of every job start and end:
- lost: an accepted dispatch whose job never ended (after the load stops,
  the server gets ``reclaim_grace`` and more to finish what it holds);
- run twice at once: two workers running one dispatch's job at the same
  time (a killed worker's job ends when it is killed);
- recovery: from starting the server again to ``/readyz`` answering 200;
- the error rate the clients saw (calls answered with an error, or not at all).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from livekit.protocol import agent_dispatch

from edgedispatch.cli.bench.common import admin_token, free_port, percentile, read_response
from edgedispatch.cli.bench.tmpfs import SmallDisk
from edgedispatch.server import raise_fd_limit

PATH = "/twirp/livekit.AgentDispatchService/CreateDispatch"
FAULTS = (
    "worker_kill",
    "ws_cut",
    "slow_worker",
    "server_kill",
    "server_drain",
    "burst",
    "disk_full",
)
ROOMS = 64
RECLAIM_GRACE = 10.0  # above the longest cut (8 s) plus a reconnect
OFFER_TIMEOUT = 1.0
TARGETS = {"lost": 0, "run_twice_at_once": 0, "recovery_s_max": 2.0, "dispatches": 10_000}

CONFIG = f"""
[server]
bind = "127.0.0.1"
drain_timeout = 5
store_synchronous = "full"
[dispatch]
offer_timeout = {OFFER_TIMEOUT}
reclaim_grace = {RECLAIM_GRACE}
queue_timeout = 120
max_attempts = 20
[rtc]
enabled = false
[logging]
format = "json"
"""


class Server:
    """The server process, started again on the same port and data."""

    def __init__(self, workdir: Path, data_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = workdir / "edgedispatch.toml"
        self.config.write_text(CONFIG)
        self.data_dir = data_dir
        self.log = open(workdir / "server.log", "a")  # noqa: SIM115 - kept for the run
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        """Start it; returns the seconds until /readyz answered 200."""
        started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgedispatch", "serve", "--dev", "--config", str(self.config),
             "--port", str(self.port), "--data-dir", str(self.data_dir)],
            stdout=subprocess.DEVNULL, stderr=self.log,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )  # fmt: skip
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode} (server.log)")
            if _ready(self.port):
                return time.monotonic() - started
            if time.monotonic() - started > 30:
                raise RuntimeError("the server was not ready within 30 s")
            time.sleep(0.01)

    def stop(self, sig: int, timeout: float = 30.0) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _ready(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


class Workers:
    """The worker processes, each writing its jobs to one shared log."""

    def __init__(self, url: str, log: Path, hold: float) -> None:
        self.url, self.log, self.hold = url, log, hold
        self.procs: list[subprocess.Popen[str]] = []
        self.killed: dict[int, float] = {}  # pid -> when

    def spawn(self, agent_name: str = "faults", slots: int = 8, hold: float = 0.0) -> None:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edgedispatch.cli.bench.fault_worker", "--url", self.url,
             "--agent-name", agent_name, "--slots", str(slots), "--hold", str(hold or self.hold),
             "--slow-delay", str(OFFER_TIMEOUT + 1.0), "--log", str(self.log)],
            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )  # fmt: skip
        self.procs.append(proc)

    def wait_ready(self, procs: list[subprocess.Popen[str]] | None = None) -> None:
        """Until each (by default every) worker says it is registered."""
        for proc in self.procs if procs is None else procs:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError("a worker did not start")

    def general(self) -> list[subprocess.Popen[str]]:
        """The live workers of the main agent (the first is the burst worker)."""
        return [p for p in self.procs[1:] if p.poll() is None]

    def kill_one(self) -> None:
        victim = random.choice(self.general())
        victim.kill()
        victim.wait()
        self.killed[victim.pid] = time.monotonic()
        self.spawn()
        self.wait_ready(self.procs[-1:])

    def signal_one(self, sig: int) -> None:
        random.choice(self.general()).send_signal(sig)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


class Load:
    """CreateDispatch at a fixed rate; each retried with its request id
    until it is answered 200."""

    def __init__(self, port: int, rate: float) -> None:
        self.port, self.rate = port, rate
        self.accepted: dict[str, str] = {}  # dispatch id -> request id
        self.attempts = 0
        self.failed_attempts = 0
        self.gave_up = 0
        self.retried = 0  # dispatches that needed more than one call
        self.errors: Counter[str] = Counter()  # failed calls by status or exception
        self.running = True
        self._seq = 0

    async def run(self, duration: float) -> None:
        start = time.monotonic()
        tasks: set[asyncio.Task[None]] = set()
        while self.running and time.monotonic() - start < duration:
            self._seq += 1
            task = asyncio.get_running_loop().create_task(self.dispatch("faults", self._seq))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            await asyncio.sleep(1 / self.rate)
        if tasks:
            await asyncio.gather(*tasks)

    async def burst(self, count: int) -> None:
        base = 10_000_000 + self._seq * 1000
        self._seq += 1
        await asyncio.gather(*(self.dispatch("faults-one", base + i) for i in range(count)))

    async def dispatch(self, agent_name: str, seq: int) -> None:
        room = f"faults-{seq % ROOMS}"
        request_id = f"req-{seq}"
        body = agent_dispatch.CreateAgentDispatchRequest(
            agent_name=agent_name, room=room, metadata=str(seq)
        ).SerializeToString()
        head = (
            f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/protobuf\r\n"
            f"Authorization: Bearer {admin_token(room)}\r\nX-LiveKit-Request-Id: {request_id}\r\n"
            f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        deadline = time.monotonic() + 90
        tries = 0
        while time.monotonic() < deadline:
            tries += 1
            self.retried += tries == 2
            self.attempts += 1
            try:
                async with asyncio.timeout(10):
                    reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                    try:
                        writer.write(head + body)
                        status, answer = await read_response(reader)
                    finally:
                        writer.close()
                if status.startswith(b"HTTP/1.1 200"):
                    got = agent_dispatch.AgentDispatch.FromString(answer)
                    self.accepted[got.id] = request_id
                    return
                self.errors[status.split(b"\r\n", 1)[0][9:].decode()] += 1
            except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
                self.errors[type(exc).__name__] += 1
            self.failed_attempts += 1
            await asyncio.sleep(random.uniform(0.1, 0.3))
        self.gave_up += 1


def account(log: Path, accepted: dict[str, str], killed: dict[int, float]) -> dict[str, Any]:
    """Lost and doubly run dispatches, from the workers' job log."""
    starts: dict[tuple[int, str], tuple[float, str]] = {}
    spans: dict[str, list[tuple[float, float, int]]] = defaultdict(list)
    ended: set[str] = set()
    again: set[str] = set()  # started once more after a run of it had ended
    now = time.monotonic()
    for line in log.read_text().splitlines():
        rec = json.loads(line)
        key = (rec["pid"], rec["job"])
        if rec["e"] == "start":
            starts[key] = (rec["t"], rec["dispatch"])
            if rec["dispatch"] in ended:
                again.add(rec["dispatch"])
        elif rec["e"] in ("end", "stop") and key in starts:
            t0, dispatch_id = starts.pop(key)
            spans[dispatch_id].append((t0, rec["t"], rec["pid"]))
            if rec["e"] == "end":
                ended.add(dispatch_id)
    for (pid, _), (t0, dispatch_id) in starts.items():  # never ended: killed, or left running
        spans[dispatch_id].append((t0, killed.get(pid, now), pid))
    twice = []
    for dispatch_id, runs in spans.items():
        runs.sort()
        end, end_pid = runs[0][1], runs[0][2]  # the latest end so far, and whose
        for t0, t1, pid in runs[1:]:
            if t0 < end and pid != end_pid:
                twice.append({"dispatch": dispatch_id, "overlap_s": round(end - t0, 3)})
            if t1 > end:
                end, end_pid = t1, pid
    lost = sorted(set(accepted) - ended)
    return {
        "lost": lost,
        "twice": twice,
        "again": len(again),
        "runs": sum(len(r) for r in spans.values()),
    }


def run(
    duration: float, rate: float, workers: int, hold: float, seed: int | None
) -> dict[str, Any]:
    raise_fd_limit()
    rng_seed = seed if seed is not None else random.randrange(1 << 30)
    random.seed(rng_seed)
    workdir = Path(tempfile.mkdtemp(prefix="edgedispatch-faults-"))
    disk = SmallDisk(workdir / "data")
    server = Server(workdir, disk.path)
    pool = Workers(server.url, workdir / "jobs.log", hold)
    faults: dict[str, int] = defaultdict(int)
    recoveries: list[float] = []
    outages: list[float] = []  # from the signal to ready again
    try:
        server.start()
        pool.spawn("faults-one", slots=1, hold=0.02)
        for _ in range(workers):
            pool.spawn()
        pool.wait_ready()
        load = Load(server.port, rate)

        async def inject() -> None:
            loop = asyncio.get_running_loop()
            end = time.monotonic() + duration
            kinds = [k for k in FAULTS if k != "disk_full" or disk.mounted]
            order: list[str] = []
            while time.monotonic() < end - 1:
                await asyncio.sleep(1.0)
                if not order:  # each kind once per round, in a random order
                    order = random.sample(kinds, len(kinds))
                kind = order.pop()
                faults[kind] += 1
                if kind == "worker_kill":
                    await loop.run_in_executor(None, pool.kill_one)
                elif kind == "ws_cut":
                    pool.signal_one(signal.SIGUSR1)
                elif kind == "slow_worker":
                    pool.signal_one(signal.SIGUSR2)
                elif kind in ("server_kill", "server_drain"):
                    sig = signal.SIGKILL if kind == "server_kill" else signal.SIGTERM
                    down = time.monotonic()
                    await loop.run_in_executor(None, server.stop, sig)
                    recoveries.append(await loop.run_in_executor(None, server.start))
                    outages.append(time.monotonic() - down)
                elif kind == "burst":
                    loop.create_task(load.burst(100))
                elif kind == "disk_full":
                    disk.fill()
                    await asyncio.sleep(2.0)
                    disk.free()

        async def main() -> None:
            await asyncio.gather(load.run(duration), inject())

        started = time.monotonic()
        asyncio.run(main())
        # What was accepted last may still wait for a reclaim, a retry or
        # the burst worker's queue: give it the grace and more.
        settle_until = time.monotonic() + RECLAIM_GRACE + 20
        while time.monotonic() < settle_until:
            if not account(pool.log, load.accepted, pool.killed)["lost"]:
                break
            time.sleep(0.5)
        elapsed = time.monotonic() - started
        result = account(pool.log, load.accepted, pool.killed)
        disk_tested = disk.mounted
    finally:
        pool.stop()
        if server.proc is not None and server.proc.poll() is None:
            server.stop(signal.SIGKILL)
        disk.close()
    if result["lost"] or result["twice"]:
        print(f"kept for a look: {workdir}", file=sys.stderr)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return {
        "seed": rng_seed,
        "duration_s": duration,
        "elapsed_s": round(elapsed, 1),
        "rate": rate,
        "accepted": len(load.accepted),
        "lost": len(result["lost"]),
        "lost_ids": result["lost"][:20],
        "run_twice_at_once": len(result["twice"]),
        "twice": result["twice"][:20],
        "job_runs": result["runs"],
        "run_again_after_it_ended": result["again"],
        "gave_up": load.gave_up,
        "client_error_rate": round(load.failed_attempts / max(load.attempts, 1), 4),
        "faults": dict(faults),
        "disk_full_tested": disk_tested,
        "recovery_s": {
            "count": len(recoveries),
            "p50": round(percentile(recoveries, 0.5), 3),
            "max": round(max(recoveries), 3) if recoveries else None,
        },
        "outage_s_max": round(max(outages), 3) if outages else None,
        "retried_dispatches": load.retried,
        "client_errors": dict(load.errors),
        "targets": TARGETS,
    }


def render(r: dict[str, Any]) -> str:
    rec = r["recovery_s"]
    faults = ", ".join(f"{k} {v}" for k, v in sorted(r["faults"].items()))
    from edgedispatch.cli.tables import markdown_table

    header = ("accepted", "lost", "run twice at once", "never answered", "client error rate",
              "recovery p50 s", "recovery max s", "longest outage s")  # fmt: skip
    row = [r["accepted"], r["lost"], r["run_twice_at_once"], r["gave_up"],
           f"{r['client_error_rate']:.2%}", rec["p50"], rec["max"], r["outage_s_max"]]  # fmt: skip
    lines = [
        markdown_table(header, [row]),
        "",
        f"{r['accepted']} dispatches accepted in {r['duration_s']:g} s at {r['rate']:g}/s "
        f"(seed {r['seed']}); faults: {faults}",
        f"lost: {r['lost']}; run twice at once: {r['run_twice_at_once']}; "
        f"job runs: {r['job_runs']} (a dispatch started again after a run of it had ended: "
        f"{r['run_again_after_it_ended']}); never answered: {r['gave_up']}",
        f"client error rate: {r['client_error_rate']:.2%} of calls; {r['retried_dispatches']} "
        "dispatches needed a retry (with their request id, until answered): "
        + ", ".join(f"{k} {v}" for k, v in r["client_errors"].items()),
        f"recovery after a restart (start to /readyz): p50 {rec['p50']} s, max {rec['max']} s "
        f"over {rec['count']} restarts; longest outage (signal to ready) {r['outage_s_max']} s",
    ]
    if not r["disk_full_tested"]:
        lines.append("disk_full: not injected (no tmpfs could be mounted for the store)")
    if r["lost_ids"] or r["twice"]:
        lines.append(f"lost: {r['lost_ids']}\ntwice: {r['twice']}")
    lines.append(
        f"targets: lost {TARGETS['lost']}, run twice {TARGETS['run_twice_at_once']}, "
        f"recovery <= {TARGETS['recovery_s_max']} s, over >= {TARGETS['dispatches']:,} dispatches"
    )
    return "\n".join(lines)
