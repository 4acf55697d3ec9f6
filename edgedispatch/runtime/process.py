"""A program edgedispatch started: spawned off the event loop (uvloop's
spawn blocks the loop until exec), its output logged line by line, its exit
watched through a pidfd (no thread, no SIGCHLD handler).  When it runs
contained (``runtime.contain``), its cell holds its whole tree: signals
reach every process of the program, and none outlives it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from typing import NamedTuple

from edgedispatch.runtime.cgroups import Cell

PIPE_LINGER = 0.2  # seconds the output pipe is read after the exit


def base_env(extra: Mapping[str, str], home: str = "") -> dict[str, str]:
    """The environment of a program we start: built, never inherited, so
    that nothing of the server's (its keys, its tokens, whatever its own
    environment holds) reaches tenant code.  ``extra`` is added."""
    env = {
        "PATH": f"{os.path.dirname(sys.executable)}:/usr/local/bin:/usr/bin:/bin",
        "TMPDIR": "/tmp",
        "LANG": os.environ.get("LANG", "C.UTF-8"),
    }
    if home:
        env["HOME"] = home
    if "TZ" in os.environ:
        env["TZ"] = os.environ["TZ"]
    env.update(extra)
    return env


def exit_text(code: int) -> str:
    """A process's end in words: ``code`` is its exit code, or -N for
    signal N (``Popen.returncode``'s convention)."""
    if code >= 0:
        return f"exited with code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = "?"
    return f"killed by signal {-code} ({name})"


def proc_status(pid: int, field: str) -> int:
    """A number from ``/proc/PID/status`` (``VmRSS`` in kB, ``PPid``...):
    cheap, unlike smaps.  0 if the process or the field is gone."""
    key = field.encode() + b":"
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


#: Seconds between checks of running jobs against their memory limit.
MEMORY_POLL = 0.25


def tree_rss_kb(pid: int) -> int:
    """The RSS of ``pid`` and of every process below it, summed (pages
    they share are counted in each: an upper bound)."""
    return sum(proc_status(p, "VmRSS") for p in [pid, *descendants(pid)])


def over_memory_limit(pid: int, limit_mb: float) -> str:
    """Why a job whose process tree under ``pid`` uses more than
    ``limit_mb`` of RSS must stop; "" while it does not."""
    kb = tree_rss_kb(pid)
    if kb > limit_mb * 1024:
        return f"memory limit exceeded: {kb / 1024:.0f} MB > {limit_mb:g} MB"
    return ""


def memory_text(limit_mb: float) -> str:
    """Why a job whose tree the kernel cut down at its memory limit failed."""
    return f"memory limit exceeded: > {limit_mb:g} MB (the kernel killed a process of the job)"


def too_long(limit: float) -> str:
    """Why a job that reached its maximum duration of ``limit`` s stops."""
    return f"ran longer than {limit:g} s"


class MemoryUsage(NamedTuple):
    rss_kb: int
    pss_kb: int
    uss_kb: int  # unique: Private_Clean + Private_Dirty


def read_memory(pid: int) -> MemoryUsage:
    """RSS, PSS and USS of a process from ``/proc/PID/smaps_rollup``."""
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
        for line in f.read().decode().splitlines()[1:]:
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                fields[key] = int(parts[0])
    uss = fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)
    return MemoryUsage(fields.get("Rss", 0), fields.get("Pss", 0), uss)


class LineBuffer:
    """Cuts a process's output stream into lines of text.  A line longer
    than ``MAX_LINE`` bytes is cut, so that a program writing without
    newlines cannot grow the buffer without end."""

    MAX_LINE = 64 * 1024

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[str]:
        buf = self._buf
        buf += data
        if b"\n" not in data and len(buf) < self.MAX_LINE:
            return []
        *lines, rest = buf.split(b"\n")
        out = [_text(line) for line in lines]
        if len(rest) >= self.MAX_LINE:
            out.append(_text(rest))
            rest = bytearray()
        self._buf = rest
        return out

    def flush(self) -> list[str]:
        """The unfinished last line, at the end of the stream."""
        if not self._buf:
            return []
        line = _text(self._buf)
        self._buf = bytearray()
        return [line]


def _text(raw: bytes | bytearray) -> str:
    return raw.decode("utf-8", "replace").removesuffix("\r")


class _Lines(asyncio.Protocol):
    def __init__(self, on_line: Callable[[str], None]) -> None:
        self._on_line = on_line
        self._lines = LineBuffer()

    def data_received(self, data: bytes) -> None:
        for line in self._lines.feed(data):
            self._on_line(line)

    def eof_received(self) -> bool | None:
        for line in self._lines.flush():
            self._on_line(line)
        return None


