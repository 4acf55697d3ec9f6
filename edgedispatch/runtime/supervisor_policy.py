"""What an agent server's supervisor decides: how many instances it wants,
when a crashed one starts again, when an idle one stops, and what a waiting
``agent start`` is answered.

Sans-IO, as the native pool's policy: every input is a method call with the
loop's time passed in as ``now``; what to do comes out as actions
(``actions()``: spawn a process, terminate one, answer a start) for the
shell (``supervisor.AgentServerSupervisor``) to carry out.  Time is pulled,
as in aioquic: after every call the shell arms one timer for
``next_deadline()``, which calls ``on_timer(now, jobs)``.  The instances'
states and their only moves are ``supervisor_states``'s.

The rules, and why:

- Wanted: ``min_instances`` while the agent is started, or more on demand
  (up to ``max_instances``): a job waiting with no instance wants one, and
  jobs still waiting once every instance has registered want one more (an
  instance still starting will take jobs soon).
- An exit nobody asked for is a crash, whatever its code: a program that
  exits 0 while a job waits would otherwise be restarted in a tight loop.
  The instance backs off (1 s, doubling up to 30 s) and starts again; a
  crash after ``STABLE_AFTER`` of running starts the backoff afresh
  (supervisord's ``startsecs``).  Demand never cuts a backoff short; an
  explicit ``agent start`` does (someone asked for it now).
- An instance that has not registered ``REGISTER_TIMEOUT`` after its start
  is stopped, and that counts as a crash: a program that never connects
  (wrong URL, wrong agent name) must not hold its place forever.
- Idle: once no job of the agent has been queued or running for
  ``idle_timeout`` while no instance is starting, the instances beyond
  ``min_instances`` stop.  The jobs' counts are polled every
  ``CHECK_INTERVAL`` while an instance exists (the domain tells no one when
  a job ends, and asking it is one dict lookup).
- ``agent start`` waits until ``max(1, min_instances)`` instances have
  registered; it is answered with the reason it failed instead if an
  instance crashes first, the agent is stopped, or ``timeout`` passes.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

from edgedispatch.config.agents import AgentDefinition
from edgedispatch.runtime.supervisor_states import LABEL, LIVE, PROCESS, Event, State, apply

__all__ = [
    "Answer",
    "JobCounts",
    "Spawn",
    "Supervision",
    "Terminate",
    "backoff",
]

log = logging.getLogger("edgedispatch.agents")

BACKOFF_BASE, BACKOFF_MAX = 1.0, 30.0
#: An instance that ran this long before it crashed had come up fine: its
#: crash starts the backoff afresh.
STABLE_AFTER = 10.0
#: Seconds an instance has to register its worker after its start.
REGISTER_TIMEOUT = 60.0
#: Seconds between looks at the agent's jobs while an instance exists.
CHECK_INTERVAL = 0.5
#: SIGTERM, then SIGKILL after this long: when stopped, and at shutdown.
STOP_GRACE = 15.0
CLOSE_GRACE = 2.0


def backoff(crashes: int) -> float:
    """Seconds before the next start after ``crashes`` (>= 1) in a row."""
    return float(min(BACKOFF_MAX, BACKOFF_BASE * 2 ** (crashes - 1)))


class JobCounts(NamedTuple):
    """The agent's jobs now: not ended (queued or running), and queued."""

    busy: int
    queued: int


class Spawn(NamedTuple):
    """Start a process for ``instance``; report on it as ``run``."""

    run: int
    instance: int


class Terminate(NamedTuple):
    """SIGTERM the process of ``run``, SIGKILL after ``grace`` seconds."""

    run: int
    grace: float


class Answer(NamedTuple):
    """Answer the waiting start ``waiter``: ``error`` "" means started."""

    waiter: int
    error: str


Action = Spawn | Terminate | Answer


class Instance:
    """One place for a process (see ``supervisor_states``)."""

    __slots__ = (
        "number", "state", "since", "run", "pid", "started", "workers", "crashes",
        "last_exit", "exit_code", "retry_at", "register_by",
    )  # fmt: skip

    def __init__(self, number: int, now: float) -> None:
        self.number = number
        self.state = State.SPAWNING
        self.since = now  #: when it entered its state
        self.run = 0  #: its process's run id (0: none)
        self.pid = 0
        self.started = now  #: when its process was spawned
        self.workers: set[str] = set()
        self.crashes = 0  #: in a row, each within STABLE_AFTER of its start
        self.last_exit = ""  #: how its last process ended, in words
        self.exit_code: int | None = None
        self.retry_at: float | None = None  #: BACKOFF: when it starts again
        self.register_by: float | None = None  #: STARTING: REGISTER_TIMEOUT


class _Waiter(NamedTuple):
    deadline: float
    timeout: float


