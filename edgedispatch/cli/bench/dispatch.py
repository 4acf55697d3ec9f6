"""``edgedispatch bench dispatch``: the whole server, end to end.

Starts ``edgedispatch serve`` and N simulated workers (in separate
processes, speaking protobuf over WebSockets), then drives CreateDispatch
over keep-alive HTTP connections at a fixed rate (open loop).

Latency runs from the moment a CreateDispatch was *due* to be sent (so a
slow server cannot hide queueing delay) to the moment the worker that got the
job sends JS_RUNNING; both ends read CLOCK_MONOTONIC, which all processes
share.  The sustained rate counts dispatches that reached JS_RUNNING.  RSS
per worker is the server's growth when the N workers connect and idle.
"""

from __future__ import annotations

import gc
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import uvloop

from edgedispatch.cli.bench import server_view
from edgedispatch.cli.bench.common import percentile, start_server, stop
from edgedispatch.cli.bench.driver import Driver
from edgedispatch.server import raise_fd_limit

TARGETS = {
    "dispatches_per_s": 3000,
    "p99_ms_at_1000_per_s": 10.0,
    "rss_mb_for_5000_idle_workers": 150.0,
}


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def children(pid: int) -> list[int]:
    """The processes ``pid`` started (the media workers, the store's writer)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


def _config_file(text: str) -> str:
    """A configuration file for the server, removed when this process exits."""
    import atexit
    import tempfile

    fd, path = tempfile.mkstemp(prefix="edgedispatch-bench-", suffix=".toml")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    atexit.register(_remove, path)
    return path


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def pin(pid: int, cpus: set[int], *, tree: bool = False) -> None:
    """Keep the server (``tree``: with the processes it started, such as
    the store's writer) and the load on separate cores, so that the numbers
    measure the server rather than the scheduler's mixing of them."""
    if len(os.sched_getaffinity(0)) > 1:
        for each in [pid, *(children(pid) if tree else ())]:
            try:
                os.sched_setaffinity(each, cpus)
            except OSError:
                pass  # ended meanwhile


def pin_apart(server_pid: int) -> Callable[[], None]:
    """The server (and what it started) on the first of this process's
    cores, this process (the load; its simulated workers inherit it) on
    the others.  Returns what gives this process its cores back, for the
    end of the run: a second run in the same process (``--paired``) would
    otherwise find only the load's core, and put the server on it too
    (every run after a pair's first measured the two sharing one core)."""
    own = os.sched_getaffinity(0)
    ordered = sorted(own)
    server_cpus, load_cpus = {ordered[0]}, set(ordered[1:]) or {ordered[0]}
    pin(server_pid, server_cpus, tree=True)
    pin(os.getpid(), load_cpus)  # only this process: the server is its child
    return lambda: os.sched_setaffinity(0, own)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of the server and its children (the media workers, the
    store's writer); children that ended meanwhile are not counted."""
    total = cpu_seconds(pid)
    for child in children(pid):
        try:
            total += cpu_seconds(child)
        except OSError:
            pass
    return total


def run(
    workers: int,
    rate: float,
    duration: float,
    hold: float = 0.5,
    procs: int = 2,
    python: list[str] | None = None,
    loop: str = "uvloop",
    url: str | None = None,
    server_pid: int | None = None,
    load_per_job: float = 0.0,
    gate: float = 0.0,
    report_interval: float = 2.5,
    data_dir: str | None = None,
    scrape: float = 0.0,
    sched_slice: float | None = None,
) -> dict[str, Any]:
    """:param python: how to start the server's interpreter (e.g. under a profiler).
    :param loop: the server's event loop (``serve --loop``).
    :param url: a server already running (``bench rooms`` measures dispatch
        beside its rooms): nothing is pinned, and RSS and CPU are measured
        only if its ``server_pid`` is given.
    :param load_per_job: workers report this load per running job, every
        ``report_interval`` seconds (0: they report load 0 once).
    :param gate: workers decline, and report FULL, at this load or more (0:
        they accept everything), as livekit-agents' workers do.
    :param data_dir: the server keeps its state there (the SQLite store:
        every CreateDispatch is answered after its commit).
    :param scrape: GET /metrics every this many seconds while sending (0:
        never), to measure what metrics cost against a run without.
    :param sched_slice: the server's ``server.sched_slice`` (None: its default)."""
    raise_fd_limit()
    server = None
    if url is None:
        extra: tuple[str, ...] = ("--data-dir", data_dir) if data_dir else ()
        if sched_slice is not None:
            extra += ("--config", _config_file(f"[server]\nsched_slice = {sched_slice}\n"))
        server, url = start_server("--log-format", "json", "--loop", loop, *extra, python=python)
        server_pid = server.pid
    sims: list[subprocess.Popen[str]] = []
    unpin: Callable[[], None] = lambda: None  # noqa: E731
    try:
        host, port = url.removeprefix("http://").split(":")
        if server is not None:
            unpin = pin_apart(server.pid)
        time.sleep(0.5)
        rss_before = rss_kb(server_pid) if server_pid else 0
        per_proc = [workers // procs + (1 if i < workers % procs else 0) for i in range(procs)]
        for count in per_proc:
            if count:
                sims.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "edgedispatch.cli.bench.sim_workers",
                            "--url",
                            url,
                            "--count",
                            str(count),
                            "--hold",
                            str(hold),
                            "--load-per-job",
                            str(load_per_job),
                            "--gate",
                            str(gate),
                            "--report-interval",
                            str(report_interval),
                        ],
                        stdout=subprocess.PIPE,
                        text=True,
                        env={**os.environ, "PYTHONWARNINGS": "ignore"},
                    )
                )
        for sim in sims:
            assert sim.stdout is not None
            line = sim.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"simulated workers failed to start: {line!r}")
        time.sleep(1.0)
        rss_idle = rss_kb(server_pid) if server_pid else 0
        driver = Driver(host, int(port), rate, duration, scrape)
        view0 = server_view.scrape(url)
        started, cpu0 = time.monotonic(), tree_cpu_seconds(server_pid) if server_pid else 0.0
        if rate > 0:
            # The driver's own collections would delay sends, which count
            # as latency (due time to JS_RUNNING): none while it sends.
            gc.freeze()
            gc.disable()
            try:
                uvloop.run(driver.run())
            finally:
                gc.enable()
                gc.unfreeze()
        ran = time.monotonic() - started
        server_cpu = (tree_cpu_seconds(server_pid) - cpu0) / ran if server_pid else math.nan
        # The rate from when the driver's connections were open (512 take a
        # while to open; the first request is due 0.2 s after).
        sent_for = started + ran - (driver.opened_at or started)
        # Let the last jobs start (busy workers: the queue drains as jobs end).
        time.sleep(min(2.0, hold + 1.0) if gate <= 0 else hold + 8.0)
        view1 = server_view.scrape(url)
        running_at: dict[str, float] = {}
        declines = 0
        for sim in sims:
            sim.terminate()
            out, _ = sim.communicate(timeout=60)
            report = json.loads(out.strip().splitlines()[-1])
            running_at.update(report["running_at"])
            declines += report["declines"]
    finally:
        unpin()
        for sim in sims:
            if sim.poll() is None:
                sim.kill()
        if server is not None:
            stop(server, timeout=10)
    latencies = sorted(
        (running_at[k] - due) * 1000 for k, due in driver.due.items() if k in running_at
    )
    done = len(latencies)
    return {
        "workers": workers,
        "rate": rate,
        "duration_s": duration,
        "sent": len(driver.due),
        "completed": done,
        "errors": driver.errors,
        "declines": declines,
        "declines_per_assignment": round(declines / done, 3) if done else math.nan,
        "dispatches_per_s": round(done / sent_for, 1) if rate > 0 and sent_for > 0 else 0.0,
        "latency_ms": {
            "p50": round(percentile(latencies, 0.50), 3),
            "p90": round(percentile(latencies, 0.90), 3),
            "p99": round(percentile(latencies, 0.99), 3),
            "max": round(latencies[-1], 3) if latencies else math.nan,
        },
        #: Every CreateDispatch -> JS_RUNNING, for --plot (not printed).
        "latency_samples_ms": latencies,
        "store": bool(data_dir),
        "metrics_scrapes": len(driver.scrape_ms),
        "metrics_scrape_ms_mean": (
            round(sum(driver.scrape_ms) / len(driver.scrape_ms), 2) if driver.scrape_ms else None
        ),
        "rss_per_worker_kb": round((rss_idle - rss_before) / max(workers, 1), 2),
        "server_rss_idle_mb": round(rss_idle / 1024, 1),
        "server_cpu_share": round(server_cpu, 2),  # of one core, while sending
        #: The server's (and its children's) CPU time per dispatch while
        #: sending: what the store costs, less blurred by other processes
        #: than throughput is.
        "server_cpu_us_per_dispatch": (
            round(server_cpu * ran / done * 1e6, 1) if done and server_pid else math.nan
        ),
        #: The server's own view (``server_view``): a job's creation to its
        #: assignment, from its histogram (None if /metrics did not answer).
        "server_assign_ms": server_view.report(view0, view1),
        "targets": TARGETS,
    }


