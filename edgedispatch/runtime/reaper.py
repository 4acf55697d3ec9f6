"""The fallback that keeps a job's processes together where the host gives
no cgroups and no PID namespace: a small parent for the tenant's program.

``python -I -S reaper.py PROGRAM [ARGS...]``

It makes itself a child subreaper (``PR_SET_CHILD_SUBREAPER``), so every
process the program starts stays below it, even one that called ``setsid``
and lost its parent: the server finds them all under this process
(``process.descendants``).  It starts the program in a process group of its
own, and then:

- SIGTERM or SIGINT to it goes on to the program's group (the program's
  chance to shut down);
- when the program exits, it kills everything that is left below it and
  exits the same way (the same code, or killed by the same signal);
- when the server that started it dies, it kills everything below it and
  exits: nothing outlives the server unmanaged.

A program that runs as the server's own user could still kill this process
with SIGKILL first; a uid per tenant (bubblewrap and root) is what stops
that.  The server kills the tree itself on a hard stop, from the bottom up.

Standard library only, and run with ``-I -S``: it starts per job.
"""

from __future__ import annotations

import ctypes
import os
import resource
import select
import signal
import sys

PR_SET_CHILD_SUBREAPER = 36


def _below(pid: int) -> list[int]:
    out: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tids = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{parent}/task/{tid}/children") as f:
                    kids = [int(k) for k in f.read().split()]
            except (OSError, ValueError):
                continue
            out += kids
            todo += kids
    return out


def kill_everything_below() -> None:
    """SIGKILL every descendant until none is left, reaping as they go (a
    process that forks meanwhile has its child land here as an orphan, and
    the next round takes it)."""
    for _ in range(1000):
        pids = _below(os.getpid())
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        _reap_all()


def _reap_all(program: int = 0) -> int | None:
    """Reap every child that has exited; the program's wait status if it
    was among them."""
    status = None
    while True:
        try:
            pid, st = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return status
        if pid == 0:
            return status
        if pid == program:
            status = st


def _exit_like(status: int) -> None:
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        # Killed by a signal: die of the same one (without a core of our own).
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if -code != signal.SIGKILL:
            signal.signal(-code, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [-code])
        os.kill(os.getpid(), -code)
        code = 128 - code
    os._exit(code)


def main(argv: list[str]) -> None:
    if not argv:
        sys.stderr.write("reaper: no program given\n")
        os._exit(2)
    server = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        sys.stderr.write(f"reaper: PR_SET_CHILD_SUBREAPER: {os.strerror(ctypes.get_errno())}\n")
    try:
        server_fd = os.pidfd_open(server)
    except OSError:
        server_fd = -1
    if os.getppid() != server:
        os._exit(1)  # the server died before it could be watched
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    pending: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: pending.append(signum))
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    try:
        program = os.fork()
    except OSError as exc:
        sys.stderr.write(f"reaper: fork: {exc}\n")
        os._exit(1)
    if program == 0:
        try:
            os.setpgid(0, 0)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            signal.set_wakeup_fd(-1)
            os.close(wake_r)
            os.close(wake_w)
            if server_fd >= 0:
                os.close(server_fd)
            os.execvp(argv[0], argv)
        except BaseException as exc:  # noqa: BLE001 - nothing of ours may run on
            sys.stderr.write(f"reaper: cannot run {argv[0]!r}: {exc}\n")
        os._exit(127)
    poller = select.poll()
    poller.register(wake_r, select.POLLIN)
    if server_fd >= 0:
        poller.register(server_fd, select.POLLIN)
    while True:
        status = _reap_all(program)
        if status is not None:
            kill_everything_below()
            _exit_like(status)
        for fd, _ in poller.poll():
            if fd == server_fd:
                kill_everything_below()
                os._exit(137)
            try:
                while os.read(wake_r, 512):
                    pass
            except BlockingIOError:
                pass
        while pending:
            try:
                os.killpg(program, pending.pop())
            except (ProcessLookupError, PermissionError):
                pass


if __name__ == "__main__":
    main(sys.argv[1:])
