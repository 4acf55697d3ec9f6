"""Agent servers on demand: the asyncio shell of their supervision.

An agent server is a LiveKit agent server program (a livekit-agents app run
as ``python agent.py start``, say) that edgedispatch starts when a job
waits for its agent, restarts with backoff when it crashes, and stops once
it has been idle, within ``min_instances``/``max_instances``.  What to do
and when is decided by ``supervisor_policy`` (sans-IO, with the instances'
states in ``supervisor_states``); this shell carries it out: it spawns and
signals processes, answers waiting starts, and keeps one timer armed for
the policy's ``next_deadline()``.

Each process gets its own API key (``EDI_...``) with a secret of its own,
both made at its start and known to the token verifier only while it runs:
LIVEKIT_API_KEY and LIVEKIT_API_SECRET.  The key belongs to the
definition's tenant, so what the program does (register workers, call the
API) is that tenant's; nothing long-lived of the tenant reaches the
program; and a worker registering with that key is known to be this
process's (``worker_registered``), which is how ``agent start`` knows the
agent is up.  It also gets LIVEKIT_URL and PORT, a free TCP port for its
health server (livekit-agents binds 8081 otherwise, and a second agent
server on the host would fail to start).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from edgedispatch.config.agents import AgentDefinition
from edgedispatch.runtime import supervisor_policy
from edgedispatch.runtime.process import ChildProcess, base_env, exit_text, wait_for_exits
from edgedispatch.runtime.supervisor_policy import (
    Answer,
    JobCounts,
    Spawn,
    Supervision,
    Terminate,
)

log = logging.getLogger("edgedispatch.agents")

#: Seconds ``agent start`` waits for an instance to register, by default.
START_TIMEOUT = 30.0
#: The prefix of an instance's own API key.
KEY_PREFIX = "EDI_"


class Process(Protocol):
    """What the supervisor needs of a started program (``ChildProcess``)."""

    pid: int

    @property
    def running(self) -> bool: ...

    def terminate(self, grace: float) -> None: ...

    def kill(self) -> None: ...


#: ``ChildProcess.start``'s signature: (argv, env, cwd, on_line, on_exit).
Spawner = Callable[
    [list[str], dict[str, str], str, Callable[[str], None], Callable[[int], None]],
    Awaitable[Process],
]


class KeyRing(Protocol):
    """API keys known at run time (``wire.tokens.Verifier``)."""

    def add_key(self, api_key: str, secret: str, tenant: str) -> None: ...

    def remove_key(self, api_key: str) -> None: ...


def free_port() -> int:
    """A TCP port free now on this host (the kernel's pick)."""
    with socket.socket() as s:
        s.bind(("", 0))
        port: int = s.getsockname()[1]
        return port


class AgentServerSupervisor:
    """:param url: this server's URL, for the program's LIVEKIT_URL.
    :param keys: where each instance's API key is made known.
    :param jobs: (jobs of this agent not ended, of which queued).
    :param spawn: starts a program (``ChildProcess.start`` by default).
    :param enabled: False: stopped (``agent stop``) until ``start``."""

    def __init__(
        self,
        definition: AgentDefinition,
        url: str,
        keys: KeyRing,
        jobs: Callable[[], tuple[int, int]],
        *,
        spawn: Spawner = ChildProcess.start,
        enabled: bool = True,
    ) -> None:
        self.definition = definition
        self._url = url
        self._keys = keys
        self._jobs = jobs
        self._spawn = spawn
        self._loop = asyncio.get_running_loop()
        self._extra: dict[str, Any] = {"tenant": definition.tenant, "agent": definition.name}
        self._procs: dict[int, Process] = {}  # run -> its process
        self._key_run: dict[str, int] = {}  # an instance's API key -> its run
        self._answers: dict[int, asyncio.Future[str]] = {}
        self._stopped: list[asyncio.Future[None]] = []  # wait for no process
        self._tasks: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._policy = Supervision(definition, self._loop.time(), enabled=enabled)
        self._apply()

    # -- what the manager asks -------------------------------------------------

    @property
    def starts(self) -> int:
        """Processes started, ever."""
        return self._policy.starts

    @property
    def processes(self) -> int:
        """Instances with a process running or being started."""
        return self._policy.processes

    @property
    def enabled(self) -> bool:
        return self._policy.enabled

    def summary(self) -> str:
        return self._policy.summary()

    def status(self) -> list[dict[str, Any]]:
        return self._policy.status(self._loop.time(), time.time())

    def demand(self) -> None:
        """A job of this agent waits and no worker of it has room."""
        self._policy.demand(self._loop.time())
        self._apply()

    async def start(self, timeout: float = START_TIMEOUT) -> str:
        """Take jobs, and bring an instance up (``min_instances``).  Returns
        once enough have registered (""), or why not."""
        waiter = self._policy.start(self._loop.time(), timeout)
        answer: asyncio.Future[str] = self._loop.create_future()
        self._answers[waiter] = answer
        self._apply()
        return await answer

    async def stop(self) -> None:
        """Stop every instance, and take no jobs; returns once they exited
        (or after their grace, SIGKILLed)."""
        self._policy.stop(self._loop.time())
        self._apply()
        if self._policy.processes:
            done = self._loop.create_future()
            self._stopped.append(done)
            try:
                await asyncio.wait_for(done, supervisor_policy.STOP_GRACE + 5)
            except TimeoutError:
                log.warning("agent server instances did not exit", extra=self._extra)

    def owns(self, api_key: str) -> bool:
        return api_key in self._key_run

    def worker_registered(self, api_key: str, worker_id: str, agent_name: str) -> None:
        """A worker registered with ``api_key`` (the domain's WorkerRegistered)."""
        run = self._key_run.get(api_key)
        if run is None:
            return
        if agent_name != self.definition.name:
            # Its jobs will not come here: it is not this agent's worker.
            log.warning(
                "agent server registered agent %r, not %r: jobs for %r will not reach it",
                agent_name,
                self.definition.name,
                self.definition.name,
                extra={**self._extra, "worker": worker_id},
            )
            return
        self._policy.registered(run, worker_id, self._loop.time())
        self._apply()

    def worker_lost(self, api_key: str, worker_id: str) -> None:
        run = self._key_run.get(api_key)
        if run is not None:
            self._policy.lost(run, worker_id, self._loop.time())
            self._apply()

    async def close(self) -> None:
        """Stop every instance (SIGKILL after a short grace), start none."""
        self._policy.close(self._loop.time())
        self._apply()
        # Each was told to stop with CLOSE_GRACE: killed after that already.
        await wait_for_exits(lambda: not self._procs, supervisor_policy.CLOSE_GRACE + 1)
        for proc in list(self._procs.values()):
            proc.kill()
        for task in self._tasks:
            task.cancel()
        if self._timer is not None:
            self._timer.cancel()

    # -- carrying the policy's decisions out -------------------------------------

    def _apply(self) -> None:
        for action in self._policy.actions():
            if isinstance(action, Spawn):
                task = self._loop.create_task(self._start(action.run, action.instance))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            elif isinstance(action, Terminate):
                proc = self._procs.get(action.run)
                if proc is not None:
                    proc.terminate(action.grace)
            elif isinstance(action, Answer):
                answer = self._answers.pop(action.waiter, None)
                if answer is not None and not answer.done():
                    answer.set_result(action.error)
        if not self._policy.processes:
            for done in self._stopped:
                if not done.done():
                    done.set_result(None)
            self._stopped.clear()
        self._arm()

    def _arm(self) -> None:
        deadline = self._policy.next_deadline()
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = None if deadline is None else self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        # Whatever the policy says next is armed afresh, even the same time
        # (uvloop may fire a millisecond early, when nothing is due yet).
        self._timer = self._timer_at = None
        self._policy.on_timer(self._loop.time(), JobCounts(*self._jobs()))
        self._apply()

    async def _start(self, run: int, instance: int) -> None:
        d = self.definition
        extra = {**self._extra, "instance": instance}
        api_key, secret = KEY_PREFIX + secrets.token_hex(8), secrets.token_urlsafe(32)
        self._keys.add_key(api_key, secret, d.tenant)
        self._key_run[api_key] = run
        env = base_env(d.env)
        env.update(
            LIVEKIT_URL=self._url,
            LIVEKIT_API_KEY=api_key,
            LIVEKIT_API_SECRET=secret,
            PORT=str(free_port()),
        )
        # A program may exit before the spawn has returned (its output pipe
        # is connected after it started): that exit is told after SPAWNED.
        early: list[int] = []
        spawned = False

        def on_line(line: str) -> None:
            log.info("%s", line, extra=extra)

        def on_exit(code: int) -> None:
            if spawned:
                self._exited(run, api_key, code)
            else:
                early.append(code)

        try:
            proc = await self._spawn(list(d.worker), env, d.cwd, on_line, on_exit)
        except Exception as exc:  # OSError, or whatever a contained spawner raises
            self._forget_key(api_key)
            log.error("cannot start agent server: %s", exc, extra=extra)
            self._policy.spawn_failed(run, str(exc), self._loop.time())
            self._apply()
            return
        spawned = True
        self._procs[run] = proc
        self._policy.spawned(run, proc.pid, self._loop.time())
        self._apply()
        if early:
            self._exited(run, api_key, early[0])

    def _exited(self, run: int, api_key: str, code: int) -> None:
        self._procs.pop(run, None)
        self._forget_key(api_key)
        self._policy.exited(run, code, exit_text(code), self._loop.time())
        self._apply()

    def _forget_key(self, api_key: str) -> None:
        self._key_run.pop(api_key, None)
        self._keys.remove_key(api_key)