# Which instances go first when fewer are wanted: the least useful.
_RETIRE_ORDER = {
    State.BACKOFF: 0,
    State.SPAWNING: 1,
    State.TIMED_OUT: 1,
    State.STARTING: 2,
    State.REGISTERED: 3,
}


class Supervision:
    """The decisions for one agent-server definition (see the module
    docstring).  ``enabled``: it was not stopped with ``agent stop``."""

    def __init__(self, definition: AgentDefinition, now: float, *, enabled: bool = True) -> None:
        self.definition = definition
        self.enabled = enabled
        self.closed = False
        #: Instances asked for on demand or by a start, beyond min_instances.
        self.want = 0
        self.instances: dict[int, Instance] = {}
        self.starts = 0  #: processes asked for, ever (status, tests)
        self._runs: dict[int, Instance] = {}
        self._last_run = 0
        self._waiters: dict[int, _Waiter] = {}
        self._last_waiter = 0
        self._actions: list[Action] = []
        self._idle_since: float | None = None
        self._next_check: float | None = None
        self._extra: dict[str, Any] = {"tenant": definition.tenant, "agent": definition.name}
        self._settle(now)

    # -- outputs -------------------------------------------------------------

    def actions(self) -> list[Action]:
        """What to do now, in order; each is returned once."""
        out, self._actions = self._actions, []
        return out

    def next_deadline(self) -> float | None:
        """When ``on_timer`` has work; None: no timer."""
        times = [w.deadline for w in self._waiters.values()]
        for inst in self.instances.values():
            if inst.state is State.BACKOFF and inst.retry_at is not None:
                times.append(inst.retry_at)
            elif inst.state is State.STARTING and inst.register_by is not None:
                times.append(inst.register_by)
        if self._next_check is not None:
            times.append(self._next_check)
        return min(times, default=None)

    @property
    def processes(self) -> int:
        """Instances with a process running or being started."""
        return sum(1 for i in self.instances.values() if i.state in PROCESS)

    def live(self) -> list[Instance]:
        return [i for i in self.instances.values() if i.state in LIVE]

    # -- what the operator asks --------------------------------------------

    def start(self, now: float, timeout: float) -> int:
        """``agent start``: take jobs again, and bring up ``max(1,
        min_instances)`` registered instances.  Returns the waiter to be
        answered (``Answer``), at once if they are up already."""
        self._last_waiter += 1
        waiter = self._last_waiter
        if self.closed:
            self._actions.append(Answer(waiter, "the server is shutting down"))
            return waiter
        self.enabled = True
        self.want = max(self.want, 1)
        self._idle_since = None
        for inst in self.instances.values():
            if inst.state is State.BACKOFF:  # asked for now: no more waiting
                self._spawn(inst, now)
        self._waiters[waiter] = _Waiter(now + timeout, timeout)
        self._answer_started()
        self._settle(now)
        return waiter

    def stop(self, now: float) -> None:
        """``agent stop``: stop every instance, and start none until the
        next ``start`` (demand is ignored meanwhile)."""
        self.enabled = False
        self.want = 0
        self._answer_all("the agent was stopped before it registered")
        self._settle(now)

    def close(self, now: float) -> None:
        """The server shuts down: stop every instance, start none again."""
        self.closed = True
        self.enabled = False
        self.want = 0
        self._answer_all("the server is shutting down")
        for inst in list(self.instances.values()):
            self._retire(inst, now, CLOSE_GRACE)
        self._next_check = None

    # -- what the jobs ask ---------------------------------------------------

    def demand(self, now: float) -> None:
        """A job of this agent waits: no worker of it has room, or there
        is none."""
        if not self.enabled or self.closed:
            return
        self._idle_since = None
        self._scale_up()
        self._settle(now)

    def _scale_up(self) -> None:
        live = self.live()
        if not live:
            self.want = max(self.want, 1)
        elif len(live) < self.definition.max_instances and all(
            i.state is State.REGISTERED for i in live
        ):
            self.want = max(self.want, len(live) + 1)

    # -- what the processes do ---------------------------------------------

    def spawned(self, run: int, pid: int, now: float) -> None:
        inst = self._runs.get(run)
        if inst is None:
            return
        inst.pid, inst.started = pid, now
        self._move(inst, Event.SPAWNED, now)
        if inst.state is State.STARTING:
            inst.register_by = now + REGISTER_TIMEOUT
            log.info("agent server started (pid %d)", pid, extra=self._of(inst))
        else:  # retired while it was being spawned
            self._actions.append(Terminate(run, CLOSE_GRACE if self.closed else STOP_GRACE))
        self._settle(now)

    def spawn_failed(self, run: int, reason: str, now: float) -> None:
        inst = self._runs.pop(run, None)
        if inst is None:
            return
        self._move(inst, Event.SPAWN_FAILED, now)
        if inst.state is State.BACKOFF:
            self._crashed(inst, None, f"could not be started: {reason}", now, registered=False)
        self._settle(now)

    def exited(self, run: int, code: int, text: str, now: float) -> None:
        """Its process exited with ``code`` (``text``: that in words)."""
        inst = self._runs.pop(run, None)
        if inst is None:
            return
        before = inst.state
        inst.workers.clear()
        inst.pid = 0
        self._move(inst, Event.EXITED, now)
        if inst.state is State.BACKOFF:
            if before is State.TIMED_OUT:
                text = f"did not register within {REGISTER_TIMEOUT:g} s ({text})"
            self._crashed(inst, code, text, now, registered=before is State.REGISTERED)
        else:
            log.info("agent server stopped (%s)", text, extra=self._of(inst))
        self._settle(now)

    def registered(self, run: int, worker_id: str, now: float) -> None:
        """A worker registered with the API key of ``run``'s process."""
        inst = self._runs.get(run)
        if inst is None:
            return
        inst.workers.add(worker_id)
        self._move(inst, Event.REGISTERED, now)
        if inst.state is State.REGISTERED:
            inst.register_by = None
        self._answer_started()
        self._settle(now)

    def lost(self, run: int, worker_id: str, now: float) -> None:
        """A worker of ``run``'s process went away."""
        inst = self._runs.get(run)
        if inst is None or worker_id not in inst.workers:
            return
        inst.workers.discard(worker_id)
        if not inst.workers:
            self._move(inst, Event.LOST, now)
            if inst.state is State.STARTING:
                inst.register_by = now + REGISTER_TIMEOUT
        self._settle(now)

    # -- time ----------------------------------------------------------------

    def on_timer(self, now: float, jobs: JobCounts) -> None:
        """The deadline passed: ``jobs`` are the agent's jobs now."""
        # The look at the jobs first: an instance about to be restarted
        # below is backing off, not starting, for the idle clock.
        if self._next_check is not None and now >= self._next_check:
            self._next_check = None
            self._check(now, jobs)
            self._settle(now)  # retire what is no longer wanted before restarting it
        for inst in list(self.instances.values()):
            if inst.state is State.BACKOFF and inst.retry_at is not None and inst.retry_at <= now:
                self._spawn(inst, now)
            elif (
                inst.state is State.STARTING
                and inst.register_by is not None
                and inst.register_by <= now
            ):
                self._move(inst, Event.REGISTER_TIMEOUT, now)
                log.warning(
                    "agent server did not register within %g s: stopping it",
                    REGISTER_TIMEOUT,
                    extra=self._of(inst),
                )
                self._actions.append(Terminate(inst.run, STOP_GRACE))
        for waiter, w in list(self._waiters.items()):
            if w.deadline <= now:
                del self._waiters[waiter]
                self._actions.append(Answer(waiter, self._not_yet(w.timeout)))
        self._settle(now)

    def _check(self, now: float, jobs: JobCounts) -> None:
        if not self.enabled or self.closed:
            return
        starting = any(i.state in (State.SPAWNING, State.STARTING) for i in self.instances.values())
        if jobs.busy > 0 or starting:
            # Not idle: jobs are there, or an instance is not up yet.
            self._idle_since = None
            if jobs.queued:
                self._scale_up()
        elif self._idle_since is None:
            self._idle_since = now
        elif now - self._idle_since >= self.definition.idle_timeout:
            self._idle_since = now
            if len(self.live()) > self.definition.min_instances:
                log.info(
                    "agent server idle for %g s: stopping instances beyond min_instances (%d)",
                    self.definition.idle_timeout,
                    self.definition.min_instances,
                    extra=self._extra,
                )
            self.want = 0

    # -- the moves -----------------------------------------------------------

    def _move(self, inst: Instance, event: Event, now: float) -> None:
        name = f"agent server {self.definition.name!r} instance {inst.number}"
        inst.state = apply(inst.state, event, name)
        inst.since = now
        if inst.state is State.GONE:
            del self.instances[inst.number]

    def _target(self) -> int:
        if not self.enabled or self.closed:
            return 0
        d = self.definition
        return min(d.max_instances, max(d.min_instances, self.want))

    def _settle(self, now: float) -> None:
        """Bring the instances to the number wanted, and keep the periodic
        look at the jobs going while any instance exists."""
        if self.closed:
            return
        target, live = self._target(), self.live()
        if len(live) < target:
            for inst in sorted(self.instances.values(), key=lambda i: i.number):
                if len(live) >= target:
                    break
                if inst.state is State.CRASHED:
                    self._spawn(inst, now)
                    live.append(inst)
            number = 1
            while len(live) < target and len(self.instances) < self.definition.max_instances:
                while number in self.instances:
                    number += 1
                inst = self.instances[number] = Instance(number, now)
                self._spawn(inst, now)
                live.append(inst)
        elif len(live) > target:
            live.sort(key=lambda i: (_RETIRE_ORDER[i.state], -i.number))
            for inst in live[: len(live) - target]:
                self._retire(inst, now, STOP_GRACE)
        busy = any(i.state is not State.CRASHED for i in self.instances.values())
        if not busy or not self.enabled:
            self._next_check = None
        elif self._next_check is None:
            self._next_check = now + CHECK_INTERVAL

    def _spawn(self, inst: Instance, now: float) -> None:
        if inst.state is not State.SPAWNING:  # a new instance is made SPAWNING
            self._move(inst, Event.SPAWN, now)
        self._last_run += 1
        inst.run = self._last_run
        inst.retry_at = None
        inst.started = now
        self._runs[inst.run] = inst
        self.starts += 1
        self._actions.append(Spawn(inst.run, inst.number))

    def _retire(self, inst: Instance, now: float, grace: float) -> None:
        before = inst.state
        self._move(inst, Event.RETIRE, now)
        if before in (State.STARTING, State.REGISTERED):
            self._actions.append(Terminate(inst.run, grace))
        elif before in (State.TIMED_OUT, State.STOPPING) and self.closed:
            self._actions.append(Terminate(inst.run, grace))  # sooner than STOP_GRACE

    def _crashed(
        self, inst: Instance, code: int | None, text: str, now: float, *, registered: bool
    ) -> None:
        if now - inst.started >= STABLE_AFTER:
            inst.crashes = 0
        inst.crashes += 1
        delay = backoff(inst.crashes)
        inst.retry_at = now + delay
        inst.last_exit, inst.exit_code = text, code
        log.warning("agent server %s; restarting in %g s", text, delay, extra=self._of(inst))
        before = "" if registered else " before it registered"
        self._answer_all(f"agent server instance {inst.number} {text}{before}")

    # -- answers ---------------------------------------------------------------

    def _answer_started(self) -> None:
        if not self._waiters:
            return
        need = max(1, self.definition.min_instances)
        up = sum(1 for i in self.instances.values() if i.state is State.REGISTERED)
        if up >= need:
            self._answer_all("")

    def _answer_all(self, error: str) -> None:
        for waiter in self._waiters:
            self._actions.append(Answer(waiter, error))
        self._waiters.clear()

    def _not_yet(self, timeout: float) -> str:
        states = sorted(LABEL[i.state] for i in self.instances.values())
        now_ = ", ".join(states) if states else "no instance"
        return f"no instance registered within {timeout:g} s (now: {now_})"

    def _of(self, inst: Instance) -> dict[str, Any]:
        return {**self._extra, "instance": inst.number}

    # -- status --------------------------------------------------------------

    def summary(self) -> str:
        """The agent's state in a word, worst first: stopped, backing off,
        crashed, running (some instance registered), starting, stopping,
        idle (no instance: one starts when a job comes)."""
        if not self.enabled:
            return "stopped"
        states = {i.state for i in self.instances.values()}
        for state, word in (
            (State.BACKOFF, "backing off"),
            (State.REGISTERED, "running"),
            (State.CRASHED, "crashed"),
            (State.SPAWNING, "starting"),
            (State.STARTING, "starting"),
            (State.TIMED_OUT, "stopping"),
            (State.STOPPING, "stopping"),
        ):
            if state in states:
                return word
        return "idle"

    def status(self, now: float, wall_now: float) -> list[dict[str, Any]]:
        """Each instance, as ``agent list`` shows it (``wall_now``: the
        wall-clock time at ``now``, for the next attempt's time)."""
        out = []
        for inst in sorted(self.instances.values(), key=lambda i: i.number):
            item: dict[str, Any] = {
                "instance": inst.number,
                "state": LABEL[inst.state],
                "since": round(wall_now - (now - inst.since), 3),
            }
            if inst.state in PROCESS and inst.pid:
                item["pid"] = inst.pid
            if inst.workers:
                item["workers"] = sorted(inst.workers)
            if inst.crashes:
                item["crashes"] = inst.crashes
            if inst.last_exit:
                item["last_exit"] = inst.last_exit
            if inst.exit_code is not None:
                item["exit_code"] = inst.exit_code
            if inst.state is State.BACKOFF and inst.retry_at is not None:
                item["next_attempt_at"] = round(wall_now + (inst.retry_at - now), 3)
                item["next_attempt_in"] = round(max(0.0, inst.retry_at - now), 3)
            out.append(item)
        return out
