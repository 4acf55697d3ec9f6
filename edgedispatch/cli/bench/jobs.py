"""``edgedispatch bench jobs``: from CreateDispatch to the agent's
entrypoint starting.

In one run, against one server: native jobs from edgedispatch's warm pool
and jobs of an unmodified livekit-agents worker (its default settings, but a
pinned load), in bursts of 1, 10 and 50 dispatches sent at once; and the
cold start of an agent-server definition (dispatch -> job running when none
of its processes exists).  Both ends read CLOCK_MONOTONIC.

livekit-agents is the ``bench`` extra, not a runtime dependency: without it
the rows that need it (the comparison, and the cold start, whose agent server
is a livekit-agents app) are skipped, and the report says so.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from livekit.protocol import agent_dispatch

from edgedispatch.cli.bench.common import admin_token, percentile, read_response, start_server, stop
from edgedispatch.config import DEV_KEY, DEV_SECRET

TARGETS = {
    "native_p50_ms_burst50": 3.0,
    "native_p99_ms_burst50": 20.0,
    "speedup_p99_burst50": 5.0,
    "pool_process_uss_mb": 30.0,
}
ROUNDS = 3
HOLD = 0.5  # how long each job stays, as in a room (s)
LIVEKIT_AGENTS_MISSING = (
    "livekit-agents is not installed: pip install 'edgedispatch[bench]'; its rows "
    "(livekit-agents, agent-server cold start) are skipped"
)


def livekit_agents_installed() -> bool:
    try:
        return importlib.util.find_spec("livekit.agents") is not None
    except ImportError:  # not even the livekit namespace
        return False


def _config(tmp: Path, idle: int, slots: int, cold: bool, sandbox: str = "auto") -> Path:
    out = tmp / "out"
    out.mkdir()
    out.chmod(0o777)  # the agents, as their tenant's uid, write there
    py = sys.executable
    cfg = tmp / "bench.toml"
    text = f"""
[dispatch]
worker_slots = {slots}
[logging]
level = "warning"
[sandbox]
mode = "{sandbox}"
[[agents]]
name = "bench-native"
entrypoint = "edgedispatch.cli.bench.jobs_agent:entrypoint"
idle = {idle}
slots = {slots}
env = {{ EDT_OUT = "{out}", EDT_HOLD = "{HOLD}" }}
binds = ["{out}:rw"]
"""
    if cold:
        text += f"""
