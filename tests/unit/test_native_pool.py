"""The native job runtime: a warm pool of forked job processes
(``edgedispatch.runtime.native``), on both event loops.

The agent is ``tests/agents/native_sample.py``; each job's metadata tells it
what to do and where to write what it saw.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
import uvloop

from edgedispatch.errors import ConfigError
from edgedispatch.runtime.native import JobInfo, NativePool, RunningJob

T = TypeVar("T")
AGENTS = Path(__file__).resolve().parents[1] / "agents"
ENTRY = "native_sample:entrypoint"
PREWARM = "native_sample:prewarm"


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Callable[[Coroutine[Any, Any, T]], T]:
    """Run a coroutine to its end on a fresh loop of the parametrized kind."""

    def runner(coro: Coroutine[Any, Any, T]) -> T:
        if request.param == "uvloop":
            return uvloop.run(coro)
        return asyncio.run(coro)

    return runner


def make_pool(entrypoint: str = ENTRY, prewarm: str | None = PREWARM, **kw: Any) -> NativePool:
    return NativePool("sample", entrypoint, prewarm, env={"PYTHONPATH": str(AGENTS)}, **kw)


def job(out: Path, job_id: str, mode: str = "record", **extra: Any) -> JobInfo:
    return JobInfo(
        job_id=job_id,
        dispatch_id=f"AD_{job_id}",
        room="room-1",
        metadata=json.dumps({"out": str(out), "mode": mode, **extra}),
        attributes={"lang": "fr"},
        agent_name="sample",
        url="ws://127.0.0.1:7880",
        token="jwt-for-" + job_id,
    )


def submit(
    pool: NativePool, info: JobInfo, **kw: Any
) -> tuple[RunningJob, asyncio.Future[tuple[int | None, str]]]:
    ended: asyncio.Future[tuple[int | None, str]] = asyncio.get_running_loop().create_future()

    def on_exit(code: int | None, error: str) -> None:
        assert not ended.done(), "on_exit called twice"
        ended.set_result((code, error))

    return pool.run_job(info, on_exit, **kw), ended


async def run_job(pool: NativePool, info: JobInfo, **kw: Any) -> tuple[int | None, str]:
    _, ended = submit(pool, info, **kw)
    return await asyncio.wait_for(ended, 10)


async def until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


async def with_pool(pool: NativePool, body: Callable[[NativePool], Awaitable[T]]) -> T:
    await pool.start()
    try:
        return await body(pool)
    finally:
        await pool.close()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_job_runs_in_its_own_prewarmed_process_and_sees_its_job(run: Any, tmp_path: Path) -> None:
    async def body(pool: NativePool) -> None:
        zygote = pool.pids()[0]
        assert await run_job(pool, job(tmp_path, "J1")) == (0, "")
        assert await run_job(pool, job(tmp_path, "J2")) == (0, "")
        seen = json.loads((tmp_path / "J1.json").read_text())
        assert seen["pid"] not in (os.getpid(), zygote)
        assert seen["ppid"] == zygote  # forked from the zygote
        assert seen["prewarmed"] == [seen["pid"]]  # prewarm ran once, in this process
        assert {k: seen[k] for k in ("job_id", "dispatch_id", "room", "agent_name")} == {
            "job_id": "J1",
            "dispatch_id": "AD_J1",
            "room": "room-1",
            "agent_name": "sample",
        }
        assert json.loads(seen["metadata"])["out"] == str(tmp_path)
        assert seen["attributes"] == {"lang": "fr"}
        assert (seen["url"], seen["token"]) == ("ws://127.0.0.1:7880", "jwt-for-J1")
        other = json.loads((tmp_path / "J2.json").read_text())
        assert other["pid"] != seen["pid"]  # one process per job

    run(with_pool(make_pool(), body))


def test_start_with_a_ready_child_is_fast_and_idle_children_are_small(
    run: Any, tmp_path: Path
) -> None:
    async def body(pool: NativePool) -> None:
        await until(lambda: pool.ready() == 2)
        uss = pool.unique_memory_kb()
        print(f"unique memory per idle pool process: {uss} kB")
        assert len(uss) == 2 and all(kb < 30 * 1024 for kb in uss)
        await asyncio.sleep(0.05)  # let the refill settle
        t0 = time.monotonic()
        assert await run_job(pool, job(tmp_path, "J1")) == (0, "")
        # CLOCK_MONOTONIC is system-wide: comparable across processes.
        started = json.loads((tmp_path / "J1.json").read_text())["started"]
        print(f"job start latency (ready child): {(started - t0) * 1000:.2f} ms")
        assert started - t0 < 0.1

    run(with_pool(make_pool(idle=2), body))


def test_a_burst_beyond_the_idle_children_all_completes(run: Any, tmp_path: Path) -> None:
    async def body(pool: NativePool) -> None:
        await until(lambda: pool.ready() == 2)
        results = await asyncio.gather(*(run_job(pool, job(tmp_path, f"J{i}")) for i in range(10)))
        assert results == [(0, "")] * 10
        pids = {json.loads((tmp_path / f"J{i}.json").read_text())["pid"] for i in range(10)}
        assert len(pids) == 10
        await until(lambda: pool.ready() == 2)  # refilled

    run(with_pool(make_pool(idle=2), body))


def test_failures_are_reported_and_do_not_disturb_other_jobs(run: Any, tmp_path: Path) -> None:
    async def body(pool: NativePool) -> None:
        sleeper, sleeper_ended = submit(pool, job(tmp_path, "S", "sleep"))
        await until((tmp_path / "S.started").exists)

        code, error = await run_job(pool, job(tmp_path, "E", "raise"))
        assert code == 1
        assert error.startswith("Traceback") and "ValueError: boom" in error
        assert "native_sample.py" in error

        assert await run_job(pool, job(tmp_path, "X", "exit3")) == (3, "exited with code 3")

        victim, victim_ended = submit(pool, job(tmp_path, "K", "sleep"))
        await until((tmp_path / "K.started").exists)
        os.kill(victim.pid, signal.SIGKILL)
        assert await victim_ended == (-9, "killed by signal 9 (SIGKILL)")

        # The sleeper lived through all of it, and still ends cleanly.
        assert not sleeper_ended.done() and alive(sleeper.pid)
        sleeper.terminate(5)
        assert await sleeper_ended == (0, "")

    run(with_pool(make_pool(), body))


def test_shutdown_from_the_entrypoint_is_success(run: Any, tmp_path: Path) -> None:
    async def body(pool: NativePool) -> None:
        assert await run_job(pool, job(tmp_path, "J1", "shutdown")) == (0, "")

    run(with_pool(make_pool(), body))


def test_terminate_shuts_the_job_down_within_the_grace(run: Any, tmp_path: Path) -> None:
    async def body(pool: NativePool) -> None:
        rj, ended = submit(pool, job(tmp_path, "J1", "sleep"))
        await until((tmp_path / "J1.started").exists)
        t0 = time.monotonic()
        rj.terminate(grace=5)
        assert await ended == (0, "")
        assert time.monotonic() - t0 < 2
        assert (tmp_path / "J1.stopped").read_text() == "terminated"  # the callback ran

    run(with_pool(make_pool(), body))


def test_terminate_kills_after_the_grace_if_sigterm_is_ignored(run: Any, tmp_path: Path) -> None:
    async def body(pool: NativePool) -> None:
        rj, ended = submit(pool, job(tmp_path, "J1", "ignore_term"))
        await until((tmp_path / "J1.started").exists)
        t0 = time.monotonic()
        rj.terminate(grace=0.3)
        assert await ended == (-9, "killed by signal 9 (SIGKILL)")
        assert 0.3 <= time.monotonic() - t0 < 3

    run(with_pool(make_pool(), body))


def test_terminate_before_a_child_takes_the_job(run: Any, tmp_path: Path) -> None:
    async def body(pool: NativePool) -> None:
        rj, ended = submit(pool, job(tmp_path, "J1"))  # idle=0: it waits for a fork
        rj.terminate()
        assert await ended == (None, "stopped before it started")

    run(with_pool(make_pool(idle=0), body))


def test_max_duration(run: Any, tmp_path: Path) -> None:
    async def body(pool: NativePool) -> None:
        code, error = await run_job(pool, job(tmp_path, "J1", "sleep"), max_duration=0.3)
        # It shut down cleanly on SIGTERM, but ran too long: not a success.
        assert (code, error) == (-15, "ran longer than 0.3 s")
        assert (tmp_path / "J1.stopped").exists()

    run(with_pool(make_pool(), body))


def test_memory_limit(run: Any, tmp_path: Path) -> None:
    async def body(pool: NativePool) -> None:
        code, error = await run_job(pool, job(tmp_path, "J1", "alloc", mb=300))
        assert code == -9
        assert error.startswith("memory limit exceeded: ") and error.endswith(" MB > 100 MB")
        assert int(error.split()[3]) > 100
        # Another job, under the limit, runs.
        assert await run_job(pool, job(tmp_path, "J2")) == (0, "")

    run(with_pool(make_pool(memory_limit_mb=100), body))


def test_output_reaches_on_output_with_the_job_id(run: Any, tmp_path: Path) -> None:
    lines: list[tuple[str, str]] = []

    async def body(pool: NativePool) -> None:
        assert await run_job(pool, job(tmp_path, "J1", "output")) == (0, "")
        # Every line is in before on_exit.
        assert ("J1", "hello from J1") in lines
        assert ("J1", "raw fd 2 from J1") in lines

    run(with_pool(make_pool(on_output=lambda job_id, line: lines.append((job_id, line))), body))


@pytest.mark.parametrize(
    ("entrypoint", "prewarm", "message"),
    [
        ("no_such_module_xyz:entrypoint", None, "no module named 'no_such_module_xyz'"),
        ("native_sample:nope", None, "module 'native_sample' has no 'nope'"),
        ("native_sample:not_async", None, "is not a coroutine function"),
        ("native_sample", None, "is not of the form 'module:function'"),
        (ENTRY, "native_sample:entrypoint", "prewarm .* must be a plain `def`"),
        (ENTRY, "nope_xyz:prewarm", "prewarm 'nope_xyz:prewarm': no module named 'nope_xyz'"),
    ],
)
def test_a_bad_agent_makes_start_raise(
    run: Any, entrypoint: str, prewarm: str | None, message: str
) -> None:
    async def body() -> None:
        pool = make_pool(entrypoint, prewarm)
        with pytest.raises(ConfigError, match=message):
            await pool.start()
        assert pool.pids() == []

    run(body())


def test_a_failing_prewarm_fails_waiting_jobs(run: Any, tmp_path: Path) -> None:
    async def body(pool: NativePool) -> None:
        code, error = await run_job(pool, job(tmp_path, "J1"))
        assert code is None
        assert "pool processes fail before taking a job" in error
        assert "RuntimeError: no model" in error

    run(with_pool(make_pool(prewarm="native_sample:failing_prewarm", idle=1), body))


def test_the_zygote_is_replaced_if_it_dies(run: Any, tmp_path: Path) -> None:
    async def body(pool: NativePool) -> None:
        await until(lambda: pool.ready() == 1)
        os.kill(pool.pids()[0], signal.SIGKILL)
        await until(lambda: pool.ready() == 0)
        assert await run_job(pool, job(tmp_path, "J1")) == (0, "")
        assert json.loads((tmp_path / "J1.json").read_text())["ppid"] == pool.pids()[0]

    run(with_pool(make_pool(idle=1), body))


def test_close_leaves_no_process_behind(run: Any, tmp_path: Path) -> None:
    async def body() -> None:
        pool = make_pool(idle=2)
        await pool.start()
        rj, ended = submit(pool, job(tmp_path, "J1", "ignore_term"))
        await until((tmp_path / "J1.started").exists)
        await until(lambda: pool.ready() == 2)
        pids = pool.pids()
        assert len(pids) == 4 and all(alive(pid) for pid in pids)
        socket_dir = Path(pool._path).parent
        await pool.close()
        assert ended.result() == (None, "native pool 'sample' was closed")
        assert not any(alive(pid) for pid in pids)
        assert not socket_dir.exists()
        assert pool.pids() == []
        # A closed pool turns jobs away.
        assert await run_job(pool, job(tmp_path, "J2")) == (None, "native pool 'sample' is closed")

    run(body())