def render(r: dict[str, Any]) -> str:
    from edgedispatch.cli.tables import markdown_table

    lat = r["latency_ms"]
    header = ("workers", "rate/s", "sent", "reached JS_RUNNING", "errors", "dispatches/s",
              "p50 ms", "p90 ms", "p99 ms", "max ms")  # fmt: skip
    row = [r["workers"], r["rate"], r["sent"], r["completed"], r["errors"],
           r["dispatches_per_s"], lat["p50"], lat["p90"], lat["p99"], lat["max"]]  # fmt: skip
    return "\n".join(
        [
            markdown_table(header, [row]),
            "",
            f"workers {r['workers']}, target rate {r['rate']:g}/s for {r['duration_s']:g} s: "
            f"{r['completed']}/{r['sent']} dispatches reached JS_RUNNING, {r['errors']} errors, "
            f"{r['declines']} declines ({r['declines_per_assignment']} per assignment)",
            f"sustained: {r['dispatches_per_s']:,} dispatches/s "
            f"(server used {r['server_cpu_share']:.0%} of a core)",
            f"CreateDispatch -> JS_RUNNING: p50 {lat['p50']} ms, p90 {lat['p90']} ms, "
            f"p99 {lat['p99']} ms, max {lat['max']} ms",
            *(
                [
                    "the server's own view (creation -> assignment, its /metrics histogram): "
                    + server_view.summary(view)
                ]
                if (view := r.get("server_assign_ms"))
                else []
            ),  # fmt: skip
            f"server RSS: {r['rss_per_worker_kb']} kB per idle worker connection "
            f"({r['server_rss_idle_mb']} MB with {r['workers']} workers)",
            *(
                [
                    f"/metrics scraped {r['metrics_scrapes']} times while sending, "
                    f"{r['metrics_scrape_ms_mean']} ms each on average"
                ]
                if r["metrics_scrapes"]
                else []
            ),  # fmt: skip
            f"targets: >= {TARGETS['dispatches_per_s']:,}/s sustained; p99 <= "
            f"{TARGETS['p99_ms_at_1000_per_s']} ms at 1,000/s; <= "
            f"{TARGETS['rss_mb_for_5000_idle_workers']} MB for 5,000 idle workers",
        ]
    )


