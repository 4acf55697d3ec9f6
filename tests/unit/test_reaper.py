"""``runtime/reaper.py``, the parent that keeps a job's processes together
on a host without cgroups or PID namespaces: run as the server runs it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

from edgedispatch.runtime.contain import REAPER
from edgedispatch.runtime.process import descendants, kill_tree


def reaped(*argv: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-I", "-S", REAPER, *argv], start_new_session=True)


def alive_with(token: str) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if token.encode() in f.read():
                        found.append(int(pid))
            except OSError:
                pass
    return found


def gone(token: str, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while alive_with(token):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# A program that leaves a setsid'd grandchild and a double-forked one behind.
SLEEP = f"{sys.executable} -c 'import time; time.sleep(300)'"
LEAVES = "setsid " + SLEEP + " {t} & ( ( " + SLEEP + " {t} ) & ) ; sleep 0.5; exit {code}"


def test_the_programs_exit_code_and_what_it_left_behind() -> None:
    token = f"t{uuid.uuid4().hex}"
    proc = reaped("sh", "-c", LEAVES.format(t=token, code=3))
    assert proc.wait(10) == 3
    assert gone(token)


def test_a_program_killed_by_a_signal_is_reported_so() -> None:
    assert reaped("sh", "-c", "kill -TERM $$").wait(10) == -signal.SIGTERM
    assert reaped("sh", "-c", "kill -KILL $$").wait(10) == -signal.SIGKILL
    assert reaped("no-such-program-here").wait(10) == 127


def test_sigterm_reaches_the_program_once() -> None:
    proc = reaped(
        sys.executable,
        "-c",
        "import signal, sys, time\n"
        "n = []\n"
        "signal.signal(signal.SIGTERM, lambda *a: n.append(1))\n"
        "print('up', flush=True)\n"
        "time.sleep(1)\n"
        "sys.exit(10 + len(n))\n",
    )
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 11


def test_everything_dies_with_the_server() -> None:
    token = f"t{uuid.uuid4().hex}"
    program = LEAVES.format(t=token, code=0).replace("exit 0", f"{SLEEP} {token}")
    # The "server" is a shell that starts the reaper, and is then killed.
    server = subprocess.Popen(["sh", "-c", f'{sys.executable} -I -S {REAPER} sh -c "{program}"; :'])
    assert settled(token, 5)  # the reaper, the program, the sleeps
    server.kill()
    server.wait()
    assert gone(token)


def settled(token: str, n: int) -> bool:
    deadline = time.monotonic() + 5
    while len(alive_with(token)) < n:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_kill_tree_takes_the_orphans_below_a_subreaper() -> None:
    token = f"t{uuid.uuid4().hex}"
    proc = reaped("sh", "-c", LEAVES.format(t=token, code=0).replace("exit 0", f"{SLEEP} {token}"))
    assert settled(token, 5)
    # The setsid'd and double-forked sleeps are still below the reaper.
    below = descendants(proc.pid)
    assert set(alive_with(token)) - {proc.pid} <= set(below)
    kill_tree(proc.pid)
    # Killed either way: the reaper dies of SIGKILL itself, or mirrors its
    # shell, which may see its sleep killed first and exit 128 + SIGKILL.
    assert proc.wait(10) in (-signal.SIGKILL, 128 + signal.SIGKILL)
    assert gone(token)
