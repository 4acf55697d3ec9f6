"""Agent servers on demand: a LiveKit agent server program that edgedispatch
starts when a job waits for its agent and no such worker is connected,
restarts with backoff when it crashes, and stops once it has been idle for
``idle_timeout`` (scale to zero), within ``min_instances``/``max_instances``.

The program gets LIVEKIT_URL (this server), LIVEKIT_API_KEY and
LIVEKIT_API_SECRET of its tenant, so the workers it registers belong to
that tenant.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from edgedispatch.config.agents import AgentDefinition
from edgedispatch.runtime.process import ChildProcess, base_env, exit_text, wait_for_exits

log = logging.getLogger("edgedispatch.agents")

#: Starts a program: ``ChildProcess.start``'s signature (the containment's
#: ``spawn`` stands in for it).
Spawn = Callable[
    [list[str], dict[str, str], str, Callable[[str], None], Callable[[int], None]],
    Awaitable[ChildProcess],
]

BACKOFF_BASE, BACKOFF_MAX = 1.0, 30.0
#: An instance that ran this long before it crashed had come up fine: its
#: crash starts the backoff afresh (supervisord's ``startsecs``).
STABLE_AFTER = 10.0
STOP_GRACE = 15.0
IDLE_CHECK = 0.5


class AgentServerSupervisor:
    """:param busy: how many jobs of this agent are queued or running now.
    :param waiting: (jobs of this agent queued, its workers connected)."""

    def __init__(
        self,
        definition: AgentDefinition,
        url: str,
        api_key: str,
        secret: str,
        busy: Callable[[], int],
        waiting: Callable[[], tuple[int, int]] = lambda: (0, 0),
        spawn: Spawn = ChildProcess.start,
    ) -> None:
        self.definition = definition
        self._url, self._api_key, self._secret = url, api_key, secret
        self._busy = busy
        self._waiting = waiting
        self._spawn_process = spawn
        self._loop = asyncio.get_running_loop()
        self.instances: list[ChildProcess] = []
        self._starting = 0
        self._crashes = 0
        self._restart: asyncio.TimerHandle | None = None
        self._idle_since: float | None = None
        self._closed = False
        self.starts = 0  # how many times an instance was started (tests, status)
        self._timer = self._loop.call_later(IDLE_CHECK, self._check)
        for _ in range(definition.min_instances):
            self._spawn()

    @property
    def wanted(self) -> int:
        return len(self.instances) + self._starting

    def demand(self, connected: int) -> None:
        """A job of this agent waits: none of its ``connected`` workers has
        room (or there is none).  Start an instance if none runs, or one
        more, up to max_instances, once every instance has connected (one
        still starting will take jobs soon)."""
        self._idle_since = None
        if self._restart is not None or self._closed:
            return
        wanted = self.wanted
        if wanted == 0 or (connected >= wanted and wanted < self.definition.max_instances):
            self._spawn()

    def _spawn(self) -> None:
        self._starting += 1
        self.starts += 1
        self._loop.create_task(self._start())

    async def _start(self) -> None:
        d = self.definition
        env = base_env(d.env)
        env.update(
            LIVEKIT_URL=self._url, LIVEKIT_API_KEY=self._api_key, LIVEKIT_API_SECRET=self._secret
        )
        proc: ChildProcess | None = None
        started = self._loop.time()

        def on_exit(code: int) -> None:
            if proc is not None and proc in self.instances:
                self.instances.remove(proc)
            self._exited(code, self._loop.time() - started)

        try:
            proc = await self._spawn_process(d.worker, env, d.cwd, self._output, on_exit)
        except OSError as exc:
            self._starting -= 1
            log.error("cannot start agent server: %s", exc, extra={"agent": d.name})
            self._exited(127, 0.0)
            return
        self._starting -= 1
        if self._closed:
            proc.terminate(STOP_GRACE)
            return
        self.instances.append(proc)
        log.info(
            "agent server started (pid %d)", proc.pid, extra={"agent": d.name, "tenant": d.tenant}
        )

    def _output(self, line: str) -> None:
        log.info("%s", line, extra={"agent": self.definition.name})

    def _exited(self, code: int, ran: float) -> None:
        d = self.definition
        if self._closed or code == 0 or code == -15:
            log.info("agent server stopped (%s)", exit_text(code), extra={"agent": d.name})
            return
        if ran >= STABLE_AFTER:
            self._crashes = 0
        self._crashes += 1
        delay = min(BACKOFF_MAX, BACKOFF_BASE * 2 ** (self._crashes - 1))
        log.warning(
            "agent server %s; restarting in %g s", exit_text(code), delay, extra={"agent": d.name}
        )
        self._restart = self._loop.call_later(delay, self._restart_now)

    def _restart_now(self) -> None:
        self._restart = None
        if not self._closed and self.wanted < max(1, self.definition.min_instances):
            self._spawn()

    def _check(self) -> None:
        """Scale up while jobs wait; to zero (min_instances) once idle."""
        if self._closed:
            return
        now = self._loop.time()
        if self._busy() > 0:
            self._idle_since = None
            queued, connected = self._waiting()
            if queued and not self.definition.max_instances <= self.wanted:
                self.demand(connected)  # jobs wait and the instances are full
        elif self._idle_since is None:
            self._idle_since = now
        elif now - self._idle_since >= self.definition.idle_timeout:
            keep = self.definition.min_instances
            for proc in self.instances[keep:]:
                log.info(
                    "agent server idle for %g s: stopping it",
                    self.definition.idle_timeout,
                    extra={"agent": self.definition.name},
                )
                proc.terminate(STOP_GRACE)
            self._idle_since = now
        self._timer = self._loop.call_later(IDLE_CHECK, self._check)

    def stop(self) -> None:
        for proc in self.instances:
            proc.terminate(STOP_GRACE)

    async def close(self) -> None:
        self._closed = True
        self._timer.cancel()
        if self._restart is not None:
            self._restart.cancel()
        for proc in self.instances:
            proc.terminate(2.0)
        await wait_for_exits(lambda: not self.instances)