#: What a variant may cost, as a share of the plain server's throughput:
#: the store (issue: within 20%) and Prometheus scrapes (under 5%).
PAIRED_TARGETS = {"store": 0.80, "scrape": 0.95}


def paired(repeat: int, variant: str, run_variant: Any, run_plain: Any) -> dict[str, Any]:
    """Runs the plain server and ``variant`` alternately, ``repeat`` times
    each, and compares their medians: on this shared machine one run's
    throughput varies by 15% either way, so a single pair says little.

    :param run_variant: / :param run_plain: each starts one ``run`` and
        returns its report."""
    plain: list[dict[str, Any]] = []
    other: list[dict[str, Any]] = []
    for _ in range(repeat):
        plain.append(run_plain())
        other.append(run_variant())

    def median(reports: list[dict[str, Any]], key: str) -> float:
        values = sorted(r[key] if key != "p99" else r["latency_ms"]["p99"] for r in reports)
        mid = len(values) // 2
        return float(values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2)

    plain_rate, other_rate = median(plain, "dispatches_per_s"), median(other, "dispatches_per_s")
    plain_cpu = median(plain, "server_cpu_us_per_dispatch")
    other_cpu = median(other, "server_cpu_us_per_dispatch")
    return {
        "variant": variant,
        "pairs": repeat,
        "plain_dispatches_per_s": [r["dispatches_per_s"] for r in plain],
        "variant_dispatches_per_s": [r["dispatches_per_s"] for r in other],
        "plain_median": plain_rate,
        "variant_median": other_rate,
        "ratio": round(other_rate / plain_rate, 3) if plain_rate else math.nan,
        "plain_cpu_us_per_dispatch": plain_cpu,
        "variant_cpu_us_per_dispatch": other_cpu,
        #: Throughput if the server's core were the only limit.
        "cpu_ratio": round(plain_cpu / other_cpu, 3) if other_cpu else math.nan,
        "plain_p99_ms_median": median(plain, "p99"),
        "variant_p99_ms_median": median(other, "p99"),
        "errors": sum(r["errors"] for r in plain + other),
        "target_ratio": PAIRED_TARGETS[variant],
    }


def render_paired(r: dict[str, Any]) -> str:
    from edgedispatch.cli.tables import markdown_table

    header = ("run", "plain dispatches/s", f"with {r['variant']} dispatches/s", "ratio")
    rows = [
        [i + 1, a, b, round(b / a, 3) if a else "-"]
        for i, (a, b) in enumerate(
            zip(r["plain_dispatches_per_s"], r["variant_dispatches_per_s"], strict=True)
        )
    ]
    rows.append(["median", r["plain_median"], r["variant_median"], r["ratio"]])
    return "\n".join(
        [
            markdown_table(header, rows),
            "",
            f"with {r['variant']}: {r['ratio']:.0%} of the plain server's throughput "
            f"(median of {r['pairs']} alternating pairs; target >= {r['target_ratio']:.0%}); "
            f"p99 {r['plain_p99_ms_median']} ms plain, {r['variant_p99_ms_median']} ms with it; "
            f"{r['errors']} errors",
            f"server CPU per dispatch (with its children): {r['plain_cpu_us_per_dispatch']} us "
            f"plain, {r['variant_cpu_us_per_dispatch']} us with {r['variant']}: "
            f"{r['cpu_ratio']:.0%} of the plain throughput if only its core limited it",
        ]
    )
