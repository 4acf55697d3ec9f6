"""What the host says about a bench step's window, read from ``/proc``
before and after it: the CPU of each group of processes (the server, its
media workers, the load), how long their threads waited for a core, how
busy the whole machine was, and the datagrams the kernel dropped at each
UDP socket.  ``bench sip --media`` reports them beside its loss figures,
to say where loss came from: a process short of CPU, a machine shared
with other runs, or a full receive buffer."""

from __future__ import annotations

import os

from edgedispatch.cli.bench.dispatch import cpu_seconds


def cpu_seconds_by_group(watched: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds of each group of processes (ended ones count as 0)."""
    found: dict[str, float] = {}
    for name, pids in watched.items():
        total = 0.0
        for pid in pids:
            try:
                total += cpu_seconds(pid)
            except OSError:
                pass
        found[name] = total
    return found


def run_queue_seconds_by_group(watched: dict[str, list[int]]) -> dict[str, float]:
    """Seconds each group's threads spent waiting on a run queue
    (``/proc/PID/task/TID/schedstat``, its second field)."""
    found: dict[str, float] = {}
    for name, pids in watched.items():
        total = 0
        for pid in pids:
            try:
                for tid in os.listdir(f"/proc/{pid}/task"):
                    with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                        total += int(f.read().split()[1])
            except (OSError, IndexError, ValueError):
                pass
        found[name] = total / 1e9
    return found


def busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (``/proc/stat``)."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def udp_drops() -> dict[int, int]:
    """Local UDP port -> datagrams dropped at its socket (``/proc/net/udp``)."""
    drops: dict[int, int] = {}
    try:
        with open("/proc/net/udp") as f:
            next(f)
            for line in f:
                fields = line.split()
                port = int(fields[1].rsplit(":", 1)[1], 16)
                drops[port] = drops.get(port, 0) + int(fields[-1])
    except (OSError, ValueError, IndexError):
        pass
    return drops
