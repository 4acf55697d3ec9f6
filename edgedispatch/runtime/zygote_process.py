"""A native pool's zygote as an OS process: started off the event loop,
waited for until it has loaded the agent, and reaped.

Its connection is the pool's business (``pool_conn``): the pool tells this
object what arrived on it (``loaded``, ``load_failed``, ``lost``).  What
this object keeps is every ``Popen`` it started until it has waited for it,
so that no zygote is left behind: not the current one, not one that died
(``retire``), not one whose start was still in flight when the pool closed
(``settle``).
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import Callable

from edgedispatch.errors import ConfigError

_EXIT_LINGER = 0.5  # after the zygote exits, for its last connection to be read
_POLL = 0.05  # how often a start checks the process while it waits


class ZygoteProcess:
    """Starts ``cmd`` with the environment ``env`` (all of it: nothing of the
    server's is added).  ``where`` names the agent in errors; ``python`` is
    the zygote's interpreter, for the error when it cannot run."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        cmd: list[str],
        env: dict[str, str],
        where: str,
        python: str,
        start_timeout: float,
    ) -> None:
        self._loop = loop
        self._cmd = cmd
        self._env = env
        self._where = where
        self._python = python
        self._start_timeout = start_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._popen: asyncio.Future[subprocess.Popen[bytes]] | None = None
        self._loaded: asyncio.Future[int] | None = None
        self._retired: list[subprocess.Popen[bytes]] = []

    @property
    def pid(self) -> int:
        """The current zygote's process's pid (bwrap's, when sandboxed); 0
        when there is none."""
        return self._proc.pid if self._proc is not None else 0

    async def spawn(self, connected: Callable[[], bool]) -> int:
        """Start a zygote and wait until it has loaded the agent; return the
        number of threads it had then.  ``connected()`` says whether its
        control connection is up.  Raises ``ConfigError`` when it cannot
        run, exits or times out before loading."""
        loop = self._loop
        loaded: asyncio.Future[int] = loop.create_future()
        self._loaded = loaded
        # Popen forks and waits for the exec: off the loop.  Shielded, so that
        # close() during a restart still learns of the process, to reap it.
        self._popen = loop.run_in_executor(None, _popen, self._cmd, self._env)
        try:
            proc = await asyncio.shield(self._popen)
        except OSError as exc:
            raise ConfigError(f"{self._where}: cannot run {self._python}: {exc}") from None
        self._proc = proc
        deadline = loop.time() + self._start_timeout
        exited_at = 0.0
        try:
            while not loaded.done():
                await asyncio.wait([loaded], timeout=_POLL)
                now = loop.time()
                if loaded.done():
                    break
                if not connected() and proc.poll() is not None:
                    # Give its last connection a moment to be accepted and read.
                    exited_at = exited_at or now
                    if now - exited_at > _EXIT_LINGER:
                        raise ConfigError(
                            f"{self._where}: the zygote exited with code {proc.returncode} "
                            "before loading the agent (see the server's stderr)"
                        )
                if now > deadline:
                    raise ConfigError(
                        f"{self._where}: the agent did not load in {self._start_timeout:g} s"
                    )
            return loaded.result()
        finally:
            self._loaded = None
            loaded.cancel()

    # What arrived on its connection, while ``spawn`` waits (else ignored).

    def loaded(self, threads: int) -> None:
        if self._loaded is not None and not self._loaded.done():
            self._loaded.set_result(threads)

    def load_failed(self, error: str) -> None:
        if self._loaded is not None and not self._loaded.done():
            self._loaded.set_exception(ConfigError(error))

    def lost(self) -> None:
        """Its connection closed."""
        if self._loaded is not None and not self._loaded.done():
            error = ConfigError(f"{self._where}: the zygote exited while loading")
            self._loaded.set_exception(error)

    # Reaping.

    def retire(self) -> None:
        """The current zygote is dead or dying: ``reap`` waits for it."""
        if self._proc is not None:
            self._retired.append(self._proc)
            self._proc = None

    async def settle(self) -> None:
        """Let a start in flight create its process, so that it is reaped
        too (``close`` during a restart)."""
        if self._popen is not None:
            with contextlib.suppress(OSError):
                proc = await self._popen
                if proc is not self._proc:
                    self._retired.append(proc)

    async def reap(self) -> None:
        """Wait for the retired zygotes to exit."""
        while self._retired:
            await _wait_exit(self._retired[0])
            # Only once it is waited for: if this is cancelled (close()
            # during a restart), close() still reaps the rest.
            self._retired.pop(0)


def _popen(cmd: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    # A new session keeps the terminal's Ctrl-C away from the pool: the
    # server decides when jobs stop.
    return subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, start_new_session=True)


async def _wait_exit(proc: subprocess.Popen[bytes]) -> None:
    # Popen.wait blocks: in an executor.  The zygote exits promptly once its
    # connection closes; SIGKILL if it does not.
    loop = asyncio.get_running_loop()
    try:
        await loop.run_in_executor(None, proc.wait, 5.0)
    except subprocess.TimeoutExpired:
        proc.kill()
        await loop.run_in_executor(None, proc.wait)
