"""A program edgedispatch started: spawned off the event loop (uvloop's
spawn blocks the loop until exec), its output logged line by line, its exit
watched through a pidfd (no thread, no SIGCHLD handler)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import Callable

PIPE_LINGER = 0.2  # seconds the output pipe is read after the exit

#: Server secrets never reach programs we start.
_SECRET_VARS = ("EDGEDISPATCH_KEYS", "LIVEKIT_KEYS", "LIVEKIT_API_SECRET", "LIVEKIT_API_KEY")


def base_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SECRET_VARS}
    env.update(extra)
    return env


def exit_text(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "?"
        return f"killed by signal {-code} ({name})"
    return f"exited with code {code}"


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class _Lines(asyncio.Protocol):
    def __init__(self, on_line: Callable[[str], None]) -> None:
        self._on_line = on_line
        self._buf = b""

    def data_received(self, data: bytes) -> None:
        self._buf += data
        *lines, self._buf = self._buf.split(b"\n")
        for line in lines:
            self._on_line(line.decode(errors="replace").rstrip("\r"))
        if len(self._buf) > 64 * 1024:  # a line without end: log what we have
            self._on_line(self._buf.decode(errors="replace"))
            self._buf = b""

    def eof_received(self) -> bool | None:
        if self._buf:
            self._on_line(self._buf.decode(errors="replace"))
            self._buf = b""
        return None


class ChildProcess:
    """Start with ``await ChildProcess.start(...)``; ``on_exit(code)`` is
    called once (negative code: killed by that signal)."""

    def __init__(self, proc: subprocess.Popen[bytes], on_exit: Callable[[int], None]) -> None:
        self._proc = proc
        self.pid = proc.pid
        self.returncode: int | None = None
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
        child = cls(proc, on_exit)
        assert proc.stdout is not None
        child._pipe, _ = await loop.connect_read_pipe(lambda: _Lines(on_line), proc.stdout)
        return child

    @property
    def running(self) -> bool:
        return self.returncode is None

    def terminate(self, grace: float) -> None:
        """SIGTERM its process group, and SIGKILL it after ``grace`` seconds."""
        if not self.running:
            return
        self._signal(signal.SIGTERM)
        if self._kill_timer is None:
            self._kill_timer = self._loop.call_later(grace, self.kill)

    def kill(self) -> None:
        if self.running:
            self._signal(signal.SIGKILL)

    def rss_mb(self) -> float:
        return rss_mb(self.pid)

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass

    def _reap(self) -> None:
        self._loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        self.returncode = self._proc.wait()
        if self._kill_timer is not None:
            self._kill_timer.cancel()
        # Whatever it left in its group (it was its session leader) goes too.
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        # Its output pipe ends with it.  Normally EOF closes our end; a
        # grandchild still holding the pipe would keep it open, so close it
        # shortly after regardless (after the last lines are read).
        self._loop.call_later(PIPE_LINGER, self._close_pipe)
        self._on_exit(self.returncode)

    def _close_pipe(self) -> None:
        if self._pipe is not None:
            self._pipe.close()
            self._pipe = None