[[agents]]
name = "bench-cold"
worker = ["{py}", "-m", "edgedispatch.cli.bench.lk_jobs_agent", "start"]
env = {{ EDT_OUT = "{out}", EDT_AGENT = "bench-cold", EDT_HOLD = "{HOLD}" }}
binds = ["{out}:rw"]
idle_timeout = 3600
"""
    cfg.write_text(text)
    return cfg


class _Client:
    """Keep-alive HTTP connections and pre-signed requests, so that the
    measured time is the server's and the agent's, not a client library's."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def ensure(self, n: int) -> None:
        while len(self.conns) < n:
            self.conns.append(await asyncio.open_connection(self.host, self.port))

    def request(self, agent: str, room: str, metadata: str) -> bytes:
        body = agent_dispatch.CreateAgentDispatchRequest(
            agent_name=agent, room=room, metadata=metadata
        )
        return self._twirp("CreateDispatch", room, body.SerializeToString())

    def list_request(self, room: str) -> bytes:
        body = agent_dispatch.ListAgentDispatchRequest(room=room)
        return self._twirp("ListDispatch", room, body.SerializeToString())

    def _twirp(self, method: str, room: str, body: bytes) -> bytes:
        token = admin_token(room, ttl=600)
        return (
            f"POST /twirp/livekit.AgentDispatchService/{method} HTTP/1.1\r\n"
            f"Host: {self.host}\r\nContent-Type: application/protobuf\r\n"
            f"Authorization: Bearer {token}\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body

    async def send(self, i: int, request: bytes) -> bytes:
        reader, writer = self.conns[i]
        writer.write(request)
        return (await read_response(reader))[1]

    def close(self) -> None:
        for _, writer in self.conns:
            writer.close()


class _Starts:
    """The lines the agents append to ``out/started`` (``jobs_agent.record``),
    read as they come: metadata -> (monotonic, wall) start time."""

    def __init__(self, out: Path) -> None:
        self.path = out / "started"
        self.pos = 0
        self.seen: dict[str, tuple[float, float]] = {}

    def poll(self) -> None:
        if not self.path.exists():
            return
        with self.path.open("rb") as f:
            f.seek(self.pos)
            data = f.read()
        whole = data[: data.rfind(b"\n") + 1]
        self.pos += len(whole)
        for line in whole.decode().splitlines():
            meta, mono, wall = line.split()
            self.seen[meta] = (float(mono), float(wall))


async def _burst(
    client: _Client, starts: _Starts, agent: str, n: int, tag: str
) -> tuple[list[float], list[float]]:
    """Send ``n`` CreateDispatch at once.  Returns the latencies (ms) to each
    entrypoint's start, from the request's sending and from the dispatch's
    creation in the server (its ``created_at``)."""
    await client.ensure(n)
    requests = [client.request(agent, f"bench-{tag}-{i}", f"{tag}-{i}") for i in range(n)]
    sent: dict[str, float] = {}
    created: dict[str, float] = {}

    async def one(i: int) -> None:
        meta = f"{tag}-{i}"
        sent[meta] = time.monotonic()
        body = await client.send(i, requests[i])
        dispatch = agent_dispatch.AgentDispatch.FromString(body)
        created[meta] = dispatch.state.created_at / 1e9

    await asyncio.gather(*(one(i) for i in range(n)))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not all(meta in starts.seen for meta in sent):
        await asyncio.sleep(0.02)
        starts.poll()
    missing = [meta for meta in sent if meta not in starts.seen]
    if missing:
        # Say why, from the server's own account of the first such job.
        body = await client.send(0, client.list_request(f"bench-{missing[0]}"))
        listed = agent_dispatch.ListAgentDispatchResponse.FromString(body).agent_dispatches
        why = [f"{j.state.status} {j.state.error!r}" for d in listed for j in d.state.jobs]
        print(
            f"bench jobs: {len(missing)} of {n} {agent} jobs never started; the first: {why}",
            file=sys.stderr,
        )
    from_request, from_dispatch = [], []
    for meta in sent:
        if meta in starts.seen:
            mono, wall = starts.seen[meta]
            from_request.append((mono - sent[meta]) * 1000)
            from_dispatch.append((wall - created[meta]) * 1000)
    return from_request, from_dispatch


def _pct(values: list[float], q: float) -> float:
    return round(percentile(values, q), 2)


async def _measure(
    url: str, out: Path, bursts: list[int], lk_agent: bool, cold: bool
) -> list[dict[str, Any]]:
    rows = []
    host, port = url.removeprefix("http://").split(":")
    client = _Client(host, int(port))
    starts = _Starts(out)

    def row(runtime: str, burst: int, lat: tuple[list[float], list[float]]) -> dict[str, Any]:
        from_request, from_dispatch = lat
        return {
            "runtime": runtime,
            "burst": burst,
            "samples": len(from_dispatch),
            "p50_ms": _pct(from_dispatch, 0.5),
            "p99_ms": _pct(from_dispatch, 0.99),
            "request_p50_ms": _pct(from_request, 0.5),
            "request_p99_ms": _pct(from_request, 0.99),
            #: dispatch -> entrypoint start, each, for --plot (not printed).
            "samples_ms": list(from_dispatch),
        }

    try:
        runtimes = [("edgedispatch", "bench-native")]
        if lk_agent:
            runtimes.append(("livekit-agents", "bench-lk"))
        for runtime, agent in runtimes:
            await _burst(client, starts, agent, 1, f"warm-{agent}")  # first job: warm-up
            for n in bursts:
                lat: tuple[list[float], list[float]] = ([], [])
                # livekit-agents needs seconds per burst beyond its pool: one round.
                for r in range(ROUNDS if runtime == "edgedispatch" else 1):
                    a, b = await _burst(client, starts, agent, n, f"{agent}-{n}-{r}")
                    lat[0].extend(a)
                    lat[1].extend(b)
                    # The jobs end and the pools refill.
                    await asyncio.sleep(HOLD + (1.0 if runtime == "edgedispatch" else 3.0))
                rows.append(row(runtime, n, lat))
        if cold:
            lat = await _burst(client, starts, "bench-cold", 1, "cold")
            rows.append(row("agent-server cold start", 1, lat))
    finally:
        client.close()
    return rows


def _pool_uss(url: str) -> list[int]:
    from edgedispatch.cli import agent_client as client

    _, out = client.call(url, DEV_KEY, DEV_SECRET, "ListAgents", {}, timeout=10)
    native = next(a for a in out["agents"] if a["name"] == "bench-native")
    return list(native.get("pool_uss_kb", []))


def run(
    bursts: list[int], lk_agent: bool = True, loop: str = "uvloop", sandbox: str = "auto"
) -> dict[str, Any]:
    """:param loop: the server's event loop (``serve --loop``).
    :param sandbox: ``[sandbox] mode``: "off" measures without containment."""
    has_lk = livekit_agents_installed()
    skipped = [] if has_lk else [LIVEKIT_AGENTS_MISSING]
    lk_agent = lk_agent and has_lk
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        cfg = _config(tmp, max(bursts), max(bursts) * 2, has_lk, sandbox)
        server, url = start_server("--config", str(cfg), "--loop", loop)
        worker = None
        try:
            if lk_agent:
                worker = subprocess.Popen(
                    [sys.executable, "-m", "edgedispatch.cli.bench.lk_jobs_agent", "start"],
                    env={
                        **os.environ,
                        "PYTHONWARNINGS": "ignore",
                        "LIVEKIT_URL": url.replace("http", "ws"),
                        "LIVEKIT_API_KEY": DEV_KEY,
                        "LIVEKIT_API_SECRET": DEV_SECRET,
                        "EDT_OUT": str(tmp / "out"),
                        "EDT_AGENT": "bench-lk",
                        "EDT_HOLD": str(HOLD),
                    },
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                time.sleep(6)  # its warm pool and registration
            time.sleep(1)
            uss = _pool_uss(url)
            rows = asyncio.run(_measure(url, tmp / "out", bursts, lk_agent, cold=has_lk))
        finally:
            if worker is not None:
                stop(worker)
            stop(server)
    return {"rows": rows, "pool_uss_kb": uss, "targets": TARGETS, "skipped": skipped}


def render(report: dict[str, Any]) -> str:
    from edgedispatch.cli.tables import markdown_table

    lines = [
        "dispatch -> entrypoint start (ms): from the dispatch's creation in the server, and "
        "from the request's sending",
        "",
        markdown_table(
            ("runtime", "burst", "p50", "p99", "req p50", "req p99", "n"),
            [
                [
                    r[k]
                    for k in (
                        "runtime",
                        "burst",
                        "p50_ms",
                        "p99_ms",
                        "request_p50_ms",
                        "request_p99_ms",
                        "samples",
                    )
                ]  # fmt: skip
                for r in report["rows"]
            ],
        ),
        "",
    ]
    lines.extend(f"skipped: {why}" for why in report.get("skipped", []))
    uss = report["pool_uss_kb"]
    if uss:
        lines.append(
            f"warm pool process unique memory: {max(uss) / 1024:.1f} MB at most "
            f"({len(uss)} processes)"
        )
    t = report["targets"]
    lines.append(
        f"targets: native burst 50 p50 <= {t['native_p50_ms_burst50']} ms, p99 <= "
        f"{t['native_p99_ms_burst50']} ms, >= {t['speedup_p99_burst50']}x livekit-agents "
        f"at p99; <= {t['pool_process_uss_mb']} MB per pool process"
    )
    lines.extend(verdicts(report))
    return "\n".join(lines)


def verdicts(report: dict[str, Any]) -> list[str]:
    """Each target against this run's numbers (from the dispatch's creation)."""
    t = report["targets"]
    rows = {(r["runtime"], r["burst"]): r for r in report["rows"]}
    native, lk = rows.get(("edgedispatch", 50)), rows.get(("livekit-agents", 50))
    out = []

    def check(what: str, value: float, ok: bool) -> None:
        out.append(f"  {'met' if ok else 'NOT MET'}: {what} = {value:g}")

    if native is not None:
        check(
            "native burst 50 p50 ms",
            native["p50_ms"],
            native["p50_ms"] <= t["native_p50_ms_burst50"],
        )
        check(
            "native burst 50 p99 ms",
            native["p99_ms"],
            native["p99_ms"] <= t["native_p99_ms_burst50"],
        )
        if lk is not None and lk["samples"] == 50 and native["p99_ms"] > 0:
            speedup = round(lk["p99_ms"] / native["p99_ms"], 1)
            check("livekit-agents p99 / native p99", speedup, speedup >= t["speedup_p99_burst50"])
    uss = report["pool_uss_kb"]
    if uss:
        mb = round(max(uss) / 1024, 1)
        check("pool process unique MB", mb, mb <= t["pool_process_uss_mb"])
    return out
