"""Seconds from starting ``edgedispatch serve --dev`` to its ``/readyz``
answering 200, for each program given (the one binary against the venv,
say), N runs each, and their median::

    python benchmarks/startup_time.py /opt/edgedispatch/edgedispatch .venv/bin/edgedispatch

Each run binds port 0 and reads the port from the server's first line.
Not part of the test run: a timing belongs in a benchmark.
"""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
import time

from edgedispatch.cli.bench.faults import _ready as ready

RUNS = 5


def once(program: str) -> float:
    started = time.perf_counter()
    proc = subprocess.Popen(
        [program, "serve", "--dev", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        port = 0
        for line in proc.stdout:
            found = re.search(r"listening on http://[\d.]+:(\d+)", line)
            if found:
                port = int(found.group(1))
                break
        assert port, f"{program} never said where it listens"
        while not ready(port):  # the fault suite's probe of /readyz
            time.sleep(0.005)
        return time.perf_counter() - started
    finally:
        proc.terminate()
        proc.wait(30)


def main(programs: list[str]) -> None:
    print("| program | runs (s) | median (s) |\n|---|---|---:|")
    for program in programs:
        times = [once(program) for _ in range(RUNS)]
        runs = " ".join(f"{t:.2f}" for t in times)
        print(f"| `{program}` | {runs} | {statistics.median(times):.2f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
