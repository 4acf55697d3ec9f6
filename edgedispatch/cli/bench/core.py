"""``edgedispatch bench core``: how fast the scheduling core decides.

A decision is: take one job event from the event ring, choose a worker, emit
the offer (and its job-state action) onto the action ring.  Throughput is
measured in batches (fill the ring, time ``process()``, clear the actions);
latency is one decision per ``process(1)`` call timed with
``perf_counter_ns``, so it includes the Python-to-core call the shell pays.

Workers report seeded random loads below the threshold and have enough slots
for every job, so each decision really walks the eligible-worker heap.
"""

from __future__ import annotations

import gc
import random
import time
import tracemalloc
from types import ModuleType
from typing import Any

from edgedispatch import _core
from edgedispatch._core.codes import EventKind, WorkerStatus

TARGETS = {
    "decisions_per_s_at_1024_compiled": 1_000_000,
    "speedup_vs_python_at_1024": 30,
    "bytes_per_worker": 200,
    "bytes_per_pending_job": 200,
}
BATCH = 4096


def _scheduler(impl: ModuleType, workers: int, jobs: int, seed: int) -> Any:
    s = impl.Scheduler(seed=seed, ring_capacity=2 * BATCH)
    s.reserve_workers(workers)
    s.reserve_jobs(jobs)
    rnd = random.Random(seed)
    slots = jobs // workers + 2
    ev = s.events
    for w in range(workers):
        ev.push(EventKind.WORKER_REGISTER, -1, w, 0, 0.0, 0.0, slots)
        ev.push(
            EventKind.WORKER_UPDATE, -1, w, int(WorkerStatus.AVAILABLE), rnd.random() * 0.6, 0.0, 0
        )
        if len(ev) >= BATCH:
            s.process()
    s.process()
    s.actions.clear()
    return s


def _percentile(sorted_ns: list[int], q: float) -> int:
    return sorted_ns[min(len(sorted_ns) - 1, int(q * len(sorted_ns)))]


def measure(impl: ModuleType, workers: int, jobs: int, seed: int = 1) -> dict[str, Any]:
    """Decisions per second and per-decision latency for one implementation."""
    # Throughput.
    s = _scheduler(impl, workers, jobs, seed)
    ev, push, submit = s.events, s.events.push, int(EventKind.JOB_SUBMIT)
    elapsed = 0.0
    j = 0
    gc.disable()
    try:
        while j < jobs:
            n = min(BATCH, jobs - j)
            for i in range(j, j + n):
                push(submit, i, -1, 0, 1e18, 1.0, 0)
            t0 = time.perf_counter()
            done = s.process()
            elapsed += time.perf_counter() - t0
            assert done == n and s.decisions == j + n, "every submit must become an offer"
            s.actions.clear()
            j += n
        # Latency: the same decisions, one per call.
        s = _scheduler(impl, workers, jobs, seed)
        ev, process = s.events, s.process
        clock = time.perf_counter_ns
        samples: list[int] = []
        sample_jobs = min(jobs, 50_000)
        j = 0
        while j < sample_jobs:
            n = min(BATCH, sample_jobs - j)
            for i in range(j, j + n):
                ev.push(submit, i, -1, 0, 1e18, 1.0, 0)
            for _ in range(n):
                t0 = clock()
                process(1)
                samples.append(clock() - t0)
            s.actions.clear()
            j += n
    finally:
        gc.enable()
    samples.sort()
    return {
        "impl": "compiled" if impl is _core.scheduler_c else "python",
        "workers": workers,
        "jobs": jobs,
        "decisions_per_s": round(jobs / elapsed),
        "p50_ns": _percentile(samples, 0.50),
        "p99_ns": _percentile(samples, 0.99),
        #: Each decision's time, for --plot (not printed).
        "latency_samples_ms": [ns / 1e6 for ns in samples],
    }


def memory(impl: ModuleType, workers: int = 10_000, jobs: int = 100_000) -> dict[str, Any]:
    """Bytes of core memory per registered worker and per queued job, as
    tracemalloc sees them, with the arrays grown the normal way (doubling)."""
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        s = impl.Scheduler(seed=1, ring_capacity=2 * BATCH)
        ring_bytes = tracemalloc.get_traced_memory()[0] - base
        for w in range(workers):
            s.events.push(EventKind.WORKER_REGISTER, -1, w, 0, 0.0, 0.0, 4)
            if len(s.events) >= BATCH:
                s.process()
        s.process()
        s.actions.clear()
        after_workers = tracemalloc.get_traced_memory()[0]
        for j in range(jobs):  # key 1 has no workers: every job waits
            s.events.push(EventKind.JOB_SUBMIT, j, -1, 1, 1e18, 0.0, 0)
            if len(s.events) >= BATCH:
                s.process()
                s.actions.clear()
        s.process()
        s.actions.clear()
        after_jobs = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return {
        "impl": "compiled" if impl is _core.scheduler_c else "python",
        "bytes_per_worker": round((after_workers - base - ring_bytes) / workers, 1),
        "bytes_per_pending_job": round((after_jobs - after_workers) / jobs, 1),
    }


def run(workers: list[int], jobs: int, python_jobs: int, impls: list[str]) -> dict[str, Any]:
    available = _core.implementations()
    missing = [name for name in impls if name not in available]
    if missing:
        raise SystemExit(f"not available here: {', '.join(missing)} (is the core built?)")
    results = []
    for n in workers:
        for name in impls:
            impl = available[name]
            results.append(measure(impl, n, jobs if name == "compiled" else python_jobs))
    mem = [memory(available[name]) for name in impls]
    return {"results": results, "memory": mem, "targets": TARGETS}


def render(report: dict[str, Any]) -> str:
    from edgedispatch.cli.tables import markdown_table

    by = {(r["impl"], r["workers"]): r for r in report["results"]}
    header = ("impl", "workers", "decisions/s", "p50 ns", "p99 ns")
    keys = ("impl", "workers", "decisions_per_s", "p50_ns", "p99_ns")
    lines = [markdown_table(header, [[r[k] for k in keys] for r in report["results"]]), ""]
    for (impl, n), r in sorted(by.items()):
        py = by.get(("python", n))
        if impl == "compiled" and py:
            ratio = r["decisions_per_s"] / py["decisions_per_s"]
            lines.append(f"compiled/python at {n} workers: {ratio:.1f}x")
    for m in report["memory"]:
        lines.append(
            f"{m['impl']} core memory: {m['bytes_per_worker']} B per worker, "
            f"{m['bytes_per_pending_job']} B per pending job"
        )
    t = report["targets"]
    lines.append(
        f"targets: >= {t['decisions_per_s_at_1024_compiled']:,} decisions/s at 1024 workers "
        f"(compiled), >= {t['speedup_vs_python_at_1024']}x python, <= {t['bytes_per_worker']} B "
        "per worker and per pending job"
    )
    return "\n".join(lines)
