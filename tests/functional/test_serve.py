"""``edgedispatch serve`` as a process: announcing its URL, JSON logs, the
lk-style CLI against it, bad configuration, and draining on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from livekit import api

from edgedispatch import sched
from edgedispatch._testbase.fake_worker import FakeWorker
from edgedispatch.cli.bench.dispatch import children
from edgedispatch.dispatch.tally import LATENCY_BOUNDS

from .conftest import serve_argv, serve_once


class ServeProcess:
    def __init__(self, loop_kind: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            serve_argv(loop_kind, *args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        match = re.search(r"listening on (http://\S+)", line)
        assert match, f"unexpected first line: {line!r}"
        self.url = match.group(1)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "LIVEKIT_URL": self.url,
            "LIVEKIT_API_KEY": "devkey",
            "LIVEKIT_API_SECRET": "secret",
        }
        return subprocess.run(
            [sys.executable, "-m", "edgedispatch", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=20)
        return err


@pytest.fixture
def served() -> Iterator[list[ServeProcess]]:
    started: list[ServeProcess] = []
    yield started
    for s in started:
        if s.proc.poll() is None:
            s.proc.kill()
        s.proc.wait()
        for pipe in (s.proc.stdout, s.proc.stderr):
            if pipe is not None:
                pipe.close()


# Once: the CLI is a client, and the lines' format is the logger's; the
# server's Twirp answers run on both loops in test_twirp_api.
@pytest.mark.once
def test_cli_against_the_server_and_json_logs(served: list[ServeProcess], loop_kind: str) -> None:
    srv = ServeProcess(loop_kind, "--log-format", "json")
    served.append(srv)
    out = srv.cli("dispatch", "create", "--room", "r1", "--agent-name", "bot", "--metadata", "m1")
    assert out.returncode == 0, out.stderr
    header, row = out.stdout.splitlines()
    assert header.split() == ["ID", "ROOM", "AGENT", "METADATA", "JOBS"]
    dispatch_id, room, agent_name = row.split()[:3]
    assert dispatch_id.startswith("AD_") and (room, agent_name) == ("r1", "bot")
    listed = srv.cli("dispatch", "list", "--room", "r1", "--json")
    (d,) = json.loads(listed.stdout)
    assert d["id"] == dispatch_id and d["metadata"] == "m1"
    # A waiting job is pending to a LiveKit client, not failed; our table says why.
    assert "error" not in d["state"]["jobs"][0]["state"]
    table = srv.cli("dispatch", "list", "--room", "r1").stdout.splitlines()
    assert table[0].split() == ["ID", "ROOM", "AGENT", "METADATA", "JOBS"]
    assert table[1].startswith(dispatch_id)
    assert table[1].endswith("waiting: no worker is registered for agent 'bot'")
    none = srv.cli("dispatch", "list", "--room", "nowhere")
    assert (none.returncode, none.stdout) == (0, "no dispatches in room 'nowhere'\n")
    assert srv.cli("room", "list").stdout.split()[:5] == [
        "SID", "NAME", "PARTICIPANTS", "EMPTY", "TIMEOUT"
    ]  # fmt: skip
    assert srv.cli("room", "create", "r2", "--agent-name", "bot").returncode == 0
    rooms = json.loads(srv.cli("room", "list", "--json").stdout)
    assert sorted(r["name"] for r in rooms) == ["r1", "r2"]
    assert srv.cli("room", "list", "nowhere").stdout == "no rooms\n"
    assert srv.cli("dispatch", "delete", "--room", "r1", "--id", dispatch_id).returncode == 0
    missing = srv.cli("dispatch", "delete", "--room", "r1", "--id", dispatch_id)
    assert missing.returncode == 1 and "not_found" in missing.stderr
    assert srv.cli("room", "delete", "r2").returncode == 0
    wrong = srv.cli("room", "list", "--api-secret", "nope")
    assert wrong.returncode == 1 and "unauthenticated" in wrong.stderr

    logs = [json.loads(line) for line in srv.stop().splitlines() if line.startswith("{")]
    (ended,) = [x for x in logs if x["msg"] == "job ended CANCELLED" and x["room"] == "r1"]
    assert ended["dispatch"] == dispatch_id
    assert ended["job"].startswith("AJ_") and ended["reason"] == "CANCELLED"
    assert ended["level"] == "info" and isinstance(ended["ts"], float)


def test_bad_configuration_stops_the_server(tmp_path: Path, loop_kind: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[dispatch]\noffer_timeout = -1\n")
    out = serve_once(loop_kind, "--config", str(cfg))
    assert out.returncode == 2 and "dispatch.offer_timeout" in out.stderr


def test_sigterm_drains_and_a_second_one_exits(served: list[ServeProcess], loop_kind: str) -> None:
    srv = ServeProcess(loop_kind)
    served.append(srv)

    async def main() -> None:
        w = FakeWorker(srv.url, agent_name="a", report=True)
        await w.connect()
        async with api.LiveKitAPI(srv.url, "devkey", "secret") as lk:
            await lk.agent_dispatch.create_dispatch(
                api.CreateAgentDispatchRequest(agent_name="a", room="r")
            )
            await w.wait_for(lambda: len(w.assigned) == 1)
            srv.proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.5)
            assert srv.proc.poll() is None  # a job is running: it waits
            with pytest.raises(api.TwirpError) as info:
                await lk.agent_dispatch.create_dispatch(
                    api.CreateAgentDispatchRequest(agent_name="a", room="r2")
                )
            assert info.value.code == "unavailable"
            (job_id,) = w.assigned
            await w.job_status(job_id, 2)  # JS_SUCCESS: the last job ends
            t0 = time.monotonic()
            while srv.proc.poll() is None and time.monotonic() - t0 < 5:
                await asyncio.sleep(0.05)
            assert srv.proc.poll() == 0
        await FakeWorker.close_all()

    asyncio.run(main())

    second = ServeProcess(loop_kind)
    served.append(second)

    async def hold_a_job() -> None:
        w = FakeWorker(second.url, agent_name="a")
        await w.connect()
        async with api.LiveKitAPI(second.url, "devkey", "secret") as lk:
            await lk.agent_dispatch.create_dispatch(
                api.CreateAgentDispatchRequest(agent_name="a", room="r")
            )
        await w.wait_for(lambda: len(w.assigned) == 1)
        second.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        assert second.proc.poll() is None
        second.proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        while second.proc.poll() is None and time.monotonic() - t0 < 5:
            await asyncio.sleep(0.05)
        assert second.proc.poll() == 0
        await FakeWorker.close_all()

    asyncio.run(hold_a_job())


@pytest.mark.once  # a benchmark's report, not about the loop
def test_bench_dispatch_prints_a_markdown_table_and_plots(loop_kind: str, tmp_path: Path) -> None:
    png = tmp_path / "dispatch.png"
    argv = ["--workers", "4", "--rate", "100", "--duration", "1", "--hold", "0.1"]
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgedispatch",
            "bench",
            "dispatch",
            *argv,
            "--loop",
            loop_kind,
            "--plot",
            str(png),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    header, rule, row = out.stdout.splitlines()[:3]
    assert header.startswith("| workers | rate/s | sent |") and rule.startswith("|---:|")
    assert row.startswith("| 4 | 100 | 100 | 100 | 0 |")
    assert png.read_bytes()[:4] == b"\x89PNG"


def bench_dispatch(*argv: str) -> dict[str, Any]:
    """``bench dispatch ARGV --json``'s report."""
    out = subprocess.run(
        [sys.executable, "-m", "edgedispatch", "bench", "dispatch", *argv, "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    report: dict[str, Any] = json.loads(out.stdout)
    return report


def test_bench_dispatch_reports_what_it_promises(loop_kind: str) -> None:
    report = bench_dispatch(
        "--workers", "8", "--rate", "200", "--duration", "1", "--hold", "0.1",
        "--loop", loop_kind, "--scrape", "0.2",
    )  # fmt: skip
    assert report["completed"] == report["sent"] == 200 and report["errors"] == 0
    # /metrics was scraped while the load ran, as Prometheus would.
    assert report["metrics_scrapes"] >= 2 and report["metrics_scrape_ms_mean"] > 0
    assert report["dispatches_per_s"] > 0
    lat = report["latency_ms"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"] < 5000
    assert 0 < report["rss_per_worker_kb"] < 1000
    assert 0 < report["server_cpu_us_per_dispatch"] < 100_000
    # The server's own view, from its histogram: every one of the 200 is
    # in it, and its creation -> assignment is within the whole trip.  Its
    # quantiles are interpolated within a bucket, so they may pass the
    # client's max by up to that bucket's upper bound, never beyond.
    view = report["server_assign_ms"]
    max_bucket_ms = 1000 * next(b for b in LATENCY_BOUNDS if 1000 * b >= lat["max"])
    assert 0 < view["p50"] <= view["p99"] <= max_bucket_ms and 0 < view["within_10ms"] <= 1


@pytest.mark.once  # the bench's own workers, not about the loop
def test_bench_dispatch_busy_workers_decline_and_the_queue_drains() -> None:
    """Workers that report load per job and decline at the gate, as
    livekit-agents' do: every job runs, each waiting only for a job to end
    (a wave every --hold), and few offers meet a full worker."""
    report = bench_dispatch(
        "--workers", "2", "--rate", "20", "--duration", "1", "--hold", "0.5",
        "--load-per-job", "0.5", "--gate", "0.7", "--report-interval", "0.2",
    )  # fmt: skip
    # Two jobs fill a worker (load 1.0 >= 0.7): 4 run at once, 20 arrive.
    assert report["completed"] == report["sent"] == 20 and report["errors"] == 0
    assert report["declines_per_assignment"] < 0.2  # the server predicts their load
    assert 500 < report["latency_ms"]["max"] < 3000  # waited for capacity, no backoff


# Once: the CLI is a client; the definitions API and the agents it starts and
# stops run on both loops in test_local_agents and test_agent_servers.
@pytest.mark.once
def test_agent_cli_manages_definitions(
    served: list[ServeProcess], tmp_path: Path, loop_kind: str
) -> None:
    srv = ServeProcess(loop_kind)
    served.append(srv)
    assert srv.cli("agent", "list").stdout == "no agents in this tenant\n"
    agents = Path(__file__).resolve().parents[1] / "agents"
    tmp_path.chmod(0o777)  # the job, as its tenant's uid, writes there
    # A command with arguments of its own, as one string (`--command sh -c '...'`
    # failed before: argparse took -c for an option).
    out = srv.cli(
        "agent", "add", "helper", "--command", f"sh -c 'exec {sys.executable} \"$0\"' "
        f"{agents / 'cmd_agent.py'}", "--env", f"EDT_OUT={tmp_path}", "--bind", f"{tmp_path}:rw",
        "--slots", "2",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    agent = json.loads(out.stdout)["agent"]
    assert agent["command"][:2] == ["sh", "-c"] and agent["slots"] == 2
    bad = srv.cli("agent", "add", "broken", "--entrypoint", "no_such_mod_xyz:main")
    assert bad.returncode == 1 and "unknown module 'no_such_mod_xyz'" in bad.stderr
    srv.cli("dispatch", "create", "--room", "r", "--agent-name", "helper")
    deadline = time.monotonic() + 20
    while not list(tmp_path.glob("AJ_*.json")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(list(tmp_path.glob("AJ_*.json"))) == 1
    # An agent server: `agent start` answers once it registered.
    out = srv.cli(
        "agent", "add", "server", "--worker", f"{sys.executable} {agents / 'fake_server.py'}",
        "--env", "EDT_AGENT=server", "--idle-timeout", "60",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    started = srv.cli("agent", "start", "server")
    assert started.returncode == 0, started.stderr
    assert re.search(r"^  instance 1: registered, pid \d+, worker AW_", started.stdout, re.M)
    table = srv.cli("agent", "list").stdout.splitlines()
    assert table[0].split() == ["NAME", "KIND", "STATE", "SOURCE", "RUNS"]
    assert table[1].split()[:5] == ["helper", "command", "running", "api", "sh"]
    assert table[2].split()[:4] == ["server", "server", "running", "api"]
    assert table[3].startswith("  instance 1: registered, pid ")
    stopped = srv.cli("agent", "stop", "server")
    assert stopped.returncode == 0 and stopped.stdout.split()[:3] == ["NAME", "KIND", "STATE"]
    assert stopped.stdout.splitlines()[1].split()[:3] == ["server", "server", "stopped"]
    assert srv.cli("agent", "stop", "helper").returncode == 0
    assert srv.cli("agent", "list").stdout.splitlines()[1].split()[2] == "stopped"
    missing = srv.cli("agent", "start", "nobody")
    assert missing.returncode == 1 and "not_found: no agent 'nobody'" in missing.stderr
    for name in ("helper", "server"):
        assert srv.cli("agent", "remove", name).returncode == 0
    assert srv.cli("agent", "list").stdout == "no agents in this tenant\n"


def sleeper_agent(tmp_path: Path, extra: str = "") -> Path:
    """A config with one command agent, "sleeper" (``cmd_agent.py``, which
    records its job in ``tmp_path`` and sleeps), and ``extra`` lines."""
    agents = Path(__file__).resolve().parents[1] / "agents"
    cfg = tmp_path / "agents.toml"
    cfg.write_text(
        "[[agents]]\n"
        'name = "sleeper"\n'
        f'command = ["{sys.executable}", "{agents / "cmd_agent.py"}"]\n'
        f"{extra}"
        f'env = {{ EDT_OUT = "{tmp_path}", EDT_MODE = "sleep" }}\n'
        f'binds = ["{tmp_path}:rw"]\n'
    )
    tmp_path.chmod(0o777)  # the job, as its tenant's uid, writes there
    return cfg


@pytest.mark.parametrize("store", [False, True], ids=["memory", "store"])
def test_drain_waits_for_local_jobs(
    served: list[ServeProcess], tmp_path: Path, loop_kind: str, store: bool
) -> None:
    """Local jobs end with the server, so the drain waits for them even
    when a store keeps remote workers' jobs for them to claim back."""
    cfg = sleeper_agent(tmp_path, "max_duration = 2\n")
    data = ("--data-dir", str(tmp_path / "data")) if store else ()
    srv = ServeProcess(loop_kind, "--config", str(cfg), *data)
    served.append(srv)
    srv.cli("dispatch", "create", "--room", "r", "--agent-name", "sleeper")
    deadline = time.monotonic() + 20
    while not list(tmp_path.glob("AJ_*.json")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(tmp_path.glob("AJ_*.json")), "the local job did not start"
    t0 = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert srv.proc.poll() is None  # its local job still runs
    assert srv.proc.wait(timeout=15) == 0
    assert time.monotonic() - t0 >= 1.0  # it waited for the job (max_duration 2 s)


@pytest.mark.once  # the processes' scheduling, not the loop's
@pytest.mark.skipif(not sched.supported(), reason="no custom slices before Linux 6.12")
def test_the_server_and_its_writer_ask_for_short_slices_and_tenant_jobs_do_not(
    served: list[ServeProcess], tmp_path: Path, loop_kind: str
) -> None:
    """``server.sched_slice`` (0.5 ms by default): the event loop's thread
    and the store's writer ask for it (the media workers too: test_rooms);
    a tenant's job, started from the server, runs with the kernel's
    default."""
    cfg = sleeper_agent(tmp_path)
    srv = ServeProcess(loop_kind, "--config", str(cfg), "--data-dir", str(tmp_path / "data"))
    served.append(srv)
    assert sched.slice_of(srv.proc.pid) == 500_000
    (writer,) = [
        pid for pid in children(srv.proc.pid)
        if "edgedispatch.store.writer" in Path(f"/proc/{pid}/cmdline").read_text()
    ]  # fmt: skip
    deadline = time.monotonic() + 20
    while sched.slice_of(writer) != 500_000 and time.monotonic() < deadline:
        time.sleep(0.05)  # it asks once it has started (Python's imports)
    assert sched.slice_of(writer) == 500_000
    srv.cli("dispatch", "create", "--room", "r", "--agent-name", "sleeper")
    while not list(tmp_path.glob("AJ_*.json")) and time.monotonic() < deadline:
        time.sleep(0.05)
    (record,) = [json.loads(p.read_text()) for p in tmp_path.glob("AJ_*.json")]
    assert record["sched_slice_ns"] is not None and record["sched_slice_ns"] != 500_000
