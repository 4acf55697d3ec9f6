"""An agent server that keeps crashing is restarted with a growing delay,
and a job waiting meanwhile does not start extra instances."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest

from edgedispatch.config.agents import AgentDefinition
from edgedispatch.runtime import supervisor
from edgedispatch.runtime.supervisor import AgentServerSupervisor


def _crash_starts(tmp_path: Path, run_for: float, n: int = 4) -> list[float]:
    """Supervise a program that runs ``run_for`` seconds, then crashes, while
    a job keeps waiting; return when each of its first ``n`` runs started."""
    log = tmp_path / "starts"
    # Each run notes when it started, on the clock the test reads.
    program = (
        "import sys, time; "
        f"open({str(log)!r}, 'a').write(f'{{time.monotonic()}}\\n'); "
        f"time.sleep({run_for}); sys.exit(3)"
    )
    definition = AgentDefinition(name="crashy", worker=[sys.executable, "-c", program])

    def starts() -> list[float]:
        return [float(t) for t in log.read_text().split()] if log.exists() else []

    async def main() -> list[float]:
        sup = AgentServerSupervisor(definition, "ws://127.0.0.1:1", "k", "s", busy=lambda: 1)
        try:
            deadline = time.monotonic() + 20
            while len(starts()) < n and time.monotonic() < deadline:
                sup.demand(0)  # no instance beyond the one (re)starting
                assert sup.wanted <= 1
                await asyncio.sleep(0.02)
            return starts()
        finally:
            await sup.close()

    found = asyncio.run(main())
    assert len(found) >= n, found
    return found


def _gaps(starts: list[float]) -> list[float]:
    return [b - a for a, b in zip(starts, starts[1:], strict=False)]


def test_a_crashing_agent_server_is_restarted_with_backoff(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(supervisor, "BACKOFF_BASE", 0.2)
    gaps = _gaps(_crash_starts(tmp_path, run_for=0))
    # Delays of 0.2, 0.4, 0.8 s (plus the interpreter's start-up each time).
    assert gaps[0] >= 0.2
    assert gaps[1] >= gaps[0] + 0.1
    assert gaps[2] >= gaps[1] + 0.3


def test_a_crash_after_a_stable_run_restarts_quickly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Runs of 0.3 s count as stable here: each crash restarts after the
    # base delay, never a growing one.
    monkeypatch.setattr(supervisor, "BACKOFF_BASE", 0.2)
    monkeypatch.setattr(supervisor, "STABLE_AFTER", 0.3)
    gaps = _gaps(_crash_starts(tmp_path, run_for=0.4))
    # 0.4 s run + 0.2 s delay + start-up, every time (a backoff would add 0.2, 0.4...).
    assert max(gaps) - min(gaps) < 0.3, gaps


def test_demand_starts_one_more_instance_only_once_every_one_is_connected(
    tmp_path: Path,
) -> None:
    definition = AgentDefinition(
        name="big",
        worker=[sys.executable, "-c", "import time; time.sleep(60)"],
        max_instances=2,
    )

    async def main() -> None:
        sup = AgentServerSupervisor(definition, "ws://127.0.0.1:1", "k", "s", busy=lambda: 1)
        try:
            sup.demand(0)  # none runs
            assert sup.wanted == 1
            sup.demand(0)  # it has not connected yet: it will take the job
            assert sup.wanted == 1
            sup.demand(1)  # connected and still a job waits: one more
            assert sup.wanted == 2
            sup.demand(2)  # max_instances
            assert sup.wanted == 2 and sup.starts == 2
        finally:
            await sup.close()

    asyncio.run(main())
