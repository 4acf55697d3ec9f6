"""Decisions of the scheduling core, per implementation and worker count.

One round = 1024 decisions: refill the event ring with job submits, then time
``process()`` taking each one from the ring, choosing a worker and emitting
the offer.  Divide the mean by 1024 for the time per decision.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest

from edgedispatch import _core
from edgedispatch._core.codes import EventKind
from edgedispatch.cli.bench.core import _scheduler

BATCH = 1024
IMPLS = [pytest.param(m, id=name) for name, m in _core.implementations().items()]


@pytest.mark.parametrize("workers", [16, 1024, 10_000])
@pytest.mark.parametrize("impl", IMPLS)
def test_decisions(benchmark: Any, impl: ModuleType, workers: int) -> None:
    total = 400 * BATCH
    s = _scheduler(impl, workers, total, seed=1)
    state = {"next": 0}

    def setup() -> tuple[tuple[()], dict[str, Any]]:
        j = state["next"]
        if j + BATCH > total:  # out of job handles: start over on a fresh core
            nonlocal s
            s = _scheduler(impl, workers, total, seed=1)
            j = 0
        for i in range(j, j + BATCH):
            s.events.push(EventKind.JOB_SUBMIT, i, -1, 0, 1e18, 1.0, 0)
        state["next"] = j + BATCH
        s.actions.clear()
        return (), {}

    benchmark.pedantic(lambda: s.process(), setup=setup, rounds=200)