async def wait_for_exits(gone: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait (up to ``timeout`` s) until ``gone()`` says the processes were
    reaped, then until their output pipes have closed (``PIPE_LINGER``)."""
    for _ in range(int(timeout / 0.05)):
        if gone():
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(PIPE_LINGER + 0.05)


class ChildProcess:
    """Start with ``await ChildProcess.start(...)``; ``on_exit(code)`` is
    called once (negative code: killed by that signal).

    :param cell: the cgroup the process joined before it ran (its whole
        tree is in it): ``kill`` empties it, and it is removed at the end.
    :param sandboxed: it runs under bubblewrap (``pid`` is bwrap's):
        signals go to the program inside, as bwrap's death would SIGKILL
        the program at once, with no chance to shut down.
    :param reaped: it runs under ``reaper.py`` (``pid`` is the reaper's),
        which passes SIGTERM on to the program's group and keeps every
        descendant below it: a kill takes them all, from /proc."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        on_exit: Callable[[int], None],
        *,
        cell: Cell | None = None,
        sandboxed: bool = False,
        reaped: bool = False,
    ) -> None:
        self._proc = proc
        self._reaped = reaped
        self.pid = proc.pid
        self.returncode: int | None = None
        self.cell = cell
        self._sandboxed = sandboxed
        self._oom_at_exit = False  # read before the cell is gone
        self._on_exit = on_exit
        self._loop = asyncio.get_running_loop()
        self._pidfd = os.pidfd_open(proc.pid)
        self._loop.add_reader(self._pidfd, self._reap)
        self._kill_timer: asyncio.TimerHandle | None = None
        self._pipe: asyncio.BaseTransport | None = None

    @classmethod
    async def start(
        cls,
        argv: list[str],
        env: dict[str, str],
        cwd: str,
        on_line: Callable[[str], None],
        on_exit: Callable[[int], None],
        *,
        cell: Cell | None = None,
        sandboxed: bool = False,
        reaped: bool = False,
    ) -> ChildProcess:
        loop = asyncio.get_running_loop()
        proc = await loop.run_in_executor(
            None,
            lambda: subprocess.Popen(
                argv,
                env=env,
                cwd=cwd or None,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            ),
        )
        child = cls(proc, on_exit, cell=cell, sandboxed=sandboxed, reaped=reaped)
        assert proc.stdout is not None
        child._pipe, _ = await loop.connect_read_pipe(lambda: _Lines(on_line), proc.stdout)
        return child

    @property
    def running(self) -> bool:
        return self.returncode is None

    def memory_kb(self) -> int:
        """The whole tree's memory: the cell's, or the sum of its RSS."""
        if self.cell is not None:
            return self.cell.memory_bytes() // 1024
        return tree_rss_kb(self.pid)

    def oom_killed(self) -> bool:
        """Whether the kernel killed a process of its tree for the cell's
        memory limit."""
        if not self.running:
            return self._oom_at_exit
        return self.cell is not None and self.cell.oom_kills() > 0

    def terminate(self, grace: float) -> None:
        """SIGTERM the program, and SIGKILL all of it after ``grace`` seconds."""
        if not self.running:
            return
        self._signal(signal.SIGTERM)
        if self._kill_timer is None:
            self._kill_timer = self._loop.call_later(grace, self.kill)

    def kill(self) -> None:
        if self.running:
            self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        if self._reaped and self.cell is None:
            if sig == signal.SIGKILL:
                kill_tree(self.pid)
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, sig)
            return
        if not self._sandboxed:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, sig)
            return
        if sig == signal.SIGKILL:
            if self.cell is not None:
                self.cell.kill_all()
            else:  # bwrap's death takes its PID namespace, all of it, along
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, sig)
            return
        pids = self.cell.pids() if self.cell is not None else descendants(self.pid)
        for pid in pids:
            if not _is_bwrap(pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)

    def _reap(self) -> None:
        self._loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        code = self._proc.wait()
        if self._sandboxed and code > 128:
            code = 128 - code  # bwrap reports a program killed by signal N as 128+N
        self.returncode = code
        if self._kill_timer is not None:
            self._kill_timer.cancel()
        if self.cell is not None:
            self._oom_at_exit = self.cell.oom_kills() > 0
            # Whatever the program left in its cell goes too (off the loop:
            # removal waits for the killed to be gone).
            self._loop.run_in_executor(None, self.cell.remove)
        elif not self._sandboxed:
            # Whatever it left in its group (it was its session leader) goes too.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
        # Its output pipe ends with it.  Normally EOF closes our end; a
        # grandchild still holding the pipe would keep it open, so close it
        # shortly after regardless (after the last lines are read).
        self._loop.call_later(PIPE_LINGER, self._close_pipe)
        self._on_exit(self.returncode)

    def _close_pipe(self) -> None:
        if self._pipe is not None:
            self._pipe.close()
            self._pipe = None


def kill_tree(pid: int) -> None:
    """SIGKILL everything below ``pid``, bottom first, until nothing is
    left (what forks meanwhile is orphaned to ``pid``, a subreaper, and
    taken in the next round), then ``pid`` itself."""
    for _ in range(100):
        pids = [p for p in descendants(pid) if not _zombie(p)]
        if not pids:
            break
        for p in reversed(pids):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _zombie(pid: int) -> bool:
    """Dead, and waiting for its parent to reap it (or gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[0] in (b"Z", b"X")
    except (OSError, IndexError):
        return True


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, from /proc (its threads' children)."""
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


def _is_bwrap(pid: int) -> bool:
    try:
        return os.path.basename(os.readlink(f"/proc/{pid}/exe")) == "bwrap"
    except OSError:
        return False
